//! A sockhive worker process: it accepts on the shared public port, turns
//! connections into sockets and serves their protocol, and talks to its master
//! over the inherited IPC socket.
//!
//! Layout:
//! - [`front_door`]: one task per TCP connection up to the WebSocket handover; every pre-socket limit.
//! - [`upgrade`]: the upgrade checks (headers, origin) and their HTTP refusals.
//! - [`json_text`]: the JSON string escaping the hand-written encoders share.
//! - [`rewind`]: replays bytes read past the HTTP head.
//! - [`socketcluster`]: the SocketCluster protocol (codec and per-socket session).
//! - [`socketio`]: Socket.IO over Engine.IO (codec and per-socket session).
//! - [`auth`]: verifying and signing the JWTs sockets present.
//! - [`credentials`]: who a connection is: access token, session cookie or protocol token, in that order.
//! - [`passport`]: the web app's express-session + connect-redis + passport logins.
//! - [`sockets`]: the registry of this worker's sockets, which cluster queries read.
//! - [`channels`]: local channel subscribers and the worker's broker subscriptions.
//! - [`outbox`]: the bounded way into one socket from elsewhere in the worker.
//! - [`link`]: sending to the master.
//! - [`metrics`]: the worker's Prometheus registry.
//!
//! A worker is single-threaded (a current-thread tokio runtime): the node runs
//! one worker per core, so threads inside a worker would only add contention.

pub mod auth;
pub mod channels;
pub mod credentials;
pub mod front_door;
pub mod json_text;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod passport;
pub mod rewind;
pub mod socketcluster;
pub mod socketio;
pub mod sockets;
pub mod upgrade;

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::value::RawValue;
use sockhive_broker::pubsub::{Delivery, RedisChannels};
use sockhive_broker::records::RecordSink;
use sockhive_shared::config::Config;
use sockhive_shared::filter::Filter;
use sockhive_shared::ipc::{
    self, ClusterCommand, ClusterReply, ToMaster, ToWorker, WORKER_IPC_FD, WORKER_LISTENER_FD,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::WorkerMetrics;

use crate::auth::Auth;
use crate::channels::LocalChannels;
use crate::link::MasterLink;
use crate::outbox::Outbound;
use crate::sockets::SocketRegistry;

/// Close code and reason every socket gets when the worker drains.
pub const GOING_AWAY: u16 = 1001;

/// Everything a connection task may need, shared by all of them.
pub struct WorkerContext {
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
    pub sessions: Option<credentials::SessionSupport>,
    /// Sending to the master.
    pub master: MasterLink,
    /// Cancelled when the worker drains: sockets close with 1001, the accept loop ends.
    pub shutdown: CancellationToken,
    /// WebSocket connections open now, for `max_connections`.
    pub open_connections: AtomicUsize,
}

/// Entry point of `sockhive worker`: runs until drained or orphaned.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: the master's spawn placed the listening socket at fd 3 and this
    // worker's end of the IPC socket pair at fd 4 right before exec, with no
    // other owner in this process; nothing else in the worker opens them.
    let (listener, ipc) = unsafe {
        (
            OwnedFd::from_raw_fd(WORKER_LISTENER_FD),
            OwnedFd::from_raw_fd(WORKER_IPC_FD),
        )
    };
    nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
    )
    .context(
        "`sockhive worker` is started by `sockhive serve`, not by hand (fd 3 is not a socket)",
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(
        std::net::TcpListener::from(listener),
        std::os::unix::net::UnixStream::from(ipc),
    ))
}

async fn serve(
    listener: std::net::TcpListener,
    ipc: std::os::unix::net::UnixStream,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    ipc.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let (mut ipc_read, mut ipc_write) = UnixStream::from_std(ipc)?.into_split();
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
    let shutdown = CancellationToken::new();
    let node = config.server.node_id.clone();
    let (deliveries_tx, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    let (redis_channels, records) = match &config.broker.redis_url {
        Some(url) => (
            Some(RedisChannels::start(url, &node, deliveries_tx).context("redis broker")?),
            Some(RecordSink::start(url, &node).context("redis socket records")?),
        ),
        None => (None, None),
    };
    let (sessions, logouts) = match credentials::SessionSupport::start(&config, shutdown.clone())
        .context("session logins")?
    {
        Some((sessions, logouts)) => (Some(sessions), Some(logouts)),
        None => (None, None),
    };
    let ctx = Arc::new(WorkerContext {
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
    spawn_signal_drain(shutdown.clone())?;
    // Messages other nodes published reach this worker's subscribers.
    let delivering = ctx.clone();
    tokio::spawn(async move {
        while let Some(Delivery { channel, data }) = deliveries.recv().await {
            delivering
                .channels
                .deliver(&channel, &data, &delivering.metrics);
        }
    });
    if let Some(mut logouts) = logouts {
        // The app logged a session out: every socket of it loses its login.
        let revoking = ctx.clone();
        tokio::spawn(async move {
            while let Some(logout) = logouts.recv().await {
                let kick = revoking.config.auth.require_auth
                    || revoking.config.session.on_logout == sockhive_shared::config::OnLogout::Kick;
                let reached = revoking.sockets.push_to_web_session(&logout.sid, || {
                    if kick {
                        Outbound::Close(
                            socketcluster::codec::close_code::AUTH_REQUIRED,
                            "SessionNotFoundError: logged out".into(),
                        )
                    } else {
                        Outbound::Deauthenticate
                    }
                });
                revoking.metrics.logouts.inc_by(reached);
                tracing::info!(sockets = reached, cause = ?logout.cause, "web session logged out");
            }
        });
    }
    if let Some(records) = records {
        let resync = ctx.clone();
        let mut reconnects = records.reconnects();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                resync.sockets.resync_records();
            }
        });
    }
    let orphaned = CancellationToken::new();
    tokio::spawn(read_from_master(ctx.clone(), ipc_read, orphaned.clone()));
    ctx.master.send(&ToMaster::Ready);
    tracing::info!(worker = slot, pid = std::process::id(), "worker accepting");

    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(front_door::serve(ctx.clone(), stream, peer));
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
    let sockets = ctx.sockets.len();
    tracker.close();
    if orphaned.is_cancelled() {
        // The master is gone; nobody waits for an orderly drain.
        let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
        return Ok(());
    }
    // Leave the master a margin to see the exit before its own deadline.
    let deadline = ctx.config.server.drain_timeout.mul_f64(0.9);
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => tracing::info!(worker = slot, sockets, "worker drained"),
        Err(_) => tracing::warn!(
            worker = slot,
            remaining = tracker.len(),
            "worker drain deadline reached; exiting with connections open"
        ),
    }
    Ok(())
}

/// SIGTERM or SIGINT delivered to the worker itself (e.g. Ctrl-C reaching the
/// whole process group) drains it just as the master's `Drain` does.
fn spawn_signal_drain(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}

async fn read_from_master(
    ctx: Arc<WorkerContext>,
    mut ipc_read: tokio::net::unix::OwnedReadHalf,
    orphaned: CancellationToken,
) {
    loop {
        let message = match ipc::read_message::<_, ToWorker>(&mut ipc_read).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => {
                tracing::warn!(worker = ctx.slot, "master is gone; worker exiting");
                orphaned.cancel();
                ctx.shutdown.cancel();
                return;
            }
        };
        match message {
            ToWorker::Hello { .. } => tracing::warn!("unexpected second hello from the master"),
            ToWorker::Drain => ctx.shutdown.cancel(),
            ToWorker::MetricsRequest { request } => {
                ctx.master.send(&ToMaster::Metrics {
                    request,
                    families: ctx.metrics.snapshot(),
                });
            }
            ToWorker::Deliver { channel, data } => {
                ctx.channels.deliver(&channel, &data, &ctx.metrics)
            }
            ToWorker::Cluster { request, command } => {
                let reply = run_cluster_command(&ctx, command);
                ctx.master.send(&ToMaster::Cluster { request, reply });
            }
        }
    }
}

/// Evaluates one cluster query on this worker's sockets.
fn run_cluster_command(ctx: &WorkerContext, command: ClusterCommand) -> ClusterReply {
    let parse =
        |filter: &serde_json::Value| Filter::parse(filter).unwrap_or_else(|_| never_matching());
    match command {
        ClusterCommand::Query { filter, limit } => ClusterReply::Query {
            sockets: ctx.sockets.query(&parse(&filter), limit),
        },
        ClusterCommand::Emit {
            filter,
            event,
            data,
        } => {
            let data: Arc<RawValue> = Arc::from(data);
            let delivered = ctx
                .sockets
                .push_matching(&parse(&filter), || Outbound::Event {
                    event: event.clone(),
                    data: data.clone(),
                });
            ClusterReply::Emit { delivered }
        }
        ClusterCommand::PatchSession { id, changes } => {
            let session = ctx.sockets.update(&id, |entry| {
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
            let disconnected = ctx.sockets.push_matching(&parse(&filter), || {
                Outbound::Close(socketcluster::codec::close_code::ADMIN_KICK, reason.clone())
            });
            ClusterReply::Kick { disconnected }
        }
    }
}

/// The master validates filters before fanning them out; should one still
/// fail to parse here (a version skew), match nothing rather than everything.
fn never_matching() -> Filter {
    Filter::parse(&serde_json::json!({"id": {"$in": []}})).unwrap_or_default()
}
