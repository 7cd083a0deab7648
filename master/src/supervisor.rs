//! The master's view of its workers: starting them, hearing from them,
//! replacing them when they die, rolling them on SIGHUP, draining them on
//! SIGTERM, and fanning requests out to them.
//!
//! All of it runs on the master's single-threaded runtime on its main thread.
//! That is a requirement, not a convenience: workers are forked from here and
//! the parent-death signal follows the forking thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use sockhive_broker::cluster::ClusterLink;
use sockhive_broker::embedded::{EmbeddedBroker, WorkerId};
use sockhive_shared::config::Config;
use sockhive_shared::handoff::{self, Handoff};
use sockhive_shared::ipc::{self, ClusterCommand, ClusterReply, ToMaster, ToWorker};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::listeners::PublicListeners;
use crate::metrics::MasterMetrics;
use crate::spawn::WorkerCommand;

/// Crashes of one slot within this window count towards its backoff.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Delay before the first respawn of a slot; doubles with each recent crash.
const FIRST_RESPAWN_DELAY: Duration = Duration::from_millis(100);
/// Upper bound of the respawn backoff.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(30);
/// Crashes within the window from which a slot is reported as crash-looping.
const CRASH_LOOP_THRESHOLD: usize = 5;
/// How long a new worker has to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// One live worker process.
struct WorkerProc {
    slot: u16,
    pid: Pid,
    /// Pre-encoded frames to the worker's writer task.
    tx: mpsc::UnboundedSender<Arc<[u8]>>,
    /// The master's end of the worker's connection hand-off pair.
    handoff: Arc<Handoff>,
    /// The worker said `Ready`: it accepts connections.
    ready: bool,
    /// Replaced by a successor (rolling restart): its exit is expected.
    retiring: bool,
}

/// A slot is a position in the worker set: worker 1..N.
#[derive(Default)]
struct Slot {
    /// The worker that serves this slot now (a retiring predecessor may still live).
    current: Option<WorkerId>,
    /// Recent crash times, for the backoff.
    crashes: VecDeque<Instant>,
}

/// Replies being collected for one fanned-out request.
struct Gather {
    waiting: HashSet<WorkerId>,
    replies: Vec<(u16, ToMaster)>,
    done: Option<oneshot::Sender<Vec<(u16, ToMaster)>>>,
}

#[derive(Default)]
struct State {
    workers: HashMap<WorkerId, WorkerProc>,
    slots: Vec<Slot>,
    next_worker: WorkerId,
    gathers: HashMap<u64, Gather>,
    /// Which local workers hold sockets of which user (the fast path of
    /// "every socket of user X").
    users: HashMap<String, HashSet<WorkerId>>,
}

/// The supervisor of one node's workers.
pub struct Master {
    /// The node's settings.
    pub config: Config,
    /// The master's own metrics.
    pub metrics: MasterMetrics,
    listeners: Mutex<PublicListeners>,
    state: Mutex<State>,
    broker: Mutex<EmbeddedBroker>,
    /// Woken on every change of worker state (ready, exit).
    changed: Notify,
    next_request: AtomicU64,
    restarting: AtomicBool,
    /// Cancelled when the node drains: no respawns, no new work.
    pub shutdown: CancellationToken,
    /// The link to the other nodes, when a Redis broker is configured.
    pub cluster: Option<Arc<ClusterLink>>,
    /// Other nodes' long-polling requests waiting for this node's workers.
    polls: Mutex<HashMap<u64, oneshot::Sender<ipc::PollAnswer>>>,
    /// Where the other nodes reach the public port (see [`Master::advertise`]).
    advertised: Mutex<Option<String>>,
}

/// Engine.IO's answer for a session nobody holds.
fn session_unknown() -> ipc::PollAnswer {
    ipc::PollAnswer {
        status: 400,
        content_type: "application/json".into(),
        body: r#"{"code":1,"message":"Session ID unknown"}"#.into(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Master {
    /// A master over already-bound public sockets; no worker runs yet.
    pub fn new(
        config: Config,
        listeners: PublicListeners,
        cluster: Option<Arc<ClusterLink>>,
    ) -> Arc<Master> {
        let slots = (0..config.server.workers)
            .map(|_| Slot::default())
            .collect();
        Arc::new(Master {
            config,
            metrics: MasterMetrics::new(),
            listeners: Mutex::new(listeners),
            state: Mutex::new(State {
                slots,
                next_worker: 1,
                ..State::default()
            }),
            broker: Mutex::new(EmbeddedBroker::new()),
            changed: Notify::new(),
            next_request: AtomicU64::new(1),
            restarting: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            cluster,
            polls: Mutex::default(),
            advertised: Mutex::default(),
        })
    }

    /// The local workers that hold sockets of any of `users`.
    pub(crate) fn workers_for_users(&self, users: &[String]) -> HashSet<WorkerId> {
        let state = lock(&self.state);
        users
            .iter()
            .filter_map(|u| state.users.get(u))
            .flatten()
            .copied()
            .collect()
    }

    /// Applies a worker's user index change; node-level changes go to the cluster index.
    fn index_users(&self, id: WorkerId, joined: Vec<String>, left: Vec<String>) {
        let (mut node_joined, mut node_left) = (Vec::new(), Vec::new());
        {
            let mut state = lock(&self.state);
            for user in joined {
                let workers = state.users.entry(user.clone()).or_default();
                if workers.is_empty() {
                    node_joined.push(user);
                }
                workers.insert(id);
            }
            for user in left {
                if let Some(workers) = state.users.get_mut(&user) {
                    workers.remove(&id);
                    if workers.is_empty() {
                        state.users.remove(&user);
                        node_left.push(user);
                    }
                }
            }
        }
        self.publish_user_index(node_joined, node_left);
    }

    fn forget_worker_users(&self, id: WorkerId) {
        let mut node_left = Vec::new();
        {
            let mut state = lock(&self.state);
            state.users.retain(|user, workers| {
                workers.remove(&id);
                if workers.is_empty() {
                    node_left.push(user.clone());
                }
                !workers.is_empty()
            });
        }
        self.publish_user_index(Vec::new(), node_left);
    }

    fn publish_user_index(&self, joined: Vec<String>, left: Vec<String>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if joined.is_empty() && left.is_empty() {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = cluster.index_users(&joined, &left).await {
                tracing::warn!(error = %e, "user index not updated in redis");
            }
        });
    }

    /// Starts every slot's worker and waits until all report ready.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.clone().spawn_reaper()?;
        for slot in 1..=self.config.server.workers {
            self.spawn_worker(slot)?;
        }
        let all_ready = async {
            loop {
                let notified = self.changed.notified();
                if self.ready_workers() == self.config.server.workers as usize {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(READY_TIMEOUT, all_ready)
            .await
            .map_err(|_| {
                anyhow::anyhow!("workers did not all report ready within {READY_TIMEOUT:?}")
            })
    }

    /// Number of slots whose current worker is ready.
    pub fn ready_workers(&self) -> usize {
        let state = lock(&self.state);
        state
            .slots
            .iter()
            .filter_map(|slot| slot.current)
            .filter(|id| state.workers.get(id).is_some_and(|w| w.ready))
            .count()
    }

    /// Slots without a ready worker, for `/readyz`.
    pub fn missing_slots(&self) -> Vec<u16> {
        let state = lock(&self.state);
        (1..=state.slots.len() as u16)
            .filter(|slot| {
                let current = state.slots[*slot as usize - 1].current;
                !current
                    .and_then(|id| state.workers.get(&id))
                    .is_some_and(|w| w.ready)
            })
            .collect()
    }

    fn spawn_worker(self: &Arc<Self>, slot: u16) -> anyhow::Result<WorkerId> {
        let (master_end, worker_end) = std::os::unix::net::UnixStream::pair()?;
        let (handoff_end, worker_handoff) = handoff::pair()?;
        let command = WorkerCommand::new(slot, self.config.server.log_format)?;
        let pid = {
            let listeners = lock(&self.listeners);
            if listeners.is_closed() {
                anyhow::bail!("node is draining");
            }
            command.spawn(
                listeners.for_slot(slot),
                worker_end.as_fd(),
                worker_handoff.as_fd(),
            )?
        };
        drop(worker_end);
        drop(worker_handoff);
        let handoff = Arc::new(Handoff::new(handoff_end)?);
        master_end.set_nonblocking(true)?;
        let (read, mut write) = UnixStream::from_std(master_end)?.into_split();
        let mut read = ipc::reader(read);
        let (tx, mut rx) = mpsc::unbounded_channel::<Arc<[u8]>>();
        let hello = ipc::encode(&ToWorker::Hello {
            slot,
            config: Box::new(self.config.clone()),
        })?;
        let _ = tx.send(hello.into());
        tokio::spawn(async move {
            // A failed write means the worker is gone; its reading loop sees it too.
            let _ = ipc::write_queued(&mut write, &mut rx).await;
        });
        let id = {
            let mut state = lock(&self.state);
            let id = state.next_worker;
            state.next_worker += 1;
            state.workers.insert(
                id,
                WorkerProc {
                    slot,
                    pid,
                    tx,
                    handoff: handoff.clone(),
                    ready: false,
                    retiring: false,
                },
            );
            state.slots[slot as usize - 1].current = Some(id);
            id
        };
        tracing::info!(worker = slot, pid = pid.as_raw(), "worker started");
        self.relay_handoffs(handoff);
        let master = self.clone();
        tokio::spawn(async move {
            loop {
                match ipc::read_message::<_, ToMaster>(&mut read).await {
                    Ok(Some(message)) => master.on_message(id, message),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = slot, error = %e, "bad message from worker; dropping its channel");
                        break;
                    }
                }
            }
        });
        Ok(id)
    }

    fn send_to(&self, id: WorkerId, frame: Arc<[u8]>) {
        if let Some(worker) = lock(&self.state).workers.get(&id) {
            let _ = worker.tx.send(frame);
        }
    }

    fn on_message(self: &Arc<Self>, id: WorkerId, message: ToMaster) {
        match message {
            ToMaster::Ready => {
                let mut state = lock(&self.state);
                if let Some(worker) = state.workers.get_mut(&id) {
                    worker.ready = true;
                    tracing::debug!(worker = worker.slot, "worker ready");
                }
                drop(state);
                self.update_worker_gauge();
                self.changed.notify_waiters();
            }
            ToMaster::Subscribe { channel } => {
                let mut broker = lock(&self.broker);
                broker.subscribe(id, channel);
                self.metrics.broker_routes.set(broker.route_count() as i64);
            }
            ToMaster::Unsubscribe { channel } => {
                let mut broker = lock(&self.broker);
                broker.unsubscribe(id, &channel);
                self.metrics.broker_routes.set(broker.route_count() as i64);
            }
            ToMaster::Publish { channel, data } => self.publish(&channel, data),
            ToMaster::Users { joined, left } => self.index_users(id, joined, left),
            ToMaster::PollForward {
                request,
                slot,
                node,
                call,
            } => self.forward_poll(id, request, slot, node, call),
            ToMaster::NodeAddress { request, node } => {
                let Some(slot) = lock(&self.state).workers.get(&id).map(|w| w.slot) else {
                    return;
                };
                let master = self.clone();
                tokio::spawn(async move {
                    let addr = master.node_address(node).await;
                    master.send_to_slot(slot, &ToWorker::NodeAddress { request, addr });
                });
            }
            ToMaster::PollAnswer {
                request,
                to: 0,
                answer,
            } => {
                if let Some(waiting) = lock(&self.polls).remove(&request) {
                    let _ = waiting.send(answer);
                }
            }
            ToMaster::PollAnswer {
                request,
                to,
                answer,
            } => {
                self.send_to_slot(to, &ToWorker::PollAnswer { request, answer });
            }
            ToMaster::Command { command } => {
                let master = self.clone();
                tokio::spawn(async move {
                    let outcome = master.cluster_command(command).await;
                    if let Some(error) = outcome.broker_error {
                        tracing::warn!(%error, "a hook's emit reached only this node");
                    }
                });
            }
            ToMaster::Metrics { request, .. } | ToMaster::Cluster { request, .. } => {
                self.collect(request, id, message)
            }
        }
    }

    /// Hands a long-polling request to the worker of `slot`, which owns its
    /// session: on this node directly, on another (`node`, its tag) through
    /// the broker. Without an owner (a restarting slot, a node gone) the
    /// forwarder gets Engine.IO's `Session ID unknown` at once.
    fn forward_poll(
        self: &Arc<Self>,
        from: WorkerId,
        request: u64,
        slot: u16,
        node: Option<u32>,
        call: ipc::PollCall,
    ) {
        let Some(from_slot) = lock(&self.state).workers.get(&from).map(|w| w.slot) else {
            return;
        };
        let Some(node) = node else {
            let call = ToWorker::PollCall {
                request,
                from: from_slot,
                call,
            };
            if !self.send_to_slot(slot, &call) {
                let answer = session_unknown();
                self.send_to_slot(from_slot, &ToWorker::PollAnswer { request, answer });
            }
            return;
        };
        let master = self.clone();
        tokio::spawn(async move {
            let answer = master
                .poll_on_node(node, slot, call)
                .await
                .unwrap_or_else(session_unknown);
            master.send_to_slot(from_slot, &ToWorker::PollAnswer { request, answer });
        });
    }

    /// Passes the connections one worker hands off to the worker of the slot
    /// each message names (its first two bytes), until the worker is gone.
    fn relay_handoffs(self: &Arc<Self>, from: Arc<Handoff>) {
        let master = self.clone();
        tokio::spawn(async move {
            while let Ok((message, connection)) = from.recv().await {
                let Some((slot, bytes)) = message.split_first_chunk::<2>() else {
                    continue;
                };
                let target = {
                    let state = lock(&master.state);
                    let slot = u16::from_be_bytes(*slot);
                    slot.checked_sub(1)
                        .and_then(|index| state.slots.get(index as usize))
                        .and_then(|s| s.current)
                        .and_then(|id| state.workers.get(&id))
                        .map(|w| w.handoff.clone())
                };
                if let Some(target) = target {
                    let _ = target.send(bytes, connection.as_fd()).await;
                }
                // The master's copy of the connection closes here.
            }
        });
    }

    /// How long a forwarded long-polling request may take: a held `GET`
    /// lasts up to the ping interval plus timeout.
    fn poll_deadline(&self) -> Duration {
        let limits = &self.config.limits;
        limits.socketio_ping_interval + limits.socketio_ping_timeout + Duration::from_secs(5)
    }

    /// The advertised public address of the live node whose tag is `node`.
    async fn node_address(&self, node: u32) -> Option<String> {
        let link = self.cluster.clone()?;
        let live = link.live_nodes().await.ok()?;
        let owner = live.into_iter().find(|id| ipc::node_tag(id) == node)?;
        let info = link.node_info(&owner).await.ok()??;
        info.get("public")?.as_str().map(str::to_owned)
    }

    /// Where the other nodes reach this node's public port: `--advertise-addr`,
    /// else the bound address, or this host's name when bound to every
    /// interface. Set once the public port is bound, and written to the
    /// cluster before the node says it is up.
    pub async fn advertise(&self, public: std::net::SocketAddr) {
        let addr = match &self.config.server.advertise_addr {
            Some(addr) => addr.clone(),
            None if public.ip().is_unspecified() => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_default();
                format!(
                    "{}:{}",
                    if host.is_empty() { "localhost" } else { &host },
                    public.port()
                )
            }
            None => public.to_string(),
        };
        *lock(&self.advertised) = Some(addr);
        self.update_worker_gauge();
        if let Some(link) = &self.cluster {
            link.announce_now().await;
        }
    }

    /// Runs a long-polling request on the node whose tag is `node`.
    async fn poll_on_node(
        &self,
        node: u32,
        slot: u16,
        call: ipc::PollCall,
    ) -> Option<ipc::PollAnswer> {
        let link = self.cluster.clone()?;
        let live = link.live_nodes().await.ok()?;
        let owner = live.into_iter().find(|id| ipc::node_tag(id) == node)?;
        let replies = link
            .request(
                ClusterCommand::Poll { slot, call },
                vec![owner],
                self.poll_deadline(),
            )
            .await;
        replies.into_iter().find_map(|reply| match reply.reply {
            ClusterReply::Poll { answer } => answer,
            _ => None,
        })
    }

    /// Runs another node's long-polling request on this node's worker `slot`.
    pub async fn poll_local(&self, slot: u16, call: ipc::PollCall) -> Option<ipc::PollAnswer> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        lock(&self.polls).insert(request, done);
        let sent = self.send_to_slot(
            slot,
            &ToWorker::PollCall {
                request,
                from: 0,
                call,
            },
        );
        let answer = if sent {
            tokio::time::timeout(self.poll_deadline(), answer)
                .await
                .ok()?
                .ok()
        } else {
            None
        };
        lock(&self.polls).remove(&request);
        answer
    }

    /// Sends one message to the current worker of `slot`; false when none.
    fn send_to_slot(&self, slot: u16, message: &ToWorker) -> bool {
        let Ok(frame) = ipc::encode(message) else {
            return false;
        };
        let state = lock(&self.state);
        let current = slot
            .checked_sub(1)
            .and_then(|index| state.slots.get(index as usize))
            .and_then(|s| s.current)
            .and_then(|id| state.workers.get(&id));
        match current {
            Some(worker) => worker.tx.send(frame.into()).is_ok(),
            None => false,
        }
    }

    /// Forwards a publish to every subscribed worker, encoded once.
    pub fn publish(&self, channel: &str, data: Box<serde_json::value::RawValue>) {
        let targets: Vec<WorkerId> = lock(&self.broker).subscribers(channel).collect();
        if targets.is_empty() {
            return;
        }
        let Ok(frame) = ipc::encode(&ToWorker::Deliver {
            channel: channel.to_string(),
            data,
        }) else {
            return;
        };
        let frame: Arc<[u8]> = frame.into();
        let state = lock(&self.state);
        for id in targets {
            if let Some(worker) = state.workers.get(&id) {
                let _ = worker.tx.send(frame.clone());
            }
        }
    }

    fn collect(&self, request: u64, id: WorkerId, message: ToMaster) {
        let mut state = lock(&self.state);
        let slot = state.workers.get(&id).map(|w| w.slot).unwrap_or(0);
        let Some(gather) = state.gathers.get_mut(&request) else {
            return;
        };
        if gather.waiting.remove(&id) {
            gather.replies.push((slot, message));
        }
        if gather.waiting.is_empty() {
            if let Some(gather) = state.gathers.remove(&request) {
                if let Some(done) = gather.done {
                    let _ = done.send(gather.replies);
                }
            }
        }
    }

    /// Sends a request to every ready worker and returns the replies that
    /// arrived before `timeout`, each with its worker's slot, plus how many
    /// workers were asked.
    pub async fn gather(
        &self,
        make: impl FnOnce(u64) -> ToWorker,
        timeout: Duration,
    ) -> (Vec<(u16, ToMaster)>, usize) {
        self.gather_from(None, make, timeout).await
    }

    /// [`Master::gather`] restricted to `only` (worker ids), when given.
    pub(crate) async fn gather_from(
        &self,
        only: Option<&HashSet<WorkerId>>,
        make: impl FnOnce(u64) -> ToWorker,
        timeout: Duration,
    ) -> (Vec<(u16, ToMaster)>, usize) {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let Ok(frame) = ipc::encode(&make(request)) else {
            return (Vec::new(), 0);
        };
        let frame: Arc<[u8]> = frame.into();
        let (done, replies) = oneshot::channel();
        let asked = {
            let mut state = lock(&self.state);
            let targets: HashSet<WorkerId> = state
                .workers
                .iter()
                .filter(|(id, w)| w.ready && only.is_none_or(|only| only.contains(id)))
                .map(|(id, _)| *id)
                .collect();
            for id in &targets {
                let _ = state.workers[id].tx.send(frame.clone());
            }
            let asked = targets.len();
            if asked == 0 {
                return (Vec::new(), 0);
            }
            state.gathers.insert(
                request,
                Gather {
                    waiting: targets,
                    replies: Vec::new(),
                    done: Some(done),
                },
            );
            asked
        };
        match tokio::time::timeout(timeout, replies).await {
            Ok(Ok(replies)) => (replies, asked),
            _ => {
                // Late or missing workers: answer with what arrived.
                let partial = lock(&self.state)
                    .gathers
                    .remove(&request)
                    .map(|g| g.replies)
                    .unwrap_or_default();
                (partial, asked)
            }
        }
    }

    fn update_worker_gauge(&self) {
        let ready = self.ready_workers();
        self.metrics.workers.set(ready as i64);
        if let Some(cluster) = &self.cluster {
            let pids: Vec<i32> = lock(&self.state)
                .workers
                .values()
                .filter(|w| w.ready && !w.retiring)
                .map(|w| w.pid.as_raw())
                .collect();
            cluster.set_info(&serde_json::json!({
                "public": *lock(&self.advertised),
                "pid": std::process::id(),
                "workers": self.config.server.workers,
                "workers_ready": ready,
                "worker_pids": pids,
            }));
        }
    }

    /// Reaps exited children on SIGCHLD and decides what each exit means.
    fn spawn_reaper(self: Arc<Self>) -> std::io::Result<()> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        tokio::spawn(async move {
            loop {
                // Signals coalesce: one SIGCHLD may stand for several exits.
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) => {
                            self.on_exit(pid, format!("exit code {code}"))
                        }
                        Ok(WaitStatus::Signaled(pid, signal, _)) => {
                            self.on_exit(pid, format!("signal {signal}"))
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(())
    }

    fn on_exit(self: &Arc<Self>, pid: Pid, how: String) {
        let mut state = lock(&self.state);
        let Some((&id, _)) = state.workers.iter().find(|(_, w)| w.pid == pid) else {
            return;
        };
        let Some(worker) = state.workers.remove(&id) else {
            return;
        };
        // Requests waiting on this worker stop waiting for it.
        let finished: Vec<u64> = state
            .gathers
            .iter_mut()
            .filter_map(|(request, g)| {
                (g.waiting.remove(&id) && g.waiting.is_empty()).then_some(*request)
            })
            .collect();
        for request in finished {
            if let Some(done) = state.gathers.remove(&request).and_then(|g| g.done) {
                let _ = done.send(Vec::new());
            }
        }
        let slot = &mut state.slots[worker.slot as usize - 1];
        let was_current = slot.current == Some(id);
        if was_current {
            slot.current = None;
        }
        let expected = worker.retiring || self.shutdown.is_cancelled();
        let mut delay = None;
        if !expected && was_current {
            let now = Instant::now();
            slot.crashes.push_back(now);
            while slot
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
            {
                slot.crashes.pop_front();
            }
            let recent = slot.crashes.len();
            let backoff = FIRST_RESPAWN_DELAY
                .saturating_mul(1 << (recent - 1).min(16) as u32)
                .min(MAX_RESPAWN_DELAY);
            delay = Some(backoff);
            if recent >= CRASH_LOOP_THRESHOLD {
                tracing::error!(worker = worker.slot, pid = pid.as_raw(), crashes = recent, next_restart_in = ?backoff, "CRASH LOOP: worker keeps dying ({how}); braking restarts");
            } else {
                tracing::error!(
                    worker = worker.slot,
                    pid = pid.as_raw(),
                    "worker died ({how}); restarting in {backoff:?}"
                );
            }
        } else {
            tracing::info!(
                worker = worker.slot,
                pid = pid.as_raw(),
                "worker exited ({how})"
            );
        }
        drop(state);
        self.forget_worker_users(id);
        {
            let mut broker = lock(&self.broker);
            broker.remove_worker(id);
            self.metrics.broker_routes.set(broker.route_count() as i64);
        }
        self.update_worker_gauge();
        self.changed.notify_waiters();
        if let Some(delay) = delay {
            self.metrics.worker_restarts.inc();
            let master = self.clone();
            let slot = worker.slot;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if master.shutdown.is_cancelled() {
                    return;
                }
                if let Err(e) = master.spawn_worker(slot) {
                    tracing::error!(worker = slot, error = %e, "cannot restart worker");
                }
            });
        }
    }

    fn live_workers(&self) -> usize {
        lock(&self.state).workers.len()
    }

    async fn wait_until(&self, deadline: Instant, mut done: impl FnMut(&Self) -> bool) -> bool {
        loop {
            let notified = self.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return done(self);
            }
        }
    }

    /// SIGHUP: replaces the workers one slot at a time. Each successor is
    /// started and ready before its predecessor drains, so at every moment at
    /// least N workers accept (in `reuseport` mode they share the slot's
    /// socket, so no queued connection is lost).
    pub async fn rolling_restart(self: &Arc<Self>) {
        if self.restarting.swap(true, Ordering::SeqCst) {
            tracing::warn!("rolling restart already in progress; SIGHUP ignored");
            return;
        }
        tracing::info!("rolling restart of {} workers", self.config.server.workers);
        for slot in 1..=self.config.server.workers {
            if self.shutdown.is_cancelled() {
                break;
            }
            let old = lock(&self.state).slots[slot as usize - 1].current;
            let new = match self.spawn_worker(slot) {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(worker = slot, error = %e, "rolling restart: cannot start successor; stopping the restart");
                    break;
                }
            };
            let ready = self
                .wait_until(Instant::now() + READY_TIMEOUT, |m| {
                    lock(&m.state).workers.get(&new).is_some_and(|w| w.ready)
                })
                .await;
            if !ready {
                tracing::error!(
                    worker = slot,
                    "rolling restart: successor did not become ready; stopping the restart"
                );
                break;
            }
            self.update_worker_gauge();
            if let Some(old) = old {
                let frame = {
                    let mut state = lock(&self.state);
                    match state.workers.get_mut(&old) {
                        Some(worker) => {
                            worker.retiring = true;
                            ipc::encode(&ToWorker::Drain).ok()
                        }
                        None => None,
                    }
                };
                if let Some(frame) = frame {
                    self.send_to(old, frame.into());
                }
                let deadline = Instant::now() + self.config.server.drain_timeout;
                if !self
                    .wait_until(deadline, |m| !lock(&m.state).workers.contains_key(&old))
                    .await
                {
                    self.kill_worker(old);
                }
            }
        }
        self.restarting.store(false, Ordering::SeqCst);
        tracing::info!("rolling restart finished");
    }

    fn kill_worker(&self, id: WorkerId) {
        if let Some(worker) = lock(&self.state).workers.get(&id) {
            tracing::warn!(
                worker = worker.slot,
                pid = worker.pid.as_raw(),
                "worker did not exit in time; killing it"
            );
            let _ = kill(worker.pid, Signal::SIGKILL);
        }
    }

    /// SIGTERM/SIGINT: stop accepting, tell every worker to close its sockets
    /// with 1001, and wait for them under the drain deadline; reports whether
    /// the deadline had to force the exit.
    pub async fn drain(self: &Arc<Self>) -> bool {
        self.shutdown.cancel();
        lock(&self.listeners).close();
        let deadline = Instant::now() + self.config.server.drain_timeout;
        tracing::info!(workers = self.live_workers(), timeout = ?self.config.server.drain_timeout, "draining");
        if let Ok(frame) = ipc::encode(&ToWorker::Drain) {
            let frame: Arc<[u8]> = frame.into();
            for worker in lock(&self.state).workers.values() {
                let _ = worker.tx.send(frame.clone());
            }
        }
        let clean = self.wait_until(deadline, |m| m.live_workers() == 0).await;
        if clean {
            tracing::info!("drained: every worker exited before the deadline");
        } else {
            let pids: Vec<Pid> = lock(&self.state).workers.values().map(|w| w.pid).collect();
            tracing::warn!(
                remaining = pids.len(),
                "drain deadline reached: killing the remaining workers"
            );
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            // Reap them so none outlives the master as a zombie.
            self.wait_until(Instant::now() + Duration::from_secs(2), |m| {
                m.live_workers() == 0
            })
            .await;
        }
        clean
    }
}
