//! The worker as a value: what every connection shares, built once, and the
//! accept loop with its drain.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sockhive_broker::pubsub::{Delivery, RedisChannels};
use sockhive_broker::records::RecordSink;
use sockhive_shared::config::Config;
use sockhive_shared::ipc::{self, ToMaster, ToWorker};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::credentials::SessionSupport;
use crate::hub::channels::LocalChannels;
use crate::hub::outbox::Outbound;
use crate::hub::registry::SocketRegistry;
use crate::master_link::{read_from_master, MasterLink};
use crate::metrics::WorkerMetrics;

/// Everything a connection task may need, shared by all of them.
pub struct Worker {
    /// This worker's slot, 1-based; what records show as `worker`.
    pub slot: u16,
    /// The node's settings, as the master resolved them.
    pub config: Config,
    /// The worker's metrics.
    pub metrics: WorkerMetrics,
    /// The worker's sockets.
    pub sockets: SocketRegistry,
    /// Local channel subscriptions.
    pub channels: LocalChannels,
    /// JWT verification and signing.
    pub auth: Auth,
    /// Session-cookie logins, when configured.
    pub sessions: Option<SessionSupport>,
    /// Sending to the master.
    pub master: MasterLink,
    /// Cancelled when the worker drains: sockets close with 1001, the accept loop ends.
    pub shutdown: CancellationToken,
    /// WebSocket connections open now, for `max_connections`.
    pub open_connections: AtomicUsize,
}

/// Serves the public port until `shutdown` is cancelled (or the master goes
/// away), then drains. `ipc` is this worker's end of the master's socket
/// pair; the master's `Hello` comes first on it.
pub async fn serve(
    listener: TcpListener,
    ipc: UnixStream,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (mut ipc_read, mut ipc_write) = ipc.into_split();
    let Some(ToWorker::Hello { slot, config }) = ipc::read_message(&mut ipc_read).await? else {
        bail!("the master did not introduce this worker");
    };
    let (master, mut outgoing) = MasterLink::new();
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if ipc_write.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let node = config.server.node_id.clone();
    let (deliveries_tx, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    let (redis_channels, records) = match &config.broker.redis_url {
        Some(url) => (
            Some(RedisChannels::start(url, &node, deliveries_tx).context("redis broker")?),
            Some(RecordSink::start(url, &node).context("redis socket records")?),
        ),
        None => (None, None),
    };
    let (sessions, logouts) =
        match SessionSupport::start(&config, shutdown.clone()).context("session logins")? {
            Some((sessions, logouts)) => (Some(sessions), Some(logouts)),
            None => (None, None),
        };
    let worker = Arc::new(Worker {
        slot,
        sessions,
        auth: Auth::new(&config.auth).context("auth settings")?,
        sockets: SocketRegistry::new(node.clone(), slot, master.clone(), records.clone()),
        channels: LocalChannels::new(master.clone(), redis_channels),
        metrics: WorkerMetrics::new(),
        config: *config,
        master,
        shutdown: shutdown.clone(),
        open_connections: AtomicUsize::new(0),
    });
    // Messages other nodes published reach this worker's subscribers.
    let delivering = worker.clone();
    tokio::spawn(async move {
        while let Some(Delivery { channel, data }) = deliveries.recv().await {
            delivering
                .channels
                .deliver(&channel, &data, &delivering.metrics);
        }
    });
    if let Some(mut logouts) = logouts {
        // The app logged a session out: every socket of it hears so (the
        // socket core decides between deauthentication and closing).
        let revoking = worker.clone();
        tokio::spawn(async move {
            while let Some(logout) = logouts.recv().await {
                let reached = revoking
                    .sockets
                    .push_to_web_session(&logout.sid, || Outbound::LoggedOut);
                revoking.metrics.logouts.inc_by(reached);
                tracing::info!(sockets = reached, cause = ?logout.cause, "web session logged out");
            }
        });
    }
    if let Some(records) = records {
        let resync = worker.clone();
        let mut reconnects = records.reconnects();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                resync.sockets.resync_records();
            }
        });
    }
    let orphaned = CancellationToken::new();
    tokio::spawn(read_from_master(worker.clone(), ipc_read, orphaned.clone()));
    worker.master.send(&ToMaster::Ready);
    tracing::info!(worker = slot, pid = std::process::id(), "worker accepting");
    accept_until_drained(worker, listener, orphaned).await;
    Ok(())
}

/// Accepts until the shutdown, then waits for the sockets to close under a
/// deadline and says which won.
async fn accept_until_drained(
    worker: Arc<Worker>,
    listener: TcpListener,
    orphaned: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = worker.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(crate::front_door::serve(worker.clone(), stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the
                    // connections already open are unaffected.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    let sockets = worker.sockets.len();
    tracker.close();
    if orphaned.is_cancelled() {
        // The master is gone; nobody waits for an orderly drain.
        let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
        return;
    }
    // Leave the master a margin to see the exit before its own deadline.
    let deadline = worker.config.server.drain_timeout.mul_f64(0.9);
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => tracing::info!(worker = worker.slot, sockets, "worker drained"),
        Err(_) => tracing::warn!(
            worker = worker.slot,
            remaining = tracker.len(),
            "worker drain deadline reached; exiting with connections open"
        ),
    }
}
