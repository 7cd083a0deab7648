//! Channel subscriptions of this worker's sockets.
//!
//! The worker subscribes to the broker once per channel, not once per socket:
//! the first local subscriber sends `Subscribe` to the master, the last one to
//! leave sends `Unsubscribe`, and every delivery is encoded once and fanned out
//! to the local subscribers as the same shared frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use sockhive_broker::pubsub::{Published, RedisChannels};
use sockhive_shared::ipc::ToMaster;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::{Outbound, Outbox};
use crate::master_link::MasterLink;

/// Why a publish or subscribe did not fully succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    /// The master is gone (the worker is exiting): nothing was published.
    #[error("the broker is unavailable; the message was not published")]
    MasterGone,
    /// Redis did not confirm the message: this node's subscribers got it;
    /// other nodes did not if Redis was down, and may still, late, if it was
    /// only slow to answer.
    #[error("redis did not confirm the message: this node's subscribers have it, other nodes may not ({0})")]
    Redis(String),
}

/// Redis's answer to one publish, still to come.
#[derive(Debug)]
pub struct Receipt(Published);

impl Receipt {
    /// Resolves once Redis answered (within the broker's command timeout).
    pub async fn confirmed(self) -> Result<(), ChannelError> {
        self.0
            .confirmed()
            .await
            .map_err(|e| ChannelError::Redis(e.to_string()))
    }
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

    /// Publishes to every subscriber, this node's through the master, the
    /// others' through Redis, and returns at once, with a receipt that resolves when Redis took the message (`None` without
    /// Redis: this node's share is all there is). A socket keeps reading
    /// while its acknowledgements wait, so a slow Redis delays the replies,
    /// not the socket.
    pub fn publish_with_receipt(
        &self,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<Option<Receipt>, ChannelError> {
        let redis = self
            .redis
            .as_ref()
            .map(|redis| redis.publish_confirmed(channel, data.get()));
        self.publish_local(channel, data)?;
        Ok(redis.map(Receipt))
    }

    /// Publishes as [`LocalChannels::publish_with_receipt`] does, without a receipt: for
    /// a publish nobody acknowledges, so a client's burst is read, routed and
    /// fanned out without a Redis round trip between its messages (a Redis
    /// failure is logged by the queue). Order is kept: every publish of this
    /// worker goes through the same two queues.
    pub fn publish_unconfirmed(
        &self,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<(), ChannelError> {
        if let Some(redis) = &self.redis {
            redis.publish_unconfirmed(channel, data.get());
        }
        self.publish_local(channel, data)
    }

    /// This node's share: one IPC message to the master, which forwards it
    /// once to each worker holding subscribers.
    fn publish_local(&self, channel: &str, data: Box<RawValue>) -> Result<(), ChannelError> {
        if self.master.send(&ToMaster::Publish {
            channel: channel.to_string(),
            data,
        }) {
            Ok(())
        } else {
            Err(ChannelError::MasterGone)
        }
    }

    /// Delivers a broker message to every local subscriber of `channel`.
    ///
    /// Hot path: one encoding, then a refcount bump per subscriber. Returns
    /// how many subscribers it was queued for. (Each socket's writer counts
    /// the frames it writes in `sockhive_messages_total{direction="out"}`;
    /// counting here too counted every delivery twice.)
    pub fn deliver(&self, channel: &str, data: &RawValue) -> usize {
        let subscribers = self.lock();
        let Some(sockets) = subscribers.get(channel) else {
            return 0;
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
        sockets.len()
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sockhive_shared::ipc;

    use super::*;
    use crate::hub::outbox::{outbox, Inbox};

    static ENCODED: AtomicUsize = AtomicUsize::new(0);

    fn counting_encode(channel: &str, data: &str) -> String {
        ENCODED.fetch_add(1, Ordering::SeqCst);
        format!(r##"{{"event":"#publish","data":{{"channel":"{channel}","data":{data}}}}}"##)
    }

    static COUNTING: DeliveryEncoder = DeliveryEncoder {
        slot: 0,
        encode: counting_encode,
    };

    /// Every message the hub sent to the master so far.
    async fn sent_to_master(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> Vec<ToMaster> {
        let mut messages = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            let message = ipc::read_message::<_, ToMaster>(&mut frame.as_slice())
                .await
                .expect("a whole frame")
                .expect("a message");
            messages.push(message);
        }
        messages
    }

    async fn subscribed(channels: &LocalChannels, n: usize) -> Vec<Inbox> {
        let mut inboxes = Vec::new();
        for i in 0..n {
            let (outbox, inbox) = outbox(1 << 20);
            channels
                .subscribe("news", format!("s{i}").into(), outbox, &COUNTING)
                .await
                .expect("no redis to refuse");
            inboxes.push(inbox);
        }
        inboxes
    }

    /// Issue 19: the cost of a publish on a worker must not grow with an
    /// encoding (or a copy of the frame) per subscriber.
    #[tokio::test]
    async fn a_publish_is_encoded_once_and_every_subscriber_shares_the_bytes() {
        let (master, _rx) = MasterLink::new();
        let channels = LocalChannels::new(master, None);
        let mut inboxes = subscribed(&channels, 500).await;
        let before = ENCODED.load(Ordering::SeqCst);
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        assert_eq!(channels.deliver("news", &data), 500);
        assert_eq!(ENCODED.load(Ordering::SeqCst) - before, 1);
        let mut first: Option<*const u8> = None;
        for inbox in &mut inboxes {
            let Some(Outbound::Frame(frame)) = inbox.try_recv() else {
                panic!("every subscriber gets the frame");
            };
            let at = frame.as_str().as_ptr();
            assert_eq!(*first.get_or_insert(at), at, "one buffer, shared");
        }
        assert_eq!(channels.deliver("elsewhere", &data), 0);
    }

    /// Issue 19: the cross-worker path carries one message per worker, not
    /// per subscriber: one broker subscription for the channel however many
    /// sockets join, and one IPC publish however many will receive it.
    #[tokio::test]
    async fn the_master_hears_one_subscribe_and_one_publish_per_worker() {
        let (master, mut rx) = MasterLink::new();
        let channels = LocalChannels::new(master, None);
        let _inboxes = subscribed(&channels, 300).await;
        let sent = sent_to_master(&mut rx).await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(matches!(&sent[0], ToMaster::Subscribe { channel } if channel == "news"));

        let data = RawValue::from_string(r#"{"n":2}"#.into()).unwrap();
        channels.publish_unconfirmed("news", data.clone()).unwrap();
        let receipt = channels.publish_with_receipt("news", data).unwrap();
        assert!(receipt.is_none(), "no Redis: nothing to wait for");
        let sent = sent_to_master(&mut rx).await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent
            .iter()
            .all(|m| matches!(m, ToMaster::Publish { channel, .. } if channel == "news")));
    }

    #[tokio::test]
    async fn a_publish_without_a_master_says_so() {
        let (master, rx) = MasterLink::new();
        drop(rx);
        let channels = LocalChannels::new(master, None);
        let data = RawValue::from_string("1".into()).unwrap();
        assert!(matches!(
            channels.publish_unconfirmed("news", data),
            Err(ChannelError::MasterGone)
        ));
    }
}
