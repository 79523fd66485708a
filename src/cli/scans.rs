//! `scans create | transition | show`: an operator's (or a runner's) scan operations, through
//! `ScanService` with no principal.

use anyhow::{anyhow, bail};
use serde::Serialize;

use super::config::{self, DatabaseArgs};
use super::output::{print_json, rfc3339};
use super::remote::{self, Answer};
use super::{BadInput, OR_SERVER, existing_store, writable};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{Actor, Scan, ScanStatus, check_reason};
use crate::service::HINT_FLUSH_LIMIT;
use crate::service::{Moved, ScanService, ServiceError};

/// A scan as `scans create --json` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScanView<'a> {
    scan_id: &'a str,
    status: ScanStatus,
}

/// The command line's words for what the service refused.
fn refused(scan_id: &ScanId, error: ServiceError) -> anyhow::Error {
    match error {
        ServiceError::InvalidTransition { current, requested } => {
            anyhow!("scan {scan_id} is {current}; it cannot move to {requested}")
        }
        ServiceError::ScanNotFound => anyhow!("no scan with id {scan_id}"),
        other => other.into(),
    }
}

/// `scans create`: in the database (any status), or with `--server` through the API (queued).
pub(super) async fn create(
    database: &DatabaseArgs,
    server: Option<&url::Url>,
    group: &AccountGroupId,
    status: ScanStatus,
    idempotency_key: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (scan_id, status) = match server {
        Some(server) => {
            let key = config::api_key("scans create")?;
            let created = remote::create(server, group, &key, idempotency_key).await?;
            let Answer::Done(data) = created else {
                bail!("{server} refused to start a scan");
            };
            (field(&data, "scanId")?, field(&data, "status")?.parse()?)
        }
        None => {
            // Into the database the other commands use, never a new one (a mistyped or
            // forgotten DATABASE_URL would make a scan that no service ever serves).
            let store = writable(existing_store(database, OR_SERVER).await?).await?;
            let service = ScanService::new(store);
            let scan = service.seed_scan(group, status).await?;
            // Tell listeners now rather than leave them to find the creation at their next poll.
            service.flush_hints(HINT_FLUSH_LIMIT).await;
            (scan.id.to_string(), scan.status)
        }
    };
    if json {
        return print_json(&ScanView {
            scan_id: &scan_id,
            status,
        });
    }
    out!("{scan_id} {status}");
    Ok(())
}

/// What `scans transition` moves, and how.
pub(super) struct Move<'a> {
    pub scan_id: &'a ScanId,
    pub to: ScanStatus,
    pub reason: Option<&'a str>,
    pub json: bool,
}

/// `scans transition`: a runner's guarded move, in the database or with `--server` through the
/// API. A move the state machine refuses exits 1 naming the current status (as JSON on stdout
/// with `--json`); through the API, one the service did not answer, or answered 429 or a 5xx,
/// exits 75 (see [`remote::TryLater`](super::remote::TryLater)).
pub(super) async fn transition(
    database: &DatabaseArgs,
    server: Option<&url::Url>,
    group: Option<&AccountGroupId>,
    request: Move<'_>,
) -> anyhow::Result<()> {
    let Move {
        scan_id,
        to,
        reason,
        json,
    } = request;
    // What the API would refuse, refused before anything moves, whichever way the move goes.
    if let Some(reason) = reason {
        if to != ScanStatus::Failed {
            bail!(BadInput("--reason goes only with --to failed".into()));
        }
        check_reason(reason).map_err(|problem| BadInput(format!("--reason: {problem}")))?;
    }
    let moved = match server.zip(group) {
        Some((server, group)) => {
            let key = config::api_key("scans transition")?;
            let path = remote::move_path(group, scan_id, to)?;
            let body = reason.map(|reason| serde_json::json!({ "reason": reason }));
            match remote::post(server, &path, &key, body).await? {
                Answer::Done(data) => Ok(data),
                Answer::Refused { current } => Err(current),
            }
        }
        None => {
            let store = writable(existing_store(database, OR_SERVER).await?).await?;
            let service = ScanService::new(store);
            let actor = Actor {
                reason,
                ..Actor::default()
            };
            let outcome = service.advance(group, scan_id, to, actor).await;
            // Tell listeners now rather than leave them to find the change at their next poll.
            service.flush_hints(HINT_FLUSH_LIMIT).await;
            match outcome {
                Ok(moved) => Ok(serde_json::to_value(MoveView::from(&moved))?),
                Err(ServiceError::InvalidTransition { current, .. }) => Err(current),
                Err(error) => return Err(refused(scan_id, error)),
            }
        }
    };
    match moved {
        Ok(data) if json => print_json(&data),
        Ok(data) => {
            out!("{} {}", field(&data, "scanId")?, field(&data, "status")?);
            Ok(())
        }
        Err(current) => {
            if json {
                print_json(&serde_json::json!({
                    "scanId": scan_id,
                    "currentStatus": current,
                    "requested": to,
                }))?;
            }
            Err(refused(
                scan_id,
                ServiceError::InvalidTransition {
                    current,
                    requested: to,
                },
            ))
        }
    }
}

/// A move as `scans transition --json` prints it: as the API answers it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MoveView<'a> {
    scan_id: &'a str,
    status: ScanStatus,
    previous_status: ScanStatus,
    #[serde(with = "crate::domain::rfc3339")]
    at: time::OffsetDateTime,
}

impl<'a> From<&'a Moved> for MoveView<'a> {
    fn from(moved: &'a Moved) -> Self {
        Self {
            scan_id: moved.scan_id.as_str(),
            status: moved.status,
            previous_status: moved.previous_status,
            at: moved.at,
        }
    }
}

/// A string field of an answer's `data`.
fn field(data: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    data[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the answer has no {name}: {data}"))
}

/// `scans show`: from the database (a scan of `group`, when given, as `scans transition` finds
/// it), or with `--server` (and its account group) through the API.
pub(super) async fn show(
    database: &DatabaseArgs,
    scan_id: &ScanId,
    server: Option<&url::Url>,
    group: Option<&AccountGroupId>,
    json: bool,
) -> anyhow::Result<()> {
    let scan = match server.zip(group) {
        Some((server, group)) => {
            let key = config::api_key("scans show")?;
            remote::scan(server, group, scan_id, &key).await?
        }
        None => ScanService::new(existing_store(database, OR_SERVER).await?)
            .find_scan(group, scan_id)
            .await
            .map_err(|error| refused(scan_id, error))?,
    };
    if json {
        /// The scan as the API shows it, and its account group (which the API's path names).
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ShownScan<'a> {
            #[serde(flatten)]
            scan: &'a Scan,
            account_group_id: &'a AccountGroupId,
        }
        return print_json(&ShownScan {
            scan: &scan,
            account_group_id: &scan.account_group_id,
        });
    }
    out!("scan          {}", scan.id);
    out!("account group {}", scan.account_group_id);
    out!("status        {}", scan.status);
    for (label, at) in [
        ("created", Some(scan.created_at)),
        ("updated", Some(scan.updated_at)),
        ("started", scan.started_at),
        ("finished", scan.finished_at),
        ("cancelled", scan.cancelled_at),
    ] {
        out!("{label:<13} {}", rfc3339(at));
    }
    Ok(())
}
