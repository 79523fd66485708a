//! Rate limiting: per API key (429 with the IETF `RateLimit` headers) and per client address for
//! failed authentications. In-process by default; shared by every replica through Redis when
//! `REDIS_URL` is set.
//!
//! When Redis is unreachable or slow, each instance falls back to its own in-process limits (fail
//! open to local limits, never to none): the API stays up, and a client is still limited, only
//! per instance until Redis returns.

mod clock;
mod local;
mod shared;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use dashmap::DashMap;
use uuid::Uuid;

pub use self::clock::LimiterClock;
use self::local::LocalLimits;
pub use self::shared::RedisSettings;
use self::shared::SharedLimits;
use super::error::Limit;
use super::metrics::RATE_LIMITED;

const POLICY_NAME: &str = "per-key";
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const BACKEND_ERRORS: &str = "rate_limit_backend_errors_total";

/// The limit every API key gets: a sustained rate and a burst on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u32 },
    Limited { retry_after_secs: u64 },
}

/// What counting one failed authentication of an address decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The address had no failure left: this one is answered 429.
    pub refused: bool,
    /// The address has none left now, for this many seconds: until then its requests are
    /// refused before any lookup. Set by the failure that spends the last one, so the request
    /// after it is never looked up.
    pub blocked_for: Option<u64>,
}

/// Every limit the service applies, wherever it is kept.
pub struct RateLimiter {
    limit: RateLimit,
    policy: HeaderValue,
    local: LocalLimits,
    /// The in-process limits' clock (Redis keeps its own).
    clock: LimiterClock,
    shared: Option<Arc<SharedLimits>>,
    /// Per client address (as its failures count), the turn to look a key up on this instance.
    lookups: DashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>,
    /// Addresses that failed to authenticate on this instance lately, and when they last did.
    failed_lately: DashMap<IpAddr, std::time::Instant>,
    /// Failed authentications recorded, to drop stale entries of the maps above now and then.
    failures_recorded: std::sync::atomic::AtomicU64,
}

/// How long an address that failed to authenticate looks its keys up one at a time: the failure
/// allowance's window.
const FAILED_LATELY: Duration = Duration::from_secs(60);

/// The longest a lookup waits for its turn; then it goes without one. A turn lasts one lookup,
/// normally a millisecond; while the database stalls it lasts `DB_TIMEOUT_MS`, and waiting
/// without end would queue an address's requests (a NAT's, after one client's typo) into 500s.
pub(crate) const TURN_WAIT: Duration = Duration::from_secs(1);

/// The longest one request may wait on Redis: its calls (the failed-login block, asked again in a
/// lookup turn, and the key's limit), each bounded.
pub(crate) const MOST_REDIS_WAIT: Duration =
    Duration::from_millis(3 * shared::REDIS_TIMEOUT.as_millis() as u64);

/// How often (in recorded failures) stale entries are dropped: amortized, so that failures
/// from many addresses cost no more each than failures from one.
const PRUNE_EVERY: u64 = 1024;

/// A client address's turn to look a key up; the next waiting lookup of the address goes when it
/// is dropped. Or, when another lookup of the address held it for all of `TURN_WAIT`, the word
/// that it is busy ([`LookupTurn::is_busy`]).
pub struct LookupTurn<'a> {
    lookups: &'a DashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>,
    client: IpAddr,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LookupTurn<'_> {
    /// Another lookup of the address held the turn for all of `TURN_WAIT` (a slow database):
    /// this one must not go ahead beside it.
    pub fn is_busy(&self) -> bool {
        self.held.is_none()
    }
}

impl Drop for LookupTurn<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        // The last one out removes the address's turn, so idle addresses hold no memory. A
        // waiter holds a clone of the turn, taken under the map's lock, so none is missed.
        self.lookups
            .remove_if(&self.client, |_, turn| Arc::strong_count(turn) == 1);
    }
}

impl RateLimiter {
    /// In-process limits, shared through Redis when `redis` is given. Must run inside a Tokio
    /// runtime when `redis` is given (it connects in the background).
    pub fn new(
        limit: RateLimit,
        auth_failures_per_minute: NonZeroU32,
        redis: Option<&RedisSettings>,
    ) -> Result<Self, String> {
        let shared = redis
            .map(|settings| SharedLimits::new(settings, limit, auth_failures_per_minute))
            .transpose()?
            .map(Arc::new);
        if let Some(shared) = &shared {
            // Detached: it ends once connected; until then the local limits decide.
            drop(shared.spawn_connector());
        }
        let policy = format!(
            "\"{POLICY_NAME}\";q={};w={}",
            limit.burst,
            window_secs(limit)
        );
        let clock = LimiterClock::default();
        Ok(Self {
            limit,
            policy: HeaderValue::from_str(&policy).expect("policy header is ASCII"),
            local: LocalLimits::new(limit, auth_failures_per_minute, clock.clone()),
            clock,
            shared,
            lookups: DashMap::new(),
            failed_lately: DashMap::new(),
            failures_recorded: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The clock of the in-process limits, which tests stop and advance by hand; the service
    /// never touches it.
    pub fn clock(&self) -> &LimiterClock {
        &self.clock
    }

    /// True once the limits are kept in Redis (false without `REDIS_URL`, and until the first
    /// connection is made).
    #[doc(hidden)] // For the tests that wait for Redis before they count: `tests/api` is another crate.
    pub fn is_shared(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.is_connected())
    }

    /// Spends one request of `key`'s allowance.
    pub(crate) async fn check_key(&self, key: &Uuid) -> Decision {
        if let Some(shared) = &self.shared {
            match shared.check_key(key).await {
                Ok(decision) => return decision,
                Err(_) => backend_failed(),
            }
        }
        self.local.check_key(key)
    }

    /// Seconds `client` must wait because it failed authentication too often; `None` when it may
    /// try. Looks without spending.
    pub(crate) async fn auth_blocked(&self, client: IpAddr) -> Option<u64> {
        if let Some(shared) = &self.shared {
            match shared.auth_blocked(client).await {
                Ok(blocked) => return blocked,
                Err(_) => backend_failed(),
            }
        }
        self.local.auth_blocked(client)
    }

    /// For a `client` that failed to authenticate lately, waits for its turn to look a key up:
    /// one lookup at a time per address on this instance. The failure limit is checked and
    /// counted inside the turn, so such an address that has used its allowance gets no more
    /// lookups, however many requests it has in flight (checked before the lookup and counted
    /// after it, every request in flight when a failure was allowed again was looked up). Any
    /// other address needs no turn (`None`): its lookups, a new key's first ones while the
    /// database is slow, say, must not queue behind one another. A lookup that waited a second
    /// (`TURN_WAIT`) in vain gets a busy turn: it went ahead beside the one in progress before,
    /// and so every request of a burst was looked up while the database was slow.
    pub(crate) async fn lookup_turn(&self, client: IpAddr) -> Option<LookupTurn<'_>> {
        let failed_at = *self.failed_lately.get(&client)?;
        if failed_at.elapsed() > FAILED_LATELY {
            return None;
        }
        let turn = self.lookups.entry(client).or_default().clone();
        let mut taken = LookupTurn {
            lookups: &self.lookups,
            client,
            held: None,
        };
        // Dropped with its clone of the turn when it ends, in time or not (then `taken` removes
        // the address's turn if no one else holds it).
        taken.held = tokio::time::timeout(TURN_WAIT, turn.lock_owned())
            .await
            .ok();
        Some(taken)
    }

    /// Counts a failed authentication of `client`: see [`Failure`].
    pub(crate) async fn record_auth_failure(&self, client: IpAddr) -> Failure {
        let recorded = self
            .failures_recorded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if recorded % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.failed_lately
                .retain(|_, failed_at| failed_at.elapsed() <= FAILED_LATELY);
            // A turn whose waiters all gave up stays behind; none holds it now.
            self.lookups.retain(|_, turn| Arc::strong_count(turn) > 1);
        }
        self.failed_lately.insert(client, std::time::Instant::now());
        if let Some(shared) = &self.shared {
            match shared.record_auth_failure(client).await {
                Ok(blocked) => return blocked,
                Err(_) => backend_failed(),
            }
        }
        self.local.record_auth_failure(client)
    }

    /// Spends one request of an authenticated `key`'s allowance, and counts and logs a refusal.
    pub(crate) async fn spend(&self, key: &Uuid) -> Decision {
        let decision = self.check_key(key).await;
        if let Decision::Limited { retry_after_secs } = decision {
            tracing::info!(api_key.id = %key, retry_after_secs, "rate limited");
            metrics::counter!(RATE_LIMITED, "limit" => Limit::KeyRate.label()).increment(1);
        }
        decision
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    /// `t` is when the whole burst is back: after a 429 that is the whole burst's refill, not
    /// the `Retry-After` of the next request (a client that waited `t` for a full burst got half).
    pub(crate) fn write_headers(&self, decision: Decision, headers: &mut HeaderMap) {
        let (remaining, reset_secs) = match decision {
            Decision::Allowed { remaining } => {
                let used = self.limit.burst.get().saturating_sub(remaining);
                (remaining, used.div_ceil(self.limit.per_second.get()))
            }
            Decision::Limited { retry_after_secs } => (
                0,
                window_secs(self.limit).max(u32::try_from(retry_after_secs).unwrap_or(u32::MAX)),
            ),
        };
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        let state = format!("\"{POLICY_NAME}\";r={remaining};t={reset_secs}");
        // The text's own buffer becomes the header's (`from_str` would copy it).
        if let Ok(value) = HeaderValue::from_maybe_shared(axum::body::Bytes::from(state)) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }
}

/// Counts a decision Redis did not make. The log is the shared limits' own: the failure that
/// started a backoff is logged there, the calls failing with it or skipped after it are not, nor a
/// call made before the first connection (the connecting task logs its own failures, every few
/// seconds; a wrong password logged a line per request, two per request past the limit).
fn backend_failed() {
    metrics::counter!(BACKEND_ERRORS).increment(1);
}

/// Whole seconds, rounded up, and never 0: "retry now" would only earn another 429.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Seconds in which a full burst is replenished: the window the quota is stated over.
fn window_secs(limit: RateLimit) -> u32 {
    limit.burst.get().div_ceil(limit.per_second.get()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32, failures_per_minute: u32) -> RateLimiter {
        RateLimiter::new(
            RateLimit {
                per_second: NonZeroU32::new(per_second).unwrap(),
                burst: NonZeroU32::new(burst).unwrap(),
            },
            NonZeroU32::new(failures_per_minute).unwrap(),
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_key_gets_its_burst_then_is_limited_for_at_least_a_second() {
        let limiter = limiter(1, 3, 20);
        let key = Uuid::new_v4();
        for expected in [2, 1, 0] {
            assert_eq!(
                limiter.check_key(&key).await,
                Decision::Allowed {
                    remaining: expected
                }
            );
        }
        assert_eq!(
            limiter.check_key(&key).await,
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        assert_eq!(
            limiter.check_key(&Uuid::new_v4()).await,
            Decision::Allowed { remaining: 2 },
            "keys do not share a bucket"
        );
    }

    /// The failure that spends an address's last allowance blocks it at once: the request after
    /// it is refused before its key is looked up. A failure past the allowance (requests in
    /// flight together) is refused itself.
    #[tokio::test]
    async fn an_address_that_spent_its_failure_allowance_is_blocked_whatever_it_sends() {
        let limiter = limiter(20, 40, 2);
        let (guesser, bystander): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = limiter.record_auth_failure(guesser).await;
        assert_eq!(
            first,
            Failure {
                refused: false,
                blocked_for: None
            }
        );
        assert_eq!(limiter.auth_blocked(guesser).await, None);
        let last = limiter.record_auth_failure(guesser).await;
        assert!(!last.refused, "the second of two is allowed");
        let blocked_for = last.blocked_for.expect("the last failure blocks");
        assert!((1..=30).contains(&blocked_for), "{blocked_for}");
        assert_eq!(limiter.auth_blocked(guesser).await, Some(blocked_for));
        let past = limiter.record_auth_failure(guesser).await;
        assert!(past.refused && past.blocked_for.is_some(), "{past:?}");
        assert_eq!(limiter.auth_blocked(bystander).await, None);
    }

    /// An address's turn to look keys up is forgotten once its last holder is done, and an
    /// address whose last failure is older than the failure window takes none.
    #[tokio::test]
    async fn a_turn_is_taken_after_a_recent_failure_and_forgotten_when_done() {
        let limiter = limiter(20, 40, 20);
        let (client, long_ago): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(
            limiter.lookup_turn(client).await.is_none(),
            "no failure yet"
        );
        limiter.record_auth_failure(client).await;
        let turn = limiter.lookup_turn(client).await.expect("a failure lately");
        assert!(!turn.is_busy());
        drop(turn);
        assert!(limiter.lookups.is_empty(), "an idle address holds no turn");

        limiter
            .failed_lately
            .insert(long_ago, a_minute_and_a_second_ago());
        assert!(limiter.lookup_turn(long_ago).await.is_none());
    }

    /// Every `PRUNE_EVERY` failures, the addresses whose last failure left the window are dropped,
    /// and so are turns nobody holds; recent failures and turns in use stay.
    #[tokio::test]
    async fn stale_failures_and_idle_turns_are_dropped_now_and_then() {
        let limiter = limiter(20, 40, 20);
        let address = |last: u8| IpAddr::from([10, 0, 0, last]);
        let (stale, recent, idle, held) = (address(1), address(2), address(3), address(4));
        limiter
            .failed_lately
            .insert(stale, a_minute_and_a_second_ago());
        limiter.lookups.insert(idle, Arc::default());
        let in_use = Arc::default();
        limiter.lookups.insert(held, Arc::clone(&in_use));

        for _ in 0..PRUNE_EVERY - 1 {
            limiter.record_auth_failure(recent).await;
        }
        assert!(limiter.failed_lately.contains_key(&stale), "not yet");
        limiter.record_auth_failure(recent).await;

        assert!(!limiter.failed_lately.contains_key(&stale));
        assert!(limiter.failed_lately.contains_key(&recent));
        assert!(!limiter.lookups.contains_key(&idle));
        assert!(limiter.lookups.contains_key(&held));
        drop(in_use);
    }

    fn a_minute_and_a_second_ago() -> std::time::Instant {
        std::time::Instant::now()
            .checked_sub(FAILED_LATELY + Duration::from_secs(1))
            .expect("the machine has been up for more than a minute")
    }

    /// A wait is told in whole seconds, rounded up (a client retrying on time must not come
    /// early), and never as 0.
    #[test]
    fn waits_are_told_in_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_millis(19_400)), 20);
        assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn headers_state_the_policy_and_what_is_left() {
        let limiter = limiter(20, 40, 20);
        let mut headers = HeaderMap::new();
        limiter.write_headers(Decision::Allowed { remaining: 39 }, &mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=40;w=2");
        assert_eq!(headers["ratelimit"], "\"per-key\";r=39;t=1");
        // A 429's next request is due in a second; the whole burst of 40 only in 2.
        limiter.write_headers(
            Decision::Limited {
                retry_after_secs: 1,
            },
            &mut headers,
        );
        assert_eq!(headers["ratelimit"], "\"per-key\";r=0;t=2");
    }
}
