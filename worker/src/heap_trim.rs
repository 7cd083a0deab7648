//! Giving the heap back to the system after a crowd of sockets has left.
//!
//! glibc's malloc keeps freed memory inside its heap for reuse and returns
//! only a free stretch at the very top, so a worker that held 100,000
//! sockets kept its peak RSS after all of them had gone (bench/README.md,
//! "Allocator": 888 MiB with nothing connected). `malloc_trim(0)` hands every
//! wholly free page back (`MADV_DONTNEED`) wherever it lies; the worker calls
//! it when its connections have fallen well below the high-water mark since
//! the last trim, never on a busy path and at most once per check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Worker;

/// How often the worker looks at its connection count.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Fewer connections than this since the peak are not worth a trim: the
/// memory of a few hundred sockets is reused by the next arrivals anyway.
pub const MIN_DROP: usize = 1_000;

/// When a trim pays: the connection count's high-water mark since the last one.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Takes a connection count; true when the heap should be trimmed now
    /// (the count fell to 3/4 of the peak or below, by at least
    /// [`MIN_DROP`]), and the peak then starts again from `open`.
    pub fn observe(&mut self, open: usize) -> bool {
        if open >= self.peak {
            self.peak = open;
            return false;
        }
        let trim = self.peak - open >= MIN_DROP && open * 4 <= self.peak * 3;
        if trim {
            self.peak = open;
        }
        trim
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
                    let returned = trim();
                    tracing::debug!(open, returned, "heap trimmed after sockets left");
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
        // Fewer than a quarter gone: keep the memory for the next arrivals.
        assert!(!policy.observe(8_000));
        assert!(policy.observe(7_500));
        // The peak restarts from there: the same count again is no reason.
        assert!(!policy.observe(7_500));
        assert!(!policy.observe(6_000));
        assert!(policy.observe(5_000));
    }

    #[test]
    fn a_small_crowd_leaving_is_not_worth_a_trim() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(800));
        assert!(!policy.observe(0));
        assert!(!policy.observe(3_000));
        assert!(policy.observe(0));
    }
}
