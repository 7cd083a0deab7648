//! The one configuration of a node, parsed once and strictly.
//!
//! Every setting has three spellings, highest precedence first: a flag
//! (`--drain-timeout`), an environment variable (`SOCKHIVE_DRAIN_TIMEOUT`) and
//! a key in the TOML file (`[server] drain_timeout`). One [`ConfigLayer`]
//! describes all three: clap reads flags and environment into it, serde reads
//! the file into another, [`ConfigLayer::over`] stacks them, and
//! [`Config::resolve`] fills defaults and runs the cross-field checks.
//!
//! The resolved [`Config`] is what the master hands each worker at start-up, so
//! every process of a node runs on exactly the same settings.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::channel_rules::{ChannelRules, RuleSpec};
use crate::http_url::HttpUrl;
pub use crate::jwt::{JwtAlgorithm, DEFAULT_JWT_LEEWAY, MAX_JWT_LEEWAY};
use crate::jwt::{JwtKeys, TokenSigner, TokenVerifier};
use crate::units::{ByteSize, HumanDuration};

/// Default public address: WebSocket endpoints, `/negotiate`, `/healthz`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
/// Default admin address; loopback so metrics and the admin API are not public by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9000";
/// How long SIGTERM waits for sockets to close before the master forces the exit.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection must finish its HTTP request within this time (slowloris guard).
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads above this size get 431.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// Largest WebSocket frame or message a client may send; beyond it: close 1009.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;
/// Time from the upgrade to the protocol handshake (SocketCluster closes with 4005).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Channels one socket may hold at once.
pub const DEFAULT_MAX_SUBSCRIPTIONS: u32 = 1000;
/// Bytes queued towards one slow client before it is disconnected.
pub const DEFAULT_MAX_SEND_QUEUE: u64 = 8 << 20;
/// SocketCluster's own ping interval (server-driven pings).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(8);
/// SocketCluster's own ping timeout, advertised in the `#handshake` reply.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Engine.IO's own ping interval (`pingInterval` in the open packet).
pub const DEFAULT_SOCKETIO_PING_INTERVAL: Duration = Duration::from_millis(25_000);
/// Engine.IO's own ping timeout (`pingTimeout` in the open packet).
pub const DEFAULT_SOCKETIO_PING_TIMEOUT: Duration = Duration::from_millis(20_000);
/// Longest channel name a client may use, in bytes.
pub const DEFAULT_MAX_CHANNEL_LENGTH: u32 = 256;
/// Longest event or procedure name a client may use, in bytes.
pub const DEFAULT_MAX_EVENT_LENGTH: u32 = 256;
/// Longest lifetime (`exp - iat`) of a JWT a client may present.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 86_400);
/// Lifetime of tokens sockhive signs (SocketCluster's `authDefaultExpiry`).
pub const DEFAULT_TOKEN_EXPIRY: Duration = Duration::from_secs(86_400);
/// Upper bound on `--workers`: more processes than this is a typo, not a plan.
pub const MAX_WORKERS: u16 = 256;

/// A configuration problem, naming the key at fault and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The TOML file is not valid TOML, has an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// The parser's message, which names the line and the key.
        message: String,
    },
    /// A value is well-formed but not acceptable (alone or with another setting).
    /// The message names both the TOML key and the flag, since either may be
    /// where the operator wrote it.
    #[error("{key} (--{}): {reason}", flag_of(key))]
    Invalid {
        /// The key as written in the TOML file, e.g. `server.workers`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// `server.admin_listen` → `admin-listen`: every key's flag is its last part in kebab case.
fn flag_of(key: &str) -> String {
    key.rsplit('.').next().unwrap_or(key).replace('_', "-")
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// How worker processes share the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AcceptMode {
    /// One `SO_REUSEPORT` socket per worker slot, owned by the master: the kernel
    /// spreads connections evenly, and a restarting worker's queue waits for its
    /// successor instead of being reset.
    Reuseport,
    /// One listening socket inherited by every worker; workers race to accept.
    Shared,
}

/// How the kernel schedules the master and its workers against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: a process the master or a worker wakes does not
    /// preempt the one that woke it. A publish crosses three processes
    /// (publisher's worker, master, each subscriber's worker); with wakeup
    /// preemption on a shared core, each woken worker ran as soon as one
    /// message arrived, so a burst reached subscribers in dribbles and each
    /// socket wrote 2-3 times per burst instead of once (issue 19). Same CPU
    /// share as normal processes; on an idle core a wakeup runs at once.
    Batch,
    /// Leave the policy sockhive was started with (`SCHED_OTHER`, or
    /// whatever `chrt` set).
    Inherit,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Who may subscribe and publish to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelAuth {
    /// Any socket may use any channel.
    Open,
    /// Only channels listed in the token's `channels` claim, or public ones.
    Claims,
    /// The `[[channels.rule]]` entries decide, from the socket's record.
    Rules,
}

/// One of the app hooks (interface.md "App hooks"): which client action
/// sockhive hands to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// A call that wants an answer: SocketCluster `invoke`, Socket.IO emit with an ack.
    Rpc,
    /// An event without an answer: SocketCluster `transmit`, Socket.IO emit without an ack.
    Event,
    /// A subscribe the channel rules leave to the app.
    Subscribe,
    /// A publish the channel rules leave to the app.
    Publish,
    /// A new socket, after its credential is resolved and before it exists.
    Connect,
    /// `connected` / `disconnected` records, batched, best effort.
    Lifecycle,
}

impl HookKind {
    /// Every hook, in the order the contract lists them.
    pub const ALL: [HookKind; 6] = [
        HookKind::Rpc,
        HookKind::Event,
        HookKind::Subscribe,
        HookKind::Publish,
        HookKind::Connect,
        HookKind::Lifecycle,
    ];

    /// The hook's name: its URL segment, body `hook` field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Rpc => "rpc",
            HookKind::Event => "event",
            HookKind::Subscribe => "subscribe",
            HookKind::Publish => "publish",
            HookKind::Connect => "connect",
            HookKind::Lifecycle => "lifecycle",
        }
    }
}

/// `[hooks]`: the application's HTTP routes that answer its sockets.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksLayer {
    /// Base URL of the app's hook routes; sockhive POSTs to {hook-url}/{hook}, e.g. http://127.0.0.1:3000/sockhive [default: none, hooks off].
    #[arg(long, env = "SOCKHIVE_HOOK_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_url: Option<String>,
    /// HMAC-SHA256 key signing each hook request; repeat for rotation (the first signs, every one's signature is sent) [required with --hook-url].
    #[arg(
        long = "hook-secret",
        env = "SOCKHIVE_HOOK_SECRET",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_secret: Option<Vec<String>>,
    /// Which hooks are on: rpc, event, subscribe, publish, connect, lifecycle [default: rpc,event].
    #[arg(long, env = "SOCKHIVE_HOOKS", value_enum, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<HookKind>>,
    /// Time limit of one hook call (rpc, subscribe, publish; connect uses at most 1s) [default: 5s].
    #[arg(long, env = "SOCKHIVE_HOOK_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_timeout: Option<HumanDuration>,
    /// Hook calls in flight per worker; more wait for a free slot [default: 256].
    #[arg(long, env = "SOCKHIVE_HOOK_CONCURRENCY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_concurrency: Option<u32>,
    /// Calls one socket may have waiting for the app; beyond it an rpc is answered HookUnavailableError and an event dropped, both counted [default: 64].
    #[arg(long, env = "SOCKHIVE_HOOK_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_queue: Option<u32>,
}

/// `[server]`: processes, addresses and lifecycle.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLayer {
    /// Worker processes forked by the master [default: number of CPUs].
    #[arg(long, env = "SOCKHIVE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS as i64))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u16>,
    /// Public address, host:port (a host name is resolved at start): WebSocket endpoints, /negotiate, /healthz [default: 0.0.0.0:8000].
    #[arg(long, env = "SOCKHIVE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Master's admin address, host:port (a host name is resolved at start): /metrics, /healthz, /readyz, /api/* [default: 127.0.0.1:9000].
    #[arg(long, env = "SOCKHIVE_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Where the other nodes reach this node's public port, host:port: a Socket.IO upgrade that lands on another node is relayed here [default: the --listen address, or this host's name with its port when listening on every interface].
    #[arg(long, env = "SOCKHIVE_ADVERTISE_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<String>,
    /// Bearer token required on /api/* [default: none, /api/* refused].
    #[arg(long, env = "SOCKHIVE_ADMIN_TOKEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// This master's name in the cluster [default: hostname-pid].
    #[arg(long, env = "SOCKHIVE_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// How workers share the public port [default: reuseport].
    #[arg(long, env = "SOCKHIVE_ACCEPT_MODE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_mode: Option<AcceptMode>,
    /// Time SIGTERM waits for sockets to close before forcing the exit [default: 10s].
    #[arg(long, env = "SOCKHIVE_DRAIN_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<HumanDuration>,
    /// Allowed Origin of browser upgrades, repeatable; '*' turns the check off [default: the request's Host].
    #[arg(
        long = "allowed-origin",
        env = "SOCKHIVE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origin: Option<Vec<String>>,
    /// Log format [default: text].
    #[arg(long, env = "SOCKHIVE_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Kernel scheduling of the master and workers: batch (SCHED_BATCH: a burst crosses the processes whole) or inherit [default: batch].
    #[arg(long, env = "SOCKHIVE_CPU_SCHEDULING", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_scheduling: Option<CpuScheduling>,
}

/// `[limits]`: what one client may cost a worker.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsLayer {
    /// Time a connection has to complete its HTTP request [default: 10s].
    #[arg(long, env = "SOCKHIVE_UPGRADE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_timeout: Option<HumanDuration>,
    /// Largest request head; beyond it: 431 [default: 16KiB].
    #[arg(long, env = "SOCKHIVE_MAX_HEADER_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<ByteSize>,
    /// Largest WebSocket frame or message; beyond it: close 1009 [default: 1MiB].
    #[arg(long, env = "SOCKHIVE_MAX_PAYLOAD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<ByteSize>,
    /// Open connections per worker; beyond it: 503 before the upgrade [default: none].
    #[arg(long, env = "SOCKHIVE_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Time from the upgrade to the protocol handshake [default: 10s].
    #[arg(long, env = "SOCKHIVE_HANDSHAKE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<HumanDuration>,
    /// Channels one socket may subscribe to [default: 1000].
    #[arg(long, env = "SOCKHIVE_MAX_SUBSCRIPTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions: Option<u32>,
    /// Bytes queued towards one client before it is disconnected [default: 8MiB].
    #[arg(long, env = "SOCKHIVE_MAX_SEND_QUEUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_send_queue: Option<ByteSize>,
    /// Interval of server-driven SocketCluster pings [default: 8s].
    #[arg(long, env = "SOCKHIVE_PING_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<HumanDuration>,
    /// Time without a pong before a SocketCluster socket is closed with 4001; also how long a write to a client that does not read may block [default: 30s].
    #[arg(long, env = "SOCKHIVE_PING_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_timeout: Option<HumanDuration>,
    /// Engine.IO pingInterval of Socket.IO sockets [default: 25s].
    #[arg(long, env = "SOCKHIVE_SOCKETIO_PING_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socketio_ping_interval: Option<HumanDuration>,
    /// Engine.IO pingTimeout of Socket.IO sockets: a ping unanswered this long closes the socket [default: 20s].
    #[arg(long, env = "SOCKHIVE_SOCKETIO_PING_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socketio_ping_timeout: Option<HumanDuration>,
    /// Longest channel name, in bytes; longer ones get InvalidArgumentsError [default: 256].
    #[arg(long, env = "SOCKHIVE_MAX_CHANNEL_LENGTH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_channel_length: Option<u32>,
    /// Longest event or procedure name, in bytes; longer ones get InvalidArgumentsError [default: 256].
    #[arg(long, env = "SOCKHIVE_MAX_EVENT_LENGTH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_event_length: Option<u32>,
}

/// `[auth]`: JWTs and what a connection needs to become a socket.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthLayer {
    /// JWT key for HS256, SocketCluster's authKey [default: random per start].
    #[arg(long, env = "SOCKHIVE_AUTH_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// JWT algorithm [default: HS256].
    #[arg(long, env = "SOCKHIVE_AUTH_ALGORITHM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_algorithm: Option<JwtAlgorithm>,
    /// PEM private key for RS256/ES256 signing.
    #[arg(long, env = "SOCKHIVE_AUTH_PRIVATE_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_private_key: Option<PathBuf>,
    /// PEM public key for RS256/ES256 verification.
    #[arg(long, env = "SOCKHIVE_AUTH_PUBLIC_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_public_key: Option<PathBuf>,
    /// Clock tolerance for exp and nbf, at most 60s [default: 30s].
    #[arg(long, env = "SOCKHIVE_JWT_LEEWAY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_leeway: Option<HumanDuration>,
    /// Lifetime of tokens sockhive signs [default: 1d].
    #[arg(long, env = "SOCKHIVE_TOKEN_EXPIRY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expiry: Option<HumanDuration>,
    /// Re-sign and push a fresh token this long before expiry [default: off].
    #[arg(long, env = "SOCKHIVE_TOKEN_RENEW_BEFORE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_renew_before: Option<HumanDuration>,
    /// Longest lifetime (exp - iat, or exp - now without iat) of a presented JWT; longer ones are AuthTokenInvalidError [default: 7d].
    #[arg(long, env = "SOCKHIVE_MAX_TOKEN_LIFETIME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime: Option<HumanDuration>,
    /// A connection without a valid credential never becomes a socket [default: off].
    #[arg(long, env = "SOCKHIVE_REQUIRE_AUTH", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_auth: Option<bool>,
    /// With --require-auth: refuse with HTTP 401 before the upgrade [default: off].
    #[arg(long, env = "SOCKHIVE_REJECT_AT_UPGRADE", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_at_upgrade: Option<bool>,
}

/// `[channels]`: who may use which channel.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsLayer {
    /// open: any socket may use any channel; claims: only those in the JWT's channels claim or public ones; rules: the [[channels.rule]] entries of the config file decide [default: open].
    #[arg(long, env = "SOCKHIVE_CHANNEL_AUTH", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_auth: Option<ChannelAuth>,
    /// Channel pattern anyone may use under `claims` (a trailing * is a prefix), repeatable.
    #[arg(
        long = "public-channel",
        env = "SOCKHIVE_PUBLIC_CHANNEL",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_channel: Option<Vec<String>>,
    /// `[[channels.rule]]` (TOML only): the rules of `channel_auth = "rules"`,
    /// first match wins.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Vec<RuleSpec>>,
}

/// `[broker]`: how channel messages and cluster queries travel between nodes.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerLayer {
    /// redis://, rediss://, redis-cluster://host:port?node=host:port, or a comma-separated seed list host:port,host:port [default: none, embedded broker].
    #[arg(long, env = "SOCKHIVE_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// How long a cluster query waits for the live nodes [default: 2s].
    #[arg(long, env = "SOCKHIVE_QUERY_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_timeout: Option<HumanDuration>,
}

/// What a socket loses when its web session logs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnLogout {
    /// The socket stays, unauthenticated (SocketCluster `#removeAuthToken`).
    Deauthenticate,
    /// The socket is closed (4500).
    Kick,
}

/// What to do with a request carrying the session cookie's name twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateCookie {
    /// The first occurrence wins, as express-session decides.
    First,
    /// Refuse it (`SessionCookieInvalidError`): a shadowing cookie cannot log anyone in.
    Refuse,
}

/// `[session]`: the web app's express-session + connect-redis + passport login.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLayer {
    /// express-session secret; repeat for rotation (the first signs, any verifies) [default: none, cookie auth off].
    #[arg(
        long = "session-secret",
        env = "SOCKHIVE_SESSION_SECRET",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<Vec<String>>,
    /// express-session cookie name [default: connect.sid].
    #[arg(long, env = "SOCKHIVE_SESSION_COOKIE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_cookie: Option<String>,
    /// connect-redis key prefix [default: sess:].
    #[arg(long, env = "SOCKHIVE_SESSION_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_prefix: Option<String>,
    /// The Redis holding the app's sessions [default: --redis-url].
    #[arg(long, env = "SOCKHIVE_SESSION_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_redis_url: Option<String>,
    /// How long a handshake waits for the session store [default: 250ms].
    #[arg(long, env = "SOCKHIVE_SESSION_STORE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_store_timeout: Option<HumanDuration>,
    /// Re-check interval for logouts when keyspace notifications are unavailable [default: 1s].
    #[arg(long, env = "SOCKHIVE_SESSION_RECHECK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_recheck: Option<HumanDuration>,
    /// How passport.user becomes the user: `none` (as stored), `redis:user:{id}` (JSON), `redis-hash:user:{id}`, or `http://host:port/users/{id}` [default: none].
    #[arg(long, env = "SOCKHIVE_USER_LOOKUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_lookup: Option<String>,
    /// Time limit of an HTTP user lookup [default: 500ms].
    #[arg(long, env = "SOCKHIVE_USER_LOOKUP_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_lookup_timeout: Option<HumanDuration>,
    /// A header the HTTP user lookup sends, `"NAME: VALUE"` (e.g. `"Authorization: Bearer s3cret"`); repeatable [default: none].
    #[arg(long = "user-lookup-header", env = "SOCKHIVE_USER_LOOKUP_HEADER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_lookup_header: Option<Vec<String>>,
    /// What a logout does to the session's sockets [default: deauthenticate].
    #[arg(long, env = "SOCKHIVE_ON_LOGOUT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_logout: Option<OnLogout>,
    /// A cookie name sent twice: `first` wins (as express decides) or `refuse` [default: first].
    #[arg(long, env = "SOCKHIVE_DUPLICATE_COOKIE", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_cookie: Option<DuplicateCookie>,
    /// Lifetime of the tokens /negotiate hands out [default: 5m].
    #[arg(long, env = "SOCKHIVE_NEGOTIATE_EXPIRY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negotiate_expiry: Option<HumanDuration>,
    /// Accept passport.socketio's `session_id` query parameter, signed values (`s:...`) only [default: off].
    #[arg(long, env = "SOCKHIVE_ACCEPT_QUERY_SESSION_ID", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_query_session_id: Option<bool>,
}

/// One source of settings (flags plus environment, or the TOML file), every key optional.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigLayer {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub server: ServerLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitsLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub channels: ChannelsLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: BrokerLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub session: SessionLayer,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub hooks: HooksLayer,
}

impl ConfigLayer {
    /// Reads a TOML file; unknown keys and bad values are refused with the line and key.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error is the parser's message, naming line and key.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// This layer stacked over `lower`: every key set here wins, the rest comes from `lower`.
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        // Both layers serialize only the keys they set, so a recursive merge of
        // the two JSON trees is exactly "higher wins per key" for every section
        // without listing each key again.
        fn merge(high: serde_json::Value, low: serde_json::Value) -> serde_json::Value {
            match (high, low) {
                (serde_json::Value::Object(high), serde_json::Value::Object(mut low)) => {
                    for (key, value) in high {
                        let below = low.remove(&key).unwrap_or(serde_json::Value::Null);
                        low.insert(key, merge(value, below));
                    }
                    serde_json::Value::Object(low)
                }
                (high, _) => high,
            }
        }
        let (Ok(high), Ok(low)) = (serde_json::to_value(&self), serde_json::to_value(&lower))
        else {
            return self;
        };
        serde_json::from_value(merge(high, low)).unwrap_or(self)
    }
}

/// Resolved `[server]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ServerConfig {
    pub workers: u16,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `host:port` the other nodes reach the public port at; `None`: derived
    /// from the bound address at start.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    pub admin_token: Option<String>,
    pub node_id: String,
    pub accept_mode: AcceptMode,
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
    pub allowed_origin: Vec<String>,
    pub log_format: LogFormat,
    #[serde(default = "default_cpu_scheduling")]
    pub cpu_scheduling: CpuScheduling,
}

fn default_cpu_scheduling() -> CpuScheduling {
    CpuScheduling::Batch
}

/// Resolved `[limits]`; see [`LimitsLayer`] for what each one bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Limits {
    #[serde(with = "duration_text")]
    pub upgrade_timeout: Duration,
    pub max_header_bytes: u64,
    pub max_payload: u64,
    pub max_connections: Option<u32>,
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    pub max_subscriptions: u32,
    pub max_send_queue: u64,
    #[serde(with = "duration_text")]
    pub ping_interval: Duration,
    #[serde(with = "duration_text")]
    pub ping_timeout: Duration,
    #[serde(with = "duration_text")]
    pub socketio_ping_interval: Duration,
    #[serde(with = "duration_text")]
    pub socketio_ping_timeout: Duration,
    pub max_channel_length: u32,
    pub max_event_length: u32,
}

/// Resolved `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct AuthConfig {
    /// The HS256 key; generated at start when none was configured.
    pub auth_key: String,
    /// True when `auth_key` was generated: tokens then die with this master.
    pub auth_key_is_random: bool,
    pub auth_algorithm: JwtAlgorithm,
    /// PEM text of the private key (read once by the master so workers need no file access).
    pub auth_private_key_pem: Option<String>,
    /// PEM text of the public key.
    pub auth_public_key_pem: Option<String>,
    #[serde(with = "duration_text")]
    pub jwt_leeway: Duration,
    #[serde(with = "duration_text")]
    pub token_expiry: Duration,
    #[serde(with = "optional_duration_text")]
    pub token_renew_before: Option<Duration>,
    #[serde(with = "duration_text")]
    pub max_token_lifetime: Duration,
    pub require_auth: bool,
    pub reject_at_upgrade: bool,
}

/// Resolved `[channels]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ChannelConfig {
    pub channel_auth: ChannelAuth,
    pub public_channel: Vec<String>,
    /// The rules of `channel_auth = "rules"`, as written (each worker compiles them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<RuleSpec>,
}

/// The effective configuration of a node: every default filled, every check passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub channels: ChannelConfig,
    pub broker: BrokerConfig,
    pub session: SessionConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Which values were defaulted or read from files; only `check-config`'s
    /// output needs it, so a worker's copy may leave it empty.
    #[serde(default)]
    pub provenance: Provenance,
}

/// What the resolved values alone cannot tell about where they came from:
/// `check-config` prints a config that reads back to the same effective one,
/// and must not pin per-start defaults or lose the key files' paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// `server.node_id` was the per-start default (hostname-pid): printing it
    /// would give every node started from that file the same name.
    pub node_id_defaulted: bool,
    /// The file `auth.auth_private_key_pem` was read from.
    pub auth_private_key: Option<PathBuf>,
    /// The file `auth.auth_public_key_pem` was read from.
    pub auth_public_key: Option<PathBuf>,
}

/// Resolved `[session]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SessionConfig {
    /// Empty: cookie authentication is off.
    pub session_secret: Vec<String>,
    pub session_cookie: String,
    pub session_prefix: String,
    /// The sessions' Redis (defaults to the broker's).
    pub session_redis_url: Option<String>,
    #[serde(with = "duration_text")]
    pub session_store_timeout: Duration,
    #[serde(with = "duration_text")]
    pub session_recheck: Duration,
    pub user_lookup: String,
    #[serde(with = "duration_text")]
    pub user_lookup_timeout: Duration,
    /// `NAME: VALUE` lines the HTTP user lookup sends (credentials for the app).
    #[serde(default)]
    pub user_lookup_header: Vec<String>,
    pub on_logout: OnLogout,
    pub duplicate_cookie: DuplicateCookie,
    #[serde(with = "duration_text")]
    pub negotiate_expiry: Duration,
    /// passport.socketio's `session_id` query parameter (signed values only).
    pub accept_query_session_id: bool,
}

impl SessionConfig {
    /// True when cookie authentication is configured.
    pub fn enabled(&self) -> bool {
        !self.session_secret.is_empty()
    }
}

/// Resolved `[hooks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct HooksConfig {
    /// Absent: hooks are off and the contract's behaviour without them holds.
    pub hook_url: Option<String>,
    /// The first signs; every one's signature is sent.
    pub hook_secret: Vec<String>,
    pub hooks: Vec<HookKind>,
    #[serde(with = "duration_text")]
    pub hook_timeout: Duration,
    pub hook_concurrency: u32,
    pub hook_queue: u32,
}

impl Default for HooksConfig {
    fn default() -> HooksConfig {
        HooksConfig {
            hook_url: None,
            hook_secret: Vec::new(),
            hooks: DEFAULT_HOOKS.to_vec(),
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            hook_concurrency: DEFAULT_HOOK_CONCURRENCY,
            hook_queue: DEFAULT_HOOK_QUEUE,
        }
    }
}

impl HooksConfig {
    /// True when `hook` will be called (a hook URL is set and the hook is listed).
    pub fn enabled(&self, hook: HookKind) -> bool {
        self.hook_url.is_some() && self.hooks.contains(&hook)
    }
}

/// Default of `hooks.hooks`.
pub const DEFAULT_HOOKS: [HookKind; 2] = [HookKind::Rpc, HookKind::Event];
/// Default of `hooks.hook_timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `hooks.hook_concurrency`.
pub const DEFAULT_HOOK_CONCURRENCY: u32 = 256;
/// Default of `hooks.hook_queue`.
pub const DEFAULT_HOOK_QUEUE: u32 = 64;

/// Default of `session.session_store_timeout`.
pub const DEFAULT_SESSION_STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// Default of `session.session_recheck`.
pub const DEFAULT_SESSION_RECHECK: Duration = Duration::from_secs(1);
/// Default of `session.user_lookup_timeout`.
pub const DEFAULT_USER_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// Default of `session.negotiate_expiry`.
pub const DEFAULT_NEGOTIATE_EXPIRY: Duration = Duration::from_secs(300);

/// Resolved `[broker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct BrokerConfig {
    /// Absent: the master's embedded broker, this node alone.
    pub redis_url: Option<String>,
    #[serde(with = "duration_text")]
    pub query_timeout: Duration,
}

/// Default of `broker.query_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

fn duration(value: Option<HumanDuration>, default: Duration) -> Duration {
    value.map(|d| d.0).unwrap_or(default)
}

fn read_pem(key: &'static str, path: &Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    match path {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display()))),
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "sockhive".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

fn random_auth_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("`{origin}` must start with http:// or https:// (or be '*')"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "`{origin}` must be scheme://host[:port] with no path"
        ));
    }
    Ok(())
}

/// `host:port` to one address: literal IPs as written, names through the
/// system resolver (the first address; IPv4 first for `localhost`, whose
/// `::1` entry is often unusable in containers). Done once here, so the
/// master binds and the banner shows exactly the same address.
fn resolve_address(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let (host, port) = text
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| {
            invalid(
                key,
                format!("`{text}` is not host:port (e.g. 0.0.0.0:8000 or localhost:8000)"),
            )
        })?;
    let port: u16 = port.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}`: the port `{port}` is not a number from 0 to 65535"),
        )
    })?;
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(key, format!("cannot resolve host `{host}`: {e}")))?
        .collect();
    let chosen = if host.eq_ignore_ascii_case("localhost") {
        addresses.iter().find(|a| a.is_ipv4()).or(addresses.first())
    } else {
        addresses.first()
    };
    chosen
        .copied()
        .ok_or_else(|| invalid(key, format!("host `{host}` resolves to no address")))
}

/// The user lookup's syntax, as the worker reads it: checked whether or not
/// cookie auth is on, since a value that can never work is a typo either way.
fn check_user_lookup(lookup: &str) -> Result<(), String> {
    const EXPECTED: &str = "must be `none`, `redis:<key with {id}>`, `redis-hash:<key with {id}>` or `http://host[:port]/path/{id}`";
    if lookup == "none" {
        return Ok(());
    }
    let template = lookup
        .strip_prefix("redis-hash:")
        .or_else(|| lookup.strip_prefix("redis:"))
        .or_else(|| lookup.starts_with("http://").then_some(lookup))
        .ok_or_else(|| format!("`{lookup}` {EXPECTED}"))?;
    if !template.contains("{id}") {
        return Err(format!("`{lookup}` has no {{id}}: {EXPECTED}"));
    }
    if lookup.starts_with("http://") {
        HttpUrl::parse(lookup).map_err(|e| format!("{e}, with {{id}} in it"))?;
    }
    Ok(())
}

fn check_channel_pattern(pattern: &str) -> Result<(), String> {
    let star = pattern.find('*');
    if pattern.is_empty() || star.is_some_and(|at| at != pattern.len() - 1) {
        return Err(format!(
            "`{pattern}`: a pattern is a channel name, optionally ending in a single '*'"
        ));
    }
    Ok(())
}

impl Config {
    /// Fills defaults into a stacked layer and checks every value and combination.
    pub fn resolve(layer: ConfigLayer) -> Result<Config, ConfigError> {
        let ConfigLayer {
            server,
            limits,
            auth,
            channels,
            broker,
            session,
            hooks,
        } = layer;
        let default_workers = std::thread::available_parallelism()
            .map(|n| n.get().min(MAX_WORKERS as usize) as u16)
            .unwrap_or(1);
        let listen = resolve_address(
            "server.listen",
            server.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        )?;
        let admin_listen = resolve_address(
            "server.admin_listen",
            server
                .admin_listen
                .as_deref()
                .unwrap_or(DEFAULT_ADMIN_LISTEN),
        )?;
        let provenance = Provenance {
            node_id_defaulted: server.node_id.is_none(),
            auth_private_key: auth.auth_private_key.clone(),
            auth_public_key: auth.auth_public_key.clone(),
        };
        let config = Config {
            server: ServerConfig {
                workers: server.workers.unwrap_or(default_workers),
                listen,
                admin_listen,
                advertise_addr: server.advertise_addr.filter(|a| !a.trim().is_empty()),
                admin_token: server.admin_token,
                node_id: server.node_id.unwrap_or_else(default_node_id),
                accept_mode: server.accept_mode.unwrap_or(AcceptMode::Reuseport),
                drain_timeout: duration(server.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
                allowed_origin: server.allowed_origin.unwrap_or_default(),
                log_format: server.log_format.unwrap_or(LogFormat::Text),
                cpu_scheduling: server.cpu_scheduling.unwrap_or_else(default_cpu_scheduling),
            },
            limits: Limits {
                upgrade_timeout: duration(limits.upgrade_timeout, DEFAULT_UPGRADE_TIMEOUT),
                max_header_bytes: limits
                    .max_header_bytes
                    .map_or(DEFAULT_MAX_HEADER_BYTES, |b| b.0),
                max_payload: limits.max_payload.map_or(DEFAULT_MAX_PAYLOAD, |b| b.0),
                max_connections: limits.max_connections,
                handshake_timeout: duration(limits.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT),
                max_subscriptions: limits
                    .max_subscriptions
                    .unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS),
                max_send_queue: limits
                    .max_send_queue
                    .map_or(DEFAULT_MAX_SEND_QUEUE, |b| b.0),
                ping_interval: duration(limits.ping_interval, DEFAULT_PING_INTERVAL),
                ping_timeout: duration(limits.ping_timeout, DEFAULT_PING_TIMEOUT),
                socketio_ping_interval: duration(
                    limits.socketio_ping_interval,
                    DEFAULT_SOCKETIO_PING_INTERVAL,
                ),
                socketio_ping_timeout: duration(
                    limits.socketio_ping_timeout,
                    DEFAULT_SOCKETIO_PING_TIMEOUT,
                ),
                max_channel_length: limits
                    .max_channel_length
                    .unwrap_or(DEFAULT_MAX_CHANNEL_LENGTH),
                max_event_length: limits.max_event_length.unwrap_or(DEFAULT_MAX_EVENT_LENGTH),
            },
            auth: AuthConfig {
                auth_key_is_random: auth.auth_key.is_none(),
                auth_key: auth.auth_key.unwrap_or_else(random_auth_key),
                auth_algorithm: auth.auth_algorithm.unwrap_or(JwtAlgorithm::Hs256),
                auth_private_key_pem: read_pem("auth.auth_private_key", &auth.auth_private_key)?,
                auth_public_key_pem: read_pem("auth.auth_public_key", &auth.auth_public_key)?,
                jwt_leeway: duration(auth.jwt_leeway, DEFAULT_JWT_LEEWAY),
                token_expiry: duration(auth.token_expiry, DEFAULT_TOKEN_EXPIRY),
                token_renew_before: auth.token_renew_before.map(|d| d.0),
                max_token_lifetime: duration(auth.max_token_lifetime, DEFAULT_MAX_TOKEN_LIFETIME),
                require_auth: auth.require_auth.unwrap_or(false),
                reject_at_upgrade: auth.reject_at_upgrade.unwrap_or(false),
            },
            channels: ChannelConfig {
                channel_auth: channels.channel_auth.unwrap_or(ChannelAuth::Open),
                public_channel: channels.public_channel.unwrap_or_default(),
                rule: channels.rule.unwrap_or_default(),
            },
            session: SessionConfig {
                session_secret: session.session_secret.unwrap_or_default(),
                session_cookie: session
                    .session_cookie
                    .unwrap_or_else(|| "connect.sid".into()),
                session_prefix: session.session_prefix.unwrap_or_else(|| "sess:".into()),
                session_redis_url: session
                    .session_redis_url
                    .or_else(|| broker.redis_url.clone())
                    .filter(|url| !url.trim().is_empty()),
                session_store_timeout: duration(
                    session.session_store_timeout,
                    DEFAULT_SESSION_STORE_TIMEOUT,
                ),
                session_recheck: duration(session.session_recheck, DEFAULT_SESSION_RECHECK),
                user_lookup: session.user_lookup.unwrap_or_else(|| "none".into()),
                user_lookup_timeout: duration(
                    session.user_lookup_timeout,
                    DEFAULT_USER_LOOKUP_TIMEOUT,
                ),
                user_lookup_header: session.user_lookup_header.unwrap_or_default(),
                on_logout: session.on_logout.unwrap_or(OnLogout::Deauthenticate),
                duplicate_cookie: session.duplicate_cookie.unwrap_or(DuplicateCookie::First),
                negotiate_expiry: duration(session.negotiate_expiry, DEFAULT_NEGOTIATE_EXPIRY),
                accept_query_session_id: session.accept_query_session_id.unwrap_or(false),
            },
            broker: BrokerConfig {
                redis_url: broker.redis_url.filter(|url| !url.trim().is_empty()),
                query_timeout: duration(broker.query_timeout, DEFAULT_QUERY_TIMEOUT),
            },
            hooks: HooksConfig {
                hook_url: hooks.hook_url.filter(|url| !url.trim().is_empty()),
                hook_secret: hooks.hook_secret.unwrap_or_default(),
                hooks: hooks.hooks.unwrap_or_else(|| DEFAULT_HOOKS.to_vec()),
                hook_timeout: duration(hooks.hook_timeout, DEFAULT_HOOK_TIMEOUT),
                hook_concurrency: hooks.hook_concurrency.unwrap_or(DEFAULT_HOOK_CONCURRENCY),
                hook_queue: hooks.hook_queue.unwrap_or(DEFAULT_HOOK_QUEUE),
            },
            provenance,
        };
        config.validate()?;
        Ok(config)
    }

    /// The cross-field and range checks; each error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (server, limits, auth) = (&self.server, &self.limits, &self.auth);
        if server.workers == 0 || server.workers > MAX_WORKERS {
            return Err(invalid(
                "server.workers",
                format!(
                    "must be between 1 and {MAX_WORKERS}, got {}",
                    server.workers
                ),
            ));
        }
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if server.node_id.is_empty() || server.node_id.len() > 128 {
            return Err(invalid("server.node_id", "must be 1 to 128 characters"));
        }
        if server
            .node_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "server.node_id",
                "must not contain spaces or control characters",
            ));
        }
        if let Some(url) = &self.broker.redis_url {
            let ok = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ]
            .iter()
            .any(|s| url.starts_with(s))
                || url.split(',').all(|seed| {
                    seed.trim()
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                });
            if !ok {
                return Err(invalid("broker.redis_url", "must be redis://host:port, rediss://..., redis-cluster://host:port?node=host:port, or a seed list host:port,host:port"));
            }
        }
        let session = &self.session;
        if session.enabled() {
            if session.session_secret.iter().any(String::is_empty) {
                return Err(invalid(
                    "session.session_secret",
                    "must not contain an empty secret",
                ));
            }
            if session.session_redis_url.is_none() {
                return Err(invalid("session.session_redis_url", "cookie authentication reads the app's sessions from Redis: set --session-redis-url or --redis-url"));
            }
        }
        check_user_lookup(&session.user_lookup)
            .map_err(|reason| invalid("session.user_lookup", reason))?;
        for line in &session.user_lookup_header {
            crate::http::parse_header_line(line)
                .map_err(|reason| invalid("session.user_lookup_header", reason))?;
        }
        if session.session_cookie.is_empty()
            || session.session_cookie.contains(|c: char| {
                matches!(c, ';' | '=' | ',') || c.is_whitespace() || c.is_control()
            })
        {
            return Err(invalid(
                "session.session_cookie",
                format!(
                    "`{}` cannot be a cookie name (empty, or has `;`, `=`, `,` or a space)",
                    session.session_cookie
                ),
            ));
        }
        if session.session_store_timeout.is_zero()
            || session.session_recheck.is_zero()
            || session.negotiate_expiry.is_zero()
        {
            return Err(invalid(
                "session.session_store_timeout",
                "session timeouts and intervals must be above zero",
            ));
        }
        if self.broker.query_timeout.is_zero() {
            return Err(invalid("broker.query_timeout", "must be above zero"));
        }
        if server.admin_token.as_deref() == Some("") {
            return Err(invalid(
                "server.admin_token",
                "must not be empty (leave it unset to refuse /api/*)",
            ));
        }
        if server.drain_timeout.is_zero() {
            return Err(invalid("server.drain_timeout", "must be above zero"));
        }
        for origin in &server.allowed_origin {
            check_origin(origin).map_err(|reason| invalid("server.allowed_origin", reason))?;
        }
        for (key, value) in [
            ("limits.upgrade_timeout", limits.upgrade_timeout),
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.ping_interval", limits.ping_interval),
            ("limits.ping_timeout", limits.ping_timeout),
            (
                "limits.socketio_ping_interval",
                limits.socketio_ping_interval,
            ),
            ("limits.socketio_ping_timeout", limits.socketio_ping_timeout),
            ("auth.max_token_lifetime", auth.max_token_lifetime),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if limits.ping_interval >= limits.ping_timeout {
            return Err(invalid(
                "limits.ping_interval",
                "must be shorter than limits.ping_timeout, or clients time out between pings",
            ));
        }
        if limits.ping_timeout > Duration::from_millis(i32::MAX as u64) {
            return Err(invalid(
                "limits.ping_timeout",
                "must stay below 2^31 ms (the client's timer limit)",
            ));
        }
        if limits.socketio_ping_interval + limits.socketio_ping_timeout
            > Duration::from_millis(i32::MAX as u64)
        {
            return Err(invalid(
                "limits.socketio_ping_interval",
                "socketio_ping_interval + socketio_ping_timeout must stay below 2^31 ms (the client's timer limit)",
            ));
        }
        for (key, value) in [
            ("limits.max_channel_length", limits.max_channel_length),
            ("limits.max_event_length", limits.max_event_length),
        ] {
            if value == 0 || value as u64 > limits.max_payload {
                return Err(invalid(
                    key,
                    "must be above zero and at most limits.max_payload",
                ));
            }
        }
        if auth.token_expiry > auth.max_token_lifetime {
            return Err(invalid(
                "auth.token_expiry",
                "must not exceed auth.max_token_lifetime, or sockhive would refuse its own tokens",
            ));
        }
        if limits.max_header_bytes < 1024 {
            return Err(invalid("limits.max_header_bytes", "must be at least 1KiB"));
        }
        if limits.max_payload < 1024 {
            return Err(invalid("limits.max_payload", "must be at least 1KiB"));
        }
        if limits.max_send_queue < limits.max_payload {
            return Err(invalid(
                "limits.max_send_queue",
                "must be at least limits.max_payload",
            ));
        }
        if limits.max_connections == Some(0) {
            return Err(invalid(
                "limits.max_connections",
                "must be above zero (leave it unset for no limit)",
            ));
        }
        if auth.jwt_leeway > MAX_JWT_LEEWAY {
            return Err(invalid("auth.jwt_leeway", "must be at most 60s"));
        }
        if auth.token_expiry.is_zero() {
            return Err(invalid("auth.token_expiry", "must be above zero"));
        }
        if let Some(renew) = auth.token_renew_before {
            if renew.is_zero() || renew >= auth.token_expiry {
                return Err(invalid(
                    "auth.token_renew_before",
                    "must be above zero and shorter than auth.token_expiry",
                ));
            }
        }
        if auth.reject_at_upgrade && !auth.require_auth {
            return Err(invalid(
                "auth.reject_at_upgrade",
                "only makes sense with auth.require_auth",
            ));
        }
        if auth.auth_key.is_empty() {
            return Err(invalid("auth.auth_key", "must not be empty"));
        }
        match auth.auth_algorithm {
            JwtAlgorithm::Hs256 => {
                if auth.auth_private_key_pem.is_some() || auth.auth_public_key_pem.is_some() {
                    return Err(invalid(
                        "auth.auth_algorithm",
                        "key files need RS256 or ES256; HS256 uses auth.auth_key",
                    ));
                }
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                if auth.auth_public_key_pem.is_none() {
                    return Err(invalid(
                        "auth.auth_public_key",
                        "is required with RS256 and ES256",
                    ));
                }
            }
        }
        self.check_jwt_keys()?;
        for pattern in &self.channels.public_channel {
            check_channel_pattern(pattern)
                .map_err(|reason| invalid("channels.public_channel", reason))?;
        }
        if let Some(advertised) = &server.advertise_addr {
            let valid = advertised.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(invalid(
                    "server.advertise_addr",
                    format!(
                        "`{advertised}` is not host:port (a name or an IP, and a port above 0)"
                    ),
                ));
            }
        }
        self.check_channel_rules()?;
        self.check_hooks()
    }

    /// `[hooks]`: a URL a worker can call, signed requests, sane bounds.
    fn check_hooks(&self) -> Result<(), ConfigError> {
        let hooks = &self.hooks;
        if let Some(url) = &hooks.hook_url {
            HttpUrl::parse(url).map_err(|e| invalid("hooks.hook_url", e.to_string()))?;
            if hooks.hook_secret.is_empty() {
                return Err(invalid(
                    "hooks.hook_secret",
                    "is required with hooks.hook_url: the app must be able to tell sockhive's calls from anyone else's",
                ));
            }
        }
        if hooks.hook_secret.iter().any(|s| s.is_empty()) {
            return Err(invalid("hooks.hook_secret", "must not be empty"));
        }
        if hooks.hook_timeout.is_zero() {
            return Err(invalid("hooks.hook_timeout", "must be above zero"));
        }
        if hooks.hook_concurrency == 0 {
            return Err(invalid("hooks.hook_concurrency", "must be above zero"));
        }
        if hooks.hook_queue == 0 {
            return Err(invalid("hooks.hook_queue", "must be above zero"));
        }
        Ok(())
    }

    /// Compiles `[[channels.rule]]` as every worker will, so a bad rule is
    /// reported by its index (by `check-config` and `serve` alike).
    fn check_channel_rules(&self) -> Result<(), ConfigError> {
        let channels = &self.channels;
        match (channels.channel_auth, channels.rule.is_empty()) {
            (ChannelAuth::Rules, true) => Err(invalid(
                "channels.rule",
                "channel_auth = \"rules\" needs at least one [[channels.rule]] (a channel no rule matches is refused)",
            )),
            (ChannelAuth::Rules, false) => {
                let rules = ChannelRules::compile(&channels.rule)
                    .map_err(|e| invalid("channels.rule", e.to_string()))?;
                match rules.first_hook_rule() {
                    Some(index) if self.hooks.hook_url.is_none() => Err(invalid(
                        "channels.rule",
                        format!("channel rule {index}: \"hook\" needs the app hooks (hooks.hook_url); use true, false or a filter, or set the hook URL"),
                    )),
                    _ => Ok(()),
                }
            }
            (_, false) => Err(invalid(
                "channels.rule",
                "rules are set, but channel_auth is not \"rules\"",
            )),
            (_, true) => Ok(()),
        }
    }

    /// Builds the JWT keys exactly as a worker does at start, so a key the
    /// workers would refuse (bad PEM, PEM as the HS256 secret, a mismatched
    /// pair) is refused here, by `serve` and `check-config` alike, instead of
    /// crash-looping every worker.
    fn check_jwt_keys(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        let public = auth.auth_public_key_pem.as_deref().unwrap_or("");
        let private = auth.auth_private_key_pem.as_deref();
        let (key, keys) = match auth.auth_algorithm {
            JwtAlgorithm::Hs256 => ("auth.auth_key", JwtKeys::hs256(&auth.auth_key)),
            JwtAlgorithm::Rs256 => ("auth.auth_public_key", JwtKeys::rs256_pem(public, private)),
            JwtAlgorithm::Es256 => ("auth.auth_public_key", JwtKeys::es256_pem(public, private)),
        };
        let keys = keys.map_err(|e| invalid(key, e.to_string()))?;
        TokenVerifier::new(&keys).map_err(|e| invalid(key, e.to_string()))?;
        if keys.can_sign() {
            TokenSigner::new(&keys).map_err(|e| invalid("auth.auth_private_key", e.to_string()))?;
        }
        Ok(())
    }

    /// The configuration as `check-config` prints it: a TOML file that
    /// `--config` accepts and that resolves to this same configuration.
    ///
    /// Secrets never appear, not even redacted (a redacted value read back
    /// would become the secret): each is left out with a comment line saying
    /// it is set and where to give it again (an environment variable or a
    /// flag, which is where secrets belong anyway). A Redis URL with a
    /// password is left out the same way, its redacted form in the comment.
    /// Per-start defaults (a random auth key, the hostname-pid node id) are
    /// left out too, so that a file written from this output still gets them.
    pub fn to_redacted_toml(&self) -> String {
        let (layer, notes) = self.to_layer();
        let mut out = String::from(
            "# sockhive check-config: the effective configuration; `--config` accepts this file as is.\n",
        );
        if !notes.is_empty() {
            out.push_str(
                "# Not in this file (give these again through the environment or flags):\n",
            );
            for note in notes {
                out.push_str(&format!("#   {note}\n"));
            }
        }
        out.push('\n');
        match toml::to_string(&layer) {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("# cannot render configuration: {e}\n")),
        }
        out
    }

    /// This configuration as a layer that resolves back to it, without the
    /// secrets and per-start defaults; the second value says what was left out.
    fn to_layer(&self) -> (ConfigLayer, Vec<String>) {
        let mut notes = Vec::new();
        let (server, limits, auth, session) =
            (&self.server, &self.limits, &self.auth, &self.session);
        if server.admin_token.is_some() {
            notes.push(
                "server.admin_token: set, not shown (SOCKHIVE_ADMIN_TOKEN or --admin-token)"
                    .to_string(),
            );
        }
        if self.provenance.node_id_defaulted {
            notes.push(
                "server.node_id: not set, so each start names itself hostname-pid".to_string(),
            );
        }
        if auth.auth_key_is_random {
            notes.push("auth.auth_key: not set, so each start uses a random key".to_string());
        } else {
            notes.push(
                "auth.auth_key: set, not shown (SOCKHIVE_AUTH_KEY or --auth-key)".to_string(),
            );
        }
        if !session.session_secret.is_empty() {
            notes.push(format!(
                "session.session_secret: {} set, not shown (SOCKHIVE_SESSION_SECRET, comma-separated, or --session-secret)",
                session.session_secret.len()
            ));
        }
        if !self.hooks.hook_secret.is_empty() {
            notes.push(format!(
                "hooks.hook_secret: {} set, not shown (SOCKHIVE_HOOK_SECRET, comma-separated, or --hook-secret)",
                self.hooks.hook_secret.len()
            ));
        }
        if !session.user_lookup_header.is_empty() {
            notes.push(format!(
                "session.user_lookup_header: {} set, not shown (they carry credentials; SOCKHIVE_USER_LOOKUP_HEADER or --user-lookup-header)",
                session.user_lookup_header.len()
            ));
        }
        let mut url_without_secret = |key: &str, env: &str, url: &Option<String>| {
            let url = url.as_ref()?;
            let redacted = redact_url_password(url);
            if redacted == *url {
                Some(url.clone())
            } else {
                notes.push(format!(
                    "{key}: has credentials, not shown: {redacted} ({env})"
                ));
                None
            }
        };
        let redis_url = url_without_secret(
            "broker.redis_url",
            "SOCKHIVE_REDIS_URL",
            &self.broker.redis_url,
        );
        // The sessions' Redis defaults to the broker's: only a different one is written.
        let session_redis_url = if session.session_redis_url == self.broker.redis_url {
            None
        } else if session.session_redis_url.is_none() {
            // Explicitly emptied while the broker has one: keep it empty.
            Some(String::new())
        } else {
            url_without_secret(
                "session.session_redis_url",
                "SOCKHIVE_SESSION_REDIS_URL",
                &session.session_redis_url,
            )
        };
        let layer = ConfigLayer {
            server: ServerLayer {
                workers: Some(server.workers),
                listen: Some(server.listen.to_string()),
                admin_listen: Some(server.admin_listen.to_string()),
                advertise_addr: server.advertise_addr.clone(),
                admin_token: None,
                node_id: (!self.provenance.node_id_defaulted).then(|| server.node_id.clone()),
                accept_mode: Some(server.accept_mode),
                drain_timeout: Some(HumanDuration(server.drain_timeout)),
                allowed_origin: Some(server.allowed_origin.clone()),
                log_format: Some(server.log_format),
                cpu_scheduling: Some(server.cpu_scheduling),
            },
            limits: LimitsLayer {
                upgrade_timeout: Some(HumanDuration(limits.upgrade_timeout)),
                max_header_bytes: Some(ByteSize(limits.max_header_bytes)),
                max_payload: Some(ByteSize(limits.max_payload)),
                max_connections: limits.max_connections,
                handshake_timeout: Some(HumanDuration(limits.handshake_timeout)),
                max_subscriptions: Some(limits.max_subscriptions),
                max_send_queue: Some(ByteSize(limits.max_send_queue)),
                ping_interval: Some(HumanDuration(limits.ping_interval)),
                ping_timeout: Some(HumanDuration(limits.ping_timeout)),
                socketio_ping_interval: Some(HumanDuration(limits.socketio_ping_interval)),
                socketio_ping_timeout: Some(HumanDuration(limits.socketio_ping_timeout)),
                max_channel_length: Some(limits.max_channel_length),
                max_event_length: Some(limits.max_event_length),
            },
            auth: AuthLayer {
                auth_key: None,
                auth_algorithm: Some(auth.auth_algorithm),
                auth_private_key: self.provenance.auth_private_key.clone(),
                auth_public_key: self.provenance.auth_public_key.clone(),
                jwt_leeway: Some(HumanDuration(auth.jwt_leeway)),
                token_expiry: Some(HumanDuration(auth.token_expiry)),
                token_renew_before: auth.token_renew_before.map(HumanDuration),
                max_token_lifetime: Some(HumanDuration(auth.max_token_lifetime)),
                require_auth: Some(auth.require_auth),
                reject_at_upgrade: Some(auth.reject_at_upgrade),
            },
            channels: ChannelsLayer {
                channel_auth: Some(self.channels.channel_auth),
                public_channel: Some(self.channels.public_channel.clone()),
                rule: (!self.channels.rule.is_empty()).then(|| self.channels.rule.clone()),
            },
            broker: BrokerLayer {
                redis_url,
                query_timeout: Some(HumanDuration(self.broker.query_timeout)),
            },
            session: SessionLayer {
                session_secret: None,
                session_cookie: Some(session.session_cookie.clone()),
                session_prefix: Some(session.session_prefix.clone()),
                session_redis_url,
                session_store_timeout: Some(HumanDuration(session.session_store_timeout)),
                session_recheck: Some(HumanDuration(session.session_recheck)),
                user_lookup: Some(session.user_lookup.clone()),
                user_lookup_timeout: Some(HumanDuration(session.user_lookup_timeout)),
                user_lookup_header: None,
                on_logout: Some(session.on_logout),
                duplicate_cookie: Some(session.duplicate_cookie),
                negotiate_expiry: Some(HumanDuration(session.negotiate_expiry)),
                accept_query_session_id: Some(session.accept_query_session_id),
            },
            hooks: HooksLayer {
                hook_url: self.hooks.hook_url.clone(),
                hook_secret: None,
                hooks: Some(self.hooks.hooks.clone()),
                hook_timeout: Some(HumanDuration(self.hooks.hook_timeout)),
                hook_concurrency: Some(self.hooks.hook_concurrency),
                hook_queue: Some(self.hooks.hook_queue),
            },
        };
        (layer, notes)
    }
}

/// `redis://user:secret@host` printed as `redis://user:<redacted>@host`:
/// the form logs and `check-config` show a Redis URL in.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
        None => url.to_string(),
    }
}

/// Durations travel (to workers, to `check-config`) in the same spelling users write.
mod duration_text {
    use super::*;

    pub fn serialize<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        HumanDuration(*value).serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(d).map(|h| h.0)
    }
}

mod optional_duration_text {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(HumanDuration).serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<HumanDuration>::deserialize(d).map(|o| o.map(|h| h.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = ConfigLayer::from_toml("[server]\nworkerz = 3\n").unwrap_err();
        assert!(err.contains("workerz"), "{err}");
        let err = ConfigLayer::from_toml("[serverx]\n").unwrap_err();
        assert!(err.contains("serverx"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_and_reason() {
        let err = ConfigLayer::from_toml("[server]\ndrain_timeout = \"soon\"\n").unwrap_err();
        assert!(
            err.contains("drain_timeout") && err.contains("invalid duration"),
            "{err}"
        );
        let layer = ConfigLayer::from_toml("[server]\nworkers = 0\n").unwrap();
        let err = Config::resolve(layer).unwrap_err().to_string();
        assert!(err.starts_with("server.workers (--workers):"), "{err}");
    }

    #[test]
    fn higher_layers_win_key_by_key() {
        let file =
            ConfigLayer::from_toml("[server]\nworkers = 3\ndrain_timeout = \"5s\"\n").unwrap();
        let mut flags = ConfigLayer::default();
        flags.server.workers = Some(2);
        let config = Config::resolve(flags.over(file)).unwrap();
        assert_eq!(config.server.workers, 2);
        assert_eq!(config.server.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn cross_field_rules_hold() {
        let layer = ConfigLayer::from_toml("[auth]\nreject_at_upgrade = true\n").unwrap();
        let err = Config::resolve(layer).unwrap_err().to_string();
        assert!(err.starts_with("auth.reject_at_upgrade"), "{err}");
        let layer = ConfigLayer::from_toml("[auth]\njwt_leeway = \"2m\"\n").unwrap();
        assert!(Config::resolve(layer).is_err());
        let layer =
            ConfigLayer::from_toml("[server]\nallowed_origin = [\"example.com\"]\n").unwrap();
        assert!(Config::resolve(layer).is_err());
    }

    #[test]
    fn resolved_config_round_trips_for_workers() {
        let config = Config::resolve(ConfigLayer::default()).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back.limits.max_payload, DEFAULT_MAX_PAYLOAD);
        assert!(config
            .to_redacted_toml()
            .contains("auth.auth_key: not set, so each start uses a random key"));
    }

    fn resolve_toml(text: &str) -> Result<Config, String> {
        Config::resolve(ConfigLayer::from_toml(text)?).map_err(|e| e.to_string())
    }

    #[test]
    fn channel_rules_are_compiled_at_resolution_and_a_bad_one_is_named_by_index() {
        let rules = "[channels]\nchannel_auth = \"rules\"\n\n[[channels.rule]]\npattern = \"user:{id}\"\nsubscribe = { \"user.id\" = \"{id}\" }\npublish = false\n\n[[channels.rule]]\npattern = \"news:*\"\nsubscribe = { \"logged_in\" = true }\npublish = { \"user.role\" = \"admin\" }\n";
        let config = Config::resolve(ConfigLayer::from_toml(rules).unwrap()).unwrap();
        assert_eq!(config.channels.rule.len(), 2);
        // check-config's output carries the rules and reads back to the same ones.
        let again =
            Config::resolve(ConfigLayer::from_toml(&config.to_redacted_toml()).unwrap()).unwrap();
        assert_eq!(again.channels.rule, config.channels.rule);
        let refused = |text: &str| {
            Config::resolve(ConfigLayer::from_toml(text).unwrap())
                .unwrap_err()
                .to_string()
        };
        let bad = rules.replace("\"{id}\" }", "\"{name}\" }");
        let error = refused(&bad);
        assert!(
            error.contains("channel rule 0") && error.contains("{name}"),
            "{error}"
        );
        let hook = rules.replace("publish = false", "publish = \"hook\"");
        assert!(
            refused(&hook).contains("channel rule 0: \"hook\""),
            "{}",
            refused(&hook)
        );
        let not_rules = rules.replace("channel_auth = \"rules\"", "channel_auth = \"claims\"");
        assert!(refused(&not_rules).contains("channel_auth is not"));
        assert!(refused("[channels]\nchannel_auth = \"rules\"\n").contains("at least one"));
    }

    #[test]
    fn check_config_output_reads_back_to_the_same_config() {
        let secrets = || {
            let mut layer = ConfigLayer::default();
            layer.server.admin_token = Some("admin-secret".into());
            layer.auth.auth_key = Some("jwt-secret".into());
            layer.session.session_secret = Some(vec!["cookie-one".into(), "cookie-two".into()]);
            layer.broker.redis_url = Some("redis://app:redis-pass@127.0.0.1:6379".into());
            layer.hooks.hook_secret = Some(vec!["hook-new".into(), "hook-old".into()]);
            layer
        };
        let file = ConfigLayer::from_toml(
            "[server]\nworkers = 3\nlisten = \"localhost:8001\"\n[limits]\nmax_payload = \"2MiB\"\nmax_send_queue = 16777216\n[auth]\ntoken_renew_before = \"1h\"\n[session]\nuser_lookup = \"redis:user:{id}\"\n[hooks]\nhook_url = \"http://127.0.0.1:3000/sockhive\"\nhooks = [\"rpc\", \"connect\"]\nhook_timeout = \"2s\"\n",
        )
        .unwrap();
        let first = Config::resolve(secrets().over(file)).unwrap();
        let printed = first.to_redacted_toml();
        for secret in [
            "admin-secret",
            "jwt-secret",
            "cookie-one",
            "redis-pass",
            "auth_key_is_random",
            "hook-new",
            "hook-old",
        ] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(
            printed.contains("#   session.session_secret: 2 set, not shown"),
            "{printed}"
        );
        assert!(
            printed.contains("redis://app:<redacted>@127.0.0.1:6379"),
            "{printed}"
        );
        assert!(printed.contains("max_payload = \"2MiB\""), "{printed}");
        assert!(
            printed.contains("#   hooks.hook_secret: 2 set, not shown"),
            "{printed}"
        );
        assert!(
            !printed.contains("node_id ="),
            "a per-start default is not pinned:\n{printed}"
        );
        let read_back = ConfigLayer::from_toml(&printed).expect("the output is a valid config");
        let second = Config::resolve(secrets().over(read_back)).unwrap();
        assert_eq!(second.to_redacted_toml(), printed);
        assert_eq!(second.auth.auth_key, "jwt-secret");
        assert_eq!(
            second.session.session_redis_url,
            first.session.session_redis_url
        );
        assert_eq!(second.server.listen, first.server.listen);
        assert_eq!(second.hooks.hooks, vec![HookKind::Rpc, HookKind::Connect]);
        assert_eq!(second.hooks.hook_timeout, Duration::from_secs(2));
    }

    #[test]
    fn hooks_need_a_callable_url_and_a_secret_and_allow_hook_rules() {
        let url = "[hooks]\nhook_url = \"http://127.0.0.1:3000/sockhive\"\n";
        let error = resolve_toml(url).unwrap_err();
        assert!(error.contains("hooks.hook_secret"), "{error}");
        let signed = format!("{url}hook_secret = [\"s\"]\n");
        let config = resolve_toml(&signed).unwrap();
        assert!(config.hooks.enabled(HookKind::Rpc) && !config.hooks.enabled(HookKind::Connect));
        for (bad, key) in [
            ("hook_url = \"https://app/sockhive\"", "hooks.hook_url"),
            (
                "hook_url = \"http://app/x\"\nhook_secret = [\"s\"]\nhook_concurrency = 0",
                "hooks.hook_concurrency",
            ),
            (
                "hook_url = \"http://app/x\"\nhook_secret = [\"s\"]\nhook_queue = 0",
                "hooks.hook_queue",
            ),
            ("hooks = [\"rpc\", \"everything\"]", "everything"),
        ] {
            let error = match ConfigLayer::from_toml(&format!("[hooks]\n{bad}\n")) {
                Ok(layer) => Config::resolve(layer).unwrap_err().to_string(),
                Err(parse) => parse,
            };
            assert!(error.contains(key), "{bad}: {error}");
        }
        let rule = "[channels]\nchannel_auth = \"rules\"\n[[channels.rule]]\npattern = \"room:*\"\nsubscribe = \"hook\"\npublish = false\n";
        assert!(resolve_toml(rule)
            .unwrap_err()
            .contains("channel rule 0: \"hook\""));
        assert!(resolve_toml(&format!("{signed}{rule}")).is_ok());
    }

    #[test]
    fn host_names_in_addresses_are_resolved_once() {
        let config =
            resolve_toml("[server]\nlisten = \"localhost:0\"\nadmin_listen = \"localhost:9001\"\n")
                .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            config.server.admin_listen,
            "127.0.0.1:9001".parse().unwrap()
        );
        let config = resolve_toml("[server]\nlisten = \"[::1]:0\"\n").unwrap();
        assert_eq!(config.server.listen, "[::1]:0".parse().unwrap());
        let err = resolve_toml("[server]\nlisten = \"nosuch.invalid:80\"\n").unwrap_err();
        assert!(
            err.starts_with("server.listen (--listen): cannot resolve host `nosuch.invalid`"),
            "{err}"
        );
        let err = resolve_toml("[server]\nadmin_listen = \"localhost\"\n").unwrap_err();
        assert!(
            err.contains("(--admin-listen)") && err.contains("not host:port"),
            "{err}"
        );
        let err = resolve_toml("[server]\nlisten = \"localhost:http\"\n").unwrap_err();
        assert!(err.contains("the port `http`"), "{err}");
    }

    #[test]
    fn a_user_lookup_that_cannot_work_is_refused_with_or_without_sessions() {
        for lookup in [
            "none2",
            "redis:user",
            "http://app:99999/{id}",
            "http://a b/{id}",
            "http://u:p@app/{id}",
            "https://app/{id}",
        ] {
            let err =
                resolve_toml(&format!("[session]\nuser_lookup = \"{lookup}\"\n")).unwrap_err();
            assert!(
                err.starts_with("session.user_lookup (--user-lookup):"),
                "{lookup}: {err}"
            );
        }
        for lookup in [
            "none",
            "redis:user:{id}",
            "redis-hash:u:{id}",
            "http://app/users/{id}",
            "http://127.0.0.1:3000/u/{id}",
        ] {
            resolve_toml(&format!("[session]\nuser_lookup = \"{lookup}\"\n")).unwrap();
        }
        let err = resolve_toml("[session]\nsession_cookie = \"a;b\"\n").unwrap_err();
        assert!(
            err.starts_with("session.session_cookie (--session-cookie)"),
            "{err}"
        );
    }

    #[test]
    fn a_jwt_key_the_workers_would_refuse_is_refused_here() {
        let err = resolve_toml(
            "[auth]\nauth_key = \"-----BEGIN PUBLIC KEY-----\\nMIIB\\n-----END PUBLIC KEY-----\"\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("auth.auth_key (--auth-key):") && err.contains("PEM"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("sockhive-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("garbage.pem");
        std::fs::write(&pem, "not a key\n").unwrap();
        let err = resolve_toml(&format!(
            "[auth]\nauth_algorithm = \"RS256\"\nauth_public_key = \"{}\"\n",
            pem.display()
        ))
        .unwrap_err();
        assert!(
            err.starts_with("auth.auth_public_key (--auth-public-key):"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
