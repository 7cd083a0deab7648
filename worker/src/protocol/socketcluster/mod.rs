//! The SocketCluster protocol as `socketcluster-client@20` speaks it.
//!
//! Layout:
//! - [`codec`]: frames in and out, byte-compatible with the real server.
//! - [`adapter`]: the [`Protocol`](crate::socket::Protocol) the socket core
//!   drives: frames to events, outcomes to frames, endings to 4000-range codes.

pub mod adapter;
pub mod codec;

pub use adapter::SocketCluster;

/// The path SocketCluster clients connect to (the trailing slash matters to the real server).
pub const PATH: &str = "/socketcluster/";
