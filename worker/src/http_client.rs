//! sockhive's own calls to the application over HTTP/1.1: the user lookup
//! (one GET per connection) and the app hooks (POSTs over kept-alive
//! connections). Small on purpose: the app is a known peer on a near network,
//! and every call is bounded in time by its caller.

use sockhive_shared::http_url::HttpUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response bodies larger than this are refused: an answer to one socket's
/// call has no business being bigger than a client's own frame limit.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The connection may carry another request (HTTP/1.1 without
    /// `Connection: close`, and a body with a known end).
    pub reusable: bool,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A kept-alive connection turned out closed before any answer byte
    /// arrived: the peer dropped it while idle, so the request was not
    /// processed and may be sent again on a fresh connection.
    #[error("the kept-alive connection was closed by the peer")]
    Stale,
    /// Could not connect.
    #[error("connect {0}")]
    Connect(String),
    /// The exchange failed or the answer was not HTTP.
    #[error("{0}")]
    Broken(String),
}

/// A minimal GET with `Connection: close` (the caller bounds it in time).
/// `headers` must hold no CR or LF (checked when configured).
pub async fn get_once(url: &HttpUrl, headers: &[(String, String)]) -> Result<HttpAnswer, String> {
    let mut stream = TcpStream::connect(url.authority.as_str())
        .await
        .map_err(|e| format!("connect {}: {e}", url.authority))?;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
        url.path, url.authority
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
        if response.len() > MAX_RESPONSE_BYTES {
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

/// One kept-alive connection to the app.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// Requests it has carried, so a failure on a reused one can be retried.
    used: u64,
}

impl Connection {
    /// Connects to `authority` (`host:port`).
    pub async fn open(authority: &str) -> Result<Connection, CallError> {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| CallError::Connect(format!("{authority}: {e}")))?;
        // Requests are written whole; waiting for more bytes would only add latency.
        let _ = stream.set_nodelay(true);
        Ok(Connection { stream, used: 0 })
    }

    /// POSTs a JSON `body` to `path`; `head_lines` are whole header lines
    /// (`Name: value\r\n`) already checked to hold no stray CR or LF.
    pub async fn post_json(
        &mut self,
        authority: &str,
        path: &str,
        head_lines: &str,
        body: &[u8],
    ) -> Result<HttpAnswer, CallError> {
        let reused = self.used > 0;
        self.used += 1;
        let mut request = Vec::with_capacity(256 + head_lines.len() + body.len());
        request.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(head_lines.as_bytes());
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        let stale_or = |reused: bool, e: String| {
            if reused {
                CallError::Stale
            } else {
                CallError::Broken(e)
            }
        };
        if let Err(e) = self.stream.write_all(&request).await {
            return Err(stale_or(reused, format!("send: {e}")));
        }
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let read = match self.stream.read(&mut chunk).await {
                Ok(read) => read,
                Err(e) if response.is_empty() => {
                    return Err(stale_or(reused, format!("read: {e}")))
                }
                Err(e) => return Err(CallError::Broken(format!("read: {e}"))),
            };
            if read == 0 {
                if response.is_empty() {
                    return Err(stale_or(reused, "closed without answering".into()));
                }
                return match parse_response(&response, true) {
                    Some(Ok(mut answer)) => {
                        answer.reusable = false;
                        Ok(answer)
                    }
                    Some(Err(e)) => Err(CallError::Broken(e)),
                    None => Err(CallError::Broken("incomplete response".into())),
                };
            }
            response.extend_from_slice(&chunk[..read]);
            if response.len() > MAX_RESPONSE_BYTES {
                return Err(CallError::Broken("response too large".into()));
            }
            match parse_response(&response, false) {
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(e)) => return Err(CallError::Broken(e)),
                None => {}
            }
        }
    }
}

/// Parses a response; `None` while more bytes are needed. With `at_eof`,
/// a body without length runs to the end.
pub fn parse_response(bytes: &[u8], at_eof: bool) -> Option<Result<HttpAnswer, String>> {
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
    let mut reusable = version == "HTTP/1.1";
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
        } else if name.eq_ignore_ascii_case("connection")
            && value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        {
            reusable = false;
        }
    }
    let answer = |body: Vec<u8>, reusable: bool| HttpAnswer {
        status,
        body,
        reusable,
    };
    if chunked {
        return match decode_chunked(body) {
            Some(Ok(body)) => Some(Ok(answer(body, reusable))),
            Some(Err(error)) => Some(Err(error)),
            None if at_eof => Some(Err("truncated chunked body".to_owned())),
            None => None,
        };
    }
    match content_length {
        Some(length) if body.len() >= length => {
            // Bytes past the body would belong to no request of ours.
            let clean = body.len() == length;
            Some(Ok(answer(body[..length].to_vec(), reusable && clean)))
        }
        Some(_) if at_eof => Some(Err("truncated body".to_owned())),
        Some(_) => None,
        None if at_eof => Some(Ok(answer(body.to_vec(), false))),
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
            // The terminating CRLF (after optional trailers) must be there
            // before the connection can carry the next answer.
            return bytes.windows(2).any(|w| w == b"\r\n").then_some(Ok(body));
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
    use super::*;

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

    #[test]
    fn answers_parse_with_length_chunks_and_close() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ok.status, ok.body.as_slice(), ok.reusable),
            (200, &b"{}"[..], true)
        );
        let closing = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!closing.reusable);
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(chunked.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", false).is_none());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", true)
                .unwrap()
                .is_err()
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n", false).unwrap().is_err());
    }
}
