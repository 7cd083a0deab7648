//! A TCP proxy the fault tests put between sockhive and Redis, so they can
//! make Redis slow or unreachable for one node without touching the server
//! (killing or freezing `redis-server` would hit every node at once).
//!
//! It runs on its own thread and runtime: a test that blocks its own thread
//! (starting a node, waiting for a process) must not stall the traffic that
//! passes through here, or the measured fault would be the test's own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards bytes both ways (after the configured latency).
    Pass,
    /// Every open connection is dropped and each new one reset at once:
    /// what a node sees when Redis is partitioned away and refuses it.
    Cut,
    /// Nothing moves, nothing closes: connections stay open, bytes wait (in
    /// the kernel's buffers, as TCP retransmits them) and flow once thawed.
    /// A partition that drops packets, shorter than TCP gives up on.
    Freeze,
}

/// A proxy in front of one upstream address; stopped on drop.
pub struct FaultProxy {
    /// Where clients connect instead of the upstream.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    latency_ms: Arc<AtomicU64>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// Starts a pass-through proxy on a free loopback port in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy address");
        let (mode, modes) = watch::channel(Mode::Pass);
        let latency_ms = Arc::new(AtomicU64::new(0));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let latency = latency_ms.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, upstream, modes, latency) => {}
                    _ = stopped => {}
                }
            });
        });
        FaultProxy {
            addr,
            mode,
            latency_ms,
            _shutdown: shutdown,
        }
    }

    /// `redis://` URL of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every chunk Redis sends back by `latency`: each request's round
    /// trip grows by that much, without limiting throughput.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Drops every connection and resets new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        let _ = self.mode.send(Mode::Cut);
    }

    /// Holds every byte, both ways, in open and new connections, until
    /// [`FaultProxy::restore`].
    pub fn freeze(&self) {
        let _ = self.mode.send(Mode::Freeze);
    }

    /// Back to plain pass-through: no latency, connections accepted.
    pub fn restore(&self) {
        self.set_latency(Duration::ZERO);
        let _ = self.mode.send(Mode::Pass);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    modes: watch::Receiver<Mode>,
    latency: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *modes.borrow() == Mode::Cut {
            // A reset, not a clean close: the client's connect fails like a refusal.
            reset_on_drop(&client);
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, upstream, modes.clone(), latency.clone()));
    }
}

/// Carries one connection until either side closes or the proxy is cut.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut modes: watch::Receiver<Mode>,
    latency: Arc<AtomicU64>,
) {
    // A connection made while frozen gets no answer until the thaw.
    if modes.wait_for(|m| *m == Mode::Pass).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    reset_on_drop(&client);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = copy(client_read, server_write, None, modes.clone());
    let down = copy(server_read, client_write, Some(latency), modes.clone());
    let cut = async {
        while modes.changed().await.is_ok() {
            if *modes.borrow() == Mode::Cut {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    // Dropping the halves (linger 0) resets the client's connection at once.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}

/// Copies `from` to `to`, each chunk held back by the latency current when it
/// was read (order kept: a reader queues, a writer waits out each due time);
/// while frozen it reads nothing, so the sender's buffers fill and wait.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Option<Arc<AtomicU64>>,
    mut modes: watch::Receiver<Mode>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if modes.wait_for(|m| *m != Mode::Freeze).await.is_err() {
                return;
            }
            let read = tokio::select! {
                read = from.read(&mut buf) => read,
                // Frozen while waiting: what arrives from now on waits too.
                _ = modes.wait_for(|m| *m == Mode::Freeze) => continue,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = latency
                        .as_ref()
                        .map(|l| Duration::from_millis(l.load(Ordering::SeqCst)))
                        .unwrap_or_default();
                    if tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The reader ending (EOF) still lets queued chunks out before the writer ends.
    tokio::join!(reader, writer);
}

/// Makes dropping `stream` send a reset. (Tokio deprecates `set_linger`
/// because a non-zero linger blocks on drop; a zero linger never does.)
#[allow(deprecated)]
fn reset_on_drop(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}
