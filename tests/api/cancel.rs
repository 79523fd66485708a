//! The cancel endpoint's outcomes, as the contract states them.

use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{ApiResponse, Backend, CANCEL_422, TestApp, group};
use crate::store_test;

async fn cancel_of_queued_scan_answers_200_with_previous_status(backend: Backend) {
    for status in [ScanStatus::Queued, ScanStatus::Running] {
        // Arrange
        let (app, group, key) = TestApp::with_writer(backend).await;
        let scan = app.scan(&group, status).await;

        // Act
        let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

        // Assert
        assert_eq!(response.status, 200, "{response:?}");
        let data = response.body["data"].as_object().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["cancelledAt", "previousStatus", "scanId", "status"]);
        assert_eq!(data["scanId"], scan.as_str());
        assert_eq!(data["status"], "cancelled");
        assert_eq!(data["previousStatus"], status.as_str());
        let cancelled_at = data["cancelledAt"].as_str().unwrap();
        assert!(cancelled_at.ends_with('Z'), "UTC: {cancelled_at}");
        let cancelled_at = OffsetDateTime::parse(cancelled_at, &Rfc3339).unwrap();
        // The database's clock against the database's clock: the stored moment, after creation.
        let stored = app.store.find_scan(None, &scan).await.unwrap().unwrap();
        assert_eq!(Some(cancelled_at), stored.cancelled_at);
        assert!(cancelled_at >= stored.created_at, "{stored:?}");
        assert_eq!(stored.status, ScanStatus::Cancelled);
    }
}
store_test!(cancel_of_queued_scan_answers_200_with_previous_status);

async fn repeated_cancel_answers_200_with_the_original_cancelled_at(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let first = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;
    let second = app.cancel_ok(&key, &group, &scan).await;
    assert_eq!(second.body["data"]["previousStatus"], "cancelled");
    assert_eq!(second.body["data"]["status"], "cancelled");
    assert_eq!(
        second.body["data"]["cancelledAt"],
        first.body["data"]["cancelledAt"]
    );
    // Only the first request changed anything.
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(events.len(), 2, "creation and one cancel: {events:?}");
}
store_test!(repeated_cancel_answers_200_with_the_original_cancelled_at);

async fn cancel_of_a_scan_created_cancelled_answers_its_cancelled_at(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Cancelled).await;
    let stored = app.store.find_scan(None, &scan).await.unwrap().unwrap();

    let response = app.cancel_ok(&key, &group, &scan).await;
    assert_eq!(response.body["data"]["previousStatus"], "cancelled");
    let answered = OffsetDateTime::parse(
        response.body["data"]["cancelledAt"].as_str().unwrap(),
        &Rfc3339,
    )
    .unwrap();
    assert_eq!(Some(answered), stored.cancelled_at);
}
store_test!(cancel_of_a_scan_created_cancelled_answers_its_cancelled_at);

async fn cancel_of_completed_or_failed_scan_is_422_with_current_status(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    for status in [ScanStatus::Completed, ScanStatus::Failed] {
        let scan = app.scan(&group, status).await;

        let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

        let details = response.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(details, format!("currentStatus={status}"));
        assert_eq!(response.body["error"]["message"], CANCEL_422);
        assert_eq!(app.status_of(&scan).await, status, "nothing changed");
        assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 1);
    }
}
store_test!(cancel_of_completed_or_failed_scan_is_422_with_current_status);

async fn cancel_writes_one_audit_row_naming_key_and_trace(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let (key, key_id) = app.key_for(&[Permission::SignalsWrite], &[group]).await;
    let scan = app.scan(&group, ScanStatus::Running).await;

    let response = app.cancel(Some(&key), group.as_str(), scan.as_str()).await;

    assert_eq!(response.status, 200);
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let (created, cancelled) = (&events[0], &events[1]);
    assert_eq!((created.from, created.to), (None, ScanStatus::Running));
    assert_eq!(
        (cancelled.from, cancelled.to),
        (Some(ScanStatus::Running), ScanStatus::Cancelled)
    );
    assert_eq!(cancelled.api_key_id, Some(key_id));
    assert_eq!(cancelled.trace_id.as_deref(), Some(response.trace_id()));
    let cancelled_at = app
        .store
        .find_scan(None, &scan)
        .await
        .unwrap()
        .unwrap()
        .cancelled_at;
    assert_eq!(Some(cancelled.at), cancelled_at);
}
store_test!(cancel_writes_one_audit_row_naming_key_and_trace);

async fn ids_are_accepted_in_either_case_and_answered_lowercase(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let response = app
        .cancel(
            Some(&key),
            &group.as_str().to_uppercase(),
            &scan.as_str().to_uppercase(),
        )
        .await;

    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body["data"]["scanId"], scan.as_str());
}
store_test!(ids_are_accepted_in_either_case_and_answered_lowercase);

async fn malformed_ids_are_400_naming_the_parameter(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let long = "a".repeat(25);
    let cases: [(&str, &str, &str); 6] = [
        ("507f1f77bcf86cd79943901", scan.as_str(), "accountGroupId"),
        ("507f1f77bcf86cd79943901z", scan.as_str(), "accountGroupId"),
        (group.as_str(), "507f1f77bcf86cd79943901", "scanId"),
        (group.as_str(), &long, "scanId"),
        (group.as_str(), "%20%20%20", "scanId"),
        (group.as_str(), "%F0%9F%92%A9", "scanId"),
    ];
    for (group_param, scan_param, named) in cases {
        let response = app.cancel(Some(&key), group_param, scan_param).await;

        let details = response.assert_error(400, "VALIDATION_ERROR");
        assert_eq!(
            details,
            format!("{named} must be 24 hexadecimal characters"),
            "{scan_param}"
        );
    }
    let both = app.cancel(Some(&key), "x", "y").await;
    let details = both.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(
        details,
        "accountGroupId must be 24 hexadecimal characters; \
         scanId must be 24 hexadecimal characters"
    );
    assert_eq!(
        app.status_of(&scan).await,
        ScanStatus::Queued,
        "nothing changed"
    );
}
store_test!(malformed_ids_are_400_naming_the_parameter);

async fn invalid_percent_encoding_is_a_400_envelope(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;

    let response = app.cancel(Some(&key), group.as_str(), "%FF%FE").await;

    let details = response.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(
        details,
        "path parameters must be valid percent-encoded UTF-8"
    );
}
store_test!(invalid_percent_encoding_is_a_400_envelope);

async fn unknown_scan_and_other_groups_scan_are_both_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mine, theirs) = (group(), group());
    let key = app.writer(&mine).await;
    let their_scan = app.scan(&theirs, ScanStatus::Queued).await;
    let nobody = signal_scans::domain::ids::ScanId::generate();

    let unknown = app.cancel(Some(&key), mine.as_str(), nobody.as_str()).await;
    let foreign = app
        .cancel(Some(&key), mine.as_str(), their_scan.as_str())
        .await;

    let unknown_details = unknown.assert_error(404, "NOT_FOUND");
    let foreign_details = foreign.assert_error(404, "NOT_FOUND");
    assert_eq!(unknown_details, foreign_details, "indistinguishable");
    assert_eq!(app.status_of(&their_scan).await, ScanStatus::Queued);
}
store_test!(unknown_scan_and_other_groups_scan_are_both_404);

async fn unknown_routes_and_methods_answer_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let unknown =
        crate::helpers::ApiResponse::of(app.client.get(app.url("/v1/nothing/here"))).await;
    unknown.assert_error(404, "NOT_FOUND");

    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let wrong_method = crate::helpers::ApiResponse::of(app.client.request(
            method.clone(),
            app.url(&crate::helpers::cancel_path(group.as_str(), scan.as_str())),
        ))
        .await;
        let details = wrong_method.assert_error(405, "METHOD_NOT_ALLOWED");
        assert!(details.contains(method.as_str()), "{details}");
        assert_eq!(wrong_method.header("allow"), Some("POST"));
    }
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(unknown_routes_and_methods_answer_the_envelope);

/// Every route but the cancel (above), sent another method (with a valid key, so only the
/// method is wrong): 405 with `Allow` naming what the path does accept, and nothing changes.
async fn every_route_answers_405_with_allow_for_other_methods(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let base = format!("/v1/accounts/{group}/signals/scans");
    const GET: &[&str] = &["GET", "HEAD"];
    const POST: &[&str] = &["POST"];

    for (path, accepted) in [
        (format!("{base}/{scan}"), GET),
        (format!("{base}/{scan}/events"), GET),
        (base.clone(), &["GET", "HEAD", "POST"][..]),
        (format!("{base}/changes"), GET),
        (format!("{base}/cancel"), POST),
        (format!("{base}/{scan}/start"), POST),
        (format!("{base}/{scan}/complete"), POST),
        (format!("{base}/{scan}/fail"), POST),
        ("/healthz".into(), GET),
        ("/readyz".into(), GET),
        ("/metrics".into(), GET),
        ("/openapi.json".into(), GET),
    ] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
        ] {
            if accepted.contains(&method.as_str()) {
                continue;
            }
            let response = crate::helpers::ApiResponse::of(
                app.client
                    .request(method.clone(), app.url(&path))
                    .bearer_auth(&key),
            )
            .await;

            let details = response.assert_error(405, "METHOD_NOT_ALLOWED");
            assert!(details.contains(method.as_str()), "{path}: {details}");
            let allow = response.header("allow").unwrap_or_default();
            let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
            allowed.sort_unstable();
            assert_eq!(allowed, accepted, "{method} {path}");
        }
    }
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
    assert_eq!(app.store.scan_events(&scan).await.unwrap().len(), 1);
}
store_test!(every_route_answers_405_with_allow_for_other_methods);

async fn a_request_body_is_ignored(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let response = crate::helpers::ApiResponse::of(
        app.client
            .post(app.url(&crate::helpers::cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(r#"{"status":"completed"}"#),
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.body["data"]["previousStatus"], "queued");
}
store_test!(a_request_body_is_ignored);

/// The cancel reads no query string and takes no idempotency key: what the list refuses, and
/// what a creation replays by, changes nothing here (a client library adding either to every POST
/// still cancels).
async fn a_query_string_and_an_idempotency_key_are_ignored(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let path = |scan: &signal_scans::domain::ids::ScanId| {
        app.url(&crate::helpers::cancel_path(group.as_str(), scan.as_str()))
    };
    let too_long = "k".repeat(256);
    for idempotency_key in ["k1", "k1", "not visible ascii", too_long.as_str()] {
        let scan = app.scan(&group, ScanStatus::Queued).await;

        let response = ApiResponse::of(
            app.client
                .post(format!("{}?status=completed&limit=0&x=%FF", path(&scan)))
                .bearer_auth(&key)
                .header("idempotency-key", idempotency_key),
        )
        .await;

        assert_eq!(response.status, 200, "{idempotency_key}: {response:?}");
        assert_eq!(response.body["data"]["scanId"], scan.as_str());
        assert_eq!(response.body["data"]["previousStatus"], "queued");
        assert_eq!(response.header("idempotent-replayed"), None);
        let events = app.store.scan_events(&scan).await.unwrap();
        assert_eq!(events.len(), 2, "creation and this cancel: {events:?}");
    }
}
store_test!(a_query_string_and_an_idempotency_key_are_ignored);

async fn health_endpoints_answer_without_a_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = crate::helpers::ApiResponse::of(app.client.get(app.url(path))).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body["data"]["status"], status);
    }
}
store_test!(health_endpoints_answer_without_a_key);

/// HEAD is answered wherever GET is, with the GET's status and headers and no body; on the cancel,
/// a POST route, it is a 405 naming `POST`, and so is OPTIONS on every known path (there is no
/// CORS handling, so a preflight must not look granted). A trailing slash makes another path: a
/// 404 envelope, never a redirect nor the route without it. Nothing changes.
async fn head_options_and_trailing_slashes_answer_as_the_contract_says(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let base = format!("/v1/accounts/{group}/signals/scans");
    let cancel = crate::helpers::cancel_path(group.as_str(), scan.as_str());
    let send = |method: reqwest::Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(&key)
            .send()
    };

    let head_cancel = send(reqwest::Method::HEAD, &cancel).await.unwrap();
    assert_eq!(head_cancel.status(), 405, "HEAD on the cancel");
    assert_eq!(head_cancel.headers()["allow"], "POST");
    assert!(head_cancel.headers().contains_key("x-request-id"));
    let head_scan = send(reqwest::Method::HEAD, &format!("{base}/{scan}"))
        .await
        .unwrap();
    assert_eq!(head_scan.status(), 200, "HEAD where GET is");
    assert_eq!(head_scan.headers()["content-type"], "application/json");
    assert_eq!(head_scan.bytes().await.unwrap().len(), 0, "no body");

    for path in [
        cancel.clone(),
        format!("{base}/cancel"),
        base.clone(),
        format!("{base}/{scan}"),
        format!("{base}/{scan}/events"),
        format!("{base}/{scan}/start"),
        format!("{base}/changes"),
        "/healthz".into(),
        "/metrics".into(),
        "/openapi.json".into(),
    ] {
        let options = ApiResponse::from(send(reqwest::Method::OPTIONS, &path).await.unwrap()).await;
        let details = options.assert_error(405, "METHOD_NOT_ALLOWED");
        assert!(details.contains("OPTIONS"), "{path}: {details}");
        let allow = options.header("allow").unwrap_or_default();
        assert!(
            !allow.is_empty() && !allow.contains("OPTIONS"),
            "{path}: {allow}"
        );
    }

    for (method, path) in [
        (reqwest::Method::POST, format!("{cancel}/")),
        (reqwest::Method::POST, format!("{base}/cancel/")),
        (reqwest::Method::GET, format!("{base}/")),
        (reqwest::Method::GET, format!("{base}/{scan}/")),
        (reqwest::Method::GET, format!("{base}/changes/")),
        (reqwest::Method::GET, "/healthz/".into()),
    ] {
        let slashed = ApiResponse::from(send(method.clone(), &path).await.unwrap()).await;
        assert_eq!(
            slashed.assert_error(404, "NOT_FOUND"),
            "no route matches this path",
            "{method} {path}"
        );
    }
    assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
}
store_test!(head_options_and_trailing_slashes_answer_as_the_contract_says);
