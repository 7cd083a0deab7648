//! A worker's socket records in Redis, where every node can read them.
//!
//! Records live in one hash per node, `sockhive:sockets:<node>`, whose expiry
//! the master's heartbeat keeps pushing forward: when a node dies, its records
//! vanish with the hash. Writes leave the handshake's critical path: they are
//! queued and flushed in pipelined batches.

use std::time::Duration;

use fred::prelude::*;
use tokio::sync::mpsc;

use crate::redis::{client, redis_config};
use crate::BrokerError;

/// The hash holding a node's socket records.
pub fn records_key(node: &str) -> String {
    format!("sockhive:sockets:{node}")
}

/// Most changes written in one pipeline.
const MAX_BATCH: usize = 512;
/// How long changes may wait to be batched.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// One change to the node's records.
#[derive(Debug)]
enum Change {
    Put(String, String),
    Remove(String),
}

/// The sending side: cheap, never blocks.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::UnboundedSender<Change>,
    redis: Client,
}

impl std::fmt::Debug for RecordSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSink").finish_non_exhaustive()
    }
}

impl RecordSink {
    /// Starts the writer task for `node`'s records.
    pub fn start(url: &str, node: &str) -> Result<RecordSink, BrokerError> {
        let redis = client(redis_config(url)?)?;
        let key = records_key(node);
        let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
        let sink = RecordSink {
            tx,
            redis: redis.clone(),
        };
        tokio::spawn(async move {
            let mut failing = false;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                while batch.len() < MAX_BATCH {
                    tokio::select! {
                        _ = &mut window => break,
                        next = rx.recv() => match next {
                            Some(change) => batch.push(change),
                            None => break,
                        },
                    }
                }
                let pipeline = redis.pipeline();
                for change in batch {
                    let queued: Result<(), _> = match change {
                        Change::Put(id, record) => pipeline.hset(key.as_str(), (id, record)).await,
                        Change::Remove(id) => pipeline.hdel(key.as_str(), id).await,
                    };
                    if let Err(e) = queued {
                        tracing::debug!(error = %e, "record change not queued");
                    }
                }
                // Every batch renews the expiry too: a hash created just before
                // its node dies (before the master's next heartbeat) must still expire.
                let _: Result<(), _> = pipeline
                    .pexpire(
                        key.as_str(),
                        crate::cluster::NODE_TTL.as_millis() as i64,
                        None,
                    )
                    .await;
                match pipeline.all::<Value>().await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("socket records reach redis again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "socket records not written to redis (queries still reach sockets through the nodes)");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(sink)
    }

    /// Fires after each reconnect to Redis: the records may be gone (a
    /// restarted Redis), so the worker writes them all again.
    pub fn reconnects(&self) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
        self.redis.reconnect_rx()
    }

    /// Writes (or replaces) a socket's record.
    pub fn put(&self, id: &str, record: &serde_json::Value) {
        let _ = self
            .tx
            .send(Change::Put(id.to_string(), record.to_string()));
    }

    /// Deletes a socket's record.
    pub fn remove(&self, id: &str) {
        let _ = self.tx.send(Change::Remove(id.to_string()));
    }
}
