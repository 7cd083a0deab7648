//! Socket.IO v5 over Engine.IO v4 (WebSocket transport), as `socket.io-client@4` speaks it.
//!
//! Layout:
//! - [`codec`]: Engine.IO and Socket.IO packets in and out, byte-compatible with the real server.
//! - [`adapter`]: the [`Protocol`](crate::socket::Protocol) the socket core drives.
//! - [`request`]: the checks of a request to the `/socket.io/` route.
//! - [`binary`]: binary data as it crosses to and from SocketCluster's Buffer encoding.

pub mod adapter;
pub mod binary;
pub mod codec;
pub mod request;

pub use adapter::{new_engine_sid, SocketIo};
pub use request::{check_request, RequestRefusal};

/// The path `socket.io-client` connects to by default (it always appends the slash).
pub const PATH: &str = "/socket.io/";
