//! What masters share through Redis: who is alive, the query bus, and the
//! user index.
//!
//! - **Membership.** Each master writes its heartbeat (a score in the sorted
//!   set `sockhive:nodes`) every [`HEARTBEAT_INTERVAL`]; a node whose score is
//!   older than [`NODE_TTL`] is dead to everyone, and its socket records'
//!   hash expires with the same TTL.
//! - **The bus.** A cluster query is published on `sockhive:bus`; every live
//!   node it targets runs it on its workers and publishes its [`NodeReply`] on
//!   `sockhive:reply:<asker>`. The asker answers once every live target has
//!   replied, or at the query timeout, never waiting for a dead node.
//! - **The user index.** `sockhive:user:<id>` holds the nodes with sockets of
//!   that user, so "every socket of user X" asks only those nodes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use sockhive_shared::ipc::{ClusterCommand, NodeReply};
use tokio::sync::{mpsc, oneshot};

use crate::records::records_key;
use crate::redis::{client, redis_config, subscriber};
use crate::BrokerError;

/// How often a master renews its heartbeat: with [`HEARTBEAT_TIMEOUT`] this
/// bounds how stale `/readyz` is (at most interval + timeout = 1 s, inside
/// the contract's 2 s with room for a loaded machine; at 1 s the fault
/// suite measured 1.2-1.4 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a heartbeat may take before Redis counts as unreachable: short
/// enough that `/readyz` turns 503 within 2 s of an outage (interface.md).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// A node without a heartbeat for this long is out of the cluster.
pub const NODE_TTL: Duration = Duration::from_millis(3000);

const NODES_KEY: &str = "sockhive:nodes";
const BUS_CHANNEL: &str = "sockhive:bus";

fn reply_channel(node: &str) -> String {
    format!("sockhive:reply:{node}")
}

/// What a node announces about itself: `{"pid", "workers", "workers_ready"}`.
pub fn node_key(node: &str) -> String {
    format!("sockhive:node:{node}")
}

fn user_key(user: &str) -> String {
    format!("sockhive:user:{user}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What travels on the bus.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BusMessage {
    Request {
        from: String,
        request: u64,
        /// Nodes that must answer; the others ignore the request.
        targets: Vec<String>,
        command: ClusterCommand,
    },
    Reply {
        request: u64,
        reply: NodeReply,
    },
}

/// A request from another master, for this node to run on its workers.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The asking node.
    pub from: String,
    /// Its request id.
    pub request: u64,
    /// What to run.
    pub command: ClusterCommand,
}

struct Pending {
    waiting: HashSet<String>,
    replies: Vec<NodeReply>,
    done: Option<oneshot::Sender<Vec<NodeReply>>>,
}

/// A master's link to the cluster.
pub struct ClusterLink {
    node: String,
    redis: Client,
    _subscriber: SubscriberClient,
    healthy: AtomicBool,
    /// What this node announces about itself (workers, pid), renewed with each heartbeat.
    info: Mutex<String>,
    /// A Redis Cluster: channel messages use sharded pub/sub.
    sharded: bool,
    next_request: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClusterLink {
    /// Joins the cluster: starts the heartbeat and listens on the bus;
    /// requests for this node arrive on `requests`.
    pub async fn start(
        url: &str,
        node: &str,
        requests: mpsc::UnboundedSender<IncomingRequest>,
    ) -> Result<Arc<ClusterLink>, BrokerError> {
        let config = redis_config(url)?;
        let sharded = crate::redis::is_cluster(&config);
        let redis = client(config.clone())?;
        let subscriber = subscriber(config)?;
        let link = Arc::new(ClusterLink {
            node: node.to_string(),
            info: Mutex::new("{}".to_string()),
            sharded,
            redis,
            _subscriber: subscriber.clone(),
            healthy: AtomicBool::new(false),
            next_request: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        });
        let mut messages = subscriber.message_rx();
        let weak = Arc::downgrade(&link);
        tokio::spawn(async move {
            loop {
                let message = match messages.recv().await {
                    Ok(message) => message,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::error!(
                            missed,
                            "cluster bus messages dropped: the master fell behind"
                        );
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(link) = weak.upgrade() else { return };
                let Some(text) = message.value.as_str() else {
                    continue;
                };
                match serde_json::from_str::<BusMessage>(&text) {
                    Ok(BusMessage::Request {
                        from,
                        request,
                        targets,
                        command,
                    }) => {
                        if from != link.node && targets.iter().any(|t| *t == link.node) {
                            let _ = requests.send(IncomingRequest {
                                from,
                                request,
                                command,
                            });
                        }
                    }
                    Ok(BusMessage::Reply { request, reply }) => link.collect(request, reply),
                    Err(e) => tracing::warn!(error = %e, "unreadable message on the cluster bus"),
                }
            }
        });
        // The subscriptions are tracked, so they come back after every reconnect.
        if let Err(e) = subscriber
            .subscribe(vec![BUS_CHANNEL.to_string(), reply_channel(node)])
            .await
        {
            tracing::warn!(error = %e, "cannot subscribe to the cluster bus yet; retrying on reconnect");
        }
        let beating = link.clone();
        let mut reconnects = link.redis.reconnect_rx();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
            let mut watching = true;
            loop {
                // A reconnect beats at once: `/readyz` is 200 again as soon
                // as Redis answers, not up to a heartbeat interval later.
                tokio::select! {
                    _ = ticks.tick() => {}
                    event = reconnects.recv(), if watching => match event {
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            watching = false;
                            continue;
                        }
                        _ => ticks.reset(),
                    },
                }
                beating.heartbeat().await;
                if Arc::strong_count(&beating) == 1 {
                    return;
                }
            }
        });
        Ok(link)
    }

    /// Replaces what the heartbeat announces about this node and its workers.
    pub fn set_info(&self, info: &serde_json::Value) {
        *lock(&self.info) = info.to_string();
    }

    /// Writes the heartbeat now, with the latest info, instead of at the next
    /// tick (what other nodes read about this one should not lag its start).
    pub async fn announce_now(&self) {
        self.heartbeat().await;
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// True while the heartbeat reaches Redis.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn heartbeat(&self) {
        // Bounded: while Redis is down the client queues commands until it
        // reconnects, and an unbounded wait would keep the node "healthy"
        // (and `/readyz` 200) for as long as the outage lasts.
        let ok = tokio::time::timeout(HEARTBEAT_TIMEOUT, self.write_heartbeat())
            .await
            .unwrap_or(false);
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(node = %self.node, "cluster heartbeat reaches redis");
            } else {
                tracing::error!(node = %self.node, "cluster heartbeat failed: redis unreachable");
            }
        }
    }

    /// Writes this node's heartbeat; true when Redis took it.
    async fn write_heartbeat(&self) -> bool {
        let now = now_ms();
        // Fail-fast: a dropped connection counts as unreachable at once, not
        // after the heartbeat timeout.
        let pipeline =
            fred::clients::Pipeline::from(self.redis.with_options(&crate::redis::fail_fast()));
        let _: Result<(), _> = pipeline
            .zadd(
                NODES_KEY,
                None,
                None,
                false,
                false,
                (now as f64, self.node.as_str()),
            )
            .await;
        let _: Result<(), _> = pipeline
            .zremrangebyscore(
                NODES_KEY,
                f64::NEG_INFINITY,
                (now - 10 * NODE_TTL.as_millis() as i64) as f64,
            )
            .await;
        let _: Result<(), _> = pipeline
            .pexpire(records_key(&self.node), NODE_TTL.as_millis() as i64, None)
            .await;
        let info = lock(&self.info).clone();
        let _: Result<(), _> = pipeline
            .set(
                node_key(&self.node),
                info,
                Some(fred::types::Expiration::PX(NODE_TTL.as_millis() as i64)),
                None,
                false,
            )
            .await;
        pipeline.all::<Value>().await.is_ok()
    }

    /// What a node publishes about itself with its heartbeat (its `info`),
    /// while it is alive.
    pub async fn node_info(&self, node: &str) -> Result<Option<serde_json::Value>, BrokerError> {
        let text: Option<String> = self.redis.get(node_key(node)).await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The nodes whose heartbeat is fresh, this one included.
    pub async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let since = (now_ms() - NODE_TTL.as_millis() as i64) as f64;
        Ok(self
            .redis
            .zrangebyscore(NODES_KEY, since, f64::INFINITY, false, None)
            .await?)
    }

    /// Nodes that hold sockets of any of `users`, per the index.
    pub async fn nodes_for_users(&self, users: &[String]) -> Result<HashSet<String>, BrokerError> {
        let pipeline = self.redis.pipeline();
        for user in users {
            let _: Result<(), _> = pipeline.smembers(user_key(user)).await;
        }
        let sets: Vec<Vec<String>> = pipeline.all().await?;
        Ok(sets.into_iter().flatten().collect())
    }

    /// Updates the index: this node now has (or no longer has) sockets of these users.
    pub async fn index_users(&self, joined: &[String], left: &[String]) -> Result<(), BrokerError> {
        let pipeline = self.redis.pipeline();
        for user in joined {
            let _: Result<(), _> = pipeline.sadd(user_key(user), self.node.as_str()).await;
            // Entries of nodes that died are filtered by liveness; the expiry
            // bounds how long such leftovers take space.
            let _: Result<(), _> = pipeline.pexpire(user_key(user), 86_400_000, None).await;
        }
        for user in left {
            let _: Result<(), _> = pipeline.srem(user_key(user), self.node.as_str()).await;
        }
        pipeline.all::<Value>().await?;
        Ok(())
    }

    /// A socket's record, looked up in the live nodes' record hashes.
    pub async fn find_record(&self, id: &str) -> Result<Option<serde_json::Value>, BrokerError> {
        let nodes = self.live_nodes().await?;
        let pipeline = self.redis.pipeline();
        for node in &nodes {
            let _: Result<(), _> = pipeline.hget(records_key(node), id).await;
        }
        let found: Vec<Option<String>> = pipeline.all().await?;
        Ok(found
            .into_iter()
            .flatten()
            .find_map(|text| serde_json::from_str(&text).ok()))
    }

    /// Sends `command` to the `targets` (other nodes) and returns the replies
    /// that arrived before `timeout`.
    pub async fn request(
        &self,
        command: ClusterCommand,
        targets: Vec<String>,
        timeout: Duration,
    ) -> Vec<NodeReply> {
        if targets.is_empty() {
            return Vec::new();
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (done, replies) = oneshot::channel();
        lock(&self.pending).insert(
            request,
            Pending {
                waiting: targets.iter().cloned().collect(),
                replies: Vec::new(),
                done: Some(done),
            },
        );
        let message = BusMessage::Request {
            from: self.node.clone(),
            request,
            targets,
            command,
        };
        let text = match serde_json::to_string(&message) {
            Ok(text) => text,
            Err(_) => return Vec::new(),
        };
        if let Err(e) = self.redis.publish::<i64, _, _>(BUS_CHANNEL, text).await {
            tracing::warn!(error = %e, "cannot publish a cluster query");
            lock(&self.pending).remove(&request);
            return Vec::new();
        }
        match tokio::time::timeout(timeout, replies).await {
            Ok(Ok(replies)) => replies,
            _ => lock(&self.pending)
                .remove(&request)
                .map(|p| p.replies)
                .unwrap_or_default(),
        }
    }

    fn collect(&self, request: u64, reply: NodeReply) {
        let mut pending = lock(&self.pending);
        let Some(entry) = pending.get_mut(&request) else {
            return;
        };
        if entry.waiting.remove(&reply.node) {
            entry.replies.push(reply);
        }
        if entry.waiting.is_empty() {
            if let Some(entry) = pending.remove(&request) {
                if let Some(done) = entry.done {
                    let _ = done.send(entry.replies);
                }
            }
        }
    }

    /// Publishes a channel message to the other nodes (the admin API's publish).
    pub async fn publish_channel(&self, channel: &str, data: &str) -> Result<(), BrokerError> {
        let (name, payload) = (
            crate::pubsub::redis_channel(channel),
            crate::pubsub::envelope(&self.node, data),
        );
        let redis = self.redis.with_options(&crate::redis::fail_fast());
        if self.sharded {
            let _: i64 = redis.spublish(name, payload).await?;
        } else {
            let _: i64 = redis.publish(name, payload).await?;
        }
        Ok(())
    }

    /// Answers a request from another node.
    pub async fn reply(&self, to: &str, request: u64, reply: NodeReply) {
        let message = BusMessage::Reply { request, reply };
        if let Ok(text) = serde_json::to_string(&message) {
            if let Err(e) = self
                .redis
                .publish::<i64, _, _>(reply_channel(to), text)
                .await
            {
                tracing::warn!(error = %e, "cannot answer a cluster query");
            }
        }
    }
}
