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

use super::outbox::{Outbound, Outbox};
use crate::master_link::MasterLink;
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

/// How a protocol encodes a channel message for its sockets. The hub calls it
/// at most once per message and protocol, then shares the frame; it never
/// names a protocol itself (the protocols hand it their encoder).
#[derive(Debug)]
pub struct DeliveryEncoder {
    /// Which cached frame this encoder fills; unique per protocol, below [`MAX_ENCODERS`].
    pub slot: usize,
    /// The frame for `(channel, data JSON)`.
    pub encode: fn(&str, &str) -> String,
}

/// How many wire formats one delivery can be encoded in.
pub const MAX_ENCODERS: usize = 4;

/// A subscriber: how to reach it and what it speaks.
type Subscriber = (Outbox, &'static DeliveryEncoder);

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
        encoder: &'static DeliveryEncoder,
    ) -> Result<(), ChannelError> {
        let first = {
            let mut subscribers = self.lock();
            let first = !subscribers.contains_key(channel);
            subscribers
                .entry(channel.to_string())
                .or_default()
                .insert(socket.clone(), (outbox, encoder));
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
        let mut frames: [Option<Utf8Bytes>; MAX_ENCODERS] = Default::default();
        for (outbox, encoder) in sockets.values() {
            let frame = frames[encoder.slot]
                .get_or_insert_with(|| Utf8Bytes::from((encoder.encode)(channel, data.get())))
                .clone();
            // A full queue marks its socket, which ends itself and is
            // counted once as a slow consumer; the others are not slowed.
            let _ = outbox.push(Outbound::Frame(frame));
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
