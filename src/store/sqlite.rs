//! The embedded SQLite store: WAL mode, a busy timeout, and write transactions that take the
//! write lock up front (`BEGIN IMMEDIATE`), so concurrent requests queue instead of failing.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, FromRow, Row, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use super::pipeline::{BatchWriter, ChangeRequest, Pipeline};
use super::rows::{ChangeRow, ClaimedKeyRow, EventRow, KeyRow, ScanRow};
use super::{
    FoundKey, IS_EMPTY, KeyToCreate, MIGRATION_WAIT_TOLD, PoolUsage, ReadsCounted, StoreError,
    StoreOptions, announced, bounded, classify, migration_error, no_answer_within,
};
use crate::domain::feed::{FeedCursor, FeedPage, FeedPosition, PAGE_ROWS};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, KeyHash};
use crate::domain::rfc3339;
use crate::domain::scan::{
    Actor, ClaimedScan, Creation, IDEMPOTENCY_WINDOW, IdempotencyKey, Scan, ScanChange, ScanEvent,
    ScanPageQuery, ScanStatus, Transition,
};

const SCAN_COLUMNS: &str = "id, account_group_id, status, created_at, updated_at, started_at, \
                            finished_at, cancelled_at";
/// [`SCAN_COLUMNS`] of a scan joined as `s`.
const SCAN_COLUMNS_OF_S: &str = "s.id, s.account_group_id, s.status, s.created_at, s.updated_at, \
                                 s.started_at, s.finished_at, s.cancelled_at";

/// One read of the change feed, in one statement (one snapshot): the retention sweep's mark of
/// the rows' scope (`$marks`: a filter of `signal_scan_events_trimmed`: a row past the cursor
/// deleted before the read raised it) beside the rows (`$rows`), or beside one row of NULLs when
/// there are none.
macro_rules! feed_read {
    ($marks:literal, $rows:literal) => {
        concat!(
            "SELECT t.trimmed_id, e.*
             FROM (SELECT max(id) AS trimmed_id FROM signal_scan_events_trimmed",
            $marks,
            ") AS t
             LEFT JOIN (SELECT '0' AS xid, id, scan_id, account_group_id, from_status, to_status,
                               trace_id, occurred_at, reason
                        FROM signal_scan_events ",
            $rows,
            ") AS e ON true
             ORDER BY e.id"
        )
    };
}

/// Every group's rows past a cursor (`?1`), at most `?2`.
const EVERY_GROUPS_FEED: &str = feed_read!("", "WHERE id > ?1 ORDER BY id LIMIT ?2");

/// One group's rows past a cursor (`?3`, `?1`), at most `?2`, through the group's index.
pub(super) const ONE_GROUPS_FEED: &str = feed_read!(
    " WHERE account_group_id = ?3",
    "WHERE account_group_id = ?3 AND id > ?1 ORDER BY account_group_id, id LIMIT ?2"
);

/// A page of a group's scans, newest first, `limit + 1` rows: one statement for each shape of
/// the query (a status or not, a cursor or not), each a range of the group's index from the
/// cursor (a status is filtered along it). Under `?n IS NULL OR …` SQLite bounds the index by the
/// group alone, and reads the group from its newest scan down to the cursor at every page (57 ms
/// a page 300,000 scans down, against 0.5 ms).
#[doc(hidden)]
pub fn list_scans_statement(status: bool, after: bool) -> String {
    let status = match status {
        true => " AND status = ?",
        false => "",
    };
    let after = match after {
        true => " AND (created_at, id) < (?, ?)",
        false => "",
    };
    format!(
        "SELECT {SCAN_COLUMNS} FROM signal_scans WHERE account_group_id = ?{status}{after}
         ORDER BY created_at DESC, id DESC LIMIT ?"
    )
}

/// A row of [`SqliteStore::read_feed`]: the retention mark, and a change unless the page is
/// empty (the one row of NULLs, told by its NULL `id`).
struct FeedReadRow {
    trimmed: Option<i64>,
    change: Option<ChangeRow>,
}

impl FromRow<'_, SqliteRow> for FeedReadRow {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        let empty = row.try_get::<Option<i64>, _>("id")?.is_none();
        Ok(Self {
            trimmed: row.try_get("trimmed_id")?,
            change: (!empty).then(|| ChangeRow::from_row(row)).transpose()?,
        })
    }
}

/// How many published changes a slow in-process subscriber may fall behind before it is told
/// it has a gap to catch up on.
const CHANGE_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct SqliteStore {
    /// The reads' connections: `DB_MAX_CONNECTIONS` less the writes' one.
    pool: SqlitePool,
    /// The writes' connection, taken with the write turn.
    writes: SqlitePool,
    /// Migrations run on a connection of their own, so the pool stays as lazy as it was made.
    migrate_options: Arc<SqliteConnectOptions>,
    timeout: Duration,
    /// SQLite has no LISTEN/NOTIFY: changes committed by this process are published here.
    changes: tokio::sync::broadcast::Sender<ScanChange>,
    /// This process's writers, one at a time (see [`SqliteStore::as_writer`]).
    writer: Arc<WriteTurn>,
    pub(super) counted: Arc<ReadsCounted>,
    /// Writers holding or queued for the write turn: tests see contenders waiting by it.
    wanting: Arc<std::sync::atomic::AtomicUsize>,
    /// Status changes, committed in batches; started by the first.
    pipeline: Arc<OnceLock<Pipeline>>,
}

impl SqliteStore {
    /// The file a SQLite `url` names, its path decoded as the store decodes it when it opens
    /// it (`%20` is a space: `scans show` looked for `my%20dir/…` where `serve` had made
    /// `my dir/…`); `None` for another kind of URL, or one naming no file (`:memory:`).
    pub fn file_of(url: &str) -> Option<PathBuf> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        let options = SqliteConnectOptions::from_str(url).ok()?;
        Some(options.get_filename().to_owned())
    }

    pub fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(options.url.expose_secret())
            .map_err(|_| StoreError::Setting("DATABASE_URL is not a valid SQLite URL".into()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every 200 is a change on disk: FULL syncs the WAL at each commit.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.timeout);
        // A fresh machine has no data/ folder yet; SQLite creates the file but not its folder.
        if let Some(folder) = connect
            .get_filename()
            .parent()
            .filter(|f| !f.as_os_str().is_empty())
        {
            std::fs::create_dir_all(folder).map_err(|error| {
                StoreError::Config(format!("cannot create {}: {error}", folder.display()))
            })?;
        }
        // The connection of the migrations (and of the writability check), without sqlx's
        // slow-statement warning: see `announced`.
        let migrate_options = Arc::new(connect.clone().disable_statement_logging());
        // Only the start creates the file (it migrates it): a connection opened later to a file
        // deleted under the running service would make an empty database beside it.
        let file = connect.clone().create_if_missing(false);
        let timeout = options.timeout;
        // The writes have a connection of their own (one writes at a time: the write turn), so
        // reads, however many and slow, never take the connection a write waits for.
        let pool = pool_options(options.max_connections.saturating_sub(1).max(1), timeout)
            .after_connect(move |connection, _| Box::pin(end_reads_at(connection, timeout)))
            .before_acquire(move |connection, _| {
                Box::pin(async move { end_reads_at(connection, timeout).await.map(|()| true) })
            })
            .connect_lazy_with(file.clone());
        let writes = pool_options(1, timeout).connect_lazy_with(file);
        Ok(Self {
            pool,
            writes,
            migrate_options,
            timeout: options.timeout,
            changes: tokio::sync::broadcast::channel(CHANGE_BUFFER).0,
            writer: Arc::new(WriteTurn::on(connect_file(&connect))),
            counted: Arc::default(),
            wanting: Arc::default(),
            pipeline: Arc::default(),
        })
    }

    /// Runs `write` in one transaction with this process's write turn held (see
    /// [`in_write_turn`]). SQLite admits one writer at a time; queueing for it here, in order,
    /// beats every writer retrying in SQLite's busy handler, which is unfair under contention and
    /// left some requests waiting past the timeout.
    async fn as_writer<T>(
        &self,
        write: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let _wanting = Wanting::count(&self.wanting);
        in_write_turn(&self.writes, &self.writer, self.timeout, write).await
    }

    /// Writers holding or queued for this process's write turn, status changes waiting for
    /// their batch's commit included.
    pub(super) fn writers_wanting(&self) -> usize {
        self.wanting.load(std::sync::atomic::Ordering::SeqCst) + self.changes_waiting()
    }

    /// `query` bounded by the store's timeout, counted from now; a read's statement is stopped
    /// inside SQLite at the same deadline ([`end_reads_at`]), however long it waited for its
    /// connection.
    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let bounded = tokio::time::timeout_at(deadline, query);
        match READ_DEADLINE.scope(deadline.into_std(), bounded).await {
            Ok(answered) => answered.map_err(|error| self.read_failed(error)),
            Err(_) => Err(StoreError::Unavailable(no_answer_within(self.timeout))),
        }
    }

    /// A read's error, in the words PostgreSQL's reads are told in: a statement SQLite stopped at
    /// its deadline is one that gave no answer within it, and a wait for a connection that ran
    /// out says how many were in use. They were logged in the driver's words (`(code: 9)
    /// interrupted`, `pool timed out while waiting for an open connection`), which README's
    /// Troubleshoot does not name and which do not say that the timeout ran out.
    fn read_failed(&self, error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::PoolTimedOut => {
                let usage = PoolUsage::of(&[&self.pool]);
                StoreError::Unavailable(format!(
                    "no connection of the pool within {} ms ({} of its {} read connections in \
                     use: slow reads hold them, or the pool is too small for the load)",
                    self.timeout.as_millis(),
                    usage.in_use,
                    usage.max
                ))
            }
            error if primary_code(&error) == Some(SQLITE_INTERRUPT) => {
                StoreError::Unavailable(no_answer_within(self.timeout))
            }
            error => classify(error),
        }
    }

    /// The reads' pool and the writes'.
    pub(super) fn pools(&self) -> [&SqlitePool; 2] {
        [&self.pool, &self.writes]
    }

    /// Runs the migrations not yet applied, all in one transaction that holds the database's
    /// write lock from its start. sqlx takes no lock on SQLite, so processes migrating one fresh
    /// file together each applied the first migration and all but one failed ("table api_keys
    /// already exists"); here the others wait for the lock, then find everything applied.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A connection turns a fresh file to WAL, which needs the file to itself; SQLite answers
        // that busy at once, without its busy handler, while another process is doing the same,
        // so the start tries again (1 start in 60 of three at once failed before).
        let was_there = self.writer.file.exists();
        let mut connection = self
            .bounded(async {
                loop {
                    match SqliteConnection::connect_with(&self.migrate_options).await {
                        Err(error) if is_busy(&error) => {
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err(error) if primary_code(&error) == Some(SQLITE_CANTOPEN) => {
                            return Ok(Err(self.cannot_open(error)));
                        }
                        // Turning a fresh file to WAL writes it.
                        Err(error) if primary_code(&error) == Some(SQLITE_READONLY) => {
                            return Ok(Err(self.cannot_write(error)));
                        }
                        connected => return connected.map(Ok),
                    }
                }
            })
            .await??;
        let migrated = self.migrate_on(&mut connection, was_there).await;
        // Closed, not dropped: a command's process may end before a dropped connection closes,
        // and the last connection closed writes the log back into the file and removes it.
        let _ = connection.close().await;
        migrated
    }

    /// [`Self::migrate`] on its connection; `was_there`: whether the file existed before it.
    async fn migrate_on(
        &self,
        connection: &mut SqliteConnection,
        was_there: bool,
    ) -> Result<(), StoreError> {
        // Each connection sees an in-memory (or temporary) database of its own, empty: the
        // migrations went to one, the requests read another (`no such table`).
        let file: String = self
            .bounded(
                sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                    .fetch_one(&mut *connection),
            )
            .await?;
        if file.is_empty() {
            return Err(StoreError::Setting(
                "DATABASE_URL names no file but an in-memory or temporary SQLite database, which \
                 every connection sees empty: name a file, e.g. sqlite://data/signal-scans.db"
                    .into(),
            ));
        }
        // The file exists now: the one the writes will be made to, where SQLite keeps its
        // companions (a symbolic link's target).
        self.writer.file.remember(PathBuf::from(file));
        if !was_there && self.writer.file.exists() {
            // Said, since it is also what a restart does after the file was deleted under the
            // service: it then serves an empty database, and every key is refused.
            tracing::info!(database = %self.writer.file.path.display(),
                "no database file was there: made a new, empty one");
        }
        let migrator = super::migrations::sqlite();
        // Nothing to apply (every start but an upgrade's first): sqlx only reads, and the start
        // waits for no write lock that a long write elsewhere may hold.
        if !self.bounded(pending(&mut *connection, &migrator)).await? {
            return migrator
                .run(&mut *connection)
                .await
                .map_err(|error| self.migration_failed(error));
        }
        announced(async {
            // The busy handler waits `DB_TIMEOUT_MS` for the lock; another process's migrations
            // may take longer (a backfill of a large table), so a busy lock is waited for again,
            // and said: a start held up said nothing until it had the lock.
            let started = tokio::time::Instant::now();
            let mut told: Option<tokio::time::Instant> = None;
            let mut migrating = loop {
                match connection.begin_with("BEGIN IMMEDIATE").await {
                    Ok(migrating) => break migrating,
                    Err(error) if is_busy(&error) => {
                        if told.is_none_or(|at| at.elapsed() >= MIGRATION_WAIT_TOLD) {
                            tracing::info!(
                                waited_s = started.elapsed().as_secs(),
                                "{WRITE_LOCK_HELD} (another process migrating it, or a long \
                                 write); waiting to migrate"
                            );
                            told = Some(tokio::time::Instant::now());
                        }
                    }
                    Err(error) => return Err(self.write_failed(error)),
                }
            };
            // Each migration runs in a savepoint of `migrating` (sqlx nests its transactions).
            migrator
                .run(&mut *migrating)
                .await
                .map_err(|error| self.migration_failed(error))?;
            migrating
                .commit()
                .await
                .map_err(|error| self.write_failed(error))
        })
        .await
    }

    /// Fails when this process cannot write the database (a read-only file, directory or mount,
    /// `mode=ro`): the service started, reported ready and answered every write 500. A write
    /// that changes nothing asks SQLite, which refuses it at once on such a database; a lock
    /// held elsewhere means it can be written, and is not waited for: a start beside another
    /// process's long write waited out the whole busy timeout (`DB_TIMEOUT_MS`) before serving.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        // On a connection of its own, as the migrations: the pool opens its own when serving.
        let options = (*self.migrate_options).clone().busy_timeout(Duration::ZERO);
        let mut connection = self
            .bounded(SqliteConnection::connect_with(&options))
            .await?;
        let write = sqlx::query("UPDATE api_keys SET name = name WHERE 0").execute(&mut connection);
        let written = tokio::time::timeout(self.timeout, write).await;
        let _ = connection.close().await;
        match written {
            Ok(Err(error)) if primary_code(&error) != Some(SQLITE_BUSY) => {
                Err(self.write_failed(error))
            }
            // Written, or waiting for a lock another connection holds: writable.
            _ => Ok(()),
        }
    }

    /// A migration that failed. One refused as a write to a read-only database (a folder this
    /// process cannot write, where SQLite cannot make the `-wal` and `-shm` files, says only
    /// "attempt to write a readonly database") is told as [`Self::check_writable`] tells it.
    fn migration_failed(&self, error: sqlx::migrate::MigrateError) -> StoreError {
        use sqlx::migrate::MigrateError::{Execute, ExecuteMigration};
        match error {
            Execute(error) | ExecuteMigration(error, _) => self.write_failed(error),
            other => migration_error(other),
        }
    }

    fn write_failed(&self, error: sqlx::Error) -> StoreError {
        match primary_code(&error) == Some(SQLITE_READONLY) {
            true => self.cannot_write(error),
            false => classify(error),
        }
    }

    /// A database this process cannot write, in words an operator can act on: SQLite also
    /// writes two files beside the database, which a start refused as another user may leave
    /// behind read-only.
    fn cannot_write(&self, error: sqlx::Error) -> StoreError {
        let file = self.migrate_options.get_filename().display();
        StoreError::Config(format!(
            "this process cannot write the database: {error} ({file} must be a file this \
             process can read and write, and so must {file}-wal and {file}-shm beside it, in a \
             folder it can write)"
        ))
    }

    /// A database SQLite cannot open when a command starts: "unable to open database file" says
    /// nothing of why, and "database unavailable" read as a passing outage. A WAL database
    /// cannot be opened without its `-shm` file, which a read-only mount cannot make.
    fn cannot_open(&self, error: sqlx::Error) -> StoreError {
        let file = self.migrate_options.get_filename().display();
        StoreError::Config(format!(
            "cannot open the database: {error} (is {file} a file, on a volume that is mounted \
             and writable, and may this process read and write it, {file}-wal and {file}-shm?)"
        ))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.writer.file.check()?;
        self.bounded(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(drop)
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.bounded(sqlx::query_scalar(IS_EMPTY).fetch_one(&self.pool))
            .await
    }

    pub(crate) async fn find_key(&self, hash: &KeyHash) -> Result<Option<FoundKey>, StoreError> {
        // This process's clock stamps the keys it creates: the read's clock is its own.
        let clock = now();
        let row: Option<KeyRow> = self
            .bounded(
                sqlx::query_as(
                    "SELECT id, name, permissions, account_group_ids, created_at, expires_at, revoked_at
                     FROM api_keys WHERE key_hash = ?1",
                )
                .bind(&hash.0[..])
                .fetch_optional(&self.pool),
            )
            .await?;
        row.map(|row| {
            Ok(FoundKey {
                key: ApiKey::try_from(row)?,
                clock,
            })
        })
        .transpose()
    }

    pub async fn create_key(&self, key: &KeyToCreate) -> Result<ApiKey, StoreError> {
        let permissions: Vec<&str> = key.permissions.iter().map(|p| p.as_str()).collect();
        let groups: Option<Vec<&str>> = match &key.access {
            AccountGroupAccess::All => None,
            AccountGroupAccess::Only(groups) => Some(groups.iter().map(|g| g.as_str()).collect()),
        };
        let permissions = json(&permissions)?;
        let groups = groups.map(|groups| json(&groups)).transpose()?;
        let row: KeyRow = self
            .as_writer(async |connection| {
                // One reading stamps both: the expiry follows the creation by exactly what was asked.
                let created = now();
                sqlx::query_as(
                    "INSERT INTO api_keys
                         (id, name, key_hash, permissions, account_group_ids, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     RETURNING id, name, permissions, account_group_ids, created_at, expires_at, revoked_at",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(&key.name)
                .bind(&key.hash.0[..])
                .bind(permissions)
                .bind(groups)
                .bind(rfc3339::text(created))
                .bind(key.expires_in.map(|lifetime| rfc3339::text(created + lifetime)))
                .fetch_one(connection)
                .await
            })
            .await?;
        row.try_into()
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = self
            .bounded(
                sqlx::query_as(
                    "SELECT id, name, permissions, account_group_ids, created_at, expires_at, revoked_at
                     FROM api_keys ORDER BY created_at, id",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    pub(crate) async fn clock(&self) -> Result<OffsetDateTime, StoreError> {
        Ok(now())
    }

    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyRow> = self
            .as_writer(async |connection| {
                sqlx::query_as(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1
                     RETURNING id, name, permissions, account_group_ids, created_at, expires_at, revoked_at",
                )
                .bind(id.to_string())
                .bind(rfc3339::text(now()))
                .fetch_optional(connection)
                .await
            })
            .await?;
        row.map(ApiKey::try_from).transpose()
    }

    /// Creates a scan in `status` with its audit row, in one transaction. With an idempotency key
    /// (the caller's key id and the key), the key is claimed in the same transaction, under the
    /// one write lock: a key already claimed within the window creates nothing and answers the
    /// scan it started.
    pub async fn create_scan(
        &self,
        group: &AccountGroupId,
        status: ScanStatus,
        actor: Actor<'_>,
        once: Option<(Uuid, &IdempotencyKey)>,
    ) -> Result<Creation, StoreError> {
        let scan = ScanId::generate();
        let creation = self
            .as_writer(async |tx| {
                // Stamped once the write lock is held, like a transition.
                let now = now();
                let at = rfc3339::text(now);
                if let Some((key_id, key)) = once {
                    let claimed: Option<ClaimedKeyRow> =
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "SELECT k.account_group_id AS key_group, {SCAN_COLUMNS_OF_S}
                             FROM idempotency_keys k JOIN signal_scans s ON s.id = k.scan_id
                             WHERE k.api_key_id = ?1 AND k.key = ?2 AND k.created_at >= ?3"
                        )))
                        .bind(key_id.to_string())
                        .bind(key.as_str())
                        .bind(rfc3339::text(now - IDEMPOTENCY_WINDOW))
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(claimed) = claimed {
                        return Ok(Err(claimed));
                    }
                    sqlx::query(
                        "INSERT INTO idempotency_keys
                             (api_key_id, key, account_group_id, scan_id, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (api_key_id, key) DO UPDATE
                             SET account_group_id = excluded.account_group_id,
                                 scan_id = excluded.scan_id,
                                 created_at = excluded.created_at",
                    )
                    .bind(key_id.to_string())
                    .bind(key.as_str())
                    .bind(group.as_str())
                    .bind(scan.as_str())
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
                }
                let reached =
                    |statuses: &[ScanStatus]| statuses.contains(&status).then(|| at.clone());
                let row: ScanRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO signal_scans
                         (id, account_group_id, status, created_at, updated_at,
                          started_at, finished_at, cancelled_at)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)
                     RETURNING {SCAN_COLUMNS}"
                )))
                .bind(scan.as_str())
                .bind(group.as_str())
                .bind(status.as_str())
                .bind(&at)
                .bind(reached(&[
                    ScanStatus::Running,
                    ScanStatus::Completed,
                    ScanStatus::Failed,
                ]))
                .bind(reached(&[
                    ScanStatus::Completed,
                    ScanStatus::Failed,
                    ScanStatus::Cancelled,
                ]))
                .bind(reached(&[ScanStatus::Cancelled]))
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO signal_scan_events
                         (scan_id, from_status, to_status, api_key_id, trace_id, occurred_at,
                          account_group_id)
                     VALUES (?1, NULL, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(scan.as_str())
                .bind(status.as_str())
                .bind(actor.api_key_id.map(|id| id.to_string()))
                .bind(actor.trace_id)
                .bind(&at)
                .bind(group.as_str())
                .execute(&mut *tx)
                .await?;
                Ok(Ok(row))
            })
            .await?;
        match creation {
            Ok(row) => {
                let scan = row.into_scan()?;
                // After the commit, a hint for this process's readers; none listening is fine.
                let _ = self.changes.send(ScanChange::of(None, &scan, None));
                Ok(Creation::Created(scan))
            }
            Err(claimed) if claimed.key_group == group.as_str() => {
                Ok(Creation::Replayed(claimed.scan.into_scan()?.as_created()))
            }
            Err(_) => Ok(Creation::KeyUsedForAnotherGroup),
        }
    }

    /// Forgets at most `limit` idempotency keys claimed longer than the window ago; how many.
    pub async fn forget_idempotency_keys(&self, limit: u32) -> Result<u64, StoreError> {
        let done = self
            .as_writer(async |connection| {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE rowid IN (
                         SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
                )
                .bind(rfc3339::text(now() - IDEMPOTENCY_WINDOW))
                .bind(i64::from(limit))
                .execute(connection)
                .await
            })
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn find_scan(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
    ) -> Result<Option<Scan>, StoreError> {
        let row: Option<ScanRow> = self
            .bounded(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCAN_COLUMNS} FROM signal_scans
                     WHERE id = ?1 AND (?2 IS NULL OR account_group_id = ?2)"
                )))
                .bind(scan.as_str())
                .bind(group.map(AccountGroupId::as_str))
                .fetch_optional(&self.pool),
            )
            .await?;
        row.map(ScanRow::into_scan).transpose()
    }

    pub async fn find_claimed_scan(
        &self,
        group: &AccountGroupId,
        scan: &ScanId,
    ) -> Result<Option<ClaimedScan>, StoreError> {
        let row: Option<ScanRow> = self
            .bounded(
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {SCAN_COLUMNS_OF_S},
                            (SELECT e.api_key_id FROM signal_scan_events AS e
                             WHERE e.scan_id = s.id AND e.to_status = 'running'
                             ORDER BY e.id DESC LIMIT 1) AS started_by
                     FROM signal_scans AS s WHERE s.id = ?1 AND s.account_group_id = ?2"
                )))
                .bind(scan.as_str())
                .bind(group.as_str())
                .fetch_optional(&self.pool),
            )
            .await?;
        row.map(ScanRow::into_claimed).transpose()
    }

    pub async fn scan_events(&self, scan: &ScanId) -> Result<Vec<ScanEvent>, StoreError> {
        let rows: Vec<EventRow> = self
            .bounded(
                sqlx::query_as(
                    "SELECT scan_id, from_status, to_status, api_key_id, trace_id, occurred_at,
                            reason
                     FROM signal_scan_events WHERE scan_id = ?1 ORDER BY id",
                )
                .bind(scan.as_str())
                .fetch_all(&self.pool),
            )
            .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    pub async fn list_scans(
        &self,
        group: &AccountGroupId,
        query: &ScanPageQuery,
    ) -> Result<Vec<Scan>, StoreError> {
        let statement = list_scans_statement(query.status.is_some(), query.after.is_some());
        let page = sqlx::query_as(sqlx::AssertSqlSafe(statement)).bind(group.as_str());
        let page = match query.status {
            Some(status) => page.bind(status.as_str()),
            None => page,
        };
        let page = match &query.after {
            Some(after) => page
                .bind(rfc3339::text(after.created_at))
                .bind(after.id.as_str()),
            None => page,
        };
        let rows: Vec<ScanRow> = self
            .bounded(page.bind(i64::from(query.limit) + 1).fetch_all(&self.pool))
            .await?;
        rows.into_iter().map(ScanRow::into_scan).collect()
    }

    /// On SQLite a writer holds the database's one write lock from its first write to its
    /// commit, so audit ids follow commit order and the id alone is the cursor. One group's rows
    /// are a range of its index `(account_group_id, id)`.
    pub(crate) async fn read_feed(
        &self,
        cursor: &FeedCursor,
        group: Option<&AccountGroupId>,
    ) -> Result<FeedPage, StoreError> {
        let read = sqlx::query_as(match group {
            None => EVERY_GROUPS_FEED,
            Some(_) => ONE_GROUPS_FEED,
        })
        .bind(cursor.frontier().id)
        .bind(i64::from(PAGE_ROWS));
        let read = match group {
            None => read,
            Some(group) => read.bind(group.as_str()),
        };
        let rows: Vec<FeedReadRow> = self.bounded(read.fetch_all(&self.pool)).await?;
        let trimmed = rows.first().and_then(|row| row.trimmed);
        let rows = rows
            .into_iter()
            .filter_map(|row| row.change)
            .map(ChangeRow::into_feed_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeedPage {
            full: rows.len() >= PAGE_ROWS as usize,
            rows,
            horizon: None,
            trimmed: trimmed.map(|id| FeedPosition { xid: 0, id }),
        })
    }

    pub async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let newest: i64 = self
            .bounded(
                sqlx::query_scalar(
                    "SELECT max(coalesce((SELECT max(id) FROM signal_scan_events), 0),
                                coalesce((SELECT max(id) FROM signal_scan_events_trimmed), 0))",
                )
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(FeedCursor::at_head(
            FeedPosition { xid: 0, id: newest },
            None,
        ))
    }

    pub async fn close(&self, limit: Duration) {
        // One pool after the other, the writes' connection last and alone. A connection finds it
        // is the last by taking the file's exclusive lock as it closes; two closing at once can
        // each see the other still open, and then neither writes the log back (the log was left
        // beside the file once in a CI run, the pools closed side by side).
        let closed = async {
            self.pool.close().await;
            self.writes.close().await;
        };
        if tokio::time::timeout(limit, closed).await.is_err() {
            tracing::warn!(
                limit_ms = limit.as_millis(),
                "a connection to the database was still in use at the stop: its write-ahead log \
                 stays beside it until it is next opened"
            );
        }
    }

    /// On SQLite every position is at xid 0: none is another database's.
    pub async fn rebased_through(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    pub async fn feed_knows(&self, position: FeedPosition) -> Result<bool, StoreError> {
        if position.xid != 0 {
            return Ok(false);
        }
        self.bounded(
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM signal_scan_events WHERE id = ?1)
                     OR EXISTS (SELECT 1 FROM signal_scan_events_trimmed WHERE id >= ?1)",
            )
            .bind(position.id)
            .fetch_one(&self.pool),
        )
        .await
    }

    pub async fn trimmed_mark(
        &self,
        group: Option<&AccountGroupId>,
    ) -> Result<Option<FeedPosition>, StoreError> {
        // Two statements: `?1 IS NULL OR …` cannot use the primary key for one group's mark.
        let read = match group {
            None => sqlx::query_scalar("SELECT max(id) FROM signal_scan_events_trimmed"),
            Some(group) => sqlx::query_scalar(
                "SELECT id FROM signal_scan_events_trimmed WHERE account_group_id = ?1",
            )
            .bind(group.as_str()),
        };
        let mark: Option<i64> = self
            .bounded(read.fetch_optional(&self.pool))
            .await?
            .flatten();
        Ok(mark.map(|id| FeedPosition { xid: 0, id }))
    }

    /// One short write transaction: SQLite has one writer at a time, so a cancel waits for at
    /// most one batch (about 30 ms for the default batch of 500, measured while a backlog was
    /// swept).
    pub async fn trim_audit(&self, cutoff: OffsetDateTime, batch: u32) -> Result<u64, StoreError> {
        self.as_writer(async |tx| {
            // Timestamps are text of one fixed width, so they compare as the instants they name.
            let deleted: Vec<(String, i64)> = sqlx::query_as(
                "WITH head AS (
                     SELECT id, occurred_at FROM signal_scan_events ORDER BY id LIMIT ?2
                 ), young AS (
                     SELECT min(id) AS id FROM head WHERE occurred_at >= ?1
                 )
                 DELETE FROM signal_scan_events
                 WHERE id IN (SELECT id FROM head
                              WHERE id < coalesce((SELECT id FROM young), 9223372036854775807))
                 RETURNING account_group_id, id",
            )
            .bind(rfc3339::text(cutoff))
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await?;
            let mut marks: HashMap<&str, i64> = HashMap::new();
            for (group, id) in &deleted {
                let mark = marks.entry(group.as_str()).or_insert(*id);
                *mark = (*mark).max(*id);
            }
            for (group, id) in marks {
                sqlx::query(
                    "INSERT INTO signal_scan_events_trimmed (account_group_id, id) VALUES (?1, ?2)
                     ON CONFLICT (account_group_id) DO UPDATE SET id = max(id, excluded.id)",
                )
                .bind(group)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Ok(deleted.len() as u64)
        })
        .await
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ScanChange> {
        self.changes.subscribe()
    }

    /// Requests waiting for their changes to commit (tests wait on it to line contenders up).
    pub(super) fn changes_waiting(&self) -> usize {
        self.pipeline.get().map_or(0, Pipeline::waiting)
    }

    /// Moves each scan of `changes` if its current status allows it, in arrival order, in one
    /// transaction shared with the other changes waiting (group commit: `store/pipeline.rs`).
    pub async fn transitions(
        &self,
        changes: Vec<ChangeRequest>,
    ) -> Result<Vec<Transition>, StoreError> {
        let writer = self.pipeline.get_or_init(|| {
            let writer = BatchWrites {
                pool: self.writes.clone(),
                turn: Arc::clone(&self.writer),
                timeout: self.timeout,
                changes: self.changes.clone(),
            };
            // One batch at a time: SQLite has one write lock.
            Pipeline::start(writer, 1, self.timeout)
        });
        writer.submit(changes).await
    }
}

/// The SQLite store's writer: a batch is one `BEGIN IMMEDIATE` transaction, taken with this
/// process's write turn.
#[derive(Clone)]
struct BatchWrites {
    pool: SqlitePool,
    turn: Arc<WriteTurn>,
    timeout: Duration,
    /// This process's readers, told of each committed change (none listening is fine).
    changes: tokio::sync::broadcast::Sender<ScanChange>,
}

impl BatchWriter for BatchWrites {
    /// At most three statements for the whole batch, however many changes it holds: the audit
    /// rows of the changes each scan's status allows (read from the scans before they change),
    /// the guarded update of those scans, and, only when some change did not apply, the scans as
    /// they are. A batch never holds two changes of one scan, so each statement sees each scan
    /// once.
    async fn write(&self, changes: &[ChangeRequest]) -> Result<Vec<Transition>, StoreError> {
        let batch = batch_json(changes)?;
        // BEGIN IMMEDIATE holds SQLite's single write lock for the whole transaction, so the
        // statuses the audit rows record cannot go stale before the guarded UPDATE; the UPDATE
        // keeps its from-status guard all the same.
        let (audited, changed, unchanged) =
            in_write_turn(&self.pool, &self.turn, self.timeout, async |tx| {
                // Stamped once the write lock is held: never before a change it waited behind.
                let at = rfc3339::text(now());
                let audited: Vec<(String, String)> = sqlx::query_as(AUDIT_BATCH)
                    .bind(&batch)
                    .bind(&at)
                    .fetch_all(&mut *tx)
                    .await?;
                let changed: Vec<ScanRow> = match audited.is_empty() {
                    true => Vec::new(),
                    false => {
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "{UPDATE_BATCH} RETURNING {SCAN_COLUMNS}"
                        )))
                        .bind(&batch)
                        .bind(&at)
                        .fetch_all(&mut *tx)
                        .await?
                    }
                };
                let unchanged: Vec<ScanRow> = match audited.len() < changes.len() {
                    false => Vec::new(),
                    true => {
                        sqlx::query_as(sqlx::AssertSqlSafe(format!(
                            "SELECT {SCAN_COLUMNS_OF_S} {SCANS_OF_BATCH}"
                        )))
                        .bind(&batch)
                        .fetch_all(&mut *tx)
                        .await?
                    }
                };
                Ok((audited, changed, unchanged))
            })
            .await?;
        let previous: HashMap<String, String> = audited.into_iter().collect();
        let by_id = |rows: Vec<ScanRow>| -> HashMap<ScanId, ScanRow> {
            rows.into_iter().map(|row| (row.id.0, row)).collect()
        };
        let (mut changed, mut unchanged) = (by_id(changed), by_id(unchanged));
        let outcomes = changes
            .iter()
            .map(|change| {
                if let Some(row) = changed.remove(&change.scan) {
                    let previous = previous.get(change.scan.as_str()).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "scan {} changed without its audit row",
                            change.scan
                        ))
                    })?;
                    return Ok(Transition::Applied {
                        previous: super::parse_status(previous)?,
                        scan: row.into_scan()?,
                    });
                }
                match unchanged.remove(&change.scan) {
                    Some(row) => Ok(Transition::Refused {
                        scan: row.into_scan()?,
                    }),
                    None => Ok(Transition::NotFound),
                }
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        for hint in super::hints(&outcomes) {
            let _ = self.changes.send(hint);
        }
        Ok(outcomes)
    }
}

/// A batch as the statements below read it: a JSON array, one object per change, in arrival
/// order: `scan`, `group` (null: any), `to`, `from` (the statuses `to` may be reached from),
/// and the audit row's `key`, `trace` and `reason`. The statements read it with `jsonb_each`,
/// which hands each change on in SQLite's binary JSON: `json_each` writes every object back out as
/// text for each `->>` to parse again, a sixth of the writer's CPU under load.
fn batch_json(changes: &[ChangeRequest]) -> Result<String, StoreError> {
    #[derive(serde::Serialize)]
    struct Change<'a> {
        scan: &'a str,
        group: Option<&'a str>,
        to: &'a str,
        from: Vec<&'a str>,
        key: Option<String>,
        trace: Option<&'a str>,
        reason: Option<&'a str>,
    }
    let batch: Vec<Change> = changes
        .iter()
        .map(|change| Change {
            scan: change.scan.as_str(),
            group: change.group.as_ref().map(AccountGroupId::as_str),
            to: change.to.as_str(),
            from: change
                .to
                .reachable_from()
                .iter()
                .map(|s| s.as_str())
                .collect(),
            key: change.api_key_id.map(|id| id.to_string()),
            trace: change.trace_id.as_deref(),
            reason: change.reason.as_deref(),
        })
        .collect();
    json(&batch)
}

/// The batch's changes (`?1`) joined to their scans, each scan of the group it names (if any).
const SCANS_OF_BATCH: &str = "FROM (SELECT value AS change FROM jsonb_each(?1)) AS c
     JOIN signal_scans AS s ON s.id = c.change ->> 'scan'
     WHERE (c.change ->> 'group' IS NULL OR s.account_group_id = c.change ->> 'group')";

/// The audit rows of the changes whose scan's status allows them, stamped `?2` (or the scan's last
/// change, should the clock have been set back since: a scan's instants never run backwards), in
/// arrival order: each answers its scan and the status it moves from.
const AUDIT_BATCH: &str = "INSERT INTO signal_scan_events
         (scan_id, from_status, to_status, api_key_id, trace_id, occurred_at, reason,
          account_group_id)
     SELECT s.id, s.status, c.change ->> 'to', c.change ->> 'key', c.change ->> 'trace',
            max(?2, s.updated_at), c.change ->> 'reason', s.account_group_id
     FROM (SELECT key AS place, value AS change FROM jsonb_each(?1)) AS c
     JOIN signal_scans AS s ON s.id = c.change ->> 'scan'
     WHERE (c.change ->> 'group' IS NULL OR s.account_group_id = c.change ->> 'group')
       AND s.status IN (SELECT value FROM json_each(c.change, '$.from'))
     ORDER BY c.place
     RETURNING scan_id, from_status";

/// The guarded update of the same changes, stamped as their audit rows (text order is time
/// order): the state machine's timestamps move with the status.
const UPDATE_BATCH: &str = "UPDATE signal_scans
     SET status = c.change ->> 'to',
         updated_at = max(?2, updated_at),
         started_at = CASE WHEN c.change ->> 'to' = 'running' THEN max(?2, updated_at)
                           ELSE started_at END,
         finished_at = CASE WHEN c.change ->> 'to' IN ('completed', 'failed', 'cancelled')
                            THEN max(?2, updated_at) ELSE finished_at END,
         cancelled_at = CASE WHEN c.change ->> 'to' = 'cancelled' THEN max(?2, updated_at)
                             ELSE cancelled_at END
     FROM (SELECT value AS change FROM jsonb_each(?1)) AS c
     WHERE signal_scans.id = c.change ->> 'scan'
       AND (c.change ->> 'group' IS NULL OR signal_scans.account_group_id = c.change ->> 'group')
       AND signal_scans.status IN (SELECT value FROM json_each(c.change, '$.from'))";

/// This process's turn to write, and the file the writes go to.
pub(super) struct WriteTurn {
    lock: tokio::sync::Mutex<AuditIds>,
    file: DatabaseFile,
}

impl WriteTurn {
    fn on(file: DatabaseFile) -> Self {
        Self {
            lock: tokio::sync::Mutex::new(AuditIds::MayFollowAnotherHistory),
            file,
        }
    }
}

/// Whether this process has moved the audit trail's next id past the present. A change's id is
/// its place in the change feed, and a cursor names one: were ids reused, a cursor handed out
/// before the database was restored from a backup (or a copy put in its place) would come to name
/// another change of the restored trail, and a stream resumed from it would skip the changes
/// between, unseen. So the first write of each process moves the next id to the present in
/// microseconds (where a restored database's ids stand far below), and no id handed out before a
/// restore is ever given again: ids still follow commit order (there is one writer), and a cursor
/// from the lost history names no change of this trail, which a resume refuses with 410
/// (`ScanService::check_resume`). Ids grow by one a change, far slower than the clock. A clock
/// set back across a restore, below the time the lost ids were given at, could give one again:
/// that cannot be told from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuditIds {
    MayFollowAnotherHistory,
    PastThisProcessStart,
}

/// Moves the audit trail's next id to at least `now` in microseconds since the epoch (SQLite's
/// `AUTOINCREMENT` takes the greater of this and the greatest id, plus one).
async fn move_audit_ids_past_now(connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let now = now().unix_timestamp_nanos() / 1_000;
    let now = i64::try_from(now).unwrap_or(i64::MAX / 2);
    sqlx::query(
        "INSERT INTO sqlite_sequence (name, seq)
         SELECT 'signal_scan_events', ?1
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'signal_scan_events')",
    )
    .bind(now)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'signal_scan_events' AND seq < ?1",
    )
    .bind(now)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// The database file as the store opened it, to tell when its path no longer names it: a
/// connection opened before the file was deleted or replaced goes on writing to the old one, so
/// every change it commits after that is lost.
pub(super) struct DatabaseFile {
    path: PathBuf,
    /// Device and inode, once the store has opened the file; none for an in-memory database.
    opened: OnceLock<(u64, u64)>,
    /// The path SQLite opened the file by (`pragma_database_list`), once the store has: its
    /// symbolic links followed, since SQLite keeps the `-wal` and `-shm` beside the file a link
    /// leads to, not beside the link.
    resolved: OnceLock<PathBuf>,
}

fn connect_file(options: &SqliteConnectOptions) -> DatabaseFile {
    DatabaseFile {
        path: options.get_filename().to_owned(),
        opened: OnceLock::new(),
        resolved: OnceLock::new(),
    }
}

impl DatabaseFile {
    /// Whether the path names a file now (never, for an in-memory database).
    fn exists(&self) -> bool {
        std::fs::metadata(&self.path).is_ok()
    }

    /// `resolved`: the path SQLite opened it by, its symbolic links followed.
    fn remember(&self, resolved: PathBuf) {
        use std::os::unix::fs::MetadataExt;
        let _ = self.resolved.set(resolved);
        if let Ok(metadata) = std::fs::metadata(&self.path) {
            let _ = self.opened.set((metadata.dev(), metadata.ino()));
        }
    }

    /// Fails, as the database unavailable, when the path no longer names the file opened.
    fn check(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let Some(opened) = self.opened.get() else {
            return Ok(());
        };
        let file = self.path.display();
        let what = match std::fs::metadata(&self.path) {
            Ok(now) if (now.dev(), now.ino()) == *opened => return Ok(()),
            Ok(_) => "was replaced",
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                "was deleted or moved away"
            }
            Err(error) => {
                return Err(StoreError::Unavailable(format!(
                    "the database file {file} cannot be checked ({error}), so nothing is written"
                )));
            }
        };
        // A restart now would serve an empty database in place of a deleted one, or replay the
        // old file's write-ahead log over a restored one: README's "Troubleshoot" says what to do.
        Err(StoreError::Unavailable(format!(
            "the database file {file} {what} while this process had it open, so nothing is \
             written to it: a file moved away can be moved back, and writes resume; otherwise \
             stop the service and restore the file before starting it again (README, \
             Troubleshoot)"
        )))
    }

    /// Fails, as the database unavailable, when the write-ahead log or its index (`-wal`, `-shm`)
    /// is gone from beside the file while a connection has them open (an operator deleting them
    /// as if to restore): SQLite writes on into the deleted files, and a crash or a restart loses
    /// every change they hold; another process, a command, would open new ones and see another
    /// database. A graceful stop still writes the deleted log's changes into the file.
    fn check_companions(&self) -> Result<(), StoreError> {
        if self.opened.get().is_none() {
            return Ok(());
        }
        let file = self.resolved.get().unwrap_or(&self.path);
        for suffix in ["-wal", "-shm"] {
            let mut companion = file.clone().into_os_string();
            companion.push(suffix);
            if std::fs::symlink_metadata(&companion)
                .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
            {
                return Err(StoreError::Unavailable(format!(
                    "{} was deleted while this process had the database open, so nothing more is \
                     written: the changes since the last stop may be in the deleted file alone; \
                     stop the service gracefully (SIGTERM), which writes them into the database, \
                     then start it again (README, Troubleshoot)",
                    std::path::Path::new(&companion).display()
                )));
            }
        }
        Ok(())
    }
}

/// Runs `write` in one `BEGIN IMMEDIATE` transaction with `turn` held, and commits it. Waiting
/// for the turn and the connection, and every statement, are bounded by `timeout`: past it the
/// transaction is dropped (rolled back: nothing committed) and the caller told
/// [`StoreError::Unavailable`]. The COMMIT is not bounded: once it is sent SQLite may make the
/// transaction durable whatever this side does, so it is awaited to its end and its own answer is
/// the truth. A caller is never told "not written" of a change that committed.
///
/// A connection whose transaction failed is closed, not given back to the pool: SQLite rolls a
/// transaction back itself on some errors (a COMMIT that finds the disk full), sqlx's ROLLBACK
/// then fails, and the connection would refuse every later BEGIN ("non-zero transaction depth")
/// until the process restarted.
async fn in_write_turn<T>(
    pool: &SqlitePool,
    turn: &WriteTurn,
    timeout: Duration,
    write: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    turn.file.check()?;
    let mut connection = None;
    let written = write_and_commit(pool, turn, timeout, &mut connection, write).await;
    // Kept when its log is gone: a connection opened in its place would make a new, empty log
    // beside the old index and fail on it (`disk I/O error`), not be refused as this one is.
    if written.is_err()
        && turn.file.check_companions().is_ok()
        && let Some(connection) = connection.as_mut()
    {
        connection.close_on_drop();
    }
    written
}

/// [`in_write_turn`]'s transaction, on a connection left in `connection` for the caller to close
/// when this fails.
async fn write_and_commit<T>(
    pool: &SqlitePool,
    turn: &WriteTurn,
    timeout: Duration,
    connection: &mut Option<PoolConnection<Sqlite>>,
    write: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    let file = &turn.file;
    // This process's writers queue for `turn`: a wait for SQLite's write lock after it is one
    // for another connection's write (another process, a command), which the timeout then names.
    let locking = AtomicBool::new(false);
    let done = bounded(timeout, async {
        let turn = turn.lock.lock().await;
        let acquired = connection.insert(pool.acquire().await?);
        locking.store(true, Ordering::Relaxed);
        let begun = acquired.begin_with("BEGIN IMMEDIATE").await;
        // SQLite's own wait for the lock (its busy handler, as long as the timeout) may end a
        // moment before the timer does: that is the same wait, told the same way.
        if !begun.as_ref().is_err_and(is_busy) {
            locking.store(false, Ordering::Relaxed);
        }
        let mut tx = begun?;
        if *turn == AuditIds::MayFollowAnotherHistory {
            move_audit_ids_past_now(&mut tx).await?;
        }
        let written = write(&mut tx).await?;
        Ok((turn, tx, written))
    })
    .await
    .map_err(|error| match error {
        StoreError::Unavailable(_) if locking.load(Ordering::Relaxed) => {
            StoreError::Unavailable(format!("{}: {WRITE_LOCK_HELD}", no_answer_within(timeout)))
        }
        other => other,
    });
    // In a transaction the connection has both files open: one missing was deleted. A connection
    // opened since cannot even read the database without them (`disk I/O error`), which is then
    // that too. (Not after a timeout: a pool that had closed its last connection, and with it the
    // log, may not have opened one.)
    if !matches!(done, Err(StoreError::Unavailable(_))) {
        file.check_companions()?;
    }
    let (mut turn, tx, written) = done?;
    tx.commit().await.map_err(classify)?;
    *turn = AuditIds::PastThisProcessStart;
    Ok(written)
}

/// Whether `migrator` holds a migration that the database has not applied.
async fn pending(
    connection: &mut SqliteConnection,
    migrator: &Migrator,
) -> Result<bool, sqlx::Error> {
    let recorded: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *connection)
    .await?;
    if !recorded {
        return Ok(true);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *connection)
            .await?;
    Ok(super::migrations::pending(
        migrator,
        super::migrations::SQLITE_RETIRED,
        &applied,
    ))
}

/// A pool of at most `connections` to the file, each waited for at most `timeout`.
fn pool_options(connections: u32, timeout: Duration) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(timeout)
        // No ping before each use: a connection here is a file this process holds open, with no
        // server that could have hung up, and a ping is one more trip to the connection's thread.
        // On the write path it was one trip in five of every batch, and its wake-ups cost (c) a
        // third of its throughput (BENCHMARKS.md).
        .test_before_acquire(false)
}

/// How many of SQLite's virtual-machine steps a read runs between looks at its deadline: a
/// look is a clock reading, a few nanoseconds against a few microseconds of steps.
const STEPS_BETWEEN_LOOKS: i32 = 1000;

tokio::task_local! {
    /// The deadline of the read this task is making ([`SqliteStore::bounded`]), which the pool's
    /// hooks run in: the instant [`end_reads_at`] stops its statement at.
    static READ_DEADLINE: std::time::Instant;
}

/// Makes SQLite itself stop (`SQLITE_INTERRUPT`) whatever statement `connection` runs once the
/// read taking it from the pool is past its deadline (`timeout` from now for one with none),
/// when its request has been answered 502 already. Without this the statement ran on to its end,
/// a long page for seconds, holding its connection and a core while the client retried into the
/// next one.
async fn end_reads_at(
    connection: &mut SqliteConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let deadline = READ_DEADLINE
        .try_with(|deadline| *deadline)
        .unwrap_or_else(|_| std::time::Instant::now() + timeout);
    connection
        .lock_handle()
        .await?
        .set_progress_handler(STEPS_BETWEEN_LOOKS, move || {
            std::time::Instant::now() < deadline
        });
    Ok(())
}

/// What a wait for SQLite's write lock is told as: another connection has it.
const WRITE_LOCK_HELD: &str = "another connection holds the database's write lock";

/// SQLite's primary result codes this store acts on (an extended code's low byte is its primary).
const SQLITE_BUSY: i32 = 5;
const SQLITE_READONLY: i32 = 8;
const SQLITE_INTERRUPT: i32 = 9;
const SQLITE_CANTOPEN: i32 = 14;

/// The primary result code of a database error.
fn primary_code(error: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(error) = error else {
        return None;
    };
    let code = error.code().and_then(|code| code.parse::<i32>().ok());
    code.map(|code| code & 0xff)
}

/// SQLITE_BUSY or one of its extended codes: another connection holds the lock.
fn is_busy(error: &sqlx::Error) -> bool {
    primary_code(error) == Some(SQLITE_BUSY)
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_microsecond(now.microsecond())
        .expect("microseconds of a valid instant")
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.to_string()))
}

/// One writer counted in [`SqliteStore::writers_wanting`] while it lives.
struct Wanting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Wanting<'a> {
    fn count(wanting: &'a std::sync::atomic::AtomicUsize) -> Self {
        wanting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(wanting)
    }
}

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

    use super::{StoreError, WriteTurn, connect_file, in_write_turn};

    /// Room for a loaded machine to take the turn, BEGIN and INSERT; the COMMIT is held 5× longer.
    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A database file of its own, removed when dropped, with a table `t`; one connection. A file,
    /// not memory: a write that fails closes its connection, and an in-memory database with it.
    struct Database {
        pool: SqlitePool,
        folder: std::path::PathBuf,
    }

    impl Drop for Database {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.folder);
        }
    }

    async fn database() -> Database {
        let folder = std::env::temp_dir().join(format!("sqlite-turn-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&folder).unwrap();
        let options = SqliteConnectOptions::new()
            .filename(folder.join("t.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        Database { pool, folder }
    }

    /// A write turn that checks no file (the test's own stays where it is).
    fn turn() -> WriteTurn {
        let turn = WriteTurn::on(connect_file(&SqliteConnectOptions::new()));
        // These databases hold no audit trail to number.
        *turn.lock.try_lock().expect("a new turn is free") = super::AuditIds::PastThisProcessStart;
        turn
    }

    async fn rows(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// A COMMIT that takes longer than the timeout (SQLite's commit hook holds it 1.5 s) is
    /// awaited, and the caller told it committed: never "unavailable" for a change that is in.
    #[tokio::test]
    async fn a_commit_slower_than_the_timeout_is_awaited_and_told_as_it_ended() {
        let database = database().await;
        let pool = &database.pool;
        {
            let mut connection = pool.acquire().await.unwrap();
            let mut handle = connection.lock_handle().await.unwrap();
            handle.set_commit_hook(|| {
                std::thread::sleep(TIMEOUT * 5);
                true // go on with the commit
            });
        }
        let turn = turn();
        let started = Instant::now();

        let written = in_write_turn(pool, &turn, TIMEOUT, async |connection| {
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(connection)
                .await
        })
        .await;

        assert!(written.is_ok(), "{written:?}");
        assert!(started.elapsed() >= TIMEOUT * 5);
        assert_eq!(rows(pool).await, 1);
    }

    /// A statement still running at the timeout is given up on, and its transaction rolled back:
    /// the caller is told "unavailable" and nothing of it committed.
    #[tokio::test]
    async fn a_statement_slower_than_the_timeout_is_unavailable_and_rolled_back() {
        let database = database().await;
        let pool = &database.pool;
        let turn = turn();

        let written = in_write_turn(pool, &turn, TIMEOUT, async |connection| {
            sqlx::query(
                "INSERT INTO t
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000000)
                 SELECT count(*) FROM n",
            )
            .execute(connection)
            .await
        })
        .await;

        assert!(
            matches!(written, Err(StoreError::Unavailable(_))),
            "{written:?}"
        );
        assert_eq!(rows(pool).await, 0);
    }

    /// A read that SQLite stopped at its deadline, and one that found no read connection in time,
    /// are told in the words PostgreSQL's are, which README's Troubleshoot names: they were the
    /// driver's own (`(code: 9) interrupted`; `pool timed out while waiting for an open
    /// connection`), which neither README named nor said that the timeout ran out (the SQLite
    /// review).
    #[tokio::test]
    async fn a_read_out_of_time_is_told_in_the_words_readme_names() {
        let folder = std::env::temp_dir().join(format!("sqlite-read-{}", uuid::Uuid::new_v4()));
        let store = super::SqliteStore::connect(&super::StoreOptions {
            url: format!("sqlite://{}", folder.join("t.db").display()).into(),
            timeout: TIMEOUT,
            max_connections: 2,
            write_batches: 1,
            publish_interval: Duration::ZERO,
        })
        .unwrap();
        store.migrate().await.unwrap();
        let endless = sqlx::query_scalar::<_, i64>(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        )
        .fetch_one(&store.pool);
        // Stopped by SQLite well before the store's own timer would end the wait: the pool's hook
        // arms the handler with the deadline of the scope nearest the query.
        let stopped_early =
            super::READ_DEADLINE.scope(std::time::Instant::now() + TIMEOUT / 10, endless);

        let started = Instant::now();
        let interrupted = store.bounded(stopped_early).await.unwrap_err().to_string();
        let stopped_after = started.elapsed();
        let held = store.pool.acquire().await.unwrap();
        let no_connection = store
            .bounded(async { Err::<(), _>(sqlx::Error::PoolTimedOut) })
            .await
            .unwrap_err()
            .to_string();

        assert_eq!(interrupted, "database unavailable: no answer within 300 ms");
        assert!(
            stopped_after < TIMEOUT / 2,
            "{stopped_after:?}: not SQLite's stop"
        );
        assert_eq!(
            no_connection,
            "database unavailable: no connection of the pool within 300 ms (1 of its 1 read \
             connections in use: slow reads hold them, or the pool is too small for the load)"
        );
        drop(held);
        store.close(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&folder);
    }
}
