//! Per-key rate limiting: 429 with Retry-After, and the RateLimit headers.

use std::num::NonZeroU32;

use signal_scans::domain::keys::{AccountGroupAccess, Permission};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::rate_limit::RateLimit;

use crate::helpers::{Backend, Settings, TestApp, group};
use crate::store_test;

async fn limited_app(backend: Backend) -> TestApp {
    TestApp::spawn_with(
        backend,
        Settings {
            http: signal_scans::app::HttpSettings {
                rate_limit: RateLimit {
                    per_second: NonZeroU32::new(1).unwrap(),
                    burst: NonZeroU32::new(3).unwrap(),
                },
                ..Settings::default().http
            },
            ..Settings::default()
        },
    )
    .await
}

async fn a_key_over_its_rate_gets_429_with_retry_after(backend: Backend) {
    let app = limited_app(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let other_key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"per-key\";q=3;w=3")
        );
        remaining.push(response.header("ratelimit").unwrap().to_owned());
    }
    let limited = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let other = app
        .cancel(Some(&other_key), group.as_str(), scan.as_str())
        .await;

    assert!(
        remaining[0].starts_with("\"per-key\";r=2;"),
        "{remaining:?}"
    );
    assert!(
        remaining[2].starts_with("\"per-key\";r=0;"),
        "{remaining:?}"
    );
    limited.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert!(
        limited
            .header("ratelimit")
            .unwrap()
            .starts_with("\"per-key\";r=0;")
    );
    assert_eq!(other.status, 200, "another key has its own bucket");
}
store_test!(a_key_over_its_rate_gets_429_with_retry_after);

async fn the_rate_limit_comes_before_the_permission_check(backend: Backend) {
    let app = limited_app(backend).await;
    let group = group();
    let (reader, _) = app
        .key_with(
            &[Permission::SignalsRead],
            AccountGroupAccess::Only(vec![group.clone()]),
            None,
        )
        .await;

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            app.cancel(Some(&reader), "bad", "bad")
                .await
                .status
                .as_u16(),
        );
    }

    assert_eq!(statuses, [403, 403, 403, 429]);
}
store_test!(the_rate_limit_comes_before_the_permission_check);

async fn unauthenticated_requests_are_401_not_429(backend: Backend) {
    let app = limited_app(backend).await;
    for _ in 0..5 {
        app.cancel(None, "bad", "bad")
            .await
            .assert_error(401, "UNAUTHORIZED");
    }
}
store_test!(unauthenticated_requests_are_401_not_429);
