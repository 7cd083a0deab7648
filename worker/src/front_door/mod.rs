//! The public port of a worker: one task per TCP connection, from the first
//! byte to either an HTTP answer or a WebSocket handed to its protocol.
//!
//! Every limit a hostile client could push against is enforced here, before
//! any per-socket state exists: head time (slowloris), head size, origin,
//! connection count. A refusal is counted by reason and touches nothing else.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockhive_shared::http::{self, HeadError, RequestHead};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub mod echo;
pub mod http_routes;
pub mod polling;
pub mod upgrade;

use crate::app::HookKind;
use crate::auth::Refusal;
use crate::auth::{Credential, PendingCredential};
use crate::protocol::{socketcluster, socketio};
use crate::socket::app_calls::ask_connect;
use crate::socket::{run_socket, Admission, Admitted, Protocol};
use crate::transport::{linger, Upgraded, WebSocket, Ws, WsLimits};
use crate::Worker;
use upgrade::Rejection;

/// How long a refused connection is given to read its HTTP refusal.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Counts a connection against `max_connections` for as long as it lives.
struct OpenConnection(Arc<Worker>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that became a WebSocket, with the protocol adapter its route chose.
enum Handover {
    SocketCluster(
        Ws,
        Upgraded,
        OpenConnection,
        Admission,
        socketcluster::SocketCluster,
    ),
    SocketIo(Ws, Upgraded, OpenConnection, Admission, socketio::SocketIo),
}

/// Serves one accepted TCP connection to its end.
///
/// Two phases, so that a socket's task carries only its session for its
/// lifetime: everything before the 101 runs in a boxed future that is freed
/// once the upgrade is done (its state, head buffers and parser included, is
/// several KiB), then the protocol session runs in this task's own state.
///
/// The handover is taken apart before the session is awaited: held across
/// that await, it (the stream, the upgrade, the protocol, already moved into
/// the session) would stay in every idle socket's task (issue 19).
pub async fn serve(ctx: Arc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let (session, _open) = match Box::pin(front(ctx.clone(), stream, peer)).await {
        None => return,
        Some(handover) => start_session(ctx, handover),
    };
    session.await;
}

/// A socket's session, in an allocation of its own protocol's size.
type Session = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The socket's session future for a handover, and the connection's guard.
///
/// Boxed (issue 19): the connection's task then holds a pointer, so a
/// SocketCluster socket does not carry the room of the larger Socket.IO
/// session (about 280 bytes per socket).
fn start_session(ctx: Arc<Worker>, handover: Handover) -> (Session, OpenConnection) {
    match handover {
        Handover::SocketCluster(ws, upgraded, open, admission, protocol) => (
            Box::pin(run_socket(ctx, ws, upgraded, admission, protocol)),
            open,
        ),
        Handover::SocketIo(ws, upgraded, open, admission, protocol) => (
            Box::pin(run_socket(ctx, ws, upgraded, admission, protocol)),
            open,
        ),
    }
}

/// Everything up to the WebSocket handover: the head, plain HTTP answers, the upgrade.
async fn front(ctx: Arc<Worker>, mut stream: TcpStream, peer: SocketAddr) -> Option<Handover> {
    let started = Instant::now();
    let (head, rest) = read_request(&ctx, &mut stream).await?;
    match head.path.as_str() {
        "/healthz" => {
            let _ = http_routes::healthz(&ctx).write_to(&mut stream).await;
            None
        }
        "/negotiate" => {
            if let Err(rejection) = upgrade::check_origin(&head, &ctx.config.server.allowed_origin)
            {
                refuse(&ctx, &mut stream, rejection).await;
                return None;
            }
            // Boxed, like the polling transport below: the WebSocket path,
            // which every socket takes, should not carry their state.
            let _ = Box::pin(http_routes::negotiate(&ctx, &head))
                .await
                .write_to(&mut stream)
                .await;
            None
        }
        socketcluster::PATH => {
            let protocol = socketcluster::SocketCluster::new(&ctx.config.limits);
            let upgraded = Upgraded {
                head,
                peer,
                started,
            };
            let (ws, open, admission) = upgrade(&ctx, stream, rest, &upgraded, &protocol).await?;
            Some(Handover::SocketCluster(
                ws,
                slimmed(upgraded),
                open,
                admission,
                protocol,
            ))
        }
        socketio::PATH
            if head.method == "OPTIONS"
                || head.query_param("transport").as_deref() == Some("polling")
                || head.query_param("sid").is_some() =>
        {
            Box::pin(polling::serve(
                ctx.clone(),
                stream,
                head,
                rest,
                peer,
                started,
            ))
            .await;
            None
        }
        socketio::PATH => {
            // Engine.IO's own refusals first (polling, EIO, sid), so a client
            // asking for long-polling is told to use the websocket transport.
            if let Err(refusal) = socketio::check_request(&head) {
                ctx.metrics.reject(refusal.metric_reason());
                if refusal.response().write_to(&mut stream).await.is_ok() {
                    linger(&mut stream, REFUSAL_LINGER).await;
                }
                return None;
            }
            let protocol = socketio::SocketIo::new(&head, &ctx.config.limits);
            let upgraded = Upgraded {
                head,
                peer,
                started,
            };
            let (ws, open, admission) = upgrade(&ctx, stream, rest, &upgraded, &protocol).await?;
            Some(Handover::SocketIo(
                ws,
                slimmed(upgraded),
                open,
                admission,
                protocol,
            ))
        }
        other => {
            let rejection = Rejection::NotFound(other.chars().take(100).collect());
            refuse(&ctx, &mut stream, rejection).await;
            None
        }
    }
}

/// Reads the request head under the pre-socket limits (head time, head
/// size) and answers the refusals; the head and the bytes read past it, or
/// `None` when the connection was answered or is gone. Shared with
/// [`echo`], so the Autobahn suite exercises this very code.
async fn read_request(ctx: &Worker, stream: &mut TcpStream) -> Option<(RequestHead, Vec<u8>)> {
    let _ = stream.set_nodelay(true);
    let limits = &ctx.config.limits;
    let read = http::read_head(&mut *stream, limits.max_header_bytes as usize);
    match tokio::time::timeout(limits.upgrade_timeout, read).await {
        Err(_) => {
            refuse(ctx, stream, Rejection::UpgradeTimeout).await;
            None
        }
        Ok(Err(HeadError::TooLarge(_))) => {
            refuse(ctx, stream, Rejection::HeaderTooLarge).await;
            None
        }
        Ok(Err(HeadError::Malformed(why))) => {
            refuse(ctx, stream, Rejection::Malformed(why)).await;
            None
        }
        // The peer went away mid-head: nothing to answer, nothing to count.
        Ok(Err(HeadError::Closed | HeadError::Io(_))) => None,
        Ok(Ok(parsed)) => Some(parsed),
    }
}

/// The upgrade without its headers: the credential task has its own copy,
/// and a socket should not keep kilobytes of request headers for its lifetime.
fn slimmed(mut upgraded: Upgraded) -> Upgraded {
    upgraded.head.headers = Vec::new();
    upgraded
}

/// Starts deciding the upgrade's credential. Under `--require-auth` with the
/// app's `connect` hook on, the credential and the hook are decided here,
/// before the 101, so that an app that cannot answer gets the client a 503
/// with `Retry-After` (a load balancer or client retries it) instead of the
/// protocol's final rejection; the app's own refusal still reaches the client
/// through its protocol, readable. With `--reject-at-upgrade` everything is
/// decided here: no valid credential, or the app's refusal, is a 401.
/// Called after the origin check: a cross-site page never gets to touch a
/// session. `None`: the connection was answered and is done.
pub async fn credential_for_upgrade<P: Protocol>(
    ctx: &Arc<Worker>,
    stream: &mut TcpStream,
    upgraded: &Upgraded,
    protocol: &P,
) -> Option<Admission> {
    let pending = PendingCredential::start(&ctx.credentials, &upgraded.head).await;
    let auth = &ctx.config.auth;
    let reject_here = auth.require_auth && auth.reject_at_upgrade;
    let connect_here = auth.require_auth && ctx.hook_on(HookKind::Connect);
    if !(reject_here || connect_here) {
        return Some(pending.into());
    }
    let refused = |refusal: Refusal| {
        if refusal.server_fault() {
            Rejection::Unavailable(refusal.name, refusal.message)
        } else {
            Rejection::Unauthorized(refusal.name, refusal.message)
        }
    };
    let identity = match pending.resolve().await {
        Credential::Accepted(identity) => identity,
        // A credential that arrives with the protocol handshake (a token in
        // `#handshake` or CONNECT) is asked about there.
        other if !reject_here => {
            return Some(PendingCredential::Ready(Box::new(other)).into());
        }
        Credential::Refused(refusal) => {
            refuse(ctx, stream, refused(refusal)).await;
            return None;
        }
        Credential::Absent => {
            let rejection = Rejection::Unauthorized(
                "AuthTokenError".into(),
                "a valid credential is required".into(),
            );
            refuse(ctx, stream, rejection).await;
            return None;
        }
    };
    let mut admitted = None;
    if connect_here {
        let socket_id = protocol.new_socket_id();
        // Boxed: the hook call's state is only needed with the hook on.
        let answer = Box::pin(ask_connect(
            ctx,
            P::NAME,
            &socket_id,
            upgraded.peer,
            Some(&crate::auth::Claims::new(&identity.claims)),
            identity.session.as_ref().map(|s| s.sid.clone()),
        ))
        .await;
        match answer {
            Err(refusal) if refusal.server_fault() || reject_here => {
                refuse(ctx, stream, refused(refusal)).await;
                return None;
            }
            answer => admitted = Some(Admitted { socket_id, answer }),
        }
    }
    Some(Admission {
        credential: PendingCredential::Ready(Box::new(Credential::Accepted(identity))),
        admitted,
    })
}

/// Runs the upgrade checks and, when they pass, answers 101 and wraps the stream.
/// The returned guard keeps the connection counted until the socket ends; the
/// credential is the upgrade's (possibly still being decided).
async fn upgrade<P: Protocol>(
    ctx: &Arc<Worker>,
    mut stream: TcpStream,
    rest: Vec<u8>,
    upgraded: &Upgraded,
    protocol: &P,
) -> Option<(Ws, OpenConnection, Admission)> {
    let checks = (|| {
        upgrade::check_origin(&upgraded.head, &ctx.config.server.allowed_origin)?;
        let accept = upgrade::accept_key(&upgraded.head)?;
        Ok((accept, admit_connection(ctx)?))
    })();
    let (accept, guard) = match checks {
        Ok(admitted) => admitted,
        Err(rejection) => {
            refuse(ctx, &mut stream, rejection).await;
            return None;
        }
    };
    let admission = credential_for_upgrade(ctx, &mut stream, upgraded, protocol).await?;
    if stream
        .write_all(&upgrade::switching_protocols(&accept))
        .await
        .is_err()
    {
        return None;
    }
    let ws = WebSocket::new(stream, rest, ws_limits(ctx));
    Some((ws, guard, admission))
}

/// How many bytes of frames a socket gathers before writing them (see
/// [`ws_limits`]). 16 KiB: a 50-message SocketCluster burst of small
/// payloads (about 85 bytes a frame) leaves in one write, where 4 KiB split
/// it in two and cost 0.41 against the bare server's 0.37 µs per delivery
/// pinned (bench/README.md, "Burst fan-out, third pass"). The bytes are
/// held only while a write is pending; an idle socket keeps none.
const WRITE_COALESCE_BYTES: usize = 16 * 1024;

/// Counts a new socket against `--max-connections`; the guard uncounts it.
fn admit_connection(ctx: &Arc<Worker>) -> Result<OpenConnection, Rejection> {
    let open = ctx.open_connections.fetch_add(1, Ordering::Relaxed);
    let guard = OpenConnection(ctx.clone());
    if ctx
        .config
        .limits
        .max_connections
        .is_some_and(|max| open >= max as usize)
    {
        return Err(Rejection::MaxConnections);
    }
    Ok(guard)
}

/// The WebSocket limits of every socket: frame and message capped at
/// `max_payload`.
pub(crate) fn ws_limits(ctx: &Worker) -> WsLimits {
    WsLimits {
        max_message: ctx.config.limits.max_payload as usize,
        // The socket's loop takes every queued delivery before it writes
        // (its select is biased towards the outbox): the frames are gathered
        // and leave in one write of about this size, or at the flush,
        // instead of one send per frame.
        write_coalesce: WRITE_COALESCE_BYTES,
    }
}

/// Counts a refusal and sends its response, if it has one.
async fn refuse(ctx: &Worker, stream: &mut TcpStream, rejection: Rejection) {
    ctx.metrics.reject(rejection.metric_reason());
    tracing::debug!(reason = rejection.metric_reason(), "{rejection}");
    if let Some(response) = rejection.response() {
        if response.write_to(stream).await.is_ok() {
            linger(stream, REFUSAL_LINGER).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WRITE_COALESCE_BYTES;
    use crate::protocol::socketcluster::codec::encode_publish;

    /// Issue 19: the bench's burst (50 messages with a timestamp and a
    /// sequence number) must leave a SocketCluster socket in one write.
    #[test]
    fn a_fifty_message_burst_fits_one_gathered_write() {
        let data = r#"{"t":1796533218000000,"s":4000049}"#;
        let frame = encode_publish("bench:fanout", Some(data));
        // Two bytes of WebSocket header per frame of this size.
        let burst = 50 * (frame.len() + 2);
        assert!(burst > 4096, "the case 4 KiB split: {burst} bytes");
        assert!(burst <= WRITE_COALESCE_BYTES, "{burst} bytes");
    }
}
