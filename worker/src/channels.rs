//! Channel subscriptions of this worker's sockets.
//!
//! The worker subscribes to the broker once per channel, not once per socket:
//! the first local subscriber sends `Subscribe` to the master, the last one to
//! leave sends `Unsubscribe`, and every delivery is encoded once and fanned out
//! to the local subscribers as the same shared frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use sockhive_broker::pubsub::RedisChannels;
use sockhive_shared::ipc::ToMaster;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::link::MasterLink;
use crate::outbox::{Outbound, Outbox};
use crate::WorkerMetrics;

/// Why a publish or subscribe did not fully succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// The master is gone (the worker is exiting): nothing was published.
    #[error("the broker is unavailable; the message was not published")]
    MasterGone,
    /// Redis failed: this node's subscribers got the message, other nodes did not.
    #[error("redis is unavailable: delivered on this node only ({0})")]
    Redis(String),
}

/// The wire format a subscriber needs its deliveries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `{"event":"#publish","data":{"channel","data"}}`.
    SocketCluster,
    /// `42["publish",{"channel","data"}]`.
    SocketIo,
}

impl Wire {
    fn encode(self, channel: &str, data: &RawValue) -> Utf8Bytes {
        Utf8Bytes::from(match self {
            Wire::SocketCluster => {
                crate::socketcluster::codec::encode_publish(channel, Some(data.get()))
            }
            Wire::SocketIo => crate::socketio::encode_channel_delivery(channel, data.get()),
        })
    }
}

/// A subscriber: how to reach it and what it speaks.
type Subscriber = (Outbox, Wire);

/// Local subscribers by channel.
#[derive(Debug)]
pub struct LocalChannels {
    subscribers: Mutex<HashMap<String, HashMap<Arc<str>, Subscriber>>>,
    master: MasterLink,
    /// Other nodes, when a Redis broker is configured.
    redis: Option<RedisChannels>,
}

impl LocalChannels {
    /// No subscriptions yet; same-node traffic goes through `master`, the
    /// rest of the cluster through `redis` when configured.
    pub fn new(master: MasterLink, redis: Option<RedisChannels>) -> LocalChannels {
        LocalChannels {
            subscribers: Mutex::new(HashMap::new()),
            master,
            redis,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<Arc<str>, Subscriber>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a subscriber; the worker joins the channel at the broker on the first.
    ///
    /// With Redis, the reply waits for Redis to confirm the first subscription
    /// of the worker, so a publish from another node right after the client's
    /// `subscribe` resolves is not missed. If Redis refuses, the socket is not
    /// subscribed: a client must not believe it hears the whole cluster.
    pub async fn subscribe(
        &self,
        channel: &str,
        socket: Arc<str>,
        outbox: Outbox,
        wire: Wire,
    ) -> Result<(), ChannelError> {
        let first = {
            let mut subscribers = self.lock();
            let first = !subscribers.contains_key(channel);
            subscribers
                .entry(channel.to_string())
                .or_default()
                .insert(socket.clone(), (outbox, wire));
            first
        };
        if !first {
            return Ok(());
        }
        self.master.send(&ToMaster::Subscribe {
            channel: channel.to_string(),
        });
        if let Some(redis) = &self.redis {
            if let Err(e) = redis.subscribe(channel).await {
                self.unsubscribe(channel, &socket);
                return Err(ChannelError::Redis(e.to_string()));
            }
        }
        Ok(())
    }

    /// Removes a subscriber; the worker leaves the channel at the broker after the last.
    pub fn unsubscribe(&self, channel: &str, socket: &str) {
        let mut subscribers = self.lock();
        let Some(sockets) = subscribers.get_mut(channel) else {
            return;
        };
        sockets.remove(socket);
        if sockets.is_empty() {
            subscribers.remove(channel);
            self.master.send(&ToMaster::Unsubscribe {
                channel: channel.to_string(),
            });
            if let Some(redis) = self.redis.clone() {
                let channel = channel.to_string();
                tokio::spawn(async move {
                    if let Err(e) = redis.unsubscribe(&channel).await {
                        tracing::debug!(error = %e, "redis unsubscribe failed; the subscription lapses with the connection");
                    }
                });
            }
        }
    }

    /// Publishes to every subscriber: this node's through the master, the
    /// others' through Redis.
    pub async fn publish(&self, channel: &str, data: Box<RawValue>) -> Result<(), ChannelError> {
        let redis_data = self.redis.as_ref().map(|_| data.get().to_string());
        if !self.master.send(&ToMaster::Publish {
            channel: channel.to_string(),
            data,
        }) {
            return Err(ChannelError::MasterGone);
        }
        if let (Some(redis), Some(data)) = (&self.redis, redis_data) {
            redis
                .publish(channel, &data)
                .await
                .map_err(|e| ChannelError::Redis(e.to_string()))?;
        }
        Ok(())
    }

    /// Delivers a broker message to every local subscriber of `channel`.
    ///
    /// Hot path: one encoding, then a refcount bump per subscriber.
    pub fn deliver(&self, channel: &str, data: &RawValue, metrics: &WorkerMetrics) {
        let subscribers = self.lock();
        let Some(sockets) = subscribers.get(channel) else {
            return;
        };
        // Encoded at most once per wire format, then shared by every subscriber.
        let mut frames: [Option<Utf8Bytes>; 2] = [None, None];
        for (outbox, wire) in sockets.values() {
            let frame = frames[*wire as usize]
                .get_or_insert_with(|| wire.encode(channel, data))
                .clone();
            if outbox.push(Outbound::Frame(frame)).is_err() {
                metrics.slow_consumers.inc();
            }
        }
        metrics
            .messages
            .with_label_values(&["out"])
            .inc_by(sockets.len() as u64);
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.lock().len()
    }
}

/// Whether `pattern` (a channel name, or a prefix ending in `*`) covers `channel`.
fn pattern_covers(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// The `--channel-auth claims` rule: a channel is usable when it is public or
/// listed in the token's `channels` claim. Under `open` everything is allowed.
pub fn channel_allowed(
    config: &sockhive_shared::config::ChannelConfig,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
    channel: &str,
) -> bool {
    use sockhive_shared::config::ChannelAuth;
    if config.channel_auth == ChannelAuth::Open
        || config
            .public_channel
            .iter()
            .any(|p| pattern_covers(p, channel))
    {
        return true;
    }
    let listed = claims
        .and_then(|c| c.get("channels"))
        .and_then(serde_json::Value::as_array);
    listed.is_some_and(|entries| {
        entries
            .iter()
            .filter_map(serde_json::Value::as_str)
            .any(|p| pattern_covers(p, channel))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockhive_shared::config::{ChannelAuth, ChannelConfig};

    #[test]
    fn claims_and_public_patterns_decide() {
        let config = ChannelConfig {
            channel_auth: ChannelAuth::Claims,
            public_channel: vec!["public:*".into()],
        };
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"channels":["room:1","team:*"]}"#).unwrap();
        assert!(channel_allowed(&config, Some(&claims), "room:1"));
        assert!(channel_allowed(&config, Some(&claims), "team:red"));
        assert!(channel_allowed(&config, None, "public:news"));
        assert!(!channel_allowed(&config, Some(&claims), "room:2"));
        assert!(!channel_allowed(&config, None, "room:1"));
        let open = ChannelConfig {
            channel_auth: ChannelAuth::Open,
            public_channel: vec![],
        };
        assert!(channel_allowed(&open, None, "anything"));
    }
}
