//! Cursors: a client that reconnects with its last id (or `?after=`) gets every committed change
//! exactly once, in order, whatever order transactions commit in.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::changes::StreamSettings;
use sqlx::{Connection, Executor, PgConnection};

use super::*;
use crate::helpers::locks::until_advisory_waiters;
use crate::helpers::sse::SseEvent;
use crate::helpers::watch::Watch;
use crate::helpers::{Backend, ServeDefault, Settings, TestApp, group};
use crate::store_test;

async fn a_reconnect_gets_exactly_the_missed_changes_in_order_then_live_ones(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
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

/// Cancels that commit at once interleave their transactions: on PostgreSQL the interleaving is
/// forced, a third of them writing their audit row (taking its id and xid) and then waiting on a
/// lock the test holds until the others have been delivered, so ids and xids are out of commit
/// order. Each change still reaches a stream exactly once, and resuming from every event's id gets
/// exactly the changes delivered after it, once each. (A resumed stream reads what has committed
/// in the trail's own order, which can differ from the order the live stream saw commits in:
/// the replays are compared as sets, which duplicates would still fail.)
async fn concurrent_cancels_reach_a_stream_once_each_and_resume_from_any_event_exactly(
    backend: Backend,
) {
    const SCANS: usize = 60;
    const HELD: usize = SCANS / 3;
    const HOLD_LOCK: i64 = 4_243;
    let mut settings = with_streams(StreamSettings {
        max_per_key: SCANS + 1,
        ..StreamSettings::default()
    })
    // The held cancels keep their connections, each its own batch, while the others go on.
    .with_db_max_connections(HELD as u32 + 10)
    .with_db_write_batches(HELD as u32 + 10)
    .with_db_timeout(Duration::from_secs(20));
    settings.key_cache_ttl = Duration::from_secs(600);
    let app = TestApp::spawn_with(backend, settings).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let mut scans = Vec::new();
    for _ in 0..SCANS {
        scans.push(app.scan(&group, ScanStatus::Running).await);
    }
    let held: Vec<ScanId> = scans.iter().step_by(3).copied().collect();
    let mut admin = match backend {
        Backend::Postgres => Some(hold_commits_of(&app, &held, HOLD_LOCK).await),
        Backend::Sqlite => None,
    };
    let mut stream = follow(stream_request(&url, &reader)).await;

    // Concurrent cancels share a commit (group commit), and a batch with a held cancel would
    // hold the others with it. So on PostgreSQL each held cancel is sent once the held ones
    // before it wait on the lock, alone in a batch (a transaction) of its own, and the others once
    // every held one waits: they commit around the held transactions, after them in xid order.
    let (seen_waiting, waiting) = tokio::sync::watch::channel(0);
    let (cancels, (), delivered) = tokio::join!(
        futures::future::join_all(scans.iter().enumerate().map(|(i, scan)| {
            let mut waiting = waiting.clone();
            let before = if i % 3 == 0 { i / 3 } else { HELD };
            let (app, writer, group) = (&app, &writer, &group);
            async move {
                if backend == Backend::Postgres {
                    waiting.wait_for(|&n| n >= before).await.unwrap();
                }
                app.cancel(Some(writer), group.as_str(), scan.as_str())
                    .await
            }
        })),
        async {
            if backend == Backend::Postgres {
                let mut observer = PgConnection::connect(&app.db.url).await.unwrap();
                for count in 1..=HELD {
                    until_advisory_waiters(&mut observer, count).await;
                    seen_waiting.send_replace(count);
                }
            }
        },
        async {
            let Some(admin) = admin.as_mut() else {
                return next_events(&mut stream, SCANS).await;
            };
            // The held ones have their ids and xids and wait to commit; the others commit and
            // are delivered meanwhile.
            until_advisory_waiters(admin, HELD).await;
            let mut delivered = next_events(&mut stream, SCANS - HELD).await;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(HOLD_LOCK)
                .execute(&mut *admin)
                .await
                .unwrap();
            delivered.extend(next_events(&mut stream, HELD).await);
            delivered
        }
    );
    stream.assert_no_event_for(QUIET).await;
    let resumed = futures::future::join_all((0..SCANS).map(|i| {
        let request = stream_request(&url, &reader).header("Last-Event-ID", id_of(&delivered[i]));
        async move {
            let mut resumed = follow(request).await;
            let rest = next_events(&mut resumed, SCANS - i - 1).await;
            resumed.assert_no_event_for(QUIET).await;
            rest
        }
    }))
    .await;

    assert!(cancels.iter().all(|cancel| cancel.status == 200));
    let scan_ids = |events: &[SseEvent]| -> Vec<String> {
        let mut ids: Vec<String> = moves(events).into_iter().map(|(scan, ..)| scan).collect();
        ids.sort();
        ids
    };
    let mut expected: Vec<String> = scans.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(scan_ids(&delivered), expected, "each cancel once");
    for (i, rest) in resumed.iter().enumerate() {
        assert_eq!(
            scan_ids(rest),
            scan_ids(&delivered[i + 1..]),
            "resumed after event {i}: exactly what was delivered after it"
        );
    }
    if let Some(admin) = admin.as_mut() {
        let mut held_ids: Vec<String> = held.iter().map(ToString::to_string).collect();
        held_ids.sort();
        assert_eq!(
            scan_ids(&delivered[SCANS - HELD..]),
            held_ids,
            "the held ones last"
        );
        // The case under test did happen: a held change took its id and xid before a change
        // that committed, and was delivered, ahead of it.
        let (held_min, others_max): (i64, i64) = sqlx::query_as(
            "SELECT min(id) FILTER (WHERE scan_id = ANY($1)),
                    max(id) FILTER (WHERE NOT scan_id = ANY($1))
             FROM signal_scan_events WHERE to_status = 'cancelled'",
        )
        .bind(&held_ids)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        assert!(held_min < others_max, "ids {held_min} and {others_max}");
        let (held_xid, others_xid): (String, String) = sqlx::query_as(
            "SELECT min(xid::text::bigint) FILTER (WHERE scan_id = ANY($1))::text,
                    max(xid::text::bigint) FILTER (WHERE NOT scan_id = ANY($1))::text
             FROM signal_scan_events WHERE to_status = 'cancelled'",
        )
        .bind(&held_ids)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        let xid = |text: &str| text.parse::<u64>().unwrap();
        assert!(
            xid(&held_xid) < xid(&others_xid),
            "xids {held_xid} and {others_xid}"
        );
    }
}
store_test!(concurrent_cancels_reach_a_stream_once_each_and_resume_from_any_event_exactly);

/// A transaction that began before a later one but commits after it (PostgreSQL's ids and xids do
/// not follow commit order): its change is delivered after the later one's, live and on resume
/// from the later one's id, and never twice. The held transaction writes as the store does.
async fn a_change_committed_late_by_an_older_transaction_is_delivered_live_and_on_resume(
    backend: Backend,
) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
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
        .key_for(&[Permission::SignalsWrite], &[quiet, busy])
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
    let (app, group, writer) = TestApp::with_writer(backend).await;
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

/// An EventSource sends an empty `Last-Event-ID` before any event had an id: no cursor, so the
/// stream starts now, replaying nothing.
async fn an_empty_cursor_starts_the_stream_now(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
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

/// A non-empty `Last-Event-ID` wins over `after`, whichever is further on: an `EventSource`
/// opened with `?after=` keeps that URL and reconnects with the header, so the header is where
/// it got to. Taking `after` would replay what it already had, or skip what it missed.
async fn last_event_id_wins_over_after(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let mut stream = follow(stream_request(&url, &reader)).await;
    let done = cancel_fresh_scans(&app, &writer, &group, 3).await;
    let ids: Vec<String> = next_events(&mut stream, 3)
        .await
        .iter()
        .map(id_of)
        .collect();
    drop(stream);

    for (after, last_event_id, replays) in [(0, 1, &done[2..]), (1, 0, &done[1..])] {
        let query = query_after(&ids[after]);
        let mut resumed = follow(
            stream_request(&app.url(&changes_path(&group, &query)), &reader)
                .header("Last-Event-ID", ids[last_event_id].as_str()),
        )
        .await;
        let replayed = next_events(&mut resumed, replays.len()).await;
        resumed.assert_no_event_for(QUIET).await;

        assert_eq!(
            moves(&replayed),
            cancels_of(replays, "running"),
            "after the event {after}, Last-Event-ID of the event {last_event_id}"
        );
    }
}
store_test!(last_event_id_wins_over_after);

/// A stream without a cursor starts at the trail's head, not where the process's shared reader
/// stands: that reader gathers changes for a batch (here 4 s) before reading them, and a stream
/// opened meanwhile delivered the changes committed before it opened (a runner took an old
/// creation for new work).
async fn a_stream_without_a_cursor_replays_nothing_while_the_shared_reader_lags(backend: Backend) {
    let (app, group, writer, reader) = app_without_poll(
        backend,
        Settings::default().with_stream_batch(Duration::from_secs(4)),
    )
    .await;
    let scans = [
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    ];
    app.store.flush_hints(SOON).await;
    let url = app.url(&changes_path(&group, ""));
    let mut first = follow(stream_request(&url, &reader)).await;
    // After a quiet spell the shared reader reads at once; the next change waits for the batch.
    let read_at_once = cancel_fresh_scans_of(&app, &writer, &group, &scans[..1]).await;
    assert_eq!(moves(&next_events(&mut first, 1).await), read_at_once);
    let before = cancel_fresh_scans_of(&app, &writer, &group, &scans[1..2]).await;

    let mut opened_after = follow(stream_request(&url, &reader)).await;
    let after = cancel_fresh_scans_of(&app, &writer, &group, &scans[2..]).await;

    assert_eq!(moves(&next_events(&mut opened_after, 1).await), after);
    opened_after.assert_no_event_for(QUIET).await;
    assert_eq!(
        moves(&next_events(&mut first, 2).await),
        [before, after].concat()
    );
}
store_test!(a_stream_without_a_cursor_replays_nothing_while_the_shared_reader_lags);

/// A service whose streams end after 1 s, a group with a writer's key, and `scans watch
/// --server` following the group with a reader's key, from now.
async fn watching_streams_of_a_second(
    backend: Backend,
) -> (TestApp, AccountGroupId, String, Watch) {
    let app = streams_app(
        backend,
        StreamSettings {
            max_age: Duration::from_secs(1),
            ..StreamSettings::default()
        },
    )
    .await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let watch = Watch::start_with(
        &["--server", &app.url("/"), "--account-group", group.as_str()],
        &[("SIGNAL_SCANS_API_KEY", &reader)],
    )
    .await;
    (app, group, writer, watch)
}

/// `scans watch --server` as a runner uses it: each change printed once, in order, across the
/// reconnections that every stream's end forces (here each ends after 1 s).
async fn scans_watch_server_prints_each_change_once_across_reconnections(backend: Backend) {
    let (app, group, writer, mut watch) = watching_streams_of_a_second(backend).await;

    // Spread over several streams and the pauses between them.
    let mut cancelled = Vec::new();
    let mut cancelled_at = Vec::new();
    for _ in 0..8 {
        let scan = app.scan(&group, ScanStatus::Running).await;
        let cancel = app.cancel_ok(&writer, &group, &scan).await;
        cancelled.push(scan);
        cancelled_at.push(cancel.body["data"]["cancelledAt"].clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    // Each scan's creation, then its cancel.
    while lines.len() < 2 * cancelled.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watch.next_line_within(left).await {
            Some(line) => lines.push(line),
            None => panic!("printed only {lines:?}"),
        }
    }
    // Long enough for another stream to end and the watch to resume once more.
    let after = watch.next_line_within(Duration::from_secs(4)).await;
    let reconnections = watch.times_watching() - 1;

    assert!(
        after.is_none(),
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

/// A stream opens with the id of where it starts: a client whose stream ends before any event
/// reconnects with it and gets what committed in between. Reconnecting without an id started
/// "now" again, after those changes: `scans watch --server` lost every change made while it
/// reconnected until its first event (0 of 60 printed with streams of a second).
async fn a_stream_ended_before_any_event_is_resumed_from_where_it_started(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let (first, start) = SseStream::opened_at(stream_request(&url, &reader), SOON).await;
    drop(first);
    let missed = cancel_fresh_scans(&app, &writer, &group, 2).await;

    let mut resumed = follow(stream_request(&url, &reader).header("Last-Event-ID", start)).await;

    assert_eq!(
        moves(&next_events(&mut resumed, 2).await),
        cancels_of(&missed, "running")
    );
    resumed.assert_no_event_for(QUIET).await;
}
store_test!(a_stream_ended_before_any_event_is_resumed_from_where_it_started);

/// `scans watch --server` started without `--after` keeps the opening id of its stream: a change
/// made while it reconnects, before it has printed anything, is printed.
async fn scans_watch_server_prints_a_change_made_while_it_reconnects_before_any_event(
    backend: Backend,
) {
    let (app, group, writer, mut watch) = watching_streams_of_a_second(backend).await;
    // The first stream ends at 1 s; the watch reconnects 2 s later.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    app.cancel_ok(&writer, &group, &scan).await;

    let mut lines = Vec::new();
    for _ in 0..2 {
        let line = watch.next_line_within(Duration::from_secs(15)).await;
        lines.push(line.unwrap_or_else(|| panic!("printed {lines:?}; logs: {:?}", watch.logs())));
    }

    // The scan's creation, then its cancel.
    let moves: Vec<_> = lines
        .iter()
        .map(|line| (&line["scanId"], &line["to"]))
        .collect();
    let scan_id = json!(scan.as_str());
    assert_eq!(
        moves,
        [
            (&scan_id, &json!("running")),
            (&scan_id, &json!("cancelled"))
        ]
    );
}
store_test!(scans_watch_server_prints_a_change_made_while_it_reconnects_before_any_event);

/// Makes the cancels of `held` wait, after writing their audit row, for an advisory lock that the
/// returned session holds (a trigger), so they commit only when the test says.
async fn hold_commits_of(app: &TestApp, held: &[ScanId], lock: i64) -> PgConnection {
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    let listed: Vec<String> = held.iter().map(|scan| format!("'{scan}'")).collect();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.scan_id IN ({}) AND NEW.to_status = 'cancelled' THEN
                     PERFORM pg_advisory_xact_lock({lock});
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER hold_commit AFTER INSERT ON signal_scan_events
                 FOR EACH ROW EXECUTE FUNCTION hold_commit();",
            listed.join(", ")
        )))
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut admin)
        .await
        .unwrap();
    admin
}

/// A database restored from a backup lacks the changes made after the backup, and its new changes
/// take their places in the trail. A cursor handed out after the backup named one of the lost
/// changes: resumed on the restored database, it was refused as malformed (400, which tells a
/// client to stop for good) while the trail was behind it; then, on SQLite, once new changes had
/// reused its place, it was followed from there, skipping every new change before it; on
/// PostgreSQL nothing told its client that what it had seen was undone (backup and restore
/// review). It is refused with 410, as an expired cursor is; a cursor from before the backup
/// resumes exactly. The restore is played by hand: the trail cut back to the backup's last
/// change, the lost scan gone, the trail's id sequence set back, as the backup held them.
async fn a_cursor_from_before_a_restore_is_refused_not_followed_past_new_changes(backend: Backend) {
    let (db, store, group, reader, writer) = keys_to_restore_around(backend).await;
    let arranging = || Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    let settings = [("DATABASE_URL", db.url.as_str())];
    let mut server = ServerProcess::start(&settings).await;
    let url = server.url(&changes_path(&group, ""));
    let mut stream = follow(stream_request(&url, &reader)).await;
    let backed_up = cancel_through(&server, &store, &writer, &group).await;
    let backup_point = stream.next_event(SOON).await;
    let lost = cancel_through(&server, &store, &writer, &group).await;
    let lost_change = stream.next_event(SOON).await;
    drop(stream);
    server.terminate();
    server.wait(SOON).await;
    drop(store);
    restore_without(&db.url, backend, &backed_up, &lost).await;

    let server = ServerProcess::start(&settings).await;
    let store = arranging();
    let ahead_of_the_trail = refused(
        stream_request(&url_of(&server, &group), &reader)
            .header("last-event-id", id_of(&lost_change)),
    )
    .await;
    let mut made_after = Vec::new();
    for _ in 0..3 {
        made_after.push(cancel_through(&server, &store, &writer, &group).await);
    }
    let within_the_trail = refused(
        stream_request(&url_of(&server, &group), &reader)
            .header("last-event-id", id_of(&lost_change)),
    )
    .await;
    let mut resumed = follow(
        stream_request(&url_of(&server, &group), &reader)
            .header("last-event-id", id_of(&backup_point)),
    )
    .await;
    let replayed = next_events(&mut resumed, 3).await;

    assert_eq!(moves(&[backup_point]), cancels_of(&[backed_up], "running"));
    ahead_of_the_trail.assert_error(410, "CURSOR_EXPIRED");
    within_the_trail.assert_error(410, "CURSOR_EXPIRED");
    assert_eq!(moves(&replayed), cancels_of(&made_after, "running"));
}
store_test!(a_cursor_from_before_a_restore_is_refused_not_followed_past_new_changes);

/// The same restore, the lost change the first a restarted service wrote, and the restored
/// database's first change the first of the next start: each start moves the trail's next id
/// past the present before its first change, so the two take different places and the lost
/// change's cursor is refused. Were the ids moved only from a start's second write on, the new
/// change would take the lost one's place, and its cursor be followed past it.
async fn a_cursor_from_a_starts_first_change_lost_to_a_restore_is_refused(backend: Backend) {
    let (db, store, group, reader, writer) = keys_to_restore_around(backend).await;
    let arranging = || Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    let settings = [("DATABASE_URL", db.url.as_str())];
    let mut server = ServerProcess::start(&settings).await;
    let backed_up = cancel_through(&server, &store, &writer, &group).await;
    server.terminate();
    server.wait(SOON).await;
    drop(store);
    let mut server = ServerProcess::start(&settings).await;
    let mut stream = follow(stream_request(&url_of(&server, &group), &reader)).await;
    let lost = cancel_through(&server, &arranging(), &writer, &group).await;
    let lost_change = stream.next_event(SOON).await;
    drop(stream);
    server.terminate();
    server.wait(SOON).await;
    restore_without(&db.url, backend, &backed_up, &lost).await;

    let server = ServerProcess::start(&settings).await;
    cancel_through(&server, &arranging(), &writer, &group).await;
    let resumed = refused(
        stream_request(&url_of(&server, &group), &reader)
            .header("last-event-id", id_of(&lost_change)),
    )
    .await;

    assert_eq!(moves(&[lost_change]), cancels_of(&[lost], "running"));
    resumed.assert_error(410, "CURSOR_EXPIRED");
}
store_test!(a_cursor_from_a_starts_first_change_lost_to_a_restore_is_refused);

/// A migrated database and its store, with a reader's and a writer's key of one group: what the
/// restore tests arrange before their first service.
async fn keys_to_restore_around(
    backend: Backend,
) -> (TestDatabase, Store, AccountGroupId, String, String) {
    let (db, store) = migrated_database(backend).await;
    let group = group();
    let reader = key_in(&store, Permission::SignalsRead, &[group]).await;
    let writer = key_in(&store, Permission::SignalsWrite, &[group]).await;
    (db, store, group, reader, writer)
}

fn url_of(server: &ServerProcess, group: &AccountGroupId) -> String {
    server.url(&changes_path(group, ""))
}

/// A running scan of `group` made in `store`, cancelled through `server`.
async fn cancel_through(
    server: &ServerProcess,
    store: &Store,
    writer: &str,
    group: &AccountGroupId,
) -> ScanId {
    let scan = store
        .create_scan(group, ScanStatus::Running)
        .await
        .unwrap()
        .id;
    let cancelled = server
        .post(
            writer,
            &crate::helpers::cancel_path(group.as_str(), scan.as_str()),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    scan
}

/// The database as a backup taken right after `backed_up`'s cancel holds it: the audit rows after
/// that cancel and the `lost` scan gone, and the trail's id sequence where it then stood.
async fn restore_without(url: &str, backend: Backend, backed_up: &ScanId, lost: &ScanId) {
    let sequence_set_back = match backend {
        Backend::Sqlite => {
            "UPDATE sqlite_sequence SET seq = (SELECT max(id) FROM signal_scan_events)
             WHERE name = 'signal_scan_events'"
        }
        Backend::Postgres => {
            "SELECT setval(pg_get_serial_sequence('signal_scan_events', 'id'),
                           (SELECT max(id) FROM signal_scan_events))"
        }
    };
    // The ids are the test's own, of hex digits.
    let restore = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM signal_scan_events WHERE id > (SELECT id FROM signal_scan_events
             WHERE scan_id = '{backed_up}' AND to_status = 'cancelled');
         DELETE FROM signal_scans WHERE id = '{lost}';
         {sequence_set_back}"
    )));
    match backend {
        Backend::Sqlite => restore
            .execute(&mut sqlx::SqliteConnection::connect(url).await.unwrap())
            .await
            .map(drop),
        Backend::Postgres => restore
            .execute(&mut PgConnection::connect(url).await.unwrap())
            .await
            .map(drop),
    }
    .unwrap();
}
