//! What ends a stream (a revoked key, its max age, SIGTERM) and what must not (the request
//! deadline, the connection's idle and header timeouts).

use std::time::{Duration, Instant};

use signal_scans::http::changes::StreamSettings;
use sqlx::Connection;

use super::*;
use crate::helpers::{
    Backend, RUNNER, ServeDefault, TestApp, group, h2_client, h2_get_as, key_and_id_in,
};
use crate::store_test;

async fn a_revoked_keys_stream_ends_within_the_cache_ttl_and_a_tick_while_others_go_on(
    backend: Backend,
) {
    let keepalive = Duration::from_millis(200);
    // Long against a loaded machine's delays, so that the bound below tells this TTL from twice it.
    let key_cache_ttl = Duration::from_millis(2000);
    let mut settings = with_streams(StreamSettings {
        keepalive,
        ..StreamSettings::default()
    });
    settings.key_cache_ttl = key_cache_ttl;
    let app = TestApp::spawn_with(backend, settings).await;
    let group = group();
    let (doomed, doomed_id) = read_key(&app, &group).await;
    let (live, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let mut doomed_stream = follow(stream_request(&url, &doomed)).await;
    let mut live_stream = follow(stream_request(&url, &live)).await;
    assert_eq!(doomed_stream.next_frame(SOON).await, keep_alive());

    app.store
        .revoke_key(doomed_id)
        .await
        .unwrap()
        .expect("the key existed");
    let revoked = Instant::now();
    // Watched well past the bound, to see when it ends; without the check the stream would run
    // for its hour.
    let frames = frames_during(
        &mut doomed_stream,
        key_cache_ttl + keepalive + Duration::from_secs(3),
    )
    .await;
    let ended_after = revoked.elapsed();
    let after_end = live_stream.try_next_frame(Duration::ZERO).await;
    let live_frames = frames_during(&mut live_stream, Duration::from_millis(1500)).await;

    assert_eq!(
        frames.last(),
        Some(&None),
        "the stream ended (after {ended_after:?}): {frames:?}"
    );
    // The cached key expires within the TTL of the revocation, and the next tick sees it gone.
    assert!(
        ended_after < key_cache_ttl + keepalive + Duration::from_millis(800),
        "ended {ended_after:?} after the revocation"
    );
    assert_eq!(
        frames[frames.len() - 2],
        Some(RECONNECT),
        "a last retry: {frames:?}"
    );
    assert_keep_alives(&frames[..frames.len() - 2], 0);
    assert!(after_end.is_none_or(|frame| frame == keep_alive()));
    // The live key's stream goes on.
    assert_keep_alives(&live_frames, 2);
}
store_test!(a_revoked_keys_stream_ends_within_the_cache_ttl_and_a_tick_while_others_go_on);

/// A key that expires ends its open stream at the first keep-alive past its expiry, with a last
/// `retry:`, as a revoked one does.
async fn an_expired_keys_stream_ends_at_its_next_keep_alive(backend: Backend) {
    let keepalive = Duration::from_millis(200);
    let app = keeping_alive_every(backend, keepalive).await;
    let group = group();
    let lifetime = Duration::from_secs(2);
    let expires_at = time::OffsetDateTime::now_utc() + lifetime;
    let access = signal_scans::domain::keys::AccountGroupAccess::Only(vec![group]);
    let read = [signal_scans::domain::keys::Permission::SignalsRead];
    let (expiring, _) = app.key_with(&read, access, Some(expires_at)).await;
    let url = app.url(&changes_path(&group, ""));
    let mut stream = follow(stream_request(&url, &expiring)).await;

    // Watched well past the expiry; without the check the stream would run for its hour.
    let frames = frames_during(&mut stream, lifetime + Duration::from_secs(4)).await;

    assert_eq!(frames.last(), Some(&None), "the stream ended: {frames:?}");
    assert_eq!(
        frames[frames.len() - 2],
        Some(RECONNECT),
        "a last retry: {frames:?}"
    );
    // It served until then: keep-alives while the key was good.
    assert_keep_alives(&frames[..frames.len() - 2], 2);
}
store_test!(an_expired_keys_stream_ends_at_its_next_keep_alive);

/// A stream whose client took no bytes for long (an HTTP/2 window left closed) is polled again
/// only once the client opens its window; its end and its key's check come first then, so a key
/// revoked meanwhile is sent nothing committed past a revocation's bound. Before, the changes
/// waiting raced the overdue keep-alive and won half the time (the reviewer's client was sent 87
/// changes committed up to 90 s after its key was revoked): eight streams make that race show.
async fn a_stream_held_back_by_its_client_sends_nothing_after_its_key_is_revoked(backend: Backend) {
    const STREAMS: usize = 8;
    let keepalive = Duration::from_millis(100);
    let mut settings = with_streams(StreamSettings {
        keepalive,
        ..StreamSettings::default()
    });
    settings.key_cache_ttl = Duration::from_millis(200);
    let app = TestApp::spawn_with(backend, settings).await;
    let group = group();
    let (reader, reader_id) = read_key(&app, &group).await;
    // Room for the opening block and a keep-alive or two, then windows that stay closed.
    let (mut client, _connection) = h2_client(app.addr, 64).await;
    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let response = h2_get_as(&mut client, &app.url(&changes_path(&group, "")), &reader).await;
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body());
    }
    // Each window has closed, and each stream was polled last for the keep-alive it holds back.
    tokio::time::sleep(Duration::from_millis(600)).await;

    app.store.revoke_key(reader_id).await.unwrap().unwrap();
    // Changes committed past a revocation's bound (the key cache's TTL and a keep-alive).
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        app.scan(&group, ScanStatus::Queued).await;
    }
    // The changes have reached the streams (a store's poll finds them), and keep-alives are
    // overdue, when the windows open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for mut body in bodies {
        let mut received = Vec::new();
        while let Some(chunk) = tokio::time::timeout(SOON, body.data()).await.unwrap() {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            received.extend_from_slice(&chunk);
        }
        let received = String::from_utf8(received).unwrap();

        assert!(!received.contains("scan.status_changed"), "{received}");
        assert!(received.ends_with("retry: 2000\n\n"), "{received}");
    }
}
store_test!(a_stream_held_back_by_its_client_sends_nothing_after_its_key_is_revoked);

async fn a_stream_ends_at_its_max_age_with_a_last_retry(backend: Backend) {
    let max_age = Duration::from_secs(1);
    let app = streams_app(
        backend,
        StreamSettings {
            max_age,
            ..StreamSettings::default()
        },
    )
    .await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let opened = Instant::now();
    let mut stream = follow(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;

    let last = stream.next_frame(max_age + SOON).await;
    let lasted = opened.elapsed();
    let after = stream.next_frame(SOON).await;

    assert_eq!(last, Some(RECONNECT));
    assert!(lasted >= max_age, "ended after {lasted:?}");
    assert_eq!(after, None, "the body ends after the last retry");
}
store_test!(a_stream_ends_at_its_max_age_with_a_last_retry);

/// The deadline of a request covers the handler, not the body it streams.
async fn a_stream_outlives_the_request_timeout(backend: Backend) {
    let mut settings = with_streams(StreamSettings {
        keepalive: Duration::from_millis(200),
        ..StreamSettings::default()
    });
    settings.http.request_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(backend, settings).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let mut stream = follow(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;

    let frames = frames_during(&mut stream, Duration::from_secs(1)).await;
    let cancelled = cancel_fresh_scans(&app, &writer, &group, 1).await;
    let event = stream.next_event(SOON).await;

    assert_keep_alives(&frames, 0);
    assert_eq!(moves(&[event]), cancels_of(&cancelled, "running"));
}
store_test!(a_stream_outlives_the_request_timeout);

/// A quiet stream is a request in progress, not an idle connection: neither the idle timeout nor
/// the header timeout of its connection closes it.
async fn a_quiet_stream_outlives_the_connections_idle_and_header_timeouts(backend: Backend) {
    let process = Process::start(
        backend,
        &[
            ("HTTP_IDLE_TIMEOUT_MS", "200"),
            ("HTTP_HEADER_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let (scan, mut stream) = process.running_scan_and_stream().await;

    // Several idle timeouts long, and shorter than the 15 s keep-alive: nothing is written.
    let quiet = frames_during(&mut stream, Duration::from_millis(1500)).await;
    // Through the database, found by the service's poll: a request of this test's own to the
    // server could itself be cut by its 200-ms header timeout on a slow machine.
    let cancel = process
        .store
        .transition(Some(&process.group), &scan, ScanStatus::Cancelled, RUNNER)
        .await;
    let event = stream.next_event(SOON).await;

    assert_eq!(quiet, [], "the stream stayed open and quiet");
    assert!(cancel.is_ok(), "{cancel:?}");
    assert_eq!(
        moves(std::slice::from_ref(&event)),
        cancels_of(&[scan], "running")
    );
}
store_test!(a_quiet_stream_outlives_the_connections_idle_and_header_timeouts);

/// SIGTERM ends streams at once: they do not hold the drain for SHUTDOWN_TIMEOUT_MS.
async fn sigterm_ends_open_streams_and_the_process_exits_promptly(backend: Backend) {
    let Process {
        mut server,
        store: _,
        group,
        reader,
        writer: _,
        _db,
    } = Process::start(backend, &[("SHUTDOWN_TIMEOUT_MS", "30000")]).await;
    let url = server.url(&changes_path(&group, ""));
    let mut streams = vec![
        follow(stream_request(&url, &reader)).await,
        follow(stream_request(&url, &reader)).await,
    ];

    server.terminate();
    let exit = server.wait(Duration::from_secs(10)).await;

    assert!(exit.success(), "{exit:?}; logs: {:?}", server.logs());
    for stream in &mut streams {
        assert_eq!(stream.next_frame(SOON).await, Some(RECONNECT));
        assert_eq!(
            stream.next_frame(SOON).await,
            None,
            "a clean end of the body"
        );
    }
}
store_test!(sigterm_ends_open_streams_and_the_process_exits_promptly);

/// Whatever ends a stream, its end is one log line with the request's trace id and the reason,
/// and one count of `change_streams_ended_total` by that reason: its age, a key that no longer
/// authenticates, a client gone, the process stopping (also for a stream whose client takes no
/// bytes, which sees no signal and is cut at the drain's end: it was counted `client_gone`).
async fn every_streams_end_is_logged_and_counted_with_its_reason(backend: Backend) {
    let Process {
        server,
        store,
        group,
        reader,
        writer: _,
        _db,
    } = Process::start(
        backend,
        &[
            ("STREAM_MAX_AGE_MS", "1500"),
            ("STREAM_KEEPALIVE_MS", "200"),
            ("KEY_CACHE_TTL_MS", "0"),
            ("SHUTDOWN_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let url = server.url(&changes_path(&group, ""));
    let ended = |reason: &'static str| {
        move |event: &serde_json::Value| {
            event["message"] == "a change stream ended" && event["reason"] == reason
        }
    };

    // A HEAD opens no stream, so it ends none (axum answers it with the GET's handler).
    let head = reqwest::Client::new()
        .head(&url)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let mut aged = follow(stream_request(&url, &reader)).await;
    let gone = follow(stream_request(&url, &reader)).await;
    let (doomed_key, doomed_id) = key_and_id_in(&store, Permission::SignalsRead, &[group]).await;
    let mut doomed = follow(stream_request(&url, &doomed_key)).await;
    drop(gone);
    store.revoke_key(doomed_id).await.unwrap();
    let doomed_frames = frames_during(&mut doomed, Duration::from_secs(1)).await;
    let aged_frames = frames_during(&mut aged, Duration::from_secs(3)).await;
    assert_eq!(doomed_frames.last(), Some(&None), "{doomed_frames:?}");
    assert_eq!(aged_frames.last(), Some(&None), "{aged_frames:?}");
    let logs = server
        .until_events(|events| {
            ["client_gone", "key_invalid", "age"]
                .iter()
                .all(|reason| events.iter().any(ended(reason)))
        })
        .await;
    let metrics = server.metrics().await;
    let still_open = follow(stream_request(&url, &reader)).await;
    let (mut unread, _connection) = h2_client(server.addr, 0).await;
    let unread_stream = h2_get_as(&mut unread, &url, &reader).await;
    assert_eq!(unread_stream.status(), 200);
    server.terminate();
    let after_stop = server
        .until_events(|events| events.iter().filter(|e| ended("shutdown")(e)).count() == 2)
        .await;
    drop((still_open, unread_stream));

    for (reason, count) in [
        ("client_gone", 1.0),
        ("key_invalid", 1.0),
        ("age", 1.0),
        ("shutdown", 0.0),
        ("swept", 0.0),
    ] {
        let series = format!(r#"change_streams_ended_total{{reason="{reason}"}}"#);
        let counted = crate::helpers::metrics::value(&metrics, &series);
        assert_eq!(counted, Some(count), "{reason}:\n{metrics}");
        let line = logs.iter().find(|event| ended(reason)(event));
        assert_eq!(line.is_some(), count > 0.0, "{reason} logged as counted");
        if let Some(line) = line {
            assert!(line["span"]["trace.id"].is_string(), "{line}");
            assert!(line["span"]["api_key.id"].is_string(), "{line}");
            assert!(line["lived_ms"].as_u64().is_some(), "{line}");
        }
    }
    assert!(
        !after_stop[logs.len()..].iter().any(ended("client_gone")),
        "{after_stop:?}"
    );
}
store_test!(every_streams_end_is_logged_and_counted_with_its_reason);

/// The change hub's reader stops with the application that started it: its listening session
/// ends once the service has shut down. It polled the database and held that session for as long
/// as the process lived (an application built again in the same process, as the tests do, left
/// one behind each time).
async fn the_hubs_reader_stops_with_the_application(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let stream = follow(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    let listening = async |admin: &mut PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        .fetch_one(admin)
        .await
        .unwrap()
    };
    let while_serving = listening(&mut admin).await;

    drop(stream);
    app.shut_down().await;
    let deadline = Instant::now() + SOON;
    let mut after = listening(&mut admin).await;
    while after > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = listening(&mut admin).await;
    }

    assert_eq!(while_serving, 1, "the hub listens while it serves");
    assert_eq!(after, 0, "the hub's session outlived the application");
}
store_test!(the_hubs_reader_stops_with_the_application, postgres_only);

/// A change stream whose client stops taking its bytes (here an HTTP/2 window left closed; a
/// reader that stops reading fills the socket alike) ends once nothing of it has moved for
/// `HTTP_IDLE_TIMEOUT_MS`: its connection is closed and its key's slot freed. The service polls a
/// body only while it can be sent, so the stream's own timers never ran: it held its connection
/// and its slot for as long as the client stayed, and every later stream of the key was a 429.
async fn a_stream_whose_client_stops_taking_bytes_ends_and_frees_its_slot(backend: Backend) {
    let process = Process::start(
        backend,
        &[
            ("HTTP_IDLE_TIMEOUT_MS", "1000"),
            ("STREAM_KEEPALIVE_MS", "100"),
            ("STREAM_MAX_PER_KEY", "1"),
        ],
    )
    .await;
    let url = process.server.url(&changes_path(&process.group, ""));
    // Room for the opening block and a keep-alive or two, then a window that never opens.
    let (mut client, connection) = h2_client(process.server.addr, 64).await;
    let opened = h2_get_as(&mut client, &url, &process.reader).await;
    let stuck_since = Instant::now();

    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    let closed_after = stuck_since.elapsed();
    let next = follow(stream_request(&url, &process.reader)).await;

    assert_eq!(opened.status(), 200);
    assert!(closed.is_ok(), "the connection was still open after 10 s");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}"
    );
    drop((next, client));
}
store_test!(a_stream_whose_client_stops_taking_bytes_ends_and_frees_its_slot);

/// `/metrics` shows what the process holds now: its connections open (and their cap), its
/// requests in progress (a stream is one until it ends; a scrape counts itself) and its open
/// change streams, each back down once its client has left. Requests piling up tell a stalled
/// database; connections piling up without them, idle clients.
async fn metrics_show_open_connections_requests_in_progress_and_streams(backend: Backend) {
    const SERIES: [&str; 4] = [
        r#"http_connections{state="open"}"#,
        r#"http_connections{state="max"}"#,
        "http_requests_in_progress",
        "change_streams_open",
    ];
    let process = Process::start(backend, &[("MAX_CONNECTIONS", "50")]).await;
    // What the scrapes show once the connections of earlier scrapes (each its own client) have
    // closed on the service's side too.
    let settled = async |expected: [f64; 4]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = process.server.metrics().await;
            let seen = SERIES.map(|series| crate::helpers::metrics::count(&metrics, series));
            if seen == expected || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let before = settled([1.0, 50.0, 1.0, 0.0]).await;
    let url = process.server.url(&changes_path(&process.group, ""));
    let stream = follow(stream_request(&url, &process.reader)).await;
    // A connection that has sent nothing yet.
    let idle = tokio::net::TcpStream::connect(process.server.addr)
        .await
        .unwrap();
    let open = settled([3.0, 50.0, 2.0, 1.0]).await;
    drop((stream, idle));
    let after = settled([1.0, 50.0, 1.0, 0.0]).await;

    assert_eq!(before, [1.0, 50.0, 1.0, 0.0], "{SERIES:?}");
    assert_eq!(open, [3.0, 50.0, 2.0, 1.0], "{SERIES:?}");
    assert_eq!(after, [1.0, 50.0, 1.0, 0.0], "{SERIES:?}");
}
store_test!(metrics_show_open_connections_requests_in_progress_and_streams);
