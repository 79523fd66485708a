//! Limits shared by every replica through Redis: the same GCRA as in-process, run atomically in
//! a Lua script against Redis's own clock, so two replicas together allow what one would.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::{Decision, RateLimit};

/// How long a limit check may wait for Redis before the in-process limits decide instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA on one key. ARGV: emission interval (ms per cell), burst (cells), cost (1 to spend a
/// cell, 0 to only look). Returns {allowed, wait_ms, remaining}.
const GCRA: &str = r"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission * cost
local allow_at = new_tat - emission * burst
if cost == 0 then allow_at = allow_at + emission end
if now < allow_at then
  return {0, math.ceil(allow_at - now), 0}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
return {1, 0, math.floor((now - allow_at) / emission)}
";

/// Where the shared limits live.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    pub prefix: String,
}

pub struct SharedLimits {
    connection: OnceCell<ConnectionManager>,
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
pub enum SharedError {
    #[error("redis is not connected")]
    NotConnected,
    #[error("redis did not answer within {} ms", REDIS_TIMEOUT.as_millis())]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl SharedLimits {
    pub fn new(
        settings: &RedisSettings,
        limit: RateLimit,
        auth_failures_per_minute: NonZeroU32,
    ) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|_| "REDIS_URL is not a valid Redis URL".to_owned())?;
        Ok(Self {
            connection: OnceCell::new(),
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
    pub fn spawn_connector(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT));
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
                        tracing::warn!(%error, "cannot reach Redis; limits stay per instance meanwhile");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connection.initialized()
    }

    async fn gcra(
        &self,
        key: String,
        emission_ms: f64,
        burst: u32,
        cost: u8,
    ) -> Result<(bool, u64, u32), SharedError> {
        let mut connection = self
            .connection
            .get()
            .ok_or(SharedError::NotConnected)?
            .clone();
        let mut invocation = self.script.key(key);
        invocation.arg(emission_ms).arg(burst).arg(cost);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut connection);
        let (allowed, wait_ms, remaining) = tokio::time::timeout(REDIS_TIMEOUT, call)
            .await
            .map_err(|_| SharedError::Timeout)??;
        Ok((
            allowed == 1,
            u64::try_from(wait_ms).unwrap_or(0),
            u32::try_from(remaining).unwrap_or(0),
        ))
    }

    pub async fn check_key(&self, key: &Uuid) -> Result<Decision, SharedError> {
        let (allowed, wait_ms, remaining) = self
            .gcra(
                format!("{}key:{key}", self.prefix),
                self.key_emission_ms,
                self.key_burst,
                1,
            )
            .await?;
        Ok(match allowed {
            true => Decision::Allowed { remaining },
            false => Decision::Limited {
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            },
        })
    }

    pub async fn auth_blocked(&self, client: IpAddr) -> Result<Option<u64>, SharedError> {
        self.auth_failures(client, 0).await
    }

    pub async fn record_auth_failure(&self, client: IpAddr) -> Result<Option<u64>, SharedError> {
        self.auth_failures(client, 1).await
    }

    /// Looks at (`cost` 0) or spends (`cost` 1) `client`'s failure allowance; `Some(seconds)`
    /// while it is exhausted.
    async fn auth_failures(&self, client: IpAddr, cost: u8) -> Result<Option<u64>, SharedError> {
        let key = format!("{}auth-failures:{client}", self.prefix);
        let (allowed, wait_ms, _) = self
            .gcra(key, self.failure_emission_ms, self.failure_burst, cost)
            .await?;
        Ok((!allowed).then(|| wait_ms.div_ceil(1000).max(1)))
    }
}
