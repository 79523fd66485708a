//! Faults: the database going away and coming back, panics, stalls, and shutdown mid-request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use signal_scans::domain::scan::ScanStatus;
use tokio::sync::Notify;

use crate::helpers::locks::{WriteLock, until_waiting};
use crate::helpers::process::ServerProcess;
use crate::helpers::{ApiResponse, Backend, Settings, TestApp, cancel_path, group};
use crate::store_test;

const DB_TIMEOUT: Duration = Duration::from_millis(400);

async fn a_database_that_stops_answering_gives_502_then_recovers(backend: Backend) {
    // Arrange: the app reaches its database only through a proxy we can cut.
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: DB_TIMEOUT,
            through_proxy: true,
            ..Settings::default()
        },
    )
    .await;
    let proxy = app.proxy.as_ref().unwrap();
    let group = group();
    let key = app.writer(&group).await;
    let before_cut = app.scan(&group, ScanStatus::Queued).await;
    let during_cut = app.scan(&group, ScanStatus::Queued).await;
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), before_cut.as_str())
            .await
            .status,
        200
    );

    // Act: cut the database off.
    proxy.cut();
    let started = Instant::now();
    let cut_off = app
        .cancel(Some(&key), group.as_str(), during_cut.as_str())
        .await;
    let waited = started.elapsed();
    let ready = ApiResponse::from(app.client.get(app.url("/readyz")).send().await.unwrap()).await;

    // Assert: a 502 in about DB_TIMEOUT (generous bound: it must not hang), nothing applied.
    cut_off.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(cut_off.body["error"]["message"], "Upstream service error");
    assert!(waited < DB_TIMEOUT * 5, "answered after {waited:?}");
    ready.assert_error(503, "NOT_READY");
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

async fn a_panicking_handler_is_a_500_envelope_and_the_process_keeps_serving(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            extra_routes: axum::Router::new().route(
                "/test/panic",
                get(|| async {
                    panic!("secret internal detail");
                    #[allow(unreachable_code)]
                    ""
                }),
            ),
            ..Settings::default()
        },
    )
    .await;

    let response =
        ApiResponse::from(app.client.get(app.url("/test/panic")).send().await.unwrap()).await;

    response.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(response.body["error"]["message"], "Internal server error");
    assert!(!response.body.to_string().contains("secret internal detail"));
    let after = ApiResponse::from(app.client.get(app.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(after.status, 200);
}
store_test!(a_panicking_handler_is_a_500_envelope_and_the_process_keeps_serving);

async fn a_stalled_request_answers_the_envelope_at_the_request_deadline(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            http: signal_scans::http::HttpSettings {
                request_timeout: Duration::from_millis(200),
                ..Settings::default().http
            },
            extra_routes: axum::Router::new().route(
                "/test/stall",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    ""
                }),
            ),
            ..Settings::default()
        },
    )
    .await;

    let started = Instant::now();
    let response =
        ApiResponse::from(app.client.get(app.url("/test/stall")).send().await.unwrap()).await;
    let waited = started.elapsed();

    response.assert_error(500, "INTERNAL_ERROR");
    // At the 200 ms deadline: not before it, and far from the 10 s default or the 60 s stall.
    assert!(waited >= Duration::from_millis(200), "after {waited:?}");
    assert!(waited < Duration::from_secs(3), "after {waited:?}");
}
store_test!(a_stalled_request_answers_the_envelope_at_the_request_deadline);

async fn shutdown_lets_in_flight_requests_finish(backend: Backend) {
    // The slow route says when it has started, and finishes only when the test lets it: after
    // the server has begun shutting down.
    let started = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let mut app = TestApp::spawn_with(
        backend,
        Settings {
            extra_routes: axum::Router::new().route(
                "/test/slow",
                get({
                    let (started, finish) = (started.clone(), finish.clone());
                    move || async move {
                        started.notify_one();
                        finish.notified().await;
                        axum::Json(signal_scans::http::envelope::Envelope::success("done"))
                    }
                }),
            ),
            ..Settings::default()
        },
    )
    .await;
    let in_flight = tokio::spawn(app.client.get(app.url("/test/slow")).send());
    started.notified().await;
    let healthz = app.url("/healthz");

    let (stopped, refused_while_in_flight) = tokio::join!(app.shut_down(), async {
        // A fresh client each time: a pooled connection would not show the listener closing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::Client::new().get(&healthz).send().await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused_while_in_flight = !in_flight.is_finished();
        finish.notify_one();
        refused_while_in_flight
    });

    stopped.expect("clean shutdown");
    assert!(
        refused_while_in_flight,
        "new connections refused while the request was in flight"
    );
    let response = ApiResponse::from(in_flight.await.unwrap().unwrap()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body["data"], "done");
}
store_test!(shutdown_lets_in_flight_requests_finish);

/// A cancel stuck behind another transaction's row lock answers 502 at DB_TIMEOUT_MS, and the
/// database gives up on the statement too (statement_timeout), so the stuck statement does not
/// wait on, holding a connection and a place in the lock queue, after the client was answered.
async fn a_statement_stuck_on_a_lock_is_ended_by_the_database_too(backend: Backend) {
    use sqlx::Connection;
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: Duration::from_millis(500),
            ..Settings::default()
        },
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

    let stuck = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
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

/// The pool's one connection, cut short by the timeout while the server still owed it an answer
/// (slowed down on its way back), serves the next request only once that answer is read or the
/// connection is replaced: the next cancel, of another scan, is a 200 about that scan, not the
/// first statement's late error. (A pool that took the connection back at once handed it over
/// with that error still to come.)
async fn a_connection_cut_short_is_settled_before_it_serves_again(backend: Backend) {
    const TIMEOUT: Duration = Duration::from_secs(1);
    // Longer than the wait before the next request, shorter than that request's own timeout.
    const LATE_BY: Duration = Duration::from_millis(500);
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: TIMEOUT,
            db_max_connections: 1,
            key_cache_ttl: Duration::from_secs(600),
            through_proxy: true,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let stuck_scan = app.scan(&group, ScanStatus::Running).await;
    let free_scan = app.scan(&group, ScanStatus::Queued).await;
    // The key is cached and the pool's one connection open before the database is slowed down.
    let warm_up = app.scan(&group, ScanStatus::Queued).await;
    let warm = app
        .cancel(Some(&key), group.as_str(), warm_up.as_str())
        .await;
    assert_eq!(warm.status, 200, "{warm:?}");
    let proxy = app.proxy.as_ref().expect("spawned through the proxy");
    let mut lock = WriteLock::hold(&app, &stuck_scan).await;

    proxy.slow_down(LATE_BY);
    let stuck = app
        .cancel(Some(&key), group.as_str(), stuck_scan.as_str())
        .await;
    // The statement's own end (statement_timeout, as late as the client's) is on its way back
    // now, held LATE_BY by the proxy; the next request must not meet it.
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

/// On either store: a cancel whose write waits behind another session's lock past DB_TIMEOUT_MS
/// answers 502 and changes nothing; once the lock is gone the same process serves it.
async fn a_write_stuck_behind_another_writer_answers_502_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: DB_TIMEOUT,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
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

/// SQLite's file out of reach (its folder moved away, as an unmounted volume would leave it):
/// `/readyz` is 503 and a cancel 502; both recover when it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sqlite_database_is_not_ready_and_answers_502() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Settings {
            db_timeout: DB_TIMEOUT,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let file = std::path::PathBuf::from(app.db.url.trim_start_matches("sqlite://"));
    let folder = file.parent().unwrap().to_owned();
    let moved = folder.with_extension("away");
    // The served store has opened no connection yet (it connects lazily): every one it needs
    // now must open the file.
    assert_eq!(
        app.served_store.pool_usage().in_use + app.served_store.pool_usage().idle,
        0
    );
    std::fs::rename(&folder, &moved).unwrap();

    let ready = ApiResponse::from(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    std::fs::rename(&moved, &folder).unwrap();
    let ready_again =
        ApiResponse::from(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    let cancel_again = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    ready.assert_error(503, "NOT_READY");
    cancel.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(ready_again.status, 200, "{ready_again:?}");
    assert_eq!(cancel_again.status, 200, "{cancel_again:?}");
    assert_eq!(cancel_again.body["data"]["previousStatus"], "queued");
}

/// A 502 and a 500 are each logged exactly once (warn and error), on a line that carries the
/// response's trace id and the cause. The real binary, so its logs are its own.
async fn a_502_and_a_500_are_each_logged_once_with_the_trace_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let mut lock = WriteLock::hold(&app, &scan).await;
    // The same stuck write: a short database timeout makes it a 502, a short request deadline
    // (with a long database timeout) a 500.
    let upstream =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("DB_TIMEOUT_MS", "300")]).await;
    let deadline = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("DB_TIMEOUT_MS", "20000"),
        ("REQUEST_TIMEOUT_MS", "300"),
    ])
    .await;
    let client = reqwest::Client::new();
    let send = |server: &ServerProcess| {
        let request = client.post(server.url(&path)).bearer_auth(&key);
        async move { ApiResponse::from(request.send().await.unwrap()).await }
    };

    let bad_gateway = send(&upstream).await;
    let internal = send(&deadline).await;
    lock.release().await;

    bad_gateway.assert_error(502, "UPSTREAM_ERROR");
    internal.assert_error(500, "INTERNAL_ERROR");
    for (server, response, level) in [
        (&upstream, &bad_gateway, "WARN"),
        (&deadline, &internal, "ERROR"),
    ] {
        let trace_id = response.trace_id();
        let of_this_request = |event: &serde_json::Value| event["span"]["trace.id"] == trace_id;
        let events = server
            .until_logged(|event| {
                of_this_request(event) && event["message"] == "finished processing request"
            })
            .await;
        let problems: Vec<&serde_json::Value> = events
            .iter()
            .filter(|event| of_this_request(event))
            .filter(|event| event["level"] == "WARN" || event["level"] == "ERROR")
            .collect();
        assert_eq!(problems.len(), 1, "logged once: {problems:#?}");
        assert_eq!(problems[0]["level"], level, "{problems:#?}");
        assert!(
            problems[0]["error.cause"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "with its cause: {problems:#?}"
        );
    }
    // Whether the abandoned write commits once the lock is gone is not this test's rule: a 5xx
    // cancel may have happened, and a retry tells (README, "Troubleshoot").
}
store_test!(a_502_and_a_500_are_each_logged_once_with_the_trace_id);
