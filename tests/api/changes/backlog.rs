//! Backlogs: a resume from thousands of changes back (several of the trail's 1,000-row pages), a
//! follower that reads nothing while more than the hub's buffer passes, and frames that the
//! stream splits at 64 KiB. The backlogs are scans' creations (each a change `from` null), made
//! one after the other so that commit order is the order they were made in.

use std::time::Duration;

use signal_scans::domain::feed::FeedCursor;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::service::feed::{ChangeHub, Start};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::*;
use crate::helpers::{Backend, TestApp, group, id_strings};
use crate::store_test;

/// How long a backlog of thousands may take to arrive on a loaded machine.
const BACKLOG: Duration = Duration::from_secs(60);

/// Creates `count` running scans of `group` in the test's store, one after the other.
async fn create_scans(app: &TestApp, group: &AccountGroupId, count: usize) -> Vec<ScanId> {
    let mut scans = Vec::with_capacity(count);
    for _ in 0..count {
        scans.push(app.scan(group, ScanStatus::Running).await);
    }
    scans
}

/// The id of the stream's next event: a cursor to resume from. Creates a scan to have one.
async fn a_cursor(app: &TestApp, group: &AccountGroupId, reader: &str) -> String {
    let mut stream = SseStream::opened(
        stream_request(&app.url(&changes_path(group, "")), reader),
        SOON,
    )
    .await;
    let marker = app.scan(group, ScanStatus::Running).await;
    let event = stream.next_event(SOON).await;
    assert_eq!(event.json()["scanId"], marker.as_str());
    id_of(&event)
}

/// A client back after 2,500 changes (three pages of the trail): the resumed stream replays each
/// once, in commit order, then goes on live. Fails for a catch-up that stops after its first
/// page (the rest would never come) or that re-reads a page (twice).
async fn a_resume_from_2500_changes_back_gets_each_once_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let cursor = a_cursor(&app, &group, &reader).await;
    let missed = create_scans(&app, &group, 2500).await;

    let mut resumed = SseStream::opened(
        stream_request(&app.url(&changes_path(&group, "")), &reader)
            .header("Last-Event-ID", cursor.as_str()),
        SOON,
    )
    .await;
    let mut replayed = Vec::with_capacity(missed.len());
    let deadline = tokio::time::Instant::now() + BACKLOG;
    while replayed.len() < missed.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        replayed.push(resumed.next_event(left).await);
    }
    let live = create_scans(&app, &group, 1).await;
    let live_event = resumed.next_event(SOON).await;
    resumed.assert_no_event_for(QUIET).await;

    assert_eq!(scan_ids(&replayed), id_strings(&missed));
    assert_eq!(scan_ids(&[live_event]), id_strings(&live));
    let mut ids: Vec<String> = replayed.iter().map(id_of).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), missed.len(), "each change has an id of its own");
}
store_test!(a_resume_from_2500_changes_back_gets_each_once_in_order);

/// The trail's pages, in rows.
const PAGE: u64 = signal_scans::domain::feed::PAGE_ROWS as u64;

/// A follower resuming from far back reads the trail a page at a time, each page handed out
/// before the next is read: a replay of a large history costs a page of memory, and its first
/// change comes after one read. Fails for a catch-up that reads the whole history first (it did:
/// 20 streams replaying a group of 200,000 changes held 150 MB).
async fn a_follower_resuming_from_far_back_reads_the_trail_a_page_at_a_time(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let made = create_scans(&app, &group, 2100).await;
    let hub = ChangeHub::new(app.store.clone(), Duration::from_secs(60), Duration::ZERO);
    let mut follower = hub
        .follow(group, Start::After(FeedCursor::default()))
        .await
        .unwrap();
    let read = || app.store.feed_rows_read().one_group;
    let before = read();

    let mut replayed = vec![follower.next().await.unwrap().change.scan_id];
    let for_the_first = read() - before;
    while replayed.len() < made.len() {
        let event = tokio::time::timeout(SOON, follower.next()).await;
        replayed.push(event.expect("the next change").unwrap().change.scan_id);
    }

    assert_eq!(for_the_first, PAGE, "rows read before the first change");
    assert_eq!(replayed, made);
    assert_eq!(read() - before, made.len() as u64, "each row read once");
}
store_test!(a_follower_resuming_from_far_back_reads_the_trail_a_page_at_a_time);

/// The hub keeps 256 pages per group for its followers. A follower that reads nothing while 300
/// pages of its group pass (each change its own page: the next is made once a follower that
/// keeps up has it) falls behind the buffer, and then reads the trail from its own cursor: every
/// change exactly once, in order, and then the live ones. Fails for a follower that skips what
/// the buffer lost, or that hands out again what it had delivered.
async fn a_follower_lagging_past_the_hubs_buffer_catches_up_exactly_in_order(backend: Backend) {
    const PAGES: usize = 300;
    let app = TestApp::spawn(backend).await;
    let group = group();
    // On the test's store, whose writes (SQLite's hints stay in their store) it hears; reading
    // at once on every hint, so that each change is a page of its own.
    let hub = ChangeHub::new(app.store.clone(), Duration::from_secs(60), Duration::ZERO);
    let mut keeping_up = hub.follow(group, Start::Now).await.unwrap();
    let mut lagging = hub.follow(group, Start::Now).await.unwrap();

    let mut made = Vec::with_capacity(PAGES);
    for _ in 0..PAGES {
        let scan = app.scan(&group, ScanStatus::Running).await;
        let heard = tokio::time::timeout(SOON, keeping_up.next())
            .await
            .expect("the keeping-up follower hears each change")
            .unwrap();
        assert_eq!(heard.change.scan_id, scan);
        made.push(scan);
    }
    let live = app.scan(&group, ScanStatus::Running).await;
    let mut caught_up = Vec::with_capacity(PAGES + 1);
    while caught_up.len() < PAGES + 1 {
        let event = tokio::time::timeout(SOON, lagging.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {} changes", caught_up.len(), PAGES + 1))
            .unwrap();
        caught_up.push(event.change.scan_id);
    }
    let after = tokio::time::timeout(QUIET, lagging.next()).await;

    made.push(live);
    assert_eq!(caught_up, made);
    assert!(after.is_err(), "more than was changed: {after:?}");
}
store_test!(a_follower_lagging_past_the_hubs_buffer_catches_up_exactly_in_order);

/// `FRAME_BYTES` in `src/http/changes.rs`: a stream writes the changes it has at hand together,
/// up to about this many bytes a frame.
const FRAME_BYTES: usize = 64 * 1024;
/// More than one change's block, `id:` and `event:` lines included.
const LARGEST_EVENT: usize = 1024;

/// A resume with 600 changes at hand (about 170 KiB of events): the stream writes them in frames
/// of at least 64 KiB (one HTTP chunk each, as the bytes arrive), each cut after a whole event,
/// none more than one event past 64 KiB, the last with what remains; together every change
/// once, in order. Read over a raw socket, so the chunks are the server's own.
async fn a_backlog_leaves_in_frames_of_64_kib_split_between_events(backend: Backend) {
    const BACKLOG_EVENTS: usize = 600;
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let cursor = a_cursor(&app, &group, &reader).await;
    let missed = create_scans(&app, &group, BACKLOG_EVENTS).await;

    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = raw_resume(&app, &group, &reader, &cursor);
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut socket = BufReader::new(socket);
    let head = read_head(&mut socket).await;
    let mut chunks = Vec::new();
    let mut events = 0;
    while events < BACKLOG_EVENTS {
        let chunk = tokio::time::timeout(BACKLOG, read_chunk(&mut socket))
            .await
            .unwrap_or_else(|_| panic!("{events} events in {} chunks", chunks.len()));
        events += chunk.matches("\nevent: ").count();
        chunks.push(chunk);
    }

    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(
        chunks[0],
        format!("retry: 2000\nid: {cursor}\n\n"),
        "the opening block"
    );
    let frames = &chunks[1..];
    let sizes: Vec<usize> = frames.iter().map(String::len).collect();
    assert!(frames.len() >= 2, "split into frames: {sizes:?}");
    for (i, frame) in frames.iter().enumerate() {
        assert!(frame.ends_with("\n\n"), "frame {i} ends inside an event");
        assert!(frame.len() <= FRAME_BYTES + LARGEST_EVENT, "{sizes:?}");
        if i + 1 < frames.len() {
            assert!(
                frame.len() >= FRAME_BYTES,
                "frame {i} left early: {sizes:?}"
            );
        }
    }
    let mut replayed = Vec::new();
    for block in frames.concat().split_terminator("\n\n") {
        let data = block
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("a block that is not an event: {block:?}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        replayed.push(data["scanId"].as_str().unwrap().to_owned());
    }
    assert_eq!(replayed, id_strings(&missed));
}
store_test!(a_backlog_leaves_in_frames_of_64_kib_split_between_events);

/// An HTTP/1.1 request, as written on a raw socket, resuming `group`'s stream after `cursor`.
fn raw_resume(app: &TestApp, group: &AccountGroupId, reader: &str, cursor: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {reader}\r\n\
         last-event-id: {cursor}\r\n\r\n",
        changes_path(group, ""),
        app.addr
    )
}

/// The response's status line and headers (lower-cased), up to the blank line.
async fn read_head(socket: &mut BufReader<tokio::net::TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(SOON, socket.read_line(&mut line))
            .await
            .expect("the head arrives")
            .unwrap();
        assert!(read > 0, "closed before the head ended: {head}");
        if line == "\r\n" {
            return head;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
}

/// One chunk of a chunked body, as the server wrote it.
async fn read_chunk(socket: &mut BufReader<tokio::net::TcpStream>) -> String {
    let mut size = String::new();
    socket.read_line(&mut size).await.unwrap();
    let size = usize::from_str_radix(size.trim_end(), 16)
        .unwrap_or_else(|_| panic!("a chunk size: {size:?}"));
    let mut chunk = vec![0; size + 2];
    socket.read_exact(&mut chunk).await.unwrap();
    assert_eq!(&chunk[size..], b"\r\n");
    chunk.truncate(size);
    String::from_utf8(chunk).expect("SSE is UTF-8")
}

/// A client that stops reading a stream with a backlog of about 850 KiB (3,000 changes) holds at
/// most a few hundred KiB of this machine's memory in its connection's send queue, not the whole
/// backlog (Linux autotunes a send buffer up to 4 MiB): the service's side of the socket takes
/// no more once 128 KiB wait unsent. Read from `/proc/net/tcp`, the kernel's own count.
async fn a_client_that_stops_reading_holds_little_of_the_machines_memory(backend: Backend) {
    const BACKLOG_EVENTS: usize = 3000;
    const MOST: u64 = 256 * 1024;
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let cursor = a_cursor(&app, &group, &reader).await;
    create_scans(&app, &group, BACKLOG_EVENTS).await;

    // A small receive window, so that what the client's side takes does not hide the queue.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut client = socket.connect(app.addr).await.unwrap();
    let request = raw_resume(&app, &group, &reader, &cursor);
    client.write_all(request.as_bytes()).await.unwrap();
    let ends = (app.addr.port(), client.local_addr().unwrap().port());
    // Until bytes wait and their count has stood still for half a second (or 10 s have passed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut queued, mut still_since) = (0, tokio::time::Instant::now());
    while tokio::time::Instant::now() < deadline
        && (queued == 0 || still_since.elapsed() < Duration::from_millis(500))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = send_queue(ends).expect("the service's end of the connection is open");
        if now != queued {
            (queued, still_since) = (now, tokio::time::Instant::now());
        }
    }

    assert!(queued > 0, "nothing was sent");
    assert!(queued <= MOST, "{queued} bytes wait in the send queue");
    drop(client);
}
store_test!(a_client_that_stops_reading_holds_little_of_the_machines_memory);

/// The bytes in the send queue (sent and not acknowledged, or not sent yet) of the IPv4 TCP
/// socket with local port `ends.0` and remote port `ends.1`, from `/proc/net/tcp`.
fn send_queue(ends: (u16, u16)) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        if (port(fields[1])?, port(fields[2])?) != ends {
            return None;
        }
        let (tx, _) = fields[4].split_once(':')?;
        u64::from_str_radix(tx, 16).ok()
    })
}
