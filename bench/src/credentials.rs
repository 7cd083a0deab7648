//! The credentials of a realistic login, made the way the Node stack makes them.
//!
//! A benchmark that authenticates with anything but what express-session,
//! connect-redis and passport really write would measure a different job. So
//! session ids have express-session's default shape (32 base64url characters),
//! cookies are signed like cookie-signature (`s:<id>.<base64 HMAC-SHA256, no
//! padding>`, then `encodeURIComponent`), and the Redis value is byte for byte
//! what connect-redis stores after a passport login (see
//! shared/spec/auth-interop.md sections 1 and 2, and shared/vectors/sessions.json).

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// express-session's default cookie name.
pub const COOKIE_NAME: &str = "connect.sid";
/// connect-redis's default key prefix.
pub const SESSION_PREFIX: &str = "sess:";
/// connect-redis's TTL for a browser-session cookie (no `maxAge`).
pub const SESSION_TTL_SECONDS: u64 = 86_400;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// One seeded login: who it is, and what the browser and Redis hold for it.
#[derive(Debug, Clone)]
pub struct Login {
    /// The value of `passport.user` (a string id, as `serializeUser` stored it).
    pub user_id: String,
    /// The raw session id.
    pub session_id: String,
}

impl Login {
    /// The login with number `index`; ids are derived from `salt` so a run can
    /// rebuild the cookies of what it seeded without asking Redis.
    pub fn derive(salt: &str, index: usize) -> Login {
        let digest = hmac(salt.as_bytes(), format!("session-{index}").as_bytes());
        Login {
            user_id: format!("u{index}"),
            // 24 bytes as base64url, the shape of uid-safe's default.
            session_id: URL_SAFE_NO_PAD.encode(&digest[..24]),
        }
    }

    /// The Redis key connect-redis uses.
    pub fn redis_key(&self) -> String {
        format!("{SESSION_PREFIX}{}", self.session_id)
    }

    /// The JSON connect-redis stores after a passport 0.7 login with default cookie options.
    pub fn redis_value(&self) -> String {
        let session = serde_json::json!({
            "cookie": {"originalMaxAge": null, "expires": null, "httpOnly": true, "path": "/"},
            "passport": {"user": self.user_id},
        });
        session.to_string()
    }

    /// The `Cookie` header a browser sends back, signed with `secret`.
    pub fn cookie_header(&self, secret: &str) -> String {
        format!(
            "{COOKIE_NAME}={}",
            encode_uri_component(&signed_value(&self.session_id, secret))
        )
    }
}

/// cookie-signature's `sign`: `s:` + id + `.` + standard base64 of the MAC, no padding.
pub fn signed_value(session_id: &str, secret: &str) -> String {
    let mac = hmac(secret.as_bytes(), session_id.as_bytes());
    format!("s:{session_id}.{}", STANDARD_NO_PAD.encode(mac))
}

/// JavaScript's `encodeURIComponent`, which the `cookie` package applies to the value.
pub fn encode_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            );
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An HS256 JWT as jsonwebtoken (and so SocketCluster's ag-auth) signs it:
/// header `{"alg":"HS256","typ":"JWT"}`, base64url segments without padding.
pub fn sign_jwt(key: &str, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(hmac(key.as_bytes(), signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// The token a JWT-authenticated login presents: `sub` is the user id, one day of life.
pub fn login_jwt(key: &str, user_id: &str, now_unix: u64) -> String {
    sign_jwt(
        key,
        &serde_json::json!({"sub": user_id, "iat": now_unix, "exp": now_unix + 86_400}),
    )
}

/// sockhive's hook request signature (shared/interface.md, "App hooks"):
/// `sha256=` + hex HMAC-SHA256(secret, body).
pub fn hook_signature(secret: &str, body: &str) -> String {
    let mac = hmac(secret.as_bytes(), body.as_bytes());
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/vectors/sessions.json"
        );
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).expect("sessions.json parses"),
            Err(_) => serde_json::Value::Null,
        }
    }

    #[test]
    fn cookie_matches_express_session_vector() {
        // From sessions.json, case basic_single_secret_session_cookie.
        let login = Login {
            user_id: "42".into(),
            session_id: "l39Rvo74qSJulavmkn-4nswZIyHfRfwx".into(),
        };
        assert_eq!(
            login.cookie_header("keyboard cat"),
            "connect.sid=s%3Al39Rvo74qSJulavmkn-4nswZIyHfRfwx.Bljna6U1s9%2FpxUi6o7auhCSnF7V02Qza8kbE4deqEzk"
        );
    }

    #[test]
    fn every_positive_vector_signs_the_same() {
        let vectors = vectors();
        let Some(cases) = vectors["cases"].as_array() else {
            return; // shared/ not beside this clone: the fixed vector above still runs
        };
        let mut checked = 0;
        for case in cases {
            let (Some(id), Some(secret), Some(decoded)) = (
                case["session_id"].as_str(),
                case["signing_secret"].as_str(),
                case["cookie_value_decoded"].as_str(),
            ) else {
                continue;
            };
            if case["kind"] != "positive" {
                continue;
            }
            assert_eq!(signed_value(id, secret), decoded, "{}", case["name"]);
            checked += 1;
        }
        assert!(checked > 3, "only {checked} vectors checked");
    }

    #[test]
    fn redis_value_is_connect_redis_shape() {
        let login = Login {
            user_id: "u7".into(),
            session_id: "x".into(),
        };
        assert_eq!(
            login.redis_value(),
            r#"{"cookie":{"originalMaxAge":null,"expires":null,"httpOnly":true,"path":"/"},"passport":{"user":"u7"}}"#
        );
        assert_eq!(login.redis_key(), "sess:x");
    }

    #[test]
    fn derived_ids_have_default_shape_and_differ() {
        let a = Login::derive("salt", 1);
        let b = Login::derive("salt", 2);
        assert_eq!(a.session_id.len(), 32);
        assert_ne!(a.session_id, b.session_id);
        assert_eq!(a.user_id, "u1");
        assert!(a
            .session_id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn jwt_matches_socketcluster_vector() {
        // shared/spec/socketcluster-protocol.md 8.1, deterministic vector.
        let token = sign_jwt(
            "test-secret-key",
            &serde_json::json!({"username":"alice","role":"user","iat":1700000000,"exp":1700086400}),
        );
        assert_eq!(token, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFsaWNlIiwicm9sZSI6InVzZXIiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDA4NjQwMH0.vWcUKs27foIloUQCdoSUxaEOIExtqvcJ_---_5tMoJc");
    }

    #[test]
    fn hook_signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            hook_signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn encode_uri_component_matches_javascript() {
        assert_eq!(encode_uri_component("s:a+b/c=d.e"), "s%3Aa%2Bb%2Fc%3Dd.e");
    }
}
