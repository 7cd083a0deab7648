//! The wire protocols, each an adapter behind the socket core's
//! [`Protocol`](crate::socket::Protocol) trait: they decode frames into
//! events and encode outcomes; the lifecycle is the core's.
//!
//! - [`socketcluster`]: SocketCluster, as `socketcluster-client@20` speaks it.
//! - [`socketio`]: Socket.IO v5 over Engine.IO v4, as `socket.io-client@4` speaks it.

pub mod socketcluster;
pub mod socketio;
