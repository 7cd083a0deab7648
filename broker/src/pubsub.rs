//! A worker's channels in Redis: one Redis subscription per channel per
//! worker, and publishes that reach every other node.
//!
//! Each message travels as `<origin node>\n<JSON data>` on the Redis channel
//! `sockhive:ch:<channel>`. Same-node delivery always goes through the master
//! (so it survives a Redis outage), which is why a worker drops Redis
//! messages its own node published. On a Redis Cluster, sharded pub/sub
//! (SSUBSCRIBE/SPUBLISH) spreads channels over the shards.

use std::sync::Arc;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::redis::{client, is_cluster, redis_config, subscriber};
use crate::BrokerError;

/// Prefix of sockhive's channels in the Redis pub/sub namespace.
pub const CHANNEL_PREFIX: &str = "sockhive:ch:";

/// A message from another node for this worker's subscribers.
#[derive(Debug)]
pub struct Delivery {
    /// The sockhive channel.
    pub channel: String,
    /// The published value.
    pub data: Box<RawValue>,
}

/// The worker's connection to Redis pub/sub.
#[derive(Clone)]
pub struct RedisChannels {
    publisher: Client,
    subscriber: SubscriberClient,
    node: Arc<str>,
    sharded: bool,
}

impl std::fmt::Debug for RedisChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChannels")
            .field("node", &self.node)
            .field("sharded", &self.sharded)
            .finish()
    }
}

/// The Redis channel that carries sockhive channel `channel`.
pub fn redis_channel(channel: &str) -> String {
    format!("{CHANNEL_PREFIX}{channel}")
}

/// A message as it travels: the origin node, a newline, the JSON data.
pub fn envelope(node: &str, data: &str) -> String {
    let mut payload = String::with_capacity(node.len() + 1 + data.len());
    payload.push_str(node);
    payload.push('\n');
    payload.push_str(data);
    payload
}

impl RedisChannels {
    /// Connects (in the background) and forwards other nodes' messages to `deliveries`.
    pub fn start(
        url: &str,
        node: &str,
        deliveries: mpsc::UnboundedSender<Delivery>,
    ) -> Result<RedisChannels, BrokerError> {
        let config = redis_config(url)?;
        let sharded = is_cluster(&config);
        let publisher = client(config.clone())?;
        let subscriber = subscriber(config)?;
        let node: Arc<str> = node.into();
        let mut messages = subscriber.message_rx();
        let own = node.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        if let Some(delivery) = decode(&own, &message) {
                            if deliveries.send(delivery).is_err() {
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::error!(
                            missed,
                            "redis pub/sub messages dropped: the worker fell behind"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let watched = subscriber.clone();
        let mut reconnects = subscriber.reconnect_rx();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                tracing::info!(
                    channels =
                        watched.tracked_channels().len() + watched.tracked_shard_channels().len(),
                    "redis pub/sub reconnected; resubscribing"
                );
            }
        });
        Ok(RedisChannels {
            publisher,
            subscriber,
            node,
            sharded,
        })
    }

    /// Subscribes this worker to `channel` (its first local subscriber arrived).
    pub async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let name = redis_channel(channel);
        if self.sharded {
            self.subscriber.ssubscribe(name).await?;
        } else {
            self.subscriber.subscribe(name).await?;
        }
        Ok(())
    }

    /// Unsubscribes this worker from `channel` (its last local subscriber left).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let name = redis_channel(channel);
        if self.sharded {
            self.subscriber.sunsubscribe(name).await?;
        } else {
            self.subscriber.unsubscribe(name).await?;
        }
        Ok(())
    }

    /// Publishes to every other node; an error means other nodes did not get it.
    pub async fn publish(&self, channel: &str, data: &str) -> Result<(), BrokerError> {
        let payload = envelope(&self.node, data);
        let name = redis_channel(channel);
        if self.sharded {
            let _: i64 = self.publisher.spublish(name, payload).await?;
        } else {
            let _: i64 = self.publisher.publish(name, payload).await?;
        }
        Ok(())
    }
}

fn decode(own_node: &str, message: &fred::types::Message) -> Option<Delivery> {
    let channel = message.channel.strip_prefix(CHANNEL_PREFIX)?;
    let text = message.value.as_str()?;
    let (origin, data) = text.split_once('\n')?;
    if origin == own_node {
        return None;
    }
    let data = RawValue::from_string(data.to_string()).ok()?;
    Some(Delivery {
        channel: channel.to_string(),
        data,
    })
}
