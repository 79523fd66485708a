//! The database or the listener's connection going away under open streams (PostgreSQL, through
//! the suite's fault proxy or by terminating sessions): a client that keeps reading, and resumes
//! from its last id when a stream ends, gets every committed change exactly once, in order.

use std::time::{Duration, Instant};

use signal_scans::domain::ids::ScanId;
use signal_scans::domain::scan::{ScanStatus, Transition};
use sqlx::{Connection, Executor, PgConnection};

use super::*;
use crate::helpers::ServeDefault;
use crate::helpers::process::ServerProcess;
use crate::helpers::{
    Backend, RUNNER, Settings, TestApp, assert_backs_off_doubling, group, silent_running_scan,
};
use crate::store_test;

/// The database is cut off from the service for a while (an outage past several of the hub's
/// reads and keep-alives) while another process commits changes. Once it is back, the stream,
/// kept open or ended and resumed from its last id, delivers every change exactly once, in
/// commit order. Fails for a hub that gives up after a failed read, and for one that skips or
/// repeats what committed while it could not read.
async fn a_stream_through_a_database_cut_gets_every_committed_change_once(backend: Backend) {
    let app = Settings::default()
        .through_proxy()
        .with_db_timeout(Duration::from_millis(400))
        .spawn(backend)
        .await;
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let stream = follow(stream_request(&url, &reader)).await;
    let before = cancel_fresh_scans(&app, &writer, &group, 2).await;
    let mut received = Vec::new();
    let (stream, _) = read_as_a_client(stream, &url, &reader, &mut received, 2, SOON).await;

    proxy.cut();
    // Another process (the test's own store, past the proxy) goes on committing.
    let during = move_fresh_scans(&app, &group, 5).await;
    // The outage lasts past several failed reads of the hub and keep-alives of the stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore();
    let after = move_fresh_scans(&app, &group, 2).await;
    let every: Vec<ScanId> = [before, during, after].concat();
    read_every_cancel_once(stream, &url, &reader, &mut received, &every).await;
}

/// Reads on as a client (reconnecting from its last id when a stream ends) until `received`
/// holds a change for each of `every`, then checks that nothing more comes and that each of
/// `every` was cancelled from running exactly once, in commit order. 30 s at most: the hub waits
/// up to 5 s between retries, and a dead pooled connection may fail once more.
async fn read_every_cancel_once(
    stream: SseStream,
    url: &str,
    reader: &str,
    received: &mut Vec<SseEvent>,
    every: &[ScanId],
) {
    let limit = Duration::from_secs(30);
    let (mut stream, _) = read_as_a_client(stream, url, reader, received, every.len(), limit).await;
    stream.assert_no_event_for(QUIET).await;

    assert_eq!(moves(received), cancels_of(every, "running"));
}
store_test!(
    a_stream_through_a_database_cut_gets_every_committed_change_once,
    postgres_only
);

/// The listener's connection dies silently while new connections work: a NAT or a firewall
/// dropping it, a failover behind one address. No reset ever arrives, so the listener waits
/// forever, and every change reached the streams only at the hub's poll, for the life of the
/// process. Polls that find changes no notification announced now listen on a new connection (a
/// second LISTEN session appears), and the stream still gets every change once, in order. Fails
/// for a hub that keeps waiting on the dead listener.
async fn a_listener_that_died_silently_is_replaced(backend: Backend) {
    let app = Settings::default()
        .through_proxy()
        .with_db_timeout(Duration::from_millis(400))
        .with_feed_poll(Duration::from_millis(300))
        .spawn(backend)
        .await;
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let url = app.url(&changes_path(&group, ""));
    let stream = follow(stream_request(&url, &reader)).await;
    let before = move_fresh_scans(&app, &group, 1).await;
    let mut received = Vec::new();
    let (stream, _) = read_as_a_client(stream, &url, &reader, &mut received, 1, SOON).await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    assert_eq!(listeners(&mut admin).await.len(), 1);

    proxy.stall_open_connections();
    // Changes keep coming, each found only by a poll, until the hub listens again.
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while listeners(&mut admin).await.len() < 2 {
        assert!(Instant::now() < deadline, "the hub never listened again");
        after.extend(move_fresh_scans(&app, &group, 1).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    after.extend(move_fresh_scans(&app, &group, 1).await);
    let every: Vec<ScanId> = [before, after].concat();
    read_every_cancel_once(stream, &url, &reader, &mut received, &every).await;
}
store_test!(a_listener_that_died_silently_is_replaced, postgres_only);

/// Cancels `count` fresh running scans of `group` straight in the test's store, as another
/// process would, one after the other; returns them in commit order.
async fn move_fresh_scans(app: &TestApp, group: &AccountGroupId, count: usize) -> Vec<ScanId> {
    let mut scans = Vec::with_capacity(count);
    for _ in 0..count {
        let scan = app.scan(group, ScanStatus::Running).await;
        let moved = app
            .store
            .transition(Some(group), &scan, ScanStatus::Cancelled, RUNNER)
            .await
            .expect("the test's store reaches the database");
        assert!(matches!(moved, Transition::Applied { .. }), "{moved:?}");
        scans.push(scan);
    }
    scans
}

/// The listening sessions of this test's database (`LISTEN signal_scan_events`).
async fn listeners(admin: &mut PgConnection) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

/// The hub's listening session is terminated by the server (a restart, an administrator's
/// `pg_terminate_backend`). The hub listens again on a new session, and the next change reaches
/// the stream by its hint, with the poll a minute away: nothing missed, nothing twice. Fails
/// for a hub that stops listening after losing its connection (it would wait for the poll).
async fn a_stream_outlives_the_termination_of_the_listening_session(backend: Backend) {
    let (app, group, writer, reader) = app_without_poll(backend, Settings::default()).await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    let mut stream = follow(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;
    let first = cancel_fresh_scans(&app, &writer, &group, 1).await;
    let first_event = stream.next_event(SOON).await;
    let before = listeners(&mut admin).await;
    assert_eq!(before.len(), 1, "the hub listens: {before:?}");

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(before[0])
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + SOON;
    let mut now = listeners(&mut admin).await;
    while !(now.len() == 1 && now != before) {
        assert!(
            Instant::now() < deadline,
            "listening again: {before:?} then {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = listeners(&mut admin).await;
    }
    let second = cancel_fresh_scans(&app, &writer, &group, 2).await;
    let later = next_events(&mut stream, 2).await;
    stream.assert_no_event_for(QUIET).await;

    assert!(terminated);
    assert_eq!(moves(&[first_event]), cancels_of(&first, "running"));
    assert_eq!(moves(&later), cancels_of(&second, "running"));
}
store_test!(
    a_stream_outlives_the_termination_of_the_listening_session,
    postgres_only
);

/// The real binary's change hub cannot read the trail: every session of the database is
/// terminated and the database takes no new connection (`ALLOW_CONNECTIONS false`). The hub logs
/// each failed read with the database's own error and tries again, waiting twice as long each
/// time (100 ms, then 200, 400, 800; at most 5 s). Once the database takes connections again,
/// the stream, kept open all along, gets the next cancel, and the log says the hub reads again.
/// Fails for a back-off that does not double (`*` to `/` in `ChangeHub::start`: 100, 50, 25, ... down to a busy loop).
async fn the_hub_backs_off_doubling_while_the_database_refuses_it(backend: Backend) {
    const NOT_ACCEPTING: &str = "is not currently accepting connections";
    const HUB_BACK: &str = "the change hub reads the audit trail again";
    let process = Process::start(backend, &[("FEED_POLL_MS", "200")]).await;
    let (scan, mut stream) = process.running_scan_and_stream().await;
    let mut admin = PgConnection::connect(&process._db.url).await.unwrap();
    let hub_failures = |events: &[serde_json::Value]| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|event| {
                event["message"] == "the change hub cannot read the audit trail; retrying"
            })
            .cloned()
            .collect()
    };

    process._db.allow_connections(false).await;
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let events = process
        .server
        .until_events(|events| hub_failures(events).len() >= 4)
        .await;
    process._db.allow_connections(true).await;
    let cancel = process
        .server
        .post(
            &process.writer,
            &crate::helpers::cancel_path(process.group.as_str(), scan.as_str()),
        )
        .await;
    let delivered = stream.next_event(Duration::from_secs(30)).await;
    let recovered = process
        .server
        .until_logged(|event| event["message"] == HUB_BACK)
        .await;

    assert!(
        terminated >= 2,
        "the hub's sessions were terminated: {terminated}"
    );
    let failures = hub_failures(&events);
    assert_backs_off_doubling(&failures);
    assert!(
        failures
            .iter()
            .any(|failure| failure["error"].as_str().unwrap().contains(NOT_ACCEPTING)),
        "{failures:#?}"
    );
    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert_eq!(moves(&[delivered]), cancels_of(&[scan], "running"));
    let said_back = recovered
        .iter()
        .filter(|event| event["message"] == HUB_BACK);
    assert_eq!(said_back.count(), 1, "the recovery is said once");
}
store_test!(
    the_hub_backs_off_doubling_while_the_database_refuses_it,
    postgres_only
);

/// Changes committed without any notification (as by a process killed before its publisher's
/// tick): a stream, whose hub hears no hint, still gets each of them by the poll, within
/// FEED_POLL_MS and a moment, once and in order. Fails for a hub that reads only on hints.
async fn a_stream_fed_by_the_poll_alone_gets_every_change(backend: Backend) {
    const POLL: Duration = Duration::from_millis(300);
    let app = Settings::default()
        .with_feed_poll(POLL)
        .spawn(backend)
        .await;
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    let mut stream = follow(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;
    let mut silent = PgConnection::connect(&app.db.url).await.unwrap();

    let mut scans = Vec::new();
    let mut delivered = Vec::new();
    for _ in 0..3 {
        // The service's own statements, written by hand: no publisher, so no NOTIFY (not even
        // for the creation, whose hint would wake the hub just before the cancel commits).
        let scan = silent_running_scan(&mut silent, &group).await;
        silent.execute("BEGIN").await.unwrap();
        cancel_and_commit(&mut silent, &scan).await;
        delivered.push(stream.next_event(POLL + Duration::from_secs(2)).await);
        scans.push(scan);
    }
    stream.assert_no_event_for(QUIET).await;

    assert_eq!(moves(&delivered), cancels_of(&scans, "running"));
}
store_test!(
    a_stream_fed_by_the_poll_alone_gets_every_change,
    postgres_only
);

/// A stream opened while the database is out of reach answers the 502 envelope at the database
/// timeout, not a 200 that never delivers: the first stream of a process (whose hub must start
/// listening) and a resume (whose cursor is checked against the trail). Once the database is
/// back, the same process opens streams again.
async fn a_stream_opened_with_the_database_gone_is_a_502_envelope(backend: Backend) {
    const DB_TIMEOUT: Duration = Duration::from_millis(400);
    let app = Settings::default()
        .through_proxy()
        .with_db_timeout(DB_TIMEOUT)
        .with_key_cache_ttl(Duration::from_secs(600))
        .spawn(backend)
        .await;
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    let group = group();
    let (reader, _) = read_key(&app, &group).await;
    // The key is cached: what fails below is the stream, not the key's lookup.
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let read = app
        .get(
            &reader,
            &format!("/v1/accounts/{group}/signals/scans/{scan}"),
        )
        .await;
    assert_eq!(read.status, 200, "{read:?}");

    proxy.cut();
    let started = Instant::now();
    let first = refused(stream_request(&app.url(&changes_path(&group, "")), &reader)).await;
    let first_after = started.elapsed();
    let started = Instant::now();
    let resume = refused(stream_request(
        &app.url(&changes_path(&group, &query_after("0-0"))),
        &reader,
    ))
    .await;
    let resume_after = started.elapsed();
    proxy.restore();
    let deadline = Instant::now() + SOON;
    let reopened = loop {
        match SseStream::open(stream_request(&app.url(&changes_path(&group, "")), &reader)).await {
            Ok(stream) => break stream,
            Err(refused) => {
                // A pooled connection that died with the cut may fail once more.
                refused.assert_error(502, "UPSTREAM_ERROR");
                assert!(
                    Instant::now() < deadline,
                    "no stream once the database is back"
                );
            }
        }
    };

    for (refused, after) in [(&first, first_after), (&resume, resume_after)] {
        refused.assert_error(502, "UPSTREAM_ERROR");
        assert_eq!(refused.body["error"]["message"], "Upstream service error");
        assert!(refused.header("retry-after").is_none(), "{refused:?}");
        // About DB_TIMEOUT (a few bounded waits at most), never the stream's hour.
        assert!(after < DB_TIMEOUT * 10, "answered after {after:?}");
    }
    drop(reopened);
}
store_test!(
    a_stream_opened_with_the_database_gone_is_a_502_envelope,
    postgres_only
);

/// SIGTERM right after a cancel, while its hint still waits for the publisher's tick
/// (`PUBLISH_INTERVAL_MS` of a second): the process sends it before it exits, so listeners of
/// other processes hear of the change by their hint, not a poll later. Fails if the queued hints
/// are not flushed at shutdown (the process would exit with the tick still ahead).
async fn the_publishers_last_hint_is_flushed_at_sigterm(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let mut hints = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    hints.listen("signal_scan_events").await.unwrap();
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", app.db.url.as_str()),
        ("PUBLISH_INTERVAL_MS", "1000"),
    ])
    .await;

    let cancel = server
        .post(
            &key,
            &crate::helpers::cancel_path(group.as_str(), scan.as_str()),
        )
        .await;
    server.terminate();
    let exit = server.wait(SOON).await;
    // The scan's creation (by the test's store) has a hint of its own: the cancel's is looked for.
    let cancel_hinted = tokio::time::timeout(SOON, async {
        loop {
            let hint = hints.recv().await.unwrap();
            let payload: serde_json::Value = serde_json::from_str(hint.payload()).unwrap();
            let listed = payload["changes"].as_array().cloned().unwrap_or_default();
            if listed
                .iter()
                .any(|change| change["scanId"] == scan.as_str() && change["to"] == "cancelled")
            {
                return payload;
            }
        }
    })
    .await;

    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert!(exit.success(), "{exit:?}; logs: {:?}", server.logs());
    assert!(
        cancel_hinted.is_ok(),
        "the cancel's hint was not sent before the exit"
    );
}
store_test!(
    the_publishers_last_hint_is_flushed_at_sigterm,
    postgres_only
);

/// A database restored from a dump into another cluster whose transaction counter is behind the
/// old one's: its audit rows carry transaction ids this cluster has not reached. The service
/// started on it moves them before this cluster's changes, so a stream opened then gets every
/// change made after; a cursor from before the restore is told its changes are gone (410), also
/// once this cluster's counter has passed it, rather than followed past what this cluster wrote.
/// Each new change sorted behind the restored rows, so behind every stream's start: the streams
/// stayed silent.
async fn a_database_restored_into_another_cluster_streams_its_new_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = read_key(&app, &group).await;
    cancel_fresh_scans(&app, &writer, &group, 1).await;
    // As a restore leaves them: the rows' transaction ids ahead of this cluster's, by enough
    // that the cluster's other sessions (other tests, and whatever else shares it) do not take
    // its counter past them before the service starts (by 100, a benchmark beside the suite
    // did), and little enough that the test can take it past them.
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    admin
        .execute(
            "UPDATE signal_scan_events
             SET xid = (pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 20000)::text::xid8",
        )
        .await
        .unwrap();
    // What a stream of the old cluster handed out at its last change.
    let old_cursor: String = sqlx::query_scalar(
        "SELECT xid::text || '-' || id FROM signal_scan_events ORDER BY xid DESC, id DESC LIMIT 1",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();

    // The service starts on the restored database.
    let restored = app.replica().await;
    let url = format!("http://{}{}", restored.addr, changes_path(&group, ""));
    let stream = follow(stream_request(&url, &reader)).await;
    let after = cancel_fresh_scans(&app, &writer, &group, 2).await;
    let received = read_events(stream, 2).await;
    let ahead_of_the_counter =
        refused(stream_request(&url, &reader).header("last-event-id", &old_cursor)).await;
    // This cluster's counter past the restored rows' ids; a change written at such an id.
    let restored_xid: i64 = old_cursor.split('-').next().unwrap().parse().unwrap();
    let counter = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint";
    while sqlx::query_scalar::<_, i64>(counter)
        .fetch_one(&mut admin)
        .await
        .unwrap()
        <= restored_xid
    {
        for _ in 0..500 {
            admin.execute("SELECT pg_current_xact_id()").await.unwrap();
        }
    }
    cancel_fresh_scans(&app, &writer, &group, 1).await;
    let behind_the_counter =
        refused(stream_request(&url, &reader).header("last-event-id", &old_cursor)).await;

    assert_eq!(received, crate::helpers::id_strings(&after));
    ahead_of_the_counter.assert_error(410, "CURSOR_EXPIRED");
    behind_the_counter.assert_error(410, "CURSOR_EXPIRED");
}
store_test!(
    a_database_restored_into_another_cluster_streams_its_new_changes,
    postgres_only
);

/// A stream that must catch up (`?after=`) while each read of the trail takes longer than its
/// keep-alive: the read goes on across the keep-alives, and the changes arrive. Started afresh
/// after each keep-alive, the read never finished: the stream sent keep-alives only, and each
/// read given up held a database connection until its statement ended (the cancellation
/// review: 0 changes and 49 keep-alives in 5 s, 10 of 11 connections busy with one stream).
/// PostgreSQL: the proxy slows every answer; nothing slows a SQLite read from outside.
async fn a_catch_up_read_slower_than_the_keep_alive_goes_on_across_it(backend: Backend) {
    let settings = with_streams(StreamSettings {
        keepalive: Duration::from_millis(100),
        ..StreamSettings::default()
    })
    .through_proxy()
    .with_db_timeout(Duration::from_secs(5));
    // No poll either: only the follower's own read of the trail can deliver the changes.
    let (app, group, writer, reader) = app_without_poll(backend, settings).await;
    let cancelled = cancel_fresh_scans(&app, &writer, &group, 3).await;
    // The key is cached for the stream's checks; the trail's reads wait 300 ms per answer.
    app.proxy
        .as_ref()
        .unwrap()
        .slow_down(Duration::from_millis(300));

    let url = app.url(&changes_path(&group, "?after=0-0"));
    let stream = follow(stream_request(&url, &reader)).await;
    let mut received = Vec::new();
    // About 1.5 s here (opening the stream takes twice that, over the slowed proxy); with the
    // read started again at each keep-alive, never.
    let limit = Duration::from_secs(15);
    let (_stream, reconnections) =
        read_as_a_client(stream, &url, &reader, &mut received, 3, limit).await;

    assert_eq!(moves(&received), cancels_of(&cancelled, "running"));
    assert_eq!(reconnections, 0, "one stream caught up");
}
store_test!(
    a_catch_up_read_slower_than_the_keep_alive_goes_on_across_it,
    postgres_only
);

/// The scan ids of the next `count` events of `stream`.
async fn read_events(mut stream: SseStream, count: usize) -> Vec<String> {
    let mut events = Vec::new();
    for _ in 0..count {
        events.push(stream.next_event(SOON).await);
    }
    scan_ids(&events)
}
