//! From a stored session to the socket's user: passport's session strategy
//! (reading `session.passport.user`) and the `deserializeUser` equivalents.
//!
//! The logged-in test is passport 0.7's own (`if (su || su === 0)`): the
//! express app is the source of truth for who is logged in, so `0` and any
//! object count, while `null`, `false` and `""` mean "not logged in". passport
//! 0.5 and earlier store the same `passport.user` field, so one rule covers
//! every version in the vectors.

use std::time::Duration;

use serde_json::{Map, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::store::{SessionStore, StoredSession, UserRecordShape};

/// passport's session key (`Authenticator._key`); apps practically never change it.
pub const PASSPORT_SESSION_KEY: &str = "passport";

/// Placeholder in user key and URL templates.
pub const ID_PLACEHOLDER: &str = "{id}";

/// Response bodies larger than this from the app's user endpoint are refused.
const MAX_HTTP_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a stored session logs nobody in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotLoggedIn {
    /// The value is not a JSON object (another serializer, or damage).
    BadSession(String),
    /// No `passport` object in the session (never logged in; passport 0.6+ logout).
    NoPassport,
    /// `passport` present without a usable `user` (passport ≤ 0.5 logout).
    NoUser,
}

/// `session.passport.user` when it logs someone in.
pub fn passport_user(session: &StoredSession) -> Result<&Json, NotLoggedIn> {
    let data = match session {
        StoredSession::Json(Json::Object(data)) => data,
        StoredSession::Json(other) => {
            return Err(NotLoggedIn::BadSession(format!(
                "session is JSON {} instead of an object",
                json_kind(other)
            )))
        }
        StoredSession::Unparsable { error } => return Err(NotLoggedIn::BadSession(error.clone())),
    };
    let passport = match data.get(PASSPORT_SESSION_KEY) {
        Some(passport) if is_truthy(passport) => passport,
        _ => return Err(NotLoggedIn::NoPassport),
    };
    match passport.get("user") {
        Some(user) if is_truthy(user) || is_zero(user) => Ok(user),
        _ => Err(NotLoggedIn::NoUser),
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// JavaScript truthiness of a parsed JSON value.
fn is_truthy(value: &Json) -> bool {
    match value {
        Json::Null => false,
        Json::Bool(flag) => *flag,
        Json::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Json::String(text) => !text.is_empty(),
        Json::Array(_) | Json::Object(_) => true,
    }
}

fn is_zero(value: &Json) -> bool {
    matches!(value, Json::Number(number) if number.as_f64() == Some(0.0))
}

/// How the socket's user is obtained from `passport.user` (chosen per deployment).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum UserResolver {
    /// No lookup: the stored object itself, or `{"id": <value>}` for a bare id.
    #[default]
    AsIs,
    /// A record the app keeps in the same Redis, e.g. template `user:{id}`.
    RedisKey {
        /// Key template; `{id}` is replaced by the user id.
        template: String,
        /// JSON string (`GET`) or hash (`HGETALL`); chosen by configuration
        /// rather than probed with `TYPE`, so a lookup is one round trip.
        shape: UserRecordShape,
    },
    /// The app's own endpoint, e.g. `http://127.0.0.1:3000/internal/users/{id}`:
    /// 200 → the JSON user, 404 → no such user, anything else → unavailable.
    Http {
        /// `http://host[:port]/path` with `{id}` (percent-encoded) in it.
        url_template: String,
        /// Whole-request bound (connect, send, read).
        timeout: Duration,
    },
}

/// Why no user came out of a lookup.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserLookupError {
    /// The lookup answered "no such user" (missing key, HTTP 404, JSON null).
    #[error("user not found")]
    NotFound,
    /// The lookup answered something that is not a user.
    #[error("bad user record: {0}")]
    BadRecord(String),
    /// The lookup could not be done (Redis or the app unreachable, slow, 5xx).
    #[error("user lookup unavailable: {0}")]
    Unavailable(String),
}

/// A problem in the resolver configuration, found at start-up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserResolverConfigError {
    /// The template lacks `{id}`.
    #[error("user lookup template {0:?} has no {{id}}")]
    NoPlaceholder(String),
    /// Only `http://host[:port]/path` URLs are supported.
    #[error("user lookup URL {0:?} is not http://host[:port]/path")]
    BadUrl(String),
    /// A `--user-lookup-header` that is not `NAME: VALUE`.
    #[error("user lookup header: {0}")]
    BadHeader(String),
}

impl UserResolver {
    /// Checks the templates once, before serving.
    pub fn validate(&self) -> Result<(), UserResolverConfigError> {
        match self {
            UserResolver::AsIs => Ok(()),
            UserResolver::RedisKey { template, .. } => {
                if template.contains(ID_PLACEHOLDER) {
                    Ok(())
                } else {
                    Err(UserResolverConfigError::NoPlaceholder(template.clone()))
                }
            }
            UserResolver::Http { url_template, .. } => {
                if !url_template.contains(ID_PLACEHOLDER) {
                    return Err(UserResolverConfigError::NoPlaceholder(url_template.clone()));
                }
                HttpTarget::parse(url_template).map(|_| ())
            }
        }
    }

    /// The socket's user for `passport_user`.
    pub async fn resolve(
        &self,
        passport_user: &Json,
        store: &dyn SessionStore,
    ) -> Result<Json, UserLookupError> {
        self.resolve_sending(passport_user, store, &[]).await
    }

    /// [`UserResolver::resolve`], with these extra headers on an HTTP lookup.
    async fn resolve_sending(
        &self,
        passport_user: &Json,
        store: &dyn SessionStore,
        headers: &[(String, String)],
    ) -> Result<Json, UserLookupError> {
        match self {
            UserResolver::AsIs => Ok(user_as_is(passport_user)),
            UserResolver::RedisKey { template, shape } => {
                let id = lookup_id(passport_user).ok_or(UserLookupError::NotFound)?;
                let key = template.replace(ID_PLACEHOLDER, &id);
                match store.load_user_record(&key, *shape).await {
                    Ok(Some(record)) => user_record(record),
                    Ok(None) => Err(UserLookupError::NotFound),
                    Err(error) => Err(UserLookupError::Unavailable(error.to_string())),
                }
            }
            UserResolver::Http {
                url_template,
                timeout,
            } => {
                let id = lookup_id(passport_user).ok_or(UserLookupError::NotFound)?;
                let url = url_template.replace(ID_PLACEHOLDER, &encode_uri_component(&id));
                let target = HttpTarget::parse(&url)
                    .map_err(|error| UserLookupError::Unavailable(error.to_string()))?;
                let answer = tokio::time::timeout(*timeout, http_get(&target, headers))
                    .await
                    .map_err(|_| {
                        UserLookupError::Unavailable(format!("no answer within {timeout:?}"))
                    })?
                    .map_err(UserLookupError::Unavailable)?;
                match answer.status {
                    200 => match serde_json::from_slice::<Json>(&answer.body) {
                        Ok(record) => user_record(record),
                        Err(error) => Err(UserLookupError::BadRecord(error.to_string())),
                    },
                    404 => Err(UserLookupError::NotFound),
                    status => Err(UserLookupError::Unavailable(format!(
                        "HTTP status {status}"
                    ))),
                }
            }
        }
    }
}

/// A resolver with the headers its HTTP lookups send: the one way both the
/// handshake and the logout watcher turn `passport.user` into the user, so a
/// re-read sees what a new connection would.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserLookup {
    /// How the user is found.
    pub resolver: UserResolver,
    /// `--user-lookup-header`: sent with every HTTP lookup (e.g. the app's
    /// `Authorization`); the other resolvers ignore them.
    pub headers: Vec<(String, String)>,
}

impl UserLookup {
    /// A lookup sending `header_lines` (`NAME: VALUE`, as configured).
    pub fn new(
        resolver: UserResolver,
        header_lines: &[String],
    ) -> Result<UserLookup, UserResolverConfigError> {
        let headers = header_lines
            .iter()
            .map(|line| {
                sockhive_shared::http::parse_header_line(line)
                    .map_err(UserResolverConfigError::BadHeader)
            })
            .collect::<Result<_, _>>()?;
        Ok(UserLookup { resolver, headers })
    }

    /// The socket's user for `passport_user`.
    pub async fn resolve(
        &self,
        passport_user: &Json,
        store: &dyn SessionStore,
    ) -> Result<Json, UserLookupError> {
        self.resolver
            .resolve_sending(passport_user, store, &self.headers)
            .await
    }

    /// Whether the user comes from a record the app can change while
    /// `passport.user` stays the same, so re-reading it can tell something new.
    pub fn reads_a_record(&self) -> bool {
        !matches!(self.resolver, UserResolver::AsIs)
    }
}

/// The contract's user without a lookup.
pub fn user_as_is(passport_user: &Json) -> Json {
    match passport_user {
        Json::Object(_) => passport_user.clone(),
        bare => {
            let mut user = Map::new();
            user.insert("id".to_owned(), bare.clone());
            Json::Object(user)
        }
    }
}

/// What a lookup returned, as passport's deserializer result: a falsy user
/// is "not found", a non-object is not a user.
fn user_record(record: Json) -> Result<Json, UserLookupError> {
    match record {
        Json::Object(_) => Ok(record),
        Json::Null | Json::Bool(false) => Err(UserLookupError::NotFound),
        other => Err(UserLookupError::BadRecord(format!(
            "a {} instead of an object",
            json_kind(&other)
        ))),
    }
}

/// The id a lookup uses: a bare string or number, or the `id` of a stored object.
fn lookup_id(passport_user: &Json) -> Option<String> {
    match passport_user {
        Json::String(text) => Some(text.clone()),
        Json::Number(number) => Some(number.to_string()),
        Json::Object(object) => match object.get("id") {
            Some(Json::String(text)) => Some(text.clone()),
            Some(Json::Number(number)) => Some(number.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// JavaScript's `encodeURIComponent`, so an id cannot change the path.
fn encode_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            );
        if unreserved {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where an HTTP user lookup goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HttpTarget {
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
    /// Path and query, starting with `/`.
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<HttpTarget, UserResolverConfigError> {
        let bad = || UserResolverConfigError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        // IPv6 literals need an explicit port (`[::1]:3000`).
        let authority = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                authority.to_owned()
            }
            Some(_) => return Err(bad()),
            None => format!("{authority}:80"),
        };
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(HttpTarget {
            authority,
            path: path.to_owned(),
        })
    }
}

/// An HTTP answer: status and body.
struct HttpAnswer {
    status: u16,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 GET with `Connection: close` (the caller bounds it in
/// time). `headers` were checked by [`UserLookup::new`]: no CR or LF in them.
async fn http_get(target: &HttpTarget, headers: &[(String, String)]) -> Result<HttpAnswer, String> {
    let mut stream = TcpStream::connect(target.authority.as_str())
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
        target.path, target.authority
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        if response.len() > MAX_HTTP_RESPONSE_BYTES {
            return Err("response too large".to_owned());
        }
        // Stop as soon as a Content-Length body is complete; the server may
        // keep the socket open a little longer despite `Connection: close`.
        if let Some(Ok(answer)) = parse_response(&response, false) {
            return Ok(answer);
        }
    }
    parse_response(&response, true).unwrap_or_else(|| Err("incomplete response".to_owned()))
}

/// Parses a response; `None` while more bytes are needed. With `at_eof`,
/// a body without length runs to the end.
fn parse_response(bytes: &[u8], at_eof: bool) -> Option<Result<HttpAnswer, String>> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = match std::str::from_utf8(&bytes[..head_end]) {
        Ok(head) => head,
        Err(_) => return Some(Err("response head is not text".to_owned())),
    };
    let body = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(status) if version.starts_with("HTTP/1.") => status,
        _ => return Some(Err(format!("bad status line {status_line:?}"))),
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(length) => content_length = Some(length),
                Err(_) => return Some(Err("bad Content-Length".to_owned())),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if chunked {
        return match decode_chunked(body) {
            Some(Ok(body)) => Some(Ok(HttpAnswer { status, body })),
            Some(Err(error)) => Some(Err(error)),
            None if at_eof => Some(Err("truncated chunked body".to_owned())),
            None => None,
        };
    }
    match content_length {
        Some(length) if body.len() >= length => Some(Ok(HttpAnswer {
            status,
            body: body[..length].to_vec(),
        })),
        Some(_) if at_eof => Some(Err("truncated body".to_owned())),
        Some(_) => None,
        None if at_eof => Some(Ok(HttpAnswer {
            status,
            body: body.to_vec(),
        })),
        None => None,
    }
}

/// Decodes a chunked body; `None` while incomplete.
fn decode_chunked(mut bytes: &[u8]) -> Option<Result<Vec<u8>, String>> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = match usize::from_str_radix(size_text, 16) {
            Ok(size) => size,
            Err(_) => return Some(Err("bad chunk size".to_owned())),
        };
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(Ok(body));
        }
        if bytes.len() < size.checked_add(2)? {
            return None;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{StoreError, StoreFuture};
    use super::super::test_support::user_http_server;
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn session(value: Json) -> StoredSession {
        StoredSession::Json(value)
    }

    #[test]
    fn passport_user_follows_passport_0_7_truthiness() {
        let accept = [
            json!(42),
            json!(0),
            json!("u-7f3a9c"),
            json!({"id": 1}),
            json!({}),
            json!(-0.0),
        ];
        for user in accept {
            let s = session(json!({"cookie": {}, "passport": {"user": user.clone()}}));
            assert_eq!(passport_user(&s), Ok(&user), "{user}");
        }
        for user in [json!(null), json!(false), json!("")] {
            let s = session(json!({"passport": {"user": user.clone()}}));
            assert_eq!(passport_user(&s), Err(NotLoggedIn::NoUser), "{user}");
        }
        assert_eq!(
            passport_user(&session(json!({"passport": {}}))),
            Err(NotLoggedIn::NoUser)
        );
        assert_eq!(
            passport_user(&session(json!({"cookie": {}}))),
            Err(NotLoggedIn::NoPassport)
        );
        assert_eq!(
            passport_user(&session(json!({"passport": null}))),
            Err(NotLoggedIn::NoPassport)
        );
        assert!(matches!(
            passport_user(&session(json!("x"))),
            Err(NotLoggedIn::BadSession(_))
        ));
        assert!(matches!(
            passport_user(&StoredSession::Unparsable { error: "e".into() }),
            Err(NotLoggedIn::BadSession(_))
        ));
    }

    #[test]
    fn as_is_wraps_bare_ids_and_keeps_objects() {
        assert_eq!(user_as_is(&json!(42)), json!({"id": 42}));
        assert_eq!(user_as_is(&json!(0)), json!({"id": 0}));
        assert_eq!(user_as_is(&json!("u-1")), json!({"id": "u-1"}));
        assert_eq!(
            user_as_is(&json!({"id": 3, "name": "x"})),
            json!({"id": 3, "name": "x"})
        );
    }

    #[test]
    fn templates_are_validated() {
        assert!(UserResolver::AsIs.validate().is_ok());
        let redis = |t: &str| UserResolver::RedisKey {
            template: t.into(),
            shape: UserRecordShape::Json,
        };
        assert!(redis("user:{id}").validate().is_ok());
        assert!(redis("user:").validate().is_err());
        let http = |u: &str| UserResolver::Http {
            url_template: u.into(),
            timeout: Duration::from_secs(1),
        };
        assert!(http("http://127.0.0.1:3000/users/{id}").validate().is_ok());
        assert!(http("http://app/users/{id}").validate().is_ok());
        assert!(http("https://app/users/{id}").validate().is_err());
        assert!(http("http://app:xx/users/{id}").validate().is_err());
        assert!(http("http:///users/{id}").validate().is_err());
        assert!(http("http://app/users").validate().is_err());
    }

    #[test]
    fn encode_uri_component_keeps_ids_inside_one_segment() {
        assert_eq!(encode_uri_component("u-7f3a9c"), "u-7f3a9c");
        assert_eq!(encode_uri_component("../admin?x=1"), "..%2Fadmin%3Fx%3D1");
        assert_eq!(encode_uri_component("é"), "%C3%A9");
    }

    #[test]
    fn responses_parse_with_length_chunked_or_eof() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let answer = parse_response(full, false).expect("complete").expect("ok");
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false).is_none());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let answer = parse_response(chunked, false)
            .expect("complete")
            .expect("ok");
        assert_eq!(answer.body, b"{\"a\":1}");
        let eof = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert!(parse_response(eof, false).is_none());
        assert_eq!(
            parse_response(eof, true)
                .expect("complete")
                .expect("ok")
                .status,
            404
        );
        assert!(parse_response(b"garbage\r\n\r\n", true)
            .expect("complete")
            .is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            true
        )
        .expect("complete")
        .is_err());
    }

    #[tokio::test]
    async fn http_lookups_send_the_configured_headers() {
        let users = Arc::new(std::sync::Mutex::new(vec![json!({"id": 42, "name": "a"})]));
        let (url_template, server) = super::super::test_support::user_http_server_guarded(
            users,
            Some(("Authorization", "Bearer s3cret")),
        )
        .await;
        let resolver = UserResolver::Http {
            url_template,
            timeout: Duration::from_millis(500),
        };
        let with = |lines: &[&str]| {
            let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            UserLookup::new(resolver.clone(), &lines).expect("valid headers")
        };
        let right = with(&["X-Other: 1", "Authorization: Bearer s3cret"]);
        assert_eq!(
            right.resolve(&json!(42), &NoStore).await,
            Ok(json!({"id": 42, "name": "a"}))
        );
        // The app refuses a lookup without its credential (401): unavailable,
        // which refuses the login as SessionStoreUnavailableError.
        for wrong in [with(&[]), with(&["Authorization: Bearer nope"])] {
            assert!(matches!(
                wrong.resolve(&json!(42), &NoStore).await,
                Err(UserLookupError::Unavailable(why)) if why.contains("401")
            ));
        }
        assert!(matches!(
            UserLookup::new(resolver.clone(), &["X: a\r\nInjected: 1".to_string()]),
            Err(UserResolverConfigError::BadHeader(_))
        ));
        assert!(!UserLookup::default().reads_a_record());
        assert!(right.reads_a_record());
        server.abort();
    }

    /// A store that has no Redis behind it: the AsIs and HTTP resolvers never touch it.
    struct NoStore;
    impl SessionStore for NoStore {
        fn load<'a>(&'a self, _sid: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
            Box::pin(async { Err(StoreError::Unsupported("test")) })
        }
        fn load_many<'a>(
            &'a self,
            _sids: &'a [String],
        ) -> StoreFuture<'a, Vec<Option<StoredSession>>> {
            Box::pin(async { Err(StoreError::Unsupported("test")) })
        }
    }

    #[tokio::test]
    async fn http_resolver_maps_statuses() {
        let users = Arc::new(vec![
            json!({"id": 42, "username": "alice"}),
            json!({"id": "u-7f3a9c"}),
        ]);
        let (url_template, server) = user_http_server(users).await;
        let resolver = UserResolver::Http {
            url_template,
            timeout: Duration::from_millis(300),
        };
        resolver.validate().expect("valid");
        assert_eq!(
            resolver.resolve(&json!(42), &NoStore).await,
            Ok(json!({"id": 42, "username": "alice"}))
        );
        assert_eq!(
            resolver.resolve(&json!("u-7f3a9c"), &NoStore).await,
            Ok(json!({"id": "u-7f3a9c"}))
        );
        assert_eq!(
            resolver
                .resolve(&json!({"id": 42}), &NoStore)
                .await
                .map(|u| u["id"].clone()),
            Ok(json!(42))
        );
        assert_eq!(
            resolver.resolve(&json!(7), &NoStore).await,
            Err(UserLookupError::NotFound)
        );
        assert_eq!(
            resolver.resolve(&json!("chunky"), &NoStore).await,
            Ok(json!({"id": "chunky"}))
        );
        assert!(matches!(
            resolver.resolve(&json!("boom"), &NoStore).await,
            Err(UserLookupError::Unavailable(_))
        ));
        let started = tokio::time::Instant::now();
        assert!(matches!(
            resolver.resolve(&json!("slow"), &NoStore).await,
            Err(UserLookupError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_millis(600));
        assert_eq!(
            resolver.resolve(&json!(true), &NoStore).await,
            Err(UserLookupError::NotFound)
        );
        server.abort();
        // Nobody listening: unavailable, not a panic.
        let closed = UserResolver::Http {
            url_template: "http://127.0.0.1:1/users/{id}".into(),
            timeout: Duration::from_millis(300),
        };
        assert!(matches!(
            closed.resolve(&json!(1), &NoStore).await,
            Err(UserLookupError::Unavailable(_))
        ));
    }
}
