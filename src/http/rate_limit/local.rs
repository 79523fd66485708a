//! In-process limits (GCRA from `governor`): the default, and the fallback while Redis is away.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use super::clock::LimiterClock;
use super::{Decision, Failure, RateLimit, whole_seconds};

type Instant = <LimiterClock as Clock>::Instant;
type KeyedLimiter<K, MW = NoOpMiddleware<Instant>> =
    RateLimiter<K, DashMapStateStore<K>, LimiterClock, MW>;

/// How often (in recorded failures) idle per-address state is dropped, bounding memory.
const PRUNE_EVERY: u64 = 1024;

pub(super) struct LocalLimits {
    keys: KeyedLimiter<Uuid, StateInformationMiddleware>,
    failures: KeyedLimiter<IpAddr, StateInformationMiddleware>,
    clock: LimiterClock,
    /// Addresses over their failure allowance, and until when (governor cannot look without
    /// spending a cell, and a blocked address must be refused before its key is looked at).
    blocked: DashMap<IpAddr, Instant>,
    recorded: AtomicU64,
}

impl LocalLimits {
    pub(super) fn new(
        limit: RateLimit,
        auth_failures_per_minute: NonZeroU32,
        clock: LimiterClock,
    ) -> Self {
        Self {
            keys: RateLimiter::dashmap_with_clock(
                Quota::per_second(limit.per_second).allow_burst(limit.burst),
                clock.clone(),
            )
            .with_middleware(),
            failures: RateLimiter::dashmap_with_clock(
                Quota::per_minute(auth_failures_per_minute),
                clock.clone(),
            )
            .with_middleware(),
            clock,
            blocked: DashMap::new(),
            recorded: AtomicU64::new(0),
        }
    }

    pub(super) fn check_key(&self, key: &Uuid) -> Decision {
        match self.keys.check_key(key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                retry_after_secs: whole_seconds(not_until.wait_time_from(self.clock.now())),
            },
        }
    }

    pub(super) fn auth_blocked(&self, client: IpAddr) -> Option<u64> {
        let until = *self.blocked.get(&client)?;
        let now = self.clock.now();
        match until > now {
            true => Some(whole_seconds(until.duration_since(now).into())),
            false => {
                self.blocked.remove(&client);
                None
            }
        }
    }

    /// Spends one of `client`'s failures: see [`Failure`]. An address left without one is
    /// blocked until the next is due.
    pub(super) fn record_auth_failure(&self, client: IpAddr) -> Failure {
        if self.recorded.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        let (refused, not_until) = match self.failures.check_key(&client) {
            Err(not_until) => (true, Some(not_until)),
            // That was the last: a check now is refused, spends nothing, and says when the next
            // is due.
            Ok(left) if left.remaining_burst_capacity() == 0 => {
                (false, self.failures.check_key(&client).err())
            }
            Ok(_) => (false, None),
        };
        let blocked_for = not_until.map(|not_until| {
            let now = self.clock.now();
            let wait = not_until.wait_time_from(now);
            self.blocked.insert(client, now + wait.into());
            whole_seconds(wait)
        });
        Failure {
            refused,
            blocked_for,
        }
    }

    fn prune(&self) {
        self.failures.retain_recent();
        self.keys.retain_recent();
        let now = self.clock.now();
        self.blocked.retain(|_, until| *until > now);
    }
}
