//! The metrics recorder's memory stays bounded when nobody scrapes `/metrics`: the exporter keeps
//! every histogram sample until upkeep folds it, so without [`upkeep`] on a timer each request's
//! samples stayed in memory until the next scrape (issue 28).
//!
//! A binary of its own: it counts every byte the process holds with a counting allocator, which
//! no other test may disturb, on one thread with Tokio's clock paused (upkeep's timer fires when
//! the test sleeps, however slow the machine).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use signal_scans::http::metrics::{UPKEEP_EVERY, unregistered_recorder, upkeep};

/// The system allocator, counting the bytes currently held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Samples recorded between two of upkeep's folds: each is kept as an `f64` until folded.
const SAMPLES_PER_ROUND: usize = 250_000;
const ROUNDS: usize = 8;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn histogram_samples_are_folded_on_a_timer_without_a_scrape() {
    let recorder = unregistered_recorder();
    tokio::spawn(upkeep(recorder.handle(), UPKEEP_EVERY));
    let histogram = metrics::with_local_recorder(
        &recorder,
        || metrics::histogram!("http_request_duration_seconds", "route" => "/", "method" => "POST"),
    );
    let round = || {
        for i in 0..SAMPLES_PER_ROUND {
            histogram.record(i as f64 * 1e-6);
        }
    };
    // One round first, folded, so the buckets and the sample blocks' first allocations exist.
    round();
    tokio::time::sleep(UPKEEP_EVERY + Duration::from_millis(1)).await;
    let before = HELD.load(Ordering::Relaxed);

    for _ in 0..ROUNDS {
        round();
        tokio::time::sleep(UPKEEP_EVERY).await;
    }

    let grown = HELD.load(Ordering::Relaxed) - before;
    // Unfolded, the rounds would hold ROUNDS × SAMPLES_PER_ROUND × 8 bytes (16 MB); folded, at
    // most about one round's worth of sample blocks waits to be reclaimed (2 MB).
    let unfolded = (ROUNDS * SAMPLES_PER_ROUND * std::mem::size_of::<f64>()) as isize;
    assert!(
        grown < unfolded / 4,
        "the recorder grew by {grown} bytes over {ROUNDS} rounds of {SAMPLES_PER_ROUND} samples \
         ({unfolded} bytes unfolded): samples are not folded without a scrape"
    );
}
