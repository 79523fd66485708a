//! The scan state machine on each store: every move it allows applies (with its audit row and
//! timestamps), every other is refused naming the current status, by the store, the service and
//! the `scans transition` command.

use signal_scans::domain::scan::{Actor, ScanStatus, Transition};
use signal_scans::service::{ScanService, ServiceError};

use crate::helpers::{Backend, RUNNER, TestApp, group};
use crate::store_test;

/// The moves the contract allows, written out here rather than asked of the code under test.
const ALLOWED: [(ScanStatus, ScanStatus); 5] = [
    (ScanStatus::Queued, ScanStatus::Running),
    (ScanStatus::Queued, ScanStatus::Cancelled),
    (ScanStatus::Running, ScanStatus::Completed),
    (ScanStatus::Running, ScanStatus::Failed),
    (ScanStatus::Running, ScanStatus::Cancelled),
];

async fn every_move_the_state_machine_allows_applies_and_every_other_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    for from in ScanStatus::ALL {
        for to in ScanStatus::ALL {
            let allowed = ALLOWED.contains(&(from, to));
            let scan = app.scan(&group, from).await;

            let outcome = app.store.transition(None, &scan, to, RUNNER).await.unwrap();

            let events = app.store.scan_events(&scan).await.unwrap();
            match outcome {
                Transition::Applied {
                    previous,
                    scan: moved,
                } => {
                    assert!(allowed, "{from} -> {to} applied");
                    assert_eq!(previous, from);
                    assert_eq!(moved.status, to);
                    assert_eq!(events.len(), 2, "{from} -> {to}: {events:?}");
                    assert_eq!((events[1].from, events[1].to), (Some(from), to));
                    assert_eq!(events[1].trace_id.as_deref(), Some("runner"));
                    assert_eq!(
                        moved.started_at.is_some(),
                        to == ScanStatus::Running || from == ScanStatus::Running
                    );
                    assert_eq!(moved.finished_at.is_some(), to.is_final());
                    assert_eq!(moved.cancelled_at.is_some(), to == ScanStatus::Cancelled);
                }
                Transition::Refused { scan: current } => {
                    assert!(!allowed, "{from} -> {to} refused");
                    assert_eq!(current.status, from);
                    assert_eq!(events.len(), 1, "nothing written: {events:?}");
                }
                Transition::NotFound => panic!("{from} -> {to}: scan not found"),
            }
            assert_eq!(app.status_of(&scan).await, if allowed { to } else { from });
        }
    }
}
store_test!(every_move_the_state_machine_allows_applies_and_every_other_is_refused);

async fn a_refused_move_names_the_current_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let service = ScanService::new(app.store.clone());
    let scan = app.scan(&group(), ScanStatus::Cancelled).await;

    let refused = service
        .advance(None, &scan, ScanStatus::Completed, RUNNER)
        .await;

    match refused {
        Err(ServiceError::InvalidTransition { current, requested }) => {
            assert_eq!(
                (current, requested),
                (ScanStatus::Cancelled, ScanStatus::Completed)
            );
        }
        other => panic!("{other:?}"),
    }
}
store_test!(a_refused_move_names_the_current_status);

async fn a_late_completion_after_a_cancel_changes_nothing(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    app.cancel_ok(&key, &group, &scan).await;

    let late = app
        .store
        .transition(
            None,
            &scan,
            ScanStatus::Completed,
            Actor {
                api_key_id: None,
                trace_id: None,
                reason: None,
            },
        )
        .await
        .unwrap();

    assert!(
        matches!(late, Transition::Refused { ref scan } if scan.status == ScanStatus::Cancelled)
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Cancelled);
}
store_test!(a_late_completion_after_a_cancel_changes_nothing);

async fn the_transition_command_refuses_a_final_scan_naming_its_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let scan = app.scan(&group(), ScanStatus::Queued).await;
    let run = |to: &str| {
        crate::helpers::child::signal_scans()
            .args(["scans", "transition", scan.as_str(), "--to", to, "--json"])
            .env("DATABASE_URL", &app.db.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };

    let running = run("running");
    let completed = run("completed");
    let late = run("failed");

    assert!(running.status.success(), "{running:?}");
    let shown: serde_json::Value = serde_json::from_slice(&completed.stdout).unwrap();
    assert_eq!(shown["status"], "completed");
    assert!(!late.status.success());
    let stderr = String::from_utf8(late.stderr).unwrap();
    assert!(stderr.contains("completed"), "{stderr}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Completed);
}
store_test!(the_transition_command_refuses_a_final_scan_naming_its_status);

/// The transition command checks what the API checks, before it touches the scan: a reason
/// only on a failure, of 1 to 1,000 characters; a scan of another group than `--account-group`
/// is not found. (Without `--server` the reason reached the database's own check, and the
/// group was ignored.)
async fn the_transition_command_refuses_what_the_api_refuses_and_moves_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mine = group();
    let scan = app.scan(&mine, ScanStatus::Queued).await;
    let run = |args: &[&str]| {
        crate::helpers::child::signal_scans()
            .args(["scans", "transition", scan.as_str()])
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let too_long = "x".repeat(1001);
    let theirs = group();

    // 2 for an argument refused, as clap's refusals; 1 for a move the scan does not allow.
    for (args, code, says) in [
        (vec!["--to", "running", "--reason", "why"], 2, "--reason"),
        (
            vec!["--to", "failed", "--reason", ""],
            2,
            "reason must be 1 to 1000",
        ),
        (
            vec!["--to", "failed", "--reason", &too_long],
            2,
            "it is 1001",
        ),
        (
            vec!["--to", "running", "--account-group", theirs.as_str()],
            1,
            "no scan with id",
        ),
    ] {
        let refused = run(&args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued, "{args:?}");
    }
    let started = run(&["--to", "running", "--account-group", mine.as_str()]);
    assert!(started.status.success(), "{started:?}");
    let failed = run(&["--to", "failed", "--reason", &"é".repeat(1000)]);
    assert!(failed.status.success(), "{failed:?}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Failed);
}
store_test!(the_transition_command_refuses_what_the_api_refuses_and_moves_nothing);

/// On the database, `scans transition` repeats only a move no key made: a runner's claim made
/// with its key is refused naming the status (it was answered as the command's own, exit 0, so
/// two runners both held the scan), while the command's own start, repeated, is answered again.
async fn the_transition_command_repeats_its_own_move_but_not_a_runners(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let runner = app.runner(&group).await;
    let (claimed, own) = (
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
    );
    let path = crate::helpers::move_path(group.as_str(), claimed.as_str(), "start");
    assert_eq!(app.post(&runner, &path, None).await.status, 200);
    let run = |scan: &signal_scans::domain::ids::ScanId| {
        crate::helpers::child::signal_scans()
            .args(["scans", "transition", scan.as_str(), "--to", "running"])
            .env("DATABASE_URL", &app.db.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };

    let over_a_claim = run(&claimed);
    let started = run(&own);
    let again = run(&own);

    assert!(!over_a_claim.status.success(), "{over_a_claim:?}");
    let stderr = String::from_utf8_lossy(&over_a_claim.stderr);
    assert!(stderr.contains("is running"), "{stderr}");
    assert!(started.status.success(), "{started:?}");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(app.store.scan_events(&claimed).await.unwrap().len(), 2);
    assert_eq!(app.store.scan_events(&own).await.unwrap().len(), 2);
}
store_test!(the_transition_command_repeats_its_own_move_but_not_a_runners);

/// A scan's instants never run backwards: a change made under a clock set back since the scan's
/// last change (an NTP step on the database's host; on SQLite, this process's clock) is stamped at
/// that change's instant, not before it. Under a clock set back, a cancel answered `cancelledAt`
/// before `startedAt` and the scan's events ran out of order (the time-and-clocks review).
async fn a_scans_instants_never_run_backwards_under_a_clock_set_back(backend: Backend) {
    use sqlx::Connection;
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    // Stamped by a clock an hour ahead, since set back.
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    // What the API writes, and SQLite keeps.
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    match backend {
        Backend::Postgres => {
            let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            for statement in [
                "UPDATE signal_scans SET created_at = $2, updated_at = $2, started_at = $2
                 WHERE id = $1",
                "UPDATE signal_scan_events SET occurred_at = $2 WHERE scan_id = $1",
            ] {
                sqlx::query(statement)
                    .bind(scan.as_str())
                    .bind(ahead)
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
        Backend::Sqlite => {
            let ahead = ahead.format(format).unwrap();
            let mut db = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            for statement in [
                "UPDATE signal_scans SET created_at = ?2, updated_at = ?2, started_at = ?2
                 WHERE id = ?1",
                "UPDATE signal_scan_events SET occurred_at = ?2 WHERE scan_id = ?1",
            ] {
                sqlx::query(statement)
                    .bind(scan.as_str())
                    .bind(&ahead)
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
    }

    let cancelled = app.cancel_ok(&key, &group, &scan).await;
    let now = app
        .store
        .find_scan(Some(&group), &scan)
        .await
        .unwrap()
        .unwrap();
    let events = app.store.scan_events(&scan).await.unwrap();

    let started = now.started_at.unwrap();
    assert_eq!(now.status, ScanStatus::Cancelled);
    assert!(now.cancelled_at >= Some(started), "{now:?}");
    assert_eq!((now.updated_at, now.finished_at), (started, Some(started)));
    assert_eq!(
        cancelled.body["data"]["cancelledAt"],
        started.format(format).unwrap()
    );
    let instants: Vec<_> = events.iter().map(|event| event.at).collect();
    assert!(instants.is_sorted(), "{events:?}");
    assert_eq!(instants.len(), 2);
}
store_test!(a_scans_instants_never_run_backwards_under_a_clock_set_back);
