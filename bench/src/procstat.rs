//! CPU time and memory of the servers under test, and of the generator itself.
//!
//! A server is a tree of processes (a master and its workers, or two Node
//! instances), so every figure is summed over the tree, read from /proc.
//! The generator reports its own CPU (getrusage) so a reader can check that it
//! cost less per operation than the server it measured.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Clock ticks per second for /proc/<pid>/stat times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Parses the fields after the command name of /proc/<pid>/stat: (ppid, utime+stime ticks).
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may itself contain spaces or ')'.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// VmRSS from /proc/<pid>/status, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every live process with its parent and CPU ticks.
fn all_processes() -> HashMap<u32, (u32, u64)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.insert(pid, stat);
        }
    }
    out
}

/// The roots and all their descendants.
fn tree(roots: &[u32], processes: &HashMap<u32, (u32, u64)>) -> HashSet<u32> {
    let mut members: HashSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| processes.contains_key(p))
        .collect();
    loop {
        let before = members.len();
        for (pid, (ppid, _)) in processes {
            if members.contains(ppid) {
                members.insert(*pid);
            }
        }
        if members.len() == before {
            return members;
        }
    }
}

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeSample {
    /// User + system CPU of the live processes, seconds.
    pub cpu_seconds: f64,
    /// Sum of VmRSS, bytes.
    pub rss_bytes: u64,
    /// Processes counted.
    pub processes: usize,
}

/// Reads CPU and RSS of `roots` and their descendants.
pub fn sample_tree(roots: &[u32]) -> TreeSample {
    let processes = all_processes();
    let members = tree(roots, &processes);
    let ticks: u64 = members
        .iter()
        .filter_map(|p| processes.get(p).map(|(_, t)| *t))
        .sum();
    let rss = members.iter().map(|&p| rss_of(p)).sum();
    TreeSample {
        cpu_seconds: ticks as f64 / ticks_per_second(),
        rss_bytes: rss,
        processes: members.len(),
    }
}

/// Every process below `root` (not `root` itself): a master's workers.
pub fn descendants(root: u32) -> Vec<u32> {
    let processes = all_processes();
    let mut pids: Vec<u32> = tree(&[root], &processes)
        .into_iter()
        .filter(|&p| p != root)
        .collect();
    pids.sort_unstable();
    pids
}

/// VmRSS of one process in bytes, 0 when it is gone.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_rss(&s))
        .unwrap_or(0)
}

/// The open descriptors of `pid`, or 0 when it is gone.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// User + system CPU this process has used so far (all threads).
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let to_duration = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    to_duration(usage.ru_utime) + to_duration(usage.ru_stime)
}

/// Raises the open-file limit to the hard limit: ten thousand sockets need it.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let line = "123 (my (odd) name) S 45 123 123 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(line), Some((45, 10)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmPeak:\t 10 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss(status), Some(2048 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn own_tree_includes_this_process() {
        let me = std::process::id();
        let sample = sample_tree(&[me]);
        assert!(sample.processes >= 1);
        assert!(sample.rss_bytes > 0);
        assert!(own_cpu() > Duration::ZERO || sample.cpu_seconds >= 0.0);
    }

    #[test]
    fn tree_follows_children() {
        let mut processes = HashMap::new();
        processes.insert(1, (0, 5));
        processes.insert(2, (1, 5));
        processes.insert(3, (2, 5));
        processes.insert(4, (9, 5));
        let members = tree(&[1], &processes);
        assert_eq!(members, [1, 2, 3].into_iter().collect());
    }
}
