//! Giving the heap back to the system after a crowd of sockets has left, or
//! has arrived.
//!
//! glibc's malloc keeps freed memory inside its heap for reuse and returns
//! only a free stretch at the very top, so a worker that held 100,000
//! sockets kept its peak RSS after all of them had gone (bench/README.md,
//! "Allocator": 888 MiB with nothing connected). The same holds while a
//! crowd arrives: every handshake in flight uses kilobytes in passing (the
//! request, the session lookup, the replies), freed once it completes but
//! left as holes between the sockets that stayed. `malloc_trim(0)` hands
//! every wholly free page back (`MADV_DONTNEED`) wherever it lies; the
//! worker calls it when its connections have fallen well below the
//! high-water mark since the last trim, or have grown well above the count
//! at the last trim and stopped growing; never on a busy path and at most
//! once per check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Worker;

/// How often the worker looks at its connection count.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Fewer connections than this since the peak (or since the last trim) are
/// not worth a trim: the memory of a few hundred sockets, or of their
/// handshakes, is reused by the next arrivals anyway.
pub const MIN_DROP: usize = 1_000;

/// When a trim pays: the connection count's high-water mark since the last
/// one, the count at the last one, and the count at the previous check.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
    base: usize,
    last: usize,
}

impl TrimPolicy {
    /// Takes a connection count; true when the heap should be trimmed now:
    /// the count fell to 3/4 of the peak or below, by at least
    /// [`MIN_DROP`], or it is at least [`MIN_DROP`] above the count at the
    /// last trim and did not grow since the previous check (the arrivals'
    /// handshakes are over). Peak and base then start again from `open`.
    pub fn observe(&mut self, open: usize) -> bool {
        let grew = open > self.last;
        self.last = open;
        self.peak = self.peak.max(open);
        let left = self.peak - open >= MIN_DROP && open * 4 <= self.peak * 3;
        let arrived = !grew && open >= self.base + MIN_DROP;
        if left || arrived {
            self.peak = open;
            self.base = open;
        }
        left || arrived
    }
}

/// Returns the heap's free pages to the system; true if any were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists under
        // the arena locks it takes itself, and advises the kernel about pages
        // no live allocation uses; it is callable at any time from any thread.
        unsafe { nix::libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Checks every [`CHECK_EVERY`] until the worker drains.
pub async fn run(worker: Arc<Worker>) {
    let mut policy = TrimPolicy::default();
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = worker.shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let open = worker.open_connections.load(Ordering::Relaxed);
                if policy.observe(open) {
                    let started = std::time::Instant::now();
                    let returned = trim();
                    tracing::debug!(open, returned, took = ?started.elapsed(), "heap trimmed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_quarter_of_the_peak_has_left() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(0));
        assert!(!policy.observe(10_000));
        // The crowd settled: its handshakes' memory goes back.
        assert!(policy.observe(10_000));
        // Fewer than a quarter gone: keep the memory for the next arrivals.
        assert!(!policy.observe(8_000));
        assert!(policy.observe(7_500));
        // The peak restarts from there: the same count again is no reason.
        assert!(!policy.observe(7_500));
        assert!(!policy.observe(6_000));
        assert!(policy.observe(5_000));
    }

    #[test]
    fn trims_once_a_crowd_has_arrived_and_stopped_growing() {
        let mut policy = TrimPolicy::default();
        // Still growing: the handshakes' memory is in use.
        assert!(!policy.observe(3_000));
        assert!(!policy.observe(20_000));
        assert!(!policy.observe(50_000));
        // Settled (or a few left): now.
        assert!(policy.observe(49_990));
        // Nothing new since: no reason.
        assert!(!policy.observe(49_990));
        assert!(!policy.observe(50_500));
        assert!(!policy.observe(50_500));
        // Churn that keeps the count flat never trims.
        for open in [50_400, 50_900, 50_300, 50_800, 50_200] {
            assert!(!policy.observe(open));
        }
    }

    #[test]
    fn a_small_crowd_arriving_or_leaving_is_not_worth_a_trim() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(800));
        assert!(!policy.observe(800));
        assert!(!policy.observe(0));
        assert!(!policy.observe(3_000));
        assert!(policy.observe(0));
    }
}
