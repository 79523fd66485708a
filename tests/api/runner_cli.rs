//! The command line as a runner host has it: only the service's URL and an API key
//! (`SIGNAL_SCANS_API_KEY`), no database credentials; and `scans watch` lines that resume.

use std::future::Future;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Backend, Settings, TestApp, child, group};
use crate::store_test;

/// The binary with a cleared environment: `PATH`, the key and `envs` only (no `DATABASE_URL`),
/// run in `folder`.
fn run(folder: &std::path::Path, key: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"))
        .args(args)
        .current_dir(folder)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SIGNAL_SCANS_API_KEY", key)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("JSON on stdout: {output:?}"))
}

/// A folder of its own, removed when dropped: where a runner's commands run.
struct Folder(std::path::PathBuf);

impl Folder {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("runner-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn a_runner_host_starts_moves_and_fails_scans_with_only_the_url_and_a_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (runner, _) = app
        .key_for(&[Permission::SignalsRun, Permission::SignalsRead], &[group])
        .await;
    let folder = Folder::new();
    let server = app.url("/");
    // `command` through the service, for the group, with `--json`.
    let through = |key: &str, command: Vec<&str>| {
        let mut args = command;
        args.extend([
            "--server",
            &server,
            "--account-group",
            group.as_str(),
            "--json",
        ]);
        run(&folder.0, key, &args)
    };
    let to = |scan: &str, status: &str, extra: &[&str]| {
        let command = ["scans", "transition", scan, "--to", status];
        through(&runner, [&command[..], extra].concat())
    };
    let create = |extra: &[&str]| through(&writer, [&["scans", "create"][..], extra].concat());

    let created = create(&[]);
    assert!(created.status.success(), "{created:?}");
    let created = stdout_json(&created);
    assert_eq!(created["status"], "queued");
    // With an Idempotency-Key, the same command run again answers the scan it created.
    let once = |key: &str| stdout_json(&create(&["--idempotency-key", key]))["scanId"].clone();
    let (first, again, other) = (once("order-1"), once("order-1"), once("order-2"));
    assert!(first.is_string(), "{first}");
    assert_eq!(first, again);
    assert_ne!(first, other);
    let scan = created["scanId"].as_str().unwrap().to_owned();
    let started = to(&scan, "running", &[]);
    let failed = to(&scan, "failed", &["--reason", "out of disk"]);
    let plain = run(
        &folder.0,
        &runner,
        &[
            "scans",
            "transition",
            &scan,
            "--to",
            "failed",
            "--server",
            &server,
            "--account-group",
            group.as_str(),
        ],
    );

    assert!(started.status.success(), "{started:?}");
    assert_eq!(stdout_json(&started)["status"], "running");
    assert!(failed.status.success(), "{failed:?}");
    assert_eq!(stdout_json(&failed)["previousStatus"], "running");
    assert_eq!(
        String::from_utf8(plain.stdout).unwrap(),
        format!("{scan} failed\n")
    );
    let scan_id = signal_scans::domain::ids::ScanId::parse(&scan).unwrap();
    let events = app.store.scan_events(&scan_id).await.unwrap();
    assert_eq!(
        events.last().unwrap().reason.as_deref(),
        Some("out of disk")
    );
    // A runner that completes a cancelled scan learns it was cancelled, as JSON, and fails.
    let cancelled = app.scan(&group, ScanStatus::Cancelled).await;
    let late = to(cancelled.as_str(), "completed", &[]);
    assert_eq!(late.status.code(), Some(1), "{late:?}");
    let refused = stdout_json(&late);
    assert_eq!(refused["currentStatus"], "cancelled", "{late:?}");
    assert_eq!(refused["scanId"], cancelled.as_str());
    // Nothing was made in the runner's folder.
    assert_eq!(std::fs::read_dir(&folder.0).unwrap().count(), 0);
}
store_test!(a_runner_host_starts_moves_and_fails_scans_with_only_the_url_and_a_key);

/// A move the service did not make now (a 429, a 5xx, no answer) exits 75 (`EX_TEMPFAIL`) with
/// nothing on stdout, so that a runner's script tells "ask again" from a refusal (exit 1, with the
/// current status as JSON). Before, both exited 1. A request that asking again cannot help (a key
/// the service refuses, or one that cannot be sent) still exits 1.
async fn a_move_to_ask_again_later_exits_75(backend: Backend) {
    let folder = Folder::new();
    let app = Settings::default()
        .with_rate_limit(1, 1)
        .spawn(backend)
        .await;
    let group = group();
    let (runner, _) = app.key_for(&[Permission::SignalsRun], &[group]).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let start = |server: &str, key: &str| {
        let args = [
            "scans",
            "transition",
            scan.as_str(),
            "--to",
            "running",
            "--server",
            server,
            "--account-group",
            group.as_str(),
            "--json",
        ];
        run(&folder.0, key, &args)
    };
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody_there = format!("http://{}/", nobody.local_addr().unwrap());
    drop(nobody);
    let (proxy, _) = fake_server(|mut socket| async move {
        let page = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\n\r\noops!";
        let _ = socket.write_all(page.as_bytes()).await;
    })
    .await;
    let (unavailable, _) = fake_server(|mut socket| async move {
        let envelope = r#"{"success":false,"data":null,"error":{"code":"UPSTREAM_ERROR","message":"Upstream service error","details":"retry later"},"traceId":"t"}"#;
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n",
            envelope.len()
        );
        let _ = socket.write_all((head + envelope).as_bytes()).await;
    })
    .await;

    let started = start(&app.url("/"), &runner);
    // Repeated, the start is the key's own claim (200) until the key is over its rate.
    let limited = (0..5)
        .map(|_| start(&app.url("/"), &runner))
        .find(|output| !output.status.success())
        .expect("a key over its rate of 1 a second");
    let unreachable = start(&nobody_there, &runner);
    let bad_gateway = start(&proxy, &runner);
    let service_unavailable = start(&unavailable, &runner);
    let (portal, _) = fake_server(|mut socket| async move {
        let page = "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"hello\":1}";
        let _ = socket.write_all(page.as_bytes()).await;
    })
    .await;
    let not_the_service = start(&portal, &runner);
    let unknown_key = start(&app.url("/"), &format!("ssk_{}", "0".repeat(64)));
    let unsendable_key = start(&app.url("/"), &format!("{runner}\r"));

    assert!(started.status.success(), "{started:?}");
    assert_eq!(app.status_of(&scan).await, ScanStatus::Running);
    for (output, said) in [
        (&limited, "429 Too Many Requests"),
        (&unreachable, "cannot reach"),
        (&bad_gateway, "502 Bad Gateway without the JSON envelope"),
        (
            &service_unavailable,
            "503 Service Unavailable: Upstream service error",
        ),
    ] {
        assert_eq!(output.status.code(), Some(75), "{output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{stderr}");
    }
    // 1 for what the service answered; 2 for a key the command refuses to send (a setting).
    for (output, code, said) in [
        (&not_the_service, 1, "200 OK without the JSON envelope"),
        (&unknown_key, 1, "401 Unauthorized"),
        (&unsendable_key, 2, "SIGNAL_SCANS_API_KEY holds white space"),
    ] {
        assert_eq!(output.status.code(), Some(code), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{stderr}");
    }
}
store_test!(a_move_to_ask_again_later_exits_75);

/// `scans show --server` shows what `scans show` on the database shows, text and JSON; a scan of
/// another account group is not found there.
async fn scans_show_through_the_api_says_what_the_database_says(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (group, other) = (group(), group());
    let (reader, _) = app
        .key_for(&[Permission::SignalsRead], &[group, other])
        .await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    app.cancel_ok(&app.writer(&group).await, &group, &scan)
        .await;
    let folder = Folder::new();
    let server = app.url("/");
    let on_database = |extra: &[&str]| {
        let mut args = vec![
            "scans",
            "show",
            scan.as_str(),
            "--database-url",
            &app.db.url,
        ];
        args.extend_from_slice(extra);
        run(&folder.0, "", &args)
    };
    let through_api = |group: &str, extra: &[&str]| {
        let mut args = vec!["scans", "show", scan.as_str(), "--server", &server];
        args.extend_from_slice(&["--account-group", group]);
        args.extend_from_slice(extra);
        run(&folder.0, &reader, &args)
    };

    let text = through_api(group.as_str(), &[]);
    let json = through_api(group.as_str(), &["--json"]);
    let elsewhere = through_api(other.as_str(), &[]);

    assert!(text.status.success(), "{text:?}");
    assert_eq!(text.stdout, on_database(&[]).stdout);
    assert!(String::from_utf8_lossy(&text.stdout).contains("cancelled"));
    assert_eq!(stdout_json(&json), stdout_json(&on_database(&["--json"])));
    assert!(!elsewhere.status.success());
    let stderr = String::from_utf8(elsewhere.stderr).unwrap();
    assert!(stderr.contains("404"), "{stderr}");
}
store_test!(scans_show_through_the_api_says_what_the_database_says);

/// A watch the service refuses for good (a key without access to the group) ends with one line in
/// the service's words and the trace id, not its raw JSON.
async fn a_refused_watch_says_why_in_one_line(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group()]).await;
    let folder = Folder::new();
    let server = app.url("/");

    let args = ["scans", "watch", "--server", &server, "--account-group"];
    let refused = run(
        &folder.0,
        &reader,
        &[&args[..], &[group().as_str()]].concat(),
    );

    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("answered 403 Forbidden: Missing required permission"),
        "{stderr}"
    );
    assert!(stderr.contains("(trace id "), "{stderr}");
    assert!(!stderr.contains('{'), "{stderr}");
}
store_test!(a_refused_watch_says_why_in_one_line);

#[test]
fn a_command_that_needs_a_store_never_creates_one_and_names_where_it_looked() {
    let folder = Folder::new();
    for args in [
        &[
            "scans",
            "transition",
            "507f1f77bcf86cd799439011",
            "--to",
            "running",
        ][..],
        &["scans", "show", "507f1f77bcf86cd799439011"],
        &[
            "scans",
            "create",
            "--account-group",
            "507f1f77bcf86cd799439011",
        ],
        &["keys", "list"],
        &["keys", "revoke", "0b0e7a8e-5d4c-4f2a-9a58-3f1c2d1e0f00"],
    ] {
        let output = run(&folder.0, "", args);

        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("no database at data/signal-scans.db"),
            "{stderr}"
        );
        assert!(!folder.0.join("data").exists(), "{args:?} made a store");
    }
}

/// Reads `scans watch` lines until `count` were printed (30 s at most).
async fn lines(
    printed: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    count: usize,
) -> Vec<Value> {
    let mut lines = Vec::new();
    while lines.len() < count {
        let line = tokio::time::timeout(Duration::from_secs(30), printed.next_line())
            .await
            .expect("a line within 30 s")
            .unwrap()
            .expect("the watch runs");
        lines.push(serde_json::from_str(&line).unwrap());
    }
    lines
}

fn watch(app: &TestApp, key: &str, group: &str, after: Option<&str>) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_signal-scans"));
    command
        .args([
            "scans",
            "watch",
            "--server",
            &app.url("/"),
            "--account-group",
            group,
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SIGNAL_SCANS_API_KEY", key)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(after) = after {
        command.args(["--after", after]);
    }
    command.spawn().unwrap()
}

async fn watch_lines_carry_their_cursor_and_trace_id_and_after_resumes_right_there(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let group = group();
    let writer = app.writer(&group).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    // Two changes before any watch starts, replayed from the oldest cursor.
    let created = app
        .post(&writer, &crate::helpers::scans_path(group.as_str()), None)
        .await;
    let scan = created.body["data"]["scanId"].as_str().unwrap().to_owned();
    let cancelled = app.cancel(Some(&writer), group.as_str(), &scan).await;

    let mut first = watch(&app, &reader, group.as_str(), Some("0-0"));
    let mut printed = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    let both = lines(&mut printed, 2).await;
    first.kill().await.unwrap();
    let mut resumed = watch(&app, &reader, group.as_str(), both[0]["id"].as_str());
    let mut printed = tokio::io::BufReader::new(resumed.stdout.take().unwrap()).lines();
    let again = lines(&mut printed, 1).await;

    assert_eq!(both[0]["scanId"], scan.as_str());
    assert_eq!(
        (&both[0]["from"], &both[0]["to"]),
        (&Value::Null, &"queued".into())
    );
    assert_eq!(both[0]["traceId"], created.trace_id());
    assert_eq!(
        (&both[1]["from"], &both[1]["to"]),
        (&"queued".into(), &"cancelled".into())
    );
    assert_eq!(both[1]["traceId"], cancelled.trace_id());
    assert!(
        both.iter()
            .all(|line| line["id"].as_str().is_some_and(|id| !id.is_empty()))
    );
    // Resumed right after the first line: exactly the second, nothing before it. Its `id` is
    // left out: on PostgreSQL a cursor names the transactions in progress when it was read, so
    // one change read by two streams may carry two ids (both resume right after it).
    let without_id = |line: &Value| {
        let mut line = line.clone();
        line.as_object_mut().unwrap().remove("id");
        line
    };
    assert_eq!(without_id(&again[0]), without_id(&both[1]));
    resumed.kill().await.unwrap();
}
store_test!(watch_lines_carry_their_cursor_and_trace_id_and_after_resumes_right_there);

/// `scans watch … | head -1`: once its reader is gone, the watch ends at its next line, exit 0.
/// It printed on into the void for good (holding a stream against the key's cap), and `keys
/// list | head` panicked.
async fn a_watch_whose_reader_went_away_ends_quietly(backend: Backend) {
    let (app, group, writer) = TestApp::with_writer(backend).await;
    let (reader, _) = app.key_for(&[Permission::SignalsRead], &[group]).await;
    let first = app.scan(&group, ScanStatus::Running).await;
    let mut child = watch(&app, &reader, group.as_str(), Some("0-0"));
    let mut printed = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let replayed = lines(&mut printed, 1).await;
    assert_eq!(replayed[0]["scanId"], first.as_str());

    drop(printed);
    app.cancel_ok(&writer, &group, &first).await;
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the watch ends once its reader is gone")
        .unwrap();

    assert!(exit.success(), "{exit:?}");
}
store_test!(a_watch_whose_reader_went_away_ends_quietly);

/// A runner host's mistakes in its settings are refused before any request, exit 2 and not 75
/// ("try again later", which a script retries for ever): `--server` with a user and password in
/// its URL (the refusal does not repeat the password: clap's own printed the whole value), an
/// `https://` one (this build speaks plain HTTP: every call failed, and exited 75), an empty
/// `SIGNAL_SCANS_API_KEY` (it was sent, refused as a failed authentication, and twenty a minute
/// blocked the host's good keys too), an empty `--after` (the service took it as none: the watch
/// followed from now, silently skipping what the runner had missed) or one no watch printed, an
/// `--idempotency-key` the service would refuse (one with a newline could not be sent at all).
/// Nothing listens on port 9.
#[test]
fn mistakes_in_a_runner_hosts_settings_are_refused_before_any_request() {
    let folder = Folder::new();
    let scan = "507f1f77bcf86cd799439011";
    let server = |url| ["--account-group", scan, "--server", url];
    let show = |url| [&["scans", "show", scan][..], &server(url)].concat();
    let watch = |after: &[&'static str]| [&["scans", "watch"][..], after].concat();
    let password = "http://runner:s3cr3t-pw@127.0.0.1:9";
    let long = "k".repeat(256);
    let create = |once| {
        let command = ["scans", "create", "--idempotency-key", once];
        [&command[..], &server("http://127.0.0.1:9")].concat()
    };
    let cases: [(&str, Vec<&str>, i32, &str); 8] = [
        (
            "ssk_unused",
            show(password),
            2,
            "without a user or password",
        ),
        (
            "ssk_unused",
            show("https://127.0.0.1:9"),
            2,
            "speak plain HTTP",
        ),
        (
            "",
            show("http://127.0.0.1:9"),
            2,
            "needs the API key in SIGNAL_SCANS_API_KEY",
        ),
        (
            "ssk_unused",
            watch(&["--after", "zz"]),
            2,
            "--after \"zz\" is not a cursor a watch printed",
        ),
        (
            "ssk_unused",
            watch(&["--after", ""]),
            2,
            "a value is required for '--after",
        ),
        (
            "ssk_unused",
            [
                watch(&["--after", ""]),
                server("http://127.0.0.1:9").to_vec(),
            ]
            .concat(),
            2,
            "a value is required for '--after",
        ),
        (
            "ssk_unused",
            create("order\n1"),
            2,
            "1 to 255 visible ASCII characters, no spaces",
        ),
        (
            "ssk_unused",
            create(&long),
            2,
            "1 to 255 visible ASCII characters, no spaces",
        ),
    ];
    for (key, args, code, says) in cases {
        let output = run(&folder.0, key, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t-pw"), "{stderr}");
    }
}

/// A fake service on a port of its own: each connection's request head is read and counted, then
/// `answer` writes raw HTTP/1.1 bytes to it. The URL to pass as `--server`, and the count.
async fn fake_server<F, Fut>(answer: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (count, answer) = (count.clone(), answer.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                count.fetch_add(1, Ordering::SeqCst);
                answer(socket).await;
            });
        }
    });
    (url, asked)
}

/// A 200 event stream's head, then `body`, then the connection held open (a minute).
fn stream_of(body: Vec<u8>) -> impl Fn(TcpStream) -> BoxFuture + Send + Sync + 'static {
    move |mut socket| {
        let body = body.clone();
        Box::pin(async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
    }
}

type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// `scans watch --server server` with `envs` and a made-up key; the watch's process.
fn watch_server(server: &str, envs: &[(&str, &str)]) -> tokio::process::Child {
    tokio::process::Command::from(child::signal_scans())
        .args(["scans", "watch", "--server", server, "--account-group"])
        .arg(group().as_str())
        .env("SIGNAL_SCANS_API_KEY", "ssk_fake")
        .env("RUST_LOG", "error")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// How the watch ended, if it did within `within` (killed if not).
async fn ended_within(watch: tokio::process::Child, within: Duration) -> Option<Output> {
    tokio::time::timeout(within, watch.wait_with_output())
        .await
        .ok()
        .map(Result::unwrap)
}

/// A 200 that is not an event stream (a captive portal's login page) ends the watch with one line
/// naming what came instead, after one request: it was read as a stream that printed nothing, and
/// asked again every 2 s for good.
#[tokio::test]
async fn a_watch_answered_a_page_instead_of_a_stream_ends_naming_it() {
    let (server, asked) = fake_server(|mut socket: TcpStream| async move {
        let page = "<html>Sign in to the hotel's Wi-Fi</html>";
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
             content-length: {}\r\n\r\n{page}",
            page.len()
        );
        let _ = socket.write_all(answer.as_bytes()).await;
    })
    .await;

    let ended = ended_within(watch_server(&server, &[]), Duration::from_secs(10)).await;

    let output = ended.expect("the watch ends");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("text/html"), "{stderr}");
    assert!(stderr.contains("text/event-stream"), "{stderr}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

/// A stream dripping bytes but never a whole event or keep-alive is silent: dropped after the
/// silence (here 500 ms) and asked again: silence was counted from the last chunk, so a byte every
/// 100 ms held the watch for good. Keep-alives as often still hold a stream (silence 1 s).
#[tokio::test]
async fn a_watch_drops_a_stream_that_drips_bytes_but_no_event() {
    let drip = |line: &'static [u8]| {
        move |mut socket: TcpStream| async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nretry: 100\n\n";
            let _ = socket.write_all(head.as_bytes()).await;
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if socket.write_all(line).await.is_err() {
                    return;
                }
            }
        }
    };
    let (dripping, asked_again) = fake_server(drip(b"x")).await;
    let (keeping_alive, asked_once) = fake_server(drip(b": keep-alive\n")).await;
    let _first = watch_server(&dripping, &[("SCANS_WATCH_SILENCE_MS", "500")]);
    let _second = watch_server(&keeping_alive, &[("SCANS_WATCH_SILENCE_MS", "1000")]);
    let asked_twice = tokio::time::timeout(Duration::from_secs(10), async {
        while asked_again.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    assert!(asked_twice.is_ok(), "the dripping stream was never dropped");
    // Twice its silence: a stream whose keep-alives went unheard would have been asked again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(asked_once.load(Ordering::SeqCst), 1, "keep-alives hold it");
}

/// A line or an event past 64 KiB ends the watch naming the limit, whether the line is whole or
/// still coming: it was kept in memory, growing for as long as the server sent.
#[tokio::test]
async fn a_watch_refuses_a_line_or_an_event_past_64_kib() {
    let long_line = [b"data: ".as_slice(), &[b'x'; 70_000]].concat();
    let line_end = [long_line.as_slice(), b"\n"].concat();
    let long_event = "data: ".to_owned() + &"€".repeat(2_000) + "\n";
    for (body, what) in [
        (long_line, "line"),
        (line_end, "line"),
        (long_event.repeat(12).into_bytes(), "event"),
    ] {
        let (server, _) = fake_server(stream_of(body)).await;

        let ended = ended_within(watch_server(&server, &[]), Duration::from_secs(10)).await;

        let output = ended.unwrap_or_else(|| panic!("a long {what} ends the watch"));
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("{what} over 64 KiB")), "{stderr}");
    }
}
