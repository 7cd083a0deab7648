//! Noticing logouts of sessions that already have sockets.
//!
//! The Node libraries check the session only at the handshake; the contract
//! wants a logout (key deleted, expired, or `passport.user` changed) to end
//! access within 1 s. Two ways, picked at run time:
//! - keyspace notifications on `__keyspace@<db>__:<prefix>*`, after enabling
//!   the minimal `notify-keyspace-events` flags with `CONFIG SET` (merged with
//!   what is already configured);
//! - where `CONFIG` is refused (managed Redis) or the store is a cluster, a
//!   re-check of every watched session each `recheck` interval, batched MGET.
//!
//! After any reconnect the notifications are set up again (a restarted Redis
//! forgot them) and every watched session is re-read once, so a logout during
//! the outage is not missed. Watching is reference-counted per (sid, user):
//! many sockets share a session.
//!
//! With a user lookup configured, a re-read session that still logs in the
//! same `passport.user` also has its user looked up again (each distinct user
//! once per pass): a record the app changed (a new role) or deleted is
//! reported like a logout, so a socket never keeps a user the app no longer has.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::KeyspaceEvent;
use futures_util::StreamExt;
use serde_json::Value as Json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::store::{fred_builder, SessionStore, StoreSetupError, StoredSession};
use super::user::{passport_user, UserLookup, UserLookupError};

/// `--session-recheck`: how often sessions are re-read when notifications are not available.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(1);

/// With notifications on, a full re-read this often anyway, in case a
/// notification was lost without a reconnect we could see.
pub const DEFAULT_SAFETY_RECHECK: Duration = Duration::from_secs(60);

/// User lookups in flight at once during a re-check: enough to re-read many
/// users quickly, few enough not to flood the app's endpoint.
const LOOKUP_CONCURRENCY: usize = 16;

/// Flags the watcher needs: `K` keyspace channel, `g` generic (`del`,
/// `rename`), `$` strings (`set`), `x` expired, `e` evicted (maxmemory
/// eviction ends a session too).
const REQUIRED_KEYSPACE_FLAGS: [char; 5] = ['K', 'g', '$', 'x', 'e'];

/// Settings for [`SessionWatcher`].
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// Same Redis as the session store.
    pub url: String,
    /// connect-redis prefix.
    pub prefix: String,
    /// Polling interval when notifications are unavailable.
    pub recheck: Duration,
    /// Full re-read interval while notifications are on.
    pub safety_recheck: Duration,
    /// Bound on each Redis command the watcher sends.
    pub command_timeout: Duration,
    /// How users are looked up, to re-read them with their sessions
    /// ([`super::SessionAuthenticator::user_lookup`]); the default (no lookup)
    /// re-reads nothing beyond `passport.user`.
    pub user_lookup: UserLookup,
}

impl WatcherConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: &str) -> WatcherConfig {
        WatcherConfig {
            url: url.to_owned(),
            prefix: super::store::DEFAULT_SESSION_PREFIX.to_owned(),
            recheck: DEFAULT_RECHECK,
            safety_recheck: DEFAULT_SAFETY_RECHECK,
            command_timeout: super::store::DEFAULT_STORE_TIMEOUT,
            user_lookup: UserLookup::default(),
        }
    }
}

/// Why a watched login ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogoutCause {
    /// The key is gone: deleted (passport 0.6+ logout, admin), expired, evicted.
    SessionGone,
    /// The key is there but logs nobody in (passport ≤ 0.5 logout, damage).
    NotLoggedIn,
    /// `passport.user` now holds someone else: a different login.
    UserChanged,
    /// Same `passport.user`, but the user lookup now answers a different
    /// record (the app changed the user); [`LoggedOut::user`] holds it.
    UserRecordChanged,
    /// Same `passport.user`, but the user lookup no longer knows the user
    /// (deleted) or answers something that is not a user.
    UserNotFound,
}

/// A login the worker must end: every socket bound to `sid` as `passport_user`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedOut {
    /// The session id the sockets authenticated with.
    pub sid: String,
    /// The `passport.user` they were bound to.
    pub passport_user: Json,
    /// What happened to the session.
    pub cause: LogoutCause,
    /// The user as re-read, for [`LogoutCause::UserRecordChanged`]: what the
    /// sockets would get if they connected now.
    pub user: Option<Json>,
}

/// How the watcher currently learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// Notifications not (yet) confirmed: polling meanwhile.
    Starting,
    /// Keyspace notifications.
    Keyspace,
    /// `CONFIG` refused or a cluster: periodic MGET only.
    Polling,
}

impl WatchMode {
    fn from_u8(value: u8) -> WatchMode {
        match value {
            1 => WatchMode::Keyspace,
            2 => WatchMode::Polling,
            _ => WatchMode::Starting,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            WatchMode::Starting => 0,
            WatchMode::Keyspace => 1,
            WatchMode::Polling => 2,
        }
    }
}

/// One login bound to a session, with how many sockets hold it.
struct WatchEntry {
    passport_user: Json,
    /// The user the sockets hold, to compare a re-read with; `None` until
    /// known (a plain [`SessionWatcher::watch`]: the first re-read sets it).
    /// Boxed: most logins have no lookup to compare, and a `Json` is 80 bytes.
    user: Option<Box<Json>>,
    sockets: usize,
    /// When it was first watched (in [`WatchSet::clock`] ticks): a re-read
    /// that started earlier says nothing about it.
    since: u64,
}

/// Watched sessions; locked only for short, non-async sections.
#[derive(Default)]
struct WatchSet {
    by_sid: HashMap<String, Vec<WatchEntry>>,
    /// Watched since the last check: read once soon, because a logout between
    /// the handshake's GET and `watch` sent no notification we listened to.
    pending: HashSet<String>,
    /// Counts watch calls, ordering them against re-reads.
    clock: u64,
}

struct Shared {
    watched: Mutex<WatchSet>,
    mode: AtomicU8,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WatchSet> {
        // A panic elsewhere must not stop logout detection: the data stays usable.
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The worker's logout detector; cheap to clone, one per worker.
#[derive(Clone)]
pub struct SessionWatcher {
    shared: Arc<Shared>,
    /// The user lookup reads a record the app can change: only then is each
    /// login's user kept to compare re-reads with (an idle socket should not
    /// carry a copy of its user otherwise).
    keeps_users: bool,
}

impl SessionWatcher {
    /// Starts the background task (inside the worker's runtime); never waits
    /// for Redis. Logouts arrive on the returned receiver; the task ends on
    /// `shutdown` or when the receiver is dropped.
    pub fn start(
        config: WatcherConfig,
        store: Arc<dyn SessionStore>,
        shutdown: CancellationToken,
    ) -> Result<(SessionWatcher, mpsc::UnboundedReceiver<LoggedOut>), StoreSetupError> {
        let builder = fred_builder(&config.url, config.command_timeout)?;
        let clustered = builder
            .get_config()
            .is_some_and(|c| matches!(c.server, ServerConfig::Clustered { .. }));
        let database = builder.get_config().and_then(|c| c.database).unwrap_or(0);
        // Notifications are per node in a cluster; polling covers every node.
        let redis = if clustered {
            None
        } else {
            let control = builder
                .build()
                .map_err(|e| StoreSetupError::Client(e.to_string()))?;
            let subscriber = builder
                .build_subscriber_client()
                .map_err(|e| StoreSetupError::Client(e.to_string()))?;
            Some((control, subscriber))
        };
        let keeps_users = config.user_lookup.reads_a_record();
        let shared = Arc::new(Shared {
            watched: Mutex::new(WatchSet::default()),
            mode: AtomicU8::new(
                if clustered {
                    WatchMode::Polling
                } else {
                    WatchMode::Starting
                }
                .as_u8(),
            ),
        });
        // Unbounded is bounded in practice: each watched login is reported at
        // most once and then forgotten, so the queue never exceeds the watch set.
        let (events, receiver) = mpsc::unbounded_channel();
        let task = WatchTask {
            shared: shared.clone(),
            channel_pattern: keyspace_pattern(database, &config.prefix),
            config,
            database,
            store,
            events,
        };
        tokio::spawn(task.run(redis, shutdown));
        Ok((
            SessionWatcher {
                shared,
                keeps_users,
            },
            receiver,
        ))
    }

    /// One more socket bound to `sid` as `passport_user`.
    pub fn watch(&self, sid: &str, passport_user: &Json) {
        self.watch_as(sid, passport_user, None);
    }

    /// One more socket bound to `sid` as `passport_user`, holding `user` (the
    /// resolved user it got at login): a re-read that answers another user
    /// is reported as [`LogoutCause::UserRecordChanged`].
    pub fn watch_user(&self, sid: &str, passport_user: &Json, user: &Json) {
        self.watch_as(sid, passport_user, Some(user));
    }

    fn watch_as(&self, sid: &str, passport_user: &Json, user: Option<&Json>) {
        let user = user.filter(|_| self.keeps_users);
        let mut set = self.shared.lock();
        set.clock += 1;
        let since = set.clock;
        let entries = set.by_sid.entry(sid.to_owned()).or_default();
        match entries
            .iter_mut()
            .find(|e| e.passport_user == *passport_user)
        {
            Some(entry) => entry.sockets += 1,
            None => {
                // Room for exactly this one: a session almost always holds
                // one login, and `push` alone would reserve four (issue 19,
                // massif: ~700 bytes per idle socket in this list).
                entries.reserve_exact(1);
                entries.push(WatchEntry {
                    passport_user: passport_user.clone(),
                    user: user.map(|user| Box::new(user.clone())),
                    sockets: 1,
                    since,
                })
            }
        }
        set.pending.insert(sid.to_owned());
    }

    /// One socket fewer; the login is forgotten with its last socket.
    /// Unknown pairs (already reported as logged out) are ignored.
    pub fn unwatch(&self, sid: &str, passport_user: &Json) {
        let mut set = self.shared.lock();
        let Some(entries) = set.by_sid.get_mut(sid) else {
            return;
        };
        if let Some(position) = entries
            .iter()
            .position(|e| e.passport_user == *passport_user)
        {
            entries[position].sockets -= 1;
            if entries[position].sockets == 0 {
                entries.swap_remove(position);
            }
        }
        if entries.is_empty() {
            set.by_sid.remove(sid);
            set.pending.remove(sid);
        }
    }

    /// How many sessions are watched (for metrics and tests).
    pub fn watched_sessions(&self) -> usize {
        self.shared.lock().by_sid.len()
    }

    /// How changes are currently detected.
    pub fn mode(&self) -> WatchMode {
        WatchMode::from_u8(self.shared.mode.load(Ordering::Relaxed))
    }
}

/// `__keyspace@<db>__:<prefix>*` with the prefix's glob characters escaped.
fn keyspace_pattern(database: u8, prefix: &str) -> String {
    let mut pattern = format!("__keyspace@{database}__:");
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The flags to set so that `current` also covers what the watcher needs;
/// `None` when nothing is missing.
fn merged_keyspace_flags(current: &str) -> Option<String> {
    // `A` is shorthand for every event class (not `K`/`E`/`m`/`n`).
    let has = |flag: char| current.contains(flag) || (flag != 'K' && current.contains('A'));
    let missing: String = REQUIRED_KEYSPACE_FLAGS
        .iter()
        .filter(|f| !has(**f))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("{current}{missing}"))
    }
}

/// Result of one attempt to turn notifications on.
enum Setup {
    Ready,
    /// Redis said no (CONFIG renamed or forbidden): poll until a reconnect.
    Refused(String),
    /// Redis did not answer: try again on the next tick.
    Unreachable(String),
}

struct WatchTask {
    shared: Arc<Shared>,
    config: WatcherConfig,
    database: u8,
    channel_pattern: String,
    store: Arc<dyn SessionStore>,
    events: mpsc::UnboundedSender<LoggedOut>,
}

impl WatchTask {
    fn set_mode(&self, mode: WatchMode) {
        let previous = self.shared.mode.swap(mode.as_u8(), Ordering::Relaxed);
        if previous != mode.as_u8() {
            tracing::info!(?mode, "session logout detection mode");
        }
    }

    fn mode(&self) -> WatchMode {
        WatchMode::from_u8(self.shared.mode.load(Ordering::Relaxed))
    }

    async fn run(self, redis: Option<(Client, SubscriberClient)>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.recheck);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let Some((control, subscriber)) = redis else {
            // Cluster: polling only.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {
                        if self.events.is_closed() {
                            return;
                        }
                        self.recheck_all().await;
                    }
                }
            }
        };
        let mut keyspace = subscriber.keyspace_event_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let _control_connection = control.connect();
        let _subscriber_connection = subscriber.connect();
        let mut setup_needed = true;
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if self.events.is_closed() {
                        break;
                    }
                    if setup_needed {
                        setup_needed = self.try_setup(&control, &subscriber).await;
                        if !setup_needed {
                            // Anything that happened before we listened.
                            self.recheck_all().await;
                            last_full = Instant::now();
                            continue;
                        }
                    }
                    if self.mode() == WatchMode::Keyspace
                        && last_full.elapsed() < self.config.safety_recheck
                    {
                        self.recheck_pending().await;
                    } else {
                        self.recheck_all().await;
                        last_full = Instant::now();
                    }
                }
                reconnected = reconnects.recv() => {
                    if matches!(reconnected, Err(RecvError::Closed)) {
                        break;
                    }
                    // A restarted Redis forgot CONFIG SET and our subscription.
                    setup_needed = self.try_setup(&control, &subscriber).await;
                    self.recheck_all().await;
                    last_full = Instant::now();
                }
                event = keyspace.recv() => match event {
                    Ok(event) => {
                        let mut batch = vec![event];
                        while let Ok(more) = keyspace.try_recv() {
                            batch.push(more);
                        }
                        self.on_keyspace_events(batch).await;
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.recheck_all().await;
                        last_full = Instant::now();
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        let _ = subscriber.quit().await;
        let _ = control.quit().await;
    }

    /// Turns notifications on; returns whether setup must be tried again.
    async fn try_setup(&self, control: &Client, subscriber: &SubscriberClient) -> bool {
        match self.setup_keyspace(control, subscriber).await {
            Setup::Ready => {
                self.set_mode(WatchMode::Keyspace);
                false
            }
            Setup::Refused(why) => {
                tracing::warn!(%why, "keyspace notifications unavailable; re-checking sessions by polling");
                self.set_mode(WatchMode::Polling);
                false
            }
            Setup::Unreachable(why) => {
                tracing::debug!(%why, "session watcher cannot reach Redis yet");
                if self.mode() == WatchMode::Keyspace {
                    self.set_mode(WatchMode::Starting);
                }
                true
            }
        }
    }

    async fn setup_keyspace(&self, control: &Client, subscriber: &SubscriberClient) -> Setup {
        let bound = self.config.command_timeout;
        let classify = |error: Error| match error.kind() {
            ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Backpressure => {
                Setup::Unreachable(error.to_string())
            }
            _ => Setup::Refused(error.to_string()),
        };
        let current = tokio::time::timeout(
            bound,
            control.config_get::<HashMap<String, String>, _>("notify-keyspace-events"),
        )
        .await;
        let current = match current {
            Err(_) => return Setup::Unreachable("CONFIG GET timed out".to_owned()),
            Ok(Err(error)) => return classify(error),
            Ok(Ok(map)) => map
                .get("notify-keyspace-events")
                .cloned()
                .unwrap_or_default(),
        };
        if let Some(flags) = merged_keyspace_flags(&current) {
            let set =
                tokio::time::timeout(bound, control.config_set("notify-keyspace-events", flags))
                    .await;
            match set {
                Err(_) => return Setup::Unreachable("CONFIG SET timed out".to_owned()),
                Ok(Err(error)) => return classify(error),
                Ok(Ok(())) => {}
            }
        }
        match tokio::time::timeout(bound, subscriber.psubscribe(self.channel_pattern.clone())).await
        {
            Err(_) => Setup::Unreachable("PSUBSCRIBE timed out".to_owned()),
            Ok(Err(error)) => Setup::Unreachable(error.to_string()),
            Ok(Ok(())) => Setup::Ready,
        }
    }

    async fn on_keyspace_events(&self, events: Vec<KeyspaceEvent>) {
        let mut reread: Vec<String> = Vec::new();
        for event in events {
            if event.db != self.database {
                continue;
            }
            let Some(key) = event.key.as_str() else {
                continue;
            };
            let Some(sid) = key.strip_prefix(self.config.prefix.as_str()) else {
                continue;
            };
            if !self.shared.lock().by_sid.contains_key(sid) {
                continue;
            }
            match event.operation.as_str() {
                "del" | "expired" | "evicted" | "rename_from" => {
                    self.settle(sid, None, u64::MAX, &[])
                }
                // A rewrite may be a passport ≤ 0.5 logout or another login.
                "set" | "rename_to" | "restore" => reread.push(sid.to_owned()),
                // `expire` (touch) and the rest do not change who is logged in.
                _ => {}
            }
        }
        reread.sort();
        reread.dedup();
        self.reread(reread, true).await;
    }

    async fn recheck_pending(&self) {
        let sids: Vec<String> = self.shared.lock().pending.drain().collect();
        // Just looked up at login: only users not known yet are re-read.
        self.reread(sids, false).await;
    }

    async fn recheck_all(&self) {
        let sids: Vec<String> = {
            let mut set = self.shared.lock();
            set.pending.clear();
            set.by_sid.keys().cloned().collect()
        };
        self.reread(sids, true).await;
    }

    /// Reads the sessions (and, with `users`, looks their users up again)
    /// and settles each; on a store failure they are queued again so the
    /// next tick retries them.
    async fn reread(&self, sids: Vec<String>, users: bool) {
        if sids.is_empty() {
            return;
        }
        let started = self.shared.lock().clock;
        match self.store.load_many(&sids).await {
            Ok(records) => {
                let users = self.reread_users(&sids, &records, users).await;
                for (sid, record) in sids.iter().zip(records) {
                    self.settle(sid, Some(record), started, &users);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "session re-check failed; retrying");
                let mut set = self.shared.lock();
                for sid in sids {
                    if set.by_sid.contains_key(&sid) {
                        set.pending.insert(sid);
                    }
                }
            }
        }
    }

    /// Looks up again the user of each read session that still logs in a
    /// watched `passport.user` (all of them, or with `all` false only those
    /// whose user is not known yet); each distinct `passport.user` once.
    async fn reread_users(
        &self,
        sids: &[String],
        records: &[Option<StoredSession>],
        all: bool,
    ) -> Vec<(Json, Result<Json, UserLookupError>)> {
        let lookup = &self.config.user_lookup;
        if !lookup.reads_a_record() {
            return Vec::new();
        }
        let mut wanted: HashMap<String, Json> = HashMap::new();
        {
            let set = self.shared.lock();
            for (sid, record) in sids.iter().zip(records) {
                let (Some(entries), Some(Ok(current))) =
                    (set.by_sid.get(sid), record.as_ref().map(passport_user))
                else {
                    continue;
                };
                if entries
                    .iter()
                    .any(|e| e.passport_user == *current && (all || e.user.is_none()))
                {
                    wanted.insert(current.to_string(), current.clone());
                }
            }
        }
        let store = self.store.as_ref();
        futures_util::stream::iter(wanted.into_values())
            .map(|passport_user| async move {
                let user = lookup.resolve(&passport_user, store).await;
                (passport_user, user)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect()
            .await
    }

    /// Compares what the store holds for `sid` (and what the user lookup
    /// answered now, in `users`) with the logins bound to it and reports the
    /// ones that ended. `record` is `None` for a key known to be gone,
    /// `Some(None)` for a read that found no key. Logins watched after the
    /// read started (`since > started`) are left alone.
    fn settle(
        &self,
        sid: &str,
        record: Option<Option<StoredSession>>,
        started: u64,
        users: &[(Json, Result<Json, UserLookupError>)],
    ) {
        let current = match &record {
            None | Some(None) => Err(LogoutCause::SessionGone),
            Some(Some(session)) => passport_user(session).map_err(|_| LogoutCause::NotLoggedIn),
        };
        let mut ended = Vec::new();
        {
            let mut set = self.shared.lock();
            let Some(entries) = set.by_sid.get_mut(sid) else {
                return;
            };
            entries.retain_mut(|entry| {
                if entry.since > started {
                    return true;
                }
                let mut fresh = None;
                let cause = match &current {
                    Ok(user) if **user == entry.passport_user => {
                        let reread = users.iter().find(|(p, _)| *p == entry.passport_user);
                        match reread.map(|(_, user)| user) {
                            // Not re-read, or the lookup is down: nothing new
                            // is known, and an outage never ends a login.
                            None | Some(Err(UserLookupError::Unavailable(_))) => return true,
                            Some(Ok(user)) => match &entry.user {
                                Some(held) if **held != *user => {
                                    fresh = Some(user.clone());
                                    LogoutCause::UserRecordChanged
                                }
                                Some(_) => return true,
                                None => {
                                    entry.user = Some(Box::new(user.clone()));
                                    return true;
                                }
                            },
                            Some(Err(_)) => LogoutCause::UserNotFound,
                        }
                    }
                    Ok(_) => LogoutCause::UserChanged,
                    Err(cause) => *cause,
                };
                ended.push(LoggedOut {
                    sid: sid.to_owned(),
                    passport_user: entry.passport_user.clone(),
                    cause,
                    user: fresh,
                });
                false
            });
            if entries.is_empty() {
                set.by_sid.remove(sid);
                set.pending.remove(sid);
            }
        }
        for logout in ended {
            let _ = self.events.send(logout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{RedisSessionStore, RedisStoreConfig};
    use super::super::test_support::{RedisFixture, Resp};
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_merge_with_existing_configuration() {
        assert_eq!(merged_keyspace_flags("").as_deref(), Some("Kg$xe"));
        assert_eq!(merged_keyspace_flags("Elg").as_deref(), Some("ElgK$xe"));
        assert_eq!(merged_keyspace_flags("AK"), None);
        assert_eq!(merged_keyspace_flags("gxK$e"), None);
        assert_eq!(merged_keyspace_flags("AE").as_deref(), Some("AEK"));
    }

    #[tokio::test]
    async fn a_watched_session_keeps_room_for_one_login_only() {
        let t = setup(&[], Duration::from_secs(60)).await;
        t.watcher.watch("one", &json!(7));
        t.watcher.watch("one", &json!(7));
        t.watcher.watch("two", &json!(8));
        t.watcher.watch("two", &json!(9));
        let set = t.watcher.shared.lock();
        assert_eq!(set.by_sid["one"].capacity(), 1);
        assert_eq!(set.by_sid["one"][0].sockets, 2);
        assert_eq!(set.by_sid["two"].len(), 2);
    }

    #[test]
    fn pattern_escapes_glob_characters() {
        assert_eq!(keyspace_pattern(0, "sess:"), "__keyspace@0__:sess:*");
        assert_eq!(
            keyspace_pattern(3, "a*b?[c]"),
            "__keyspace@3__:a\\*b\\?\\[c\\]*"
        );
    }

    struct Setup {
        redis: RedisFixture,
        watcher: SessionWatcher,
        logouts: mpsc::UnboundedReceiver<LoggedOut>,
        _shutdown: tokio_util::sync::DropGuard,
    }

    async fn setup(extra_args: &[&str], recheck: Duration) -> Setup {
        setup_with_lookup(extra_args, recheck, UserLookup::default()).await
    }

    async fn setup_with_lookup(
        extra_args: &[&str],
        recheck: Duration,
        user_lookup: UserLookup,
    ) -> Setup {
        let redis = RedisFixture::start(extra_args).await;
        let store = Arc::new(
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store"),
        );
        let mut config = WatcherConfig::new(&redis.url());
        config.recheck = recheck;
        config.user_lookup = user_lookup;
        let shutdown = CancellationToken::new();
        let (watcher, logouts) =
            SessionWatcher::start(config, store, shutdown.clone()).expect("watcher");
        Setup {
            redis,
            watcher,
            logouts,
            _shutdown: shutdown.drop_guard(),
        }
    }

    async fn wait_for_mode(watcher: &SessionWatcher, mode: WatchMode) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while watcher.mode() != mode {
            assert!(
                Instant::now() < deadline,
                "mode stayed {:?}, wanted {mode:?}",
                watcher.mode()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn next_logout(
        logouts: &mut mpsc::UnboundedReceiver<LoggedOut>,
        within: Duration,
    ) -> LoggedOut {
        match tokio::time::timeout(within, logouts.recv()).await {
            Ok(Some(logout)) => logout,
            Ok(None) => panic!("watcher stopped"),
            Err(_) => panic!("no logout within {within:?}"),
        }
    }

    async fn no_logout(logouts: &mut mpsc::UnboundedReceiver<LoggedOut>, during: Duration) {
        if let Ok(event) = tokio::time::timeout(during, logouts.recv()).await {
            panic!("unexpected logout {event:?}");
        }
    }

    const LOGGED_IN_42: &str = r#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"passport":{"user":42}}"#;

    #[tokio::test]
    async fn keyspace_del_is_noticed_within_one_second() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        let flags = t
            .redis
            .command(&["CONFIG", "GET", "notify-keyspace-events"])
            .await;
        let Resp::Array(items) = flags else {
            panic!("CONFIG GET reply {flags:?}")
        };
        let Some(Resp::Bulk(flags)) = items.get(1) else {
            panic!("flags")
        };
        for flag in REQUIRED_KEYSPACE_FLAGS {
            assert!(flags.contains(flag), "flag {flag} missing in {flags}");
        }
        t.redis.set("sess:a", LOGGED_IN_42, 60).await;
        t.watcher.watch("a", &json!(42));
        // Let the pending first check pass, then log out.
        no_logout(&mut t.logouts, Duration::from_millis(1100)).await;
        let started = Instant::now();
        t.redis.command(&["DEL", "sess:a"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(
            logout,
            LoggedOut {
                sid: "a".into(),
                passport_user: json!(42),
                cause: LogoutCause::SessionGone,
                user: None,
            }
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(t.watcher.watched_sessions(), 0);
    }

    /// The app's user endpoint, wanting `Authorization: Bearer s3cret`, and a
    /// lookup of it that sends `header` (`None`: no header at all).
    async fn guarded_lookup(
        users: &Arc<std::sync::Mutex<Vec<Json>>>,
        header: Option<&str>,
    ) -> (UserLookup, tokio::task::JoinHandle<()>) {
        let (url_template, server) = super::super::test_support::user_http_server_guarded(
            users.clone(),
            Some(("Authorization", "Bearer s3cret")),
        )
        .await;
        let resolver = super::super::UserResolver::Http {
            url_template,
            timeout: Duration::from_millis(500),
        };
        let lines: Vec<String> = header.into_iter().map(str::to_owned).collect();
        (UserLookup::new(resolver, &lines).expect("header"), server)
    }

    #[tokio::test]
    async fn a_user_record_the_app_changed_is_reported_on_the_next_recheck() {
        let users = Arc::new(std::sync::Mutex::new(vec![
            json!({"id": 42, "role": "reader"}),
            json!({"id": 43, "role": "reader"}),
        ]));
        let (lookup, server) = guarded_lookup(&users, Some("Authorization: Bearer s3cret")).await;
        // Polling: every re-check re-reads sessions and users.
        let mut t = setup_with_lookup(
            &["--rename-command", "CONFIG", ""],
            Duration::from_millis(200),
            lookup,
        )
        .await;
        wait_for_mode(&t.watcher, WatchMode::Polling).await;
        t.redis.set("sess:c", LOGGED_IN_42, 60).await;
        t.redis
            .set("sess:d", r#"{"passport":{"user":43}}"#, 60)
            .await;
        t.watcher
            .watch_user("c", &json!(42), &json!({"id": 42, "role": "reader"}));
        // A plain watch learns its user from the first re-read.
        t.watcher.watch("d", &json!(43));
        no_logout(&mut t.logouts, Duration::from_millis(700)).await;
        users.lock().unwrap()[0] = json!({"id": 42, "role": "admin"});
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(
            logout,
            LoggedOut {
                sid: "c".into(),
                passport_user: json!(42),
                cause: LogoutCause::UserRecordChanged,
                user: Some(json!({"id": 42, "role": "admin"})),
            }
        );
        // The app deletes the other user.
        users.lock().unwrap().remove(1);
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(
            (logout.sid.as_str(), logout.cause),
            ("d", LogoutCause::UserNotFound)
        );
        assert_eq!(t.watcher.watched_sessions(), 0);
        server.abort();
    }

    #[tokio::test]
    async fn a_lookup_the_app_refuses_never_ends_a_login() {
        let users = Arc::new(std::sync::Mutex::new(vec![json!({"id": 42})]));
        // Without the header the endpoint answers 401: the lookup is unavailable,
        // which keeps existing sockets as a store outage does.
        let (lookup, server) = guarded_lookup(&users, None).await;
        let mut t = setup_with_lookup(
            &["--rename-command", "CONFIG", ""],
            Duration::from_millis(200),
            lookup,
        )
        .await;
        wait_for_mode(&t.watcher, WatchMode::Polling).await;
        t.redis.set("sess:r", LOGGED_IN_42, 60).await;
        t.watcher.watch_user("r", &json!(42), &json!({"id": 42}));
        users.lock().unwrap().clear();
        no_logout(&mut t.logouts, Duration::from_millis(900)).await;
        assert_eq!(t.watcher.watched_sessions(), 1);
        // A logout is still a logout.
        t.redis.command(&["DEL", "sess:r"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(logout.cause, LogoutCause::SessionGone);
        server.abort();
    }

    #[tokio::test]
    async fn keyspace_expiry_is_noticed() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        t.redis.set("sess:e", LOGGED_IN_42, 60).await;
        t.watcher.watch("e", &json!(42));
        let started = Instant::now();
        t.redis.command(&["EXPIRE", "sess:e", "1"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(2)).await;
        assert_eq!(logout.cause, LogoutCause::SessionGone);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "expired early: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn rewritten_session_is_compared_by_user() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        t.redis.set("sess:s", LOGGED_IN_42, 60).await;
        t.redis.set("sess:z", LOGGED_IN_42, 60).await;
        t.watcher.watch("s", &json!(42));
        t.watcher.watch("z", &json!(42));
        // A touch (EXPIRE) and a rewrite with the same user are not logouts.
        t.redis.command(&["EXPIRE", "sess:s", "120"]).await;
        t.redis
            .set(
                "sess:s",
                r#"{"cookie":{},"views":2,"passport":{"user":42}}"#,
                60,
            )
            .await;
        no_logout(&mut t.logouts, Duration::from_millis(1200)).await;
        // passport 0.5 logout: same key, passport.user gone.
        t.redis
            .set("sess:s", r#"{"cookie":{},"passport":{}}"#, 60)
            .await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(
            (logout.sid.as_str(), logout.cause),
            ("s", LogoutCause::NotLoggedIn)
        );
        // Another user logged in on the same id.
        t.redis
            .set("sess:z", r#"{"passport":{"user":7}}"#, 60)
            .await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(
            (logout.sid.as_str(), logout.cause),
            ("z", LogoutCause::UserChanged)
        );
    }

    #[tokio::test]
    async fn watching_is_reference_counted() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        t.redis.set("sess:r", LOGGED_IN_42, 60).await;
        t.redis.set("sess:q", LOGGED_IN_42, 60).await;
        t.watcher.watch("r", &json!(42));
        t.watcher.watch("r", &json!(42));
        t.watcher.unwatch("r", &json!(42));
        t.watcher.watch("q", &json!(42));
        t.watcher.unwatch("q", &json!(42));
        assert_eq!(t.watcher.watched_sessions(), 1);
        t.redis.command(&["DEL", "sess:q"]).await;
        t.redis.command(&["DEL", "sess:r"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(logout.sid, "r");
        no_logout(&mut t.logouts, Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn logout_between_handshake_and_watch_is_caught() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        // The key was deleted after the handshake read it but before watch().
        t.watcher.watch("late", &json!(42));
        let logout = next_logout(&mut t.logouts, Duration::from_millis(1500)).await;
        assert_eq!(logout.sid, "late");
    }

    #[tokio::test]
    async fn existing_notification_flags_are_kept() {
        let t = setup(&["--notify-keyspace-events", "El"], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        let Resp::Array(items) = t
            .redis
            .command(&["CONFIG", "GET", "notify-keyspace-events"])
            .await
        else {
            panic!("CONFIG GET")
        };
        let Some(Resp::Bulk(flags)) = items.get(1) else {
            panic!("flags")
        };
        for flag in ['E', 'l', 'K', 'g', '$', 'x', 'e'] {
            assert!(flags.contains(flag), "flag {flag} missing in {flags}");
        }
    }

    #[tokio::test]
    async fn config_refused_falls_back_to_polling() {
        let mut t = setup(&["--rename-command", "CONFIG", ""], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Polling).await;
        t.redis.set("sess:p", LOGGED_IN_42, 60).await;
        t.redis.set("sess:p2", LOGGED_IN_42, 60).await;
        t.watcher.watch("p", &json!(42));
        t.watcher.watch("p2", &json!(42));
        no_logout(&mut t.logouts, Duration::from_millis(1100)).await;
        let started = Instant::now();
        t.redis.command(&["DEL", "sess:p"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_millis(1500)).await;
        assert_eq!(logout.sid, "p");
        assert!(
            started.elapsed() < Duration::from_millis(1300),
            "{:?}",
            started.elapsed()
        );
        t.redis
            .set("sess:p2", r#"{"passport":{"user":43}}"#, 60)
            .await;
        let logout = next_logout(&mut t.logouts, Duration::from_millis(1500)).await;
        assert_eq!(
            (logout.sid.as_str(), logout.cause),
            ("p2", LogoutCause::UserChanged)
        );
    }

    #[tokio::test]
    async fn logout_during_outage_is_caught_after_reconnect() {
        let mut t = setup(&[], Duration::from_secs(1)).await;
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        t.redis.set("sess:o", LOGGED_IN_42, 60).await;
        t.redis.set("sess:kept", LOGGED_IN_42, 60).await;
        t.watcher.watch("o", &json!(42));
        no_logout(&mut t.logouts, Duration::from_millis(1100)).await;
        t.redis.stop();
        // Redis comes back empty (no persistence): the session is gone.
        t.redis.restart().await;
        t.redis.set("sess:kept", LOGGED_IN_42, 60).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(4)).await;
        assert_eq!(
            (logout.sid.as_str(), logout.cause),
            ("o", LogoutCause::SessionGone)
        );
        // Notifications were switched on again on the new server.
        wait_for_mode(&t.watcher, WatchMode::Keyspace).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let Resp::Array(items) = t
                .redis
                .command(&["CONFIG", "GET", "notify-keyspace-events"])
                .await
            else {
                panic!("CONFIG GET")
            };
            if matches!(items.get(1), Some(Resp::Bulk(flags)) if flags.contains('K')) {
                break;
            }
            assert!(Instant::now() < deadline, "notifications not re-enabled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.watcher.watch("kept", &json!(42));
        no_logout(&mut t.logouts, Duration::from_millis(1100)).await;
        let started = Instant::now();
        t.redis.command(&["DEL", "sess:kept"]).await;
        let logout = next_logout(&mut t.logouts, Duration::from_secs(1)).await;
        assert_eq!(logout.sid, "kept");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
