//! The pinned mode (`--pin`): the server's processes on one core, the
//! generator on another, so the server's own cost is not hidden by the
//! generator's. The fan-out phases and the closed-loop handshake run pinned.
//!
//! Why at run time and with `taskset -a -p`: the same server, holding the
//! same sockets, is measured first shared (every process on every core, as a
//! user deploys it) and then pinned, so both figures come from one start and
//! land in one table. `-a` moves every thread (Node's and tokio's helper
//! threads too), and processes forked later (a restarted worker) inherit it.

use std::process::Command;

/// Where the two sides run while pinned.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pinning {
    /// CPU list for the server's process tree (and the shared redis-server).
    pub server_cpus: String,
    /// CPU list for the generator.
    pub generator_cpus: String,
    /// What the generator was allowed before (restored afterwards).
    pub all_cpus: String,
}

impl Pinning {
    /// Server on the first allowed CPU, generator on the second; `None`
    /// with fewer than two CPUs.
    pub fn plan() -> Option<Pinning> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let all = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
            .trim()
            .to_string();
        let cpus = expand(&all);
        if cpus.len() < 2 {
            return None;
        }
        Some(Pinning {
            server_cpus: cpus[0].to_string(),
            generator_cpus: cpus[1].to_string(),
            all_cpus: all,
        })
    }

    /// Pins `pids` (every thread of each) to the server's CPU and the generator to its own.
    pub fn pin(&self, pids: &[u32]) -> Result<(), String> {
        for &pid in pids {
            set_affinity(pid, &self.server_cpus)?;
        }
        set_affinity(std::process::id(), &self.generator_cpus)
    }

    /// Gives `pids` and the generator every CPU again.
    pub fn unpin(&self, pids: &[u32]) {
        for &pid in pids {
            // A process that exited meanwhile needs no unpinning.
            let _ = set_affinity(pid, &self.all_cpus);
        }
        let _ = set_affinity(std::process::id(), &self.all_cpus);
    }
}

/// Every process of a server's trees (workers included) and `extra` (the
/// shared redis-server): what is moved to the server's CPU, so the session
/// store a cookie login reads shares the server's core, not the generator's.
pub fn server_pids(roots: &[u32], extra: Option<u32>) -> Vec<u32> {
    let mut pids: Vec<u32> = extra.into_iter().collect();
    for &root in roots {
        pids.push(root);
        pids.extend(crate::procstat::descendants(root));
    }
    pids
}

fn set_affinity(pid: u32, cpus: &str) -> Result<(), String> {
    let output = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `0-2,5` → `[0, 1, 2, 5]`.
fn expand(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(expand("0-2,5"), vec![0, 1, 2, 5]);
        assert_eq!(expand("1"), vec![1]);
        assert_eq!(expand(""), Vec::<u32>::new());
    }
}
