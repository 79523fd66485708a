//! What one request may be: its target, headers and body within their limits, an answer by the
//! request deadline, and a panicking handler that costs only its own request.

use std::time::{Duration, Instant};

use axum::routing::get;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::scan::ScanStatus;

use crate::helpers::{ApiResponse, Backend, Settings, TestApp, cancel_path, scans_path};
use crate::store_test;

async fn oversized_targets_headers_and_bodies_are_400_envelopes(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let url = app.url(&cancel_path(group.as_str(), scan.as_str()));

    let long_path = ApiResponse::of(
        app.client
            .post(app.url(&format!("/v1/accounts/{}/cancel", "a".repeat(5000))))
            .bearer_auth(&key),
    )
    .await;
    let big_header = ApiResponse::of(
        app.client
            .post(&url)
            .bearer_auth(&key)
            .header("x-padding", "p".repeat(20_000)),
    )
    .await;
    let big_body = ApiResponse::from(
        app.client
            .post(&url)
            .bearer_auth(&key)
            .body(vec![b'x'; 100_000])
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert!(
        long_path
            .assert_error(400, "VALIDATION_ERROR")
            .contains("request target")
    );
    assert!(
        big_header
            .assert_error(400, "VALIDATION_ERROR")
            .contains("headers")
    );
    assert!(
        big_body
            .assert_error(400, "VALIDATION_ERROR")
            .contains("body")
    );
    assert_eq!(
        app.status_of(&scan).await,
        ScanStatus::Queued,
        "nothing changed"
    );
}
store_test!(oversized_targets_headers_and_bodies_are_400_envelopes);

/// Sends `request` as raw bytes (so the test, not a client library, decides every header byte)
/// and returns the status and the JSON body, after checking the envelope's shape.
async fn send_raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(body["success"], status == 200, "{answer}");
    assert!(body["traceId"].is_string(), "{answer}");
    (status, body)
}

/// The limits are inclusive: exactly 2 KiB of target, 16 KiB of headers and 64 KiB of body are
/// served; one byte more is a 400 naming the limit.
async fn size_limits_accept_exactly_the_limit_and_refuse_one_byte_more(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let host = format!("host: {}\r\n", app.addr);
    let auth = format!("authorization: Bearer {key}\r\n");
    // Header bytes as the service counts them: names and values, no separators.
    let fixed_headers =
        "host".len() + app.addr.to_string().len() + "connection".len() + "close".len();

    let with_target = |length: usize| {
        let padding = "a".repeat(length - "/healthz?pad=".len());
        format!("GET /healthz?pad={padding} HTTP/1.1\r\n{host}connection: close\r\n\r\n")
    };
    let with_headers = |bytes: usize| {
        let padding = "p".repeat(bytes - fixed_headers - "x-padding".len());
        format!("GET /healthz HTTP/1.1\r\n{host}x-padding: {padding}\r\nconnection: close\r\n\r\n")
    };
    let with_body = |length: usize| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\n{host}{auth}content-length: {length}\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        request.resize(request.len() + length, b'x');
        request
    };

    for (what, at_limit, over_limit, named) in [
        (
            "target",
            with_target(2048).into_bytes(),
            with_target(2049).into_bytes(),
            "request target is 2049 bytes; the limit is 2048",
        ),
        (
            "headers",
            with_headers(16 * 1024).into_bytes(),
            with_headers(16 * 1024 + 1).into_bytes(),
            "headers are 16385 bytes; the limit is 16384",
        ),
        (
            "body",
            with_body(64 * 1024),
            with_body(64 * 1024 + 1),
            "request body is 65537 bytes; the limit is 65536",
        ),
    ] {
        let (accepted, _) = send_raw(app.addr, &at_limit).await;
        let (refused, body) = send_raw(app.addr, &over_limit).await;

        assert_eq!(accepted, 200, "{what} exactly at the limit");
        assert_eq!(refused, 400, "{what} one byte over");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(body["error"]["details"], named, "{what}");
    }
    let events = app.store.scan_events(&scan).await.unwrap();
    assert_eq!(
        events.len(),
        2,
        "only the body-at-the-limit cancel changed anything"
    );
}
store_test!(size_limits_accept_exactly_the_limit_and_refuse_one_byte_more);

/// Far past the table's limits, HTTP/1.1's own refusals: more than 100 header fields (431) or a
/// target of 65,535 bytes or more (414), bare, before the service; 100 fields reach it.
async fn over_http1_100_header_fields_are_served_and_more_refused_bare(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let host = format!("host: {}\r\n", app.addr);
    // `fields` in all: host, connection and the rest padding.
    let with_fields = |fields: usize| {
        let padding: String = (2..fields).map(|i| format!("x-f{i}: v\r\n")).collect();
        format!("GET /healthz HTTP/1.1\r\n{host}{padding}connection: close\r\n\r\n")
    };
    let target = "a".repeat(65_535 - "/healthz?pad=".len());
    let long_target =
        format!("GET /healthz?pad={target} HTTP/1.1\r\n{host}connection: close\r\n\r\n");

    let (served, _) = send_raw(app.addr, with_fields(100).as_bytes()).await;
    let too_many = bare_answer(app.addr, with_fields(101).as_bytes()).await;
    let too_long = bare_answer(app.addr, long_target.as_bytes()).await;

    assert_eq!(served, 200);
    for ((status, head, body), expected) in [(too_many, 431), (too_long, 414)] {
        assert_eq!(status, expected, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("x-request-id"),
            "{head}"
        );
        assert!(!body.contains("traceId"), "{body}");
    }
}
store_test!(over_http1_100_header_fields_are_served_and_more_refused_bare);

/// Sends `request` as raw bytes and reads the answer's status, head and body as they come, for an
/// answer that may not be the envelope. The server may answer and close before it has read the
/// whole request: what could not be written is left unsent.
async fn bare_answer(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// HTTP's rule for `Host`: an HTTP/1.1 request without one, any request with two, or one whose
/// value is no host and port is a 400 envelope naming it, and changes nothing; an HTTP/1.0
/// request may go without.
async fn a_request_without_one_valid_host_is_a_400_and_changes_nothing(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let path = cancel_path(group.as_str(), scan.as_str());
    let cancel = |version: &str, hosts: &str| {
        format!(
            "POST {path} {version}\r\n{hosts}authorization: Bearer {key}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
    };
    let host = format!("host: {}\r\n", app.addr);
    let invalid = "the Host header must be a host name or address with an optional port";

    for (hosts, named) in [
        (String::new(), "an HTTP/1.1 request must have a Host header"),
        (
            format!("{host}{host}"),
            "a request may have only one Host header",
        ),
        ("host: \r\n".to_owned(), invalid),
        ("host: user@localhost\r\n".to_owned(), invalid),
        ("host: local host\r\n".to_owned(), invalid),
        // A percent-escape, then a character no host may hold.
        ("host: ex%61@mple.com\r\n".to_owned(), invalid),
    ] {
        let (status, body) = send_raw(app.addr, cancel("HTTP/1.1", &hosts).as_bytes()).await;
        assert_eq!(status, 400, "{hosts:?}: {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{hosts:?}");
        assert_eq!(body["error"]["details"], named, "{hosts:?}");
    }
    assert_eq!(
        app.status_of(&scan).await,
        ScanStatus::Queued,
        "nothing changed"
    );

    let (status, body) = send_raw(app.addr, cancel("HTTP/1.0", "").as_bytes()).await;
    assert_eq!(status, 200, "HTTP/1.0 without Host: {body}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Cancelled);
    // An HTTP/1 absolute-form target's host is the request's (RFC 9112), whatever `Host` says.
    let absolute =
        format!("GET http://other.example/healthz HTTP/1.1\r\n{host}connection: close\r\n\r\n");
    let (status, body) = send_raw(app.addr, absolute.as_bytes()).await;
    assert_eq!(status, 200, "an absolute-form target: {body}");
}
store_test!(a_request_without_one_valid_host_is_a_400_and_changes_nothing);

/// Over HTTP/2 the host is `:authority`'s: one with user information is a 400, and so is a `Host`
/// beside it naming another host (RFC 9113, section 8.3.1); one naming the same, in any case, or
/// none, is served.
async fn over_http2_a_host_beside_authority_must_name_the_same(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (mut client, _driver) = crate::helpers::h2_client(app.addr, 65_535).await;
    let port = app.addr.port();
    let mut get = async |authority: &str, host: Option<&str>| {
        let mut request = axum::http::Request::get(format!("http://{authority}/healthz"));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let (response, _) = client
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        (
            status,
            body["error"]["details"].as_str().unwrap_or("").to_owned(),
        )
    };
    let here = format!("localhost:{port}");

    let served = [
        get(&here, None).await,
        get(&here, Some(&here.to_uppercase())).await,
    ];
    let elsewhere = get(&here, Some("elsewhere.example")).await;
    let with_user = get(&format!("user@{here}"), None).await;

    assert_eq!(served.map(|(status, _)| status), [200, 200]);
    assert_eq!(elsewhere.0, 400);
    assert_eq!(
        elsewhere.1,
        "the Host header must name the host the request's :authority names"
    );
    assert_eq!(with_user.0, 400);
    assert_eq!(
        with_user.1,
        "the request target's host must be a host name or address with an optional port"
    );
}
store_test!(over_http2_a_host_beside_authority_must_name_the_same);

/// Over HTTP/2 the header limit is the service's own too: 100 fields of exactly 16 KiB of names
/// and values in all are served, and one byte more is the 400 envelope naming the limit, never a
/// bare 431 from the HTTP/2 layer (which counts 32 bytes more a field, pseudo-headers included).
async fn over_http2_the_header_limit_is_the_services_own(backend: Backend) {
    const FIELDS: usize = 100;
    let app = TestApp::spawn(backend).await;
    let mut answers = Vec::new();
    for bytes in [16 * 1024, 16 * 1024 + 1] {
        let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        // Names of 5 bytes (`x-p00` to `x-p99`); the values share the rest, the first the remainder.
        let values = bytes - FIELDS * 5;
        let mut request = axum::http::Request::get(format!("http://{}/healthz", app.addr));
        for field in 0..FIELDS {
            let length = values / FIELDS + if field == 0 { values % FIELDS } else { 0 };
            request = request.header(format!("x-p{field:02}"), "p".repeat(length));
        }
        let request = request.body(()).unwrap();
        let (response, _) = client
            .ready()
            .await
            .unwrap()
            .send_request(request, true)
            .unwrap();
        let response = response.await.expect("an answer, not a reset");
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            read.extend_from_slice(&chunk);
        }
        let body: serde_json::Value = serde_json::from_slice(&read)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&read)));
        answers.push((status, body));
    }

    let [(accepted, served), (refused, body)] = &answers[..] else {
        unreachable!("two requests")
    };
    assert_eq!(*accepted, 200, "exactly at the limit: {served}");
    assert_eq!(*refused, 400, "one byte over: {body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(
        body["error"]["details"],
        "headers are 16385 bytes; the limit is 16384"
    );
    assert!(body["traceId"].is_string(), "{body}");
}
store_test!(over_http2_the_header_limit_is_the_services_own);

async fn a_stalled_request_answers_the_envelope_at_the_request_deadline(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            http: signal_scans::http::HttpSettings {
                request_timeout: Duration::from_millis(200),
                ..Settings::default().http
            },
            extra_routes: axum::Router::new().route(
                "/test/stall",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    ""
                }),
            ),
            ..Settings::default()
        },
    )
    .await;

    let started = Instant::now();
    let response = ApiResponse::of(app.client.get(app.url("/test/stall"))).await;
    let waited = started.elapsed();

    response.assert_error(500, "INTERNAL_ERROR");
    // At the 200 ms deadline: not before it, and far from the 15 s default or the 60 s stall.
    assert!(waited >= Duration::from_millis(200), "after {waited:?}");
    assert!(waited < Duration::from_secs(3), "after {waited:?}");
}
store_test!(a_stalled_request_answers_the_envelope_at_the_request_deadline);

/// A body that has not arrived by the request deadline is the client's fault: a 400 that says so,
/// not the 500 of a service that stalled, and nothing changes. On each route that reads a body.
async fn a_body_still_arriving_at_the_deadline_is_a_400(backend: Backend) {
    let app = Settings::default()
        .with_request_timeout(Duration::from_millis(300))
        .spawn(backend)
        .await;
    let group = crate::helpers::group();
    let key = app.writer(&group).await;
    let runner = app.runner(&group).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let running = app.scan(&group, ScanStatus::Running).await;
    let g = group.as_str();
    let body = format!(r#"{{"scanIds":["{scan}"]}}"#);
    for (path, key) in [
        (format!("/v1/accounts/{g}/signals/scans/cancel"), &key),
        (scans_path(g), &key),
        (
            format!("/v1/accounts/{g}/signals/scans/{running}/fail"),
            &runner,
        ),
    ] {
        // The headers announce the whole body; a tenth of it is sent, then nothing.
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            app.addr,
            body.len(),
            &body[..body.len() / 10],
        );
        let started = Instant::now();
        let (status, answer) = send_raw(app.addr, request.as_bytes()).await;
        let waited = started.elapsed();
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "VALIDATION_ERROR",
            "{path}: {answer}"
        );
        assert_eq!(
            answer["error"]["details"], "request body did not arrive within 300 ms",
            "{path}"
        );
        assert!(
            waited >= Duration::from_millis(300),
            "{path}: after {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "{path}: after {waited:?}");
    }
    assert_eq!(
        app.status_of(&scan).await,
        ScanStatus::Queued,
        "nothing changed"
    );
    assert_eq!(app.status_of(&running).await, ScanStatus::Running);
    let listed = ApiResponse::of(app.client.get(app.url(&scans_path(g))).bearer_auth(&key)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let scans = listed.body["data"]["scans"].as_array().unwrap();
    assert_eq!(scans.len(), 2, "no scan was started: {}", listed.body);
}
store_test!(a_body_still_arriving_at_the_deadline_is_a_400);

async fn a_panicking_handler_is_a_500_envelope_and_the_process_keeps_serving(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        Settings {
            extra_routes: axum::Router::new().route(
                "/test/panic",
                get(|| async {
                    panic!("secret internal detail");
                    #[allow(unreachable_code)]
                    ""
                }),
            ),
            ..Settings::default()
        },
    )
    .await;

    let response = ApiResponse::of(app.client.get(app.url("/test/panic"))).await;

    response.assert_error(500, "INTERNAL_ERROR");
    assert_eq!(response.body["error"]["message"], "Internal server error");
    assert!(!response.body.to_string().contains("secret internal detail"));
    let after = ApiResponse::of(app.client.get(app.url("/healthz"))).await;
    assert_eq!(after.status, 200);
}
store_test!(a_panicking_handler_is_a_500_envelope_and_the_process_keeps_serving);

/// `body` sent as HTTP/1.1 chunked transfer coding (in chunks of 8 KiB), without a length: what
/// the `Content-Length` check cannot see.
fn chunked_post(addr: std::net::SocketAddr, path: &str, key: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// A body sent chunked, without its length, passes the `Content-Length` check; a route that reads
/// a body (the batch cancel) still reads at most 64 KiB of it: exactly the limit is served, one
/// byte more is the 400 `request body is over the limit of 65536 bytes` and changes nothing. The
/// cancel, which takes no body, leaves one past the limit unread and answers. Without the read's
/// own limit a client could stream any amount into a handler's buffer.
async fn a_chunked_body_is_refused_once_past_the_limit_by_a_route_that_reads_one(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let (at_limit, over_limit, single) = (
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
        app.scan(&group, ScanStatus::Queued).await,
    );
    let batch_path = format!("/v1/accounts/{group}/signals/scans/cancel");
    // `{"scanIds":["…"]}` and JSON's own whitespace after it, to `length` bytes.
    let padded = |scan: &ScanId, length: usize| {
        let mut body = format!(r#"{{"scanIds":["{scan}"]}}"#).into_bytes();
        body.resize(length, b' ');
        body
    };

    let (accepted, served) = send_raw(
        app.addr,
        &chunked_post(app.addr, &batch_path, &key, &padded(&at_limit, 64 * 1024)),
    )
    .await;
    let (refused, body) = send_raw(
        app.addr,
        &chunked_post(
            app.addr,
            &batch_path,
            &key,
            &padded(&over_limit, 64 * 1024 + 1),
        ),
    )
    .await;
    let (ignored, _) = send_raw(
        app.addr,
        &chunked_post(
            app.addr,
            &cancel_path(group.as_str(), single.as_str()),
            &key,
            &vec![b'x'; 64 * 1024 + 1],
        ),
    )
    .await;

    assert_eq!(accepted, 200, "exactly the limit, chunked: {served}");
    assert_eq!(served["data"]["results"][0]["outcome"], "cancelled");
    assert_eq!(refused, 400, "one byte over, chunked: {body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    assert_eq!(
        body["error"]["details"],
        "request body is over the limit of 65536 bytes"
    );
    assert_eq!(app.status_of(&over_limit).await, ScanStatus::Queued);
    assert_eq!(ignored, 200, "the cancel reads no body, however long");
    assert_eq!(app.status_of(&single).await, ScanStatus::Cancelled);
}
store_test!(a_chunked_body_is_refused_once_past_the_limit_by_a_route_that_reads_one);
