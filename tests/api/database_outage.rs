//! The database going away, stalling or running out of connections: each request answers the
//! 502 envelope within its bound and changes nothing, and the same process serves again once the
//! database is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::store::{HeldConnection, Store};

use crate::helpers::locks::{WriteLock, until_waiting};
use crate::helpers::{ApiResponse, Backend, RUNNER, Settings, TestApp, group, scans_path};
use crate::store_test;

const DB_TIMEOUT: Duration = Duration::from_millis(400);

const UNDER_LOAD_DB_TIMEOUT: Duration = Duration::from_millis(300);

/// Far above UNDER_LOAD_DB_TIMEOUT: a request taking longer than this has hung.
const HUNG: Duration = Duration::from_secs(5);

async fn a_database_that_stops_answering_gives_502_then_recovers(backend: Backend) {
    // Arrange: the app reaches its database only through a proxy we can cut.
    let app = Settings::default()
        .with_db_timeout(DB_TIMEOUT)
        .through_proxy()
        .spawn(backend)
        .await;
    let proxy = app.proxy.as_ref().unwrap();
    let group = group();
    let key = app.writer(&group).await;
    let before_cut = app.scan(&group, ScanStatus::Queued).await;
    let during_cut = app.scan(&group, ScanStatus::Queued).await;
    app.cancel_ok(&key, &group, &before_cut).await;

    // Act: cut the database off.
    proxy.cut();
    let started = Instant::now();
    let cut_off = app
        .cancel(Some(&key), group.as_str(), during_cut.as_str())
        .await;
    let waited = started.elapsed();
    let ready = ApiResponse::of(app.client.get(app.url("/readyz"))).await;
    let alive = ApiResponse::of(app.client.get(app.url("/healthz"))).await;

    // Assert: a 502 in about DB_TIMEOUT and the second a write's answer is awaited past it
    // (generous bound: it must not hang), nothing applied.
    cut_off.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(cut_off.body["error"]["message"], "Upstream service error");
    assert!(
        waited < DB_TIMEOUT * 5 + Duration::from_secs(1),
        "answered after {waited:?}"
    );
    ready.assert_error(503, "NOT_READY");
    // The process serves: a liveness probe that asked the database would restart it for nothing.
    assert_eq!(alive.status, 200, "{alive:?}");
    assert_eq!(app.status_of(&during_cut).await, ScanStatus::Queued);

    // Act: the database comes back; the same process serves again without a restart.
    proxy.restore();
    // Pooled connections that died with the cut may each fail once; within a few seconds
    // the pool has replaced them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let recovered = loop {
        let response = app
            .cancel(Some(&key), group.as_str(), during_cut.as_str())
            .await;
        if response.status == 200 || Instant::now() > deadline {
            break response;
        }
        response.assert_error(502, "UPSTREAM_ERROR");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(recovered.status, 200, "{recovered:?}");
    assert_eq!(recovered.body["data"]["previousStatus"], "queued");
}
store_test!(
    a_database_that_stops_answering_gives_502_then_recovers,
    postgres_only
);

/// Workers cancel scans (each scan twice) while the database is cut and restored. No request
/// hangs, every 200 that moved a scan is backed by exactly one committed audit row, and no
/// scan is cancelled twice.
async fn under_load_a_cut_and_a_return_lose_and_double_nothing(backend: Backend) {
    let (app, group, key) = Settings::default()
        .with_db_timeout(UNDER_LOAD_DB_TIMEOUT)
        .through_proxy()
        .spawn_with_writer(backend)
        .await;
    let mut scans = Vec::new();
    for _ in 0..400 {
        scans.push(app.scan(&group, ScanStatus::Queued).await);
    }
    // One queued scan per worker, left alone until the restore: a fast machine cancels all 400
    // before the cut, and a cancel after the restore must still find one to move.
    let mut spares = Vec::new();
    for _ in 0..8 {
        spares.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Set by the first cancel sent after the restore that moves a scan: the proof that the
    // service serves again, and the signal that the chaos is over.
    let restored_at: Arc<OnceLock<Instant>> = Arc::default();
    let moved_after_restore = Arc::new(AtomicBool::new(false));

    let chaos = {
        let (stop, restored_at, moved_after_restore) = (
            stop.clone(),
            restored_at.clone(),
            moved_after_restore.clone(),
        );
        let proxy = app.proxy.as_ref().unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.cut();
            tokio::time::sleep(Duration::from_millis(900)).await;
            proxy.restore();
            restored_at.set(Instant::now()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !moved_after_restore.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.store(true, Ordering::SeqCst);
        }
    };
    let workers = (0..8).map(|worker| {
        let (app, group, key, scans, stop) = (&app, &group, &key, &scans, stop.clone());
        let mut spare = Some(&spares[worker]);
        let (restored_at, moved_after_restore) = (restored_at.clone(), moved_after_restore.clone());
        async move {
            let mut answers = Vec::new();
            let mut i = worker;
            // Round and round the scans until the chaos is over: each is cancelled many times.
            while !stop.load(Ordering::SeqCst) {
                let sent_after_restore = restored_at.get().is_some();
                let scan = match spare.take_if(|_| sent_after_restore) {
                    Some(spare) => spare,
                    None => {
                        let scan = &scans[i % scans.len()];
                        i += 8;
                        scan
                    }
                };
                let started = Instant::now();
                let response = app.cancel(Some(key), group.as_str(), scan.as_str()).await;
                assert!(started.elapsed() < HUNG, "hung for {:?}", started.elapsed());
                if sent_after_restore
                    && response.status == 200
                    && response.body["data"]["previousStatus"] == "queued"
                {
                    moved_after_restore.store(true, Ordering::SeqCst);
                }
                answers.push((*scan, response));
            }
            answers
        }
    });
    let (_, answers) = tokio::join!(chaos, join_all(workers));

    assert!(
        moved_after_restore.load(Ordering::SeqCst),
        "a cancel sent after the restore moved a scan"
    );
    let mut upstream_errors = 0;
    let mut movers: HashMap<ScanId, Vec<String>> = HashMap::new();
    for (scan, response) in answers.into_iter().flatten() {
        match response.status.as_u16() {
            200 if response.body["data"]["previousStatus"] == "queued" => movers
                .entry(scan)
                .or_default()
                .push(response.trace_id().to_owned()),
            200 => assert_eq!(response.body["data"]["previousStatus"], "cancelled"),
            502 => upstream_errors += 1,
            other => panic!("unexpected {other}: {response:?}"),
        }
    }
    assert!(upstream_errors > 0, "the cut was felt");
    assert!(!movers.is_empty(), "cancels went through around the cut");
    for scan in scans.iter().chain(&spares) {
        let events = app.store.scan_events(scan).await.unwrap();
        let cancels: Vec<_> = events
            .iter()
            .filter(|e| e.to == ScanStatus::Cancelled)
            .collect();
        assert!(cancels.len() <= 1, "{scan} cancelled twice: {events:?}");
        if let Some(traces) = movers.get(scan) {
            assert_eq!(traces.len(), 1, "{scan}: two requests claim the move");
            assert_eq!(cancels.len(), 1, "{scan}: a 200 without a committed change");
            assert_eq!(cancels[0].trace_id.as_deref(), Some(traces[0].as_str()));
        }
    }
}
store_test!(
    under_load_a_cut_and_a_return_lose_and_double_nothing,
    postgres_only
);

/// Every pooled connection is held: requests
/// wait at most DB_TIMEOUT_MS for one and answer 502, all of them at about the same time, not one
/// after another, even from an address that failed to authenticate lately (whose lookups take
/// turns); once a connection is free again the same process serves.
async fn an_exhausted_pool_answers_502_not_a_queue(backend: Backend) {
    const POOL: u32 = 2;
    // Long enough that a queue (10 requests one after another, each waiting this long) would
    // take 10 s, far past the bound below; short enough to keep the test quick.
    const WAIT: Duration = Duration::from_secs(1);
    let app = Settings::default()
        .with_db_timeout(WAIT)
        .with_db_max_connections(POOL)
        .spawn(backend)
        .await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let typo = app
        .cancel(Some("ssk_typo"), group.as_str(), scan.as_str())
        .await;
    typo.assert_error(401, "UNAUTHORIZED");
    let holders = hold_connections(&app, POOL).await;
    assert_eq!(
        app.served_store.pool_usage().in_use,
        POOL,
        "the pool is held"
    );

    let started = Instant::now();
    let answered = join_all((0..10).map(|_| async {
        let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
        (response, started.elapsed())
    }))
    .await;
    // The cause an operator reads says the pool was the wait, not a slow database.
    let waited = app.served_store.find_scan(None, &scan).await.unwrap_err();
    drop(holders);
    let after = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    assert_eq!(
        waited.to_string(),
        "database unavailable: no connection of the pool within 1000 ms \
         (2 of DB_MAX_CONNECTIONS=2 in use: every connection is in use)"
    );

    for (response, elapsed) in &answered {
        response.assert_error(502, "UPSTREAM_ERROR");
        assert!(*elapsed >= WAIT, "waited for a connection: {elapsed:?}");
        assert!(
            *elapsed < WAIT * 5,
            "answered after {elapsed:?}: queued behind the others"
        );
    }
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.body["data"]["previousStatus"], "queued");
}
store_test!(an_exhausted_pool_answers_502_not_a_queue, postgres_only);

/// A database that stalls after a quiet second: the idle connection, asked before use, is
/// dropped unanswered, and a new one does not open in time, so none of the pool is in use. The
/// cause an operator reads says the database opened no session; it named only the pool ("0 of
/// DB_MAX_CONNECTIONS=1 in use"), which README read as a pool too small (operations review).
async fn a_database_stalled_after_a_quiet_spell_is_named_not_the_pool(backend: Backend) {
    let (app, group, key) = warm_through_proxy(backend, Duration::from_secs(1)).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.proxy
        .as_ref()
        .unwrap()
        .slow_down(Duration::from_secs(30));

    let stalled = app.served_store.find_scan(None, &scan).await.unwrap_err();
    let refused = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    assert_eq!(
        stalled.to_string(),
        "database unavailable: no connection of the pool within 1000 ms (0 of \
         DB_MAX_CONNECTIONS=1 in use: the database opened no session, nor answered a ping of an \
         idle one)"
    );
    refused.assert_error(502, "UPSTREAM_ERROR");
}
store_test!(
    a_database_stalled_after_a_quiet_spell_is_named_not_the_pool,
    postgres_only
);

/// A cancel stuck behind another transaction's row lock answers 502 at DB_TIMEOUT_MS, and the
/// database gives up on the statement too (statement_timeout), so the stuck statement does not
/// wait on, holding a connection and a place in the lock queue, after the client was answered.
async fn a_statement_stuck_on_a_lock_is_ended_by_the_database_too(backend: Backend) {
    use sqlx::Connection;
    let app = TestApp::spawn_with(
        backend,
        // Long enough to see the statement waiting before it is ended.
        Settings::default().with_db_timeout(Duration::from_millis(1000)),
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let mut blocker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT 1 FROM signal_scans WHERE id = $1 FOR UPDATE")
        .bind(scan.as_str())
        .execute(&mut blocker)
        .await
        .unwrap();

    // The cancel's statement is seen waiting on the lock before it is answered: what is counted
    // below is that statement's end, not a statement that never reached the lock.
    let (stuck, ()) = tokio::join!(
        app.cancel(Some(&key), group.as_str(), scan.as_str()),
        until_waiting(&app, 1)
    );
    // Waiting on the lock held above, in this test's database only (other tests run their own
    // app under the same application_name).
    let waiting = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'signal-scans'
               AND wait_event_type = 'Lock'",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut still_waiting = waiting().fetch_one(&mut blocker).await.unwrap();
    while still_waiting > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        still_waiting = waiting().fetch_one(&mut blocker).await.unwrap();
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();

    stuck.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(
        still_waiting, 0,
        "5 s after the 502 the database still runs a statement nobody waits for"
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
}
store_test!(
    a_statement_stuck_on_a_lock_is_ended_by_the_database_too,
    postgres_only
);

/// A server that refuses the connection itself (nothing listening: the server down, a wrong
/// port) is told with the system's own words, what an operator looks up, not as a wait for the
/// pool. (The eleventh mutation run: a session that failed to open for any reason but the
/// server's own refusal could have been told "pool timed out", unseen.)
async fn a_server_refusing_the_connection_is_told_so_not_as_a_pool_wait(backend: Backend) {
    let database = crate::helpers::TestDatabase::create(backend).await;
    // A port of this machine that nothing listens on: one the system just handed out, let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (server, name) = database.url.rsplit_once('/').unwrap();
    let (scheme_and_user, _) = server.rsplit_once('@').unwrap();
    let url = format!("{scheme_and_user}@127.0.0.1:{port}/{name}");
    let store =
        Store::connect(&crate::helpers::store_options(&url, Duration::from_secs(2))).unwrap();

    let refused = store.ping().await.unwrap_err().to_string();

    assert!(
        refused.starts_with("database unavailable") && refused.contains("onnection refused"),
        "{refused}"
    );
    assert!(!refused.contains("timed out"), "{refused}");
}
store_test!(
    a_server_refusing_the_connection_is_told_so_not_as_a_pool_wait,
    postgres_only
);

/// `count` connections of the app's PostgreSQL pool, taken and held until dropped (dropped, they
/// go back to the pool idle).
async fn hold_connections(app: &TestApp, count: u32) -> Vec<HeldConnection> {
    let Store::Postgres(served) = &app.served_store else {
        unreachable!("a PostgreSQL test")
    };
    let mut holders = Vec::new();
    for _ in 0..count {
        holders.push(served.hold_connection().await.expect("a free connection"));
    }
    holders
}

/// An app whose pool of one connection reaches the database through the proxy, with `timeout`,
/// and a writer's key for a new group. The key is cached and the connection open (a cancel was
/// made) before the test slows the database down.
async fn warm_through_proxy(
    backend: Backend,
    timeout: Duration,
) -> (TestApp, AccountGroupId, String) {
    let app = Settings::default()
        .with_db_timeout(timeout)
        .with_db_max_connections(1)
        .with_key_cache_ttl(Duration::from_secs(600))
        .through_proxy()
        .spawn(backend)
        .await;
    let (group, key, warm_up) = app.writer_and_queued_scan().await;
    app.cancel_ok(&key, &group, &warm_up).await;
    (app, group, key)
}

/// The pool's one connection, cut short by the timeout while the server still owed it an answer
/// (slowed down on its way back), serves the next request only once that answer is read or the
/// connection is replaced: the next cancel, of another scan, is a 200 about that scan, not the
/// first statement's late error. (A pool that took the connection back at once handed it over
/// with that error still to come.)
async fn a_connection_cut_short_is_settled_before_it_serves_again(backend: Backend) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // Longer than the second the store awaits a statement's answer past its timeout (so it gives
    // up on the first statement), shorter than that and the next request's wait for a connection.
    const LATE_BY: Duration = Duration::from_millis(1500);
    let (app, group, key) = warm_through_proxy(backend, TIMEOUT).await;
    let stuck_scan = app.scan(&group, ScanStatus::Running).await;
    let free_scan = app.scan(&group, ScanStatus::Queued).await;
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    let mut lock = WriteLock::hold(&app, &stuck_scan).await;

    proxy.slow_down(LATE_BY);
    let stuck = app
        .cancel(Some(&key), group.as_str(), stuck_scan.as_str())
        .await;
    // The statement's own end (statement_timeout, at TIMEOUT) is on its way back now, held
    // LATE_BY by the proxy, past the moment the store gave up; the next request must not meet it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.slow_down(Duration::ZERO);
    let next = app
        .cancel(Some(&key), group.as_str(), free_scan.as_str())
        .await;
    lock.release().await;

    stuck.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body["data"]["scanId"], free_scan.as_str());
    assert_eq!(next.body["data"]["previousStatus"], "queued");
    assert_eq!(app.status_of(&stuck_scan).await, ScanStatus::Running);
    assert_eq!(app.status_of(&free_scan).await, ScanStatus::Cancelled);
}
store_test!(
    a_connection_cut_short_is_settled_before_it_serves_again,
    postgres_only
);

/// PostgreSQL ends a statement at DB_TIMEOUT_MS itself (`statement_timeout`). A write whose
/// answer is still on its way then (every answer held 1.4 s by the proxy; the timeout is 1 s) is
/// awaited a second longer, so its request is told what the database did: the cancel committed,
/// and it answers 200, not a 502 that would hide the commit.
async fn a_write_answered_late_is_told_what_the_database_did(backend: Backend) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // The late cancel's connection is the warm-up's, open, its statement already prepared (a new
    // one would take round trips of 1.4 s each before the statement is even sent).
    let (app, group, key) = warm_through_proxy(backend, TIMEOUT).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");

    proxy.slow_down(TIMEOUT * 14 / 10);
    let late = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    proxy.slow_down(Duration::ZERO);

    assert_eq!(late.status, 200, "{late:?}");
    assert_eq!(late.body["data"]["previousStatus"], "queued");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Cancelled);
}
store_test!(
    a_write_answered_late_is_told_what_the_database_did,
    postgres_only
);

/// On either store: a cancel whose write waits behind another session's lock past DB_TIMEOUT_MS
/// answers 502 and changes nothing; once the lock is gone the same process serves it.
async fn a_write_stuck_behind_another_writer_answers_502_and_changes_nothing(backend: Backend) {
    let (app, group, key) = Settings::default()
        .with_db_timeout(DB_TIMEOUT)
        .spawn_with_writer(backend)
        .await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let mut lock = WriteLock::hold(&app, &scan).await;

    let started = Instant::now();
    let stuck = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let waited = started.elapsed();
    // The database gives up on the statement too (statement_timeout, SQLite's busy timeout);
    // only then is the lock let go, so a late commit cannot hide here.
    until_waiting(&app, 0).await;
    lock.release().await;
    let after = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    stuck.assert_error(502, "UPSTREAM_ERROR");
    // Past the rate limit (step 5 of the checks), a 502 states the key's limit as any answer.
    for header in ["ratelimit", "ratelimit-policy"] {
        assert!(stuck.header(header).is_some(), "{header}: {stuck:?}");
    }
    assert!(
        waited >= DB_TIMEOUT,
        "gave up before DB_TIMEOUT: {waited:?}"
    );
    assert!(waited < DB_TIMEOUT * 10, "answered after {waited:?}");
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.body["data"]["previousStatus"], "running");
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(events.len(), 2, "creation and the one cancel: {events:?}");
}
store_test!(a_write_stuck_behind_another_writer_answers_502_and_changes_nothing);

/// SQLite: a write held up past DB_TIMEOUT_MS by another connection's write lock (another process
/// writing, a command, an operator's `sqlite3` shell) says so in its error, which the 502's log
/// line carries. It said only "no answer within 400 ms", which on a local file sent the operator
/// looking for a slow database (the operator review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_held_up_by_another_connections_lock_says_so() {
    use signal_scans::domain::scan::Actor;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let store = Store::connect(&crate::helpers::store_options(&app.db.url, DB_TIMEOUT)).unwrap();
    let group = group();
    let scan = app.scan(&group, ScanStatus::Running).await;
    let mut lock = WriteLock::hold(&app, &scan).await;
    let actor = Actor {
        api_key_id: None,
        trace_id: None,
        reason: None,
    };

    let held_up = store
        .transition(Some(&group), &scan, ScanStatus::Cancelled, actor)
        .await;
    lock.release().await;

    let error = held_up
        .expect_err("the write waited for the lock")
        .to_string();
    assert!(
        error.contains(
            "no answer within 400 ms: another connection holds the database's write lock"
        ),
        "{error}"
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
}

/// SQLite: a database file that lost its write permission under the service (an operator's
/// `chmod`, a volume remounted read-only) answers writes 502, as PostgreSQL's read-only database
/// does, and changes nothing; once it is writable again, writes succeed without a restart (the
/// connections opened read-only meanwhile, here the key lookup's, are each replaced at the write
/// they refuse: 502 too). Writes answered 500, "a bug", logged at ERROR (the SQLite review,
/// serving as another user). Here the file is made immutable, which binds root too; the served
/// store has no connection open yet, so the ones it needs must open the file, read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_made_read_only_under_the_service_answers_writes_502() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let usage = app.served_store.pool_usage();
    assert_eq!(usage.in_use + usage.idle, 0);

    let immutable = Immutable::set(&app.db.sqlite_file());
    let refused = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let status_meanwhile = app.status_of(&scan).await;
    drop(immutable);
    let mut after = Vec::new();
    while after.len() < 10 && after.last() != Some(&200) {
        let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
        after.push(cancel.status.as_u16());
    }

    refused.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(status_meanwhile, ScanStatus::Queued);
    let (succeeded, before) = after.split_last().unwrap();
    assert_eq!(*succeeded, 200, "{after:?}");
    assert!(before.iter().all(|status| *status == 502), "{after:?}");
}

/// SQLite: the write-ahead log or its index (`-wal`, `-shm`) deleted under the service, as an
/// operator restoring a backup might: writes answer 502 and change nothing, their log line saying
/// what to do. SQLite wrote on into the deleted files and every write answered 200 (the SQLite
/// review): a crash or a restart then lost them all, and a command saw another database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_ahead_log_deleted_under_the_service_stops_the_writes() {
    for suffix in ["-wal", "-shm"] {
        let app = TestApp::spawn(Backend::Sqlite).await;
        let (group, key, scan) = app.writer_and_queued_scan().await;
        let other = app.scan(&group, ScanStatus::Queued).await;
        app.cancel_ok(&key, &group, &other).await;
        let mut companion = app.db.sqlite_file().into_os_string();
        companion.push(suffix);
        // The read below on a connection opened before the deletion: one opened after it cannot
        // read the database (`disk I/O error`).
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);

        std::fs::remove_file(&companion).unwrap();
        let refused = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
        let error = app
            .served_store
            .transition(Some(&group), &scan, ScanStatus::Cancelled, RUNNER)
            .await
            .expect_err("no write")
            .to_string();

        refused.assert_error(502, "UPSTREAM_ERROR");
        assert!(
            error.contains("was deleted while this process had the database open")
                && error.contains("SIGTERM"),
            "{suffix}: {error}"
        );
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued, "{suffix}");
    }
}

/// SQLite: a write the database refuses as read-only is told in SQLite's words, not as a wait for
/// a lock another connection holds: the operator looks at the file's permissions, not for another
/// process. Only SQLite's busy answer to the BEGIN is a wait for the lock; were the wait taken as
/// still on past it, the 502's log line would read "no answer within 400 ms: another connection
/// holds the database's write lock".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_refused_as_read_only_is_not_told_as_a_lock_held() {
    let (app, group, _, scan) = sqlite_app_with_a_queued_scan().await;

    let immutable = Immutable::set(&app.db.sqlite_file());
    let refused = app
        .served_store
        .transition(Some(&group), &scan, ScanStatus::Cancelled, RUNNER)
        .await
        .map(drop);
    drop(immutable);

    let error = refused.expect_err("no write").to_string();
    assert!(
        error.contains("readonly") && !error.contains("write lock"),
        "{error}"
    );
}

/// A SQLite service giving up on its database after `DB_TIMEOUT`, with a writer's key and a
/// queued scan of its group.
async fn sqlite_app_with_a_queued_scan() -> (TestApp, AccountGroupId, String, ScanId) {
    let app = Settings::default()
        .with_db_timeout(DB_TIMEOUT)
        .spawn(Backend::Sqlite)
        .await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    (app, group, key, scan)
}

/// A file made immutable (`chattr +i`, which binds root too) until dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(file: &std::path::Path) -> Self {
        let set = std::process::Command::new("chattr")
            .arg("+i")
            .arg(file)
            .status();
        assert!(
            set.is_ok_and(|status| status.success()),
            "chattr +i {file:?}: the test needs root and a file system with the immutable flag"
        );
        Self(file.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        undo("chattr", &["-i".as_ref(), self.0.as_os_str()]);
    }
}

/// Runs `program` with `args`, whatever comes of it: a `Drop` undoing what a test set up.
fn undo(program: &str, args: &[&std::ffi::OsStr]) {
    let _ = std::process::Command::new(program).args(args).status();
}

/// SQLite's file out of reach (its folder moved away, as an unmounted volume would leave it):
/// `/readyz` is 503 and a cancel 502; both recover when it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sqlite_database_is_not_ready_and_answers_502() {
    let (app, group, key, scan) = sqlite_app_with_a_queued_scan().await;
    let file = app.db.sqlite_file();
    let folder = file.parent().unwrap().to_owned();
    let moved = folder.with_extension("away");
    // The served store has opened no connection yet (it connects lazily): every one it needs
    // now must open the file.
    assert_eq!(
        app.served_store.pool_usage().in_use + app.served_store.pool_usage().idle,
        0
    );
    std::fs::rename(&folder, &moved).unwrap();

    let ready = ApiResponse::of(app.client.get(app.url("/readyz"))).await;
    let alive = ApiResponse::of(app.client.get(app.url("/healthz"))).await;
    let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    // A change stream's errors before it opens are the envelope too.
    let stream = app
        .get(&key, &format!("/v1/accounts/{group}/signals/scans/changes"))
        .await;
    std::fs::rename(&moved, &folder).unwrap();
    let ready_again = ApiResponse::of(app.client.get(app.url("/readyz"))).await;
    let cancel_again = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    ready.assert_error(503, "NOT_READY");
    assert_eq!(alive.status, 200, "{alive:?}");
    cancel.assert_error(502, "UPSTREAM_ERROR");
    stream.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(ready_again.status, 200, "{ready_again:?}");
    assert_eq!(cancel_again.status, 200, "{cancel_again:?}");
    assert_eq!(cancel_again.body["data"]["previousStatus"], "queued");
}

/// The SQLite file deleted under the running service: writes answer 502 and `/readyz` 503, on the
/// connections opened before (which would commit to the deleted file, every change lost) and on
/// new ones (which must not make an empty database in its place, which a restart would have
/// migrated and served with every key and scan gone). The old ones answered 200, the new ones
/// created the file and answered 500 ("no such table").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_deleted_while_serving_is_not_written_or_made_again() {
    let (_app, file) = with_the_file_changed_while_serving(|file| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    })
    .await;
    assert!(!file.exists(), "a database was made again at {file:?}");
}

/// The same file, replaced under the running service (a backup moved over it): writes answer 502
/// and `/readyz` 503 until a restart serves the new file, instead of committing to the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_replaced_while_serving_is_not_written() {
    with_the_file_changed_while_serving(|file| {
        let copy = file.with_extension("copy");
        std::fs::copy(file, &copy).unwrap();
        std::fs::rename(&copy, file).unwrap();
    })
    .await;
}

/// The SQLite file moved away under the running service (renamed): a write is refused in words
/// that say the file was moved away and can be moved back, and once it is back the same process
/// writes again. The tests of a file deleted or replaced read only the answers (502, 503), which
/// left the words free to say "cannot be checked", a fault of the disk, not the move it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_moved_away_while_serving_says_so_and_is_written_once_it_is_back() {
    let (app, group, key, scan) = sqlite_app_with_a_queued_scan().await;
    let file = app.db.sqlite_file();
    let moved = file.with_extension("away");

    std::fs::rename(&file, &moved).unwrap();
    let refused = app
        .served_store
        .transition(Some(&group), &scan, ScanStatus::Cancelled, RUNNER)
        .await
        .map(drop);
    std::fs::rename(&moved, &file).unwrap();
    let cancel_again = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    let error = refused.expect_err("no write").to_string();
    assert!(
        error.contains("test.db was deleted or moved away while this process had it open"),
        "{error}"
    );
    assert_eq!(cancel_again.status, 200, "{cancel_again:?}");
    assert_eq!(cancel_again.body["data"]["previousStatus"], "queued");
}

/// The SQLite file's path not to be looked at while serving (here a file put where its folder
/// was; as another user, a folder it may no longer enter) refuses writes, said as a file that
/// cannot be checked, with the system's reason, not as one deleted, which would send the
/// operator to restore a backup over a file that may be there still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_whose_path_cannot_be_looked_at_is_not_told_as_deleted() {
    let (app, group, key, scan) = sqlite_app_with_a_queued_scan().await;
    let folder = app.db.sqlite_file().parent().unwrap().to_owned();
    let moved = folder.with_extension("away");

    std::fs::rename(&folder, &moved).unwrap();
    std::fs::write(&folder, "not a folder").unwrap();
    let refused = app
        .served_store
        .transition(Some(&group), &scan, ScanStatus::Cancelled, RUNNER)
        .await
        .map(drop);
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&moved, &folder).unwrap();
    let cancel_again = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    let error = refused.expect_err("no write").to_string();
    assert!(
        error.contains("test.db cannot be checked (Not a directory") && !error.contains("deleted"),
        "{error}"
    );
    assert_eq!(cancel_again.status, 200, "{cancel_again:?}");
}

/// Serves SQLite with a connection open on its file (a cancel made), lets `change` do what it will
/// to the file, then checks that a cancel answers 502 and `/readyz` 503; returns the app, still
/// serving (its database removed only when it is dropped), and the file's path.
async fn with_the_file_changed_while_serving(
    change: impl FnOnce(&std::path::Path),
) -> (TestApp, std::path::PathBuf) {
    let (app, group, key, scan) = sqlite_app_with_a_queued_scan().await;
    let other = app.scan(&group, ScanStatus::Queued).await;
    let file = std::path::PathBuf::from(app.db.url.trim_start_matches("sqlite://"));
    let before = app.cancel(Some(&key), group.as_str(), other.as_str()).await;
    assert_eq!(before.status, 200, "{before:?}");
    change(&file);

    let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let ready = ApiResponse::of(app.client.get(app.url("/readyz"))).await;

    cancel.assert_error(502, "UPSTREAM_ERROR");
    ready.assert_error(503, "NOT_READY");
    (app, file)
}

/// A folder with a 4-MiB tmpfs mounted on it, unmounted and removed when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount() -> Self {
        let folder = std::env::temp_dir().join(format!(
            "signal-scans-full-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&folder).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&folder)
            .status()
            .expect("mount runs");
        if !mounted.success() {
            let _ = std::fs::remove_dir(&folder);
            panic!("mounting a tmpfs at {folder:?} needs root, as README says");
        }
        Self(folder)
    }

    /// Writes zeros to a file of the disk until it is full; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0; 64 * 1024]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        undo("umount", &["-l".as_ref(), self.0.as_os_str()]);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SQLite's disk full at a write: the write fails as the database unavailable (502), commits
/// nothing, and every write succeeds once space is back, with no restart. SQLite rolls such a
/// transaction back itself, so sqlx's ROLLBACK failed, and the connection went back to the pool
/// refusing every later BEGIN ("non-zero transaction depth"): 500 after 500 until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_a_write_and_writes_succeed_once_space_is_back() {
    use signal_scans::domain::scan::Actor;
    use signal_scans::store::StoreError;
    let disk = SmallDisk::mount();
    let url = format!("sqlite://{}", disk.0.join("signal-scans.db").display());
    let store = Store::connect(&crate::helpers::store_options(&url, DB_TIMEOUT)).unwrap();
    store.migrate().await.unwrap();
    let group = group();
    let mut scans = Vec::new();
    for _ in 0..20 {
        scans.push(
            store
                .create_scan(&group, ScanStatus::Queued)
                .await
                .unwrap()
                .id,
        );
    }
    let actor = || Actor {
        api_key_id: None,
        trace_id: None,
        reason: None,
    };
    let cancel = |scan| store.transition(Some(&group), scan, ScanStatus::Cancelled, actor());

    let filler = disk.fill();
    let full = cancel(&scans[0]).await;
    std::fs::remove_file(filler).unwrap();
    let mut after = Vec::new();
    for scan in &scans[1..] {
        after.push(cancel(scan).await.map(drop));
    }

    assert!(matches!(full, Err(StoreError::Unavailable(_))), "{full:?}");
    assert!(after.iter().all(Result::is_ok), "{after:?}");
    let first = store.find_scan(None, &scans[0]).await.unwrap().unwrap();
    assert_eq!(
        first.status,
        ScanStatus::Queued,
        "the failed write committed nothing"
    );
}

/// SQLite: a write past the process's file-size limit (`ulimit -f`, systemd's `LimitFSIZE`) fails
/// as a 500 naming SQLite's `disk I/O error`, and the process serves on. SIGXFSZ killed it, with
/// no line logged (the Troubleshoot review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_file_size_limit_fails_and_the_process_serves_on() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let group = group();
    let key = app.writer(&group).await;
    let file = app.db.sqlite_file();
    let largest = [file.clone(), file.with_extension("db-wal")]
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .max()
        .unwrap();
    // Room for a few writes past what the files hold now (`ulimit -f` counts KiB).
    let limit = format!("ulimit -f {}", largest / 1024 + 64);
    let server = crate::helpers::process::ServerProcess::start_after(
        &limit,
        &[("DATABASE_URL", &app.db.url)],
    )
    .await;

    let mut created = 0;
    let refused = loop {
        let answer = server.post(&key, &scans_path(group.as_str())).await;
        match answer.status.as_u16() {
            201 if created < 2000 => created += 1,
            _ => break answer,
        }
    };
    let health = reqwest::get(server.url("/healthz")).await.unwrap();

    assert!(created > 0, "some writes fit");
    refused.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(health.status(), 200, "the process serves on");
    let logs = server
        .until_logged(|event| {
            event["error.cause"]
                .as_str()
                .is_some_and(|cause| cause.contains("disk I/O error"))
        })
        .await;
    assert!(!logs.is_empty());
}

/// The server ends every session of the service (a restart, a failover, an administrator): the
/// next request finds its connection gone and answers 502, and the pool drops its other idle
/// connections with it, so the requests after it are served on new ones. Each idle connection
/// used to fail a request of its own first.
async fn sessions_ended_by_the_server_cost_one_request_not_one_per_idle_connection(
    backend: Backend,
) {
    const IDLE: u32 = 4;
    let app = TestApp::spawn(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let path = format!("/v1/accounts/{group}/signals/scans/{scan}");
    // Concurrent reads open connections; the pool keeps them idle afterwards.
    while app.served_store.pool_usage().idle < IDLE {
        let reads = join_all((0..16).map(|_| app.get(&key, &path))).await;
        assert!(reads.iter().all(|read| read.status == 200), "{reads:?}");
    }
    let ended = end_sessions(&app).await;
    assert!(ended >= i64::from(IDLE), "{ended} sessions ended");

    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(app.get(&key, &path).await.status.as_u16());
    }

    let failed = statuses.iter().filter(|status| **status != 200).count();
    assert!(
        failed <= 1,
        "one request finds the lost connection: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}
store_test!(
    sessions_ended_by_the_server_cost_one_request_not_one_per_idle_connection,
    postgres_only
);

/// Ends every session of the service's (and of the test's own store) on the test database, as
/// an administrator or a restart would; the sessions opened after take the database's settings.
async fn end_sessions(app: &TestApp) -> i64 {
    app.db.end_sessions().await
}

/// The answers to `request()` until one is not a 502, at most `tries`: the request that finds a
/// session ended under the pool answers 502 (it may have been sent), and the next is served.
async fn past_a_lost_session<F: Future<Output = ApiResponse>>(
    tries: usize,
    request: impl Fn() -> F,
) -> Vec<ApiResponse> {
    let mut answers = Vec::new();
    while answers.len() < tries {
        let answer = request().await;
        let lost = answer.status == 502;
        answers.push(answer);
        if !lost {
            break;
        }
    }
    answers
}

/// A database that takes no writes (a standby after a failover, `default_transaction_read_only`):
/// writes answer 502, the database's refusal, not 500, "a bug", and change nothing; reads are
/// served. Once it takes writes again, the same process writes again: the read-only sessions are
/// not kept (each one kept answered 500 until a restart).
async fn a_read_only_database_answers_writes_502_and_is_written_again_without_a_restart(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let scan_path = format!("/v1/accounts/{group}/signals/scans/{scan}");
    let cancel = || app.cancel(Some(&key), group.as_str(), scan.as_str());

    app.db.alter("SET default_transaction_read_only = on").await;
    end_sessions(&app).await;
    let reads = past_a_lost_session(2, || app.get(&key, &scan_path)).await;
    let refused = [cancel().await, cancel().await];
    let created = app
        .post(&key, &scans_path(group.as_str()), Some("{}"))
        .await;
    let read = app.get(&key, &scan_path).await;

    assert_eq!(reads.last().unwrap().status, 200, "{reads:?}");
    for refusal in &refused {
        refusal.assert_error(502, "UPSTREAM_ERROR");
    }
    created.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.body["data"]["status"], "queued", "{read:?}");

    app.db.alter("RESET default_transaction_read_only").await;
    // A session opened while read only may still be idle in the pool: its refusal drops it.
    let written = past_a_lost_session(2, cancel).await;
    let last = written.last().unwrap();
    assert_eq!(last.status, 200, "{written:?}");
    assert_eq!(last.body["data"]["previousStatus"], "queued");
}
store_test!(
    a_read_only_database_answers_writes_502_and_is_written_again_without_a_restart,
    postgres_only
);

/// A database that refuses new sessions (here `ALLOW_CONNECTIONS false`; a refused login, a
/// dropped database alike) answers 502, the database unavailable, not 500, "a bug"; and the same
/// process serves once it takes them again.
async fn a_database_refusing_new_sessions_answers_502(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let scan_path = format!("/v1/accounts/{group}/signals/scans/{scan}");

    app.db.allow_connections(false).await;
    end_sessions(&app).await;
    let refused = [
        app.get(&key, &scan_path).await,
        app.get(&key, &scan_path).await,
    ];
    app.db.allow_connections(true).await;
    let served = app.get(&key, &scan_path).await;

    for refusal in &refused {
        refusal.assert_error(502, "UPSTREAM_ERROR");
    }
    assert_eq!(served.status, 200, "{served:?}");
}
store_test!(a_database_refusing_new_sessions_answers_502, postgres_only);

/// A server that ends idle sessions (`idle_session_timeout`, or a device on the way that drops
/// idle connections) costs no request: a connection idle for a while is asked whether it is
/// still there before it is used. The first request after every quiet spell answered 502.
async fn a_server_ending_idle_sessions_costs_no_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let mut scans = Vec::new();
    for _ in 0..3 {
        scans.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let scan_path = format!("/v1/accounts/{group}/signals/scans/{}", scans[0]);

    // Not below the pool's idle check (a second): a connection idle for less is not asked.
    app.db.alter("SET idle_session_timeout = '1s'").await;
    end_sessions(&app).await;
    let warmed = past_a_lost_session(2, || app.get(&key, &scan_path)).await;
    assert_eq!(warmed.last().unwrap().status, 200, "{warmed:?}");
    let mut answers = Vec::new();
    for scan in &scans {
        // Past the server's idle timeout and past the pool's idle check.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        answers.push(app.get(&key, &scan_path).await);
        answers.push(app.cancel(Some(&key), group.as_str(), scan.as_str()).await);
    }

    let statuses: Vec<u16> = answers
        .iter()
        .map(|answer| answer.status.as_u16())
        .collect();
    assert_eq!(statuses, [200; 6], "{answers:?}");
}
store_test!(
    a_server_ending_idle_sessions_costs_no_request,
    postgres_only
);

/// A statement that fails, its session still sound (here ended by the database at DB_TIMEOUT_MS,
/// 57014, behind another transaction's row lock), costs no session: its connection, settled with
/// one round trip, goes back to the pool. (The eleventh mutation run: a connection closed after
/// every failed statement, or every failure taken for a lost session, which closes it and drops
/// the idle ones with it, went unseen: the requests after it were served alike, on new sessions.)
async fn a_statement_that_fails_gives_its_connection_back_to_the_pool(backend: Backend) {
    // One connection, so the pool's count tells what became of it; the database ends the stuck
    // statement at 1 s.
    let (app, group, key) = warm_through_proxy(backend, Duration::from_millis(1000)).await;
    let stuck_scan = app.scan(&group, ScanStatus::Running).await;
    let warm = app.served_store.pool_usage();
    let mut lock = WriteLock::hold(&app, &stuck_scan).await;

    let stuck = app
        .cancel(Some(&key), group.as_str(), stuck_scan.as_str())
        .await;
    lock.release().await;
    // Settled (its round trip made) once no connection is in use.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut usage = app.served_store.pool_usage();
    while usage.in_use > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        usage = app.served_store.pool_usage();
    }

    stuck.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!((warm.in_use, warm.idle), (0, 1), "{warm:?}");
    assert_eq!((usage.in_use, usage.idle), (0, 1), "{usage:?}");
}
store_test!(
    a_statement_that_fails_gives_its_connection_back_to_the_pool,
    postgres_only
);

/// Sockets broken with no word from the server (a crash, a reset on the way; here the proxy
/// closing every open one at once) are lost sessions as much as ones the server ended: the
/// first request to meet one fails, and the idle connections, broken alike, are dropped with it
/// rather than each failing a request of its own. (The eleventh mutation run: only the server's
/// FATAL message, 57P01, was seen dropping them; a broken socket's I/O error went untested.)
async fn broken_sockets_cost_one_request_not_one_per_connection(backend: Backend) {
    const POOL: u32 = 3;
    let app = Settings::default()
        .with_db_max_connections(POOL)
        .with_key_cache_ttl(Duration::from_secs(600))
        .through_proxy()
        .spawn(backend)
        .await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let path = format!("{}/{scan}", scans_path(group.as_str()));
    // The key is cached, and every connection of the pool open and idle.
    assert_eq!(app.get(&key, &path).await.status, 200);
    drop(hold_connections(&app, POOL).await);
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    // Cut, then restore: every socket open at the cut is closed (the pause lets each relay
    // see the cut before the restore).
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Within the second an idle connection is handed out without a round trip first.
    let mut statuses = Vec::new();
    for _ in 0..POOL {
        statuses.push(app.get(&key, &path).await.status.as_u16());
    }

    assert!(
        statuses.iter().filter(|status| **status != 200).count() <= 1,
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}
store_test!(
    broken_sockets_cost_one_request_not_one_per_connection,
    postgres_only
);
