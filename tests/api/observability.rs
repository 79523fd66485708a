//! What operators see, read from the real binary (a process of its own, so its logs and metrics
//! are this test's alone): structured logs that never carry a secret, each 5xx logged once with
//! its trace id, and metrics that count exactly what was done.

use std::time::{Duration, Instant};

use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::locks::WriteLock;
use crate::helpers::process::ServerProcess;
use crate::helpers::proxy::Proxy;
use crate::helpers::{ApiResponse, Backend, TestApp, cancel_path, move_path};
use crate::store_test;

/// `LOG_FORMAT=json`: one JSON object per line; each request's line carries its trace id,
/// route, status and latency; and no log line, even at trace level, carries a key or the
/// database password.
async fn json_logs_carry_request_facts_and_never_a_secret(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let wrong_key = NewApiKey::generate().secret;
    // PostgreSQL here trusts local connections, so a password in the URL is accepted and unused.
    let database_url = match backend {
        Backend::Postgres => {
            let mut url = url::Url::parse(&app.db.url).unwrap();
            url.set_password(Some("hunter2-secret")).unwrap();
            // Parameters the driver does not know, one of them libpq's key password: named in
            // a warning, their values never.
            url.query_pairs_mut()
                .append_pair("sslpassword", "keyfile-secret")
                .append_pair("passwd", "misspelt-secret")
                .append_pair("secret-tail-of-a-password", "");
            url.to_string()
        }
        Backend::Sqlite => app.db.url.clone(),
    };
    let server =
        ServerProcess::start(&[("DATABASE_URL", &database_url), ("RUST_LOG", "trace")]).await;
    let client = reqwest::Client::new();

    let cancelled = server
        .post(&key, &cancel_path(group.as_str(), scan.as_str()))
        .await;
    let refused = ApiResponse::of(
        client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .header("x-api-key", &wrong_key),
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
    assert!(finished["latency_ms"].as_f64().unwrap() > 0.0, "{finished}");
    assert_eq!(finished["span"]["client.address"], "127.0.0.1");
    assert!(finished["span"]["api_key.id"].is_string(), "{finished}");
    let everything = logs.join("\n");
    for secret in [
        key.as_str(),
        &key[4..],
        wrong_key.as_str(),
        "hunter2-secret",
        "keyfile-secret",
        "misspelt-secret",
        "secret-tail-of-a-password",
    ] {
        assert!(!everything.contains(secret), "a secret reached the logs");
    }
    if backend == Backend::Postgres {
        let ignored: Vec<&str> = events
            .iter()
            .filter(|event| event["level"] == "WARN")
            .filter(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unrecognized connect parameter"))
            })
            .filter_map(|event| event["key"].as_str())
            .collect();
        // A name that is none of libpq's may be a password's tail (an unencoded `&`): not shown.
        assert_eq!(
            ignored,
            [
                "sslpassword",
                "(not a libpq parameter; its name is not shown)",
                "(not a libpq parameter; its name is not shown)"
            ],
            "{logs:#?}"
        );
    }
}
store_test!(json_logs_carry_request_facts_and_never_a_secret);

/// A 502 and a 500 are each logged exactly once (warn and error), on a line that carries the
/// response's trace id and the cause. The real binary, so its logs are its own.
async fn a_502_and_a_500_are_each_logged_once_with_the_trace_id(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    // The same stuck write: a short database timeout makes it a 502, a short request deadline
    // (with a long database timeout) a 500. A second, not less: the start's own connection and
    // migration check are bounded by it too, and a loaded machine took longer than 300 ms.
    let upstream =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("DB_TIMEOUT_MS", "1000")]).await;
    let deadline = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("DB_TIMEOUT_MS", "20000"),
        ("REQUEST_TIMEOUT_MS", "300"),
    ])
    .await;
    let mut lock = WriteLock::hold(&app, &scan).await;
    let client = reqwest::Client::new();
    let send = |server: &ServerProcess| {
        let request = client.post(server.url(&path)).bearer_auth(&key);
        async move { ApiResponse::of(request).await }
    };

    let bad_gateway = send(&upstream).await;
    let internal = send(&deadline).await;
    lock.release().await;

    bad_gateway.assert_error(502, "UPSTREAM_ERROR");
    let details = internal.assert_error(500, "INTERNAL_ERROR");
    // A 500 says where its cause is (the spec's `details` is a string), and is not kept by any
    // cache, though the deadline that made it stands outside the routes.
    assert!(details.contains("logged under this traceId"), "{details}");
    assert_eq!(internal.header("cache-control"), Some("no-store"));
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

/// A request whose client leaves before its answer (here while its write waits on a lock) is
/// counted with status 499 and timed, and has its closing log line, with its trace id, though its
/// change commits later: a stalled database shows in the metrics and the logs, not in silence.
async fn a_request_whose_client_leaves_is_counted_and_logged_as_499(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let server =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("DB_TIMEOUT_MS", "5000")]).await;
    let route = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel";
    let abandoned = format!(r#"http_requests_total{{route="{route}",method="POST",status="499"}}"#);
    let timed = format!(r#"http_request_duration_seconds_count{{route="{route}",method="POST"}}"#);
    let before = server.metrics().await;
    let mut lock = WriteLock::hold(&app, &scan).await;

    let trace_id = "client-left-before-its-answer";
    let request = reqwest::Client::new()
        .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
        .bearer_auth(&key)
        .header("x-request-id", trace_id)
        .send();
    let client = tokio::spawn(request);
    // Once a writer has taken the change (it waits on the lock), the client leaves, 200 ms on.
    let taken = "scan_write_queue_wait_seconds_count";
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::helpers::metrics::delta(&before, &server.metrics().await, taken) < 1.0 {
        assert!(Instant::now() < deadline, "the change was never taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.abort();
    assert!(
        client.await.unwrap_err().is_cancelled(),
        "the client left first"
    );
    let of_this_request = |event: &serde_json::Value| event["span"]["trace.id"] == trace_id;
    let events = server
        .until_logged(|event| {
            of_this_request(event)
                && event["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("finished processing request"))
        })
        .await;
    lock.release().await;

    let closing = events.iter().rfind(|event| of_this_request(event)).unwrap();
    assert_eq!(closing["status"], 499, "{closing:#}");
    assert!(
        closing["latency_ms"].as_f64().unwrap() >= 200.0,
        "{closing:#}"
    );
    let after = server.metrics().await;
    let counted = |series: &str| crate::helpers::metrics::delta(&before, &after, series);
    assert_eq!(counted(&abandoned), 1.0, "counted as 499, in:\n{after}");
    assert_eq!(counted(&timed), 1.0, "and timed, in:\n{after}");
    // The change itself was taken before the client left, and commits once the lock is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.status_of(&scan).await != ScanStatus::Cancelled {
        assert!(
            Instant::now() < deadline,
            "the abandoned cancel never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
store_test!(a_request_whose_client_leaves_is_counted_and_logged_as_499);

/// A client that leaves while sending its body (HTTP/1.1: the connection closed short of its
/// `Content-Length`; HTTP/2: the stream reset, and a connection closed) is counted and logged as
/// 499, as one that leaves while waiting for its answer: it was counted a 400, a client's mistake
/// in the series an operator watches. Nothing changes. A body refused while its client waits,
/// malformed or unreadable (a malformed chunk), stays a 400 the client reads.
async fn a_client_that_leaves_mid_body_is_counted_as_499_not_400(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let path = format!("/v1/accounts/{group}/signals/scans/cancel");
    let series = |status: u16| {
        format!(
            r#"http_requests_total{{route="/v1/accounts/{{accountGroupId}}/signals/scans/cancel",method="POST",status="{status}"}}"#
        )
    };
    let part = format!(r#"{{"scanIds": ["{scan}""#);
    let before = server.metrics().await;

    let mut http1 = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         X-Request-Id: left-mid-body-1\r\nContent-Length: 100\r\n\r\n{part}"
    );
    http1.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(http1);
    for (trace_id, reset) in [("left-mid-body-2", true), ("left-mid-body-3", false)] {
        let (mut client, driver) = crate::helpers::h2_client(server.addr, 65_535).await;
        let request = axum::http::Request::post(server.url(&path))
            .header("authorization", format!("Bearer {key}"))
            .header("x-request-id", trace_id)
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (_answer, mut body) = client.send_request(request, false).unwrap();
        body.send_data(part.clone().into(), false).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reset {
            body.send_reset(h2::Reason::CANCEL);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop((client, body));
        driver.abort();
    }

    let events = server
        .until_events(|events| {
            let left = |event: &&serde_json::Value| {
                event["span"]["trace.id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("left-mid-body"))
                    && event["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("finished processing request"))
            };
            events.iter().filter(left).count() >= 3
        })
        .await;
    for trace_id in ["left-mid-body-1", "left-mid-body-2", "left-mid-body-3"] {
        let closing = events
            .iter()
            .find(|event| event["span"]["trace.id"] == trace_id)
            .unwrap_or_else(|| panic!("no closing line for {trace_id}"));
        assert_eq!(closing["status"], 499, "{closing:#}");
        assert_eq!(
            closing["message"],
            "finished processing request: the client left before its answer"
        );
    }
    let after = server.metrics().await;
    let counted = |status| crate::helpers::metrics::delta(&before, &after, &series(status));
    assert_eq!(counted(499), 3.0, "in:\n{after}");
    assert_eq!(counted(400), 0.0, "in:\n{after}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);

    // A body the service refuses while its client waits is still a 400 the client reads.
    let refused = reqwest::Client::new()
        .post(server.url(&path))
        .bearer_auth(&key)
        .body(part.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    // So is a body it cannot read while its client waits (a chunk whose size is not hexadecimal):
    // the client reads `the request body could not be read`, and it is no 499.
    let mut http1 = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{part}\r\nzz\r\n",
        part.len()
    );
    http1.write_all(head.as_bytes()).await.unwrap();
    let mut unreadable = String::new();
    http1.read_to_string(&mut unreadable).await.unwrap();
    let (status_line, body) = unreadable.split_once("\r\n\r\n").unwrap();
    assert!(status_line.starts_with("HTTP/1.1 400 "), "{unreadable}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["error"]["details"],
        "the request body could not be read"
    );
    let after = server.metrics().await;
    let counted = |status| crate::helpers::metrics::delta(&before, &after, &series(status));
    assert_eq!(counted(400), 2.0, "in:\n{after}");
    assert_eq!(counted(499), 3.0, "in:\n{after}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(a_client_that_leaves_mid_body_is_counted_as_499_not_400);

/// A key's change streams past `STREAM_MAX_PER_KEY` are refused with 429, and counted with the
/// other limits' refusals: an alert on `rate_limited_total` sees every 429 a limit gave.
async fn a_stream_past_its_keys_cap_is_counted_as_rate_limited(backend: Backend) {
    let (app, group, _) = TestApp::with_writer(backend).await;
    let reader = app.reader(&group).await;
    let server =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("STREAM_MAX_PER_KEY", "1")]).await;
    let before = server.metrics().await;
    let client = reqwest::Client::new();
    let url = server.url(&format!("/v1/accounts/{group}/signals/scans/changes"));
    let open = || client.get(&url).bearer_auth(&reader).send();

    let first = open().await.unwrap();
    let second = open().await.unwrap();

    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 429);
    let after = server.metrics().await;
    let series = r#"rate_limited_total{limit="streams_per_key"}"#;
    assert_eq!(
        crate::helpers::metrics::delta(&before, &after, series),
        1.0,
        "in:\n{after}"
    );
}
store_test!(a_stream_past_its_keys_cap_is_counted_as_rate_limited);

/// A request deadline that a writing request can outlast (`DB_TIMEOUT_MS` 5 s: one may take
/// 31.75 s, the default deadline is 15 s) is warned of once at start, naming both settings; the
/// defaults (2 s and 15 s, against 13.75 s) and a deadline just past the longest writing request
/// (5 × 5 s + (5 s − 1 s) + 2.75 s) start quietly.
async fn a_request_deadline_a_write_can_outlast_is_warned_of_at_start(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.as_str();
    let warnings = |server: &ServerProcess| -> Vec<serde_json::Value> {
        server
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["level"] == "WARN")
            .collect()
    };

    let short = ServerProcess::start(&[("DATABASE_URL", url), ("DB_TIMEOUT_MS", "5000")]).await;
    let defaults = ServerProcess::start(&[("DATABASE_URL", url)]).await;
    let enough = ServerProcess::start(&[
        ("DATABASE_URL", url),
        ("DB_TIMEOUT_MS", "5000"),
        ("REQUEST_TIMEOUT_MS", "31751"),
    ])
    .await;

    let warned = warnings(&short);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0]["message"]
            .as_str()
            .is_some_and(|m| m
                .starts_with("REQUEST_TIMEOUT_MS is not above the longest a request that writes")),
        "{warned:#?}"
    );
    assert_eq!(warned[0]["request_timeout_ms"], 15_000);
    assert_eq!(warned[0]["db_timeout_ms"], 5_000);
    assert_eq!(warnings(&defaults), Vec::<serde_json::Value>::new());
    assert_eq!(warnings(&enough), Vec::<serde_json::Value>::new());

    // More batches at once than connections: only as many commit at once, and PostgreSQL's
    // start says so (SQLite commits one batch at a time whatever the setting).
    let batches = ServerProcess::start(&[
        ("DATABASE_URL", url),
        ("DB_WRITE_BATCHES", "11"),
        ("DB_MAX_CONNECTIONS", "10"),
    ])
    .await;
    let warned = warnings(&batches);
    match backend {
        Backend::Postgres => {
            assert_eq!(warned.len(), 1, "{warned:#?}");
            assert!(
                warned[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("DB_WRITE_BATCHES is above DB_MAX_CONNECTIONS")),
                "{warned:#?}"
            );
        }
        Backend::Sqlite => assert_eq!(warned, Vec::<serde_json::Value>::new()),
    }
}
store_test!(a_request_deadline_a_write_can_outlast_is_warned_of_at_start);

/// Counted by the real binary, a process of its own, so no other test's requests are in its
/// figures: every counter moves by exactly what this test did.
async fn metrics_count_requests_limits_pool_and_cancels(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let server = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("RATE_LIMIT_PER_SECOND", "1"),
        ("RATE_LIMIT_BURST", "1"),
        ("AUTH_FAILURES_PER_MINUTE", "1"),
    ])
    .await;
    let client = reqwest::Client::new();
    let metrics = || async {
        let response = client.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8",
            "Prometheus text format 0.0.4"
        );
        response.text().await.unwrap()
    };
    let cancel = |key: String| {
        let request = client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(key);
        async move { ApiResponse::of(request).await }
    };
    let before = metrics().await;

    let moved = cancel(key.clone()).await;
    // A burst of 1 at 1 a second: keep asking until limited, however slow the machine.
    let mut again = Vec::new();
    while again.last().is_none_or(|status| *status != 429) {
        again.push(cancel(key.clone()).await.status.as_u16());
        assert!(again.len() < 100, "never limited: {again:?}");
    }
    // A repeat, by a key of its own (the first is limited now).
    let (second_writer, _) = app.key_for(&[Permission::SignalsWrite], &[group]).await;
    let repeated = cancel(second_writer).await;
    // A runner's move is no cancel: it is counted by no `scan_cancels_total` series.
    let (runner, _) = app.key_for(&[Permission::SignalsRun], &[group]).await;
    let queued = app.scan(&group, ScanStatus::Queued).await;
    let started = client
        .post(server.url(&move_path(group.as_str(), queued.as_str(), "start")))
        .bearer_auth(runner);
    let started = ApiResponse::of(started).await;
    // Last: the second failed authentication blocks this address.
    let guesses = [
        cancel(NewApiKey::generate().secret).await,
        cancel(NewApiKey::generate().secret).await,
    ];
    let after = metrics().await;

    assert_eq!(started.status, 200, "{:?}", started.body);
    assert_eq!(moved.body["data"]["previousStatus"], "running");
    assert_eq!(repeated.body["data"]["previousStatus"], "cancelled");
    assert_eq!(guesses[0].status, 401);
    guesses[1].assert_error(429, "RATE_LIMITED");
    let counted = |series: &str| crate::helpers::metrics::delta(&before, &after, series);
    let mut statuses = vec![moved.status.as_u16()];
    statuses.extend(&again);
    statuses.push(repeated.status.as_u16());
    statuses.extend(guesses.iter().map(|g| g.status.as_u16()));
    let answered = |status: u16| statuses.iter().filter(|s| **s == status).count() as f64;
    let route = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel";
    for status in [200, 401, 429] {
        assert_eq!(
            counted(&format!(
                r#"http_requests_total{{route="{route}",method="POST",status="{status}"}}"#
            )),
            answered(status),
            "{status} answers, in:\n{after}"
        );
    }
    assert_eq!(counted(r#"rate_limited_total{limit="per_key"}"#), 1.0);
    assert_eq!(counted(r#"rate_limited_total{limit="auth_failures"}"#), 1.0);
    assert_eq!(
        counted(r#"scan_cancels_total{previous_status="running"}"#),
        1.0
    );
    // Every 200 after the first repeats the cancel.
    assert_eq!(
        counted(r#"scan_cancels_total{previous_status="cancelled"}"#),
        answered(200) - 1.0,
        "{again:?}"
    );
    assert_eq!(
        counted(r#"scan_cancels_total{previous_status="queued"}"#),
        0.0
    );
    assert_eq!(
        counted(&format!(
            r#"http_request_duration_seconds_count{{route="{route}",method="POST"}}"#
        )),
        answered(200) + answered(401) + answered(429)
    );
    assert_eq!(
        crate::helpers::metrics::value(&after, r#"db_pool_connections{state="max"}"#),
        Some(10.0)
    );
    assert!(
        crate::helpers::metrics::value(&after, r#"db_pool_connections{state="in_use"}"#).is_some()
    );
    assert!(
        !after.contains(scan.as_str()),
        "no raw paths or ids as labels"
    );
}
store_test!(metrics_count_requests_limits_pool_and_cancels);

/// A fresh process's `/metrics` has every counter whose labels are known in advance at 0, a
/// `# HELP` line for each metric, and latency buckets past `REQUEST_TIMEOUT_MS`: a counter
/// appeared at its first event, which Prometheus's `rate()` and `increase()` then never counted,
/// so a first burst of 429s or a Redis that never answered raised no alert; no metric said what
/// it was; and the last bucket was 10 s (the SRE review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_process_shows_its_counters_at_zero_and_says_what_each_metric_is() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;

    let metrics = server.metrics().await;
    let answered = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(answered.status(), 200);
    let after_a_request = server.metrics().await;

    for series in [
        r#"rate_limited_total{limit="per_key"} 0"#,
        r#"rate_limited_total{limit="auth_failures"} 0"#,
        r#"rate_limited_total{limit="streams_per_key"} 0"#,
        "rate_limit_backend_errors_total 0",
        r#"scan_cancels_total{previous_status="queued"} 0"#,
        r#"scan_cancels_total{previous_status="running"} 0"#,
        r#"scan_cancels_total{previous_status="cancelled"} 0"#,
        r#"change_streams_ended_total{reason="client_gone"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series}\n{metrics}"
        );
    }
    // Each metric shown (a histogram shows once it has a sample) says what it is.
    let shown: Vec<&str> = after_a_request
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' ').map(|(metric, _)| metric))
        .collect();
    assert!(
        shown.contains(&"http_request_duration_seconds"),
        "{after_a_request}"
    );
    assert!(shown.len() >= 9, "{after_a_request}");
    // A request held to REQUEST_TIMEOUT_MS's default 15 s was counted in `+Inf` alone.
    for bucket in ["15", "30", "60"] {
        let series = format!(
            r#"http_request_duration_seconds_bucket{{route="/healthz",method="GET",le="{bucket}"}}"#
        );
        assert!(
            after_a_request
                .lines()
                .any(|line| line.starts_with(&series)),
            "{series}\n{after_a_request}"
        );
    }
    for metric in shown {
        let help = format!("# HELP {metric} ");
        assert!(
            after_a_request
                .lines()
                .any(|line| line.starts_with(&help) && line.len() > help.len() + 10),
            "{help}\n{after_a_request}"
        );
    }
}

/// Every scrape shows the process's own figures under the names Prometheus clients give them,
/// as `/proc` tells them: its memory, its descriptors against their limit, its CPU time, its
/// threads and when it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_the_processs_memory_descriptors_cpu_and_start() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let before_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;

    let metrics = server.metrics().await;
    let rss = server.rss_kib() as f64 * 1024.0;
    let (max_fds, _) = server.open_file_limit();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count() as f64;
    let value = |series: &str| {
        crate::helpers::metrics::value(&metrics, series)
            .unwrap_or_else(|| panic!("{series}\n{metrics}"))
    };

    let resident = value("process_resident_memory_bytes");
    assert!(
        resident > rss / 2.0 && resident < rss * 2.0,
        "{resident} bytes against VmRSS {rss}"
    );
    assert!(
        (value("process_open_fds") - open_fds).abs() <= 4.0,
        "{} open against {open_fds} in /proc",
        value("process_open_fds")
    );
    assert_eq!(value("process_max_fds"), max_fds as f64);
    let started = value("process_start_time_seconds");
    assert!(
        started >= before_start.floor() - 1.0 && started <= before_start + 60.0,
        "started at {started}, the test at {before_start}"
    );
    // Shown; a counter of whole seconds (the `metrics` facade's counters are integers), so a
    // process this young may show 0.
    value("process_cpu_seconds_total");
    assert!(value("process_threads") >= 2.0, "{metrics}");
    for metric in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(metrics.contains(&format!("# HELP {metric} ")), "{metric}");
    }
}

/// An empty `RUST_LOG` (a compose file's `RUST_LOG: ${RUST_LOG}` with nothing set) logs as an
/// unset one: as an empty filter it kept errors only, and the process looked as if it never
/// started. `ServerProcess::start` waits for the INFO line "signal-scans is serving".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rust_log_logs_as_an_unset_one() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("RUST_LOG", "")]).await;

    assert!(
        server.logs().iter().any(|line| line.contains("\"INFO\"")),
        "{:#?}",
        server.logs()
    );
}

/// A probe that succeeds (`/healthz`, `/readyz` and `/metrics` answering 200) closes at `debug`: a
/// health check every 10 s and a scrape every 15 s made most of a quiet service's log at `info`.
/// A probe that fails is logged as any request: `/readyz` answering 503 while the database file is
/// away. Fails if a successful probe's closing line is at `info`, or a failed one's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_probe_that_fails_is_logged_at_info() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let client = reqwest::Client::new();
    let status = async |path: &str| {
        let response = client.get(server.url(path)).send().await.unwrap();
        response.status().as_u16()
    };

    let mut probes = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        probes.push(status(path).await);
    }
    let file = app.db.sqlite_file();
    let away = file.with_extension("away");
    std::fs::rename(&file, &away).unwrap();
    let unready = status("/readyz").await;
    std::fs::rename(&away, &file).unwrap();
    let events = server
        .until_logged(|event| {
            event["message"] == "finished processing request" && event["status"] == 503
        })
        .await;

    assert_eq!(probes, [200, 200, 200]);
    assert_eq!(unready, 503);
    let closing: Vec<(&str, &serde_json::Value)> = events
        .iter()
        .filter(|event| event["message"] == "finished processing request")
        .map(|event| {
            (
                event["span"]["http.route"].as_str().unwrap(),
                &event["status"],
            )
        })
        .collect();
    assert_eq!(closing, [("/readyz", &serde_json::json!(503))]);
}

/// The writer's metrics count every request and only commits, read from the real binary: a
/// request that gave up waiting to be taken is in `scan_write_queue_wait_seconds` with its wait
/// (they were missing: the queue looked empty in an outage, when the waits were longest); a
/// cancel whose client left after its batch was taken is in `scan_cancels_total` once the batch
/// commits (it was counted when answered, so never); and `scan_write_batch_size` counts commits.
///
/// PostgreSQL only: a request gives up in the queue only while a batch ahead of it takes longer
/// than the write timeout, which the proxy arranges by answering late. SQLite's own wait for its
/// lock is bounded by the same timeout as the queue's, so no batch outlasts a queued request.
async fn write_metrics_count_requests_that_gave_up_and_cancels_whose_client_left(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let warm = app.scan(&group, ScanStatus::Queued).await;
    let left = app.scan(&group, ScanStatus::Queued).await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let proxy = Proxy::start(app.db.server_addr().await).await;
    let url = proxy.url_for(&app.db.url);
    // One batch at a time, so that the requests behind the slow one wait in the queue.
    let server = ServerProcess::start(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_TIMEOUT_MS", "500"),
        ("DB_WRITE_BATCHES", "1"),
    ])
    .await;
    let path = |scan: &ScanId| cancel_path(group.as_str(), scan.as_str());
    // The key is cached and the pool warm: from here on only the writes reach the database.
    assert_eq!(server.post(&key, &path(&warm)).await.status, 200);
    let before = server.metrics().await;
    let counted =
        |after: &str, series: &str| crate::helpers::metrics::delta(&before, after, series);
    let waits = "scan_write_queue_wait_seconds_count";
    proxy.slow_down(Duration::from_millis(1200));

    // A client that leaves 300 ms in: its batch is taken by then and commits later.
    let leaving = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(server.url(&path(&left)))
        .bearer_auth(&key)
        .send();
    let until_counted = async |series: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counted(&server.metrics().await, series) < 1.0 {
            assert!(Instant::now() < deadline, "no {series} within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    // Taken: its wait is counted.
    let (gone, ()) = tokio::join!(leaving, until_counted(waits));
    assert!(
        gone.unwrap_err().is_timeout(),
        "the client left before its answer"
    );
    // Behind it, three requests give up in the queue after 500 ms.
    let paths: Vec<String> = queued.iter().map(path).collect();
    let answers =
        futures_util::future::join_all(paths.iter().map(|path| server.post(&key, path))).await;
    for answer in &answers {
        answer.assert_error(502, "UPSTREAM_ERROR");
    }
    // The commit's answer reaches the service 1.2 s after the database made it.
    let commits = "scan_write_batch_size_count";
    until_counted(commits).await;
    proxy.slow_down(Duration::ZERO);
    let after = server.metrics().await;

    assert_eq!(app.status_of(&left).await, ScanStatus::Cancelled);
    for scan in &queued {
        assert_eq!(
            app.status_of(scan).await,
            ScanStatus::Queued,
            "never taken, never written"
        );
    }
    assert_eq!(
        counted(&after, waits),
        4.0,
        "every request's wait, in:\n{after}"
    );
    assert!(
        counted(&after, "scan_write_queue_wait_seconds_sum") >= 1.45,
        "three waits of 500 ms, in:\n{after}"
    );
    assert_eq!(counted(&after, commits), 1.0, "one commit, in:\n{after}");
    assert_eq!(
        counted(&after, "scan_write_batch_size_sum"),
        1.0,
        "of one change, in:\n{after}"
    );
    assert_eq!(
        counted(&after, r#"scan_cancels_total{previous_status="queued"}"#),
        1.0,
        "the cancel whose client left, in:\n{after}"
    );
}
store_test!(
    write_metrics_count_requests_that_gave_up_and_cancels_whose_client_left,
    postgres_only
);

/// A failed authentication's log line says why (what the 401 said: never the key), and the
/// failure that blocks an address is logged once, as a warning: an operator chasing "401 for a
/// key that should work", or a storm of bad keys, learns it from the logs.
async fn failed_authentications_are_logged_with_their_reason_and_a_block_once(backend: Backend) {
    let (app, group, _key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let server = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("AUTH_FAILURES_PER_MINUTE", "2"),
    ])
    .await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let url = server.url(&path);
    let client = reqwest::Client::new();
    let statuses = [
        client.post(&url).send().await.unwrap().status().as_u16(),
        client
            .post(&url)
            .bearer_auth("not-a-key")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        server
            .post(&NewApiKey::generate().secret, &path)
            .await
            .status
            .as_u16(),
        server
            .post(&NewApiKey::generate().secret, &path)
            .await
            .status
            .as_u16(),
    ];
    assert_eq!(statuses, [401, 401, 429, 429]);
    // A request logged at `info` after them: once its closing line is read, so is every line
    // before it.
    let after = client.get(server.url("/after")).send().await.unwrap();
    assert_eq!(after.status(), 404);
    server
        .until_events(|events| {
            events.iter().any(|event| {
                event["message"] == "finished processing request" && event["status"] == 404
            })
        })
        .await;

    let events: Vec<serde_json::Value> = server
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let reasons: Vec<&str> = events
        .iter()
        .filter(|event| event["message"] == "authentication failed")
        .map(|event| event["reason"].as_str().unwrap_or("none"))
        .collect();
    // The second failure spends the allowance and blocks: the third request is not looked up.
    assert_eq!(reasons.len(), 2, "{events:#?}");
    assert!(reasons[0].starts_with("API key is missing"), "{reasons:?}");
    assert_eq!(reasons[1], "API key is invalid");
    let blocked: Vec<&serde_json::Value> = events
        .iter()
        .filter(|event| {
            event["message"] == "address blocked after repeated authentication failures"
        })
        .collect();
    assert_eq!(blocked.len(), 1, "{events:#?}");
    assert_eq!(blocked[0]["level"], "WARN");
    assert_eq!(blocked[0]["client.address"], "127.0.0.1");
    // Past the block, an address's requests write nothing at `info`: one client with a wrong key
    // in a loop wrote a closing line for each of its 429s, about 9 MB of log a second (the
    // resource review).
    let closed = |status: u16| {
        events
            .iter()
            .filter(|event| {
                event["message"] == "finished processing request" && event["status"] == status
            })
            .count()
    };
    assert_eq!((closed(401), closed(429)), (2, 0), "{events:#?}");
}
store_test!(failed_authentications_are_logged_with_their_reason_and_a_block_once);

/// A log line that cannot be written (stderr a pipe whose reader is gone, or on a full disk) is
/// lost, and the service goes on serving. tracing-subscriber used to report the failed write with
/// `eprintln!`, which panicked on the same stderr; the panic hook logged through it again, and
/// the process aborted at its next line.
async fn a_log_line_that_cannot_be_written_never_stops_the_service(backend: Backend) {
    use tokio::io::AsyncBufReadExt;
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let mut command = tokio::process::Command::from(crate::helpers::child::signal_scans());
    let mut server = command
        .arg("serve")
        .env("DATABASE_URL", &app.db.url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the server logs in time")
            .unwrap()
            .expect("the server logs that it serves");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "signal-scans is serving" {
            break event["listen.addr"].as_str().unwrap().parse().unwrap();
        }
    };
    // The reader of its stderr goes away: every line from here on fails to be written.
    drop(lines);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");

    let cancel = ApiResponse::of(
        client
            .post(url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key),
    )
    .await;
    let mut health = Vec::new();
    for _ in 0..20 {
        health.push(client.get(url("/healthz")).send().await.map(|r| r.status()));
    }

    assert_eq!(cancel.status, 200, "{cancel:?}");
    assert!(
        health
            .iter()
            .all(|status| matches!(status, Ok(s) if *s == 200)),
        "{health:?}"
    );
    assert_eq!(server.try_wait().unwrap(), None, "the server exited");
}
store_test!(a_log_line_that_cannot_be_written_never_stops_the_service);
