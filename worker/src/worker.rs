//! The worker entry: builds the shared [`Worker`] once, reads the master's
//! messages, accepts until the shutdown, and drains with a deadline.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sockhive_broker::pubsub::{Delivery, RedisChannels};
use sockhive_broker::records::RecordSink;
use sockhive_shared::channel_rules::ChannelRules;
use sockhive_shared::ipc::{self, ToMaster, ToWorker};
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sockhive_shared::handoff::Handoff;

use crate::app::http::HttpHooks;
use crate::app::AppHooks;
use crate::auth::passport::LogoutCause;
use crate::auth::{Credentials, SessionSupport};
use crate::context::Worker;
use crate::hub::channels::LocalChannels;
use crate::hub::outbox::Outbound;
use crate::hub::registry::SocketRegistry;
use crate::master_link::MasterLink;
use crate::metrics::WorkerMetrics;

/// Serves the public port until `shutdown` is cancelled (or the master goes
/// away), then drains. `ipc` is this worker's end of the master's socket
/// pair; the master's `Hello` comes first on it. The app hooks are the
/// configured ones (`--hook-url`), if any.
pub async fn serve(
    listener: TcpListener,
    ipc: UnixStream,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_hooks(listener, ipc, shutdown, None).await
}

/// [`serve`], answering the app hooks with `hooks` (an embedding Rust
/// program's own [`AppHooks`], in-process) instead of `--hook-url`'s HTTP
/// calls. `--hooks` still says which hooks are called.
pub async fn serve_with_hooks(
    listener: TcpListener,
    ipc: UnixStream,
    shutdown: CancellationToken,
    hooks: Option<Arc<dyn AppHooks>>,
) -> anyhow::Result<()> {
    serve_process(listener, ipc, None, shutdown, hooks).await
}

/// [`serve_with_hooks`] with the node's connection hand-off socket (fd 5 of
/// a worker the master spawned), through which the WebSocket that upgrades a
/// long-polling session reaches the worker that holds the session.
pub async fn serve_process(
    listener: TcpListener,
    ipc: UnixStream,
    handoff: Option<std::os::fd::OwnedFd>,
    shutdown: CancellationToken,
    hooks: Option<Arc<dyn AppHooks>>,
) -> anyhow::Result<()> {
    let handoff = handoff
        .map(Handoff::new)
        .transpose()
        .context("the hand-off socket")?
        .map(Arc::new);
    let (ipc_read, mut ipc_write) = ipc.into_split();
    let mut ipc_read = ipc::reader(ipc_read);
    let Some(ToWorker::Hello { slot, config }) = ipc::read_message(&mut ipc_read).await? else {
        bail!("the master did not introduce this worker");
    };
    let (master, mut outgoing) = MasterLink::new();
    tokio::spawn(async move {
        // A failed write means the master is gone; the reading loop sees it too.
        let _ = ipc::write_queued(&mut ipc_write, &mut outgoing).await;
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
    let metrics = WorkerMetrics::new();
    let credentials = Credentials::new(&config, sessions, metrics.session_logins.clone())
        .context("auth settings")?;
    let app: Option<Arc<dyn AppHooks>> = match hooks {
        Some(hooks) => Some(hooks),
        None if config.hooks.hook_url.is_some() => Some(Arc::new(
            HttpHooks::new(&config.hooks, slot, metrics.clone()).context("app hooks")?,
        )),
        None => None,
    };
    let worker = Arc::new(Worker {
        handoff: handoff.clone(),
        app,
        polling: Arc::default(),
        poll_forwards: Default::default(),
        node_tag: sockhive_shared::ipc::node_tag(&config.server.node_id),
        node_addresses: Default::default(),
        slot,
        credentials: Arc::new(credentials),
        sockets: SocketRegistry::new(node.clone(), slot, master.clone(), records.clone()),
        channels: LocalChannels::new(master.clone(), redis_channels),
        channel_rules: ChannelRules::compile(&config.channels.rule).context("channel rules")?,
        metrics,
        config: *config,
        master,
        shutdown: shutdown.clone(),
        open_connections: AtomicUsize::new(0),
    });
    let announcing = worker.clone();
    tokio::spawn(async move { announcing.sockets.announce_leaves().await });
    if let Some(handoff) = handoff {
        // WebSockets other workers received for this worker's polling sessions.
        let receiving = worker.clone();
        tokio::spawn(async move {
            while let Ok((bytes, connection)) = handoff.recv().await {
                let ctx = receiving.clone();
                tokio::spawn(crate::front_door::polling::take_handoff(
                    ctx, bytes, connection,
                ));
            }
        });
    }
    // Messages other nodes published reach this worker's subscribers.
    let delivering = worker.clone();
    tokio::spawn(async move {
        while let Some(Delivery { channel, data }) = deliveries.recv().await {
            delivering.channels.deliver(&channel, &data);
        }
    });
    if let Some(mut logouts) = logouts {
        // The app logged a session out: every socket of it hears so (the
        // socket core decides between deauthentication and closing).
        let revoking = worker.clone();
        tokio::spawn(async move {
            while let Some(logout) = logouts.recv().await {
                // A changed user record updates the login in place; every
                // other cause ends it.
                if let (LogoutCause::UserRecordChanged, Some(user)) = (&logout.cause, &logout.user)
                {
                    let reached = revoking.sockets.push_to_web_session(&logout.sid, || {
                        Outbound::UserChanged(Box::new(user.clone()))
                    });
                    tracing::info!(sockets = reached, "a logged-in user's record changed");
                    continue;
                }
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
    tokio::spawn(crate::heap_trim::run(worker.clone()));
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

/// Reads the master's messages until it goes away; then the worker is
/// orphaned and drains (`orphaned` tells the drain not to wait long).
async fn read_from_master(
    worker: Arc<Worker>,
    mut ipc_read: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
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
                worker.channels.deliver(&channel, &data);
            }
            ToWorker::PollCall {
                request,
                from,
                call,
            } => {
                let owner = worker.clone();
                tokio::spawn(async move {
                    let answer = crate::front_door::polling::answer_forwarded(&owner, call).await;
                    owner.master.send(&ToMaster::PollAnswer {
                        request,
                        to: from,
                        answer,
                    });
                });
            }
            ToWorker::PollAnswer { request, answer } => {
                worker.poll_forwards.complete(request, answer)
            }
            ToWorker::NodeAddress { request, addr } => {
                worker.node_addresses.complete(request, addr)
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
    worker: &Worker,
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
        // Another node's long-polling request goes to its worker through
        // the master (ToWorker::PollCall), never as a fanned-out command.
        ClusterCommand::Poll { .. } => ClusterReply::Poll { answer: None },
        ClusterCommand::PatchSession { id, changes } => {
            let session = worker.sockets.patch_session(&id, changes);
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
