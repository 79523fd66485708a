//! Long histories written straight into a test's database, far faster than through the API.

use signal_scans::domain::ids::AccountGroupId;
use sqlx::{Connection, PgConnection, SqliteConnection};

/// `scans` cancelled scans of `group` written straight into the database, each with its two audit
/// rows (the creation and the cancel), as a long history looks; `days_ago` old.
pub async fn write_history(
    url: &str,
    group: &AccountGroupId,
    scans: u32,
    days_ago: u32,
    long_finished: bool,
) {
    match url.starts_with("postgres") {
        true => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::query(
                "WITH made AS (
                     INSERT INTO signal_scans
                         (id, account_group_id, status, created_at, updated_at, finished_at,
                          cancelled_at)
                     SELECT substr(md5(g::text || random()::text), 1, 24), $1, 'cancelled',
                            at, at, at, at
                     FROM generate_series(1, $2) g,
                          (SELECT now() - make_interval(days => $3) AS at) AS stamp
                     RETURNING id, account_group_id, created_at
                 )
                 INSERT INTO signal_scan_events
                     (scan_id, account_group_id, from_status, to_status, occurred_at, xid)
                 SELECT id, account_group_id, m.from_status, m.to_status, created_at,
                        -- With `long_finished`, written by a transaction finished long ago, below
                        -- any that still runs in the cluster (other tests' included), as rows
                        -- past their retention are in life; else by this one.
                        CASE WHEN $4 THEN '3'::xid8 ELSE pg_current_xact_id() END
                 FROM made, (VALUES (NULL, 'queued'), ('queued', 'cancelled'))
                     AS m(from_status, to_status)",
            )
            .bind(group.as_str())
            .bind(scans as i32)
            .bind(days_ago as i32)
            .bind(long_finished)
            .execute(&mut db)
            .await
            .unwrap();
            sqlx::query("ANALYZE signal_scan_events")
                .execute(&mut db)
                .await
                .unwrap();
        }
        false => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            write_cancelled_scans(&mut db, group, scans, days_ago).await;
            sqlx::query(
                "INSERT INTO signal_scan_events
                     (scan_id, account_group_id, from_status, to_status, occurred_at)
                 SELECT id, account_group_id, m.from_status, m.to_status, created_at
                 FROM signal_scans,
                      (SELECT NULL AS from_status, 'queued' AS to_status
                       UNION ALL SELECT 'queued', 'cancelled') AS m
                 WHERE account_group_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM signal_scan_events e WHERE e.scan_id = signal_scans.id)
                 ORDER BY created_at, id",
            )
            .bind(group.as_str())
            .execute(&mut db)
            .await
            .unwrap();
            sqlx::query("ANALYZE").execute(&mut db).await.unwrap();
        }
    }
}

/// `scans` cancelled scans of `group` written straight into a SQLite database, `days_ago` old,
/// without their audit rows (a 400,000-scan fill takes seconds): a long history for reads of the
/// scans alone.
pub async fn write_cancelled_scans(
    db: &mut SqliteConnection,
    group: &AccountGroupId,
    scans: u32,
    days_ago: u32,
) {
    let at = format!("strftime('%Y-%m-%dT%H:%M:%S', 'now', '-{days_ago} days') || '.000000Z'");
    let scans_made = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < ?2)
         INSERT INTO signal_scans
             (id, account_group_id, status, created_at, updated_at, finished_at, cancelled_at)
         SELECT lower(hex(randomblob(12))), ?1, 'cancelled', {at}, {at}, {at}, {at}
         FROM n"
    )))
    .bind(group.as_str())
    .bind(scans)
    .execute(&mut *db)
    .await
    .unwrap();
    assert_eq!(scans_made.rows_affected(), u64::from(scans));
}
