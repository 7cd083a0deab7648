//! Who a connection is: the credential pipeline shared by every protocol.
//!
//! Tried in the contract's order, the first one present decides:
//! 1. at the upgrade, an `access_token` query parameter or an
//!    `Authorization: Bearer` header (a JWT, e.g. from `/negotiate`);
//! 2. at the upgrade, the app's signed session cookie (or `session_id`);
//! 3. after the upgrade, the protocol's own token (`#handshake` authToken,
//!    Socket.IO CONNECT `auth.token`).
//!
//! A socket logged in by its session gets a JWT minted from it. Such a token
//! names its session only by a hash (`sh`), never by the session id itself
//! (the token is readable by page scripts; the cookie is not), and is honoured
//! only while that session still logs in the same `passport.user`, so logging
//! out in the app (or logging in as someone else) also ends the tokens minted
//! from it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, Value as RedisValue};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sockhive_shared::config::Config;
use sockhive_shared::http::RequestHead;
use sockhive_shared::jwt::AuthTokenError;

use passport::{
    watch::WatcherConfig, DuplicateCookiePolicy, LoggedOut, SessionAuthConfig, SessionAuthError,
    SessionAuthenticator, SessionLogin, SessionOutcome, SessionStore, SessionWatcher,
    SignedSessionId, StoredSession, UserRecordShape, UserResolver,
};
use prometheus::{IntCounter, IntCounterVec};
use sockhive_shared::metrics::CounterTable;

pub mod claims;
pub mod jwt;
pub mod passport;

pub use claims::Claims;
pub use jwt::{now_unix, Auth};

/// How the credential was presented (the `method` label of handshake metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A JWT in `access_token` or `Authorization: Bearer` at the upgrade.
    AccessToken,
    /// The app's session cookie (or `session_id`).
    Session,
    /// The protocol's own token after the upgrade.
    Token,
}

impl Method {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Method::AccessToken => "access_token",
            Method::Session => "session",
            Method::Token => "jwt",
        }
    }
}

/// A verified identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// How it was presented.
    pub method: Method,
    /// The JWT claims the socket carries (minted ones for a session login).
    pub claims: Map<String, Value>,
    /// The session behind the login, if any (watched for logout).
    pub session: Option<SessionLogin>,
    /// A token minted for the client (session logins): sent with `#setAuthToken`.
    pub minted_token: Option<String>,
}

/// A presented credential that was refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// How it was presented.
    pub method: Method,
    /// The protocol-visible error name (`AuthTokenExpiredError`,
    /// `SessionNotFoundError`, ..., or the app's own from its `connect` hook).
    pub name: Cow<'static, str>,
    /// Readable text.
    pub message: String,
    /// The metric reason.
    pub reason: &'static str,
    /// Extra wire fields (SocketCluster's `isBadToken`, `expiry`, ...); boxed
    /// to keep refusals small on the happy path.
    pub fields: Box<Map<String, Value>>,
    /// The client should forget its stored token.
    pub bad_token: bool,
}

/// The outcome of the pipeline.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Nothing was presented.
    Absent,
    /// Logged in (boxed: an identity is large, absence is common).
    Accepted(Box<Identity>),
    /// Presented and refused; never silently ignored.
    Refused(Refusal),
}

/// Metric reasons of refusals that are the server's fault, not the credential's.
const SERVER_FAULT_REASONS: [&str; 4] = [
    "store_unavailable",
    "user_lookup_unavailable",
    "sign_failed",
    "hook_unavailable",
];

impl Refusal {
    /// Whether the server, not the credential, is at fault (the session store or
    /// user lookup is down or slow, or signing failed): such refusals are outages
    /// to alert on and to retry later, never a reason to drop a stored credential.
    pub fn server_fault(&self) -> bool {
        SERVER_FAULT_REASONS.contains(&self.reason)
    }

    /// The HTTP status for refusing before the upgrade (`/negotiate`,
    /// `--reject-at-upgrade`): 503 for a server fault, so clients and load
    /// balancers retry, and 401 for a credential that is simply not good.
    pub fn status(&self) -> u16 {
        if self.server_fault() {
            503
        } else {
            401
        }
    }

    fn from_token(method: Method, error: &AuthTokenError) -> Refusal {
        let mut fields = match error.to_wire() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        fields.remove("message");
        fields.remove("name");
        Refusal {
            method,
            name: error.name().into(),
            message: error.to_string(),
            reason: error.reason(),
            fields: Box::new(fields),
            bad_token: error.is_bad_token(),
        }
    }

    fn from_session(error: &SessionAuthError) -> Refusal {
        Refusal {
            method: Method::Session,
            name: error.name().into(),
            message: error.to_string(),
            reason: error.reason(),
            fields: Box::default(),
            bad_token: false,
        }
    }

    /// `{"message", "name", ...fields}`, SocketCluster's error object.
    pub fn to_wire(&self) -> Value {
        let mut object = Map::new();
        object.insert("message".into(), json!(self.message));
        object.insert("name".into(), json!(self.name));
        object.extend(self.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(object)
    }
}

/// The worker's side of cookie logins: authenticator, logout watcher, minted tokens.
pub struct SessionSupport {
    authenticator: SessionAuthenticator,
    /// Notices logouts of sessions that have sockets.
    pub watcher: SessionWatcher,
    minted: Client,
    /// The session store, whose round trips carry the minted tokens' filings
    /// (standalone Redis).
    store: Arc<dyn SessionStore>,
    prefix: String,
    sharded: bool,
}

/// Keys of the minted-token index: `sockhive:minted:<session hash>` holds the session id.
const MINTED_PREFIX: &str = "sockhive:minted:";

/// Redis script: the filed login of a minted token and the current value of
/// its session, as `[filed, session or nil]`; nil when nothing is filed. One
/// round trip on a single Redis (a cluster takes two: the keys live in other
/// slots). The comparison of `passport.user` is done in Rust, with the same
/// session parsing as a cookie login.
const MINTED_SESSION_READ: &str = "local v = redis.call('GET', KEYS[1]) if not v then return false end local ok, m = pcall(cjson.decode, v) if not ok or type(m) ~= 'table' or type(m.sid) ~= 'string' then return {v, false} end return {v, redis.call('GET', ARGV[1] .. m.sid)}";

/// What the minted-token index files: enough to watch the session for logout.
#[derive(serde::Serialize, serde::Deserialize)]
struct MintedLogin {
    sid: String,
    passport_user: Value,
}

/// Whether a minted token's session still stands behind it.
enum MintedCheck {
    /// The session still logs in the `passport.user` filed at mint time.
    Alive(MintedLogin),
    /// It does not; the text says why (for the client's `SessionNotFoundError`).
    Ended(&'static str),
}

impl MintedCheck {
    /// Decides from the filed login and the session's current value (both as
    /// read from Redis): alive only while `passport.user` is still the user
    /// the token was minted for. Logging out and logging in as someone else
    /// on the same session both end the token.
    fn decide(filed: Option<&[u8]>, session: Option<&[u8]>) -> MintedCheck {
        let Some(login) = filed.and_then(|text| serde_json::from_slice::<MintedLogin>(text).ok())
        else {
            return MintedCheck::Ended("the web session this token was minted from is unknown");
        };
        let Some(session) = session else {
            return MintedCheck::Ended("the web session this token was minted from has ended");
        };
        match crate::auth::passport::user::passport_user(&StoredSession::from_bytes(session)) {
            Ok(user) if *user == login.passport_user => MintedCheck::Alive(login),
            Ok(_) => MintedCheck::Ended(
                "the web session this token was minted from is now logged in as another user",
            ),
            Err(_) => MintedCheck::Ended(
                "the web session this token was minted from is no longer logged in",
            ),
        }
    }
}

/// The hash a minted token uses to name its session.
pub fn session_hash(sid: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(sid.as_bytes());
    // One allocation, not a formatted string per byte (per cookie login).
    let mut hash = String::with_capacity(32);
    for b in &digest[..16] {
        hash.push(HEX[usize::from(b >> 4)] as char);
        hash.push(HEX[usize::from(b & 0xf)] as char);
    }
    hash
}

fn resolver(config: &Config) -> UserResolver {
    let lookup = config.session.user_lookup.as_str();
    if let Some(template) = lookup.strip_prefix("redis-hash:") {
        UserResolver::RedisKey {
            template: template.to_string(),
            shape: UserRecordShape::Hash,
        }
    } else if let Some(template) = lookup.strip_prefix("redis:") {
        UserResolver::RedisKey {
            template: template.to_string(),
            shape: UserRecordShape::Json,
        }
    } else if lookup.starts_with("http://") {
        UserResolver::Http {
            url_template: lookup.to_string(),
            timeout: config.session.user_lookup_timeout,
        }
    } else {
        UserResolver::AsIs
    }
}

impl SessionSupport {
    /// Connects (in the background) when cookie auth is configured; `None` otherwise.
    pub fn start(
        config: &Config,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<
        Option<(
            SessionSupport,
            tokio::sync::mpsc::UnboundedReceiver<LoggedOut>,
        )>,
    > {
        let session = &config.session;
        let (true, Some(url)) = (session.enabled(), session.session_redis_url.as_deref()) else {
            return Ok(None);
        };
        let mut auth_config = SessionAuthConfig::new(session.session_secret.clone());
        auth_config.cookie_name = session.session_cookie.clone();
        auth_config.prefix = session.session_prefix.clone();
        auth_config.store_timeout = session.session_store_timeout;
        auth_config.resolver = resolver(config);
        auth_config.user_lookup_headers = session.user_lookup_header.clone();
        auth_config.duplicate_cookie = match session.duplicate_cookie {
            sockhive_shared::config::DuplicateCookie::First => DuplicateCookiePolicy::FirstWins,
            sockhive_shared::config::DuplicateCookie::Refuse => DuplicateCookiePolicy::Reject,
        };
        auth_config.accept_signed_query_session_id = session.accept_query_session_id;
        let authenticator = SessionAuthenticator::connect(auth_config, url)?;
        let mut watch = WatcherConfig::new(url);
        watch.prefix = session.session_prefix.clone();
        watch.recheck = session.session_recheck;
        watch.command_timeout = session.session_store_timeout;
        watch.user_lookup = authenticator.user_lookup();
        let (watcher, logouts) = SessionWatcher::start(watch, authenticator.store(), shutdown)?;
        let redis_config = sockhive_broker::redis::redis_config(url)?;
        let sharded = sockhive_broker::redis::is_cluster(&redis_config);
        let minted = sockhive_broker::redis::client(redis_config)?;
        let store = authenticator.store();
        Ok(Some((
            SessionSupport {
                authenticator,
                watcher,
                minted,
                store,
                prefix: session.session_prefix.clone(),
                sharded,
            },
            logouts,
        )))
    }

    /// The session a minted token names, while it still logs in the user the
    /// token was minted for; an error when the store cannot say.
    async fn minted_login(&self, hash: &str, timeout: Duration) -> Result<MintedCheck, String> {
        let key = format!("{MINTED_PREFIX}{hash}");
        let check = async {
            let (filed, session): (RedisValue, RedisValue) = if self.sharded {
                let filed: RedisValue = self.minted.get(key).await?;
                let sid = filed
                    .as_bytes()
                    .and_then(|text| serde_json::from_slice::<MintedLogin>(text).ok())
                    .map(|login| login.sid);
                let session = match sid {
                    Some(sid) => self.minted.get(format!("{}{sid}", self.prefix)).await?,
                    None => RedisValue::Null,
                };
                (filed, session)
            } else {
                let reply: RedisValue = self
                    .minted
                    .eval(MINTED_SESSION_READ, vec![key], vec![self.prefix.clone()])
                    .await?;
                let mut pair = reply.into_array().into_iter();
                (
                    pair.next().unwrap_or(RedisValue::Null),
                    pair.next().unwrap_or(RedisValue::Null),
                )
            };
            Ok::<_, fred::error::Error>(MintedCheck::decide(filed.as_bytes(), session.as_bytes()))
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Files the session behind a minted token (off the handshake's critical path).
    fn remember_minted(&self, hash: String, login: &SessionLogin, lifetime: Duration) {
        let filed = serde_json::to_string(&MintedLogin {
            sid: login.sid.clone(),
            passport_user: login.passport_user.clone(),
        })
        .unwrap_or_default();
        let key = format!("{MINTED_PREFIX}{hash}");
        // A cluster's pipeline would span slots: there each token is filed alone.
        let Err((key, filed, lifetime)) = self.store.file_with_reads((key, filed, lifetime)) else {
            return;
        };
        let minted = self.minted.clone();
        tokio::spawn(async move {
            let expire = Expiration::PX(lifetime.as_millis().min(i64::MAX as u128) as i64);
            if let Err(e) = minted
                .set::<(), _, _>(key, filed, Some(expire), None, false)
                .await
            {
                tracing::warn!(error = %e, "minted token not filed; it will be refused until the session logs in again");
            }
        });
    }
}

/// The query parameter or header JWT of an upgrade request, if any.
pub fn upgrade_token(head: &RequestHead) -> Option<String> {
    head.query_param("access_token")
        .filter(|t| !t.is_empty())
        .or_else(|| head.bearer_token().map(str::to_string))
}

/// Who connections are, for every protocol: the node's JWT keys, the web
/// app's session logins when configured, and the settings the pipeline reads.
/// Built once per worker; the socket core and the front door hold it.
pub struct Credentials {
    /// JWT verification and signing.
    pub jwt: Auth,
    /// Session-cookie logins, when configured.
    pub sessions: Option<SessionSupport>,
    /// `--session-store-timeout`: how long a minted token's check may take.
    store_timeout: Duration,
    /// `--negotiate-expiry`: lifetime of `/negotiate` tickets.
    negotiate_expiry: Duration,
    /// `sockhive_session_logins_total{result="ok"}`, resolved once.
    session_logins_ok: IntCounter,
    /// `sockhive_session_logins_total` by refusal reason, resolved once.
    session_refusals: CounterTable,
}

/// The claims of a token minted from a session login. When the resolved user
/// carries a `channels` array of strings (the app's user record lists the
/// user's channels), it becomes the token's `channels` claim, so
/// `--channel-auth claims` gives cookie logins the channels their record lists.
fn session_claims(login: &SessionLogin, hash: &str) -> Map<String, Value> {
    let sub = match &login.passport_user {
        Value::String(_) | Value::Number(_) => login.passport_user.clone(),
        Value::Object(user) => user
            .get("id")
            .cloned()
            .unwrap_or_else(|| json!(login.passport_user.to_string())),
        other => json!(other.to_string()),
    };
    let mut claims = Map::new();
    claims.insert("sub".into(), sub);
    claims.insert("user".into(), login.user.clone());
    claims.insert("sh".into(), json!(hash));
    if let Some(channels) = channels_claim(&login.user) {
        claims.insert("channels".into(), channels);
    }
    claims
}

/// The `channels` claim a session login's token carries: the resolved user's
/// `channels` array, when it is one of strings (the app's user record lists
/// the user's channels).
pub fn channels_claim(user: &Value) -> Option<Value> {
    let channels = user.get("channels")?.as_array()?;
    channels
        .iter()
        .all(Value::is_string)
        .then(|| Value::Array(channels.clone()))
}

fn session_gone(method: Method, message: &str) -> Refusal {
    let mut fields = Map::new();
    fields.insert("isBadToken".into(), json!(true));
    Refusal {
        method,
        name: "SessionNotFoundError".into(),
        message: message.into(),
        reason: "logged_out",
        fields: Box::new(fields),
        bad_token: true,
    }
}

impl Credentials {
    /// The pipeline for this configuration; `sessions` is the started
    /// session support (see [`SessionSupport::start`]).
    pub fn new(
        config: &Config,
        sessions: Option<SessionSupport>,
        session_logins: IntCounterVec,
    ) -> Result<Credentials, sockhive_shared::jwt::JwtKeyError> {
        Ok(Credentials {
            jwt: Auth::new(&config.auth)?,
            sessions,
            store_timeout: config.session.session_store_timeout,
            negotiate_expiry: config.session.negotiate_expiry,
            // `metrics::SESSION_LOGIN_OK`.
            session_logins_ok: session_logins.with_label_values(&["ok"]),
            session_refusals: CounterTable::new(
                &session_logins,
                SessionAuthError::REASONS.map(|reason| (reason, "")),
            ),
        })
    }

    /// Steps 1 and 2 of the pipeline, at the upgrade.
    pub async fn from_upgrade(&self, head: &RequestHead) -> Credential {
        self.decide(self.presented(head)).await
    }

    /// What an upgrade request presented, settled as far as it can be
    /// without I/O (a cookie's signature is checked here): what is left for
    /// [`decide`](Self::decide) owns only the token or the session id, not
    /// the request.
    fn presented(&self, head: &RequestHead) -> Presented {
        if let Some(token) = upgrade_token(head) {
            return Presented::Token(token);
        }
        let Some(sessions) = self.sessions.as_ref() else {
            return Presented::Decided(Credential::Absent);
        };
        let cookies: Vec<&str> = head.headers_named("cookie").collect();
        let query_sid = head.query_param("session_id");
        match sessions
            .authenticator
            .verify_cookie(&cookies, query_sid.as_deref())
        {
            Ok(None) => Presented::Decided(Credential::Absent),
            Err(error) => Presented::Decided(self.session_refused(&error)),
            Ok(Some(signed)) => Presented::Session(signed),
        }
    }

    /// The rest of steps 1 and 2: the token verified, or the session read
    /// from the store and a token minted from it.
    async fn decide(&self, presented: Presented) -> Credential {
        let signed = match presented {
            Presented::Decided(credential) => return credential,
            // Boxed: the cookie login's state machine, which every such
            // upgrade allocates, should not be sized by the token path's.
            Presented::Token(token) => return Box::pin(self.decide_access_token(token)).await,
            Presented::Session(signed) => signed,
        };
        let Some(sessions) = self.sessions.as_ref() else {
            return Credential::Absent;
        };
        match sessions.authenticator.login_signed(signed).await {
            SessionOutcome::Anonymous => Credential::Absent,
            SessionOutcome::Refused(error) => self.session_refused(&error),
            SessionOutcome::Authenticated(login) => {
                self.session_logins_ok.inc();
                match self.mint(sessions, login, self.jwt.token_expiry) {
                    Ok(identity) => Credential::Accepted(Box::new(identity)),
                    Err(refusal) => Credential::Refused(refusal),
                }
            }
        }
    }

    /// Step 1: a JWT in `access_token` or `Authorization: Bearer`.
    async fn decide_access_token(&self, token: String) -> Credential {
        match self.from_token(&token, Method::AccessToken).await {
            // An access token is a ticket for the connection: the socket gets
            // a token of its own, minted afresh from the session behind the
            // ticket (a short `/negotiate` ticket must not end the socket), or
            // the ticket itself when no session is behind it.
            Credential::Accepted(mut identity) => {
                match (identity.session.clone(), self.sessions.as_ref()) {
                    (Some(login), Some(sessions)) => {
                        match self.mint(sessions, login, self.jwt.token_expiry) {
                            Ok(fresh) => Credential::Accepted(Box::new(Identity {
                                method: Method::AccessToken,
                                ..fresh
                            })),
                            Err(refusal) => Credential::Refused(refusal),
                        }
                    }
                    _ => {
                        identity.minted_token = Some(token);
                        Credential::Accepted(identity)
                    }
                }
            }
            other => other,
        }
    }

    /// Counts and converts a refused session credential.
    fn session_refused(&self, error: &SessionAuthError) -> Credential {
        self.session_refusals.inc(error.reason(), "");
        Credential::Refused(Refusal::from_session(error))
    }

    fn mint(
        &self,
        sessions: &SessionSupport,
        login: SessionLogin,
        lifetime: Duration,
    ) -> Result<Identity, Refusal> {
        // Hot path (every cookie login): one hash, one signature; the claims the
        // socket carries are the signed ones, built here rather than by
        // verifying the token just made.
        let hash = session_hash(&login.sid);
        let mut claims = session_claims(&login, &hash);
        let now = now_unix();
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + lifetime.as_secs()));
        match self.jwt.sign_as_is(&claims) {
            Ok(token) => {
                sessions.remember_minted(hash, &login, lifetime);
                Ok(Identity {
                    method: Method::Session,
                    claims,
                    session: Some(login),
                    minted_token: Some(token),
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot mint a token for a session login");
                Err(Refusal {
                    method: Method::Session,
                    name: "AuthTokenError".into(),
                    message: format!("the server failed to sign an auth token: {e}"),
                    reason: "sign_failed",
                    fields: Box::default(),
                    bad_token: false,
                })
            }
        }
    }

    /// A JWT presented by the client (step 1 or 3).
    pub async fn from_token(&self, token: &str, method: Method) -> Credential {
        let claims = match self.jwt.verify(token) {
            Ok(claims) => claims,
            Err(error) => return Credential::Refused(Refusal::from_token(method, &error)),
        };
        // A token minted from a session lives only as long as the session.
        let mut session = None;
        if let Some(hash) = claims.get("sh").and_then(Value::as_str) {
            let Some(sessions) = self.sessions.as_ref() else {
                return Credential::Refused(session_gone(method, "this token was minted from a web session, and session logins are not configured here"));
            };
            // The socket watches that session for logout, like a cookie login.
            session = match sessions.minted_login(hash, self.store_timeout).await {
                Ok(MintedCheck::Alive(MintedLogin { sid, passport_user })) => {
                    let user = claims.get("user").cloned().unwrap_or(Value::Null);
                    Some(SessionLogin {
                        sid,
                        passport_user,
                        user,
                        secret_index: 0,
                    })
                }
                Ok(MintedCheck::Ended(why)) => {
                    return Credential::Refused(session_gone(method, why))
                }
                Err(e) => {
                    return Credential::Refused(Refusal {
                        method,
                        name: "SessionStoreUnavailableError".into(),
                        message: format!("the session store is unavailable ({e})"),
                        reason: "store_unavailable",
                        fields: Box::default(),
                        bad_token: false,
                    })
                }
            };
        }
        Credential::Accepted(Box::new(Identity {
            method,
            claims,
            session,
            minted_token: None,
        }))
    }

    /// What `/negotiate` hands out for a session cookie: a short-lived access token.
    pub async fn negotiate(&self, head: &RequestHead) -> Result<(String, Duration), Refusal> {
        let Some(sessions) = self.sessions.as_ref() else {
            return Err(Refusal {
                method: Method::Session,
                name: "SessionNotFoundError".into(),
                message: "session logins are not configured".into(),
                reason: "no_cookie",
                fields: Box::default(),
                bad_token: false,
            });
        };
        let cookies: Vec<&str> = head.headers_named("cookie").collect();
        let lifetime = self.negotiate_expiry;
        match sessions.authenticator.authenticate(&cookies, None).await {
            SessionOutcome::Anonymous => Err(Refusal {
                method: Method::Session,
                name: "SessionNotFoundError".into(),
                message: "no session cookie".into(),
                reason: "no_cookie",
                fields: Box::default(),
                bad_token: false,
            }),
            SessionOutcome::Refused(error) => Err(Refusal::from_session(&error)),
            SessionOutcome::Authenticated(login) => {
                let identity = self.mint(sessions, login, lifetime)?;
                Ok((identity.minted_token.unwrap_or_default(), lifetime))
            }
        }
    }
}

/// What an upgrade presented, once everything that needs no I/O is done.
enum Presented {
    /// Nothing presented, or refused on the spot (a bad cookie signature).
    Decided(Credential),
    /// A JWT at the upgrade.
    Token(String),
    /// A session cookie (or `session_id`) whose signature verified.
    Session(SignedSessionId),
}

/// The state machine deciding a presented credential.
type Deciding = Pin<Box<dyn Future<Output = Credential> + Send>>;

/// The upgrade's credential, possibly still being decided: the session
/// lookup runs while the client sends its protocol handshake, so its Redis
/// round trip overlaps the client's.
pub enum PendingCredential {
    /// Already known (nothing presented, or decided before the 101).
    Ready(Box<Credential>),
    /// Being decided in the connection's own task: polled once at the
    /// upgrade, which sends the store read, and finished when the protocol
    /// handshake asks. Not a task of its own: spawning one per connection
    /// moved this state machine by value into the task cell and its result
    /// out of it again (issue 19: most of a handshake's memcpy).
    Pending(Deciding),
}

impl std::fmt::Debug for PendingCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PendingCredential::Ready(credential) => {
                f.debug_tuple("Ready").field(credential).finish()
            }
            PendingCredential::Pending(_) => f.write_str("Pending"),
        }
    }
}

impl PendingCredential {
    /// Starts the pipeline for an upgrade; cheap when nothing is presented.
    /// Everything that needs no I/O is settled here (a bad cookie or a
    /// `session_id` not accepted is refused on the spot, with no store
    /// access); a store read is sent before this returns.
    pub async fn start(credentials: &Arc<Credentials>, head: &RequestHead) -> PendingCredential {
        let presented = match credentials.presented(head) {
            Presented::Decided(credential) => {
                return PendingCredential::Ready(Box::new(credential))
            }
            presented => presented,
        };
        let credentials = credentials.clone();
        let mut deciding: Deciding = Box::pin(async move { credentials.decide(presented).await });
        // One poll with this connection task's waker: the store read leaves
        // now, and its answer wakes this task.
        match std::future::poll_fn(|cx| Poll::Ready(deciding.as_mut().poll(cx))).await {
            Poll::Ready(credential) => PendingCredential::Ready(Box::new(credential)),
            Poll::Pending => PendingCredential::Pending(deciding),
        }
    }

    /// The decided credential.
    pub async fn resolve(self) -> Credential {
        match self {
            PendingCredential::Ready(credential) => *credential,
            PendingCredential::Pending(deciding) => deciding.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(passport_user: Value, user: Value) -> SessionLogin {
        SessionLogin {
            sid: "sid-1".into(),
            passport_user,
            user,
            secret_index: 0,
        }
    }

    fn filed(passport_user: Value) -> String {
        json!({"sid": "sid-1", "passport_user": passport_user}).to_string()
    }

    fn ended(check: MintedCheck) -> &'static str {
        match check {
            MintedCheck::Alive(login) => panic!("alive as {}", login.passport_user),
            MintedCheck::Ended(why) => why,
        }
    }

    #[test]
    fn a_minted_token_lives_only_while_its_session_logs_in_the_same_user() {
        let alice = filed(json!("u-alice"));
        let session = |user: Value| json!({"cookie": {}, "passport": {"user": user}}).to_string();
        let check = |filed: Option<&str>, session: Option<&str>| {
            MintedCheck::decide(filed.map(str::as_bytes), session.map(str::as_bytes))
        };
        let MintedCheck::Alive(found) = check(Some(&alice), Some(&session(json!("u-alice"))))
        else {
            panic!("the same user must pass");
        };
        assert_eq!(
            (found.sid.as_str(), found.passport_user),
            ("sid-1", json!("u-alice"))
        );
        assert!(ended(check(Some(&alice), Some(&session(json!("u-bob"))))).contains("another"));
        assert!(ended(check(Some(&alice), None)).contains("ended"));
        assert!(ended(check(None, None)).contains("unknown"));
        assert!(
            ended(check(Some("{damaged"), Some(&session(json!("u-alice"))))).contains("unknown")
        );
        for logged_out in [
            json!({"passport": {}}).to_string(),
            json!({"cookie": {}}).to_string(),
            "not json".to_owned(),
        ] {
            assert!(
                ended(check(Some(&alice), Some(&logged_out))).contains("no longer"),
                "{logged_out}"
            );
        }
        // Whole serialized users compare as JSON values: key order does not matter,
        // any changed field does; a number id is not its string.
        let object = filed(json!({"id": 7, "name": "Carol"}));
        let reordered = session(json!({"name": "Carol", "id": 7}));
        assert!(matches!(
            check(Some(&object), Some(&reordered)),
            MintedCheck::Alive(_)
        ));
        let renamed = session(json!({"id": 7, "name": "Carl"}));
        ended(check(Some(&object), Some(&renamed)));
        ended(check(Some(&filed(json!(7))), Some(&session(json!("7")))));
    }

    #[test]
    fn the_session_hash_is_the_first_16_bytes_of_sha256_in_lowercase_hex() {
        for sid in ["sid-1", "", "Ab/+=é"] {
            let expected: String = Sha256::digest(sid.as_bytes())
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(session_hash(sid), expected);
        }
    }

    #[test]
    fn the_users_channels_become_the_channels_claim() {
        let user = json!({"id": "u-dana", "channels": ["room:1", "team:*"]});
        let claims = session_claims(&login(user.clone(), user), "h");
        assert_eq!(claims["sub"], "u-dana");
        assert_eq!(claims["channels"], json!(["room:1", "team:*"]));
        assert_eq!(claims["sh"], "h");
        for user in [
            json!({"id": "u-erin"}),
            json!({"id": "u-erin", "channels": "room:1"}),
            json!({"id": "u-erin", "channels": ["room:1", 2]}),
        ] {
            let claims = session_claims(&login(json!("u-erin"), user.clone()), "h");
            assert!(!claims.contains_key("channels"), "{user}");
        }
    }

    #[test]
    fn server_faults_are_503_and_credential_faults_401() {
        let refusal = |reason: &'static str| Refusal {
            method: Method::Session,
            name: "SessionNotFoundError".into(),
            message: String::new(),
            reason,
            fields: Box::default(),
            bad_token: false,
        };
        for reason in [
            "store_unavailable",
            "user_lookup_unavailable",
            "sign_failed",
        ] {
            assert!(refusal(reason).server_fault(), "{reason}");
            assert_eq!(refusal(reason).status(), 503, "{reason}");
        }
        for reason in [
            "no_cookie",
            "no_session",
            "bad_signature",
            "logged_out",
            "invalid",
        ] {
            assert!(!refusal(reason).server_fault(), "{reason}");
            assert_eq!(refusal(reason).status(), 401, "{reason}");
        }
        // Every session error the store or lookup can cause is a server fault here too.
        let down = SessionAuthError::UserLookupUnavailable("down".into());
        assert!(Refusal::from_session(&down).server_fault());
        assert_eq!(
            Refusal::from_session(&down).server_fault(),
            down.is_server_fault()
        );
    }
}
