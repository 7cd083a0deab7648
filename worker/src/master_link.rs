//! The worker's IPC with its master: the sending half ([`MasterLink`]) and
//! the reading loop that applies what the master asks ([`read_from_master`]).

use sockhive_shared::ipc::{self, ToMaster};
use tokio::sync::mpsc;

/// Sends messages to the master; clone freely.
///
/// Messages are encoded by the caller's task and written by one writer task,
/// so a slow master never blocks a socket's task and frames never interleave.
#[derive(Debug, Clone)]
pub struct MasterLink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl MasterLink {
    /// A link and the receiver its writer task drains.
    pub fn new() -> (MasterLink, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MasterLink { tx }, rx)
    }

    /// Queues a message; false when the master is gone (the worker is exiting).
    pub fn send(&self, message: &ToMaster) -> bool {
        match ipc::encode(message) {
            Ok(frame) => self.tx.send(frame).is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message to the master");
                false
            }
        }
    }
}

/// Reads the master's messages until it goes away; then the worker is
/// orphaned and drains (`orphaned` tells the drain not to wait long).
pub async fn read_from_master(
    worker: std::sync::Arc<crate::Worker>,
    mut ipc_read: tokio::net::unix::OwnedReadHalf,
    orphaned: tokio_util::sync::CancellationToken,
) {
    use sockhive_shared::ipc::{ToMaster, ToWorker};
    loop {
        let message = match ipc::read_message::<_, ToWorker>(&mut ipc_read).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => {
                tracing::warn!(worker = worker.slot, "master is gone; worker exiting");
                orphaned.cancel();
                worker.shutdown.cancel();
                return;
            }
        };
        match message {
            ToWorker::Hello { .. } => tracing::warn!("unexpected second hello from the master"),
            ToWorker::Drain => worker.shutdown.cancel(),
            ToWorker::MetricsRequest { request } => {
                worker.master.send(&ToMaster::Metrics {
                    request,
                    families: worker.metrics.snapshot(),
                });
            }
            ToWorker::Deliver { channel, data } => {
                worker.channels.deliver(&channel, &data, &worker.metrics)
            }
            ToWorker::Cluster { request, command } => {
                let reply = run_cluster_command(&worker, command);
                worker.master.send(&ToMaster::Cluster { request, reply });
            }
        }
    }
}

/// Evaluates one cluster query on this worker's sockets.
fn run_cluster_command(
    worker: &crate::Worker,
    command: sockhive_shared::ipc::ClusterCommand,
) -> sockhive_shared::ipc::ClusterReply {
    use crate::hub::outbox::Outbound;
    use sockhive_shared::filter::Filter;
    use sockhive_shared::ipc::{ClusterCommand, ClusterReply};
    // The master validates filters before fanning them out; should one still
    // fail to parse here (a version skew), match nothing rather than everything.
    let parse = |filter: &serde_json::Value| {
        Filter::parse(filter).unwrap_or_else(|_| {
            Filter::parse(&serde_json::json!({"id": {"$in": []}})).unwrap_or_default()
        })
    };
    match command {
        ClusterCommand::Query { filter, limit } => ClusterReply::Query {
            sockets: worker.sockets.query(&parse(&filter), limit),
        },
        ClusterCommand::Emit {
            filter,
            event,
            data,
        } => {
            let data: std::sync::Arc<serde_json::value::RawValue> = std::sync::Arc::from(data);
            let delivered = worker
                .sockets
                .push_matching(&parse(&filter), || Outbound::Event {
                    event: event.clone(),
                    data: data.clone(),
                });
            ClusterReply::Emit { delivered }
        }
        ClusterCommand::PatchSession { id, changes } => {
            let session = worker.sockets.update(&id, |entry| {
                for (key, value) in changes {
                    if value.is_null() {
                        entry.session.remove(&key);
                    } else {
                        entry.session.insert(key, value);
                    }
                }
                entry.session.clone()
            });
            ClusterReply::PatchSession { session }
        }
        ClusterCommand::Kick { filter, reason } => {
            let disconnected = worker
                .sockets
                .push_matching(&parse(&filter), || Outbound::Kick {
                    reason: reason.clone(),
                });
            ClusterReply::Kick { disconnected }
        }
    }
}
