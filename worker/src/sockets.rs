//! Every socket this worker holds, as the cluster's queries see them.
//!
//! The registry is the worker's answer to filterSocketsByUser: each entry
//! carries what a socket record shows (user, claims, channels, session) and
//! the [`Outbox`] to reach it, so query, emit and kick are one pass over it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use sockhive_broker::records::RecordSink;
use sockhive_shared::filter::{user_id_index_key, Filter};
use sockhive_shared::ipc::ToMaster;

use crate::link::MasterLink;

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
    /// The web session id the socket logged in with (never shown in records).
    pub web_session: Option<String>,
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
    inner: Mutex<Inner>,
    /// Where records are mirrored for other nodes (Redis broker only).
    records: Option<RecordSink>,
    /// Where user index changes go.
    master: MasterLink,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<str>, SocketEntry>,
    /// Sockets per user id on this worker, for the master's user index.
    users: HashMap<String, u32>,
}

/// The ids a socket is indexed under: its user's id and its token's subject.
fn user_keys(entry: &SocketEntry) -> Vec<String> {
    let mut keys: Vec<String> = [entry.user.get("id"), entry.auth.get("sub")]
        .into_iter()
        .flatten()
        .filter_map(user_id_index_key)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl Inner {
    fn count(&mut self, keys: &[String], up: bool, changed: &mut Vec<String>) {
        for key in keys {
            let count = self.users.entry(key.clone()).or_insert(0);
            if up {
                *count += 1;
                if *count == 1 {
                    changed.push(key.clone());
                }
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.users.remove(key);
                    changed.push(key.clone());
                }
            }
        }
    }
}

impl SocketRegistry {
    /// An empty registry for this node and worker slot.
    pub fn new(
        node: String,
        worker: u16,
        master: MasterLink,
        records: Option<RecordSink>,
    ) -> SocketRegistry {
        SocketRegistry {
            node,
            worker,
            inner: Mutex::new(Inner::default()),
            records,
            master,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a map half-updated in a
        // way that matters more than losing the worker, so recover the data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn announce(&self, joined: Vec<String>, left: Vec<String>) {
        if !joined.is_empty() || !left.is_empty() {
            self.master.send(&ToMaster::Users { joined, left });
        }
    }

    /// Registers a socket that completed its handshake.
    pub fn insert(&self, id: Arc<str>, entry: SocketEntry) {
        let mut joined = Vec::new();
        {
            let mut inner = self.lock();
            inner.count(&user_keys(&entry), true, &mut joined);
            if let Some(records) = &self.records {
                records.put(&id, &self.record(&id, &entry));
            }
            inner.entries.insert(id, entry);
        }
        self.announce(joined, Vec::new());
    }

    /// Forgets a closed socket.
    pub fn remove(&self, id: &str) -> Option<SocketEntry> {
        let mut left = Vec::new();
        let removed = {
            let mut inner = self.lock();
            let removed = inner.entries.remove(id);
            if let Some(entry) = &removed {
                inner.count(&user_keys(entry), false, &mut left);
                if let Some(records) = &self.records {
                    records.remove(id);
                }
            }
            removed
        };
        self.announce(Vec::new(), left);
        removed
    }

    /// Applies a change to one socket's entry (and mirrors it).
    pub fn update<R>(&self, id: &str, change: impl FnOnce(&mut SocketEntry) -> R) -> Option<R> {
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        let result = {
            let mut inner = self.lock();
            let entry = inner.entries.get_mut(id)?;
            let before = user_keys(entry);
            let result = change(entry);
            let after = user_keys(entry);
            if let Some(records) = &self.records {
                records.put(id, &self.record(id, entry));
            }
            if before != after {
                inner.count(&before, false, &mut left);
                inner.count(&after, true, &mut joined);
            }
            result
        };
        self.announce(joined, left);
        Some(result)
    }

    /// Writes every record again (after Redis came back, possibly empty).
    pub fn resync_records(&self) {
        let Some(records) = &self.records else { return };
        let inner = self.lock();
        for (id, entry) in &inner.entries {
            records.put(id, &self.record(id, entry));
        }
    }

    /// Number of registered sockets.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
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
        let inner = self.lock();
        let mut found = Vec::new();
        for (id, entry) in inner.entries.iter() {
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
        let inner = self.lock();
        let mut reached = 0;
        for (id, entry) in inner.entries.iter() {
            if filter.matches(&self.record(id, entry)) && entry.outbox.push(make()).is_ok() {
                reached += 1;
            }
        }
        reached
    }
}

impl SocketRegistry {
    /// Queues `make()` on every socket logged in with web session `sid`; returns how many.
    pub fn push_to_web_session(&self, sid: &str, mut make: impl FnMut() -> Outbound) -> u64 {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| e.web_session.as_deref() == Some(sid))
            .filter(|e| e.outbox.push(make()).is_ok())
            .count() as u64
    }
}
