//! The kernel scheduling policy of the master and its workers.
//!
//! A channel message crosses three processes on one node: the publisher's
//! worker, the master, and each worker holding subscribers. With Linux's
//! default policy, a process woken by a write preempts the writer when they
//! share a core, so a 50-message burst crossed one message at a time: every
//! worker woke per message, its subscribers each wrote a frame or two, and
//! the burst reached a socket in 2-3 writes instead of one (issue 19; the
//! writes, not the frames, are the cost). `SCHED_BATCH` removes only that
//! wakeup preemption: the processes keep their CPU share, and a wakeup on an
//! idle core still runs at once. It is set once, on the master's main thread
//! before anything else starts: threads and forked workers inherit it.

use sockhive_shared::config::CpuScheduling;

/// Applies `policy` to the calling thread, and so to every thread and worker
/// process started from it later.
pub fn apply(policy: CpuScheduling) -> std::io::Result<()> {
    match policy {
        CpuScheduling::Inherit => Ok(()),
        CpuScheduling::Batch => {
            let param = nix::libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler reads `param` (a valid, initialised
            // struct on this stack frame) during the call and keeps no
            // pointer to it; pid 0 names the calling thread, and SCHED_BATCH
            // with priority 0 needs no privilege.
            let rc = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
    }
}

/// The calling thread's policy as `/proc/<pid>/stat` reports a process's.
pub fn current() -> i32 {
    // SAFETY: no arguments, no memory; pid 0 is the calling thread.
    unsafe { nix::libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run on a thread of its own: the policy is per thread, and the test
    /// harness's other threads must keep theirs.
    #[test]
    fn batch_is_set_on_the_calling_thread_and_inherited_by_its_threads() {
        std::thread::spawn(|| {
            let started_with = current();
            apply(CpuScheduling::Inherit).unwrap();
            assert_eq!(current(), started_with);
            apply(CpuScheduling::Batch).unwrap();
            assert_eq!(current(), nix::libc::SCHED_BATCH);
            let child = std::thread::spawn(current).join().unwrap();
            assert_eq!(child, nix::libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }
}
