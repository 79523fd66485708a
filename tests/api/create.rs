//! Starting a scan over HTTP: `POST …/signals/scans`, its body rule and its Idempotency-Key.

use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::process::ServerProcess;
use crate::helpers::{Backend, IDEMPOTENCY_422, TestApp, group, scans_path};
use crate::store_test;

/// How many scans `group` has, read from the store.
async fn scans_of(app: &TestApp, group: &signal_scans::domain::ids::AccountGroupId) -> usize {
    let query = signal_scans::domain::scan::ScanPageQuery {
        status: None,
        limit: 100,
        after: None,
    };
    app.store.list_scans(group, &query).await.unwrap().len()
}

/// `POST …/signals/scans` with `key`, `idempotency_key` and a JSON `body` when given.
async fn create(
    app: &TestApp,
    key: &str,
    group: &str,
    idempotency_key: Option<&str>,
) -> crate::helpers::ApiResponse {
    let mut request = app
        .client
        .post(app.url(&scans_path(group)))
        .bearer_auth(key);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    crate::helpers::ApiResponse::of(request).await
}

async fn creating_a_scan_answers_201_with_its_location_and_the_queued_scan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (key, key_id) = app.key_for(&[Permission::SignalsWrite], &[group]).await;

    let response = create(&app, &key, group.as_str(), None).await;

    assert_eq!(response.status, 201, "{response:?}");
    let scan_id = response.body["data"]["scanId"].as_str().unwrap().to_owned();
    assert_eq!(
        response.header("location"),
        Some(format!("/v1/accounts/{group}/signals/scans/{scan_id}").as_str())
    );
    assert_eq!(response.header("idempotent-replayed"), None);
    // The same scan as GET shows it.
    let shown = app
        .get(
            &key,
            &format!("/v1/accounts/{group}/signals/scans/{scan_id}"),
        )
        .await;
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(shown.body["data"], response.body["data"]);
    assert_eq!(response.body["data"]["status"], "queued");
    for moment in ["startedAt", "finishedAt", "cancelledAt"] {
        assert!(response.body["data"][moment].is_null(), "{response:?}");
    }
    // One audit row, from nothing to queued, naming the key and the request.
    let scan = signal_scans::domain::ids::ScanId::parse(&scan_id).unwrap();
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].from, None);
    assert_eq!(events[0].to, ScanStatus::Queued);
    assert_eq!(events[0].api_key_id, Some(key_id));
    assert_eq!(events[0].trace_id.as_deref(), Some(response.trace_id()));
}
store_test!(creating_a_scan_answers_201_with_its_location_and_the_queued_scan);

async fn a_creation_takes_no_body_or_an_empty_object_and_refuses_anything_else(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let path = scans_path(group.as_str());

    for accepted in ["", "{}", " { } \n"] {
        let response = app.post(&key, &path, Some(accepted)).await;
        assert_eq!(response.status, 201, "{accepted:?}: {response:?}");
    }
    for (refused, named) in [
        (r#"{"status":"running"}"#, "unknown field `status`"),
        ("[]", "must be empty or a JSON object"),
        ("\"scan\"", "must be empty or a JSON object"),
        ("not json", "must be empty or a JSON object"),
        ("{", "must be empty or a JSON object"),
        // A form feed is not whitespace to JSON.
        ("\u{c}{}", "must be empty or a JSON object"),
    ] {
        let response = app.post(&key, &path, Some(refused)).await;
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(details.contains(named), "{refused:?}: {details}");
    }
    // An object broken off says where.
    let broken = app.post(&key, &path, Some("{")).await;
    assert_eq!(
        broken.assert_error(400, "VALIDATION_ERROR"),
        "request body must be empty or a JSON object: EOF while parsing an object at line 1 column 1"
    );
    // Only the three accepted requests created anything.
    assert_eq!(scans_of(&app, &group).await, 3);
}
store_test!(a_creation_takes_no_body_or_an_empty_object_and_refuses_anything_else);

async fn a_field_name_is_echoed_short_whatever_its_length(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let long_field = "f".repeat(30_000);

    let response = app
        .post(
            &key,
            &scans_path(group.as_str()),
            Some(&format!(r#"{{"{long_field}":1}}"#)),
        )
        .await;

    let details = response.assert_error(400, "VALIDATION_ERROR");
    assert!(details.len() < 200, "{} bytes of details", details.len());
    assert_eq!(scans_of(&app, &group).await, 0);
}
store_test!(a_field_name_is_echoed_short_whatever_its_length);

async fn a_repeated_idempotency_key_answers_the_first_scan_again_and_creates_nothing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let other_key = app.writer(&group).await;

    let first = create(&app, &key, group.as_str(), Some("retry-me-1")).await;
    // The group in capitals is the same group: a replay, answered in lowercase.
    let upper_group = group.as_str().to_uppercase();
    let again = create(&app, &key, &upper_group, Some("retry-me-1")).await;
    let by_another_key = create(&app, &other_key, group.as_str(), Some("retry-me-1")).await;
    let another = create(&app, &key, group.as_str(), Some("retry-me-2")).await;

    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.body["data"], first.body["data"]);
    assert_ne!(again.trace_id(), first.trace_id());
    // Keys are per API key: another key's same string is a new request.
    assert_eq!(by_another_key.status, 201);
    assert_eq!(by_another_key.header("idempotent-replayed"), None);
    assert_ne!(
        by_another_key.body["data"]["scanId"],
        first.body["data"]["scanId"]
    );
    assert_ne!(another.body["data"]["scanId"], first.body["data"]["scanId"]);
    assert_eq!(scans_of(&app, &group).await, 3);
}
store_test!(a_repeated_idempotency_key_answers_the_first_scan_again_and_creates_nothing);

async fn a_replay_answers_the_first_answer_even_after_the_scan_moved(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let first = create(&app, &key, group.as_str(), Some("k")).await;
    let scan = first.body["data"]["scanId"].as_str().unwrap().to_owned();
    assert_eq!(
        app.cancel(Some(&key), group.as_str(), &scan).await.status,
        200
    );

    let again = create(&app, &key, group.as_str(), Some("k")).await;

    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["data"], first.body["data"]);
    assert_eq!(again.body["data"]["status"], "queued");
}
store_test!(a_replay_answers_the_first_answer_even_after_the_scan_moved);

/// A creation is logged once, `scan created` with the scan's id on its request's trace id, and
/// its replay is not (a replay starts nothing): an operator who counts the scans started from the
/// logs counts scans, not retries. No other test reads the line, so a handler that logged
/// replays instead of creations passed the suite.
async fn a_creation_is_logged_once_and_its_replay_is_not(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let create = || {
        reqwest::Client::new()
            .post(server.url(&scans_path(group.as_str())))
            .bearer_auth(&key)
            .header("idempotency-key", "logged-once")
    };

    let first = crate::helpers::ApiResponse::of(create()).await;
    let again = crate::helpers::ApiResponse::of(create()).await;
    // The replay's own request line comes after anything its handler logged.
    let events = server
        .until_logged(|event| {
            event["message"] == "finished processing request"
                && event["span"]["trace.id"] == again.trace_id()
        })
        .await;

    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{again:?}"
    );
    let created: Vec<&serde_json::Value> = events
        .iter()
        .filter(|event| event["message"] == "scan created")
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0]["scan.id"], first.body["data"]["scanId"]);
    assert_eq!(created[0]["span"]["trace.id"], first.trace_id());
}
store_test!(a_creation_is_logged_once_and_its_replay_is_not);

/// A creation runs in a task of its own (a client leaving cannot drop its hint), in its request's
/// span: a line written inside it, here sqlx's warning of a slow insert, carries the request's
/// trace id (the diff review: spawned bare, the task's lines had none). PostgreSQL: a trigger
/// makes the insert slow.
async fn a_creations_own_lines_carry_its_requests_trace_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    crate::helpers::slow_scan_inserts(&app, 1.2).await;
    let server =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("DB_TIMEOUT_MS", "5000")]).await;

    let created = server.post(&key, &scans_path(group.as_str())).await;
    let slow = |event: &serde_json::Value| {
        event["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("slow statement"))
    };
    let events = server.until_logged(slow).await;

    assert_eq!(created.status, 201, "{created:?}");
    let warned = events.iter().find(|event| slow(event)).unwrap();
    assert_eq!(warned["span"]["trace.id"], created.trace_id(), "{warned:#}");
}
store_test!(
    a_creations_own_lines_carry_its_requests_trace_id,
    postgres_only
);

async fn an_idempotency_key_reused_for_another_group_is_422_naming_the_header(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group_a, group_b) = (group(), group());
    let (key, _) = app
        .key_for(&[Permission::SignalsWrite], &[group_a, group_b])
        .await;
    assert_eq!(
        create(&app, &key, group_a.as_str(), Some("k")).await.status,
        201
    );

    let response = create(&app, &key, group_b.as_str(), Some("k")).await;

    let details = response.assert_error(422, "VALIDATION_ERROR");
    assert_eq!(
        details,
        "Idempotency-Key was used for another account group within 24 hours; send a new key"
    );
    assert_eq!(response.body["error"]["message"], IDEMPOTENCY_422);
    assert_eq!(scans_of(&app, &group_b).await, 0);
}
store_test!(an_idempotency_key_reused_for_another_group_is_422_naming_the_header);

async fn a_malformed_idempotency_key_is_400_and_creates_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let longest = "k".repeat(255);
    assert_eq!(
        create(&app, &key, group.as_str(), Some(&longest))
            .await
            .status,
        201
    );

    for malformed in [
        "k".repeat(256),
        "with space".into(),
        String::new(),
        "tab\there".into(),
    ] {
        let response = create(&app, &key, group.as_str(), Some(&malformed)).await;
        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert!(
            details.contains("Idempotency-Key"),
            "{malformed:?}: {details}"
        );
    }
    // The header is checked before the body (the contract's order of checks, step 7).
    let both_bad = app
        .client
        .post(app.url(&scans_path(group.as_str())))
        .bearer_auth(&key)
        .header("idempotency-key", "with space")
        .header("content-type", "application/json")
        .body(r#"{"unknown":1}"#)
        .send()
        .await
        .unwrap();
    let response = crate::helpers::ApiResponse::from(both_bad).await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    let (header, body) = details.split_once("; ").expect("two problems");
    assert!(header.contains("Idempotency-Key"), "{details}");
    assert!(body.contains("unknown field `unknown`"), "{details}");
    // Every part that is wrong is named, in the order of checks: path, header, body.
    let all_bad = app
        .client
        .post(app.url(&scans_path("not-a-group")))
        .bearer_auth(&key)
        .header("idempotency-key", "with space")
        .body("[]")
        .send()
        .await
        .unwrap();
    let response = crate::helpers::ApiResponse::from(all_bad).await;
    let details = response.assert_error(400, "VALIDATION_ERROR");
    let named: Vec<&str> = details.split("; ").collect();
    assert_eq!(named.len(), 3, "{details}");
    assert!(named[0].starts_with("accountGroupId"), "{details}");
    assert!(named[1].contains("Idempotency-Key"), "{details}");
    assert!(named[2].contains("request body"), "{details}");
    assert_eq!(scans_of(&app, &group).await, 1);
}
store_test!(a_malformed_idempotency_key_is_400_and_creates_nothing);

async fn concurrent_requests_with_one_idempotency_key_create_exactly_one_scan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;

    let answers = futures::future::join_all(
        (0..16).map(|_| create(&app, &key, group.as_str(), Some("same-key"))),
    )
    .await;

    assert!(
        answers.iter().all(|answer| answer.status == 201),
        "{answers:?}"
    );
    let first = &answers[0].body["data"]["scanId"];
    assert!(
        answers
            .iter()
            .all(|answer| &answer.body["data"]["scanId"] == first)
    );
    let originals = answers
        .iter()
        .filter(|answer| answer.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(originals, 1, "exactly one request created the scan");
    assert_eq!(scans_of(&app, &group).await, 1);
}
store_test!(concurrent_requests_with_one_idempotency_key_create_exactly_one_scan);

async fn an_idempotency_key_is_forgotten_after_24_hours(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let key = app.writer(&group).await;
    let first = create(&app, &key, group.as_str(), Some("old")).await;
    let _kept = create(&app, &key, group.as_str(), Some("fresh")).await;
    age_key(&app, "old").await;

    // An expired key starts a new scan.
    let later = create(&app, &key, group.as_str(), Some("old")).await;
    assert_eq!(later.status, 201);
    assert_eq!(later.header("idempotent-replayed"), None);
    assert_ne!(later.body["data"]["scanId"], first.body["data"]["scanId"]);

    // And the sweep deletes only keys past their window.
    let store = &app.store;
    age_key(&app, "old").await;
    assert_eq!(store.forget_idempotency_keys(100).await.unwrap(), 1);
    assert_eq!(store.forget_idempotency_keys(100).await.unwrap(), 0);
    let kept = create(&app, &key, group.as_str(), Some("fresh")).await;
    assert_eq!(kept.header("idempotent-replayed"), Some("true"));
}
store_test!(an_idempotency_key_is_forgotten_after_24_hours);

/// The sweep deletes in batches until a batch comes back short: five old keys in batches of two
/// are all forgotten in one sweep (2, 2, 1), and a key within its window is kept.
async fn one_sweep_forgets_every_old_key_however_many_batches_it_takes(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let old = ["a", "b", "c", "d", "e"];
    for name in old {
        create(&app, &key, group.as_str(), Some(name)).await;
        age_key(&app, name).await;
    }
    create(&app, &key, group.as_str(), Some("fresh")).await;
    let service = signal_scans::service::ScanService::new(app.store.clone());

    assert_eq!(service.forget_idempotency_keys(2).await, 5);
    assert_eq!(app.store.forget_idempotency_keys(100).await.unwrap(), 0);
    let kept = create(&app, &key, group.as_str(), Some("fresh")).await;
    assert_eq!(kept.header("idempotent-replayed"), Some("true"));
}
store_test!(one_sweep_forgets_every_old_key_however_many_batches_it_takes);

/// The window is 24 hours, neither less nor more: a key used 23 h 55 min ago still answers its
/// first scan again, one used 24 h 5 min ago starts a new one. A shorter window would let a
/// client's late retry start a second scan; a longer one would refuse a new scan the contract
/// allows.
async fn an_idempotency_key_is_remembered_for_24_hours_and_no_longer(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let first = create(&app, &key, group.as_str(), Some("day")).await;
    let minutes = time::Duration::minutes;

    age_key_by(&app, "day", minutes(24 * 60 - 5)).await;
    let within = create(&app, &key, group.as_str(), Some("day")).await;
    age_key_by(&app, "day", minutes(24 * 60 + 5)).await;
    let after = create(&app, &key, group.as_str(), Some("day")).await;

    assert_eq!(within.status, 201);
    assert_eq!(within.header("idempotent-replayed"), Some("true"));
    assert_eq!(within.body["data"], first.body["data"]);
    assert_eq!(after.status, 201);
    assert_eq!(after.header("idempotent-replayed"), None);
    assert_ne!(after.body["data"]["scanId"], first.body["data"]["scanId"]);
    assert_eq!(scans_of(&app, &group).await, 2);
}
store_test!(an_idempotency_key_is_remembered_for_24_hours_and_no_longer);

/// Makes idempotency key `key` a day and more old, as the database writes instants.
async fn age_key(app: &TestApp, key: &str) {
    age_key_by(app, key, time::Duration::days(9000)).await;
}

/// Makes idempotency key `key` `age` old, as the database writes instants (UTC, microseconds).
async fn age_key_by(app: &TestApp, key: &str, age: time::Duration) {
    let at = time::OffsetDateTime::now_utc() - age;
    let at = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    );
    let age = format!("UPDATE idempotency_keys SET created_at = '{at}' WHERE key = '{key}'");
    app.db.execute(&age).await;
}
