//! A sockhive worker process: it accepts on the shared public port, turns
//! connections into sockets and serves their protocol, and talks to its master
//! over the inherited IPC socket.
//!
//! Layout, top to bottom (each layer imports only the layers below it):
//! - [`worker`]: the worker as a value ([`Worker`]) and its accept loop and drain.
//! - [`master_link`]: IPC with the master, both ways.
//! - [`front_door`]: one task per TCP connection up to the WebSocket handover;
//!   every pre-socket limit; the route table naming each protocol's path.
//! - [`protocol`]: the protocol adapters, SocketCluster and Socket.IO.
//! - [`socket`]: the protocol-free socket core: one loop per socket owning its
//!   login, channels, writes, deadlines and ending.
//! - [`context`]: the shared state ([`Worker`]) the layers above hold.
//! - [`hub`]: what sockets share: the registry, channel fan-out, the outbox.
//! - [`metrics`]: the Prometheus registry, every series created at zero.
//! - [`auth`]: who a connection is (access token, session cookie, protocol
//!   token): the credential pipeline, JWTs, the web app's passport sessions.
//! - [`master_link`], [`transport`], [`json_text`]: sending to the master;
//!   the stream a socket runs over, close frames and the lingering close;
//!   JSON string escaping.
//!
//! `cargo test -p sockhive-worker --test layers` checks that every
//! `crate::` import points down this list.
//!
//! A worker is single-threaded (a current-thread tokio runtime): the node runs
//! one worker per core, so threads inside a worker would only add contention.

pub mod app;
pub mod auth;
pub mod context;
pub mod front_door;
pub mod heap_trim;
pub mod http_client;
pub mod hub;
pub mod json_text;
pub mod master_link;
pub mod metrics;
pub mod protocol;
pub mod socket;
pub mod transport;
pub mod worker;

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Context;
use sockhive_shared::handoff::WORKER_HANDOFF_FD;
use sockhive_shared::ipc::{WORKER_IPC_FD, WORKER_LISTENER_FD};
use tokio_util::sync::CancellationToken;

pub use context::Worker;
pub use metrics::WorkerMetrics;

/// Entry point of `sockhive worker`: runs until drained or orphaned.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: the master's spawn placed the listening socket at fd 3, this
    // worker's end of the IPC socket pair at fd 4 and of the hand-off pair at
    // fd 5 right before exec, with no other owner in this process; nothing
    // else in the worker opens them.
    let (listener, ipc, handoff) = unsafe {
        (
            OwnedFd::from_raw_fd(WORKER_LISTENER_FD),
            OwnedFd::from_raw_fd(WORKER_IPC_FD),
            OwnedFd::from_raw_fd(WORKER_HANDOFF_FD),
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
    runtime.block_on(async {
        let listener = std::net::TcpListener::from(listener);
        let ipc = std::os::unix::net::UnixStream::from(ipc);
        listener.set_nonblocking(true)?;
        ipc.set_nonblocking(true)?;
        let shutdown = CancellationToken::new();
        spawn_signal_drain(shutdown.clone())?;
        worker::serve_process(
            tokio::net::TcpListener::from_std(listener)?,
            tokio::net::UnixStream::from_std(ipc)?,
            Some(handoff),
            shutdown,
            None,
        )
        .await
    })
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
