//! The PostgreSQL store: runtime-checked queries with explicit binds, each bounded in time.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, FromRow, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::pg_pool::{ANSWER_GRACE, Checkout, ConnectionPool, HeldConnection};
use super::pg_url;
use super::pipeline::{BatchWriter, ChangeRequest, Pipeline};
use super::publisher::Publisher;
use super::rows::{ChangeRow, ClaimedKeyRow, EventRow, KeyRow, ScanRow};
use super::{
    FoundKey, IS_EMPTY, KeyToCreate, MIGRATION_WAIT_TOLD, PoolUsage, ReadsCounted, StoreError,
    StoreOptions, announced, bounded, bounded_until, classify, migration_error,
};
use crate::domain::feed::{FeedCursor, FeedPage, FeedPosition, Horizon, PAGE_ROWS};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{AccountGroupAccess, ApiKey, KeyHash};
use crate::domain::scan::{
    Actor, ClaimedScan, Creation, IDEMPOTENCY_WINDOW, IdempotencyKey, Scan, ScanChange, ScanEvent,
    ScanPageQuery, ScanStatus, Transition,
};

/// A key's columns shaped as [`KeyRow`] reads them (uuid as text, arrays as JSON).
macro_rules! key_columns {
    () => {
        "id::text AS id, name, array_to_json(permissions)::text AS permissions, \
         array_to_json(account_group_ids)::text AS account_group_ids, \
         created_at, expires_at, revoked_at"
    };
}

/// A scan's columns, each named: an answer's columns never follow the table's (`*`). A migration
/// that adds a column changes what `*` means under every connection's prepared statements, and
/// PostgreSQL refuses each of them ("cached plan must not change result type") until the process
/// restarts: the running version must keep working while the next one migrates.
macro_rules! scan_columns {
    () => {
        "id, account_group_id, status, created_at, updated_at, started_at, finished_at, \
         cancelled_at"
    };
    (s) => {
        "s.id, s.account_group_id, s.status, s.created_at, s.updated_at, s.started_at, \
         s.finished_at, s.cancelled_at"
    };
}

/// The advisory lock that migrating processes take in turn (PostgreSQL's advisory locks are
/// per database): "SIGNALSC" in ASCII.
const MIGRATION_LOCK: i64 = 0x5349_474E_414C_5343;

/// How often a process waiting to migrate asks for [`MIGRATION_LOCK`] again.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(100);
/// How long migrations run before the first look at whether other sessions hold them up.
const MIGRATION_BLOCKERS_FIRST_TOLD: Duration = Duration::from_secs(5);

/// The sessions that hold up the backend `$1`, each with its state and how long its transaction
/// has been open; NULL for none.
const BLOCKERS: &str = "SELECT string_agg(format('pid %s (%s, its transaction open %s s%s)',
           pid, coalesce(state, 'unknown'),
           coalesce(extract(epoch FROM now() - xact_start)::bigint, 0),
           coalesce(', application ' || nullif(application_name, ''), '')), '; ' ORDER BY pid)
    FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids($1))";

/// The sessions holding the migration lock (`$1`, an advisory lock of one `int8`: its high and
/// low halves are `classid` and `objid`) in this database (`pg_locks` shows every database's, and
/// the lock is each database's own), in [`BLOCKERS`]' words and with what each runs: a
/// `migrate` killed mid-way leaves its session running its statement (an index build, a backfill)
/// until it ends, and the waiting process named no one.
const LOCK_HOLDERS: &str =
    "SELECT string_agg(format('pid %s (%s, its transaction open %s s%s): %s',
           a.pid, coalesce(a.state, 'unknown'),
           coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0),
           coalesce(', application ' || nullif(a.application_name, ''), ''),
           left(regexp_replace(a.query, '[[:space:]]+', ' ', 'g'), 120)), '; ' ORDER BY a.pid)
    FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid";

/// The migrations that build an index `CONCURRENTLY`, in order, and their indexes: see
/// [`adopt_concurrent_index`].
const CONCURRENT_INDEXES: [(i64, &str); 1] = [(5, "signal_scan_events_group_feed")];

#[derive(Clone)]
pub struct PgStore {
    pool: ConnectionPool,
    /// Shared, not copied: the store is cloned into every request (axum state), and the options
    /// are large; the profile showed their per-request copy and drop.
    migrate_options: Arc<PgConnectOptions>,
    timeout: Duration,
    /// Started by the first change this process commits; shared by every clone.
    publisher: Arc<OnceLock<Publisher>>,
    publish_interval: Duration,
    pub(super) counted: Arc<ReadsCounted>,
    /// Status changes, committed in batches; started by the first.
    pipeline: Arc<OnceLock<Pipeline>>,
    /// Batches committing at once, each on a connection of the pool.
    write_batches: usize,
}

impl PgStore {
    pub fn connect(options: &StoreOptions) -> Result<Self, StoreError> {
        let timeout_ms = options.timeout.as_millis().to_string();
        let connect = pg_url::parse(options.url.expose_secret())?.application_name("signal-scans");
        // Migrations may wait for another replica's migration lock and may take long: they run
        // on their own connection without the request timeout.
        let migrate_options = Arc::new(connect.clone());
        let connect = connect.options([
            // The server gives up on a statement when we would, so a stalled query does not
            // keep holding its row locks after the client has answered 502.
            ("statement_timeout", timeout_ms.as_str()),
            // The guarded statements rely on READ COMMITTED (a waiter re-reads the winner's
            // row); a database whose default is stricter would turn races into 500s.
            ("default_transaction_isolation", "read committed"),
        ]);
        Ok(Self {
            pool: ConnectionPool::new(connect, options.max_connections, options.timeout),
            migrate_options,
            timeout: options.timeout,
            publisher: Arc::new(OnceLock::new()),
            publish_interval: options.publish_interval,
            counted: Arc::default(),
            pipeline: Arc::default(),
            write_batches: options.write_batches.min(options.max_connections) as usize,
        })
    }

    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, query).await
    }

    /// One query on a connection of the pool, bounded by the store's timeout, the wait for a
    /// connection included.
    async fn on_connection<T>(
        &self,
        query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let checkout = checkout_until(&self.pool, deadline, self.timeout).await?;
        bounded_until(deadline, self.timeout, checkout.run(query)).await
    }

    /// One writing statement on a connection of the pool (see [`writing`]).
    async fn writing<T>(
        &self,
        query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        writing(&self.pool, self.timeout, query).await
    }

    /// Holds one of the pool's connections until the guard is dropped.
    #[doc(hidden)] // For the fault tests that exhaust the pool: `tests/api` is another crate.
    pub async fn hold_connection(&self) -> Result<HeldConnection, StoreError> {
        self.bounded(self.pool.hold()).await
    }

    pub(super) fn pool_usage(&self) -> PoolUsage {
        self.pool.usage()
    }

    /// Runs the migrations not yet applied, one process at a time. sqlx's own lock waits inside
    /// `SELECT pg_advisory_lock(…)`, a statement whose snapshot the `CREATE INDEX CONCURRENTLY`
    /// of the process holding the lock waits for in turn: replicas starting together deadlocked,
    /// and one that PostgreSQL aborted mid-build left an invalid index that no later start got
    /// past. Here a process waiting for the lock asks for it between pauses, with no statement
    /// open, and runs sqlx's migrator without its lock. With nothing to apply (every start but
    /// an upgrade's first) it takes no lock: a restart, or `keys revoke` in an incident, never
    /// waits behind another process's long migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // Without sqlx's slow-statement warning: see `announced`.
        let options = (*self.migrate_options).clone().disable_statement_logging();
        let connect = async {
            PgConnection::connect_with(&options)
                .await
                .map_err(|error| match &error {
                    // A database taking no session for now (`ALLOW_CONNECTIONS false`:
                    // maintenance) is unavailable, as the pool takes it, so a command exits 75
                    // (try later). By its words, not its code alone: 55000 also refuses an
                    // invalid database (a `DROP DATABASE` interrupted), which never comes back.
                    // That, one that does not exist, a login refused (and, on a server whose
                    // messages are not in English, this one too) stay a setting to mend: exit 1.
                    sqlx::Error::Database(db)
                        if db.code().as_deref() == Some("55000")
                            && db
                                .message()
                                .contains("is not currently accepting connections") =>
                    {
                        super::pg_pool::unavailable(&error)
                    }
                    _ => error,
                })
        };
        let mut connection = self.bounded(connect).await?;
        let mut migrator = super::migrations::postgres();
        migrator.set_locking(false);
        let migrated = async {
            let upgrading = self.bounded(pending(&mut connection, &migrator)).await?;
            // The backend whose waits an upgrade looks into; nothing to ask when none is due.
            let migrating: Option<i32> = match upgrading {
                true => Some(
                    self.bounded(
                        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut connection),
                    )
                    .await?,
                ),
                false => None,
            };
            let apply = async {
                if upgrading {
                    take_migration_lock(&mut connection).await?;
                    for (version, index) in CONCURRENT_INDEXES {
                        migrator
                            .run_to(version - 1, &mut connection)
                            .await
                            .map_err(migration_error)?;
                        adopt_concurrent_index(&mut connection, &migrator, version, index).await?;
                    }
                }
                // Applies what is left; with nothing left it only reads (and checks the applied
                // files' checksums).
                migrator.run(&mut connection).await.map_err(migration_error)
            };
            match migrating {
                Some(migrating) => announced(self.telling_what_blocks(migrating, apply)).await?,
                None => apply.await?,
            }
            rebase_positions_of_another_cluster(&mut connection).await
        }
        .await;
        // The lock is the session's: closing the connection lets the next process take it.
        let _ = connection.close().await;
        migrated
    }

    /// Runs `migrations` (on the backend `migrating`), saying which sessions hold them up while
    /// any do: first after [`MIGRATION_BLOCKERS_FIRST_TOLD`], then every [`MIGRATION_WAIT_TOLD`].
    /// An index built `CONCURRENTLY` (migration 0005) waits for every older transaction of the
    /// database to end: a `pg_dump`, or a session left idle in a transaction, held a start for as
    /// long as it lasted, with nothing said after "applying this version's new migrations"
    /// (operations review). Any other statement waits for the sessions holding a lock on its
    /// table (0006's index, behind a session that wrote the retention marks and stays open).
    async fn telling_what_blocks<T>(
        &self,
        migrating: i32,
        migrations: impl Future<Output = T>,
    ) -> T {
        let mut migrations = std::pin::pin!(migrations);
        let started = tokio::time::Instant::now();
        let mut next = started + MIGRATION_BLOCKERS_FIRST_TOLD;
        loop {
            tokio::select! {
                migrated = &mut migrations => return migrated,
                () = tokio::time::sleep_until(next) => {}
            }
            next += MIGRATION_WAIT_TOLD;
            // On a connection of the pool: the migrations' own is busy. Only a hint, so a
            // failed look says nothing.
            let blockers = self
                .on_connection(async |connection| {
                    sqlx::query_scalar(BLOCKERS)
                        .bind(migrating)
                        .fetch_one(connection)
                        .await
                })
                .await;
            if let Ok(Some::<String>(blockers)) = blockers {
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    blocked_by = %blockers,
                    "the migrations wait for other sessions of the database to end their \
                     transactions (an index built CONCURRENTLY waits for every transaction older \
                     than it: a pg_dump, a session idle in transaction; another statement waits \
                     for a session holding a lock on its table); they go on once those end"
                );
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.on_connection(async |connection| sqlx::query("SELECT 1").execute(connection).await)
            .await
            .map(drop)
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.on_connection(async |connection| {
            sqlx::query_scalar(IS_EMPTY).fetch_one(connection).await
        })
        .await
    }

    pub(crate) async fn find_key(&self, hash: &KeyHash) -> Result<Option<FoundKey>, StoreError> {
        let row = self
            .on_connection(async |connection| {
                sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    ", clock_timestamp() AS clock FROM api_keys WHERE key_hash = $1"
                ))
                .bind(&hash.0[..])
                .fetch_optional(connection)
                .await?
                .map(|row| Ok((KeyRow::from_row(&row)?, row.try_get("clock")?)))
                .transpose()
            })
            .await?;
        row.map(|(row, clock)| {
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
        let row: KeyRow = self
            .writing(async |connection| {
                sqlx::query_as(concat!(
                    // `created_at` defaults to the same `now()`: the expiry follows the creation
                    // by exactly what was asked, by the database's clock.
                    "INSERT INTO api_keys (id, name, key_hash, permissions, account_group_ids, expires_at)
                     VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
                     RETURNING ",
                    key_columns!()
                ))
                .bind(Uuid::new_v4())
                .bind(&key.name)
                .bind(&key.hash.0[..])
                .bind(permissions)
                .bind(groups)
                .bind(key.expires_in.map(time::Duration::as_seconds_f64))
                .fetch_one(connection)
                    .await
            })
            .await?;
        row.try_into()
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = self
            .on_connection(async |connection| {
                sqlx::query_as(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM api_keys ORDER BY created_at, id"
                ))
                .fetch_all(connection)
                .await
            })
            .await?;
        rows.into_iter().map(ApiKey::try_from).collect()
    }

    pub(crate) async fn clock(&self) -> Result<OffsetDateTime, StoreError> {
        self.on_connection(async |connection| {
            sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(connection)
                .await
        })
        .await
    }

    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<KeyRow> = self
            .writing(async |connection| {
                sqlx::query_as(concat!(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
                     RETURNING ",
                    key_columns!()
                ))
                .bind(id)
                .fetch_optional(connection)
                .await
            })
            .await?;
        row.map(ApiKey::try_from).transpose()
    }

    /// Creates a scan in `status` with its audit row, in one statement. With an idempotency key
    /// (the caller's key id and the key), the key is claimed in the same statement: a key already
    /// claimed within the window creates nothing and answers the scan it started.
    pub async fn create_scan(
        &self,
        group: &AccountGroupId,
        status: ScanStatus,
        actor: Actor<'_>,
        once: Option<(Uuid, &IdempotencyKey)>,
    ) -> Result<Creation, StoreError> {
        let window = format!("{} seconds", IDEMPOTENCY_WINDOW.whole_seconds());
        let created: Option<ScanRow> = self
            .writing(async |connection| {
                // A key claimed by a transaction still running makes this one wait for it at the
                // conflict, then find it claimed: concurrent requests with one key create one scan.
                sqlx::query_as(concat!(
                    "WITH claimed AS (
                         INSERT INTO idempotency_keys
                             (api_key_id, key, account_group_id, scan_id, created_at)
                         SELECT $6, $7, $2, $1, now() WHERE $7::text IS NOT NULL
                         ON CONFLICT (api_key_id, key) DO UPDATE
                             SET account_group_id = excluded.account_group_id,
                                 scan_id = excluded.scan_id,
                                 created_at = excluded.created_at
                             WHERE idempotency_keys.created_at < now() - $8::text::interval
                         RETURNING 1
                     ), created AS (
                         INSERT INTO signal_scans
                             (id, account_group_id, status, started_at, finished_at, cancelled_at)
                         SELECT $1, $2, $3,
                             CASE WHEN $3 IN ('running', 'completed', 'failed') THEN now() END,
                             CASE WHEN $3 IN ('completed', 'failed', 'cancelled') THEN now() END,
                             CASE WHEN $3 = 'cancelled' THEN now() END
                         WHERE $7::text IS NULL OR EXISTS (SELECT 1 FROM claimed)
                         RETURNING ",
                    scan_columns!(),
                    "
                     ), audit AS (
                         INSERT INTO signal_scan_events
                             (scan_id, account_group_id, from_status, to_status, api_key_id,
                              trace_id, occurred_at)
                         SELECT id, account_group_id, NULL, status, $4, $5, created_at FROM created
                     )
                     SELECT ",
                    scan_columns!(),
                    ", NULL::text AS previous_status FROM created"
                ))
                .bind(ScanId::generate().as_str())
                .bind(group.as_str())
                .bind(status.as_str())
                .bind(actor.api_key_id)
                .bind(actor.trace_id)
                .bind(once.map(|(key_id, _)| key_id))
                .bind(once.map(|(_, key)| key.as_str()))
                .bind(&window)
                .fetch_optional(connection)
                .await
            })
            .await?;
        if let Some(row) = created {
            let scan = row.into_scan()?;
            // Committed: now, and only now, listeners may hear of it.
            self.publisher().publish(ScanChange::of(None, &scan, None));
            return Ok(Creation::Created(scan));
        }
        let Some((key_id, key)) = once else {
            return Err(StoreError::Internal(
                "a scan without a key was not created".into(),
            ));
        };
        // The key was claimed within the window (by a transaction that has committed, or this
        // statement would still be waiting): a new statement sees what it started.
        let claimed: Option<ClaimedKeyRow> = self
            .on_connection(async |connection| {
                sqlx::query_as(concat!(
                    "SELECT k.account_group_id AS key_group, ",
                    scan_columns!(s),
                    ", NULL::text AS previous_status
                     FROM idempotency_keys k JOIN signal_scans s ON s.id = k.scan_id
                     WHERE k.api_key_id = $1 AND k.key = $2"
                ))
                .bind(key_id)
                .bind(key.as_str())
                .fetch_optional(connection)
                .await
            })
            .await?;
        let claimed = claimed.ok_or_else(|| {
            StoreError::Unavailable("an idempotency key was forgotten while it was read".into())
        })?;
        match claimed.key_group == group.as_str() {
            true => Ok(Creation::Replayed(claimed.scan.into_scan()?.as_created())),
            false => Ok(Creation::KeyUsedForAnotherGroup),
        }
    }

    /// Forgets at most `limit` idempotency keys claimed longer than the window ago; how many.
    pub async fn forget_idempotency_keys(&self, limit: u32) -> Result<u64, StoreError> {
        let window = format!("{} seconds", IDEMPOTENCY_WINDOW.whole_seconds());
        let done = self
            .writing(async |connection| {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN (
                         SELECT api_key_id, key FROM idempotency_keys
                         WHERE created_at < now() - $1::text::interval
                         LIMIT $2)",
                )
                .bind(&window)
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
            .on_connection(async |connection| {
                sqlx::query_as(concat!(
                    "SELECT ",
                    scan_columns!(),
                    ", NULL::text AS previous_status FROM signal_scans
                     WHERE id = $1 AND ($2::text IS NULL OR account_group_id = $2::text)"
                ))
                .bind(scan.as_str())
                .bind(group.map(AccountGroupId::as_str))
                .fetch_optional(connection)
                .await
            })
            .await?;
        row.map(ScanRow::into_scan).transpose()
    }

    pub async fn find_claimed_scan(
        &self,
        group: &AccountGroupId,
        scan: &ScanId,
    ) -> Result<Option<ClaimedScan>, StoreError> {
        let row: Option<ScanRow> = self
            .on_connection(async |connection| {
                sqlx::query_as(concat!(
                    "SELECT ",
                    scan_columns!(s),
                    ", (SELECT e.api_key_id::text FROM signal_scan_events AS e
                        WHERE e.scan_id = s.id AND e.to_status = 'running'
                        ORDER BY e.id DESC LIMIT 1) AS started_by
                     FROM signal_scans AS s WHERE s.id = $1 AND s.account_group_id = $2"
                ))
                .bind(scan.as_str())
                .bind(group.as_str())
                .fetch_optional(connection)
                .await
            })
            .await?;
        row.map(ScanRow::into_claimed).transpose()
    }

    pub async fn scan_events(&self, scan: &ScanId) -> Result<Vec<ScanEvent>, StoreError> {
        let rows: Vec<EventRow> = self
            .on_connection(async |connection| {
                sqlx::query_as(
                    "SELECT scan_id, from_status, to_status, api_key_id::text AS api_key_id, trace_id,
                            occurred_at, reason
                     FROM signal_scan_events WHERE scan_id = $1 ORDER BY id",
                )
                .bind(scan.as_str())
                .fetch_all(connection)
                    .await
            })
            .await?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    pub async fn list_scans(
        &self,
        group: &AccountGroupId,
        query: &ScanPageQuery,
    ) -> Result<Vec<Scan>, StoreError> {
        let status = query.status.map(ScanStatus::as_str);
        let after = query.after.as_ref();
        let rows: Vec<ScanRow> = self
            .on_connection(async |connection| {
                let page = sqlx::query_as(list_scans_statement(status.is_some(), after.is_some()))
                    .bind(group.as_str());
                let page = match status {
                    Some(status) => page.bind(status),
                    None => page,
                };
                let page = match after {
                    Some(after) => page.bind(after.created_at).bind(after.id.as_str()),
                    None => page,
                };
                page.bind(i64::from(query.limit) + 1)
                    .fetch_all(connection)
                    .await
            })
            .await?;
        rows.into_iter().map(ScanRow::into_scan).collect()
    }

    pub(crate) async fn read_feed(
        &self,
        cursor: &FeedCursor,
        group: Option<&AccountGroupId>,
    ) -> Result<FeedPage, StoreError> {
        let (pending_xids, pending_after): (Vec<String>, Vec<i64>) = cursor
            .pending()
            .map(|(xid, id)| (xid.to_string(), id))
            .unzip();
        let frontier = cursor.frontier();
        let rows: Vec<FeedReadRow> = self
            .on_connection(async |connection| {
                let read = sqlx::query_as(match group {
                    None => EVERY_GROUPS_FEED,
                    Some(_) => ONE_GROUPS_FEED,
                })
                .bind(frontier.xid.to_string())
                .bind(frontier.id)
                .bind(pending_xids)
                .bind(pending_after)
                .bind(i64::from(PAGE_ROWS));
                match group {
                    None => read,
                    Some(group) => read.bind(group.as_str()),
                }
                .fetch_all(connection)
                .await
            })
            .await?;
        let snapshot = rows.first().map(|row| row.snapshot.as_str()).unwrap_or("");
        let horizon = Horizon::parse_pg_snapshot(snapshot)
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot {snapshot:?}")))?;
        let trimmed = rows
            .first()
            .and_then(|row| row.trimmed.as_ref())
            .map(|(xid, id)| trimmed_position(xid, *id))
            .transpose()?;
        let rows = rows
            .into_iter()
            .filter_map(|row| row.change)
            .map(ChangeRow::into_feed_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeedPage {
            full: rows.len() >= PAGE_ROWS as usize,
            rows,
            horizon: Some(horizon),
            trimmed,
        })
    }

    pub async fn feed_head(&self) -> Result<FeedCursor, StoreError> {
        let (newest_xid, newest_id, snapshot): (Option<String>, Option<i64>, String) = self
            .on_connection(async |connection| {
                sqlx::query_as(
                    "SELECT newest.xid::text, newest.id, pg_current_snapshot()::text
                     FROM (SELECT 1) AS one
                     LEFT JOIN (SELECT xid, id FROM (
                                    (SELECT xid, id FROM signal_scan_events
                                     ORDER BY xid DESC, id DESC LIMIT 1)
                                    UNION ALL
                                    (SELECT xid, id FROM signal_scan_events_trimmed
                                     ORDER BY xid DESC, id DESC LIMIT 1)) AS both_newest
                                ORDER BY xid DESC, id DESC LIMIT 1) AS newest ON true",
                )
                .fetch_one(connection)
                .await
            })
            .await?;
        let horizon = Horizon::parse_pg_snapshot(&snapshot)
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot {snapshot:?}")))?;
        let newest = FeedPosition {
            xid: newest_xid
                .map(|xid| xid.parse())
                .transpose()
                .map_err(|_| StoreError::Corrupt("audit row xid".into()))?
                .unwrap_or(0),
            id: newest_id.unwrap_or(0),
        };
        Ok(FeedCursor::at_head(newest, Some(&horizon)))
    }

    /// The greatest id at xid 0, in the trail or its retention marks: rows from before migration
    /// 0002, or moved there from another cluster. A cursor at a real xid with an id at or below
    /// it was not handed out by this cluster's trail, whose rows at real xids all have greater
    /// ids.
    pub async fn rebased_through(&self) -> Result<Option<i64>, StoreError> {
        self.on_connection(async |connection| {
            sqlx::query_scalar(
                "SELECT greatest(
                     (SELECT max(id) FROM signal_scan_events WHERE xid = '0'),
                     (SELECT max(id) FROM signal_scan_events_trimmed WHERE xid = '0'))",
            )
            .fetch_one(connection)
            .await
        })
        .await
    }

    pub async fn feed_knows(&self, position: FeedPosition) -> Result<bool, StoreError> {
        self.on_connection(async |connection| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM signal_scan_events
                                WHERE id = $2 AND xid = $1::text::xid8)
                     OR EXISTS (SELECT 1 FROM signal_scan_events_trimmed
                                WHERE (xid, id) >= ($1::text::xid8, $2))",
            )
            .bind(position.xid.to_string())
            .bind(position.id)
            .fetch_one(connection)
            .await
        })
        .await
    }

    pub async fn trimmed_mark(
        &self,
        group: Option<&AccountGroupId>,
    ) -> Result<Option<FeedPosition>, StoreError> {
        // Two statements, not one with `$1 IS NULL OR …`: a prepared statement's generic plan
        // could walk the position index for one group's mark instead of its primary key.
        let mark: Option<(String, i64)> = self
            .on_connection(async |connection| {
                match group {
                    None => sqlx::query_as(
                        "SELECT xid::text, id FROM signal_scan_events_trimmed
                         ORDER BY xid DESC, id DESC LIMIT 1",
                    ),
                    Some(group) => sqlx::query_as(
                        "SELECT xid::text, id FROM signal_scan_events_trimmed
                         WHERE account_group_id = $1",
                    )
                    .bind(group.as_str()),
                }
                .fetch_optional(connection)
                .await
            })
            .await?;
        mark.map(|(xid, id)| trimmed_position(&xid, id)).transpose()
    }

    /// One statement, so it is one short transaction. It locks only the audit rows it deletes,
    /// which nothing else locks: cancels insert theirs meanwhile without waiting. Two replicas
    /// sweeping at once is harmless: the second waits for the first's rows, finds them gone, and
    /// deletes nothing.
    pub async fn trim_audit(&self, cutoff: OffsetDateTime, batch: u32) -> Result<u64, StoreError> {
        let deleted: i64 = self
            .writing(async |connection| {
                sqlx::query_scalar(TRIM_AUDIT)
                    .bind(cutoff)
                    .bind(i64::from(batch))
                    .fetch_one(connection)
                    .await
            })
            .await?;
        Ok(deleted.unsigned_abs())
    }

    /// The publisher of this process, started on first use (inside the Tokio runtime).
    fn publisher(&self) -> &Publisher {
        self.publisher
            .get_or_init(|| Publisher::start(&self.migrate_options, self.publish_interval))
    }

    pub async fn flush_hints(&self, limit: Duration) {
        if let Some(publisher) = self.publisher.get() {
            publisher.flush(limit).await;
        }
    }

    pub async fn listen(&self, channel: &str) -> Result<sqlx::postgres::PgListener, StoreError> {
        // A pool of its one connection, as `PgListener::connect` makes: the listener reconnects
        // through it after a lost connection.
        let connection = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.pool.connect_options().clone());
        let mut listener = self
            .bounded(sqlx::postgres::PgListener::connect_with(&connection))
            .await?;
        self.bounded(listener.listen(channel)).await?;
        Ok(listener)
    }

    /// Requests waiting for their changes to commit (tests wait on it to line contenders up).
    pub(super) fn changes_waiting(&self) -> usize {
        self.pipeline.get().map_or(0, Pipeline::waiting)
    }

    /// Moves each scan of `changes` if its current status allows it, in one transaction shared
    /// with the other changes waiting (group commit: `store/pipeline.rs`).
    pub async fn transitions(
        &self,
        changes: Vec<ChangeRequest>,
    ) -> Result<Vec<Transition>, StoreError> {
        let writer = self.pipeline.get_or_init(|| {
            let writer = BatchWrites {
                pool: self.pool.clone(),
                timeout: self.timeout,
                publisher: self.publisher().clone(),
            };
            Pipeline::start(writer, self.write_batches, self.timeout)
        });
        writer.submit(changes).await
    }
}

/// Whether `migrator` has migrations the database has not applied.
async fn pending(connection: &mut PgConnection, migrator: &Migrator) -> Result<bool, sqlx::Error> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
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
        super::migrations::POSTGRES_RETIRED,
        &applied,
    ))
}

/// One batch of the retention sweep (`$1` the cutoff, `$2` the batch): the oldest rows of the
/// trail, in feed order, up to the first younger than the cutoff, deleted, and each group's mark
/// raised to its last deleted row. A batch read from the trail's start met the dead rows of every
/// batch before it until vacuum removed them (36 ms a batch after 830,000 deletions with
/// autovacuum off), so it starts past the greatest mark at a transaction id of this cluster's:
/// every row before that is gone, since each batch deletes a head of the trail, and the rows at
/// xid 0 come first (a row committing behind the mark later would be a transaction's that began
/// writing before the cutoff, which the service's timeouts end long before; it would only be
/// kept). Marks at xid 0 are left out: rows moved there from another cluster are ordered by id
/// alone, and one its sweep left, of a transaction that overlapped the one it deleted last, lies
/// behind that mark. So are marks at transaction ids this cluster has not reached: another
/// cluster's, not yet moved to 0.
pub(super) const TRIM_AUDIT: &str = "WITH floor AS (
    SELECT xid, id FROM signal_scan_events_trimmed
    WHERE xid > '0' AND xid < pg_snapshot_xmax(pg_current_snapshot())
    ORDER BY xid DESC, id DESC LIMIT 1
), head AS (
    SELECT xid, id, occurred_at FROM signal_scan_events
    WHERE (xid, id) > (coalesce((SELECT xid FROM floor), '0'), coalesce((SELECT id FROM floor), 0))
    ORDER BY xid, id
    LIMIT $2
), young AS (
    SELECT xid, id FROM head WHERE occurred_at >= $1 ORDER BY xid, id LIMIT 1
), doomed AS (
    SELECT head.id FROM head
    WHERE NOT EXISTS (
        SELECT 1 FROM young WHERE (young.xid, young.id) <= (head.xid, head.id))
), deleted AS (
    DELETE FROM signal_scan_events e USING doomed
    WHERE e.id = doomed.id
    RETURNING e.account_group_id, e.xid, e.id
), marks AS (
    SELECT DISTINCT ON (account_group_id) account_group_id, xid, id
    FROM deleted
    ORDER BY account_group_id, xid DESC, id DESC
), raised AS (
    INSERT INTO signal_scan_events_trimmed AS t (account_group_id, xid, id)
    SELECT account_group_id, xid, id FROM marks
    ON CONFLICT (account_group_id) DO UPDATE
    SET xid = excluded.xid, id = excluded.id
    WHERE (t.xid, t.id) < (excluded.xid, excluded.id)
)
SELECT count(*) FROM deleted";

/// Whether a row or retention mark holds a transaction id this cluster has not reached: one
/// read of the `(xid, id)` index's last entry. No row this cluster wrote can be past the
/// snapshot's `xmax`.
const FROM_ANOTHER_CLUSTER: &str = "SELECT EXISTS (SELECT 1 FROM signal_scan_events
                                WHERE xid >= pg_snapshot_xmax(pg_current_snapshot()))
        OR EXISTS (SELECT 1 FROM signal_scan_events_trimmed
                   WHERE xid >= pg_snapshot_xmax(pg_current_snapshot()))";

/// Audit rows moved to xid 0 per transaction when they came from another cluster.
const REBASE_BATCH: i64 = 10_000;

/// Moves every audit row and retention mark to xid 0 when some came from another cluster. A
/// database restored from a logical dump (`pg_dump`, `pg_restore`) keeps the transaction ids its
/// rows had there; when that cluster's counter was ahead, every change made here sorted behind
/// them, so behind the head every stream starts from, and the change streams and `scans watch`
/// stayed silent until this cluster's counter passed the other's, for good in effect. At xid 0
/// they sort before every change this cluster makes, by id, as the rows from before migration
/// 0002 do; a cursor the other cluster handed out (a real xid with an id among them) is then told
/// it is no place in this trail (410: [`PgStore::rebased_through`]). In id ranges, each its own
/// transaction, under the migration lock: a start stopped halfway goes on at the next.
async fn rebase_positions_of_another_cluster(
    connection: &mut PgConnection,
) -> Result<(), StoreError> {
    let ahead = async |connection: &mut PgConnection| -> Result<bool, StoreError> {
        sqlx::query_scalar(FROM_ANOTHER_CLUSTER)
            .fetch_one(connection)
            .await
            .map_err(super::classify)
    };
    if !ahead(connection).await? {
        return Ok(());
    }
    take_migration_lock(connection).await?;
    // Another process may have moved them while this one waited.
    if !ahead(connection).await? {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM signal_scan_events")
        .fetch_one(&mut *connection)
        .await
        .map_err(super::classify)?;
    let mut moved = 0;
    for start in (0..last).step_by(REBASE_BATCH as usize) {
        moved += sqlx::query(
            "UPDATE signal_scan_events SET xid = '0'
             WHERE id > $1 AND id <= $1 + $2 AND xid <> '0'",
        )
        .bind(start)
        .bind(REBASE_BATCH)
        .execute(&mut *connection)
        .await
        .map_err(super::classify)?
        .rows_affected();
    }
    sqlx::query("UPDATE signal_scan_events_trimmed SET xid = '0' WHERE xid <> '0'")
        .execute(&mut *connection)
        .await
        .map_err(super::classify)?;
    tracing::warn!(
        moved,
        "audit rows from another PostgreSQL cluster (a database restored from a dump) were moved \
         before this cluster's changes, so that change streams deliver what this one commits; \
         cursors from before the restore answer 410: follow without one and re-read your scans"
    );
    Ok(())
}

/// Takes [`MIGRATION_LOCK`], asking between pauses, and says when another process holds it.
async fn take_migration_lock(connection: &mut PgConnection) -> Result<(), StoreError> {
    let started = tokio::time::Instant::now();
    let mut told = None;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *connection)
            .await
            .map_err(classify)?;
        if taken {
            return Ok(());
        }
        if told.is_none_or(|at: tokio::time::Instant| at.elapsed() >= MIGRATION_WAIT_TOLD) {
            // Only a hint: a failed look names no one.
            let holders: Option<String> = sqlx::query_scalar(LOCK_HOLDERS)
                .bind(MIGRATION_LOCK)
                .fetch_one(&mut *connection)
                .await
                .ok()
                .flatten();
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                held_by = holders.as_deref().unwrap_or("unknown"),
                "another process is migrating the database; waiting for it to finish"
            );
            told = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
}

/// Migration 0005 builds its index `CONCURRENTLY`, outside a transaction (as any later one that
/// does must, listed in [`CONCURRENT_INDEXES`]). A build whose process went away (a SIGTERM or a
/// kill mid-upgrade) runs on in PostgreSQL to its end, and the migration `version`, never recorded
/// as applied, then failed at every start on the index that already exists; a build PostgreSQL
/// aborted leaves the index invalid. A valid `index` is the migration's work done, so the
/// migration is recorded as applied; an invalid one is dropped, and the migration builds it again.
async fn adopt_concurrent_index(
    connection: &mut PgConnection,
    migrator: &Migrator,
    version: i64,
    index: &str,
) -> Result<(), StoreError> {
    if !not_applied(connection, version).await? {
        return Ok(());
    }
    let valid: Option<bool> =
        sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)")
            .bind(index)
            .fetch_optional(&mut *connection)
            .await
            .map_err(classify)?;
    match valid {
        Some(true) => {
            tracing::warn!(
                index,
                "an earlier start built this index; recording its migration as applied"
            );
            migrator
                .skip(&mut *connection, Some(version))
                .await
                .map_err(migration_error)
        }
        Some(false) => {
            tracing::warn!(
                index,
                "an earlier start left this index invalid; building it again"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY {index}"
            )))
            .execute(&mut *connection)
            .await
            .map(drop)
            .map_err(classify)
        }
        None => Ok(()),
    }
}

/// Whether the database has not applied migration `version`.
async fn not_applied(connection: &mut PgConnection, version: i64) -> Result<bool, StoreError> {
    let applied: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(version)
    .fetch_one(&mut *connection)
    .await
    .map_err(classify)?;
    Ok(!applied)
}

/// Runs one writing statement (its own transaction) on a connection of `pool`. The wait for the
/// connection is bounded by `timeout`. The statement is bounded by the server, which ends it at the
/// same `timeout` (`statement_timeout`) and rolls it back; here its answer is awaited
/// [`ANSWER_GRACE`] longer, so that the server's own answer, committed or not, is the one the
/// caller gets. The timeout does not cover the commit that follows the statement (nor, on a
/// connection's first use of a statement, the round trip that prepares it): a commit that takes
/// longer than the grace (a stalled disk, a synchronous standby), or a server or network that
/// stops answering, is given up on, and only then may a [`StoreError::Unavailable`] hide a commit.
async fn writing<T>(
    pool: &ConnectionPool,
    timeout: Duration,
    query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let checkout = checkout_until(pool, deadline, timeout).await?;
    bounded(timeout + ANSWER_GRACE, checkout.run(query)).await
}

/// A connection of `pool` by `deadline`. A wait that ends there says how many of the pool's
/// connections were in use, and what that means: all of them is a pool too small for the load
/// (`DB_MAX_CONNECTIONS`) or held by slow statements; fewer is a database that opened no session,
/// nor answered the ping of an idle connection, in time (a stalled database after a quiet
/// second: its idle connections, asked before use, are dropped unanswered, and the new ones do
/// not open, so none is in use). Both answered "no answer" alike before, the same words as a
/// slow statement, and then the second alone named the pool, as if it were too small.
async fn checkout_until(
    pool: &ConnectionPool,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Checkout, StoreError> {
    match tokio::time::timeout_at(deadline, pool.checkout()).await {
        Ok(checkout) => checkout.map_err(classify),
        Err(_) => {
            let usage = pool.usage();
            let why = match usage.in_use >= usage.max {
                true => "every connection is in use",
                false => "the database opened no session, nor answered a ping of an idle one",
            };
            Err(StoreError::Unavailable(format!(
                "no connection of the pool within {} ms ({} of DB_MAX_CONNECTIONS={} in use: {why})",
                timeout.as_millis(),
                usage.in_use,
                usage.max
            )))
        }
    }
}

/// The PostgreSQL store's writer: a batch is one statement over arrays (its own transaction),
/// so it costs one round trip and one commit however many changes it carries.
#[derive(Clone)]
struct BatchWrites {
    pool: ConnectionPool,
    timeout: Duration,
    /// Told of each committed change: now, and only now, listeners may hear of it.
    publisher: Publisher,
}

impl BatchWriter for BatchWrites {
    async fn write(&self, changes: &[ChangeRequest]) -> Result<Vec<Transition>, StoreError> {
        let column = |f: fn(&ChangeRequest) -> Option<String>| -> Vec<Option<String>> {
            changes.iter().map(f).collect()
        };
        let scans = column(|c| Some(c.scan.as_str().to_owned()));
        let groups = column(|c| c.group.as_ref().map(|g| g.as_str().to_owned()));
        let to = column(|c| Some(c.to.as_str().to_owned()));
        let from = column(|c| {
            let from: Vec<&str> = c.to.reachable_from().iter().map(|s| s.as_str()).collect();
            Some(from.join(","))
        });
        let key_ids: Vec<Option<Uuid>> = changes.iter().map(|c| c.api_key_id).collect();
        let trace_ids = column(|c| c.trace_id.clone());
        let reasons = column(|c| c.reason.clone());
        let rows: Vec<BatchRow> = writing(&self.pool, self.timeout, async |connection| {
            // The statement is its own file so that the benchmark's run (a2) (bench/harness.py)
            // runs the very same text with pgbench.
            sqlx::query_as(include_str!("postgres_transition.sql"))
                .bind(scans)
                .bind(groups)
                .bind(to)
                .bind(from)
                .bind(key_ids)
                .bind(trace_ids)
                .bind(reasons)
                .fetch_all(connection)
                .await
        })
        .await?;
        let mut outcomes = vec![Transition::NotFound; changes.len()];
        for BatchRow { ord, row } in rows {
            let place = usize::try_from(ord - 1)
                .ok()
                .filter(|&place| place < outcomes.len())
                .ok_or_else(|| StoreError::Corrupt(format!("a batch answered change {ord}")))?;
            outcomes[place] = match row.previous_status.as_ref().map(|status| status.0) {
                Some(previous) => Transition::Applied {
                    previous,
                    scan: row.into_scan()?,
                },
                None => Transition::Refused {
                    scan: row.into_scan()?,
                },
            };
        }
        for hint in super::hints(&outcomes) {
            self.publisher.publish(hint);
        }
        Ok(outcomes)
    }
}

/// One row of a batch's answer: the scan, and which change of the batch it answers (from 1).
struct BatchRow {
    ord: i64,
    row: ScanRow,
}

impl FromRow<'_, PgRow> for BatchRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            ord: row.try_get("ord")?,
            row: ScanRow::from_row(row)?,
        })
    }
}

/// One read of the change feed, in one statement so that the rows and the snapshot that says
/// which transactions were still running are read together: the rows past the frontier (`$1`,
/// `$2`) and those of each pending transaction (`$3`, `$4`), at most `$5` in `(xid, id)` order.
/// The rows of a pending transaction are written as an ordered, limited walk of an index from
/// `(xid, after)`, because a plain join on `xid = p.xid AND id > p.after` let the planner scan the
/// primary key from `after` (often 0) and filter by xid, the whole table for every pending
/// transaction, when the statistics saw few distinct xids (27 ms a read against 0.05 ms, measured
/// after a bulk load; a watch under load read that way constantly). The group of each row is its
/// own column (filled by every insert, or by the trigger of migration 0004). The retention
/// sweep's mark of the rows' scope (`$marks`: a filter of `signal_scan_events_trimmed`) is read
/// under the same snapshot: a row past the cursor deleted before the read raised it.
macro_rules! feed_read {
    ($past_frontier:literal, $of_pending:literal, $marks:literal) => {
        concat!(
            "WITH snapshot AS (SELECT pg_current_snapshot()::text AS snapshot),
             trimmed AS (SELECT xid, id FROM signal_scan_events_trimmed",
            $marks,
            " ORDER BY xid DESC, id DESC LIMIT 1),
             page AS ((",
            $past_frontier,
            ") UNION ALL (
                 SELECT e.* FROM unnest($3::text[]::xid8[], $4::int8[]) AS p(xid, after)
                 CROSS JOIN LATERAL (",
            $of_pending,
            ") e)
             ), limited AS (
                 SELECT * FROM page ORDER BY xid, id LIMIT $5
             )
             SELECT snapshot.snapshot, t.xid::text AS trimmed_xid, t.id AS trimmed_id,
                    l.xid::text AS xid, l.id, l.scan_id, l.account_group_id,
                    l.from_status, l.to_status, l.trace_id, l.occurred_at, l.reason
             FROM snapshot
             LEFT JOIN trimmed t ON true
             LEFT JOIN limited l ON true
             ORDER BY l.xid, l.id"
        )
    };
}

/// Every group's rows: the change hub's shared read, and `scans watch` without a group.
const EVERY_GROUPS_FEED: &str = feed_read!(
    "SELECT e.* FROM signal_scan_events e
     WHERE (e.xid, e.id) > ($1::text::xid8, $2)
     ORDER BY e.xid, e.id
     LIMIT $5",
    "SELECT * FROM signal_scan_events e
     WHERE (e.xid, e.id) > (p.xid, p.after) AND e.xid = p.xid
     ORDER BY e.xid, e.id
     LIMIT $5",
    ""
);

/// One group's rows (`$6`): the rows past the frontier are a range of the group's index
/// `(account_group_id, xid, id)`. The same bound on `(xid, id)` alone is said again, for a plan
/// that walks the trail's `(xid, id)` index instead (one the planner may take for a group that
/// holds much of the trail): it then starts at the frontier, not at the trail's first row, and
/// filters out only the other groups' rows past it (494 ms to resume 2.2 million rows into such a
/// group's trail without it, 0.7 ms with it). A pending transaction's rows are read by
/// `(xid, id)`, which holds only that transaction's own rows.
pub(super) const ONE_GROUPS_FEED: &str = feed_read!(
    "SELECT e.* FROM signal_scan_events e
     WHERE e.account_group_id = $6
       AND (e.account_group_id, e.xid, e.id) > ($6, $1::text::xid8, $2)
       AND (e.xid, e.id) > ($1::text::xid8, $2)
     ORDER BY e.account_group_id, e.xid, e.id
     LIMIT $5",
    "SELECT * FROM signal_scan_events e
     WHERE (e.xid, e.id) > (p.xid, p.after) AND e.xid = p.xid AND e.account_group_id = $6
     ORDER BY e.xid, e.id
     LIMIT $5",
    " WHERE account_group_id = $6"
);

/// A page of a group's scans, newest first, `limit + 1` rows: one statement for each shape of
/// the query (a status or not, a cursor or not), each a range of the group's index from the
/// cursor (a status is filtered along it). Not one statement with `$n IS NULL OR …`: its generic
/// plan, which a connection takes after five runs, cannot bound the index by the cursor, and read
/// the group from its newest scan down to the cursor at every page (151 ms a page 2,000 pages
/// down a group of 300,000 scans, against 0.3 ms). No index by status: it would cost every status
/// change an index entry (and on PostgreSQL its in-place update), for the one filter that can
/// read far: see `BENCHMARKS.md`.
#[doc(hidden)]
pub fn list_scans_statement(status: bool, after: bool) -> &'static str {
    macro_rules! page {
        ($filter:literal, $limit:literal) => {
            concat!(
                "SELECT ",
                scan_columns!(),
                ", NULL::text AS previous_status FROM signal_scans
                 WHERE account_group_id = $1",
                $filter,
                " ORDER BY created_at DESC, id DESC LIMIT ",
                $limit
            )
        };
    }
    match (status, after) {
        (false, false) => page!("", "$2"),
        (true, false) => page!(" AND status = $2", "$3"),
        (false, true) => page!(" AND (created_at, id) < ($2::timestamptz, $3::text)", "$4"),
        (true, true) => page!(
            " AND status = $2 AND (created_at, id) < ($3::timestamptz, $4::text)",
            "$5"
        ),
    }
}

/// A row of [`PgStore::read_feed`]: the snapshot, and a change unless the page is empty (one
/// row of NULLs beside the snapshot, told by its NULL `id`). A change with any other required
/// column NULL fails the read as corrupt rather than being skipped: a gap in the feed would be
/// silent.
struct FeedReadRow {
    snapshot: String,
    /// The retention sweep's mark, under the same snapshot as the rows.
    trimmed: Option<(String, i64)>,
    change: Option<ChangeRow>,
}

impl FromRow<'_, PgRow> for FeedReadRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let empty = row.try_get::<Option<i64>, _>("id")?.is_none();
        let trimmed_xid: Option<String> = row.try_get("trimmed_xid")?;
        let trimmed_id: Option<i64> = row.try_get("trimmed_id")?;
        Ok(Self {
            snapshot: row.try_get("snapshot")?,
            trimmed: trimmed_xid.zip(trimmed_id),
            change: (!empty).then(|| ChangeRow::from_row(row)).transpose()?,
        })
    }
}

/// A retention mark as read (its xid as text: sqlx has no `xid8`).
fn trimmed_position(xid: &str, id: i64) -> Result<FeedPosition, StoreError> {
    let xid = xid
        .parse()
        .map_err(|_| StoreError::Corrupt("trimmed mark xid".into()))?;
    Ok(FeedPosition { xid, id })
}
