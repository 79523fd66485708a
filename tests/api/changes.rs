//! `GET …/signals/scans/changes`: the Server-Sent Events stream of an account group's status
//! changes, followed over real sockets against the real router (and the real binary where the
//! process's own settings or signals are under test).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::{AccountGroupAccess, NewApiKey, Permission};
use signal_scans::domain::scan::Actor;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::changes::StreamSettings;
use signal_scans::service::ScanService;
use signal_scans::store::{KeyToCreate, Store};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::helpers::process::ServerProcess;
use crate::helpers::sse::{Frame, SseEvent, SseStream};
use crate::helpers::{
    ApiResponse, Backend, Settings, TestApp, TestDatabase, cancel_path, group, store_options,
};
use crate::store_test;

/// Long enough for anything that should happen promptly on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(5);
/// What the stream tells clients to wait before reconnecting, at its start and its end.
const RECONNECT: Frame = Frame::Retry(2000);
/// How long a stream is watched to show that nothing more arrives.
const QUIET: Duration = Duration::from_millis(400);

const RUNNER: Actor<'static> = Actor {
    api_key_id: None,
    trace_id: Some("runner"),
    reason: None,
};

fn changes_path(group: &AccountGroupId, query: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/changes{query}")
}

/// A request for a stream: a client of its own, with no overall timeout (the body lasts as long
/// as the test reads it; every wait is bounded by the reader instead).
fn stream_request(url: &str, key: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(url).bearer_auth(key)
}

/// Opens a stream that must be admitted, and reads its opening `retry:`. These tests are about
/// moves of scans they create while it is open: the creations are passed over (tests/api/runners.rs
/// follows them).
async fn follow(request: reqwest::RequestBuilder) -> SseStream {
    let mut stream = SseStream::open(request)
        .await
        .unwrap_or_else(|refused| panic!("the stream was refused: {refused:?}"))
        .moves_only();
    assert_eq!(
        stream.next_frame(SOON).await,
        Some(RECONNECT),
        "a stream opens with retry: 2000"
    );
    stream
}

/// A stream request that must be refused, with the envelope.
async fn refused(request: reqwest::RequestBuilder) -> ApiResponse {
    match SseStream::open(request).await {
        Ok(stream) => panic!("the stream opened: {stream:?}"),
        Err(response) => response,
    }
}

fn query_after(cursor: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("after", cursor)
        .finish();
    format!("?{query}")
}

/// A `signals:read` key on `group`: (secret, id).
async fn read_key(app: &TestApp, group: &AccountGroupId) -> (String, Uuid) {
    app.key_with(
        &[Permission::SignalsRead],
        AccountGroupAccess::Only(vec![*group]),
        None,
    )
    .await
}

/// A key made straight in `store`, for a server process that shares the database.
async fn key_in(store: &Store, permission: Permission, group: &AccountGroupId) -> String {
    let new_key = NewApiKey::generate();
    store
        .create_key(&KeyToCreate {
            name: "test key".into(),
            hash: new_key.hash,
            permissions: vec![permission],
            access: AccountGroupAccess::Only(vec![*group]),
            expires_at: None,
        })
        .await
        .expect("create key");
    new_key.secret
}

/// A fresh, migrated database for a server process, and a store on it to arrange with.
async fn database_for_process(backend: Backend) -> (TestDatabase, Store) {
    let db = TestDatabase::create(backend).await;
    let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    store.migrate().await.expect("migrations run");
    (db, store)
}

/// Cancels `count` fresh running scans of `group` one after the other (so commit order is
/// request order), returning them in that order.
async fn cancel_fresh_scans(
    app: &TestApp,
    writer: &str,
    group: &AccountGroupId,
    count: usize,
) -> Vec<ScanId> {
    let mut scans = Vec::with_capacity(count);
    for _ in 0..count {
        let scan = app.scan(group, ScanStatus::Running).await;
        let cancel = app
            .cancel(Some(writer), group.as_str(), scan.as_str())
            .await;
        assert_eq!(cancel.status, 200, "{cancel:?}");
        scans.push(scan);
    }
    scans
}

async fn next_events(stream: &mut SseStream, count: usize) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(stream.next_event(SOON).await);
    }
    events
}

/// (scanId, from, to) of each event, to compare with what was done.
fn moves(events: &[SseEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|event| {
            let data = event.json();
            let text = |field: &str| data[field].as_str().unwrap_or_default().to_owned();
            (text("scanId"), text("from"), text("to"))
        })
        .collect()
}

fn cancels_of(scans: &[ScanId], from: &str) -> Vec<(String, String, String)> {
    scans
        .iter()
        .map(|scan| (scan.to_string(), from.to_owned(), "cancelled".to_owned()))
        .collect()
}

fn id_of(event: &SseEvent) -> String {
    let id = event.id.clone().expect("every change has an id");
    assert!(!id.is_empty(), "{event:?}");
    id
}

/// Every frame that arrives during `period`; `None` marks the end of the body.
async fn frames_during(stream: &mut SseStream, period: Duration) -> Vec<Option<Frame>> {
    let deadline = tokio::time::Instant::now() + period;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match stream.try_next_frame(left).await {
            Some(None) => {
                frames.push(None);
                return frames;
            }
            Some(frame) => frames.push(frame),
            None => return frames,
        }
    }
}

fn keep_alive() -> Option<Frame> {
    Some(Frame::Comment("keep-alive".into()))
}

fn with_streams(streams: StreamSettings) -> Settings {
    let mut settings = Settings::default();
    settings.http.streams = streams;
    settings
}

/// The feed is polled only every 60 s here, so only the publisher's hint can bring the change
/// within the bound.
async fn a_cancel_reaches_an_open_stream_by_its_hint_long_before_the_poll(backend: Backend) {
    let (db, store) = database_for_process(backend).await;
    let server = ServerProcess::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("FEED_POLL_MS", "60000"),
        ("PUBLISH_INTERVAL_MS", "10"),
    ])
    .await;
    let group = group();
    let reader = key_in(&store, Permission::SignalsRead, &group).await;
    let writer = key_in(&store, Permission::SignalsWrite, &group).await;
    let scan = store
        .create_scan(&group, ScanStatus::Running)
        .await
        .unwrap()
        .id;
    let mut stream = follow(stream_request(
        &server.url(&changes_path(&group, "")),
        &reader,
    ))
    .await;

    let cancel = ApiResponse::from(
        reqwest::Client::new()
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&writer)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let event = stream.next_event(SOON).await;

    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert_eq!(event.event.as_deref(), Some("scan.status_changed"));
    id_of(&event);
    let data = event.json();
    let at = data["at"].as_str().expect("at is a string");
    assert!(at.ends_with('Z'), "{at}");
    assert_eq!(
        data,
        json!({
            "scanId": scan.as_str(),
            "accountGroupId": group.as_str(),
            "from": "running",
            "to": "cancelled",
            "at": at,
            "traceId": cancel.trace_id(),
            "reason": null,
        })
    );
    assert_eq!(data["at"], cancel.body["data"]["cancelledAt"]);
}
store_test!(a_cancel_reaches_an_open_stream_by_its_hint_long_before_the_poll);

/// `STREAM_BATCH_MS`: while changes keep coming, the instance's streams read the trail at most
/// that often, so the change right after another waits for the batch; the first change after a
/// quiet spell is read as soon as its hint arrives, not held for a batch.
async fn changes_that_keep_coming_wait_for_the_batch_and_one_after_a_quiet_spell_does_not(
    backend: Backend,
) {
    const BATCH: Duration = Duration::from_millis(1000);
    let (db, store) = database_for_process(backend).await;
    let server = ServerProcess::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("FEED_POLL_MS", "60000"),
        ("PUBLISH_INTERVAL_MS", "10"),
        ("STREAM_BATCH_MS", "1000"),
    ])
    .await;
    let group = group();
    let reader = key_in(&store, Permission::SignalsRead, &group).await;
    let writer = key_in(&store, Permission::SignalsWrite, &group).await;
    let mut scans = Vec::new();
    for _ in 0..2 {
        let scan = store
            .create_scan(&group, ScanStatus::Running)
            .await
            .unwrap();
        scans.push(scan.id);
    }
    let mut stream = follow(stream_request(
        &server.url(&changes_path(&group, "")),
        &reader,
    ))
    .await;
    let cancel = |scan: ScanId| {
        let request = reqwest::Client::new()
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&writer);
        async move { ApiResponse::from(request.send().await.unwrap()).await }
    };
    // A quiet spell longer than the batch since the hub's first read.
    tokio::time::sleep(BATCH + Duration::from_millis(500)).await;

    let first_sent = Instant::now();
    let first = cancel(scans[0]).await;
    let first_event = stream.next_event(SOON).await;
    let first_after = first_sent.elapsed();
    let second = cancel(scans[1]).await;
    let second_event = stream.next_event(SOON).await;
    let second_after = first_sent.elapsed();

    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(first_event.json()["scanId"], scans[0].as_str());
    assert_eq!(second_event.json()["scanId"], scans[1].as_str());
    // The read that found the first change began after it was sent; the next read waits for the
    // batch from there. The bound below is far above an idle machine's tens of milliseconds.
    assert!(
        first_after < BATCH * 9 / 10,
        "the first change after a quiet spell took {first_after:?}: held for the batch"
    );
    assert!(
        second_after >= BATCH,
        "the change right after another came {second_after:?} after the first was sent, within the batch of {BATCH:?}"
    );
}
store_test!(changes_that_keep_coming_wait_for_the_batch_and_one_after_a_quiet_spell_does_not);

async fn a_reconnect_gets_exactly_the_missed_changes_in_order_then_live_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let mut seen_ids = HashSet::new();
    let mut first = follow(stream_request(&url, &reader)).await;
    let before = cancel_fresh_scans(&app, &writer, &group, 1).await;
    let last_received = first.next_event(SOON).await;
    assert_eq!(
        moves(std::slice::from_ref(&last_received)),
        cancels_of(&before, "running")
    );
    drop(first);

    // By Last-Event-ID, as an EventSource reconnects.
    let missed = cancel_fresh_scans(&app, &writer, &group, 50).await;
    let mut resumed =
        follow(stream_request(&url, &reader).header("Last-Event-ID", id_of(&last_received))).await;
    let replayed = next_events(&mut resumed, 50).await;
    let live = cancel_fresh_scans(&app, &writer, &group, 1).await;
    let live_event = resumed.next_event(SOON).await;
    resumed.assert_no_event_for(QUIET).await;
    drop(resumed);

    assert_eq!(moves(&replayed), cancels_of(&missed, "running"));
    assert_eq!(
        moves(std::slice::from_ref(&live_event)),
        cancels_of(&live, "running")
    );

    // By ?after=, as a client opens its first connection from a stored cursor.
    let missed_again = cancel_fresh_scans(&app, &writer, &group, 50).await;
    let mut reopened = follow(stream_request(
        &app.url(&changes_path(&group, &query_after(&id_of(&live_event)))),
        &reader,
    ))
    .await;
    let replayed_again = next_events(&mut reopened, 50).await;
    let live_again = cancel_fresh_scans(&app, &writer, &group, 1).await;
    let live_event_again = reopened.next_event(SOON).await;
    reopened.assert_no_event_for(QUIET).await;

    assert_eq!(moves(&replayed_again), cancels_of(&missed_again, "running"));
    assert_eq!(
        moves(std::slice::from_ref(&live_event_again)),
        cancels_of(&live_again, "running")
    );
    let every_event = [last_received, live_event, live_event_again]
        .into_iter()
        .chain(replayed)
        .chain(replayed_again);
    for event in every_event {
        assert!(seen_ids.insert(id_of(&event)), "an id twice: {event:?}");
    }
    assert_eq!(seen_ids.len(), 103);
}
store_test!(a_reconnect_gets_exactly_the_missed_changes_in_order_then_live_ones);

/// Cancels that commit at once interleave their transactions (on PostgreSQL, ids and xids out of
/// commit order): each still reaches a stream exactly once, and resuming from any event's id gets
/// exactly the changes delivered after it.
async fn concurrent_cancels_reach_a_stream_once_each_and_resume_from_any_event_exactly(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let mut scans = Vec::new();
    for _ in 0..60 {
        scans.push(app.scan(&group, ScanStatus::Running).await);
    }
    let mut stream = follow(stream_request(&url, &reader)).await;

    let cancels = futures::future::join_all(
        scans
            .iter()
            .map(|scan| app.cancel(Some(&writer), group.as_str(), scan.as_str())),
    )
    .await;
    let delivered = next_events(&mut stream, scans.len()).await;
    stream.assert_no_event_for(QUIET).await;
    let middle = 20;
    let mut resumed =
        follow(stream_request(&url, &reader).header("Last-Event-ID", id_of(&delivered[middle])))
            .await;
    let rest = next_events(&mut resumed, scans.len() - middle - 1).await;
    resumed.assert_no_event_for(QUIET).await;

    assert!(cancels.iter().all(|cancel| cancel.status == 200));
    let scan_ids = |events: &[SseEvent]| -> Vec<String> {
        moves(events).into_iter().map(|(scan, ..)| scan).collect()
    };
    let mut every = scan_ids(&delivered);
    every.sort();
    let mut expected: Vec<String> = scans.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(every, expected, "each cancel once");
    let mut after_middle = scan_ids(&delivered[middle + 1..]);
    let mut replayed = scan_ids(&rest);
    after_middle.sort();
    replayed.sort();
    assert_eq!(
        replayed, after_middle,
        "exactly what was delivered after the cursor"
    );
}
store_test!(concurrent_cancels_reach_a_stream_once_each_and_resume_from_any_event_exactly);

/// Cancels `scan` in the open transaction `held`, with its audit row (trace id `held`), and
/// commits: a change whose transaction began before the changes committed meanwhile.
async fn cancel_and_commit(held: &mut PgConnection, scan: &ScanId) {
    sqlx::query(
        "UPDATE signal_scans SET status = 'cancelled', updated_at = now(), finished_at = now(),
             cancelled_at = now() WHERE id = $1",
    )
    .bind(scan.as_str())
    .execute(&mut *held)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO signal_scan_events (scan_id, from_status, to_status, trace_id, occurred_at)
         VALUES ($1, 'running', 'cancelled', 'held', now())",
    )
    .bind(scan.as_str())
    .execute(&mut *held)
    .await
    .unwrap();
    held.execute("COMMIT").await.unwrap();
}

/// A transaction that began before a later one but commits after it (PostgreSQL's ids and xids do
/// not follow commit order): its change is delivered after the later one's, live and on resume
/// from the later one's id, and never twice. The held transaction writes as the store does.
async fn a_change_committed_late_by_an_older_transaction_is_delivered_live_and_on_resume(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let (held_scan, quick_scan) = (
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    );
    let mut stream = follow(stream_request(&url, &reader)).await;
    let mut held = PgConnection::connect(&app.db.url).await.unwrap();
    held.execute("BEGIN").await.unwrap();
    held.execute("SELECT pg_current_xact_id()").await.unwrap();

    let quick = app
        .cancel(Some(&writer), group.as_str(), quick_scan.as_str())
        .await;
    let quick_event = stream.next_event(SOON).await;
    cancel_and_commit(&mut held, &held_scan).await;
    let held_event = stream.next_event(SOON).await;
    stream.assert_no_event_for(QUIET).await;
    let mut resumed =
        follow(stream_request(&url, &reader).header("Last-Event-ID", id_of(&quick_event))).await;
    let replayed = resumed.next_event(SOON).await;
    resumed.assert_no_event_for(QUIET).await;
    let mut resumed_after_all =
        follow(stream_request(&url, &reader).header("Last-Event-ID", id_of(&held_event))).await;
    resumed_after_all.assert_no_event_for(QUIET).await;

    assert_eq!(quick.status, 200, "{quick:?}");
    assert_eq!(
        moves(&[quick_event, held_event.clone()]),
        cancels_of(&[quick_scan, held_scan], "running")
    );
    assert_eq!(held_event.json()["traceId"], "held");
    assert_eq!(
        moves(std::slice::from_ref(&replayed)),
        cancels_of(&[held_scan], "running")
    );
}
store_test!(
    a_change_committed_late_by_an_older_transaction_is_delivered_live_and_on_resume,
    postgres_only
);

/// A follower is handed only the pages holding its group's changes. A change of its group that
/// an older transaction commits late, after many pages of another group went by without it, still
/// reaches it once, and resuming from the event before it replays it.
async fn a_late_commit_reaches_a_follower_that_skipped_other_groups_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (quiet, busy) = (group(), group());
    let writer = app
        .key_with(
            &[Permission::SignalsWrite],
            AccountGroupAccess::Only(vec![quiet, busy]),
            None,
        )
        .await
        .0;
    let (quiet_reader, _) = read_key(&app, &quiet).await;
    let (busy_reader, _) = read_key(&app, &busy).await;
    let quiet_url = app.url(&changes_path(&quiet, ""));
    let held_scan = app.scan(&quiet, ScanStatus::Running).await;
    let mut stream = follow(stream_request(&quiet_url, &quiet_reader)).await;
    let mut busy_stream = follow(stream_request(
        &app.url(&changes_path(&busy, "")),
        &busy_reader,
    ))
    .await;
    let mut held = PgConnection::connect(&app.db.url).await.unwrap();
    held.execute("BEGIN").await.unwrap();
    held.execute("SELECT pg_current_xact_id()").await.unwrap();

    // A page for the quiet group while the held transaction runs: its cursor now waits for it.
    let before = cancel_fresh_scans(&app, &writer, &quiet, 1).await;
    let before_event = stream.next_event(SOON).await;
    // Pages of the busy group only, one change at a time; the busy stream proves the hub read them.
    let mut elsewhere = Vec::new();
    for _ in 0..20 {
        elsewhere.extend(cancel_fresh_scans(&app, &writer, &busy, 1).await);
    }
    let busy_events = next_events(&mut busy_stream, 20).await;
    cancel_and_commit(&mut held, &held_scan).await;
    let held_event = stream.next_event(SOON).await;
    let after = cancel_fresh_scans(&app, &writer, &quiet, 1).await;
    let after_event = stream.next_event(SOON).await;
    stream.assert_no_event_for(QUIET).await;
    let mut resumed = follow(
        stream_request(&quiet_url, &quiet_reader).header("Last-Event-ID", id_of(&before_event)),
    )
    .await;
    let replayed = next_events(&mut resumed, 2).await;
    resumed.assert_no_event_for(QUIET).await;

    assert_eq!(moves(&busy_events), cancels_of(&elsewhere, "running"));
    assert_eq!(moves(&[before_event]), cancels_of(&before, "running"));
    assert_eq!(held_event.json()["traceId"], "held");
    assert_eq!(
        moves(&[held_event, after_event]),
        cancels_of(&[held_scan, after[0]], "running")
    );
    assert_eq!(
        moves(&replayed),
        cancels_of(&[held_scan, after[0]], "running")
    );
}
store_test!(
    a_late_commit_reaches_a_follower_that_skipped_other_groups_pages,
    postgres_only
);

/// A cursor from before every row (an old client, a trimmed trail) replays what exists.
async fn a_cursor_older_than_the_trail_replays_what_exists(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let done = cancel_fresh_scans(&app, &writer, &group, 3).await;

    let mut stream = follow(stream_request(
        &app.url(&changes_path(&group, &query_after("0-0"))),
        &reader,
    ))
    .await;
    let replayed = next_events(&mut stream, 3).await;

    assert_eq!(moves(&replayed), cancels_of(&done, "running"));
    stream.assert_no_event_for(QUIET).await;
}
store_test!(a_cursor_older_than_the_trail_replays_what_exists);

async fn a_stream_never_carries_another_groups_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, b) = (group(), group());
    let writer = app
        .key_with(
            &[Permission::SignalsWrite],
            AccountGroupAccess::Only(vec![a, b]),
            None,
        )
        .await
        .0;
    let (reader_a, _) = read_key(&app, &a).await;
    let (reader_b, _) = read_key(&app, &b).await;
    let (every_group, _) = app
        .key_with(&[Permission::SignalsRead], AccountGroupAccess::All, None)
        .await;
    let mut stream_a = follow(stream_request(&app.url(&changes_path(&a, "")), &reader_a)).await;
    let mut stream_b = follow(stream_request(&app.url(&changes_path(&b, "")), &reader_b)).await;
    // A key for every group still follows only the group in the path.
    let mut stream_a_wide = follow(stream_request(
        &app.url(&changes_path(&a, "")),
        &every_group,
    ))
    .await;

    let (mut in_a, mut in_b) = (Vec::new(), Vec::new());
    for round in 0..3 {
        in_a.extend(cancel_fresh_scans(&app, &writer, &a, 1).await);
        if round < 2 {
            in_b.extend(cancel_fresh_scans(&app, &writer, &b, 1).await);
        }
    }
    let seen_a = next_events(&mut stream_a, 3).await;
    let seen_b = next_events(&mut stream_b, 2).await;
    let seen_a_wide = next_events(&mut stream_a_wide, 3).await;
    stream_a.assert_no_event_for(QUIET).await;
    stream_b.assert_no_event_for(QUIET).await;
    // Resuming reads the trail by cursor rather than the shared pages: the group holds there too.
    let mut resumed_a = follow(
        stream_request(&app.url(&changes_path(&a, "")), &reader_a)
            .header("Last-Event-ID", id_of(&seen_a[0])),
    )
    .await;
    let replayed_a = next_events(&mut resumed_a, 2).await;
    resumed_a.assert_no_event_for(QUIET).await;

    assert_eq!(moves(&seen_a), cancels_of(&in_a, "running"));
    assert_eq!(moves(&seen_a_wide), cancels_of(&in_a, "running"));
    assert_eq!(moves(&seen_b), cancels_of(&in_b, "running"));
    assert_eq!(moves(&replayed_a), cancels_of(&in_a[1..], "running"));
    for event in seen_a.iter().chain(&replayed_a) {
        assert_eq!(event.json()["accountGroupId"], a.as_str());
    }
}
store_test!(a_stream_never_carries_another_groups_changes);

async fn filters_by_scan_id_and_status_deliver_only_matching_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    // The served store, so that on SQLite the runner's moves reach the app's feed as hints too.
    let runner = ScanService::new(app.served_store.clone());
    let first = app.scan(&group, ScanStatus::Queued).await;
    let second = app.scan(&group, ScanStatus::Running).await;
    let other = app.scan(&group, ScanStatus::Queued).await;
    let open = |query: String| {
        follow(stream_request(
            &app.url(&changes_path(&group, &query)),
            &reader,
        ))
    };
    let mut by_scan = open(format!("?scanId={first}&scanId={second}")).await;
    let mut cancels = open("?status=cancelled".into()).await;
    let mut runner_moves = open("?status=running&status=completed".into()).await;

    runner
        .advance(&first, ScanStatus::Running, RUNNER)
        .await
        .unwrap();
    let cancel_other = app
        .cancel(Some(&writer), group.as_str(), other.as_str())
        .await;
    runner
        .advance(&second, ScanStatus::Completed, RUNNER)
        .await
        .unwrap();
    let cancel_first = app
        .cancel(Some(&writer), group.as_str(), first.as_str())
        .await;

    assert_eq!(
        (cancel_other.status.as_u16(), cancel_first.status.as_u16()),
        (200, 200)
    );
    let step = |scan: &ScanId, from: &str, to: &str| (scan.to_string(), from.into(), to.into());
    assert_eq!(
        moves(&next_events(&mut by_scan, 3).await),
        [
            step(&first, "queued", "running"),
            step(&second, "running", "completed"),
            step(&first, "running", "cancelled"),
        ]
    );
    assert_eq!(
        moves(&next_events(&mut cancels, 2).await),
        [
            step(&other, "queued", "cancelled"),
            step(&first, "running", "cancelled"),
        ]
    );
    assert_eq!(
        moves(&next_events(&mut runner_moves, 2).await),
        [
            step(&first, "queued", "running"),
            step(&second, "running", "completed"),
        ]
    );
    runner_moves.assert_no_event_for(QUIET).await;
}
store_test!(filters_by_scan_id_and_status_deliver_only_matching_changes);

async fn bad_parameters_and_cursors_are_400_naming_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    // (query, Last-Event-ID, what the details must name)
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("?scanId=nope".into(), None, "scanId"),
        ("?status=done".into(), None, "status"),
        ("?status=CANCELLED".into(), None, "status"),
        ("?after=garbage".into(), None, "after"),
        ("?after=1-01".into(), None, "after"),
        ("?after=1-1&after=1-2".into(), None, "after"),
        ("".into(), Some("garbage"), "Last-Event-ID"),
        // Well-formed, but ahead of everything the trail holds: no feed issued it.
        (query_after("999999999999-1"), None, "after"),
        ("".into(), Some("999999999999-1"), "Last-Event-ID"),
    ];
    for (query, last_event_id, named) in cases {
        let mut request = stream_request(&app.url(&changes_path(&group, &query)), &reader);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }

        let details = refused(request).await.assert_error(400, "VALIDATION_ERROR");

        assert!(
            details.contains(named),
            "{query} {last_event_id:?}: {details}"
        );
    }
}
store_test!(bad_parameters_and_cursors_are_400_naming_them);

/// An EventSource sends an empty `Last-Event-ID` before any event had an id: no cursor, so the
/// stream starts now, replaying nothing.
async fn an_empty_cursor_starts_the_stream_now(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    cancel_fresh_scans(&app, &writer, &group, 2).await;

    let mut by_header = follow(
        stream_request(&app.url(&changes_path(&group, "")), &reader).header("Last-Event-ID", ""),
    )
    .await;
    let mut by_query = follow(stream_request(
        &app.url(&changes_path(&group, "?after=")),
        &reader,
    ))
    .await;
    by_header.assert_no_event_for(QUIET).await;
    by_query.assert_no_event_for(QUIET).await;
    let live = cancel_fresh_scans(&app, &writer, &group, 1).await;

    for stream in [&mut by_header, &mut by_query] {
        let event = stream.next_event(SOON).await;
        assert_eq!(moves(&[event]), cancels_of(&live, "running"));
    }
}
store_test!(an_empty_cursor_starts_the_stream_now);

fn scan_filters(count: usize) -> String {
    let filters: Vec<String> = (0..count)
        .map(|_| format!("scanId={}", ScanId::generate()))
        .collect();
    format!("?{}", filters.join("&"))
}

/// The contract allows up to 100 `scanId` filters, so a runner can follow its 100 scans; the
/// 101st is refused naming `scanId`.
async fn a_hundred_scan_filters_open_a_stream_and_the_101st_is_400_naming_scan_id(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;

    let hundred = SseStream::open(stream_request(
        &app.url(&changes_path(&group, &scan_filters(100))),
        &reader,
    ))
    .await;
    let hundred_and_one = refused(stream_request(
        &app.url(&changes_path(&group, &scan_filters(101))),
        &reader,
    ))
    .await;

    if let Err(refused) = hundred {
        panic!("100 scanId filters were refused: {refused:?}");
    }
    let details = hundred_and_one.assert_error(400, "VALIDATION_ERROR");
    assert!(details.contains("scanId"), "{details}");
}
store_test!(a_hundred_scan_filters_open_a_stream_and_the_101st_is_400_naming_scan_id);

/// As the list route does (`?colour=blue` names `colour`), so a client sees its own typo.
async fn an_unknown_parameter_is_400_naming_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;

    let details = refused(stream_request(
        &app.url(&changes_path(&group, "?colour=blue")),
        &reader,
    ))
    .await
    .assert_error(400, "VALIDATION_ERROR");

    assert!(details.contains("colour"), "{details}");
}
store_test!(an_unknown_parameter_is_400_naming_it);

/// 401 → 403 (permission) → 400 (path, parameters) → 403 (group) → 400 (unknown cursor): each
/// row breaks every later rule too, and must answer with the earliest one, as the read routes do.
async fn checks_run_in_the_read_routes_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let (reader, _) = read_key(&app, &mine).await;
    let (powerless, _) = app
        .key_with(&[], AccountGroupAccess::Only(vec![mine]), None)
        .await;
    let forged = query_after("999999999999-1");
    let unknown_key = NewApiKey::generate().secret;
    let path =
        |group: &str, query: &str| format!("/v1/accounts/{group}/signals/scans/changes{query}");
    let cases: [(Option<&str>, String, u16, &str, &str); 8] = [
        (None, path("nope", "?scanId=nope"), 401, "UNAUTHORIZED", ""),
        (
            Some(&unknown_key),
            path(mine.as_str(), ""),
            401,
            "UNAUTHORIZED",
            "",
        ),
        (
            Some(&powerless),
            path("nope", "?scanId=nope"),
            403,
            "FORBIDDEN",
            "signals:read or signals:write",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), "?scanId=nope"),
            400,
            "VALIDATION_ERROR",
            "scanId",
        ),
        (
            Some(&reader),
            path("nope", ""),
            400,
            "VALIDATION_ERROR",
            "accountGroupId",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), &forged),
            403,
            "FORBIDDEN",
            "",
        ),
        (
            Some(&reader),
            path(theirs.as_str(), ""),
            403,
            "FORBIDDEN",
            "",
        ),
        (
            Some(&reader),
            path(mine.as_str(), &forged),
            400,
            "VALIDATION_ERROR",
            "after",
        ),
    ];
    for (key, path, status, code, named) in cases {
        let mut request = reqwest::Client::new().get(app.url(&path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }

        let response = refused(request).await;

        let details = response.assert_error(status, code);
        assert!(details.contains(named), "{path}: {details}");
        // Every answer after authentication states the key's rate limit.
        assert_eq!(
            response.header("ratelimit").is_some(),
            status != 401,
            "{response:?}"
        );
    }
}
store_test!(checks_run_in_the_read_routes_order);

async fn a_key_past_its_stream_cap_is_429_until_one_closes(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        with_streams(StreamSettings {
            // The server notices a closed stream when its next keep-alive cannot be written.
            keepalive: Duration::from_millis(200),
            max_per_key: 2,
            max_age: Duration::from_secs(3600),
        }),
    )
    .await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let (other_reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let first = follow(stream_request(&url, &reader)).await;
    // Refused requests hold no slot.
    for _ in 0..3 {
        refused(stream_request(
            &app.url(&changes_path(&group, &query_after("999999999999-1"))),
            &reader,
        ))
        .await
        .assert_error(400, "VALIDATION_ERROR");
    }
    let _second = follow(stream_request(&url, &reader)).await;

    let third = refused(stream_request(&url, &reader)).await;
    let other_key = follow(stream_request(&url, &other_reader)).await;

    third.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = third
        .header("retry-after")
        .expect("a 429 says when to retry")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    drop(other_key);
    drop(first);
    let deadline = Instant::now() + SOON;
    loop {
        match SseStream::open(stream_request(&url, &reader)).await {
            Ok(_) => break,
            Err(response) => {
                response.assert_error(429, "RATE_LIMITED");
                assert!(
                    Instant::now() < deadline,
                    "a slot was not given back within {SOON:?} of its stream closing"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
store_test!(a_key_past_its_stream_cap_is_429_until_one_closes);

async fn a_revoked_keys_stream_ends_within_the_cache_ttl_and_a_tick_while_others_go_on(
    backend: Backend,
) {
    let keepalive = Duration::from_millis(200);
    let key_cache_ttl = Duration::from_millis(1000);
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
    // The bound of the rule, plus room for a loaded machine; without the check the stream would
    // run for its hour.
    let frames = frames_during(
        &mut doomed_stream,
        key_cache_ttl + keepalive + Duration::from_secs(2),
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
    assert_eq!(
        frames[frames.len() - 2],
        Some(RECONNECT),
        "a last retry: {frames:?}"
    );
    assert!(
        frames[..frames.len() - 2]
            .iter()
            .all(|f| *f == keep_alive()),
        "{frames:?}"
    );
    assert!(after_end.is_none_or(|frame| frame == keep_alive()));
    assert!(
        live_frames.iter().all(|frame| *frame == keep_alive()),
        "the live key's stream goes on: {live_frames:?}"
    );
    assert!(live_frames.len() >= 2, "{live_frames:?}");
}
store_test!(a_revoked_keys_stream_ends_within_the_cache_ttl_and_a_tick_while_others_go_on);

async fn a_stream_ends_at_its_max_age_with_a_last_retry(backend: Backend) {
    let max_age = Duration::from_secs(1);
    let app = TestApp::spawn_with(
        backend,
        with_streams(StreamSettings {
            max_age,
            ..StreamSettings::default()
        }),
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

    assert!(frames.iter().all(|f| *f == keep_alive()), "{frames:?}");
    assert_eq!(moves(&[event]), cancels_of(&cancelled, "running"));
}
store_test!(a_stream_outlives_the_request_timeout);

/// A quiet stream is a request in progress, not an idle connection: neither the idle timeout nor
/// the header timeout of its connection closes it.
async fn a_quiet_stream_outlives_the_connections_idle_and_header_timeouts(backend: Backend) {
    let (db, store) = database_for_process(backend).await;
    let server = ServerProcess::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("HTTP_IDLE_TIMEOUT_MS", "200"),
        ("HTTP_HEADER_TIMEOUT_MS", "200"),
    ])
    .await;
    let group = group();
    let reader = key_in(&store, Permission::SignalsRead, &group).await;
    let writer = key_in(&store, Permission::SignalsWrite, &group).await;
    let scan = store
        .create_scan(&group, ScanStatus::Running)
        .await
        .unwrap()
        .id;
    let mut stream = follow(stream_request(
        &server.url(&changes_path(&group, "")),
        &reader,
    ))
    .await;

    // Several idle timeouts long, and shorter than the 15 s keep-alive: nothing is written.
    let quiet = frames_during(&mut stream, Duration::from_millis(1500)).await;
    let cancel = ApiResponse::from(
        reqwest::Client::new()
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&writer)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let event = stream.next_event(SOON).await;

    assert_eq!(quiet, [], "the stream stayed open and quiet");
    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert_eq!(
        moves(std::slice::from_ref(&event)),
        cancels_of(&[scan], "running")
    );
}
store_test!(a_quiet_stream_outlives_the_connections_idle_and_header_timeouts);

/// SIGTERM ends streams at once: they do not hold the drain for SHUTDOWN_TIMEOUT_MS.
async fn sigterm_ends_open_streams_and_the_process_exits_promptly(backend: Backend) {
    let (db, store) = database_for_process(backend).await;
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", db.url.as_str()),
        ("SHUTDOWN_TIMEOUT_MS", "30000"),
    ])
    .await;
    let group = group();
    let reader = key_in(&store, Permission::SignalsRead, &group).await;
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

async fn changes_is_a_stream_and_never_taken_for_a_scan_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let writer = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let scans = format!("/v1/accounts/{group}/signals/scans");

    follow(stream_request(
        &app.url(&format!("{scans}/changes")),
        &reader,
    ))
    .await;
    let read = app.get(&reader, &format!("{scans}/{scan}")).await;
    let events_of_changes = app.get(&reader, &format!("{scans}/changes/events")).await;
    let cancel_of_changes = app.cancel(Some(&writer), group.as_str(), "changes").await;

    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["data"]["scanId"], Value::from(scan.as_str()));
    for response in [events_of_changes, cancel_of_changes] {
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(details.contains("scanId"), "{details}");
    }
}
store_test!(changes_is_a_stream_and_never_taken_for_a_scan_id);

/// `scans watch --server` as a runner uses it: each change printed once, in order, across the
/// reconnections that every stream's end forces (here each ends after 1 s).
async fn scans_watch_server_prints_each_change_once_across_reconnections(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        with_streams(StreamSettings {
            max_age: Duration::from_secs(1),
            ..StreamSettings::default()
        }),
    )
    .await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"))
        .args(["scans", "watch", "--server", &app.url("/")])
        .args(["--account-group", group.as_str()])
        .env("SIGNAL_SCANS_API_KEY", &reader)
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut printed =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut logs =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stderr.take().unwrap()));
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = logs.next_line().await {
            if line.contains("watching for status changes") {
                let _ = connected_tx.send(());
            }
        }
    });
    tokio::time::timeout(SOON, connected.recv())
        .await
        .expect("the watch connects")
        .expect("the watch runs");

    // Spread over several streams and the pauses between them.
    let mut cancelled = Vec::new();
    let mut cancelled_at = Vec::new();
    for _ in 0..8 {
        let scan = app.scan(&group, ScanStatus::Running).await;
        let cancel = app
            .cancel(Some(&writer), group.as_str(), scan.as_str())
            .await;
        assert_eq!(cancel.status, 200, "{cancel:?}");
        cancelled.push(scan);
        cancelled_at.push(cancel.body["data"]["cancelledAt"].clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    // Each scan's creation, then its cancel.
    while lines.len() < 2 * cancelled.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = tokio::time::timeout(left, printed.next_line())
            .await
            .unwrap_or_else(|_| panic!("printed only {lines:?}"))
            .unwrap()
            .expect("the watch keeps running");
        lines.push(serde_json::from_str::<Value>(&line).expect("a JSON line"));
    }
    // Long enough for another stream to end and the watch to resume once more.
    let after = tokio::time::timeout(Duration::from_secs(4), printed.next_line()).await;
    let mut reconnections = 0;
    while connected.try_recv().is_ok() {
        reconnections += 1;
    }

    assert!(
        after.is_err(),
        "printed again after the last change: {after:?}"
    );
    assert!(reconnections >= 2, "{reconnections} reconnections");
    for ((pair, scan), at) in lines.chunks(2).zip(&cancelled).zip(&cancelled_at) {
        let [created, line] = pair else {
            panic!("{lines:?}")
        };
        assert_eq!(created["scanId"], scan.as_str(), "{lines:?}");
        assert_eq!(
            (&created["from"], &created["to"]),
            (&Value::Null, &json!("running"))
        );
        assert_eq!(line["scanId"], scan.as_str(), "{lines:?}");
        assert_eq!(line["accountGroupId"], group.as_str());
        assert_eq!(
            (&line["from"], &line["to"]),
            (&json!("running"), &json!("cancelled"))
        );
        assert_eq!(&line["at"], at);
    }
}
store_test!(scans_watch_server_prints_each_change_once_across_reconnections);

/// Every stream of a process shares its one reader of the audit trail: thirty more streams open
/// no connection beyond what the pool (capped at 2 here) may open anyway, and each gets the change.
async fn streams_share_the_process_reader_and_hold_no_database_connection(backend: Backend) {
    let mut settings = with_streams(StreamSettings {
        max_per_key: 40,
        ..StreamSettings::default()
    });
    settings.db_max_connections = 2;
    let app = TestApp::spawn_with(backend, settings).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let scans = [
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    ];
    let mut counter = PgConnection::connect(&app.db.url).await.unwrap();
    let connections = async |counter: &mut PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_one(counter)
        .await
        .unwrap()
    };
    // The first stream starts the process's reader; a cancel starts its publisher.
    let mut streams = vec![follow(stream_request(&url, &reader)).await];
    let first = cancel_fresh_scans_of(&app, &writer, &group, &scans[..1]).await;
    assert_eq!(moves(&[streams[0].next_event(SOON).await]), first);
    let before = connections(&mut counter).await;

    for _ in 0..30 {
        streams.push(follow(stream_request(&url, &reader)).await);
    }
    let with_streams = connections(&mut counter).await;
    let second = cancel_fresh_scans_of(&app, &writer, &group, &scans[1..]).await;

    assert!(
        with_streams <= before + 2,
        "{before} connections before 30 more streams, {with_streams} with them"
    );
    for stream in &mut streams {
        assert_eq!(moves(&[stream.next_event(SOON).await]), second);
    }
}
store_test!(
    streams_share_the_process_reader_and_hold_no_database_connection,
    postgres_only
);

/// Cancels `scans` one after the other; their moves as a stream shows them.
async fn cancel_fresh_scans_of(
    app: &TestApp,
    writer: &str,
    group: &AccountGroupId,
    scans: &[ScanId],
) -> Vec<(String, String, String)> {
    for scan in scans {
        let cancel = app
            .cancel(Some(writer), group.as_str(), scan.as_str())
            .await;
        assert_eq!(cancel.status, 200, "{cancel:?}");
    }
    cancels_of(scans, "running")
}

/// Keep-alives keep their rhythm while other scans' changes pass the stream's filter: the client
/// (and any proxy) still hears from the stream, and the key is still checked on every tick.
async fn keep_alives_keep_their_rhythm_while_filtered_out_changes_pass(backend: Backend) {
    let keepalive = Duration::from_millis(500);
    let app = TestApp::spawn_with(
        backend,
        with_streams(StreamSettings {
            keepalive,
            ..StreamSettings::default()
        }),
    )
    .await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let unrelated = ScanId::generate();
    let mut stream = follow(stream_request(
        &app.url(&changes_path(&group, &format!("?scanId={unrelated}"))),
        &reader,
    ))
    .await;

    // Changes of other scans, more often than the keep-alive, for several keep-alive periods.
    let busy = async {
        for _ in 0..12 {
            cancel_fresh_scans(&app, &writer, &group, 1).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (frames, ()) = tokio::join!(frames_during(&mut stream, keepalive * 5), busy);

    assert!(
        frames.iter().all(|frame| *frame == keep_alive()),
        "{frames:?}"
    );
    assert!(frames.len() >= 2, "keep-alives heard: {frames:?}");
}
store_test!(keep_alives_keep_their_rhythm_while_filtered_out_changes_pass);
