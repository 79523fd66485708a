//! The in-process key cache: one database round trip per cancel, and revocation that reaches every
//! instance within a second.

use std::time::{Duration, Instant};

use sqlx::Connection;

use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::{NewApiKey, Permission};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::process::ServerProcess;
use crate::helpers::{ApiResponse, Backend, Settings, TestApp, cancel_path, clock_shift, group};
use crate::store_test;

async fn cancel_at(
    app: &TestApp,
    addr: std::net::SocketAddr,
    key: &str,
    path: &str,
) -> ApiResponse {
    ApiResponse::of(
        app.client
            .post(format!("http://{addr}{path}"))
            .bearer_auth(key),
    )
    .await
}

async fn a_cached_key_needs_no_key_lookup_on_the_hot_path(backend: Backend) {
    // A lifetime no slow machine can outrun between the two cancels (production caps it at 1 s;
    // the expiry itself is tested below).
    let (app, group, key) = Settings::default()
        .with_key_cache_ttl(Duration::from_secs(600))
        .spawn_with_writer(backend)
        .await;
    let (first, second) = (
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
    );
    app.cancel_ok(&key, &group, &first).await;

    // Take the keys table away: only a request that skips the key lookup can still succeed.
    sqlx_execute(&app, "ALTER TABLE api_keys RENAME TO api_keys_away").await;
    let cached = app
        .cancel(Some(&key), group.as_str(), second.as_str())
        .await;
    sqlx_execute(&app, "ALTER TABLE api_keys_away RENAME TO api_keys").await;

    assert_eq!(cached.status, 200, "{cached:?}");
    assert_eq!(cached.body["data"]["previousStatus"], "queued");
}
store_test!(a_cached_key_needs_no_key_lookup_on_the_hot_path);

/// A cached key needs no lookup turn either: an address that failed lately looks keys up one at
/// a time, and a request of it whose key is cached is served beside a slow lookup of its guess
/// (the database answering 1.5 s late). Queued for the turn, it would be answered 502 after the
/// turn's second, as a second lookup is. PostgreSQL, behind the test's proxy.
async fn a_cached_key_takes_no_turn_beside_a_slow_lookup_from_its_address(backend: Backend) {
    let app = Settings::default()
        .with_key_cache_ttl(Duration::from_secs(600))
        .with_trusted_proxy_hops(1)
        .through_proxy_with_timeouts(Duration::from_secs(10), Duration::from_secs(60))
        .spawn(backend)
        .await;
    let (group, key, scan) = app.writer_and_queued_scan().await;
    let read = |key: &str| {
        let path = format!("/v1/accounts/{group}/signals/scans/{scan}");
        let request = (app.client.get(app.url(&path)))
            .header("x-forwarded-for", "203.0.113.12")
            .bearer_auth(key);
        ApiResponse::of(request)
    };
    let guess = || NewApiKey::generate().secret;
    assert_eq!(read(&key).await.status, 200, "the key is cached");
    assert_eq!(
        read(&guess()).await.status,
        401,
        "the address failed lately"
    );
    let looked_up = app.served_store.key_lookups();

    let proxy = app.proxy.as_ref().unwrap();
    proxy.slow_down(Duration::from_millis(1500));
    let (slow, cached) = tokio::join!(read(&guess()), async {
        // The guess holds the turn once its lookup has started.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app.served_store.key_lookups() == looked_up {
            assert!(
                std::time::Instant::now() < deadline,
                "the guess was never looked up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        read(&key).await
    });
    proxy.slow_down(Duration::ZERO);

    slow.assert_error(401, "UNAUTHORIZED");
    assert_eq!(cached.status, 200, "{cached:?}");
    assert_eq!(app.served_store.key_lookups(), looked_up + 1);
}
store_test!(
    a_cached_key_takes_no_turn_beside_a_slow_lookup_from_its_address,
    postgres_only
);

async fn sqlx_execute(app: &TestApp, statement: &'static str) {
    match app.db.url.split_once("://").unwrap().0 {
        "sqlite" => {
            let mut connection = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::raw_sql(statement)
                .execute(&mut connection)
                .await
                .unwrap();
        }
        _ => {
            let mut connection = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::raw_sql(statement)
                .execute(&mut connection)
                .await
                .unwrap();
        }
    }
}

async fn a_revoked_key_stops_working_within_a_second_on_every_instance(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let replica = app.replica().await;
    let group = group();
    let (key, key_id) = app.key_for(&[Permission::SignalsWrite], &[group]).await;
    let mut scans = Vec::new();
    for _ in 0..4 {
        scans.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let path = |i: usize| cancel_path(group.as_str(), scans[i].as_str());
    // Both instances have the key cached.
    assert_eq!(cancel_at(&app, app.addr, &key, &path(0)).await.status, 200);
    assert_eq!(
        cancel_at(&app, replica.addr, &key, &path(1)).await.status,
        200
    );

    app.store.revoke_key(key_id).await.unwrap().unwrap();
    let revoked_at = Instant::now();
    tokio::time::sleep_until((revoked_at + Duration::from_secs(1)).into()).await;
    let here = cancel_at(&app, app.addr, &key, &path(2)).await;
    let there = cancel_at(&app, replica.addr, &key, &path(3)).await;

    here.assert_error(401, "UNAUTHORIZED");
    there.assert_error(401, "UNAUTHORIZED");
    assert_eq!(app.status_of(&scans[2]).await, ScanStatus::Queued);
    assert_eq!(app.status_of(&scans[3]).await, ScanStatus::Queued);
}
store_test!(a_revoked_key_stops_working_within_a_second_on_every_instance);

/// Expiry is checked on every request, cached or not: a key that expires while its entry is
/// cached (a cache that keeps it for 10 minutes here) is refused `API key has expired` from its
/// expiry on, without a lookup, and changes nothing. A cache that skipped the check would let an
/// expired key work for as long as its entry lives.
async fn a_key_that_expires_while_cached_is_refused_from_its_expiry(backend: Backend) {
    let app = Settings::default()
        .with_key_cache_ttl(Duration::from_secs(600))
        .spawn(backend)
        .await;
    let group = group();
    let lifetime = time::Duration::milliseconds(1500);
    let (key, id) = app
        .key_with(
            &[Permission::SignalsWrite],
            signal_scans::domain::keys::AccountGroupAccess::Only(vec![group]),
            Some(time::OffsetDateTime::now_utc() + lifetime),
        )
        .await;
    // As stamped by the store, from its clock's reading at the creation.
    let keys = app.store.list_keys().await.unwrap();
    let stored = keys.iter().find(|stored| stored.id == id).unwrap();
    let expires_at = stored.expires_at.unwrap();
    let (first, second) = (
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
    );
    app.cancel_ok(&key, &group, &first).await;
    let looked_up = app.served_store.key_lookups();

    let left = expires_at - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(left).unwrap_or_default()).await;
    let expired = app
        .cancel(Some(&key), group.as_str(), second.as_str())
        .await;

    assert_eq!(
        expired.assert_error(401, "UNAUTHORIZED"),
        "API key has expired"
    );
    assert_eq!(
        app.served_store.key_lookups(),
        looked_up,
        "judged from the cache"
    );
    assert_eq!(app.status_of(&second).await, ScanStatus::Queued);
}
store_test!(a_key_that_expires_while_cached_is_refused_from_its_expiry);

/// Whether a key has expired is judged by the database's clock, which stamped its expiry, run on
/// by the instance's monotonic clock: an instance whose wall clock runs an hour fast takes a key
/// with half an hour left, and one running an hour slow refuses a key that expired a second ago.
/// Before, each judged by its own wall clock and answered the other way round.
async fn a_keys_expiry_is_judged_by_the_databases_clock_not_the_instances(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = time::OffsetDateTime::now_utc();
    let key = async |expires_at| {
        let access = signal_scans::domain::keys::AccountGroupAccess::All;
        let permissions = [Permission::SignalsWrite];
        app.key_with(&permissions, access, Some(expires_at)).await.0
    };
    let current = key(now + time::Duration::minutes(30)).await;
    let expired = key(now - time::Duration::seconds(1)).await;
    let unknown_scan = cancel_path(group().as_str(), ScanId::generate().as_str());

    for (shift, key, status) in [(3600, &current, 404), (-3600, &expired, 401)] {
        let shifted = clock_shift::env(shift);
        let mut env = vec![("DATABASE_URL", app.db.url.as_str())];
        env.extend(shifted.iter().map(|(name, value)| (*name, value.as_str())));
        let instance = ServerProcess::start(&env).await;

        let response = instance.post(key, &unknown_scan).await;

        assert_eq!(response.status, status, "clock {shift:+} s: {response:?}");
    }
}
store_test!(
    a_keys_expiry_is_judged_by_the_databases_clock_not_the_instances,
    postgres_only
);

/// A key's entry is as old as its read: a request that joins a key read begun more than the TTL
/// before it arrived (a slow database) reads the key again, so a key revoked while that read was
/// on its way back is refused. Before, the old read answered it, and its entry then lived one TTL
/// more from its arrival: a revoked key kept working for the TTL plus the read's latency.
async fn a_slow_key_read_does_not_stretch_how_long_a_revoked_key_works(backend: Backend) {
    let app = Settings::default()
        .with_key_cache_ttl(Duration::from_secs(1))
        .through_proxy_with_timeouts(Duration::from_secs(30), Duration::from_secs(90))
        .spawn(backend)
        .await;
    let group = group();
    let (key, key_id) = app.key_for(&[Permission::SignalsWrite], &[group]).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let (first, second) = (
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
    );
    // Opened now: opening it after the warm request could take past the pool's idle check.
    let mut watcher = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    // Another key's read leaves the pool's next connection just used (so not pinged first) with
    // the lookup's statement prepared: the early request's lookup shows in pg_stat_activity once
    // it has run, not when it is prepared (before it runs).
    let warm = app
        .client
        .get(app.url(&format!("/v1/accounts/{group}/signals/scans/{first}")))
        .bearer_auth(&reader);
    assert_eq!(ApiResponse::of(warm).await.status, 200);
    let since: time::OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut watcher)
        .await
        .unwrap();
    app.proxy
        .as_ref()
        .unwrap()
        .slow_down(Duration::from_secs(3));

    let early = app.cancel(Some(&key), group.as_str(), first.as_str());
    let late = async {
        // The early request's key read has run (its answer is on its way, three seconds slow):
        // revoke behind it, then ask once the read is older than the TTL.
        until_a_key_read_has_run(&mut watcher, since).await;
        app.store.revoke_key(key_id).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        app.cancel(Some(&key), group.as_str(), second.as_str())
            .await
    };
    let (early, late) = tokio::join!(early, late);

    assert_eq!(early.status, 200, "read before the revocation: {early:?}");
    late.assert_error(401, "UNAUTHORIZED");
    assert_eq!(app.status_of(&second).await, ScanStatus::Queued);
}
store_test!(
    a_slow_key_read_does_not_stretch_how_long_a_revoked_key_works,
    postgres_only
);

/// Waits until a key lookup begun after `since` (the database's clock) has run in PostgreSQL,
/// whatever its answer's delay.
async fn until_a_key_read_has_run(watcher: &mut sqlx::PgConnection, since: time::OffsetDateTime) {
    for _ in 0..600 {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND state <> 'active' AND query_start > $1
                AND query LIKE '%FROM api_keys WHERE key_hash = $1%'",
        )
        .bind(since)
        .fetch_one(&mut *watcher)
        .await
        .unwrap();
        if done > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no key lookup ran in 30 s");
}
