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
use sockhive_shared::http_url::HttpUrl;

use crate::http_client::get_once;

use super::store::{SessionStore, StoredSession, UserRecordShape};

/// passport's session key (`Authenticator._key`); apps practically never change it.
pub const PASSPORT_SESSION_KEY: &str = "passport";

/// Placeholder in user key and URL templates.
pub const ID_PLACEHOLDER: &str = "{id}";

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
                HttpUrl::parse(url_template)
                    .map(|_| ())
                    .map_err(|_| UserResolverConfigError::BadUrl(url_template.clone()))
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
                let target = HttpUrl::parse(&url)
                    .map_err(|error| UserLookupError::Unavailable(error.to_string()))?;
                let answer = tokio::time::timeout(*timeout, get_once(&target, headers))
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
