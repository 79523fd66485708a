//! The real binary as a child process: `signal-scans serve` with JSON logs, its address read from
//! its own "serving" log line, its stderr kept for inspection.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Child;

use super::child::{self, Lines};

pub struct ServerProcess {
    pub addr: SocketAddr,
    child: Child,
    logs: Lines,
}

impl ServerProcess {
    /// Starts `signal-scans serve` on a free port with `env` (and nothing else from the caller's
    /// environment: see [`child`]), and waits until it serves.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], env, Stdio::null()).await
    }

    /// [`Self::start`] with `args` after `serve`, and its stdout to `stdout`.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Self {
        let mut command = child::signal_scans();
        command.arg("serve").args(args).stdout(stdout);
        Self::serving(command, env).await
    }

    /// [`Self::start`] by a shell that runs `setup` first (`ulimit -n 256`): what a process
    /// inherits from whoever starts it.
    pub async fn start_after(setup: &str, env: &[(&str, &str)]) -> Self {
        let mut command = child::cleared("bash");
        command
            .arg("-c")
            .arg(format!("{setup} && exec \"$0\" serve"))
            .arg(env!("CARGO_BIN_EXE_signal-scans"))
            .stdout(Stdio::null());
        Self::serving(command, env).await
    }

    async fn serving(mut command: std::process::Command, env: &[(&str, &str)]) -> Self {
        command
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let (child, logs, addr) = child::start_until(command, |line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            (event["message"] == "signal-scans is serving")
                .then(|| event["listen.addr"].as_str().unwrap().parse().unwrap())
        })
        .await;
        Self { addr, child, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `POST path` with `key` as a Bearer token, read whole as the envelope.
    pub async fn post(&self, key: &str, path: &str) -> super::ApiResponse {
        let request = reqwest::Client::new().post(self.url(path)).bearer_auth(key);
        super::ApiResponse::from(request.send().await.expect("request is answered")).await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = reqwest::Client::new()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request is answered");
        assert_eq!(response.status(), 200);
        response.text().await.expect("the body reads")
    }

    /// The process id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Its resident memory, in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("Linux /proc");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("a VmRSS line")
    }

    /// Its open-file limit, soft and hard, from `/proc/<pid>/limits`.
    pub fn open_file_limit(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap();
        let mut numbers = line.split_whitespace().filter_map(|word| word.parse().ok());
        (numbers.next().unwrap(), numbers.next().unwrap())
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (10 s at most) until a JSON log line matches `what`; returns every JSON line so far.
    pub async fn until_logged(
        &self,
        what: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        self.until_events(|events| events.iter().any(&what)).await
    }

    /// Waits (10 s at most) until the JSON log lines so far meet `condition` (a count of lines,
    /// say); returns them.
    pub async fn until_events(
        &self,
        condition: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        child::until_found(&self.logs, |lines| {
            let events: Vec<serde_json::Value> = lines
                .iter()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect();
            condition(&events).then_some(events)
        })
        .await
    }

    /// Sends SIGTERM, as an orchestrator stopping the container does.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the process exits in time")
            .unwrap()
    }
}
