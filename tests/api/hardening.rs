//! Reliability and security under hostile conditions: a database that goes away under load, pool
//! exhaustion, request limits, key guessing, and tenant isolation.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use signal_scans::app::HttpSettings;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{AccountGroupAccess, NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;

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
    let stop = Arc::new(AtomicBool::new(false));

    let chaos = {
        let stop = stop.clone();
        let proxy = app.proxy.as_ref().unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.cut();
            tokio::time::sleep(Duration::from_millis(900)).await;
            proxy.restore();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stop.store(true, Ordering::SeqCst);
        }
    };
    let workers = (0..8).map(|worker| {
        let (app, group, key, scans, stop) = (&app, &group, &key, &scans, stop.clone());
        async move {
            let mut answers = Vec::new();
            let mut i = worker;
            // Round and round the scans until the chaos is over: each is cancelled many times.
            while !stop.load(Ordering::SeqCst) {
                let scan = &scans[i % scans.len()];
                let started = Instant::now();
                let response = app.cancel(Some(key), group.as_str(), scan.as_str()).await;
                assert!(started.elapsed() < HUNG, "hung for {:?}", started.elapsed());
                answers.push((scan.clone(), response));
                i += 8;
            }
            answers
        }
    });
    let (_, answers) = tokio::join!(chaos, join_all(workers));

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
    for scan in &scans {
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

async fn an_exhausted_pool_answers_502_not_a_queue(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            db_timeout: DB_TIMEOUT,
            db_max_connections: 1,
            through_proxy: true,
            ..Settings::default()
        },
    )
    .await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    app.proxy.as_ref().unwrap().cut();

    let started = Instant::now();
    let responses =
        join_all((0..10).map(|_| app.cancel(Some(&key), group.as_str(), scan.as_str()))).await;

    for response in &responses {
        response.assert_error(502, "UPSTREAM_ERROR");
    }
    assert!(started.elapsed() < HUNG, "took {:?}", started.elapsed());
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
            AccountGroupAccess::Only(vec![mine.clone()]),
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

async fn metrics_count_requests_limits_pool_and_cancels(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), scan.as_str())
            .await
            .status,
        200
    );

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text format"
    );
    let text = response.text().await.unwrap();
    for series in [
        r#"http_requests_total{route="/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel",method="POST",status="200"}"#,
        r#"http_request_duration_seconds_bucket{route="/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel",method="POST",le="0.005"}"#,
        r#"scan_cancels_total{previous_status="running"}"#,
        r#"db_pool_connections{state="in_use"}"#,
        r#"db_pool_connections{state="max"} 10"#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(
        !text.contains(scan.as_str()),
        "no raw paths or ids as labels"
    );
}
store_test!(metrics_count_requests_limits_pool_and_cancels);
