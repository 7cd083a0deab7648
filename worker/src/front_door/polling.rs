//! Socket.IO over HTTP long-polling (Engine.IO v4), as `socket.io-client@4`
//! starts with its default options: the handshake `GET`, held `GET`s that
//! carry what the socket wrote, `POST`s with what the client sends, CORS for
//! a listed origin, and the WebSocket upgrade of a polling session.
//!
//! Every request is answered by the [`PollingSession`] its `sid` names; the
//! socket behind it is served by the same socket core as a WebSocket one
//! (login, channels, hooks, heartbeat), over a
//! [`PollingWire`](crate::transport::polling::PollingWire).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sockhive_shared::http::{self, RequestHead, Response};
use tokio::net::TcpStream;

use super::upgrade;
use super::{admit_connection, credential_for_upgrade, refuse, slimmed, ws_limits};
use crate::protocol::socketio::{self, codec};
use crate::socket::run_socket;
use crate::transport::polling::{self, PollRefusal, PollingSession};
use crate::transport::{linger, Upgraded, WebSocket};
use crate::Worker;
use sockhive_shared::ipc::{PollAnswer, PollCall, ToMaster};

/// How long a forwarded request may wait for its owner beyond a held `GET`.
const FORWARD_SLACK: Duration = Duration::from_secs(5);

/// The owner a session id names: its node's tag (8 hex digits of a hash of
/// `--node-id`) and the worker slot (2 hex digits), before the random part.
/// A request for another worker's session is handed to it through the
/// master, and one for another node's through the broker, so no sticky
/// sessions are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    node: u32,
    slot: u16,
}

impl Owner {
    fn of(ctx: &Worker) -> Owner {
        Owner {
            node: ctx.node_tag,
            slot: ctx.slot,
        }
    }

    /// A new session id owned by `self`.
    fn new_sid(self) -> String {
        format!(
            "{:08x}{:02x}{}",
            self.node,
            self.slot,
            socketio::new_engine_sid()
        )
    }

    /// The owner named by a session id, if it is one of ours at all.
    fn of_sid(sid: &str) -> Option<Owner> {
        let node = u32::from_str_radix(sid.get(..8)?, 16).ok()?;
        let slot = u16::from_str_radix(sid.get(8..10)?, 16).ok()?;
        Some(Owner { node, slot })
    }
}

/// Engine.IO's errors, as the real server words and numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineError {
    TransportUnknown,
    SessionIdUnknown,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedVersion,
    /// Refused and already answered (a full worker, a refused credential).
    Answered,
}

impl EngineError {
    fn response(self) -> Response {
        let (code, message) = match self {
            EngineError::Answered => (3, "Bad request"),
            EngineError::TransportUnknown => (0, "Transport unknown"),
            EngineError::SessionIdUnknown => (1, "Session ID unknown"),
            EngineError::BadHandshakeMethod => (2, "Bad handshake method"),
            EngineError::BadRequest => (3, "Bad request"),
            EngineError::UnsupportedVersion => (5, "Unsupported protocol version"),
        };
        Response::json(400, &json!({"code": code, "message": message}))
    }
}

impl From<PollRefusal> for EngineError {
    fn from(refusal: PollRefusal) -> EngineError {
        match refusal {
            PollRefusal::BadRequest => EngineError::BadRequest,
            PollRefusal::Gone => EngineError::SessionIdUnknown,
        }
    }
}

/// CORS headers for a request from a listed origin (credentials allowed,
/// so the app's session cookie goes along).
fn cors(head: &RequestHead, response: Response) -> Response {
    match head.header("origin") {
        Some(origin) => response
            .with_header("Access-Control-Allow-Origin", origin.trim().to_owned())
            .with_header("Access-Control-Allow-Credentials", "true")
            .with_header("Vary", "Origin"),
        None => response,
    }
}

async fn send(ctx: &Worker, stream: &mut TcpStream, head: &RequestHead, response: Response) {
    let failed = response.status >= 400;
    if failed {
        ctx.metrics.reject("bad_upgrade");
    }
    if cors(head, response).write_to(stream).await.is_ok() && failed {
        linger(stream, super::REFUSAL_LINGER).await;
    }
}

/// Serves one HTTP request of the polling transport (or the WebSocket that
/// upgrades a polling session).
pub async fn serve(
    ctx: Arc<Worker>,
    mut stream: TcpStream,
    head: RequestHead,
    rest: Vec<u8>,
    peer: std::net::SocketAddr,
    started: Instant,
) {
    // A refused origin is refused as on the WebSocket path, before anything.
    if let Err(rejection) = upgrade::check_origin(&head, &ctx.config.server.allowed_origin) {
        refuse(&ctx, &mut stream, rejection).await;
        return;
    }
    if head.method == "OPTIONS" {
        let preflight = Response::text(204, "")
            .with_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            .with_header(
                "Access-Control-Allow-Headers",
                head.header("access-control-request-headers")
                    .unwrap_or("content-type")
                    .to_owned(),
            )
            .with_header("Access-Control-Max-Age", "86400");
        send(&ctx, &mut stream, &head, preflight).await;
        return;
    }
    if head.query_param("EIO").as_deref() != Some(codec::ENGINE_IO_VERSION) {
        let error = EngineError::UnsupportedVersion.response();
        return send(&ctx, &mut stream, &head, error).await;
    }
    let transport = head.query_param("transport");
    let sid = head.query_param("sid");
    let result = match (transport.as_deref(), sid) {
        (Some("polling"), None) => handshake(&ctx, &mut stream, head.clone(), peer, started).await,
        (Some("polling"), Some(sid)) => match Owner::of_sid(&sid) {
            Some(owner) if owner == Owner::of(&ctx) => match ctx.polling.get(&sid) {
                None => Err(EngineError::SessionIdUnknown),
                Some(session) if head.method == "GET" => long_poll(&ctx, &session).await,
                Some(session) if head.method == "POST" => {
                    let body = read_post(&ctx, &mut stream, &head, rest).await;
                    match body {
                        Ok(body) => post(&ctx, &body, &session),
                        Err(refused) => Ok(refused),
                    }
                }
                Some(_) => Err(EngineError::BadRequest),
            },
            Some(owner) => forward(&ctx, &mut stream, &head, rest, sid, owner).await,
            None => Err(EngineError::SessionIdUnknown),
        },
        (Some("websocket"), Some(sid)) => match Owner::of_sid(&sid) {
            Some(owner) if owner == Owner::of(&ctx) => {
                return upgrade_session(&ctx, stream, &head, rest, &sid).await;
            }
            // Another worker's session: its WebSocket moves there.
            Some(owner) if owner.node == Owner::of(&ctx).node && ctx.handoff.is_some() => {
                return hand_off(&ctx, stream, &head, rest, owner.slot).await;
            }
            // Another node's session: relayed to that node's public port.
            Some(owner) if owner.node != Owner::of(&ctx).node => {
                return relay_to_node(&ctx, stream, &head, rest, owner.node).await;
            }
            _ => Err(EngineError::SessionIdUnknown),
        },
        _ => Err(EngineError::TransportUnknown),
    };
    let response = match result {
        Ok(response) => response,
        Err(EngineError::Answered) => return,
        Err(error) => error.response(),
    };
    send(&ctx, &mut stream, &head, response).await;
}

/// The first `GET`: a new session, whose socket runs in the core; the answer
/// is its open packet. The credential comes from this request (the app's
/// cookie, `access_token`, `session_id`), as on the WebSocket path.
async fn handshake(
    ctx: &Arc<Worker>,
    stream: &mut TcpStream,
    head: RequestHead,
    peer: std::net::SocketAddr,
    started: Instant,
) -> Result<Response, EngineError> {
    if head.method != "GET" {
        return Err(EngineError::BadHandshakeMethod);
    }
    let guard = match admit_connection(ctx) {
        Ok(guard) => guard,
        Err(rejection) => {
            refuse(ctx, stream, rejection).await;
            return Err(EngineError::Answered);
        }
    };
    let sid = Owner::of(ctx).new_sid();
    let protocol = socketio::SocketIo::polling(&head, &ctx.config.limits, &sid);
    let upgraded = Upgraded {
        head,
        peer,
        started,
    };
    let Some(admission) = credential_for_upgrade(ctx, stream, &upgraded, &protocol).await else {
        // Refused (and answered) before the session existed.
        return Err(EngineError::Answered);
    };
    let (session, wire) = ctx.polling.open(&sid);
    let socket_ctx = ctx.clone();
    let upgraded = slimmed(upgraded);
    tokio::spawn(async move {
        let _counted = guard;
        run_socket(socket_ctx, wire, upgraded, admission, protocol).await;
    });
    long_poll(ctx, &session).await
}

/// How a held `GET` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Frames to send, or the session is over.
    Output,
    /// Released with a noop for an upgrade in progress.
    Released,
    /// Nothing for the whole ping interval and timeout.
    TimedOut,
}

/// A held `GET`: answers with what the socket wrote, as soon as there is
/// something, and at the latest after a ping interval and timeout (the
/// socket pings within that, so an idle session answers with its ping);
/// during an upgrade, with a noop after `UPGRADE_RELEASE`.
async fn long_poll(ctx: &Worker, session: &PollingSession) -> Result<Response, EngineError> {
    session.begin_get()?;
    let limits = &ctx.config.limits;
    let hold = limits.socketio_ping_interval + limits.socketio_ping_timeout;
    let started = tokio::time::Instant::now();
    let held = loop {
        if session.has_output() {
            break Held::Output;
        }
        // An upgrade waiting for the client's `5` releases this GET soon
        // (`UPGRADE_RELEASE`); checked on every wake, as the probe may be
        // answered while this GET is held.
        let upgrading = session.is_upgrading();
        let deadline = started
            + if upgrading {
                polling::UPGRADE_RELEASE
            } else {
                hold
            };
        if tokio::time::timeout_at(deadline, session.readable())
            .await
            .is_err()
        {
            break if upgrading {
                Held::Released
            } else {
                Held::TimedOut
            };
        }
    };
    let frames = session.take();
    session.end_get();
    if held == Held::TimedOut && frames.is_empty() {
        // Not even a ping in that time: the socket is gone or stuck.
        session.abandon();
    }
    let body = if !frames.is_empty() {
        codec::encode_payload(&frames)
    } else if held == Held::Released {
        polling::NOOP.to_owned()
    } else {
        polling::CLOSE_PACKET.to_owned()
    };
    Ok(Response::text(200, body))
}

/// A `POST`'s body, bounded by `--max-payload` (Engine.IO's
/// `maxHttpBufferSize`): beyond it, 413.
async fn read_post(
    ctx: &Worker,
    stream: &mut TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
) -> Result<Vec<u8>, Response> {
    let max = ctx.config.limits.max_payload as usize;
    match http::read_body(stream, head, rest, max).await {
        Ok(body) => Ok(body),
        Err(http::HeadError::TooLarge(_)) => {
            ctx.metrics.protocol_error("socketio", "too_big");
            Err(Response::text(413, "Payload Too Large"))
        }
        Err(_) => Err(EngineError::BadRequest.response()),
    }
}

/// A `POST`: the client's packets for the socket; `ok`.
fn post(ctx: &Worker, body: &[u8], session: &PollingSession) -> Result<Response, EngineError> {
    let packets = codec::decode_payload(body).map_err(|e| {
        tracing::debug!(error = %e, "refused a polling payload");
        ctx.metrics.protocol_error("socketio", "bad_packet");
        EngineError::BadRequest
    })?;
    session.post(packets)?;
    let mut ok = Response::text(200, "ok");
    ok.content_type = "text/html";
    Ok(ok)
}

/// Hands a request for another worker's session to it through the master
/// (and, for another node's session, through the broker), and answers with
/// what it answered.
async fn forward(
    ctx: &Worker,
    stream: &mut TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    sid: String,
    owner: Owner,
) -> Result<Response, EngineError> {
    let body = match head.method.as_str() {
        "GET" => String::new(),
        "POST" => match read_post(ctx, stream, head, rest).await {
            Ok(body) => String::from_utf8(body).map_err(|_| EngineError::BadRequest)?,
            Err(refused) => return Ok(refused),
        },
        _ => return Err(EngineError::BadRequest),
    };
    let call = PollCall {
        sid,
        method: head.method.clone(),
        body,
    };
    let (request, answer) = ctx.poll_forwards.expect();
    let node = (owner.node != Owner::of(ctx).node).then_some(owner.node);
    ctx.metrics
        .polling_forwards
        .with_label_values(&[if node.is_some() { "node" } else { "worker" }])
        .inc();
    ctx.master.send(&ToMaster::PollForward {
        request,
        slot: owner.slot,
        node,
        call,
    });
    let limits = &ctx.config.limits;
    let wait = limits.socketio_ping_interval + limits.socketio_ping_timeout + FORWARD_SLACK;
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(answer)) => {
            let mut response = Response::text(answer.status, answer.body);
            response.content_type = content_type(&answer.content_type);
            Ok(response)
        }
        _ => {
            ctx.poll_forwards.forget(request);
            Err(EngineError::SessionIdUnknown)
        }
    }
}

/// The content types an answer can carry (a `Response` holds a static one).
fn content_type(name: &str) -> &'static str {
    match name {
        "application/json" => "application/json",
        "text/html" => "text/html",
        _ => "text/plain; charset=utf-8",
    }
}

/// Answers a request another worker of this node forwarded for a session
/// this worker owns.
pub async fn answer_forwarded(ctx: &Worker, call: PollCall) -> PollAnswer {
    let result = match ctx.polling.get(&call.sid) {
        None => Err(EngineError::SessionIdUnknown),
        Some(session) if call.method == "GET" => long_poll(ctx, &session).await,
        Some(session) if call.method == "POST" => post(ctx, call.body.as_bytes(), &session),
        Some(_) => Err(EngineError::BadRequest),
    };
    let response = result.unwrap_or_else(|e| e.response());
    PollAnswer {
        status: response.status,
        content_type: response.content_type.to_owned(),
        body: String::from_utf8(response.body).unwrap_or_default(),
    }
}

/// Moves a WebSocket for another worker's session to that worker (through
/// the master), with the request as read so far; the owner serves it.
async fn hand_off(
    ctx: &Worker,
    mut stream: TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    slot: u16,
) {
    let Some(handoff) = ctx.handoff.as_ref() else {
        return;
    };
    let mut message = slot.to_be_bytes().to_vec();
    message.extend_from_slice(&request_bytes(head, &rest));
    ctx.metrics
        .polling_forwards
        .with_label_values(&["worker"])
        .inc();
    let sent = handoff
        .send(&message, std::os::fd::AsFd::as_fd(&stream))
        .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not hand a WebSocket to its session's worker");
        send(
            ctx,
            &mut stream,
            head,
            EngineError::SessionIdUnknown.response(),
        )
        .await;
    }
}

/// The request as the client sent it (head and what followed), to replay to
/// the worker or node that serves it.
fn request_bytes(head: &RequestHead, rest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512 + rest.len());
    bytes.extend_from_slice(head.method.as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(head.path.as_bytes());
    if let Some(query) = &head.query {
        bytes.push(b'?');
        bytes.extend_from_slice(query.as_bytes());
    }
    bytes.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(rest);
    bytes
}

/// How long finding and reaching another node may take before the client
/// is told its session is unknown here (it then goes on polling).
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays the WebSocket of another node's session to that node: a
/// connection cannot move between machines, so this worker connects to the
/// owner's public port (`--advertise-addr`), replays the request and copies
/// bytes both ways for the socket's lifetime.
async fn relay_to_node(
    ctx: &Worker,
    mut stream: TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    node: u32,
) {
    let (request, addr) = ctx.node_addresses.expect();
    ctx.master.send(&ToMaster::NodeAddress { request, node });
    let upstream = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, async {
        let addr = addr.await.ok()??;
        TcpStream::connect(addr.as_str()).await.ok()
    })
    .await;
    let Ok(Some(mut upstream)) = upstream else {
        ctx.node_addresses.forget(request);
        return send(
            ctx,
            &mut stream,
            head,
            EngineError::SessionIdUnknown.response(),
        )
        .await;
    };
    ctx.metrics
        .polling_forwards
        .with_label_values(&["node"])
        .inc();
    let _ = upstream.set_nodelay(true);
    use tokio::io::AsyncWriteExt;
    if upstream
        .write_all(&request_bytes(head, &rest))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

/// A WebSocket another worker handed to this one: the request it carried is
/// read again and served as if it had arrived here.
pub async fn take_handoff(ctx: Arc<Worker>, bytes: Vec<u8>, connection: std::os::fd::OwnedFd) {
    let std_stream = std::net::TcpStream::from(connection);
    if std_stream.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(mut stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let max = ctx.config.limits.max_header_bytes as usize;
    let (head, rest) = match http::read_head(&mut &bytes[..], max).await {
        Ok(parsed) => parsed,
        Err(_) => return,
    };
    match head.query_param("sid") {
        Some(sid) => upgrade_session(&ctx, stream, &head, rest, &sid).await,
        None => send(&ctx, &mut stream, &head, EngineError::BadRequest.response()).await,
    }
}

/// The WebSocket that upgrades a polling session: checked like any upgrade,
/// then handed to the session, whose wire probes and switches to it.
async fn upgrade_session(
    ctx: &Arc<Worker>,
    mut stream: TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    sid: &str,
) {
    let Some(session) = ctx.polling.get(sid) else {
        return send(
            ctx,
            &mut stream,
            head,
            EngineError::SessionIdUnknown.response(),
        )
        .await;
    };
    let accept = match upgrade::accept_key(head) {
        Ok(accept) => accept,
        Err(rejection) => return refuse(ctx, &mut stream, rejection).await,
    };
    use tokio::io::AsyncWriteExt;
    if stream
        .write_all(&upgrade::switching_protocols(&accept))
        .await
        .is_err()
    {
        return;
    }
    let ws = WebSocket::new(stream, rest, ws_limits(ctx));
    if let Err(refusal) = session.offer_upgrade(ws) {
        tracing::debug!(%refusal, "an upgrade for a session that cannot take it");
    }
}
