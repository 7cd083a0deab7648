//! Reading the sessions connect-redis wrote.
//!
//! connect-redis (every major from 3.x to 10.x) stores `JSON.stringify(session)`
//! as a plain string under `<prefix><sid>` and lets the key's TTL do the
//! expiry, so a missing key is the only "expired" there is: the stored
//! `cookie.expires` goes stale on every touch and is never consulted. This
//! side only reads; it never writes, touches or deletes a Node session. (It
//! writes sockhive's own minted-token index, in the same round trips.)

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::UnresponsiveConfig;
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

/// connect-redis's default key prefix.
pub const DEFAULT_SESSION_PREFIX: &str = "sess:";

/// `--session-store-timeout`: the longest a handshake waits for Redis.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// Keys per `MGET` in [`SessionStore::load_many`], so one re-check of many
/// sessions never becomes a single huge command that stalls Redis.
pub const MGET_BATCH: usize = 500;

/// Longest wait between reconnect attempts; keeps "Redis is back" to
/// "handshakes work" well under the contract's 3 s.
const RECONNECT_MAX_DELAY_MS: u32 = 1_000;
/// First reconnect delay; doubles up to the maximum.
const RECONNECT_MIN_DELAY_MS: u32 = 50;
/// Bound on a TCP connect (and AUTH/SELECT) to a Redis that does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection with a command outstanding this long is presumed dead and
/// replaced, so a hung (not closed) Redis is noticed too.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);
/// Commands queued while disconnected, beyond which new ones fail at once
/// instead of piling up for a Redis that is not coming back soon.
const MAX_QUEUED_COMMANDS: usize = 4_096;

/// Boxed future returned by the object-safe store traits.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One session as found in the store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredSession {
    /// The session JSON connect-redis wrote.
    Json(Json),
    /// The key exists but does not hold JSON (another serializer, or damage):
    /// nobody can be logged in by it, but it is not a store outage either.
    Unparsable {
        /// The parser's complaint, for logs.
        error: String,
    },
}

/// What a login reads of a session object: its `passport` member.
#[derive(serde::Deserialize)]
struct PassportMember {
    passport: Option<Json>,
}

impl StoredSession {
    /// Interprets the raw bytes of a session value, keeping what a login
    /// reads of it: an object keeps only its `passport` member. The rest
    /// (the cookie, the app's own data, however large) is checked as JSON
    /// but not built: a login built the whole tree, about ten allocations
    /// for the cookie object alone (issue 19). Anything else (not an object,
    /// a repeated `passport`) is read whole, as before, so it fails or
    /// succeeds exactly as the whole parse does.
    pub fn from_bytes(bytes: &[u8]) -> StoredSession {
        let opens_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if opens_object {
            if let Ok(member) = serde_json::from_slice::<PassportMember>(bytes) {
                let mut object = serde_json::Map::new();
                if let Some(passport) = member.passport {
                    object.insert(super::user::PASSPORT_SESSION_KEY.to_owned(), passport);
                }
                return StoredSession::Json(Json::Object(object));
            }
        }
        StoredSession::whole(bytes)
    }

    /// Interprets the raw bytes of a stored value, every member kept (a
    /// user record; a session the lean read could not take).
    pub fn whole(bytes: &[u8]) -> StoredSession {
        match serde_json::from_slice(bytes) {
            Ok(json) => StoredSession::Json(json),
            Err(error) => StoredSession::Unparsable {
                error: error.to_string(),
            },
        }
    }
}

/// How a user record kept in Redis is shaped (for the Redis user lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserRecordShape {
    /// A string holding JSON, read with `GET`.
    Json,
    /// A hash, read with `HGETALL`; fields become string members of an object.
    Hash,
}

/// Why the store could not answer: always the store's fault, never the
/// client's, so handshakes fail closed with `SessionStoreUnavailableError`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No answer within the store timeout (Redis down, reconnecting or slow).
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("session store failed: {0}")]
    Failed(String),
    /// This store cannot do what was asked (e.g. user records).
    #[error("session store does not support {0}")]
    Unsupported(&'static str),
}

/// Where sessions are read from. Object-safe so the worker holds one
/// `Arc<dyn SessionStore>` for every connection and tests can substitute one.
pub trait SessionStore: Send + Sync {
    /// The session stored for `sid`, `None` when there is no key.
    /// The default Redis path is one `GET`, or one `MGET` shared with the
    /// other logins waiting at that moment (hot path: per handshake).
    fn load<'a>(&'a self, sid: &'a str) -> StoreFuture<'a, Option<StoredSession>>;

    /// The sessions for many ids, in the same order; used by the periodic
    /// logout re-check (batched `MGET`).
    fn load_many<'a>(&'a self, sids: &'a [String]) -> StoreFuture<'a, Vec<Option<StoredSession>>>;

    /// A user record kept next to the sessions (the Redis user lookup);
    /// `None` when the key is absent.
    fn load_user_record<'a>(
        &'a self,
        key: &'a str,
        shape: UserRecordShape,
    ) -> StoreFuture<'a, Option<Json>> {
        let _ = (key, shape);
        Box::pin(async { Err(StoreError::Unsupported("user records")) })
    }

    /// Queues `filing` for the store's next round trip, beside the session
    /// reads waiting then; gives it back when this store makes no such
    /// round trips (a cluster, a test store), and the caller files it alone.
    fn file_with_reads(&self, filing: Filing) -> Result<(), Filing> {
        Err(filing)
    }
}

/// Settings for [`RedisSessionStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// `redis://[user:pass@]host:port[/db]` (also `redis-cluster://…`).
    pub url: String,
    /// connect-redis `prefix`; the key is `prefix + sid`.
    pub prefix: String,
    /// Per-command timeout (`--session-store-timeout`).
    pub command_timeout: Duration,
}

impl RedisStoreConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: &str) -> RedisStoreConfig {
        RedisStoreConfig {
            url: url.to_owned(),
            prefix: DEFAULT_SESSION_PREFIX.to_owned(),
            command_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

/// A bad store configuration, found before anything connects.
#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    /// The Redis URL does not parse.
    #[error("invalid session store URL: {0}")]
    BadUrl(String),
    /// The client could not be built from it.
    #[error("cannot build the session store client: {0}")]
    Client(String),
    /// Called outside a tokio runtime: the connection task has nowhere to run.
    #[error("the session store must be started inside the worker's tokio runtime")]
    NoRuntime,
}

/// Builds the fred configuration shared by the store and the watcher.
pub(crate) fn fred_builder(
    url: &str,
    command_timeout: Duration,
) -> Result<Builder, StoreSetupError> {
    // fred spawns its connection task; without a runtime that would panic.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(StoreSetupError::NoRuntime);
    }
    let mut config = Config::from_url(url).map_err(|e| StoreSetupError::BadUrl(e.to_string()))?;
    // A Redis that is down at start-up must not stop the worker: keep retrying.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY_MS,
            RECONNECT_MAX_DELAY_MS,
            2,
        ))
        .with_connection_config(|connection| {
            connection.connection_timeout = CONNECT_TIMEOUT;
            connection.internal_command_timeout = CONNECT_TIMEOUT;
            connection.max_command_buffer_len = MAX_QUEUED_COMMANDS;
            connection.unresponsive = UnresponsiveConfig {
                max_timeout: Some(UNRESPONSIVE_AFTER),
                interval: Duration::from_millis(250),
            };
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = command_timeout;
            // Keyspace notifications arrive in bursts; a lagging receiver
            // forces a full re-check, so give it room.
            performance.broadcast_channel_capacity = 4_096;
        });
    Ok(builder)
}

/// connect-redis sessions read with fred.
#[derive(Clone)]
pub struct RedisSessionStore {
    client: Client,
    prefix: String,
    command_timeout: Duration,
    /// Every command carries the timeout itself so a command that gave up
    /// is also dropped from fred's queue instead of being sent later.
    options: Options,
    /// Where a login's read and a minted token's filing wait for the next
    /// round trip (standalone Redis; a cluster's `MGET` and pipelines cannot
    /// span slots, so there every login reads alone).
    jobs: Option<mpsc::UnboundedSender<StoreJob>>,
}

/// A login's session key, and where its value goes.
type WaitingRead = (String, oneshot::Sender<Result<Value, StoreError>>);

/// A key sockhive files next to the sessions (the minted-token index):
/// key, value, lifetime. Never a Node session: those are only read.
pub type Filing = (String, String, Duration);

/// What waits for the store's next round trip.
enum StoreJob {
    Read(WaitingRead),
    File(Filing),
}

/// Runs the store's round trips, for as long as the store lives.
///
/// Why (issue 19): one round trip in flight at a time, and what arrives
/// meanwhile goes together in the next one. The logins' reads become one
/// `MGET` (one command for many logins where there was one each, and no
/// fred command future of about 8 KB per login in flight, which left the
/// heap full of holes between the sockets that stayed). The minted tokens
/// filed meanwhile ride in the same pipeline as `SET`s: a login's filing
/// goes out with the next logins' read, where a round trip of its own cost
/// about 8 µs of worker CPU per cookie handshake (a write, a wake of Redis,
/// the reply's read).
async fn round_trips(
    client: Client,
    options: Options,
    timeout: Duration,
    mut jobs: mpsc::UnboundedReceiver<StoreJob>,
) {
    let mut batch: Vec<StoreJob> = Vec::new();
    let mut reads: Vec<WaitingRead> = Vec::new();
    let mut filings: Vec<Filing> = Vec::new();
    while next_batch(&mut jobs, &mut batch, MGET_BATCH).await {
        for job in batch.drain(..) {
            match job {
                // A login that gave up (its handshake ended) is not read.
                StoreJob::Read((_, reply)) if reply.is_closed() => {}
                StoreJob::Read(read) => reads.push(read),
                StoreJob::File(filing) => filings.push(filing),
            }
        }
        let values = if filings.is_empty() {
            read_alone(&client, &options, timeout, &reads).await
        } else {
            file_and_read(&client, &options, timeout, &mut filings, &reads).await
        };
        match values {
            Ok(values) => {
                for ((_, reply), value) in reads.drain(..).zip(values) {
                    let _ = reply.send(Ok(value));
                }
            }
            Err(error) => {
                for (_, reply) in reads.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        if batch.capacity() > MGET_BATCH {
            batch = Vec::new();
        }
        if reads.capacity() > MGET_BATCH {
            reads = Vec::new();
        }
        if filings.capacity() > MGET_BATCH {
            filings = Vec::new();
        }
    }
}

/// The sessions of `reads`, in order: one `GET`, or one `MGET` for many.
async fn read_alone(
    client: &Client,
    options: &Options,
    timeout: Duration,
    reads: &[WaitingRead],
) -> Result<Vec<Value>, StoreError> {
    let commands = client.with_options(options);
    match reads {
        [] => Ok(Vec::new()),
        [(key, _)] => bounded(timeout, commands.get::<Value, _>(key.as_str()))
            .await
            .map(|value| vec![value]),
        _ => {
            let keys: Vec<Key> = reads
                .iter()
                .map(|(key, _)| Key::from(key.as_str()))
                .collect();
            let values = bounded(timeout, commands.mget::<Vec<Value>, _>(keys)).await?;
            checked_count(values, reads.len())
        }
    }
}

/// Redis script: `SET key value PX ms` for the first `ARGV[1]` keys (values
/// and lifetimes in `ARGV` after it), then `MGET` of the other keys, as
/// `[failed SETs, first SET error or nil, values]`. A `SET` that fails (a
/// full Redis) does not stop the reads.
///
/// Why a script: fred writes each command of a pipeline with a write of its
/// own, and a filing's separate write, Redis wake-up and reply cost about
/// 8 µs of worker CPU per cookie handshake (issue 19). One command is one
/// write and one reply.
const FILE_AND_READ: &str = "local n = tonumber(ARGV[1]) local failed = 0 local first = false for i = 1, n do local r = redis.pcall('SET', KEYS[i], ARGV[2 * i], 'PX', ARGV[2 * i + 1]) if type(r) == 'table' and r.err then failed = failed + 1 if not first then first = r.err end end end local values = {} if #KEYS > n then values = redis.call('MGET', unpack(KEYS, n + 1)) end return {failed, first, values}";

/// Files `filings` and reads the sessions of `reads` with one command (one
/// write, one round trip); the sessions come back in order. A filing that
/// fails is logged: its token is refused until its session logs in again,
/// as when a lone `SET` failed. When Redis refuses the script, the reads
/// are made alone and the filings follow as plain `SET`s, so a login never
/// fails for a filing's sake.
async fn file_and_read(
    client: &Client,
    options: &Options,
    timeout: Duration,
    filings: &mut Vec<Filing>,
    reads: &[WaitingRead],
) -> Result<Vec<Value>, StoreError> {
    let filed = filings.len();
    if let ([_], []) = (filings.as_slice(), reads) {
        // Alone, a plain `SET` costs Redis less than the script.
        file_each(
            client.clone(),
            options.clone(),
            timeout,
            std::mem::take(filings),
        )
        .await;
        return Ok(Vec::new());
    }
    let mut keys: Vec<Key> = Vec::with_capacity(filed + reads.len());
    let mut args: Vec<Value> = Vec::with_capacity(1 + 2 * filed);
    args.push(Value::Integer(filed as i64));
    for (key, value, lifetime) in filings.iter() {
        keys.push(Key::from(key.as_str()));
        args.push(Value::from(value.as_str()));
        args.push(Value::Integer(lifetime_ms(*lifetime)));
    }
    keys.extend(reads.iter().map(|(key, _)| Key::from(key.as_str())));
    let commands = client.with_options(options);
    let reply = bounded(
        timeout,
        commands.eval::<Value, _, _, _>(FILE_AND_READ, keys, args),
    )
    .await;
    let mut parts = match reply {
        Ok(reply) => {
            filings.clear();
            reply.into_array().into_iter()
        }
        Err(error @ StoreError::Timeout(_)) => {
            // No answer at all: a second try would only wait as long again.
            tracing::warn!(error = %error, failed = filed, "minted tokens not filed; they will be refused until their sessions log in again");
            filings.clear();
            return Err(error);
        }
        Err(error) => {
            // A Redis that refuses scripts (an ACL, a renamed `EVAL`) still
            // gets the filings, as plain `SET`s off the reads' path.
            tracing::warn!(error = %error, "the filing script failed; filing with plain SETs");
            let filings = std::mem::take(filings);
            tokio::spawn(file_each(client.clone(), options.clone(), timeout, filings));
            return read_alone(client, options, timeout, reads).await;
        }
    };
    let failed = parts.next().and_then(|n| n.as_i64()).unwrap_or(0);
    if failed > 0 {
        let error = parts
            .next()
            .and_then(|e| e.into_string())
            .unwrap_or_default();
        tracing::warn!(error = %error, failed, "minted tokens not filed; they will be refused until their sessions log in again");
    } else {
        parts.next();
    }
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let values = parts.next().map(Value::into_array).unwrap_or_default();
    checked_count(values, reads.len())
}

/// Files each of `filings` with a `SET` of its own; sent together, fred
/// writes them in one write. Failures are logged.
async fn file_each(client: Client, options: Options, timeout: Duration, filings: Vec<Filing>) {
    let commands = client.with_options(&options);
    let sets = filings.into_iter().map(|(key, value, lifetime)| {
        let expire = Expiration::PX(lifetime_ms(lifetime));
        bounded(
            timeout,
            commands.set::<(), _, _>(key, value, Some(expire), None, false),
        )
    });
    let results = futures_util::future::join_all(sets).await;
    let failures: Vec<StoreError> = results.into_iter().filter_map(Result::err).collect();
    if let Some(error) = failures.first() {
        tracing::warn!(error = %error, failed = failures.len(), "minted tokens not filed; they will be refused until their sessions log in again");
    }
}

/// A filing's lifetime in ms, at least 1: `PX 0` is an error, not "gone".
fn lifetime_ms(lifetime: Duration) -> i64 {
    lifetime.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// `values` when an `MGET` answered one per key.
fn checked_count(values: Vec<Value>, keys: usize) -> Result<Vec<Value>, StoreError> {
    if values.len() == keys {
        Ok(values)
    } else {
        Err(StoreError::Failed(format!(
            "MGET answered {} values for {keys} keys",
            values.len()
        )))
    }
}

/// Waits for the next item of `queue`, then takes those already queued
/// behind it, up to `most` in `batch`; false once the queue is closed and
/// empty. How the store's batching tasks gather what arrived while their
/// previous command was in flight.
pub(crate) async fn next_batch<T>(
    queue: &mut mpsc::UnboundedReceiver<T>,
    batch: &mut Vec<T>,
    most: usize,
) -> bool {
    let Some(first) = queue.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < most {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    true
}

/// Runs one command under the store timeout; a fred timeout and an outer
/// guard both map to [`StoreError::Timeout`].
async fn bounded<T, F>(timeout: Duration, command: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, Error>>,
{
    // The guard gives fred's own timeout a moment to fire first.
    let guard = timeout + Duration::from_millis(50);
    match tokio::time::timeout(guard, command).await {
        Err(_) => Err(StoreError::Timeout(timeout)),
        Ok(Err(error)) => Err(store_error(error, timeout)),
        Ok(Ok(value)) => Ok(value),
    }
}

/// A fred error as the store reports it: its timeout is the store's.
fn store_error(error: Error, timeout: Duration) -> StoreError {
    if *error.kind() == ErrorKind::Timeout {
        StoreError::Timeout(timeout)
    } else {
        StoreError::Failed(error.to_string())
    }
}

impl RedisSessionStore {
    /// Builds the client and starts connecting in the background; never
    /// waits for Redis. Must be called inside the worker's tokio runtime.
    pub fn connect(config: &RedisStoreConfig) -> Result<RedisSessionStore, StoreSetupError> {
        let client = fred_builder(&config.url, config.command_timeout)?
            .build()
            .map_err(|e| StoreSetupError::Client(e.to_string()))?;
        // The handle is not kept: the connection task runs until the client quits.
        let _connection = client.connect();
        let options = Options {
            timeout: Some(config.command_timeout),
            ..Options::default()
        };
        let jobs = (!client.is_clustered()).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // Ends when the last clone of the store is dropped.
            tokio::spawn(round_trips(
                client.clone(),
                options.clone(),
                config.command_timeout,
                rx,
            ));
            tx
        });
        Ok(RedisSessionStore {
            client,
            prefix: config.prefix.clone(),
            command_timeout: config.command_timeout,
            options,
            jobs,
        })
    }

    /// The key connect-redis uses for `sid`.
    pub fn key_for(&self, sid: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + sid.len());
        key.push_str(&self.prefix);
        key.push_str(sid);
        key
    }

    /// Closes the connection (tests and shutdown).
    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }

    /// Runs one command under the store timeout.
    async fn bounded<T, F>(&self, command: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, Error>>,
    {
        bounded(self.command_timeout, command).await
    }
}

fn session_from_value(value: Value) -> Option<StoredSession> {
    stored_from_value(value, StoredSession::from_bytes)
}

fn stored_from_value(value: Value, parse: fn(&[u8]) -> StoredSession) -> Option<StoredSession> {
    match value {
        Value::Null => None,
        Value::Bytes(bytes) => Some(parse(&bytes)),
        Value::String(text) => Some(parse(text.as_bytes())),
        other => Some(StoredSession::Unparsable {
            error: format!("unexpected Redis reply type {:?}", other.kind()),
        }),
    }
}

impl SessionStore for RedisSessionStore {
    fn load<'a>(&'a self, sid: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        let key = self.key_for(sid);
        // Two futures, each boxed at its own size: the batched read's is a
        // few hundred bytes, where one holding fred's `GET` is kilobytes
        // (issue 19: every login in flight holds one).
        let Some(jobs) = self.jobs.as_ref() else {
            return Box::pin(async move {
                let value: Value = self
                    .bounded(self.client.with_options(&self.options).get(key))
                    .await?;
                Ok(session_from_value(value))
            });
        };
        Box::pin(async move {
            let (reply, value) = oneshot::channel();
            if jobs.send(StoreJob::Read((key, reply))).is_err() {
                return Err(StoreError::Failed("the session reader has stopped".into()));
            }
            // The login's whole wait (the read in flight, then its own batch)
            // is bounded by the store timeout, as a lone `GET` was.
            let guard = self.command_timeout + Duration::from_millis(50);
            match tokio::time::timeout(guard, value).await {
                Err(_) => Err(StoreError::Timeout(self.command_timeout)),
                Ok(Err(_)) => Err(StoreError::Failed("the session reader has stopped".into())),
                Ok(Ok(value)) => value.map(session_from_value),
            }
        })
    }

    fn file_with_reads(&self, filing: Filing) -> Result<(), Filing> {
        match &self.jobs {
            Some(jobs) => jobs.send(StoreJob::File(filing)).map_err(|refused| {
                let StoreJob::File(filing) = refused.0 else {
                    unreachable!("the job sent was a filing")
                };
                filing
            }),
            None => Err(filing),
        }
    }

    fn load_many<'a>(&'a self, sids: &'a [String]) -> StoreFuture<'a, Vec<Option<StoredSession>>> {
        Box::pin(async move {
            let mut sessions = Vec::with_capacity(sids.len());
            for batch in sids.chunks(MGET_BATCH) {
                let keys: Vec<Key> = batch
                    .iter()
                    .map(|sid| Key::from(self.key_for(sid)))
                    .collect();
                let values: Vec<Value> = self
                    .bounded(self.client.with_options(&self.options).mget(keys))
                    .await?;
                if values.len() != batch.len() {
                    return Err(StoreError::Failed(format!(
                        "MGET answered {} values for {} keys",
                        values.len(),
                        batch.len()
                    )));
                }
                sessions.extend(values.into_iter().map(session_from_value));
            }
            Ok(sessions)
        })
    }

    fn load_user_record<'a>(
        &'a self,
        key: &'a str,
        shape: UserRecordShape,
    ) -> StoreFuture<'a, Option<Json>> {
        Box::pin(async move {
            let commands = self.client.with_options(&self.options);
            match shape {
                UserRecordShape::Json => {
                    let value: Value = self.bounded(commands.get(key)).await?;
                    Ok(
                        stored_from_value(value, StoredSession::whole).map(|record| match record {
                            StoredSession::Json(json) => json,
                            // An unreadable record is reported as a JSON string so
                            // the resolver can refuse it as bad data, not an outage.
                            StoredSession::Unparsable { error } => Json::String(error),
                        }),
                    )
                }
                UserRecordShape::Hash => {
                    let fields: std::collections::HashMap<String, String> =
                        self.bounded(commands.hgetall(key)).await?;
                    if fields.is_empty() {
                        return Ok(None);
                    }
                    // HGETALL's order is arbitrary; sort for a stable object.
                    let mut sorted: Vec<(String, String)> = fields.into_iter().collect();
                    sorted.sort();
                    Ok(Some(Json::Object(
                        sorted
                            .into_iter()
                            .map(|(k, v)| (k, Json::String(v)))
                            .collect(),
                    )))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{RedisFixture, Resp};
    use super::super::user::passport_user;
    use super::*;

    /// Issue 19: a login keeps only `passport` of a session, and logs in
    /// (or refuses) exactly as the whole parse does.
    #[test]
    fn a_session_is_read_for_its_passport_alone() {
        let lean = StoredSession::from_bytes(
            br#" {"cookie":{"originalMaxAge":null,"httpOnly":true,"path":"/"},"passport":{"user":"u1"},"cart":[1,{"a":2}]}"#,
        );
        assert_eq!(
            lean,
            StoredSession::Json(serde_json::json!({"passport": {"user": "u1"}}))
        );
        let cases: [&[u8]; 8] = [
            br#"{"cookie":{},"passport":{"user":"u1"},"x":1}"#,
            br#"{"cookie":{}}"#,
            br#"{"passport":null}"#,
            br#"{"passport":{}}"#,
            br#"{"passport":{"user":1},"passport":{"user":2}}"#,
            br#"[{"passport":{"user":1}}]"#,
            br#"{"passport":{"user":1}} trailing"#,
            br#""text""#,
        ];
        for bytes in cases {
            let (lean, whole) = (
                StoredSession::from_bytes(bytes),
                StoredSession::whole(bytes),
            );
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(passport_user(&lean), passport_user(&whole), "{text}");
            assert_eq!(
                matches!(lean, StoredSession::Unparsable { .. }),
                matches!(whole, StoredSession::Unparsable { .. }),
                "{text}"
            );
        }
        // A repeated `passport` keeps the last, as a parsed object does.
        let repeated = br#"{"passport":{"user":1},"passport":{"user":2}}"#;
        assert_eq!(
            passport_user(&StoredSession::from_bytes(repeated)),
            Ok(&serde_json::json!(2))
        );
    }

    #[test]
    fn stored_session_parses_or_reports() {
        assert_eq!(
            StoredSession::from_bytes(br#"{"passport":{"user":1}}"#),
            StoredSession::Json(serde_json::json!({"passport": {"user": 1}}))
        );
        assert!(matches!(
            StoredSession::from_bytes(b"{nope"),
            StoredSession::Unparsable { .. }
        ));
        assert!(matches!(
            StoredSession::from_bytes(&[0xff, 0xfe]),
            StoredSession::Unparsable { .. }
        ));
    }

    #[tokio::test]
    async fn load_reads_key_and_missing_is_none() {
        let redis = RedisFixture::start(&[]).await;
        redis
            .set("sess:abc", r#"{"passport":{"user":42}}"#, 60)
            .await;
        redis.set("sess:bad", "not json", 60).await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        assert_eq!(
            store.load("abc").await.expect("load"),
            Some(StoredSession::Json(
                serde_json::json!({"passport": {"user": 42}})
            ))
        );
        assert_eq!(store.load("missing").await.expect("load"), None);
        assert!(matches!(
            store.load("bad").await.expect("load"),
            Some(StoredSession::Unparsable { .. })
        ));
        let sids: Vec<String> = ["abc", "missing", "bad"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let many = store.load_many(&sids).await.expect("load_many");
        assert_eq!(many.len(), 3);
        assert!(matches!(many[0], Some(StoredSession::Json(_))));
        assert_eq!(many[1], None);
        assert!(matches!(many[2], Some(StoredSession::Unparsable { .. })));
    }

    /// Issue 19: logins that arrive while a read is in flight share the next
    /// one, and each still gets its own session (or none).
    #[tokio::test]
    async fn concurrent_loads_share_batched_reads() {
        let redis = RedisFixture::start(&[]).await;
        for i in (0..200).step_by(2) {
            redis
                .set(
                    &format!("sess:c{i}"),
                    &format!(r#"{{"passport":{{"user":{i}}}}}"#),
                    60,
                )
                .await;
        }
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        // Connected, and the statistics start from here.
        assert_eq!(store.load("none").await.expect("load"), None);
        // A login in flight holds a small future, not one sized for fred's
        // `GET` (kilobytes).
        let waiting = store.load("c0");
        let size = std::mem::size_of_val(&*waiting);
        assert!(size <= 512, "a batched load is {size} bytes");
        drop(waiting);
        redis.reset_stats().await;
        let sids: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let loads = futures_util::future::join_all(sids.iter().map(|sid| store.load(sid))).await;
        for (i, loaded) in loads.into_iter().enumerate() {
            let expected = (i % 2 == 0)
                .then(|| StoredSession::Json(serde_json::json!({"passport": {"user": i}})));
            assert_eq!(loaded.expect("load"), expected, "session c{i}");
        }
        let gets = redis.command_calls("get").await;
        let mgets = redis.command_calls("mget").await;
        assert!(mgets >= 1, "no batch: {gets} GET, {mgets} MGET");
        assert!(
            gets + mgets <= 10,
            "{gets} GET and {mgets} MGET for 200 logins"
        );
    }

    /// Issue 19: minted tokens filed while logins wait go out with the
    /// logins' read, in one write and one round trip, each with its own
    /// lifetime; every login still gets its own session.
    #[tokio::test]
    async fn filings_ride_with_the_waiting_reads_in_one_write() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:r1", r#"{"passport":{"user":1}}"#, 60).await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        // Connected, and the statistics start from here.
        assert_eq!(store.load("none").await.expect("load"), None);
        redis.reset_stats().await;
        let before = redis.reads_processed().await;
        for i in 0..5u64 {
            let filing = (
                format!("sockhive:minted:h{i}"),
                format!("s{i}"),
                Duration::from_secs(60 + i),
            );
            assert!(store.file_with_reads(filing).is_ok(), "queued");
        }
        let (first, second) = tokio::join!(store.load("r1"), store.load("r2"));
        assert_eq!(
            first.expect("load"),
            Some(StoredSession::Json(
                serde_json::json!({"passport": {"user": 1}})
            ))
        );
        assert_eq!(second.expect("load"), None);
        // One read of the store's socket, plus two of the fixture's own: the
        // end of the connection that asked `before`, and this `INFO`.
        let reads = redis.reads_processed().await - before;
        assert_eq!(
            reads,
            3,
            "Redis read the store's commands in {} reads",
            reads - 2
        );
        // One command: the script, which made the five `SET`s and the `MGET`.
        assert_eq!(redis.command_calls("eval").await, 1);
        assert_eq!(redis.command_calls("set").await, 5);
        assert_eq!(redis.command_calls("mget").await, 1);
        assert_eq!(redis.command_calls("get").await, 0);
        for i in [0u64, 4] {
            let key = format!("sockhive:minted:h{i}");
            assert_eq!(
                redis.command(&["GET", &key]).await,
                Resp::Bulk(format!("s{i}"))
            );
            let Resp::Int(ttl) = redis.command(&["PTTL", &key]).await else {
                panic!("no TTL on {key}");
            };
            let lifetime = ((60 + i) * 1000) as i64;
            assert!(
                ttl > lifetime - 10_000 && ttl <= lifetime,
                "{key}: {ttl} ms"
            );
        }
    }

    /// A Redis too full to file a minted token (maxmemory, noeviction) still
    /// serves the session read that shares the round trip.
    #[tokio::test]
    async fn a_full_redis_still_serves_the_reads_beside_a_filing() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:r1", r#"{"passport":{"user":1}}"#, 60).await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        assert_eq!(store.load("none").await.expect("load"), None);
        redis.command(&["CONFIG", "SET", "maxmemory", "1"]).await;
        let filing = ("m0".to_owned(), "s0".to_owned(), Duration::from_secs(60));
        assert!(store.file_with_reads(filing).is_ok(), "queued");
        assert_eq!(
            store.load("r1").await.expect("load"),
            Some(StoredSession::Json(
                serde_json::json!({"passport": {"user": 1}})
            ))
        );
        assert_eq!(redis.command(&["EXISTS", "m0"]).await, Resp::Int(0));
    }

    /// A Redis that refuses scripts still gets the filings, and the logins
    /// beside them their sessions.
    #[tokio::test]
    async fn a_redis_without_scripts_gets_the_filings_as_plain_sets() {
        let redis = RedisFixture::start(&["--rename-command", "EVAL", ""]).await;
        redis.set("sess:r1", r#"{"passport":{"user":1}}"#, 60).await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        assert_eq!(store.load("none").await.expect("load"), None);
        for i in 0..3u64 {
            let filing = (format!("m{i}"), format!("s{i}"), Duration::from_secs(60));
            assert!(store.file_with_reads(filing).is_ok(), "queued");
        }
        assert_eq!(
            store.load("r1").await.expect("load"),
            Some(StoredSession::Json(
                serde_json::json!({"passport": {"user": 1}})
            ))
        );
        redis.wait_for_keys(4).await;
    }

    /// A burst of filings with no login waiting is filed whole all the same.
    #[tokio::test]
    async fn filings_without_reads_are_filed_too() {
        let redis = RedisFixture::start(&[]).await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        for i in 0..300u64 {
            let filing = (format!("m{i}"), format!("s{i}"), Duration::from_secs(60));
            assert!(store.file_with_reads(filing).is_ok(), "queued");
        }
        redis.wait_for_keys(300).await;
    }

    #[tokio::test]
    async fn load_many_batches_large_sets() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:s7", r#"{"passport":{"user":7}}"#, 60).await;
        redis
            .set(
                &format!("sess:s{}", MGET_BATCH + 3),
                r#"{"passport":{"user":9}}"#,
                60,
            )
            .await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        let sids: Vec<String> = (0..MGET_BATCH * 2 + 1).map(|i| format!("s{i}")).collect();
        redis.reset_stats().await;
        let many = store.load_many(&sids).await.expect("load_many");
        assert_eq!(many.len(), sids.len());
        assert_eq!(many.iter().filter(|s| s.is_some()).count(), 2);
        assert!(many[7].is_some() && many[MGET_BATCH + 3].is_some());
        assert_eq!(redis.command_calls("mget").await, 3);
    }

    #[tokio::test]
    async fn user_records_as_json_and_hash() {
        let redis = RedisFixture::start(&[]).await;
        redis
            .set("user:42", r#"{"id":42,"username":"alice"}"#, 60)
            .await;
        redis
            .command(&["HSET", "uh:7", "name", "bob", "role", "editor"])
            .await;
        let store =
            RedisSessionStore::connect(&RedisStoreConfig::new(&redis.url())).expect("store");
        assert_eq!(
            store
                .load_user_record("user:42", UserRecordShape::Json)
                .await
                .expect("json"),
            Some(serde_json::json!({"id": 42, "username": "alice"}))
        );
        assert_eq!(
            store
                .load_user_record("user:1", UserRecordShape::Json)
                .await
                .expect("json"),
            None
        );
        assert_eq!(
            store
                .load_user_record("uh:7", UserRecordShape::Hash)
                .await
                .expect("hash"),
            Some(serde_json::json!({"name": "bob", "role": "editor"}))
        );
        assert_eq!(
            store
                .load_user_record("uh:8", UserRecordShape::Hash)
                .await
                .expect("hash"),
            None
        );
        // Wrong type is a store error, not a panic.
        assert!(store
            .load_user_record("user:42", UserRecordShape::Hash)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn down_at_start_fails_within_timeout_then_recovers() {
        let mut redis = RedisFixture::start(&[]).await;
        let url = redis.url();
        redis.stop();
        let mut config = RedisStoreConfig::new(&url);
        config.command_timeout = Duration::from_millis(200);
        let store =
            RedisSessionStore::connect(&config).expect("construction never waits for Redis");
        let started = tokio::time::Instant::now();
        let result = store.load("abc").await;
        assert!(
            matches!(
                result,
                Err(StoreError::Timeout(_)) | Err(StoreError::Failed(_))
            ),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        redis.restart().await;
        redis
            .set("sess:abc", r#"{"passport":{"user":1}}"#, 60)
            .await;
        let back = tokio::time::Instant::now();
        let deadline = back + Duration::from_secs(3);
        loop {
            if let Ok(Some(_)) = store.load("abc").await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "store did not recover within 3 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
