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
//! only while that session still exists, so logging out in the app also ends
//! the tokens minted from it.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Expiration;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sockhive_shared::config::Config;
use sockhive_shared::http::RequestHead;
use sockhive_shared::jwt::AuthTokenError;

use crate::passport::{
    watch::WatcherConfig, DuplicateCookiePolicy, LoggedOut, SessionAuthConfig, SessionAuthError,
    SessionAuthenticator, SessionLogin, SessionOutcome, SessionWatcher, UserRecordShape,
    UserResolver,
};
use crate::WorkerContext;

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
    /// The protocol-visible error name (`AuthTokenExpiredError`, `SessionNotFoundError`, ...).
    pub name: &'static str,
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

impl Refusal {
    fn from_token(method: Method, error: &AuthTokenError) -> Refusal {
        let mut fields = match error.to_wire() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        fields.remove("message");
        fields.remove("name");
        Refusal {
            method,
            name: error.name(),
            message: error.to_string(),
            reason: error.reason(),
            fields: Box::new(fields),
            bad_token: error.is_bad_token(),
        }
    }

    fn from_session(error: &SessionAuthError) -> Refusal {
        Refusal {
            method: Method::Session,
            name: error.name(),
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
    prefix: String,
    sharded: bool,
}

/// Keys of the minted-token index: `sockhive:minted:<session hash>` holds the session id.
const MINTED_PREFIX: &str = "sockhive:minted:";

/// Redis script: the filed login of a minted token, if its session still
/// exists. One round trip on a single Redis (a cluster takes two: the keys
/// live in other slots).
const MINTED_SESSION_ALIVE: &str = "local v = redis.call('GET', KEYS[1]) if not v then return false end local sid = cjson.decode(v).sid if redis.call('EXISTS', ARGV[1] .. sid) == 1 then return v end return false";

/// What the minted-token index files: enough to watch the session for logout.
#[derive(serde::Serialize, serde::Deserialize)]
struct MintedLogin {
    sid: String,
    passport_user: Value,
}

/// The hash a minted token uses to name its session.
pub fn session_hash(sid: &str) -> String {
    let digest = Sha256::digest(sid.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
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
        auth_config.duplicate_cookie = match session.duplicate_cookie {
            sockhive_shared::config::DuplicateCookie::First => DuplicateCookiePolicy::FirstWins,
            sockhive_shared::config::DuplicateCookie::Refuse => DuplicateCookiePolicy::Reject,
        };
        let authenticator = SessionAuthenticator::connect(auth_config, url)?;
        let mut watch = WatcherConfig::new(url);
        watch.prefix = session.session_prefix.clone();
        watch.recheck = session.session_recheck;
        watch.command_timeout = session.session_store_timeout;
        let (watcher, logouts) = SessionWatcher::start(watch, authenticator.store(), shutdown)?;
        let redis_config = sockhive_broker::redis::redis_config(url)?;
        let sharded = sockhive_broker::redis::is_cluster(&redis_config);
        let minted = sockhive_broker::redis::client(redis_config)?;
        Ok(Some((
            SessionSupport {
                authenticator,
                watcher,
                minted,
                prefix: session.session_prefix.clone(),
                sharded,
            },
            logouts,
        )))
    }

    /// The session a minted token names, while it exists (`None` once logged
    /// out); an error when the store cannot say.
    async fn minted_login(
        &self,
        hash: &str,
        timeout: Duration,
    ) -> Result<Option<MintedLogin>, String> {
        let key = format!("{MINTED_PREFIX}{hash}");
        let check = async {
            let filed: Option<String> = if self.sharded {
                let filed: Option<String> = self.minted.get(key).await?;
                match filed {
                    None => None,
                    Some(text) => {
                        let sid = serde_json::from_str::<MintedLogin>(&text)
                            .map(|m| m.sid)
                            .unwrap_or_default();
                        let exists: i64 =
                            self.minted.exists(format!("{}{sid}", self.prefix)).await?;
                        (exists == 1).then_some(text)
                    }
                }
            } else {
                self.minted
                    .eval(MINTED_SESSION_ALIVE, vec![key], vec![self.prefix.clone()])
                    .await?
            };
            Ok::<_, fred::error::Error>(filed.and_then(|text| serde_json::from_str(&text).ok()))
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(login)) => Ok(login),
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
        let minted = self.minted.clone();
        tokio::spawn(async move {
            let expire = Expiration::PX(lifetime.as_millis().min(i64::MAX as u128) as i64);
            if let Err(e) = minted
                .set::<(), _, _>(
                    format!("{MINTED_PREFIX}{hash}"),
                    filed,
                    Some(expire),
                    None,
                    false,
                )
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
        .or_else(|| {
            head.header("authorization")
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(|t| t.trim().to_string())
        })
}

/// Steps 1 and 2 of the pipeline, at the upgrade.
pub async fn from_upgrade(ctx: &Arc<WorkerContext>, head: &RequestHead) -> Credential {
    if let Some(token) = upgrade_token(head) {
        return match from_token(ctx, &token, Method::AccessToken).await {
            // An access token is a ticket for the connection: the socket gets
            // a token of its own, minted afresh from the session behind the
            // ticket (a short `/negotiate` ticket must not end the socket), or
            // the ticket itself when no session is behind it.
            Credential::Accepted(mut identity) => {
                match (identity.session.clone(), ctx.sessions.as_ref()) {
                    (Some(login), Some(sessions)) => {
                        match mint(ctx, sessions, login, ctx.auth.token_expiry) {
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
        };
    }
    let Some(sessions) = ctx.sessions.as_ref() else {
        return Credential::Absent;
    };
    let cookies: Vec<&str> = head.headers_named("cookie").collect();
    let query_sid = head.query_param("session_id");
    match sessions
        .authenticator
        .authenticate(&cookies, query_sid.as_deref())
        .await
    {
        SessionOutcome::Anonymous => Credential::Absent,
        SessionOutcome::Refused(error) => {
            ctx.metrics
                .session_logins
                .with_label_values(&[error.reason()])
                .inc();
            Credential::Refused(Refusal::from_session(&error))
        }
        SessionOutcome::Authenticated(login) => {
            ctx.metrics.session_logins.with_label_values(&["ok"]).inc();
            match mint(ctx, sessions, login, ctx.auth.token_expiry) {
                Ok(identity) => Credential::Accepted(Box::new(identity)),
                Err(refusal) => Credential::Refused(refusal),
            }
        }
    }
}

/// The claims of a token minted from a session login.
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
    claims
}

fn mint(
    ctx: &WorkerContext,
    sessions: &SessionSupport,
    login: SessionLogin,
    lifetime: Duration,
) -> Result<Identity, Refusal> {
    // Hot path (every cookie login): one hash, one signature; the claims the
    // socket carries are the signed ones, built here rather than by
    // verifying the token just made.
    let hash = session_hash(&login.sid);
    let mut claims = session_claims(&login, &hash);
    let now = crate::auth::now_unix();
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime.as_secs()));
    match ctx.auth.sign_for(claims.clone(), lifetime) {
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
                name: "AuthTokenError",
                message: format!("the server failed to sign an auth token: {e}"),
                reason: "sign_failed",
                fields: Box::default(),
                bad_token: false,
            })
        }
    }
}

/// A JWT presented by the client (step 1 or 3).
pub async fn from_token(ctx: &Arc<WorkerContext>, token: &str, method: Method) -> Credential {
    let claims = match ctx.auth.verify(token) {
        Ok(claims) => claims,
        Err(error) => return Credential::Refused(Refusal::from_token(method, &error)),
    };
    // A token minted from a session lives only as long as the session.
    let mut session = None;
    if let Some(hash) = claims.get("sh").and_then(Value::as_str) {
        let Some(sessions) = ctx.sessions.as_ref() else {
            return Credential::Refused(session_gone(method, "this token was minted from a web session, and session logins are not configured here"));
        };
        // The socket watches that session for logout, like a cookie login.
        session = match sessions
            .minted_login(hash, ctx.config.session.session_store_timeout)
            .await
        {
            Ok(Some(MintedLogin { sid, passport_user })) => {
                let user = claims.get("user").cloned().unwrap_or(Value::Null);
                Some(SessionLogin {
                    sid,
                    passport_user,
                    user,
                    secret_index: 0,
                })
            }
            Ok(None) => {
                return Credential::Refused(session_gone(
                    method,
                    "the web session this token was minted from has ended",
                ))
            }
            Err(e) => {
                return Credential::Refused(Refusal {
                    method,
                    name: "SessionStoreUnavailableError",
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

fn session_gone(method: Method, message: &str) -> Refusal {
    let mut fields = Map::new();
    fields.insert("isBadToken".into(), json!(true));
    Refusal {
        method,
        name: "SessionNotFoundError",
        message: message.into(),
        reason: "logged_out",
        fields: Box::new(fields),
        bad_token: true,
    }
}

/// What `/negotiate` hands out for a session cookie: a short-lived access token.
pub async fn negotiate(
    ctx: &Arc<WorkerContext>,
    head: &RequestHead,
) -> Result<(String, Duration), Refusal> {
    let Some(sessions) = ctx.sessions.as_ref() else {
        return Err(Refusal {
            method: Method::Session,
            name: "SessionNotFoundError",
            message: "session logins are not configured".into(),
            reason: "no_cookie",
            fields: Box::default(),
            bad_token: false,
        });
    };
    let cookies: Vec<&str> = head.headers_named("cookie").collect();
    let lifetime = ctx.config.session.negotiate_expiry;
    match sessions.authenticator.authenticate(&cookies, None).await {
        SessionOutcome::Anonymous => Err(Refusal {
            method: Method::Session,
            name: "SessionNotFoundError",
            message: "no session cookie".into(),
            reason: "no_cookie",
            fields: Box::default(),
            bad_token: false,
        }),
        SessionOutcome::Refused(error) => Err(Refusal::from_session(&error)),
        SessionOutcome::Authenticated(login) => {
            let identity = mint(ctx, sessions, login, lifetime)?;
            Ok((identity.minted_token.unwrap_or_default(), lifetime))
        }
    }
}

/// The upgrade's credential, possibly still being decided: the session
/// lookup runs while the client sends its protocol handshake, so its Redis
/// round trip overlaps the client's.
#[derive(Debug)]
pub enum PendingCredential {
    /// Already known (nothing presented, or decided before the 101).
    Ready(Box<Credential>),
    /// Being decided by a task started at the upgrade.
    Pending(tokio::task::JoinHandle<Credential>),
}

impl PendingCredential {
    /// Starts the pipeline for an upgrade; cheap when nothing is presented.
    pub fn start(ctx: &Arc<WorkerContext>, head: &RequestHead) -> PendingCredential {
        let cookie_auth = ctx.sessions.is_some()
            && (head.header("cookie").is_some() || head.query_param("session_id").is_some());
        if !cookie_auth && upgrade_token(head).is_none() {
            return PendingCredential::Ready(Box::new(Credential::Absent));
        }
        let (ctx, head) = (ctx.clone(), head.clone());
        PendingCredential::Pending(tokio::spawn(async move { from_upgrade(&ctx, &head).await }))
    }

    /// The decided credential.
    pub async fn resolve(self) -> Credential {
        match self {
            PendingCredential::Ready(credential) => *credential,
            PendingCredential::Pending(task) => task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "credential task failed");
                Credential::Refused(Refusal {
                    method: Method::Session,
                    name: "SessionStoreUnavailableError",
                    message: "the credential could not be checked".into(),
                    reason: "store_unavailable",
                    fields: Box::default(),
                    bad_token: false,
                })
            }),
        }
    }
}
