//! The API reference at /docs: Swagger UI served from the binary, no key needed, nothing loaded
//! from another host, the envelope for anything else, and gone when `DOCS_ENABLED` is false.
//! (The page working in a real browser is scripts/browser-test.sh's job.)

use std::io::Read;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::Value;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp};
use crate::store_test;

/// A GET without redirects, compression or key, as read by a client that sends `accept_encoding`.
async fn fetch(
    app: &TestApp,
    path: &str,
    accept_encoding: &str,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(path))
        .header("accept-encoding", accept_encoding)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut plain)
        .expect("a gzip body");
    plain
}

/// The `src`/`href` values of an HTML page.
fn references(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attribute| html.split(attribute).skip(1))
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

async fn the_root_and_docs_redirect_to_the_reference_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let (status, headers, _) = fetch(&app, "/", "identity").await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header(&headers, LOCATION.as_str()), Some("/docs/"));
    let (status, headers, _) = fetch(&app, "/docs", "identity").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&headers, LOCATION.as_str()), Some("/docs/"));
}
store_test!(the_root_and_docs_redirect_to_the_reference_page);

async fn the_page_and_every_asset_it_loads_come_from_the_binary_without_a_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let (status, headers, body) = fetch(&app, "/docs/", "identity").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(header(&headers, "x-request-id").is_some());
    let html = String::from_utf8(body).unwrap();
    let assets = references(&html);
    assert!(
        assets
            .iter()
            .any(|asset| asset.ends_with("swagger-ui-bundle.js")),
        "{html}"
    );
    for asset in &assets {
        assert!(
            !asset.contains("//") && !asset.starts_with('/'),
            "{asset} is not relative to /docs/"
        );
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let (status, headers, body) = fetch(&app, &path, "identity").await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(header(&headers, "content-encoding"), None, "{path}");
        assert!(!body.is_empty(), "{path}");
    }

    // The initializer reads this service's document and never calls the public validator.
    let (_, _, initializer) = fetch(&app, "/docs/swagger-initializer.js", "gzip").await;
    let initializer = String::from_utf8(initializer).unwrap();
    assert!(
        initializer.contains("\"url\": \"/openapi.json\""),
        "{initializer}"
    );
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );
}
store_test!(the_page_and_every_asset_it_loads_come_from_the_binary_without_a_key);

async fn assets_are_gzipped_only_for_clients_that_accept_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let (status, plain_headers, plain) =
        fetch(&app, "/docs/swagger-ui-bundle.js", "identity").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&plain_headers, "content-encoding"), None);
    assert!(String::from_utf8_lossy(&plain).contains("SwaggerUIBundle"));

    let (status, zipped_headers, zipped) =
        fetch(&app, "/docs/swagger-ui-bundle.js", "gzip, br").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&zipped_headers, "content-encoding"), Some("gzip"));
    assert_eq!(header(&zipped_headers, "vary"), Some("accept-encoding"));
    assert!(
        zipped.len() < plain.len() / 2,
        "{} vs {}",
        zipped.len(),
        plain.len()
    );
    assert_eq!(gunzip(&zipped), plain);
}
store_test!(assets_are_gzipped_only_for_clients_that_accept_it);

async fn docs_answer_other_methods_and_unknown_files_like_any_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let c = &app.client;

    for path in [
        "/docs/nope.js",
        "/docs/..%2F..%2Fetc%2Fpasswd",
        "/docs/dist/index.html",
    ] {
        let missing = c.get(app.url(path)).send().await.unwrap();
        let details = ApiResponse::from(missing)
            .await
            .assert_error(404, "NOT_FOUND");
        assert_eq!(details, "the API reference has no such file");
    }
    for (method, path) in [
        (reqwest::Method::POST, "/docs/"),
        (reqwest::Method::DELETE, "/docs/index.html"),
        (reqwest::Method::PUT, "/docs"),
        (reqwest::Method::POST, "/"),
    ] {
        let response = c
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        let response = ApiResponse::from(response).await;
        response.assert_error(405, "METHOD_NOT_ALLOWED");
        assert_eq!(
            response.header("allow"),
            Some("GET,HEAD"),
            "{method} {path}"
        );
    }

    // HEAD is answered as on every GET route (/healthz here): the GET's status and headers, no body.
    for path in ["/healthz", "/docs/"] {
        let head = c.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        assert!(head.headers().contains_key("x-request-id"), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    let head = c.head(app.url("/docs/nope.js")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}
store_test!(docs_answer_other_methods_and_unknown_files_like_any_route);

async fn docs_disabled_is_an_unknown_route(backend: Backend) {
    let mut settings = Settings::default();
    settings.http.docs_enabled = false;
    let app = TestApp::spawn_with(backend, settings).await;
    let c = &app.client;

    for path in [
        "/",
        "/docs",
        "/docs/",
        "/docs/index.html",
        "/docs/swagger-ui-bundle.js",
    ] {
        let response = c.get(app.url(path)).send().await.unwrap();
        ApiResponse::from(response)
            .await
            .assert_error(404, "NOT_FOUND");
    }
    let document = c.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(document.status(), StatusCode::OK);
    let document: Value = document.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}
store_test!(docs_disabled_is_an_unknown_route);
