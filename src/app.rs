//! The application: shared state, the bound listener, and serving until told to stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use tokio::net::TcpListener;

use crate::domain::service::ScanService;
use crate::http;
use crate::http::rate_limit::{KeyRateLimiter, RateLimit};
use crate::store::Store;

/// What every handler and middleware may reach, each part extractable on its own.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub scans: ScanService,
    pub rate_limiter: Arc<KeyRateLimiter>,
    pub request_timeout: Duration,
}

impl AppState {
    pub fn new(store: Store, rate_limit: RateLimit, request_timeout: Duration) -> Self {
        Self {
            scans: ScanService::new(store),
            rate_limiter: Arc::new(KeyRateLimiter::new(rate_limit)),
            request_timeout,
        }
    }
}

/// A router bound to its listener. Binding first lets callers (and tests, on port 0) learn the
/// real address before serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
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
