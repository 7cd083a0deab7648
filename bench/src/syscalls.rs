//! How many system calls a server's processes make during a phase, counted
//! by `perf stat` on the syscall tracepoints of exactly those processes.
//!
//! Why: CPU time on a shared machine is noisy, but the number of writes a
//! burst costs per delivery is not; it shows directly whether the frames
//! queued for a socket leave in one write or one write each, and how often
//! the server wakes up. Optional: without a usable `perf` the figures are
//! simply absent.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Write-like calls (a socket write from Rust's std is `sendto`).
const WRITES: [&str; 4] = ["sendto", "write", "writev", "sendmsg"];
/// Read-like calls.
const READS: [&str; 3] = ["recvfrom", "read", "readv"];
/// Wake-ups of an event loop.
const WAITS: [&str; 2] = ["epoll_wait", "epoll_pwait"];

/// System calls of a process tree over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Syscalls {
    /// Write-like calls.
    pub writes: u64,
    /// Read-like calls.
    pub reads: u64,
    /// `epoll_wait`s.
    pub waits: u64,
}

/// A running `perf stat`.
pub struct Counting {
    child: Child,
    out: PathBuf,
}

/// Starts counting the system calls of `pids` (every thread of each); `None`
/// when `perf` or its tracepoints are not usable here.
pub fn start(pids: &[u32]) -> Option<Counting> {
    if pids.is_empty() {
        return None;
    }
    let out = std::env::temp_dir().join(format!(
        "sockhive-bench-syscalls-{}-{}.csv",
        std::process::id(),
        pids[0]
    ));
    let events: Vec<String> = WRITES
        .iter()
        .chain(&READS)
        .chain(&WAITS)
        .map(|name| format!("syscalls:sys_enter_{name}"))
        .collect();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = Command::new("perf")
        .args(["stat", "-x", ",", "-o"])
        .arg(&out)
        .args(["-e", &events.join(","), "-p", &pids.join(",")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // perf attaches asynchronously; give it a moment before the phase starts.
    std::thread::sleep(std::time::Duration::from_millis(150));
    Some(Counting { child, out })
}

impl Counting {
    /// Stops counting and reads the totals; `None` if perf failed.
    pub fn stop(mut self) -> Option<Syscalls> {
        // SAFETY: signalling our own child by its pid; SIGINT makes perf
        // stat print its counts and exit.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let status = self.child.wait().ok()?;
        let text = std::fs::read_to_string(&self.out).ok();
        let _ = std::fs::remove_file(&self.out);
        if !status.success() && text.is_none() {
            return None;
        }
        parse(&text?)
    }
}

/// Sums `perf stat -x ,` lines (`count,unit,event,...`) by kind.
fn parse(csv: &str) -> Option<Syscalls> {
    let mut totals = Syscalls::default();
    let mut seen = false;
    for line in csv.lines() {
        let mut fields = line.split(',');
        let (Some(count), Some(_unit), Some(event)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(name) = event.strip_prefix("syscalls:sys_enter_") else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        seen = true;
        if WRITES.contains(&name) {
            totals.writes += count;
        } else if READS.contains(&name) {
            totals.reads += count;
        } else if WAITS.contains(&name) {
            totals.waits += count;
        }
    }
    seen.then_some(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_summed_by_kind() {
        let csv = "# started on Sat\n\n120,,syscalls:sys_enter_sendto,1000,100.00,,\n3,,syscalls:sys_enter_write,1000,100.00,,\n7,,syscalls:sys_enter_recvfrom,1000,100.00,,\n9,,syscalls:sys_enter_epoll_wait,1000,100.00,,\n<not supported>,,syscalls:sys_enter_readv,0,100.00,,\n";
        assert_eq!(
            parse(csv),
            Some(Syscalls {
                writes: 123,
                reads: 7,
                waits: 9
            })
        );
        assert_eq!(parse("# nothing\n"), None);
    }
}
