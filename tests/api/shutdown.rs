//! Shutting down: in-flight requests finish while new connections are refused, the drain is
//! bounded by `SHUTDOWN_TIMEOUT_MS`, and the process exits 0 (in process and as the real binary
//! under SIGTERM).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::routing::get;
use futures::future::join_all;
use signal_scans::domain::ids::ScanId;
use signal_scans::domain::keys::Permission;
use signal_scans::domain::scan::ScanStatus;
use sqlx::Connection;
use tokio::sync::Notify;

use crate::helpers::locks::WriteLock;
use crate::helpers::process::ServerProcess;
use crate::helpers::proxy::Proxy;
use crate::helpers::{
    ApiResponse, Backend, Settings, TestApp, TestDatabase, cancel_path, group, key_in,
    migrated_database, scans_path,
};
use crate::store_test;

async fn shutdown_lets_in_flight_requests_finish(backend: Backend) {
    // The slow route says when it has started, and finishes only when the test lets it: after
    // the server has begun shutting down.
    let started = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let mut app = TestApp::spawn_with(
        backend,
        Settings {
            extra_routes: axum::Router::new().route(
                "/test/slow",
                get({
                    let (started, finish) = (started.clone(), finish.clone());
                    move || async move {
                        started.notify_one();
                        finish.notified().await;
                        axum::Json(signal_scans::http::envelope::Envelope::success("done"))
                    }
                }),
            ),
            ..Settings::default()
        },
    )
    .await;
    let in_flight = tokio::spawn(app.client.get(app.url("/test/slow")).send());
    started.notified().await;
    let healthz = app.url("/healthz");

    let ((), refused_while_in_flight) = tokio::join!(app.shut_down(), async {
        // A fresh client each time: a pooled connection would not show the listener closing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::Client::new().get(&healthz).send().await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused_while_in_flight = !in_flight.is_finished();
        finish.notify_one();
        refused_while_in_flight
    });

    assert!(
        refused_while_in_flight,
        "new connections refused while the request was in flight"
    );
    let response = ApiResponse::from(in_flight.await.unwrap().unwrap()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body["data"], "done");
}
store_test!(shutdown_lets_in_flight_requests_finish);

/// SIGTERM while cancels are in flight (the database slowed by a proxy): each gets its real
/// answer, new connections are refused, and the process exits 0.
async fn sigterm_lets_in_flight_requests_finish_then_exits_0(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let mut scans = Vec::new();
    for _ in 0..5 {
        scans.push(app.scan(&group, ScanStatus::Queued).await);
    }
    let proxy = Proxy::start(app.db.server_addr().await).await;
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", &proxy.url_for(&app.db.url)),
        // tower_http's debug line "started processing request" tells when each is in flight.
        ("RUST_LOG", "info,tower_http=debug"),
    ])
    .await;
    let client = reqwest::Client::new();
    proxy.slow_down(Duration::from_millis(400));
    let answered = AtomicUsize::new(0);

    let in_flight = join_all(scans.iter().map(|scan| {
        let request = client
            .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
            .bearer_auth(&key)
            .send();
        async {
            let response = request.await;
            answered.fetch_add(1, Ordering::SeqCst);
            response
        }
    }));
    let terminate = async {
        server
            .until_logged(|_| started_requests(&server) == scans.len())
            .await;
        server.terminate();
        server
            .until_logged(|event| event["message"] == SHUTDOWN_REQUESTED)
            .await;
        // A fresh client each time: a pooled connection would not show the listener closing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::Client::new()
            .get(server.url("/healthz"))
            .send()
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "still accepting after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answered.load(Ordering::SeqCst)
    };
    let (responses, answered_when_refused) = tokio::join!(in_flight, terminate);
    let exit = server.wait(Duration::from_secs(15)).await;

    for response in responses {
        let response = ApiResponse::from(response.expect("answered, not dropped")).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body["data"]["previousStatus"], "queued");
    }
    assert_eq!(
        answered_when_refused, 0,
        "new connections were refused while all of them were in flight"
    );
    assert!(exit.success(), "{exit:?}");
    for scan in &scans {
        assert_eq!(app.status_of(scan).await, ScanStatus::Cancelled);
    }
}
store_test!(
    sigterm_lets_in_flight_requests_finish_then_exits_0,
    postgres_only
);

/// What `serve` logs at the first SIGTERM or Ctrl-C.
const SHUTDOWN_REQUESTED: &str =
    "shutdown requested; finishing in-flight requests (asked again: stopping at once)";

/// A second SIGTERM during the drain ends it at once: the process exits 0, the request in flight
/// gets no answer (as at the end of `SHUTDOWN_TIMEOUT_MS`: it may have committed), and the log
/// says why. The second signal was swallowed, and the process waited out its drain, so that an
/// operator's second Ctrl-C could not hurry a stop (the lifecycle review).
async fn a_second_sigterm_ends_the_drain_at_once(backend: Backend) {
    // The test's database lives as long as its app: kept to the end.
    let HeldCancel {
        app: _app,
        mut server,
        mut lock,
        in_flight,
        ..
    } = HeldCancel::start(
        backend,
        &[("DB_TIMEOUT_MS", "30000"), ("SHUTDOWN_TIMEOUT_MS", "30000")],
    )
    .await;

    server.terminate();
    server
        .until_logged(|event| event["message"] == SHUTDOWN_REQUESTED)
        .await;
    server.terminate();
    // Far below the request's own end (REQUEST_TIMEOUT_MS, 15 s), which the drain waited for.
    let exit = server.wait(Duration::from_secs(8)).await;

    assert!(exit.success(), "{exit:?}");
    assert!(in_flight.await.unwrap().is_err(), "no answer");
    assert!(
        server.logs().iter().any(|line| line
            .contains("asked to stop again; stopping without waiting for the requests in flight")),
        "{:?}",
        server.logs()
    );
    lock.release().await;
}
store_test!(a_second_sigterm_ends_the_drain_at_once);

/// `serve` with `env` and a cancel of a writer's queued scan in flight in it, held behind another
/// session's write lock until the test releases it.
struct HeldCancel {
    app: TestApp,
    scan: ScanId,
    server: ServerProcess,
    lock: WriteLock,
    in_flight: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl HeldCancel {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Self {
        let (app, group, key) = TestApp::with_writer(backend).await;
        let scan = app.scan(&group, ScanStatus::Queued).await;
        let mut vars = vec![
            ("DATABASE_URL", app.db.url.as_str()),
            ("RUST_LOG", "info,tower_http=debug"),
        ];
        vars.extend_from_slice(env);
        let server = ServerProcess::start(&vars).await;
        let lock = WriteLock::hold(&app, &scan).await;
        let in_flight = tokio::spawn(
            reqwest::Client::new()
                .post(server.url(&cancel_path(group.as_str(), scan.as_str())))
                .bearer_auth(&key)
                .send(),
        );
        server
            .until_logged(|_| started_requests(&server) == 1)
            .await;
        Self {
            app,
            scan,
            server,
            lock,
            in_flight,
        }
    }
}

/// SIGTERM; how the process ended, and how long after the signal.
async fn stopped(server: &mut ServerProcess) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    server.terminate();
    let exit = server.wait(Duration::from_secs(30)).await;
    (exit, started.elapsed())
}

/// A request stuck past `SHUTDOWN_TIMEOUT_MS` (its scan's write held by another session, longer
/// than any drain) is cut off with the process, which exits 0 once the drain time is over and
/// logs the request as cut off.
async fn a_request_stuck_past_the_drain_time_does_not_keep_the_process(backend: Backend) {
    let HeldCancel {
        app,
        scan,
        mut server,
        mut lock,
        in_flight: stuck,
    } = HeldCancel::start(
        backend,
        &[
            ("SHUTDOWN_TIMEOUT_MS", "300"),
            ("DB_TIMEOUT_MS", "20000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
        ],
    )
    .await;

    let (exit, drained) = stopped(&mut server).await;

    assert!(exit.success(), "{exit:?}");
    assert!(
        drained >= Duration::from_millis(300),
        "left before the drain time: {drained:?}"
    );
    // 300 ms plus room for a loaded machine, and far below the default drain of 10 s.
    assert!(
        drained < Duration::from_secs(3),
        "drained for {drained:?}: SHUTDOWN_TIMEOUT_MS was not kept"
    );
    let stuck = stuck.await.unwrap();
    assert!(
        stuck.is_err(),
        "the stuck request is cut off with the process, not answered: {stuck:?}"
    );
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line
                .contains("requests still in flight after the drain time; stopping anyway")),
        "the abandoned request is logged"
    );
    // Cut off by the service, not left by its client: its closing line says so.
    let unanswered = |event: &serde_json::Value| {
        event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("finished processing request:"))
    };
    let events = server.until_logged(unanswered).await;
    let closing: Vec<&serde_json::Value> = events.iter().filter(|e| unanswered(e)).collect();
    assert_eq!(closing.len(), 1, "{closing:#?}");
    assert_eq!(
        closing[0]["message"],
        "finished processing request: the service stopped before its answer"
    );
    lock.release().await;
    // SQLite's write ended with the process. A PostgreSQL statement already waiting on the row
    // runs on in the server once the lock goes (README: a request cut off at the end of the drain
    // may commit after the process has gone), so there the outcome is the server's.
    if backend == Backend::Sqlite {
        assert_eq!(app.status_of(&scan).await, ScanStatus::Queued);
    }
}
store_test!(a_request_stuck_past_the_drain_time_does_not_keep_the_process);

/// `SHUTDOWN_TIMEOUT_MS` bounds the whole stop, the last change notifications included: a process
/// whose hint could not reach a stalled database waited 2 s more for it after the drain.
async fn the_last_change_notifications_wait_within_the_shutdown_timeout(backend: Backend) {
    let (app, group, key) = TestApp::with_writer(backend).await;
    let scan = app.scan(&group, ScanStatus::Queued).await;
    let proxy = Proxy::start(app.db.server_addr().await).await;
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", &proxy.url_for(&app.db.url)),
        ("SHUTDOWN_TIMEOUT_MS", "300"),
        // The change's hint waits for the next tick, a second away.
        ("PUBLISH_INTERVAL_MS", "1000"),
    ])
    .await;
    let cancelled = server
        .post(&key, &cancel_path(group.as_str(), scan.as_str()))
        .await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    proxy.slow_down(Duration::from_secs(60));

    let (exit, stopped) = stopped(&mut server).await;

    assert!(exit.success(), "{exit:?}");
    // 300 ms plus room for a loaded machine, and well below the 2.3 s of a flush past the drain.
    assert!(
        stopped < Duration::from_millis(1500),
        "stopped after {stopped:?}: SHUTDOWN_TIMEOUT_MS was not kept"
    );
}
store_test!(
    the_last_change_notifications_wait_within_the_shutdown_timeout,
    postgres_only
);

/// How many requests the server has started (tower_http's debug line for each).
fn started_requests(server: &ServerProcess) -> usize {
    server
        .logs()
        .iter()
        .filter(|line| line.contains("started processing request"))
        .count()
}

/// SIGTERM while `serve` is still reaching its database (one that accepts the connection and
/// never answers) ends the start at once, exit 0. Its handlers were installed only once serving
/// began: as a container's PID 1, which has no default action for SIGTERM, the stop was ignored
/// until the database answered or the start timed out.
#[tokio::test]
async fn sigterm_while_reaching_the_database_ends_the_start_with_exit_0() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut command = crate::helpers::child::signal_scans();
    command
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("postgres://app@{}/x", silent.local_addr().unwrap()),
        )
        .env("DB_TIMEOUT_MS", "60000")
        .env("LISTEN_ADDR", "127.0.0.1:0");
    let mut serving = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The process is past its settings and waiting for the database's answer.
    let (_waiting, _) = silent.accept().await.unwrap();

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &serving.id().unwrap().to_string()])
        .status()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(20), serving.wait())
        .await
        .expect("the start ended on SIGTERM")
        .unwrap();

    assert!(sent.success());
    assert!(exited.success(), "{exited:?}");
}

/// A SQLite service stopped under load leaves every commit in its database file: it closes its
/// connections, and the last one to close writes the write-ahead log back and deletes it, so the
/// `.db` file alone holds everything, and a backup restored in its place is not replayed over by
/// a log of the old file. Stopped with requests in flight, the service left its log (3 MB here,
/// 4 MB in the backup and restore review): the file alone lacked the latest commits, and a backup
/// copied over it came back corrupt.
#[tokio::test]
async fn a_sqlite_service_stopped_under_load_leaves_every_commit_in_its_file() {
    let (db, store) = migrated_database(Backend::Sqlite).await;
    let group = group();
    let writer = key_in(&store, Permission::SignalsWrite, &[group]).await;
    // This process holds no connection to the file: the service's close is the last.
    drop(store);
    // No 429s: every request is a creation, so writes are in flight as it stops.
    let mut server = ServerProcess::start(&[
        ("DATABASE_URL", &db.url),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
    ])
    .await;
    let created = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (url, key, created) = (
                server.url(&scans_path(group.as_str())),
                writer.clone(),
                created.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                // Until the listener is gone.
                while let Ok(response) = client.post(&url).bearer_auth(&key).send().await {
                    if response.status() == 201 {
                        created.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), async {
        while created.load(Ordering::SeqCst) < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("200 scans created within 30 s");

    server.terminate();
    let exit = server.wait(Duration::from_secs(15)).await;
    join_all(clients).await;

    let file = db.sqlite_file();
    let log = file.with_extension("db-wal");
    assert!(exit.success(), "{exit:?}");
    assert!(!log.exists(), "{} is left beside the file", log.display());
    // The file alone, copied elsewhere, holds every scan whose creation was answered.
    let copy = TestDatabase::create(Backend::Sqlite).await;
    let copied = copy.sqlite_file();
    std::fs::create_dir_all(copied.parent().unwrap()).unwrap();
    std::fs::copy(&file, &copied).unwrap();
    let mut connection = sqlx::SqliteConnection::connect(&copy.url).await.unwrap();
    let in_the_file: i64 = sqlx::query_scalar("SELECT count(*) FROM signal_scans")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert!(
        in_the_file >= created.load(Ordering::SeqCst) as i64,
        "{in_the_file} scans in the file, {} answered",
        created.load(Ordering::SeqCst)
    );
}
