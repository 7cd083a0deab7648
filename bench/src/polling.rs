//! Socket.IO v5 over Engine.IO v4 HTTP long-polling, as `socket.io-client@4`
//! speaks it with its default options (before any upgrade), hand-rolled for
//! the same reason as `client`: the generator must stay cheaper than the
//! servers it measures.
//!
//! One HTTP/1.1 request per TCP connection (`Connection: close`), for every
//! server alike: sockhive closes the connection after every answer, and
//! socket.io is asked to do the same, so both are measured doing the same
//! work. The generator reads every answer to the end of the stream, so the
//! server closes first (its side keeps the TIME_WAIT, not the generator's
//! ephemeral ports).
//!
//! Requests: `GET /socket.io/?EIO=4&transport=polling` (the handshake: the
//! open packet `0{"sid",..}`), then with `&sid=<sid>`: `POST` carrying the
//! client's packets joined by `\x1e` (answered `ok`), and one held `GET` at a
//! time, answered with the packets the socket wrote, joined by `\x1e`. The
//! session cookie goes on every request, as `extraHeaders: {Cookie}` (or a
//! browser) sends it; both servers read it only on the handshake.
//!
//! Stickiness is the caller's: a [`PollingSocket`] keeps the address its
//! handshake went to for its whole session.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{ClientError, Credential, Outcome, Refusal};

/// The request path of a polling handshake.
pub const HANDSHAKE_PATH: &str = "/socket.io/?EIO=4&transport=polling";

/// Engine.IO v4's packet separator in a polling payload.
pub const SEPARATOR: char = '\x1e';

/// Largest answer the generator reads (a burst of deliveries batched into one
/// `GET` answer stays far below this).
const MAX_ANSWER: usize = 8 << 20;

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// Splits a raw HTTP/1.1 answer into status and body (`Content-Length`
/// honoured when present; otherwise the body is everything up to the close).
pub fn parse_answer(raw: &[u8]) -> Result<Answer, ClientError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no HTTP head in the answer".into()))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| ClientError::Protocol("HTTP head is not UTF-8".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("not an HTTP status line: {head:.40}")))?;
    let mut body = &raw[end + 4..];
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if let Some(length) = length {
        if body.len() < length {
            return Err(ClientError::Io(format!(
                "answer cut short: {} of {length} body bytes",
                body.len()
            )));
        }
        body = &body[..length];
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// One request on its own connection; reads the answer to the end of the stream.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> Result<Answer, ClientError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Io(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        text.push_str("Cookie: ");
        text.push_str(cookie);
        text.push_str("\r\n");
    }
    if let Some(body) = body {
        text.push_str("Content-Type: text/plain;charset=UTF-8\r\n");
        text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        text.push_str(body);
    } else {
        text.push_str("\r\n");
    }
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| ClientError::Io(format!("write: {e}")))?;
    let mut raw = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > MAX_ANSWER {
                    return Err(ClientError::Protocol("answer too large".into()));
                }
            }
            // A reset after a complete answer still leaves a usable answer.
            Err(e) if raw.is_empty() => return Err(ClientError::Io(format!("read: {e}"))),
            Err(_) => break,
        }
    }
    if raw.is_empty() {
        return Err(ClientError::Io("closed without an answer".into()));
    }
    parse_answer(&raw)
}

/// The packets of a polling payload.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(SEPARATOR).filter(|p| !p.is_empty())
}

/// The `sid` of an Engine.IO open packet (`0{"sid":..}`).
pub fn open_sid(packet: &str) -> Option<String> {
    let json: Value = serde_json::from_str(packet.strip_prefix('0')?).ok()?;
    json["sid"].as_str().map(str::to_string)
}

/// The CONNECT packet for `credential` (a JWT rides in `auth.token`).
pub fn connect_packet(credential: Credential<'_>) -> String {
    match credential {
        Credential::Jwt(jwt) => format!("40{}", serde_json::json!({"token": jwt})),
        _ => "40".to_string(),
    }
}

/// A Socket.IO session over long-polling, pinned to one address.
pub struct PollingSocket {
    addr: SocketAddr,
    path: String,
    cookie: Option<String>,
    next_ack: u64,
    pending: VecDeque<String>,
    /// HTTP requests this socket made (handshake included).
    pub requests: u64,
}

/// What a held `GET` loop saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// One packet the socket wrote (pings are answered and not returned).
    Packet(String),
    /// The session ended (a `1` close packet, or an Engine.IO error answer).
    Closed(String),
}

impl PollingSocket {
    /// Handshake `GET`, `POST` of the CONNECT, then `GET`s until the CONNECT
    /// reply: the socket is then authenticated as its client sees it.
    pub async fn connect(
        addr: SocketAddr,
        credential: Credential<'_>,
    ) -> Result<(Outcome, Option<PollingSocket>), ClientError> {
        let cookie = match credential {
            Credential::Cookie(cookie) => Some(cookie.to_string()),
            _ => None,
        };
        let open = request(addr, "GET", HANDSHAKE_PATH, cookie.as_deref(), None).await?;
        if open.status != 200 {
            return Ok((Outcome::Refused(Refusal::Http(open.status)), None));
        }
        let mut packets = split_payload(&open.body);
        let sid = packets
            .next()
            .and_then(open_sid)
            .ok_or_else(|| ClientError::Protocol(format!("no open packet: {:.80}", open.body)))?;
        let mut socket = PollingSocket {
            addr,
            path: format!("{HANDSHAKE_PATH}&sid={sid}"),
            cookie,
            next_ack: 0,
            pending: packets.map(str::to_string).collect(),
            requests: 1,
        };
        socket.post(&connect_packet(credential)).await?;
        loop {
            let packet = match socket.next_packet().await? {
                Polled::Packet(packet) => packet,
                Polled::Closed(_) => return Ok((Outcome::Refused(Refusal::Closed(None)), None)),
            };
            if packet.starts_with("40") {
                return Ok((Outcome::Accepted, Some(socket)));
            }
            if let Some(error) = packet.strip_prefix("44") {
                let name = serde_json::from_str::<Value>(error)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "connect_error".into());
                return Ok((Outcome::Refused(Refusal::ErrorReply(name)), None));
            }
            if packet.starts_with("41") {
                return Ok((Outcome::Refused(Refusal::Closed(None)), None));
            }
        }
    }

    /// Sends `payload` (packets already joined) in one `POST`; expects `ok`.
    pub async fn post(&mut self, payload: &str) -> Result<(), ClientError> {
        self.requests += 1;
        let answer = request(
            self.addr,
            "POST",
            &self.path,
            self.cookie.as_deref(),
            Some(payload),
        )
        .await?;
        if answer.status == 200 && answer.body == "ok" {
            Ok(())
        } else {
            Err(ClientError::Protocol(format!(
                "POST answered {} {:.80}",
                answer.status, answer.body
            )))
        }
    }

    /// The next packet the socket wrote: from the last `GET`'s answer, or
    /// from a new held `GET`. Pings are answered with a `POST` of `3`.
    pub async fn next_packet(&mut self) -> Result<Polled, ClientError> {
        loop {
            while let Some(packet) = self.pending.pop_front() {
                match packet.as_str() {
                    "2" => self.post("3").await?,
                    "1" => return Ok(Polled::Closed("close packet".into())),
                    "6" => {}
                    _ => return Ok(Polled::Packet(packet)),
                }
            }
            self.requests += 1;
            let answer =
                request(self.addr, "GET", &self.path, self.cookie.as_deref(), None).await?;
            if answer.status != 200 {
                return Ok(Polled::Closed(format!(
                    "GET answered {} {:.80}",
                    answer.status, answer.body
                )));
            }
            self.pending
                .extend(split_payload(&answer.body).map(str::to_string));
        }
    }

    /// Joins `channel` (sockhive's Socket.IO channel contract, which the
    /// socket.io peer implements too) and waits for its ack.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let channel = Value::from(channel).to_string();
        self.post(&format!(r#"42{id}["subscribe",{channel}]"#))
            .await?;
        let ack = format!("43{id}[");
        loop {
            match self.next_packet().await? {
                Polled::Packet(packet) if packet.starts_with(&ack) => {
                    return if packet.contains("\"error\"") {
                        Err(ClientError::Protocol(format!(
                            "subscribe refused: {packet}"
                        )))
                    } else {
                        Ok(())
                    };
                }
                Polled::Packet(_) => {}
                Polled::Closed(why) => {
                    return Err(ClientError::Protocol(format!(
                        "closed while subscribing: {why}"
                    )))
                }
            }
        }
    }

    /// Ends the session as `socket.disconnect()` does over polling: the
    /// Socket.IO DISCONNECT and the Engine.IO close in one `POST`.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.post(&format!("41{SEPARATOR}1")),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_with_and_without_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 2\r\nConnection: close\r\n\r\nokJUNK";
        assert_eq!(
            parse_answer(raw).expect("ok"),
            Answer {
                status: 200,
                body: "ok".into()
            }
        );
        let raw = b"HTTP/1.1 400 Bad Request\r\n\r\n{\"code\":1}";
        let answer = parse_answer(raw).expect("ok");
        assert_eq!((answer.status, answer.body.as_str()), (400, "{\"code\":1}"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn payloads_and_open_packets() {
        let body = "0{\"sid\":\"abc\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000}\x1e40{\"sid\":\"x\"}";
        let packets: Vec<&str> = split_payload(body).collect();
        assert_eq!(packets.len(), 2);
        assert_eq!(open_sid(packets[0]).as_deref(), Some("abc"));
        assert_eq!(open_sid(packets[1]), None);
        assert_eq!(split_payload("").count(), 0);
        assert_eq!(connect_packet(Credential::Cookie("c")), "40");
        assert_eq!(connect_packet(Credential::Jwt("t")), r#"40{"token":"t"}"#);
    }
}
