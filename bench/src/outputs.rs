//! What every command around a measured run shares (`suite`, `soak`,
//! `scale`, `redis-ceiling`): the generator's one thread, the run's metadata,
//! and the result files.

use std::path::PathBuf;

use serde_json::Value;
use tokio::runtime::Runtime;

/// A single-threaded runtime: the generator must leave the other cores to the
/// server it measures. `None`, with the reason logged under `label`, when it
/// cannot be built.
pub fn generator_runtime(label: &str) -> Option<Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("[{label}] no runtime: {e}");
            None
        }
    }
}

/// When, on how many cores, and which sockhive: the head of a sockhive-only
/// run's JSON (the suite, which also runs the peers, writes more).
pub fn run_meta(stamp: &str, sockhive_version: &str) -> Value {
    serde_json::json!({
        "date": stamp,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "sockhive": sockhive_version,
        "commit": std::env::var("BENCH_SOCKHIVE_COMMIT").unwrap_or_default(),
    })
}

/// Writes each file and logs it under `label`; false at the first that fails.
pub fn write_files(label: &str, files: &[(PathBuf, &str)]) -> bool {
    for (path, text) in files {
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("[{label}] cannot write {}: {e}", path.display());
            return false;
        }
        eprintln!("[{label}] wrote {}", path.display());
    }
    true
}
