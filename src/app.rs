//! The application: shared state, the bound listener, and serving until told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::domain::service::ScanService;
use crate::http;
use crate::http::changes::{ChangeStreams, StreamSettings};
use crate::http::rate_limit::{RateLimit, RateLimiter, RedisSettings};
use crate::server::{self, ConnectionLimits};

/// The knobs of the HTTP layer.
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

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            rate_limit: RateLimit {
                per_second: NonZeroU32::new(20).expect("non-zero"),
                burst: NonZeroU32::new(40).expect("non-zero"),
            },
            auth_failures_per_minute: NonZeroU32::new(20).expect("non-zero"),
            trusted_proxy_hops: 0,
            request_timeout: Duration::from_secs(10),
            redis: None,
            streams: StreamSettings::default(),
            docs_enabled: true,
        }
    }
}

/// What every handler and middleware may reach, each part extractable on its own.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub scans: ScanService,
    pub limits: Arc<RateLimiter>,
    pub trusted_proxy_hops: usize,
    pub request_timeout: Duration,
    pub metrics: PrometheusHandle,
    pub changes: ChangeStreams,
    pub docs_enabled: bool,
}

impl AppState {
    /// Fails only on settings that cannot work (a malformed `REDIS_URL`). Runs inside a Tokio
    /// runtime: the Redis connection, if any, is made in the background.
    pub fn new(scans: ScanService, settings: &HttpSettings) -> Result<Self, String> {
        let limits = RateLimiter::new(
            settings.rate_limit,
            settings.auth_failures_per_minute,
            settings.redis.as_ref(),
        )?;
        Ok(Self {
            scans,
            limits: Arc::new(limits),
            trusted_proxy_hops: settings.trusted_proxy_hops,
            request_timeout: settings.request_timeout,
            metrics: http::metrics::recorder(),
            changes: ChangeStreams::new(settings.streams),
            docs_enabled: settings.docs_enabled,
        })
    }
}

/// A router bound to its listener. Binding first lets callers (and tests, on port 0) learn the
/// real address before serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
}

impl Application {
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            router,
            limits: ConnectionLimits::default(),
        })
    }

    /// Serve under `limits` instead of the defaults.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish,
    /// for at most `drain` before returning anyway.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> io::Result<()> {
        server::run(self.listener, self.router, self.limits, shutdown, drain).await
    }
}

/// Builds the production router for `state`.
pub fn build_router(state: AppState) -> Router {
    http::router(state)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
