//! `signal-scans scans watch` as a child process: started, waited for until it watches, and its
//! printed changes read as they come. Its output is drained all the time, so a busy test never
//! blocks the watcher on a full pipe.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use signal_scans::domain::ids::AccountGroupId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::child::{self, Lines};

/// What the watcher logs each time it starts following changes.
const WATCHING: &str = "watching for status changes";

pub struct Watch {
    child: Child,
    printed: mpsc::UnboundedReceiver<String>,
    logs: Lines,
}

impl Watch {
    /// Starts `scans watch` on `database_url` (every group unless `group`), reading the trail at
    /// least every `poll_ms`, and returns once it says it is watching.
    pub async fn start(database_url: &str, group: Option<&AccountGroupId>, poll_ms: u64) -> Self {
        let mut args = Vec::new();
        if let Some(group) = group {
            args.extend(["--account-group", group.as_str()]);
        }
        let poll_ms = poll_ms.to_string();
        Self::start_with(
            &args,
            &[("DATABASE_URL", database_url), ("FEED_POLL_MS", &poll_ms)],
        )
        .await
    }

    /// Starts `scans watch` with `args` and `env` (and nothing else from the caller's
    /// environment: see [`child`]), and returns once it says it is watching.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = child::signal_scans();
        command
            .args(["scans", "watch"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped());
        let (mut child, logs, ()) =
            child::start_until(command, |line| line.contains(WATCHING).then_some(())).await;
        let (sender, printed) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            printed,
            logs,
        }
    }

    /// How many times the watcher has said it is watching: once, plus once per reconnection.
    pub fn times_watching(&self) -> usize {
        self.logs()
            .iter()
            .filter(|line| line.contains(WATCHING))
            .count()
    }

    /// The next printed change, or `None` when nothing is printed within `limit`. The watch tests
    /// are about moves of scans they create while it runs: creations (`from` null) are passed
    /// over (tests/api/cli.rs follows them).
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let change = self.next_line_within(left).await?;
            if !change["from"].is_null() {
                return Some(change);
            }
        }
    }

    /// The next printed line, creations included, or `None` when nothing is printed within
    /// `limit`.
    pub async fn next_line_within(&mut self, limit: Duration) -> Option<Value> {
        let line = tokio::time::timeout(limit, self.printed.recv())
            .await
            .ok()?
            .unwrap_or_else(|| panic!("the watcher stopped; logs: {:?}", self.logs()));
        Some(
            serde_json::from_str(&line).unwrap_or_else(|_| {
                panic!("the watcher printed a line that is not JSON: {line:?}")
            }),
        )
    }

    /// The next printed change; fails the test when none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Value {
        match self.next_within(limit).await {
            Some(change) => change,
            None => panic!(
                "the watcher printed nothing within {limit:?}; logs: {:?}",
                self.logs()
            ),
        }
    }

    /// Every change printed up to and including the first one of `scan_id`, which must come
    /// within `limit`.
    pub async fn until_scan(&mut self, scan_id: &str, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(change) = self.next_within(left).await else {
                panic!(
                    "{scan_id} was not printed within {limit:?} ({} changes were); logs: {:?}",
                    printed.len(),
                    self.logs()
                );
            };
            let done = change["scanId"] == scan_id;
            printed.push(change);
            if done {
                return printed;
            }
        }
    }

    /// The cursor the watcher says it starts at (`after=` in its log), waited for 10 s at most.
    pub async fn starts_at(&self) -> String {
        child::until_found(&self.logs, |lines| {
            lines.iter().find_map(|line| {
                let (_, rest) = line.split_once("after=")?;
                rest.split_whitespace().next().map(str::to_owned)
            })
        })
        .await
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends `signal` (`TERM`, `INT`) and waits, 10 s at most, for the watcher to exit.
    pub async fn signal_and_wait(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the watcher exits in time")
            .unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
