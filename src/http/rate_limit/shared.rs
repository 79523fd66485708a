//! Limits shared by every replica through Redis: the same GCRA as in-process, run atomically in
//! a Lua script against Redis's own clock, so two replicas together allow what one would.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{Decision, Failure, RateLimit};
use crate::secret_url::SecretUrl;

/// How long a limit check may wait for Redis before the in-process limits decide instead.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed call, Redis is left alone for this long: each request would otherwise pay the
/// timeout again, for every limit it checks, for the whole outage.
const BACKOFF: Duration = Duration::from_secs(1);

/// How often a process that has not reached Redis since it started (or whose credentials it
/// refused) says so: it tries every second.
const UNREACHABLE_TOLD: Duration = Duration::from_secs(10);

/// GCRA on KEYS[1], spending one cell. ARGV: emission interval (ms per cell), burst (cells).
/// KEYS[2], when given, is a marker set until the next cell is due whenever none is left: when a
/// cell is refused, and when the one spent was the last (how a blocked address is recognised
/// without spending: the request after its last allowed failure is refused before its key is
/// looked up). Returns {allowed, wait_ms, remaining}; wait_ms is the marker's, or 0. The cells left
/// are counted from `tat - now`, a small difference: differences of epoch milliseconds (about
/// 1.7e12, kept to some 2e-4 ms) cost a whole cell at 0.1 ms a cell.
///
/// No allowance leaves `tat` past `now + emission * burst`, nor a marker longer than one
/// emission interval: an entry past that was written by a clock since set back (an NTP step, a
/// failover to a host behind). Held to the bound (and stored so), it refuses for one interval, not
/// for as long as the step. Redis keeps expiry times by the same clock, so such a marker outlives
/// its interval by the step: one longer than an interval is passed over where it is read
/// ([`SharedLimits::auth_blocked`]), and the next failure's refusal sets it anew.
const GCRA: &str = r"
redis.replicate_commands()
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat > now + emission * burst then
  tat = now + emission * burst
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if now < allow_at then
  local wait = math.ceil(allow_at - now)
  if KEYS[2] then redis.call('SET', KEYS[2], '1', 'PX', wait) end
  return {0, wait, 0}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
local remaining = math.floor(burst - 1 - (tat - now) / emission + 1e-6)
local next_wait = math.ceil(new_tat - emission * (burst - 1) - now)
if KEYS[2] and remaining <= 0 and next_wait > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', next_wait)
  return {1, next_wait, 0}
end
return {1, 0, remaining}
";

/// Where the shared limits live.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Redacted in `Debug`: it may carry a password.
    pub url: SecretUrl,
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    pub prefix: String,
}

pub(super) struct SharedLimits {
    connection: OnceCell<ConnectionManager>,
    /// Milliseconds since `started` before which Redis is not asked (0: ask, and the last call
    /// was answered).
    backoff_until: AtomicU64,
    started: Instant,
    client: redis::Client,
    script: redis::Script,
    prefix: String,
    key_emission_ms: f64,
    key_burst: u32,
    failure_emission_ms: f64,
    failure_burst: u32,
}

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub(super) enum SharedError {
    #[error("redis is not connected")]
    NotConnected,
    #[error("redis did not answer within {} ms", REDIS_TIMEOUT.as_millis())]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A recent call failed; Redis is not asked again until the backoff has passed.
    #[error("redis failed a moment ago; backing off")]
    BackingOff,
}

/// Told at `error`: a refused password is a setting to fix, not an outage to wait out.
const CREDENTIALS_REFUSED: &str =
    "Redis refused the credentials of REDIS_URL; limits stay per instance until it accepts them";

/// Whether Redis refused this process's credentials: as a connection is made (at start), or, once
/// its password changed under a running service, on each call (`NOAUTH`, then `WRONGPASS` as the
/// connection comes back).
fn refuses_credentials(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

impl SharedLimits {
    pub(super) fn new(
        settings: &RedisSettings,
        limit: RateLimit,
        auth_failures_per_minute: NonZeroU32,
    ) -> Result<Self, String> {
        let url = settings.url.expose();
        // The redis crate is built without TLS: say so, rather than call a rediss:// URL invalid.
        // Its own error is not passed on, since it may quote the URL and its password.
        let client = redis::Client::open(url).map_err(|_| match url.starts_with("rediss:") {
            true => "REDIS_URL: rediss:// (TLS) is not supported by this build; use redis://",
            false => "REDIS_URL is not a valid Redis URL",
        })?;
        Ok(Self {
            connection: OnceCell::new(),
            backoff_until: AtomicU64::new(0),
            started: Instant::now(),
            client,
            script: redis::Script::new(GCRA),
            prefix: settings.prefix.clone(),
            key_emission_ms: 1000.0 / f64::from(limit.per_second.get()),
            key_burst: limit.burst.get(),
            failure_emission_ms: 60_000.0 / f64::from(auth_failures_per_minute.get()),
            failure_burst: auth_failures_per_minute.get(),
        })
    }

    /// Connects in the background until Redis answers; the connection then reconnects by itself.
    /// Until the first connection, the in-process limits decide.
    pub(super) fn spawn_connector(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            // One attempt a reconnection: the calls that find Redis away ask again once each
            // backoff. The crate's own retries, 100 ms doubling to 3.2 s apart, kept each
            // replica on its own limits for 3.4 to 4.6 s after Redis answered again (the replicas
            // review), the calls meanwhile waiting on a reconnection that slept.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(0);
            let mut told: Option<Instant> = None;
            loop {
                match shared
                    .client
                    .get_connection_manager_with_config(config.clone())
                    .await
                {
                    Ok(connection) => {
                        let _ = shared.connection.set(connection);
                        tracing::info!("rate limits are shared through Redis");
                        return;
                    }
                    Err(error) => {
                        if told.is_none_or(|at| at.elapsed() >= UNREACHABLE_TOLD) {
                            match refuses_credentials(&error) {
                                true => tracing::error!(%error, "{CREDENTIALS_REFUSED}"),
                                false => tracing::warn!(
                                    %error,
                                    "cannot reach Redis; limits stay per instance meanwhile"
                                ),
                            }
                            told = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }

    pub(super) fn is_connected(&self) -> bool {
        self.connection.initialized()
    }

    /// Runs one Redis call within the timeout, unless a recent failure says not to try. A call that
    /// finds its connection closed (Redis restarted, a failover, `CLIENT KILL`: found only by the
    /// next call on it) is made again on the new connection the manager then opens: it failed, and
    /// the backoff kept every replica on its own limits for a second while Redis answered. Made
    /// again, a call whose connection broke after Redis ran it spends its cell twice, once.
    async fn call<T, F>(&self, call: impl Fn(ConnectionManager) -> F) -> Result<T, SharedError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.backoff_until.load(Ordering::Relaxed) {
            return Err(SharedError::BackingOff);
        }
        let connection = self.connection.get().ok_or(SharedError::NotConnected)?;
        let attempts = async {
            match call(connection.clone()).await {
                Err(error) if error.is_connection_dropped() => call(connection.clone()).await,
                result => result,
            }
        };
        let result = match tokio::time::timeout(REDIS_TIMEOUT, attempts).await {
            Ok(result) => result.map_err(SharedError::from),
            Err(_) => Err(SharedError::Timeout),
        };
        if let Err(error) = &result {
            let failed_at = self.started.elapsed();
            let until = (failed_at + BACKOFF).as_millis() as u64;
            let before = self.backoff_until.swap(until, Ordering::Relaxed);
            // One line a backoff: the calls already in flight when Redis stopped answering fail
            // together (a hung Redis: every request of that moment, at its timeout), and only the
            // first of them starts the backoff; in a long outage, once a second.
            if before <= failed_at.as_millis() as u64 {
                match error {
                    SharedError::Redis(refused) if refuses_credentials(refused) => {
                        tracing::error!(%error, "{CREDENTIALS_REFUSED}");
                    }
                    _ => tracing::warn!(
                        %error,
                        "shared rate limits unavailable; using this instance's limits"
                    ),
                }
            }
        } else if self.backoff_until.load(Ordering::Relaxed) != 0
            && self.backoff_until.swap(0, Ordering::Relaxed) != 0
        {
            tracing::info!("Redis answers again; rate limits are shared again");
        }
        result
    }

    async fn gcra(
        &self,
        keys: &[String],
        emission_ms: f64,
        burst: u32,
    ) -> Result<(bool, u64, u32), SharedError> {
        let (allowed, wait_ms, remaining) = self
            .call(|mut connection| async move {
                let mut invocation = self.script.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                invocation.arg(emission_ms).arg(burst);
                invocation
                    .invoke_async::<(i64, i64, i64)>(&mut connection)
                    .await
            })
            .await?;
        Ok((
            allowed == 1,
            u64::try_from(wait_ms).unwrap_or(0),
            u32::try_from(remaining).unwrap_or(0),
        ))
    }

    pub(super) async fn check_key(&self, key: &Uuid) -> Result<Decision, SharedError> {
        let (allowed, wait_ms, remaining) = self
            .gcra(
                &[format!("{}key:{key}", self.prefix)],
                self.key_emission_ms,
                self.key_burst,
            )
            .await?;
        Ok(match allowed {
            true => Decision::Allowed { remaining },
            false => Decision::Limited {
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            },
        })
    }

    /// Seconds `client` must still wait after its last refused failure; looks without spending.
    /// A marker with more than one failure's interval left was set under a clock since set back
    /// (see [`GCRA`]): it blocks nobody.
    pub(super) async fn auth_blocked(&self, client: IpAddr) -> Result<Option<u64>, SharedError> {
        let marker = self.blocked_key(client);
        let remaining_ms = self
            .call(|mut connection| {
                let marker = &marker;
                async move {
                    redis::cmd("PTTL")
                        .arg(marker)
                        .query_async::<i64>(&mut connection)
                        .await
                }
            })
            .await?;
        let longest_ms = self.failure_emission_ms.ceil() as u64;
        Ok(u64::try_from(remaining_ms)
            .ok()
            .filter(|ms| (1..=longest_ms).contains(ms))
            .map(|ms| ms.div_ceil(1000).max(1)))
    }

    /// Spends one of `client`'s failures: see [`Failure`].
    pub(super) async fn record_auth_failure(&self, client: IpAddr) -> Result<Failure, SharedError> {
        let keys = [
            format!("{}auth-failures:{client}", self.prefix),
            self.blocked_key(client),
        ];
        let (allowed, wait_ms, _) = self
            .gcra(&keys, self.failure_emission_ms, self.failure_burst)
            .await?;
        let blocked_for = (wait_ms > 0).then(|| wait_ms.div_ceil(1000).max(1));
        Ok(Failure {
            refused: !allowed,
            blocked_for,
        })
    }

    fn blocked_key(&self, client: IpAddr) -> String {
        format!("{}auth-blocked:{client}", self.prefix)
    }
}
