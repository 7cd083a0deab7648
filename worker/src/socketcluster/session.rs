//! One SocketCluster socket, from the upgrade to the close.
//!
//! A socket is a single task that owns its WebSocket: inbound frames, queued
//! outbound items (channel deliveries, admin emits and kicks), the ping timer,
//! the handshake deadline and the token's expiry all meet in one `select!`,
//! so no lock is ever held across an await and the socket's state needs none.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::codec::{
    self, close_code, ClientEvent, DecodeLimits, ErrorObject, HandshakeStatus, InboundFrame,
    Packet, ViolationOutcome,
};
use crate::auth::now_unix;
use crate::channels::{channel_allowed, Wire};
use crate::credentials::{self, Credential, Identity, Method, PendingCredential, Refusal};
use crate::front_door::{Upgraded, Ws};
use crate::outbox::{outbox, Inbox, Outbound, Outbox};
use crate::passport::SessionLogin;
use crate::sockets::SocketEntry;
use crate::WorkerContext;

/// Label of this protocol in metrics and records.
pub const PROTOCOL: &str = "socketcluster";

/// How long a connection caught mid-handshake by a drain may take to finish it.
const DRAIN_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Low bits of socket ids, as the real server's per-process counter.
static SOCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// How a session ends: the close frame to send (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Send this close code and reason.
    Close(u16, String),
    /// The peer is gone or closed itself; nothing to send.
    Gone,
}

/// A verified JWT on this socket.
struct Authenticated {
    claims: Map<String, Value>,
    /// When the token stops being acceptable (exp plus leeway), if it expires.
    expires_at: Option<Instant>,
    /// When to re-sign and push a fresh token (`--token-renew-before`).
    renew_at: Option<Instant>,
}

struct Session {
    ctx: Arc<WorkerContext>,
    id: Arc<str>,
    ws: Ws,
    outbox: Outbox,
    registered: bool,
    auth: Option<Authenticated>,
    channels: BTreeSet<String>,
    last_pong: Instant,
    /// The upgrade's credential, resolved at `#handshake`.
    upgrade_credential: Option<PendingCredential>,
    /// The web session this socket logged in with, watched for logout.
    session_login: Option<SessionLogin>,
    /// A minted token waiting for the client's next frame (see `on_handshake`).
    pending_token: Option<String>,
}

/// Serves one upgraded SocketCluster connection to its end.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    ws: Ws,
    upgraded: Upgraded,
    credential: PendingCredential,
) {
    let limit = ctx.config.limits.max_send_queue as usize;
    let (outbox, inbox) = outbox(limit);
    let id: Arc<str> = codec::socket_id(
        rand::random(),
        SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed),
    )
    .into();
    let mut session = Session {
        ctx: ctx.clone(),
        id,
        ws,
        outbox,
        registered: false,
        auth: None,
        channels: BTreeSet::new(),
        last_pong: Instant::now(),
        upgrade_credential: Some(credential),
        session_login: None,
        pending_token: None,
    };
    ctx.metrics.connections.with_label_values(&[PROTOCOL]).inc();
    let ending = session.run(inbox, &upgraded).await;
    // Boxed like the other rare states: the close handshake should not
    // enlarge every idle socket.
    Box::pin(session.finish(ending)).await;
    ctx.metrics.connections.with_label_values(&[PROTOCOL]).dec();
}

fn going_away() -> Ending {
    Ending::Close(close_code::GOING_AWAY, "server shutting down".into())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Session {
    async fn run(&mut self, mut inbox: Inbox, upgraded: &Upgraded) -> Ending {
        let limits = self.ctx.config.limits.clone();
        let handshake_deadline = sleep_until(Instant::now() + limits.handshake_timeout);
        tokio::pin!(handshake_deadline);
        let mut ping = tokio::time::interval_at(far_future(), limits.ping_interval);
        let overflow = inbox.overflow.clone();
        let shutdown = self.ctx.shutdown.clone();
        let mut drain_grace = false;
        loop {
            let auth_deadline = self.auth_deadline();
            tokio::select! {
                biased;
                _ = overflow.cancelled() => {
                    self.ctx.metrics.slow_consumers.inc();
                    return Ending::Close(1008, "send queue overflow: the client is not reading".into());
                }
                _ = shutdown.cancelled(), if self.registered => return going_away(),
                // A connection accepted just before the drain still completes
                // its handshake (briefly), so a client never sees its attempt
                // refused during a rolling restart; it then gets 1001 like all.
                _ = shutdown.cancelled(), if !self.registered && !drain_grace => {
                    drain_grace = true;
                    let grace = Instant::now() + DRAIN_HANDSHAKE_GRACE;
                    if grace < handshake_deadline.deadline() {
                        handshake_deadline.as_mut().reset(grace);
                    }
                }
                _ = &mut handshake_deadline, if !self.registered => {
                    if drain_grace {
                        return going_away();
                    }
                    self.ctx.metrics.protocol_error(PROTOCOL, "handshake_timeout");
                    return Ending::Close(close_code::HANDSHAKE_TIMEOUT, String::new());
                }
                _ = sleep_until(auth_deadline), if self.auth.as_ref().is_some_and(|a| a.expires_at.is_some()) => {
                    if let Some(ending) = Box::pin(self.on_auth_deadline()).await {
                        return ending;
                    }
                }
                _ = ping.tick(), if self.registered => {
                    if self.last_pong.elapsed() > limits.ping_timeout {
                        return Ending::Close(close_code::CLIENT_PONG_TIMED_OUT, String::new());
                    }
                    if let Err(ending) = self.send(Utf8Bytes::from_static(codec::PING_FRAME)).await {
                        return ending;
                    }
                }
                item = inbox.recv() => {
                    let Some(item) = item else { return Ending::Gone };
                    if let Some(ending) = self.on_outbound(item).await {
                        return ending;
                    }
                }
                frame = self.ws.next() => {
                    let text = match frame {
                        None => return Ending::Gone,
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                            // The real server decodes binary frames as text; do the same.
                            Ok(text) => text,
                            Err(_) => {
                                self.ctx.metrics.protocol_error(PROTOCOL, "bad_utf8");
                                return Ending::Close(close_code::INVALID_PAYLOAD, "binary frame is not UTF-8".into());
                            }
                        },
                        Some(Ok(Message::Close(_))) => continue,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return self.on_read_error(e),
                    };
                    self.ctx.metrics.messages.with_label_values(&["in"]).inc();
                    let was_registered = self.registered;
                    // Boxed: message handling (the handshake above all) is the
                    // largest state of the session; an idle socket, which only
                    // waits here, should not carry it.
                    if let Some(ending) = Box::pin(self.on_text(&text, upgraded)).await {
                        return ending;
                    }
                    if self.registered && !was_registered {
                        // Pings start only after the handshake reply (the real
                        // server's client-side rules count an early pong as a
                        // message before the handshake).
                        ping = tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
                        self.last_pong = Instant::now();
                    }
                }
            }
        }
    }

    fn auth_deadline(&self) -> Instant {
        let auth = self.auth.as_ref();
        let expiry = auth.and_then(|a| a.expires_at).unwrap_or_else(far_future);
        auth.and_then(|a| a.renew_at)
            .map_or(expiry, |renew| renew.min(expiry))
    }

    fn on_read_error(&self, error: WsError) -> Ending {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "too_big");
                Ending::Close(close_code::MESSAGE_TOO_BIG, String::new())
            }
            WsError::Capacity(_) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "too_big");
                Ending::Close(close_code::MESSAGE_TOO_BIG, String::new())
            }
            WsError::Utf8(_) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_utf8");
                Ending::Close(close_code::INVALID_PAYLOAD, String::new())
            }
            WsError::Protocol(e) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_frame");
                Ending::Close(1002, format!("{e}").chars().take(100).collect())
            }
            _ => Ending::Gone,
        }
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), Ending> {
        self.ctx.metrics.messages.with_label_values(&["out"]).inc();
        self.ws
            .send(Message::Text(text))
            .await
            .map_err(|_| Ending::Gone)
    }

    async fn send_str(&mut self, text: String) -> Result<(), Ending> {
        self.send(Utf8Bytes::from(text)).await
    }

    async fn on_outbound(&mut self, item: Outbound) -> Option<Ending> {
        let sent = match item {
            Outbound::Frame(frame) => self.send(frame).await,
            Outbound::Event { event, data } => {
                self.send_str(codec::encode_transmit_json(&event, Some(data.get())))
                    .await
            }
            Outbound::Close(code, reason) => return Some(Ending::Close(code, reason)),
            Outbound::Deauthenticate => {
                self.deauthenticate().await;
                if self.ctx.config.auth.require_auth {
                    return Some(Ending::Close(
                        close_code::AUTH_REQUIRED,
                        "SessionNotFoundError: logged out".into(),
                    ));
                }
                Ok(())
            }
        };
        sent.err()
    }

    async fn on_text(&mut self, text: &str, upgraded: &Upgraded) -> Option<Ending> {
        if self.registered {
            if let Some(token) = self.pending_token.take() {
                if let Err(ending) = self.send_str(codec::encode_set_auth_token(&token)).await {
                    return Some(ending);
                }
            }
        }
        let frame = match codec::decode_frame(text, &DecodeLimits::default()) {
            Ok(frame) => frame,
            Err(e) => {
                self.ctx.metrics.protocol_error(PROTOCOL, e.metric_reason());
                if !self.registered {
                    return Some(Ending::Close(
                        close_code::MESSAGE_BEFORE_HANDSHAKE,
                        String::new(),
                    ));
                }
                return e
                    .close_code()
                    .map(|code| Ending::Close(code, String::new()));
            }
        };
        let packets = match frame {
            InboundFrame::Pong | InboundFrame::V1Pong => {
                if !self.registered {
                    return Some(Ending::Close(
                        close_code::MESSAGE_BEFORE_HANDSHAKE,
                        String::new(),
                    ));
                }
                self.last_pong = Instant::now();
                return None;
            }
            InboundFrame::V1Ping => return self.send_str("#2".into()).await.err(),
            InboundFrame::Raw(_) => {
                if !self.registered {
                    return Some(Ending::Close(
                        close_code::MESSAGE_BEFORE_HANDSHAKE,
                        String::new(),
                    ));
                }
                return None;
            }
            InboundFrame::Packet(packet) => vec![packet],
            InboundFrame::Batch(packets) => packets,
        };
        for packet in packets {
            if let Some(ending) = self.on_packet(packet, upgraded).await {
                return Some(ending);
            }
        }
        None
    }

    async fn on_packet(&mut self, packet: Packet, upgraded: &Upgraded) -> Option<Ending> {
        let event = match packet {
            Packet::Event(event) => event,
            // Answers to server invokes: sockhive sends none that wait for one.
            Packet::Response(_) if self.registered => return None,
            Packet::Malformed(_) | Packet::Unrecognized(_) if self.registered => {
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_packet");
                return None;
            }
            _ => {
                return Some(Ending::Close(
                    close_code::MESSAGE_BEFORE_HANDSHAKE,
                    String::new(),
                ))
            }
        };
        let event = match ClientEvent::from_packet(event) {
            Ok(event) => event,
            Err(violation) => {
                self.ctx
                    .metrics
                    .protocol_error(PROTOCOL, violation.metric_reason());
                return match violation.outcome() {
                    ViolationOutcome::Close { code } => Some(Ending::Close(code, String::new())),
                    ViolationOutcome::Ignore => None,
                    ViolationOutcome::Reply { rid, error } => {
                        if !self.registered {
                            return Some(Ending::Close(
                                close_code::MESSAGE_BEFORE_HANDSHAKE,
                                String::new(),
                            ));
                        }
                        let bad_token = error.is_bad_token();
                        if let Err(ending) = self
                            .send_str(codec::encode_error_response(rid, &error))
                            .await
                        {
                            return Some(ending);
                        }
                        if bad_token {
                            self.deauthenticate().await;
                        }
                        None
                    }
                };
            }
        };
        if !self.registered {
            return match event {
                ClientEvent::Handshake { auth_token, cid } => {
                    self.on_handshake(auth_token, cid, upgraded).await
                }
                _ => Some(Ending::Close(
                    close_code::MESSAGE_BEFORE_HANDSHAKE,
                    String::new(),
                )),
            };
        }
        let result = match event {
            ClientEvent::Handshake { cid, .. } => {
                self.send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::invalid_action("The socket has already completed its handshake"),
                ))
                .await
            }
            ClientEvent::Subscribe { channel, cid, .. } => self.on_subscribe(channel, cid).await,
            ClientEvent::Unsubscribe { channel, cid } => self.on_unsubscribe(channel, cid).await,
            ClientEvent::Publish { channel, data, cid } => {
                self.on_publish(channel, data, cid).await
            }
            ClientEvent::Authenticate { token, cid } => self.on_authenticate(&token, cid).await,
            ClientEvent::RemoveAuthToken { cid } => {
                self.unwatch_session();
                self.auth = None;
                self.update_entry_auth();
                match cid {
                    Some(cid) => self.send_str(codec::encode_empty_success(cid)).await,
                    None => Ok(()),
                }
            }
            ClientEvent::App { event, cid, .. } => match cid {
                // sockhive runs no application procedures: the app talks to
                // its sockets through channels and the admin API. Answer at
                // once instead of leaving the client to time out.
                Some(cid) => {
                    self.send_str(codec::encode_error_response(
                        cid,
                        &ErrorObject::unknown_procedure(&event),
                    ))
                    .await
                }
                None => Ok(()),
            },
        };
        result.err()
    }

    async fn on_handshake(
        &mut self,
        token: Option<String>,
        cid: u64,
        upgraded: &Upgraded,
    ) -> Option<Ending> {
        let ctx = self.ctx.clone();
        // The upgrade's credential (access token, cookie) decides when present;
        // otherwise the token the client sends in #handshake.
        let credential = match self.upgrade_credential.take() {
            Some(pending) => pending.resolve().await,
            None => Credential::Absent,
        };
        let credential = match (credential, token) {
            (Credential::Absent, Some(token)) => {
                credentials::from_token(&ctx, &token, Method::Token).await
            }
            (credential, _) => credential,
        };
        let (method, refusal) = match credential {
            Credential::Absent => ("none", None),
            Credential::Accepted(identity) => {
                let method = identity.method.label();
                self.accept(*identity);
                (method, None)
            }
            Credential::Refused(refusal) => (refusal.method.label(), Some(refusal)),
        };
        let authenticated = self.auth.is_some();
        if ctx.config.auth.require_auth && !authenticated {
            let (name, message) = match &refusal {
                Some(r) => (r.name, r.message.clone()),
                None => (
                    "AuthTokenError",
                    "a valid credential is required".to_string(),
                ),
            };
            let reason = format!("{name}: {message}");
            let error = ErrorObject::handshake_rejected(reason.clone(), close_code::AUTH_REQUIRED)
                .with_field("reason", name);
            ctx.metrics
                .handshakes
                .with_label_values(&["rejected", method])
                .inc();
            ctx.metrics.reject("auth");
            let _ = self
                .send_str(codec::encode_error_response(cid, &error))
                .await;
            return Some(Ending::Close(
                close_code::AUTH_REQUIRED,
                reason.chars().take(120).collect(),
            ));
        }
        let wire_error = refusal.as_ref().map(refusal_object);
        let reply = codec::encode_handshake_reply(
            cid,
            &HandshakeStatus {
                socket_id: &self.id,
                ping_timeout_ms: ctx
                    .config
                    .limits
                    .ping_timeout
                    .as_millis()
                    .min(i32::MAX as u128) as u32,
                is_authenticated: authenticated,
                auth_error: wire_error.as_ref(),
            },
        );
        let outcome = match (&refusal, authenticated) {
            (_, true) => "ok",
            (Some(_), false) => "failed",
            (None, false) => "anonymous",
        };
        ctx.metrics
            .handshakes
            .with_label_values(&[outcome, method])
            .inc();
        self.register(upgraded);
        ctx.metrics
            .handshake_duration
            .with_label_values(&[PROTOCOL])
            .observe(upgraded.started.elapsed().as_secs_f64());
        if let Err(ending) = self.send_str(reply).await {
            return Some(ending);
        }
        if refusal
            .as_ref()
            .is_some_and(|r| r.bad_token && r.method == Method::Token)
        {
            if let Err(ending) = self
                .send(Utf8Bytes::from_static(codec::REMOVE_AUTH_TOKEN_FRAME))
                .await
            {
                return Some(ending);
            }
        }
        if self.pending_token.is_some() {
            // The real client drops a #setAuthToken that arrives in the same
            // turn as the handshake reply (protocol spec 8.6): ping now and
            // send the token once the pong (or any later frame) is back.
            if let Err(ending) = self.send(Utf8Bytes::from_static(codec::PING_FRAME)).await {
                return Some(ending);
            }
        }
        None
    }

    /// Takes on a verified identity: claims, session watch, token to hand out.
    fn accept(&mut self, identity: Identity) {
        if let (Some(login), Some(sessions)) = (&identity.session, self.ctx.sessions.as_ref()) {
            sessions.watcher.watch(&login.sid, &login.passport_user);
        }
        self.unwatch_session();
        self.session_login = identity.session;
        self.pending_token = identity.minted_token;
        self.set_auth(identity.claims);
    }

    fn unwatch_session(&mut self) {
        if let (Some(login), Some(sessions)) =
            (self.session_login.take(), self.ctx.sessions.as_ref())
        {
            sessions.watcher.unwatch(&login.sid, &login.passport_user);
        }
    }

    fn register(&mut self, upgraded: &Upgraded) {
        let web_session = self.session_login.as_ref().map(|l| l.sid.clone());
        let entry = SocketEntry::new(
            PROTOCOL,
            upgraded.peer,
            self.outbox.clone(),
            self.claims(),
            web_session,
        );
        self.ctx.sockets.insert(self.id.clone(), entry);
        self.registered = true;
    }

    fn update_entry_auth(&self) {
        let web_session = self.session_login.as_ref().map(|l| l.sid.clone());
        self.ctx
            .sockets
            .set_login(&self.id, self.claims(), web_session);
    }

    fn set_auth(&mut self, claims: Map<String, Value>) {
        let leeway = self.ctx.config.auth.jwt_leeway;
        let remaining = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|exp| Duration::from_secs_f64((exp - now_unix() as f64).clamp(0.0, 1e10)));
        let expires_at = remaining.map(|r| Instant::now() + r + leeway);
        let renew_at = match (remaining, self.ctx.auth.renew_before) {
            (Some(remaining), Some(before)) => {
                Some(Instant::now() + remaining.saturating_sub(before))
            }
            _ => None,
        };
        self.auth = Some(Authenticated {
            claims,
            expires_at,
            renew_at,
        });
    }

    /// The token expired, or is due for renewal.
    async fn on_auth_deadline(&mut self) -> Option<Ending> {
        let now = Instant::now();
        let renewal_due = self.auth.as_ref().is_some_and(|a| {
            a.renew_at.is_some_and(|at| at <= now) && a.expires_at.is_none_or(|exp| exp > now)
        });
        if renewal_due {
            if let Some(mut claims) = self.auth.as_ref().map(|a| a.claims.clone()) {
                claims.remove("iat");
                claims.remove("exp");
                match self.ctx.auth.sign(claims.clone()) {
                    Ok(token) => {
                        if let Ok(fresh) = self.ctx.auth.verify(&token) {
                            self.set_auth(fresh);
                            self.update_entry_auth();
                            return self
                                .send_str(codec::encode_set_auth_token(&token))
                                .await
                                .err();
                        }
                    }
                    Err(e) => tracing::warn!(socket = %self.id, error = %e, "cannot renew token"),
                }
            }
            // Renewal impossible: let the token run out as it would without it.
            if let Some(auth) = self.auth.as_mut() {
                auth.renew_at = None;
            }
            return None;
        }
        self.deauthenticate().await;
        if self.ctx.config.auth.require_auth {
            return Some(Ending::Close(
                close_code::AUTH_REQUIRED,
                "AuthTokenExpiredError: jwt expired".into(),
            ));
        }
        None
    }

    async fn deauthenticate(&mut self) {
        self.unwatch_session();
        self.pending_token = None;
        self.auth = None;
        self.update_entry_auth();
        let _ = self
            .send(Utf8Bytes::from_static(codec::REMOVE_AUTH_TOKEN_FRAME))
            .await;
    }

    async fn on_authenticate(&mut self, token: &str, cid: u64) -> Result<(), Ending> {
        let ctx = self.ctx.clone();
        match credentials::from_token(&ctx, token, Method::Token).await {
            Credential::Accepted(identity) => {
                self.accept(*identity);
                self.update_entry_auth();
                ctx.metrics
                    .handshakes
                    .with_label_values(&["ok", "authenticate"])
                    .inc();
                self.send_str(codec::encode_authenticate_reply(cid, true, None))
                    .await
            }
            Credential::Refused(refusal) if refusal.bad_token => {
                ctx.metrics
                    .handshakes
                    .with_label_values(&["failed", "authenticate"])
                    .inc();
                self.send_str(codec::encode_error_response(cid, &refusal_object(&refusal)))
                    .await?;
                self.deauthenticate().await;
                Ok(())
            }
            Credential::Refused(refusal) => {
                ctx.metrics
                    .handshakes
                    .with_label_values(&["failed", "authenticate"])
                    .inc();
                self.send_str(codec::encode_authenticate_reply(
                    cid,
                    false,
                    Some(&refusal_object(&refusal)),
                ))
                .await
            }
            Credential::Absent => {
                self.send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::auth_token_invalid("jwt must be provided"),
                ))
                .await
            }
        }
    }

    fn claims(&self) -> Option<&Map<String, Value>> {
        self.auth.as_ref().map(|a| &a.claims)
    }

    async fn on_subscribe(&mut self, channel: String, cid: u64) -> Result<(), Ending> {
        if self.channels.contains(&channel) {
            return self.send_str(codec::encode_empty_success(cid)).await;
        }
        if !channel_allowed(&self.ctx.config.channels, self.claims(), &channel) {
            return self
                .send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::channel_forbidden(&channel),
                ))
                .await;
        }
        if self.channels.len() >= self.ctx.config.limits.max_subscriptions as usize {
            self.ctx
                .metrics
                .protocol_error(PROTOCOL, "max_subscriptions");
            let error = ErrorObject::broker(format!(
                "Socket {} reached the limit of {} subscriptions",
                self.id, self.ctx.config.limits.max_subscriptions
            ));
            return self
                .send_str(codec::encode_error_response(cid, &error))
                .await;
        }
        if let Err(e) = self
            .ctx
            .channels
            .subscribe(
                &channel,
                self.id.clone(),
                self.outbox.clone(),
                Wire::SocketCluster,
            )
            .await
        {
            return self
                .send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::broker(e.to_string()),
                ))
                .await;
        }
        self.ctx
            .sockets
            .update(&self.id, |entry| entry.channels.insert(channel.clone()));
        self.channels.insert(channel);
        self.send_str(codec::encode_empty_success(cid)).await
    }

    async fn on_unsubscribe(&mut self, channel: String, cid: Option<u64>) -> Result<(), Ending> {
        let was = self.channels.remove(&channel);
        if was {
            self.ctx.channels.unsubscribe(&channel, &self.id);
            self.ctx
                .sockets
                .update(&self.id, |entry| entry.channels.remove(&channel));
        }
        match cid {
            None => Ok(()),
            Some(cid) if was => self.send_str(codec::encode_empty_success(cid)).await,
            Some(cid) => {
                self.send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::broker_not_subscribed(&channel, &self.id),
                ))
                .await
            }
        }
    }

    async fn on_publish(
        &mut self,
        channel: String,
        data: Option<Value>,
        cid: Option<u64>,
    ) -> Result<(), Ending> {
        if !channel_allowed(&self.ctx.config.channels, self.claims(), &channel) {
            return match cid {
                Some(cid) => {
                    self.send_str(codec::encode_error_response(
                        cid,
                        &ErrorObject::channel_forbidden(&channel),
                    ))
                    .await
                }
                None => Ok(()),
            };
        }
        let raw = serde_json::value::to_raw_value(&data.unwrap_or(Value::Null))
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
        let started = std::time::Instant::now();
        let published = self.ctx.channels.publish(&channel, raw).await;
        self.ctx
            .metrics
            .broker_roundtrip
            .observe(started.elapsed().as_secs_f64());
        match (cid, published) {
            (None, Ok(())) => Ok(()),
            (None, Err(e)) => {
                tracing::warn!(socket = %self.id, channel, error = %e, "publish without ack not fully delivered");
                Ok(())
            }
            (Some(cid), Ok(())) => self.send_str(codec::encode_empty_success(cid)).await,
            (Some(cid), Err(e)) => {
                self.send_str(codec::encode_error_response(
                    cid,
                    &ErrorObject::broker(e.to_string()),
                ))
                .await
            }
        }
    }

    /// Leaves every channel, forgets the socket and sends the close frame.
    async fn finish(&mut self, ending: Ending) {
        self.unwatch_session();
        for channel in std::mem::take(&mut self.channels) {
            self.ctx.channels.unsubscribe(&channel, &self.id);
        }
        if self.registered {
            self.ctx.sockets.remove(&self.id);
        }
        let Ending::Close(code, reason) = ending else {
            return;
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.clone().into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            // tungstenite refuses to write after a read error (e.g. an
            // oversized frame); send the close frame ourselves so the client
            // learns the code instead of seeing the TCP connection drop.
            let _ = write_raw_close(self.ws.get_mut(), code, &reason).await;
            return;
        }
        let grace = tokio::time::sleep(CLOSE_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => return,
                next = self.ws.next() => if next.is_none() || matches!(next, Some(Err(_))) { return },
            }
        }
    }
}

/// An unmasked close frame written straight to the transport.
async fn write_raw_close<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    code: u16,
    reason: &str,
) -> std::io::Result<()> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The wire error object of a refused credential, exactly as SocketCluster sends it.
fn refusal_object(refusal: &Refusal) -> ErrorObject {
    refusal.fields.iter().fold(
        ErrorObject::new(refusal.name, refusal.message.clone()),
        |object, (key, value)| object.with_field(key.clone(), value.clone()),
    )
}
