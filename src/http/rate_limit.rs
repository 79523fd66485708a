//! Per-key rate limiting (GCRA, from `governor`) with the IETF `RateLimit` headers.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use super::error::ApiError;
use crate::domain::keys::Principal;

const POLICY_NAME: &str = "per-key";
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

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

/// A GCRA limiter keyed by API key id.
pub struct KeyRateLimiter {
    limit: RateLimit,
    limiter: DefaultKeyedRateLimiter<Uuid, StateInformationMiddleware>,
    clock: DefaultClock,
    policy: HeaderValue,
}

impl KeyRateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        let policy = format!(
            "\"{POLICY_NAME}\";q={};w={}",
            limit.burst,
            window_secs(limit)
        );
        Self {
            limit,
            limiter: DefaultKeyedRateLimiter::keyed(quota).with_middleware(),
            clock: DefaultClock::default(),
            policy: HeaderValue::from_str(&policy).expect("policy header is ASCII"),
        }
    }

    pub fn check(&self, key: &Uuid) -> Decision {
        match self.limiter.check_key(key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Limited {
                retry_after_secs: whole_seconds(not_until.wait_time_from(self.clock.now())),
            },
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    fn write_headers(&self, decision: Decision, headers: &mut HeaderMap) {
        let (remaining, reset_secs) = match decision {
            Decision::Allowed { remaining } => {
                let used = self.limit.burst.get().saturating_sub(remaining);
                (remaining, used.div_ceil(self.limit.per_second.get()))
            }
            Decision::Limited { retry_after_secs } => (0, retry_after_secs as u32),
        };
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        let state = format!("\"{POLICY_NAME}\";r={remaining};t={reset_secs}");
        if let Ok(value) = HeaderValue::from_str(&state) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }
}

/// Failed authentications per client address: a client guessing keys is answered 429 for every
/// request, whatever key it sends, until its allowance refills.
pub struct AuthFailureLimiter {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// Addresses over their allowance, and until when. Checked before any key is looked at,
    /// so a blocked guesser cannot learn whether a guess was right.
    blocked: DashMap<IpAddr, Instant>,
    recorded: AtomicU64,
}

/// How often (in recorded failures) idle per-address state is dropped, bounding memory.
const PRUNE_EVERY: u64 = 1024;

impl AuthFailureLimiter {
    pub fn new(per_minute: NonZeroU32) -> Self {
        Self {
            failures: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            blocked: DashMap::new(),
            recorded: AtomicU64::new(0),
        }
    }

    /// Seconds to wait while `client` is blocked; `None` when it may try.
    pub fn retry_after(&self, client: IpAddr) -> Option<u64> {
        let until = *self.blocked.get(&client)?;
        match until.checked_duration_since(Instant::now()) {
            Some(wait) => Some(whole_seconds(wait)),
            None => {
                self.blocked.remove(&client);
                None
            }
        }
    }

    /// Counts a failed authentication; `Some(seconds)` when it took `client` over its allowance.
    pub fn record_failure(&self, client: IpAddr) -> Option<u64> {
        if self.recorded.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        let not_until = self.failures.check_key(&client).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        self.blocked.insert(client, Instant::now() + wait);
        Some(whole_seconds(wait))
    }

    fn prune(&self) {
        self.failures.retain_recent();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }
}

/// Whole seconds, rounded up, and never 0: "retry now" would only earn another 429.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Seconds in which a full burst is replenished: the window the quota is stated over.
fn window_secs(limit: RateLimit) -> u32 {
    limit.burst.get().div_ceil(limit.per_second.get()).max(1)
}

/// Middleware, after authentication: spends one cell of the caller's key.
pub async fn limit(
    State(limiter): State<Arc<KeyRateLimiter>>,
    principal: Principal,
    request: Request,
    next: Next,
) -> Response {
    let decision = limiter.check(&principal.key_id);
    let mut response = match decision {
        Decision::Allowed { .. } => next.run(request).await,
        Decision::Limited { retry_after_secs } => {
            tracing::info!(api_key.id = %principal.key_id, retry_after_secs, "rate limited");
            metrics::counter!(super::metrics::RATE_LIMITED, "limit" => "per_key").increment(1);
            ApiError::RateLimited { retry_after_secs }.into_response()
        }
    };
    limiter.write_headers(decision, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> KeyRateLimiter {
        KeyRateLimiter::new(RateLimit {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    #[test]
    fn a_key_gets_its_burst_then_is_limited_for_at_least_a_second() {
        let limiter = limiter(1, 3);
        let key = Uuid::new_v4();
        for expected in [2, 1, 0] {
            assert_eq!(
                limiter.check(&key),
                Decision::Allowed {
                    remaining: expected
                }
            );
        }
        assert_eq!(
            limiter.check(&key),
            Decision::Limited {
                retry_after_secs: 1
            }
        );
        assert_eq!(
            limiter.check(&Uuid::new_v4()),
            Decision::Allowed { remaining: 2 },
            "keys do not share a bucket"
        );
    }

    #[test]
    fn an_address_over_its_failure_allowance_is_blocked_whatever_it_sends() {
        let limiter = AuthFailureLimiter::new(NonZeroU32::new(2).unwrap());
        let (guesser, bystander): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(limiter.record_failure(guesser), None);
        assert_eq!(limiter.record_failure(guesser), None);
        assert_eq!(limiter.retry_after(guesser), None);
        let retry_after = limiter
            .record_failure(guesser)
            .expect("third failure blocks");
        assert!((1..=30).contains(&retry_after), "{retry_after}");
        assert_eq!(limiter.retry_after(guesser), Some(retry_after));
        assert_eq!(limiter.retry_after(bystander), None);
    }

    #[test]
    fn headers_state_the_policy_and_what_is_left() {
        let limiter = limiter(20, 40);
        let mut headers = HeaderMap::new();
        limiter.write_headers(Decision::Allowed { remaining: 39 }, &mut headers);
        assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=40;w=2");
        assert_eq!(headers["ratelimit"], "\"per-key\";r=39;t=1");
    }
}
