//! The sockhive master and command line.
//!
//! Layout:
//! - [`cli`]: the `sockhive` commands and flags.
//! - [`listeners`]: binding the public port before any worker exists.
//! - [`spawn`]: fork-then-exec of a worker process.
//! - [`cpu_scheduling`]: the kernel scheduling policy master and workers run under.
//! - [`supervisor`]: the workers' lifecycle (start, respawn, rolling restart, drain) and request fan-out.
//! - [`cluster`]: cluster-wide commands over every worker of every node.
//! - [`admin`]: the admin port (health, readiness, metrics, cluster API).
//! - [`admin_client`]: the CLI's side of the admin API.
//! - [`console`]: the admin console page served at `/console` on the admin port.
//! - [`metrics`]: the master's metrics and the node-wide exposition.

pub mod admin;
pub mod admin_client;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod cpu_scheduling;
pub mod listeners;
pub mod metrics;
pub mod spawn;
pub mod supervisor;
