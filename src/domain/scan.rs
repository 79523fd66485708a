//! A scan's status and the one state machine every status change goes through.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::ids::{AccountGroupId, ScanId};

/// Where a scan is in its life.
///
/// ```text
/// queued ──► running ──► completed
///    │          │──────► failed
///    └──────────┴──────► cancelled
/// ```
/// `completed`, `failed` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ScanStatus {
    pub const ALL: [ScanStatus; 5] = [
        ScanStatus::Queued,
        ScanStatus::Running,
        ScanStatus::Completed,
        ScanStatus::Failed,
        ScanStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScanStatus::Queued => "queued",
            ScanStatus::Running => "running",
            ScanStatus::Completed => "completed",
            ScanStatus::Failed => "failed",
            ScanStatus::Cancelled => "cancelled",
        }
    }

    /// The statuses from which a scan may move to `self`: the single source of truth the store's
    /// guarded UPDATE is built from.
    pub fn reachable_from(self) -> &'static [ScanStatus] {
        match self {
            ScanStatus::Queued => &[],
            ScanStatus::Running => &[ScanStatus::Queued],
            ScanStatus::Completed | ScanStatus::Failed => &[ScanStatus::Running],
            ScanStatus::Cancelled => &[ScanStatus::Queued, ScanStatus::Running],
        }
    }

    pub fn can_move_to(self, next: ScanStatus) -> bool {
        next.reachable_from().contains(&self)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ScanStatus::Completed | ScanStatus::Failed | ScanStatus::Cancelled
        )
    }
}

impl fmt::Display for ScanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scan status {0:?} (expected queued, running, completed, failed or cancelled)")]
pub struct UnknownStatus(pub String);

impl FromStr for ScanStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScanStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A scan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub id: ScanId,
    pub account_group_id: AccountGroupId,
    pub status: ScanStatus,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub cancelled_at: Option<OffsetDateTime>,
}

/// One row of a scan's audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEvent {
    pub scan_id: ScanId,
    /// `None` for the row that records the scan's creation.
    pub from: Option<ScanStatus>,
    pub to: ScanStatus,
    pub api_key_id: Option<uuid::Uuid>,
    pub trace_id: Option<String>,
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::ScanStatus::*;
    use super::*;

    #[test]
    fn the_state_machine_allows_exactly_the_documented_moves() {
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
        ];
        for from in ScanStatus::ALL {
            for to in ScanStatus::ALL {
                assert_eq!(
                    from.can_move_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn final_statuses_have_no_way_out() {
        for from in [Completed, Failed, Cancelled] {
            assert!(from.is_final());
            assert!(ScanStatus::ALL.iter().all(|to| !from.can_move_to(*to)));
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in ScanStatus::ALL {
            assert_eq!(status.as_str().parse::<ScanStatus>().unwrap(), status);
        }
        assert!("CANCELLED".parse::<ScanStatus>().is_err());
    }
}
