//! Per-key rate limiting: 429 with Retry-After, the RateLimit headers, and refills. The limiter's
//! clock is stopped and moved by hand, so no sequence here depends on how fast requests are sent.

use std::num::NonZeroU32;
use std::time::Duration;

use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::{NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::rate_limit::RateLimit;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp, cancel_path, group};
use crate::store_test;

/// 1 a second, bursts of 3; the limiter's clock stopped.
async fn limited_app(backend: Backend) -> TestApp {
    limited_app_with(backend, Settings::default().http.auth_failures_per_minute).await
}

/// [`limited_app`] allowing 3 failed authentications a minute per address.
async fn guarded_app(backend: Backend) -> TestApp {
    limited_app_with(backend, NonZeroU32::new(3).unwrap()).await
}

async fn limited_app_with(backend: Backend, auth_failures_per_minute: NonZeroU32) -> TestApp {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            http: signal_scans::http::HttpSettings {
                rate_limit: RateLimit {
                    per_second: NonZeroU32::new(1).unwrap(),
                    burst: NonZeroU32::new(3).unwrap(),
                },
                auth_failures_per_minute,
                ..Settings::default().http
            },
            ..Settings::default()
        },
    )
    .await;
    app.limits.clock().stop();
    app
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

    assert_eq!(
        remaining,
        [
            "\"per-key\";r=2;t=1",
            "\"per-key\";r=1;t=2",
            "\"per-key\";r=0;t=3"
        ]
    );
    assert_eq!(
        limited.assert_error(429, "RATE_LIMITED"),
        "this API key is over its request rate; retry after 1 s"
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    // The next request in a second; the whole burst back in 3, as the last 200 said.
    assert_eq!(limited.header("ratelimit"), Some("\"per-key\";r=0;t=3"));
    assert_eq!(other.status, 200, "another key has its own bucket");
}
store_test!(a_key_over_its_rate_gets_429_with_retry_after);

/// After exactly `Retry-After` seconds the key may send again; a moment before, it may not.
async fn a_limited_key_is_served_again_after_retry_after(backend: Backend) {
    let app = limited_app(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    for _ in 0..3 {
        app.cancel_ok(&key, &group, &scan).await;
    }
    let limited = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    limited.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();

    let (too_soon, in_time) = cancels_around(&app, retry_after, &key, &group, &scan).await;
    let once_only = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    too_soon.assert_error(429, "RATE_LIMITED");
    assert_eq!(in_time.status, 200, "{in_time:?}");
    assert_eq!(in_time.header("ratelimit"), Some("\"per-key\";r=0;t=3"));
    once_only.assert_error(429, "RATE_LIMITED");
}
store_test!(a_limited_key_is_served_again_after_retry_after);

/// Two cancels on the limiter's stopped clock: one a millisecond before `retry_after` seconds
/// have passed, one just as they have.
async fn cancels_around(
    app: &TestApp,
    retry_after: u64,
    key: &str,
    group: &AccountGroupId,
    scan: &ScanId,
) -> (ApiResponse, ApiResponse) {
    let just_before = Duration::from_secs(retry_after) - Duration::from_millis(1);
    app.limits.clock().advance(just_before);
    let too_soon = app.cancel(Some(key), group.as_str(), scan.as_str()).await;
    app.limits.clock().advance(Duration::from_millis(1));
    let in_time = app.cancel(Some(key), group.as_str(), scan.as_str()).await;
    (too_soon, in_time)
}

/// An address blocked for failed authentications may try again after `Retry-After` seconds.
async fn a_blocked_address_is_served_again_after_retry_after(backend: Backend) {
    let app = guarded_app(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let guess = NewApiKey::generate().secret;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            app.cancel(Some(&guess), group.as_str(), scan.as_str())
                .await
                .status
                .as_u16(),
        );
    }
    let blocked = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let retry_after: u64 = blocked.header("retry-after").unwrap().parse().unwrap();

    let (too_soon, in_time) = cancels_around(&app, retry_after, &key, &group, &scan).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    assert_eq!(
        blocked.assert_error(429, "RATE_LIMITED"),
        "too many failed authentications from this address; retry after 20 s"
    );
    // 3 a minute: one failure's allowance comes back every 20 seconds.
    assert_eq!(retry_after, 20);
    too_soon.assert_error(429, "RATE_LIMITED");
    assert_eq!(in_time.status, 200, "{in_time:?}");
    assert_eq!(in_time.body["data"]["previousStatus"], "queued");
}
store_test!(a_blocked_address_is_served_again_after_retry_after);

/// Routing comes before the limits: a 404 (no such path) or a 405 (a known path, another method)
/// needs no key and spends none of its rate, and an address blocked for failed authentications
/// still gets its 404 and 405. A 404 or 405 costs the service no lookup, so it must cost the
/// client nothing either, nor let it tell a blocked address from a wrong URL.
async fn routing_answers_spend_no_rate_and_ignore_a_block(backend: Backend) {
    let app = guarded_app(backend).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let cancel = cancel_path(group.as_str(), scan.as_str());
    let routing_answers = || async {
        let mut answers = Vec::new();
        for (method, path) in [
            (
                reqwest::Method::POST,
                format!("/v1/accounts/{group}/nothing"),
            ),
            (reqwest::Method::GET, format!("{cancel}/")),
            (reqwest::Method::GET, cancel.clone()),
            (reqwest::Method::DELETE, cancel.clone()),
        ] {
            let request = app.client.request(method, app.url(&path)).bearer_auth(&key);
            let answer = ApiResponse::of(request).await;
            assert_eq!(answer.header("ratelimit"), None, "{answer:?}");
            answers.push(answer.status.as_u16());
        }
        answers
    };

    // Twice the key's burst of 3.
    let mut routed = routing_answers().await;
    routed.extend(routing_answers().await);
    let first_cancel = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let mut guesses = Vec::new();
    for _ in 0..4 {
        let guess = NewApiKey::generate().secret;
        let answer = app
            .cancel(Some(&guess), group.as_str(), scan.as_str())
            .await;
        guesses.push(answer.status.as_u16());
    }
    let routed_while_blocked = routing_answers().await;
    let blocked = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    assert_eq!(routed, [404, 404, 405, 405, 404, 404, 405, 405]);
    assert_eq!(first_cancel.status, 200, "{first_cancel:?}");
    assert_eq!(
        first_cancel.header("ratelimit"),
        Some("\"per-key\";r=2;t=1"),
        "the whole burst was left"
    );
    assert_eq!(guesses, [401, 401, 401, 429]);
    assert_eq!(routed_while_blocked, [404, 404, 405, 405]);
    blocked.assert_error(429, "RATE_LIMITED");
}
store_test!(routing_answers_spend_no_rate_and_ignore_a_block);

async fn the_rate_limit_comes_before_the_permission_check(backend: Backend) {
    let app = limited_app(backend).await;
    let group = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;

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

/// With `TRUSTED_PROXY_HOPS=0` the peer address is the client: a forged `X-Forwarded-For` neither
/// escapes a block nor gets a bystander blocked.
async fn without_trusted_proxies_a_forged_x_forwarded_for_is_ignored(backend: Backend) {
    let app = guarded_app(backend).await;
    assert_eq!(
        Settings::default().http.trusted_proxy_hops,
        0,
        "the default under test"
    );
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let url = app.url(&cancel_path(group.as_str(), scan.as_str()));
    let send = |forged: String, key: String| {
        let request = app
            .client
            .post(&url)
            .header("x-forwarded-for", forged)
            .bearer_auth(key);
        async move { ApiResponse::of(request).await }
    };

    let mut statuses = Vec::new();
    // Each guess claims a new address: were the header believed, none would reach the allowance.
    for i in 0..4 {
        let guess = NewApiKey::generate().secret;
        statuses.push(send(format!("203.0.113.{i}"), guess).await.status.as_u16());
    }
    let escape = send("198.51.100.77".into(), key.clone()).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    escape.assert_error(429, "RATE_LIMITED");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(without_trusted_proxies_a_forged_x_forwarded_for_is_ignored);

/// An app behind one trusted proxy whose addresses may fail to authenticate 3 times a minute,
/// with a group, a writer's key on it and a queued scan.
async fn behind_one_proxy_allowing_three_failures(
    backend: Backend,
) -> (TestApp, AccountGroupId, String, ScanId) {
    let app = Settings::default()
        .with_auth_failures_per_minute(3)
        .with_trusted_proxy_hops(1)
        .spawn(backend)
        .await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    (app, group, key, scan)
}

async fn a_key_guessing_address_gets_429_whatever_it_sends(backend: Backend) {
    let (app, group, key, scan) = behind_one_proxy_allowing_three_failures(backend).await;
    let send = |from: &'static str, key: String| {
        let request = app
            .client
            .post(app.url(&cancel_path(group.as_str(), scan.as_str())))
            .header("x-forwarded-for", from)
            .bearer_auth(key);
        async move { ApiResponse::of(request).await }
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

/// Bytes that are not text in the client's own X-Forwarded-For entries (a proxy passes them on,
/// and appends its entry to the same line) neither hide the entry the proxy appended nor charge
/// the client's failures to the proxy's address.
async fn failures_behind_a_line_of_forwarded_entries_that_is_not_text_count_for_the_client(
    backend: Backend,
) {
    let (app, group, key, scan) = behind_one_proxy_allowing_three_failures(backend).await;
    let send = |from: Option<&'static [u8]>, key: String| {
        let mut request = app
            .client
            .post(app.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(key);
        if let Some(from) = from {
            let value = reqwest::header::HeaderValue::from_bytes(from).unwrap();
            request = request.header("x-forwarded-for", value);
        }
        async move { ApiResponse::of(request).await }
    };

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let guess = NewApiKey::generate().secret;
        let answer = send(Some(b"\xff, 203.0.113.7"), guess).await;
        statuses.push(answer.status.as_u16());
    }
    let client = send(Some(b"203.0.113.7"), key.clone()).await;
    let proxy = send(None, key.clone()).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    client.assert_error(429, "RATE_LIMITED");
    assert_eq!(
        proxy.status, 200,
        "the proxy's own address is not charged: {proxy:?}"
    );
}
store_test!(failures_behind_a_line_of_forwarded_entries_that_is_not_text_count_for_the_client);

/// Once an address has failed, its guesses in flight together are looked up one at a time, each
/// after the last one's failure was counted: once its allowance is spent, the rest are refused
/// without a lookup. (Checked before and counted after, each of the 30 was looked up.)
async fn an_address_over_its_failures_gets_no_more_lookups_however_many_are_in_flight(
    backend: Backend,
) {
    let (app, group, _, scan) = behind_one_proxy_allowing_three_failures(backend).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let guess = || {
        let request = app
            .client
            .post(app.url(&path))
            .header("x-forwarded-for", "203.0.113.9")
            .bearer_auth(NewApiKey::generate().secret);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let looked_up_before = app.served_store.key_lookups();

    let first = guess().await;
    let statuses = futures::future::join_all((0..30).map(|_| guess())).await;

    let count = |status| statuses.iter().filter(|s| **s == status).count();
    assert_eq!(first, 401);
    assert_eq!((count(401), count(429)), (2, 28), "{statuses:?}");
    // Three failures allowed, and the third blocks the address: three lookups. (The block began
    // at a refused failure before, so a fourth was looked up, and its 429 told a wrong key.)
    assert_eq!(app.served_store.key_lookups() - looked_up_before, 3);
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(an_address_over_its_failures_gets_no_more_lookups_however_many_are_in_flight);

/// Past its allowance an address gets one key lookup each time a failure comes back, not two:
/// the failure that spends the last one blocks the address, so the request after it is refused
/// before its key is looked up. The block began only at a failure refused after its lookup, so
/// each refill let two keys be tried, and the second's 429 still told a wrong key from a right
/// one. On the in-process limiter's stopped clock (3 failures a minute: one back every 20 s).
async fn past_its_allowance_an_address_gets_one_lookup_per_failure_that_comes_back(
    backend: Backend,
) {
    let (app, group, key, scan) = behind_one_proxy_allowing_three_failures(backend).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let send = |key: String| {
        let request = app
            .client
            .post(app.url(&path))
            .header("x-forwarded-for", "203.0.113.11")
            .bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let guess = || send(NewApiKey::generate().secret);
    let lookups = || app.served_store.key_lookups();
    let mut statuses = Vec::new();
    let before = lookups();
    for _ in 0..5 {
        statuses.push(guess().await);
    }
    let spent = lookups() - before;
    app.limits.clock().advance(Duration::from_secs(20));
    let before = lookups();
    let mut refilled = Vec::new();
    for _ in 0..3 {
        refilled.push(guess().await);
    }
    let after_refill = lookups() - before;
    let right_key = send(key.clone()).await;

    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    assert_eq!(spent, 3, "one lookup a failure allowed");
    assert_eq!(refilled, [401, 429, 429]);
    assert_eq!(after_refill, 1, "one failure came back: one lookup");
    assert_eq!(right_key, 429, "blocked whatever it sends");
}
store_test!(past_its_allowance_an_address_gets_one_lookup_per_failure_that_comes_back);

/// While the database is slow (each answer 1.5 s late), an address that failed lately gets one
/// lookup at a time still: the requests that waited a second for the turn are answered 502 (the
/// database is slow) without a lookup, where they went ahead beside it. PostgreSQL, behind the
/// test's proxy.
async fn a_slow_database_does_not_let_a_failing_address_look_keys_up_side_by_side(
    backend: Backend,
) {
    let app = Settings::default()
        .with_auth_failures_per_minute(20)
        .with_trusted_proxy_hops(1)
        .through_proxy_with_timeouts(Duration::from_secs(10), Duration::from_secs(60))
        .spawn(backend)
        .await;
    let (group, _, scan) = app.writer_and_queued_scan().await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let guess = || {
        let request = app
            .client
            .post(app.url(&path))
            .header("x-forwarded-for", "203.0.113.11")
            .bearer_auth(NewApiKey::generate().secret);
        async move { ApiResponse::of(request).await }
    };
    assert_eq!(guess().await.status, 401, "the address failed lately");
    let looked_up_before = app.served_store.key_lookups();

    app.proxy
        .as_ref()
        .unwrap()
        .slow_down(Duration::from_millis(1500));
    let answers = futures::future::join_all((0..5).map(|_| guess())).await;
    app.proxy.as_ref().unwrap().slow_down(Duration::ZERO);

    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        4,
        "{statuses:?}"
    );
    for busy in answers.iter().filter(|a| a.status == 502) {
        busy.assert_error(502, "UPSTREAM_ERROR");
    }
    assert_eq!(app.served_store.key_lookups() - looked_up_before, 1);
}
store_test!(
    a_slow_database_does_not_let_a_failing_address_look_keys_up_side_by_side,
    postgres_only
);

/// Failed authentications from IPv6 clients count per /64: addresses of one /64 share one
/// allowance, another /64 has its own.
async fn failed_authentications_from_ipv6_count_per_64(backend: Backend) {
    let (app, group, key, scan) = behind_one_proxy_allowing_three_failures(backend).await;
    let send = |from: &'static str, key: String| {
        let request = app
            .client
            .get(app.url(&format!(
                "/v1/accounts/{}/signals/scans/{}",
                group.as_str(),
                scan.as_str()
            )))
            .header("x-forwarded-for", from)
            .bearer_auth(key);
        async move { ApiResponse::of(request).await }
    };
    let guess = || NewApiKey::generate().secret;

    let mut statuses = Vec::new();
    for from in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
        "2001:db8:1:2:ffff::9",
    ] {
        statuses.push(send(from, guess()).await.status.as_u16());
    }
    let same_64 = send("2001:db8:1:2::42", key.clone()).await;
    let other_64 = send("2001:db8:1:3::1", key.clone()).await;

    assert_eq!(statuses, [401, 401, 401, 429]);
    same_64.assert_error(429, "RATE_LIMITED");
    assert_eq!(other_64.status, 200, "{other_64:?}");
}
store_test!(failed_authentications_from_ipv6_count_per_64);
