//! Another session's write lock, held by a test to stall the service's writes or to decide who
//! of two contenders goes first.

use std::time::{Duration, Instant};

use signal_scans::domain::ids::ScanId;

use super::TestApp;

/// Another session's write lock: a row lock on one scan (PostgreSQL), or the database's write
/// lock (SQLite). Writers of that scan wait behind it until it is released.
pub enum WriteLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteLock {
    pub async fn hold(app: &TestApp, scan: &ScanId) -> Self {
        use sqlx::Connection;
        if app.db.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut connection)
                .await
                .unwrap();
            // No write of the service may be left over from before the lock (sqlx gives a
            // connection back in a task of its own after the query that used it).
            until_waiting(app, 0).await;
            return Self::Sqlite(connection);
        }
        let mut connection = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::raw_sql("BEGIN")
            .execute(&mut connection)
            .await
            .unwrap();
        sqlx::query("SELECT 1 FROM signal_scans WHERE id = $1 FOR UPDATE")
            .bind(scan.as_str())
            .execute(&mut connection)
            .await
            .unwrap();
        Self::Postgres(connection)
    }

    pub async fn release(&mut self) {
        match self {
            Self::Postgres(connection) => {
                sqlx::raw_sql("ROLLBACK").execute(connection).await.unwrap();
            }
            Self::Sqlite(connection) => {
                sqlx::raw_sql("ROLLBACK").execute(connection).await.unwrap();
            }
        }
    }
}

/// Returns once exactly `n` writers wait behind a [`WriteLock`] (10 s at most). PostgreSQL shows
/// its lock waiters (in this test's database only). SQLite does not: there it is the served
/// store's writers holding or queued for its one write turn (the first holds it, waiting in
/// SQLite's busy handler, the others queue in the process, in order); and for `n` = 0 also no
/// connection in use, since a statement the service gave up on runs on in SQLite until its busy
/// timeout, holding its connection.
pub async fn until_waiting(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (waiting, settled) = waiting_writers(app).await;
        if waiting == n && (n > 0 || settled) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} writers waiting, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The writers waiting, and whether no statement runs on after its writer gave up (SQLite: no
/// connection in use).
async fn waiting_writers(app: &TestApp) -> (i64, bool) {
    use sqlx::Connection;
    if let Some(wanting) = app.served_store.writers_wanting() {
        let settled = app.served_store.pool_usage().in_use == 0;
        return (i64::try_from(wanting).unwrap(), settled);
    }
    let mut observer = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let waiting = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut observer)
    .await
    .unwrap();
    (waiting, true)
}

/// Until `count` sessions of this database wait on an advisory lock (10 s at most).
pub async fn until_advisory_waiters(admin: &mut sqlx::PgConnection, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        if waiting == count as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting on the advisory lock, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The session waiting for advisory lock `key` (10 s at most).
pub async fn until_waiting_on(admin: &mut sqlx::PgConnection, key: i64) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A bigint key shows as its high and low 32 bits, with objsubid 1 (2 for a pair of int4
        // keys). Keys here are not negative: `oid` holds no sign.
        let session: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = ($1 >> 32)::oid AND objid = ($1 & 4294967295)::oid",
        )
        .bind(key)
        .fetch_optional(&mut *admin)
        .await
        .unwrap();
        if let Some(session) = session {
            return session;
        }
        assert!(
            Instant::now() < deadline,
            "nobody waits on advisory lock {key}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
