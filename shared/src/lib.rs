//! Code that the master, the workers and the broker all need.
//!
//! Layout:
//! - [`config`]: the node's settings from flags, environment and TOML, validated once.
//! - [`units`]: the duration and size spellings used in every limit.
//! - [`jwt`]: SocketCluster-compatible JWTs, verified more strictly than Node does.
//! - [`ipc`]: the typed, length-prefixed messages between master and workers.
//! - [`metrics`]: metric families in a form that crosses the IPC channel.
//! - [`filter`]: the admin API's socket filter language.
//! - [`channel_rules`]: `--channel-auth rules`, compiled once, decided without allocating.
//! - [`http`]: the little HTTP/1.1 the front door and the admin port speak.

pub mod channel_rules;
pub mod config;
pub mod filter;
pub mod handoff;
pub mod http;
pub mod http_url;
pub mod ipc;
pub mod jwt;
pub mod metrics;
pub mod units;
