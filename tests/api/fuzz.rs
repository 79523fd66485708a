//! Property test over hostile methods, paths, queries and headers: every answer is a well-formed
//! envelope with a documented status, nothing panics, nothing internal leaks.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use signal_scans::domain::ids::{AccountGroupId, ScanId};
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp};

/// What a client may be told; 5xx is never the answer to bad input.
const DOCUMENTED: &[u16] = &[200, 201, 400, 401, 403, 404, 405, 422, 429];
const LEAKS: &[&str] = &[
    "sqlx",
    "SELECT",
    "UPDATE ",
    "panicked",
    "postgres",
    "sqlite",
    "database error",
];

#[derive(Debug, Clone)]
struct HostileRequest {
    method: reqwest::Method,
    path: String,
    auth: Auth,
    request_id: Option<String>,
    traceparent: Option<String>,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    ValidBearer,
    Header(&'static str, String),
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._~!$&'()*+,;=:@-]{0,40}",
        "(%[0-9A-Fa-f]{2}){1,8}",
        "%[0-9A-Za-z]{0,2}",
        "[0-9a-fA-F]{23,25}",
        Just("..".to_owned()),
    ]
}

fn visible_ascii(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0x20u8..0x7f, 0..max)
        .prop_map(|bytes| String::from_utf8(bytes).unwrap())
}

fn requests(group: AccountGroupId, scan: ScanId) -> impl Strategy<Value = HostileRequest> {
    let method = prop_oneof![
        Just(reqwest::Method::GET),
        Just(reqwest::Method::POST),
        Just(reqwest::Method::PUT),
        Just(reqwest::Method::DELETE),
        Just(reqwest::Method::PATCH),
        Just(reqwest::Method::OPTIONS),
    ];
    let id_or_junk = |real: String| prop_oneof![Just(real), segment()];
    let path = prop_oneof![
        (
            id_or_junk(group.to_string()),
            id_or_junk(scan.to_string()),
            prop_oneof![
                Just("/cancel".to_owned()),
                Just("/events".to_owned()),
                Just(String::new()),
                segment().prop_map(|s| format!("/{s}")),
            ]
        )
            .prop_map(|(g, s, tail)| format!("/v1/accounts/{g}/signals/scans/{s}{tail}")),
        (
            id_or_junk(group.to_string()),
            proptest::collection::vec((segment(), segment()), 0..4)
        )
            .prop_map(|(g, params)| {
                let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("/v1/accounts/{g}/signals/scans?{}", query.join("&"))
            }),
        proptest::collection::vec(segment(), 0..6)
            .prop_map(|parts| format!("/{}", parts.join("/"))),
    ];
    let auth = prop_oneof![
        Just(Auth::None),
        Just(Auth::ValidBearer),
        visible_ascii(80).prop_map(|v| Auth::Header("authorization", v)),
        "ssk_[0-9a-f]{0,70}".prop_map(|v| Auth::Header("authorization", format!("Bearer {v}"))),
        visible_ascii(80).prop_map(|v| Auth::Header("x-api-key", v)),
    ];
    (
        method,
        path,
        auth,
        proptest::option::of(visible_ascii(80)),
        proptest::option::of("[0-9a-fA-F-]{0,60}"),
    )
        .prop_map(
            |(method, path, auth, request_id, traceparent)| HostileRequest {
                method,
                path,
                auth,
                request_id,
                traceparent,
            },
        )
}

async fn send(app: &TestApp, key: &str, case: &HostileRequest) -> Result<ApiResponse, String> {
    let mut request = app.client.request(case.method.clone(), app.url(&case.path));
    request = match &case.auth {
        Auth::None => request,
        Auth::ValidBearer => request.bearer_auth(key),
        Auth::Header(name, value) => request.header(*name, value.trim()),
    };
    if let Some(id) = &case.request_id {
        request = request.header("x-request-id", id.trim());
    }
    if let Some(traceparent) = &case.traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(ApiResponse::from(response).await)
}

/// What the contract says of this one request beyond its being documented: OPTIONS is never
/// served (404 or 405: there is no CORS handling), and a path that ends in a slash names no route
/// (404: one canonical URL, no redirect).
fn routing_rule(case: &HostileRequest, app: &TestApp, status: u16) -> Result<(), String> {
    let sent = reqwest::Url::parse(&app.url(&case.path)).map_err(|e| e.to_string())?;
    if case.method == reqwest::Method::OPTIONS && ![404, 405].contains(&status) {
        return Err(format!("OPTIONS {} answered {status}", sent.path()));
    }
    if sent.path().len() > 1 && sent.path().ends_with('/') && status != 404 {
        return Err(format!("{} {} answered {status}", case.method, sent.path()));
    }
    Ok(())
}

/// 400 hostile requests against the API on `backend`, each answered a documented envelope.
fn hostile_requests_always_get_a_documented_envelope(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if backend == Backend::Postgres && !runtime.block_on(crate::helpers::postgres_available()) {
        return;
    }
    let (app, key, group, scan) = runtime.block_on(async {
        // The API only: the reference's pages at / and /docs are HTML, not the envelope
        // (tests/api/docs.rs covers them, their 404s and 405s included).
        let mut settings = Settings::default();
        settings.http.docs_enabled = false;
        let app = TestApp::spawn_with(backend, settings).await;
        let group = AccountGroupId::generate();
        let key = app.writer(&group).await;
        let scan = app.scan(&group, ScanStatus::Running).await;
        (app, key, group, scan)
    });
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });

    let result = runner.run(&requests(group, scan), |case| {
        let response = runtime
            .block_on(send(&app, &key, &case))
            .map_err(TestCaseError::fail)?;
        let status = response.status.as_u16();
        prop_assert!(DOCUMENTED.contains(&status), "{case:?} -> {response:?}");
        routing_rule(&case, &app, status).map_err(TestCaseError::fail)?;
        let body = response.body.to_string();
        for leak in LEAKS {
            prop_assert!(!body.contains(leak), "{case:?} leaked {leak}: {body}");
        }
        Ok(())
    });

    runtime.block_on(async move { drop(app) });
    result.unwrap();
}

mod hostile_requests_always_get_a_documented_envelope {
    use crate::helpers::Backend;

    #[test]
    fn sqlite() {
        super::hostile_requests_always_get_a_documented_envelope(Backend::Sqlite);
    }

    #[test]
    fn postgres() {
        super::hostile_requests_always_get_a_documented_envelope(Backend::Postgres);
    }
}
