//! Trace ids: from `traceparent`, else a safe `X-Request-Id`, else a new one; in the body, the
//! `X-Request-Id` header and the audit trail.

use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{ApiResponse, Backend, TestApp, cancel_path};
use crate::store_test;

async fn send(app: &TestApp, headers: &[(&str, &str)]) -> ApiResponse {
    let mut request = app.client.post(app.url(&cancel_path("bad", "bad")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    ApiResponse::from(request.send().await.unwrap()).await
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

    let response = ApiResponse::from(
        app.client
            .post(app.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .header("x-request-id", "runbook-7")
            .send()
            .await
            .unwrap(),
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
