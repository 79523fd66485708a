//! A runner's moves over HTTP (start, complete, fail) with a `signals:run` key, and who may make
//! them: the same guarded statement as a cancel, so a completion racing a cancel has one winner.

use std::time::Duration;

use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::keys::{AccountGroupAccess, Permission};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::locks::{WriteLock, until_waiting};
use crate::helpers::sse::SseStream;
use crate::helpers::{
    ApiResponse, Backend, MOVE_422, Settings, TestApp, group, move_path, scans_path,
};
use crate::races::behind_the_first;
use crate::store_test;

/// `POST …/scans/{scan}/{action}` with `key` and an optional JSON body.
async fn act(
    app: &TestApp,
    key: &str,
    group: &AccountGroupId,
    scan: &ScanId,
    action: &str,
    body: Option<&str>,
) -> ApiResponse {
    app.post(key, &move_path(group.as_str(), scan.as_str(), action), body)
        .await
}

async fn a_runner_starts_then_completes_a_scan_and_a_repeated_move_answers_where_it_is(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (runner, runner_id) = app
        .key_for(&[Permission::SignalsRun, Permission::SignalsRead], &[group])
        .await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    for (action, from, to) in [
        ("start", ScanStatus::Queued, ScanStatus::Running),
        ("complete", ScanStatus::Running, ScanStatus::Completed),
    ] {
        let moved = act(&app, &runner, &group, &scan, action, None).await;
        let again = act(&app, &runner, &group, &scan, action, Some("{}")).await;

        assert_eq!(moved.status, 200, "{moved:?}");
        let data = moved.body["data"].as_object().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["at", "previousStatus", "scanId", "status"]);
        assert_eq!(data["scanId"], scan.as_str());
        assert_eq!(data["status"], to.as_str());
        assert_eq!(data["previousStatus"], from.as_str());
        // Idempotent by state: the same move again says where the scan is, since when.
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.body["data"]["previousStatus"], to.as_str());
        assert_eq!(again.body["data"]["at"], data["at"]);
    }
    let stored = app.store.find_scan(None, &scan).await.unwrap().unwrap();
    assert_eq!(stored.status, ScanStatus::Completed);
    assert!(stored.started_at.is_some() && stored.finished_at.is_some());
    // One audit row per move that changed something, naming the runner's key and request.
    let events = app.store.scan_events(&scan).await.unwrap();
    let moves: Vec<_> = events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        moves,
        [
            (None, ScanStatus::Queued),
            (Some(ScanStatus::Queued), ScanStatus::Running),
            (Some(ScanStatus::Running), ScanStatus::Completed),
        ]
    );
    assert!(events[1..].iter().all(|e| e.api_key_id == Some(runner_id)));
    assert!(events[1..].iter().all(|e| e.trace_id.is_some()));
}
store_test!(a_runner_starts_then_completes_a_scan_and_a_repeated_move_answers_where_it_is);

/// A move is its key's: the runner that made it is answered 200 again (a retry after a lost
/// answer), any other runner 422 with the status the scan is in, so of runners racing to claim a
/// queued scan exactly one is told it is theirs.
async fn a_move_repeated_by_another_runners_key_is_refused_and_by_its_own_answered(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (first, second) = (app.runner(&group).await, app.runner(&group).await);
    let scan = app.scan(&group, ScanStatus::Queued).await;

    for (action, to) in [("start", "running"), ("complete", "completed")] {
        let moved = act(&app, &first, &group, &scan, action, None).await;
        let by_another = act(&app, &second, &group, &scan, action, None).await;
        let again = act(&app, &first, &group, &scan, action, None).await;

        assert_eq!(moved.status, 200, "{moved:?}");
        let details = by_another.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(details, format!("currentStatus={to}"), "{action}");
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.body["data"]["previousStatus"], to);
        assert_eq!(again.body["data"]["at"], moved.body["data"]["at"]);
    }
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 3);

    // A failure too, the ids sent in capitals (answered in lowercase, as on every route).
    let failing = app.scan(&group, ScanStatus::Queued).await;
    let path = |action: &str| {
        let (group, scan) = (group.as_str(), failing.as_str());
        move_path(&group.to_uppercase(), &scan.to_uppercase(), action)
    };
    let reason = Some(r#"{"reason":"target unreachable"}"#);
    assert_eq!(app.post(&first, &path("start"), None).await.status, 200);
    let failed = app.post(&first, &path("fail"), reason).await;
    let by_another = app.post(&second, &path("fail"), reason).await;
    let again = app
        .post(&first, &path("fail"), Some(r#"{"reason":"another"}"#))
        .await;
    assert_eq!(failed.status, 200, "{failed:?}");
    assert_eq!(failed.body["data"]["scanId"], failing.as_str());
    assert_eq!(failed.body["data"]["previousStatus"], "running");
    assert_eq!(
        by_another.assert_error(422, "VALIDATION_ERROR"),
        "currentStatus=failed"
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["data"]["previousStatus"], "failed");
    assert_eq!(again.body["data"]["at"], failed.body["data"]["at"]);
    // Repeated with another reason, it changes nothing: the first reason stays.
    let events = app.store.scan_events(&failing).await.unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2].reason.as_deref(), Some("target unreachable"));

    let runners = futures::future::join_all((0..6).map(|_| app.runner(&group))).await;
    let contested = app.scan(&group, ScanStatus::Queued).await;
    let starts = futures::future::join_all(
        (runners.iter()).map(|runner| act(&app, runner, &group, &contested, "start", None)),
    )
    .await;
    let claimed = starts.iter().filter(|start| start.status == 200).count();
    assert_eq!(claimed, 1, "{starts:?}");
    for refused in starts.iter().filter(|start| start.status != 200) {
        assert_eq!(
            refused.assert_error(422, "VALIDATION_ERROR"),
            "currentStatus=running"
        );
    }
}
store_test!(a_move_repeated_by_another_runners_key_is_refused_and_by_its_own_answered);

/// Two runners of a group, and a scan of it that the first (the claimant) started: (app, group,
/// claimant, other, scan).
async fn a_claimed_scan(backend: Backend) -> (TestApp, AccountGroupId, String, String, ScanId) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (claimant, other) = (app.runner(&group).await, app.runner(&group).await);
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let started = act(&app, &claimant, &group, &scan, "start", None).await;
    assert_eq!(started.status, 200, "{started:?}");
    (app, group, claimant, other, scan)
}

/// A start is a claim: only the key that started a scan finishes it. Another runner's complete or
/// fail is 422 `currentStatus=running` and changes nothing (the runner that lost the start
/// completed the scan under its claimant); the claimant's complete is then 200. A scan that no key
/// started (made running outside HTTP) any runner may finish.
async fn only_the_runner_that_started_a_scan_finishes_it(backend: Backend) {
    let (app, group, claimant, other, scan) = a_claimed_scan(backend).await;

    let completed_by_other = act(&app, &other, &group, &scan, "complete", None).await;
    let reason = Some(r#"{"reason": "mine now"}"#);
    let failed_by_other = act(&app, &other, &group, &scan, "fail", reason).await;
    let status_between = app.status_of(&scan).await;
    let completed = act(&app, &claimant, &group, &scan, "complete", None).await;
    let started_without_key = app.scan(&group, ScanStatus::Running).await;
    let finished = act(&app, &other, &group, &started_without_key, "fail", None).await;

    for refused in [&completed_by_other, &failed_by_other] {
        let details = refused.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(details, "currentStatus=running");
    }
    assert_eq!(status_between, ScanStatus::Running);
    assert_eq!(completed.status, 200, "{completed:?}");
    assert_eq!(completed.body["data"]["previousStatus"], "running");
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 3);
    assert_eq!(finished.status, 200, "{finished:?}");
}
store_test!(only_the_runner_that_started_a_scan_finishes_it);

/// Whose move it was is read from its audit row: once retention has deleted the row of a scan's
/// start, the claim is gone. The starter's own repeat of the start is then nobody's to repeat
/// (422 `currentStatus=running`, not the 200 of a retry), and any runner may finish the scan, so
/// a scan whose claimant vanished with its history is not stuck running for ever.
async fn once_retention_deleted_a_start_any_runner_may_finish_the_scan(backend: Backend) {
    let (app, group, claimant, other, scan) = a_claimed_scan(backend).await;
    // Retention with every row older than its cutoff: the whole trail goes, the start with it.
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::minutes(1);
    assert_eq!(app.store.trim_audit(cutoff, 100).await.unwrap(), 2);

    let repeated = act(&app, &claimant, &group, &scan, "start", None).await;
    let completed = act(&app, &other, &group, &scan, "complete", None).await;

    assert_eq!(
        repeated.assert_error(422, "VALIDATION_ERROR"),
        "currentStatus=running"
    );
    assert_eq!(completed.status, 200, "{completed:?}");
    assert_eq!(completed.body["data"]["previousStatus"], "running");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Completed);
}
store_test!(once_retention_deleted_a_start_any_runner_may_finish_the_scan);

async fn a_move_the_state_machine_refuses_is_422_with_the_current_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let runner = app.runner(&group).await;
    for (status, action) in [
        (ScanStatus::Queued, "complete"),
        (ScanStatus::Queued, "fail"),
        (ScanStatus::Completed, "start"),
        (ScanStatus::Completed, "fail"),
        (ScanStatus::Failed, "complete"),
        (ScanStatus::Cancelled, "start"),
        (ScanStatus::Cancelled, "complete"),
        (ScanStatus::Cancelled, "fail"),
    ] {
        let scan = app.scan(&group, status).await;

        let response = act(&app, &runner, &group, &scan, action, None).await;

        let details = response.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(
            details,
            format!("currentStatus={status}"),
            "{action} a {status} scan"
        );
        // The move's own words: a cancel's ("not in a cancellable status") would mislead.
        assert_eq!(response.body["error"]["message"], MOVE_422);
        assert_eq!(app.status_of(&scan).await, status);
        assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 1);
    }
}
store_test!(a_move_the_state_machine_refuses_is_422_with_the_current_status);

async fn a_failure_keeps_its_reason_in_the_events_and_the_reason_is_bounded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let runner = app.runner(&group).await;
    let longest = "é".repeat(1000);
    let with_reason = app.scan(&group, ScanStatus::Running).await;
    let without = app.scan(&group, ScanStatus::Running).await;
    let refused_scan = app.scan(&group, ScanStatus::Running).await;

    for (body, named) in [
        (
            format!(r#"{{"reason":"{}"}}"#, "x".repeat(1001)),
            "reason must be 1 to 1000 characters; it is 1001",
        ),
        (
            r#"{"reason":""}"#.to_owned(),
            "reason must be 1 to 1000 characters; it is 0",
        ),
        (
            r#"{"reason":"disk\u0000full"}"#.to_owned(),
            "reason must not contain the NUL character (U+0000)",
        ),
        (r#"{"reason":7}"#.to_owned(), "request body: invalid type"),
        (
            "null".to_owned(),
            "request body must be empty or a JSON object",
        ),
        (r#"{"why":"x"}"#.to_owned(), "unknown field `why`"),
        // A key given twice is refused, not settled by the last one.
        (
            r#"{"reason":"disk full","reason":"ok"}"#.to_owned(),
            "request body: duplicate field `reason`",
        ),
        // A broken object says where it broke.
        (
            r#"{"reason":"disk full""#.to_owned(),
            "request body must be empty or a JSON object: EOF while parsing an object at line 1",
        ),
    ] {
        let response = act(&app, &runner, &group, &refused_scan, "fail", Some(&body)).await;
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(details.contains(named), "{details}");
    }
    // A malformed scan id and a bad reason are both named.
    let response = app
        .post(
            &runner,
            &format!("/v1/accounts/{group}/signals/scans/nope/fail"),
            Some(r#"{"reason":""}"#),
        )
        .await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    assert!(
        details.starts_with("scanId ")
            && details.ends_with("; reason must be 1 to 1000 characters; it is 0"),
        "{details}"
    );
    // start and complete take no reason.
    let response = act(
        &app,
        &runner,
        &group,
        &refused_scan,
        "complete",
        Some(r#"{"reason":"x"}"#),
    )
    .await;
    response.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(app.status_of(&refused_scan).await, ScanStatus::Running);

    let failed = act(
        &app,
        &runner,
        &group,
        &with_reason,
        "fail",
        Some(&format!(r#"{{"reason":"{longest}"}}"#)),
    )
    .await;
    let bare = act(&app, &runner, &group, &without, "fail", None).await;

    assert_eq!(failed.status, 200, "{failed:?}");
    assert_eq!(failed.body["data"]["status"], "failed");
    assert_eq!(bare.status, 200, "{bare:?}");
    let events = app
        .get(
            &runner,
            &format!("/v1/accounts/{group}/signals/scans/{with_reason}/events"),
        )
        .await;
    assert_eq!(events.body["data"]["events"][1]["reason"], longest.as_str());
    assert!(events.body["data"]["events"][0]["reason"].is_null());
    let events = app
        .get(
            &runner,
            &format!("/v1/accounts/{group}/signals/scans/{without}/events"),
        )
        .await;
    assert!(
        events.body["data"]["events"][1]["reason"].is_null(),
        "{events:?}"
    );
}
store_test!(a_failure_keeps_its_reason_in_the_events_and_the_reason_is_bounded);

/// Each permission opens exactly its own routes: `signals:run` the runner's moves,
/// `signals:write` creating and cancelling, `signals:read` (or write) reading.
async fn each_permission_allows_its_own_routes_and_nothing_else(backend: Backend) {
    use Permission::{SignalsRead as R, SignalsRun as X, SignalsWrite as W};
    let app = TestApp::spawn(backend).await;
    let group = group();
    for permissions in [&[R][..], &[W], &[X], &[R, W], &[R, X], &[W, X], &[R, W, X]] {
        let (key, _) = app
            .key_with(permissions, AccountGroupAccess::Only(vec![group]), None)
            .await;
        let has = |permission| permissions.contains(&permission);
        let expect = |allowed: bool, ok: u16| if allowed { ok } else { 403 };
        let queued = app.scan(&group, ScanStatus::Queued).await;
        let running = app.scan(&group, ScanStatus::Running).await;

        let answers = [
            (
                "create",
                app.post(&key, &scans_path(group.as_str()), None).await,
                expect(has(W), 201),
            ),
            (
                "cancel",
                app.cancel(Some(&key), group.as_str(), queued.as_str())
                    .await,
                expect(has(W), 200),
            ),
            (
                "start",
                act(
                    &app,
                    &key,
                    &group,
                    &app.scan(&group, ScanStatus::Queued).await,
                    "start",
                    None,
                )
                .await,
                expect(has(X), 200),
            ),
            (
                "complete",
                act(&app, &key, &group, &running, "complete", None).await,
                expect(has(X), 200),
            ),
            (
                "fail",
                act(
                    &app,
                    &key,
                    &group,
                    &app.scan(&group, ScanStatus::Running).await,
                    "fail",
                    None,
                )
                .await,
                expect(has(X), 200),
            ),
            (
                "get",
                app.get(
                    &key,
                    &format!("/v1/accounts/{group}/signals/scans/{running}"),
                )
                .await,
                expect(has(R) || has(W), 200),
            ),
        ];

        for (route, answer, status) in answers {
            assert_eq!(
                answer.status.as_u16(),
                status,
                "{route} with {permissions:?}: {answer:?}"
            );
            if status == 403 {
                let needed = match route {
                    "create" | "cancel" => "signals:write",
                    "get" => "signals:read or signals:write",
                    _ => "signals:run",
                };
                assert_eq!(
                    answer.assert_error(403, "FORBIDDEN"),
                    format!("API key lacks the {needed} permission"),
                    "{route} with {permissions:?}"
                );
            }
        }
    }
}
store_test!(each_permission_allows_its_own_routes_and_nothing_else);

async fn a_runner_of_one_group_cannot_move_nor_see_another_groups_scan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let runner = app.runner(&mine).await;
    let their_scan = app.scan(&theirs, ScanStatus::Queued).await;

    let by_their_group = act(&app, &runner, &theirs, &their_scan, "start", None).await;
    let by_my_group = act(&app, &runner, &mine, &their_scan, "start", None).await;

    by_their_group.assert_error(403, "FORBIDDEN");
    let details = by_my_group.assert_error(404, "NOT_FOUND");
    assert_eq!(details, "no such scan in this account group");
    assert_eq!(app.status_of(&their_scan).await, ScanStatus::Queued);
}
store_test!(a_runner_of_one_group_cannot_move_nor_see_another_groups_scan);

/// A cancel and a runner's completion, both over HTTP, wait behind another session's write lock
/// in a chosen order: whichever goes first wins, and the other is told the winner's status.
async fn a_completion_racing_a_cancel_over_http_has_exactly_one_winner_either_way(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let runner = app.runner(&group).await;
    // Both keys are cached from here on: each request's first database work is its write.
    let warm_up = app.scan(&group, ScanStatus::Running).await;
    assert_eq!(
        act(&app, &runner, &group, &warm_up, "complete", None)
            .await
            .status,
        200
    );
    assert_eq!(
        app.cancel(Some(&writer), group.as_str(), warm_up.as_str())
            .await
            .status,
        422
    );

    for cancel_first in [true, false] {
        let scan = app.scan(&group, ScanStatus::Running).await;
        let mut lock = WriteLock::hold(&app, &scan).await;
        let cancel = app.cancel(Some(&writer), group.as_str(), scan.as_str());
        let completion = act(&app, &runner, &group, &scan, "complete", None);

        let (cancelled, completed) = match cancel_first {
            true => tokio::join!(cancel, async {
                until_waiting(&app, 1).await;
                behind_the_first(completion, &app, &mut lock).await
            }),
            false => {
                let (completed, cancelled) = tokio::join!(completion, async {
                    until_waiting(&app, 1).await;
                    behind_the_first(cancel, &app, &mut lock).await
                });
                (cancelled, completed)
            }
        };

        let stored = app.status_of(&scan).await;
        match cancel_first {
            true => {
                assert_eq!(cancelled.status, 200, "{cancelled:?}");
                let details = completed.assert_error(422, "VALIDATION_ERROR");
                assert_eq!(details, "currentStatus=cancelled");
                assert_eq!(stored, ScanStatus::Cancelled);
            }
            false => {
                assert_eq!(completed.status, 200, "{completed:?}");
                assert_eq!(completed.body["data"]["previousStatus"], "running");
                let details = cancelled.assert_error(422, "VALIDATION_ERROR");
                assert_eq!(details, "currentStatus=completed");
                assert_eq!(stored, ScanStatus::Completed);
            }
        }
        assert_eq!(
            app.store.scan_events(&scan).await.unwrap().len(),
            2,
            "one change only"
        );
    }
}
store_test!(a_completion_racing_a_cancel_over_http_has_exactly_one_winner_either_way);

/// A finish of a queued scan is refused by the claim check, before its write: let through to the
/// write (which would refuse queued → completed too), it would wait there behind a start by
/// another runner and then finish that runner's claim. The claimant's start waits behind a lock;
/// the other runner's complete, sent meanwhile, is answered 422 `currentStatus=queued` without
/// waiting; the start then goes through, and the scan is the claimant's to finish.
async fn a_finish_of_a_queued_scan_is_refused_before_a_racing_start_commits(backend: Backend) {
    // The start may wait out the window below and still commit.
    let app = Settings::default()
        .with_db_timeout(Duration::from_secs(10))
        .with_request_timeout(Duration::from_secs(60))
        .spawn(backend)
        .await;
    let group = group();
    let (claimant, other) = (app.runner(&group).await, app.runner(&group).await);
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let mut lock = WriteLock::hold(&app, &scan).await;

    let (started, completed) =
        tokio::join!(act(&app, &claimant, &group, &scan, "start", None), async {
            until_waiting(&app, 1).await;
            let complete = act(&app, &other, &group, &scan, "complete", None);
            tokio::pin!(complete);
            // Answered at once when refused before its write; if it waits on the write instead, the
            // start goes first, as when it commits between the check and the write.
            let early = tokio::time::timeout(Duration::from_secs(8), &mut complete).await;
            lock.release().await;
            match early {
                Ok(answer) => answer,
                Err(_) => complete.await,
            }
        });

    assert_eq!(started.status, 200, "{started:?}");
    let details = completed.assert_error(422, "VALIDATION_ERROR");
    assert_eq!(details, "currentStatus=queued");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
    let finished = act(&app, &claimant, &group, &scan, "complete", None).await;
    assert_eq!(finished.status, 200, "{finished:?}");
}
store_test!(a_finish_of_a_queued_scan_is_refused_before_a_racing_start_commits);

/// A scan started, run and failed over HTTP reaches a runner's stream as three changes, in order,
/// the creation (from null) first and the failure with its reason.
async fn a_scan_created_started_and_failed_over_http_reaches_the_stream_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let runner = app.runner(&group).await;
    let url = app.url(&format!("/v1/accounts/{group}/signals/scans/changes"));
    let mut stream = SseStream::open(reqwest::Client::new().get(url).bearer_auth(&runner))
        .await
        .expect("the stream opens");
    let soon = Duration::from_secs(30);
    let _retry = stream.next_frame(soon).await;

    let created = app.post(&writer, &scans_path(group.as_str()), None).await;
    assert_eq!(created.status, 201, "{created:?}");
    let scan = ScanId::parse(created.body["data"]["scanId"].as_str().unwrap()).unwrap();
    assert_eq!(
        act(&app, &runner, &group, &scan, "start", None)
            .await
            .status,
        200
    );
    let failed = act(
        &app,
        &runner,
        &group,
        &scan,
        "fail",
        Some(r#"{"reason":"disk full"}"#),
    )
    .await;
    assert_eq!(failed.status, 200, "{failed:?}");

    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(stream.next_event(soon).await.json());
    }
    let moves: Vec<(&serde_json::Value, &serde_json::Value)> = heard
        .iter()
        .map(|event| (&event["from"], &event["to"]))
        .collect();
    assert_eq!(
        moves,
        [
            (&serde_json::Value::Null, &"queued".into()),
            (&"queued".into(), &"running".into()),
            (&"running".into(), &"failed".into()),
        ]
    );
    assert!(heard.iter().all(|event| event["scanId"] == scan.as_str()));
    assert_eq!(heard[2]["reason"], "disk full");
    assert!(heard[0]["reason"].is_null() && heard[1]["reason"].is_null());
    assert_eq!(heard[0]["traceId"], created.trace_id());
    assert_eq!(heard[2]["traceId"], failed.trace_id());
}
store_test!(a_scan_created_started_and_failed_over_http_reaches_the_stream_in_order);
