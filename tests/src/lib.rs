//! Fixtures for sockhive's integration tests: they boot the real binary and
//! talk to it with real clients.
//!
//! Layout:
//! - [`Node`]: a `sockhive serve` on port 0 with its addresses and processes.
//! - [`http`]: one-shot HTTP requests to the public and admin ports.
//! - [`Driver`]: the real npm clients, driven through `tests/js/driver.js`.
//! - [`ws`]: a bare WebSocket client for deliberately bad input.
//! - [`redis`]: real redis-server processes (single and cluster) on free ports.
//! - [`nginx`]: a real nginx balancing over nodes, running the shipped config.
//! - [`tempdir`]: scratch directories for the configs and logs of those processes.
//! - [`app`]: the real express/passport web app that logs users in.
//! - [`traffic`]: steady, recorded publish/subscribe/login traffic for fault tests.
//! - [`fault_proxy`]: a TCP proxy that makes Redis slow or unreachable for one node.
//!
//! Every wait here has a deadline; nothing sleeps where a signal exists.

pub mod app;
pub mod driver;
pub mod fault_proxy;
pub mod http;
pub mod nginx;
pub mod node;
pub mod redis;
pub mod tempdir;
pub mod traffic;
pub mod ws;

pub use driver::Driver;
pub use node::{Node, NodeBuilder};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
