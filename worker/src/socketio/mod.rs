//! Socket.IO v5 over Engine.IO v4 (WebSocket transport), as `socket.io-client@4` speaks it.
//!
//! Layout:
//! - [`codec`]: Engine.IO and Socket.IO packets in and out, byte-compatible with the real server.
//! - [`session`]: one socket's lifecycle: open, heartbeat, CONNECT and auth, events and acks,
//!   channels, close; plus the request checks of the `/socket.io/` route.

pub mod codec;
pub mod session;

pub use session::{check_request, encode_channel_delivery, serve, PATH};
