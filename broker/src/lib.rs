//! Carries channel messages and cluster queries between the workers of a
//! node and between the nodes of a cluster.
//!
//! Layout:
//! - [`embedded`]: the routing table of the broker the master hosts: which of
//!   its workers want which channel. Always on: it carries same-node traffic
//!   even when Redis is configured, so a Redis outage never stops local delivery.
//! - [`redis`]: connecting to Redis or a Redis Cluster, with the reconnect policy.
//! - [`pubsub`]: a worker's channel subscriptions and publishes through Redis.
//! - [`records`]: a worker's socket records in Redis, written in batches.
//! - [`cluster`]: a master's membership heartbeat, the query bus between
//!   masters, and the user index.
//!
//! A worker subscribes once per channel no matter how many of its sockets
//! listen, so subscriptions scale with workers x channels, not sockets.

pub mod cluster;
pub mod embedded;
pub mod pubsub;
pub mod records;
pub mod redis;

pub use embedded::EmbeddedBroker;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The Redis URL cannot be used.
    #[error("bad redis url: {0}")]
    BadUrl(String),
    /// Redis did not answer or refused the command (down, restarting, too slow).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

impl From<fred::error::Error> for BrokerError {
    fn from(error: fred::error::Error) -> Self {
        BrokerError::Unavailable(error.to_string())
    }
}
