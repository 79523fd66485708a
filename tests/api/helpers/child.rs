//! Children started by the tests (the real binary, curl): each sees only the environment its test
//! gives it, plus a short allow-list from the caller's, so that a developer's or CI's `REDIS_URL`,
//! `DB_MAX_CONNECTIONS`, `RATE_LIMIT_*` or `http_proxy` cannot change a verdict. A child's stderr
//! is kept line by line, drained all the time so that a busy test never blocks it on a full pipe.

use std::ffi::OsStr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What a child inherits from the caller: where programs and temporary files are, the locale,
/// and whether a panic prints its backtrace. Nothing the service reads as a setting.
const INHERITED: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "RUST_BACKTRACE"];

/// `program` with a cleared environment but for [`INHERITED`].
pub fn cleared(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.env_clear();
    for name in INHERITED {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// The service's binary, with a cleared environment.
pub fn signal_scans() -> std::process::Command {
    cleared(env!("CARGO_BIN_EXE_signal-scans"))
}

/// Every stderr line of a child so far.
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Starts `command` (killed when dropped) with its stderr kept in the returned [`Lines`], and
/// waits, 30 s at most, for the first line that `ready` accepts: what it found there is returned.
pub async fn start_until<T: Send + 'static>(
    command: std::process::Command,
    ready: impl Fn(&str) -> Option<T> + Send + 'static,
) -> (Child, Lines, T) {
    let mut command = Command::from(command);
    let mut child = command
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the child starts");
    let lines = Lines::default();
    let (found, readiness) = tokio::sync::oneshot::channel();
    let mut found = Some(found);
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let what = found.is_some().then(|| ready(&line)).flatten();
            // Kept before readiness is told: the caller's first look at the lines sees this one.
            kept.lock().unwrap().push(line);
            if let Some(what) = what {
                let _ = found.take().expect("checked above").send(what);
            }
        }
    });
    let what = tokio::time::timeout(Duration::from_secs(30), readiness)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the child was not ready in 30 s; stderr: {:?}",
                lines.lock()
            )
        })
        .unwrap_or_else(|_| panic!("the child exited first; stderr: {:?}", lines.lock()));
    (child, lines, what)
}

/// Waits, 10 s at most, until `find` finds what it looks for in the stderr `lines` so far (a copy:
/// `find` may read the lines again itself).
pub async fn until_found<T>(lines: &Lines, find: impl Fn(&[String]) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let so_far = lines.lock().unwrap().clone();
        if let Some(found) = find(&so_far) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never logged in 10 s; stderr: {so_far:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
