//! `ScanService`: each scan operation, checking the caller's rights before touching the store.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::feed::{ChangeHub, Follower, Start};
use super::key_cache::{KeyCache, KeyRead};
use crate::domain::feed::{FeedCursor, FeedPosition};
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::keys::{KeyHash, KeyRejected, Principal, looks_like_key};
use crate::domain::scan::{
    Actor, ClaimedScan, Creation, IdempotencyKey, Scan, ScanCursor, ScanEvent, ScanPageQuery,
    ScanStatus, Transition,
};
use crate::store::{Store, StoreError};

/// How often the idempotency keys past their window are swept away.
const IDEMPOTENCY_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How many expired keys one sweeping statement deletes.
const IDEMPOTENCY_SWEEP_BATCH: u32 = 1000;

/// A scan that is now cancelled, and what it was before this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub scan_id: ScanId,
    /// `Cancelled` when the scan was already cancelled: cancel is idempotent by state.
    pub previous_status: ScanStatus,
    pub cancelled_at: OffsetDateTime,
}

/// What a batch cancel did to one scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Queued or running, and cancelled by this request.
    Cancelled,
    /// Cancelled before: nothing changed.
    AlreadyCancelled,
    /// Completed or failed: nothing changed.
    NotCancellable,
    /// No such scan in the account group.
    NotFound,
}

/// One scan's line in a batch cancel's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCancellation {
    pub scan_id: ScanId,
    pub outcome: CancelOutcome,
    /// The scan's status after the request (`None`: not found).
    pub status: Option<ScanStatus>,
    /// Its status before the request: equal to `status` when nothing changed.
    pub previous_status: Option<ScanStatus>,
    /// When it was cancelled, by this request or before.
    pub cancelled_at: Option<OffsetDateTime>,
}

impl Cancellation {
    /// The store's answer to a cancel: the scan is cancelled now (by this request or before), or
    /// why it is not.
    fn of(outcome: Transition) -> Result<Self, ServiceError> {
        match outcome {
            Transition::Applied { previous, scan } => Ok(Self {
                previous_status: previous,
                cancelled_at: cancelled_at(&scan)?,
                scan_id: scan.id,
            }),
            Transition::Refused { scan } if scan.status == ScanStatus::Cancelled => Ok(Self {
                previous_status: ScanStatus::Cancelled,
                cancelled_at: cancelled_at(&scan)?,
                scan_id: scan.id,
            }),
            Transition::Refused { scan } => Err(ServiceError::NotCancellable {
                current: scan.status,
            }),
            Transition::NotFound => Err(ServiceError::ScanNotFound),
        }
    }
}

impl BatchCancellation {
    /// The single cancel's outcome as a line: what would be a 404 or 422 there is a line here.
    fn of(scan_id: ScanId, outcome: Transition) -> Result<Self, ServiceError> {
        let line = |outcome, status, previous_status, cancelled_at| Self {
            scan_id,
            outcome,
            status,
            previous_status,
            cancelled_at,
        };
        match Cancellation::of(outcome) {
            Ok(done) => Ok(line(
                // An applied cancel never starts from `cancelled`: that is refused.
                if done.previous_status == ScanStatus::Cancelled {
                    CancelOutcome::AlreadyCancelled
                } else {
                    CancelOutcome::Cancelled
                },
                Some(ScanStatus::Cancelled),
                Some(done.previous_status),
                Some(done.cancelled_at),
            )),
            Err(ServiceError::NotCancellable { current }) => Ok(line(
                CancelOutcome::NotCancellable,
                Some(current),
                Some(current),
                None,
            )),
            Err(ServiceError::ScanNotFound) => Ok(line(CancelOutcome::NotFound, None, None, None)),
            Err(other) => Err(other),
        }
    }
}

/// A scan a client started, and whether this request only replayed the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub scan: Scan,
    /// True when an earlier request with the same idempotency key started it.
    pub replayed: bool,
}

/// Where a runner's move left the scan: the status it asked for, now or before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub scan_id: ScanId,
    pub status: ScanStatus,
    /// Equal to `status` when the scan was already there: a move is idempotent by state.
    pub previous_status: ScanStatus,
    /// When the scan reached `status` (the original moment on a repeated move).
    pub at: OffsetDateTime,
}

/// Why a presented key does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("API key is missing: send Authorization: Bearer <key> or X-API-Key: <key>")]
    Missing,
    #[error("API key is invalid")]
    Invalid,
    #[error(transparent)]
    Rejected(#[from] KeyRejected),
}

/// Why a request was refused by the rules, or could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("API key has no access to account group {0}")]
    GroupForbidden(AccountGroupId),
    #[error("scan not found")]
    ScanNotFound,
    #[error("scan is {current} and cannot be cancelled")]
    NotCancellable { current: ScanStatus },
    #[error("scan is {current}; it cannot move to {requested}")]
    InvalidTransition {
        current: ScanStatus,
        requested: ScanStatus,
    },
    /// The idempotency key started a scan of another account group within the window.
    #[error("the Idempotency-Key was used for another account group")]
    IdempotencyKeyReused,
    /// A resume cursor that is no place in this audit trail (a malformed one is refused before
    /// this): from before a restore of the database, or made up. Resuming from it could skip
    /// changes, as from an expired one.
    #[error("the cursor is no place in this database's change history")]
    ForeignCursor,
    /// A resume cursor from before changes of its group that the retention sweep has deleted:
    /// resuming from it would skip them.
    #[error("changes after the cursor are no longer kept")]
    ExpiredCursor,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of scans, newest first, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub scans: Vec<Scan>,
    pub next: Option<ScanCursor>,
}

/// The scan operations, each checking the caller's rights before touching the store.
///
/// Cloned into every request (axum state), so a clone is one reference count, not one per part.
#[derive(Clone)]
pub struct ScanService(Arc<Parts>);

struct Parts {
    store: Store,
    keys: Arc<KeyCache>,
    /// Set by [`ScanService::with_feed`], as the server does; the one-shot commands follow nothing.
    changes: Option<ChangeHub>,
}

impl ScanService {
    /// A service with no key cache (every authentication reads the store) and no change feed.
    pub fn new(store: Store) -> Self {
        Self::with_key_cache(store, Duration::ZERO)
    }

    /// A service that keeps authenticated keys for `ttl` (zero: not at all); no change feed.
    pub(crate) fn with_key_cache(store: Store, ttl: Duration) -> Self {
        Self(Arc::new(Parts {
            changes: None,
            store,
            keys: Arc::new(KeyCache::new(ttl)),
        }))
    }

    /// Followers of changes read the audit trail at least every `poll`, hint or not, and while
    /// changes keep coming at most every `batch`.
    pub(crate) fn with_feed(self, poll: Duration, batch: Duration) -> Self {
        Self(Arc::new(Parts {
            changes: Some(ChangeHub::new(self.0.store.clone(), poll, batch)),
            store: self.0.store.clone(),
            keys: self.0.keys.clone(),
        }))
    }

    /// The principal a presented API key authenticates as.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, ServiceError> {
        if !looks_like_key(presented) {
            return Err(ServiceError::Unauthenticated(AuthFailure::Invalid));
        }
        let hash = KeyHash::of(presented);
        let key = self
            .0
            .keys
            .get_or_load(hash, || self.0.store.find_key(&hash))
            .await?;
        judge(key.as_ref())
    }

    /// What [`Self::authenticate`] would answer, when it can answer without a store read: the
    /// key is cached, or `presented` cannot be a key. `None`: only a lookup can tell.
    pub async fn authenticate_cached(
        &self,
        presented: &str,
    ) -> Option<Result<Principal, ServiceError>> {
        if !looks_like_key(presented) {
            return Some(Err(ServiceError::Unauthenticated(AuthFailure::Invalid)));
        }
        let key = self.0.keys.get(&KeyHash::of(presented)).await?;
        Some(judge(Some(&key)))
    }

    /// Cancels a queued or running scan of `group`.
    ///
    /// A scan that is already cancelled answers again with its original `cancelled_at`, so a
    /// client retrying after a lost response learns the truth; a scan of another group is
    /// indistinguishable from one that does not exist.
    pub async fn cancel(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scan: &ScanId,
        trace_id: &str,
    ) -> Result<Cancellation, ServiceError> {
        Self::check_access(principal, group)?;
        let actor = actor_of(principal, trace_id, None);
        let outcome = self
            .0
            .store
            .transition(Some(group), scan, ScanStatus::Cancelled, actor)
            .await?;
        Cancellation::of(outcome)
    }

    /// Cancels each of `scans` (distinct ids) of `group` that is queued or running, all in one
    /// commit, and says what became of each, in order. A scan of another group is not found, as
    /// on the single cancel; one scan's outcome never changes another's, and an error means none
    /// committed, short of a database that stopped answering mid-commit (see `store/pipeline.rs`).
    pub async fn cancel_all(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scans: &[ScanId],
        trace_id: &str,
    ) -> Result<Vec<BatchCancellation>, ServiceError> {
        Self::check_access(principal, group)?;
        let actor = actor_of(principal, trace_id, None);
        let outcomes = self
            .0
            .store
            .transition_all(Some(group), scans, ScanStatus::Cancelled, actor)
            .await?;
        scans
            .iter()
            .zip(outcomes)
            .map(|(scan, outcome)| BatchCancellation::of(*scan, outcome))
            .collect()
    }

    /// Starts a queued scan of `group` for a client. With an idempotency key, a retry within the
    /// window answers the first answer again and creates nothing.
    pub async fn create_scan(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        once: Option<&IdempotencyKey>,
        trace_id: &str,
    ) -> Result<Started, ServiceError> {
        Self::check_access(principal, group)?;
        let actor = actor_of(principal, trace_id, None);
        let once = once.map(|key| (principal.key_id, key));
        match self.0.store.create_scan_for(group, actor, once).await? {
            Creation::Created(scan) => Ok(Started {
                scan,
                replayed: false,
            }),
            Creation::Replayed(scan) => Ok(Started {
                scan,
                replayed: true,
            }),
            Creation::KeyUsedForAnotherGroup => Err(ServiceError::IdempotencyKeyReused),
        }
    }

    /// A runner's move of a scan of `group` to `to` (running, completed or failed), by the state
    /// machine, in the same guarded statement as a cancel: exactly one of a completion and a
    /// cancel racing wins, and the loser learns the winner's status. A move is its key's: made
    /// again by that key it answers where the scan is, so a runner retrying after a lost answer
    /// learns the truth; made again by another key it is refused, so a second runner's start of a
    /// scan that another runner claimed tells it to leave the scan. A running scan is finished
    /// (completed or failed) only by the key that started it: see [`Self::check_claim`].
    pub(crate) async fn move_scan(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scan: &ScanId,
        to: ScanStatus,
        trace_id: &str,
        reason: Option<&str>,
    ) -> Result<Moved, ServiceError> {
        Self::check_access(principal, group)?;
        if to.is_final() {
            self.check_claim(principal, group, scan, to).await?;
        }
        let actor = actor_of(principal, trace_id, reason);
        let outcome = self
            .0
            .store
            .transition(Some(group), scan, to, actor)
            .await?;
        if let Transition::Refused { scan: current } = &outcome
            && current.status == to
            && !self.moved_by(principal, current, to).await?
        {
            return Err(ServiceError::InvalidTransition {
                current: to,
                requested: to,
            });
        }
        moved(outcome, to)
    }

    /// A start is a claim: of a running scan, only the key that started it may finish it (422
    /// `currentStatus=running` to any other). A scan that no key started (the command line, or a
    /// scan made running), or whose start retention deleted, any runner may finish. Read before
    /// the write, which needs no claim of its own: a running scan's claim never changes, and a
    /// queued one is refused here, since a start between this read and the write would make the
    /// write finish another runner's claim. The scan and its start are read in one statement:
    /// read apart, a start committing between the two reads showed a running scan that no key
    /// had started, and another runner's finish went through. One statement, so the check takes
    /// one `DB_TIMEOUT_MS` at most (see `http::deadline::longest_writing_request`).
    async fn check_claim(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scan: &ScanId,
        to: ScanStatus,
    ) -> Result<(), ServiceError> {
        let Some(ClaimedScan { scan, started_by }) =
            self.0.store.find_claimed_scan(group, scan).await?
        else {
            // The write answers 404.
            return Ok(());
        };
        let refused = Err(ServiceError::InvalidTransition {
            current: scan.status,
            requested: to,
        });
        match (scan.status, started_by) {
            (ScanStatus::Queued, _) => refused,
            (ScanStatus::Running, Some(key)) if key != principal.key_id => refused,
            // Finished: the write refuses it, or answers its own key's repeat.
            _ => Ok(()),
        }
    }

    /// Whether `principal`'s key made the move that took `scan` to `to`: its latest audit row to
    /// `to` names the key. Read only when a move is repeated; a row that retention deleted names
    /// nobody, so the move is then nobody's to repeat.
    async fn moved_by(
        &self,
        principal: &Principal,
        scan: &Scan,
        to: ScanStatus,
    ) -> Result<bool, ServiceError> {
        let events = self.0.store.scan_events(&scan.id).await?;
        Ok(last_move_to(&events, to) == Some(Some(principal.key_id)))
    }

    /// Every `IDEMPOTENCY_SWEEP_EVERY` (10 minutes), forgets the idempotency keys older than their window,
    /// so their table holds one day of keys at most. Runs while the application serves.
    pub(crate) async fn forget_idempotency_keys_forever(self) {
        // The first sweep after one interval: starting touches no database it need not.
        let first = tokio::time::Instant::now() + IDEMPOTENCY_SWEEP_EVERY;
        let mut ticks = tokio::time::interval_at(first, IDEMPOTENCY_SWEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let forgotten = self.forget_idempotency_keys(IDEMPOTENCY_SWEEP_BATCH).await;
            if forgotten > 0 {
                tracing::info!(
                    idempotency_keys.forgotten = forgotten,
                    "old idempotency keys forgotten"
                );
            }
        }
    }

    /// Forgets idempotency keys older than their window, in batches of `batch` (each a short
    /// write that never holds a cancel back for long), until none is left or the store fails (it
    /// is tried again at the next sweep); how many it forgot.
    pub async fn forget_idempotency_keys(&self, batch: u32) -> u64 {
        let mut forgotten = 0;
        loop {
            match self.0.store.forget_idempotency_keys(batch).await {
                Ok(done) => {
                    forgotten += done;
                    if done < u64::from(batch) {
                        return forgotten;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot forget old idempotency keys; will retry");
                    return forgotten;
                }
            }
        }
    }
}

impl ScanService {
    /// The account-group rule every operation on a group applies first (403). Public for the one
    /// caller that must answer it before a limit of its own: the change stream's per-key cap.
    pub(crate) fn check_access(
        principal: &Principal,
        group: &AccountGroupId,
    ) -> Result<(), ServiceError> {
        match principal.can_access(group) {
            true => Ok(()),
            false => Err(ServiceError::GroupForbidden(*group)),
        }
    }

    /// A scan of `group`, as a client checks it before retrying a cancel.
    pub(crate) async fn get_scan(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scan: &ScanId,
    ) -> Result<Scan, ServiceError> {
        Self::check_access(principal, group)?;
        self.0
            .store
            .find_scan(Some(group), scan)
            .await?
            .ok_or(ServiceError::ScanNotFound)
    }

    /// A page of `group`'s scans, newest first.
    pub async fn list_scans(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        query: &ScanPageQuery,
    ) -> Result<ScanPage, ServiceError> {
        Self::check_access(principal, group)?;
        let mut scans = self.0.store.list_scans(group, query).await?;
        // The store reads one extra row to tell whether another page exists.
        let next = match scans.len() > query.limit as usize {
            true => {
                scans.truncate(query.limit as usize);
                scans.last().map(ScanCursor::after)
            }
            false => None,
        };
        Ok(ScanPage { scans, next })
    }

    /// The audit trail of a scan of `group`, oldest first.
    pub async fn scan_events(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        scan: &ScanId,
    ) -> Result<Vec<ScanEvent>, ServiceError> {
        self.get_scan(principal, group, scan).await?;
        Ok(self.0.store.scan_events(scan).await?)
    }

    /// Follows `group`'s status changes from `start`: from now, or exactly after a cursor this
    /// feed issued (one that is no place in this trail is refused, and so is one from before
    /// changes of the group that are no longer kept: [`Self::check_resume`]). Only a service
    /// built [`Self::with_feed`] follows changes; any other panics here.
    pub(crate) async fn follow_changes(
        &self,
        principal: &Principal,
        group: &AccountGroupId,
        start: Start,
    ) -> Result<Follower, ServiceError> {
        Self::check_access(principal, group)?;
        if let Start::After(cursor) = &start {
            self.check_resume(Some(group), cursor).await?;
        }
        let changes =
            (self.0.changes.as_ref()).expect("a service that follows changes has with_feed");
        Ok(changes.follow(*group, start).await?)
    }

    /// Whether the feed of `group` (every group's, when `None`) may resume after `cursor`: not
    /// when the cursor is no place in this trail (ahead of it, or at a change it never held: the
    /// database was restored from a backup taken before the cursor, whose changes it lacks, or the
    /// cursor was made up), nor when changes of the group (of any group) after it are no longer
    /// kept (resuming would skip them).
    pub async fn check_resume(
        &self,
        group: Option<&AccountGroupId>,
        cursor: &FeedCursor,
    ) -> Result<(), ServiceError> {
        // A cursor of the cluster a restored database came from: its changes are not this
        // trail's to resume, though it may lie past the head.
        let frontier = cursor.frontier();
        if frontier.xid > 0
            && let Some(rebased) = self.0.store.rebased_through().await?
            && frontier.id <= rebased
        {
            return Err(ServiceError::ForeignCursor);
        }
        // The mark before the head: a transaction still running under the head's snapshot was
        // running when the mark was read, so no sweep behind the mark saw its rows.
        let mark = self.0.store.trimmed_mark(group).await?;
        let head = self.0.store.feed_head().await?;
        // A cursor's frontier is always a row the trail held when it was handed out (or the
        // start of an empty trail): anything else comes from another history. Refused as
        // expired, not as malformed: the client's remedy is the same as after retention
        // (re-read the state, follow from now), and a 400 would tell it to stop for good.
        if frontier > head.frontier()
            || (frontier != FeedPosition::default() && !self.0.store.feed_knows(frontier).await?)
        {
            return Err(ServiceError::ForeignCursor);
        }
        if let Some(mark) = mark
            && cursor.reaches_below(mark, head.horizon())
        {
            return Err(ServiceError::ExpiredCursor);
        }
        Ok(())
    }

    /// An operator's move of a scan (of `group`, when given: another group's is not found) to
    /// `to`, by the state machine, as a runner's is: refused with the current status when the
    /// scan has moved on (a late "completed" never overwrites a cancel), and answered where it
    /// is when it is there already by a move no key made (the command line's own, repeated). A
    /// move a key made is that runner's: repeating it here is refused, as it is to another key
    /// (a runner's claim was answered as this command's own).
    pub async fn advance(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
        to: ScanStatus,
        actor: Actor<'_>,
    ) -> Result<Moved, ServiceError> {
        let outcome = self.0.store.transition(group, scan, to, actor).await?;
        if let Transition::Refused { scan: current } = &outcome
            && current.status == to
        {
            let events = self.0.store.scan_events(&current.id).await?;
            if matches!(last_move_to(&events, to), Some(Some(_))) {
                return Err(ServiceError::InvalidTransition {
                    current: to,
                    requested: to,
                });
            }
        }
        moved(outcome, to)
    }
}

/// An operator's scan operations: no principal and no account group to check, since whoever runs
/// them holds the database itself (the command line, and the demo's seeding).
impl ScanService {
    /// Creates a scan directly in `status`, with its audit row.
    pub(crate) async fn seed_scan(
        &self,
        group: &AccountGroupId,
        status: ScanStatus,
    ) -> Result<Scan, ServiceError> {
        Ok(self.0.store.create_scan(group, status).await?)
    }

    /// A scan by its id (of `group`, when given: another group's is not found).
    pub async fn find_scan(
        &self,
        group: Option<&AccountGroupId>,
        scan: &ScanId,
    ) -> Result<Scan, ServiceError> {
        self.0
            .store
            .find_scan(group, scan)
            .await?
            .ok_or(ServiceError::ScanNotFound)
    }

    /// True when the database holds no API key and no scan (a fresh install).
    pub(crate) async fn is_fresh_install(&self) -> Result<bool, ServiceError> {
        Ok(self.0.store.is_empty().await?)
    }

    /// Sends the notifications of this process's changes that are still queued, for at most
    /// `limit`: a short-lived process calls it before it exits, so listeners hear of its changes
    /// now rather than at their next poll.
    pub async fn flush_hints(&self, limit: Duration) {
        self.0.store.flush_hints(limit).await;
    }
}

/// The key of the latest move to `to` in a scan's trail: `None` when there is none (retention
/// deleted it), `Some(None)` when no key made it.
fn last_move_to(events: &[ScanEvent], to: ScanStatus) -> Option<Option<Uuid>> {
    let made = events.iter().rev().find(|event| event.to == to);
    made.map(|event| event.api_key_id)
}

/// Where a move to `to` left the scan: applied, or already there (idempotent by state); any
/// other status refuses it.
fn moved(outcome: Transition, to: ScanStatus) -> Result<Moved, ServiceError> {
    let (previous, scan) = match outcome {
        Transition::Applied { previous, scan } => (previous, scan),
        Transition::Refused { scan } if scan.status == to => (to, scan),
        Transition::Refused { scan } => {
            return Err(ServiceError::InvalidTransition {
                current: scan.status,
                requested: to,
            });
        }
        Transition::NotFound => return Err(ServiceError::ScanNotFound),
    };
    let at = scan.reached_at(to).ok_or_else(|| {
        StoreError::Corrupt(format!("{to} scan {} has no moment for it", scan.id))
    })?;
    Ok(Moved {
        scan_id: scan.id,
        status: to,
        previous_status: previous,
        at,
    })
}

/// The principal of `key` (`None`: no key has the presented hash). Expiry and revocation are
/// judged now, on a cached copy too; expiry by the store's clock, which stamped it.
fn judge(key: Option<&KeyRead>) -> Result<Principal, ServiceError> {
    let key = key.ok_or(ServiceError::Unauthenticated(AuthFailure::Invalid))?;
    key.key()
        .authenticate(key.store_now())
        .map_err(|rejected| ServiceError::Unauthenticated(AuthFailure::Rejected(rejected)))
}

/// The audit trail's "who and why" for a change a caller asked for.
fn actor_of<'a>(principal: &Principal, trace_id: &'a str, reason: Option<&'a str>) -> Actor<'a> {
    Actor {
        api_key_id: Some(principal.key_id),
        trace_id: Some(trace_id),
        reason,
    }
}

fn cancelled_at(scan: &Scan) -> Result<OffsetDateTime, StoreError> {
    scan.cancelled_at.ok_or_else(|| {
        StoreError::Corrupt(format!("cancelled scan {} has no cancelled_at", scan.id))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sqlx::Connection;

    use super::*;
    use crate::store::StoreOptions;

    /// A SQLite database file of a test's own, removed with its log and index, and the test's
    /// log beside it, when dropped.
    struct DatabaseFile(String);

    impl Drop for DatabaseFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm", ".log"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0));
            }
        }
    }

    impl DatabaseFile {
        fn url(&self) -> String {
            format!("sqlite://{}", self.0)
        }
    }

    /// A service over a migrated SQLite store in a file of its own.
    async fn service_over_a_fresh_file() -> (ScanService, DatabaseFile) {
        let file = std::env::temp_dir().join(format!("signal-scans-sweep-{}.db", Uuid::new_v4()));
        let file = DatabaseFile(file.display().to_string());
        let store = Store::connect(&StoreOptions {
            url: file.url().into(),
            timeout: Duration::from_secs(5),
            max_connections: 2,
            write_batches: 1,
            publish_interval: Duration::ZERO,
        })
        .unwrap();
        store.migrate().await.unwrap();
        (ScanService::new(store), file)
    }

    /// Runs `statement` on the store's file, beside the service.
    async fn execute(url: &str, statement: &str) -> i64 {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        let statement = sqlx::AssertSqlSafe(statement.to_owned());
        sqlx::query_scalar(statement)
            .fetch_optional(&mut connection)
            .await
            .unwrap()
            .unwrap_or_default()
    }

    async fn keys_left(url: &str) -> i64 {
        execute(url, "SELECT count(*) FROM idempotency_keys").await
    }

    /// An idempotency key written long ago, as the sweep finds it.
    async fn old_key(url: &str) {
        let statement = format!(
            "INSERT INTO idempotency_keys VALUES
             ('{}', '{}', 'g', 's', '2000-01-01T00:00:00.000000Z')",
            Uuid::new_v4(),
            Uuid::new_v4()
        );
        execute(url, &statement).await;
    }

    /// Moves the service's clock on by `by` at once (paused only meanwhile: the store's
    /// timeouts run on the same clock, and a paused clock jumps to the next timer while the
    /// runtime waits for SQLite), so that what `by` makes due runs in real time.
    async fn after(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    }

    /// Until `done` holds (10 s at most).
    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done().await {
            assert!(std::time::Instant::now() < deadline, "not {what} in 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The sweep of old idempotency keys runs one interval (10 minutes) after the start, not at
    /// it (starting touches no database it need not), and every interval after; a sweep that
    /// forgot keys says how many, one that forgot none says nothing. The clock is moved on by
    /// hand. Absences are watched for 300 ms of real time (absence needs a window: only a slow
    /// machine could let a mutant slip past one, never fail the code as it is).
    #[tokio::test]
    async fn old_idempotency_keys_are_swept_each_interval_from_the_first_on_and_counted_once() {
        let (service, file) = service_over_a_fresh_file().await;
        let url = file.url();
        old_key(&url).await;
        old_key(&url).await;
        // This thread's events (the test's runtime polls the sweeping task on this thread), and
        // only this module's: the driver's warning of a slow statement is not the sweep's.
        let log = format!("{}.log", file.0);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("signal_scans::service::scans=info")
            .with_ansi(false)
            .with_writer(Mutex::new(std::fs::File::create(&log).unwrap()))
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let lines = || -> Vec<String> {
            let written = std::fs::read_to_string(&log).unwrap();
            written.lines().map(str::to_owned).collect()
        };
        let sweeping = tokio::spawn(service.forget_idempotency_keys_forever());
        // Its first poll reads the start: before the clock is moved.
        tokio::task::yield_now().await;

        after(IDEMPOTENCY_SWEEP_EVERY - Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_the_first = (keys_left(&url).await, lines());
        after(Duration::from_secs(10)).await;
        until("swept", async || keys_left(&url).await == 0).await;
        until("told", async || lines().len() == 1).await;
        // A sweep that forgets nothing (given 300 ms to run, an empty DELETE: were it slower,
        // it would forget the next key itself, and this test could not fail for it), then one
        // that forgets a key: each interval sweeps, and the empty one says nothing before it.
        after(IDEMPOTENCY_SWEEP_EVERY).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        old_key(&url).await;
        after(IDEMPOTENCY_SWEEP_EVERY).await;
        until("swept again", async || keys_left(&url).await == 0).await;
        until("told again", async || lines().len() >= 2).await;
        let told = lines();
        sweeping.abort();

        assert_eq!(before_the_first, (2, vec![]));
        let forgotten =
            |n: u64| format!("old idempotency keys forgotten idempotency_keys.forgotten={n}");
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told[0].contains(&forgotten(2)), "{told:?}");
        assert!(told[1].contains(&forgotten(1)), "{told:?}");
    }
}
