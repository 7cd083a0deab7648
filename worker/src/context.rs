//! What every task of a worker shares, built once by the worker entry
//! ([`crate::worker::serve`]) and handed down as `Arc<Worker>`: the layers
//! below the socket core (hub, credentials) never see it.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use sockhive_shared::channel_rules::ChannelRules;
use sockhive_shared::config::Config;
use tokio_util::sync::CancellationToken;

use crate::app::{AppHooks, HookKind};
use crate::auth::Credentials;
use crate::hub::channels::LocalChannels;
use crate::hub::registry::SocketRegistry;
use crate::master_link::{MasterLink, Replies};
use crate::metrics::WorkerMetrics;
use crate::transport::polling::PollingSessions;
use sockhive_shared::handoff::Handoff;
use sockhive_shared::ipc::PollAnswer;

/// A worker's shared state.
pub struct Worker {
    /// This worker's slot, 1-based; what records show as `worker`.
    pub slot: u16,
    /// The node's settings, as the master resolved them.
    pub config: Config,
    /// The worker's metrics.
    pub metrics: WorkerMetrics,
    /// The worker's sockets, as cluster queries see them.
    pub sockets: SocketRegistry,
    /// Local channel subscriptions and the broker behind them.
    pub channels: LocalChannels,
    /// `--channel-auth rules`, compiled once (empty under the other modes).
    pub channel_rules: ChannelRules,
    /// Who connections are: JWT keys and session logins.
    pub credentials: Arc<Credentials>,
    /// Sending to the master.
    pub master: MasterLink,
    /// Cancelled when the worker drains: sockets close with 1001, the accept loop ends.
    pub shutdown: CancellationToken,
    /// WebSocket connections open now, for `max_connections`.
    pub open_connections: AtomicUsize,
    /// The Socket.IO long-polling sessions this worker holds, by id.
    pub polling: Arc<PollingSessions>,
    /// This node's tag in long-polling session ids (a hash of `--node-id`,
    /// computed once rather than per request).
    pub node_tag: u32,
    /// Where connections go to another worker of this node (the WebSocket of
    /// another worker's long-polling session); absent in-process.
    pub handoff: Option<Arc<Handoff>>,
    /// Long-polling requests handed to their sessions' workers through the master.
    pub poll_forwards: Replies<PollAnswer>,
    /// Questions to the master for another node's public address.
    pub node_addresses: Replies<Option<String>>,
    /// The application's hooks: over HTTP with `--hook-url`, or an
    /// embedder's own; `None`: no hooks, the contract without them.
    pub app: Option<Arc<dyn AppHooks>>,
}

impl Worker {
    /// Whether `hook` is called: there are hooks, and `--hooks` lists it.
    pub fn hook_on(&self, hook: HookKind) -> bool {
        self.app.is_some() && self.config.hooks.hooks.contains(&hook)
    }
}
