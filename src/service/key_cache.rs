//! An in-process cache of API keys by hash, so the hot path makes one database round trip (the
//! cancel) instead of two.
//!
//! Entries live at most `ttl` (at most one second by configuration) from the moment their read
//! began: that alone bounds how long a revoked key keeps working on any instance, whatever the
//! store, with nothing to listen to and nothing to miss. Counting from the end of the read
//! instead would stretch the bound by the read's latency, and a slow database would keep a
//! revoked key working for seconds. (A `LISTEN` for revocations would make them immediate, but
//! PostgreSQL wakes every listening connection on every `NOTIFY`, so each instance would pay for
//! every cancel's notification to save at most a second on a rare event.) Unknown keys are never
//! cached, so guessing cannot fill the cache or push real keys out.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::domain::keys::{ApiKey, KeyHash};
use crate::store::{FoundKey, StoreError};

/// Most keys held; far above the number of keys a deployment has.
const CAPACITY: u64 = 10_000;

pub(super) struct KeyCache {
    entries: Option<moka::future::Cache<KeyHash, KeyRead>>,
    ttl: Duration,
}

/// A key as read, when its read began, and the store's clock at the read.
#[derive(Clone)]
pub(super) struct KeyRead {
    key: Arc<ApiKey>,
    read_from: Instant,
    store_clock: OffsetDateTime,
}

impl KeyRead {
    fn new(found: FoundKey, read_from: Instant) -> Self {
        Self {
            key: Arc::new(found.key),
            read_from,
            store_clock: found.clock,
        }
    }

    pub(super) fn key(&self) -> &ApiKey {
        &self.key
    }

    /// The store's clock now, run on from the read by this process's monotonic clock: a key's
    /// expiry is judged by the clock that stamped it, whatever this machine's wall clock says.
    /// Counted from when the read began, so a key is refused early by up to the read's latency,
    /// never late.
    pub(super) fn store_now(&self) -> OffsetDateTime {
        self.store_clock + self.read_from.elapsed()
    }
}

/// An entry lives `ttl` from the moment its read began, not from its insertion.
struct FromTheRead {
    ttl: Duration,
}

impl moka::Expiry<KeyHash, KeyRead> for FromTheRead {
    fn expire_after_create(&self, _: &KeyHash, cached: &KeyRead, now: Instant) -> Option<Duration> {
        let age = now.saturating_duration_since(cached.read_from);
        Some(self.ttl.saturating_sub(age))
    }

    /// A load over an expired entry replaces it: its time counts from its own read too.
    fn expire_after_update(
        &self,
        key: &KeyHash,
        cached: &KeyRead,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, cached, now)
    }
}

/// Why a load put nothing in the cache.
#[derive(Clone)]
enum Miss {
    Unknown,
    Store(StoreError),
}

impl KeyCache {
    /// A cache whose entries live `ttl`; a zero `ttl` disables it.
    pub(super) fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(FromTheRead { ttl })
                .build()
        });
        Self { entries, ttl }
    }

    /// The cached key with this hash, if any.
    pub(super) async fn get(&self, hash: &KeyHash) -> Option<KeyRead> {
        self.entries.as_ref()?.get(hash).await
    }

    /// The key with this hash: cached, or from `load` (`None`: no such key, not cached).
    /// Concurrent misses of one key wait for a single load: when a busy key's entry expires,
    /// every request in flight would otherwise query the database at the same moment.
    pub(super) async fn get_or_load<Load, Loading>(
        &self,
        hash: KeyHash,
        load: Load,
    ) -> Result<Option<KeyRead>, StoreError>
    where
        Load: Fn() -> Loading,
        Loading: Future<Output = Result<Option<FoundKey>, StoreError>>,
    {
        let Some(entries) = &self.entries else {
            let read_from = Instant::now();
            return Ok(load().await?.map(|found| KeyRead::new(found, read_from)));
        };
        let arrived = Instant::now();
        let mut cached = Self::load_once(entries, hash, &load).await?;
        // The load this request waited for began more than `ttl` before it arrived (a slow
        // store): too old to answer it, and already expired in the cache. One more round reads
        // again: no load still running began before the one just waited for ended.
        if cached
            .as_ref()
            .is_some_and(|cached| arrived.saturating_duration_since(cached.read_from) > self.ttl)
        {
            cached = Self::load_once(entries, hash, &load).await?;
        }
        Ok(cached)
    }

    /// The cached entry, or one loaded now (joining a load of the same key already running).
    async fn load_once<Load, Loading>(
        entries: &moka::future::Cache<KeyHash, KeyRead>,
        hash: KeyHash,
        load: &Load,
    ) -> Result<Option<KeyRead>, StoreError>
    where
        Load: Fn() -> Loading,
        Loading: Future<Output = Result<Option<FoundKey>, StoreError>>,
    {
        let loaded = entries
            .try_get_with(hash, async {
                let read_from = Instant::now();
                match load().await {
                    Ok(Some(found)) => Ok(KeyRead::new(found, read_from)),
                    Ok(None) => Err(Miss::Unknown),
                    Err(error) => Err(Miss::Store(error)),
                }
            })
            .await;
        match loaded {
            Ok(cached) => Ok(Some(cached)),
            Err(miss) => match Arc::unwrap_or_clone(miss) {
                Miss::Unknown => Ok(None),
                Miss::Store(error) => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::domain::keys::{AccountGroupAccess, Permission};

    fn key() -> ApiKey {
        ApiKey {
            id: uuid::Uuid::new_v4(),
            name: "k".into(),
            permissions: vec![Permission::SignalsWrite],
            access: AccountGroupAccess::All,
            created_at: OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
        }
    }

    /// `key` as a store with this machine's clock finds it.
    fn found(key: ApiKey) -> FoundKey {
        FoundKey {
            key,
            clock: OffsetDateTime::now_utc(),
        }
    }

    /// A load that counts its calls and answers `key` (or no key).
    async fn load(
        calls: &AtomicUsize,
        key: Option<ApiKey>,
    ) -> Result<Option<FoundKey>, StoreError> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(key.map(found))
    }

    /// Whether the cache answered a key, counting the loads in `calls`.
    async fn answered(cache: &KeyCache, calls: &AtomicUsize) -> bool {
        cache
            .get_or_load(KeyHash::of("ssk_a"), || load(calls, Some(key())))
            .await
            .unwrap()
            .is_some()
    }

    /// moka keeps its own clock (a paused Tokio clock does not reach it), so the real one runs:
    /// three lookups in memory take far less than the TTL however loaded the machine, and the
    /// sleep past it cannot be too short.
    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let ttl = Duration::from_millis(500);
        let cache = KeyCache::new(ttl);
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            assert!(answered(&cache, &calls).await);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert!(answered(&cache, &calls).await);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "expired, loaded again");
        assert!(answered(&cache, &calls).await);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "and cached again");
    }

    /// A read that took long (a slow store) leaves its entry only what remains of the TTL counted
    /// from when it began: a key revoked while it ran keeps working no longer than the TTL.
    #[tokio::test]
    async fn an_entry_lives_the_ttl_from_when_its_read_began() {
        let ttl = Duration::from_millis(500);
        let cache = KeyCache::new(ttl);
        let hash = KeyHash::of("ssk_a");
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Some(found(key())))
        };
        assert!(cache.get_or_load(hash, slow).await.unwrap().is_some());
        // 550 ms or more since the read began: past the TTL, however late this runs.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.get(&hash).await.is_none(), "expired");
    }

    /// A request that joins a read begun more than the TTL before it arrived does not take that
    /// read's answer: it reads again (and sees the key revoked meanwhile).
    #[tokio::test]
    async fn a_read_begun_more_than_the_ttl_before_a_request_does_not_answer_it() {
        let cache = KeyCache::new(Duration::from_millis(200));
        let hash = KeyHash::of("ssk_a");
        let before_revoking = || async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok(Some(found(key())))
        };
        let after_revoking = || async { Ok(None) };
        let first = cache.get_or_load(hash, before_revoking);
        let late = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cache.get_or_load(hash, after_revoking).await
        };
        let (first, late) = tokio::join!(first, late);
        assert!(first.unwrap().is_some(), "read when the request arrived");
        assert!(late.unwrap().is_none(), "the old read's answer was taken");
    }

    #[tokio::test]
    async fn concurrent_misses_wait_for_one_load() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let hash = KeyHash::of("ssk_a");
        let calls = AtomicUsize::new(0);
        let found = futures::future::join_all(
            (0..32).map(|_| cache.get_or_load(hash, || load(&calls, Some(key())))),
        )
        .await;
        assert!(found.iter().all(|key| matches!(key, Ok(Some(_)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unknown_keys_and_failures_are_not_cached() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let hash = KeyHash::of("ssk_a");
        let calls = AtomicUsize::new(0);
        assert!(
            cache
                .get_or_load(hash, || load(&calls, None))
                .await
                .unwrap()
                .is_none()
        );
        let failing = || async { Err(StoreError::Unavailable("away".into())) };
        assert!(cache.get_or_load(hash, failing).await.is_err());
        assert!(answered(&cache, &calls).await);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "neither the miss nor the failure stayed"
        );
    }

    #[tokio::test]
    async fn a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            assert!(answered(&cache, &calls).await);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// The store's clock runs on from the read by this process's monotonic clock, from when the
    /// read began: a store an hour behind this machine keeps its hour, and the time the read
    /// took counts.
    #[tokio::test]
    async fn the_stores_clock_runs_on_from_the_read() {
        let store_clock = OffsetDateTime::now_utc() - time::Duration::HOUR;
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(Some(FoundKey {
                key: key(),
                clock: store_clock,
            }))
        };
        for ttl in [Duration::ZERO, Duration::from_secs(1)] {
            let cache = KeyCache::new(ttl);
            let read = cache.get_or_load(KeyHash::of("ssk_a"), slow).await;
            let ran_on = read.unwrap().unwrap().store_now() - store_clock;
            assert!(
                (time::Duration::milliseconds(200)..time::Duration::minutes(1)).contains(&ran_on),
                "{ran_on} (ttl {ttl:?})"
            );
        }
    }
}
