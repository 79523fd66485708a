//! An in-process cache of API keys by hash, so the hot path makes one database round trip (the
//! cancel) instead of two.
//!
//! Entries live at most `ttl` (at most one second by configuration): that alone bounds how long a
//! revoked key keeps working on any instance, whatever the store, with nothing to listen to and
//! nothing to miss. (A `LISTEN` for revocations would make them immediate, but PostgreSQL wakes
//! every listening connection on every `NOTIFY`, so each instance would pay for every cancel's
//! notification to save at most a second on a rare event.) Unknown keys are never cached, so
//! guessing cannot fill the cache or push real keys out.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::keys::{ApiKey, KeyHash};

/// Most keys held; far above the number of keys a deployment has.
const CAPACITY: u64 = 10_000;

pub struct KeyCache {
    entries: Option<moka::sync::Cache<KeyHash, Arc<ApiKey>>>,
}

impl KeyCache {
    /// A cache whose entries live `ttl`; a zero `ttl` disables it.
    pub fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build()
        });
        Self { entries }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<Arc<ApiKey>> {
        self.entries.as_ref()?.get(hash)
    }

    pub fn insert(&self, hash: KeyHash, key: Arc<ApiKey>) {
        if let Some(entries) = &self.entries {
            entries.insert(hash, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::keys::{AccountGroupAccess, Permission};

    fn key() -> Arc<ApiKey> {
        Arc::new(ApiKey {
            id: uuid::Uuid::new_v4(),
            name: "k".into(),
            permissions: vec![Permission::SignalsWrite],
            access: AccountGroupAccess::All,
            created_at: time::OffsetDateTime::now_utc(),
            expires_at: None,
            revoked_at: None,
        })
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = KeyCache::new(Duration::from_millis(50));
        let hash = KeyHash::of("ssk_a");
        cache.insert(hash, key());
        assert!(cache.get(&hash).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&hash).is_none(), "expired");
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let hash = KeyHash::of("ssk_a");
        cache.insert(hash, key());
        assert!(cache.get(&hash).is_none());
    }
}
