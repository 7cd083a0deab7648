//! Every socket this worker holds, as the cluster's queries see them.
//!
//! The registry is the worker's answer to filterSocketsByUser: each entry
//! carries what a socket record shows (user, claims, channels, session) and
//! the [`Outbox`] to reach it, so query, emit and kick are one pass over it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use sockhive_broker::records::RecordSink;
use sockhive_shared::filter::{user_id_index_key, Filter};
use sockhive_shared::ipc::ToMaster;

use super::outbox::{Outbound, Outbox};
use crate::auth::Claims;
use crate::master_link::MasterLink;

/// What the worker knows about one open socket.
#[derive(Debug)]
pub struct SocketEntry {
    /// `socketcluster` or `socketio`.
    pub protocol: &'static str,
    /// The peer address (records show `ip:port`).
    pub remote_addr: std::net::SocketAddr,
    /// When the socket was accepted (records show RFC 3339).
    pub connected_at: time::OffsetDateTime,
    /// The verified JWT claims, `None` when anonymous: the socket's own
    /// login, shared (issue 19: one copy per socket). Records derive
    /// `logged_in`, `user` and `auth` from it ([`login_view`]).
    pub login: Option<Claims>,
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
    /// Wakes [`SocketRegistry::announce_leaves`] when a leave is pending.
    leaves_due: tokio::sync::Notify,
}

/// How long the last socket of a user may be gone before the master hears
/// it. Why (issue 19): every cookie handshake of a new user cost the master a
/// join and a leave, each a wake-up of its own; leaves now go together, and
/// a user back within the delay costs nothing. Joins stay immediate: a
/// query must never miss a socket that has its handshake reply. A late
/// leave only has a query ask this worker for nobody, as a race did before.
pub const LEAVE_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<str>, SocketEntry>,
    /// Socket ids per user id on this worker: the fast path of a query that
    /// pins users, and the master's user index (first in, last out).
    users: HashMap<String, HashSet<Arc<str>>>,
    /// Socket ids per channel: a command for a channel's members (a hook's
    /// `emit` to a room) visits them, not every socket.
    channels: HashMap<String, HashSet<Arc<str>>>,
    /// Users whose last socket here closed, not yet announced to the master
    /// (see [`LEAVE_DELAY`]).
    leaving: HashSet<String>,
}

/// `logged_in`, `user` and `auth` as records show them, from a socket's
/// verified claims (the same for every protocol): `user` is `{"id": sub}`
/// plus the claims' `user` object.
pub fn login_view(claims: Option<&Claims>) -> (bool, Value, Value) {
    let Some(claims) = claims.map(Claims::to_map) else {
        return (false, Value::Null, Value::Null);
    };
    let mut user = Map::new();
    if let Some(sub) = claims.get("sub") {
        user.insert("id".into(), sub.clone());
    }
    if let Some(Value::Object(extra)) = claims.get("user") {
        for (k, v) in extra {
            user.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    (true, Value::Object(user), Value::Object(claims))
}

impl SocketEntry {
    /// The entry of a socket that just completed its protocol handshake.
    pub fn new(
        protocol: &'static str,
        peer: std::net::SocketAddr,
        outbox: Outbox,
        login: Option<Claims>,
        web_session: Option<String>,
    ) -> SocketEntry {
        SocketEntry {
            protocol,
            remote_addr: peer,
            connected_at: time::OffsetDateTime::now_utc(),
            login,
            channels: BTreeSet::new(),
            session: Map::new(),
            web_session,
            outbox,
        }
    }
}

/// The ids a socket is indexed under: its user's id and its token's subject
/// (`user.id` is `sub`, else the claims' `user.id`: see [`login_view`]).
fn user_keys(entry: &SocketEntry) -> Vec<String> {
    let Some(claims) = entry.login.as_ref() else {
        return Vec::new();
    };
    let (sub, user_id) = claims.ids();
    let user_id = sub.as_ref().or(user_id.as_ref());
    let mut keys: Vec<String> = [user_id, sub.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(user_id_index_key)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl Inner {
    /// Files (`up`) or unfiles socket `id` under `keys`. `joined` gets the
    /// users that appeared on this worker and that the master does not
    /// know; users that vanished wait in `leaving`. True when a leave was
    /// added there.
    fn index(
        &mut self,
        keys: &[String],
        id: &Arc<str>,
        up: bool,
        joined: &mut Vec<String>,
    ) -> bool {
        let mut left = false;
        for key in keys {
            if up {
                let sockets = self.users.entry(key.clone()).or_default();
                // Back before its leave was announced: the master still has it.
                if sockets.is_empty() && !self.leaving.remove(key) {
                    joined.push(key.clone());
                }
                sockets.insert(id.clone());
            } else if let Some(sockets) = self.users.get_mut(key) {
                sockets.remove(id);
                if sockets.is_empty() {
                    self.users.remove(key);
                    self.leaving.insert(key.clone());
                    left = true;
                }
            }
        }
        left
    }

    /// The sockets a filter can match: those of its pinned users, or the
    /// members of its pinned channel, or all.
    fn candidates<'a>(
        &'a self,
        filter: &Filter,
    ) -> Box<dyn Iterator<Item = (&'a Arc<str>, &'a SocketEntry)> + 'a> {
        match filter.user_ids() {
            None => match filter.channel() {
                None => Box::new(self.entries.iter()),
                Some(channel) => Box::new(
                    self.channels
                        .get(channel)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| self.entries.get_key_value(id)),
                ),
            },
            Some(users) => {
                let ids: HashSet<&Arc<str>> = users
                    .iter()
                    .filter_map(|u| self.users.get(u))
                    .flatten()
                    .collect();
                Box::new(
                    ids.into_iter()
                        .filter_map(|id| self.entries.get_key_value(id)),
                )
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
            leaves_due: tokio::sync::Notify::new(),
        }
    }

    /// Tells the master, [`LEAVE_DELAY`] after the first of them, which users
    /// left this worker meanwhile; runs for the worker's life.
    pub async fn announce_leaves(&self) {
        loop {
            self.leaves_due.notified().await;
            tokio::time::sleep(LEAVE_DELAY).await;
            let left: Vec<String> = self.lock().leaving.drain().collect();
            self.announce(Vec::new(), left);
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

    /// Announces `joined` now; a leave made pending is announced later.
    fn announce_changes(&self, joined: Vec<String>, leaves_pending: bool) {
        self.announce(joined, Vec::new());
        if leaves_pending {
            self.leaves_due.notify_one();
        }
    }

    /// Registers a socket that completed its handshake.
    pub fn insert(&self, id: Arc<str>, entry: SocketEntry) {
        let mut joined = Vec::new();
        {
            let mut inner = self.lock();
            inner.index(&user_keys(&entry), &id, true, &mut joined);
            if let Some(records) = &self.records {
                records.put(&id, &self.record(&id, &entry));
            }
            inner.entries.insert(id, entry);
        }
        self.announce_changes(joined, false);
    }

    /// Forgets a closed socket.
    pub fn remove(&self, id: &str) -> Option<SocketEntry> {
        let mut leaves_pending = false;
        let removed = {
            let mut inner = self.lock();
            let removed = inner.entries.remove_entry(id);
            if let Some((key, entry)) = &removed {
                leaves_pending = inner.index(&user_keys(entry), key, false, &mut Vec::new());
                for channel in &entry.channels {
                    if let Some(members) = inner.channels.get_mut(channel) {
                        members.remove(key);
                        if members.is_empty() {
                            inner.channels.remove(channel);
                        }
                    }
                }
                if let Some(records) = &self.records {
                    records.remove(id);
                }
            }
            removed
        };
        self.announce_changes(Vec::new(), leaves_pending);
        removed.map(|(_, entry)| entry)
    }

    /// Applies a change to one socket's entry (and mirrors it).
    pub fn update<R>(&self, id: &str, change: impl FnOnce(&mut SocketEntry) -> R) -> Option<R> {
        let (mut joined, mut leaves_pending) = (Vec::new(), false);
        let result = {
            let mut inner = self.lock();
            let key = inner.entries.get_key_value(id)?.0.clone();
            let entry = inner.entries.get_mut(id)?;
            let before = user_keys(entry);
            let result = change(entry);
            let after = user_keys(entry);
            if let Some(records) = &self.records {
                records.put(id, &self.record(id, entry));
            }
            if before != after {
                leaves_pending = inner.index(&before, &key, false, &mut joined);
                inner.index(&after, &key, true, &mut joined);
            }
            result
        };
        self.announce_changes(joined, leaves_pending);
        Some(result)
    }

    /// A socket joined (`true`) or left a channel: its record and the
    /// channel index follow.
    pub fn set_channel(&self, id: &str, channel: &str, member: bool) {
        let mut inner = self.lock();
        let Inner {
            entries, channels, ..
        } = &mut *inner;
        let Some(key) = entries.get_key_value(id).map(|(key, _)| key.clone()) else {
            return;
        };
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        let changed = if member {
            entry.channels.insert(channel.to_owned())
        } else {
            entry.channels.remove(channel)
        };
        if !changed {
            return;
        }
        if let Some(records) = &self.records {
            records.put(id, &self.record(id, entry));
        }
        if member {
            channels.entry(channel.to_owned()).or_default().insert(key);
        } else if let Some(members) = channels.get_mut(channel) {
            members.remove(&key);
            if members.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Records a socket's new login state (or its loss).
    pub fn set_login(&self, id: &str, login: Option<Claims>, web_session: Option<String>) {
        self.update(id, |entry| {
            entry.login = login;
            entry.web_session = web_session;
        });
    }

    /// Writes every record again (after Redis came back, possibly empty).
    pub fn resync_records(&self) {
        let Some(records) = &self.records else { return };
        let inner = self.lock();
        for (id, entry) in &inner.entries {
            records.put(id, &self.record(id, entry));
        }
    }

    /// How many holders each registered login's claims have (the entry
    /// included): 2 while the socket and its entry share one (tests).
    #[cfg(test)]
    pub fn login_allocations(&self) -> Vec<usize> {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter_map(|entry| entry.login.as_ref().map(Claims::holders))
            .collect()
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
        let (logged_in, user, auth) = login_view(entry.login.as_ref());
        json!({
            "id": id,
            "node": self.node,
            "worker": self.worker,
            "protocol": entry.protocol,
            "logged_in": logged_in,
            "user": user,
            "auth": auth,
            "channels": entry.channels,
            "session": entry.session,
            "remote_addr": entry.remote_addr.to_string(),
            "connected_at": entry
                .connected_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }

    /// The record of the socket `id`, if registered here.
    pub fn record_of(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        inner.entries.get(id).map(|entry| self.record(id, entry))
    }

    /// Merges `changes` into a socket's key-value session (`null` deletes a
    /// key); the session after the change, if the socket is here.
    pub fn patch_session(
        &self,
        id: &str,
        changes: Map<String, Value>,
    ) -> Option<Map<String, Value>> {
        self.update(id, |entry| {
            for (key, value) in changes {
                if value.is_null() {
                    entry.session.remove(&key);
                } else {
                    entry.session.insert(key, value);
                }
            }
            entry.session.clone()
        })
    }

    /// Records of the sockets matching `filter`, at most `limit`.
    pub fn query(&self, filter: &Filter, limit: usize) -> Vec<Value> {
        let inner = self.lock();
        let mut found = Vec::new();
        for (id, entry) in inner.candidates(filter) {
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
        for (id, entry) in inner.candidates(filter) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(claims: Value) -> Claims {
        let Value::Object(claims) = claims else {
            unreachable!("an object")
        };
        Claims::new(&claims)
    }

    fn entry(user: Value) -> SocketEntry {
        SocketEntry {
            protocol: "socketcluster",
            remote_addr: "127.0.0.1:1".parse().unwrap(),
            connected_at: time::OffsetDateTime::UNIX_EPOCH,
            login: user.get("id").map(|id| claims(json!({"sub": id}))),
            channels: BTreeSet::new(),
            session: Map::new(),
            web_session: None,
            outbox: crate::hub::outbox::outbox(1024).0,
        }
    }

    #[tokio::test]
    async fn a_query_pinning_a_user_reads_only_that_users_sockets_and_the_index_follows_changes() {
        let (master, mut to_master) = MasterLink::new();
        let registry = Arc::new(SocketRegistry::new("n".into(), 1, master, None));
        let announcing = registry.clone();
        tokio::spawn(async move { announcing.announce_leaves().await });
        registry.insert("s1".into(), entry(json!({"id": "alice"})));
        registry.insert("s2".into(), entry(json!({"id": "alice"})));
        registry.insert("s3".into(), entry(json!({"id": "bob"})));
        registry.insert("s4".into(), entry(Value::Null));
        let filter = |f: Value| Filter::parse(&f).unwrap();
        assert_eq!(
            registry
                .query(&filter(json!({"user.id": "alice"})), 10)
                .len(),
            2
        );
        assert_eq!(
            registry
                .query(&filter(json!({"user.id": {"$in": ["bob", "carol"]}})), 10)
                .len(),
            1
        );
        assert_eq!(registry.query(&filter(json!({})), 10).len(), 4);
        // A login change moves the socket in the index.
        registry.update("s3", |e| {
            e.login = Some(claims(json!({"sub": "carol"})));
        });
        assert_eq!(
            registry.query(&filter(json!({"user.id": "bob"})), 10).len(),
            0
        );
        assert_eq!(
            registry
                .query(&filter(json!({"user.id": "carol"})), 10)
                .len(),
            1
        );
        registry.remove("s1");
        registry.remove("s2");
        assert_eq!(
            registry
                .query(&filter(json!({"user.id": "alice"})), 10)
                .len(),
            0
        );
        // The master heard alice arrive once and, after the delay, leave once.
        tokio::time::sleep(LEAVE_DELAY * 2).await;
        let mut announced = Vec::new();
        while let Ok(frame) = to_master.try_recv() {
            announced.push(String::from_utf8_lossy(&frame[4..]).into_owned());
        }
        assert_eq!(
            announced
                .iter()
                .filter(|m| m.contains("\"joined\":[\"alice\"]"))
                .count(),
            1,
            "{announced:?}"
        );
        assert_eq!(
            announced
                .iter()
                .filter(|m| {
                    let users: Value = serde_json::from_str(m).unwrap();
                    users["users"]["left"]
                        .as_array()
                        .is_some_and(|left| left.contains(&json!("alice")))
                })
                .count(),
            1,
            "{announced:?}"
        );
    }

    /// Issue 19: joins reach the master at once; leaves wait [`LEAVE_DELAY`]
    /// and go together, and a user back before then costs no message.
    #[tokio::test(start_paused = true)]
    async fn leaves_reach_the_master_together_after_the_delay() {
        let (master, mut to_master) = MasterLink::new();
        let registry = Arc::new(SocketRegistry::new("n".into(), 1, master, None));
        let announcing = registry.clone();
        tokio::spawn(async move { announcing.announce_leaves().await });
        let mut heard = move || {
            let mut frames = Vec::new();
            while let Ok(frame) = to_master.try_recv() {
                frames.push(String::from_utf8_lossy(&frame[4..]).into_owned());
            }
            frames
        };
        for (id, user) in [("s1", "alice"), ("s2", "bob"), ("s3", "carol")] {
            registry.insert(id.into(), entry(json!({"id": user})));
        }
        assert_eq!(heard().len(), 3, "each join at once");
        registry.remove("s1");
        registry.remove("s2");
        registry.remove("s3");
        // carol is back before her leave was told: the master still has her.
        registry.insert("s4".into(), entry(json!({"id": "carol"})));
        tokio::task::yield_now().await;
        assert_eq!(heard(), Vec::<String>::new(), "nothing before the delay");
        tokio::time::sleep(LEAVE_DELAY + Duration::from_millis(1)).await;
        let frames = heard();
        assert_eq!(frames.len(), 1, "{frames:?}");
        let users: serde_json::Value = serde_json::from_str(&frames[0]).unwrap();
        let mut left: Vec<&str> = users["users"]["left"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["alice", "bob"]);
        assert_eq!(users["users"]["joined"], json!([]));
    }

    #[test]
    fn a_command_for_a_channels_members_visits_only_them() {
        let (master, _to_master) = MasterLink::new();
        let registry = SocketRegistry::new("n".into(), 1, master, None);
        for id in ["s1", "s2", "s3"] {
            registry.insert(id.into(), entry(json!({"id": id})));
        }
        registry.set_channel("s1", "room:1", true);
        registry.set_channel("s2", "room:1", true);
        registry.set_channel("s3", "room:2", true);
        let room = Filter::parse(&json!({"channels": "room:1"})).unwrap();
        assert_eq!(room.channel(), Some("room:1"));
        let inner = registry.lock();
        let visited: BTreeSet<&str> = inner.candidates(&room).map(|(id, _)| &**id).collect();
        assert_eq!(visited, BTreeSet::from(["s1", "s2"]));
        drop(inner);
        registry.set_channel("s1", "room:1", false);
        registry.remove("s2");
        assert_eq!(registry.query(&room, 10).len(), 0);
        assert!(!registry.lock().channels.contains_key("room:1"));
        // The record shows the channel; a pattern is no pin.
        assert_eq!(
            registry.record_of("s3").unwrap()["channels"],
            json!(["room:2"])
        );
        let any = Filter::parse(&json!({"channels": {"$in": ["room:2"]}})).unwrap();
        assert_eq!(any.channel(), None);
        assert_eq!(registry.query(&any, 10).len(), 1);
    }
}
