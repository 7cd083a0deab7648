//! Connecting to Redis (a single server or a cluster) the same way everywhere.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy, ServerConfig};

use crate::BrokerError;

/// Every command gets an answer or an error within this time: the broker
/// fails loudly instead of queueing behind a dead connection.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Parses `redis://`, `rediss://`, `redis-cluster://host:port?node=host:port`,
/// or a bare seed list `host:port,host:port` (a cluster).
pub fn redis_config(url: &str) -> Result<RedisConfig, BrokerError> {
    let url = url.trim();
    if !url.contains("://") {
        let mut hosts = Vec::new();
        for seed in url.split(',') {
            let (host, port) = seed
                .trim()
                .rsplit_once(':')
                .ok_or_else(|| BrokerError::BadUrl(url.to_string()))?;
            let port: u16 = port
                .parse()
                .map_err(|_| BrokerError::BadUrl(url.to_string()))?;
            hosts.push((host.to_string(), port));
        }
        return Ok(RedisConfig {
            server: ServerConfig::new_clustered(hosts),
            ..RedisConfig::default()
        });
    }
    RedisConfig::from_url(url).map_err(|e| BrokerError::BadUrl(format!("{url}: {e}")))
}

/// True when the configuration names a Redis Cluster.
pub fn is_cluster(config: &RedisConfig) -> bool {
    matches!(config.server, ServerConfig::Clustered { .. })
}

/// A builder with sockhive's policy: reconnect forever with backoff from 100 ms
/// to 1 s (so a restarted Redis is back in use within about a second), and a
/// bounded time for every command.
pub fn builder(config: RedisConfig) -> Builder {
    let mut builder = Builder::from_config(config);
    builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 1000, 2));
    builder.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.internal_command_timeout = Duration::from_secs(2);
        c.max_command_attempts = 1;
    });
    builder.with_performance_config(|p| {
        p.default_command_timeout = COMMAND_TIMEOUT;
    });
    builder
}

/// Command options that fail at once while the client is disconnected, for
/// publishes and the heartbeat. (A pipeline keeps them only when built with
/// `Pipeline::from(client.with_options(..))`: `.pipeline()` drops them.)
///
/// fred otherwise queues a command until it reconnects or the command times
/// out ([`COMMAND_TIMEOUT`]); a socket's messages are handled one at a time,
/// so a publisher sending 20 messages/s during a Redis outage fell one
/// second behind per message, and its own node's subscribers (served without
/// Redis) got its messages seconds late (tests/tests/faults.rs,
/// `redis_killed_and_restarted`: 3 of 60 publishes answered, now all 60).
pub fn fail_fast() -> fred::types::config::Options {
    fred::types::config::Options {
        fail_fast: true,
        ..fred::types::config::Options::default()
    }
}

/// A command client, connecting in the background (start-up never waits on Redis).
pub fn client(config: RedisConfig) -> Result<Client, BrokerError> {
    let client = builder(config).build()?;
    client.connect();
    Ok(client)
}

/// Messages a pub/sub client holds for its reader before it drops the oldest
/// (fred's default, 32, loses messages in any burst: a 50-message publish,
/// the replies to 50 forwarded requests). Allocated up front per client.
pub const SUBSCRIBER_BUFFER: usize = 8192;

/// A pub/sub client that resubscribes to everything it tracks after every reconnect.
pub fn subscriber(config: RedisConfig) -> Result<SubscriberClient, BrokerError> {
    let mut builder = builder(config);
    builder.with_performance_config(|p| {
        p.default_command_timeout = COMMAND_TIMEOUT;
        p.broadcast_channel_capacity = SUBSCRIBER_BUFFER;
    });
    let subscriber = builder.build_subscriber_client()?;
    subscriber.connect();
    subscriber.manage_subscriptions();
    Ok(subscriber)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_seed_lists_are_understood() {
        assert!(!is_cluster(
            &redis_config("redis://127.0.0.1:6379").unwrap()
        ));
        assert!(is_cluster(
            &redis_config("127.0.0.1:7000,127.0.0.1:7001").unwrap()
        ));
        assert!(is_cluster(
            &redis_config("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001").unwrap()
        ));
        assert!(redis_config("127.0.0.1").is_err());
    }
}
