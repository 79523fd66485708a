//! What the HTTP layer is given: its settings, and the state every handler and middleware may
//! extract a part of.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;

use super::changes::{ChangeStreams, StreamSettings};
use super::rate_limit::{RateLimit, RateLimiter, RedisSettings};
use crate::service::ScanService;
use crate::store::Store;

/// The knobs of the HTTP layer; their defaults are `serve`'s (`src/cli/config.rs`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub rate_limit: RateLimit,
    /// Failed authentications allowed per client address per minute.
    pub auth_failures_per_minute: NonZeroU32,
    /// Proxies in front of the service whose `X-Forwarded-For` entries are trusted (0: use the
    /// peer address).
    pub trusted_proxy_hops: usize,
    pub request_timeout: Duration,
    /// Keep the limits in Redis, shared by every replica; `None`: in this process.
    pub redis: Option<RedisSettings>,
    pub streams: StreamSettings,
    /// Serve the API reference at `/docs` (and redirect `/` to it).
    pub docs_enabled: bool,
}

/// What every handler and middleware may reach, each part extractable on its own.
///
/// axum clones the state into every middleware and handler call of every request: behind one
/// `Arc`, each of those clones is one reference count instead of one per part.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// Declares `FromRef<AppState>` for parts that handlers and middleware extract on their own.
macro_rules! extractable {
    ($($part:ident: $type:ty),+ $(,)?) => {
        $(impl FromRef<AppState> for $type {
            fn from_ref(state: &AppState) -> Self {
                state.$part.clone()
            }
        })+
    };
}

extractable!(
    scans: ScanService,
    store: Store,
    limits: Arc<RateLimiter>,
    metrics: PrometheusHandle,
    changes: ChangeStreams,
);

/// The parts of [`AppState`].
pub struct Parts {
    pub scans: ScanService,
    /// For health and metrics, which ask the database itself, not a use case.
    pub store: Store,
    pub limits: Arc<RateLimiter>,
    pub trusted_proxy_hops: usize,
    pub request_timeout: Duration,
    pub metrics: PrometheusHandle,
    pub changes: ChangeStreams,
    pub docs_enabled: bool,
}

impl HttpSettings {
    /// The rate limits these settings ask for. Fails only on settings that cannot work (a
    /// malformed `REDIS_URL`), so it is made before the database is touched. Runs inside a Tokio
    /// runtime: the Redis connection, if any, is made in the background.
    pub fn rate_limiter(&self) -> Result<RateLimiter, String> {
        RateLimiter::new(
            self.rate_limit,
            self.auth_failures_per_minute,
            self.redis.as_ref(),
        )
    }
}

impl AppState {
    pub fn new(
        store: Store,
        scans: ScanService,
        limits: RateLimiter,
        settings: &HttpSettings,
    ) -> Self {
        Self(Arc::new(Parts {
            scans,
            store,
            limits: Arc::new(limits),
            trusted_proxy_hops: settings.trusted_proxy_hops,
            request_timeout: settings.request_timeout,
            metrics: super::metrics::recorder(),
            changes: ChangeStreams::new(settings.streams),
            docs_enabled: settings.docs_enabled,
        }))
    }
}
