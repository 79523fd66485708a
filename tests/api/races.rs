//! Races on one scan: concurrent cancels, and cancels racing a runner's completion. Where an order
//! is claimed it is forced (another session's lock, the contenders seen waiting behind it).

use std::time::Duration;

use futures::future::join_all;
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::{Actor, ScanStatus, Transition};

use crate::helpers::locks::{WriteLock, until_waiting};
use crate::helpers::{Backend, RUNNER, Settings, TestApp, group, move_path, scans_path};
use crate::store_test;

/// Settings for requests that contend for one scan's lock.
fn contenders() -> Settings {
    Settings::default()
        // The contenders wait on the lock while the test lines them up: never long, but a
        // loaded machine must not turn the wait into a 502.
        .with_db_timeout(Duration::from_secs(10))
        // Cached for the whole test: a cancel's only database work is its guarded write.
        .with_key_cache_ttl(Duration::from_secs(600))
}

/// Twenty cancels of one scan, all forced to contend: another session holds the scan's write
/// lock until the twenty are seen waiting behind it at once, then lets go.
async fn twenty_concurrent_cancels_all_succeed_and_exactly_one_transitions(backend: Backend) {
    let app = contenders()
        // Each of the twenty waits on the lock on a connection of its own.
        .with_db_max_connections(25)
        // And in a batch of its own, all at once: the race is the database's to decide.
        .with_db_write_batches(25)
        .spawn(backend)
        .await;
    let (group, key, warm_up) = app.writer_and_queued_scan().await;
    app.cancel_ok(&key, &group, &warm_up).await;
    for initial in [ScanStatus::Queued, ScanStatus::Running] {
        let scan = app.scan(&group, initial).await;
        let mut lock = WriteLock::hold(&app, &scan).await;

        let (responses, ()) = tokio::join!(
            join_all((0..20).map(|_| app.cancel(Some(&key), group.as_str(), scan.as_str()))),
            async {
                until_waiting(&app, 20).await;
                lock.release().await;
            }
        );

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

/// The guarded statements rely on READ COMMITTED; a database whose default isolation is stricter
/// must not turn a race into 500s. The race is forced: another session holds the scan's row lock
/// until the replica's ten connections all wait behind it (under REPEATABLE READ those behind the
/// winner would fail to serialize).
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
    let mut lock = WriteLock::hold(&app, &scan).await;

    let (responses, ()) = tokio::join!(
        join_all((0..20).map(|_| async {
            crate::helpers::ApiResponse::of(
                app.client
                    .post(format!("http://{}{path}", replica.addr))
                    .bearer_auth(&key),
            )
            .await
        })),
        async {
            // The replica's pool: ten connections (the other requests wait for one).
            until_waiting(&app, 10).await;
            lock.release().await;
        }
    );

    let mut previous = Vec::new();
    for response in &responses {
        assert_eq!(response.status, 200, "{response:?}");
        previous.push(response.body["data"]["previousStatus"].as_str().unwrap());
    }
    previous.sort_unstable();
    let mut expected = vec!["cancelled"; 19];
    expected.push("running");
    assert_eq!(previous, expected, "exactly one request moved the scan");
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(events.len(), 2, "creation + one cancel: {events:?}");
}
store_test!(
    races_hold_even_if_the_database_defaults_to_repeatable_read,
    postgres_only
);

/// Who goes first between a client's cancel and a runner's completion of a running scan. Another
/// session holds the scan's write lock while both contenders line up behind it, in a chosen
/// order; when it lets go, the first one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Cancel,
    Completion,
}

/// A runner completing a running scan while a client cancels it: exactly one wins, and the loser
/// is told the winner's state. Both orders are forced, so both outcomes are checked.
async fn cancel_racing_a_completion_has_exactly_one_winner(backend: Backend) {
    let app = contenders().spawn(backend).await;
    let runner = Actor {
        api_key_id: None,
        trace_id: Some("runner"),
        reason: None,
    };
    // The key is cached from here on: a cancel's first database work is its guarded write.
    let (group, key, warm_up) = app.writer_and_queued_scan().await;
    app.cancel_ok(&key, &group, &warm_up).await;

    for first in [First::Cancel, First::Completion] {
        let scan = app.scan(&group, ScanStatus::Running).await;
        let mut lock = WriteLock::hold(&app, &scan).await;
        let cancel = app.cancel(Some(&key), group.as_str(), scan.as_str());
        // The served store: on SQLite its writers queue in order in the process, behind the lock.
        let completion = app
            .served_store
            .transition(None, &scan, ScanStatus::Completed, runner);

        // The second contender starts only once the first is seen waiting, and the lock is let
        // go only once both are: on SQLite the first is seen by its connection, which it may
        // take a moment before it reaches the lock, so the release must not race that sighting.
        let (response, completion) = match first {
            First::Cancel => tokio::join!(cancel, async {
                until_waiting(&app, 1).await;
                behind_the_first(completion, &app, &mut lock).await
            }),
            First::Completion => {
                let (completion, response) = tokio::join!(completion, async {
                    until_waiting(&app, 1).await;
                    behind_the_first(cancel, &app, &mut lock).await
                });
                (response, completion)
            }
        };

        let completion = completion.unwrap();
        let stored = app.status_of(&scan).await;
        match first {
            First::Completion => {
                assert!(
                    matches!(
                        completion,
                        Transition::Applied {
                            previous: ScanStatus::Running,
                            ..
                        }
                    ),
                    "{completion:?}"
                );
                response.assert_error(422, "VALIDATION_ERROR");
                assert_eq!(response.body["error"]["details"], "currentStatus=completed");
                assert_eq!(stored, ScanStatus::Completed);
            }
            First::Cancel => {
                assert!(
                    matches!(&completion, Transition::Refused { scan } if scan.status == ScanStatus::Cancelled),
                    "the runner sees the cancel: {completion:?}"
                );
                assert_eq!(response.status, 200, "{response:?}");
                assert_eq!(response.body["data"]["previousStatus"], "running");
                assert_eq!(stored, ScanStatus::Cancelled);
            }
        }
        let events = app.store.scan_events(&scan).await.unwrap();
        assert_eq!(events.len(), 2, "one change only: {events:?}");
    }
}
store_test!(cancel_racing_a_completion_has_exactly_one_winner);

/// Runs `second` while the first contender waits on `lock`, and lets the lock go once both wait.
pub(crate) async fn behind_the_first<T>(
    second: impl Future<Output = T>,
    app: &TestApp,
    lock: &mut WriteLock,
) -> T {
    let (outcome, ()) = tokio::join!(second, async {
        until_waiting(app, 2).await;
        lock.release().await;
    });
    outcome
}

/// Many scans, each with several cancels (HTTP) racing several completions (a runner): every
/// scan ends in exactly one final state, and exactly the winning request succeeded.
async fn concurrent_cancels_racing_completions_leave_one_winner_per_scan(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
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
    // the test above): here every scan, whichever way it went, must be consistent.
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

/// Runner A's start commits while runner B's completion checks its claim: B is refused, and the
/// scan stays A's. Forced on PostgreSQL: the test's transaction locks the scans table (stalling
/// every read of a scan) and makes A's start in it; the start commits once B's check waits behind
/// the lock. Read apart, B's check read the trail at once (no start yet) and the scan after the
/// start (running): a running scan that no key had started, which any runner may finish, and B's
/// completion went through. SQLite has no lock that stalls the reads of one table only.
async fn a_start_committing_during_another_runners_claim_check_keeps_the_claim(backend: Backend) {
    use sqlx::Connection;
    let app = contenders().spawn(backend).await;
    let group = group();
    let (_, starter) = app
        .key_for(&[Permission::SignalsRun, Permission::SignalsRead], &[group])
        .await;
    let other = app.runner(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    // The other runner's key is cached: its completion's first database work is its claim check.
    let read = app
        .get(&other, &format!("{}/{scan}", scans_path(group.as_str())))
        .await;
    assert_eq!(read.status, 200, "{read:?}");

    let mut db = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE signal_scans IN ACCESS EXCLUSIVE MODE")
        .execute(&mut db)
        .await
        .unwrap();
    let complete = move_path(group.as_str(), scan.as_str(), "complete");
    let completion = app.post(&other, &complete, None);
    let (response, ()) = tokio::join!(completion, async {
        until_waiting_on_the_scans_table(&mut db).await;
        // What is not behind the lock (a read of the trail alone) has been read by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query(
            "UPDATE signal_scans SET status = 'running', started_at = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(scan.as_str())
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO signal_scan_events
                 (scan_id, account_group_id, from_status, to_status, api_key_id, occurred_at)
             VALUES ($1, $2, 'queued', 'running', $3, now())",
        )
        .bind(scan.as_str())
        .bind(group.as_str())
        .bind(starter)
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut db).await.unwrap();
    });

    response.assert_error(422, "VALIDATION_ERROR");
    assert_eq!(response.body["error"]["details"], "currentStatus=running");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
}
store_test!(
    a_start_committing_during_another_runners_claim_check_keeps_the_claim,
    postgres_only
);

/// Until some session of this database waits for a lock on a table (10 s at most).
async fn until_waiting_on_the_scans_table(db: &mut sqlx::PgConnection) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event = 'relation'",
        )
        .fetch_one(&mut *db)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no read waits on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One scan's changes take a batch each, but never hold up the changes of other scans queued
/// behind them: with every answer of the database 200 ms late and 30 cancels of one scan among
/// 100 cancels of other scans, each of the 100 is answered 200, and the one scan is cancelled
/// once. Before, each of the one scan's changes ended the batch it could not join and everything
/// queued behind it waited for the next: a third of the others were answered 502, not taken
/// within the store's timeout.
async fn one_scans_changes_never_hold_up_the_changes_of_others(backend: Backend) {
    let (app, group, key) = Settings::default()
        .with_key_cache_ttl(Duration::from_secs(600))
        .through_proxy_with_timeouts(Duration::from_secs(2), Duration::from_secs(60))
        .spawn_with_writer(backend)
        .await;
    let hot = app.scan(&group, ScanStatus::Queued).await;
    let mut others = Vec::new();
    for _ in 0..100 {
        others.push(app.scan(&group, ScanStatus::Queued).await);
    }
    app.cancel_ok(&key, &group, &others[0]).await; // the key is cached: no lookup to wait for
    app.proxy
        .as_ref()
        .unwrap()
        .slow_down(Duration::from_millis(200));

    // One of the hot scan's cancels after every three of the others.
    let mut order = Vec::new();
    for (i, other) in others.iter().enumerate().skip(1) {
        if i % 3 == 1 && order.iter().filter(|s| **s == hot).count() < 30 {
            order.push(hot);
        }
        order.push(*other);
    }
    let answers = join_all(
        order
            .iter()
            .map(|scan| app.cancel(Some(&key), group.as_str(), scan.as_str())),
    )
    .await;
    app.proxy.as_ref().unwrap().slow_down(Duration::ZERO);

    let mut first_cancels = 0;
    for (scan, answer) in order.iter().zip(&answers) {
        if *scan != hot {
            assert_eq!(answer.status, 200, "another scan's cancel: {answer:?}");
            continue;
        }
        match answer.status.as_u16() {
            200 if answer.body["data"]["previousStatus"] == "queued" => first_cancels += 1,
            200 => assert_eq!(answer.body["data"]["previousStatus"], "cancelled"),
            _ => {
                answer.assert_error(502, "UPSTREAM_ERROR");
            }
        }
    }
    assert_eq!(first_cancels, 1, "the hot scan is cancelled once");
}
store_test!(
    one_scans_changes_never_hold_up_the_changes_of_others,
    postgres_only
);

/// SQLite: the served store's count of writers holding or queued for its write turn, which the
/// race tests wait on to line their contenders up, is back to none once each write is answered.
/// A writer left counted (creations, made through the turn as the contenders' writes are) would
/// let a test's contenders go before they had queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_writer_is_counted_as_wanting_the_turn_only_until_it_is_answered() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let group = group();
    let key = app.writer(&group).await;

    for _ in 0..3 {
        let created = app
            .post(&key, &scans_path(group.as_str()), Some("{}"))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
    }

    assert_eq!(app.served_store.writers_wanting(), Some(0));
}
