//! The OpenAPI document at /openapi.json: OpenAPI 3.1, every route with every status it answers,
//! and every real response the suite can provoke matches what the document declares for its
//! route and status (body schema, content type, required headers).

use std::collections::BTreeSet;
use std::time::Duration;

use jsonschema::Draft;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{Backend, Settings, TestApp, group};
use crate::store_test;

const CANCEL: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/cancel";
const SCAN: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}";
const EVENTS: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/events";
const START: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/start";
const COMPLETE: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/complete";
const FAIL: &str = "/v1/accounts/{accountGroupId}/signals/scans/{scanId}/fail";
const LIST: &str = "/v1/accounts/{accountGroupId}/signals/scans";
const CANCEL_ALL: &str = "/v1/accounts/{accountGroupId}/signals/scans/cancel";

const CHANGES: &str = "/v1/accounts/{accountGroupId}/signals/scans/changes";

/// Every route, its method, and the statuses it must document (besides `default`, the envelope
/// of any other status, which every operation has).
const ROUTES: &[(&str, &str, &[u16])] = &[
    (
        CANCEL,
        "post",
        &[200, 400, 401, 403, 404, 422, 429, 500, 502],
    ),
    (CANCEL_ALL, "post", &[200, 400, 401, 403, 429, 500, 502]),
    (SCAN, "get", &[200, 400, 401, 403, 404, 429, 500, 502]),
    (LIST, "post", &[201, 400, 401, 403, 422, 429, 500, 502]),
    (
        START,
        "post",
        &[200, 400, 401, 403, 404, 422, 429, 500, 502],
    ),
    (
        COMPLETE,
        "post",
        &[200, 400, 401, 403, 404, 422, 429, 500, 502],
    ),
    (FAIL, "post", &[200, 400, 401, 403, 404, 422, 429, 500, 502]),
    (EVENTS, "get", &[200, 400, 401, 403, 404, 429, 500, 502]),
    (LIST, "get", &[200, 400, 401, 403, 429, 500, 502]),
    (CHANGES, "get", &[200, 400, 401, 403, 410, 429, 500, 502]),
    ("/healthz", "get", &[200, 400]),
    ("/readyz", "get", &[200, 400, 503]),
    ("/metrics", "get", &[200, 400]),
    ("/openapi.json", "get", &[200, 400]),
];

/// The served document, and checks of real responses against it.
struct Contract {
    document: Value,
}

/// A real response, read whole.
struct Answer {
    status: u16,
    body: Value,
}

impl Contract {
    async fn of(app: &TestApp) -> Self {
        Self {
            document: app.document().await,
        }
    }

    fn operation(&self, template: &str, method: &str) -> &Value {
        let operation = &self.document["paths"][template][method];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        operation
    }

    /// The documented response for `status` (else the operation's `default`), following a
    /// `$ref` to a reusable response.
    fn response(&self, template: &str, method: &str, status: u16) -> &Value {
        let responses = &self.operation(template, method)["responses"];
        let response = match &responses[status.to_string()] {
            listed if listed.is_object() => listed,
            _ => &responses["default"],
        };
        assert!(
            response.is_object(),
            "{method} {template} does not document status {status}"
        );
        match response["$ref"].as_str() {
            Some(reference) => self.resolve(reference),
            None => response,
        }
    }

    fn resolve(&self, reference: &str) -> &Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        self.document
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} does not resolve"))
    }

    /// Errors of `instance` against `schema`, a schema inside the document (its `$ref`s resolve
    /// against the whole document); empty when it matches.
    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut root = self.document.clone();
        root["$defs"] = json!({ "underTest": schema });
        root["$ref"] = json!("#/$defs/underTest");
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|error| panic!("schema {schema} does not compile: {error}"));
        validator
            .iter_errors(instance)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect()
    }

    /// Sends `request` (to a route documented as `method template`) and checks the answer
    /// against the document: the status is documented, the content type is the documented one,
    /// the required headers are there, every documented header matches its schema, and the body
    /// matches the documented schema.
    async fn check(&self, template: &str, request: RequestBuilder) -> Answer {
        self.check_against(Some(template), request).await
    }

    /// `check` for a request no operation documents (a path no route matches, a method the path
    /// does not have): against `OtherError`, the `default` response of every operation.
    async fn check_unrouted(&self, request: RequestBuilder) -> Answer {
        self.check_against(None, request).await
    }

    async fn check_against(&self, template: Option<&str>, request: RequestBuilder) -> Answer {
        let request = request.build().expect("a valid request");
        let method = request.method().as_str().to_ascii_lowercase();
        let target = format!("{} {}", request.method(), request.url());
        let response = reqwest::Client::new()
            .execute(request)
            .await
            .expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body is readable");
        let context = format!("{target} answered {status} {text}");
        let documented = match template {
            Some(template) => self.response(template, &method, status),
            None => self.resolve("#/components/responses/OtherError"),
        };

        let content_type = headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_else(|| panic!("no content type: {context}"));
        let media_type = content_type.split(';').next().unwrap().trim();
        let content = &documented["content"][media_type];
        assert!(
            content.is_object(),
            "{media_type} is not a documented content type: {context}"
        );

        for (name, header) in documented["headers"].as_object().into_iter().flatten() {
            let header = match header["$ref"].as_str() {
                Some(reference) => self.resolve(reference),
                None => header,
            };
            let Some(value) = headers.get(name.as_str()) else {
                assert_ne!(
                    header["required"],
                    json!(true),
                    "required header {name} is missing: {context}"
                );
                continue;
            };
            let value = value.to_str().expect("an ASCII header");
            let value = match header["schema"]["type"].as_str() {
                Some("integer") => json!(value.parse::<i64>().unwrap_or_else(|_| panic!(
                    "header {name}: {value:?} is not an integer: {context}"
                ))),
                _ => json!(value),
            };
            let errors = self.errors(&header["schema"], &value);
            assert!(errors.is_empty(), "header {name}: {errors:?}: {context}");
        }

        let body = match media_type {
            "application/json" => serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("the body is not JSON: {context}")),
            _ => Value::String(text),
        };
        let errors = self.errors(&content["schema"], &body);
        assert!(
            errors.is_empty(),
            "the body does not match the documented schema: {errors:?}: {context}"
        );
        Answer { status, body }
    }

    /// `check`, and the status must be `expected`.
    async fn expect(&self, template: &str, request: RequestBuilder, expected: u16) -> Answer {
        let answer = self.check(template, request).await;
        assert_eq!(answer.status, expected, "{}", answer.body);
        answer
    }
}

fn cancel_url(app: &TestApp, group: &str, scan: &str) -> String {
    app.url(&format!("/v1/accounts/{group}/signals/scans/{scan}/cancel"))
}

fn scan_url(app: &TestApp, group: &str, scan: &str) -> String {
    app.url(&format!("/v1/accounts/{group}/signals/scans/{scan}"))
}

fn events_url(app: &TestApp, group: &str, scan: &str) -> String {
    app.url(&format!("/v1/accounts/{group}/signals/scans/{scan}/events"))
}

fn list_url(app: &TestApp, group: &str) -> String {
    app.url(&format!("/v1/accounts/{group}/signals/scans"))
}

async fn the_document_is_openapi_3_1_with_every_route_and_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let contract = Contract::of(&app).await;

    let document = &contract.document;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "signal-scans");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths: BTreeSet<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected_paths: BTreeSet<&str> = ROUTES.iter().map(|(path, _, _)| *path).collect();
    assert_eq!(paths, expected_paths);
    for (path, method, statuses) in ROUTES {
        let operation = contract.operation(path, method);
        let documented: BTreeSet<u16> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|status| *status != "default")
            .map(|status| status.parse().unwrap())
            .collect();
        assert_eq!(
            operation["responses"]["default"],
            json!({ "$ref": "#/components/responses/OtherError" }),
            "{method} {path}: any other status is the error envelope"
        );
        assert_eq!(
            documented,
            statuses.iter().copied().collect(),
            "{method} {path}"
        );
        for status in *statuses {
            let response = contract.response(path, method, *status);
            assert!(
                response["headers"]["X-Request-Id"]["required"] == json!(true),
                "{method} {path} {status} documents X-Request-Id"
            );
        }
        let security = operation["security"].clone();
        if path.starts_with("/v1/") {
            assert_eq!(
                security,
                json!([{ "bearerAuth": [] }, { "apiKey": [] }]),
                "{path}"
            );
        } else {
            assert!(security.is_null(), "{path} needs no key");
        }
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    for name in ["SignalScanCancelSuccessResponse", "ErrorResponse"] {
        assert!(
            document["components"]["schemas"][name].is_object(),
            "{name} is a component"
        );
    }
    for (path, parameter) in [(CANCEL, 0), (CANCEL, 1), (SCAN, 0), (LIST, 0)] {
        let method = if path == CANCEL { "post" } else { "get" };
        let schema = &contract.operation(path, method)["parameters"][parameter]["schema"];
        assert_eq!(schema["pattern"], "^[0-9a-fA-F]{24}$", "{path}");
    }
    // A nullable field's description is the field's, where generators read it: utoipa put it
    // beside the `$ref` in its `oneOf`, and the Python client's `previous_status` went undescribed.
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            let branches = property["oneOf"].as_array().into_iter().flatten();
            for branch in branches {
                assert!(
                    branch.get("description").is_none(),
                    "{name}.{field}: {property}"
                );
            }
        }
    }
    assert_eq!(
        schemas["CancelResult"]["properties"]["previousStatus"]["description"],
        "Its status before the request (`status` when nothing changed); null when not found."
    );
}
store_test!(the_document_is_openapi_3_1_with_every_route_and_status);

async fn every_example_in_the_document_matches_its_schema(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let mut checked = 0;

    for (name, schema) in contract.document["components"]["schemas"]
        .as_object()
        .unwrap()
    {
        if let Some(example) = schema.get("example") {
            let errors = contract.errors(schema, example);
            assert!(errors.is_empty(), "schema {name}'s example: {errors:?}");
            checked += 1;
        }
    }
    let mut responses: Vec<(String, &Value)> = contract.document["components"]["responses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, response)| (name.clone(), response))
        .collect();
    for (path, method, statuses) in ROUTES {
        for status in *statuses {
            responses.push((
                format!("{method} {path} {status}"),
                contract.response(path, method, *status),
            ));
        }
    }
    for (name, response) in responses {
        for (media_type, content) in response["content"].as_object().into_iter().flatten() {
            let examples = content["examples"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, example)| &example["value"])
                .chain(content.get("example"));
            for example in examples {
                let errors = contract.errors(&content["schema"], example);
                assert!(errors.is_empty(), "{name} {media_type}: {errors:?}");
                checked += 1;
            }
        }
    }

    assert!(checked >= 15, "only {checked} examples");

    // The checks are not vacuous: wrong bodies are refused, through the $refs.
    let ok = &contract.response(CANCEL, "post", 200)["content"]["application/json"]["schema"];
    let not_found = &contract.response(CANCEL, "post", 404)["content"]["application/json"];
    let good =
        contract.document["components"]["schemas"]["SignalScanCancelSuccessResponse"]["example"]
            .clone();
    assert!(contract.errors(ok, &good).is_empty());
    let mut paused = good.clone();
    paused["data"]["previousStatus"] = json!("paused");
    let mut extra = good.clone();
    extra["extra"] = json!(1);
    let mut no_time = good.clone();
    no_time["data"]["cancelledAt"] = json!("yesterday");
    for wrong in [
        &not_found["examples"]["noSuchScan"]["value"],
        &paused,
        &extra,
        &no_time,
    ] {
        assert!(
            !contract.errors(ok, wrong).is_empty(),
            "{wrong} was accepted"
        );
    }
    let mut no_details = not_found["examples"]["noSuchScan"]["value"].clone();
    no_details["error"]
        .as_object_mut()
        .unwrap()
        .remove("details");
    assert!(
        !contract
            .errors(&not_found["schema"], &no_details)
            .is_empty()
    );
}
store_test!(every_example_in_the_document_matches_its_schema);

async fn real_answers_match_the_document(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let group = group();
    let other_group = crate::helpers::group();
    let (writer, reader, outsider) = (
        app.writer(&group).await,
        app.key_for(&[Permission::SignalsRead], &[group]).await.0,
        app.writer(&other_group).await,
    );
    let queued = app.scan(&group, ScanStatus::Queued).await;
    let running = app.scan(&group, ScanStatus::Running).await;
    let completed = app.scan(&group, ScanStatus::Completed).await;
    let failed = app.scan(&group, ScanStatus::Failed).await;
    let (g, missing) = (group.as_str(), "0123456789abcdef01234567");
    let c = &app.client;
    let post = |url: String| c.post(url);
    let get = |url: String| c.get(url);

    // Cancel: 200 (now, again, by X-API-Key), 422, 404, 400, 401, 403.
    let cancelled = contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).bearer_auth(&writer),
            200,
        )
        .await;
    assert_eq!(cancelled.body["data"]["previousStatus"], "queued");
    let again = contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).header("X-API-Key", &writer),
            200,
        )
        .await;
    assert_eq!(again.body["data"]["previousStatus"], "cancelled");
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, &g.to_uppercase(), running.as_str())).bearer_auth(&writer),
            200,
        )
        .await;
    for scan in [&completed, &failed] {
        let refused = contract
            .expect(
                CANCEL,
                post(cancel_url(&app, g, scan.as_str())).bearer_auth(&writer),
                422,
            )
            .await;
        assert_eq!(refused.body["error"]["code"], "VALIDATION_ERROR");
    }
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, missing)).bearer_auth(&writer),
            404,
        )
        .await;
    for (bad_group, bad_scan) in [("nope", queued.as_str()), (g, "nope"), ("x", "y")] {
        let invalid = contract
            .expect(
                CANCEL,
                post(cancel_url(&app, bad_group, bad_scan)).bearer_auth(&writer),
                400,
            )
            .await;
        assert_eq!(invalid.body["error"]["code"], "VALIDATION_ERROR");
    }
    contract
        .expect(CANCEL, post(cancel_url(&app, g, queued.as_str())), 401)
        .await;
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).bearer_auth("ssk_not_a_key"),
            401,
        )
        .await;
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).basic_auth("user", Some("pass")),
            401,
        )
        .await;
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).bearer_auth(&reader),
            403,
        )
        .await;
    contract
        .expect(
            CANCEL,
            post(cancel_url(&app, g, queued.as_str())).bearer_auth(&outsider),
            403,
        )
        .await;

    // One scan and its events: 200 (both permissions), 400, 401, 403, 404.
    for (template, url) in [
        (SCAN, scan_url as fn(&TestApp, &str, &str) -> String),
        (EVENTS, events_url),
    ] {
        for key in [&writer, &reader] {
            for scan in [&queued, &running, &completed, &failed] {
                contract
                    .expect(
                        template,
                        get(url(&app, g, scan.as_str())).bearer_auth(key),
                        200,
                    )
                    .await;
            }
        }
        contract
            .expect(
                template,
                get(url(&app, g, "nope")).bearer_auth(&reader),
                400,
            )
            .await;
        contract
            .expect(template, get(url(&app, g, queued.as_str())), 401)
            .await;
        contract
            .expect(
                template,
                get(url(&app, g, queued.as_str())).bearer_auth(&outsider),
                403,
            )
            .await;
        contract
            .expect(
                template,
                get(url(&app, g, missing)).bearer_auth(&reader),
                404,
            )
            .await;
    }

    // The list: 200 (pages, filters, an empty group), 400, 401, 403.
    let first = contract
        .expect(
            LIST,
            get(format!("{}?limit=2", list_url(&app, g))).bearer_auth(&reader),
            200,
        )
        .await;
    let cursor = first.body["data"]["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let cursor_schema = &contract.operation(LIST, "get")["parameters"][3]["schema"];
    assert!(
        contract.errors(cursor_schema, &json!(cursor)).is_empty(),
        "a real cursor matches the documented pattern"
    );
    let last = contract
        .expect(
            LIST,
            get(format!("{}?limit=2&cursor={cursor}", list_url(&app, g))).bearer_auth(&reader),
            200,
        )
        .await;
    assert!(last.body["data"]["nextCursor"].is_null());
    contract
        .expect(
            LIST,
            get(format!("{}?status=cancelled", list_url(&app, g))).bearer_auth(&writer),
            200,
        )
        .await;
    contract
        .expect(
            LIST,
            get(list_url(&app, other_group.as_str())).bearer_auth(&outsider),
            200,
        )
        .await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=many",
        "status=done",
        "cursor=zz",
        "colour=blue",
    ] {
        contract
            .expect(
                LIST,
                get(format!("{}?{query}", list_url(&app, g))).bearer_auth(&reader),
                400,
            )
            .await;
    }
    contract
        .expect(LIST, get(list_url(&app, "nope")).bearer_auth(&reader), 400)
        .await;
    contract.expect(LIST, get(list_url(&app, g)), 401).await;
    contract
        .expect(LIST, get(list_url(&app, g)).bearer_auth(&outsider), 403)
        .await;

    // Batch cancel: 200 with every outcome, 400, 401, 403.
    let cancel_all = || post(app.url(&format!("/v1/accounts/{g}/signals/scans/cancel")));
    let fresh = app.scan(&group, ScanStatus::Running).await;
    let batch =
        json!({ "scanIds": [fresh.as_str(), queued.as_str(), completed.as_str(), missing] });
    let answered = contract
        .expect(
            CANCEL_ALL,
            cancel_all().bearer_auth(&writer).json(&batch),
            200,
        )
        .await;
    let outcomes: Vec<&str> = answered.body["data"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "cancelled",
            "already_cancelled",
            "not_cancellable",
            "not_found"
        ]
    );
    for body in [json!({}), json!({ "scanIds": ["nope"] }), json!([1])] {
        contract
            .expect(
                CANCEL_ALL,
                cancel_all().bearer_auth(&writer).json(&body),
                400,
            )
            .await;
    }
    contract
        .expect(CANCEL_ALL, cancel_all().json(&batch), 401)
        .await;
    contract
        .expect(
            CANCEL_ALL,
            cancel_all().bearer_auth(&reader).json(&batch),
            403,
        )
        .await;

    // The operational routes.
    contract
        .expect("/healthz", get(app.url("/healthz")), 200)
        .await;
    contract
        .expect("/readyz", get(app.url("/readyz")), 200)
        .await;
    let metrics = contract
        .expect("/metrics", get(app.url("/metrics")), 200)
        .await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("http_requests_total")
    );
    contract
        .expect("/openapi.json", get(app.url("/openapi.json")), 200)
        .await;
}
store_test!(real_answers_match_the_document);

async fn rate_limited_answers_match_the_document(backend: Backend) {
    let app = Settings::default()
        .with_rate_limit(1, 1)
        .spawn(backend)
        .await;
    let contract = Contract::of(&app).await;
    let group = group();
    let g = group.as_str();
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let c = &app.client;

    for (template, method, url) in [
        (CANCEL, Method::POST, cancel_url(&app, g, scan.as_str())),
        (SCAN, Method::GET, scan_url(&app, g, scan.as_str())),
        (EVENTS, Method::GET, events_url(&app, g, scan.as_str())),
        (LIST, Method::GET, list_url(&app, g)),
    ] {
        let key = app.writer(&group).await;
        contract
            .expect(
                template,
                c.request(method.clone(), &url).bearer_auth(&key),
                200,
            )
            .await;
        let limited = contract
            .expect(template, c.request(method, &url).bearer_auth(&key), 429)
            .await;
        assert_eq!(limited.body["error"]["code"], "RATE_LIMITED");
    }
}
store_test!(rate_limited_answers_match_the_document);

async fn unknown_routes_methods_and_oversized_requests_match_the_document(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let group = group();
    let g = group.as_str();
    let key = app.writer(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let c = &app.client;

    // 404 and 405 are answered by the router, outside any operation: `default` describes them.
    let unknown = contract
        .check_unrouted(c.get(app.url("/v1/nothing/here")).bearer_auth(&key))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["error"]["code"], "NOT_FOUND");
    let wrong_method = contract
        .check_unrouted(
            c.delete(cancel_url(&app, g, scan.as_str()))
                .bearer_auth(&key),
        )
        .await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.body["error"]["code"], "METHOD_NOT_ALLOWED");
    let on_healthz = contract.check_unrouted(c.post(app.url("/healthz"))).await;
    assert_eq!(on_healthz.status, 405);

    // The request limits answer 400 on every route, each documented.
    let long_query = format!("?padding={}", "a".repeat(3000));
    for (template, method, url) in [
        (CANCEL, Method::POST, cancel_url(&app, g, scan.as_str())),
        (SCAN, Method::GET, scan_url(&app, g, scan.as_str())),
        (EVENTS, Method::GET, events_url(&app, g, scan.as_str())),
        (LIST, Method::GET, list_url(&app, g)),
        ("/healthz", Method::GET, app.url("/healthz")),
        ("/readyz", Method::GET, app.url("/readyz")),
        ("/metrics", Method::GET, app.url("/metrics")),
        ("/openapi.json", Method::GET, app.url("/openapi.json")),
    ] {
        let too_long = contract
            .expect(
                template,
                c.request(method.clone(), format!("{url}{long_query}"))
                    .bearer_auth(&key),
                400,
            )
            .await;
        assert!(
            too_long.body["error"]["details"]
                .as_str()
                .unwrap()
                .starts_with("request target is"),
            "{template}: {}",
            too_long.body
        );
        contract
            .expect(
                template,
                c.request(method, &url)
                    .bearer_auth(&key)
                    .header("x-padding", "h".repeat(17 * 1024)),
                400,
            )
            .await;
    }
    let still_queued = app.store.find_scan(None, &scan).await.unwrap().unwrap();
    assert_eq!(
        still_queued.status,
        ScanStatus::Queued,
        "a refused cancel changed nothing"
    );
}
store_test!(unknown_routes_methods_and_oversized_requests_match_the_document);

async fn answers_without_a_database_match_the_document(backend: Backend) {
    // 502: the database does not answer within DB_TIMEOUT_MS.
    let upstream = Settings::default()
        .with_db_timeout(Duration::from_millis(300))
        .through_proxy()
        .spawn(backend)
        .await;
    // 500: the request's own deadline passes first.
    let stalled = Settings::default()
        .with_db_timeout(Duration::from_secs(5))
        .through_proxy()
        .with_request_timeout(Duration::from_millis(300))
        .spawn(backend)
        .await;
    let contract = Contract::of(&upstream).await;
    let group = group();
    let g = group.as_str();
    let mut cases = Vec::new();
    for app in [&upstream, &stalled] {
        let key = app.writer(&group).await;
        let scan = app.scan(&group, ScanStatus::Queued).await;
        // The key works (and is remembered, if the app caches keys) before the cut.
        let c = &app.client;
        contract
            .expect(
                SCAN,
                c.get(scan_url(app, g, scan.as_str())).bearer_auth(&key),
                200,
            )
            .await;
        app.proxy.as_ref().unwrap().cut();
        cases.push((app, key, scan));
    }

    for ((app, key, scan), status) in cases.into_iter().zip([502, 500]) {
        let c = &app.client;
        let s = scan.as_str();
        for (template, request) in [
            (CANCEL, c.post(cancel_url(app, g, s))),
            (SCAN, c.get(scan_url(app, g, s))),
            (EVENTS, c.get(events_url(app, g, s))),
            (LIST, c.get(list_url(app, g))),
        ] {
            let answer = contract
                .expect(template, request.bearer_auth(&key), status)
                .await;
            let code = if status == 502 {
                "UPSTREAM_ERROR"
            } else {
                "INTERNAL_ERROR"
            };
            assert_eq!(answer.body["error"]["code"], code);
        }
    }
    contract
        .expect("/readyz", upstream.client.get(upstream.url("/readyz")), 503)
        .await;
    contract
        .expect(
            "/healthz",
            upstream.client.get(upstream.url("/healthz")),
            200,
        )
        .await;
}
store_test!(answers_without_a_database_match_the_document, postgres_only);

/// Each operation's examples are its own: a runner's start shows a scan started (and no 422 it
/// cannot answer: a queued scan starts), a failure one failed, a completion one completed, and
/// `/readyz` what it answers, where a shared schema's example would show another operation's.
async fn each_operations_examples_are_its_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let success_example = |template: &str, method: &str, status: u16| {
        let content = &contract.response(template, method, status)["content"]["application/json"];
        match content.get("example") {
            Some(example) => example.clone(),
            None => {
                contract.resolve(content["schema"]["$ref"].as_str().unwrap())["example"].clone()
            }
        }
    };
    let details_of_422 = |template: &str| -> Vec<String> {
        let content = &contract.response(template, "post", 422)["content"]["application/json"];
        let examples = content["examples"].as_object().unwrap().values();
        examples
            .map(|example| {
                example["value"]["error"]["details"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };

    for (template, status, previous) in [
        (START, "running", "queued"),
        (COMPLETE, "completed", "running"),
        (FAIL, "failed", "running"),
    ] {
        let data = &success_example(template, "post", 200)["data"];
        assert_eq!(
            (data["status"].as_str(), data["previousStatus"].as_str()),
            (Some(status), Some(previous)),
            "{template}: {data}"
        );
    }
    let start_refusals = details_of_422(START);
    assert!(!start_refusals.is_empty());
    assert!(
        !start_refusals.contains(&"currentStatus=queued".to_owned()),
        "{start_refusals:?}"
    );
    assert!(details_of_422(COMPLETE).contains(&"currentStatus=queued".to_owned()));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        success_example("/readyz", "get", 200)["data"],
        ready["data"]
    );
}
store_test!(each_operations_examples_are_its_own);

/// What "Try it out" fills in works as given, and the examples keep the contract's rules: the scan
/// id's example is not the account group's (the page filled the group in as the scan: 404), the
/// 403 names a group other than the one the examples use, a cancelled scan's `finishedAt` is its
/// `cancelledAt`, and a failure's reason is an example, not text made up from its pattern.
async fn the_examples_fill_in_requests_that_work_and_keep_the_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let schemas = &contract.document["components"]["schemas"];
    let group = &schemas["AccountGroupId"]["example"];
    let scan = &schemas["ScanId"]["example"];
    assert!(group.is_string() && scan.is_string(), "{group} {scan}");
    assert_ne!(group, scan);

    let forbidden = &contract.response(CANCEL, "post", 403)["content"]["application/json"];
    let details = forbidden["examples"]["noGroupAccess"]["value"]["error"]["details"]
        .as_str()
        .unwrap();
    assert!(details.contains("no access to account group"), "{details}");
    assert!(!details.contains(group.as_str().unwrap()), "{details}");

    let mut cancelled = Vec::new();
    let mut pending = vec![&contract.document];
    while let Some(value) = pending.pop() {
        match value {
            Value::Object(object) => {
                if object.get("status") == Some(&json!("cancelled"))
                    && object.contains_key("finishedAt")
                {
                    cancelled.push(value);
                }
                pending.extend(object.values());
            }
            Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    assert!(cancelled.len() >= 2, "{cancelled:?}");
    for scan in cancelled {
        assert_eq!(scan["finishedAt"], scan["cancelledAt"], "{scan}");
        assert!(scan["finishedAt"].is_string(), "{scan}");
    }

    let reason = &schemas["FailRequest"]["properties"]["reason"];
    assert_eq!(reason["example"], "target unreachable", "{reason}");
}
store_test!(the_examples_fill_in_requests_that_work_and_keep_the_rules);

/// The cancel operation says what the published page says, in its words: its description opens
/// with the page's sentences, and the 200 is "Scan cancelled" (it had dropped "public", and said
/// the page's cancellable states in its own words).
async fn the_cancel_operation_says_what_the_published_page_says(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let cancel = contract.operation(CANCEL, "post");

    let description = cancel["description"].as_str().unwrap();
    assert!(
        description.starts_with(
            "Cancels a public signal scan when the scan is still in a cancellable status. \
             Only queued or running scans can be cancelled. Completed or failed scans return \
             422 VALIDATION_ERROR when cancellation is attempted."
        ),
        "{description}"
    );
    assert_eq!(cancel["summary"], "Cancel a signal scan");
    let ok = contract.response(CANCEL, "post", 200)["description"]
        .as_str()
        .unwrap();
    assert!(ok.starts_with("Scan cancelled"), "{ok}");
    for (status, words) in [
        (400, "Request validation failed"),
        (422, "Scan is not in a cancellable status"),
    ] {
        let response = contract.response(CANCEL, "post", status);
        assert_eq!(response["description"], words, "{status}");
    }
}
store_test!(the_cancel_operation_says_what_the_published_page_says);

/// A failure's body the document rejects is refused, and one it accepts is taken: a generated
/// client (or schemathesis) that follows the document never gets a 400 for it, nor a 200 for
/// what it calls invalid.
async fn a_failures_body_is_refused_exactly_when_the_document_rejects_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let g = group();
    let runner = app.runner(&g).await;
    let body_schema =
        &contract.operation(FAIL, "post")["requestBody"]["content"]["application/json"]["schema"];

    for body in [
        json!({ "reason": "disk full" }),
        json!({ "reason": "é".repeat(1000) }),
        json!({ "reason": null }),
        json!({}),
        Value::Null,
        json!({ "reason": "" }),
        json!({ "reason": "x".repeat(1001) }),
        json!({ "reason": "disk\0full" }),
        json!({ "reason": 7 }),
        json!([]),
    ] {
        let documented = contract.errors(body_schema, &body).is_empty();
        let scan = app.scan(&g, ScanStatus::Running).await;
        let path = format!("/v1/accounts/{g}/signals/scans/{scan}/fail");
        let answer = app.post(&runner, &path, Some(&body.to_string())).await;
        let expected = if documented { 200 } else { 400 };
        assert_eq!(answer.status, expected, "{body}: {:?}", answer.body);
    }
}
store_test!(a_failures_body_is_refused_exactly_when_the_document_rejects_it);

/// A batch cancel's body the document rejects is refused, and one it accepts is answered: 1 to
/// 100 distinct scan ids in `scanIds`, nothing else. The one difference the document states in
/// words (an id repeated in another case, which `uniqueItems` cannot see) is not tried here. No
/// other test read this body's schema: `scanIds` documented as any array passed them all.
async fn a_batch_cancels_body_is_refused_exactly_when_the_document_rejects_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let g = group();
    let writer = app.writer(&g).await;
    let request_body = &contract.operation(CANCEL_ALL, "post")["requestBody"];
    let body_schema = &request_body["content"]["application/json"]["schema"];
    let ids = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| signal_scans::domain::ids::ScanId::generate().to_string())
            .collect()
    };
    let one = ids(1).remove(0);

    for body in [
        json!({ "scanIds": [one] }),
        json!({ "scanIds": ids(100) }),
        json!({ "scanIds": [] }),
        json!({ "scanIds": ids(101) }),
        json!({ "scanIds": [one, one] }),
        json!({ "scanIds": ["nope"] }),
        json!({ "scanIds": [7] }),
        json!({ "scanIds": one }),
        json!({ "scanIds": null }),
        json!({ "scanIds": [one], "reason": "x" }),
        json!({}),
        json!([]),
    ] {
        let documented = contract.errors(body_schema, &body).is_empty();
        let path = format!("/v1/accounts/{g}/signals/scans/cancel");
        let answer = app.post(&writer, &path, Some(&body.to_string())).await;
        let expected = if documented { 200 } else { 400 };
        assert_eq!(answer.status, expected, "{body}: {:?}", answer.body);
    }
}
store_test!(a_batch_cancels_body_is_refused_exactly_when_the_document_rejects_it);

/// Query parameters at and past their documented bounds: the list's `limit` (1 to 100), its
/// cursor (its sign and its digits) and the stream's `scanId` filters (at most 100) are refused
/// exactly when the document rejects them.
async fn parameters_are_refused_exactly_when_the_document_rejects_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let g = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[g]).await;
    let parameter = |template: &str, name: &str| -> Value {
        let parameters = contract.operation(template, "get")["parameters"]
            .as_array()
            .unwrap();
        let found = parameters.iter().find(|p| p["name"] == name);
        found.unwrap_or_else(|| panic!("{template} has no {name}"))["schema"].clone()
    };
    let status_of = |url: String| {
        let request = app.client.get(url).bearer_auth(&reader);
        async move { request.send().await.unwrap().status().as_u16() }
    };

    let cursor_schema = parameter(LIST, "cursor");
    let id = "507f1f77bcf86cd799439011";
    for position in [
        "0",
        "+0",
        "99999999999999999999",
        "-0",
        "-1",
        "000000000000000000001",
    ] {
        let cursor = hex::encode(format!("{position}.{id}"));
        let documented = contract.errors(&cursor_schema, &json!(cursor)).is_empty();
        let status = status_of(format!("{}?cursor={cursor}", list_url(&app, g.as_str()))).await;
        assert_eq!(status, if documented { 200 } else { 400 }, "{position}");
    }

    let limit_schema = parameter(LIST, "limit");
    for limit in [0, 1, 100, 101] {
        let documented = contract.errors(&limit_schema, &json!(limit)).is_empty();
        let status = status_of(format!("{}?limit={limit}", list_url(&app, g.as_str()))).await;
        assert_eq!(status, if documented { 200 } else { 400 }, "limit={limit}");
    }

    // An `after` beside a `Last-Event-ID` (which wins) is held to its documented form only.
    let after_schema = parameter(CHANGES, "after");
    for after in [
        "01-1",
        "5-0.5-0",
        "99999999999999999999-0",
        "zzz",
        "1-",
        "1-1.",
    ] {
        let documented = contract.errors(&after_schema, &json!(after)).is_empty();
        let url = app.url(&format!(
            "/v1/accounts/{g}/signals/scans/changes?after={after}"
        ));
        let request = app
            .client
            .get(url)
            .bearer_auth(&reader)
            .header("Last-Event-ID", "0-0");
        let status = request.send().await.unwrap().status().as_u16();
        assert_eq!(status, if documented { 200 } else { 400 }, "{after}");
    }

    let filters_schema = parameter(CHANGES, "scanId");
    for count in [100, 101] {
        let ids: Vec<String> = (0..count).map(|i| format!("{i:024x}")).collect();
        let documented = contract.errors(&filters_schema, &json!(ids)).is_empty();
        let query: Vec<String> = ids.iter().map(|id| format!("scanId={id}")).collect();
        let url = app.url(&format!(
            "/v1/accounts/{g}/signals/scans/changes?{}",
            query.join("&")
        ));
        assert_eq!(
            status_of(url).await,
            if documented { 200 } else { 400 },
            "{count}"
        );
    }
}
store_test!(parameters_are_refused_exactly_when_the_document_rejects_them);

/// An optional header is left out or sent as a string: never `null`, which no header can carry
/// (a generated client typed it nullable, and sent None into its HTTP library).
async fn optional_headers_are_typed_as_strings_never_null(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let contract = Contract::of(&app).await;
    let mut headers = Vec::new();
    for (_, operations) in contract.document["paths"].as_object().unwrap() {
        for (_, operation) in operations.as_object().unwrap() {
            let parameters = operation["parameters"].as_array().into_iter().flatten();
            headers.extend(parameters.filter(|p| p["in"] == "header"));
        }
    }

    let names: BTreeSet<&str> = headers
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["Idempotency-Key", "Last-Event-ID"]));
    for header in headers {
        assert_eq!(header["schema"]["type"], "string", "{header}");
        assert_eq!(header["required"], false, "{header}");
    }
}
store_test!(optional_headers_are_typed_as_strings_never_null);
