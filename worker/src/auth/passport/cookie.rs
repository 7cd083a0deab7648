//! Finding and verifying express-session's signed session cookie.
//!
//! Everything here mirrors what the Node stack does (cookie 0.7.2 parsing,
//! cookie-signature unsigning), so a cookie the web app accepts is accepted
//! here and a cookie it ignores is refused here. Two deliberate deviations,
//! both from the outside contract: a session id taken from the query string
//! is refused unless `--accept-query-session-id` is on (and then only a
//! signed one), and the cookie name appearing twice can be refused on request
//! (`--duplicate-cookie refuse`, against cookie shadowing) instead of letting
//! the first one win.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie name express-session uses unless the app sets `name`.
pub const DEFAULT_COOKIE_NAME: &str = "connect.sid";

/// The literal prefix express-session puts in front of a signed value.
const SIGNED_PREFIX: &str = "s:";

type HmacSha256 = Hmac<Sha256>;

/// What to do when the session cookie's name appears more than once.
///
/// The default is the app's own rule (cookie@0.7 / express-session: the first
/// occurrence wins), so a socket is logged in as exactly the user the app sees
/// on the same request; this is what the vectors expect. Browsers order
/// cookies with longer paths first, so a cookie planted on a deeper path can
/// shadow the real one: deployments that fear that refuse duplicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DuplicateCookiePolicy {
    /// Refuse the request (`SessionCookieInvalidError`, reason `duplicate_cookie`).
    Reject,
    /// Behave exactly like cookie@0.7 / express-session: the first occurrence wins.
    #[default]
    FirstWins,
}

/// Why a presented session credential was refused; each maps to a metric
/// `reason` label and, for the client, to `SessionCookieInvalidError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieRejection {
    /// The value does not start with `s:` (also a value whose percent-encoding
    /// is broken, because cookie@0.7 then keeps the raw `s%3A…` text).
    Unsigned,
    /// `s:` present but no configured secret verifies it (or there is no `.`).
    BadSignature,
    /// The cookie name appeared more than once under [`DuplicateCookiePolicy::Reject`].
    Duplicate,
    /// A `session_id` query parameter while query ids are not accepted.
    QuerySessionId,
}

impl CookieRejection {
    /// The low-cardinality metric label.
    pub fn reason(self) -> &'static str {
        match self {
            CookieRejection::Unsigned => "unsigned",
            CookieRejection::BadSignature => "bad_signature",
            CookieRejection::Duplicate => "duplicate_cookie",
            CookieRejection::QuerySessionId => "query_session_id",
        }
    }

    /// A sentence for the client and the logs; never includes the cookie value.
    pub fn message(self) -> &'static str {
        match self {
            CookieRejection::Unsigned => "the session cookie is not signed",
            CookieRejection::BadSignature => "the session cookie signature does not verify",
            CookieRejection::Duplicate => "the session cookie was sent more than once",
            CookieRejection::QuerySessionId => "a session id in the query string is not accepted",
        }
    }
}

/// A session id whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSessionId {
    /// The raw session id, the part after `s:` and before the last `.`.
    pub sid: String,
    /// Which configured secret verified it (0 = the current signing secret),
    /// so operators can see when an old secret is no longer needed.
    pub secret_index: usize,
}

/// The result of looking for the session cookie on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CookieVerdict {
    /// No session credential at all: an anonymous connection, not an error.
    Absent,
    /// A correctly signed session id.
    Verified(SignedSessionId),
    /// A credential was presented and refused.
    Rejected(CookieRejection),
}

/// What a `Cookie` header holds for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CookieLookup {
    /// The name does not occur.
    Absent,
    /// Exactly one occurrence, decoded as cookie@0.7 decodes it.
    Single(String),
    /// More than one occurrence; `first` is the one cookie@0.7 would pick.
    Duplicate { first: String },
}

/// Verifies session cookies against the configured secrets, built once per worker.
pub struct SessionCookieVerifier {
    cookie_name: String,
    /// Keyed MAC states in configuration order; cloned per check so the key
    /// is not re-hashed on every handshake.
    macs: Vec<HmacSha256>,
    duplicates: DuplicateCookiePolicy,
    accept_signed_query_id: bool,
}

impl SessionCookieVerifier {
    /// `secrets` in express-session order: the first signs, any verifies.
    pub fn new(cookie_name: &str, secrets: &[String]) -> SessionCookieVerifier {
        let macs = secrets
            .iter()
            .filter_map(|secret| HmacSha256::new_from_slice(secret.as_bytes()).ok())
            .collect();
        SessionCookieVerifier {
            cookie_name: cookie_name.to_owned(),
            macs,
            duplicates: DuplicateCookiePolicy::default(),
            accept_signed_query_id: false,
        }
    }

    /// Chooses how a repeated cookie name is treated.
    pub fn with_duplicate_policy(mut self, policy: DuplicateCookiePolicy) -> Self {
        self.duplicates = policy;
        self
    }

    /// Accepts an `s:`-signed value in the `session_id` query parameter
    /// (never a raw id, which would let anyone who learns an id log in).
    pub fn with_signed_query_session_id(mut self, accept: bool) -> Self {
        self.accept_signed_query_id = accept;
        self
    }

    /// The cookie name being looked for.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// Decides a request from its `Cookie` header values (in arrival order,
    /// as Node joins repeated headers) and its `session_id` query parameter
    /// (already URL-decoded). The cookie, when present, decides; the query
    /// parameter is looked at only without one.
    pub fn verify_request<'a, I>(
        &self,
        cookie_headers: I,
        session_id_query: Option<&str>,
    ) -> CookieVerdict
    where
        I: IntoIterator<Item = &'a str>,
    {
        match find_cookie(cookie_headers, &self.cookie_name) {
            CookieLookup::Single(value) => self.verdict(self.verify_value(&value)),
            CookieLookup::Duplicate { first } => match self.duplicates {
                DuplicateCookiePolicy::Reject => {
                    CookieVerdict::Rejected(CookieRejection::Duplicate)
                }
                DuplicateCookiePolicy::FirstWins => self.verdict(self.verify_value(&first)),
            },
            CookieLookup::Absent => match session_id_query {
                None => CookieVerdict::Absent,
                Some(_) if !self.accept_signed_query_id => {
                    CookieVerdict::Rejected(CookieRejection::QuerySessionId)
                }
                Some(value) => self.verdict(self.verify_value(value)),
            },
        }
    }

    fn verdict(&self, result: Result<SignedSessionId, CookieRejection>) -> CookieVerdict {
        match result {
            Ok(signed) => CookieVerdict::Verified(signed),
            Err(rejection) => CookieVerdict::Rejected(rejection),
        }
    }

    /// Verifies one decoded cookie value (`s:<id>.<signature>`).
    pub fn verify_value(&self, decoded: &str) -> Result<SignedSessionId, CookieRejection> {
        let signed = decoded
            .strip_prefix(SIGNED_PREFIX)
            .ok_or(CookieRejection::Unsigned)?;
        let (sid, _) = signed
            .rsplit_once('.')
            .ok_or(CookieRejection::BadSignature)?;
        // Every secret is tried even after a match so the time taken does not
        // say which secret (or whether an early one) verified.
        let mut verified_by: Option<usize> = None;
        for (index, mac) in self.macs.iter().enumerate() {
            let expected = signed_string(mac.clone(), sid);
            let matches = constant_time_eq(expected.as_bytes(), signed.as_bytes());
            if matches && verified_by.is_none() {
                verified_by = Some(index);
            }
        }
        verified_by
            .map(|secret_index| SignedSessionId {
                sid: sid.to_owned(),
                secret_index,
            })
            .ok_or(CookieRejection::BadSignature)
    }
}

/// `<value>.<base64 HMAC-SHA256>` exactly as cookie-signature's `sign` builds it.
fn signed_string(mut mac: HmacSha256, value: &str) -> String {
    mac.update(value.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(value.len() + 44);
    out.push_str(value);
    out.push('.');
    STANDARD_NO_PAD.encode_string(tag, &mut out);
    out
}

/// cookie-signature's `sign(value, secret)`: used by tests and tools that mint cookies.
pub fn sign(value: &str, secret: &str) -> String {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => signed_string(mac, value),
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Looks up `name` across all `Cookie` header values with cookie@0.7's rules.
pub fn find_cookie<'a, I>(cookie_headers: I, name: &str) -> CookieLookup
where
    I: IntoIterator<Item = &'a str>,
{
    let mut found = CookieLookup::Absent;
    for header in cookie_headers {
        for (key, raw) in cookie_pairs(header) {
            if key != name {
                continue;
            }
            found = match found {
                CookieLookup::Absent => CookieLookup::Single(decode_value(raw)),
                CookieLookup::Single(first) | CookieLookup::Duplicate { first } => {
                    CookieLookup::Duplicate { first }
                }
            };
        }
    }
    found
}

/// Parses one header into `(name, decoded value)` pairs, first occurrence
/// winning, as cookie@0.7's `parse` returns them.
pub fn parse_cookie_header(header: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, raw) in cookie_pairs(header) {
        if !out.iter().any(|(existing, _)| existing == key) {
            out.push((key.to_owned(), decode_value(raw)));
        }
    }
    out
}

/// Yields every `name=value` pair (value still raw, quotes stripped), in
/// order and with duplicates, following cookie@0.7's scanning: segments are
/// split on `;`, name and value on the first `=`, segments without `=` are
/// skipped, spaces and tabs around names and values are trimmed.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    // cookie@0.7 returns nothing for headers shorter than two characters.
    let usable = if header.len() < 2 { "" } else { header };
    usable.split(';').filter_map(|segment| {
        let (key, value) = segment.split_once('=')?;
        let key = trim_space_tab(key);
        let value = trim_space_tab(value);
        let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            &value[1..value.len() - 1]
        } else if value == "\"" {
            // A lone quote is both the opening and the closing one in cookie@0.7.
            ""
        } else {
            value
        };
        Some((key, value))
    })
}

fn trim_space_tab(text: &str) -> &str {
    text.trim_matches(|c| c == ' ' || c == '\t')
}

/// cookie@0.7's `tryDecode(decode)`: `decodeURIComponent` only when a `%`
/// is present, and the raw text kept when decoding fails.
fn decode_value(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    decode_uri_component(raw).unwrap_or_else(|| raw.to_owned())
}

/// JavaScript's `decodeURIComponent`: every `%XX` becomes a byte, the result
/// must be UTF-8; a malformed escape or invalid UTF-8 is an error (`None`).
/// `+` stays `+`.
fn decode_uri_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let high = hex_digit(*bytes.get(index + 1)?)?;
            let low = hex_digit(*bytes.get(index + 2)?)?;
            out.push(high << 4 | low);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/sessions.json"
        ))
        .expect("sessions.json is checked in next to the workspace tests");
        serde_json::from_str(&text).expect("sessions.json is valid JSON")
    }

    fn text<'v>(value: &'v Value, key: &str) -> &'v str {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is a string"))
    }

    fn secrets(case: &Value) -> Vec<String> {
        case["verification_secrets"]
            .as_array()
            .expect("verification_secrets")
            .iter()
            .map(|s| s.as_str().expect("secret").to_owned())
            .collect()
    }

    #[test]
    fn sign_vectors_match_cookie_signature() {
        let vectors = vectors();
        let signs = vectors["cookie_signature_vectors"]["sign"]
            .as_array()
            .expect("sign");
        assert!(signs.len() >= 6);
        for vector in signs {
            let value = text(vector, "value");
            let secret = text(vector, "secret");
            assert_eq!(
                sign(value, secret),
                text(vector, "signed"),
                "sign({value:?})"
            );
            let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &[secret.to_owned()]);
            let verified = verifier
                .verify_value(text(vector, "cookie_value"))
                .expect("verifies");
            assert_eq!(verified.sid, value);
            // The URL-encoded form goes through the header parser.
            let header = format!("connect.sid={}", text(vector, "cookie_value_url_encoded"));
            assert_eq!(
                verifier.verify_request([header.as_str()], None),
                CookieVerdict::Verified(SignedSessionId {
                    sid: value.to_owned(),
                    secret_index: 0
                })
            );
        }
    }

    #[test]
    fn unsign_vectors_match_cookie_signature() {
        let vectors = vectors();
        let unsigns = vectors["cookie_signature_vectors"]["unsign"]
            .as_array()
            .expect("unsign");
        for vector in unsigns {
            let verifier = SessionCookieVerifier::new(
                DEFAULT_COOKIE_NAME,
                &[text(vector, "secret").to_owned()],
            );
            let input = format!("s:{}", text(vector, "input"));
            let result = verifier.verify_value(&input);
            match &vector["result"] {
                Value::Bool(false) => {
                    assert_eq!(result, Err(CookieRejection::BadSignature), "{input}")
                }
                Value::String(expected) => assert_eq!(result.expect("verifies").sid, *expected),
                other => panic!("unexpected result {other}"),
            }
        }
    }

    #[test]
    fn header_parse_vectors_match_cookie_0_7() {
        let vectors = vectors();
        let parses = vectors["cookie_header_parse_vectors"]
            .as_array()
            .expect("parse vectors");
        for vector in parses {
            let header = text(vector, "header");
            let parsed: serde_json::Map<String, Value> = parse_cookie_header(header)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            assert_eq!(Value::Object(parsed), vector["parsed"], "header {header:?}");
        }
    }

    /// Every cookie-only verdict in the cases: signature and parsing decide
    /// these before any store access.
    #[test]
    fn case_cookie_verdicts() {
        let vectors = vectors();
        for case in vectors["cases"].as_array().expect("cases") {
            let name = text(case, "name");
            let cookie_name = case["cookie_name"].as_str().unwrap_or(DEFAULT_COOKIE_NAME);
            let verifier = SessionCookieVerifier::new(cookie_name, &secrets(case));
            let verdict = verifier.verify_request([text(case, "cookie_header")], None);
            let expected = match name {
                "tampered_signature" | "wrong_secret" | "rotated_secret_removed" => {
                    CookieVerdict::Rejected(CookieRejection::BadSignature)
                }
                "unsigned_value" | "malformed_percent_encoding" => {
                    CookieVerdict::Rejected(CookieRejection::Unsigned)
                }
                // Signed with the only secret, but no session id recorded.
                "signed_but_unknown_session_id" => {
                    assert!(
                        matches!(&verdict, CookieVerdict::Verified(s) if s.secret_index == 0 && !s.sid.is_empty()),
                        "case {name}: {verdict:?}"
                    );
                    continue;
                }
                _ => CookieVerdict::Verified(SignedSessionId {
                    sid: text(case, "session_id").to_owned(),
                    secret_index: case["verified_with_secret_index"]
                        .as_u64()
                        .expect("verified_with_secret_index")
                        as usize,
                }),
            };
            assert_eq!(verdict, expected, "case {name}");
        }
    }

    #[test]
    fn rotation_any_listed_secret_verifies_and_reports_its_index() {
        let secrets = vec!["new".to_owned(), "older".to_owned(), "oldest".to_owned()];
        let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &secrets);
        for (index, secret) in secrets.iter().enumerate() {
            let value = format!("s:{}", sign("some-id", secret));
            assert_eq!(
                verifier
                    .verify_value(&value)
                    .expect("verifies")
                    .secret_index,
                index
            );
        }
        let foreign = format!("s:{}", sign("some-id", "unknown"));
        assert_eq!(
            verifier.verify_value(&foreign),
            Err(CookieRejection::BadSignature)
        );
    }

    #[test]
    fn duplicate_name_first_wins_by_default_and_is_rejected_on_request() {
        let good = format!("s:{}", sign("abc", "k"));
        let header = format!("connect.sid={good}; connect.sid=s:abc.forged");
        let strict = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["k".to_owned()])
            .with_duplicate_policy(DuplicateCookiePolicy::Reject);
        assert_eq!(
            strict.verify_request([header.as_str()], None),
            CookieVerdict::Rejected(CookieRejection::Duplicate)
        );
        let node_like = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["k".to_owned()]);
        assert!(matches!(
            node_like.verify_request([header.as_str()], None),
            CookieVerdict::Verified(_)
        ));
        // Split across two Cookie headers counts as a duplicate too.
        let first = format!("connect.sid={good}");
        assert_eq!(
            strict.verify_request([first.as_str(), "connect.sid=x"], None),
            CookieVerdict::Rejected(CookieRejection::Duplicate)
        );
    }

    #[test]
    fn query_session_id_is_refused_unless_signed_ids_are_enabled() {
        let signed = format!("s:{}", sign("abc", "k"));
        let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["k".to_owned()]);
        assert_eq!(
            verifier.verify_request([], Some("abc")),
            CookieVerdict::Rejected(CookieRejection::QuerySessionId)
        );
        assert_eq!(
            verifier.verify_request([], Some(signed.as_str())),
            CookieVerdict::Rejected(CookieRejection::QuerySessionId)
        );
        let lenient = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["k".to_owned()])
            .with_signed_query_session_id(true);
        assert!(matches!(
            lenient.verify_request([], Some(signed.as_str())),
            CookieVerdict::Verified(_)
        ));
        assert_eq!(
            lenient.verify_request([], Some("abc")),
            CookieVerdict::Rejected(CookieRejection::Unsigned)
        );
        // A cookie, when present, decides.
        let header = format!("connect.sid={signed}");
        assert!(matches!(
            verifier.verify_request([header.as_str()], Some("abc")),
            CookieVerdict::Verified(_)
        ));
    }

    #[test]
    fn odd_headers_never_panic() {
        let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["k".to_owned()]);
        for header in [
            "",
            "=",
            ";",
            "\"",
            "connect.sid",
            "connect.sid=",
            "connect.sid=\"",
            "connect.sid=%",
            "connect.sid=%zz",
            "connect.sid=%E2%82",
            "connect.sid=s:",
            "connect.sid=s:.",
            "connect.sid=s%3A%F0%9F%94%91.x",
            "a=1;;;connect.sid=\t\"s:.\"\t",
            "é=ü; connect.sid=ß",
        ] {
            let _ = verifier.verify_request([header], None);
            let _ = parse_cookie_header(header);
        }
        assert_eq!(
            verifier.verify_request(["connect.sid="], None),
            CookieVerdict::Rejected(CookieRejection::Unsigned)
        );
        assert_eq!(
            verifier.verify_request(["other=1"], None),
            CookieVerdict::Absent
        );
        assert_eq!(verifier.verify_request([], None), CookieVerdict::Absent);
    }

    #[test]
    fn empty_id_signs_and_verifies() {
        let verifier =
            SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &["keyboard cat".to_owned()]);
        let value = format!("s:{}", sign("", "keyboard cat"));
        assert_eq!(verifier.verify_value(&value).expect("verifies").sid, "");
    }

    #[test]
    fn decode_uri_component_matches_javascript() {
        assert_eq!(
            decode_uri_component("s%3Aa%2Fb%2Bc+d").as_deref(),
            Some("s:a/b+c+d")
        );
        assert_eq!(decode_uri_component("%F0%9F%94%91").as_deref(), Some("🔑"));
        assert_eq!(decode_uri_component("%"), None);
        assert_eq!(decode_uri_component("%4"), None);
        assert_eq!(decode_uri_component("%C3"), None, "lone UTF-8 lead byte");
    }
}
