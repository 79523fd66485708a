//! Rate limits shared through Redis: replicas together allow what one would, and an instance
//! whose Redis goes away falls back to its own limits (fail open to local, never to none).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use signal_scans::app::HttpSettings;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::rate_limit::{RateLimit, RedisSettings};

use crate::helpers::proxy::Proxy;
use crate::helpers::{
    ApiResponse, Backend, Replica, Settings, TestApp, cancel_path, group, redis_url,
};

fn limited(redis: Option<RedisSettings>) -> HttpSettings {
    HttpSettings {
        rate_limit: RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(4).unwrap(),
        },
        auth_failures_per_minute: NonZeroU32::new(3).unwrap(),
        redis,
        ..Settings::default().http
    }
}

fn settings_for(url: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_owned().into(),
        // Each test its own keys in the shared Redis.
        prefix: format!("signal-scans-test-{}:", uuid::Uuid::new_v4().simple()),
    }
}

async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel_at(app: &TestApp, addr: std::net::SocketAddr, key: &str, path: &str) -> u16 {
    let response = app
        .client
        .post(format!("http://{addr}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    ApiResponse::from(response).await.status.as_u16()
}

/// An app and a replica with the same low limits in one Redis, both connected to it; `None` when
/// no Redis answers (the test is then skipped, and says so).
async fn two_instances_sharing_redis() -> Option<(TestApp, Replica)> {
    let url = redis_url().await?;
    let http = limited(Some(settings_for(&url)));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Settings {
            http: http.clone(),
            ..Settings::default()
        },
    )
    .await;
    let replica = app.replica_with(&http).await;
    until("both instances reach Redis", || {
        app.limits.is_shared() && replica.limits.is_shared()
    })
    .await;
    Some((app, replica))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_allow_what_one_would() {
    let Some((app, replica)) = two_instances_sharing_redis().await else {
        return;
    };
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());

    let mut statuses = Vec::new();
    for addr in [
        app.addr,
        replica.addr,
        app.addr,
        replica.addr,
        app.addr,
        replica.addr,
    ] {
        statuses.push(cancel_at(&app, addr, &key, &path).await);
    }

    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429],
        "one burst of 4 across both"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_across_replicas() {
    let Some((app, replica)) = two_instances_sharing_redis().await else {
        return;
    };
    let guess = signal_scans::domain::keys::NewApiKey::generate().secret;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());

    let mut statuses = Vec::new();
    for addr in [app.addr, replica.addr, app.addr] {
        statuses.push(cancel_at(&app, addr, &guess, &path).await);
    }
    // Exactly the allowance spent: not yet over it, so the right key still works.
    statuses.push(cancel_at(&app, replica.addr, &key, &path).await);
    for addr in [replica.addr, app.addr] {
        statuses.push(cancel_at(&app, addr, &guess, &path).await);
    }
    // Over it: blocked everywhere, whatever key it sends.
    statuses.push(cancel_at(&app, app.addr, &key, &path).await);

    assert_eq!(statuses, [401, 401, 401, 200, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_keeps_its_own_limits_and_serves() {
    // Nothing listens on port 1: Redis is "down" from the start.
    let http = limited(Some(settings_for("redis://127.0.0.1:1")));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Settings {
            http: http.clone(),
            ..Settings::default()
        },
    )
    .await;
    let replica = app.replica_with(&http).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());

    let mut here = Vec::new();
    for _ in 0..5 {
        here.push(cancel_at(&app, app.addr, &key, &path).await);
    }
    let there = cancel_at(&app, replica.addr, &key, &path).await;

    assert!(!app.limits.is_shared());
    assert_eq!(
        here,
        [200, 200, 200, 200, 429],
        "still limited, per instance"
    );
    assert_eq!(there, 200, "the other instance has its own allowance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_mid_flight_falls_back_without_hanging() {
    let Some(url) = redis_url().await else { return };
    let target = tokio::net::lookup_host(url.trim_start_matches("redis://").trim_end_matches('/'))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let http = limited(Some(settings_for(&format!("redis://{}", proxy.addr))));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Settings {
            http,
            ..Settings::default()
        },
    )
    .await;
    until("the instance reaches Redis", || app.limits.is_shared()).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    assert_eq!(cancel_at(&app, app.addr, &key, &path).await, 200);

    proxy.cut();
    let started = Instant::now();
    let mut during = Vec::new();
    // Each answer waits out the Redis timeout, and the local bucket refills meanwhile (1 a
    // second), so count up to the first 429 rather than expect an exact sequence.
    while during.last() != Some(&429) && during.len() < 12 {
        during.push(cancel_at(&app, app.addr, &key, &path).await);
    }

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        during.last(),
        Some(&429),
        "the local limits took over: {during:?}"
    );
    assert!(
        during[..during.len() - 1].iter().all(|s| *s == 200),
        "{during:?}"
    );
}
