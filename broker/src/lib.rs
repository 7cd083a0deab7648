//! Carries channel messages between the workers of a node.
//!
//! Layout:
//! - [`embedded`]: the routing table of the broker the master hosts when no
//!   Redis is configured: which worker wants which channel.
//!
//! A worker subscribes once per channel no matter how many of its sockets
//! listen, so the table's size is workers x channels, not sockets.

pub mod embedded;

pub use embedded::EmbeddedBroker;
