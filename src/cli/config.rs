//! Settings from the environment, each also a flag; validated once, secrets redacted in Debug.
//! Every default is written here, once (in clap's attributes), and every environment variable the
//! program reads is read here; the layers below take plain values.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use secrecy::SecretString;

use super::BadInput;
use crate::app::Settings;
use crate::http::HttpSettings;
use crate::http::changes::StreamSettings;
use crate::http::rate_limit::{RateLimit, RedisSettings};
use crate::http::server::ConnectionLimits;
use crate::secret_url::SecretUrl;
use crate::store::{SqliteStore, StoreOptions};
use crate::telemetry::LogFormat;

/// Where `serve` listens and `healthcheck` asks, unless `LISTEN_ADDR` says otherwise.
const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";

/// How the program logs: every command's flag.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: human text or one JSON object per line (on stderr).
    #[arg(
        long,
        env = "LOG_FORMAT",
        global = true,
        value_enum,
        ignore_case = true,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// `REDIS_KEY_PREFIX`'s check. clap's own for an empty value says `none was supplied`, which an
/// operator who set it empty (versions before 2026-12-07 took that as no prefix) reads as unset.
fn non_empty_prefix(prefix: &str) -> Result<String, &'static str> {
    match prefix {
        "" => Err(
            "it is empty: give a prefix (unset, it is `signal-scans:`), so that the service's \
            keys do not mix with whatever else shares the Redis database",
        ),
        prefix => Ok(prefix.to_owned()),
    }
}

/// `LOG_FORMAT` as it is when the command line itself was refused, for the one line that says
/// so: text unless it says json.
pub fn log_format_before_parsing() -> LogFormat {
    std::env::var("LOG_FORMAT")
        .ok()
        .and_then(|format| clap::ValueEnum::from_str(format.trim(), true).ok())
        .unwrap_or(LogFormat::Text)
}

/// The log filter: `RUST_LOG` (tracing's `EnvFilter` syntax), else the service's own; not a flag.
/// An empty `RUST_LOG` counts as unset (as an empty filter it kept errors only, the "serving"
/// line included, which looks like a process that never started).
pub fn log_filter() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| !filter.trim().is_empty())
        .unwrap_or_else(|| "info,sqlx=warn".to_owned())
}

/// `TOKIO_WORKER_THREADS`: the runtime's worker threads (unset: Tokio's default, one per CPU;
/// empty: the same, counted here). Read here rather than by Tokio, which panics with a backtrace
/// on a bad value, an empty one included, whenever the runtime is not given a count.
pub fn worker_threads() -> Result<Option<usize>, String> {
    // Far above any machine's CPUs: a larger count was taken, and its threads' space asked for
    // at once aborted the process (`memory allocation of 799999999992 bytes failed`).
    const MAX_WORKER_THREADS: usize = 1024;
    let Some(raw) = std::env::var_os("TOKIO_WORKER_THREADS") else {
        return Ok(None);
    };
    let raw = raw.to_string_lossy();
    if raw.trim().is_empty() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        return Ok(Some(cpus));
    }
    match raw.trim().parse::<usize>() {
        Ok(threads @ 1..=MAX_WORKER_THREADS) => Ok(Some(threads)),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS must be a whole number of threads from 1 to \
             {MAX_WORKER_THREADS}, not {raw:?}"
        )),
    }
}

/// The API key the `--server` commands send: from `SIGNAL_SCANS_API_KEY` only, never a flag (a
/// flag would show the key in `ps`).
pub fn api_key(command: &str) -> anyhow::Result<String> {
    // Set but empty is unset too: sent, it was refused as a failed authentication, and twenty
    // of those a minute blocked the host's good keys as well.
    let key = std::env::var("SIGNAL_SCANS_API_KEY")
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            BadInput(format!(
                "{command} --server needs the API key in SIGNAL_SCANS_API_KEY"
            ))
        })?;
    // A key read from a file often ends in a line break, which no header may hold: said here,
    // by name, rather than as the HTTP client's "failed to parse header value".
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') || key.trim() != key {
        bail!(BadInput(
            "SIGNAL_SCANS_API_KEY holds white space at its start or end, a line break or another \
             character no API key has"
                .into()
        ));
    }
    Ok(key)
}

/// How long `scans watch --server` waits for a whole event or keep-alive before it drops the
/// stream and asks again: four keep-alives at the server's default `STREAM_KEEPALIVE_MS` (15 s).
/// A connection that a network device dropped without a word gives no error, and would be waited
/// on for good.
const WATCH_SILENCE: Duration = Duration::from_secs(60);

/// `scans watch --server`'s silence: [`WATCH_SILENCE`], or `SCANS_WATCH_SILENCE_MS`, hidden (not
/// a flag, not documented): for the tests, which cannot wait a minute to see a stream dropped.
#[doc(hidden)]
pub fn watch_silence() -> anyhow::Result<Duration> {
    let Ok(raw) = std::env::var("SCANS_WATCH_SILENCE_MS") else {
        return Ok(WATCH_SILENCE);
    };
    match raw.trim().parse::<u64>() {
        Ok(ms) if ms >= 1 => Ok(Duration::from_millis(ms)),
        _ => Err(BadInput(format!(
            "SCANS_WATCH_SILENCE_MS must be a whole number of milliseconds from 1, not {raw:?}"
        ))
        .into()),
    }
}

/// Settings of `healthcheck`.
#[derive(Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// Address and port of the service to ask.
    #[arg(long, env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,
}

/// How to reach the database: shared by every command that needs it.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// postgres://user:password@host:5432/db for PostgreSQL, or sqlite://path/to/file.db for the
    /// embedded store [default: sqlite://data/signal-scans.db]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretUrl>,

    /// Every database read answers within this many milliseconds, or the request gets a 502. A
    /// write waits this long for its turn or connection and its statements (also PostgreSQL's
    /// statement_timeout, whose answer is awaited a second longer); a COMMIT sent is not cut short.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub db_timeout_ms: u64,

    /// Most connections this process's pool opens to the database (on SQLite one of them is the
    /// writes' own and the reads share the rest, at least one, so 1 opens two; on PostgreSQL the
    /// change notifications' publisher and listener add one each).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// PostgreSQL: at most this many batches of status changes commit at once (group commit;
    /// never more than DB_MAX_CONNECTIONS). Fewer batches at once make each carry more changes,
    /// and each change cost the database less; more keep writes going while a batch waits on
    /// another session's lock. SQLite commits one batch at a time.
    #[arg(long, env = "DB_WRITE_BATCHES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_write_batches: u32,

    /// PostgreSQL: committed status changes gather this many milliseconds before one
    /// notification tells listeners of them all.
    #[arg(long, env = "PUBLISH_INTERVAL_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub publish_interval_ms: u64,

    /// Readers of the change feed read the audit trail at least this often, notification or
    /// not: the latest a change is delivered when its notification was lost.
    #[arg(long, env = "FEED_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub feed_poll_ms: u64,
}

/// The embedded store, used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/signal-scans.db";

impl DatabaseArgs {
    /// The database to use: `DATABASE_URL`, else the embedded default.
    pub fn url(&self) -> SecretUrl {
        self.database_url
            .clone()
            .unwrap_or_else(|| SecretUrl::from(DEFAULT_DATABASE_URL.to_owned()))
    }

    pub fn is_default(&self) -> bool {
        self.database_url.is_none()
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            url: SecretString::from(self.url().expose()),
            timeout: Duration::from_millis(self.db_timeout_ms),
            max_connections: self.db_max_connections,
            write_batches: self.db_write_batches,
            publish_interval: Duration::from_millis(self.publish_interval_ms),
        }
    }

    pub fn feed_poll(&self) -> Duration {
        Duration::from_millis(self.feed_poll_ms)
    }

    /// The file of an embedded (SQLite) store, `None` for PostgreSQL or an in-memory store.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        SqliteStore::file_of(self.url().expose())
    }
}

/// Settings of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address and port to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,

    /// A client must send a request's whole header block within this many milliseconds, or its
    /// connection is closed (slow-header attacks).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_timeout_ms: u64,

    /// A connection with no request in progress for this many milliseconds is closed (a response
    /// still being written to a slow reader is in progress while its bytes move).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub http_idle_timeout_ms: u64,

    /// Connections open at once in this process; past it, new ones wait in the accept backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Requests one HTTP/2 connection may have in progress at once.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_concurrent_streams: u32,

    /// Sustained requests per second allowed to each API key.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value = "20")]
    pub rate_limit_per_second: NonZeroU32,

    /// Requests an API key may send at once (its bucket's size, refilled at the sustained rate).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value = "40")]
    pub rate_limit_burst: NonZeroU32,

    /// Failed authentications a client address may make per minute before it gets 429.
    #[arg(long, env = "AUTH_FAILURES_PER_MINUTE", default_value = "20")]
    pub auth_failures_per_minute: NonZeroU32,

    /// Load balancers in front of the service whose X-Forwarded-For entries are trusted to name
    /// the client (0: the peer address is the client).
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=10))]
    pub trusted_proxy_hops: u8,

    /// On SIGTERM or Ctrl-C, in-flight requests get this long to finish before the process exits
    /// (a second SIGTERM or Ctrl-C: at once).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_timeout_ms: u64,

    /// Keep rate limits in this Redis, shared by every replica (unset: per process).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretUrl>,

    /// Prefix of every Redis key this service writes; not empty (the service's keys would mix
    /// with those of whatever else shares the Redis database).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "signal-scans:",
          value_parser = non_empty_prefix)]
    pub redis_key_prefix: String,

    /// How long an authenticated API key is remembered in-process (0 turns the cache off). At
    /// most 1000: a revoked key must stop working within a second on every instance.
    #[arg(long, env = "KEY_CACHE_TTL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub key_cache_ttl_ms: u64,

    /// Serve the interactive API reference at /docs: true or false.
    #[arg(long, env = "DOCS_ENABLED", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::value_parser!(bool))]
    pub docs_enabled: bool,

    /// On an empty database, create a demo key and scans and print curl commands to try.
    #[arg(long)]
    pub demo: bool,

    /// Change streams send a `: keep-alive` comment this often, and check the key again.
    #[arg(long, env = "STREAM_KEEPALIVE_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub stream_keepalive_ms: u64,

    /// Change streams one API key may hold open at once on this instance.
    #[arg(long, env = "STREAM_MAX_PER_KEY", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub stream_max_per_key: u64,

    /// While changes keep coming, this instance's change streams read the audit trail at most
    /// this often (0: on every notification), so that one read gathers many notifications'
    /// changes: each read costs the database the same per instance however few rows it finds.
    /// A stream hears of a change up to this much later under load; after a quiet spell, at once.
    #[arg(long, env = "STREAM_BATCH_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub stream_batch_ms: u64,

    /// A change stream ends after this many milliseconds; its client reconnects and
    /// authenticates again.
    #[arg(long, env = "STREAM_MAX_AGE_MS", default_value_t = 3_600_000,
          value_parser = clap::value_parser!(u64).range(1000..=86_400_000))]
    pub stream_max_age_ms: u64,

    /// Audit rows (every scan's status changes, read by `GET …/events` and the change streams)
    /// older than this many days are deleted in the background, a small batch at a time; a
    /// stream cursor from before deleted changes of its group answers 410. Unset (the default):
    /// every row is kept.
    #[arg(long, env = "AUDIT_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub audit_retention_days: Option<u32>,

    /// A request whose answer has not started after this many milliseconds answers 500 (an open
    /// change stream is not cut; a body still arriving answers 400). Keep it above the longest a
    /// request that writes may take: 5 × DB_TIMEOUT_MS plus 2750, plus DB_TIMEOUT_MS −
    /// KEY_CACHE_TTL_MS while the key cache is on and that is positive (`serve` warns when it is
    /// not).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
}

impl ServeArgs {
    /// The longest a request that writes may take with these settings (see
    /// `http::deadline::longest_writing_request`).
    pub fn longest_writing_request(&self) -> Duration {
        crate::http::deadline::longest_writing_request(
            Duration::from_millis(self.database.db_timeout_ms),
            self.key_cache_ttl(),
        )
    }

    /// Whether the request deadline outlasts the longest request that writes; a shorter one may
    /// answer 500 for a write that then commits.
    pub fn request_timeout_outlasts_a_write(&self) -> bool {
        Duration::from_millis(self.request_timeout_ms) > self.longest_writing_request()
    }

    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            rate_limit: RateLimit {
                per_second: self.rate_limit_per_second,
                burst: self.rate_limit_burst,
            },
            auth_failures_per_minute: self.auth_failures_per_minute,
            trusted_proxy_hops: self.trusted_proxy_hops.into(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            redis: self.redis_url.as_ref().map(|url| RedisSettings {
                url: url.clone(),
                prefix: self.redis_key_prefix.clone(),
            }),
            streams: StreamSettings {
                keepalive: Duration::from_millis(self.stream_keepalive_ms),
                max_per_key: self.stream_max_per_key as usize,
                max_age: Duration::from_millis(self.stream_max_age_ms),
            },
            docs_enabled: self.docs_enabled,
        }
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_millis(self.http_header_timeout_ms),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
            max_connections: self.max_connections,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
        }
    }

    /// The application's settings, as `serve` starts it.
    pub fn settings(&self) -> Settings {
        Settings {
            listen_addr: self.listen_addr,
            store: self.database.store_options(),
            key_cache_ttl: self.key_cache_ttl(),
            feed_poll: self.database.feed_poll(),
            stream_batch: Duration::from_millis(self.stream_batch_ms),
            audit_retention: self
                .audit_retention_days
                .map(|days| Duration::from_secs(u64::from(days) * 24 * 60 * 60)),
            http: self.http_settings(),
            connections: self.connection_limits(),
            shutdown_timeout: self.shutdown_timeout(),
        }
    }

    pub fn key_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.key_cache_ttl_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_database_settings_hides_the_password() {
        use clap::Parser;
        #[derive(Parser)]
        struct Migrate {
            #[command(flatten)]
            args: DatabaseArgs,
        }
        let args = Migrate::try_parse_from([
            "migrate",
            "--database-url",
            "postgres://app:hunter2@db/scans",
        ])
        .unwrap()
        .args;
        assert!(!format!("{args:?}").contains("hunter2"));
        assert!(!format!("{}", args.url()).contains("hunter2"));
        assert!(format!("{args:?}").contains("db/scans"), "{args:?}");
    }

    #[test]
    fn debug_of_serve_settings_hides_the_redis_and_database_passwords() {
        use clap::Parser;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let serve = Serve::try_parse_from([
            "serve",
            "--database-url",
            "postgres://app:hunter2@db/scans",
            "--redis-url",
            "redis://:hunter3@redis:6379",
        ])
        .unwrap();
        let shown = format!("{:?} {:?}", serve.args, serve.args.http_settings());
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(shown.contains("redis:6379"), "{shown}");
    }
}
