//! After a change commits, tell PostgreSQL listeners: at most one `NOTIFY` per tick, from one
//! task with its own connection, off the request path.
//!
//! A `NOTIFY` inside the changing transaction would serialise every commit behind one
//! cluster-wide lock (PostgreSQL takes it in `PreCommit_Notify` and holds it until the commit
//! record is flushed), so group commit is lost. The audit row is the truth and commits first; the
//! notification is only a hint that readers should read the trail, and losing one is harmless:
//! readers also poll (`FEED_POLL_MS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{mpsc, oneshot};

use super::CHANGES_CHANNEL;
use crate::domain::scan::ScanChange;

/// Changes queued for the next tick before newer ones only set "read the trail".
const QUEUE: usize = 4096;
/// PostgreSQL refuses payloads of 8000 bytes or more; past this the hint carries no list.
const MAX_PAYLOAD: usize = 7900;
/// The longest a publish (connect included) may take before it is given up and retried.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Message {
    Change(ScanChange),
    Flush(oneshot::Sender<()>),
}

/// The sending half, cheap to clone; the task ends when every clone is dropped.
#[derive(Clone)]
pub(super) struct Publisher {
    queue: mpsc::Sender<Message>,
    /// Set when a change could not be queued: the next hint says "read the trail".
    overflowed: Arc<AtomicBool>,
}

impl Publisher {
    /// Starts the publishing task on the current Tokio runtime. `options` are the database's;
    /// the task's session turns `synchronous_commit` off, since a hint need not be durable.
    pub(super) fn start(options: &PgConnectOptions, interval: Duration) -> Self {
        let options = options
            .clone()
            .application_name("signal-scans publisher")
            .options([("synchronous_commit", "off")]);
        let (queue, receiver) = mpsc::channel(QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(options, interval, receiver, overflowed.clone()));
        Self { queue, overflowed }
    }

    /// Queues a committed change for the next tick; never waits.
    pub(super) fn publish(&self, change: ScanChange) {
        if self.queue.try_send(Message::Change(change)).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Sends what is queued now, without waiting for the tick (at shutdown), for at most
    /// `limit`.
    pub(super) async fn flush(&self, limit: Duration) {
        let (done, sent) = oneshot::channel();
        let flushed = async {
            if self.queue.send(Message::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        };
        if tokio::time::timeout(limit, flushed).await.is_err() {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "the last change notifications were not sent in time; listeners will find the changes by polling"
            );
        }
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    /// `None`: too many to list, or some were not queued: read the audit trail.
    changes: Option<&'a [ScanChange]>,
}

fn payload(changes: &[ScanChange], complete: bool) -> String {
    // Written into a buffer that refuses to grow past the limit: under load a tick holds far
    // more changes than fit, and writing them all only to throw the text away cost CPU per change.
    let mut listed = Vec::new();
    let fits = complete
        && serde_json::to_writer(
            Bounded(&mut listed),
            &Payload {
                changes: Some(changes),
            },
        )
        .is_ok();
    if fits {
        return String::from_utf8(listed).expect("JSON is UTF-8");
    }
    serde_json::to_string(&Payload { changes: None }).expect("a null list serializes")
}

/// A writer that fails once more than `MAX_PAYLOAD` bytes were written to it.
struct Bounded<'a>(&'a mut Vec<u8>);

impl std::io::Write for Bounded<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_PAYLOAD {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn run(
    options: PgConnectOptions,
    interval: Duration,
    mut receiver: mpsc::Receiver<Message>,
    overflowed: Arc<AtomicBool>,
) {
    let mut connection: Option<PgConnection> = None;
    let mut backoff = interval.max(Duration::from_millis(100));
    let mut changes = Vec::new();
    let mut flushes = Vec::new();
    // Set while a hint could not be sent: retried on the next tick even without new changes.
    let mut owed = false;
    loop {
        // Wait for a change, or, while a hint is owed, for the time to try again.
        let woken_by = match owed {
            false => receiver.recv().await.map(Some),
            true => tokio::select! {
                message = receiver.recv() => message.map(Some),
                () = tokio::time::sleep(backoff) => Some(None),
            },
        };
        let Some(woken_by) = woken_by else {
            break; // every sender is gone
        };
        if let Some(message) = woken_by {
            take(message, &mut changes, &mut flushes);
        }
        // One tick: gather what else commits within the interval, unless someone waits.
        if flushes.is_empty() {
            tokio::time::sleep(interval).await;
        }
        while let Ok(message) = receiver.try_recv() {
            take(message, &mut changes, &mut flushes);
        }
        let complete = !overflowed.swap(false, Ordering::Relaxed) && !owed;
        if !changes.is_empty() || !complete {
            let hint = payload(&changes, complete);
            match tokio::time::timeout(SEND_TIMEOUT, notify(&mut connection, &options, &hint)).await
            {
                Ok(Ok(())) => {
                    if std::mem::take(&mut owed) {
                        tracing::info!("change notifications are sent again");
                    }
                    backoff = interval.max(Duration::from_millis(100));
                }
                failure => {
                    let error = match failure {
                        Ok(Err(error)) => super::described(&error),
                        _ => format!("no answer within {} ms", SEND_TIMEOUT.as_millis()),
                    };
                    tracing::warn!(%error, retry_ms = backoff.as_millis() as u64,
                        "cannot send change notifications; listeners will poll until it works again");
                    connection = None;
                    owed = true;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        changes.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(message: Message, changes: &mut Vec<ScanChange>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match message {
        Message::Change(change) => changes.push(change),
        Message::Flush(done) => flushes.push(done),
    }
}

async fn notify(
    connection: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    payload: &str,
) -> Result<(), sqlx::Error> {
    if connection.is_none() {
        *connection = Some(PgConnection::connect_with(options).await?);
    }
    let connection = connection.as_mut().expect("connected above");
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(payload)
        .execute(connection)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::ids::{AccountGroupId, ScanId};
    use crate::domain::scan::ScanStatus;

    fn change() -> ScanChange {
        ScanChange {
            scan_id: ScanId::generate(),
            account_group_id: AccountGroupId::parse("507f1f77bcf86cd799439011").unwrap(),
            from: Some(ScanStatus::Running),
            to: ScanStatus::Cancelled,
            at: OffsetDateTime::UNIX_EPOCH,
            reason: None,
        }
    }

    #[test]
    fn a_tick_lists_its_changes_until_the_payload_would_be_too_large() {
        let few = payload(&[change(), change()], true);
        let parsed: serde_json::Value = serde_json::from_str(&few).unwrap();
        assert_eq!(parsed["changes"].as_array().unwrap().len(), 2);
        assert_eq!(parsed["changes"][0]["to"], "cancelled");

        let many: Vec<ScanChange> = (0..100).map(|_| change()).collect();
        assert_eq!(payload(&many, true), r#"{"changes":null}"#);
        assert_eq!(payload(&[change()], false), r#"{"changes":null}"#);
    }

    #[test]
    fn a_payload_of_exactly_the_limit_is_listed_and_one_byte_more_is_not() {
        let changes = vec![change(); 100];
        let listed = |n: usize| {
            serde_json::to_string(&Payload {
                changes: Some(&changes[..n]),
            })
            .unwrap()
        };
        let most = (1..100)
            .take_while(|&n| listed(n).len() <= MAX_PAYLOAD)
            .last()
            .unwrap();
        assert_eq!(payload(&changes[..most], true), listed(most));
        assert_eq!(payload(&changes[..most + 1], true), r#"{"changes":null}"#);
        // The boundary itself: a buffer of exactly MAX_PAYLOAD bytes fits, one more does not.
        let mut exact = Vec::new();
        assert!(std::io::Write::write_all(&mut Bounded(&mut exact), &[b' '; MAX_PAYLOAD]).is_ok());
        assert!(std::io::Write::write_all(&mut Bounded(&mut exact), b" ").is_err());
    }
}
