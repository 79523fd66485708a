//! The schema's migrations, compiled into the binary: `migrations/postgres/` and
//! `migrations/sqlite/`, one list each, in the order they run.
//!
//! Listed by hand rather than with `sqlx::migrate!`, which is sqlx's `macros` feature: that
//! feature compiles a second copy of sqlx, both drivers and their dependencies for the compiler's
//! host (54 of the 483 CPU-seconds of a first release build here). A unit test below holds these
//! lists to what sqlx itself reads from the folders (versions, descriptions, checksums, whether a
//! file runs in a transaction), so a database migrated either way is accepted by the other.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// One file of a folder: its version, its description (the file name's rest, as sqlx writes it)
/// and its SQL.
type Embedded = (i64, &'static str, &'static str);

const POSTGRES: &[Embedded] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "feed positions",
        include_str!("../../migrations/postgres/0002_feed_positions.sql"),
    ),
    (
        3,
        "runner api",
        include_str!("../../migrations/postgres/0003_runner_api.sql"),
    ),
    (
        4,
        "events account group",
        include_str!("../../migrations/postgres/0004_events_account_group.sql"),
    ),
    (
        5,
        "events group feed index",
        include_str!("../../migrations/postgres/0005_events_group_feed_index.sql"),
    ),
    (
        6,
        "trimmed mark position index",
        include_str!("../../migrations/postgres/0006_trimmed_mark_position_index.sql"),
    ),
    (
        8,
        "drop retired status index",
        include_str!("../../migrations/postgres/0008_drop_retired_status_index.sql"),
    ),
];

/// Migrations that builds of 2026-12-05 applied and that were then removed (`0008` drops what
/// PostgreSQL's made): a database may record them, and their numbers are never used again.
pub(super) const POSTGRES_RETIRED: &[i64] = &[7];

const SQLITE: &[Embedded] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "runner api",
        include_str!("../../migrations/sqlite/0002_runner_api.sql"),
    ),
    (
        3,
        "events account group",
        include_str!("../../migrations/sqlite/0003_events_account_group.sql"),
    ),
    (
        4,
        "trimmed mark position index",
        include_str!("../../migrations/sqlite/0004_trimmed_mark_position_index.sql"),
    ),
    (
        6,
        "drop retired status index",
        include_str!("../../migrations/sqlite/0006_drop_retired_status_index.sql"),
    ),
];

/// SQLite's [`POSTGRES_RETIRED`] (`0006` drops what it made).
pub(super) const SQLITE_RETIRED: &[i64] = &[5];

pub(super) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

pub(super) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

/// Whether any migration this binary knows is not among `applied` (the versions a database
/// records as applied), and warns once when the database records versions this binary does not
/// know: a newer version migrated it. A `retired` one is no newer version's (a later migration
/// undid it), so it is not warned of.
pub(super) fn pending(migrator: &Migrator, retired: &[i64], applied: &[i64]) -> bool {
    let newer: Vec<i64> = applied
        .iter()
        .copied()
        .filter(|version| !migrator.version_exists(*version) && !retired.contains(version))
        .collect();
    if !newer.is_empty() {
        tracing::warn!(
            migrations = ?newer,
            "a newer version of signal-scans migrated this database; serving with the schema this one knows"
        );
    }
    migrator
        .iter()
        .any(|migration| !applied.contains(&migration.version))
}

/// A database a newer version migrated is served, not refused: during a rolling upgrade the
/// previous version's replicas restart on it (a crash, a drained node), and a rollback runs the
/// previous image on it. Every migration is written for that: it adds, and the previous version
/// keeps working on what it added (docs/architecture.md, "Add a migration").
fn migrator(files: &[Embedded]) -> Migrator {
    let mut migrator = Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    // sqlx's own rule: a file that starts so runs outside a transaction.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    );
    migrator.set_ignore_missing(true);
    migrator
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sqlx reads from a folder at run time, as `migrate!` read it at compile time.
    async fn as_sqlx_reads(folder: &str) -> Migrator {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        Migrator::new(path).await.unwrap()
    }

    /// Everything about a migration that a database records or sqlx acts on.
    fn described(migrator: &Migrator) -> Vec<(i64, String, MigrationType, Vec<u8>, bool)> {
        migrator
            .iter()
            .map(|m| {
                let (version, description) = (m.version, m.description.to_string());
                (
                    version,
                    description,
                    m.migration_type,
                    m.checksum.to_vec(),
                    m.no_tx,
                )
            })
            .collect()
    }

    /// A migration's version and the start of its checksum (SHA-384 of its file, as sqlx takes it).
    fn checksums(migrator: &Migrator) -> Vec<(i64, String)> {
        migrator
            .iter()
            .map(|m| (m.version, hex::encode(&m.checksum[..8])))
            .collect()
    }

    /// Deployed databases record each applied file's checksum, and refuse a binary whose file of
    /// that number differs ("previously applied but has been modified"): a released migration
    /// never changes, and the numbers of files applied by builds and then removed (PostgreSQL
    /// 0007, SQLite 0005, on 2026-12-05: the `RETIRED` lists) are never used again. A new
    /// migration adds its line here.
    #[test]
    fn released_migrations_never_change_and_retired_numbers_stay_unused() {
        let released = |pinned: &[(i64, &str)]| -> Vec<(i64, String)> {
            pinned.iter().map(|&(v, sum)| (v, sum.to_owned())).collect()
        };
        assert_eq!(
            checksums(&postgres()),
            released(&[
                (1, "f4bd99440cc2c7d8"),
                (2, "44d93c8c96a37fb9"),
                (3, "b5600657eb0486b0"),
                (4, "1f2936b233c96d50"),
                (5, "4cd7d1fa79d6f4be"),
                (6, "280f7244c15fdd0e"),
                (8, "d78bd228bdf3f1a2"),
            ]),
            "a released PostgreSQL migration changed, or a new one is not pinned"
        );
        assert_eq!(
            checksums(&sqlite()),
            released(&[
                (1, "0b472128dd33ac39"),
                (2, "3bf65be64c20abe3"),
                (3, "cd23a49c1a41fa86"),
                (4, "6349fb21e2452879"),
                (6, "e15a248a7f5204ad"),
            ]),
            "a released SQLite migration changed, or a new one is not pinned"
        );
        // Retired: a database those builds migrated would refuse another file of the number.
        assert_eq!(POSTGRES_RETIRED, [7]);
        assert_eq!(SQLITE_RETIRED, [5]);
        for (migrator, retired) in [(postgres(), POSTGRES_RETIRED), (sqlite(), SQLITE_RETIRED)] {
            for &version in retired {
                assert!(!migrator.version_exists(version), "{version} is retired");
            }
        }
    }

    #[tokio::test]
    async fn the_lists_are_what_sqlx_reads_from_the_folders() {
        let postgres_folder = as_sqlx_reads("migrations/postgres").await;
        let sqlite_folder = as_sqlx_reads("migrations/sqlite").await;
        assert_eq!(described(&postgres()), described(&postgres_folder));
        assert_eq!(described(&sqlite()), described(&sqlite_folder));
        // The PostgreSQL migrations that must run outside a transaction do.
        let no_tx: Vec<i64> = postgres()
            .iter()
            .filter(|m| m.no_tx)
            .map(|m| m.version)
            .collect();
        assert_eq!(no_tx, [4, 5, 8]);
    }
}
