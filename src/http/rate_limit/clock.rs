//! The clock the in-process limits read. In the service it is the real monotonic clock; a test
//! may stop it and move it by hand, so that "a burst inside one second" and "a refill after
//! `Retry-After`" do not depend on how fast a loaded machine sends requests.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;

/// The real clock until [`LimiterClock::stop`]; from then on, the moment it was stopped plus
/// whatever [`LimiterClock::advance`] added. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct LimiterClock {
    real: DefaultClock,
    stopped: Arc<Stopped>,
}

#[derive(Debug, Default)]
struct Stopped {
    at: OnceLock<<DefaultClock as Clock>::Instant>,
    advanced_nanos: AtomicU64,
}

impl LimiterClock {
    /// Stops the clock at the current moment (a no-op when already stopped).
    pub fn stop(&self) {
        let _ = self.stopped.at.get_or_init(|| self.real.now());
    }

    /// Stops the clock if it runs, then moves it forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.stop();
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.stopped
            .advanced_nanos
            .fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for LimiterClock {
    type Instant = <DefaultClock as Clock>::Instant;

    /// One atomic load on the service's path: the clock is never stopped there.
    fn now(&self) -> Self::Instant {
        match self.stopped.at.get() {
            None => self.real.now(),
            Some(at) => *at + Nanos::from(self.stopped.advanced_nanos.load(Ordering::SeqCst)),
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::Reference;

    use super::*;

    #[test]
    fn a_stopped_clock_moves_only_when_advanced() {
        let clock = LimiterClock::default();
        clock.stop();
        let stopped = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), stopped);
        clock.clone().advance(Duration::from_secs(2));
        assert_eq!(
            clock.now().duration_since(stopped),
            Nanos::from(Duration::from_secs(2))
        );
    }
}
