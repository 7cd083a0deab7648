//! The SocketCluster protocol as `socketcluster-client@20` speaks it.
//!
//! Layout:
//! - [`codec`]: frames in and out, byte-compatible with the real server.
//! - [`session`]: one socket's lifecycle: handshake, pings, auth, pub/sub, close.

pub mod codec;
pub mod session;

pub use session::serve;
