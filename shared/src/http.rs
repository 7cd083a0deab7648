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

    /// The token of `Authorization: Bearer <token>`, the one parser both ports
    /// use: the scheme matches in any case (RFC 7235 2.1: `bearer`, `BEARER`),
    /// whitespace around the token is dropped. `None` without the header or
    /// with another scheme (`Basic ...`); `Some("")` for the scheme alone, so
    /// a presented but empty credential is refused rather than ignored.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim();
        let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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

/// Splits a `NAME: VALUE` header line as an operator writes it on the command
/// line (`--user-lookup-header "Authorization: Bearer s3cret"`). The name must
/// be an HTTP token and neither part may hold CR or LF, so a configured value
/// can never add lines to the request it is sent in.
pub fn parse_header_line(line: &str) -> Result<(String, String), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("`{line}` is not `NAME: VALUE`"))?;
    let name = name.trim();
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("`{name}` is not a header name"));
    }
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "the value of header `{name}` holds control characters"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Decodes `%XX` escapes and `+` (form encoding, as `URLSearchParams` writes spaces).
/// A `%` not followed by two hex digits stays a literal `%`, as in `URLSearchParams`.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Digit by digit: `u8::from_str_radix` would also take a sign (`%+6`).
                let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(high), Some(low)) => {
                        // Two hex digits make at most 0xff.
                        out.push((high * 16 + low) as u8);
                        i += 3;
                    }
                    _ => {
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

/// Longest chunk-size line (with extensions) or trailer line of a chunked body.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// Most trailer bytes a chunked body may end with (they are read and dropped).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Reads a request body, refusing more than `max_bytes` of it: exactly
/// `Content-Length` bytes, or a `Transfer-Encoding: chunked` body decoded
/// (curl, fetch with a stream and most HTTP libraries send one when they do
/// not know the length up front). No length at all is an empty body.
pub async fn read_body<S>(
    stream: &mut S,
    head: &RequestHead,
    mut already: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, HeadError>
where
    S: AsyncRead + Unpin,
{
    if let Some(coding) = head.header("transfer-encoding") {
        // Both framings at once is how requests get smuggled past proxies
        // (RFC 9112 6.3): refuse instead of picking one.
        if head.header("content-length").is_some() {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        if !coding.trim().eq_ignore_ascii_case("chunked") {
            return Err(HeadError::Malformed(format!(
                "unsupported Transfer-Encoding {coding:?} (only chunked)"
            )));
        }
        return read_chunked(stream, already, max_bytes).await;
    }
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

async fn read_chunked<S>(
    stream: &mut S,
    already: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, HeadError>
where
    S: AsyncRead + Unpin,
{
    let mut decoder = ChunkedDecoder::new(max_bytes);
    let mut input = already;
    let mut buf = [0u8; 8192];
    loop {
        if decoder.feed(&input)? {
            return Ok(decoder.into_body());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(HeadError::Malformed("chunked body ended early".into()));
        }
        input.clear();
        input.extend_from_slice(&buf[..n]);
    }
}

/// Where a [`ChunkedDecoder`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a `chunk-size [; ext]` line.
    Size,
    /// Copying chunk data; this many bytes are left.
    Data(usize),
    /// The CRLF after chunk data; this many of its bytes have been seen.
    DataEnd(u8),
    /// Reading trailer lines after the last (zero) chunk; an empty one ends the body.
    Trailer,
    /// The body is complete; later bytes are not ours.
    Done,
}

/// Decodes `Transfer-Encoding: chunked` (RFC 9112 7.1) as bytes arrive, so a
/// large body is scanned once. Hostile input ends in an error, never in
/// unbounded memory: lines, trailers and the decoded body all have caps.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// The current size or trailer line, until its CRLF.
    line: Vec<u8>,
    /// Trailer bytes seen, against [`MAX_TRAILER_BYTES`].
    trailer_bytes: usize,
    body: Vec<u8>,
    max_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies over `max_bytes` (decoded size).
    pub fn new(max_bytes: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            body: Vec::new(),
            max_bytes,
        }
    }

    /// Takes the next bytes of the body; `Ok(true)` once the body is complete.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<bool, HeadError> {
        while !input.is_empty() && self.state != ChunkState::Done {
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(line) = self.take_line(&mut input)? else {
                        continue;
                    };
                    self.state = match self.state {
                        ChunkState::Size => match chunk_size(&line)? {
                            0 => ChunkState::Trailer,
                            size if size > self.max_bytes - self.body.len() => {
                                return Err(HeadError::TooLarge(self.max_bytes))
                            }
                            size => ChunkState::Data(size),
                        },
                        _ if line.is_empty() => ChunkState::Done,
                        _ => {
                            self.trailer_bytes += line.len() + 2;
                            if self.trailer_bytes > MAX_TRAILER_BYTES {
                                return Err(HeadError::TooLarge(MAX_TRAILER_BYTES));
                            }
                            ChunkState::Trailer
                        }
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    self.body.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = match left - take {
                        0 => ChunkState::DataEnd(0),
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd(seen) => {
                    let expected = if seen == 0 { b'\r' } else { b'\n' };
                    if input[0] != expected {
                        return Err(HeadError::Malformed(
                            "chunk data is not followed by CRLF".into(),
                        ));
                    }
                    input = &input[1..];
                    self.state = if seen == 0 {
                        ChunkState::DataEnd(1)
                    } else {
                        ChunkState::Size
                    };
                }
                ChunkState::Done => {}
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    /// The decoded body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Moves bytes into the current line; the line without its CRLF once complete.
    fn take_line(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, HeadError> {
        let (part, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(end) => (&input[..=end], true),
            None => (*input, false),
        };
        if self.line.len() + part.len() > MAX_CHUNK_LINE_BYTES {
            return Err(HeadError::Malformed("chunk line too long".into()));
        }
        self.line.extend_from_slice(part);
        *input = &input[part.len()..];
        if !complete {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.pop() != Some(b'\r') {
            return Err(HeadError::Malformed("chunk line without CRLF".into()));
        }
        Ok(Some(line))
    }
}

/// The size of a `chunk-size [; ext]` line: hex digits only (no sign, no
/// `0x`), whitespace allowed before the extensions.
fn chunk_size(line: &[u8]) -> Result<usize, HeadError> {
    let bad = || HeadError::Malformed("bad chunk size".into());
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    digits.iter().try_fold(0usize, |size, &digit| {
        let value = (digit as char).to_digit(16).ok_or_else(bad)? as usize;
        size.checked_mul(16)
            .and_then(|size| size.checked_add(value))
            .ok_or_else(|| HeadError::Malformed("chunk size overflows".into()))
    })
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

    fn head_with(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            path: "/api/sockets/query".into(),
            query: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    async fn body_of(
        headers: &[(&str, &str)],
        raw: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, HeadError> {
        let head = head_with(headers);
        let mut reader = raw;
        read_body(&mut reader, &head, Vec::new(), max).await
    }

    const CHUNKED: (&str, &str) = ("Transfer-Encoding", "chunked");

    #[tokio::test]
    async fn a_chunked_body_is_decoded() {
        let raw = b"7\r\n{\"filte\r\nA;name=value\r\nr\": {}}   \r\n0\r\n\r\n";
        let body = body_of(&[CHUNKED], raw, 1024).await.unwrap();
        assert_eq!(body, b"{\"filter\": {}}   ");
        // Upper-case hex, trailers, and the part already read with the head.
        let head = head_with(&[("transfer-encoding", "Chunked")]);
        let mut rest = &b"\r\n0\r\nX-Trailer: 1\r\n\r\nIGNORED"[..];
        let body = read_body(&mut rest, &head, b"A\r\n0123456789".to_vec(), 1024)
            .await
            .unwrap();
        assert_eq!(body, b"0123456789");
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let raw = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: x\r\n\r\n";
        for split in 0..=raw.len() {
            let mut decoder = ChunkedDecoder::new(1024);
            let mut done = decoder.feed(&raw[..split]).unwrap();
            if !done {
                for byte in &raw[split..] {
                    assert!(!done, "done before the end at split {split}");
                    done = decoder.feed(std::slice::from_ref(byte)).unwrap();
                }
            }
            assert!(done, "split {split}");
            assert_eq!(decoder.into_body(), b"abc0123456789abcdef");
        }
    }

    #[tokio::test]
    async fn hostile_chunked_bodies_are_refused() {
        for bad_size in ["zz", "+5", "0x5", "", " 5", "-1", "5 5"] {
            let raw = format!("{bad_size}\r\nhello\r\n0\r\n\r\n");
            assert!(
                matches!(
                    body_of(&[CHUNKED], raw.as_bytes(), 1024).await,
                    Err(HeadError::Malformed(_))
                ),
                "{bad_size:?}"
            );
        }
        // Over the limit in one chunk, across chunks, and by a size that overflows.
        assert!(matches!(
            body_of(&[CHUNKED], b"401\r\n", 1024).await,
            Err(HeadError::TooLarge(1024))
        ));
        let mut many = Vec::new();
        for _ in 0..3 {
            many.extend_from_slice(b"200\r\n");
            many.extend(std::iter::repeat_n(b'x', 0x200));
            many.extend_from_slice(b"\r\n");
        }
        assert!(matches!(
            body_of(&[CHUNKED], &many, 1024).await,
            Err(HeadError::TooLarge(1024))
        ));
        assert!(matches!(
            body_of(&[CHUNKED], b"fffffffffffffffffffff\r\n", 1024).await,
            Err(HeadError::Malformed(_))
        ));
        // Truncated: in the data, in a size line, before the final CRLF.
        for truncated in [&b"5\r\nhel"[..], b"5", b"5\r\nhello\r\n0\r\n"] {
            assert!(
                matches!(
                    body_of(&[CHUNKED], truncated, 1024).await,
                    Err(HeadError::Malformed(_))
                ),
                "{truncated:?}"
            );
        }
        // Data longer than its size, a bare LF, an endless size line, endless trailers.
        assert!(matches!(
            body_of(&[CHUNKED], b"2\r\nhello\r\n0\r\n\r\n", 1024).await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            body_of(&[CHUNKED], b"2\nhi\r\n0\r\n\r\n", 1024).await,
            Err(HeadError::Malformed(_))
        ));
        let endless = vec![b'1'; 10_000];
        assert!(matches!(
            body_of(&[CHUNKED], &endless, 1 << 20).await,
            Err(HeadError::Malformed(_))
        ));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..1000 {
            trailers.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            body_of(&[CHUNKED], &trailers, 1024).await,
            Err(HeadError::TooLarge(_))
        ));
        // Two framings (request smuggling) and codings we do not speak.
        assert!(matches!(
            body_of(&[CHUNKED, ("Content-Length", "5")], b"0\r\n\r\n", 1024).await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            body_of(
                &[("Transfer-Encoding", "gzip, chunked")],
                b"0\r\n\r\n",
                1024
            )
            .await,
            Err(HeadError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn content_length_bodies_still_read_as_before() {
        let body = body_of(&[("Content-Length", "2")], b"{}extra", 1024).await;
        assert_eq!(body.unwrap(), b"{}");
        assert_eq!(body_of(&[], b"ignored", 1024).await.unwrap(), b"");
        assert!(matches!(
            body_of(&[("Content-Length", "2048")], b"", 1024).await,
            Err(HeadError::TooLarge(1024))
        ));
    }

    #[test]
    fn bearer_tokens_parse_in_any_scheme_case() {
        let token = |value: &str| {
            head_with(&[("Authorization", value)])
                .bearer_token()
                .map(str::to_owned)
        };
        for value in [
            "Bearer abc.def",
            "bearer abc.def",
            "BEARER abc.def",
            "bEaReR   abc.def  ",
            "  Bearer\tabc.def",
        ] {
            assert_eq!(token(value).as_deref(), Some("abc.def"), "{value:?}");
        }
        assert_eq!(token("Bearer").as_deref(), Some(""));
        assert_eq!(token("Bearer   ").as_deref(), Some(""));
        assert_eq!(token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(token("Bearerabc"), None);
        assert_eq!(token("Token abc"), None);
        assert_eq!(head_with(&[]).bearer_token(), None);
    }

    #[test]
    fn header_lines_split_and_refuse_injection() {
        assert_eq!(
            parse_header_line("Authorization: Bearer s3cret"),
            Ok(("Authorization".into(), "Bearer s3cret".into()))
        );
        assert_eq!(
            parse_header_line("X-Api-Key:k:with:colons "),
            Ok(("X-Api-Key".into(), "k:with:colons".into()))
        );
        assert_eq!(
            parse_header_line("X-Empty:"),
            Ok(("X-Empty".into(), "".into()))
        );
        for bad in [
            "no colon",
            ": value",
            "Bad Name: v",
            "X-A: v\r\nX-Injected: 1",
            "X-A: v\nGET / HTTP/1.1",
            "X\r\nY: v",
        ] {
            assert!(parse_header_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding_tolerates_broken_escapes() {
        assert_eq!(percent_decode("s%3Aabc.def"), "s:abc.def");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    /// From fuzz/http_head: `%` must be followed by two hex digits, not by anything
    /// `u8::from_str_radix` accepts; `URLSearchParams` reads `%+6` as `% 6`.
    #[test]
    fn percent_decoding_takes_only_hex_digits() {
        assert_eq!(percent_decode("%+6"), "% 6");
        assert_eq!(percent_decode("%-6"), "%-6");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%4a%4A"), "AJJ");
        assert_eq!(percent_decode("a%e2%82%ac"), "a€");
        assert_eq!(percent_decode("%%41"), "%A");
    }
}
