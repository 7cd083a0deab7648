//! Deciding whether an HTTP request may become a WebSocket, before any byte of
//! the 101 is written.
//!
//! Every refusal is a [`Rejection`] that knows its HTTP status, the metric
//! reason it is counted under, and who is at fault, so the front door handles
//! them all the same way.

use sockhive_shared::http::{RequestHead, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a connection did not become a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The head did not arrive within the upgrade timeout (client at fault; no response is sent).
    #[error("request head not complete within the upgrade timeout")]
    UpgradeTimeout,
    /// The head exceeded the configured size (431).
    #[error("request head too large")]
    HeaderTooLarge,
    /// Not HTTP at all (400).
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// A path that no endpoint serves (404).
    #[error("no endpoint at {0}")]
    NotFound(String),
    /// Missing or wrong upgrade headers (400).
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// A `Sec-WebSocket-Version` other than 13 (426 with the supported version).
    #[error("unsupported WebSocket version {0:?}")]
    UnsupportedVersion(String),
    /// A browser `Origin` not on the allow-list (403): cross-site WebSocket hijacking guard.
    #[error("origin {0:?} is not allowed")]
    Origin(String),
    /// `--reject-at-upgrade`: no valid credential at the upgrade (401).
    #[error("{0}: {1}")]
    Unauthorized(std::borrow::Cow<'static, str>, String),
    /// `--reject-at-upgrade`: the app's `connect` hook did not answer (503,
    /// `Retry-After`): the app is down, not the credential bad.
    #[error("{0}: {1}")]
    Unavailable(std::borrow::Cow<'static, str>, String),
    /// The worker is at `max_connections` (503).
    #[error("worker is at its connection limit")]
    MaxConnections,
}

impl Rejection {
    /// The `reason` label of `sockhive_rejected_connections_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Rejection::UpgradeTimeout => "upgrade_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::Malformed(_)
            | Rejection::BadUpgrade(_)
            | Rejection::UnsupportedVersion(_) => "bad_upgrade",
            Rejection::NotFound(_) => "not_found",
            Rejection::Origin(_) => "origin",
            Rejection::MaxConnections => "max_connections",
            Rejection::Unauthorized(..) | Rejection::Unavailable(..) => "auth",
        }
    }

    /// What the client is sent, if anything.
    pub fn response(&self) -> Option<Response> {
        let response = match self {
            Rejection::UpgradeTimeout => return None,
            Rejection::HeaderTooLarge => Response::text(431, "Request header fields too large\n"),
            Rejection::Malformed(_) | Rejection::BadUpgrade(_) => {
                Response::text(400, format!("{self}\n"))
            }
            Rejection::NotFound(_) => Response::text(404, format!("{self}\n")),
            Rejection::UnsupportedVersion(_) => {
                Response::text(426, format!("{self}; this server speaks version 13\n"))
                    .with_header("Sec-WebSocket-Version", "13")
            }
            Rejection::Origin(_) => Response::text(403, format!("{self}\n")),
            Rejection::Unauthorized(name, message) => {
                Response::json(401, &serde_json::json!({"error": name, "message": message}))
            }
            Rejection::Unavailable(name, message) => {
                Response::json(503, &serde_json::json!({"error": name, "message": message}))
                    .with_header("Retry-After", "1")
            }
            Rejection::MaxConnections => {
                Response::text(503, format!("{self}\n")).with_header("Retry-After", "1")
            }
        };
        Some(response)
    }
}

/// Checks the WebSocket handshake headers (RFC 6455 section 4.2.1) and returns
/// the `Sec-WebSocket-Accept` value for the 101.
pub fn accept_key(head: &RequestHead) -> Result<String, Rejection> {
    if head.method != "GET" {
        return Err(Rejection::BadUpgrade("method must be GET"));
    }
    if !head.header_has_token("upgrade", "websocket") {
        return Err(Rejection::BadUpgrade("missing `Upgrade: websocket`"));
    }
    if !head.header_has_token("connection", "upgrade") {
        return Err(Rejection::BadUpgrade("missing `Connection: Upgrade`"));
    }
    match head.header("sec-websocket-version").map(str::trim) {
        Some("13") => {}
        Some(other) => return Err(Rejection::UnsupportedVersion(other.to_string())),
        None => return Err(Rejection::UnsupportedVersion(String::new())),
    }
    let key = head
        .header("sec-websocket-key")
        .map(str::trim)
        .ok_or(Rejection::BadUpgrade("missing Sec-WebSocket-Key"))?;
    // The key is 16 random bytes in base64: exactly 24 characters ending in "==".
    let well_formed = key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return Err(Rejection::BadUpgrade(
            "Sec-WebSocket-Key is not 16 bytes of base64",
        ));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// The 101 response bytes; no extension or subprotocol is accepted (compression declined, as the real servers do).
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes()
}

/// The cross-site WebSocket hijacking guard.
///
/// A request without `Origin` is a non-browser client and passes. With an
/// allow-list, the origin must equal an entry (scheme, host and port, compared
/// case-insensitively); `*` disables the check. Without one, the origin's host
/// must be the request's own `Host`, which is what a same-site page sends.
pub fn check_origin(head: &RequestHead, allowed: &[String]) -> Result<(), Rejection> {
    let Some(origin) = head.header("origin").map(str::trim) else {
        return Ok(());
    };
    let ok = if allowed.is_empty() {
        let host = head.header("host").map(str::trim).unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
    } else {
        allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::Origin(origin.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/socketcluster/".into(),
            query: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("Host", "127.0.0.1:8000"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_sample_key_is_accepted() {
        assert_eq!(
            accept_key(&head(GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn wrong_version_is_426_and_missing_key_400() {
        let mut h = head(GOOD);
        h.headers[3].1 = "8".into();
        let err = accept_key(&h).unwrap_err();
        assert_eq!(err.response().unwrap().status, 426);
        let mut h = head(GOOD);
        h.headers.pop();
        assert_eq!(accept_key(&h).unwrap_err().response().unwrap().status, 400);
    }

    #[test]
    fn origin_defaults_to_the_requests_own_host() {
        let mut h = head(GOOD);
        assert!(check_origin(&h, &[]).is_ok());
        h.headers
            .push(("Origin".into(), "http://127.0.0.1:8000".into()));
        assert!(check_origin(&h, &[]).is_ok());
        h.headers.last_mut().unwrap().1 = "https://evil.example".into();
        assert_eq!(
            check_origin(&h, &[])
                .unwrap_err()
                .response()
                .unwrap()
                .status,
            403
        );
        assert!(check_origin(&h, &["https://evil.example".into()]).is_ok());
        assert!(check_origin(&h, &["*".into()]).is_ok());
        assert!(check_origin(&h, &["https://app.example".into()]).is_err());
    }
}
