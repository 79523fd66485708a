//! The state machine on each store, races between cancels and completions, and change
//! notifications reaching watchers.

use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use signal_scans::domain::scan::Actor;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::domain::scan::Transition;
use signal_scans::service::feed::{FeedReader, Start};
use signal_scans::service::{ScanService, ServiceError};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{Backend, TestApp, group};
use crate::store_test;

const RUNNER: Actor<'static> = Actor {
    api_key_id: None,
    trace_id: Some("runner"),
    reason: None,
};

async fn every_move_the_state_machine_allows_applies_and_every_other_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    for from in ScanStatus::ALL {
        for to in ScanStatus::ALL {
            let scan = app.scan(&group, from).await;

            let outcome = app.store.transition(None, &scan, to, RUNNER).await.unwrap();

            let events = app.store.scan_events(&scan).await.unwrap();
            match outcome {
                Transition::Applied {
                    previous,
                    scan: moved,
                } => {
                    assert!(from.can_move_to(to), "{from} -> {to} applied");
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
                    assert!(!from.can_move_to(to), "{from} -> {to} refused");
                    assert_eq!(current.status, from);
                    assert_eq!(events.len(), 1, "nothing written: {events:?}");
                }
                Transition::NotFound => panic!("{from} -> {to}: scan not found"),
            }
            assert_eq!(
                app.status_of(&scan).await,
                if from.can_move_to(to) { to } else { from }
            );
        }
    }
}
store_test!(every_move_the_state_machine_allows_applies_and_every_other_is_refused);

async fn a_refused_move_names_the_current_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let service = ScanService::new(app.store.clone());
    let scan = app.scan(&group(), ScanStatus::Cancelled).await;

    let refused = service.advance(&scan, ScanStatus::Completed, RUNNER).await;

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

/// Many scans, each with several cancels (HTTP) racing several completions (a runner): every
/// scan ends in exactly one final state, and exactly the winning request succeeded.
async fn concurrent_cancels_racing_completions_leave_one_winner_per_scan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let mut scans = Vec::new();
    for _ in 0..30 {
        scans.push(app.scan(&group, ScanStatus::Running).await);
    }

    let (app, group, key) = (&app, &group, &key);
    let races = scans.iter().map(|scan| async move {
        let cancels =
            join_all((0..3).map(|_| app.cancel(Some(key), group.as_str(), scan.as_str())));
        let completions = join_all((0..2).map(|_| {
            app.store
                .transition(None, scan, ScanStatus::Completed, RUNNER)
        }));
        let (cancels, completions) = tokio::join!(cancels, completions);
        (scan, cancels, completions)
    });
    let results = join_all(races).await;

    // Which side wins each race is up to the scheduler (both outcomes are forced, one each, in
    // concurrency.rs): here every scan, whichever way it went, must be consistent.
    for (scan, cancels, completions) in results {
        let completions: Vec<Transition> = completions.into_iter().map(Result::unwrap).collect();
        let completion_wins = completions
            .iter()
            .filter(|c| matches!(c, Transition::Applied { .. }))
            .count();
        let cancel_wins = cancels
            .iter()
            .filter(|r| r.status == 200 && r.body["data"]["previousStatus"] == "running")
            .count();
        let final_status = app.status_of(scan).await;
        match final_status {
            ScanStatus::Cancelled => {
                assert_eq!((cancel_wins, completion_wins), (1, 0), "{scan}");
                assert!(cancels.iter().all(|r| r.status == 200), "{cancels:?}");
            }
            ScanStatus::Completed => {
                assert_eq!((cancel_wins, completion_wins), (0, 1), "{scan}");
                for response in &cancels {
                    assert_eq!(response.status, 422, "{response:?}");
                    assert_eq!(response.body["error"]["details"], "currentStatus=completed");
                }
            }
            other => panic!("{scan} ended {other}"),
        }
        assert_eq!(
            app.store.scan_events(scan).await.unwrap().len(),
            2,
            "{scan}: one change"
        );
    }
}
store_test!(concurrent_cancels_racing_completions_leave_one_winner_per_scan);

async fn a_subscriber_hears_each_cancel_within_a_second(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let first = app.scan(&group, ScanStatus::Queued).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    // Polling far slower than the bound below: past the first read, only a hint delivers in time.
    let mut feed = FeedReader::open(
        app.served_store.clone(),
        Start::Now,
        None,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), first.as_str())
            .await
            .status,
        200
    );
    let caught_up = feed.next().await.unwrap();
    assert_eq!(caught_up.change.scan_id, first);

    let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let heard = tokio::time::timeout(Duration::from_secs(1), feed.next())
        .await
        .expect("heard within a second")
        .unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(
        heard.trace_id.as_deref(),
        response.body["traceId"].as_str(),
        "the event names the request that made it"
    );
    let change = heard.change;
    assert_eq!(change.scan_id, scan);
    assert_eq!(change.account_group_id, group);
    assert_eq!(
        (change.from, change.to),
        (Some(ScanStatus::Running), ScanStatus::Cancelled)
    );
    let serialized = serde_json::to_value(&change).unwrap();
    let mut keys: Vec<&str> = serialized
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["accountGroupId", "at", "from", "scanId", "to"]);
}
store_test!(a_subscriber_hears_each_cancel_within_a_second);

async fn the_watch_command_prints_each_cancel_within_a_second(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, other_group) = (group(), group());
    let key = app.writer(&group).await;
    let other_key = app.writer(&other_group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let other_scan = app.scan(&other_group, ScanStatus::Queued).await;
    // A change from before the watch began is not news: it must not be printed.
    let old_news = app.scan(&group, ScanStatus::Queued).await;
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), old_news.as_str())
            .await
            .status,
        200
    );
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"))
        .args(["scans", "watch", "--account-group", group.as_str()])
        .env("DATABASE_URL", &app.db.url)
        // SQLite's hints reach only the process that made the change: another process polls.
        // On PostgreSQL only the notification can deliver within the bound.
        .env(
            "FEED_POLL_MS",
            match backend {
                Backend::Sqlite => "200",
                Backend::Postgres => "60000",
            },
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(watch.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = logs.next_line().await.unwrap() {
            if line.contains("watching for status changes") {
                break;
            }
        }
    })
    .await
    .expect("the watcher starts");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();

    assert_eq!(
        app.cancel(Some(&other_key), other_group.as_str(), other_scan.as_str())
            .await
            .status,
        200
    );
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), scan.as_str())
            .await
            .status,
        200
    );
    let line = tokio::time::timeout(Duration::from_secs(1), lines.next_line())
        .await
        .expect("printed within a second")
        .unwrap()
        .unwrap();

    let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        printed["scanId"],
        scan.as_str(),
        "only the watched group: {line}"
    );
    assert_eq!(printed["accountGroupId"], group.as_str());
    assert_eq!(printed["from"], "queued");
    assert_eq!(printed["to"], "cancelled");
    assert!(printed["at"].as_str().unwrap().ends_with('Z'));
    watch.kill().await.unwrap();
}
store_test!(the_watch_command_prints_each_cancel_within_a_second);

async fn the_transition_command_refuses_a_final_scan_naming_its_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let scan = app.scan(&group(), ScanStatus::Queued).await;
    let run = |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"))
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
