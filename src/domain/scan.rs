//! A scan's status and the one state machine every status change goes through.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use uuid::Uuid;

use super::ids::{AccountGroupId, ScanId};

/// Where a scan is in its life.
///
/// ```text
/// queued ──► running ──► completed
///    │          │──────► failed
///    └──────────┴──────► cancelled
/// ```
/// `completed`, `failed` and `cancelled` are final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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
    pub(crate) fn reachable_from(self) -> &'static [ScanStatus] {
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

/// A scan as stored; serialized as the API shows it (nulls where a moment was not reached).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scan {
    #[serde(rename = "scanId")]
    pub id: ScanId,
    #[serde(skip)]
    pub account_group_id: AccountGroupId,
    pub status: ScanStatus,
    #[serde(with = "crate::domain::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "crate::domain::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "crate::domain::rfc3339::option")]
    #[schema(required = true)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "crate::domain::rfc3339::option")]
    #[schema(required = true)]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "crate::domain::rfc3339::option")]
    #[schema(required = true)]
    pub cancelled_at: Option<OffsetDateTime>,
}

impl Scan {
    /// When the scan reached `status`, if it has: what a repeated move answers as its `at`.
    pub(crate) fn reached_at(&self, status: ScanStatus) -> Option<OffsetDateTime> {
        match status {
            ScanStatus::Queued => Some(self.created_at),
            ScanStatus::Running => self.started_at,
            ScanStatus::Completed | ScanStatus::Failed => self.finished_at,
            ScanStatus::Cancelled => self.cancelled_at,
        }
    }
}

/// A status change of a scan: a row of the audit trail as the feed reads it (`FeedRow`), the hint a
/// committed change publishes in this process (without its reason, which readers take from the
/// trail), and a line of `scans watch`. The change streams show it, with its trace id, as
/// `http::views::ScanStatusChanged`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanChange {
    pub scan_id: ScanId,
    pub account_group_id: AccountGroupId,
    /// `None` for the scan's creation.
    pub from: Option<ScanStatus>,
    pub to: ScanStatus,
    #[serde(with = "crate::domain::rfc3339")]
    pub at: OffsetDateTime,
    /// Why a runner failed the scan, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ScanChange {
    /// The change that moved `scan` (as it is now) from `previous` (`None`: created).
    pub fn of(previous: Option<ScanStatus>, scan: &Scan, reason: Option<&str>) -> Self {
        Self {
            scan_id: scan.id,
            account_group_id: scan.account_group_id,
            from: previous,
            to: scan.status,
            at: scan.updated_at,
            reason: reason.map(str::to_owned),
        }
    }
}

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters, checked once at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Option<Self> {
        let visible = raw.bytes().all(|byte| byte.is_ascii_graphic());
        ((1..=255).contains(&raw.len()) && visible).then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How long an `Idempotency-Key` is remembered: a retry within it answers the first answer again;
/// after it the key is forgotten and may start a new scan.
pub(crate) const IDEMPOTENCY_WINDOW: time::Duration = time::Duration::hours(24);

/// A scan as a runner's finish checks its claim: the scan, and the key that started it, read in
/// one statement (one snapshot), so that a start committing meanwhile is seen whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedScan {
    pub scan: Scan,
    /// The key of the scan's latest audit row to running; `None` when no key made it (the
    /// command line on the database), when the scan never ran, or when retention deleted it.
    pub started_by: Option<Uuid>,
}

/// What a request to start a scan did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// A new scan, as created.
    Created(Scan),
    /// The same key started this scan within the window: the first answer, again.
    Replayed(Scan),
    /// The same key started a scan of another account group within the window.
    KeyUsedForAnotherGroup,
}

impl Scan {
    /// The scan as its creation answered it (queued, no moment but its creation reached): what a
    /// replayed request answers, whatever happened to the scan since.
    pub(crate) fn as_created(&self) -> Scan {
        Scan {
            status: ScanStatus::Queued,
            updated_at: self.created_at,
            started_at: None,
            finished_at: None,
            cancelled_at: None,
            ..self.clone()
        }
    }
}

/// The longest reason a runner may give for a failure, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Whether `reason` may be a failure's reason: 1 to [`MAX_REASON_CHARS`] characters, none of them
/// NUL (PostgreSQL's text cannot hold U+0000: refused here, so both stores answer alike). The
/// API and the command line check it before anything moves.
pub(crate) fn check_reason(reason: &str) -> Result<(), String> {
    let chars = reason.chars().count();
    if !(1..=MAX_REASON_CHARS).contains(&chars) {
        return Err(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters; it is {chars}"
        ));
    }
    if reason.contains('\0') {
        return Err("reason must not contain the NUL character (U+0000)".into());
    }
    Ok(())
}

/// Where a page of scans ends: the (created_at, id) of its last scan, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub created_at: OffsetDateTime,
    pub id: ScanId,
}

impl ScanCursor {
    pub fn after(scan: &Scan) -> Self {
        Self {
            created_at: scan.created_at,
            id: scan.id,
        }
    }

    /// An opaque token: clients pass it back, never build it.
    pub(crate) fn encode(&self) -> String {
        hex::encode(format!(
            "{}.{}",
            self.created_at.unix_timestamp_nanos(),
            self.id
        ))
    }

    pub(crate) fn decode(token: &str) -> Option<Self> {
        let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let (nanos, id) = raw.split_once('.')?;
        // As the OpenAPI document's pattern says: an optional `+`, then 1 to 20 digits. So only
        // instants from 1970 to the year 5138, which both stores compare alike.
        let digits = nanos.strip_prefix('+').unwrap_or(nanos);
        if !(1..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(digits.parse().ok()?).ok()?;
        Some(Self {
            created_at,
            id: ScanId::parse(id).ok()?,
        })
    }
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
    /// Why a runner failed the scan, when it said.
    pub reason: Option<String>,
}

/// Who caused a status change, and why when they said, for the audit trail.
#[derive(Debug, Clone, Copy, Default)]
pub struct Actor<'a> {
    pub api_key_id: Option<Uuid>,
    pub trace_id: Option<&'a str>,
    /// A runner's reason for a failure (at most `MAX_REASON_CHARS`).
    pub reason: Option<&'a str>,
}

/// What a guarded status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The scan moved from `previous` to the requested status; `scan` is its new state.
    Applied {
        previous: ScanStatus,
        scan: Scan,
    },
    /// The scan's current status does not allow the change; `scan` is its current state.
    Refused {
        scan: Scan,
    },
    NotFound,
}

/// Which page of a group's scans to read, newest first.
#[derive(Debug, Clone)]
pub struct ScanPageQuery {
    pub status: Option<ScanStatus>,
    pub limit: u32,
    /// Start after this scan (exclusive); `None` for the first page.
    pub after: Option<ScanCursor>,
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
        assert!(!Queued.is_final() && !Running.is_final());
    }

    /// A replay answers what the creation answered: queued, with no moment but its creation,
    /// however far the scan has moved since.
    #[test]
    fn a_scan_as_created_has_no_moment_but_its_creation() {
        let at =
            |seconds: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + seconds).unwrap();
        let group = AccountGroupId::parse("507f1f77bcf86cd799439011").unwrap();
        let completed = Scan {
            id: ScanId::generate(),
            account_group_id: group,
            status: Completed,
            created_at: at(0),
            updated_at: at(20),
            started_at: Some(at(10)),
            finished_at: Some(at(20)),
            cancelled_at: None,
        };
        let created = Scan {
            status: Queued,
            updated_at: at(0),
            started_at: None,
            finished_at: None,
            ..completed.clone()
        };
        assert_eq!(completed.as_created(), created);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = ScanCursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap(),
            id: ScanId::generate(),
        };
        assert_eq!(ScanCursor::decode(&cursor.encode()), Some(cursor));
        for edge in ["0", "+0", "99999999999999999999", "+99999999999999999999"] {
            let token = hex::encode(format!("{edge}.507f1f77bcf86cd799439011"));
            assert!(ScanCursor::decode(&token).is_some(), "{edge}");
        }
        for garbage in [
            "",
            "zz",
            "00",
            &hex::encode("1.nope"),
            &hex::encode("x.507f1f77bcf86cd799439011"),
            // A sign but `+`, more than 20 digits, or none: what the document's pattern refuses.
            &hex::encode("-0.507f1f77bcf86cd799439011"),
            &hex::encode("-1.507f1f77bcf86cd799439011"),
            &hex::encode("000000000000000000001.507f1f77bcf86cd799439011"),
            &hex::encode("253402300799000000000.507f1f77bcf86cd799439011"),
            &hex::encode("+.507f1f77bcf86cd799439011"),
            &hex::encode(" 1.507f1f77bcf86cd799439011"),
        ] {
            assert_eq!(ScanCursor::decode(garbage), None, "{garbage}");
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
