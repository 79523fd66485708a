//! Trace ids: from `traceparent`, else a safe `X-Request-Id`, else a new one; in the body, the
//! `X-Request-Id` header and the audit trail.

use std::time::Duration;

use serde_json::{Value, json};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::sse::SseStream;
use crate::helpers::{ApiResponse, Backend, TestApp, cancel_path};
use crate::store_test;

async fn send(app: &TestApp, headers: &[(&str, &str)]) -> ApiResponse {
    let mut request = app.client.post(app.url(&cancel_path("bad", "bad")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    ApiResponse::of(request).await
}

async fn trace_id_comes_from_traceparent_then_request_id_then_is_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let from_traceparent = send(
        &app,
        &[("traceparent", traceparent), ("x-request-id", "ignored-1")],
    )
    .await;
    let from_request_id = send(&app, &[("x-request-id", "client-req_42.a:b")]).await;
    let longest = "b".repeat(64);
    let from_longest = send(&app, &[("x-request-id", &longest)]).await;
    let too_long = "a".repeat(65);
    let generated = [
        send(&app, &[]).await,
        send(&app, &[("x-request-id", "has space")]).await,
        send(&app, &[("x-request-id", &too_long)]).await,
        send(
            &app,
            &[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        )
        .await,
    ];

    assert_eq!(
        from_traceparent.trace_id(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(from_request_id.trace_id(), "client-req_42.a:b");
    assert_eq!(
        from_longest.trace_id(),
        longest,
        "64 characters is still accepted"
    );
    let mut seen = std::collections::HashSet::new();
    for response in &generated {
        let id = response.trace_id();
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
        assert!(seen.insert(id.to_owned()), "fresh per request");
    }
}
store_test!(trace_id_comes_from_traceparent_then_request_id_then_is_generated);

async fn the_audit_row_carries_the_clients_trace_id(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;

    let response = ApiResponse::of(
        app.client
            .post(app.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .header("x-request-id", "runbook-7"),
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.trace_id(), "runbook-7");
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(
        events.last().unwrap().trace_id.as_deref(),
        Some("runbook-7")
    );
}
store_test!(the_audit_row_carries_the_clients_trace_id);

/// A change made from the command line has no request, so no trace id: its audit row's `traceId`
/// is null in `events` and on the change stream, while the cancel a request made beside it
/// carries the request's. A made-up id would send an operator looking for logs of a request that
/// never was.
async fn a_change_made_from_the_command_line_has_a_null_trace_id(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let created = crate::cli::scan_created_on_the_command_line(&app.db.url, group.as_str());
    let scan = created["scanId"].as_str().unwrap().to_owned();
    let moved = crate::cli::signal_scans(
        &app.db.url,
        &["scans", "transition", &scan, "--to", "running"],
    );
    assert!(moved.status.success(), "{moved:?}");
    let cancelled = ApiResponse::of(
        app.client
            .post(app.url(&cancel_path(group.as_str(), &scan)))
            .bearer_auth(&key)
            .header("x-request-id", "client-1"),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let expected = [
        (Value::Null, json!("queued"), Value::Null),
        (json!("queued"), json!("running"), Value::Null),
        (json!("running"), json!("cancelled"), json!("client-1")),
    ];
    let shown = |change: &Value| {
        (
            change["from"].clone(),
            change["to"].clone(),
            change["traceId"].clone(),
        )
    };

    let scans = format!("/v1/accounts/{group}/signals/scans");
    let events = app.get(&key, &format!("{scans}/{scan}/events")).await;
    let mut stream = SseStream::opened(
        app.client
            .get(app.url(&format!("{scans}/changes?after=0-0")))
            .bearer_auth(&key),
        Duration::from_secs(5),
    )
    .await;
    let mut streamed = Vec::new();
    for _ in 0..expected.len() {
        streamed.push(shown(
            &stream.next_event(Duration::from_secs(5)).await.json(),
        ));
    }

    let listed: Vec<_> = events.body["data"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{events:?}"))
        .iter()
        .map(shown)
        .collect();
    assert_eq!(listed, expected, "events");
    assert_eq!(streamed, expected, "the change stream");
}
store_test!(a_change_made_from_the_command_line_has_a_null_trace_id);
