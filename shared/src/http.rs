//! Just enough HTTP/1.1 for a WebSocket front door and a small admin API.
//!
//! sockhive parses request heads itself (with `httparse`) rather than through
//! a full HTTP stack because the front door must enforce its own limits at
//! exact points (head size, head time) and hand the raw TCP stream to the
//! WebSocket layer after a 101. Every response closes the connection: health
//! probes, scrapes and admin calls are rare enough that keep-alive buys nothing.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most headers a request may carry; more is an attack, not a browser.
const MAX_HEADERS: usize = 64;

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head grew past the configured limit (answer 431).
    #[error("request head exceeds {0} bytes")]
    TooLarge(usize),
    /// The bytes are not an HTTP/1.x request (answer 400).
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// The peer closed before sending a whole head.
    #[error("connection closed before the request head was complete")]
    Closed,
    /// The socket failed.
    #[error("i/o error reading the request head: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request line and headers.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// Headers in arrival order; names as sent.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name (case-insensitive), e.g. repeated `Cookie` lines.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when a comma-separated header lists `token` (case-insensitive), as `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

/// Decodes `%XX` escapes and `+` (form encoding, as `URLSearchParams` writes spaces).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request head of at most `max_bytes`.
///
/// Returns the head and whatever bytes arrived after it (a request body, or a
/// client that pipelined its first WebSocket frame), which the caller must
/// consume before reading the stream again.
pub async fn read_head<S>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(RequestHead, Vec<u8>), HeadError>
where
    S: AsyncRead + Unpin,
{
    // Hot path (every handshake): one read of a typical ~300-byte head, one parse.
    let mut buf = Vec::with_capacity(1024.min(max_bytes));
    loop {
        if buf.len() >= max_bytes {
            return Err(HeadError::TooLarge(max_bytes));
        }
        let want = (max_bytes - buf.len()).min(4096);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = stream.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let target = request.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (target.to_string(), None),
                };
                let head = RequestHead {
                    method: request.method.unwrap_or("GET").to_string(),
                    path,
                    query,
                    headers: request
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                let rest = buf.split_off(len);
                return Ok((head, rest));
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge(max_bytes)),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
    }
}

/// Reads a request body of exactly `Content-Length` bytes, refusing more than `max_bytes`.
pub async fn read_body<S>(
    stream: &mut S,
    head: &RequestHead,
    mut already: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, HeadError>
where
    S: AsyncRead + Unpin,
{
    let len = match head.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?,
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge(max_bytes));
    }
    if already.len() >= len {
        already.truncate(len);
        return Ok(already);
    }
    let have = already.len();
    already.resize(len, 0);
    stream.read_exact(&mut already[have..]).await?;
    Ok(already)
}

/// A complete response; always sent with `Connection: close`.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Content type of the body.
    pub content_type: &'static str,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// `{"error": message}` with the given status, the shape every API error has.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Writes the response and flushes it.
    pub async fn write_to<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> std::io::Result<()> {
        stream.write_all(&self.to_bytes()).await?;
        stream.flush().await
    }
}

/// The standard reason phrase of the statuses sockhive sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_head_and_its_trailing_bytes_are_split() {
        let raw = b"GET /socketcluster/?a=1&b=x%20y HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\nEXTRA";
        let mut reader = &raw[..];
        let (head, rest) = read_head(&mut reader, 16 * 1024).await.unwrap();
        assert_eq!(head.path, "/socketcluster/");
        assert_eq!(head.query_param("b").as_deref(), Some("x y"));
        assert!(head.header_has_token("connection", "upgrade"));
        assert_eq!(rest, b"EXTRA");
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 5000));
        let mut reader = &raw[..];
        assert!(matches!(
            read_head(&mut reader, 2048).await,
            Err(HeadError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_eof_is_closed() {
        let mut reader = &b"\x00\x01\x02 nonsense\r\n\r\n"[..];
        assert!(matches!(
            read_head(&mut reader, 2048).await,
            Err(HeadError::Malformed(_))
        ));
        let mut reader = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_head(&mut reader, 2048).await,
            Err(HeadError::Closed)
        ));
    }

    #[test]
    fn percent_decoding_tolerates_broken_escapes() {
        assert_eq!(percent_decode("s%3Aabc.def"), "s:abc.def");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
