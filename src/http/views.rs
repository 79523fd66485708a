//! The JSON bodies of successful answers (`data`, and a change event's `data`), as the API shows
//! them: what clients parse, and what the OpenAPI document describes.

use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{Scan, ScanEvent, ScanStatus};
use crate::service::feed::FeedEvent;
use crate::service::{BatchCancellation, CancelOutcome as Outcome, Cancellation, Moved, ScanPage};

/// `data` of a successful cancel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CancelledScan {
    scan_id: ScanId,
    /// Always `cancelled`.
    status: ScanStatus,
    /// `queued` or `running` when cancelled by this request; `cancelled` when it already was.
    previous_status: ScanStatus,
    /// When the scan was cancelled (the original moment on a repeated cancel).
    #[serde(with = "crate::domain::rfc3339")]
    cancelled_at: OffsetDateTime,
}

impl From<Cancellation> for CancelledScan {
    fn from(cancellation: Cancellation) -> Self {
        Self {
            scan_id: cancellation.scan_id,
            status: ScanStatus::Cancelled,
            previous_status: cancellation.previous_status,
            cancelled_at: cancellation.cancelled_at,
        }
    }
}

/// `data` of a batch cancel: one result per requested id, in the request's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CancelledScans {
    results: Vec<CancelResult>,
}

/// What a batch cancel did to one scan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CancelResult {
    scan_id: ScanId,
    outcome: CancelOutcome,
    /// The scan's status after the request; null when not found.
    #[schema(required = true)]
    status: Option<ScanStatus>,
    /// Its status before the request (`status` when nothing changed); null when not found.
    #[schema(required = true)]
    previous_status: Option<ScanStatus>,
    /// When the scan was cancelled, by this request or before; null otherwise.
    #[serde(with = "crate::domain::rfc3339::option")]
    #[schema(required = true)]
    cancelled_at: Option<OffsetDateTime>,
}

/// `cancelled` by this request, `already_cancelled` before it, `not_cancellable` (completed or
/// failed: nothing changed), or `not_found` (no such scan in the account group).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CancelOutcome {
    Cancelled,
    AlreadyCancelled,
    NotCancellable,
    NotFound,
}

impl From<Outcome> for CancelOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Cancelled => Self::Cancelled,
            Outcome::AlreadyCancelled => Self::AlreadyCancelled,
            Outcome::NotCancellable => Self::NotCancellable,
            Outcome::NotFound => Self::NotFound,
        }
    }
}

impl From<Vec<BatchCancellation>> for CancelledScans {
    fn from(lines: Vec<BatchCancellation>) -> Self {
        let results = lines
            .into_iter()
            .map(|line| CancelResult {
                scan_id: line.scan_id,
                outcome: line.outcome.into(),
                status: line.status,
                previous_status: line.previous_status,
                cancelled_at: line.cancelled_at,
            })
            .collect();
        Self { results }
    }
}

/// `data` of a runner's move (start, complete, fail).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MovedScan {
    scan_id: ScanId,
    /// The status the move asked for.
    status: ScanStatus,
    /// The status the scan moved from; equal to `status` when it was already there (a repeated
    /// move answers where the scan is, with the original moment).
    previous_status: ScanStatus,
    /// When the scan reached `status`.
    #[serde(with = "crate::domain::rfc3339")]
    at: OffsetDateTime,
}

impl From<Moved> for MovedScan {
    fn from(moved: Moved) -> Self {
        Self {
            scan_id: moved.scan_id,
            status: moved.status,
            previous_status: moved.previous_status,
            at: moved.at,
        }
    }
}

/// `data` of the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScanList {
    /// Newest first.
    scans: Vec<Scan>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

impl From<ScanPage> for ScanList {
    fn from(page: ScanPage) -> Self {
        Self {
            scans: page.scans,
            next_cursor: page.next.map(|cursor| cursor.encode()),
        }
    }
}

/// One row of the audit trail as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventView {
    /// null for the row that records the scan's creation.
    #[schema(required = true)]
    from: Option<ScanStatus>,
    to: ScanStatus,
    /// When the change was written.
    #[serde(with = "crate::domain::rfc3339")]
    at: OffsetDateTime,
    /// The trace id of the request that made the change; null when none did (e.g. the command line).
    #[schema(required = true)]
    trace_id: Option<String>,
    /// The runner's reason for a failure; null when none was given.
    #[schema(required = true)]
    reason: Option<String>,
}

impl From<ScanEvent> for EventView {
    fn from(event: ScanEvent) -> Self {
        Self {
            from: event.from,
            to: event.to,
            at: event.at,
            trace_id: event.trace_id,
            reason: event.reason,
        }
    }
}

/// `data` of the events route.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScanEvents {
    scan_id: ScanId,
    /// Oldest first.
    events: Vec<EventView>,
}

impl ScanEvents {
    pub(crate) fn new(scan_id: ScanId, events: Vec<ScanEvent>) -> Self {
        Self {
            scan_id,
            events: events.into_iter().map(EventView::from).collect(),
        }
    }
}

/// The `data` of a `scan.status_changed` event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScanStatusChanged<'a> {
    scan_id: ScanId,
    account_group_id: AccountGroupId,
    /// null when the change is the scan's creation.
    #[schema(required = true)]
    from: Option<ScanStatus>,
    to: ScanStatus,
    /// When the change was written (its commit may come later): order by the cursor, not by this.
    #[serde(with = "crate::domain::rfc3339")]
    at: OffsetDateTime,
    /// The trace id of the request that made the change; null when none did (the command line).
    #[schema(required = true)]
    trace_id: Option<&'a str>,
    /// The runner's reason for a failure; null when none was given.
    #[schema(required = true)]
    reason: Option<&'a str>,
}

impl<'a> From<&'a FeedEvent> for ScanStatusChanged<'a> {
    fn from(event: &'a FeedEvent) -> Self {
        Self {
            scan_id: event.change.scan_id,
            account_group_id: event.change.account_group_id,
            from: event.change.from,
            to: event.change.to,
            at: event.change.at,
            trace_id: event.trace_id.as_deref(),
            reason: event.change.reason.as_deref(),
        }
    }
}

// `data` of `/healthz` and `/readyz` (no doc comment: it would change the published schema).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok` from /healthz, `ready` from /readyz.
    #[schema(example = "ok")]
    status: &'static str,
}

impl Health {
    pub(crate) const OK: Health = Health { status: "ok" };
    pub(crate) const READY: Health = Health { status: "ready" };
}
