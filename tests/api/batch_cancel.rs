//! Group commit and the batch cancel: `POST …/signals/scans/cancel` with `{"scanIds": [...]}`,
//! one commit for the whole request, one result per id; and changes of different requests that
//! queue together commit together, each with its own outcome.

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::locks::{WriteLock, until_advisory_waiters, until_waiting, until_waiting_on};
use crate::helpers::process::ServerProcess;
use std::time::Duration;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp, group, move_path};
use crate::store_test;

/// How long the store may wait for the database before it answers 502: long enough for a batch's
/// commit on a machine busy with the rest of the suite (400 ms once was not: the request after the
/// lock answered 502 in a run of ten), and short enough to wait out.
const DB_TIMEOUT: Duration = Duration::from_millis(1500);

fn cancel_all_path(group: &AccountGroupId) -> String {
    format!("/v1/accounts/{group}/signals/scans/cancel")
}

fn body_of(scans: &[&ScanId]) -> String {
    let ids: Vec<&str> = scans.iter().map(|scan| scan.as_str()).collect();
    json!({ "scanIds": ids }).to_string()
}

/// `(scanId, outcome, status, previousStatus, cancelledAt is set)` of each result.
fn results(response: &ApiResponse) -> Vec<(String, String, Value, Value, bool)> {
    response.body["data"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{response:?}"))
        .iter()
        .map(|line| {
            (
                line["scanId"].as_str().unwrap().to_owned(),
                line["outcome"].as_str().unwrap().to_owned(),
                line["status"].clone(),
                line["previousStatus"].clone(),
                line["cancelledAt"].is_string(),
            )
        })
        .collect()
}

async fn a_batch_cancel_answers_each_scan_in_order_and_commits_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, other) = (group(), group());
    let writer = app.writer(&group).await;
    let queued = app.scan(&group, ScanStatus::Queued).await;
    let running = app.scan(&group, ScanStatus::Running).await;
    let cancelled = app.scan(&group, ScanStatus::Running).await;
    let first = app.cancel_ok(&writer, &group, &cancelled).await;
    let completed = app.scan(&group, ScanStatus::Completed).await;
    let elsewhere = app.scan(&other, ScanStatus::Running).await;
    let unknown = ScanId::generate();

    let response = app
        .post(
            &writer,
            &cancel_all_path(&group),
            Some(&body_of(&[
                &running, &completed, &queued, &unknown, &cancelled, &elsewhere,
            ])),
        )
        .await;

    assert_eq!(response.status, 200, "{response:?}");
    let (c, r, q, n) = ("cancelled", "running", "queued", Value::Null);
    assert_eq!(
        results(&response),
        [
            (running.to_string(), c.into(), json!(c), json!(r), true),
            (
                completed.to_string(),
                "not_cancellable".into(),
                json!("completed"),
                json!("completed"),
                false
            ),
            (queued.to_string(), c.into(), json!(c), json!(q), true),
            (
                unknown.to_string(),
                "not_found".into(),
                n.clone(),
                n.clone(),
                false
            ),
            (
                cancelled.to_string(),
                "already_cancelled".into(),
                json!(c),
                json!(c),
                true
            ),
            (
                elsewhere.to_string(),
                "not_found".into(),
                n.clone(),
                n,
                false
            ),
        ]
    );
    let lines = response.body["data"]["results"].as_array().unwrap();
    assert_eq!(
        lines[4]["cancelledAt"], first.body["data"]["cancelledAt"],
        "an earlier cancel keeps its moment"
    );
    assert_eq!(app.status_of(&elsewhere).await, ScanStatus::Running);
    assert_eq!(app.status_of(&completed).await, ScanStatus::Completed);
    // One audit row per scan this request cancelled, each with the request's trace id, and the
    // moment answered is the one stored.
    for (scan, line) in [(&running, &lines[0]), (&queued, &lines[2])] {
        assert_eq!(app.status_of(scan).await, ScanStatus::Cancelled);
        let stored = app.store.find_scan(None, scan).await.unwrap().unwrap();
        let answered = line["cancelledAt"].as_str().unwrap();
        let answered = time::OffsetDateTime::parse(answered, &Rfc3339).unwrap();
        assert_eq!(Some(answered), stored.cancelled_at, "{line}");
        let events = app.store.scan_events(scan).await.unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[1].trace_id.as_deref(),
            Some(response.trace_id()),
            "{events:?}"
        );
    }
    // One commit: both rows carry one transaction's mark (it checked PostgreSQL's alone).
    let commits = commits_of(&app, &[running, queued]).await;
    assert_eq!(commits[0], commits[1], "{commits:?}");
}
store_test!(a_batch_cancel_answers_each_scan_in_order_and_commits_once);

async fn a_batch_cancel_takes_ids_in_either_case_and_answers_them_lowercase(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
    let queued = app.scan(&group, ScanStatus::Queued).await;
    let unknown = ScanId::generate();
    let upper = |id: &str| id.to_uppercase();

    let response = app
        .post(
            &writer,
            &format!(
                "/v1/accounts/{}/signals/scans/cancel",
                upper(group.as_str())
            ),
            Some(
                &json!({ "scanIds": [upper(queued.as_str()), upper(unknown.as_str())] })
                    .to_string(),
            ),
        )
        .await;

    assert_eq!(response.status, 200, "{response:?}");
    let (c, q, n) = ("cancelled", "queued", Value::Null);
    assert_eq!(
        results(&response),
        [
            (queued.to_string(), c.into(), json!(c), json!(q), true),
            (unknown.to_string(), "not_found".into(), n.clone(), n, false),
        ]
    );
    assert_eq!(app.status_of(&queued).await, ScanStatus::Cancelled);
}
store_test!(a_batch_cancel_takes_ids_in_either_case_and_answers_them_lowercase);

async fn a_bad_batch_is_400_naming_what_is_wrong_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let upper = scan.as_str().to_uppercase();
    let many: Vec<String> = (0..101).map(|_| ScanId::generate().to_string()).collect();
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "request body must be a JSON object with scanIds"),
        (Some("{}".into()), "scanIds is required"),
        (
            Some("[]".into()),
            "request body must be a JSON object with scanIds",
        ),
        (
            Some("not json".into()),
            "request body must be a JSON object with scanIds",
        ),
        // An object that breaks off says where, and what the body must be.
        (
            Some(r#"{"scanIds": ["#.into()),
            "request body must be a JSON object with scanIds: EOF while parsing",
        ),
        (
            Some(json!({ "scanIds": [] }).to_string()),
            "scanIds must hold 1 to 100 ids; it holds 0",
        ),
        (
            Some(json!({ "scanIds": many }).to_string()),
            "scanIds must hold 1 to 100 ids; it holds 101",
        ),
        (
            Some(json!({ "scanIds": [scan.as_str(), "nope"] }).to_string()),
            "scanIds[1] ",
        ),
        (
            Some(json!({ "scanIds": [scan.as_str(), upper] }).to_string()),
            "scanIds[1] repeats scanIds[0]",
        ),
        (
            Some(json!({ "scanIds": [scan.as_str()], "force": true }).to_string()),
            "unknown field `force`",
        ),
        (
            Some(format!(
                r#"{{"scanIds": ["{scan}"], "scanIds": ["{scan}"]}}"#
            )),
            "request body: duplicate field `scanIds`",
        ),
        (
            Some(json!({ "scanIds": [scan.as_str(), 7] }).to_string()),
            "scanIds[1] must be a string (a scan id)",
        ),
        (
            Some(json!({ "scanIds": scan.as_str() }).to_string()),
            "scanIds must be an array of scan ids",
        ),
        // Every bad id and every repeat is named, not only the first (HTTP review).
        (
            Some(json!({ "scanIds": ["zz", scan.as_str(), 7, upper] }).to_string()),
            "scanIds[0] must be 24 hexadecimal characters; scanIds[2] must be a string (a scan id); \
             scanIds[3] repeats scanIds[1]",
        ),
    ];

    for (body, named) in cases {
        let response = app
            .post(&writer, &cancel_all_path(&group), body.as_deref())
            .await;
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(
            details.contains(named),
            "{body:?}: {details:?} does not say {named:?}"
        );
    }

    // A malformed group and a bad body are both named.
    let response = app
        .post(
            &writer,
            "/v1/accounts/nope/signals/scans/cancel",
            Some("{}"),
        )
        .await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    assert!(
        details.starts_with("accountGroupId ") && details.ends_with("; scanIds is required"),
        "{details}"
    );

    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 1);
}
store_test!(a_bad_batch_is_400_naming_what_is_wrong_and_changes_nothing);

async fn a_batch_cancel_needs_signals_write_on_the_group(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, other) = (group(), group());
    let scan = app.scan(&group, ScanStatus::Running).await;
    let body = body_of(&[&scan]);
    let reader = app.key_for(&[Permission::SignalsRead], &[group]).await.0;
    let runner = app.runner(&group).await;
    let other_writer = app.writer(&other).await;

    let unauthenticated = app
        .client
        .post(app.url(&cancel_all_path(&group)))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let unauthenticated = ApiResponse::from(unauthenticated).await;
    let by_reader = app
        .post(&reader, &cancel_all_path(&group), Some(&body))
        .await;
    let by_runner = app
        .post(&runner, &cancel_all_path(&group), Some(&body))
        .await;
    let other_group = app
        .post(&other_writer, &cancel_all_path(&group), Some(&body))
        .await;

    unauthenticated.assert_error(401, "UNAUTHORIZED");
    let lacks = "API key lacks the signals:write permission";
    assert_eq!(by_reader.assert_error(403, "FORBIDDEN"), lacks);
    assert_eq!(by_runner.assert_error(403, "FORBIDDEN"), lacks);
    assert_eq!(
        other_group.assert_error(403, "FORBIDDEN"),
        format!("API key has no access to account group {group}")
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
}
store_test!(a_batch_cancel_needs_signals_write_on_the_group);

/// Requests that queue while a write is stuck commit together once it clears (one transaction,
/// on both stores): two cancels of one scan give one transition (the second told `cancelled`), a
/// completion and a cancel of one scan have one winner and the loser is told its status, and a
/// scan of another group is 404 without failing the rest.
async fn changes_that_queue_together_keep_their_own_outcomes(backend: Backend) {
    let (app, group, writer) = one_batch_at_a_time(backend, DB_TIMEOUT * 4).await;
    let other = crate::helpers::group();
    let runner = app.runner(&group).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let twice = app.scan(&group, ScanStatus::Running).await;
    let raced = app.scan(&group, ScanStatus::Running).await;
    let elsewhere = app.scan(&other, ScanStatus::Running).await;
    let mut lock = WriteLock::hold(&app, &stuck).await;

    let (first, (cancels, completed, cancelled, not_ours)) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), stuck.as_str()),
        async {
            // The stuck write goes first; then the rest queue behind it, and the lock goes. The
            // first cancel of `twice` and the completion queue first, in that order, so that the
            // next batch holds both (two changes of one scan never share a batch: the second of
            // each is passed over for a later one).
            until_waiting(&app, 1).await;
            let (app, writer, group) = (&app, &writer, &group);
            let cancel = |scan: ScanId| async move {
                app.cancel(Some(writer), group.as_str(), scan.as_str())
                    .await
            };
            let complete = move_path(group.as_str(), raced.as_str(), "complete");
            let (first_twice, (completed, (second_twice, cancelled, not_ours, ()))) =
                tokio::join!(cancel(twice), async {
                    until_changes_waiting(app, 2).await;
                    tokio::join!(app.post(&runner, &complete, None), async {
                        until_changes_waiting(app, 3).await;
                        tokio::join!(cancel(twice), cancel(raced), cancel(elsewhere), async {
                            // One batch at a time: the five changes queue behind the stuck one.
                            until_changes_waiting(app, 6).await;
                            lock.release().await;
                        })
                    })
                });
            let cancels = vec![first_twice, second_twice];
            (cancels, completed, cancelled, not_ours)
        }
    );

    assert_eq!(first.status, 200, "{first:?}");
    let mut previous: Vec<&str> = cancels
        .iter()
        .map(|cancel| {
            assert_eq!(cancel.status, 200, "{cancel:?}");
            cancel.body["data"]["previousStatus"].as_str().unwrap()
        })
        .collect();
    previous.sort_unstable();
    assert_eq!(previous, ["cancelled", "running"]);
    assert_eq!(app.store.scan_events(&twice).await.unwrap().len(), 2);
    // The running scan was completed or cancelled, not both; the loser hears the winner.
    match app.status_of(&raced).await {
        ScanStatus::Completed => {
            assert_eq!(completed.status, 200, "{completed:?}");
            let details = cancelled.assert_error(422, "VALIDATION_ERROR");
            assert!(details.contains("completed"), "{details}");
        }
        ScanStatus::Cancelled => {
            assert_eq!(cancelled.status, 200, "{cancelled:?}");
            let details = completed.assert_error(422, "VALIDATION_ERROR");
            assert_eq!(details, "currentStatus=cancelled");
        }
        other => panic!("the raced scan is {other}"),
    }
    assert_eq!(app.store.scan_events(&raced).await.unwrap().len(), 2);
    not_ours.assert_error(404, "NOT_FOUND");
    assert_eq!(app.status_of(&elsewhere).await, ScanStatus::Running);
    let commits = commits_of(&app, &[stuck, twice, raced]).await;
    assert_ne!(commits[0], commits[1], "the stuck write commits on its own");
    assert_eq!(commits[1], commits[2], "the queued changes commit together");
}
store_test!(changes_that_queue_together_keep_their_own_outcomes);

/// A batch whose commit cannot happen (a scan's write stuck behind another session past
/// DB_TIMEOUT_MS) answers 502, and none of its scans is cancelled; the same request succeeds once
/// the lock is gone.
async fn a_stuck_batch_answers_502_and_cancels_none_of_its_scans(backend: Backend) {
    let (app, group, writer) = Settings::default()
        .with_db_timeout(DB_TIMEOUT)
        .spawn_with_writer(backend)
        .await;
    let free = app.scan(&group, ScanStatus::Running).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let also_free = app.scan(&group, ScanStatus::Queued).await;
    let body = body_of(&[&free, &stuck, &also_free]);
    let mut lock = WriteLock::hold(&app, &stuck).await;

    let failed = app
        .post(&writer, &cancel_all_path(&group), Some(&body))
        .await;
    // The database gave up on the statement too before the lock goes: no late commit hides here.
    until_waiting(&app, 0).await;
    let during = [
        app.status_of(&free).await,
        app.status_of(&stuck).await,
        app.status_of(&also_free).await,
    ];
    lock.release().await;
    let after = app
        .post(&writer, &cancel_all_path(&group), Some(&body))
        .await;

    failed.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(
        during,
        [ScanStatus::Running, ScanStatus::Running, ScanStatus::Queued]
    );
    assert_eq!(after.status, 200, "{after:?}");
    let outcomes: Vec<String> = results(&after).into_iter().map(|line| line.1).collect();
    assert_eq!(outcomes, ["cancelled", "cancelled", "cancelled"]);
}
store_test!(a_stuck_batch_answers_502_and_cancels_none_of_its_scans);

/// A service with one batch in flight at a time, so that requests queue behind a stuck one and
/// then go together; its account group and a key that cancels there.
async fn one_batch_at_a_time(
    backend: Backend,
    db_timeout: Duration,
) -> (TestApp, AccountGroupId, String) {
    let (app, group, writer) = Settings::default()
        .with_db_timeout(db_timeout)
        .with_db_write_batches(1)
        .spawn_with_writer(backend)
        .await;
    (app, group, writer)
}

/// Until `n` requests' changes are queued or committing in the served store (10 s at most).
async fn until_changes_waiting(app: &TestApp, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.served_store.changes_waiting() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} changes waiting, not {n}",
            app.served_store.changes_waiting()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cancels `scans`, each once the one before it has queued behind `ahead` changes already
/// waiting: the batch they share keeps this order. Their answers, in the same order.
async fn cancels_in_order(
    app: &TestApp,
    writer: &str,
    group: &AccountGroupId,
    scans: &[&ScanId],
    ahead: usize,
) -> Vec<ApiResponse> {
    futures::future::join_all(scans.iter().enumerate().map(|(before, scan)| async move {
        until_changes_waiting(app, ahead + before).await;
        app.cancel(Some(writer), group.as_str(), scan.as_str())
            .await
    }))
    .await
}

/// Three requests committed in one batch lose the database mid-commit: each is answered 502 and
/// none of their scans moved. (PostgreSQL: one connection, so the three queue behind a first
/// batch and go together once it commits; their batch then waits on a lock while the proxy
/// cuts the database off.)
async fn a_batch_that_loses_the_database_answers_502_to_each_request_and_commits_none(
    backend: Backend,
) {
    let app = Settings::default()
        .through_proxy()
        .with_db_max_connections(1)
        .with_db_timeout(Duration::from_secs(2))
        .with_key_cache_ttl(Duration::from_secs(600))
        .spawn(backend)
        .await;
    let proxy = app.proxy.as_ref().unwrap();
    let group = group();
    let writer = app.writer(&group).await;
    let mut scans = Vec::new();
    for _ in 0..5 {
        scans.push(app.scan(&group, ScanStatus::Running).await);
    }
    let [first, a, b, c, warm] = <[ScanId; 5]>::try_from(scans).unwrap();
    // The key is cached: no request needs the one connection to authenticate.
    app.cancel_ok(&writer, &group, &warm).await;
    let mut first_lock = WriteLock::hold(&app, &first).await;
    let mut c_lock = WriteLock::hold(&app, &c).await;

    let (stuck_first, together) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), first.as_str()),
        async {
            until_changes_waiting(&app, 1).await;
            let cancel = |scan: ScanId| {
                let (app, writer, group) = (&app, &writer, &group);
                async move {
                    app.cancel(Some(writer), group.as_str(), scan.as_str())
                        .await
                }
            };
            let (ra, rb, rc, ()) = tokio::join!(cancel(a), cancel(b), cancel(c), async {
                // All three queue behind the first batch, which holds the one connection.
                until_changes_waiting(&app, 4).await;
                first_lock.release().await;
                // The first batch committed; the three, one batch, wait on c's lock.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while app.status_of(&first).await != ScanStatus::Cancelled {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the first batch never committed"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                until_waiting(&app, 1).await;
                proxy.cut();
            });
            [ra, rb, rc]
        }
    );
    // The database ends the abandoned statement too before c's lock goes: no late commit.
    until_waiting(&app, 0).await;
    c_lock.release().await;
    proxy.restore();

    assert_eq!(stuck_first.status, 200, "{stuck_first:?}");
    for response in &together {
        response.assert_error(502, "UPSTREAM_ERROR");
    }
    for scan in [&a, &b, &c] {
        assert_eq!(app.status_of(scan).await, ScanStatus::Running);
        assert_eq!(app.store.scan_events(scan).await.unwrap().len(), 1);
    }
}
store_test!(
    a_batch_that_loses_the_database_answers_502_to_each_request_and_commits_none,
    postgres_only
);

/// `/metrics` counts each cancel a commit settled by the status it found, a batch cancel's as a
/// single cancel's: the queued, the running and the repeated one once each, and none of the
/// scans the state machine would not cancel (completed, failed) or that were not found; and the
/// writer's batches, as histograms. Read from the real binary, whose counters are this test's
/// alone (the in-process recorder is the test binary's, filled by every test).
async fn a_batch_cancel_counts_each_cancel_by_the_status_it_found(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
    let mut scans = Vec::new();
    for status in [
        ScanStatus::Queued,
        ScanStatus::Running,
        ScanStatus::Cancelled,
        ScanStatus::Completed,
        ScanStatus::Failed,
    ] {
        scans.push(app.scan(&group, status).await);
    }
    let unknown = ScanId::generate();
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let before = server.metrics().await;

    let ids: Vec<&ScanId> = scans.iter().chain([&unknown]).collect();
    let response = ApiResponse::of(
        reqwest::Client::new()
            .post(server.url(&cancel_all_path(&group)))
            .bearer_auth(&writer)
            .header("content-type", "application/json")
            .body(body_of(&ids)),
    )
    .await;
    let after = server.metrics().await;

    assert_eq!(response.status, 200, "{response:?}");
    let outcomes: Vec<String> = results(&response).into_iter().map(|line| line.1).collect();
    assert_eq!(
        outcomes,
        [
            "cancelled",
            "cancelled",
            "already_cancelled",
            "not_cancellable",
            "not_cancellable",
            "not_found"
        ]
    );
    let counted = |found: &str| {
        let series = format!(r#"scan_cancels_total{{previous_status="{found}"}}"#);
        crate::helpers::metrics::delta(&before, &after, &series)
    };
    assert_eq!(
        [counted("queued"), counted("running"), counted("cancelled")],
        [1.0, 1.0, 1.0],
        "in:\n{after}"
    );
    // The writer's histograms: one commit (its size), one request's wait to be taken.
    for series in [
        "scan_write_batch_size_count",
        "scan_write_queue_wait_seconds_count",
    ] {
        let delta = crate::helpers::metrics::delta(&before, &after, series);
        assert_eq!(delta, 1.0, "{series} in:\n{after}");
    }
    for bucket in [
        r#"scan_write_batch_size_bucket{le="128"}"#,
        r#"scan_write_queue_wait_seconds_bucket{le="0.001"}"#,
    ] {
        assert!(
            crate::helpers::metrics::value(&after, bucket).is_some(),
            "{after}"
        );
    }
}
store_test!(a_batch_cancel_counts_each_cancel_by_the_status_it_found);

/// The transaction that wrote each scan's last audit row: PostgreSQL's xid, or on SQLite the
/// instant a batch stamps all of its rows with once it holds the write lock.
async fn commits_of(app: &TestApp, scans: &[ScanId]) -> Vec<String> {
    use sqlx::Connection;
    let mut commits = Vec::new();
    if app.db.url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        for scan in scans {
            commits.push(
                sqlx::query_scalar(
                    "SELECT occurred_at FROM signal_scan_events WHERE scan_id = ?1
                     ORDER BY id DESC LIMIT 1",
                )
                .bind(scan.as_str())
                .fetch_one(&mut connection)
                .await
                .unwrap(),
            );
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        for scan in scans {
            commits.push(
                sqlx::query_scalar(
                    "SELECT xid::text FROM signal_scan_events WHERE scan_id = $1
                     ORDER BY id DESC LIMIT 1",
                )
                .bind(scan.as_str())
                .fetch_one(&mut connection)
                .await
                .unwrap(),
            );
        }
    }
    commits
}

/// Requests that queue behind a stuck write commit together when it clears, as many as one
/// batch holds (128 changes): three single cancels and a batch cancel of 100 share one
/// transaction, and a second batch cancel of 100, which would take it past 128, gets the next.
async fn changes_queued_behind_a_write_share_its_successor_up_to_128(backend: Backend) {
    let (app, group, writer) = one_batch_at_a_time(backend, DB_TIMEOUT * 4).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let mut queued = Vec::new();
    for _ in 0..203 {
        queued.push(app.scan(&group, ScanStatus::Running).await);
    }
    let (singles, rest) = queued.split_at(3);
    let (hundred, second_hundred) = rest.split_at(100);
    let mut lock = WriteLock::hold(&app, &stuck).await;

    let (first, (single_answers, batch_answers)) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), stuck.as_str()),
        async {
            // In this order: the stuck write, the singles, then the two batches.
            until_changes_waiting(&app, 1).await;
            let singles = futures::future::join_all(
                singles
                    .iter()
                    .map(|scan| app.cancel(Some(&writer), group.as_str(), scan.as_str())),
            );
            let batches = async {
                until_changes_waiting(&app, 4).await;
                let all = |scans: &[ScanId]| body_of(&scans.iter().collect::<Vec<_>>());
                let (first_body, second_body) = (all(hundred), all(second_hundred));
                let path = cancel_all_path(&group);
                let first = app.post(&writer, &path, Some(&first_body));
                let second = async {
                    until_changes_waiting(&app, 5).await;
                    let answer = app.post(&writer, &path, Some(&second_body));
                    let release = async {
                        until_changes_waiting(&app, 6).await;
                        lock.release().await;
                    };
                    tokio::join!(answer, release).0
                };
                tokio::join!(first, second)
            };
            tokio::join!(singles, batches)
        }
    );

    assert_eq!(first.status, 200, "{first:?}");
    for answer in single_answers
        .iter()
        .chain([&batch_answers.0, &batch_answers.1])
    {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let [stuck_commit] = commits_of(&app, &[stuck]).await.try_into().unwrap();
    let together = commits_of(&app, &queued[..103]).await;
    let after = commits_of(&app, second_hundred).await;
    assert!(
        together.iter().all(|commit| *commit == together[0]),
        "the singles and the first hundred in one transaction: {together:?}"
    );
    assert!(
        after.iter().all(|commit| *commit == after[0]),
        "the second hundred in one transaction: {after:?}"
    );
    assert_ne!(
        together[0], after[0],
        "past 128 changes, a batch of its own"
    );
    assert_ne!(together[0], stuck_commit);
}
store_test!(changes_queued_behind_a_write_share_its_successor_up_to_128);

/// A request whose deadline passes while it still waits in the queue is answered 502 and never
/// written, even when the writer reaches it later: a client's cancel queued behind a runner's
/// start of the same scan (one batch never holds two changes of a scan), both behind a stuck
/// write. The start is taken when the stuck write gives up and commits once the lock goes; the
/// cancel, past its deadline by then, must not. (A completion would not wait in the queue: it is
/// refused at once while its scan is still queued.)
async fn a_request_that_gives_up_in_the_queue_is_never_written(backend: Backend) {
    let (app, group, writer) = one_batch_at_a_time(backend, DB_TIMEOUT).await;
    let runner = app.runner(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let unrelated = app.scan(&group, ScanStatus::Queued).await;
    let (start, cancel) = (
        move_path(group.as_str(), scan.as_str(), "start"),
        move_path(group.as_str(), scan.as_str(), "cancel"),
    );
    let mut lock = WriteLock::hold(&app, &scan).await;

    let (stuck, (started, cancelled)) = tokio::join!(app.post(&runner, &start, None), async {
        until_changes_waiting(&app, 1).await;
        // Halfway through the stuck write's time: the start that follows is taken when that
        // write gives up, before its own deadline; the completion behind it waits past its own.
        tokio::time::sleep(DB_TIMEOUT / 2).await;
        let started = app.post(&runner, &start, None);
        let cancelled = async {
            until_changes_waiting(&app, 2).await;
            let answer = app.post(&writer, &cancel, None).await;
            // The cancel has given up; the start waits on the lock. Let it commit.
            lock.release().await;
            answer
        };
        tokio::join!(started, cancelled)
    });
    // Everything queued before this has been written or skipped once it is answered.
    app.cancel_ok(&writer, &group, &unrelated).await;

    stuck.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(started.status, 200, "{started:?}");
    cancelled.assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 2);
}
store_test!(a_request_that_gives_up_in_the_queue_is_never_written);

/// A change that fails for a reason of its own (here a trigger that refuses to update one scan,
/// as a constraint would) fails only its own request: alone, it is that request's 500; in a batch
/// with others, the batch is written again request by request and the others commit.
async fn one_changes_own_error_fails_only_its_own_request(backend: Backend) {
    let (app, group, writer) = one_batch_at_a_time(backend, DB_TIMEOUT * 4).await;
    let poisoned = app.scan(&group, ScanStatus::Running).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let fine = [
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    ];
    let poison = match backend {
        Backend::Sqlite => format!(
            "CREATE TRIGGER poison BEFORE UPDATE ON signal_scans WHEN OLD.id = '{poisoned}'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'poisoned'; END $$;
             CREATE TRIGGER poison BEFORE UPDATE ON signal_scans
             FOR EACH ROW WHEN (OLD.id = '{poisoned}') EXECUTE FUNCTION poison()"
        ),
    };
    app.db.execute(&poison).await;

    let alone = app
        .cancel(Some(&writer), group.as_str(), poisoned.as_str())
        .await;
    let mut lock = WriteLock::hold(&app, &stuck).await;
    let (first, (together, others)) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), stuck.as_str()),
        async {
            until_changes_waiting(&app, 1).await;
            let together = app.cancel(Some(&writer), group.as_str(), poisoned.as_str());
            let others = async {
                until_changes_waiting(&app, 2).await;
                let others = futures::future::join_all(
                    fine.iter()
                        .map(|scan| app.cancel(Some(&writer), group.as_str(), scan.as_str())),
                );
                let release = async {
                    until_changes_waiting(&app, 4).await;
                    lock.release().await;
                };
                tokio::join!(others, release).0
            };
            tokio::join!(together, others)
        }
    );

    alone.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(first.status, 200, "{first:?}");
    together.assert_error(500, "INTERNAL_ERROR");
    for other in &others {
        assert_eq!(other.status, 200, "{other:?}");
    }
    assert_eq!(app.status_of(&poisoned).await, ScanStatus::Running);
    for scan in &fine {
        assert_eq!(app.status_of(scan).await, ScanStatus::Cancelled);
    }

    // A batch cancel is one commit: the poisoned scan's error answers the whole request, and its
    // other scan is not cancelled.
    let beside = app.scan(&group, ScanStatus::Running).await;
    let batch = app
        .post(
            &writer,
            &cancel_all_path(&group),
            Some(&body_of(&[&beside, &poisoned])),
        )
        .await;
    batch.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(app.status_of(&beside).await, ScanStatus::Running);
    assert_eq!(app.store.scan_events(&beside).await.unwrap().len(), 1);
}
store_test!(one_changes_own_error_fails_only_its_own_request);

/// An admin session of `app`'s PostgreSQL database that holds advisory lock `lock`, and a
/// trigger that makes `poisoned`'s write refuse the batch it is in once that lock is free. Table
/// `refused` says whether [`refuse_the_batch`] has let it: other triggers of a test act on the
/// writes one by one that follow, not on the batch.
async fn poison_the_batch(app: &TestApp, poisoned: &ScanId, lock: i64) -> sqlx::PgConnection {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE refused (refused boolean NOT NULL);
             INSERT INTO refused VALUES (false);
             CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_advisory_xact_lock({lock}); RAISE EXCEPTION 'poisoned'; END $$;
             CREATE TRIGGER poison BEFORE UPDATE ON signal_scans
             FOR EACH ROW WHEN (OLD.id = '{poisoned}') EXECUTE FUNCTION poison();
             SELECT pg_advisory_lock({lock});"
        )))
        .await
        .unwrap();
    admin
}

/// Once `queued` requests wait behind the stuck write, lets it go; once the batch they form is
/// being written (the poisoned scan's trigger waits on `lock`), marks it refused and lets the
/// poison refuse it.
async fn refuse_the_batch(
    app: &TestApp,
    admin: &mut sqlx::PgConnection,
    stuck_lock: &mut WriteLock,
    queued: usize,
    lock: i64,
) {
    use sqlx::Executor;
    until_changes_waiting(app, 1 + queued).await;
    stuck_lock.release().await;
    until_advisory_waiters(admin, 1).await;
    admin
        .execute("UPDATE refused SET refused = true")
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut *admin)
        .await
        .unwrap();
}

/// A batch refused for one change's own error is written again request by request, and those
/// writes start within the store's timeout of the refusal: a request whose turn comes later is
/// answered 502 and never written, instead of waiting out every write ahead of it. Here the
/// batch is four cancels: a poisoned scan (its trigger refuses it), two scans whose writes on
/// their own each take 0.6 of the timeout, and a last one that finds the timeout spent.
/// (PostgreSQL only: SQLite has no way to make a write slow from a trigger.)
async fn writes_one_by_one_start_within_the_timeout_of_the_refusal(backend: Backend) {
    use sqlx::Executor;
    let timeout = DB_TIMEOUT * 4;
    let (app, group, writer) = one_batch_at_a_time(backend, timeout).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let poisoned = app.scan(&group, ScanStatus::Running).await;
    let slow = [
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    ];
    let last = app.scan(&group, ScanStatus::Running).await;
    let events_of_last = app.store.scan_events(&last).await.unwrap().len();
    let lock: i64 = 2_426;
    let mut admin = poison_the_batch(&app, &poisoned, lock).await;
    // The slow scans' writes are slow only once the batch is refused: their writes on their own.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT refused FROM refused) THEN PERFORM pg_sleep({sleep}); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER slow BEFORE UPDATE ON signal_scans
             FOR EACH ROW WHEN (OLD.id IN ('{}', '{}')) EXECUTE FUNCTION slow();",
            slow[0],
            slow[1],
            sleep = timeout.as_secs_f64() * 0.6,
        )))
        .await
        .unwrap();

    let mut stuck_lock = WriteLock::hold(&app, &stuck).await;
    let order = [&poisoned, &slow[0], &slow[1], &last];
    let (first, (answers, ())) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), stuck.as_str()),
        async {
            let answers = cancels_in_order(&app, &writer, &group, &order, 1);
            let release = refuse_the_batch(&app, &mut admin, &mut stuck_lock, order.len(), lock);
            tokio::join!(answers, release)
        }
    );

    assert_eq!(first.status, 200, "{first:?}");
    answers[0].assert_error(500, "INTERNAL_ERROR");
    for (answer, scan) in answers[1..3].iter().zip(&slow) {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(app.status_of(scan).await, ScanStatus::Cancelled);
    }
    // The two slow writes took 1.2 timeouts: the last one's turn came too late to start.
    answers[3].assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(app.status_of(&last).await, ScanStatus::Running);
    assert_eq!(
        app.store.scan_events(&last).await.unwrap().len(),
        events_of_last
    );
}
store_test!(
    writes_one_by_one_start_within_the_timeout_of_the_refusal,
    postgres_only
);

/// When a write on its own finds the database away, the batch's requests still waiting for
/// theirs are answered 502 at once and never written: each would otherwise wait out the timeout in
/// turn. The batch is four cancels: a poisoned scan (its trigger refuses it, so the batch is
/// written again one by one), a scan whose write on its own loses its connection (its trigger
/// waits on a lock, and the test terminates that session), and two more, which the database
/// could still have written. (PostgreSQL only: SQLite has no session to terminate.)
async fn a_write_on_its_own_that_loses_the_database_answers_the_rest_at_once(backend: Backend) {
    use sqlx::Executor;
    let timeout = DB_TIMEOUT * 4;
    let (app, group, writer) = one_batch_at_a_time(backend, timeout).await;
    let stuck = app.scan(&group, ScanStatus::Running).await;
    let poisoned = app.scan(&group, ScanStatus::Running).await;
    let dropped = app.scan(&group, ScanStatus::Running).await;
    let rest = [
        app.scan(&group, ScanStatus::Running).await,
        app.scan(&group, ScanStatus::Running).await,
    ];
    let events_of_rest = app.store.scan_events(&rest[0]).await.unwrap().len();
    let (batch_lock, dropped_lock): (i64, i64) = (2_427, 2_428);
    let mut admin = poison_the_batch(&app, &poisoned, batch_lock).await;
    // The dropped scan's write waits on the second lock once the batch is refused: its write
    // on its own.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE FUNCTION hang() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF (SELECT refused FROM refused) THEN
                     PERFORM pg_advisory_xact_lock({dropped_lock});
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER hang BEFORE UPDATE ON signal_scans
             FOR EACH ROW WHEN (OLD.id = '{dropped}') EXECUTE FUNCTION hang();
             SELECT pg_advisory_lock({dropped_lock});"
        )))
        .await
        .unwrap();

    let mut stuck_lock = WriteLock::hold(&app, &stuck).await;
    let order = [&poisoned, &dropped, &rest[0], &rest[1]];
    let (first, (answers, ())) = tokio::join!(
        app.cancel(Some(&writer), group.as_str(), stuck.as_str()),
        async {
            let answers = cancels_in_order(&app, &writer, &group, &order, 1);
            let cut = async {
                refuse_the_batch(&app, &mut admin, &mut stuck_lock, order.len(), batch_lock).await;
                let session = until_waiting_on(&mut admin, dropped_lock).await;
                let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(session)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
                assert!(terminated);
            };
            tokio::join!(answers, cut)
        }
    );

    assert_eq!(first.status, 200, "{first:?}");
    answers[0].assert_error(500, "INTERNAL_ERROR");
    answers[1].assert_error(502, "UPSTREAM_ERROR");
    assert_eq!(app.status_of(&dropped).await, ScanStatus::Running);
    for (answer, scan) in answers[2..].iter().zip(&rest) {
        answer.assert_error(502, "UPSTREAM_ERROR");
        assert_eq!(app.status_of(scan).await, ScanStatus::Running);
        assert_eq!(
            app.store.scan_events(scan).await.unwrap().len(),
            events_of_rest
        );
    }
}
store_test!(
    a_write_on_its_own_that_loses_the_database_answers_the_rest_at_once,
    postgres_only
);
