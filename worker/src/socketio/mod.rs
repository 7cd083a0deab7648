//! Socket.IO v5 over Engine.IO v4 (WebSocket transport), as `socket.io-client@4` speaks it.
//!
//! Layout:
//! - [`codec`]: Engine.IO and Socket.IO packets in and out, byte-compatible with the real server.

pub mod codec;
