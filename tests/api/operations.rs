//! The real binary as operators run it: draining on SIGTERM, bounded drain, structured logs that
//! never carry a secret.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use signal_scans::domain::keys::NewApiKey;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::process::ServerProcess;
use crate::helpers::proxy::Proxy;
use crate::helpers::{ApiResponse, Backend, TestApp, cancel_path, group};
use crate::store_test;

/// SIGTERM while cancels are in flight (the database slowed by a proxy): each gets its real
/// answer, new connections are refused, and the process exits 0.
async fn sigterm_lets_in_flight_requests_finish_then_exits_0(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let mut scans = Vec::new();
    for _ in 0..5 {
        scans.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let proxy = Proxy::start(app.db.server_addr().await).await;
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", &proxy.url_for(&app.db.url)),
        // tower_http's debug line "started processing request" tells when each is in flight.
        ("RUST_LOG", "info,tower_http=debug"),
    ])
    .await;
    let client = reqwest::Client::new();
    proxy.slow_down(Duration::from_millis(400));
    let answered = AtomicUsize::new(0);

    let in_flight = join_all(scans.iter().map(|scan| {
        let request = client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .send();
        async {
            let response = request.await;
            answered.fetch_add(1, Ordering::SeqCst);
            response
        }
    }));
    let terminate = async {
        server
            .until_logged(|_| started_requests(&server) == scans.len())
            .await;
        server.terminate();
        server
            .until_logged(|event| {
                event["message"] == "shutdown requested; finishing in-flight requests"
            })
            .await;
        // A fresh client each time: a pooled connection would not show the listener closing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::Client::new()
            .get(server.url("/healthz"))
            .send()
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "still accepting after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answered.load(Ordering::SeqCst)
    };
    let (responses, answered_when_refused) = tokio::join!(in_flight, terminate);
    let exit = server.wait(Duration::from_secs(15)).await;

    for response in responses {
        let response = ApiResponse::from(response.expect("answered, not dropped")).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body["data"]["previousStatus"], "queued");
    }
    assert_eq!(
        answered_when_refused, 0,
        "new connections were refused while all of them were in flight"
    );
    assert!(exit.success(), "{exit:?}");
    for scan in &scans {
        assert_eq!(app.status_of(scan).await, ScanStatus::Cancelled);
    }
}
store_test!(
    sigterm_lets_in_flight_requests_finish_then_exits_0,
    postgres_only
);

async fn a_request_stuck_past_the_drain_time_does_not_keep_the_process(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let proxy = Proxy::start(app.db.server_addr().await).await;
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", &proxy.url_for(&app.db.url)),
        ("SHUTDOWN_TIMEOUT_MS", "300"),
        ("DB_TIMEOUT_MS", "20000"),
        ("REQUEST_TIMEOUT_MS", "30000"),
        ("RUST_LOG", "info,tower_http=debug"),
    ])
    .await;
    proxy.slow_down(Duration::from_secs(10));
    let stuck = tokio::spawn(
        reqwest::Client::new()
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .send(),
    );
    server
        .until_logged(|_| started_requests(&server) == 1)
        .await;

    let started = Instant::now();
    server.terminate();
    let exit = server.wait(Duration::from_secs(10)).await;
    let drained = started.elapsed();

    assert!(exit.success(), "{exit:?}");
    assert!(
        drained >= Duration::from_millis(300),
        "left before the drain time: {drained:?}"
    );
    let stuck = stuck.await.unwrap();
    assert!(
        stuck.is_err(),
        "the stuck request is cut off with the process, not answered: {stuck:?}"
    );
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line
                .contains("requests still in flight after the drain time; stopping anyway")),
        "the abandoned request is logged"
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(
    a_request_stuck_past_the_drain_time_does_not_keep_the_process,
    postgres_only
);

/// `LOG_FORMAT=json`: one JSON object per line; each request's line carries its trace id,
/// route, status and latency; and no log line, even at trace level, carries a key or the
/// database password.
async fn json_logs_carry_request_facts_and_never_a_secret(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let wrong_key = NewApiKey::generate().secret;
    // PostgreSQL here trusts local connections, so a password in the URL is accepted and unused.
    let database_url = match backend {
        Backend::Postgres => {
            let mut url = url::Url::parse(&app.db.url).unwrap();
            url.set_password(Some("hunter2-secret")).unwrap();
            url.to_string()
        }
        Backend::Sqlite => app.db.url.clone(),
    };
    let server =
        ServerProcess::start(&[("DATABASE_URL", &database_url), ("RUST_LOG", "trace")]).await;
    let client = reqwest::Client::new();

    let cancelled = ApiResponse::from(
        client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let refused = ApiResponse::from(
        client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .header("x-api-key", &wrong_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    server
        .until_logged(|event| {
            event["message"] == "finished processing request"
                && event["span"]["trace.id"] == refused.trace_id()
        })
        .await;
    let logs = server.logs();

    assert_eq!(cancelled.status, 200);
    refused.assert_error(401, "UNAUTHORIZED");
    let events: Vec<serde_json::Value> = logs
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let finished = events
        .iter()
        .find(|event| {
            event["message"] == "finished processing request"
                && event["span"]["trace.id"] == cancelled.trace_id()
        })
        .unwrap_or_else(|| panic!("no request line for {}: {logs:#?}", cancelled.trace_id()));
    assert_eq!(
        finished["span"]["http.route"],
        "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel"
    );
    assert_eq!(finished["status"], 200);
    assert!(
        finished["latency"].is_string() || finished["latency"].is_number(),
        "{finished}"
    );
    let everything = logs.join("\n");
    for secret in [
        key.as_str(),
        &key[4..],
        wrong_key.as_str(),
        "hunter2-secret",
    ] {
        assert!(!everything.contains(secret), "a secret reached the logs");
    }
}
store_test!(json_logs_carry_request_facts_and_never_a_secret);

/// How many requests the server has started (tower_http's debug line for each).
fn started_requests(server: &ServerProcess) -> usize {
    server
        .logs()
        .iter()
        .filter(|line| line.contains("started processing request"))
        .count()
}
