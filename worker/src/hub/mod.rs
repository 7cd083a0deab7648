//! What the worker's sockets share: who is connected, who listens on which
//! channel, and the queue into each socket. Protocol-free: the protocols hand
//! the hub their delivery encoders instead of being imported by it.
//!
//! - [`registry`]: the sockets that cluster queries read, indexed by user.
//! - [`channels`]: local channel subscribers and the worker's broker subscriptions.
//! - [`outbox`]: the byte-bounded way into one socket.

pub mod channels;
pub mod outbox;
pub mod registry;
