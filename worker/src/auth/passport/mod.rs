//! Cookie authentication for apps built on express-session + connect-redis +
//! passport: a WebSocket upgrade is authenticated from the app's own signed
//! `connect.sid` cookie and the session connect-redis wrote, with no Node code
//! in the loop (facts: shared/spec/auth-interop.md, vectors/sessions.json).
//!
//! Layout:
//! - [`cookie`]: finding the cookie in `Cookie` headers and verifying its signature.
//! - [`store`]: the object-safe [`SessionStore`] and its Redis implementation.
//! - [`user`]: `passport.user` from a session, and the user lookups.
//! - [`watch`]: noticing logouts of sessions that have sockets.
//!
//! This module ties them together: [`SessionAuthenticator::authenticate`]
//! turns one upgrade request into a [`SessionOutcome`]. It fails closed: a
//! store that is down or slower than the timeout refuses the login.

pub mod cookie;
pub mod store;
pub mod user;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

pub use cookie::{
    CookieRejection, CookieVerdict, DuplicateCookiePolicy, SessionCookieVerifier, SignedSessionId,
    DEFAULT_COOKIE_NAME,
};
pub use store::{
    RedisSessionStore, RedisStoreConfig, SessionStore, StoreError, StoreSetupError, StoredSession,
    UserRecordShape, DEFAULT_SESSION_PREFIX, DEFAULT_STORE_TIMEOUT,
};
pub use user::{UserLookup, UserLookupError, UserResolver, UserResolverConfigError};
pub use watch::{
    LoggedOut, LogoutCause, SessionWatcher, WatchMode, WatcherConfig, DEFAULT_RECHECK,
};

/// Everything cookie authentication needs, as the worker's configuration gives it.
#[derive(Clone, Debug)]
pub struct SessionAuthConfig {
    /// `--session-cookie`: express-session's `name`.
    pub cookie_name: String,
    /// `--session-secret`, in express-session order (first signs, any verifies).
    pub secrets: Vec<String>,
    /// `--session-prefix`: connect-redis `prefix`.
    pub prefix: String,
    /// `--session-store-timeout`: how long a handshake waits for the store.
    pub store_timeout: Duration,
    /// How `passport.user` becomes the socket's user.
    pub resolver: UserResolver,
    /// `--user-lookup-header`: `NAME: VALUE` lines an HTTP lookup sends.
    pub user_lookup_headers: Vec<String>,
    /// A repeated cookie name: refused by default (cookie shadowing).
    pub duplicate_cookie: DuplicateCookiePolicy,
    /// `--accept-query-session-id`: accept an `s:`-signed value (the cookie's
    /// own) in the `session_id` query parameter, never a raw id. Off by
    /// default: passport.socketio's raw query id is an open door, and the
    /// vectors expect even a signed query value to be refused.
    pub accept_signed_query_session_id: bool,
}

impl SessionAuthConfig {
    /// The defaults of the contract, for these secrets.
    pub fn new(secrets: Vec<String>) -> SessionAuthConfig {
        SessionAuthConfig {
            cookie_name: DEFAULT_COOKIE_NAME.to_owned(),
            secrets,
            prefix: DEFAULT_SESSION_PREFIX.to_owned(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            resolver: UserResolver::AsIs,
            user_lookup_headers: Vec::new(),
            duplicate_cookie: DuplicateCookiePolicy::default(),
            accept_signed_query_session_id: false,
        }
    }

    /// Cross-field checks, run once before serving (and by `check-config`).
    pub fn validate(&self) -> Result<(), SessionAuthSetupError> {
        if self.secrets.is_empty() {
            return Err(SessionAuthSetupError::NoSecrets);
        }
        if self.secrets.iter().any(String::is_empty) {
            return Err(SessionAuthSetupError::EmptySecret);
        }
        if self.cookie_name.is_empty() || self.cookie_name.contains([';', '=', ' ']) {
            return Err(SessionAuthSetupError::BadCookieName(
                self.cookie_name.clone(),
            ));
        }
        if self.store_timeout.is_zero() {
            return Err(SessionAuthSetupError::ZeroTimeout);
        }
        self.resolver
            .validate()
            .map_err(SessionAuthSetupError::Resolver)?;
        self.user_lookup().map(drop)
    }

    /// The resolver with its headers, as the authenticator and the watcher use it.
    pub fn user_lookup(&self) -> Result<UserLookup, SessionAuthSetupError> {
        UserLookup::new(self.resolver.clone(), &self.user_lookup_headers)
            .map_err(SessionAuthSetupError::Resolver)
    }
}

/// A configuration that cannot work, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SessionAuthSetupError {
    /// Cookie auth needs at least one `--session-secret`.
    #[error("cookie authentication needs at least one session secret")]
    NoSecrets,
    /// express-session refuses an empty secret; so do we.
    #[error("a session secret is empty")]
    EmptySecret,
    /// The name cannot appear in a `Cookie` header.
    #[error("invalid session cookie name {0:?}")]
    BadCookieName(String),
    /// A zero store timeout would refuse every login.
    #[error("the session store timeout must be above zero")]
    ZeroTimeout,
    /// The user lookup is misconfigured.
    #[error(transparent)]
    Resolver(UserResolverConfigError),
    /// The store cannot be built.
    #[error(transparent)]
    Store(StoreSetupError),
}

/// A successful cookie login.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionLogin {
    /// The express-session id; what the watcher is told to watch.
    pub sid: String,
    /// `session.passport.user` as stored (the token's `sub`).
    pub passport_user: Json,
    /// The socket's `user` (resolved per [`UserResolver`]).
    pub user: Json,
    /// Which configured secret verified the cookie (0 = current).
    pub secret_index: usize,
}

/// What one upgrade request's session credential amounts to.
#[derive(Clone, Debug)]
pub enum SessionOutcome {
    /// No session cookie and no `session_id`: anonymous, not an error.
    Anonymous,
    /// A logged-in passport user.
    Authenticated(SessionLogin),
    /// A credential was presented and refused; never silently ignored.
    Refused(SessionAuthError),
}

/// Why a presented session credential did not log anyone in. Each variant
/// carries the client-facing error name, a metric reason and a message.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SessionAuthError {
    /// The cookie is unsigned, badly signed, duplicated, or came in the query.
    #[error("{}", .0.message())]
    CookieInvalid(CookieRejection),
    /// Signed, but no such session (never created, destroyed, expired, logged out).
    #[error("no session found for this cookie")]
    NoSession,
    /// The session exists but is not JSON connect-redis would write.
    #[error("the session could not be read")]
    BadSession(String),
    /// The session exists but nobody is logged in by it.
    #[error("the session has no logged-in user")]
    NotLoggedIn,
    /// The user lookup does not know `passport.user` (deleted user).
    #[error("the session's user was not found")]
    UserNotFound,
    /// The user lookup answered something that is not a user.
    #[error("the session's user record is unusable")]
    BadUserRecord(String),
    /// The session store is down or slower than the timeout (fail closed).
    #[error("the session store is unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The user lookup is down or slower than its timeout (fail closed).
    #[error("the user lookup is unavailable")]
    UserLookupUnavailable(String),
}

impl SessionAuthError {
    /// The error name the client sees (interface "Credentials and errors").
    pub fn name(&self) -> &'static str {
        match self {
            SessionAuthError::CookieInvalid(_) => "SessionCookieInvalidError",
            SessionAuthError::NoSession
            | SessionAuthError::BadSession(_)
            | SessionAuthError::NotLoggedIn
            | SessionAuthError::UserNotFound
            | SessionAuthError::BadUserRecord(_) => "SessionNotFoundError",
            SessionAuthError::StoreUnavailable(_) | SessionAuthError::UserLookupUnavailable(_) => {
                "SessionStoreUnavailableError"
            }
        }
    }

    /// Every value [`SessionAuthError::reason`] can return, so the metric's
    /// series exist (at 0) before the first refusal.
    pub const REASONS: [&'static str; 11] = [
        "unsigned",
        "bad_signature",
        "duplicate_cookie",
        "query_session_id",
        "no_session",
        "bad_session",
        "not_logged_in",
        "user_not_found",
        "bad_user_record",
        "store_unavailable",
        "user_lookup_unavailable",
    ];

    /// The metric `reason` label (low cardinality).
    pub fn reason(&self) -> &'static str {
        match self {
            SessionAuthError::CookieInvalid(rejection) => rejection.reason(),
            SessionAuthError::NoSession => "no_session",
            SessionAuthError::BadSession(_) => "bad_session",
            SessionAuthError::NotLoggedIn => "not_logged_in",
            SessionAuthError::UserNotFound => "user_not_found",
            SessionAuthError::BadUserRecord(_) => "bad_user_record",
            SessionAuthError::StoreUnavailable(_) => "store_unavailable",
            SessionAuthError::UserLookupUnavailable(_) => "user_lookup_unavailable",
        }
    }

    /// Whether the fault is ours (store, lookup) rather than the client's:
    /// such refusals are outages to alert on, not bad credentials.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            SessionAuthError::StoreUnavailable(_) | SessionAuthError::UserLookupUnavailable(_)
        )
    }
}

/// Authenticates upgrade requests by session cookie; one per worker, shared
/// by every connection.
pub struct SessionAuthenticator {
    verifier: SessionCookieVerifier,
    store: Arc<dyn SessionStore>,
    lookup: UserLookup,
}

impl SessionAuthenticator {
    /// With a store the caller built (tests, or a shared store).
    pub fn new(
        config: SessionAuthConfig,
        store: Arc<dyn SessionStore>,
    ) -> Result<SessionAuthenticator, SessionAuthSetupError> {
        config.validate()?;
        let verifier = SessionCookieVerifier::new(&config.cookie_name, &config.secrets)
            .with_duplicate_policy(config.duplicate_cookie)
            .with_signed_query_session_id(config.accept_signed_query_session_id);
        Ok(SessionAuthenticator {
            verifier,
            store,
            lookup: config.user_lookup()?,
        })
    }

    /// With a [`RedisSessionStore`] on `redis_url`; connects in the background
    /// and never waits for Redis (a worker starts even while Redis is down).
    pub fn connect(
        config: SessionAuthConfig,
        redis_url: &str,
    ) -> Result<SessionAuthenticator, SessionAuthSetupError> {
        config.validate()?;
        let store = RedisSessionStore::connect(&RedisStoreConfig {
            url: redis_url.to_owned(),
            prefix: config.prefix.clone(),
            command_timeout: config.store_timeout,
        })
        .map_err(SessionAuthSetupError::Store)?;
        SessionAuthenticator::new(config, Arc::new(store))
    }

    /// The store, so the [`SessionWatcher`] re-reads through the same client.
    pub fn store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }

    /// The user lookup, so the [`SessionWatcher`] re-reads users the same way
    /// ([`WatcherConfig::user_lookup`]).
    pub fn user_lookup(&self) -> UserLookup {
        self.lookup.clone()
    }

    /// Decides one upgrade request. Hot path: on the default configuration
    /// it is one HMAC per secret and exactly one Redis `GET`.
    pub async fn authenticate(
        &self,
        cookie_headers: &[&str],
        session_id_query: Option<&str>,
    ) -> SessionOutcome {
        match self.verify_cookie(cookie_headers, session_id_query) {
            Ok(None) => SessionOutcome::Anonymous,
            Err(error) => SessionOutcome::Refused(error),
            Ok(Some(signed)) => self.login_signed(signed).await,
        }
    }

    /// The half of [`authenticate`](Self::authenticate) that needs no I/O:
    /// the session a request's cookie (or `session_id`) names, once its
    /// signature verifies; `None` when nothing is presented. Lets the
    /// upgrade settle every refusal on the spot and keep only the session
    /// id for the store read, not the request.
    pub fn verify_cookie(
        &self,
        cookie_headers: &[&str],
        session_id_query: Option<&str>,
    ) -> Result<Option<SignedSessionId>, SessionAuthError> {
        match self
            .verifier
            .verify_request(cookie_headers.iter().copied(), session_id_query)
        {
            CookieVerdict::Absent => Ok(None),
            CookieVerdict::Rejected(rejection) => Err(SessionAuthError::CookieInvalid(rejection)),
            CookieVerdict::Verified(signed) => Ok(Some(signed)),
        }
    }

    /// The store half of [`authenticate`](Self::authenticate): the login of
    /// a session whose cookie verified.
    pub async fn login_signed(&self, signed: SignedSessionId) -> SessionOutcome {
        match self.login(&signed.sid).await {
            Ok((passport_user, user)) => SessionOutcome::Authenticated(SessionLogin {
                sid: signed.sid,
                passport_user,
                user,
                secret_index: signed.secret_index,
            }),
            Err(error) => SessionOutcome::Refused(error),
        }
    }

    async fn login(&self, sid: &str) -> Result<(Json, Json), SessionAuthError> {
        let session = self
            .store
            .load(sid)
            .await
            .map_err(SessionAuthError::StoreUnavailable)?
            .ok_or(SessionAuthError::NoSession)?;
        let passport_user = user::passport_user(&session)
            .map_err(|not_logged_in| match not_logged_in {
                user::NotLoggedIn::BadSession(why) => SessionAuthError::BadSession(why),
                user::NotLoggedIn::NoPassport | user::NotLoggedIn::NoUser => {
                    SessionAuthError::NotLoggedIn
                }
            })?
            .clone();
        let user = if self.lookup.reads_a_record() {
            // Boxed: the lookup's state (an HTTP exchange, a Redis read)
            // would otherwise size every cookie login's state machine, the
            // default one that reads no record included.
            Box::pin(self.lookup.resolve(&passport_user, self.store.as_ref())).await
        } else {
            Ok(user::user_as_is(&passport_user))
        };
        let user = user.map_err(|error| match error {
            UserLookupError::NotFound => SessionAuthError::UserNotFound,
            UserLookupError::BadRecord(why) => SessionAuthError::BadUserRecord(why),
            UserLookupError::Unavailable(why) => SessionAuthError::UserLookupUnavailable(why),
        })?;
        Ok((passport_user, user))
    }
}

/// Real parts for the tests of this module tree: a `redis-server` per test
/// on a free loopback port, and a stand-in for the app's user endpoint.
#[cfg(test)]
pub(crate) mod test_support {
    use std::future::Future;
    use std::pin::Pin;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Value as Json;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    /// A RESP reply, as much of it as the tests look at.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Resp {
        Simple(String),
        Error(String),
        Int(i64),
        Bulk(String),
        Nil,
        Array(Vec<Resp>),
    }

    /// A throwaway `redis-server`; killed on drop.
    pub(crate) struct RedisFixture {
        port: u16,
        extra_args: Vec<String>,
        child: Option<Child>,
    }

    impl RedisFixture {
        pub(crate) async fn start(extra_args: &[&str]) -> RedisFixture {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut fixture = RedisFixture {
                port,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            fixture.restart().await;
            fixture
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        /// Starts (again) on the same port, empty, and waits until it answers.
        pub(crate) async fn restart(&mut self) {
            self.stop();
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(&self.extra_args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Ok(Resp::Simple(pong))) =
                    tokio::time::timeout(Duration::from_millis(200), self.try_command(&["PING"]))
                        .await
                {
                    if pong == "PONG" {
                        return;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start on {}",
                    self.port
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        pub(crate) fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// SIGSTOP / SIGCONT: a Redis that accepts but does not answer.
        pub(crate) fn pause(&self, paused: bool) {
            if let Some(child) = &self.child {
                let signal = if paused { "-STOP" } else { "-CONT" };
                let status = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status()
                    .expect("kill runs");
                assert!(status.success());
            }
        }

        pub(crate) async fn command(&self, args: &[&str]) -> Resp {
            let reply = self.try_command(args).await.expect("redis command");
            if let Resp::Error(error) = &reply {
                panic!("{args:?}: {error}");
            }
            reply
        }

        pub(crate) async fn set(&self, key: &str, value: &str, ttl_seconds: u64) {
            self.command(&["SET", key, value, "EX", &ttl_seconds.to_string()])
                .await;
        }

        pub(crate) async fn reset_stats(&self) {
            self.command(&["CONFIG", "RESETSTAT"]).await;
        }

        /// Waits (bounded: 100 checks 20 ms apart) until Redis holds `keys`
        /// keys; panics with the count it has otherwise.
        pub(crate) async fn wait_for_keys(&self, keys: i64) {
            for _ in 0..100 {
                if self.command(&["DBSIZE"]).await == Resp::Int(keys) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{:?} keys, not {keys}", self.command(&["DBSIZE"]).await);
        }

        /// `total_reads_processed` from `INFO stats`: how many times Redis
        /// read a client socket (this call's own command counts one).
        pub(crate) async fn reads_processed(&self) -> u64 {
            let Resp::Bulk(info) = self.command(&["INFO", "stats"]).await else {
                panic!("INFO reply");
            };
            info.lines()
                .find_map(|line| line.strip_prefix("total_reads_processed:"))
                .and_then(|n| n.trim().parse().ok())
                .expect("total_reads_processed in INFO stats")
        }

        /// `calls` of one command from `INFO commandstats` (0 when never run).
        pub(crate) async fn command_calls(&self, name: &str) -> u64 {
            self.command_stats()
                .await
                .into_iter()
                .find(|(command, _)| command == name)
                .map_or(0, |(_, calls)| calls)
        }

        /// Every `(command, calls)` from `INFO commandstats`.
        pub(crate) async fn command_stats(&self) -> Vec<(String, u64)> {
            let Resp::Bulk(info) = self.command(&["INFO", "commandstats"]).await else {
                panic!("INFO reply");
            };
            info.lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix("cmdstat_")?;
                    let (command, stats) = rest.split_once(':')?;
                    let calls = stats
                        .strip_prefix("calls=")?
                        .split(',')
                        .next()?
                        .parse()
                        .ok()?;
                    Some((command.to_owned(), calls))
                })
                .collect()
        }

        async fn try_command(&self, args: &[&str]) -> std::io::Result<Resp> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
            let mut request = format!("*{}\r\n", args.len()).into_bytes();
            for arg in args {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
            stream.write_all(&request).await?;
            let mut reader = BufReader::new(stream);
            read_resp(&mut reader).await
        }
    }

    impl Drop for RedisFixture {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn read_resp<'a>(
        reader: &'a mut BufReader<TcpStream>,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Resp>> + Send + 'a>> {
        Box::pin(async move {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches("\r\n");
            let (kind, rest) = line.split_at(1.min(line.len()));
            let number = || rest.parse::<i64>().unwrap_or(-1);
            Ok(match kind {
                "+" => Resp::Simple(rest.to_owned()),
                "-" => Resp::Error(rest.to_owned()),
                ":" => Resp::Int(number()),
                "$" if number() < 0 => Resp::Nil,
                "$" => {
                    let mut body = vec![0u8; number() as usize + 2];
                    reader.read_exact(&mut body).await?;
                    body.truncate(body.len() - 2);
                    Resp::Bulk(String::from_utf8_lossy(&body).into_owned())
                }
                "*" if number() < 0 => Resp::Nil,
                "*" => {
                    let mut items = Vec::new();
                    for _ in 0..number() {
                        items.push(read_resp(reader).await?);
                    }
                    Resp::Array(items)
                }
                _ => return Err(std::io::ErrorKind::InvalidData.into()),
            })
        })
    }

    /// Serves `/users/<id>` from a fixed table, like an app's internal
    /// endpoint; `/users/slow` never answers in time, `/users/boom` is a 500,
    /// `/users/chunky` answers chunked.
    pub(crate) async fn user_http_server(
        users: Arc<Vec<Json>>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let users = Arc::new(std::sync::Mutex::new(users.as_ref().clone()));
        user_http_server_guarded(users, None).await
    }

    /// [`user_http_server`] over a table the test may change, answering 401
    /// unless the request carries the `required` header line (as an app's
    /// internal endpoint that wants a credential does).
    pub(crate) async fn user_http_server_guarded(
        users: Arc<std::sync::Mutex<Vec<Json>>>,
        required: Option<(&'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let users = users.lock().expect("users").clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    let authorized = required.is_none_or(|(name, value)| {
                        text.lines().skip(1).any(|line| {
                            line.split_once(':').is_some_and(|(n, v)| {
                                n.eq_ignore_ascii_case(name) && v.trim() == value
                            })
                        })
                    });
                    let reply = match path.as_str() {
                        _ if !authorized => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        "/users/slow" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            String::new()
                        }
                        "/users/boom" => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        "/users/chunky" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"id\":\r\n9\r\n\"chunky\"}\r\n0\r\n\r\n".to_owned(),
                        _ => {
                            let id = path.strip_prefix("/users/").unwrap_or("");
                            let found = users.iter().find(|u| match &u["id"] {
                                Json::String(s) => s == id,
                                other => serde_json::from_str::<Json>(id).ok().as_ref() == Some(other),
                            });
                            match found {
                                Some(user) => {
                                    let body = user.to_string();
                                    format!(
                                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                        body.len()
                                    )
                                }
                                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nNot Found".to_owned(),
                            }
                        }
                    };
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://{addr}/users/{{id}}"), task)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{user_http_server, RedisFixture};
    use super::*;
    use serde_json::json;
    use tokio::time::Instant;

    fn vectors() -> Json {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/sessions.json"
        ))
        .expect("sessions.json is checked in next to the workspace tests");
        serde_json::from_str(&text).expect("sessions.json is valid JSON")
    }

    fn strings(value: &Json) -> Vec<String> {
        value
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    }

    /// The users as the app's deserializeUser returns them (no password).
    fn app_users(vectors: &Json) -> Vec<Json> {
        vectors["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|user| {
                let mut user = user.clone();
                if let Some(object) = user.as_object_mut() {
                    object.remove("password");
                }
                user
            })
            .collect()
    }

    /// Our refusal reason for each negative case (the vectors say "reject";
    /// this pins which refusal).
    fn expected_reason(case: &str) -> &'static str {
        match case {
            "tampered_signature" | "wrong_secret" | "rotated_secret_removed" => "bad_signature",
            "unsigned_value" | "malformed_percent_encoding" => "unsigned",
            "signed_but_unknown_session_id"
            | "expired_session"
            | "logged_out_session_old_cookie" => "no_session",
            "logged_out_session_new_cookie"
            | "anonymous_session_never_logged_in"
            | "legacy_passport_0_5_logged_out" => "not_logged_in",
            other => panic!("no expected reason pinned for case {other}"),
        }
    }

    /// Puts the case's Redis state in place, replaying its snapshots in order
    /// (login, then logout or expiry).
    async fn prepare_redis(redis: &RedisFixture, case: &Json) {
        let mut snapshots: Vec<(&str, &Json)> = Vec::new();
        if case.get("redis_key").is_some() {
            snapshots.push(("login", case));
        }
        for field in [
            "redis_before_logout",
            "redis_right_after_login",
            "redis_after_logout",
            "redis_after_wait",
        ] {
            if let Some(snapshot) = case.get(field) {
                snapshots.push((field, snapshot));
            }
        }
        if let Some(t0) = case.pointer("/timeline/t0_after_login") {
            snapshots.push(("touch", t0));
        }
        let really_expires = case.get("redis_after_wait").is_some();
        for (field, snapshot) in snapshots {
            let key = snapshot["redis_key"].as_str().expect("redis_key");
            match snapshot["redis_value"].as_str() {
                Some(value) if really_expires => {
                    // Let Redis expire it for real, quickly.
                    redis.command(&["SET", key, value, "PX", "200"]).await;
                }
                Some(value) => {
                    let ttl = snapshot["redis_ttl_seconds"].as_u64().unwrap_or(60).max(60);
                    redis.set(key, value, ttl).await;
                }
                None if field == "redis_after_wait" => {
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while redis.command(&["EXISTS", key]).await != test_support::Resp::Int(0) {
                        assert!(Instant::now() < deadline, "{key} did not expire");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                None => {
                    redis.command(&["DEL", key]).await;
                }
            }
        }
    }

    fn config_for(case: &Json, resolver: UserResolver) -> SessionAuthConfig {
        let mut config = SessionAuthConfig::new(strings(&case["verification_secrets"]));
        if let Some(name) = case["cookie_name"].as_str() {
            config.cookie_name = name.to_owned();
        }
        config.resolver = resolver;
        config
    }

    fn expect_accept(
        outcome: &SessionOutcome,
        case: &Json,
        expected: &Json,
        resolver: &UserResolver,
        what: &str,
    ) {
        let SessionOutcome::Authenticated(login) = outcome else {
            panic!("{what}: expected accept, got {outcome:?}");
        };
        assert_eq!(
            login.sid,
            case["session_id"].as_str().expect("session_id"),
            "{what}"
        );
        assert_eq!(login.passport_user, expected["passport_user"], "{what}");
        let want_user = match resolver {
            UserResolver::AsIs => user::user_as_is(&expected["passport_user"]),
            _ => expected["user"].clone(),
        };
        assert_eq!(login.user, want_user, "{what}");
        if let Some(index) = case["verified_with_secret_index"].as_u64() {
            assert_eq!(login.secret_index as u64, index, "{what}");
        }
    }

    fn expect_refusal(outcome: &SessionOutcome, reason: &str, what: &str) {
        match outcome {
            SessionOutcome::Refused(error) => assert_eq!(error.reason(), reason, "{what}: {error}"),
            other => panic!("{what}: expected refusal {reason}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_vector_case_gets_its_expected_verdict() {
        let vectors = vectors();
        let redis = RedisFixture::start(&[]).await;
        let users = app_users(&vectors);
        for user in &users {
            let id = match &user["id"] {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            redis
                .set(&format!("user:{id}"), &user.to_string(), 600)
                .await;
        }
        let (url_template, server) = user_http_server(Arc::new(users)).await;
        let resolvers = [
            UserResolver::AsIs,
            UserResolver::RedisKey {
                template: "user:{id}".into(),
                shape: UserRecordShape::Json,
            },
            UserResolver::Http {
                url_template,
                timeout: Duration::from_secs(1),
            },
        ];
        let cases = vectors["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), 22);
        for case in cases {
            let name = case["name"].as_str().expect("name");
            prepare_redis(&redis, case).await;
            let header = case["cookie_header"].as_str().expect("cookie_header");
            let expected = &case["expected"];
            for resolver in &resolvers {
                let auth =
                    SessionAuthenticator::connect(config_for(case, resolver.clone()), &redis.url())
                        .expect("authenticator");
                let outcome = auth.authenticate(&[header], None).await;
                let what = format!("{name} with {resolver:?}");
                match expected["verdict"].as_str().expect("verdict") {
                    "accept" => expect_accept(&outcome, case, expected, resolver, &what),
                    verdict => {
                        assert!(verdict.starts_with("reject"), "{what}: verdict {verdict}");
                        expect_refusal(&outcome, expected_reason(name), &what);
                    }
                }
            }
            for variant in case["variants"].as_array().into_iter().flatten() {
                check_variant(&redis, case, variant).await;
            }
        }
        server.abort();
    }

    /// Variants are checked twice: with Node's first-wins rule (the default)
    /// the verdicts are exactly the vectors'; with `--duplicate-cookie refuse`
    /// the one deliberate difference is the "valid first" duplicate.
    async fn check_variant(redis: &RedisFixture, case: &Json, variant: &Json) {
        let label = variant["label"].as_str().expect("label");
        let headers: Vec<&str> = variant["cookie_header"].as_str().into_iter().collect();
        let query = variant.pointer("/query/session_id").and_then(Json::as_str);
        let verdict = variant["expected_verdict"]
            .as_str()
            .expect("expected_verdict");
        let expected = &case["expected"];
        for policy in [
            DuplicateCookiePolicy::FirstWins,
            DuplicateCookiePolicy::Reject,
        ] {
            let mut config = config_for(case, UserResolver::AsIs);
            config.duplicate_cookie = policy;
            let auth = SessionAuthenticator::connect(config, &redis.url()).expect("authenticator");
            let outcome = auth.authenticate(&headers, query).await;
            let what = format!("variant {label} with {policy:?}");
            let duplicated = label.starts_with("duplicate_name");
            if duplicated && policy == DuplicateCookiePolicy::Reject {
                expect_refusal(&outcome, "duplicate_cookie", &what);
            } else if verdict == "accept" {
                expect_accept(&outcome, case, expected, &UserResolver::AsIs, &what);
            } else {
                assert!(verdict.starts_with("reject"), "{what}: verdict {verdict}");
                let reason = match label {
                    "duplicate_name_invalid_first" => "bad_signature",
                    l if l.starts_with("passport_socketio_query") => "query_session_id",
                    other => panic!("no reason pinned for variant {other}"),
                };
                expect_refusal(&outcome, reason, &what);
            }
        }
    }

    const SESSION_42: &str = r#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"passport":{"user":42}}"#;

    fn cookie_for(sid: &str, secret: &str) -> String {
        format!(
            "connect.sid=s%3A{}",
            cookie::sign(sid, secret)
                .replace('/', "%2F")
                .replace('+', "%2B")
        )
    }

    #[tokio::test]
    async fn one_get_per_default_login() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:one", SESSION_42, 60).await;
        let auth =
            SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), &redis.url())
                .expect("authenticator");
        let header = cookie_for("one", "k");
        // The first login also waits for the connection; count a later one.
        assert!(matches!(
            auth.authenticate(&[&header], None).await,
            SessionOutcome::Authenticated(_)
        ));
        redis.reset_stats().await;
        let outcome = auth.authenticate(&[&header], None).await;
        assert!(
            matches!(outcome, SessionOutcome::Authenticated(_)),
            "{outcome:?}"
        );
        let stats: Vec<(String, u64)> = redis
            .command_stats()
            .await
            .into_iter()
            .filter(|(command, _)| command != "info" && !command.starts_with("config"))
            .collect();
        assert_eq!(stats, vec![("get".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn anonymous_and_refusals_carry_names_and_reasons() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:bad", "{not json", 60).await;
        redis
            .set("sess:ghost", r#"{"passport":{"user":999}}"#, 60)
            .await;
        let mut config = SessionAuthConfig::new(vec!["k".into()]);
        config.resolver = UserResolver::RedisKey {
            template: "user:{id}".into(),
            shape: UserRecordShape::Json,
        };
        let auth = SessionAuthenticator::connect(config, &redis.url()).expect("authenticator");
        assert!(matches!(
            auth.authenticate(&[], None).await,
            SessionOutcome::Anonymous
        ));
        assert!(matches!(
            auth.authenticate(&["theme=dark"], None).await,
            SessionOutcome::Anonymous
        ));
        let cases = [
            (
                cookie_for("bad", "k"),
                "SessionNotFoundError",
                "bad_session",
            ),
            (
                cookie_for("ghost", "k"),
                "SessionNotFoundError",
                "user_not_found",
            ),
            (
                cookie_for("nobody", "k"),
                "SessionNotFoundError",
                "no_session",
            ),
            (
                cookie_for("bad", "other"),
                "SessionCookieInvalidError",
                "bad_signature",
            ),
            (
                "connect.sid=bad".to_owned(),
                "SessionCookieInvalidError",
                "unsigned",
            ),
        ];
        for (header, name, reason) in cases {
            let SessionOutcome::Refused(error) = auth.authenticate(&[&header], None).await else {
                panic!("{header} was not refused");
            };
            assert_eq!((error.name(), error.reason()), (name, reason), "{header}");
            assert!(!error.to_string().is_empty());
            assert!(!error.is_server_fault());
        }
        let SessionOutcome::Refused(error) = auth.authenticate(&[], Some("bad")).await else {
            panic!("query id accepted");
        };
        assert_eq!(
            (error.name(), error.reason()),
            ("SessionCookieInvalidError", "query_session_id")
        );
    }

    #[tokio::test]
    async fn store_down_fails_closed_within_timeout_then_recovers() {
        let mut redis = RedisFixture::start(&[]).await;
        redis.set("sess:up", SESSION_42, 60).await;
        let auth =
            SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), &redis.url())
                .expect("authenticator");
        let header = cookie_for("up", "k");
        assert!(matches!(
            auth.authenticate(&[&header], None).await,
            SessionOutcome::Authenticated(_)
        ));
        redis.stop();
        let started = Instant::now();
        let SessionOutcome::Refused(error) = auth.authenticate(&[&header], None).await else {
            panic!("login with Redis down");
        };
        assert_eq!(
            (error.name(), error.reason()),
            ("SessionStoreUnavailableError", "store_unavailable")
        );
        assert!(error.is_server_fault());
        assert!(
            started.elapsed() < DEFAULT_STORE_TIMEOUT + Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        redis.restart().await;
        redis.set("sess:up", SESSION_42, 60).await;
        let back = Instant::now();
        loop {
            if let SessionOutcome::Authenticated(_) = auth.authenticate(&[&header], None).await {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "no recovery within 3 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    #[tokio::test]
    async fn slow_store_fails_closed_within_timeout() {
        let redis = RedisFixture::start(&[]).await;
        redis.set("sess:slow", SESSION_42, 60).await;
        let auth =
            SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), &redis.url())
                .expect("authenticator");
        let header = cookie_for("slow", "k");
        assert!(matches!(
            auth.authenticate(&[&header], None).await,
            SessionOutcome::Authenticated(_)
        ));
        redis.pause(true);
        let started = Instant::now();
        let outcome = auth.authenticate(&[&header], None).await;
        let elapsed = started.elapsed();
        redis.pause(false);
        expect_refusal(&outcome, "store_unavailable", "paused Redis");
        assert!(
            elapsed < DEFAULT_STORE_TIMEOUT + Duration::from_millis(150),
            "{elapsed:?}"
        );
        assert!(
            elapsed >= DEFAULT_STORE_TIMEOUT - Duration::from_millis(10),
            "{elapsed:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while !matches!(
            auth.authenticate(&[&header], None).await,
            SessionOutcome::Authenticated(_)
        ) {
            assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        }
    }

    #[tokio::test]
    async fn worker_starts_while_redis_is_down() {
        let mut redis = RedisFixture::start(&[]).await;
        let url = redis.url();
        redis.stop();
        let started = Instant::now();
        let auth = SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), &url)
            .expect("authenticator");
        assert!(started.elapsed() < Duration::from_millis(50));
        let header = cookie_for("late", "k");
        expect_refusal(
            &auth.authenticate(&[&header], None).await,
            "store_unavailable",
            "down at start",
        );
        redis.restart().await;
        redis.set("sess:late", SESSION_42, 60).await;
        let back = Instant::now();
        while !matches!(
            auth.authenticate(&[&header], None).await,
            SessionOutcome::Authenticated(_)
        ) {
            assert!(
                back.elapsed() < Duration::from_secs(3),
                "no recovery within 3 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    #[test]
    fn every_refusal_reason_is_listed_for_the_metrics() {
        let errors = [
            SessionAuthError::CookieInvalid(CookieRejection::Unsigned),
            SessionAuthError::CookieInvalid(CookieRejection::BadSignature),
            SessionAuthError::CookieInvalid(CookieRejection::Duplicate),
            SessionAuthError::CookieInvalid(CookieRejection::QuerySessionId),
            SessionAuthError::NoSession,
            SessionAuthError::BadSession(String::new()),
            SessionAuthError::NotLoggedIn,
            SessionAuthError::UserNotFound,
            SessionAuthError::BadUserRecord(String::new()),
            SessionAuthError::StoreUnavailable(StoreError::Unsupported("test")),
            SessionAuthError::UserLookupUnavailable(String::new()),
        ];
        let reasons: Vec<&str> = errors.iter().map(SessionAuthError::reason).collect();
        for reason in &reasons {
            assert!(SessionAuthError::REASONS.contains(reason), "{reason}");
        }
        for listed in SessionAuthError::REASONS {
            assert!(reasons.contains(&listed), "{listed} is never a reason");
        }
    }

    #[test]
    fn config_is_validated() {
        let store_less = |config: SessionAuthConfig| config.validate();
        assert!(matches!(
            store_less(SessionAuthConfig::new(vec![])),
            Err(SessionAuthSetupError::NoSecrets)
        ));
        assert!(matches!(
            store_less(SessionAuthConfig::new(vec![String::new()])),
            Err(SessionAuthSetupError::EmptySecret)
        ));
        let mut config = SessionAuthConfig::new(vec!["k".into()]);
        config.cookie_name = "a;b".into();
        assert!(matches!(
            config.validate(),
            Err(SessionAuthSetupError::BadCookieName(_))
        ));
        let mut config = SessionAuthConfig::new(vec!["k".into()]);
        config.resolver = UserResolver::RedisKey {
            template: "user".into(),
            shape: UserRecordShape::Hash,
        };
        assert!(matches!(
            config.validate(),
            Err(SessionAuthSetupError::Resolver(_))
        ));
        assert!(SessionAuthConfig::new(vec!["k".into()]).validate().is_ok());
        assert!(matches!(
            SessionAuthenticator::connect(
                SessionAuthConfig::new(vec!["k".into()]),
                "redis://127.0.0.1:1"
            ),
            Err(SessionAuthSetupError::Store(StoreSetupError::NoRuntime))
        ));
    }

    #[tokio::test]
    async fn bad_store_url_is_a_setup_error() {
        let result =
            SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), "not a url");
        assert!(matches!(
            result,
            Err(SessionAuthSetupError::Store(StoreSetupError::BadUrl(_)))
        ));
    }

    #[tokio::test]
    async fn whole_object_users_and_hash_lookups() {
        let redis = RedisFixture::start(&[]).await;
        redis
            .set(
                "sess:obj",
                r#"{"passport":{"user":{"id":"u1","name":"Ann"}}}"#,
                60,
            )
            .await;
        redis
            .command(&["HSET", "uh:u1", "name", "Ann", "role", "admin"])
            .await;
        let header = cookie_for("obj", "k");
        let auth =
            SessionAuthenticator::connect(SessionAuthConfig::new(vec!["k".into()]), &redis.url())
                .expect("auth");
        let SessionOutcome::Authenticated(login) = auth.authenticate(&[&header], None).await else {
            panic!("login")
        };
        assert_eq!(login.user, json!({"id": "u1", "name": "Ann"}));
        let mut config = SessionAuthConfig::new(vec!["k".into()]);
        config.resolver = UserResolver::RedisKey {
            template: "uh:{id}".into(),
            shape: UserRecordShape::Hash,
        };
        let auth = SessionAuthenticator::connect(config, &redis.url()).expect("auth");
        let SessionOutcome::Authenticated(login) = auth.authenticate(&[&header], None).await else {
            panic!("login")
        };
        assert_eq!(login.user, json!({"name": "Ann", "role": "admin"}));
        assert_eq!(login.passport_user, json!({"id": "u1", "name": "Ann"}));
    }
}
