//! Faults: the database going away and coming back, panics, stalls, and shutdown mid-request.

use std::time::{Duration, Instant};

use axum::routing::get;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp, group};
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
            http: signal_scans::app::HttpSettings {
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

    let response =
        ApiResponse::from(app.client.get(app.url("/test/stall")).send().await.unwrap()).await;

    response.assert_error(500, "INTERNAL_ERROR");
}
store_test!(a_stalled_request_answers_the_envelope_at_the_request_deadline);

async fn shutdown_lets_in_flight_requests_finish(backend: Backend) {
    let mut app = TestApp::spawn_with(
        backend,
        Settings {
            extra_routes: axum::Router::new().route(
                "/test/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    axum::Json(signal_scans::http::envelope::Envelope::success("done"))
                }),
            ),
            ..Settings::default()
        },
    )
    .await;
    let in_flight = tokio::spawn(app.client.get(app.url("/test/slow")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.shut_down().await.expect("clean shutdown");

    let response = ApiResponse::from(in_flight.await.unwrap().unwrap()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body["data"], "done");
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "no new connections after shutdown"
    );
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still_waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'signal-scans' AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut blocker)
    .await
    .unwrap();
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();

    stuck.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(
        still_waiting, 0,
        "the database still runs a statement nobody waits for"
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
}
store_test!(
    a_statement_stuck_on_a_lock_is_ended_by_the_database_too,
    postgres_only
);
