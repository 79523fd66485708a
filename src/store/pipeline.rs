//! Group commit: every status change of a store joins one queue, and a writer commits whatever
//! is waiting in one transaction, then answers each request with its own outcome.
//!
//! Nothing waits for a timer. At low load a batch is one change, committed at once, as before;
//! under load a batch is whatever queued while the previous commit ran, so one commit (one fsync
//! on SQLite, one round trip and one WAL flush on PostgreSQL) carries many changes. Each change
//! of a batch is guarded by its from-status and writes its audit row, in arrival order. Two
//! changes of one scan never share a batch: the later one is passed over, with any later change
//! of that scan, for the next batch, while the changes of other scans queued behind it still
//! join this one (one scan's changes do not hold the others up, up to `QUEUE` passed over). On
//! SQLite that batch commits after the first; on PostgreSQL, where `DB_WRITE_BATCHES` batches may
//! commit side by side, the scan's lock puts them in some order. Either way the second to commit
//! is told the first's outcome, exactly as two concurrent transactions would be.
//!
//! A request waits at most the store's timeout to be taken into a batch, then answers
//! [`StoreError::Unavailable`] (502) and is never committed. Once taken, its batch's statements
//! are bounded by the same timeout (on PostgreSQL it is the server's `statement_timeout` that ends
//! them, awaited a second longer here), and an error there answers every request of that batch,
//! none of which committed. (An error of one change's own is the exception: the batch's requests
//! are then written one by one, each answered its own outcome; see `Batch::commit`.) A COMMIT
//! once sent is awaited to its end on SQLite, so no request is told 502 for a change that
//! committed. On PostgreSQL the commit ends the statement, whose answer is awaited a second past
//! its timeout: a commit slower than that (a stalled disk, a synchronous standby) or a database
//! or network that stops answering leaves the outcome unknown, and a change repeated answers what
//! happened.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::{AccountGroupId, ScanId};
use crate::domain::scan::{Actor, ScanStatus, Transition};

/// The most changes one commit carries: past this a transaction holds its locks (SQLite's one
/// write lock) long enough to delay the next batch more than it saves.
pub(super) const MAX_BATCH: usize = 128;
/// Requests waiting to be taken before a new one waits for room (within its timeout).
const QUEUE: usize = 4096;

/// Changes per commit (a histogram): a batch that did not commit is not counted.
pub const BATCH_SIZE: &str = "scan_write_batch_size";
/// Seconds a request waited in the queue until a writer took it, or until it gave up (timed out,
/// or its client gone) without being taken (a histogram).
pub const QUEUE_WAIT: &str = "scan_write_queue_wait_seconds";
/// Cancels whose outcome a commit settled, by the status each found (`cancelled`: a repeat): a
/// counter, counted where the commit is, so a cancel whose client left before its answer counts.
pub const CANCELS: &str = "scan_cancels_total";

/// One status change as a request asks for it: owned, since it waits in the queue.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// When given, it must own the scan; a scan of another group is not found.
    pub group: Option<AccountGroupId>,
    pub scan: ScanId,
    pub to: ScanStatus,
    pub api_key_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub reason: Option<String>,
}

impl ChangeRequest {
    pub fn new(
        group: Option<&AccountGroupId>,
        scan: &ScanId,
        to: ScanStatus,
        actor: Actor,
    ) -> Self {
        Self {
            group: group.copied(),
            scan: *scan,
            to,
            api_key_id: actor.api_key_id,
            trace_id: actor.trace_id.map(str::to_owned),
            reason: actor.reason.map(str::to_owned),
        }
    }
}

/// Commits a batch of changes in one transaction: each change's outcome, in order, or an error
/// for the whole batch, of which nothing committed.
pub(super) trait BatchWriter: Clone + Send + Sync + 'static {
    fn write(
        &self,
        changes: &[ChangeRequest],
    ) -> impl Future<Output = Result<Vec<Transition>, StoreError>> + Send;
}

/// The sending side, cheap to clone. The writer task ends when every clone is dropped.
#[derive(Clone)]
pub(super) struct Pipeline {
    queue: mpsc::Sender<Entry>,
    timeout: Duration,
    /// Requests queued or committing, not yet answered.
    waiting: Arc<AtomicUsize>,
}

/// A request's changes, committed together (a batch cancel is one entry).
struct Entry {
    changes: Vec<ChangeRequest>,
    queued_at: Instant,
    state: Arc<AtomicU8>,
    answer: oneshot::Sender<Result<Vec<Transition>, StoreError>>,
}

/// An entry's state, moved once from `QUEUED` by whoever comes first: the writer taking it, or
/// its request giving up (timed out or dropped). A withdrawn entry is never committed.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Pipeline {
    /// Starts the writer task on the current Tokio runtime, with at most `in_flight` batches
    /// committing at once (1 for SQLite's single writer, `DB_WRITE_BATCHES` on PostgreSQL).
    pub(super) fn start(writer: impl BatchWriter, in_flight: usize, timeout: Duration) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, in_flight, timeout, entries));
        Self {
            queue,
            timeout,
            waiting: Arc::default(),
        }
    }

    /// Requests queued or committing, not yet answered: tests see contenders waiting by it.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Commits `changes` together, in one transaction shared with whatever else is waiting, and
    /// answers their outcomes in order.
    pub(super) async fn submit(
        &self,
        changes: Vec<ChangeRequest>,
    ) -> Result<Vec<Transition>, StoreError> {
        let queued_at = Instant::now();
        let deadline = queued_at + self.timeout;
        let state = Arc::new(AtomicU8::new(QUEUED));
        // Dropped with this future (the request's own deadline, a client gone): the writer skips
        // an entry nobody waits for, unless it took it already.
        let withdraw = Withdraw {
            state: &state,
            queued_at,
        };
        let (answer, answered) = oneshot::channel();
        let entry = Entry {
            changes,
            queued_at,
            state: Arc::clone(&state),
            answer,
        };
        let not_taken = || {
            StoreError::Unavailable(format!(
                "no writer took the change within {} ms",
                self.timeout.as_millis()
            ))
        };
        match tokio::time::timeout_at(deadline, self.queue.send(entry)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Unavailable("the writer stopped".into())),
            Err(_) => return Err(not_taken()),
        }
        // Counted once queued, not before: a test that lines requests up behind a batch by this
        // count must not go on while one is still on its way into the channel.
        let _waiting = Counted::new(&self.waiting);
        tokio::pin!(answered);
        tokio::select! {
            answer = &mut answered => return flatten(answer),
            () = tokio::time::sleep_until(deadline) => {}
        }
        if withdraw.now() {
            return Err(not_taken());
        }
        // Taken: its write is bounded by the store (never a COMMIT sent), and its outcome is the truth.
        flatten(answered.await)
    }
}

fn flatten(
    answer: Result<Result<Vec<Transition>, StoreError>, oneshot::error::RecvError>,
) -> Result<Vec<Transition>, StoreError> {
    answer.unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into())))
}

/// Withdraws a request's entry unless the writer took it first.
struct Withdraw<'a> {
    state: &'a AtomicU8,
    queued_at: Instant,
}

impl Withdraw<'_> {
    /// Whether this call withdrew the entry (false: the writer took it, or it was withdrawn
    /// before). A withdrawn entry's wait is in [`QUEUE_WAIT`] as a taken one's is: the requests
    /// that waited longest are the ones that gave up.
    fn now(&self) -> bool {
        let withdrawn = self
            .state
            .compare_exchange(QUEUED, WITHDRAWN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if withdrawn {
            metrics::histogram!(QUEUE_WAIT).record(self.queued_at.elapsed().as_secs_f64());
        }
        withdrawn
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.now();
    }
}

/// One request counted in [`Pipeline::waiting`] while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer: as soon as a batch may start, takes everything waiting and commits it.
async fn run(
    writer: impl BatchWriter,
    in_flight: usize,
    timeout: Duration,
    mut entries: mpsc::Receiver<Entry>,
) {
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    // Entries that did not fit the last batch, in arrival order: they are offered first.
    let mut passed_over: VecDeque<Entry> = VecDeque::new();
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the writer's semaphore is never closed");
        if passed_over.is_empty() {
            match entries.recv().await {
                Some(entry) => passed_over.push_back(entry),
                None => return, // every sender is gone
            }
        }
        let mut batch = Batch::default();
        for entry in std::mem::take(&mut passed_over) {
            batch.offer(entry, &mut passed_over);
        }
        // An entry that cannot join (its scan is in the batch) is passed over, not waited
        // behind: the changes queued after it, of other scans, still join. At most `QUEUE` wait
        // passed over (besides the channel's `QUEUE`); past that the channel is left alone until
        // they drain, and a flood of one scan's changes holds the others up again, as each
        // request's own timeout bounds.
        while batch.len() < MAX_BATCH && passed_over.len() < QUEUE {
            let Ok(entry) = entries.try_recv() else {
                break;
            };
            batch.offer(entry, &mut passed_over);
        }
        if batch.entries.is_empty() {
            continue;
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            batch.commit(&writer, timeout).await;
            drop(slot);
        });
    }
}

#[derive(Default)]
struct Batch {
    /// Each taken entry, with how many of `changes` are its own.
    entries: Vec<(Entry, usize)>,
    changes: Vec<ChangeRequest>,
    scans: HashSet<ScanId>,
    /// The scans of the entries passed over: a later change of one of them is passed over too,
    /// so that one scan's changes keep their arrival order.
    passed_over: HashSet<ScanId>,
}

impl Batch {
    fn len(&self) -> usize {
        self.changes.len()
    }

    /// Takes `entry`, or passes it over (onto `passed_over`, for a later batch) when it shares a
    /// scan with the batch or with an entry passed over before it (a batch's statements change
    /// each scan once), or does not fit. The first entry is always taken: one larger than a
    /// batch leads one of its own.
    fn offer(&mut self, entry: Entry, passed_over: &mut VecDeque<Entry>) {
        // One whose request gave up is dropped now (by `take`), not passed over: passed over, it
        // would hold back the later changes of its scans for nothing.
        if entry.state.load(Ordering::SeqCst) != QUEUED || entry.answer.is_closed() {
            return self.take(entry);
        }
        let fits = self.changes.is_empty() || self.len() + entry.changes.len() <= MAX_BATCH;
        let free = entry
            .changes
            .iter()
            .all(|c| !self.scans.contains(&c.scan) && !self.passed_over.contains(&c.scan));
        if fits && free {
            self.take(entry);
        } else {
            self.passed_over
                .extend(entry.changes.iter().map(|c| c.scan));
            passed_over.push_back(entry);
        }
    }

    /// Takes `entry` unless its request gave up first.
    fn take(&mut self, mut entry: Entry) {
        let taken = entry
            .state
            .compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if !taken {
            return; // withdrawn: its request counted its wait
        }
        // Counted here when taken, its request gone or not: a request dropped while the writer
        // takes it finds its entry taken, and counts nothing.
        metrics::histogram!(QUEUE_WAIT).record(entry.queued_at.elapsed().as_secs_f64());
        if entry.answer.is_closed() {
            return;
        }
        self.scans.extend(entry.changes.iter().map(|c| c.scan));
        let count = entry.changes.len();
        self.changes.append(&mut entry.changes);
        self.entries.push((entry, count));
    }

    /// Commits every change, then answers each entry with its own outcomes. When the database
    /// refused the batch for a reason of one change's own (a constraint, a trigger), nothing of
    /// it committed, and each entry still waited for is committed again on its own, so that one
    /// change's error never fails the others. Any other error answers every entry: the database
    /// away (nothing committed), or an answer it could not be read from (it may have committed,
    /// so writing it again could report a change twice).
    ///
    /// The writes one by one start within `timeout` of the batch's failure, however many entries
    /// wait: an entry whose turn comes later is answered [`StoreError::Unavailable`] unwritten.
    /// So a taken request is answered within three writes' bounds (its batch, the writes before
    /// its own, its own), not one more for each entry ahead of it. A write that started is never
    /// cut short here: its statement would run on in the database and might commit after its
    /// request was told it did not.
    async fn commit(self, writer: &impl BatchWriter, timeout: Duration) {
        let error = match written(writer, &self.changes).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (entry, count) in self.entries {
                    let own: Vec<Transition> = outcomes.by_ref().take(count).collect();
                    let _ = entry.answer.send(Ok(own));
                }
                return;
            }
            Err(error) => error,
        };
        if !matches!(error, StoreError::Internal(_)) || self.entries.len() == 1 {
            return answer_all(self.entries, &error);
        }
        let mut changes = self.changes.as_slice();
        let start_by = Instant::now() + timeout;
        let mut away = None;
        for (entry, count) in self.entries {
            let (own, rest) = changes.split_at(count);
            changes = rest;
            if entry.answer.is_closed() {
                continue; // its request is gone: never written
            }
            // Once the database is away, or the time to start a write is spent, the rest are
            // answered at once: each would otherwise wait out the timeout in turn.
            if away.is_none() && Instant::now() >= start_by {
                away = Some(StoreError::Unavailable(format!(
                    "the batch's changes written one by one did not reach this one within {} ms",
                    timeout.as_millis()
                )));
            }
            let outcome = match &away {
                Some(error) => Err(StoreError::clone(error)),
                None => written(writer, own).await,
            };
            if let Err(error @ StoreError::Unavailable(_)) = &outcome {
                away = Some(error.clone());
            }
            let _ = entry.answer.send(outcome);
        }
    }
}

/// `writer`'s outcomes for `changes`, one per change, committed together, and counted.
async fn written(
    writer: &impl BatchWriter,
    changes: &[ChangeRequest],
) -> Result<Vec<Transition>, StoreError> {
    let outcomes = writer.write(changes).await?;
    if outcomes.len() != changes.len() {
        // Corrupt, not Internal: the batch committed, and must not be written again one by one.
        return Err(StoreError::Corrupt(format!(
            "{} outcomes for a batch of {} changes",
            outcomes.len(),
            changes.len()
        )));
    }
    count_commit(changes, &outcomes);
    Ok(outcomes)
}

/// Tells `/metrics` what one commit carried: its size, and its cancels by the status each found.
fn count_commit(changes: &[ChangeRequest], outcomes: &[Transition]) {
    metrics::histogram!(BATCH_SIZE).record(changes.len() as f64);
    let (mut queued, mut running, mut repeated) = (0, 0, 0);
    for (change, outcome) in changes.iter().zip(outcomes) {
        if change.to != ScanStatus::Cancelled {
            continue;
        }
        match outcome {
            Transition::Applied {
                previous: ScanStatus::Queued,
                ..
            } => queued += 1,
            Transition::Applied {
                previous: ScanStatus::Running,
                ..
            } => running += 1,
            Transition::Refused { scan } if scan.status == ScanStatus::Cancelled => repeated += 1,
            _ => {}
        }
    }
    for (found, count) in [
        (ScanStatus::Queued, queued),
        (ScanStatus::Running, running),
        (ScanStatus::Cancelled, repeated),
    ] {
        if count > 0 {
            metrics::counter!(CANCELS, "previous_status" => found.as_str()).increment(count);
        }
    }
}

fn answer_all(entries: Vec<(Entry, usize)>, error: &StoreError) {
    for (entry, _) in entries {
        let _ = entry.answer.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer that records the scans of each batch it is given, and answers each change
    /// `NotFound`, or the whole batch the first of `refusals` while any is left (taken as the
    /// write starts); every write first waits for one of `permits`.
    #[derive(Clone)]
    struct Recording {
        batches: Arc<Mutex<Vec<Vec<ScanId>>>>,
        permits: Arc<Semaphore>,
        refusals: Arc<Mutex<VecDeque<StoreError>>>,
    }

    impl Recording {
        fn holding_each_write() -> Self {
            Self {
                batches: Arc::default(),
                permits: Arc::new(Semaphore::new(0)),
                refusals: Arc::default(),
            }
        }
    }

    impl BatchWriter for Recording {
        async fn write(&self, changes: &[ChangeRequest]) -> Result<Vec<Transition>, StoreError> {
            let scans = changes.iter().map(|c| c.scan).collect();
            self.batches.lock().unwrap().push(scans);
            let refusal = self.refusals.lock().unwrap().pop_front();
            self.permits.acquire().await.unwrap().forget();
            match refusal {
                Some(error) => Err(error),
                None => Ok(changes.iter().map(|_| Transition::NotFound).collect()),
            }
        }
    }

    /// Submits a cancel of each of `scans`, as one request, in a task of its own.
    fn submit(
        pipeline: &Pipeline,
        scans: &[ScanId],
    ) -> tokio::task::JoinHandle<Result<Vec<Transition>, StoreError>> {
        let changes = scans
            .iter()
            .map(|scan| ChangeRequest::new(None, scan, ScanStatus::Cancelled, Actor::default()))
            .collect();
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.submit(changes).await })
    }

    /// Waits for `condition`, 10 s at most: a regression fails here rather than hanging until
    /// the harness gives up.
    async fn until(condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(
                std::time::Instant::now() < deadline,
                "not reached within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A writer holding each write, and its pipeline (one batch at a time) with a first batch in
    /// progress, a cancel of `z` (returned with its request): what is submitted next queues.
    async fn behind_a_batch_in_progress() -> (
        Recording,
        Pipeline,
        ScanId,
        tokio::task::JoinHandle<Result<Vec<Transition>, StoreError>>,
    ) {
        let writer = Recording::holding_each_write();
        let pipeline = Pipeline::start(writer.clone(), 1, Duration::from_secs(30));
        let z = ScanId::generate();
        let first = submit(&pipeline, &[z]);
        until(|| !writer.batches.lock().unwrap().is_empty()).await;
        (writer, pipeline, z, first)
    }

    /// Behind a batch in progress, requests queue as S, then S and X (a batch cancel), then X, then
    /// Y. The next batch takes S and Y: the second request is passed over (its S is in the batch),
    /// and so is the third (its X is passed over), but Y is not held up behind them; the passed
    /// over follow in their order.
    #[tokio::test]
    async fn a_change_whose_scan_is_taken_is_passed_over_and_others_still_join() {
        let writer = Recording::holding_each_write();
        let pipeline = Pipeline::start(writer.clone(), 1, Duration::from_secs(30));
        let [z, s, x, y] = [(); 4].map(|()| ScanId::generate());
        let mut answers = Vec::new();
        for scans in [vec![z], vec![s], vec![s, x], vec![x], vec![y]] {
            answers.push(submit(&pipeline, &scans));
            let queued = answers.len();
            until(|| pipeline.waiting() == queued).await;
            // The first is taken alone before the others queue.
            until(|| !writer.batches.lock().unwrap().is_empty()).await;
        }
        writer.permits.add_permits(100);
        for answer in answers {
            answer.await.unwrap().unwrap();
        }

        let batches = writer.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![z], vec![s, y], vec![s, x], vec![x]]);
    }

    /// A request that gave up while queued holds nothing back: behind a batch in progress, S, then
    /// S and X (a batch cancel whose request is then dropped), then X. The next batch takes S and
    /// X: the dropped request is not passed over, so its X does not hold the later X back.
    #[tokio::test]
    async fn a_request_that_gave_up_holds_back_no_later_change() {
        let (writer, pipeline, z, first) = behind_a_batch_in_progress().await;
        let [s, x] = [(); 2].map(|()| ScanId::generate());
        let kept = submit(&pipeline, &[s]);
        until(|| pipeline.waiting() == 2).await;
        let gone = submit(&pipeline, &[s, x]);
        until(|| pipeline.waiting() == 3).await;
        gone.abort();
        until(|| pipeline.waiting() == 2).await;
        let later = submit(&pipeline, &[x]);
        until(|| pipeline.waiting() == 3).await;
        writer.permits.add_permits(100);
        for answer in [first, kept, later] {
            answer.await.unwrap().unwrap();
        }

        let batches = writer.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![z], vec![s, x]]);
    }

    /// A batch refused for a reason not of one change's own (the database away: nothing
    /// committed; or an answer that could not be read: it may have committed) answers that error
    /// to every request of it, and nothing of it is written again one by one.
    #[tokio::test]
    async fn a_batch_refused_for_no_changes_own_error_is_answered_whole_and_not_written_again() {
        for refusal in [
            StoreError::Unavailable("away".into()),
            StoreError::Corrupt("unreadable".into()),
        ] {
            let (writer, pipeline, z, first) = behind_a_batch_in_progress().await;
            let [a, b] = [(); 2].map(|()| ScanId::generate());
            writer.refusals.lock().unwrap().push_back(refusal.clone());
            let mut answers = Vec::new();
            for scan in [a, b] {
                answers.push(submit(&pipeline, &[scan]));
                let queued = 1 + answers.len();
                until(|| pipeline.waiting() == queued).await;
            }
            writer.permits.add_permits(100);
            first.await.unwrap().unwrap();
            for answer in answers {
                let answer = answer.await.unwrap();
                assert_eq!(
                    std::mem::discriminant(&answer.unwrap_err()),
                    std::mem::discriminant(&refusal),
                    "{refusal:?}"
                );
            }

            let batches = writer.batches.lock().unwrap().clone();
            assert_eq!(batches, vec![vec![z], vec![a, b]], "{refusal:?}");
        }
    }

    /// Past `QUEUE` changes passed over, the writer reads no more of the channel until they
    /// drain: behind a batch in progress, `QUEUE` cancels of S fill the channel; the next batch
    /// takes one and passes the others over. Then two more of S and one of Y queue: the batch
    /// after takes the next S, and with the second of the two more there are `QUEUE` passed
    /// over, so Y waits in the channel for the batch after that.
    #[tokio::test]
    async fn past_queue_changes_passed_over_the_writer_leaves_the_channel_alone() {
        let writer = Recording::holding_each_write();
        let pipeline = Pipeline::start(writer.clone(), 1, Duration::from_secs(300));
        let [z, s, y] = [(); 3].map(|()| ScanId::generate());
        let batches = || writer.batches.lock().unwrap().len();
        let mut answers = vec![submit(&pipeline, &[z])];
        until(|| batches() == 1).await;
        for _ in 0..QUEUE {
            answers.push(submit(&pipeline, &[s]));
        }
        until(|| pipeline.waiting() == 1 + QUEUE).await;
        writer.permits.add_permits(1);
        until(|| batches() == 2).await;
        for scans in [[s], [s], [y]] {
            answers.push(submit(&pipeline, &scans));
            let queued = answers.len() - 1; // z is answered
            until(|| pipeline.waiting() == queued).await;
        }
        writer.permits.add_permits(2);
        until(|| batches() == 4).await;

        let batches = writer.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![z], vec![s], vec![s], vec![s, y]]);
    }

    /// A request waiting for room in a full channel is not counted as waiting until its change is
    /// in the channel: tests count requests to know they will share the next batch.
    #[tokio::test]
    async fn a_request_counts_as_waiting_once_its_change_is_queued() {
        let (writer, pipeline, _z, first) = behind_a_batch_in_progress().await;
        let s = ScanId::generate();
        let mut answers: Vec<_> = (0..QUEUE).map(|_| submit(&pipeline, &[s])).collect();
        until(|| pipeline.waiting() == 1 + QUEUE).await;

        answers.push(submit(&pipeline, &[ScanId::generate()]));
        // This test's runtime has one thread: each yield lets the new request run until it waits
        // (for room in the channel). Counted before its send, it made 2 + QUEUE here.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pipeline.waiting(), 1 + QUEUE, "the channel is full");

        writer.permits.add_permits(usize::MAX >> 4);
        first.await.unwrap().unwrap();
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        assert_eq!(pipeline.waiting(), 0);
    }

    /// A request whose client is gone while it waits in the queue counts its wait then, in
    /// [`QUEUE_WAIT`], not when the writer reaches its entry: while a write is stuck, the waits of
    /// the requests it holds up that gave up show. The writer then skips its entry, counting
    /// nothing more.
    #[tokio::test]
    async fn a_request_dropped_in_the_queue_counts_its_wait_as_it_leaves() {
        let recorder = crate::http::metrics::unregistered_recorder();
        // This test's runtime runs every task on this thread: the writer's too.
        let _local = metrics::set_default_local_recorder(&recorder);
        let waits = || {
            let text = recorder.handle().render();
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{QUEUE_WAIT}_count ")))
                .map_or(0, |count| count.trim().parse::<u64>().unwrap())
        };
        let (writer, pipeline, z, first) = behind_a_batch_in_progress().await;
        let [s, x] = [(); 2].map(|()| ScanId::generate());
        let gone = submit(&pipeline, &[s]);
        until(|| pipeline.waiting() == 2).await;
        assert_eq!(waits(), 1, "the first, taken");

        gone.abort();
        until(|| pipeline.waiting() == 1).await;
        assert_eq!(waits(), 2, "the one gone, as it left");
        writer.permits.add_permits(100);
        first.await.unwrap().unwrap();
        submit(&pipeline, &[x]).await.unwrap().unwrap();

        assert_eq!(waits(), 3, "the one gone is not counted again");
        let batches = writer.batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![z], vec![x]]);
    }
}
