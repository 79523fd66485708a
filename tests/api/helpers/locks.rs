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
            // On SQLite a waiting writer is seen as a served connection in use (see
            // `until_waiting`), so none may be left over from before the lock: sqlx gives a
            // connection back in a task of its own after the query that used it, and under load
            // that can come late enough to pass for a writer queued here.
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
/// its lock waiters (in this test's database only); SQLite does not, so there it is whether the
/// served store has a connection in use: its one writer at a time holds one while it waits and
/// the next queues in the process without one, so on SQLite any `n` above 0 means "the first",
/// and the first is seen from when it takes its connection, a moment before it reaches the lock.
pub async fn until_waiting(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = waiting_writers(app).await;
        let reached = match app.db.url.starts_with("sqlite:") {
            true => (waiting > 0) == (n > 0),
            false => waiting == n,
        };
        if reached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} writers waiting, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn waiting_writers(app: &TestApp) -> i64 {
    use sqlx::Connection;
    if app.db.url.starts_with("sqlite:") {
        return i64::from(app.served_store.pool_usage().in_use);
    }
    let mut observer = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut observer)
    .await
    .unwrap()
}
