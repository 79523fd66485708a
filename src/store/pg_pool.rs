//! The PostgreSQL store's connections: a pool (deadpool) of sqlx connections that takes a
//! connection back as soon as its query has run to its end.
//!
//! sqlx's own pool tests every connection it is given back with a round trip to the server (a
//! `Sync` answered by `ReadyForQuery`), in a task spawned for the purpose. On the cancel path
//! that was a second round trip, a task and a second wake-up of a PostgreSQL backend for every
//! request, for nothing, since sqlx reads every query's answer up to its `ReadyForQuery` before
//! the query returns. (In a copy of bench/thin-peer it was a third of that server's CPU per
//! cancel and a sixth of the database's; BENCHMARKS.md as of `36dc824` has the figures.)
//!
//! Here a connection whose query returned `Ok` goes back to the pool at once. Only one whose
//! query failed or was cut short (the store's timeout drops it mid-answer) takes that round
//! trip, in a task of its own, before it is trusted again; it is closed if that fails. And one
//! that sat idle for [`IDLE_CHECK_AFTER`] or more takes it before it is given a query: the server
//! may have ended it meanwhile (`idle_session_timeout`), which would otherwise cost the next
//! request a 502 after every quiet spell.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::PoolUsage;

/// How much longer than the server's `statement_timeout` (the store's timeout) a statement's
/// answer is awaited: the server ends a statement at its timeout, and that end still has to
/// travel back.
pub(super) const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// How long a connection may sit idle before it is asked whether it is still there (one round
/// trip) before its next query. Under load connections are busy and never asked; after a quiet
/// spell the first query pays the round trip instead of a 502.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);
/// How long that round trip may take before the connection is taken as gone.
const IDLE_PING_WITHIN: Duration = Duration::from_millis(250);

/// Opens the pool's connections.
pub(super) struct Connector {
    options: PgConnectOptions,
}

impl managed::Manager for Connector {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        // Boxed: sqlx's connect future is some 18 KB, and it is part of every `get()`'s future,
        // so of every request's, whether or not that request opens a connection.
        Box::pin(PgConnection::connect_with(&self.options)).await
    }

    /// A connection comes back only once it is known to be ready (see [`Checkout`]); one idle
    /// for [`IDLE_CHECK_AFTER`] or more is asked first, and one that does not answer is closed
    /// and another taken or opened. A connection the server closed under a busy pool fails its
    /// next query, which answers 502, and is replaced; the idle ones are then dropped with it
    /// (see [`Checkout::run`]), so that one lost connection is one 502, not one for each of them.
    async fn recycle(
        &self,
        connection: &mut PgConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        // `last_used` counts from the connection's last checkout: its query took a moment of it.
        if metrics.last_used() < IDLE_CHECK_AFTER {
            return Ok(());
        }
        // Bounded: a connection that a device on the way dropped without a word never answers,
        // and the caller's whole wait would go on it. Past the bound it is closed, and another
        // taken or opened.
        match tokio::time::timeout(IDLE_PING_WITHIN, connection.ping()).await {
            Ok(answered) => answered.map_err(RecycleError::Backend),
            Err(_) => Err(RecycleError::message(
                "no answer to a ping of an idle connection",
            )),
        }
    }
}

#[derive(Clone)]
pub(super) struct ConnectionPool {
    pool: managed::Pool<Connector>,
    /// How long a connection whose query was cut short may take to show it is ready again.
    settle_within: Duration,
}

impl ConnectionPool {
    /// A pool of at most `max_connections`, each opened on first need. `timeout` is the store's:
    /// a statement the store gave up on ends within it on the server too (`statement_timeout`).
    pub(super) fn new(options: PgConnectOptions, max_connections: u32, timeout: Duration) -> Self {
        let pool = managed::Pool::builder(Connector { options })
            .max_size(usize::try_from(max_connections).unwrap_or(usize::MAX))
            // The connection given back last is the next one taken: under a steady load below the
            // pool's size the same few stay busy, and the others idle (and are asked before use)
            // rather than each in turn idling past IDLE_CHECK_AFTER and costing a ping.
            .queue_mode(managed::QueueMode::Lifo)
            .build()
            .expect("a pool without timeouts or hooks needs no runtime to build");
        Self {
            pool,
            settle_within: timeout + ANSWER_GRACE,
        }
    }

    /// A connection of the pool for one query, waiting for one if all are in use; the caller
    /// bounds the wait.
    pub(super) async fn checkout(&self) -> Result<Checkout, sqlx::Error> {
        Ok(Checkout {
            object: Some(self.acquire().await?),
            finished: false,
            unusable: false,
            settle_within: self.settle_within,
        })
    }

    /// One of the pool's connections, kept out of the pool until the guard is dropped: how the
    /// tests exhaust the pool.
    pub(super) async fn hold(&self) -> Result<HeldConnection, sqlx::Error> {
        self.acquire().await.map(HeldConnection)
    }

    async fn acquire(&self) -> Result<Object<Connector>, sqlx::Error> {
        self.pool.get().await.map_err(|error| match error {
            // Whatever keeps a session from opening (the server away, the login refused, no
            // such database, one not accepting connections) is the database unavailable: an
            // I/O error, which the store answers as such, carrying the server's own words.
            PoolError::Backend(error @ sqlx::Error::Database(_)) => unavailable(&error),
            PoolError::Backend(error) => error,
            PoolError::Closed => sqlx::Error::PoolClosed,
            _ => sqlx::Error::PoolTimedOut,
        })
    }

    /// The options the pool's connections are opened with.
    pub(super) fn connect_options(&self) -> &PgConnectOptions {
        &self.pool.manager().options
    }

    pub(super) fn usage(&self) -> PoolUsage {
        let status = self.pool.status();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        PoolUsage {
            in_use: count(status.size.saturating_sub(status.available)),
            idle: count(status.available),
            max: count(status.max_size),
        }
    }
}

/// A connection held out of the pool by `ConnectionPool::hold` (not a link: the pool is private).
pub struct HeldConnection(#[allow(dead_code)] Object<Connector>);

/// A connection taken from the pool for one query.
pub(super) struct Checkout {
    object: Option<Object<Connector>>,
    /// The query returned `Ok`: sqlx read its whole answer, the connection is ready.
    finished: bool,
    /// The query's error says the session is of no more use: closed rather than given back.
    unusable: bool,
    settle_within: Duration,
}

impl Checkout {
    /// Runs `query`; the connection goes back to the pool as [`Drop`] says.
    pub(super) async fn run<T>(
        mut self,
        query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let connection = self
            .object
            .as_mut()
            .expect("a checkout holds its connection until dropped");
        let result = query(connection).await;
        self.finished = result.is_ok();
        self.unusable = result.as_ref().is_err_and(session_unusable);
        if self.unusable
            && let Some(pool) = self.object.as_ref().and_then(Object::pool)
        {
            // The server restarted, failed over, or ended its sessions: the idle connections
            // are most likely gone too, or read only as this one, and each would fail its next
            // query with a 502 of its own. New ones are opened as they are needed.
            let dropped = pool.retain(|_, _| false).removed.len();
            tracing::info!(
                dropped,
                "a database session is of no more use; the idle ones are dropped"
            );
        }
        result
    }
}

/// Whether `error` says the session itself is of no more use, rather than that one statement
/// failed: the connection is gone (the server ended the session, or the socket broke), or the
/// session is read only (25006: the server is a standby now, after a failover, or the database
/// was made read only; a session keeps that from its start, so only a new one can write again).
fn session_unusable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // Class 08, connection exception; 57P, the server shutting down or ending sessions
        // (not 57014, a statement cancelled by its timeout, whose connection is fine).
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "25006"
        }),
        _ => false,
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else {
            return;
        };
        if self.finished {
            // Back to the pool.
            return drop(object);
        }
        if self.unusable {
            return drop(Object::take(object));
        }
        // Cut short or failed: the connection may still owe an answer, or be broken. One round
        // trip reads what is left and shows it is ready; until then it stays out of the pool (and
        // counts against its size). Without a runtime (shutting down) it is simply closed.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return drop(Object::take(object));
        };
        let settle_within = self.settle_within;
        runtime.spawn(async move {
            match tokio::time::timeout(settle_within, object.ping()).await {
                Ok(Ok(())) => drop(object),
                _ => drop(Object::take(object)),
            }
        });
    }
}

/// A session the server refused, as the database unavailable: an I/O error, which the store
/// answers as such (502, exit 75), carrying the server's own words and SQLSTATE (sqlx prefixes
/// "error communicating with database").
pub(super) fn unavailable(refused: &sqlx::Error) -> sqlx::Error {
    let words = super::server_words(refused).unwrap_or_else(|| refused.to_string());
    sqlx::Error::Io(std::io::Error::other(format!("session refused: {words}")))
}
