//! Shared test fixtures: a fresh database per test, the app on port 0, and envelope assertions.

pub mod child;
pub mod clock_shift;
pub mod history;
pub mod http2;
pub mod locks;
pub mod metrics;
pub mod plans;
pub mod process;
pub mod proxy;
pub mod sse;
pub mod watch;

pub use http2::{h2_client, h2_get_as};

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use signal_scans::app::{Application, Settings as AppSettings};
use signal_scans::cli::config::ServeArgs;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::{AccountGroupAccess, NewApiKey, Permission};
use signal_scans::domain::scan::{Actor, ScanStatus};
use signal_scans::http::changes::StreamSettings;
use signal_scans::http::rate_limit::{RateLimit, RateLimiter};
use signal_scans::http::{AppState, HttpSettings};
use signal_scans::store::{KeyToCreate, Store, StoreOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

/// A runner moving scans outside HTTP, as the audit trail names it.
pub const RUNNER: Actor<'static> = Actor {
    api_key_id: None,
    trace_id: Some("runner"),
    reason: None,
};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Generates one `#[tokio::test]` per store for an `async fn(Backend)`, so the same suite runs
/// against each store. `postgres_only` marks a test that needs what only PostgreSQL has (a network
/// database to cut off, a trigger that sleeps).
#[macro_export]
macro_rules! store_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_available().await {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
        }
    };
    ($name:ident, postgres_only) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_available().await {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Whether the PostgreSQL half of the suite can run. Without a server it is skipped, and said so
/// on the terminal (not in captured test output); under `CI=true` a missing server fails.
pub async fn postgres_available() -> bool {
    static ANSWER: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *ANSWER
        .get_or_init(|| async {
            let error = match PgConnection::connect(&admin_url()).await {
                Ok(_) => return true,
                Err(error) => error,
            };
            let how = format!(
                "PostgreSQL is not reachable ({error}). Set TEST_DATABASE_URL to an admin URL that \
                 may create databases (default {DEFAULT_ADMIN_URL}), or start the local server with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`."
            );
            if under_ci() {
                panic!("{how} Under CI the PostgreSQL half must run.");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\nNOTE: the PostgreSQL half of the suite was NOT run; only SQLite was tested. {how}\n"
            );
            false
        })
        .await
}

/// A database that exists for one test and is dropped after it.
pub struct TestDatabase {
    pub url: String,
    place: Place,
}

/// Where a test database lives, so that it can be removed.
enum Place {
    Postgres { admin_url: String, name: String },
    Sqlite { folder: std::path::PathBuf },
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::create_postgres().await,
            Backend::Sqlite => Self::create_sqlite(),
        }
    }

    async fn create_postgres() -> Self {
        let admin_url = admin_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL answered a moment ago");
        let name = format!("signal_scans_test_{}", Uuid::new_v4().simple());
        admin
            .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            place: Place::Postgres { admin_url, name },
        }
    }

    fn create_sqlite() -> Self {
        let folder =
            std::env::temp_dir().join(format!("signal-scans-test-{}", Uuid::new_v4().simple()));
        Self {
            url: format!("sqlite://{}", folder.join("test.db").display()),
            place: Place::Sqlite { folder },
        }
    }
}

impl TestDatabase {
    /// The SQLite database's file (its folder is made when the store first opens it).
    pub fn sqlite_file(&self) -> std::path::PathBuf {
        let Place::Sqlite { folder } = &self.place else {
            panic!("a file is SQLite's");
        };
        folder.join("test.db")
    }

    /// The address of the database server, for a proxy to forward to.
    pub async fn server_addr(&self) -> SocketAddr {
        let url = url::Url::parse(&self.url).unwrap();
        let host = url.host_str().expect("database URL has a host");
        tokio::net::lookup_host((host, url.port().unwrap_or(5432)))
            .await
            .expect("database host resolves")
            .next()
            .expect("database host has an address")
    }
}

impl TestDatabase {
    /// Lets this PostgreSQL database take new connections, or refuse them at once
    /// (`ALLOW_CONNECTIONS`; PostgreSQL answers "is not currently accepting connections"). The
    /// sessions already open go on. Run from the admin database: PostgreSQL refuses the change
    /// from a session of the database itself.
    pub async fn allow_connections(&self, allow: bool) {
        self.alter(&format!("WITH ALLOW_CONNECTIONS {allow}")).await;
    }

    /// Ends the service's sessions on this PostgreSQL database (the test's own store's too), as an
    /// administrator or a restart would, from the admin database: this one may refuse sessions.
    /// Returns how many it ended.
    pub async fn end_sessions(&self) -> i64 {
        let Place::Postgres { admin_url, name } = &self.place else {
            panic!("sessions are PostgreSQL's");
        };
        let mut admin = PgConnection::connect(admin_url).await.unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'signal-scans'",
        )
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }

    /// Runs `statements` (one or more, `;`-separated) on this database, as an administrator would
    /// by hand, on a connection of its own.
    pub async fn execute(&self, statements: &str) {
        let statements = sqlx::AssertSqlSafe(statements.to_owned());
        match self.place {
            Place::Postgres { .. } => {
                let mut db = PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(statements).execute(&mut db).await.unwrap();
            }
            Place::Sqlite { .. } => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(statements).execute(&mut db).await.unwrap();
            }
        }
    }

    /// Whether this database has an index of that name.
    pub async fn has_index(&self, name: &str) -> bool {
        match self.place {
            Place::Postgres { .. } => {
                let mut db = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(name)
                    .fetch_one(&mut db)
                    .await
                    .unwrap()
            }
            Place::Sqlite { .. } => {
                let mut db = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
                )
                .bind(name)
                .fetch_one(&mut db)
                .await
                .unwrap()
            }
        }
    }

    /// `ALTER DATABASE <this one> <clause>`, e.g. `SET idle_session_timeout = '300ms'`: a setting
    /// that the sessions opened from now on take.
    pub async fn alter(&self, clause: &str) {
        let Place::Postgres { admin_url, name } = &self.place else {
            panic!("ALTER DATABASE is PostgreSQL's");
        };
        let mut admin = PgConnection::connect(admin_url).await.unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                r#"ALTER DATABASE "{name}" {clause}"#
            )))
            .await
            .unwrap();
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = match &self.place {
            Place::Sqlite { folder } => {
                let _ = std::fs::remove_dir_all(folder);
                return;
            }
            Place::Postgres { admin_url, name } => (admin_url.clone(), name.clone()),
        };
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// How the app under test is configured.
pub struct Settings {
    /// The HTTP layer's settings; by default limits high enough not to interfere.
    pub http: HttpSettings,
    pub db_timeout: Duration,
    pub db_max_connections: u32,
    /// PostgreSQL: batches of status changes committing at once (`DB_WRITE_BATCHES`).
    pub db_write_batches: u32,
    /// Routes merged in under the real middleware (e.g. one that panics).
    pub extra_routes: axum::Router<AppState>,
    /// Connect the app to its database through a [`proxy::Proxy`] the test can cut.
    pub through_proxy: bool,
    /// The key cache's TTL, as in production by default.
    pub key_cache_ttl: Duration,
    /// How often followers of changes read the trail without a hint (`FEED_POLL_MS`).
    pub feed_poll: Duration,
    /// The least time between the change hub's reads while changes keep coming.
    pub stream_batch: Duration,
}

/// `serve`'s settings as its flags' defaults make them, without reading the environment:
/// production's defaults, from the one place they are written (`src/cli/config.rs`).
pub fn serve_defaults() -> ServeArgs {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    let command = Serve::command().mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["serve"])
        .expect("serve needs no flag");
    Serve::from_arg_matches(&matches)
        .expect("serve's defaults are valid")
        .args
}

/// `StreamSettings::default()` in the tests: production's stream limits, from [`serve_defaults`]
/// (the type has no `Default` of its own, so that no second copy of them exists).
pub trait ServeDefault {
    fn default() -> Self;
}

impl ServeDefault for StreamSettings {
    fn default() -> Self {
        serve_defaults().http_settings().streams
    }
}

/// Production's defaults, but for the limits on keys and addresses: out of the way of any load a
/// test makes (1,000 a second was reached).
impl Default for Settings {
    fn default() -> Self {
        let serve = serve_defaults();
        let production = serve.settings();
        let mut http = serve.http_settings();
        http.rate_limit = RateLimit {
            per_second: NonZeroU32::new(1_000_000).unwrap(),
            burst: NonZeroU32::new(1_000_000).unwrap(),
        };
        http.auth_failures_per_minute = NonZeroU32::new(1000).unwrap();
        Self {
            http,
            db_timeout: production.store.timeout,
            db_max_connections: production.store.max_connections,
            db_write_batches: production.store.write_batches,
            extra_routes: axum::Router::new(),
            through_proxy: false,
            key_cache_ttl: production.key_cache_ttl,
            feed_poll: production.feed_poll,
            stream_batch: production.stream_batch,
        }
    }
}

/// One setting changed from the default, so a test names only what it is about.
impl Settings {
    pub fn with_db_timeout(mut self, timeout: Duration) -> Self {
        self.db_timeout = timeout;
        self
    }

    pub fn with_db_max_connections(mut self, max: u32) -> Self {
        self.db_max_connections = max;
        self
    }

    pub fn with_db_write_batches(mut self, batches: u32) -> Self {
        self.db_write_batches = batches;
        self
    }

    pub fn with_key_cache_ttl(mut self, ttl: Duration) -> Self {
        self.key_cache_ttl = ttl;
        self
    }

    /// The app with these settings: `Settings::default().with_…(…).spawn(backend)`.
    pub async fn spawn(self, backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, self).await
    }

    /// Spawns the app, with a fresh account group and a `signals:write` key on it.
    pub async fn spawn_with_writer(self, backend: Backend) -> (TestApp, AccountGroupId, String) {
        let app = self.spawn(backend).await;
        let group = group();
        let key = app.writer(&group).await;
        (app, group, key)
    }

    pub fn with_stream_batch(mut self, batch: Duration) -> Self {
        self.stream_batch = batch;
        self
    }

    pub fn with_feed_poll(mut self, poll: Duration) -> Self {
        self.feed_poll = poll;
        self
    }

    /// The app reaches its database through a [`proxy::Proxy`] the test can cut.
    pub fn through_proxy(mut self) -> Self {
        self.through_proxy = true;
        self
    }

    /// Through the proxy, to slow the database down: the store's timeout `db`, and the request
    /// deadline `request`, which must stay above what a slowed write can take.
    pub fn through_proxy_with_timeouts(self, db: Duration, request: Duration) -> Self {
        self.with_db_timeout(db)
            .with_request_timeout(request)
            .through_proxy()
    }

    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Each key may make `burst` requests at once, refilled at `per_second`.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.http.rate_limit = RateLimit {
            per_second: NonZeroU32::new(per_second).expect("a rate above 0"),
            burst: NonZeroU32::new(burst).expect("a burst above 0"),
        };
        self
    }

    pub fn with_auth_failures_per_minute(mut self, failures: u32) -> Self {
        self.http.auth_failures_per_minute = NonZeroU32::new(failures).expect("above 0");
        self
    }

    pub fn with_trusted_proxy_hops(mut self, hops: usize) -> Self {
        self.http.trusted_proxy_hops = hops;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.http.request_timeout = timeout;
        self
    }
}

/// The application, serving on a free port of 127.0.0.1, with its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// A store on the test database directly (not through any proxy), for arranging and asserting.
    pub store: Store,
    /// The store instance the app itself serves with (SQLite's change broadcast lives in it).
    pub served_store: Store,
    pub db: TestDatabase,
    /// Present when spawned with `through_proxy`.
    pub proxy: Option<proxy::Proxy>,
    /// The app's rate limiter, to ask whether Redis is in use.
    pub limits: Arc<RateLimiter>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

static TELEMETRY: AtomicBool = AtomicBool::new(false);

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Settings::default()).await
    }

    /// The app with default settings, a fresh account group and a `signals:write` key on it.
    pub async fn with_writer(backend: Backend) -> (Self, AccountGroupId, String) {
        Settings::default().spawn_with_writer(backend).await
    }

    pub async fn spawn_with(backend: Backend, settings: Settings) -> Self {
        if !TELEMETRY.swap(true, Ordering::SeqCst) && std::env::var_os("TEST_LOG").is_some() {
            signal_scans::telemetry::init(
                signal_scans::telemetry::LogFormat::Text,
                &signal_scans::cli::config::log_filter(),
            )
            .expect("TEST_LOG with a valid RUST_LOG");
        }
        let db = TestDatabase::create(backend).await;
        let proxy = match settings.through_proxy {
            true => Some(proxy::Proxy::start(db.server_addr().await).await),
            false => None,
        };
        let app_url = match &proxy {
            Some(proxy) => proxy.url_for(&db.url),
            None => db.url.clone(),
        };
        let mut options = store_options(&app_url, settings.db_timeout);
        options.max_connections = settings.db_max_connections;
        options.write_batches = settings.db_write_batches;
        let mut app_settings = app_settings(options, settings.key_cache_ttl, settings.http);
        app_settings.feed_poll = settings.feed_poll;
        app_settings.stream_batch = settings.stream_batch;
        let application = Application::build_with_routes(app_settings, settings.extra_routes)
            .await
            .expect("the application starts on a fresh database");
        let served_store = application.state().store.clone();
        let limits = application.state().limits.clone();
        // Arranging and asserting go to the database directly, past any proxy.
        let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
        let addr = application.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async {
            let _ = stop.await;
        }));
        Self {
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            store,
            served_store,
            db,
            proxy,
            limits,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Asks the server to stop and waits until it has: in-flight requests finish first.
    pub async fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    /// A key with `permissions` on `access`; returns (secret, key id).
    pub async fn key_with(
        &self,
        permissions: &[Permission],
        access: AccountGroupAccess,
        expires_at: Option<OffsetDateTime>,
    ) -> (String, Uuid) {
        let new_key = NewApiKey::generate();
        let key = self
            .store
            .create_key(&KeyToCreate {
                name: "test key".into(),
                hash: new_key.hash,
                permissions: permissions.to_vec(),
                access,
                // The store stamps creation and expiry from one clock reading: the lifetime that
                // ends at `expires_at` by this process's clock.
                expires_in: expires_at.map(|at| at - OffsetDateTime::now_utc()),
            })
            .await
            .expect("create key");
        (new_key.secret, key.id)
    }

    /// A key with `permissions` on exactly `groups`, never expiring; returns (secret, key id).
    pub async fn key_for(
        &self,
        permissions: &[Permission],
        groups: &[AccountGroupId],
    ) -> (String, Uuid) {
        self.key_with(permissions, AccountGroupAccess::Only(groups.to_vec()), None)
            .await
    }

    /// A `signals:write` key on `group`.
    pub async fn writer(&self, group: &AccountGroupId) -> String {
        self.key_for(&[Permission::SignalsWrite], &[*group]).await.0
    }

    /// A `signals:read` key on `group`.
    pub async fn reader(&self, group: &AccountGroupId) -> String {
        self.key_for(&[Permission::SignalsRead], &[*group]).await.0
    }

    /// A fresh group, a writer's key on it and a queued scan of it: where most cancel tests start.
    pub async fn writer_and_queued_scan(&self) -> (AccountGroupId, String, ScanId) {
        let group = group();
        let key = self.writer(&group).await;
        let scan = self.scan(&group, ScanStatus::Queued).await;
        (group, key, scan)
    }

    pub async fn scan(&self, group: &AccountGroupId, status: ScanStatus) -> ScanId {
        self.store
            .create_scan(group, status)
            .await
            .expect("create scan")
            .id
    }

    pub async fn status_of(&self, scan: &ScanId) -> ScanStatus {
        self.store
            .find_scan(None, scan)
            .await
            .expect("read scan")
            .expect("scan exists")
            .status
    }

    /// A second instance of the service on the same database, as a horizontally scaled
    /// deployment runs it: its own key cache.
    pub async fn replica(&self) -> Replica {
        self.replica_with(&Settings::default().http).await
    }

    /// A second instance with its own HTTP settings.
    pub async fn replica_with(&self, http: &HttpSettings) -> Replica {
        let defaults = Settings::default();
        let mut options = store_options(&self.db.url, defaults.db_timeout);
        // As many batches of changes at once as it has connections, so that a test can force
        // races at the database with a replica's concurrent writes.
        options.write_batches = options.max_connections;
        let mut settings = app_settings(options, defaults.key_cache_ttl, http.clone());
        settings.shutdown_timeout = Duration::ZERO;
        let application = Application::build(settings)
            .await
            .expect("a replica starts");
        let limits = application.state().limits.clone();
        let addr = application.local_addr().unwrap();
        let server = tokio::spawn(application.run_until(std::future::pending()));
        Replica {
            addr,
            limits,
            server,
        }
    }

    /// `GET path` with `key` as a Bearer token.
    /// The OpenAPI document the application serves.
    pub async fn document(&self) -> serde_json::Value {
        let response = self
            .client
            .get(self.url("/openapi.json"))
            .send()
            .await
            .expect("the document is served");
        assert_eq!(response.status(), 200);
        response.json().await.expect("the document is JSON")
    }

    pub async fn get(&self, key: &str, path: &str) -> ApiResponse {
        ApiResponse::from(
            self.client
                .get(self.url(path))
                .bearer_auth(key)
                .send()
                .await
                .expect("request is answered"),
        )
        .await
    }

    /// `POST …/cancel` with `key` as a Bearer token (none when `None`).
    pub async fn cancel(&self, key: Option<&str>, group: &str, scan: &str) -> ApiResponse {
        let mut request = self.client.post(self.url(&cancel_path(group, scan)));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        ApiResponse::from(request.send().await.expect("request is answered")).await
    }

    /// A cancel that must answer 200 (arranging a test, or a step that must succeed).
    pub async fn cancel_ok(&self, key: &str, group: &AccountGroupId, scan: &ScanId) -> ApiResponse {
        let response = self.cancel(Some(key), group.as_str(), scan.as_str()).await;
        assert_eq!(response.status, 200, "{response:?}");
        response
    }
}

/// Another instance of the service; see [`TestApp::replica`].
pub struct Replica {
    pub addr: SocketAddr,
    pub limits: Arc<RateLimiter>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The application's settings in tests: port 0 on loopback, and production's defaults for what
/// the arguments do not say (connection limits, feed poll, stream batching, time to drain).
fn app_settings(store: StoreOptions, key_cache_ttl: Duration, http: HttpSettings) -> AppSettings {
    AppSettings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        store,
        key_cache_ttl,
        http,
        ..serve_defaults().settings()
    }
}

/// The store at `url` with calls bounded by `timeout`, and production's defaults for the rest.
pub fn store_options(url: &str, timeout: Duration) -> StoreOptions {
    StoreOptions {
        url: SecretString::from(url.to_owned()),
        timeout,
        ..serve_defaults().database.store_options()
    }
}

/// A fresh, migrated database with no service on it, and a store to arrange with: for a test that
/// starts the real binary on it.
pub async fn migrated_database(backend: Backend) -> (TestDatabase, Store) {
    let db = TestDatabase::create(backend).await;
    let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    store.migrate().await.expect("migrations run");
    (db, store)
}

/// A key with `permission` on `groups`, made straight in `store`, for a server process that shares
/// the database: its secret.
pub async fn key_in(store: &Store, permission: Permission, groups: &[AccountGroupId]) -> String {
    key_and_id_in(store, permission, groups).await.0
}

/// [`key_in`], with the key's id (to revoke it).
pub async fn key_and_id_in(
    store: &Store,
    permission: Permission,
    groups: &[AccountGroupId],
) -> (String, Uuid) {
    let new_key = NewApiKey::generate();
    let key = store
        .create_key(&KeyToCreate {
            name: "test key".into(),
            hash: new_key.hash,
            permissions: vec![permission],
            access: AccountGroupAccess::Only(groups.to_vec()),
            expires_in: None,
        })
        .await
        .expect("create key");
    (new_key.secret, key.id)
}

pub fn cancel_path(group: &str, scan: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/{scan}/cancel")
}

/// A response read whole: status, headers and the JSON body.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl ApiResponse {
    /// Sends `request` and reads its answer whole (see [`Self::from`]).
    pub async fn of(request: reqwest::RequestBuilder) -> Self {
        Self::from(request.send().await.expect("the request is answered")).await
    }

    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body is readable");
        Self::read(status, headers, &text)
    }

    /// An answer read by other means (curl's output), held to the same envelope.
    pub fn read(status: StatusCode, headers: reqwest::header::HeaderMap, text: &str) -> Self {
        let body = serde_json::from_str(text)
            .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"));
        let response = Self {
            status,
            headers,
            body,
        };
        response.assert_is_envelope();
        response
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Every response, success or not, is the documented envelope with a trace id that matches
    /// the `X-Request-Id` header, marked `nosniff` and `no-store` (the contract, section 3).
    fn assert_is_envelope(&self) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let marked = ["x-content-type-options", "cache-control"].map(|name| self.header(name));
        assert_eq!(marked, [Some("nosniff"), Some("no-store")], "{self:?}");
        let object = self.body.as_object().expect("body is an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "error", "success", "traceId"], "{self:?}");
        let trace_id = self.body["traceId"].as_str().expect("traceId is a string");
        assert!(!trace_id.is_empty());
        assert_eq!(self.header("x-request-id"), Some(trace_id));
        let success = self.body["success"].as_bool().expect("success is a bool");
        assert_eq!(success, self.status.is_success(), "{self:?}");
        assert_instants_are_fixed_width(&self.body["data"]);
        if success {
            assert!(self.body["error"].is_null(), "{self:?}");
        } else {
            assert!(self.body["data"].is_null(), "{self:?}");
            let error = self.body["error"].as_object().expect("error is an object");
            let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "details", "message"], "{self:?}");
            assert!(error["code"].is_string() && error["message"].is_string());
            assert!(error["details"].is_string(), "{self:?}");
            let message = error["message"].as_str().unwrap();
            assert!(
                documented_messages(self.status.as_u16()).contains(&message),
                "not the contract's message for {}: {self:?}",
                self.status
            );
            // The cause of a 500, 502 or 503 is logged, never told: its details are fixed.
            let fixed = match self.status.as_u16() {
                500 => Some("an error of the service; its cause is logged under this traceId"),
                502 | 503 => {
                    Some("the database is unavailable or did not answer in time; retry later")
                }
                _ => None,
            };
            if let Some(fixed) = fixed {
                assert_eq!(error["details"], fixed, "{self:?}");
            }
        }
    }

    /// Asserts an error answer and returns its `details`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        self.body["error"]["details"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn trace_id(&self) -> &str {
        self.body["traceId"].as_str().unwrap()
    }
}

/// Every instant in `value` (a field `at` or named `…At`) is written in the contract's one form,
/// UTC with six fractional digits (`2026-12-07T10:00:00.123456Z`), so that text order is time
/// order; null where the moment has not come.
#[track_caller]
fn assert_instants_are_fixed_width(value: &Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                if name == "at" || name.ends_with("At") {
                    let text = field.as_str().unwrap_or("");
                    let shape = text.bytes().enumerate().all(|(at, byte)| match at {
                        4 | 7 => byte == b'-',
                        10 => byte == b'T',
                        13 | 16 => byte == b':',
                        19 => byte == b'.',
                        26 => byte == b'Z',
                        _ => byte.is_ascii_digit(),
                    });
                    assert!(
                        field.is_null() || (text.len() == 27 && shape),
                        "{name}: {field}"
                    );
                } else {
                    assert_instants_are_fixed_width(field);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(assert_instants_are_fixed_width),
        _ => {}
    }
}

/// The `message`s the contract's table (§3) gives a status: fixed per status, but for a 422,
/// whose words are the operation's (a cancel, a runner's move, a creation).
pub fn documented_messages(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["Request validation failed"],
        401 => &["Invalid or missing API key"],
        403 => &["Missing required permission"],
        404 => &["Resource not found"],
        405 => &["Method not allowed"],
        410 => &["Cursor expired"],
        422 => &[CANCEL_422, MOVE_422, IDEMPOTENCY_422],
        429 => &["Rate limit exceeded"],
        500 => &["Internal server error"],
        502 => &["Upstream service error"],
        503 => &["Service not ready"],
        _ => &[],
    }
}

/// A 422's `message` on a cancel, on a runner's move, and on a creation whose `Idempotency-Key`
/// was used for another group.
pub const CANCEL_422: &str = "Scan is not in a cancellable status";
pub const MOVE_422: &str = "Scan is not in a status that allows this change";
pub const IDEMPOTENCY_422: &str = "Idempotency key already used";
/// The details of a 410 for a cursor from before changes the retention deleted (the other 410,
/// a cursor that is no place in the history, has its own).
pub const SWEPT_410: &str = "changes after this cursor are no longer kept (AUDIT_RETENTION_DAYS): \
    reconnect without a cursor, then re-read the current state of your scans";

/// Whether this run is CI's, where nothing may be skipped: `CI` set to anything but empty, `0`
/// or `false` (CI services set `true`, `1` or their own name).
pub fn under_ci() -> bool {
    is_ci_value(std::env::var("CI").ok().as_deref())
}

fn is_ci_value(value: Option<&str>) -> bool {
    value.is_some_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

#[test]
fn ci_is_any_value_but_empty_0_and_false() {
    for (value, ci) in [
        (None, false),
        (Some(""), false),
        (Some("0"), false),
        (Some("false"), false),
        (Some("FALSE"), false),
        (Some("true"), true),
        (Some("1"), true),
        (Some("yes"), true),
        (Some("woodpecker"), true),
    ] {
        assert_eq!(is_ci_value(value), ci, "CI={value:?}");
    }
}

/// Whether the Redis that shared-limit tests use answers a PING (`TEST_REDIS_URL`, default
/// redis://127.0.0.1:6379, read by the `redis` crate: a password, a `/db` or no port all work).
/// Without it those tests are skipped and say so; under CI they fail.
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let unreachable = match ping_redis(&url).await {
        Ok(()) => return Some(url),
        Err(error) => error,
    };
    let how = format!(
        "Redis is not reachable at {url} ({unreachable}); set TEST_REDIS_URL or start it with \
         `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no`."
    );
    if under_ci() {
        panic!("{how} Under CI the shared-limit tests must run.");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTE: a shared-limit test was NOT run. {how}\n"
    );
    None
}

async fn ping_redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|error| error.to_string())?;
    let ping = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// The TCP address a Redis URL names, as the `redis` crate reads it (for a proxy to forward to).
pub async fn redis_server_addr(url: &str) -> SocketAddr {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().expect("a Redis URL");
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        panic!("{url}: the shared-limit tests need Redis over plain TCP");
    };
    tokio::net::lookup_host((host.as_str(), *port))
        .await
        .expect("Redis host resolves")
        .next()
        .expect("Redis host has an address")
}

/// `n` fresh ids that name nothing.
pub fn group() -> AccountGroupId {
    AccountGroupId::generate()
}

/// Each id as a string, in order.
pub fn id_strings(scans: &[ScanId]) -> Vec<String> {
    scans.iter().map(ToString::to_string).collect()
}

/// The scan lifecycle over HTTP: a runner's key, and requests that carry a body.
impl TestApp {
    /// A runner's key on `group`: `signals:run` and `signals:read`.
    pub async fn runner(&self, group: &AccountGroupId) -> String {
        self.key_with(
            &[Permission::SignalsRun, Permission::SignalsRead],
            AccountGroupAccess::Only(vec![*group]),
            None,
        )
        .await
        .0
    }

    /// `POST path` with `key` as a Bearer token and `body` (JSON text) when given.
    pub async fn post(&self, key: &str, path: &str, body: Option<&str>) -> ApiResponse {
        let mut request = self.client.post(self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        ApiResponse::from(request.send().await.expect("request is answered")).await
    }
}

/// `POST …/signals/scans`: where a client starts a scan.
pub fn scans_path(group: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans")
}

/// `POST …/scans/{scanId}/{action}`: a runner's move (start, complete, fail).
pub fn move_path(group: &str, scan: &str, action: &str) -> String {
    format!("/v1/accounts/{group}/signals/scans/{scan}/{action}")
}

/// A running scan of `group` written with plain SQL: no store, so no publisher and no hint.
pub async fn silent_running_scan(db: &mut PgConnection, group: &AccountGroupId) -> ScanId {
    let scan = ScanId::generate();
    sqlx::query(
        "INSERT INTO signal_scans (id, account_group_id, status, started_at)
         VALUES ($1, $2, 'running', now())",
    )
    .bind(scan.as_str())
    .bind(group.as_str())
    .execute(&mut *db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
         VALUES ($1, NULL, 'running', now())",
    )
    .bind(scan.as_str())
    .execute(&mut *db)
    .await
    .unwrap();
    scan
}

/// The first four of a retrying loop's logged failures wait 100, 200, 400 and 800 ms: a back-off
/// that doubles from the least.
pub fn assert_backs_off_doubling(failures: &[Value]) {
    let retries: Vec<u64> = failures
        .iter()
        .map(|failure| failure["retry_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(retries[..4], [100, 200, 400, 800], "{failures:#?}");
}

/// Makes every insert of a scan take `seconds` longer (PostgreSQL: a trigger that sleeps), so a
/// creation can be caught between its statement's start and its end.
pub async fn slow_scan_inserts(app: &TestApp, seconds: f64) {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON signal_scans
             FOR EACH ROW EXECUTE FUNCTION slow();"
        )))
        .await
        .unwrap();
}
