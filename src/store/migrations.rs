//! The schema's migrations, compiled into the binary: `migrations/postgres/` and
//! `migrations/sqlite/`, one list each, in the order they run.
//!
//! Listed by hand rather than with `sqlx::migrate!`, which is sqlx's `macros` feature: that
//! feature compiles a second copy of sqlx, both drivers and their dependencies for the compiler's
//! host, about a sixth of a first release build's work. A unit test below fails when a file in
//! either folder is missing from its list. The checksums sqlx records are its own, computed from
//! the same text, so databases migrated by either way agree.

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
];

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
];

pub(super) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

pub(super) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

fn migrator(files: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each folder's files, as `(version, description)`, the way sqlx names them.
    fn files_in(folder: &str) -> Vec<(i64, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        let mut files: Vec<(i64, String)> = std::fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| {
                let (version, rest) = name.strip_suffix(".sql")?.split_once('_')?;
                Some((version.parse().unwrap(), rest.replace('_', " ")))
            })
            .collect();
        files.sort();
        files
    }

    fn listed(files: &[Embedded]) -> Vec<(i64, String)> {
        files.iter().map(|&(v, d, _)| (v, d.to_owned())).collect()
    }

    #[test]
    fn every_migration_file_is_listed_in_order() {
        assert_eq!(listed(POSTGRES), files_in("migrations/postgres"));
        assert_eq!(listed(SQLITE), files_in("migrations/sqlite"));
    }

    #[test]
    fn a_file_that_says_no_transaction_runs_outside_one() {
        let no_tx = |m: &Migrator| -> Vec<i64> {
            m.iter().filter(|m| m.no_tx).map(|m| m.version).collect()
        };
        assert_eq!(no_tx(&postgres()), [4, 5]);
        assert_eq!(no_tx(&sqlite()), Vec::<i64>::new());
    }
}
