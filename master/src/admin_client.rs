//! The client side of the admin API, used by `sockhive sockets ...`, so the
//! CLI goes through exactly the code paths operators' scripts use.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A failed admin call, with the text to show the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminCallError {
    /// The URL is not `http://host:port`.
    #[error("admin URL must look like http://127.0.0.1:9000, got {0:?}")]
    BadUrl(String),
    /// The node could not be reached.
    #[error("cannot reach the admin API at {addr}: {source}")]
    Unreachable {
        /// host:port tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node answered with an error status.
    #[error("admin API answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The answer was not HTTP.
    #[error("malformed answer from the admin API")]
    Malformed,
}

impl AdminCallError {
    /// True when the caller asked for something malformed (exit 2), not when
    /// the node refused or could not be reached (exit 1): the contract's CLI rule.
    pub fn is_bad_usage(&self) -> bool {
        matches!(self, AdminCallError::BadUrl(_))
    }
}

/// POSTs `body` to `path` and returns the response body of a 2xx answer.
pub fn post(
    admin_url: &str,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<String, AdminCallError> {
    let addr = admin_url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| AdminCallError::BadUrl(admin_url.to_string()))?;
    let unreachable = |source| AdminCallError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    let payload = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(AdminCallError::Malformed)?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(AdminCallError::Malformed)?;
    if (200..300).contains(&status) {
        Ok(body.to_string())
    } else {
        Err(AdminCallError::Refused {
            status,
            body: body.trim().to_string(),
        })
    }
}
