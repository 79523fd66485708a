//! Rate limits shared through Redis: replicas together allow what one would, and an instance
//! whose Redis goes away falls back to its own limits (fail open to local, never to none).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::http::HttpSettings;
use signal_scans::http::rate_limit::{RateLimit, RedisSettings};

use crate::helpers::process::ServerProcess;
use crate::helpers::proxy::Proxy;
use crate::helpers::{
    ApiResponse, Backend, Replica, Settings, TestApp, cancel_path, group, redis_server_addr,
    redis_url,
};

/// The per-key burst. Redis keeps time by its own clock, which a test cannot stop: at 1 a second a
/// burst of 40 allows at most one more request per second the test takes, so "two replicas
/// together allow what one would" (40, not 80) holds however slowly the machine sends them.
const BURST: u32 = 40;

fn limited(redis: Option<RedisSettings>) -> HttpSettings {
    HttpSettings {
        rate_limit: RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(BURST).unwrap(),
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

/// A writer key of a fresh group, and the cancel path of a queued scan of that group.
async fn key_and_cancel_path(app: &TestApp) -> (String, String) {
    let (group, key, scan) = app.writer_and_queued_scan().await;
    (key, cancel_path(group.as_str(), scan.as_str()))
}

/// An app and a replica with the same low limits in one Redis, both connected to it; `None` when
/// no Redis answers (the test is then skipped, and says so).
async fn two_instances_sharing_redis() -> Option<(TestApp, Replica)> {
    let url = redis_url().await?;
    let http = limited(Some(settings_for(&url)));
    let app = Settings::default()
        .with_http(http.clone())
        .spawn(Backend::Sqlite)
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
    let (key, path) = key_and_cancel_path(&app).await;

    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..BURST + 10 {
        for addr in [app.addr, replica.addr] {
            statuses.push((addr, cancel_at(&app, addr, &key, &path).await));
        }
    }
    let elapsed = started.elapsed();

    let allowed = statuses.iter().filter(|(_, status)| *status == 200).count();
    let refilled = usize::try_from(elapsed.as_secs()).unwrap() + 1;
    assert!(
        statuses[..BURST as usize].iter().all(|(_, s)| *s == 200),
        "the whole burst first: {statuses:?}"
    );
    assert!(
        allowed <= BURST as usize + refilled,
        "{allowed} allowed in {elapsed:?}: more than one burst across both"
    );
    for addr in [app.addr, replica.addr] {
        assert!(
            statuses
                .iter()
                .any(|(at, status)| *at == addr && *status == 429),
            "{addr} limited too"
        );
    }
    for (_, status) in &statuses {
        assert!(*status == 200 || *status == 429, "{statuses:?}");
    }
}

/// Redis's own clock refills a key's allowance: after `Retry-After` seconds it is served again,
/// on either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_refills_after_retry_after() {
    let Some((app, replica)) = two_instances_sharing_redis().await else {
        return;
    };
    let (key, path) = key_and_cancel_path(&app).await;
    let limited = loop {
        let response = ApiResponse::of(
            app.client
                .post(format!("http://{}{path}", app.addr))
                .bearer_auth(&key),
        )
        .await;
        if response.status == 429 {
            break response;
        }
        assert_eq!(response.status, 200, "{response:?}");
    };
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(
        app.limits.is_shared(),
        "decided by Redis, not a local fallback"
    );

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let after = cancel_at(&app, replica.addr, &key, &path).await;

    assert_eq!(retry_after, 1, "1 a second");
    assert_eq!(after, 200);
}

/// An address blocked (in Redis) for failed authentications may try again after `Retry-After`.
/// The failure that spends its last allowance blocks it: each 401 was one lookup, and nothing
/// else was (the 429 that ended the run of failures was looked up before, and told a wrong key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_address_block_ends_after_retry_after() {
    let Some(url) = redis_url().await else { return };
    // 60 a minute: one failure comes back each second, so the wait is short.
    let http = HttpSettings {
        auth_failures_per_minute: NonZeroU32::new(60).unwrap(),
        ..limited(Some(settings_for(&url)))
    };
    let app = Settings::default()
        .with_http(http)
        .spawn(Backend::Sqlite)
        .await;
    until("the instance reaches Redis", || app.limits.is_shared()).await;
    let (key, path) = key_and_cancel_path(&app).await;
    let guess = signal_scans::domain::keys::NewApiKey::generate().secret;
    let looked_up_before = app.served_store.key_lookups();
    let mut failures = 0;
    while cancel_at(&app, app.addr, &guess, &path).await == 401 {
        failures += 1;
        assert!(failures <= 1000, "never blocked");
    }
    let looked_up = app.served_store.key_lookups() - looked_up_before;
    let blocked = ApiResponse::of(app.client.post(app.url(&path)).bearer_auth(&key)).await;
    let retry_after: u64 = blocked.header("retry-after").unwrap().parse().unwrap();

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let after = cancel_at(&app, app.addr, &key, &path).await;

    assert!(failures >= 60, "the whole allowance first: {failures}");
    assert_eq!(
        looked_up, failures,
        "one lookup a failure, none for the request refused"
    );
    blocked.assert_error(429, "RATE_LIMITED");
    assert!(app.limits.is_shared());
    assert_eq!(after, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_counted_across_replicas() {
    let Some((app, replica)) = two_instances_sharing_redis().await else {
        return;
    };
    let guess = signal_scans::domain::keys::NewApiKey::generate().secret;
    let (key, path) = key_and_cancel_path(&app).await;

    let mut statuses = Vec::new();
    for addr in [app.addr, replica.addr, app.addr] {
        statuses.push(cancel_at(&app, addr, &guess, &path).await);
    }
    // The allowance spent: blocked on every replica, whatever key it sends (looking the right
    // key up would tell it from a wrong one).
    statuses.push(cancel_at(&app, replica.addr, &key, &path).await);
    for addr in [replica.addr, app.addr] {
        statuses.push(cancel_at(&app, addr, &guess, &path).await);
    }
    statuses.push(cancel_at(&app, app.addr, &key, &path).await);

    assert_eq!(statuses, [401, 401, 401, 429, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_keeps_its_own_limits_and_serves() {
    // Nothing listens on port 1: Redis is "down" from the start.
    let http = limited(Some(settings_for("redis://127.0.0.1:1")));
    let app = Settings::default()
        .with_http(http.clone())
        .spawn(Backend::Sqlite)
        .await;
    let replica = app.replica_with(&http).await;
    // The local limits decide: stopped clocks make their burst exact.
    app.limits.clock().stop();
    replica.limits.clock().stop();
    let (key, path) = key_and_cancel_path(&app).await;

    let mut here = Vec::new();
    for _ in 0..=BURST {
        here.push(cancel_at(&app, app.addr, &key, &path).await);
    }
    let there = cancel_at(&app, replica.addr, &key, &path).await;

    assert!(!app.limits.is_shared());
    let mut expected = vec![200; BURST as usize];
    expected.push(429);
    assert_eq!(here, expected, "still limited, per instance");
    assert_eq!(there, 200, "the other instance has its own allowance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_mid_flight_falls_back_without_hanging() {
    let Some(url) = redis_url().await else { return };
    let proxy = Proxy::start(redis_server_addr(&url).await).await;
    let http = limited(Some(settings_for(&proxy.url_for(&url))));
    let app = Settings::default()
        .with_http(http)
        .spawn(Backend::Sqlite)
        .await;
    until("the instance reaches Redis", || app.limits.is_shared()).await;
    // The local limits take over below: a stopped clock makes their burst exact.
    app.limits.clock().stop();
    let (key, path) = key_and_cancel_path(&app).await;
    assert_eq!(cancel_at(&app, app.addr, &key, &path).await, 200);

    proxy.cut();
    let started = Instant::now();
    let mut during = Vec::new();
    while during.last() != Some(&429) && during.len() <= BURST as usize + 2 {
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
    assert_eq!(
        during.len(),
        BURST as usize + 1,
        "this instance's own whole burst: {during:?}"
    );
}

/// `rate_limit_backend_errors_total` counts the limit checks the shared limits did not answer,
/// and the log says Redis is out of reach at start and then every 10 s (it is tried every
/// second), not once a request (a Redis that was never reached, or
/// refused the password, logged two lines a request). The real binary, so
/// the counter is its own: it starts at 0 and moves only with this test's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_reach_is_counted_in_backend_errors_and_not_logged_per_request() {
    const REQUESTS: usize = 30;
    const CANNOT_REACH: &str = "cannot reach Redis; limits stay per instance meanwhile";
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    // Nothing listens on port 1.
    let launched = Instant::now();
    let server = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ])
    .await;
    let backend_errors = || async {
        let text = server.metrics().await;
        crate::helpers::metrics::value(&text, "rate_limit_backend_errors_total")
    };
    let before = backend_errors().await;

    let mut statuses = Vec::new();
    for _ in 0..REQUESTS {
        let response = server
            .post(&key, &cancel_path(group.as_str(), scan.as_str()))
            .await;
        statuses.push(response.status);
    }
    let after = backend_errors().await;
    server
        .until_logged(|line| line["message"].as_str() == Some(CANNOT_REACH))
        .await;
    // Tried every second: long enough for a few tries, each told if every one were.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let told_at_most = launched.elapsed().as_secs() as usize / 10 + 1;
    let logs = server.logs();
    let lines = |text: &str| logs.iter().filter(|line| line.contains(text)).count();

    assert_eq!(before, Some(0.0), "nothing counted before a request");
    assert_eq!(statuses, [200; REQUESTS], "served on the local limits");
    assert!(
        after.is_some_and(|count| count >= REQUESTS as f64),
        "{after:?}"
    );
    assert_eq!(
        lines("shared rate limits unavailable"),
        0,
        "the connecting task speaks for Redis: {logs:#?}"
    );
    assert!(
        (1..=told_at_most).contains(&lines(CANNOT_REACH)),
        "at start, then every 10 s, over {:?}: {logs:#?}",
        launched.elapsed()
    );
}

/// The real binary sharing its limits through Redis behind a proxy (to cut or stall), once it
/// says so; with a writer's key and the path of a queued scan's cancel. `None` without Redis.
async fn sharing_through_a_proxy(
    env: &[(&str, &str)],
) -> Option<(TestApp, ServerProcess, Proxy, String, String)> {
    let url = redis_url().await?;
    let proxy = Proxy::start(redis_server_addr(&url).await).await;
    let (app, server, key, path) = sharing_through(&proxy.url_for(&url), env).await;
    Some((app, server, proxy, key, path))
}

/// The real binary on a fresh SQLite database, its limits shared through the Redis at
/// `redis_url` (with `env` added to its settings), once it says so; with a writer's key and the
/// path of a queued scan's cancel.
async fn sharing_through(
    redis_url: &str,
    env: &[(&str, &str)],
) -> (TestApp, ServerProcess, String, String) {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let mut settings = vec![
        ("DATABASE_URL", app.db.url.as_str()),
        ("REDIS_URL", redis_url),
    ];
    settings.extend_from_slice(env);
    let server = ServerProcess::start(&settings).await;
    server
        .until_logged(|line| line["message"] == "rate limits are shared through Redis")
        .await;
    let path = cancel_path(group.as_str(), scan.as_str());
    (app, server, key, path)
}

/// What the real binary logs when Redis answers again after a failure.
const BACK: &str = "Redis answers again; rate limits are shared again";

/// Cancels `path` with `key` every 100 ms, each answered 200, until `server` logs [`BACK`];
/// how long that took.
async fn until_shared_again(server: &ServerProcess, key: &str, path: &str) -> Duration {
    let started = Instant::now();
    while !server.logs().iter().any(|line| line.contains(BACK)) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:#?}",
            server.logs()
        );
        assert_eq!(server.post(key, path).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// Redis going away and coming back, as the real binary logs it: a warning when the shared limits
/// fail, and a line when Redis answers again (an operator at 3 a.m. saw the warnings stop, and
/// nothing say the limits were shared again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coming_back_is_logged() {
    let Some((_app, server, proxy, key, path)) = sharing_through_a_proxy(&[]).await else {
        return;
    };

    proxy.cut();
    assert_eq!(server.post(&key, &path).await.status, 200);
    server
        .until_logged(|line| {
            line["message"] == "shared rate limits unavailable; using this instance's limits"
        })
        .await;
    proxy.restore();
    // The backoff after a failure lasts a moment: ask until Redis is asked again.
    until_shared_again(&server, &key, &path).await;

    let lines = server.logs();
    let back = lines.iter().filter(|line| line.contains(BACK)).count();
    assert_eq!(back, 1, "{lines:#?}");
}

/// A connection that Redis closed while it sat idle (a restart, `CLIENT KILL`, a failover) is
/// found closed by the next call, and that call is made again on a new one: the shared limits
/// keep deciding. The first call failed and the instance limited on its own for the backoff's
/// second, while Redis answered (the replicas review: a burst of 90 across three replicas all
/// passed after a quiet Redis restart, against 40 before it). Here a key spends its burst of 3
/// through Redis; the proxy then closes the idle connection, and the key's next requests are
/// still refused by Redis's count, not passed by this instance's fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_redis_closed_while_idle_is_made_again_not_fallen_back_from() {
    let limits = [("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "3")];
    let Some((_app, server, proxy, key, path)) = sharing_through_a_proxy(&limits).await else {
        return;
    };
    let mut spent = Vec::new();
    for _ in 0..4 {
        spent.push(server.post(&key, &path).await.status.as_u16());
    }

    // Stalled a moment and restored: the idle connection is closed, nothing else changes.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(server.post(&key, &path).await.status.as_u16());
    }

    assert_eq!(spent, [200, 200, 200, 429]);
    // Redis refills one a second: one may pass, not this instance's burst of 3.
    let passed = after.iter().filter(|status| **status == 200).count();
    assert!(passed <= 1, "{after:?}: {:#?}", server.logs());
}

/// A port no one listens on now.
fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port().to_string()
}

/// What `redis-cli` prints for `args` against the Redis on `port` (nothing if it cannot run).
fn redis_cli(port: &str, args: &[&str]) -> String {
    std::process::Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A `redis-server` of the test's own on a free port, keeping nothing, answering once this
/// returns; killed when dropped. For tests that stop Redis or change its password: never the
/// shared one. `None` where the shared Redis is missing too (said there).
async fn own_redis_server() -> Option<(String, tokio::process::Child)> {
    redis_url().await?;
    let port = free_port();
    let server = redis_server_on(&port).await;
    Some((port, server))
}

/// A `redis-server` on `port`, as [`own_redis_server`] starts it.
async fn redis_server_on(port: &str) -> tokio::process::Child {
    let server = tokio::process::Command::new("redis-server")
        .args(["--port", port, "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server runs (it serves the shared Redis)");
    let started = Instant::now();
    while redis_cli(port, &["ping"]) != "PONG" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Redis stopped for 5 s while requests keep coming, then started again: the limits are shared
/// again as soon as a request asks after the backoff's second, not when the redis crate's own
/// reconnection, sleeping 100 ms doubling to 3.2 s between attempts, next tried (the replicas
/// review: each replica on its own limits for 3.4 to 4.6 s after Redis answered; 5.6 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_return_within_the_backoff_once_redis_answers_again() {
    let Some((port, mut redis)) = own_redis_server().await else {
        return;
    };
    let (_app, server, key, path) =
        sharing_through(&format!("redis://127.0.0.1:{port}"), &[]).await;
    redis.kill().await.unwrap();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(5) {
        assert_eq!(server.post(&key, &path).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _redis = redis_server_on(&port).await;
    let lag = until_shared_again(&server, &key, &path).await;

    // The backoff (1 s) and a request's interval, with room for a loaded machine.
    assert!(
        lag < Duration::from_secs(2),
        "shared again {lag:?} after Redis answered"
    );
}

/// What the real binary logs, as an error, while Redis refuses `REDIS_URL`'s password.
const REFUSED: &str =
    "Redis refused the credentials of REDIS_URL; limits stay per instance until it accepts them";

/// A password Redis refuses at start is a setting to fix: told at once, as an error, and then
/// every 10 s, though it is tried every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refused_at_start_are_told_at_once_then_every_10_s() {
    let Some((port, _redis)) = own_redis_server().await else {
        return;
    };
    assert_eq!(
        redis_cli(&port, &["config", "set", "requirepass", "right"]),
        "OK"
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    let launched = Instant::now();
    let server = ServerProcess::start(&[
        ("DATABASE_URL", &app.db.url),
        ("REDIS_URL", &format!("redis://:wrong@127.0.0.1:{port}")),
    ])
    .await;
    let refused = |line: &serde_json::Value| line["message"].as_str() == Some(REFUSED);
    let events = server.until_logged(refused).await;
    let told = events.into_iter().find(refused).unwrap();
    // Tried every second: long enough for a few tries, each told if every one were.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let told_at_most = launched.elapsed().as_secs() as usize / 10 + 1;
    let logs = server.logs();
    let lines = logs.iter().filter(|line| line.contains(REFUSED)).count();
    assert_eq!(told["level"], "ERROR", "{told}");
    assert!((1..=told_at_most).contains(&lines), "{logs:#?}");
}

/// Redis's password changed under a running service (`requirepass` set, its clients cut off) is
/// a setting to fix: the error that names REDIS_URL's credentials, as at start, not the warning of
/// a Redis away, which sent the operator to wait for it to come back (the operator review). A
/// Redis of the test's own, since its password changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_under_a_running_service_is_told_as_refused_credentials() {
    let Some((port, _redis)) = own_redis_server().await else {
        return;
    };
    let redis_cli = |args: &[&str]| redis_cli(&port, args);
    let started = Instant::now();
    let (_app, server, key, path) =
        sharing_through(&format!("redis://127.0.0.1:{port}"), &[]).await;

    assert_eq!(
        redis_cli(&["config", "set", "requirepass", "changed"]),
        "OK"
    );
    redis_cli(&[
        "-a",
        "changed",
        "--no-auth-warning",
        "client",
        "kill",
        "type",
        "normal",
    ]);
    let mut statuses = Vec::new();
    let told = loop {
        statuses.push(server.post(&key, &path).await.status);
        let logs = server.logs();
        if let Some(told) = logs.iter().find(|line| line.contains(REFUSED)) {
            break told.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{logs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let told: serde_json::Value = serde_json::from_str(&told).unwrap();
    assert_eq!(told["level"], "ERROR", "{told}");
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
}

/// A Redis that hangs fails every request in flight at once, at its timeout: that is one warning,
/// as README says (at most about once a second), not one per request in flight (8 clients gave 8
/// lines a second, 100 would give 100). Every request is still answered, on this instance's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_warned_of_once_a_second_not_once_per_request_in_flight() {
    const UNAVAILABLE: &str = "shared rate limits unavailable; using this instance's limits";
    const IN_FLIGHT: usize = 8;
    let Some((_app, server, proxy, key, path)) = sharing_through_a_proxy(&[]).await else {
        return;
    };

    proxy.stall_open_connections();
    let mut waves = Vec::new();
    for _ in 0..2 {
        let wave = (0..IN_FLIGHT).map(|_| server.post(&key, &path));
        let statuses: Vec<_> = futures::future::join_all(wave)
            .await
            .iter()
            .map(|response| response.status.as_u16())
            .collect();
        waves.push(statuses);
        // Past the backoff: the next wave asks Redis again, and fails again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    assert_eq!(waves, [[200; IN_FLIGHT]; 2], "answered on the local limits");
    let logs = server.logs();
    let warned = logs
        .iter()
        .filter(|line| line.contains(UNAVAILABLE))
        .count();
    assert_eq!(warned, 2, "one line a wave: {logs:#?}");
}

/// A fresh key's first request leaves its whole burst less one, at any rate: at 10,000 a second
/// (0.1 ms a cell) the script's arithmetic on epoch milliseconds lost a cell to rounding (r=9998).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_key_has_its_whole_burst_less_one_left_at_any_rate() {
    let Some(url) = redis_url().await else { return };
    let app = Settings::default()
        .with_http(limited(Some(settings_for(&url))))
        .with_rate_limit(10_000, 10_000)
        .spawn(Backend::Sqlite)
        .await;
    until("the instance reaches Redis", || app.limits.is_shared()).await;
    let mut left = Vec::new();
    for _ in 0..20 {
        let (group, key, scan) = app.writer_and_queued_scan().await;
        let response = app.cancel_ok(&key, &group, &scan).await;
        left.push(response.header("ratelimit").unwrap_or_default().to_owned());
    }

    assert!(
        left.iter().all(|state| state.contains(";r=9999;")),
        "{left:#?}"
    );
}

/// What a Redis clock set back an hour (an NTP step, a failover to a host an hour behind) finds:
/// a key's allowance and an address's block written an hour ahead of its clock.
async fn as_if_written_an_hour_ahead(url: &str, allowance: &str, block: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::Script::new(
        r"local time = redis.call('TIME')
          local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
          redis.call('SET', KEYS[1], string.format('%.3f', now + 3600000), 'PX', 3660000)
          redis.call('SET', KEYS[2], '1', 'PX', 3600000)
          return 1",
    )
    .key(allowance)
    .key(block)
    .invoke_async::<i64>(&mut connection)
    .await
    .unwrap();
}

/// Entries a Redis clock set back finds ahead of it hold a key and an address off for at most
/// one interval of their limits, on every replica: for as long as the step before (429 with
/// `Retry-After: 3600` for an hour's), though no allowance leaves more than one interval to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_clock_set_back_holds_clients_off_for_one_interval_at_most() {
    let Some(url) = redis_url().await else { return };
    let redis = settings_for(&url);
    // One a second for keys and for failures: an interval is a second.
    let http = HttpSettings {
        auth_failures_per_minute: NonZeroU32::new(60).unwrap(),
        ..limited(Some(redis.clone()))
    };
    let app = Settings::default()
        .with_http(http)
        .spawn(Backend::Sqlite)
        .await;
    until("the instance reaches Redis", || app.limits.is_shared()).await;
    let group = group();
    let (key, key_id) = app.key_for(&[Permission::SignalsWrite], &[group]).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    as_if_written_an_hour_ahead(
        &url,
        &format!("{}key:{key_id}", redis.prefix),
        &format!("{}auth-blocked:127.0.0.1", redis.prefix),
    )
    .await;

    // The address's block passed over; the key's allowance refused once at most.
    let mut waits = Vec::new();
    let served = loop {
        let response = ApiResponse::of(app.client.post(app.url(&path)).bearer_auth(&key)).await;
        if response.status != 429 || waits.len() == 2 {
            break response;
        }
        let wait: u64 = response.header("retry-after").unwrap().parse().unwrap();
        waits.push(wait);
        tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
    };

    assert!(waits.iter().all(|wait| *wait <= 1), "waits {waits:?}");
    assert_eq!(served.status, 200, "after waits {waits:?}: {served:?}");
    assert!(app.limits.is_shared());
}
