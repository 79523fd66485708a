//! Holds many change streams open on the service during a benchmark run, and records what each saw.
//!
//!     stream-client URL KEY OUT FOLLOW:COUNT [FOLLOW:COUNT ...]
//!
//! opens COUNT streams of `GET /v1/accounts/<GROUP>/signals/scans/changes[?QUERY]` for each FOLLOW,
//! which is an account group, `GROUP`, or one with the stream's filters, `GROUP?QUERY` (say
//! `GROUP?scanId=…&scanId=…`); prints `ready` once every stream has received its opening `retry:`,
//! and reads until SIGTERM or SIGINT. Then it writes OUT: one line per stream, `<FOLLOW> <events>
//! <distinct scan ids> <foreign>` followed by the sorted scan ids it received (`foreign` counts
//! events of another group: it must be 0). bench/harness.py compares OUT with the changes that
//! committed.
//!
//! It shares the machine's two cores with the service, the database and the load generator, so it
//! does as little as it can per event and still checks every one: one read per wake-up, one thread,
//! and the body read as it comes, without decoding HTTP's chunked framing. That is sound because the
//! service writes whole events into each chunk: a chunk-size line never falls inside an event, and
//! the only lines that start with `data: ` are events' data.

use std::process::ExitCode;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

const USAGE: &str = "usage: stream-client URL KEY OUT FOLLOW:COUNT [FOLLOW:COUNT ...]";
/// Room kept free in a stream's buffer for the next read.
const READ_SIZE: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, key, out, follows @ ..] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if follows.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    match runtime.block_on(run(url, key, out, follows)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stream-client: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, key: &str, out: &str, follows: &[String]) -> Result<(), String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or("URL must be http://HOST:PORT")?
        .trim_end_matches('/');
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let (stop, stopping) = watch::channel(false);
    let (opened, mut opening) = mpsc::unbounded_channel();
    let mut streams = Vec::new();
    for follow in follows {
        let (label, count) = follow
            .rsplit_once(':')
            .ok_or_else(|| format!("{follow}: expected GROUP:COUNT"))?;
        let count: usize = count
            .parse()
            .map_err(|_| format!("{follow}: COUNT is not a number"))?;
        for _ in 0..count {
            let (group, query) = label.split_once('?').unwrap_or((label, ""));
            let stream = Stream {
                authority: authority.to_owned(),
                key: key.to_owned(),
                label: label.to_owned(),
                group: group.to_owned(),
                query: query.to_owned(),
            };
            streams.push(tokio::spawn(
                stream.follow(opened.clone(), stopping.clone()),
            ));
        }
    }
    drop(opened);
    for _ in 0..streams.len() {
        match opening.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(error),
            None => return Err("a stream ended before it opened".into()),
        }
    }
    println!("ready");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stop.send_replace(true);
    let mut report = String::new();
    for stream in streams {
        let seen = stream.await.map_err(|e| e.to_string())??;
        report.push_str(&seen.line());
    }
    std::fs::write(out, report).map_err(|e| format!("{out}: {e}"))
}

/// One stream to open.
struct Stream {
    authority: String,
    key: String,
    /// FOLLOW as given, for the report.
    label: String,
    group: String,
    /// The stream's filters, a query string without its `?`; empty for none.
    query: String,
}

/// What one stream received.
struct Seen {
    label: String,
    /// The scan id of every event, in the order received.
    scans: Vec<[u8; 24]>,
    /// Events of another group than the stream's.
    foreign: u64,
}

impl Seen {
    /// `<FOLLOW> <events> <distinct> <foreign> <sorted scan ids…>`
    fn line(mut self) -> String {
        let events = self.scans.len();
        self.scans.sort_unstable();
        let mut distinct = self.scans.clone();
        distinct.dedup();
        let mut line = format!(
            "{} {events} {} {}",
            self.label,
            distinct.len(),
            self.foreign
        );
        for scan in &self.scans {
            line.push(' ');
            line.push_str(std::str::from_utf8(scan).expect("checked to be hex"));
        }
        line.push('\n');
        line
    }
}

impl Stream {
    /// Reads the stream until told to stop or until it ends; says on `opened` when it has its
    /// opening `retry:`, or why it failed.
    async fn follow(
        self,
        opened: mpsc::UnboundedSender<Result<(), String>>,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<Seen, String> {
        let result = self.read(&opened, &mut stopping).await;
        if let Err(error) = &result {
            // Heard only while the streams open; later, the report fails instead.
            let _ = opened.send(Err(error.clone()));
        }
        result
    }

    async fn read(
        self,
        opened: &mpsc::UnboundedSender<Result<(), String>>,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<Seen, String> {
        let mut path = format!("/v1/accounts/{}/signals/scans/changes", self.group);
        if !self.query.is_empty() {
            path = format!("{path}?{}", self.query);
        }
        let mut socket = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\n\r\n",
            self.authority, self.key
        );
        let io = |e: std::io::Error| format!("{path}: {e}");
        socket.write_all(request.as_bytes()).await.map_err(io)?;

        let mut buffer = Vec::with_capacity(READ_SIZE);
        let body = loop {
            if let Some(end) = memmem::find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            buffer.reserve(READ_SIZE);
            if socket.read_buf(&mut buffer).await.map_err(io)? == 0 {
                return Err(format!("{path}: closed before its headers"));
            }
        };
        let status = buffer.split(|&b| b == b'\r').next().unwrap_or_default();
        if memmem::find(status, b" 200 ").is_none() {
            return Err(format!(
                "stream refused: {}",
                String::from_utf8_lossy(status)
            ));
        }
        buffer.drain(..body);

        let own_group = format!("\"accountGroupId\":\"{}\"", self.group);
        let reader = EventReader {
            scan_id: memmem::Finder::new(b"\"scanId\":\""),
            own_group: memmem::Finder::new(own_group.as_bytes()),
        };
        let mut seen = Seen {
            label: self.label.clone(),
            scans: Vec::new(),
            foreign: 0,
        };
        let mut is_open = false;
        loop {
            // Whole lines only; a line cut by the read waits for the next one.
            if let Some(last) = memchr::memrchr(b'\n', &buffer) {
                let lines = &buffer[..=last];
                let retry =
                    lines.starts_with(b"retry: ") || memmem::find(lines, b"\nretry: ").is_some();
                if !is_open && retry {
                    is_open = true;
                    let _ = opened.send(Ok(()));
                }
                reader
                    .events(lines, &mut seen)
                    .map_err(|e| format!("{path}: {e}"))?;
                buffer.drain(..=last);
            }
            buffer.reserve(READ_SIZE);
            let read = tokio::select! {
                // The signal first: a stream that never runs dry must still stop when told.
                biased;
                _ = stopping.wait_for(|stop| *stop) => break,
                read = socket.read_buf(&mut buffer) => read.map_err(io)?,
            };
            if read == 0 {
                break;
            }
        }
        Ok(seen)
    }
}

/// Finds the events in a run of whole lines.
struct EventReader<'a> {
    scan_id: memmem::Finder<'a>,
    own_group: memmem::Finder<'a>,
}

impl EventReader<'_> {
    fn events(&self, lines: &[u8], seen: &mut Seen) -> Result<(), String> {
        for line in lines.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let at = self.scan_id.find(data).ok_or_else(|| {
                format!(
                    "an event without a scanId: {}",
                    String::from_utf8_lossy(data)
                )
            })? + self.scan_id.needle().len();
            let scan: [u8; 24] = data
                .get(at..at + 24)
                .and_then(|id| id.try_into().ok())
                .filter(|id: &[u8; 24]| id.iter().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    format!(
                        "a scanId that is not 24 hex: {}",
                        String::from_utf8_lossy(data)
                    )
                })?;
            seen.scans.push(scan);
            if self.own_group.find(data).is_none() {
                seen.foreign += 1;
            }
        }
        Ok(())
    }
}
