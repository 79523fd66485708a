//! Races: concurrent cancels of one scan, and cancels racing a runner's status change.

use futures::future::join_all;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::domain::service::Actor;
use signal_scans::store::Transition;

use crate::helpers::{Backend, TestApp, group};
use crate::store_test;

async fn twenty_concurrent_cancels_all_succeed_and_exactly_one_transitions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    for initial in [ScanStatus::Queued, ScanStatus::Running] {
        let scan = app.scan(&group, initial).await;

        let responses =
            join_all((0..20).map(|_| app.cancel(Some(&key), group.as_str(), scan.as_str()))).await;

        let mut transitions = 0;
        let mut cancelled_at = std::collections::HashSet::new();
        for response in &responses {
            assert_eq!(response.status, 200, "{response:?}");
            let previous = response.body["data"]["previousStatus"].as_str().unwrap();
            if previous == initial.as_str() {
                transitions += 1;
            } else {
                assert_eq!(previous, "cancelled");
            }
            cancelled_at.insert(response.body["data"]["cancelledAt"].to_string());
        }
        assert_eq!(transitions, 1, "exactly one request moved the scan");
        assert_eq!(cancelled_at.len(), 1, "everyone saw the same cancelledAt");
        let events = app.store.scan_events(&scan).await.unwrap();
        assert_eq!(events.len(), 2, "creation + one cancel: {events:?}");
    }
}
store_test!(twenty_concurrent_cancels_all_succeed_and_exactly_one_transitions);

/// A runner completing a running scan while a client cancels it: exactly one wins, and the loser
/// is told the winner's state.
async fn cancel_racing_a_completion_has_exactly_one_winner(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let runner = Actor {
        api_key_id: None,
        trace_id: Some("runner"),
    };
    let mut outcomes = (0, 0);
    for _ in 0..25 {
        let scan = app.scan(&group, ScanStatus::Running).await;

        let (response, completion) = tokio::join!(
            app.cancel(Some(&key), group.as_str(), scan.as_str()),
            app.store
                .transition(None, &scan, ScanStatus::Completed, runner)
        );

        let completion = completion.unwrap();
        let stored = app.status_of(&scan).await;
        match (&completion, response.status.as_u16()) {
            (Transition::Applied { previous, .. }, 422) => {
                assert_eq!(*previous, ScanStatus::Running);
                assert_eq!(response.body["error"]["details"], "currentStatus=completed");
                assert_eq!(stored, ScanStatus::Completed);
                outcomes.0 += 1;
            }
            (Transition::Refused { scan: seen }, 200) => {
                assert_eq!(
                    seen.status,
                    ScanStatus::Cancelled,
                    "the runner sees the cancel"
                );
                assert_eq!(response.body["data"]["previousStatus"], "running");
                assert_eq!(stored, ScanStatus::Cancelled);
                outcomes.1 += 1;
            }
            other => panic!("both or neither won: {other:?} {response:?}"),
        }
        let events = app.store.scan_events(&scan).await.unwrap();
        assert_eq!(events.len(), 2, "one change only: {events:?}");
    }
    assert_eq!(outcomes.0 + outcomes.1, 25);
}
store_test!(cancel_racing_a_completion_has_exactly_one_winner);

async fn a_late_completion_after_a_cancel_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), scan.as_str())
            .await
            .status,
        200
    );

    let late = app
        .store
        .transition(
            None,
            &scan,
            ScanStatus::Completed,
            Actor {
                api_key_id: None,
                trace_id: None,
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

/// The guarded statements rely on READ COMMITTED; a database whose default isolation is stricter
/// must not turn a race into 500s.
async fn races_hold_even_if_the_database_defaults_to_repeatable_read(backend: Backend) {
    use sqlx::Connection;
    let app = TestApp::spawn(backend).await;
    let name = url::Url::parse(&app.db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" SET default_transaction_isolation = 'repeatable read'"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // Only new connections take the database default; this app has none open to any scan yet
    // but may have pooled some, so use a fresh instance.
    let replica = app.replica().await;
    let group = group();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let path = crate::helpers::cancel_path(group.as_str(), scan.as_str());

    let responses = join_all((0..20).map(|_| async {
        crate::helpers::ApiResponse::from(
            app.client
                .post(format!("http://{}{path}", replica.addr))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
        )
        .await
    }))
    .await;

    for response in &responses {
        assert_eq!(response.status, 200, "{response:?}");
    }
}
store_test!(
    races_hold_even_if_the_database_defaults_to_repeatable_read,
    postgres_only
);
