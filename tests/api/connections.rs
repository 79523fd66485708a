//! The connection layer against hostile clients: made-up methods by the thousand, connections that
//! never finish their headers or sit idle, more connections than allowed, HTTP/2 streams opened and
//! reset by the thousand, and the peer address reaching the handlers. Where memory is the question
//! the real binary runs and its own `/proc/<pid>/status` is read; bounds on time only prove that a
//! timeout fired, with room for a loaded machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::http2::{Wire, goaways_of_an_idle_connection, h2_recorded_client};
use crate::helpers::process::ServerProcess;
use crate::helpers::{
    ApiResponse, Backend, TestApp, TestDatabase, cancel_path, child, group, h2_client,
};
use crate::store_test;

/// The real binary serving `backend`'s fresh database with `env` added to its settings; the
/// application that made the database, to arrange with.
async fn serving(backend: Backend, env: &[(&str, &str)]) -> (TestApp, ServerProcess) {
    let app = TestApp::spawn(backend).await;
    let mut settings = vec![("DATABASE_URL", app.db.url.as_str())];
    settings.extend_from_slice(env);
    let server = ServerProcess::start(&settings).await;
    (app, server)
}

/// [`serving`] with `HTTP_HEADER_TIMEOUT_MS` and `HTTP_IDLE_TIMEOUT_MS` set.
async fn serving_with_clocks(
    backend: Backend,
    header_ms: &str,
    idle_ms: &str,
) -> (TestApp, ServerProcess) {
    let settings = [
        ("HTTP_HEADER_TIMEOUT_MS", header_ms),
        ("HTTP_IDLE_TIMEOUT_MS", idle_ms),
    ];
    serving(backend, &settings).await
}

/// Memory a process may gain over a run that should leave nothing behind.
const FLAT_KIB: u64 = 5 * 1024;

/// A 4 KiB method nobody has heard of, different for every `i`.
fn made_up_method(tag: &str, i: usize) -> reqwest::Method {
    let name = format!("{tag}{i:05}{}", "X".repeat(4096 - tag.len() - 5));
    reqwest::Method::from_bytes(name.as_bytes()).unwrap()
}

/// 5,000 requests with distinct made-up methods, on a known path (405) and an unknown one (404):
/// no answer, metric or log line carries any of them, `/metrics` stays small, and the process
/// keeps no memory for them.
async fn made_up_methods_leave_no_label_log_line_or_memory_behind(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let client = reqwest::Client::new();
    // Half to a known path (405), half to unknown paths, each its own: a label taken from the
    // raw path would show them.
    let send = |method: reqwest::Method, i: usize| {
        let path = match i.is_multiple_of(2) {
            true => "/healthz".to_owned(),
            false => format!("/no/such/route/{i}"),
        };
        let request = client.request(method, server.url(&path));
        async move { ApiResponse::from(request.send().await.expect("answered")).await }
    };
    // Warm-up with the same shape of traffic: allocator arenas, connections, lazily built state.
    // (Each answer is checked as it is read: `ApiResponse::from` holds it to the envelope.)
    let _warm_up: Vec<ApiResponse> = futures::stream::iter(0..500)
        .map(|i| send(made_up_method("WARMUP", i), i))
        .buffer_unordered(16)
        .collect()
        .await;
    let metrics_before = server.metrics().await;
    let before = server.rss_kib();

    let answers: Vec<ApiResponse> = futures::stream::iter(0..5000)
        .map(|i| send(made_up_method("HOSTILE", i), i))
        .buffer_unordered(16)
        .collect()
        .await;
    let after = server.rss_kib();
    let metrics = server.metrics().await;
    // Each answer's own line is written before the answer: the last of them is on its way.
    server
        .until_events(|events| finished_with_method_other(events) >= 5500)
        .await;
    let logs = server.logs();

    for answer in &answers {
        let body = answer.body.to_string();
        assert!(!body.contains("HOSTILE"), "the method is echoed: {body}");
        match answer.status.as_u16() {
            405 => assert_eq!(
                answer.assert_error(405, "METHOD_NOT_ALLOWED"),
                "this method is not allowed on this path; see the Allow header"
            ),
            _ => {
                answer.assert_error(404, "NOT_FOUND");
            }
        }
    }
    assert!(
        metrics.len() < 200 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(!metrics.contains("HOSTILE") && !metrics.contains("WARMUP"));
    assert!(!metrics.contains("/no/such"), "a raw path is a label");
    let counted = |series: &str| {
        crate::helpers::metrics::count(&metrics, series)
            - crate::helpers::metrics::count(&metrics_before, series)
    };
    assert_eq!(
        counted(r#"http_requests_total{route="/healthz",method="other",status="405"}"#),
        2500.0,
        "{metrics}"
    );
    assert_eq!(
        counted(r#"http_requests_total{route="unmatched",method="other",status="404"}"#),
        2500.0,
        "{metrics}"
    );
    assert!(
        logs.iter().all(|line| !line.contains("HOSTILE")),
        "a made-up method reached the logs"
    );
    assert!(
        logs.iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|event| event["span"]["http.method"] == "other")
        }),
        "requests with made-up methods are logged as method other"
    );
    println!("RSS before {before} KiB, after 5,000 made-up methods {after} KiB");
    assert!(
        after.saturating_sub(before) < FLAT_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
store_test!(made_up_methods_leave_no_label_log_line_or_memory_behind);

/// How many requests were logged as finished with the method `other`.
fn finished_with_method_other(events: &[serde_json::Value]) -> usize {
    events
        .iter()
        .filter(|event| {
            event["message"] == "finished processing request"
                && event["span"]["http.method"] == "other"
        })
        .count()
}

/// Reads until the peer closes (EOF or reset); `false` if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// 300 connections that send half a request (and a few that start the HTTP/2 preface and stop)
/// are all closed by the server soon after `HTTP_HEADER_TIMEOUT_MS`, while `/healthz` answers
/// every probe.
async fn half_sent_requests_are_cut_off_while_the_service_answers(backend: Backend) {
    let (_app, server) = serving(backend, &[("HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut half_sent = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let half: &[u8] = match i % 30 {
            0 => b"PRI * HTTP/2.0\r\n",
            _ => b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Never-Finished: ",
        };
        stream.write_all(half).await.unwrap();
        half_sent.push(stream);
    }
    let sent = Instant::now();

    let cut_off = async {
        let closed = join_all(
            half_sent
                .iter_mut()
                .map(|stream| closed_within(stream, Duration::from_secs(10))),
        )
        .await;
        (closed, sent.elapsed())
    };
    let probes = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut statuses = Vec::new();
        while sent.elapsed() < Duration::from_secs(3) {
            let status = client
                .get(server.url("/healthz"))
                .send()
                .await
                .map(|response| response.status().as_u16());
            statuses.push(status.map_err(|error| error.to_string()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    };
    let ((closed, all_closed_after), statuses) = tokio::join!(cut_off, probes);

    assert!(closed.iter().all(|closed| *closed), "a connection was kept");
    assert!(
        all_closed_after < Duration::from_secs(3),
        "the last half-sent request was cut off {all_closed_after:?} after sending"
    );
    assert!(statuses.len() >= 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|status| *status == Ok(200)),
        "{statuses:?}"
    );
}
store_test!(half_sent_requests_are_cut_off_while_the_service_answers);

/// A client that sends its header block slowly but finishes within `HTTP_HEADER_TIMEOUT_MS`
/// is served.
async fn a_slow_but_steady_client_is_served(backend: Backend) {
    let (_app, server) = serving(backend, &[("HTTP_HEADER_TIMEOUT_MS", "4000")]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for piece in [
        "GET /healthz HTTP/1.1\r\n",
        "Host: localhost\r\n",
        "X-Slow: 1\r\n",
        "X-Slower: 2\r\n",
        "Connection: close\r\n",
        "\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
store_test!(a_slow_but_steady_client_is_served);

/// Reads one HTTP/1.1 response (head and Content-Length body) off a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before a whole response");
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// A kept-alive HTTP/1.1 connection that has just been answered `GET /healthz`: the answer, and
/// when it was read.
async fn healthz_kept_alive(addr: SocketAddr) -> (TcpStream, String, Instant) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    (stream, answer, Instant::now())
}

/// An HTTP/2 exchange: the answer's status, the concurrent streams the server allows, and the
/// connection's driver, which ends when the server closes the connection.
struct H2Exchange {
    status: u16,
    max_concurrent_streams: usize,
    driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
    /// Held so that the client does not end the connection itself: h2 closes a connection once
    /// its last handle is dropped and no stream is open.
    client: h2::client::SendRequest<axum::body::Bytes>,
    wire: Arc<Wire>,
}

/// Opens an HTTP/2 connection (prior knowledge) and sends `GET path`.
async fn h2_get(addr: SocketAddr, path: &str) -> H2Exchange {
    let (mut client, driver, wire) = h2_recorded_client(addr).await;
    let request = axum::http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let status = response.await.unwrap().status().as_u16();
    // The server's SETTINGS have arrived by the time it answered.
    let max_concurrent_streams = client.current_max_send_streams();
    H2Exchange {
        status,
        max_concurrent_streams,
        driver,
        client,
        wire,
    }
}

/// With `HTTP_IDLE_TIMEOUT_MS=1000`, a kept-alive HTTP/1.1 connection and an HTTP/2 connection
/// are each closed soon after their last request, though the header timeout is far longer; the
/// HTTP/2 connection advertises `HTTP2_MAX_CONCURRENT_STREAMS`, and is closed with a GOAWAY.
async fn idle_connections_are_closed(backend: Backend) {
    let (_app, server) = serving(
        backend,
        &[
            ("HTTP_IDLE_TIMEOUT_MS", "1000"),
            ("HTTP_HEADER_TIMEOUT_MS", "30000"),
            ("HTTP2_MAX_CONCURRENT_STREAMS", "7"),
        ],
    )
    .await;

    let (mut http1, answer, answered) = healthz_kept_alive(server.addr).await;
    let http1_closed = closed_within(&mut http1, Duration::from_secs(10)).await;
    let http1_idle_for = answered.elapsed();

    let mut http2 = h2_get(server.addr, "/healthz").await;
    let answered = Instant::now();
    let http2_closed = tokio::time::timeout(Duration::from_secs(10), &mut http2.driver)
        .await
        .is_ok();
    let http2_idle_for = answered.elapsed();
    let after_close = http2
        .client
        .send_request(axum::http::Request::get("/healthz").body(()).unwrap(), true)
        .map(|_| ())
        .unwrap_err();

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("connection: close"));
    assert!(http1_closed, "the idle HTTP/1.1 connection was kept");
    // Closed by the 1 s idle timeout: not at once, and long before the 30 s header timeout.
    // (The server's clock starts as it sends the answer, a moment before the client has it.)
    assert!(
        http1_idle_for >= Duration::from_millis(900) && http1_idle_for < Duration::from_secs(3),
        "{http1_idle_for:?}"
    );
    assert_eq!(http2.status, 200);
    assert_eq!(http2.max_concurrent_streams, 7);
    assert!(http2_closed, "the idle HTTP/2 connection was kept");
    // Closed with a GOAWAY, which tells its client that no request of its was left unanswered;
    // a connection simply closed is a broken pipe to it. The first says only that no more are
    // taken; the last, sent once its PING is answered, names the last stream taken (its one).
    assert!(
        after_close.is_go_away() && after_close.reason() == Some(h2::Reason::NO_ERROR),
        "{after_close:?}"
    );
    assert_eq!(
        goaways_of_an_idle_connection(server.addr).await,
        [i32::MAX as u32, 1]
    );
    assert!(
        http2_idle_for >= Duration::from_millis(900) && http2_idle_for < Duration::from_secs(3),
        "{http2_idle_for:?}"
    );
}
store_test!(idle_connections_are_closed);

/// An HTTP/2 client that opens no window takes none of its answer's body, and its connection is
/// closed after the idle timeout, saying so: any route (here `/healthz`, no key needed) held a
/// connection for good that way, so a few such clients used up `MAX_CONNECTIONS`.
async fn a_connection_whose_client_opens_no_window_is_closed(backend: Backend) {
    let (_app, server) = serving(backend, &[("HTTP_IDLE_TIMEOUT_MS", "500")]).await;
    let (mut client, connection) = h2_client(server.addr, 0).await;
    let request = axum::http::Request::get(format!("http://{}/healthz", server.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let answered = response.await.unwrap();
    let since = Instant::now();

    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;

    assert_eq!(answered.status(), 200);
    assert!(closed.is_ok(), "the connection was still open after 10 s");
    assert!(
        since.elapsed() >= Duration::from_millis(400),
        "{:?}",
        since.elapsed()
    );
    server
        .until_logged(|event| {
            event["message"] == "closing a connection whose client stopped taking its answers"
                && event["level"] == "INFO"
        })
        .await;
    drop(client);
}
store_test!(a_connection_whose_client_opens_no_window_is_closed);

/// An idle HTTP/2 client that answers no PING (so is never sent the GOAWAY naming its last
/// stream) holds no stop: its connection is closed a moment after the first GOAWAY. It held the
/// whole `SHUTDOWN_TIMEOUT_MS`, logged as requests still in flight.
async fn a_client_that_answers_no_ping_does_not_hold_the_stop(backend: Backend) {
    let (_app, mut server) = serving(backend, &[("SHUTDOWN_TIMEOUT_MS", "10000")]).await;
    let http2 = h2_get(server.addr, "/healthz").await;
    http2.wire.stop_reading();
    let asked = Instant::now();
    server.terminate();
    let exit = server.wait(Duration::from_secs(15)).await;

    assert_eq!(http2.status, 200);
    assert!(exit.success(), "{exit:?}");
    // The closing grace (1 s), far from the drain's 10.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let logs = server
        .until_logged(|event| event["message"] == "stopped")
        .await;
    assert!(
        !logs.iter().any(|event| event["message"]
            == "requests still in flight after the drain time; stopping anyway"),
        "{logs:?}"
    );
}
store_test!(a_client_that_answers_no_ping_does_not_hold_the_stop);

/// A response its client reads slowly is delivered whole through a stop: hyper holds its last
/// bytes, no request is in progress any more, and the connection was dropped a second after the
/// SIGTERM, its answer short of its `Content-Length` (every answer over about 130 KB to a client
/// slower than about 100 KB/s, in a rolling deploy).
async fn a_response_read_slowly_is_delivered_whole_through_a_stop(backend: Backend) {
    let (_app, mut server) = serving(backend, &[("SHUTDOWN_TIMEOUT_MS", "30000")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let started = Instant::now();
    let mut asked_to_stop = false;
    // About 40 KB/s: the kernel's queue (`UNSENT_BYTES`) takes seconds to drain.
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
        if !asked_to_stop && started.elapsed() > Duration::from_secs(1) {
            server.terminate();
            asked_to_stop = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = server.wait(Duration::from_secs(30)).await;

    let answer = String::from_utf8_lossy(&received);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(asked_to_stop);
    assert!(length > 100_000, "{length}");
    assert_eq!(body.len(), length);
    assert!(exit.success(), "{exit:?}");
}
store_test!(a_response_read_slowly_is_delivered_whole_through_a_stop);

/// A response its client reads slowly is delivered whole: while its bytes still move, the
/// connection is not idle. Over HTTP/2 the client grants its window 4 KiB at a time, every
/// 100 ms, so the server holds most of `/openapi.json` after the handler is done with it; with
/// an idle timeout of 500 ms the connection was dropped mid-body. The second time, the client
/// also opens a change stream on the connection and resets it while the document is on its way:
/// the reset stream's end forgot what the document still owed, and the connection was dropped
/// an idle timeout later with its bytes still moving. The timeout is a second, ten of the
/// client's pauses: a test process stalled 400 ms on a loaded machine made 500 ms look idle.
async fn a_response_read_slowly_is_delivered_whole(backend: Backend) {
    let (app, server) = serving(backend, &[("HTTP_IDLE_TIMEOUT_MS", "1000")]).await;
    let group = group();
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    for reset_another in [false, true] {
        let (mut client, _driver) = h2_client(server.addr, 4096).await;
        let get = |path: String| {
            axum::http::Request::get(format!("http://{}{path}", server.addr))
                .header("authorization", format!("Bearer {reader}"))
                .body(())
                .unwrap()
        };
        let started = Instant::now();
        let (response, _) = client
            .send_request(get("/openapi.json".into()), true)
            .unwrap();
        let response = response.await.unwrap();
        let length: usize = response.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if reset_another {
            let changes = format!("/v1/accounts/{group}/signals/scans/changes");
            let (stream, mut request) = client.send_request(get(changes), true).unwrap();
            let mut stream = stream.await.unwrap().into_body();
            assert!(stream.data().await.is_some(), "the stream's opening block");
            request.send_reset(h2::Reason::CANCEL);
        }
        let mut body = response.into_body();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap_or_else(|error| {
                panic!("cut off after {received} bytes (reset another: {reset_another}): {error}")
            });
            received += chunk.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }

        assert_eq!(received, length, "reset another: {reset_another}");
        // The read outlasted the idle timeout twice over.
        assert!(
            started.elapsed() > Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
store_test!(a_response_read_slowly_is_delivered_whole);

/// What the server writes that no response owes does not keep a connection: an HTTP/2 client
/// that, its answer read, sends a PING every 100 ms (each answered, a write) is closed at the
/// 500-ms idle timeout all the same, and so is one whose stream it reset before reading it
/// (what was never sent is owed no more).
async fn pings_do_not_keep_an_idle_connection(backend: Backend) {
    let (_app, server) = serving(backend, &[("HTTP_IDLE_TIMEOUT_MS", "500")]).await;
    for reset in [false, true] {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (client, mut connection) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, axum::body::Bytes>(tcp)
            .await
            .unwrap();
        let mut pings = connection.ping_pong().unwrap();
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = axum::http::Request::get(format!("http://{}/openapi.json", server.addr))
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        if reset {
            // Most of the answer is still the server's to send: it was held back by the window.
            stream.send_reset(h2::Reason::CANCEL);
        } else {
            while let Some(chunk) = body.data().await {
                body.flow_control()
                    .release_capacity(chunk.unwrap().len())
                    .unwrap();
            }
        }
        drop(body);
        let quiet = Instant::now();
        let kept = async {
            while pings.ping(h2::Ping::opaque()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(5), kept)
            .await
            .is_ok();
        let idle_for = quiet.elapsed();

        assert!(closed, "pings kept the connection (reset: {reset})");
        assert!(
            idle_for < Duration::from_secs(3),
            "{idle_for:?} (reset: {reset})"
        );
        driver.abort();
        drop(client);
    }
}
store_test!(pings_do_not_keep_an_idle_connection);

/// The header clock of a kept-alive connection's next request starts with that request's first
/// byte, not when the previous response went out: with `HTTP_HEADER_TIMEOUT_MS=1000` a kept-alive
/// connection quiet for 2.5 s still serves its next request (the idle timeout governs the wait),
/// and a next request that stops halfway through its header block is cut off.
async fn a_kept_alive_connection_gets_a_fresh_header_clock_per_request(backend: Backend) {
    let (_app, server) = serving_with_clocks(backend, "1000", "60000").await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let first = read_response(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream.write_all(request).await.unwrap();
    let after_a_quiet_while = read_response(&mut stream).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let half_sent = Instant::now();
    let cut_off = closed_within(&mut stream, Duration::from_secs(10)).await;

    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        after_a_quiet_while.starts_with("HTTP/1.1 200"),
        "{after_a_quiet_while}"
    );
    assert!(cut_off, "the half-sent request kept its connection");
    assert!(
        half_sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        half_sent.elapsed()
    );
}
store_test!(a_kept_alive_connection_gets_a_fresh_header_clock_per_request);

/// A kept-alive connection's next request begun just before the idle timeout has the whole
/// header timeout from its first byte: with both at 2 s, a header begun at 1.5 s and finished at
/// 2.5 s is answered. The idle clock closed the connection at 2 s, the request half-read and
/// unanswered (the HTTP review).
async fn a_request_begun_before_the_idle_timeout_is_answered(backend: Backend) {
    let (_app, server) = serving_with_clocks(backend, "2000", "2000").await;
    let (mut stream, first, answered) = healthz_kept_alive(server.addr).await;

    tokio::time::sleep_until((answered + Duration::from_millis(1500)).into()).await;
    stream.write_all(b"GET /hea").await.unwrap();
    tokio::time::sleep_until((answered + Duration::from_millis(2500)).into()).await;
    stream
        .write_all(b"lthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut stream).await;

    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
}
store_test!(a_request_begun_before_the_idle_timeout_is_answered);

/// With `MAX_CONNECTIONS=4` and four connections open, a fifth is not served (it waits in the
/// accept backlog) until one of the four goes away; then it is.
async fn past_max_connections_new_ones_wait_for_a_free_slot(backend: Backend) {
    let (_app, server) = serving(backend, &[("MAX_CONNECTIONS", "4")]).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        open.push(stream);
    }

    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    fifth.write_all(request).await.unwrap();
    let mut first_byte = [0u8; 1];
    let while_full =
        tokio::time::timeout(Duration::from_secs(1), fifth.read(&mut first_byte)).await;
    drop(open.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut fifth)).await;

    assert!(while_full.is_err(), "served past MAX_CONNECTIONS");
    let answer = answer.expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
store_test!(past_max_connections_new_ones_wait_for_a_free_slot);

/// Each connection is a file descriptor. `serve` raises the soft open-file limit it was started
/// with to the hard one (a soft limit of 1,024, systemd's and recent Docker's, stopped it
/// accepting at about 1,020 connections, far below `MAX_CONNECTIONS`), and warns when even the
/// hard limit is below what the settings may open. Fails if the inherited limit is kept, or if the
/// warning is missing or given for enough.
#[tokio::test]
async fn serve_raises_its_open_file_limit_and_says_when_it_is_too_low() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("MAX_CONNECTIONS", "400"),
    ];
    let too_low = "the open-file limit is below MAX_CONNECTIONS";

    let soft_only = ServerProcess::start_after("ulimit -Sn 256", &env).await;
    // 400 connections, 10 of the pool and 64 more: 474.
    let short = ServerProcess::start_after("ulimit -n 300", &env).await;
    let enough = ServerProcess::start_after("ulimit -n 600", &env).await;

    let (soft, hard) = soft_only.open_file_limit();
    assert!(hard > 256, "this machine's hard limit: {hard}");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    assert_eq!(short.open_file_limit(), (300, 300));
    let warned = |server: &ServerProcess| server.logs().iter().any(|line| line.contains(too_low));
    assert!(warned(&short), "{:?}", short.logs());
    assert!(!warned(&enough), "{:?}", enough.logs());
    assert!(!warned(&soft_only), "{:?}", soft_only.logs());
}

/// Clients that ask for the API reference's largest file and never read hold no copy of it each:
/// 100 of them, unauthenticated, grew the process by about 1.4 MB each (a copy of Swagger UI's
/// 1.5-MB bundle per response, unzipped anew), so a thousand held gigabytes. They now share the
/// binary's copy, and the plain form unzipped once.
#[tokio::test]
async fn clients_that_never_read_the_docs_hold_no_copy_of_them_each() {
    const CLIENTS: usize = 100;
    let database = TestDatabase::create(Backend::Sqlite).await;
    let server = ServerProcess::start(&[("DATABASE_URL", database.url.as_str())]).await;
    let request = "GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n";
    let stalled = async || {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut connection = socket.connect(server.addr).await.unwrap();
        connection.write_all(request.as_bytes()).await.unwrap();
        connection
    };
    // Warm-up: one client reads the file whole (the plain form, made once), one stalls.
    let whole = reqwest::get(server.url("/docs/swagger-ui-bundle.js"))
        .await
        .unwrap();
    assert!(whole.bytes().await.unwrap().len() > 1_000_000);
    let _first = stalled().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();

    let _clients = join_all((0..CLIENTS).map(|_| stalled())).await;
    // The service has written what the sockets take and holds the rest of each response.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();

    println!("{CLIENTS} stalled readers of the bundle: RSS {before} KiB -> {after} KiB");
    assert!(
        after.saturating_sub(before) < 100 * 64,
        "RSS grew from {before} KiB to {after} KiB: more than 64 KiB a client"
    );
}

/// Runs `curl --http2-prior-knowledge`; returns the HTTP version curl used, the status and the
/// body as JSON.
async fn curl_h2(args: &[&str], url: &str) -> (String, u16, serde_json::Value) {
    let output = tokio::process::Command::from(child::cleared("curl"))
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (body, last) = stdout.rsplit_once('\n').unwrap();
    let (version, status) = last.split_once(' ').unwrap();
    (
        version.to_owned(),
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

/// The same port speaks HTTP/2 with prior knowledge (h2c), as proxies may to a backend: a cancel
/// over it answers the same envelope as over HTTP/1.1, and so does a refusal.
async fn http2_with_prior_knowledge_cancels_with_the_same_envelope(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Running).await;
    let url = app.url(&cancel_path(group.as_str(), scan.as_str()));

    let (version, status, cancelled) = curl_h2(
        &["-X", "POST", "-H", &format!("Authorization: Bearer {key}")],
        &url,
    )
    .await;
    let (_, refused_status, refused) = curl_h2(&["-X", "POST"], &url).await;
    let refused_http1 = app.cancel(None, group.as_str(), scan.as_str()).await;

    assert_eq!(version, "2");
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["success"], true);
    assert_eq!(cancelled["data"]["scanId"], scan.as_str());
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert_eq!(cancelled["data"]["previousStatus"], "running");
    assert!(cancelled["error"].is_null());
    assert!(
        cancelled["traceId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(app.status_of(&scan).await, ScanStatus::Cancelled);
    assert_eq!(refused_status, 401);
    assert_eq!(refused["error"], refused_http1.body["error"]);
    assert_eq!(refused["success"], false);
    assert!(refused["data"].is_null());
}
store_test!(http2_with_prior_knowledge_cancels_with_the_same_envelope);

/// Opens `count` HTTP/2 streams to `path` and resets each at once, on as many connections as the
/// server's reset-flood protection makes it take (it may end a connection that resets too fast).
/// Returns the number of connections used.
async fn open_and_reset(addr: SocketAddr, path: &str, key: &str, count: usize) -> usize {
    let mut reset = 0;
    let mut connections = 0;
    while reset < count {
        connections += 1;
        assert!(connections <= 500, "cannot open streams any more");
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(connection);
        while reset < count {
            client = match client.ready().await {
                Ok(client) => client,
                Err(_) => break,
            };
            let request = axum::http::Request::get(format!("http://{addr}{path}"))
                .header("authorization", format!("Bearer {key}"))
                .body(())
                .unwrap();
            let Ok((_response, mut stream)) = client.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            reset += 1;
        }
        // Ends the connection (and with it the client's handle).
        driver.abort();
    }
    connections
}

/// 1,000 streams opened and reset on HTTP/2 leave the service answering and its memory flat.
async fn http2_streams_reset_by_the_thousand_leave_the_service_answering(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    app.scan(&group, ScanStatus::Queued).await;
    // A small pool is full after the warm-up, so a connection it opens later is not counted as
    // memory the resets kept.
    let server =
        ServerProcess::start(&[("DATABASE_URL", &app.db.url), ("DB_MAX_CONNECTIONS", "2")]).await;
    let path = format!("/v1/accounts/{}/signals/scans", group.as_str());
    // Warm-up with the same traffic: the database pool fills, allocator arenas settle.
    open_and_reset(server.addr, &path, &key, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();

    let connections = open_and_reset(server.addr, &path, &key, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status_h2 = h2_get(server.addr, "/healthz").await.status;
    let listed = reqwest::Client::new()
        .get(server.url(&path))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let after = server.rss_kib();

    println!(
        "1,000 streams reset over {connections} connection(s); RSS {before} KiB -> {after} KiB"
    );
    assert_eq!(status_h2, 200);
    let listed = ApiResponse::from(listed).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(
        after.saturating_sub(before) < FLAT_KIB,
        "RSS grew from {before} KiB to {after} KiB"
    );
}
store_test!(http2_streams_reset_by_the_thousand_leave_the_service_answering);

/// The peer address reaches the handlers over both protocols: the failed-authentication log
/// line (and limiter) sees 127.0.0.1, not a placeholder.
async fn the_peer_address_reaches_the_handlers_over_http1_and_http2(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let server = ServerProcess::start(&[("DATABASE_URL", &app.db.url)]).await;
    let url = server.url(&cancel_path(group.as_str(), scan.as_str()));

    let http1 = reqwest::Client::new().post(&url).send().await.unwrap();
    let (_, http2_status, _) = curl_h2(&["-X", "POST"], &url).await;
    server
        .until_events(|events| {
            let failed = |event: &&serde_json::Value| event["message"] == "authentication failed";
            events.iter().filter(failed).count() >= 2
        })
        .await;

    assert_eq!(http1.status(), 401);
    assert_eq!(http2_status, 401);
    let peers: Vec<String> = server
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "authentication failed")
        .map(|event| {
            event["client.address"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect();
    assert_eq!(peers, ["127.0.0.1", "127.0.0.1"]);
}
store_test!(the_peer_address_reaches_the_handlers_over_http1_and_http2);
