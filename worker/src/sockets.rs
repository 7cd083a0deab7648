//! Every socket this worker holds, as the cluster's queries see them.
//!
//! The registry is the worker's answer to filterSocketsByUser: each entry
//! carries what a socket record shows (user, claims, channels, session) and
//! the [`Outbox`] to reach it, so query, emit and kick are one pass over it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use sockhive_shared::filter::Filter;

use crate::outbox::{Outbound, Outbox};

/// What the worker knows about one open socket.
#[derive(Debug)]
pub struct SocketEntry {
    /// `socketcluster` or `socketio`.
    pub protocol: &'static str,
    /// The peer address as `ip:port`.
    pub remote_addr: String,
    /// RFC 3339 time the socket was accepted.
    pub connected_at: String,
    /// True while the socket carries a verified credential.
    pub logged_in: bool,
    /// The resolved user, `null` when anonymous.
    pub user: Value,
    /// The verified JWT claims, `null` when none.
    pub auth: Value,
    /// Channels the socket is subscribed to.
    pub channels: BTreeSet<String>,
    /// The socket's own key-value session (admin API `PATCH .../session`).
    pub session: Map<String, Value>,
    /// The way to reach the socket.
    pub outbox: Outbox,
}

/// The worker's sockets by id.
#[derive(Debug)]
pub struct SocketRegistry {
    node: String,
    worker: u16,
    // A std mutex is right here: it is never held across an await, and each
    // critical section is a map operation or one pass building records.
    entries: Mutex<HashMap<Arc<str>, SocketEntry>>,
}

impl SocketRegistry {
    /// An empty registry for this node and worker slot.
    pub fn new(node: String, worker: u16) -> SocketRegistry {
        SocketRegistry {
            node,
            worker,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SocketEntry>> {
        // A panic while holding the lock cannot leave a map half-updated in a
        // way that matters more than losing the worker, so recover the data.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a socket that completed its handshake.
    pub fn insert(&self, id: Arc<str>, entry: SocketEntry) {
        self.lock().insert(id, entry);
    }

    /// Forgets a closed socket.
    pub fn remove(&self, id: &str) -> Option<SocketEntry> {
        self.lock().remove(id)
    }

    /// Applies a change to one socket's entry.
    pub fn update<R>(&self, id: &str, change: impl FnOnce(&mut SocketEntry) -> R) -> Option<R> {
        self.lock().get_mut(id).map(change)
    }

    /// Number of registered sockets.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no socket is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record of one socket, as the admin API shows it.
    pub fn record(&self, id: &str, entry: &SocketEntry) -> Value {
        json!({
            "id": id,
            "node": self.node,
            "worker": self.worker,
            "protocol": entry.protocol,
            "logged_in": entry.logged_in,
            "user": entry.user,
            "auth": entry.auth,
            "channels": entry.channels,
            "session": entry.session,
            "remote_addr": entry.remote_addr,
            "connected_at": entry.connected_at,
        })
    }

    /// Records of the sockets matching `filter`, at most `limit`.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<Value> {
        let entries = self.lock();
        let mut found = Vec::new();
        for (id, entry) in entries.iter() {
            if found.len() >= limit {
                break;
            }
            let record = self.record(id, entry);
            if filter.matches(&record) {
                found.push(record);
            }
        }
        found
    }

    /// Queues `make()` on every socket matching `filter`; returns how many accepted it.
    pub fn push_matching(&self, filter: &Filter, mut make: impl FnMut() -> Outbound) -> u64 {
        let entries = self.lock();
        let mut reached = 0;
        for (id, entry) in entries.iter() {
            if filter.matches(&self.record(id, entry)) && entry.outbox.push(make()).is_ok() {
                reached += 1;
            }
        }
        reached
    }
}
