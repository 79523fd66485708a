//! `serve --demo`: the printed curl commands each give the outcome they promise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::process::ServerProcess;
use crate::helpers::{ApiResponse, Backend, TestDatabase, child};
use crate::store_test;

fn serve_demo(database_url: &str) -> Child {
    Command::from(child::signal_scans())
        .args(["serve", "--demo", "--listen-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// How many commands the demo prints: one per outcome of the cancel, then a client's start and a
/// runner's moves.
const COMMANDS: usize = 11;

/// Reads `(expected status, curl command)` pairs, then the `export` line the runner guide uses:
/// its `NAME=value` pairs.
async fn read_instructions(child: &mut Child) -> (Vec<(u16, String)>, Vec<(String, String)>) {
    // Drain stderr (logs) so the server never blocks on a full pipe.
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut steps = Vec::new();
    let mut exports = Vec::new();
    let mut expected = None;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(heading) = line.strip_prefix("# ") {
                expected = Some(
                    heading[..3]
                        .parse::<u16>()
                        .expect("heading starts with a status"),
                );
            } else if line.starts_with("curl ") {
                steps.push((
                    expected.take().expect("a heading before each command"),
                    line,
                ));
            } else if let Some(names) = line.strip_prefix("export ") {
                exports = names
                    .split(' ')
                    .map(|pair| pair.split_once('=').expect("NAME=value"))
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .collect();
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the demo prints its commands");
    // Keep stdout open while the server runs: a closed pipe would fail its next write.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(steps.len(), COMMANDS, "{steps:?}");
    (steps, exports)
}

/// Runs a printed command as a reader would, in a shell with the real curl, asked to put the
/// answer's head before its body (`-i`).
async fn run_curl(command: &str) -> ApiResponse {
    let output = Command::from(child::cleared("sh"))
        .args(["-c", &format!("{command} -i")])
        .output()
        .await
        .expect("sh runs");
    assert!(output.status.success(), "{command}: {output:?}");
    let text = String::from_utf8(output.stdout).expect("curl prints UTF-8");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head, then the body");
    // The commands print the status after the body (`-w`), for a reader who reads no head.
    let (body, printed) = rest
        .rsplit_once("\nHTTP ")
        .expect("the status printed last");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: reqwest::StatusCode = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{status_line}"));
    let headers = lines
        .map(|line| line.split_once(": ").expect("a header line"))
        .map(|(name, value)| {
            (
                reqwest::header::HeaderName::try_from(name).unwrap(),
                reqwest::header::HeaderValue::try_from(value).unwrap(),
            )
        })
        .collect();
    assert_eq!(printed.trim_end(), status.as_str(), "{text}");
    ApiResponse::read(status, headers, body)
}

async fn the_demos_curl_commands_give_the_outcomes_they_promise(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let mut server = serve_demo(&db.url);

    let (steps, exports) = read_instructions(&mut server).await;

    let statuses: Vec<u16> = steps.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses,
        [200, 200, 401, 403, 404, 422, 400, 201, 200, 422, 403]
    );
    let mut answers = Vec::new();
    for (expected, command) in &steps {
        let response = run_curl(command).await;
        assert_eq!(
            response.status.as_u16(),
            *expected,
            "{command}: {response:?}"
        );
        answers.push(response);
    }
    assert_eq!(answers[0].body["data"]["previousStatus"], "queued");
    assert_eq!(answers[1].body["data"]["previousStatus"], "cancelled");
    assert_eq!(
        answers[0].body["data"]["cancelledAt"],
        answers[1].body["data"]["cancelledAt"]
    );
    // The runner guide's names are the keys, group and address the commands above used: the
    // client's key cancels (the first command), the runner's completes (the ninth).
    let bearer = |command: &str| {
        let from = command.find("Bearer ").expect("a key") + "Bearer ".len();
        command[from..from + command[from..].find('\'').unwrap()].to_owned()
    };
    let cancel_url = steps[0].1.split_whitespace().last().unwrap();
    let (server_url, rest) = cancel_url.split_once("/v1/accounts/").unwrap();
    let named: Vec<(&str, String)> = vec![
        ("SERVER", server_url.to_owned()),
        ("GROUP", rest[..24].to_owned()),
        ("CLIENT_KEY", bearer(&steps[0].1)),
        ("RUNNER_KEY", bearer(&steps[8].1)),
    ];
    let exported: Vec<(&str, String)> = exports
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    assert_eq!(exported, named);
    server.kill().await.unwrap();

    // A second start on the same data adds nothing and says so.
    let mut again = serve_demo(&db.url);
    let mut stderr = BufReader::new(again.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("already holds data") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the second start logs its decision");
    assert!(said);
    again.kill().await.unwrap();
}
store_test!(the_demos_curl_commands_give_the_outcomes_they_promise);

/// `serve --demo` whose instructions cannot be printed (stdout on a full disk, or read by nobody)
/// says so in its log and serves all the same: it stopped, exit 1 on a full disk and 0, silently,
/// when the reader had gone (command line review).
#[tokio::test]
async fn serve_demo_serves_when_its_instructions_cannot_be_printed() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let full_disk = std::fs::File::create("/dev/full").unwrap();
    let server = ServerProcess::start_with(
        &["--demo"],
        &[("DATABASE_URL", db.url.as_str())],
        full_disk.into(),
    )
    .await;

    server
        .until_logged(|event| {
            event["message"] == "cannot print the demo's instructions (its keys are in them)"
        })
        .await;
    // Past the moment it stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();

    assert_eq!(health.status(), 200);
}

/// What `serve` creates on a fresh machine, the database's folder and its file with the `-wal`
/// and `-shm` beside it, is its owner's alone: the file holds every tenant's scans and audit
/// trail. All were readable by every local user (`0755` and `0644` under the usual umask: the
/// security review).
#[tokio::test]
async fn the_database_serve_creates_is_its_owners_alone() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let file = db.sqlite_file();
    let _server = ServerProcess::start_with(
        &["--demo"],
        &[("DATABASE_URL", db.url.as_str())],
        Stdio::null(),
    )
    .await;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    assert_eq!(mode(file.parent().unwrap()), 0o700);
    // The demo's scans were written: the log and its index are there while the service runs.
    for companion in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{companion}", file.display()));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// A database path that is a symbolic link to a file not made yet: `serve` makes the file where
/// the link leads, its user's alone, and writes to it, its `-wal` and `-shm` beside it. Every
/// write answered 502, `…link.db-wal was deleted while this process had the database open`: the
/// check looked for them beside the link (the diff review); and the file was made `0644`.
#[tokio::test]
async fn a_database_reached_through_a_symbolic_link_is_written_and_its_users_alone() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let folder = db.sqlite_file().parent().unwrap().to_owned();
    std::fs::create_dir_all(folder.join("real")).unwrap();
    let link = folder.join("link.db");
    std::os::unix::fs::symlink(folder.join("real/signal-scans.db"), &link).unwrap();
    let url = format!("sqlite://{}", link.display());

    // The demo seeds its scans and keys through the store's writes before it serves.
    let _server = ServerProcess::start_with(
        &["--demo"],
        &[("DATABASE_URL", url.as_str())],
        Stdio::null(),
    )
    .await;

    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    for companion in ["", "-wal", "-shm"] {
        let path = folder.join(format!("real/signal-scans.db{companion}"));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}
