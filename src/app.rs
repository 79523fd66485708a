//! The one place the application is wired: settings → bound listener and rate limits (what can
//! fail without the database, checked before it is touched) → store (migrated) → service → HTTP
//! state → router. `serve` and every test build it the same way, so a new setting is threaded
//! here once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::http::server::{self, ConnectionLimits};
use crate::http::{self, AppState, HttpSettings};
use crate::secret_url::SecretUrl;
use crate::service::{HINT_FLUSH_LIMIT, ScanService, retention};
use crate::store::{Store, StoreError, StoreOptions};

/// Everything the application needs to start, read once (from the environment and flags by
/// `config`, or written out by a test).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen_addr: SocketAddr,
    pub store: StoreOptions,
    /// How long an authenticated key is kept in memory (zero: not at all).
    pub key_cache_ttl: Duration,
    /// Followers of changes read the audit trail at least this often, hint or not.
    pub feed_poll: Duration,
    /// While changes keep coming, the change streams read the audit trail at most this often.
    pub stream_batch: Duration,
    /// Audit rows older than this are deleted in the background (`None`: all are kept).
    pub audit_retention: Option<Duration>,
    pub http: HttpSettings,
    pub connections: ConnectionLimits,
    /// How long in-flight requests may finish once shutdown is asked.
    pub shutdown_timeout: Duration,
}

/// Why the application could not start.
///
/// A message leaves its cause to `source()` rather than repeating it: the command line prints the
/// chain (`cannot migrate the database at …: database unavailable: …`), which would otherwise name
/// the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Store(StoreError),
    #[error("cannot migrate the database at {url}")]
    Migrate { url: SecretUrl, source: StoreError },
    #[error("{0}")]
    Settings(String),
    #[error("cannot listen on {addr} (LISTEN_ADDR)")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// The wired application, bound to its listener but not yet serving. Binding first lets callers
/// (and tests, on port 0) learn the real address before serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    connections: ConnectionLimits,
    shutdown_timeout: Duration,
    audit_retention: Option<Duration>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_routes(settings, Router::new()).await
    }

    /// The application with `extra` routes merged in under the real middleware: how tests
    /// exercise paths the API does not have (a handler that panics, one that stalls).
    ///
    /// A test hook, `#[doc(hidden)]`: public only because `tests/api` is another crate.
    #[doc(hidden)]
    pub async fn build_with_routes(
        settings: Settings,
        extra: Router<AppState>,
    ) -> Result<Self, StartupError> {
        // A port another process holds and a setting that cannot work (a malformed `REDIS_URL`)
        // stop the start before the database is touched: an upgrade with a mistyped setting
        // must not migrate it first. The listener takes no connection before `run_until`.
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.listen_addr,
                source,
            })?;
        let limits = settings
            .http
            .rate_limiter()
            .map_err(StartupError::Settings)?;
        let store = migrated_store(&settings.store).await?;
        store.check_writable().await.map_err(StartupError::Store)?;
        let scans = ScanService::with_key_cache(store.clone(), settings.key_cache_ttl)
            .with_feed(settings.feed_poll, settings.stream_batch);
        let state = AppState::new(store, scans, limits, &settings.http);
        let router = http::router_with(state.clone(), extra);
        Ok(Self {
            listener,
            router,
            state,
            connections: settings.connections,
            shutdown_timeout: settings.shutdown_timeout,
            audit_retention: settings.audit_retention,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The state handlers see: its store (e.g. to seed the demo) and its limiter.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves (folding the metrics' samples on a timer of their own) until `shutdown` resolves,
    /// then ends the change streams, stops accepting, lets in-flight requests finish, and sends
    /// the last change notifications, all within the shutdown timeout.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        self.run_until_hurried(shutdown, std::future::pending())
            .await
    }

    /// [`Self::run_until`], whose wait for in-flight requests also ends when `hurry` resolves
    /// (a second Ctrl-C or SIGTERM).
    pub async fn run_until_hurried(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        hurry: impl Future<Output = ()>,
    ) {
        let upkeep = tokio::spawn(http::metrics::upkeep(
            self.state.metrics.clone(),
            http::metrics::UPKEEP_EVERY,
        ));
        let forgetting = tokio::spawn(self.state.scans.clone().forget_idempotency_keys_forever());
        let sweeping = self
            .audit_retention
            .map(|keep| tokio::spawn(retention::sweep_forever(self.state.store.clone(), keep)));
        let streams = self.state.changes.clone();
        let asked_to_stop = Arc::new(OnceLock::new());
        let stop_asked = Arc::clone(&asked_to_stop);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_asked.set(tokio::time::Instant::now());
            // Change streams never finish on their own: end them, so the drain waits only for
            // real requests.
            streams.close();
        };
        let drained = server::run(
            self.listener,
            self.router,
            self.connections,
            shutdown,
            hurry,
            self.shutdown_timeout,
        )
        .await;
        upkeep.abort();
        forgetting.abort();
        // Stopped before the last hints go: on SQLite a sweep would take the write turn.
        if let Some(sweeping) = &sweeping {
            sweeping.abort();
        }
        // Asked again: no last notification is sent (listeners find their changes at their next
        // poll).
        if drained == server::Drained::Hurried {
            return;
        }
        // Within the shutdown timeout, which bounds the whole stop: a hint that misses it is only
        // late (listeners find its change at their next poll).
        let flush_within = match asked_to_stop.get() {
            Some(asked) => (*asked + self.shutdown_timeout)
                .saturating_duration_since(tokio::time::Instant::now())
                .min(HINT_FLUSH_LIMIT),
            None => HINT_FLUSH_LIMIT,
        };
        self.state.store.flush_hints(flush_within).await;
    }
}

/// Connects and brings the schema up to date; every command that touches the database needs both.
pub(crate) async fn migrated_store(options: &StoreOptions) -> Result<Store, StartupError> {
    use secrecy::ExposeSecret;
    let store = Store::connect(options).map_err(StartupError::Store)?;
    store
        .migrate()
        .await
        .map_err(|source| StartupError::Migrate {
            url: SecretUrl::from(options.url.expose_secret().to_owned()),
            source,
        })?;
    Ok(store)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: [`StopSignals::next`] once.
pub(crate) fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    let mut signals = StopSignals::install();
    async move { signals.next().await }
}

/// Ctrl-C (SIGINT) and SIGTERM, each time they come. The handlers are installed by
/// [`Self::install`], not when first awaited: as a container's PID 1, the process has no default
/// action for SIGTERM, and one sent while it still connects to its database must not be lost.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub(crate) fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |name: &str, kind: SignalKind| {
                signal(kind)
                    .inspect_err(|error| tracing::error!(%error, "cannot listen for {name}"))
                    .ok()
            };
            Self {
                interrupt: listen("Ctrl-C", SignalKind::interrupt()),
                terminate: listen("SIGTERM", SignalKind::terminate()),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next Ctrl-C or SIGTERM (never, for a signal that could not be listened for).
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        {
            let received = async |signal: &mut Option<tokio::signal::unix::Signal>| match signal {
                Some(signal) => drop(signal.recv().await),
                None => std::future::pending().await,
            };
            tokio::select! {
                () = received(&mut self.interrupt) => {}
                () = received(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
