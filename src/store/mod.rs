//! Everything that knows SQL. The rest of the service talks to [`Store`] and never to a driver.

mod migrations;
mod pg_pool;
mod pg_url;
mod pipeline;
mod postgres;
mod publisher;
mod rows;
mod sqlite;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgDatabaseError;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

pub use pg_pool::HeldConnection;
use pipeline::ChangeRequest;
pub use pipeline::{BATCH_SIZE, CANCELS, QUEUE_WAIT};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::feed::{FeedCursor, FeedPage, FeedPosition};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, KeyHash, Permission};
use crate::domain::scan::{
    Actor, ClaimedScan, Creation, IdempotencyKey, Scan, ScanChange, ScanEvent, ScanPageQuery,
    ScanStatus, Transition,
};

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, too slow, or out of connections: the request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with something we did not expect.
    #[error("database error: {0}")]
    Internal(String),
    /// A stored row breaks an invariant of the domain.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The database cannot be used where the settings point: a file this process cannot open
    /// or write, a folder it cannot make.
    #[error("{0}")]
    Config(String),
    /// A setting's value is not one the store can take (`DATABASE_URL` malformed, of another
    /// scheme, naming no file, asking for TLS): nothing was tried; exit 2, as for any bad setting.
    #[error("{0}")]
    Setting(String),
}

/// A hint that status changes may have committed; the audit trail says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// These changes committed (more may have, in another process that has not told yet).
    Changes(Vec<ScanChange>),
    /// Something may have changed: read the trail.
    Unknown,
}

/// Where hints come from: PostgreSQL `LISTEN signal_scan_events` (sent by every process's
/// publisher), or SQLite's in-process broadcast.
pub enum ChangeHints {
    Postgres(sqlx::postgres::PgListener),
    Sqlite(tokio::sync::broadcast::Receiver<ScanChange>),
}

impl ChangeHints {
    /// Waits for the next hint. A lost connection is [`Hint::Unknown`] (the listener connects
    /// again on the next call); an error means it could not.
    pub async fn next(&mut self) -> Result<Hint, StoreError> {
        match self {
            ChangeHints::Postgres(listener) => match listener.try_recv().await {
                Ok(Some(notification)) => Ok(parse_hint(notification.payload())),
                Ok(None) => Ok(Hint::Unknown),
                Err(error) => Err(classify(error)),
            },
            ChangeHints::Sqlite(receiver) => match receiver.recv().await {
                Ok(change) => Ok(Hint::Changes(vec![change])),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Ok(Hint::Unknown),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    Err(StoreError::Unavailable("the store was closed".into()))
                }
            },
        }
    }
}

impl ChangeHints {
    /// Whether these hints can stop without an error: a PostgreSQL connection that its network
    /// dropped silently waits forever. SQLite's come from this process's own writes.
    pub(crate) fn may_go_silent(&self) -> bool {
        matches!(self, ChangeHints::Postgres(_))
    }

    /// Drops the hints already received: the read that follows covers them.
    pub(crate) fn discard_queued(&mut self) {
        match self {
            ChangeHints::Postgres(listener) => while listener.next_buffered().is_some() {},
            ChangeHints::Sqlite(receiver) => while receiver.try_recv().is_ok() {},
        }
    }
}

fn parse_hint(payload: &str) -> Hint {
    #[derive(serde::Deserialize)]
    struct Payload {
        changes: Option<Vec<ScanChange>>,
    }
    match serde_json::from_str::<Payload>(payload) {
        Ok(Payload {
            changes: Some(changes),
        }) => Hint::Changes(changes),
        _ => Hint::Unknown,
    }
}

/// The PostgreSQL channel on which publishers hint that changes committed.
pub(crate) const CHANGES_CHANNEL: &str = "signal_scan_events";

/// How the connection pool is used right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
}

impl PoolUsage {
    /// The connections of `pools` together.
    fn of(pools: &[&sqlx::SqlitePool]) -> Self {
        pools.iter().fold(Self::default(), |usage, pool| {
            let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
            Self {
                in_use: usage.in_use + pool.size().saturating_sub(idle),
                idle: usage.idle + idle,
                max: usage.max + pool.options().get_max_connections(),
            }
        })
    }
}

/// What the reads of one store (and its clones) cost, for tests, where timing would say nothing
/// reliable: the audit rows its feed reads returned, by kind of read, the feed reads themselves,
/// and its key lookups.
#[derive(Debug, Default)]
pub(crate) struct ReadsCounted {
    one_group: AtomicU64,
    every_group: AtomicU64,
    reads: AtomicU64,
    key_lookups: AtomicU64,
}

/// A reading of [`Store::feed_rows_read`]: what a replay or a follower costs, in rows and reads,
/// where timing would say nothing reliable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRowsCount {
    /// By reads of one group's rows: a stream's catch-up, a follower that fell behind, `scans
    /// watch --account-group`.
    pub one_group: u64,
    /// By reads of every group's rows: the change hub's shared read, `scans watch` without a
    /// group.
    pub every_group: u64,
    /// Reads (statements) of either kind, whatever they returned: what a waiting reader costs.
    pub reads: u64,
}

/// The statements that read one group's rows of the change feed, as each store runs them, for
/// tests that check their plans: PostgreSQL's binds `$1` the frontier's xid as text, `$2` its id,
/// `$3` and `$4` the pending transactions (text) and their last ids, `$5` the limit and `$6` the
/// group; SQLite's `?1` the frontier's id, `?2` the limit and `?3` the group.
/// The same for a page of a group's scans, by the query's shape: `postgres_scan_page` and
/// `sqlite_scan_page` bind the group, then the status if asked for, then the cursor's
/// `createdAt` and id if any, then the limit. And PostgreSQL's batch of the retention sweep,
/// binding the cutoff, then the batch.
#[doc(hidden)]
pub mod statements {
    pub const POSTGRES_GROUP_FEED: &str = super::postgres::ONE_GROUPS_FEED;
    pub const POSTGRES_TRIM_AUDIT: &str = super::postgres::TRIM_AUDIT;
    pub const SQLITE_GROUP_FEED: &str = super::sqlite::ONE_GROUPS_FEED;
    pub use super::postgres::list_scans_statement as postgres_scan_page;
    pub use super::sqlite::list_scans_statement as sqlite_scan_page;
}

/// A key to be stored.
#[derive(Debug, Clone)]
pub struct KeyToCreate {
    pub name: String,
    pub hash: KeyHash,
    pub permissions: Vec<Permission>,
    pub access: AccountGroupAccess,
    /// How long after its creation the key expires (`None`: never); the store stamps both from
    /// one reading of its clock.
    pub expires_in: Option<time::Duration>,
}

/// A key as stored, and the store's clock when it was read: the clock that stamps keys' creation
/// and expiry (the database's, on PostgreSQL), so that whether the key has expired is judged by it
/// and not by the wall clock of the instance serving the request.
#[derive(Debug, Clone)]
pub struct FoundKey {
    pub key: ApiKey,
    pub clock: OffsetDateTime,
}

/// How to reach the database (`Debug` shows no password).
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub url: SecretString,
    /// Every read answers within this, or fails as [`StoreError::Unavailable`]; a write waits this
    /// long for its turn or connection and its statements, never cutting a COMMIT short (see
    /// `sqlite::in_write_turn` and `postgres::writing`).
    pub timeout: Duration,
    pub max_connections: u32,
    /// PostgreSQL: batches of status changes committing at once (at most `max_connections`).
    pub write_batches: u32,
    /// PostgreSQL: how long committed changes gather before one notification tells of them.
    pub publish_interval: Duration,
}

/// Calls the same method on whichever store is in use, and awaits it: the two stores have the same
/// methods (their SQL differs on purpose), so `Store` only chooses between them.
macro_rules! forward {
    ($store:ident . $method:ident ( $($argument:expr),* )) => {
        match $store {
            Store::Postgres(store) => store.$method($($argument),*).await,
            Store::Sqlite(store) => store.$method($($argument),*).await,
        }
    };
}

/// The store interface: one variant per supported database, chosen by the URL's scheme.
#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Store {
    /// Connects lazily: a database that is down at start-up makes requests answer 502 until it
    /// comes back, rather than keeping the process from starting.
    pub fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        let url = options.url.expose_secret();
        // A trailing space made a SQLite file of another name (`….db `), served empty while the
        // log, trimming nothing but showing nothing either, named the right one.
        if url.trim() != url {
            return Err(StoreError::Setting(
                "DATABASE_URL has white space at its start or end".into(),
            ));
        }
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => Ok(Store::Postgres(PgStore::connect(options)?)),
            Some("sqlite") => Ok(Store::Sqlite(SqliteStore::connect(options)?)),
            _ => Err(StoreError::Setting(
                "DATABASE_URL must start with postgres:// or sqlite://".into(),
            )),
        }
    }

    /// SQLite: this process's writers holding or queued for its one write turn (`None` on
    /// PostgreSQL, whose lock waiters `pg_stat_activity` shows).
    #[doc(hidden)] // For tests that force a race: they wait until both contenders queue.
    pub fn writers_wanting(&self) -> Option<usize> {
        match self {
            Store::Postgres(_) => None,
            Store::Sqlite(store) => Some(store.writers_wanting()),
        }
    }

    /// Requests whose status changes are queued or committing (group commit).
    #[doc(hidden)] // For tests that need requests to share a batch: they wait until all queue.
    pub fn changes_waiting(&self) -> usize {
        match self {
            Store::Postgres(store) => store.changes_waiting(),
            Store::Sqlite(store) => store.changes_waiting(),
        }
    }

    pub fn pool_usage(&self) -> PoolUsage {
        match self {
            Store::Postgres(store) => store.pool_usage(),
            Store::Sqlite(store) => PoolUsage::of(&store.pools()),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        forward!(self.migrate())
    }

    /// Fails when this process cannot write the database, which the service must: see
    /// [`SqliteStore::check_writable`]. On PostgreSQL a standby, a read-only transaction default
    /// or a role without rights on the schema already fails the start's migration step, whose
    /// `CREATE TABLE IF NOT EXISTS` of the migrations table is checked for them.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(_) => Ok(()),
            Store::Sqlite(store) => store.check_writable().await,
        }
    }

    /// Succeeds when the database answers within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        forward!(self.ping())
    }

    /// True when the database holds no API key and no scan (a fresh install).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        forward!(self.is_empty())
    }

    pub(crate) async fn find_key(&self, hash: &KeyHash) -> Result<Option<FoundKey>, StoreError> {
        self.counted().key_lookups.fetch_add(1, Ordering::Relaxed);
        forward!(self.find_key(hash))
    }

    /// How many keys this store has looked up by hash so far.
    pub fn key_lookups(&self) -> u64 {
        self.counted().key_lookups.load(Ordering::Relaxed)
    }

    pub async fn create_key(&self, key: &KeyToCreate) -> Result<ApiKey, StoreError> {
        forward!(self.create_key(key))
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        forward!(self.list_keys())
    }

    /// Revokes a key; `None` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        forward!(self.revoke_key(id))
    }

    /// Creates a scan directly in `status` (seeding and operations), with its audit row.
    pub async fn create_scan(
        &self,
        group: &AccountGroupId,
        status: ScanStatus,
    ) -> Result<Scan, StoreError> {
        match forward!(self.create_scan(group, status, Actor::default(), None))? {
            Creation::Created(scan) => Ok(scan),
            other => Err(StoreError::Internal(format!(
                "a scan without an idempotency key was not created: {other:?}"
            ))),
        }
    }

    /// Creates a queued scan for a client, with its audit row naming `actor`. With `once` (the
    /// caller's key id and its idempotency key), a key claimed within the window creates nothing
    /// and answers what it started.
    ///
    /// In a task of its own, as the pipeline commits a change: a request given up (its client
    /// gone, its deadline) is dropped at whatever it awaits, and dropped between the commit and
    /// the hint that follows it, its scan reached the streams only at their next poll (the other
    /// replicas' too: no notification), and two such polls in a row made the listener suspect
    /// itself and reconnect. The task ends within the store's own timeouts, in the request's
    /// span (its lines keep the trace id); a panic in it goes on in the request ([`joined`]).
    pub(crate) async fn create_scan_for(
        &self,
        group: &AccountGroupId,
        actor: Actor<'_>,
        once: Option<(Uuid, &IdempotencyKey)>,
    ) -> Result<Creation, StoreError> {
        let (store, group) = (self.clone(), *group);
        let Actor {
            api_key_id,
            trace_id,
            reason,
        } = actor;
        let (trace_id, reason) = (trace_id.map(str::to_owned), reason.map(str::to_owned));
        let once = once.map(|(key_id, key)| (key_id, key.clone()));
        let creating = async move {
            let actor = Actor {
                api_key_id,
                trace_id: trace_id.as_deref(),
                reason: reason.as_deref(),
            };
            let once = once.as_ref().map(|(key_id, key)| (*key_id, key));
            forward!(store.create_scan(&group, ScanStatus::Queued, actor, once))
        };
        joined(
            tokio::spawn(creating.in_current_span()).await,
            "a scan's creation",
        )
    }

    /// Forgets at most `limit` idempotency keys older than the window; how many it forgot.
    pub async fn forget_idempotency_keys(&self, limit: u32) -> Result<u64, StoreError> {
        forward!(self.forget_idempotency_keys(limit))
    }

    /// A scan by id; `group`, when given, must own it.
    pub async fn find_scan(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
    ) -> Result<Option<Scan>, StoreError> {
        forward!(self.find_scan(group, scan))
    }

    /// A scan of `group` with the key that started it, in one statement: see [`ClaimedScan`].
    pub async fn find_claimed_scan(
        &self,
        group: &AccountGroupId,
        scan: &ScanId,
    ) -> Result<Option<ClaimedScan>, StoreError> {
        forward!(self.find_claimed_scan(group, scan))
    }

    /// A scan's audit trail, oldest first.
    pub async fn scan_events(&self, scan: &ScanId) -> Result<Vec<ScanEvent>, StoreError> {
        forward!(self.scan_events(scan))
    }

    /// A page of `group`'s scans, newest first; one more than `limit` tells there is a next page.
    pub async fn list_scans(
        &self,
        group: &AccountGroupId,
        query: &ScanPageQuery,
    ) -> Result<Vec<Scan>, StoreError> {
        forward!(self.list_scans(group, query))
    }

    /// Audit rows after `cursor` (readers filter, so their cursors move past what they skip), in
    /// `(xid, id)` order, at most [`PAGE_ROWS`](crate::domain::feed::PAGE_ROWS), with the
    /// snapshot they were read under: `group`'s rows only, read through that group's index, so
    /// that a reader of one group pays for that group's changes alone; every group's with `None`
    /// (the change hub's shared read, and `scans watch` without a group).
    pub(crate) async fn read_feed(
        &self,
        cursor: &FeedCursor,
        group: Option<&AccountGroupId>,
    ) -> Result<FeedPage, StoreError> {
        let page = forward!(self.read_feed(cursor, group))?;
        let rows = page.rows.len() as u64;
        let counter = match (self.counted(), group) {
            (read, Some(_)) => &read.one_group,
            (read, None) => &read.every_group,
        };
        counter.fetch_add(rows, Ordering::Relaxed);
        self.counted().reads.fetch_add(1, Ordering::Relaxed);
        Ok(page)
    }

    /// How many audit rows this store's feed reads have returned so far, and how many reads.
    pub fn feed_rows_read(&self) -> FeedRowsCount {
        let read = self.counted();
        FeedRowsCount {
            one_group: read.one_group.load(Ordering::Relaxed),
            every_group: read.every_group.load(Ordering::Relaxed),
            reads: read.reads.load(Ordering::Relaxed),
        }
    }

    fn counted(&self) -> &ReadsCounted {
        match self {
            Store::Postgres(store) => &store.counted,
            Store::Sqlite(store) => &store.counted,
        }
    }

    /// A cursor at the head of the audit trail: what commits from now on lies ahead of it. It
    /// also stands past every row the retention sweep deleted, so a cursor issued before the
    /// trail was emptied is never taken for one that was never issued.
    pub async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        forward!(self.feed_head())
    }

    /// On PostgreSQL, the greatest id of the positions at xid 0 (rows from before feed positions
    /// were kept, or moved there from another cluster after a restore); a cursor at a real xid
    /// and an id at or below it comes from another cluster. `None` on SQLite.
    pub async fn rebased_through(&self) -> Result<Option<i64>, StoreError> {
        forward!(self.rebased_through())
    }

    /// Whether `position` is a place in this trail: a row it holds, or one the retention sweep
    /// deleted (at or below a mark). One read, so a row deleted meanwhile is seen in one or the
    /// other. A cursor whose frontier is neither was not handed out by this trail: the database
    /// was restored from a backup taken before it (its changes are lost) or moved from another
    /// cluster, or it was made up.
    pub async fn feed_knows(&self, position: FeedPosition) -> Result<bool, StoreError> {
        forward!(self.feed_knows(position))
    }

    /// The greatest position of `group`'s audit rows (any group's, with `None`) that the
    /// retention sweep has deleted, if it deleted any: a cursor of the group (of every group)
    /// below it may have missed changes that are gone.
    pub async fn trimmed_mark(
        &self,
        group: Option<&AccountGroupId>,
    ) -> Result<Option<FeedPosition>, StoreError> {
        forward!(self.trimmed_mark(group))
    }

    /// The clock this store stamps its rows with: PostgreSQL's, or this process's on SQLite (where
    /// the process writes the times). An age measured against the rows' times reads this clock,
    /// not the process's: a replica whose clock is off would misjudge every row.
    pub async fn clock(&self) -> Result<OffsetDateTime, StoreError> {
        forward!(self.clock())
    }

    /// Deletes at most `batch` of the oldest audit rows written before `cutoff`, in `(xid, id)`
    /// order and stopping at the first younger row (what is deleted is always the trail's head,
    /// so each group's high-water mark says exactly what is gone), and raises those marks, in one
    /// short transaction. Returns how many rows it deleted.
    pub async fn trim_audit(&self, cutoff: OffsetDateTime, batch: u32) -> Result<u64, StoreError> {
        forward!(self.trim_audit(cutoff, batch))
    }

    /// Subscribes to hints that changes committed.
    pub async fn hints(&self) -> Result<ChangeHints, StoreError> {
        match self {
            Store::Postgres(store) => store
                .listen(CHANGES_CHANNEL)
                .await
                .map(ChangeHints::Postgres),
            Store::Sqlite(store) => Ok(ChangeHints::Sqlite(store.subscribe())),
        }
    }

    /// Sends the hints of changes made by this process that are still queued, for at most
    /// `limit`: call before the process exits.
    pub async fn flush_hints(&self, limit: Duration) {
        if let Store::Postgres(store) = self {
            store.flush_hints(limit).await;
        }
    }

    /// Closes the store's connections at the end of the process, waiting at most `limit` for
    /// those in use. On SQLite the last connection to close writes the write-ahead log back into
    /// the database file and deletes it: the file alone then holds every commit, which a copy of
    /// it, or a restore put in its place, relies on. On PostgreSQL nothing is left behind.
    pub async fn close(&self, limit: Duration) {
        if let Store::Sqlite(store) = self {
            store.close(limit).await;
        }
    }

    /// Moves a scan to `to` if and only if its current status allows it, in one guarded statement
    /// that also writes the audit row. `group`, when given, must own the scan. The change commits
    /// in one transaction with whatever other changes wait at the same moment (group commit).
    pub async fn transition(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
        to: ScanStatus,
        actor: Actor<'_>,
    ) -> Result<Transition, StoreError> {
        let change = ChangeRequest::new(group, scan, to, actor);
        let mut outcomes = self.transitions(vec![change]).await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::Internal("a change was answered with nothing".into()))
    }

    /// Moves each of `scans` (distinct) to `to` where its status allows it, all in one commit:
    /// each scan's outcome, in order.
    pub(crate) async fn transition_all(
        &self,
        group: Option<&AccountGroupId>,
        scans: &[ScanId],
        to: ScanStatus,
        actor: Actor<'_>,
    ) -> Result<Vec<Transition>, StoreError> {
        let changes = scans
            .iter()
            .map(|scan| ChangeRequest::new(group, scan, to, actor))
            .collect();
        self.transitions(changes).await
    }

    async fn transitions(
        &self,
        changes: Vec<ChangeRequest>,
    ) -> Result<Vec<Transition>, StoreError> {
        forward!(self.transitions(changes))
    }
}

/// The hints of a committed batch's applied changes, sent by the writer that committed it (not
/// by the requests, which may be gone by then). A hint carries no reason: readers take it from
/// the audit trail, so hints stay small.
fn hints(outcomes: &[Transition]) -> impl Iterator<Item = ScanChange> + '_ {
    outcomes.iter().filter_map(|outcome| match outcome {
        Transition::Applied { previous, scan } => Some(ScanChange::of(Some(*previous), scan, None)),
        _ => None,
    })
}

/// The longest a request's write may take, with the store's `timeout`: the read of a runner's
/// claim before it finishes a scan, the write's wait to be taken into a batch, its turn or
/// connection, its statements (each `timeout`), and the second (`ANSWER_GRACE`) the database's
/// answer is awaited past them (the whole request's bound adds what comes before the write:
/// `http::deadline::longest_writing_request`). Not counted: a batch the database refused for one
/// change's own reason (a constraint or a trigger, so a bug or an operator's trigger), whose
/// changes are then written one by one (`pipeline.rs`): that path may take up to three `timeout`s
/// and a second more, and its request may then answer 500 at the deadline while its own write
/// still commits, which a resend shows, as after any 500.
pub fn longest_write(timeout: Duration) -> Duration {
    timeout * 4 + pg_pool::ANSWER_GRACE
}

/// Runs `query`, failing as [`StoreError::Unavailable`] when the database does not answer within
/// `timeout` (connection acquisition included).
async fn bounded<T>(
    timeout: Duration,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    bounded_until(tokio::time::Instant::now() + timeout, timeout, query).await
}

/// [`bounded`] by a `deadline` set `timeout` ago, which a step before `query` shared.
async fn bounded_until<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(deadline, query).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Unavailable(no_answer_within(timeout))),
    }
}

/// What a read or write that ran out of `timeout` is told as.
fn no_answer_within(timeout: Duration) -> String {
    format!("no answer within {} ms", timeout.as_millis())
}

/// Sorts driver errors into "try again later" (502) and "something is wrong" (500): the database
/// refused a statement ([`StoreError::Internal`]), or answered rows that cannot be read
/// ([`StoreError::Corrupt`]: the statement ran, and may have committed).
fn classify(error: sqlx::Error) -> StoreError {
    if matches!(
        error,
        sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
    ) {
        return StoreError::Corrupt(error.to_string());
    }
    let unavailable = match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            db.code()
                .is_some_and(|code| is_transient_code(&code, sqlite))
        }
        _ => false,
    };
    let text = described(&error);
    if unavailable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Internal(text)
    }
}

/// A driver error as an operator reads it. PostgreSQL's error is told with its SQLSTATE, not as
/// sqlx prints it, with the line of the server's C source that raised it (`database "x" does not
/// exist at line 948`: a line of nothing the operator has).
pub(super) fn described(error: &sqlx::Error) -> String {
    match server_words(error) {
        Some(words) => format!("error returned from database: {words}"),
        None => error.to_string(),
    }
}

/// PostgreSQL's message with its SQLSTATE, for an error the server sent.
pub(super) fn server_words(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let pg = db.try_downcast_ref::<PgDatabaseError>()?;
    Some(format!("{} (SQLSTATE {})", pg.message(), pg.code()))
}

/// PostgreSQL SQLSTATE classes 08 (connection), 53 (resources: a full disk too) and 57 (operator
/// intervention, statement timeout), and the database refusing to serve now: 25006 (read only: a
/// standby, or `default_transaction_read_only`) and 55P03 (a lock not had within `lock_timeout`).
/// A session that cannot open (the login refused, no such database, one not accepting
/// connections) is unavailable whatever its code: the pool says so (`pg_pool.rs`).
/// SQLite's BUSY (5), LOCKED (6), READONLY (8: the file lost its write permission, or its volume
/// was remounted read-only; as PostgreSQL's 25006), INTERRUPT (9: a read stopped at its deadline,
/// as PostgreSQL's statement timeout), FULL (13: the disk is full) and CANTOPEN (14:
/// the file is out of reach, e.g. its volume is away), with their extended codes; and the I/O errors of the shared
/// memory index (`-shm`) a transaction reads before it writes anything (IOERR_SHMOPEN, SHMSIZE,
/// SHMLOCK, SHMMAP: a full disk answers SHMSIZE to the first write of a process). Other I/O
/// errors stay 500s: one while a commit syncs may come after the commit reached the disk.
fn is_transient_code(code: &str, sqlite: bool) -> bool {
    if sqlite {
        return code.parse::<i32>().is_ok_and(|code| {
            matches!(code & 0xff, 5 | 6 | 8 | 9 | 13 | 14)
                || matches!(code, 4618 | 4874 | 5130 | 5386)
        });
    }
    ["08", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["25006", "55P03"].contains(&code)
}

/// The outcome of store work run in a task of its own, so that a caller dropped mid-way cannot
/// cut it short: the work's own result, or its panic carried on in the caller, as if the work
/// had run there (one `panicked` line, then the caller's 500).
pub(crate) fn joined<T>(
    outcome: Result<Result<T, StoreError>, tokio::task::JoinError>,
    what: &str,
) -> Result<T, StoreError> {
    match outcome {
        Ok(done) => done,
        Err(stopped) if stopped.is_panic() => std::panic::resume_unwind(stopped.into_panic()),
        Err(stopped) => Err(StoreError::Internal(format!("{what} stopped: {stopped}"))),
    }
}

/// Both stores' answer to "is this a fresh install?".
const IS_EMPTY: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM api_keys) AND NOT EXISTS (SELECT 1 FROM signal_scans)";

/// How often a process still waiting to migrate (for PostgreSQL's migration lock, SQLite's write
/// lock) says so, and a migration still waiting on other sessions says which.
const MIGRATION_WAIT_TOLD: Duration = Duration::from_secs(30);

/// Runs an upgrade's `migrations`, saying when they start and when the database is migrated, with
/// the seconds it took: a backfill of a large table takes minutes, and the backends' migration
/// connections leave out sqlx's slow-statement warning, which printed a migration's whole text.
async fn announced<T>(
    migrations: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tracing::info!("applying this version's new migrations to the database");
    let started = std::time::Instant::now();
    let migrated = migrations.await?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(seconds, "the database is migrated");
    Ok(migrated)
}

/// A failed migration: a database error is sorted like any other; anything else (a changed or
/// missing migration) is ours to fix.
fn migration_error(error: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    match error {
        MigrateError::Execute(error) => classify(error),
        // A migration's own statement failed: a database cut off mid-migration (an operator
        // ending the session, a failover) is as unavailable as anywhere else, so a command exits
        // 75 for it and a script tries again.
        MigrateError::ExecuteMigration(error, version) => {
            let mut classified = classify(error);
            let (StoreError::Unavailable(why)
            | StoreError::Corrupt(why)
            | StoreError::Internal(why)
            | StoreError::Config(why)
            | StoreError::Setting(why)) = &mut classified;
            *why = format!("while executing migration {version}: {why}");
            classified
        }
        other => StoreError::Internal(other.to_string()),
    }
}

fn parse_status(raw: &str) -> Result<ScanStatus, StoreError> {
    raw.parse()
        .map_err(|e: crate::domain::scan::UnknownStatus| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::{StoreError, is_transient_code, migration_error};

    #[test]
    fn a_migration_cut_off_by_the_database_is_unavailable_and_says_which() {
        use sqlx::migrate::MigrateError;
        let cut_off = || sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        let refused = || sqlx::Error::Protocol("unexpected message".into());

        let during = migration_error(MigrateError::ExecuteMigration(cut_off(), 5));
        let between = migration_error(MigrateError::Execute(cut_off()));
        let broken = migration_error(MigrateError::ExecuteMigration(refused(), 5));

        assert!(
            matches!(&during, StoreError::Unavailable(why) if why.starts_with("while executing migration 5: ")),
            "{during:?}"
        );
        assert!(matches!(between, StoreError::Unavailable(_)), "{between:?}");
        assert!(
            matches!(&broken, StoreError::Internal(why) if why.contains("migration 5")),
            "{broken:?}"
        );
    }

    #[test]
    fn transient_codes_are_read_by_the_rules_of_their_own_database() {
        // The connection, resources, an operator; then the database refusing to serve now.
        let away = ["08006", "53300", "57014", "57P01"];
        let refusing = ["25006", "55P03"];
        for code in away.into_iter().chain(refusing) {
            assert!(is_transient_code(code, false), "{code}");
        }
        // 42501 and 22021 end in the byte 5 but are PostgreSQL's, and not transient; 25001 (a
        // transaction already begun), 55000 and 55006 (an object not ready, or in use) are a
        // statement's own.
        for code in [
            "42501", "22021", "23505", "40001", "25001", "55000", "55006",
        ] {
            assert!(!is_transient_code(code, false), "{code}");
        }
        for code in ["5", "6", "517", "261", "8", "1032", "14", "270"] {
            assert!(is_transient_code(code, true), "{code}");
        }
        // The `-shm` index's I/O errors (a full disk's SHMSIZE, 4874, first); not a failed sync or
        // write (IOERR_FSYNC 1034, IOERR_WRITE 778), nor the plain IOERR.
        for code in ["4874", "4618", "5130", "5386"] {
            assert!(is_transient_code(code, true), "{code}");
        }
        for code in ["19", "2067", "10", "778", "1034"] {
            assert!(!is_transient_code(code, true), "{code}");
        }
    }
}
