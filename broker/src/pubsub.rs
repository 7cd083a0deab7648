//! A worker's channels in Redis: one Redis subscription per channel per
//! worker, and publishes that reach every other node.
//!
//! Each message travels as `<origin node>\n<JSON data>` on the Redis channel
//! `sockhive:ch:<channel>`. Same-node delivery always goes through the master
//! (so it survives a Redis outage), which is why a worker drops Redis
//! messages its own node published. On a Redis Cluster, sharded pub/sub
//! (SSUBSCRIBE/SPUBLISH) spreads channels over the shards.
//!
//! Publishes leave through one queue per worker, drained by one task that
//! sends whatever has queued up as one pipeline: a socket publishing a burst
//! never waits a Redis round trip per message (which spread the burst out so
//! every subscriber was woken, and written to, once per message), and the
//! messages reach Redis in the order they were published.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::redis::{client, fail_fast, is_cluster, redis_config, subscriber};
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

/// Most publishes sent to Redis as one pipeline.
pub const MAX_PIPELINE: usize = 256;

/// One publish waiting in the queue.
struct Outgoing {
    /// The Redis channel.
    name: String,
    /// The envelope (origin node, newline, data).
    payload: String,
    /// Who waits for Redis to take it, if anyone does.
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A publish on its way to Redis; await [`Published::confirmed`] to learn
/// whether Redis took it, or drop it (the queue still sends it, in order).
#[derive(Debug)]
pub struct Published(oneshot::Receiver<Result<(), String>>);

impl Published {
    /// Resolves once Redis answered the publish (an error: other nodes did not get it).
    pub async fn confirmed(self) -> Result<(), BrokerError> {
        match self.0.await {
            Ok(result) => result.map_err(BrokerError::Unavailable),
            Err(_) => Err(BrokerError::Unavailable(
                "the publisher stopped before sending".into(),
            )),
        }
    }
}

/// The worker's connection to Redis pub/sub.
#[derive(Clone)]
pub struct RedisChannels {
    subscriber: SubscriberClient,
    outgoing: mpsc::UnboundedSender<Outgoing>,
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
        let (outgoing, queue) = mpsc::unbounded_channel();
        tokio::spawn(send_publishes(publisher, sharded, queue));
        Ok(RedisChannels {
            subscriber,
            outgoing,
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

    /// Publishes to every other node, queued behind this worker's earlier
    /// publishes; the receipt tells whether Redis took it (an error: other
    /// nodes did not get it).
    pub fn publish_confirmed(&self, channel: &str, data: &str) -> Published {
        let (done, receipt) = oneshot::channel();
        self.queue(channel, data, Some(done));
        Published(receipt)
    }

    /// Queues a publish behind the earlier ones without waiting for Redis;
    /// a failure is logged (nobody is told). For publishes nobody acknowledges.
    pub fn publish_unconfirmed(&self, channel: &str, data: &str) {
        self.queue(channel, data, None);
    }

    fn queue(&self, channel: &str, data: &str, done: Option<oneshot::Sender<Result<(), String>>>) {
        let outgoing = Outgoing {
            name: redis_channel(channel),
            payload: envelope(&self.node, data),
            done,
        };
        if let Err(mpsc::error::SendError(lost)) = self.outgoing.send(outgoing) {
            // The worker is exiting; a waiting caller hears why.
            if let Some(done) = lost.done {
                let _ = done.send(Err("the publisher has stopped".into()));
            }
        }
    }
}

/// Drains the publish queue: whatever waits is sent together, in one write
/// (in queue order, so per channel in publish order), then each waiting
/// publisher hears how its message fared.
async fn send_publishes(
    client: Client,
    sharded: bool,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_PIPELINE).await > 0 {
        let results = send_batch(&client, sharded, &mut batch).await;
        // One line per batch, not per message: an outage under a busy
        // publisher would otherwise log every message.
        let mut failed = 0usize;
        let mut first_error = None;
        for (outgoing, result) in batch.drain(..).zip(results) {
            if let Err(e) = &result {
                failed += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            if let Some(done) = outgoing.done {
                let _ = done.send(result);
            }
        }
        if let Some(error) = first_error {
            tracing::warn!(failed, %error, "redis publishes failed: other nodes did not get these messages");
        }
    }
}

/// A publish on its way to Redis, and whether Redis took it.
type PendingSend<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// One result per message of `batch`, in order.
///
/// The messages go as separate commands, all queued with fred before its
/// router runs: fred then writes them together, in queue order, with one
/// flush. (A fred `Pipeline` is one router command whose commands are each
/// written and flushed alone: a write, and a wake-up of Redis, per message.)
async fn send_batch(
    client: &Client,
    sharded: bool,
    batch: &mut [Outgoing],
) -> Vec<Result<(), String>> {
    // Fails at once while Redis is disconnected instead of queueing the
    // batch for up to the command timeout (see `fail_fast`).
    let client = client.with_options(&fail_fast());
    let client = &client;
    let mut sends: Vec<PendingSend<'_>> = batch
        .iter_mut()
        .map(|outgoing| {
            let payload = std::mem::take(&mut outgoing.payload);
            let name: &str = &outgoing.name;
            Box::pin(async move {
                let sent: Result<i64, _> = if sharded {
                    client.spublish(name, payload).await
                } else {
                    client.publish(name, payload).await
                };
                sent.map(drop).map_err(|e| e.to_string())
            }) as PendingSend<'_>
        })
        .collect();
    let mut results: Vec<Option<Result<(), String>>> = vec![None; sends.len()];
    // The first pass polls every send in queue order, which is the order
    // fred writes them in (per channel: the publish order).
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (send, result) in sends.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match send.as_mut().poll(cx) {
                    Poll::Ready(sent) => *result = Some(sent),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err("redis did not answer".into())))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::InfoKind;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    /// A throwaway redis-server on a free loopback port, killed on drop.
    struct Redis(Child, u16);

    impl Redis {
        fn start() -> Redis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            // Bounded: 250 tries 20 ms apart while it starts.
            let up = (0..250).any(|_| {
                let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if !up {
                    std::thread::sleep(Duration::from_millis(20));
                }
                up
            });
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not start on {port}");
            }
            Redis(child, port)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.1)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn reads_processed(info: &Client) -> u64 {
        let text: String = info.info(Some(InfoKind::Stats)).await.expect("INFO");
        text.lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_reads_processed")
    }

    /// Issue 19: a batch of publishes reaches Redis in one write (Redis
    /// reads the publisher's socket once), and in order.
    #[tokio::test]
    async fn a_batch_of_publishes_reaches_redis_in_one_write_in_order() {
        let redis = Redis::start();
        let config = redis_config(&redis.url()).unwrap();
        let (publisher, info) = (
            client(config.clone()).unwrap(),
            client(config.clone()).unwrap(),
        );
        let listener = subscriber(config).unwrap();
        // The clients connect in the background; bounded by the timeout.
        tokio::time::timeout(Duration::from_secs(10), async {
            publisher.wait_for_connect().await?;
            info.wait_for_connect().await?;
            listener.wait_for_connect().await
        })
        .await
        .expect("connected in time")
        .expect("connected");
        let mut heard = listener.message_rx();
        listener.subscribe(redis_channel("t")).await.unwrap();
        let before = reads_processed(&info).await;
        let mut batch: Vec<Outgoing> = (0..20)
            .map(|i| Outgoing {
                name: redis_channel("t"),
                payload: envelope("n", &i.to_string()),
                done: None,
            })
            .collect();
        let results = send_batch(&publisher, false, &mut batch).await;
        assert_eq!(results, vec![Ok(()); 20]);
        // The batch's one read, and this INFO's own.
        let reads = reads_processed(&info).await - before;
        assert_eq!(reads, 2, "Redis read the batch in {} reads", reads - 1);
        for i in 0..20 {
            let message = tokio::time::timeout(Duration::from_secs(5), heard.recv())
                .await
                .expect("message in time")
                .unwrap();
            assert_eq!(message.value.as_str().unwrap(), format!("n\n{i}"));
        }
    }
}
