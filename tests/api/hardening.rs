//! Reliability and security under hostile conditions: a database that goes away under load, pool
//! exhaustion, request limits, key guessing, and tenant isolation.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{AccountGroupAccess, NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::HttpSettings;
use signal_scans::store::Store;

use crate::helpers::process::ServerProcess;
use crate::helpers::{ApiResponse, Backend, Settings, TestApp, cancel_path, group};
use crate::store_test;

const DB_TIMEOUT: Duration = Duration::from_millis(300);
/// Far above DB_TIMEOUT: a request taking longer than this has hung.
const HUNG: Duration = Duration::from_secs(5);

/// Workers cancel scans (each scan twice) while the database is cut and restored. No request
/// hangs, every 200 that moved a scan is backed by exactly one committed audit row, and no
/// scan is cancelled twice.
async fn under_load_a_cut_and_a_return_lose_and_double_nothing(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: DB_TIMEOUT,
            through_proxy: true,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
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
/// after another; once a connection is free again the same process serves.
async fn an_exhausted_pool_answers_502_not_a_queue(backend: Backend) {
    const POOL: u32 = 2;
    // Long enough that a queue (10 requests one after another, each waiting this long) would
    // take 10 s, far past the bound below; short enough to keep the test quick.
    const WAIT: Duration = Duration::from_secs(1);
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: WAIT,
            db_max_connections: POOL,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let Store::Postgres(served) = &app.served_store else {
        unreachable!("a PostgreSQL test")
    };
    let mut holders = Vec::new();
    for _ in 0..POOL {
        holders.push(served.hold_connection().await.expect("a free connection"));
    }
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
    drop(holders);
    let after = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

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

async fn oversized_targets_headers_and_bodies_are_400_envelopes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let url = app.url(&cancel_path(group.as_str(), scan.as_str()));

    let long_path = ApiResponse::from(
        app.client
            .post(app.url(&format!("/v1/accounts/{}/cancel", "a".repeat(5000))))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let big_header = ApiResponse::from(
        app.client
            .post(&url)
            .bearer_auth(&key)
            .header("x-padding", "p".repeat(20_000))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let big_body = ApiResponse::from(
        app.client
            .post(&url)
            .bearer_auth(&key)
            .body(vec![b'x'; 100_000])
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert!(
        long_path
            .assert_error(400, "VALIDATION_ERROR")
            .contains("request target")
    );
    assert!(
        big_header
            .assert_error(400, "VALIDATION_ERROR")
            .contains("headers")
    );
    assert!(
        big_body
            .assert_error(400, "VALIDATION_ERROR")
            .contains("body")
    );
    assert_eq!(
        app.status_of(&scan).await,
        ScanStatus::Queued,
        "nothing changed"
    );
}
store_test!(oversized_targets_headers_and_bodies_are_400_envelopes);

async fn a_key_guessing_address_gets_429_whatever_it_sends(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            http: HttpSettings {
                auth_failures_per_minute: NonZeroU32::new(3).unwrap(),
                trusted_proxy_hops: 1,
                ..Settings::default().http
            },
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let send = |from: &'static str, key: String| {
        let request = app
            .client
            .post(app.url(&cancel_path(group.as_str(), scan.as_str())))
            .header("x-forwarded-for", from)
            .bearer_auth(key);
        async move { ApiResponse::from(request.send().await.unwrap()).await }
    };
    let guess = || NewApiKey::generate().secret;

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send("203.0.113.7", guess()).await.status.as_u16());
    }
    let blocked_with_real_key = send("203.0.113.7", key.clone()).await;
    let bystander = send("198.51.100.1", key.clone()).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    blocked_with_real_key.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = blocked_with_real_key
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(bystander.status, 200, "{bystander:?}");
}
store_test!(a_key_guessing_address_gets_429_whatever_it_sends);

async fn a_near_miss_key_is_rejected_exactly_like_a_random_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let last = key.chars().last().unwrap();
    let near_miss = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let random = NewApiKey::generate().secret;

    let near = app
        .cancel(Some(&near_miss), group.as_str(), scan.as_str())
        .await;
    let far = app
        .cancel(Some(&random), group.as_str(), scan.as_str())
        .await;

    assert_eq!(near.status, far.status);
    assert_eq!(near.body["error"], far.body["error"]);
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(a_near_miss_key_is_rejected_exactly_like_a_random_one);

/// A key of one group, guessing ids, can neither cancel nor read nor list another group's scans,
/// and cannot tell whether they exist.
async fn tenants_are_isolated_on_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let (key, _) = app
        .key_with(
            &[Permission::SignalsRead, Permission::SignalsWrite],
            AccountGroupAccess::Only(vec![mine]),
            None,
        )
        .await;
    let their_scan = app.scan(&theirs, ScanStatus::Running).await;
    let nobody = ScanId::generate();
    let nowhere = group();

    for (target_group, target_scan) in [(&theirs, &their_scan), (&nowhere, &nobody)] {
        let base = format!("/v1/accounts/{target_group}/signals/scans");
        let answers = [
            app.cancel(Some(&key), target_group.as_str(), target_scan.as_str())
                .await,
            app.get(&key, &format!("{base}/{target_scan}")).await,
            app.get(&key, &format!("{base}/{target_scan}/events")).await,
            app.get(&key, &base).await,
        ];
        for answer in answers {
            let details = answer.assert_error(403, "FORBIDDEN");
            assert_eq!(
                details,
                format!("API key has no access to account group {target_group}")
            );
        }
    }
    // Their scan id under my own group is just as unknown as an id nobody has.
    let base = format!("/v1/accounts/{mine}/signals/scans");
    for target in [&their_scan, &nobody] {
        let answers = [
            app.cancel(Some(&key), mine.as_str(), target.as_str()).await,
            app.get(&key, &format!("{base}/{target}")).await,
            app.get(&key, &format!("{base}/{target}/events")).await,
        ];
        for answer in answers {
            assert_eq!(
                answer.assert_error(404, "NOT_FOUND"),
                "no such scan in this account group"
            );
        }
    }
    let listed = app.get(&key, &base).await;
    assert_eq!(listed.body["data"]["scans"], serde_json::json!([]));
    assert_eq!(app.status_of(&their_scan).await, ScanStatus::Running);
}
store_test!(tenants_are_isolated_on_every_route);

/// Counted by the real binary, a process of its own, so no other test's requests are in its
/// figures: every counter moves by exactly what this test did.
async fn metrics_count_requests_limits_pool_and_cancels(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
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
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "Prometheus text format"
        );
        response.text().await.unwrap()
    };
    let cancel = |key: String| {
        let request = client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(key);
        async move { ApiResponse::from(request.send().await.unwrap()).await }
    };
    let before = metrics().await;

    let moved = cancel(key.clone()).await;
    // A burst of 1 at 1 a second: keep asking until limited, however slow the machine.
    let mut again = Vec::new();
    while again.last().is_none_or(|status| *status != 429) {
        again.push(cancel(key.clone()).await.status.as_u16());
        assert!(again.len() < 100, "never limited: {again:?}");
    }
    let guesses = [
        cancel(NewApiKey::generate().secret).await,
        cancel(NewApiKey::generate().secret).await,
    ];
    let after = metrics().await;

    assert_eq!(moved.body["data"]["previousStatus"], "running");
    assert_eq!(guesses[0].status, 401);
    guesses[1].assert_error(429, "RATE_LIMITED");
    let counted = |series: &str| {
        crate::helpers::metrics::count(&after, series)
            - crate::helpers::metrics::count(&before, series)
    };
    let mut statuses = vec![moved.status.as_u16()];
    statuses.extend(&again);
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

/// Sends `request` as raw bytes (so the test, not a client library, decides every header byte)
/// and returns the status and the JSON body, after checking the envelope's shape.
async fn send_raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(body["success"], status == 200, "{answer}");
    assert!(body["traceId"].is_string(), "{answer}");
    (status, body)
}

/// The limits are inclusive: exactly 2 KiB of target, 16 KiB of headers and 64 KiB of body are
/// served; one byte more is a 400 naming the limit.
async fn size_limits_accept_exactly_the_limit_and_refuse_one_byte_more(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let host = format!("host: {}\r\n", app.addr);
    let auth = format!("authorization: Bearer {key}\r\n");
    // Header bytes as the service counts them: names and values, no separators.
    let fixed_headers =
        "host".len() + app.addr.to_string().len() + "connection".len() + "close".len();

    let with_target = |length: usize| {
        let padding = "a".repeat(length - "/healthz?pad=".len());
        format!("GET /healthz?pad={padding} HTTP/1.1\r\n{host}connection: close\r\n\r\n")
    };
    let with_headers = |bytes: usize| {
        let padding = "p".repeat(bytes - fixed_headers - "x-padding".len());
        format!("GET /healthz HTTP/1.1\r\n{host}x-padding: {padding}\r\nconnection: close\r\n\r\n")
    };
    let with_body = |length: usize| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\n{host}{auth}content-length: {length}\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        request.resize(request.len() + length, b'x');
        request
    };

    for (what, at_limit, over_limit, named) in [
        (
            "target",
            with_target(2048).into_bytes(),
            with_target(2049).into_bytes(),
            "request target is 2049 bytes; the limit is 2048",
        ),
        (
            "headers",
            with_headers(16 * 1024).into_bytes(),
            with_headers(16 * 1024 + 1).into_bytes(),
            "headers are 16385 bytes; the limit is 16384",
        ),
        (
            "body",
            with_body(64 * 1024),
            with_body(64 * 1024 + 1),
            "request body is 65537 bytes",
        ),
    ] {
        let (accepted, _) = send_raw(app.addr, &at_limit).await;
        let (refused, body) = send_raw(app.addr, &over_limit).await;

        assert_eq!(accepted, 200, "{what} exactly at the limit");
        assert_eq!(refused, 400, "{what} one byte over");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        let details = body["error"]["details"].as_str().unwrap();
        assert!(details.starts_with(named), "{what}: {details}");
    }
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(
        events.len(),
        2,
        "only the body-at-the-limit cancel changed anything"
    );
}
store_test!(size_limits_accept_exactly_the_limit_and_refuse_one_byte_more);
