//! The real binary's command line: keys, scans, migrations, and its one-line configuration errors.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::scan::ScanStatus;
use signal_scans::store::Store;

use crate::helpers::locks::WriteLock;
use crate::helpers::process::ServerProcess;
use crate::helpers::{
    ApiResponse, Backend, Settings, TestApp, TestDatabase, child, clock_shift, group, move_path,
    store_options,
};
use crate::store_test;

pub(crate) fn signal_scans(database_url: &str, args: &[&str]) -> Output {
    child::signal_scans()
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

/// `scans create --json` on the database for `group`, which must succeed: what it printed.
pub(crate) fn scan_created_on_the_command_line(database_url: &str, group: &str) -> Value {
    let created = signal_scans(
        database_url,
        &["scans", "create", "--account-group", group, "--json"],
    );
    json_of(&created)
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("JSON on stdout: {output:?}"))
}

async fn keys_create_list_and_revoke_work_end_to_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let url = app.db.url.clone();

    // Create: the secret is printed once, with what the key may do.
    let created = json_of(&signal_scans(
        &url,
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--permission",
            "signals:write",
            "--account-group",
            group.as_str(),
            "--expires-in",
            "3600",
            "--json",
        ],
    ));
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ssk_"));
    assert_eq!(created["name"], "ci");
    assert_eq!(created["permissions"], serde_json::json!(["signals:write"]));
    assert_eq!(
        created["accountGroups"],
        serde_json::json!([group.as_str()])
    );
    assert!(created["expiresAt"].is_string());
    let id = created["id"].as_str().unwrap().to_owned();

    // A scan made by the CLI cancels with that key.
    let scan = json_of(&signal_scans(
        &url,
        &[
            "scans",
            "create",
            "--account-group",
            group.as_str(),
            "--status",
            "running",
            "--json",
        ],
    ));
    assert_eq!(scan["status"], "running");
    let scan_id = ScanId::parse(scan["scanId"].as_str().unwrap()).unwrap();
    app.cancel_ok(&secret, &group, &scan_id).await;

    // List never shows a secret.
    let listed = signal_scans(&url, &["keys", "list", "--json"]);
    let text = String::from_utf8(listed.stdout.clone()).unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("\"key\""),
        "{text}"
    );
    let listed = json_of(&listed);
    assert_eq!(listed[0]["id"], id.as_str());
    let table = String::from_utf8(signal_scans(&url, &["keys", "list"]).stdout).unwrap();
    assert!(!table.contains(&secret));
    // Columns line up under their headers, a 24-character group id included (the groups column
    // was 10 wide: command line review).
    let (header, row) = (table.lines().next().unwrap(), table.lines().nth(1).unwrap());
    assert_eq!(row.find(group.as_str()), header.find("GROUPS"), "{table}");
    assert_eq!(
        row.rfind(" / ")
            .map(|slash| row[..slash].trim_end().rfind(' ').unwrap() + 1),
        header.find("EXPIRES / REVOKED"),
        "{table}"
    );

    // Revoke: the key stops working within a second (the key cache's bound), here and
    // everywhere.
    let revoked = signal_scans(&url, &["keys", "revoke", &id]);
    assert!(revoked.status.success(), "{revoked:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let another = app.scan(&group, ScanStatus::Queued).await;
    let response = app
        .cancel(Some(&secret), group.as_str(), another.as_str())
        .await;
    response.assert_error(401, "UNAUTHORIZED");
    assert_eq!(app.status_of(&another).await, ScanStatus::Queued);
    let unknown = signal_scans(&url, &["keys", "revoke", &uuid::Uuid::new_v4().to_string()]);
    assert!(!unknown.status.success());
}
store_test!(keys_create_list_and_revoke_work_end_to_end);

/// On PostgreSQL the database's clock stamps a key's creation, so its expiry counts from that
/// clock too: from a machine whose clock is an hour behind, `--expires-in 600` still expires ten
/// minutes after the key's `createdAt` (before, 50 minutes before it, refused at once). On either
/// store the two come from one reading of that clock: exactly ten minutes apart (the expiry came
/// from a reading taken a fraction of a millisecond before the creation's: the contract review).
async fn a_keys_expiry_follows_its_creation_whatever_the_machines_clock(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let shifted = clock_shift::env(-3600);
    let created = child::signal_scans()
        .args(["keys", "create", "--name", "behind", "--all-account-groups"])
        .args(["--expires-in", "600", "--json"])
        .env("DATABASE_URL", &app.db.url)
        .envs(shifted.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("the binary runs");
    let created = json_of(&created);

    let at = |field: &str| {
        let stamp = created[field].as_str().unwrap();
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let lifetime = at("expiresAt") - at("createdAt");
    assert_eq!(lifetime, time::Duration::seconds(600), "{created}");
}
store_test!(a_keys_expiry_follows_its_creation_whatever_the_machines_clock);

async fn keys_create_refuses_bad_input_in_one_line(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.db.url.clone();
    // Arguments split at spaces: none of them holds one but the blank name, given on its own.
    for (args, names) in [
        (
            "keys create --name x --permission signals:admin --all-account-groups",
            "signals:admin",
        ),
        (
            "keys create --name x --permission signals:read",
            "--account-group",
        ),
        (
            "keys create --name x --permission signals:read --account-group nope",
            "nope",
        ),
        ("scans create --account-group nope", "nope"),
        (
            "scans create --account-group 507f1f77bcf86cd799439011 --status done",
            "done",
        ),
        (
            "keys create --name x --all-account-groups --expires-in -5",
            "--expires-in",
        ),
    ]
    .map(|(args, names)| (args.split(' ').collect::<Vec<_>>(), names))
    .into_iter()
    .chain([(
        vec!["keys", "create", "--name", "   ", "--all-account-groups"],
        "--name must be 1 to 200 characters",
    )]) {
        let output = signal_scans(&url, &args);
        let stderr = String::from_utf8(output.stderr).unwrap();
        // 2, as for every argument refused: clap's own, and those only the command can judge.
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
    assert!(
        app.store.list_keys().await.unwrap().is_empty(),
        "nothing was created"
    );
}
store_test!(keys_create_refuses_bad_input_in_one_line);

async fn keys_create_without_permissions_grants_read_and_write(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let created = json_of(&signal_scans(
        &app.db.url,
        &[
            "keys",
            "create",
            "--name",
            "ops",
            "--all-account-groups",
            "--json",
        ],
    ));

    assert_eq!(
        created["permissions"],
        serde_json::json!(["signals:read", "signals:write"])
    );
    assert_eq!(created["allAccountGroups"], true);
}
store_test!(keys_create_without_permissions_grants_read_and_write);

/// A name is counted in characters, as both schemas count it: 200 of a two-byte script are kept.
async fn keys_create_keeps_a_name_of_200_characters_of_any_script(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let name = "é".repeat(200);

    let args = [
        "keys",
        "create",
        "--name",
        &name,
        "--all-account-groups",
        "--json",
    ];
    let created = json_of(&signal_scans(&app.db.url, &args));

    assert_eq!(created["name"], name.as_str());
    assert_eq!(app.store.list_keys().await.unwrap()[0].name, name);
}
store_test!(keys_create_keeps_a_name_of_200_characters_of_any_script);

/// Replicas that start together on a fresh database each run the migrations: one applies them,
/// the others wait for it and find them applied. On PostgreSQL a waiting process must hold no
/// statement open while it waits, or the index built CONCURRENTLY waits for it in turn (a deadlock,
/// which left an index behind that no later start could get past).
async fn processes_migrating_one_fresh_database_at_once_all_succeed(backend: Backend) {
    for round in 0..8 {
        let database = TestDatabase::create(backend).await;
        let migrating: Vec<_> = (0..3)
            .map(|_| {
                child::signal_scans()
                    .arg("migrate")
                    .env("DATABASE_URL", &database.url)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for process in migrating {
            let output = process.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "round {round}: {stderr}");
        }
        // The schema is whole: a scan is made and read back.
        let store = Store::connect(&store_options(&database.url, Duration::from_secs(10))).unwrap();
        let scan = store
            .create_scan(&group(), ScanStatus::Queued)
            .await
            .unwrap();
        let found = store.find_scan(None, &scan.id).await.unwrap();
        assert_eq!(found.map(|scan| scan.status), Some(ScanStatus::Queued));
    }
}
store_test!(processes_migrating_one_fresh_database_at_once_all_succeed);

/// Runs `sql` on `db`, which must accept it.
async fn run_sql(db: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(db)
        .await
        .unwrap();
}

/// `signal-scans migrate` on `database`: its output, after checking that it succeeded.
fn migrated(database: &TestDatabase) -> Output {
    let output = child::signal_scans()
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    output
}

/// A process stopped while migration 0005 built its index CONCURRENTLY (a SIGTERM or a
/// kill mid-upgrade) leaves the build running on in PostgreSQL: a valid index that the migration,
/// never recorded as applied, then failed to create at every later start ("already exists"), so
/// no replica could start; or, had PostgreSQL aborted the build, an invalid index. The next start
/// takes a valid one as the migration's work, and builds an invalid one again.
async fn an_index_left_by_an_interrupted_upgrade_never_stops_a_start(backend: Backend) {
    use sqlx::Connection;
    let indexes = [(5, "signal_scan_events_group_feed")];
    for ((version, index), invalid) in indexes.into_iter().flat_map(|i| [(i, false), (i, true)]) {
        let database = TestDatabase::create(backend).await;
        migrated(&database);
        let mut db = sqlx::PgConnection::connect(&database.url).await.unwrap();
        // As the interrupted start left it: the index built, its migration not recorded.
        let forget = format!("DELETE FROM _sqlx_migrations WHERE version = {version}");
        run_sql(&mut db, &forget).await;
        if invalid {
            let spoil = format!(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{index}'::regclass"
            );
            run_sql(&mut db, &spoil).await;
        }

        migrated(&database);

        let (recorded, valid): (bool, bool) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = {version} AND success),
                    (SELECT indisvalid FROM pg_index WHERE indexrelid = '{index}'::regclass)"
        )))
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(
            recorded && valid,
            "{index}, invalid: {invalid}: recorded {recorded}, valid {valid}"
        );
    }
}
store_test!(
    an_index_left_by_an_interrupted_upgrade_never_stops_a_start,
    postgres_only
);

/// An upgrade says when it starts applying migrations and when it is done, with how long it took
/// (a backfill of a large table takes minutes, and sqlx's own slow-statement warning, which printed
/// a migration's whole text, is off on the migrations' connection); a start with nothing to apply
/// says neither.
async fn an_upgrade_says_when_it_starts_and_ends(backend: Backend) {
    const STARTS: &str = "applying this version's new migrations to the database";
    const ENDS: &str = "the database is migrated";
    let database = TestDatabase::create(backend).await;

    let first = String::from_utf8(migrated(&database).stderr).unwrap();
    let again = String::from_utf8(migrated(&database).stderr).unwrap();

    let starts = first.find(STARTS).unwrap_or_else(|| panic!("{first}"));
    let ends = first.find(ENDS).unwrap_or_else(|| panic!("{first}"));
    assert!(
        starts < ends && first[ends..].contains("seconds"),
        "{first}"
    );
    assert!(!again.contains(STARTS) && !again.contains(ENDS), "{again}");
}
store_test!(an_upgrade_says_when_it_starts_and_ends);

/// PostgreSQL's refusals are told with their SQLSTATE, what an operator can look up, not with the
/// line of the server's C source that raised them (`database "…" does not exist at line 948`, as
/// sqlx prints them). A database that does not exist is a setting to mend (exit 1); one taking no
/// session for now (`ALLOW_CONNECTIONS false`, maintenance) is unavailable (75: try later), as a
/// running service answers 502 for it. That one exited 1, and a supervisor gave up. An invalid
/// database, refused with the same code, stays 1.
async fn a_database_refusing_a_session_is_told_with_its_sqlstate(backend: Backend) {
    use sqlx::Connection;
    let database = TestDatabase::create(backend).await;
    let (server, name) = database.url.rsplit_once('/').unwrap();
    let missing = format!("{name}_missing");

    let output = child::signal_scans()
        .arg("migrate")
        .env("DATABASE_URL", format!("{server}/{missing}"))
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "database \"{missing}\" does not exist (SQLSTATE 3D000)"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");

    // One taking no session now (maintenance) is the database unavailable: try later.
    database.allow_connections(false).await;
    let output = child::signal_scans()
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .output()
        .unwrap();
    database.allow_connections(true).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("session refused: database")
            && stderr.contains("is not currently accepting connections (SQLSTATE 55000)"),
        "{stderr}"
    );
    // Said once: not sqlx's two prefixes, "error communicating with database: error returned
    // from database: …".
    assert!(!stderr.contains("error returned from database"), "{stderr}");

    // One left invalid (a `DROP DATABASE` interrupted), refused with the same code, never comes
    // back: a setting to mend, not a wait.
    // As PostgreSQL 15.4 and later mark one (ALTER DATABASE takes no -2).
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let mark = async |admin: &mut sqlx::PgConnection, limit: i32| {
        sqlx::query("UPDATE pg_database SET datconnlimit = $1 WHERE datname = $2")
            .bind(limit)
            .bind(name)
            .execute(admin)
            .await
            .unwrap();
    };
    mark(&mut admin, -2).await;
    let output = child::signal_scans()
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .output()
        .unwrap();
    mark(&mut admin, -1).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to invalid database"),
        "{stderr}"
    );
}
store_test!(
    a_database_refusing_a_session_is_told_with_its_sqlstate,
    postgres_only
);

/// A database that a newer version migrated is served, with a warning naming what this binary
/// does not know: during a rolling upgrade the previous version's replicas restart on it, and a
/// rollback runs the previous image on it. Every command refused it ("migration 99 was
/// previously applied but is missing").
async fn a_database_a_newer_version_migrated_is_served_with_a_warning(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    migrated(&database);
    database
        .execute(&recorded_as_applied(backend, 99, "from a newer version"))
        .await;

    let output = migrated(&database);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a newer version of signal-scans migrated this database")
            && stderr.contains("99"),
        "{stderr}"
    );
    let listed = child::signal_scans()
        .args(["keys", "list"])
        .env("DATABASE_URL", &database.url)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}
store_test!(a_database_a_newer_version_migrated_is_served_with_a_warning);

/// A statement recording migration `version` as applied, as sqlx records one (its checksum is not
/// checked: this binary has no file of that number).
fn recorded_as_applied(backend: Backend, version: i64, description: &str) -> String {
    let checksum = match backend {
        Backend::Postgres => "'\\x00'::bytea",
        Backend::Sqlite => "X'00'",
    };
    format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ({version}, '{description}', true, {checksum}, 0)"
    )
}

/// Builds of 2026-12-05 applied a migration since removed (PostgreSQL 0007, SQLite 0005): an
/// index of scans by status, which every status change paid for and no statement reads. A
/// database they migrated kept it through every later start, and each warned that "a newer version
/// … migrated this database", which none had. The next migration drops it, and no warning names it.
async fn a_database_a_retired_migration_made_loses_its_index_without_a_warning(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    migrated(&database);
    // As those builds left it: the retired migration applied, with its index, and not the one
    // that drops it.
    let (retired, dropping) = match backend {
        Backend::Postgres => (7, 8),
        Backend::Sqlite => (5, 6),
    };
    database
        .execute(&format!(
            "DELETE FROM _sqlx_migrations WHERE version = {dropping};
             {};
             CREATE INDEX signal_scans_group_status_newest
                 ON signal_scans (account_group_id, status, created_at DESC, id DESC)",
            recorded_as_applied(backend, retired, "scans group status index")
        ))
        .await;
    assert!(database.has_index("signal_scans_group_status_newest").await);

    let output = migrated(&database);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("applying"), "{stderr}");
    assert!(!stderr.contains("newer version"), "{stderr}");
    assert!(!database.has_index("signal_scans_group_status_newest").await);
    // Once dropped, a start has nothing to apply.
    let again = migrated(&database);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!stderr.contains("applying"), "{stderr}");
}
store_test!(a_database_a_retired_migration_made_loses_its_index_without_a_warning);

/// What a client's requests answer, one of each statement that reads a scan: a create, one with
/// an idempotency key and its replay, a read, a list, the events, a runner's start and its repeat
/// (the claim's read), a cancel.
async fn every_read_of_a_scan(app: &TestApp, group: &AccountGroupId, round: usize) -> Vec<u16> {
    let (writer, runner) = (app.writer(group).await, app.runner(group).await);
    let scans = crate::helpers::scans_path(group.as_str());
    let create = |once: Option<String>| {
        let request = app.client.post(app.url(&scans)).bearer_auth(&writer);
        ApiResponse::of(match once {
            Some(once) => request.header("idempotency-key", once),
            None => request,
        })
    };
    let created = create(None).await;
    let scan = created.body["data"]["scanId"].as_str().unwrap_or_default();
    let once = format!("round-{round}");
    let mut answers = vec![
        created.status.as_u16(),
        create(Some(once.clone())).await.status.as_u16(),
        create(Some(once)).await.status.as_u16(),
    ];
    for path in [
        format!("{scans}/{scan}"),
        scans.clone(),
        format!("{scans}/{scan}/events"),
    ] {
        answers.push(app.get(&runner, &path).await.status.as_u16());
    }
    for _ in 0..2 {
        let start = move_path(group.as_str(), scan, "start");
        answers.push(app.post(&runner, &start, None).await.status.as_u16());
    }
    answers.push(
        app.cancel(Some(&writer), group.as_str(), scan)
            .await
            .status
            .as_u16(),
    );
    answers
}

/// A column that a later version's migration adds to every table, as a rolling upgrade runs it
/// under the running version, breaks none of the running version's statements. PostgreSQL
/// refused every prepared statement that answered `*` ("cached plan must not change result
/// type"): creates, reads and lists answered 500 until the process restarted (the upgrade review).
async fn a_column_a_later_version_adds_breaks_no_statement_of_the_running_one(backend: Backend) {
    let group = group();
    // Two connections, each of which has prepared every statement before the migration.
    let app = Settings::default()
        .with_db_max_connections(2)
        .spawn(backend)
        .await;
    let mut before = Vec::new();
    for round in 0..3 {
        before.push(every_read_of_a_scan(&app, &group, round).await);
    }
    let added = [
        "ALTER TABLE signal_scans ADD COLUMN added_later text",
        "ALTER TABLE signal_scan_events ADD COLUMN added_later text",
        "ALTER TABLE api_keys ADD COLUMN added_later text",
        "ALTER TABLE idempotency_keys ADD COLUMN added_later text",
    ];
    app.db.execute(&added.join(";\n")).await;

    let mut after = Vec::new();
    for round in 3..6 {
        after.push(every_read_of_a_scan(&app, &group, round).await);
    }

    assert!(
        before.iter().flatten().all(|status| *status < 300),
        "{before:?}"
    );
    assert_eq!(after, before);
}
store_test!(a_column_a_later_version_adds_breaks_no_statement_of_the_running_one);

/// Makes migration 0005 (the index built `CONCURRENTLY`) pending again on a migrated database,
/// then starts `migrate` on it, logging JSON: the process, and the first line of its log that
/// holds `said` (within 30 s).
async fn migrate_0005_again_until_it_says(
    database: &TestDatabase,
    said: &str,
) -> (tokio::process::Child, LogLines, Value) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&database.url).await.unwrap();
    run_sql(
        &mut db,
        "DELETE FROM _sqlx_migrations WHERE version = 5; DROP INDEX signal_scan_events_group_feed",
    )
    .await;
    let (migrating, mut lines) = start_migrate(database, &[]);
    let told = until_said(&mut lines, said).await;
    (migrating, lines, told)
}

/// Starts `migrate` on `database`, logging JSON: the process, and the first line of its log that
/// holds `said` (within 30 s).
async fn migrate_until_it_says(
    database: &TestDatabase,
    said: &str,
) -> (tokio::process::Child, Value) {
    let (migrating, mut lines) = start_migrate(database, &[]);
    let told = until_said(&mut lines, said).await;
    (migrating, told)
}

/// The lines of a child's log.
type LogLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Starts `migrate` on `database` with `env` added, logging JSON: the process and its log.
fn start_migrate(
    database: &TestDatabase,
    env: &[(&str, &str)],
) -> (tokio::process::Child, LogLines) {
    use tokio::io::AsyncBufReadExt;
    let mut migrating = tokio::process::Command::from(child::signal_scans())
        .kill_on_drop(true)
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(migrating.stderr.take().unwrap()).lines();
    (migrating, lines)
}

/// The next line of `lines` that holds `said`, read as JSON (within 30 s).
async fn until_said(lines: &mut LogLines, said: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(said) {
                return serde_json::from_str(&line).unwrap();
            }
        }
        panic!("migrate ended without saying {said:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("migrate did not say {said:?}"))
}

/// How many of the lines `lines` gives within `limit` hold `said`.
async fn told_within(lines: &mut LogLines, said: &str, limit: Duration) -> usize {
    let mut told = 0;
    let _ = tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            told += usize::from(line.contains(said));
        }
    })
    .await;
    told
}

/// A SQLite start that has migrations to apply while another connection holds the database's
/// write lock says it waits (every 30 s), and migrates once the lock is let go. It said nothing
/// until it had the lock (20 s of silence in the upgrade review).
#[tokio::test]
async fn a_sqlite_migration_waiting_for_the_write_lock_says_so() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    migrated(&database);
    let mut holder = write_lock_held_with_a_migration_pending(&database).await;

    let (mut waiting, told) =
        migrate_until_it_says(&database, "holds the database's write lock").await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();

    assert!(told["waited_s"].is_u64(), "{told}");
    ends_migrated(&mut waiting).await;
}

/// A connection to `database` (SQLite, migrated) that has put one migration back to pending and
/// holds the write lock: a `migrate` started now has work to do and waits for the lock.
async fn write_lock_held_with_a_migration_pending(
    database: &TestDatabase,
) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut holder = sqlx::SqliteConnection::connect(&database.url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "DELETE FROM _sqlx_migrations WHERE version = 4;
         DROP INDEX signal_scan_events_trimmed_position;
         BEGIN IMMEDIATE",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    holder
}

/// `migrate` ends, and well, within 30 s (once what held it up let go).
async fn ends_migrated(migrating: &mut tokio::process::Child) {
    let status = tokio::time::timeout(Duration::from_secs(30), migrating.wait())
        .await
        .expect("migrate ended once what held it up let go")
        .unwrap();
    assert!(status.success());
}

/// A SQLite migration waiting for the write lock says so once every 30 s, not at each of the
/// busy handler's waits (`DB_TIMEOUT_MS`, here 100 ms): with the lock held a second past the first
/// line, that line is the only one (the eighth mutation run: a reversed comparison said it at every
/// wait, and the test above reads only the first line).
#[tokio::test]
async fn a_sqlite_migration_waiting_for_the_write_lock_says_so_once_each_30_s() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    migrated(&database);
    let mut holder = write_lock_held_with_a_migration_pending(&database).await;
    let (mut migrating, mut lines) = start_migrate(&database, &[("DB_TIMEOUT_MS", "100")]);
    let said = "holds the database's write lock";
    until_said(&mut lines, said).await;
    let mut told = 1;

    // Ten of the busy handler's waits, the lock held all along.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    ends_migrated(&mut migrating).await;
    while let Some(line) = lines.next_line().await.unwrap() {
        told += usize::from(line.contains(said));
    }

    assert_eq!(told, 1, "the wait told {told} times in about a second");
}

/// A start that finds a fresh file's write lock held by another connection that has not yet
/// turned it to WAL (a process setting the file up, as a second `migrate` started beside this one
/// does) waits for it, and migrates once it is let go. Turning the file to WAL needs it to itself,
/// and SQLite answers that busy at once, without its busy handler: a start that took that answer
/// for an error failed (1 start in 60 of three at once; the eighth mutation run: that failure was
/// seen only by chance). The lock is let go once the process has tried the file and let it be
/// (its file seen open, then closed), which it cannot have done with the lock held but by a
/// refusal (or once it has ended).
#[tokio::test]
async fn a_fresh_files_write_lock_held_elsewhere_is_waited_for_at_the_start() {
    use sqlx::ConnectOptions;
    let database = TestDatabase::create(Backend::Sqlite).await;
    let file = database.sqlite_file();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut holder = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE setting_up (x); BEGIN IMMEDIATE; INSERT INTO setting_up VALUES (1)",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let migrating = tokio::process::Command::from(child::signal_scans())
        .kill_on_drop(true)
        .arg("migrate")
        .env("DATABASE_URL", &database.url)
        .env("DB_TIMEOUT_MS", "30000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = migrating.id().unwrap();
    let has_it_open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file))
        })
    };
    // Running: not yet reaped, and not a zombie (`pid (comm) Z …`).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
    };
    let tried = tokio::time::timeout(Duration::from_secs(20), async {
        while running() && !has_it_open() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while running() && has_it_open() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), migrating.wait_with_output())
        .await
        .expect("migrate ended")
        .unwrap();

    tried.expect("the process tried the file and let it be");
    assert!(
        ended.status.success(),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );
}

/// A command with nothing to migrate takes no migration lock: while another process holds it
/// for a long migration, `keys list` (say, before a `keys revoke` in an incident) answers at
/// once rather than waiting, silent, for the lock. A process that has something to migrate
/// waits, and says so, naming the session that holds the lock and what it runs (a killed
/// `migrate`'s session runs on: the wait named no one, the upgrade review).
async fn nothing_to_migrate_waits_for_no_lock_and_a_wait_is_told(backend: Backend) {
    use sqlx::Connection;
    let database = TestDatabase::create(backend).await;
    migrated(&database);
    let mut holder = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    run_sql(&mut holder, "SELECT pg_advisory_lock(6001406379876438851)").await;
    // The same lock held in another database of the cluster: that database's, not this one's.
    let elsewhere = TestDatabase::create(backend).await;
    let mut stranger = sqlx::PgConnection::connect(&elsewhere.url).await.unwrap();
    run_sql(
        &mut stranger,
        "SELECT pg_advisory_lock(6001406379876438851)",
    )
    .await;

    let listed = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::from(child::signal_scans())
            .args(["keys", "list"])
            .env("DATABASE_URL", &database.url)
            .output(),
    )
    .await
    .expect("keys list answered while another process held the migration lock")
    .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // With a migration pending, the wait is told, and ends when the lock is let go.
    let said = "another process is migrating the database";
    let (mut waiting, mut lines, told) = migrate_0005_again_until_it_says(&database, said).await;
    assert!(told["waited_s"].is_u64(), "{told}");
    // Once every 30 s, not at each ask (every 100 ms): nothing more in a second, the lock held
    // all along (the eleventh mutation run: a reversed comparison told it at every ask for 30 s).
    let again = told_within(&mut lines, said, Duration::from_secs(1)).await;
    assert_eq!(again, 0, "the wait told {again} more times in a second");
    // Who holds it, and what it runs: a killed migrate's session goes on running its statement.
    let held_by = told["held_by"].as_str().unwrap_or_default();
    assert!(
        held_by.starts_with(&format!("pid {holder_pid} (idle, "))
            && held_by.contains("pg_advisory_lock")
            && !held_by.contains(';'),
        "{told}"
    );
    run_sql(
        &mut holder,
        "SELECT pg_advisory_unlock(6001406379876438851)",
    )
    .await;
    ends_migrated(&mut waiting).await;
}
store_test!(
    nothing_to_migrate_waits_for_no_lock_and_a_wait_is_told,
    postgres_only
);

/// A migration held up by another session's open transaction says which session: the index
/// migration 0005 builds `CONCURRENTLY` waits for every older transaction of the database to
/// end (a `pg_dump`'s, or one left idle), and a start waited for as long as it lasted with
/// nothing said after "applying this version's new migrations" (operations review). It goes on
/// once that transaction ends.
async fn a_migration_held_up_by_an_open_transaction_names_the_session(backend: Backend) {
    use sqlx::Connection;
    let database = TestDatabase::create(backend).await;
    migrated(&database);
    // What a running pg_dump holds: a snapshot, in a transaction left open.
    let mut dump = sqlx::PgConnection::connect(&database.url).await.unwrap();
    run_sql(&mut dump, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    let dump_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut dump)
        .await
        .unwrap();

    let said = "the migrations wait for other sessions";
    let (mut migrating, mut lines, told) = migrate_0005_again_until_it_says(&database, said).await;
    assert_eq!(told["level"], "WARN", "{told}");
    // Told first at the look 5 s in (give or take the look's own time), not at once nor at the next
    // look, 30 s later; and not again a second on, the transaction still open (the eleventh mutation
    // run: the first look, or every look after it, taken at once went unseen).
    let waited = told["waited_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("{told}"));
    assert!((5..20).contains(&waited), "{told}");
    let again = told_within(&mut lines, said, Duration::from_secs(1)).await;
    assert_eq!(again, 0, "the wait told {again} more times in a second");
    assert!(
        told["blocked_by"].as_str().unwrap().starts_with(&format!(
            "pid {dump_pid} (idle in transaction, its transaction open "
        )),
        "{told}"
    );
    run_sql(&mut dump, "COMMIT").await;
    ends_migrated(&mut migrating).await;
}
store_test!(
    a_migration_held_up_by_an_open_transaction_names_the_session,
    postgres_only
);

/// A start on a database restored from another cluster (its audit rows at transaction ids this
/// cluster has not reached) moves them before this cluster's changes and says how many it moved,
/// what an operator checks against the restored trail (the eleventh mutation run: the count, read
/// by no test, could have been told as 0).
async fn a_start_on_rows_of_another_cluster_says_how_many_it_moved(backend: Backend) {
    use sqlx::Connection;
    let database = TestDatabase::create(backend).await;
    migrated(&database);
    let group = group();
    for _ in 0..3 {
        scan_created_on_the_command_line(&database.url, group.as_str());
    }
    let mut db = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM signal_scan_events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    // As a restore leaves them (see changes::outage's restored-database test for the margin).
    run_sql(
        &mut db,
        "UPDATE signal_scan_events
         SET xid = (pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 20000)::text::xid8",
    )
    .await;

    let (mut migrating, mut lines) = start_migrate(&database, &[]);
    let told = until_said(&mut lines, "audit rows from another PostgreSQL cluster").await;
    ends_migrated(&mut migrating).await;

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM signal_scan_events WHERE xid <> '0'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(rows >= 3, "{rows} audit rows");
    assert_eq!(told["moved"].as_i64(), Some(rows), "{told}");
    assert_eq!(left, 0);
}
store_test!(
    a_start_on_rows_of_another_cluster_says_how_many_it_moved,
    postgres_only
);

/// `healthcheck`, a container's probe: 0 while the service answers, 1 with the reason when it
/// does not. It runs on one thread whatever `TOKIO_WORKER_THREADS` or the host's CPUs say: a
/// container's process limit counts threads, and with a worker per CPU the probe failed to start
/// on a host of many CPUs, so the container never became healthy.
#[tokio::test]
async fn healthcheck_answers_on_one_thread() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let healthy = tokio::process::Command::from(child::signal_scans())
        .arg("healthcheck")
        .env("LISTEN_ADDR", app.addr.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );

    // A port that takes the connection and never answers: the probe waits, and is counted.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let check = tokio::process::Command::from(child::signal_scans())
        .arg("healthcheck")
        .env("LISTEN_ADDR", silent.local_addr().unwrap().to_string())
        .env("TOKIO_WORKER_THREADS", "16")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = check.id().unwrap();
    let _connected = silent.accept().await.unwrap();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "the probe's threads");
    let unhealthy = check.wait_with_output().await.unwrap();
    assert_eq!(unhealthy.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unhealthy.stderr);
    assert!(stderr.contains("did not answer within 3 s"), "{stderr}");
}

/// A SQLite database this process cannot write (a read-only file, directory or mount; here
/// `mode=ro`) stops `serve` at start with one line saying so. It started, reported ready and
/// answered every cancel 500. Commands that only read it still run.
#[tokio::test]
async fn serve_refuses_a_database_it_cannot_write() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    migrated(&database);
    let read_only = format!("{}?mode=ro", database.url);
    let served = tokio::process::Command::from(child::signal_scans())
        .arg("serve")
        .env("DATABASE_URL", &read_only)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let served = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("serve stopped at start")
        .unwrap();
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert_eq!(served.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("this process cannot write the database"),
        "{stderr}"
    );
    let listed = child::signal_scans()
        .args(["keys", "list"])
        .env("DATABASE_URL", &read_only)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    // `keys create --if-none` finding a key writes nothing: it runs there too.
    let first = signal_scans(
        &database.url,
        &["keys", "create", "--name", "first", "--all-account-groups"],
    );
    assert!(first.status.success(), "{first:?}");
    let none_made = signal_scans(
        &read_only,
        &[
            "keys",
            "create",
            "--if-none",
            "--name",
            "ro",
            "--all-account-groups",
        ],
    );
    assert!(none_made.status.success(), "{none_made:?}");
    assert!(String::from_utf8_lossy(&none_made.stdout).contains("none created (--if-none)"));
    // Nor do the commands that write it: `scans create` was told "attempt to write a readonly
    // database", exit 75 (try later), as a volume remounted read-only for a while is.
    let (key_id, scan_id) = (
        uuid::Uuid::new_v4().to_string(),
        ScanId::generate().to_string(),
    );
    for command in [
        &[
            "scans",
            "create",
            "--account-group",
            "507f1f77bcf86cd799439011",
        ][..],
        &["scans", "transition", &scan_id, "--to", "running"],
        &["keys", "create", "--name", "ro", "--all-account-groups"],
        &["keys", "revoke", &key_id],
    ] {
        let refused = signal_scans(&read_only, command);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains("this process cannot write the database"),
            "{command:?}: {stderr}"
        );
    }

    // A path SQLite cannot open at all (a read-only mount without the database's `-shm` file
    // answers the same "unable to open database file"; here, a folder): named, with the files the
    // process must be able to open, by `serve` and by any command that opens the database. They
    // said "database unavailable", as for a passing outage.
    let folder = std::env::temp_dir().join(format!("not-a-file-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&folder).unwrap();
    for command in [&["serve"][..], &["keys", "list"]] {
        let unopenable = child::signal_scans()
            .args(command)
            .env("DATABASE_URL", format!("sqlite://{}", folder.display()))
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&unopenable.stderr);
        assert_eq!(unopenable.status.code(), Some(1), "{command:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("cannot open the database")
                && stderr.contains(&format!("{}-shm", folder.display())),
            "{command:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir(&folder);

    // A database still to be migrated that this process cannot write (here an empty file opened
    // read only; a folder it cannot write, where SQLite cannot make `-wal` and `-shm`, answers
    // the same code): the same words, where the migrations said only "attempt to write a
    // readonly database" (operations review).
    let empty = TestDatabase::create(Backend::Sqlite).await;
    let file = empty.sqlite_file();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::File::create(&file).unwrap();
    let unmigrated = child::signal_scans()
        .arg("migrate")
        .env("DATABASE_URL", format!("{}?mode=ro", empty.url))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unmigrated.stderr);
    assert_eq!(unmigrated.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this process cannot write the database")
            && stderr.contains("in a folder it can write"),
        "{stderr}"
    );
}

/// `serve` starts at once beside another process's write: its start-up check that it can write
/// the file takes a lock held elsewhere as "writable" without waiting for it. It waited out the
/// whole busy timeout first (`DB_TIMEOUT_MS`; here a minute, past the harness's 30 s wait for
/// "serving"), silent, as a backup or a `sqlite3` shell held the lock.
#[tokio::test]
async fn serve_starts_beside_another_process_holding_the_write_lock() {
    use sqlx::{Connection, Executor};
    let database = TestDatabase::create(Backend::Sqlite).await;
    migrated(&database);
    let mut other = sqlx::SqliteConnection::connect(&database.url)
        .await
        .unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();

    let server =
        ServerProcess::start(&[("DATABASE_URL", &database.url), ("DB_TIMEOUT_MS", "60000")]).await;

    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    other.execute("ROLLBACK").await.unwrap();
}

/// A file that is not a SQLite database (`DATABASE_URL` naming the wrong file) is told as what
/// it is, by `migrate` and by `serve`, and left as it was. Told as a database this process cannot
/// write, it would send the operator to the file's and the folder's permissions (the eighth
/// mutation run: any error opening the file, but for a busy lock and one SQLite cannot open, could
/// be told so and no test saw it).
#[test]
fn a_file_that_is_not_a_database_is_named_so_and_left_as_it_was() {
    let folder = std::env::temp_dir().join(format!("not-a-db-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("signal-scans.env");
    let text = "DATABASE_URL=sqlite://data/signal-scans.db\n".repeat(100);
    std::fs::write(&file, &text).unwrap();
    let mut told = Vec::new();
    for command in [&["migrate"][..], &["serve"]] {
        let output = child::signal_scans()
            .args(command)
            .env("DATABASE_URL", format!("sqlite://{}", file.display()))
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        told.push((command, output));
    }
    let left = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&folder);

    for (command, output) in told {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{command:?}: {stderr}"
        );
        assert!(
            stderr.contains("file is not a database") && !stderr.contains("cannot write"),
            "{command:?}: {stderr}"
        );
    }
    assert!(left == text, "the file was changed");
}

/// A setting that cannot work stops `serve` before the database is touched, so an upgrade with a
/// mistyped setting does not migrate first (configuration review): a malformed `REDIS_URL` and a
/// port another process holds were refused only after the migrations had made the file; a
/// trailing space in `DATABASE_URL` made and served a file of another name (`….db `) while the
/// log named the right one; an in-memory database was migrated, then every request failed. A bad
/// value exits 2, as a setting the command line refuses does (it exited 1); a port held, 1.
#[test]
fn a_setting_that_cannot_work_stops_serve_before_the_database_is_touched() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let folder = std::env::temp_dir().join(format!("untouched-{}", uuid::Uuid::new_v4().simple()));
    let file = folder.join("signal-scans.db");
    let url = format!("sqlite://{}", file.display());
    let trailing_space = format!("{url} ");
    for (env, said, code) in [
        (vec![("REDIS_URL", "notaurl")], "REDIS_URL", 2),
        (vec![("REDIS_URL", "rediss://cache:6380")], "rediss://", 2),
        (vec![("LISTEN_ADDR", held.as_str())], "(LISTEN_ADDR)", 1),
        (
            vec![("DATABASE_URL", trailing_space.as_str())],
            "DATABASE_URL has white space at its start or end",
            2,
        ),
        (
            vec![("DATABASE_URL", "mysql://db/x")],
            "DATABASE_URL must start with postgres:// or sqlite://",
            2,
        ),
    ] {
        let output = child::signal_scans()
            .arg("serve")
            .env("DATABASE_URL", &url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{env:?}: {stderr}");
        assert!(stderr.contains(said), "{env:?}: {stderr}");
        assert!(
            !folder.exists(),
            "{env:?}: the database was touched: {:?}",
            std::fs::read_dir(&folder).map(|files| files.count())
        );
    }
    // Run where a file made by mistake would show: a version that made the database file itself
    // made one for the first (`file:sqlx-in-memory-0`: the diff review).
    let scratch = std::env::temp_dir().join(format!("scratch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    for memory in ["sqlite://:memory:", "sqlite://?mode=memory", "sqlite://"] {
        let output = child::signal_scans()
            .args(["keys", "list"])
            .env("DATABASE_URL", memory)
            .current_dir(&scratch)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{memory}: {stderr}");
        assert!(
            stderr.contains("DATABASE_URL names no file"),
            "{memory}: {stderr}"
        );
        let made: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
        assert!(made.is_empty(), "{memory}: {made:?}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A percent-encoded SQLite path (`%20`, the only way to write a `?` or `#` in a file name) is
/// the same file for every command: `serve` and `keys create` decoded it, the commands that need
/// an existing database looked for the raw text and said there was none.
#[test]
fn a_percent_encoded_sqlite_path_is_one_file_for_every_command() {
    let folder = std::env::temp_dir().join(format!("encoded-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/my%20dir/keys.db", folder.display());
    let run = |args: &[&str]| {
        child::signal_scans()
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let created = run(&[
        "keys",
        "create",
        "--name",
        "encoded",
        "--all-account-groups",
    ]);
    let decoded = folder.join("my dir/keys.db").exists();
    let listed = run(&["keys", "list"]);
    let _ = std::fs::remove_dir_all(&folder);
    assert!(created.status.success(), "{created:?}");
    assert!(decoded, "the file is `my dir/keys.db`");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("encoded"),
        "{listed:?}"
    );
}

/// Every command on a SQLite file leaves it whole when it ends: its last connection closed, the
/// write-ahead log is checkpointed into the file and removed. Commands ended with their changes
/// only in `-wal` (the runner-author review: 3 runs in 5), which README's Troubleshoot says to
/// delete once no process has the file open, so the changes they had reported were lost.
#[test]
fn a_command_on_a_sqlite_file_leaves_no_write_ahead_log_behind() {
    let folder = std::env::temp_dir().join(format!("closed-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/signal-scans.db", folder.display());
    let log = folder.join("signal-scans.db-wal");
    let group = group().to_string();
    let mut left = Vec::new();
    let mut run = |args: &[&str]| {
        let output = signal_scans(&url, args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        if log.exists() {
            left.push(args.join(" "));
        }
        output
    };
    for _ in 0..3 {
        run(&["migrate"]);
        run(&["keys", "create", "--name", "closed", "--all-account-groups"]);
        let created = run(&["scans", "create", "--account-group", &group, "--json"]);
        let scan = json_of(&created)["scanId"].as_str().unwrap().to_owned();
        run(&["scans", "transition", &scan, "--to", "running"]);
    }
    let _ = std::fs::remove_dir_all(&folder);

    assert!(left.is_empty(), "a write-ahead log was left by {left:?}");
}

/// A start that finds no SQLite database file says it made a new, empty one, once. It is also
/// what a restart does after the file was deleted under the service: it then serves an empty
/// database, every key refused, and nothing said so.
#[test]
fn a_new_database_file_is_announced() {
    let folder = std::env::temp_dir().join(format!("fresh-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/signal-scans.db", folder.display());
    let migrate = || {
        child::signal_scans()
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let (first, again) = (migrate(), migrate());
    let _ = std::fs::remove_dir_all(&folder);
    let said = "no database file was there: made a new, empty one";
    assert!(first.status.success() && again.status.success());
    assert!(
        String::from_utf8_lossy(&first.stderr).contains(said),
        "{first:?}"
    );
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains(said),
        "{again:?}"
    );
}

/// Under `LOG_FORMAT=json` the line that says why a command failed is a JSON log line too, a
/// setting clap refused included: it was `error: …` text, which a collector reading JSON drops,
/// and with it the one line that said why the service stopped.
#[test]
fn under_log_format_json_a_failure_is_a_json_line() {
    // In capitals, taken as the refusals' own line took it: it was refused (in JSON).
    let unreachable = child::signal_scans()
        .arg("serve")
        .env("LOG_FORMAT", "JSON")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .output()
        .unwrap();
    let refused_setting = child::signal_scans()
        .arg("serve")
        .env("LOG_FORMAT", "json")
        .env("DB_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    // Refused once clap is done, by the log's own set-up: it printed `error: …` text.
    let refused_filter = child::signal_scans()
        .arg("serve")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "=[")
        .output()
        .unwrap();
    for (output, said) in [
        (&unreachable, "cannot migrate the database"),
        (
            &refused_setting,
            "invalid value 'soon' for '--db-timeout-ms",
        ),
        (&refused_filter, "invalid RUST_LOG"),
    ] {
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect();
        let last = lines.last().expect("a line");
        assert_eq!(last["level"], "ERROR", "{stderr}");
        assert!(
            last["error"].as_str().unwrap().starts_with(said),
            "{stderr}"
        );
    }
}

/// An empty `TOKIO_WORKER_THREADS` (an orchestrator's `value: ""`) is unset, as the other
/// settings' empty values are: Tokio, reading it itself, panicked with a backtrace.
#[tokio::test]
async fn an_empty_tokio_worker_threads_is_unset() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    migrated(&database);
    let listed = child::signal_scans()
        .args(["keys", "list"])
        .env("DATABASE_URL", &database.url)
        .env("TOKIO_WORKER_THREADS", "")
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

#[test]
fn a_missing_or_bad_setting_is_one_line_naming_it() {
    for (env, args, named) in [
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("DB_TIMEOUT_MS", "soon"),
            ],
            vec!["migrate"],
            "DB_TIMEOUT_MS",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("LISTEN_ADDR", "nowhere"),
            ],
            vec!["serve"],
            "LISTEN_ADDR",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("RATE_LIMIT_PER_SECOND", "0"),
            ],
            vec!["serve"],
            "RATE_LIMIT_PER_SECOND",
        ),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("LOG_FORMAT", "xml"),
            ],
            vec!["serve"],
            "LOG_FORMAT",
        ),
        (
            vec![("DATABASE_URL", "mysql://x@127.0.0.1/x")],
            vec!["migrate"],
            "DATABASE_URL",
        ),
        // Which part is wrong, never the URL's text.
        (
            vec![("DATABASE_URL", "postgres://x@127.0.0.1:notaport/x")],
            vec!["migrate"],
            "DATABASE_URL is not a valid PostgreSQL URL: invalid port number",
        ),
        (
            vec![("DATABASE_URL", "postgres://x@127.0.0.1/x?sslmode=bogus")],
            vec!["migrate"],
            "DATABASE_URL is not a valid PostgreSQL URL: its sslmode is none of",
        ),
        (
            vec![("RUST_LOG", "info,[[[=x")],
            vec!["migrate"],
            "RUST_LOG",
        ),
        (
            vec![("KEY_CACHE_TTL_MS", "5000")],
            vec!["serve"],
            "KEY_CACHE_TTL_MS",
        ),
        (vec![("DOCS_ENABLED", "yes")], vec!["serve"], "DOCS_ENABLED"),
        (
            vec![
                ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
                ("REDIS_KEY_PREFIX", ""),
            ],
            vec!["serve"],
            // Not clap's `none was supplied`: it was supplied, empty.
            "invalid value '' for '--redis-key-prefix <REDIS_KEY_PREFIX>': it is empty: give a prefix",
        ),
        (
            vec![("TOKIO_WORKER_THREADS", "0")],
            vec!["serve"],
            "TOKIO_WORKER_THREADS",
        ),
        (
            vec![("TOKIO_WORKER_THREADS", "many")],
            vec!["migrate"],
            "TOKIO_WORKER_THREADS",
        ),
        // Taken, it aborted the process asking for the threads' space at once.
        (
            vec![("TOKIO_WORKER_THREADS", "99999999999")],
            vec!["migrate"],
            "TOKIO_WORKER_THREADS",
        ),
        // A key read from a file, its line break kept: "failed to parse header value".
        (
            vec![("SIGNAL_SCANS_API_KEY", "ss_key\n")],
            vec![
                "scans",
                "show",
                "--server",
                "http://127.0.0.1:1",
                "--account-group",
                "507f1f77bcf86cd799439011",
                "507f1f77bcf86cd799439012",
            ],
            "SIGNAL_SCANS_API_KEY",
        ),
        // No command: what to give, not only the description (the first line of the help).
        (
            vec![],
            vec![],
            "requires a subcommand but one was not provided [subcommands: serve,",
        ),
        (vec![], vec!["keys"], "[subcommands: create, list, revoke"),
        // A value with a blank line of its own, quoted in the refusal: the flag is still named.
        (
            vec![],
            vec![
                "scans",
                "create",
                "--account-group",
                "507f1f77bcf86cd799439011",
                "--server",
                "http://127.0.0.1:1",
                "--idempotency-key",
                "a\n\nb",
            ],
            "for '--idempotency-key <IDEMPOTENCY_KEY>': 1 to 255 visible ASCII characters",
        ),
    ] {
        let output = child::signal_scans()
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
        // A URL's part at fault is named, its text never shown.
        assert!(
            !stderr.contains("notaport") && !stderr.contains("bogus"),
            "{stderr}"
        );
    }
}

/// Also when the password, not percent-encoded, holds a `/` or `#` that moves it into the URL's
/// path or fragment (a base64 password may start with `/`): the message printed it whole.
#[test]
fn an_unreachable_database_fails_migrate_without_leaking_the_password() {
    for url in [
        "postgres://app:hunter2@127.0.0.1:1/x",
        "postgres://app:/9xQ+hunter2==@127.0.0.1:1/x",
        "postgres://app:#hunter2@127.0.0.1:1/x",
        "postgres://postgres:1234/hunter2@127.0.0.1:1/x",
    ] {
        let output = child::signal_scans()
            .arg("migrate")
            .env("DATABASE_URL", url)
            .env("DB_TIMEOUT_MS", "500")
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        // Unreachable: ask again later, as a command through `--server` does.
        assert_eq!(output.status.code(), Some(75), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
        assert!(
            stderr.contains("cannot migrate the database at postgres://"),
            "{url}: {stderr}"
        );
    }
}

/// This binary has no TLS for its database: a URL (or `PGSSLMODE`) that asks for it is refused
/// as a setting, exit 2, before any connection, and never as an unavailable database (exit 75,
/// which a script retries for ever). Both read as sqlx's TLS error, and the commands exited 75.
#[test]
fn a_database_url_asking_for_tls_is_refused_as_a_setting() {
    let plain = "postgres://app:hunter2@127.0.0.1:1/x";
    let asking = "postgres://app:hunter2@127.0.0.1:1/x?sslmode=require";
    for (url, pg_ssl_mode) in [(asking, None), (plain, Some("verify-full"))] {
        let mut command = child::signal_scans();
        command.args(["keys", "list"]).env("DATABASE_URL", url);
        if let Some(mode) = pg_ssl_mode {
            command.env("PGSSLMODE", mode);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("asks for TLS"), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
}

/// `scans show --json` says what the text says: the account group too (it was left out); and
/// `--account-group` narrows it to that group's scans.
async fn scans_show_json_names_the_account_group(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let shown = json_of(&signal_scans(
        &app.db.url,
        &["scans", "show", scan.as_str(), "--json"],
    ));

    assert_eq!(shown["scanId"], scan.as_str());
    assert_eq!(shown["accountGroupId"], group.as_str());
    assert_eq!(shown["status"], "queued");

    // With --account-group, the scan of that group, as `scans transition` finds it: another
    // group's is not found (the flag was ignored, and the scan printed).
    let show_in = |group: &str| {
        let args = ["scans", "show", scan.as_str(), "--account-group", group];
        signal_scans(&app.db.url, &args)
    };
    let own = show_in(group.as_str());
    assert!(own.status.success(), "{own:?}");
    let other = show_in("aaaaaaaaaaaaaaaaaaaaaaaa");
    let said = String::from_utf8_lossy(&other.stderr);
    let not_found = format!("no scan with id {scan}");
    let refused = !other.status.success() && other.stdout.is_empty() && said.contains(&not_found);
    assert!(refused, "{other:?}");
}
store_test!(scans_show_json_names_the_account_group);

/// The command line cannot cancel: `scans transition --to` takes only `running`, `completed` or
/// `failed` (nor can it move a scan back to `queued`), whether the move would go to the database
/// or through the API. A cancel is a client's, made with a `signals:write` key over HTTP; an
/// operator holding only the database has no path around that rule.
async fn scans_transition_cannot_cancel(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let queued = app.scan(&group, ScanStatus::Queued).await;
    let running = app.scan(&group, ScanStatus::Running).await;
    let server = format!("http://{}", app.addr);

    for (scan, to, through) in [
        (&queued, "cancelled", None),
        (&running, "cancelled", None),
        (&running, "queued", None),
        (&running, "cancelled", Some(server.as_str())),
    ] {
        let mut args = vec!["scans", "transition", scan.as_str(), "--to", to];
        if let Some(server) = through {
            args.extend(["--server", server, "--account-group", group.as_str()]);
        }
        let output = signal_scans(&app.db.url, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert!(!output.status.success(), "{args:?}: {output:?}");
        assert!(
            stderr.contains("[possible values: running, completed, failed]"),
            "{args:?}: {stderr}"
        );
    }
    for (scan, status) in [
        (&queued, ScanStatus::Queued),
        (&running, ScanStatus::Running),
    ] {
        assert_eq!(app.status_of(scan).await, status);
        assert_eq!(app.store.scan_events(scan).await.unwrap().len(), 1);
    }
}
store_test!(scans_transition_cannot_cancel);

/// A command on the database that cannot have it now (another session holds the scan's lock, or
/// SQLite's write lock, past `DB_TIMEOUT_MS`) exits 75 with nothing on stdout, as the same
/// command through `--server` does when the service answers 502: a script asks again later. A
/// move the state machine refuses still exits 1; a move the lock held up did not happen.
async fn a_command_the_database_cannot_answer_now_exits_75(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let (url, id) = (app.db.url.clone(), scan.to_string());
    // The timeout bounds the command's connection and migration check too: the refused move's
    // is long, so a slow start on a loaded machine cannot make its 1 a 75.
    let transition = move |to: &str, timeout_ms: &str| {
        child::signal_scans()
            .args(["scans", "transition", &id, "--to", to, "--json"])
            .env("DATABASE_URL", &url)
            .env("DB_TIMEOUT_MS", timeout_ms)
            .env("RUST_LOG", "warn")
            .output()
            .expect("the binary runs")
    };

    let mut lock = WriteLock::hold(&app, &scan).await;
    let held_up = tokio::task::spawn_blocking({
        let transition = transition.clone();
        move || transition("running", "300")
    })
    .await
    .unwrap();
    lock.release().await;
    let refused = transition("completed", "5000");

    assert_eq!(held_up.status.code(), Some(75), "{held_up:?}");
    assert!(held_up.stdout.is_empty(), "{held_up:?}");
    assert!(
        String::from_utf8_lossy(&held_up.stderr).contains("database unavailable"),
        "{held_up:?}"
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 1);
}
store_test!(a_command_the_database_cannot_answer_now_exits_75);
