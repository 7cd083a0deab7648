//! Just enough of the two client protocols to drive the scenarios.
//!
//! SocketCluster (shared/spec/socketcluster-protocol.md): `#handshake` invoke,
//! empty-text-frame pings answered with an empty frame, `#subscribe`,
//! `#publish`, `#setAuthToken`, invokes of app procedures (`{event, data, cid}`
//! answered by `{rid, data}`). Socket.IO v5 over Engine.IO v4
//! (shared/spec/socketio-protocol.md): open packet `0{..}`, CONNECT `40`,
//! ping `2` answered with `3`, events `42[..]` and acks `43..` (an event with
//! an ack id, `42<id>[name, data]`, is answered by `43<id>[result]`).
//!
//! Why hand-rolled instead of driving the npm clients: the generator must cost
//! less CPU per operation than the servers it measures, and a Node client per
//! socket would cost more than the Node servers themselves.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Which wire protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Protocol {
    /// SocketCluster, protocol v2, at `/socketcluster/`.
    #[value(name = "sc")]
    SocketCluster,
    /// Socket.IO v5 over Engine.IO v4, websocket transport only.
    #[value(name = "sio")]
    SocketIo,
}

impl Protocol {
    /// The request path (and query) of the WebSocket endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Protocol::SocketCluster => "/socketcluster/",
            Protocol::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// The short name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::SocketCluster => "sc",
            Protocol::SocketIo => "sio",
        }
    }
}

/// What a connection presents to prove who it is.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// Nothing (the bare server's ceiling).
    None,
    /// A `Cookie` header on the upgrade (express-session's `connect.sid`).
    Cookie(&'a str),
    /// A JWT in SocketCluster's `#handshake` `authToken` / Socket.IO's CONNECT `auth.token`.
    Jwt(&'a str),
}

/// When a handshake counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// At the protocol's handshake reply (no auth to wait for).
    Reply,
    /// Once the socket is authenticated as its client sees it: SocketCluster's
    /// reply says `isAuthenticated: true` for a JWT, or a `#setAuthToken` arrived
    /// for a cookie login; Socket.IO's CONNECT was accepted.
    Authenticated,
}

/// How the server refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An HTTP status instead of 101.
    Http(u16),
    /// A protocol error reply (SocketCluster error response, Socket.IO CONNECT_ERROR).
    ErrorReply(String),
    /// The socket was closed, with this close code if any.
    Closed(Option<u16>),
    /// The handshake succeeded but unauthenticated (soft mode).
    Unauthenticated,
}

/// The result of one connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The socket is up (and authenticated, if that was asked for).
    Accepted,
    /// The server refused it.
    Refused(Refusal),
}

/// A failure of the generator's own side or of the transport (not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP or WebSocket i/o failed.
    #[error("i/o: {0}")]
    Io(String),
    /// The peer sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Too slow.
    #[error("timed out")]
    Timeout,
}

impl From<WsError> for ClientError {
    fn from(error: WsError) -> Self {
        ClientError::Io(error.to_string())
    }
}

/// Something a held connection saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A channel message carrying its send timestamp (microseconds on the
    /// shared clock) and sequence number.
    Delivery {
        /// When it was published.
        stamp: u64,
        /// Which message it was.
        seq: u64,
    },
    /// Anything else (acks, auth tokens, events).
    Other,
    /// The socket ended.
    Closed,
}

/// One client connection.
pub struct Connection {
    socket: WebSocketStream<TcpStream>,
    protocol: Protocol,
    next_id: u64,
}

/// The JSON key that marks a benchmark message and carries its send time.
pub const STAMP_KEY: &str = "\"bt\":";

/// The JSON key of a benchmark message's sequence number.
pub const SEQ_KEY: &str = "\"k\":";

/// The decimal number right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..]
        .bytes()
        .take_while(|b| b.is_ascii_digit())
        .count();
    text[start..start + digits].parse().ok()
}

/// Reads the send timestamp out of a delivery frame without parsing the JSON:
/// fan-out sends millions of these and the generator must stay cheap.
pub fn delivery_stamp(text: &str) -> Option<u64> {
    number_after(text, STAMP_KEY)
}

/// The event packet SocketCluster clients send to publish.
pub fn publish_frame(protocol: Protocol, channel: &str, stamp: u64, seq: u64) -> String {
    let data = format!("{{{STAMP_KEY}{stamp},{SEQ_KEY}{seq}}}");
    let channel = Value::from(channel).to_string();
    match protocol {
        Protocol::SocketCluster => {
            format!(r##"{{"event":"#publish","data":{{"channel":{channel},"data":{data}}}}}"##)
        }
        Protocol::SocketIo => format!(r#"42["publish",{{"channel":{channel},"data":{data}}}]"#),
    }
}

/// What the server answered to one call of a procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallReply {
    /// The data came back unchanged (its sequence number matched).
    Echoed,
    /// An error reply (SocketCluster `{rid, error}`, or a Socket.IO ack carrying
    /// `{"error": ..}`), or a result that is not the data sent; the text is for the log.
    Wrong(String),
}

/// The data the `rpc` scenario sends: small, like a typical call's arguments,
/// and carrying its sequence number so the echo can be checked without parsing.
pub fn call_data(seq: u64) -> String {
    format!(r#"{{{SEQ_KEY}{seq},"text":"sockhive-bench echo"}}"#)
}

/// The frame that calls procedure `name` with `data` (JSON) and asks for an
/// answer: SocketCluster's invoke `{event, data, cid}`, Socket.IO's
/// `42<ack id>[name, data]` (ack ids start at 0 per socket, so `id - 1`).
pub fn call_frame(protocol: Protocol, id: u64, name: &str, data: &str) -> String {
    let name = Value::from(name).to_string();
    match protocol {
        Protocol::SocketCluster => format!(r#"{{"event":{name},"data":{data},"cid":{id}}}"#),
        Protocol::SocketIo => format!("42{}[{name},{data}]", id.saturating_sub(1)),
    }
}

/// Reads `text` as the answer to call `id` carrying `seq`; `None` when it is
/// some other frame (a heartbeat, an event, a late answer to another call).
pub fn call_reply(protocol: Protocol, id: u64, seq: u64, text: &str) -> Option<CallReply> {
    let echoed = |data: &str| number_after(data, SEQ_KEY) == Some(seq);
    match protocol {
        Protocol::SocketCluster => {
            // Cheap pre-check before parsing: every answer names its rid.
            if !text.contains("\"rid\"") {
                return None;
            }
            let packet: Value = serde_json::from_str(text).ok()?;
            if packet["rid"].as_u64() != Some(id) {
                return None;
            }
            if let Some(error) = packet.get("error") {
                return Some(CallReply::Wrong(format!("error reply {error}")));
            }
            let data = packet.get("data").map(Value::to_string).unwrap_or_default();
            Some(if echoed(&data) {
                CallReply::Echoed
            } else {
                CallReply::Wrong(format!("not the data sent: {data}"))
            })
        }
        Protocol::SocketIo => {
            let rest = text
                .strip_prefix("43")?
                .strip_prefix(id.saturating_sub(1).to_string().as_str())?;
            if !rest.starts_with('[') {
                return None;
            }
            Some(if echoed(rest) {
                CallReply::Echoed
            } else {
                CallReply::Wrong(format!("ack {rest}"))
            })
        }
    }
}

/// Lets `connect` pick the local port, not `bind` (`IP_BIND_ADDRESS_NO_PORT`):
/// a port chosen at bind time must be free for every destination, and the
/// kernel's search for one grew with every socket the scale run held (perf:
/// most of the machine in `inet_bhash2_conflict` past 50,000 sockets).
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor this socket owns, reading one c_int
    // that lives across the call; failure only means the slower bind path.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn close_code(frame: &Option<CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}

impl Connection {
    /// TCP connect and WebSocket upgrade, from the local address `source`
    /// when given; an HTTP refusal is an `Err(Ok(status))`. Why a source: one
    /// source address has about 28,000 ephemeral ports towards one server
    /// port, so the scale run spreads its sockets over several loopback
    /// addresses (127.0.0.0/8 is all loopback).
    pub async fn open(
        source: Option<IpAddr>,
        addr: SocketAddr,
        protocol: Protocol,
        credential: Credential<'_>,
    ) -> Result<Result<Connection, Refusal>, ClientError> {
        let connecting = async {
            match source {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = match ip {
                        IpAddr::V4(_) => TcpSocket::new_v4()?,
                        IpAddr::V6(_) => TcpSocket::new_v6()?,
                    };
                    defer_port_choice(&socket);
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let stream = connecting
            .await
            .map_err(|e| ClientError::Io(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{addr}{}", protocol.path());
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Credential::Cookie(cookie) = credential {
            let value =
                HeaderValue::from_str(cookie).map_err(|e| ClientError::Protocol(e.to_string()))?;
            request.headers_mut().insert("cookie", value);
        }
        // Small read buffers: ten thousand held sockets must not cost the
        // generator more memory than the servers it measures.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _response)) => Ok(Ok(Connection {
                socket,
                protocol,
                next_id: 1,
            })),
            Err(WsError::Http(response)) => Ok(Err(Refusal::Http(response.status().as_u16()))),
            // socket.io's engine middlewares refuse an upgrade by destroying the
            // socket without any HTTP answer: the connection ends mid-handshake.
            Err(WsError::Protocol(ProtocolError::HandshakeIncomplete) | WsError::Io(_)) => {
                Ok(Err(Refusal::Closed(None)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), ClientError> {
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Answers a heartbeat frame; returns whether `text` was one.
    async fn answer_ping(&mut self, text: &str) -> Result<bool, ClientError> {
        match (self.protocol, text) {
            (Protocol::SocketCluster, "") => self.send_text("").await.map(|_| true),
            (Protocol::SocketIo, "2") => self.send_text("3").await.map(|_| true),
            _ => Ok(false),
        }
    }

    /// Next text frame, or why there is none.
    async fn next_text(&mut self) -> Result<Result<Utf8Bytes, Refusal>, ClientError> {
        loop {
            match self.socket.next().await {
                None => return Ok(Err(Refusal::Closed(None))),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(Err(Refusal::Closed(None)))
                }
                Some(Err(WsError::Protocol(_) | WsError::Io(_))) => {
                    return Ok(Err(Refusal::Closed(None)))
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => return Ok(Ok(text)),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Err(Refusal::Closed(close_code(&frame))))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Runs the protocol handshake and waits until `completion` holds.
    pub async fn handshake(
        &mut self,
        credential: Credential<'_>,
        completion: Completion,
    ) -> Result<Outcome, ClientError> {
        match self.protocol {
            Protocol::SocketCluster => self.handshake_sc(credential, completion).await,
            Protocol::SocketIo => self.handshake_sio(credential).await,
        }
    }

    async fn handshake_sc(
        &mut self,
        credential: Credential<'_>,
        completion: Completion,
    ) -> Result<Outcome, ClientError> {
        let token = match credential {
            Credential::Jwt(jwt) => Value::from(jwt),
            _ => Value::Null,
        };
        let cid = self.next_id;
        self.next_id += 1;
        let frame =
            serde_json::json!({"event": "#handshake", "data": {"authToken": token}, "cid": cid});
        self.send_text(frame.to_string()).await?;
        let wants_token = matches!(credential, Credential::Cookie(_));
        let mut replied_authenticated: Option<bool> = None;
        let mut token_seen = false;
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(refusal) => return Ok(Outcome::Refused(refusal)),
            };
            if self.answer_ping(&text).await? {
                continue;
            }
            let Ok(packet) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if packet["rid"].as_u64() == Some(cid) {
                if let Some(error) = packet.get("error") {
                    let name = error["name"].as_str().unwrap_or("error").to_string();
                    return Ok(Outcome::Refused(Refusal::ErrorReply(name)));
                }
                let authenticated = packet["data"]["isAuthenticated"].as_bool() == Some(true);
                if let Some(error) = packet["data"].get("authError") {
                    if !error.is_null() {
                        return Ok(Outcome::Refused(Refusal::Unauthenticated));
                    }
                }
                replied_authenticated = Some(authenticated);
            } else if packet["event"] == "#setAuthToken" {
                token_seen = true;
            } else if packet["event"] == "#removeAuthToken" {
                return Ok(Outcome::Refused(Refusal::Unauthenticated));
            }
            let Some(authenticated) = replied_authenticated else {
                continue;
            };
            let done = match completion {
                Completion::Reply => true,
                Completion::Authenticated if wants_token => token_seen,
                Completion::Authenticated => authenticated || token_seen,
            };
            if done {
                return Ok(Outcome::Accepted);
            }
        }
    }

    async fn handshake_sio(&mut self, credential: Credential<'_>) -> Result<Outcome, ClientError> {
        // The server speaks first: Engine.IO's open packet.
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(refusal) => return Ok(Outcome::Refused(refusal)),
            };
            if text.starts_with('0') {
                break;
            }
            if !self.answer_ping(&text).await? {
                return Err(ClientError::Protocol(format!(
                    "expected open packet, got {text:?}"
                )));
            }
        }
        let connect = match credential {
            Credential::Jwt(jwt) => format!("40{}", serde_json::json!({"token": jwt})),
            _ => "40".to_string(),
        };
        self.send_text(connect).await?;
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(refusal) => return Ok(Outcome::Refused(refusal)),
            };
            if self.answer_ping(&text).await? {
                continue;
            }
            if text.starts_with("40") {
                return Ok(Outcome::Accepted);
            }
            if let Some(error) = text.strip_prefix("44") {
                let name = serde_json::from_str::<Value>(error)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "connect_error".into());
                return Ok(Outcome::Refused(Refusal::ErrorReply(name)));
            }
            if text.starts_with("41") || text.starts_with('1') {
                return Ok(Outcome::Refused(Refusal::Closed(None)));
            }
        }
    }

    /// Subscribes to `channel` and waits for the server's acknowledgement.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let channel_json = Value::from(channel).to_string();
        let (frame, ack_prefix) = match self.protocol {
            Protocol::SocketCluster => (
                format!(
                    r##"{{"event":"#subscribe","data":{{"channel":{channel_json}}},"cid":{id}}}"##
                ),
                String::new(),
            ),
            // Socket.IO ack ids start at 0 per socket.
            Protocol::SocketIo => (
                format!(r#"42{}["subscribe",{channel_json}]"#, id - 1),
                format!("43{}", id - 1),
            ),
        };
        self.send_text(frame).await?;
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(refusal) => {
                    return Err(ClientError::Protocol(format!(
                        "closed while subscribing: {refusal:?}"
                    )))
                }
            };
            if self.answer_ping(&text).await? {
                continue;
            }
            match self.protocol {
                Protocol::SocketCluster => {
                    let Ok(packet) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if packet["rid"].as_u64() == Some(id) {
                        return match packet.get("error") {
                            Some(error) => {
                                Err(ClientError::Protocol(format!("subscribe refused: {error}")))
                            }
                            None => Ok(()),
                        };
                    }
                }
                Protocol::SocketIo => {
                    if let Some(rest) = text.strip_prefix(ack_prefix.as_str()) {
                        if rest.starts_with('[') {
                            if rest.contains("\"error\"") {
                                return Err(ClientError::Protocol(format!(
                                    "subscribe refused: {rest}"
                                )));
                            }
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Calls procedure `name` with `data` (JSON carrying `"k": seq`) and waits
    /// for its answer, answering heartbeats and skipping other frames meanwhile.
    pub async fn call(
        &mut self,
        name: &str,
        data: &str,
        seq: u64,
    ) -> Result<CallReply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(call_frame(self.protocol, id, name, data))
            .await?;
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(refusal) => {
                    return Err(ClientError::Io(format!(
                        "closed while waiting for an answer: {refusal:?}"
                    )))
                }
            };
            if self.answer_ping(&text).await? {
                continue;
            }
            if let Some(reply) = call_reply(self.protocol, id, seq, &text) {
                return Ok(reply);
            }
        }
    }

    /// Sends one publish of a stamped benchmark message (fire and forget).
    pub async fn publish(
        &mut self,
        channel: &str,
        stamp: u64,
        seq: u64,
    ) -> Result<(), ClientError> {
        let frame = publish_frame(self.protocol, channel, stamp, seq);
        self.send_text(frame).await
    }

    /// Waits for the next frame that is not a heartbeat, answering heartbeats.
    pub async fn next_seen(&mut self) -> Result<Seen, ClientError> {
        loop {
            let text = match self.next_text().await? {
                Ok(text) => text,
                Err(_) => return Ok(Seen::Closed),
            };
            if self.answer_ping(&text).await? {
                continue;
            }
            return Ok(match delivery_stamp(&text) {
                Some(stamp) => Seen::Delivery {
                    stamp,
                    seq: number_after(&text, SEQ_KEY).unwrap_or(0),
                },
                None => Seen::Other,
            });
        }
    }

    /// Closes the way a client's `disconnect()` does and waits briefly for the echo.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        };
        if self.socket.close(Some(frame)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_deliveries() {
        let sc = r##"{"event":"#publish","data":{"channel":"bench","data":{"bt":123456,"k":3}}}"##;
        assert_eq!(delivery_stamp(sc), Some(123456));
        let sio = r#"42["publish",{"channel":"bench","data":{"bt":77,"k":0}}]"#;
        assert_eq!(delivery_stamp(sio), Some(77));
        assert_eq!(delivery_stamp(r#"{"rid":2}"#), None);
        assert_eq!(delivery_stamp(r#"{"bt":x}"#), None);
        assert_eq!(number_after(sio, SEQ_KEY), Some(0));
    }

    #[test]
    fn call_frames_and_replies_match_up() {
        let data = call_data(17);
        let sc = call_frame(Protocol::SocketCluster, 5, "echo", &data);
        let parsed: Value = serde_json::from_str(&sc).expect("valid JSON");
        assert_eq!(parsed["event"], "echo");
        assert_eq!(parsed["cid"], 5);
        assert_eq!(parsed["data"]["k"], 17);
        let answer = format!(r#"{{"rid":5,"data":{data}}}"#);
        let sc = Protocol::SocketCluster;
        assert_eq!(call_reply(sc, 5, 17, &answer), Some(CallReply::Echoed));
        assert_eq!(call_reply(sc, 6, 17, &answer), None);
        assert!(matches!(
            call_reply(sc, 5, 18, &answer),
            Some(CallReply::Wrong(_))
        ));
        let error = r#"{"rid":5,"error":{"name":"HookUnavailableError","message":"x"}}"#;
        assert!(matches!(
            call_reply(sc, 5, 17, error),
            Some(CallReply::Wrong(text)) if text.contains("HookUnavailableError")
        ));
        assert_eq!(call_reply(sc, 5, 17, ""), None);
        assert_eq!(
            call_reply(sc, 5, 17, r##"{"event":"#setAuthToken"}"##),
            None
        );

        let sio = Protocol::SocketIo;
        let frame = call_frame(sio, 12, "echo", &data);
        assert_eq!(frame, format!(r#"4211["echo",{data}]"#));
        let parsed: Value = serde_json::from_str(&frame[4..]).expect("valid JSON");
        assert_eq!(parsed[1]["k"], 17);
        assert_eq!(
            call_reply(sio, 12, 17, &format!("4311[{data}]")),
            Some(CallReply::Echoed)
        );
        // Ack 1 is not ack 11, nor is 110.
        assert_eq!(call_reply(sio, 2, 17, &format!("4311[{data}]")), None);
        assert_eq!(call_reply(sio, 12, 17, &format!("43110[{data}]")), None);
        assert!(matches!(
            call_reply(
                sio,
                12,
                17,
                r#"4311[{"error":{"name":"HookTimeoutError"}}]"#
            ),
            Some(CallReply::Wrong(_))
        ));
        assert_eq!(call_reply(sio, 12, 17, "2"), None);
    }

    #[test]
    fn publish_frames_round_trip_their_stamp() {
        for protocol in [Protocol::SocketCluster, Protocol::SocketIo] {
            let frame = publish_frame(protocol, "bench", 42, 7);
            assert_eq!(delivery_stamp(&frame), Some(42));
        }
        let sc: Value = serde_json::from_str(&publish_frame(Protocol::SocketCluster, "a\"b", 1, 2))
            .expect("valid JSON");
        assert_eq!(sc["data"]["channel"], "a\"b");
        assert_eq!(sc["data"]["data"]["k"], 2);
        let sio = publish_frame(Protocol::SocketIo, "c", 1, 2);
        let sio: Value = serde_json::from_str(&sio[2..]).expect("valid JSON");
        assert_eq!(sio[0], "publish");
        assert_eq!(sio[1]["data"]["bt"], 1);
    }
}
