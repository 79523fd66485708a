//! The change feed end to end: every committed status change reaches `scans watch` (or a
//! `FeedReader`) exactly once, whatever order transactions commit in, whether or not its hint is
//! ever sent, and none that rolled back.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;
use signal_scans::domain::feed::FeedCursor;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::scan::ScanStatus;
use signal_scans::domain::scan::Transition;
use signal_scans::service::feed::{FeedEvent, FeedReader, Start};
use signal_scans::store::Store;
use sqlx::postgres::PgListener;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use crate::helpers::process::ServerProcess;
use crate::helpers::watch::Watch;
use crate::helpers::{
    Backend, RUNNER, Settings, TestApp, TestDatabase, assert_backs_off_doubling, group, scans_path,
    silent_running_scan, store_options,
};
use crate::store_test;

/// How long a change may take to be printed when the test only needs to know it was (a loaded
/// 2-core machine, shared with other builds).
const PRINTED: Duration = Duration::from_secs(30);

/// A status change as the feed prints it and as the audit trail records it.
type Change = (String, String, String);

fn printed_change(line: &Value) -> Change {
    let field = |name: &str| {
        line[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .to_owned()
    };
    (field("scanId"), field("from"), field("to"))
}

fn change(scan: &ScanId, from: ScanStatus, to: ScanStatus) -> Change {
    (scan.to_string(), from.to_string(), to.to_string())
}

/// Polls `condition` every 20 ms until it holds; fails the test after `limit`.
async fn wait_until(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every status change in the audit trail (creations excluded), read with plain SQL.
async fn audit_changes(backend: Backend, url: &str) -> Vec<Change> {
    let query = "SELECT scan_id, from_status, to_status FROM signal_scan_events
                 WHERE from_status IS NOT NULL ORDER BY id";
    match backend {
        Backend::Postgres => {
            let mut db = PgConnection::connect(url).await.unwrap();
            sqlx::query_as(query).fetch_all(&mut db).await.unwrap()
        }
        Backend::Sqlite => {
            let mut db = SqliteConnection::connect(url).await.unwrap();
            sqlx::query_as(query).fetch_all(&mut db).await.unwrap()
        }
    }
}

/// Test-only: the audit row of one chosen scan's next change waits, inside its transaction, for
/// an advisory lock the test holds, so that transaction commits only when the test says.
const HOLD_LOCK: i64 = 4_242;

/// A cancel whose transaction took the smaller audit id and xid commits after a later cancel the
/// watcher has already printed. A reader paging by id, or by (xid, id) without the transactions
/// still running below its position, never prints it; one that re-reads prints it twice.
async fn a_change_committing_after_a_later_one_is_printed_exactly_once(backend: Backend) {
    let app = Settings::default()
        // The held cancel waits on the test, not on the database.
        .with_db_timeout(Duration::from_secs(30))
        .spawn(backend)
        .await;
    let group = group();
    let key = app.writer(&group).await;
    let held = app.scan(&group, ScanStatus::Running).await;
    let later = app.scan(&group, ScanStatus::Queued).await;
    let marker = app.scan(&group, ScanStatus::Queued).await;
    let mut db = PgConnection::connect(&app.db.url).await.unwrap();
    db.execute(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.scan_id = '{held}' AND NEW.from_status IS NOT NULL THEN
                 PERFORM pg_advisory_xact_lock({HOLD_LOCK});
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER hold_commit AFTER INSERT ON signal_scan_events
             FOR EACH ROW EXECUTE FUNCTION hold_commit();"
    )))
    .await
    .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(HOLD_LOCK)
        .execute(&mut db)
        .await
        .unwrap();
    let mut watch = Watch::start(&app.db.url, Some(&group), 200).await;

    let (held_response, printed_while_held) = tokio::join!(
        app.cancel(Some(&key), group.as_str(), held.as_str()),
        async {
            // The held cancel has written its audit row (its id is taken) and waits to commit.
            wait_until("the held cancel waits on the lock", PRINTED, async || {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database()
                       AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                )
                .fetch_one(&mut db)
                .await
                .unwrap();
                waiting == 1
            })
            .await;
            app.cancel_ok(&key, &group, &later).await;
            // The watcher reads past the held row's id before that row commits.
            let printed = watch.next(PRINTED).await;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(HOLD_LOCK)
                .execute(&mut db)
                .await
                .unwrap();
            printed
        }
    );
    assert_eq!(held_response.status, 200, "{held_response:?}");
    app.cancel_ok(&key, &group, &marker).await;
    let printed_after: Vec<Change> = watch
        .until_scan(marker.as_str(), PRINTED)
        .await
        .iter()
        .map(printed_change)
        .collect();

    assert_eq!(
        printed_change(&printed_while_held),
        change(&later, ScanStatus::Queued, ScanStatus::Cancelled)
    );
    assert_eq!(
        printed_after,
        [
            change(&held, ScanStatus::Running, ScanStatus::Cancelled),
            change(&marker, ScanStatus::Queued, ScanStatus::Cancelled),
        ],
        "the late commit once, then what came after"
    );
    // The case under test did happen: the held row sorts before the later one by id and by
    // transaction, yet committed after it.
    let positions: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT scan_id, id, xid::text FROM signal_scan_events
         WHERE from_status IS NOT NULL AND scan_id = ANY($1) ORDER BY id",
    )
    .bind([held.to_string(), later.to_string()])
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(positions.len(), 2, "{positions:?}");
    assert_eq!(positions[0].0, held.as_str(), "{positions:?}");
    let xid = |text: &str| text.parse::<u64>().unwrap();
    assert!(xid(&positions[0].2) < xid(&positions[1].2), "{positions:?}");
    watch.stop().await;
}
store_test!(
    a_change_committing_after_a_later_one_is_printed_exactly_once,
    postgres_only
);

/// The service is killed after answering 200 and before its tick, so no hint is ever sent: only
/// the reader's own poll can deliver the change. A reader that waits for hints alone never does.
async fn a_change_whose_hint_died_with_the_service_is_printed_by_the_next_poll(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    const POLL_MS: u64 = 300;
    let service = ServerProcess::start(&[
        ("DATABASE_URL", app.db.url.as_str()),
        // The hint of a change waits a whole second: the service dies before it is sent.
        ("PUBLISH_INTERVAL_MS", "1000"),
    ])
    .await;
    let mut watch = Watch::start(&app.db.url, Some(&group), POLL_MS).await;
    // Hears every hint sent on this database, to show that none was.
    let mut hints = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    hints.listen("signal_scan_events").await.unwrap();

    let response = app
        .client
        .post(service.url(&crate::helpers::cancel_path(group.as_str(), scan.as_str())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let status = response.status();
    drop(service); // SIGKILL (kill_on_drop)
    let killed = Instant::now();
    let printed = watch.next(PRINTED).await;
    let delay = killed.elapsed();

    assert_eq!(status, 200);
    assert_eq!(
        printed_change(&printed),
        change(&scan, ScanStatus::Queued, ScanStatus::Cancelled)
    );
    assert!(
        delay < Duration::from_millis(POLL_MS) + Duration::from_secs(1),
        "printed {delay:?} after the kill, past FEED_POLL_MS + 1 s"
    );
    // Past the tick the dead service would have sent its hint at: none was sent, so the poll
    // delivered the change.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(killed.elapsed())).await;
    let hint = tokio::time::timeout(Duration::from_millis(200), hints.recv()).await;
    assert!(hint.is_err(), "a hint was sent after all: {hint:?}");
    watch.stop().await;
}
store_test!(
    a_change_whose_hint_died_with_the_service_is_printed_by_the_next_poll,
    postgres_only
);

/// What one writer did: the changes that committed, and how many were refused by the trigger.
#[derive(Default)]
struct Written {
    committed: Vec<Change>,
    rolled_back: usize,
}

/// Many transactions committing out of order, some rolled back after writing their audit row: the
/// watcher prints exactly the committed ones, once each. Fails for a reader that pages without
/// the pending transactions, one that does not walk its page in order, or one that prints what a
/// hint lists as well as what the trail holds.
async fn every_committed_change_of_busy_writers_is_printed_once_and_no_rolled_back_one(
    backend: Backend,
) {
    const WRITERS: usize = 32;
    const FOR: Duration = Duration::from_secs(10);
    let app = Settings::default()
        // Thirty-two writers share ten connections on two cores: waiting is not failing.
        .with_db_timeout(Duration::from_secs(20))
        .spawn(backend)
        .await;
    let (group, doomed) = (group(), group());
    // A change of a doomed scan fails after its audit row is written, and rolls back whole.
    let refuse = match backend {
        Backend::Postgres => format!(
            "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF EXISTS (SELECT 1 FROM signal_scans
                            WHERE id = NEW.scan_id AND account_group_id = '{doomed}') THEN
                     RAISE EXCEPTION 'doomed scan %', NEW.scan_id;
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_doomed AFTER INSERT ON signal_scan_events
                 FOR EACH ROW WHEN (NEW.from_status IS NOT NULL)
                 EXECUTE FUNCTION refuse_doomed();"
        ),
        Backend::Sqlite => format!(
            "CREATE TRIGGER refuse_doomed AFTER INSERT ON signal_scan_events
             WHEN NEW.from_status IS NOT NULL
              AND (SELECT account_group_id FROM signal_scans WHERE id = NEW.scan_id) = '{doomed}'
             BEGIN SELECT RAISE(ABORT, 'doomed scan'); END;"
        ),
    };
    match backend {
        Backend::Postgres => {
            let mut db = PgConnection::connect(&app.db.url).await.unwrap();
            db.execute(sqlx::AssertSqlSafe(refuse)).await.unwrap();
        }
        Backend::Sqlite => {
            let mut db = SqliteConnection::connect(&app.db.url).await.unwrap();
            db.execute(sqlx::AssertSqlSafe(refuse)).await.unwrap();
        }
    }
    // Each writer has its own keys, so no rate limit is shared.
    let mut keys = Vec::new();
    for _ in 0..WRITERS {
        keys.push((app.writer(&group).await, app.writer(&doomed).await));
    }
    // SQLite's hints stay in the process that made the change: the watcher polls.
    let mut watch = Watch::start(&app.db.url, None, 100).await;

    let until = Instant::now() + FOR;
    let writer = |number: usize| {
        let (app, keys, group, doomed) = (&app, &keys[number], &group, &doomed);
        async move {
            let mut written = Written::default();
            for round in 0.. {
                if Instant::now() >= until {
                    break;
                }
                let is_doomed = (number + round).is_multiple_of(7);
                let (group, key) = match is_doomed {
                    true => (doomed, &keys.1),
                    false => (group, &keys.0),
                };
                let scan = app
                    .served_store
                    .create_scan(group, ScanStatus::Queued)
                    .await
                    .expect("create scan")
                    .id;
                let cancel = async |from: ScanStatus, written: &mut Written| {
                    let response = app.cancel(Some(key), group.as_str(), scan.as_str()).await;
                    match is_doomed {
                        true => {
                            response.assert_error(500, "INTERNAL_ERROR");
                            written.rolled_back += 1;
                        }
                        false => {
                            assert_eq!(response.status, 200, "{response:?}");
                            assert_eq!(response.body["data"]["previousStatus"], from.as_str());
                            written
                                .committed
                                .push(change(&scan, from, ScanStatus::Cancelled));
                        }
                    }
                };
                if round % 3 == 0 {
                    cancel(ScanStatus::Queued, &mut written).await;
                    continue;
                }
                let moved = app
                    .served_store
                    .transition(None, &scan, ScanStatus::Running, RUNNER)
                    .await;
                match (is_doomed, moved) {
                    (true, Err(_)) => {
                        written.rolled_back += 1;
                        continue;
                    }
                    (false, Ok(Transition::Applied { .. })) => written.committed.push(change(
                        &scan,
                        ScanStatus::Queued,
                        ScanStatus::Running,
                    )),
                    (_, other) => panic!("{scan} to running: {other:?}"),
                }
                if round % 3 == 1 {
                    cancel(ScanStatus::Running, &mut written).await;
                    continue;
                }
                match app
                    .served_store
                    .transition(None, &scan, ScanStatus::Completed, RUNNER)
                    .await
                {
                    Ok(Transition::Applied { .. }) => written.committed.push(change(
                        &scan,
                        ScanStatus::Running,
                        ScanStatus::Completed,
                    )),
                    other => panic!("{scan} to completed: {other:?}"),
                }
            }
            written
        }
    };
    let written = join_all((0..WRITERS).map(writer)).await;

    // Everything committed before the marker lies before it in the feed.
    let marker = app.scan(&group, ScanStatus::Queued).await;
    let response = app
        .cancel(Some(&keys[0].0), group.as_str(), marker.as_str())
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let lines = watch
        .until_scan(marker.as_str(), Duration::from_secs(120))
        .await;
    let mut printed: Vec<Change> = lines.iter().map(printed_change).collect();
    assert_eq!(
        printed.pop(),
        Some(change(&marker, ScanStatus::Queued, ScanStatus::Cancelled))
    );
    let mut committed: Vec<Change> = written.iter().flat_map(|w| w.committed.clone()).collect();
    let rolled_back: usize = written.iter().map(|w| w.rolled_back).sum();
    let mut audit = audit_changes(backend, &app.db.url).await;
    assert_eq!(
        audit.pop(),
        Some(change(&marker, ScanStatus::Queued, ScanStatus::Cancelled))
    );

    assert!(committed.len() > WRITERS, "{} changes", committed.len());
    assert!(rolled_back > 0, "the trigger refused nothing");
    let count = |changes: &[Change]| {
        let mut counts = BTreeMap::<Change, usize>::new();
        for change in changes {
            *counts.entry(change.clone()).or_default() += 1;
        }
        counts
    };
    let printed_counts = count(&printed);
    let twice: Vec<_> = printed_counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "printed more than once: {twice:?}");
    committed.sort();
    audit.sort();
    assert_eq!(
        audit, committed,
        "the audit trail holds exactly what the writers were told committed"
    );
    let printed_set: HashSet<&Change> = printed.iter().collect();
    let audit_set: HashSet<&Change> = audit.iter().collect();
    let missed: Vec<_> = audit_set.difference(&printed_set).collect();
    let extra: Vec<_> = printed_set.difference(&audit_set).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "{} printed, {} committed; missed {missed:?}; printed but not committed {extra:?}",
        printed.len(),
        audit.len()
    );
    assert!(
        lines
            .iter()
            .all(|line| line["accountGroupId"] != doomed.as_str()),
        "a rolled-back change was printed"
    );
    watch.stop().await;
}
store_test!(every_committed_change_of_busy_writers_is_printed_once_and_no_rolled_back_one);

/// How long a change delivered by its hint may take, on a loaded machine: far below a poll of a
/// minute, so only the hint can meet it.
const HINTED: Duration = Duration::from_secs(5);

/// `migrations/postgres/0001_initial.sql` as released (deployed databases recorded its checksum).
const RELEASED_0001: &str = include_str!("fixtures/0001_initial.sql");

/// `migrations/sqlite/0001_initial.sql` as released (embedded databases recorded its checksum).
const RELEASED_SQLITE_0001: &str = include_str!("fixtures/sqlite_0001_initial.sql");

/// The publisher's session, as `pg_stat_activity` names it.
const PUBLISHER: &str = "signal-scans publisher";

/// The backends of this test database's publishers.
async fn publisher_backends(db: &mut PgConnection) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(PUBLISHER)
    .fetch_all(db)
    .await
    .unwrap()
}

/// Terminates this test database's publisher backends; returns how many there were.
async fn cut_publishers(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(PUBLISHER)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Reads `feed` on a task of its own, so it keeps up while the test does other things.
fn follow(mut feed: FeedReader) -> tokio::sync::mpsc::UnboundedReceiver<FeedEvent> {
    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = feed.next().await.expect("the feed reads the trail");
            // The test follows its cancels; the scans' creations are passed over.
            if event.change.from.is_none() {
                continue;
            }
            if sender.send(event).is_err() {
                break;
            }
        }
    });
    events
}

/// The publisher's connection is terminated again and again while cancels go on. Fails for a
/// publisher on the request path (a failed or slow request) and for one that does not connect
/// again (the reader, polling once a minute, hears nothing more).
async fn cutting_the_publishers_connection_delays_no_request_and_loses_no_change(backend: Backend) {
    const DB_TIMEOUT: Duration = Duration::from_secs(4);
    const STREAMS: usize = 4;
    let (app, group, key) = Settings::default()
        .with_db_timeout(DB_TIMEOUT)
        .spawn_with_writer(backend)
        .await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    // Scans are made by the served store: a creation is a change, and the test's own store would
    // start a publisher of its own.
    let new_scan = async || {
        app.served_store
            .create_scan(&group, ScanStatus::Queued)
            .await
            .unwrap()
            .id
    };
    // Polling once a minute: within the bounds below only a hint delivers.
    let mut events = follow(
        FeedReader::open(app.store.clone(), Start::Now, None, Duration::from_secs(60))
            .await
            .unwrap(),
    );
    let cancel = async |scan: &ScanId| {
        let started = Instant::now();
        app.cancel_ok(&key, &group, scan).await;
        started.elapsed()
    };
    let mut cancelled = Vec::new();
    let mut slowest = Duration::ZERO;

    // The publisher connects with the first change.
    let first = new_scan().await;
    slowest = slowest.max(cancel(&first).await);
    cancelled.push(first);
    wait_until("the publisher connects", PRINTED, async || {
        !publisher_backends(&mut admin).await.is_empty()
    })
    .await;

    // Its connection is cut again and again while cancels go on.
    let until = Instant::now() + Duration::from_secs(3);
    let stream = async || {
        let mut done = Vec::new();
        while Instant::now() < until {
            let scan = new_scan().await;
            done.push((cancel(&scan).await, scan));
        }
        done
    };
    let cutter = async {
        let mut cuts = 0;
        while Instant::now() < until {
            cuts += cut_publishers(&mut admin).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cuts
    };
    let (streams, cuts) = tokio::join!(join_all((0..STREAMS).map(|_| stream())), cutter);
    for (took, scan) in streams.into_iter().flatten() {
        slowest = slowest.max(took);
        cancelled.push(scan);
    }
    assert!(cuts >= 3, "the publisher's connection was cut {cuts} times");

    // Once more, at a known moment: the change made right after the cut is heard once the
    // publisher has connected again.
    let probe = new_scan().await;
    slowest = slowest.max(cancel(&probe).await);
    cancelled.push(probe);
    let mut heard = Vec::new();
    while heard.last() != Some(&probe) {
        let event = tokio::time::timeout(PRINTED, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {} heard", heard.len(), cancelled.len()))
            .unwrap();
        heard.push(event.change.scan_id);
    }
    let before: Vec<i32> = publisher_backends(&mut admin).await;
    assert_eq!(before.len(), 1, "one publisher, connected: {before:?}");
    assert_eq!(cut_publishers(&mut admin).await, 1);
    let last = new_scan().await;
    slowest = slowest.max(cancel(&last).await);
    cancelled.push(last);
    let event = tokio::time::timeout(PRINTED, events.recv())
        .await
        .expect("the change made after the cut is heard")
        .unwrap();
    heard.push(event.change.scan_id);
    let after = publisher_backends(&mut admin).await;

    assert!(
        slowest < DB_TIMEOUT / 2,
        "a cancel took {slowest:?}: the publisher is on the request path"
    );
    assert_eq!(heard.last(), Some(&last));
    assert!(
        after.len() == 1 && after != before,
        "the publisher connected again: {before:?} then {after:?}"
    );
    let mut heard: Vec<String> = heard.iter().map(ToString::to_string).collect();
    let mut cancelled: Vec<String> = cancelled.iter().map(ToString::to_string).collect();
    heard.sort();
    cancelled.sort();
    let missed: Vec<_> = cancelled.iter().filter(|s| !heard.contains(s)).collect();
    let twice: Vec<_> = heard.windows(2).filter(|w| w[0] == w[1]).collect();
    assert!(
        heard == cancelled,
        "{} heard, {} cancelled; missed {missed:?}; heard twice {twice:?}",
        heard.len(),
        cancelled.len()
    );
    assert!(events.try_recv().is_err(), "heard more than was changed");
}
store_test!(
    cutting_the_publishers_connection_delays_no_request_and_loses_no_change,
    postgres_only
);

/// A reader's cursor is its place: a reader resumed from the cursor of one that started from now
/// gets the same next change, and none of the history before it (the change hub hands its
/// reader's cursor to every stream that starts from now). Fails for a cursor that stays at the
/// start of the trail.
async fn a_reader_resumed_from_a_readers_cursor_starts_where_it_stood(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let old = app.scan(&group, ScanStatus::Running).await;
    app.cancel_ok(&key, &group, &old).await;
    let poll = Duration::from_millis(100);
    let mut from_now = FeedReader::open(app.store.clone(), Start::Now, None, poll)
        .await
        .unwrap();
    let mut resumed = FeedReader::open(
        app.store.clone(),
        Start::After(from_now.cursor().clone()),
        None,
        poll,
    )
    .await
    .unwrap();
    let new = app.scan(&group, ScanStatus::Running).await;
    let first = tokio::time::timeout(PRINTED, from_now.next())
        .await
        .unwrap();
    let resumed_first = tokio::time::timeout(PRINTED, resumed.next()).await.unwrap();

    assert_eq!(first.unwrap().change.scan_id, new);
    assert_eq!(resumed_first.unwrap().change.scan_id, new);
}
store_test!(a_reader_resumed_from_a_readers_cursor_starts_where_it_stood);

/// A reader of one group waits between reads, for a hint that names its group or for its poll
/// (a minute here): other groups' changes cost it no read, and once its own group's change
/// commits it reads once. The scans are made before the reader listens (on PostgreSQL, once
/// their hints were heard), so no earlier hint can wake it. Fails for a reader that reads without
/// waiting, one woken by every group's hints, and one that waits before its first read.
async fn a_group_reader_reads_only_for_its_groups_hints(backend: Backend) {
    let (app, mine, _) = TestApp::with_writer(backend).await;
    let other = group();
    let mut heard = match backend {
        Backend::Postgres => {
            let mut hints = PgListener::connect(&app.db.url).await.unwrap();
            hints.listen("signal_scan_events").await.unwrap();
            Some(hints)
        }
        Backend::Sqlite => None,
    };
    let own = app.scan(&mine, ScanStatus::Running).await;
    let others = [
        app.scan(&other, ScanStatus::Running).await,
        app.scan(&other, ScanStatus::Running).await,
    ];
    if let Some(hints) = heard.as_mut() {
        let mut unheard: HashSet<String> = [&own, &others[0], &others[1]]
            .iter()
            .map(ToString::to_string)
            .collect();
        while !unheard.is_empty() {
            let hint = next_hint(hints, PRINTED).await;
            for change in hint["changes"].as_array().unwrap() {
                unheard.remove(change["scanId"].as_str().unwrap());
            }
        }
    }
    let reads = || app.store.feed_rows_read().reads;
    let before = reads();
    let mut events = follow(
        FeedReader::open(
            app.store.clone(),
            Start::Now,
            Some(mine),
            Duration::from_secs(60),
        )
        .await
        .unwrap(),
    );
    wait_until("the reader's first read", PRINTED, async || {
        reads() > before
    })
    .await;
    let first_read = reads();

    for scan in &others {
        let moved = app
            .store
            .transition(Some(&other), scan, ScanStatus::Cancelled, RUNNER)
            .await
            .unwrap();
        assert!(matches!(moved, Transition::Applied { .. }), "{moved:?}");
    }
    // Long enough for the other group's hints to reach the reader and be passed over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_others = reads();
    app.store
        .transition(Some(&mine), &own, ScanStatus::Cancelled, RUNNER)
        .await
        .unwrap();
    let event = tokio::time::timeout(PRINTED, events.recv())
        .await
        .expect("the group's change is read")
        .unwrap();
    let after_own = reads();

    assert_eq!(first_read, before + 1);
    assert_eq!(after_others, first_read, "reads for other groups' changes");
    assert_eq!(event.change.scan_id, own);
    assert_eq!(
        after_own,
        first_read + 1,
        "reads for the group's one change"
    );
}
store_test!(a_group_reader_reads_only_for_its_groups_hints);

/// The payload of the next hint on the changes channel, within `limit`.
async fn next_hint(hints: &mut PgListener, limit: Duration) -> Value {
    let hint = tokio::time::timeout(limit, hints.recv())
        .await
        .unwrap_or_else(|_| panic!("no hint within {limit:?}"))
        .unwrap();
    serde_json::from_str(hint.payload()).unwrap()
}

/// The real binary's publisher cannot send: its session is terminated and the database takes no
/// new connection (`ALLOW_CONNECTIONS false`; the pool's open sessions go on committing). It logs
/// each failure with the database's own error and its SQLSTATE, and tries again, waiting twice as
/// long each time (100 ms, the least back-off with the default `PUBLISH_INTERVAL_MS`, then 200,
/// 400, 800). Once
/// the database takes connections again it sends the hint it owes without waiting for another
/// change, and that hint lists nothing ("read the trail": it cannot know what the lost hints
/// named). Fails for a back-off that does not double (`*` to `/`), for a publisher that keeps an
/// owed hint until the next change (either half of the "owed or overflowed" condition), and for
/// one that logs every failure as a timeout.
async fn a_publisher_that_cannot_send_backs_off_doubling_then_sends_the_hint_it_owes(
    backend: Backend,
) {
    const NOT_ACCEPTING: &str = "is not currently accepting connections";
    let (app, group, key) = TestApp::with_writer(backend).await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();
    let first = silent_running_scan(&mut admin, &group).await;
    let second = silent_running_scan(&mut admin, &group).await;
    let mut hints = PgListener::connect(&app.db.url).await.unwrap();
    hints.listen("signal_scan_events").await.unwrap();
    let server = ServerProcess::start(&[("DATABASE_URL", app.db.url.as_str())]).await;
    let cancel = async |scan: &ScanId| {
        server
            .post(
                &key,
                &crate::helpers::cancel_path(group.as_str(), scan.as_str()),
            )
            .await
    };
    let publisher_failures = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("cannot send change notifications"))
            })
            .cloned()
            .collect()
    };

    let sent = cancel(&first).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let heard = next_hint(&mut hints, PRINTED).await;
    assert_eq!(heard["changes"][0]["scanId"], first.as_str(), "{heard}");

    app.db.allow_connections(false).await;
    assert_eq!(cut_publishers(&mut admin).await, 1);
    let refused = cancel(&second).await;
    let events = server
        .until_events(|events| publisher_failures(events).len() >= 4)
        .await;
    app.db.allow_connections(true).await;
    let owed = next_hint(&mut hints, PRINTED).await;

    // The cancel itself committed on a session the pool already had.
    assert_eq!(refused.status, 200, "{refused:?}");
    let failures = publisher_failures(&events);
    assert_backs_off_doubling(&failures);
    for failure in &failures[1..] {
        let error = failure["error"].as_str().unwrap();
        assert!(error.contains(NOT_ACCEPTING), "{failure}");
        // Told as the operator can look it up, not with a line of PostgreSQL's C source.
        assert!(error.ends_with("(SQLSTATE 55000)"), "{failure}");
    }
    assert_eq!(owed, serde_json::json!({ "changes": null }));
}
store_test!(
    a_publisher_that_cannot_send_backs_off_doubling_then_sends_the_hint_it_owes,
    postgres_only
);

/// A database made by 0001 alone, with rows, upgraded by the service's own migrate. Fails if 0001
/// was edited (0001 here is the released file, kept in `tests/api/fixtures/`: sqlx refuses an
/// embedded 0001 whose checksum differs from the one recorded), if old rows get a real
/// transaction id (such as the migration's own), if the index is missing, or if a reader from the
/// start skips old rows.
async fn the_feed_migration_upgrades_a_database_made_by_0001_with_rows_in_it(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    // sqlx records 0001 as applied, with the checksum of the released file.
    let folder = std::env::temp_dir().join(format!(
        "signal-scans-0001-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("0001_initial.sql"), RELEASED_0001).unwrap();
    let only_0001 = sqlx::migrate::Migrator::new(folder.as_path()).await;
    let _ = std::fs::remove_dir_all(&folder);
    let mut old = PgConnection::connect(&db.url).await.unwrap();
    only_0001.unwrap().run(&mut old).await.unwrap();
    let group = group();
    let (running, queued, cancelled) = (ScanId::generate(), ScanId::generate(), ScanId::generate());
    sqlx::query(
        "INSERT INTO api_keys (id, name, key_hash, permissions, account_group_ids)
         VALUES ($1, 'made before 0002', $2, ARRAY['signals:write'], ARRAY[$3])",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(vec![7u8; 32])
    .bind(group.as_str())
    .execute(&mut old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO signal_scans (id, account_group_id, status, started_at, finished_at, cancelled_at)
         VALUES ($1, $4, 'running', now(), NULL, NULL),
                ($2, $4, 'queued', NULL, NULL, NULL),
                ($3, $4, 'cancelled', NULL, now(), now())",
    )
    .bind(running.as_str())
    .bind(queued.as_str())
    .bind(cancelled.as_str())
    .bind(group.as_str())
    .execute(&mut old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
         VALUES ($1, NULL, 'queued', now()), ($2, NULL, 'queued', now()),
                ($3, NULL, 'queued', now()), ($1, 'queued', 'running', now()),
                ($3, 'queued', 'cancelled', now())",
    )
    .bind(running.as_str())
    .bind(queued.as_str())
    .bind(cancelled.as_str())
    .execute(&mut old)
    .await
    .unwrap();

    let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    store
        .migrate()
        .await
        .expect("0002 applies over 0001's rows");
    let xids = async |db: &mut PgConnection| -> Vec<String> {
        sqlx::query_scalar("SELECT xid::text FROM signal_scan_events ORDER BY id")
            .fetch_all(db)
            .await
            .unwrap()
    };
    let old_xids = xids(&mut old).await;
    let index: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes
         WHERE tablename = 'signal_scan_events' AND indexname = 'signal_scan_events_feed'",
    )
    .fetch_optional(&mut old)
    .await
    .unwrap();
    for (scan, to) in [
        (&running, ScanStatus::Completed),
        (&queued, ScanStatus::Cancelled),
    ] {
        let moved = store.transition(None, scan, to, RUNNER).await.unwrap();
        assert!(matches!(moved, Transition::Applied { .. }), "{moved:?}");
    }
    let all_xids = xids(&mut old).await;
    let mut feed = FeedReader::open(
        store.clone(),
        Start::After(FeedCursor::default()),
        None,
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    // The three creations (0001's rows) are delivered too; this test follows the moves.
    let mut delivered = Vec::new();
    while delivered.len() < 4 {
        let event = tokio::time::timeout(PRINTED, feed.next())
            .await
            .expect("the feed delivers")
            .unwrap();
        if event.change.from.is_some() {
            delivered.push(event.change);
        }
    }
    // A change after the old and the new ones: the next thing delivered, nothing again before it.
    let next = store.create_scan(&group, ScanStatus::Queued).await.unwrap();
    store
        .transition(None, &next.id, ScanStatus::Running, RUNNER)
        .await
        .unwrap();
    let mut after = tokio::time::timeout(PRINTED, feed.next())
        .await
        .expect("the feed delivers")
        .unwrap();
    if after.change.from.is_none() {
        // The next scan's creation, then its move.
        after = tokio::time::timeout(PRINTED, feed.next())
            .await
            .expect("the feed delivers")
            .unwrap();
    }

    assert_eq!(old_xids, ["0"; 5], "rows written before 0002 read xid 0");
    let new_xids: Vec<u64> = all_xids[5..].iter().map(|x| x.parse().unwrap()).collect();
    assert!(
        new_xids.len() == 2 && new_xids.iter().all(|xid| *xid > 0),
        "rows written after 0002 carry their transaction: {all_xids:?}"
    );
    assert!(
        index
            .as_deref()
            .is_some_and(|def| def.ends_with("(xid, id)")),
        "{index:?}"
    );
    let delivered: Vec<Change> = delivered
        .iter()
        .map(|c| change(&c.scan_id, c.from.expect("no creation is read here"), c.to))
        .collect();
    assert_eq!(
        delivered,
        [
            change(&running, ScanStatus::Queued, ScanStatus::Running),
            change(&cancelled, ScanStatus::Queued, ScanStatus::Cancelled),
            change(&running, ScanStatus::Running, ScanStatus::Completed),
            change(&queued, ScanStatus::Queued, ScanStatus::Cancelled),
        ],
        "old changes, then new ones, from the start of the trail"
    );
    assert_eq!(
        change(
            &after.change.scan_id,
            after.change.from.expect("the next scan's move"),
            after.change.to
        ),
        change(&next.id, ScanStatus::Queued, ScanStatus::Running)
    );
    assert_eq!(
        store
            .find_scan(None, &running)
            .await
            .unwrap()
            .unwrap()
            .status,
        ScanStatus::Completed,
        "scans made before 0002 are served"
    );
}
store_test!(
    the_feed_migration_upgrades_a_database_made_by_0001_with_rows_in_it,
    postgres_only
);

/// The embedded store's twin of the test above: a file made by SQLite's released 0001 alone, with
/// rows, upgraded by the service's own migrate. Fails if that 0001 was edited (sqlx refuses an
/// embedded migration whose checksum differs from the one the file recorded: every embedded
/// install would stop at start), if a later migration cannot apply over old rows, if old audit
/// rows are not filed under their scan's group (0003's fill: a group's stream reads by it), or if
/// a row written the old way, without its group, is not filed by the trigger.
#[tokio::test]
async fn the_sqlite_migrations_upgrade_a_file_made_by_0001_with_rows_in_it() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let folder = db.sqlite_file().parent().unwrap().to_owned();
    let released = folder.join("released");
    std::fs::create_dir_all(&released).unwrap();
    std::fs::write(released.join("0001_initial.sql"), RELEASED_SQLITE_0001).unwrap();
    let only_0001 = sqlx::migrate::Migrator::new(released.as_path())
        .await
        .unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db.sqlite_file())
        .create_if_missing(true);
    let mut old = SqliteConnection::connect_with(&options).await.unwrap();
    only_0001.run(&mut old).await.unwrap();
    let (group, elsewhere) = (group(), group());
    let (running, queued) = (ScanId::generate(), ScanId::generate());
    let at = "2026-11-29T00:00:00.000000Z";
    // The ids are hex: written into the statements as they are.
    let old_rows = format!(
        "INSERT INTO signal_scans (id, account_group_id, status, created_at, updated_at)
         VALUES ('{running}', '{group}', 'running', '{at}', '{at}'),
                ('{queued}', '{elsewhere}', 'queued', '{at}', '{at}');
         INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
         VALUES ('{running}', NULL, 'queued', '{at}'), ('{queued}', NULL, 'queued', '{at}'),
                ('{running}', 'queued', 'running', '{at}');"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_rows))
        .execute(&mut old)
        .await
        .unwrap();
    old.close().await.unwrap();

    let store = Store::connect(&store_options(&db.url, Duration::from_secs(10))).unwrap();
    store
        .migrate()
        .await
        .expect("the later migrations apply over 0001's rows");
    // A writer of the old shape, which knows no group (the trigger files its row).
    let old_cancel = format!(
        "INSERT INTO signal_scan_events (scan_id, from_status, to_status, occurred_at)
         VALUES ('{queued}', 'queued', 'cancelled', '{at}');
         UPDATE signal_scans SET status = 'cancelled', cancelled_at = '{at}' WHERE id = '{queued}';"
    );
    let mut old = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(old_cancel))
        .execute(&mut old)
        .await
        .unwrap();
    old.close().await.unwrap();
    let moved = store
        .transition(None, &running, ScanStatus::Completed, RUNNER)
        .await
        .unwrap();
    assert!(matches!(moved, Transition::Applied { .. }), "{moved:?}");

    // Each group's stream, from the start, reads its own rows, old and new, and no other's.
    let mut read = BTreeMap::new();
    for of in [&group, &elsewhere] {
        let mut feed = FeedReader::open(
            store.clone(),
            Start::After(FeedCursor::default()),
            Some(*of),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        let mut changes = Vec::new();
        for _ in 0..if of == &group { 3 } else { 2 } {
            let event = tokio::time::timeout(PRINTED, feed.next())
                .await
                .expect("the feed delivers")
                .unwrap();
            assert_eq!(event.change.account_group_id, *of, "{event:?}");
            changes.push((event.change.scan_id, event.change.from, event.change.to));
        }
        read.insert(of.to_string(), changes);
    }
    let (queued_status, running_status) = (ScanStatus::Queued, ScanStatus::Running);
    assert_eq!(
        read[group.as_str()],
        [
            (running, None, queued_status),
            (running, Some(queued_status), running_status),
            (running, Some(running_status), ScanStatus::Completed),
        ]
    );
    assert_eq!(
        read[elsewhere.as_str()],
        [
            (queued, None, queued_status),
            (queued, Some(queued_status), ScanStatus::Cancelled),
        ]
    );
    let served = store.find_scan(None, &queued).await.unwrap();
    assert!(
        served.is_some_and(|scan| scan.status == ScanStatus::Cancelled),
        "scans made by 0001 are served"
    );
}

/// A reader from now that polls once a minute: past its first read, only a hint reaches it within
/// a test's wait.
async fn hearing_hints_only(app: &TestApp) -> FeedReader {
    FeedReader::open(
        app.served_store.clone(),
        Start::Now,
        None,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// A creation whose client leaves once its insert is sent (slowed by a trigger) commits, and its
/// hint goes out: a reader polling once a minute hears of it in about a second. The request's
/// future was dropped between the commit and the hint, so the scan reached readers only at their
/// next poll, other replicas' too (the cancellation review: 9 s late with a 60 s poll).
/// PostgreSQL: a trigger slows the insert; nothing holds a SQLite commit from outside.
async fn a_creation_whose_client_left_during_its_insert_is_still_announced(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let mut feed = hearing_hints_only(&app).await;
    crate::helpers::slow_scan_inserts(&app, 1.0).await;

    let gave_up = reqwest::Client::new()
        .post(app.url(&scans_path(group.as_str())))
        .bearer_auth(&key)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    let heard = tokio::time::timeout(HINTED, feed.next())
        .await
        .expect("heard by the hint, before any poll")
        .unwrap();

    assert!(gave_up.is_err_and(|error| error.is_timeout()));
    assert_eq!(heard.change.account_group_id, group);
    assert_eq!(
        (heard.change.from, heard.change.to),
        (None, ScanStatus::Queued)
    );
}
store_test!(
    a_creation_whose_client_left_during_its_insert_is_still_announced,
    postgres_only
);

async fn a_subscriber_hears_each_cancel_by_its_hint_long_before_the_poll(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let first = app.scan(&group, ScanStatus::Queued).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    // Polling far slower than the bound below: past the first read, only a hint delivers in time.
    let mut feed = hearing_hints_only(&app).await;
    app.cancel_ok(&key, &group, &first).await;
    let caught_up = feed.next().await.unwrap();
    assert_eq!(caught_up.change.scan_id, first);

    let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    // Far below the 60 s poll, and far above a hint's milliseconds on a loaded machine.
    let heard = tokio::time::timeout(HINTED, feed.next())
        .await
        .expect("heard by the hint, before any poll")
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
store_test!(a_subscriber_hears_each_cancel_by_its_hint_long_before_the_poll);

async fn the_watch_command_prints_its_groups_cancels_by_the_hint_or_within_the_poll(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let (group, other_group) = (group(), group());
    let key = app.writer(&group).await;
    let other_key = app.writer(&other_group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let other_scan = app.scan(&other_group, ScanStatus::Queued).await;
    // A change from before the watch began is not news: it must not be printed.
    let old_news = app.scan(&group, ScanStatus::Queued).await;
    app.cancel_ok(&key, &group, &old_news).await;
    // SQLite's hints reach only the process that made the change: the watcher, another
    // process, finds it by its poll, within FEED_POLL_MS (and a moment to print it). On
    // PostgreSQL the poll is a minute away: only the notification delivers within the bound.
    let (poll_ms, bound) = match backend {
        Backend::Sqlite => (1000, Duration::from_millis(1000 + 1000)),
        Backend::Postgres => (60_000, HINTED),
    };
    let mut watch = Watch::start(&app.db.url, Some(&group), poll_ms).await;

    app.cancel_ok(&other_key, &other_group, &other_scan).await;
    app.cancel_ok(&key, &group, &scan).await;
    let printed = watch.next(bound).await;

    assert_eq!(
        printed["scanId"],
        scan.as_str(),
        "only the watched group: {printed}"
    );
    assert_eq!(printed["accountGroupId"], group.as_str());
    assert_eq!(printed["from"], "queued");
    assert_eq!(printed["to"], "cancelled");
    assert!(printed["at"].as_str().unwrap().ends_with('Z'));
    watch.stop().await;
}
store_test!(the_watch_command_prints_its_groups_cancels_by_the_hint_or_within_the_poll);

/// `scans create` on the database tells listeners of the scan it made, as `scans transition`
/// does: a watch whose poll is a minute away prints the creation by its hint. (It was left to
/// the next poll.)
async fn a_scan_created_on_the_command_line_reaches_watches_by_its_hint(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = crate::helpers::group();
    let mut watch = Watch::start(&app.db.url, Some(&group), 60_000).await;

    let created = crate::cli::scan_created_on_the_command_line(&app.db.url, group.as_str());

    let line = watch.next_line_within(Duration::from_secs(20)).await;
    let line = line.unwrap_or_else(|| panic!("not printed; logs: {:?}", watch.logs()));
    assert_eq!(line["scanId"], created["scanId"]);
    assert_eq!(line["to"], "queued");
}
store_test!(
    a_scan_created_on_the_command_line_reaches_watches_by_its_hint,
    postgres_only
);

/// `scans watch` ends with exit 0 on SIGTERM and on Ctrl-C, following the database or the
/// service. It had no handler: it died by the signal, and, as a container's PID 1 (which has no
/// default action for SIGTERM), it ignored SIGTERM and ran on until killed (command line review).
async fn scans_watch_stops_with_exit_0_on_sigterm_and_ctrl_c(backend: Backend) {
    let (app, group, _) = TestApp::with_writer(backend).await;
    let reader = app.reader(&group).await;
    let server = app.url("");
    let from_the_database = Watch::start(&app.db.url, Some(&group), 200).await;
    let from_the_service = Watch::start_with(
        &["--server", &server, "--account-group", group.as_str()],
        &[("SIGNAL_SCANS_API_KEY", &reader)],
    )
    .await;

    let terminated = from_the_database.signal_and_wait("TERM").await;
    let interrupted = from_the_service.signal_and_wait("INT").await;

    assert_eq!(terminated.code(), Some(0), "{terminated:?}");
    assert_eq!(interrupted.code(), Some(0), "{interrupted:?}");
}
store_test!(scans_watch_stops_with_exit_0_on_sigterm_and_ctrl_c);

/// A watch says where it starts (`after=` in its log), on the database and through the service: a
/// runner stopped before any change was printed resumes there with `--after` and misses nothing.
/// No cursor came before the first change, and a restart from now lost the changes in between.
async fn a_watch_says_where_it_starts_and_after_resumes_there(backend: Backend) {
    let (app, group, _) = TestApp::with_writer(backend).await;
    let reader = app.reader(&group).await;
    let server = app.url("");
    let on_the_database: (&[&str], _) = (
        &["--account-group", group.as_str()],
        [
            ("DATABASE_URL", app.db.url.as_str()),
            ("FEED_POLL_MS", "200"),
        ],
    );
    let through_the_service: (&[&str], _) = (
        &["--server", &server, "--account-group", group.as_str()],
        [
            ("SIGNAL_SCANS_API_KEY", reader.as_str()),
            ("FEED_POLL_MS", "200"),
        ],
    );
    for (args, env) in [on_the_database, through_the_service] {
        let first = Watch::start_with(args, &env).await;
        let start = first.starts_at().await;
        first.stop().await;
        let scan = app.scan(&group, ScanStatus::Queued).await;

        let mut resumed = Watch::start_with(&[args, &["--after", &start]].concat(), &env).await;
        let line = resumed.next_line_within(Duration::from_secs(10)).await;
        resumed.stop().await;

        let line = line.unwrap_or_else(|| panic!("nothing printed after {start} ({args:?})"));
        assert_eq!(line["scanId"], scan.as_str(), "{args:?}");
        assert_eq!(
            (&line["from"], &line["to"]),
            (&Value::Null, &Value::from("queued"))
        );
    }
}
store_test!(a_watch_says_where_it_starts_and_after_resumes_there);
