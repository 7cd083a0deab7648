//! The socket core: one task per socket, one loop, written once for every
//! protocol.
//!
//! The loop owns the socket's identity ([`login`]), its channels
//! ([`membership`]), its writes ([`writer`]), its deadlines (handshake,
//! [`heartbeat`], login expiry and renewal, a write that makes no progress)
//! and its ending ([`ending`]). A protocol is an adapter behind
//! [`Protocol`]: it decodes frames into [`SocketEvent`]s and encodes the
//! outcomes, and never sees a deadline or a lock.
//!
//! Layout:
//! - [`protocol`]: the adapter trait and the protocol-neutral events and replies.
//! - [`login`]: who the socket is and for how long.
//! - [`membership`]: channels and their rules.
//! - [`heartbeat`]: pings and the silence deadline.
//! - [`writer`]: queued writes that never block the loop.
//! - [`ending`]: why a socket ends.
//! - [`app_calls`] (and its effects): the app hooks, dispatched through
//!   [`AppHooks`], one call in flight per socket, in the client's order.

pub mod app_calls;
mod app_effects;
pub mod ending;
pub mod heartbeat;
pub mod login;
pub mod membership;
pub mod protocol;
pub mod publish_acks;
pub mod writer;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sockhive_shared::channel_rules::ChannelAction;
use sockhive_shared::config::{ChannelAuth, HookKind};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::Message;

pub use crate::app::AppHooks;
pub use ending::CloseReason;
pub use protocol::{
    AppEvent, HandshakeLogin, HandshakeToken, Protocol, ReplyError, ReplyTo, SocketEvent,
};

use crate::app::LifecycleEvent;
use crate::auth::{Credential, Method, PendingCredential, Refusal};
use crate::hub::outbox::{outbox, Inbox, Outbound, Outbox};
use crate::hub::registry::{login_view, SocketEntry};
use crate::transport::{Ending, Upgraded, Wire};
use crate::Worker;
use heartbeat::{Beat, Heartbeat};
use login::{Login, LoginDue};
use membership::{Membership, Subject};
use writer::{Io, Out};

/// How long a connection caught mid-handshake by a drain may take to finish it.
const DRAIN_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// How long a closing socket waits for its last frames and the client's close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a socket that does not read gets to take its close frame.
const NOT_READING_GRACE: Duration = Duration::from_millis(100);

/// The text of `#kickOut` / `kickout` when a login change costs a channel.
const LOST_ACCESS: &str = "The socket's authentication changed and no longer grants this channel";

/// One socket's state, owned by its task; nothing in it is shared or locked.
struct Socket<P: Protocol, W: Wire> {
    worker: Arc<Worker>,
    id: Arc<str>,
    protocol: P,
    /// The connection (a WebSocket, or a long-polling session).
    ws: W,
    /// Frames waiting to be written.
    out: Out,
    /// How the rest of the worker reaches this socket (kept for the registry
    /// entry and channel subscriptions).
    outbox: Outbox,
    /// The handshake is complete and the socket is in the registry.
    registered: bool,
    login: Login,
    membership: Membership,
    /// The socket as channel rules see it (only under `--channel-auth rules`;
    /// boxed, so other sockets pay one pointer).
    rule_record: Option<Box<Value>>,
    heartbeat: Heartbeat,
    /// Calls to the app waiting or in flight (boxed, created at the first).
    calls: Option<Box<app_calls::AppCalls>>,
    /// Replies to publishes waiting for Redis (boxed, created at the first).
    acks: Option<Box<publish_acks::PendingAcks>>,
    /// The upgrade's credential, resolved at the protocol handshake.
    upgrade_credential: Option<PendingCredential>,
    /// The `connect` hook's answer when it was asked at the upgrade (boxed:
    /// rare, and every idle socket would carry it).
    admitted: Option<Box<Admitted>>,
    peer: SocketAddr,
    /// When the upgrade request began, for handshake latency.
    started: std::time::Instant,
}

/// How a connection was let in: its credential (possibly still being
/// resolved) and, when the front door already asked the app's `connect` hook
/// (`--require-auth`), the socket id the app saw and its answer.
pub struct Admission {
    /// The upgrade's credential.
    pub credential: PendingCredential,
    /// The `connect` hook's answer at the upgrade.
    pub admitted: Option<Admitted>,
}

/// The `connect` hook answered before the upgrade.
pub struct Admitted {
    /// The id the hook saw; the socket keeps it.
    pub socket_id: String,
    /// The effects to apply once the socket exists, or the app's refusal,
    /// which the protocol handshake then reports.
    pub answer: Result<Vec<crate::app::Effect>, Refusal>,
}

impl From<PendingCredential> for Admission {
    fn from(credential: PendingCredential) -> Admission {
        Admission {
            credential,
            admitted: None,
        }
    }
}

/// Serves one upgraded connection with `protocol` until it ends.
///
/// Not an `async fn`: the socket is built here and only it travels into the
/// returned future. An `async fn` would keep its arguments (the stream, the
/// upgrade, the protocol) in every idle socket's task next to the socket
/// they were moved into (issue 19).
pub fn run_socket<P: Protocol, W: Wire>(
    worker: Arc<Worker>,
    ws: W,
    upgraded: Upgraded,
    admission: Admission,
    protocol: P,
) -> impl std::future::Future<Output = ()> + Send {
    let Admission {
        credential,
        admitted,
    } = admission;
    let (id, admitted) = match admitted {
        Some(mut admitted) => (
            std::mem::take(&mut admitted.socket_id),
            Some(Box::new(admitted)),
        ),
        None => (protocol.new_socket_id(), None),
    };
    let (outbox, inbox) = outbox(worker.config.limits.max_send_queue as usize);
    let sent = worker.metrics.messages_out();
    let mut socket = Socket {
        id: id.into(),
        heartbeat: Heartbeat::new(protocol.heartbeat()),
        out: Out::new(inbox.budget().clone(), sent),
        worker: worker.clone(),
        protocol,
        ws,
        outbox,
        registered: false,
        login: Login::default(),
        membership: Membership::default(),
        rule_record: None,
        calls: None,
        acks: None,
        upgrade_credential: Some(credential),
        admitted,
        peer: upgraded.peer,
        started: upgraded.started,
    };
    drop(upgraded);
    let connections = worker.metrics.connections_of(P::NAME);
    drop(worker);
    async move {
        connections.inc();
        let ending = socket.run(inbox).await;
        // Boxed like the other rare states: the close handshake should not
        // enlarge every idle socket.
        Box::pin(socket.finish(ending)).await;
        connections.dec();
    }
}

/// The ending a WebSocket-level read error calls for.
fn read_error_reason(error: WsError) -> CloseReason {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            CloseReason::TooBig {
                size,
                max: max_size,
            }
        }
        WsError::Capacity(_) => CloseReason::TooBig { size: 0, max: 0 },
        WsError::Utf8(_) => CloseReason::BadUtf8,
        WsError::Protocol(e) => CloseReason::BadFrame(e.to_string()),
        _ => CloseReason::Gone,
    }
}

impl<P: Protocol, W: Wire> Socket<P, W> {
    async fn run(&mut self, mut inbox: Inbox) -> CloseReason {
        let budget = inbox.budget().clone();
        let shutdown = self.worker.shutdown.clone();
        let mut handshake_deadline = Instant::now() + self.worker.config.limits.handshake_timeout;
        let mut drain_grace = false;
        // One timer for every deadline, re-armed only when the earliest one
        // changes (not per frame).
        let never = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(never);
        tokio::pin!(timer);
        self.protocol.open(&self.id, &mut self.out);
        if self.protocol.starts_heartbeat_at_open() {
            self.heartbeat.start(Instant::now());
        }
        loop {
            let next = self.next_timer(handshake_deadline).unwrap_or(never);
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            tokio::select! {
                biased;
                () = budget.overflowed() => return CloseReason::NotReading,
                // One branch (each branch's future lives in every idle
                // socket's task). A connection accepted just before the drain
                // still completes its handshake (briefly), so a client never
                // sees its attempt refused during a rolling restart; it then
                // gets 1001 like all.
                _ = shutdown.cancelled(), if self.registered || !drain_grace => {
                    if self.registered {
                        return CloseReason::GoingAway;
                    }
                    drain_grace = true;
                    handshake_deadline = handshake_deadline.min(Instant::now() + DRAIN_HANDSHAKE_GRACE);
                }
                _ = &mut timer => {
                    if !self.registered && Instant::now() >= handshake_deadline {
                        return if drain_grace { CloseReason::GoingAway } else { CloseReason::HandshakeTimeout };
                    }
                    if let Some(ending) = self.on_timer().await {
                        return ending;
                    }
                }
                finished = std::future::poll_fn(|cx| match self.calls.as_mut() {
                    Some(calls) => calls.poll_answer(cx),
                    None => std::task::Poll::Pending,
                }), if self.calls.as_ref().is_some_and(|c| c.busy()) => {
                    if let Some(ending) = Box::pin(self.on_app_answer(finished)).await {
                        return ending;
                    }
                }
                (reply, channel, result) = std::future::poll_fn(|cx| match self.acks.as_mut() {
                    Some(acks) => acks.poll_oldest(cx),
                    None => std::task::Poll::Pending,
                }), if self.acks.as_ref().is_some_and(|a| !a.is_empty()) => {
                    self.answer_channel(Some(reply), &channel, result);
                }
                item = inbox.recv() => {
                    let Some(item) = item else { return CloseReason::Gone };
                    if let Some(ending) = self.on_outbound(item) {
                        return ending;
                    }
                    // The rest of a burst in the same turn (bounded by the
                    // send budget): one pass of this loop per burst.
                    while let Some(item) = inbox.try_recv() {
                        if let Some(ending) = self.on_outbound(item) {
                            return ending;
                        }
                    }
                }
                io = std::future::poll_fn(|cx| self.out.poll_io(&mut self.ws, cx)) => match io {
                    Io::Frame(message) => {
                        // Boxed: message handling (the handshake above all) is
                        // the largest state of the socket; an idle socket,
                        // which only waits here, should not carry it.
                        if let Some(ending) = Box::pin(self.on_message(message)).await {
                            return ending;
                        }
                    }
                    Io::ReadError(error) => return read_error_reason(error),
                    Io::Closed => return CloseReason::Gone,
                },
            }
        }
    }

    /// The earliest deadline the loop must wake for.
    fn next_timer(&self, handshake_deadline: Instant) -> Option<Instant> {
        let stall = self
            .out
            .blocked_since()
            .map(|since| since + self.heartbeat.policy().timeout);
        [
            (!self.registered).then_some(handshake_deadline),
            self.heartbeat.next_timer(),
            self.login.next_timer(),
            stall,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whatever came due: a stalled write, the heartbeat, the login's clock.
    async fn on_timer(&mut self) -> Option<CloseReason> {
        let now = Instant::now();
        let timeout = self.heartbeat.policy().timeout;
        if self
            .out
            .blocked_since()
            .is_some_and(|at| at + timeout <= now)
        {
            return Some(CloseReason::NotReading);
        }
        match self.heartbeat.due(now) {
            Beat::TimedOut => return Some(CloseReason::PongTimeout),
            Beat::Ping => {
                self.protocol.ping(&mut self.out);
                self.heartbeat.on_ping_sent(now);
            }
            Beat::Idle => {}
        }
        match self.login.due(now) {
            LoginDue::Idle => None,
            LoginDue::Renew => {
                if let Some(token) = self.login.renew(&self.worker) {
                    self.protocol
                        .token_issued(&mut self.out, &token, self.login.claims());
                    self.identity_changed();
                }
                None
            }
            LoginDue::Expired => self.lose_login("AuthTokenExpiredError", "jwt expired"),
        }
    }

    /// Something the rest of the worker queued for this socket.
    fn on_outbound(&mut self, item: Outbound) -> Option<CloseReason> {
        match item {
            Outbound::Frame(frame) => self.protocol.delivery(&mut self.out, frame),
            Outbound::Event { event, data } => self.protocol.event(&mut self.out, &event, &data),
            Outbound::Kick { reason } => return Some(CloseReason::Kicked(reason)),
            Outbound::UserChanged(user) => {
                if let Some(token) = self.login.update_user(&self.worker, *user) {
                    self.protocol
                        .token_issued(&mut self.out, &token, self.login.claims());
                }
                self.identity_changed();
            }
            Outbound::LoggedOut => {
                let config = &self.worker.config;
                let kick = config.auth.require_auth
                    || config.session.on_logout == sockhive_shared::config::OnLogout::Kick;
                if kick {
                    self.login.clear(&self.worker);
                    return Some(CloseReason::AuthRequired(
                        "SessionNotFoundError: logged out".into(),
                    ));
                }
                return self.lose_login("SessionNotFoundError", "the web session logged out");
            }
        }
        None
    }

    async fn on_message(&mut self, message: Message) -> Option<CloseReason> {
        self.worker.metrics.message_in();
        let mut events = Vec::new();
        self.protocol
            .decode(message, self.registered, &mut self.out, &mut events);
        let pong = events.iter().any(|e| matches!(e, SocketEvent::Pong));
        self.heartbeat.on_inbound(Instant::now(), pong);
        for event in events {
            if let Some(ending) = self.on_event(event).await {
                return Some(ending);
            }
        }
        None
    }

    async fn on_event(&mut self, event: SocketEvent) -> Option<CloseReason> {
        let worker = self.worker.clone();
        match event {
            SocketEvent::Pong => {}
            SocketEvent::Counted(reason) => worker.metrics.protocol_error(P::NAME, reason),
            SocketEvent::Close(reason) => return Some(reason),
            SocketEvent::Handshake { token, reply } => {
                return self.on_handshake(token, reply).await
            }
            SocketEvent::Subscribe { channel, reply } => {
                self.channel_request(ChannelAction::Subscribe, channel, None, reply)
                    .await;
            }
            SocketEvent::Unsubscribe { channel, reply } => {
                let result = self.membership.unsubscribe(&worker, &self.id, &channel);
                self.answer_channel(reply, &channel, result);
            }
            SocketEvent::Publish {
                channel,
                data,
                reply,
            } => {
                self.channel_request(ChannelAction::Publish, channel, Some(data), reply)
                    .await;
            }
            SocketEvent::Authenticate { token, reply } => {
                return self.on_authenticate(&token, reply).await
            }
            SocketEvent::Deauthenticate { reply } => {
                self.login.clear(&worker);
                self.identity_changed();
                if let Some(reply) = reply {
                    self.protocol.reply(&mut self.out, reply, Ok(()));
                }
            }
            SocketEvent::TokenRefused => {
                return self.lose_login("AuthTokenInvalidError", "the token was refused")
            }
            SocketEvent::Call { event, reply } => {
                if let Err(error) = self.check_event_name(&event.name) {
                    self.protocol.call_result(&mut self.out, reply, Err(&error));
                } else if worker.hook_on(HookKind::Rpc) {
                    self.call_app(app_calls::Waiting::app_event(event, Some(reply)));
                } else {
                    // No app hooks: answer at once instead of leaving the
                    // client to time out.
                    let error = ReplyError::new(
                        "UnknownProcedureError",
                        format!("No handler for event \"{}\"", event.name),
                    );
                    self.protocol.call_result(&mut self.out, reply, Err(&error));
                }
            }
            SocketEvent::Message(event) => {
                // Without the `event` hook, an event without an answer is dropped.
                if self.check_event_name(&event.name).is_ok() && worker.hook_on(HookKind::Event) {
                    self.call_app(app_calls::Waiting::app_event(event, None));
                }
            }
        }
        None
    }

    /// The socket as the channel rules see it.
    fn subject(&self) -> Subject<'_> {
        Subject {
            claims: self.login.claims(),
            record: self.rule_record.as_deref().unwrap_or(&Value::Null),
        }
    }

    /// `--max-event-length`: a longer name is refused and never echoed.
    fn check_event_name(&self, name: &str) -> Result<(), ReplyError> {
        let max = self.worker.config.limits.max_event_length;
        if name.len() <= max as usize {
            return Ok(());
        }
        self.worker.metrics.protocol_error(P::NAME, "name_too_long");
        Err(ReplyError::new(
            "InvalidArgumentsError",
            format!(
                "Event name of {} bytes exceeds the limit of {max} bytes",
                name.len()
            ),
        ))
    }

    fn answer_channel(
        &mut self,
        reply: Option<ReplyTo>,
        channel: &str,
        result: Result<(), membership::ChannelRefusal>,
    ) {
        if let Err(refusal) = &result {
            if let Some(reason) = refusal.metric_reason() {
                self.worker.metrics.protocol_error(P::NAME, reason);
            }
        }
        let Some(reply) = reply else { return };
        match result {
            Ok(()) => self.protocol.reply(&mut self.out, reply, Ok(())),
            Err(refusal) => {
                let error = refusal.reply_error(&self.id, channel);
                self.protocol.reply(&mut self.out, reply, Err(&error));
            }
        }
    }

    async fn on_handshake(&mut self, token: HandshakeToken, reply: ReplyTo) -> Option<CloseReason> {
        let worker = self.worker.clone();
        // The upgrade's credential (access token, cookie) decides when
        // present; otherwise the token of the protocol handshake.
        let credential = match self.upgrade_credential.take() {
            Some(pending) => pending.resolve().await,
            None => Credential::Absent,
        };
        // Whether the token the client itself sent is what it is logged in
        // with (SocketCluster's `isAuthenticated`), and that token.
        let mut client_token = None;
        let credential = match (credential, token) {
            (Credential::Absent, HandshakeToken::Present(token)) => {
                let credential = worker.credentials.from_token(&token, Method::Token).await;
                if matches!(credential, Credential::Accepted(_)) {
                    client_token = Some(token);
                }
                credential
            }
            (Credential::Absent, HandshakeToken::Malformed(why)) => {
                Credential::Refused(malformed_token(why))
            }
            // A reconnecting client carries the token it was handed: when it
            // still verifies for the user the upgrade credential logged in,
            // the client is authenticated by it and needs no new one.
            (Credential::Accepted(mut identity), HandshakeToken::Present(token)) => {
                let same_user = worker
                    .credentials
                    .jwt
                    .verify(&token)
                    .is_ok_and(|claims| claims.get("sub") == identity.claims.get("sub"));
                if same_user {
                    identity.minted_token = None;
                    client_token = Some(token);
                }
                Credential::Accepted(identity)
            }
            (credential, _) => credential,
        };
        let mut minted = None;
        let (method, refusal) = match credential {
            Credential::Absent => ("none", None),
            Credential::Accepted(identity) => {
                let method = identity.method.label();
                minted = self.login.set(&worker, *identity);
                (method, None)
            }
            Credential::Refused(refusal) => (refusal.method.label(), Some(refusal)),
        };
        // The app's `connect` hook has the last word on who the socket is.
        let mut refusal = refusal;
        let mut connect_effects = Vec::new();
        match self.admitted.take() {
            // Asked at the upgrade already (`--require-auth`).
            Some(admitted) => match admitted.answer {
                Ok(effects) => connect_effects = effects,
                Err(refused) => {
                    self.login.clear(&worker);
                    refusal = Some(refused);
                }
            },
            None if worker.hook_on(HookKind::Connect) => match self.connect_hook().await {
                Ok(effects) => connect_effects = effects,
                Err(refused) => {
                    self.login.clear(&worker);
                    refusal = Some(refused);
                }
            },
            None => {}
        }
        let authenticated = self.login.is_authenticated();
        if worker.config.auth.require_auth && !authenticated {
            let refusal = refusal.unwrap_or_else(credential_required);
            worker.metrics.handshake("rejected", method);
            worker.metrics.reject("auth");
            return Some(
                self.protocol
                    .reject_handshake(&mut self.out, reply, &refusal),
            );
        }
        let created = self.protocol.accept_handshake(
            &mut self.out,
            reply,
            &HandshakeLogin {
                socket_id: &self.id,
                authenticated,
                token_accepted: client_token.is_some(),
                refusal: refusal.as_ref(),
                token: minted.as_deref().or(client_token.as_deref()),
                claims: self.login.claims(),
            },
        );
        let outcome = match (created, authenticated, &refusal) {
            (true, true, _) => "ok",
            (_, _, Some(_)) | (false, _, _) => "failed",
            (true, false, None) => "anonymous",
        };
        worker.metrics.handshake(outcome, method);
        if created {
            self.register();
            if !self.heartbeat.is_running() {
                self.heartbeat.start(Instant::now());
            }
            worker
                .metrics
                .handshake_took(P::NAME, self.started.elapsed().as_secs_f64());
            if !connect_effects.is_empty() {
                return self.apply_effects(connect_effects).await;
            }
        }
        None
    }

    /// Asks the app's `connect` hook about the socket about to exist: its
    /// effects (applied once it exists), or the refusal the client gets.
    async fn connect_hook(&mut self) -> Result<Vec<crate::app::Effect>, Refusal> {
        app_calls::ask_connect(
            &self.worker,
            P::NAME,
            &self.id,
            self.peer,
            self.login.claims(),
            self.login.web_session(),
        )
        .await
    }

    async fn on_authenticate(&mut self, token: &str, reply: ReplyTo) -> Option<CloseReason> {
        let worker = self.worker.clone();
        let counter = |outcome: &str| worker.metrics.handshake(outcome, "authenticate");
        match worker.credentials.from_token(token, Method::Token).await {
            Credential::Accepted(identity) => {
                counter("ok");
                let minted = self.login.set(&worker, *identity);
                self.protocol
                    .authenticate_reply(&mut self.out, reply, Ok(()));
                if let Some(token) = minted {
                    self.protocol
                        .token_issued(&mut self.out, &token, self.login.claims());
                }
                self.identity_changed();
                None
            }
            Credential::Refused(refusal) => {
                counter("failed");
                self.protocol
                    .authenticate_reply(&mut self.out, reply, Err(&refusal));
                if refusal.bad_token {
                    return self.lose_login(&refusal.name, &refusal.message);
                }
                None
            }
            Credential::Absent => {
                let refusal = malformed_token("jwt must be provided");
                self.protocol
                    .authenticate_reply(&mut self.out, reply, Err(&refusal));
                None
            }
        }
    }

    /// The server ended the login (expiry, logout, a bad token): the client
    /// hears it, the channels it granted are left, and under `--require-auth`
    /// the socket ends.
    fn lose_login(&mut self, name: &str, message: &str) -> Option<CloseReason> {
        self.login.clear(&self.worker);
        self.protocol.deauthenticated(&mut self.out, name, message);
        self.identity_changed();
        self.worker
            .config
            .auth
            .require_auth
            .then(|| CloseReason::AuthRequired(format!("{name}: {message}")))
    }

    /// After every identity change: the record and user index follow, and
    /// every channel is checked against the rules again.
    fn identity_changed(&mut self) {
        self.refresh_rule_record();
        if !self.registered {
            return;
        }
        self.worker.sockets.set_login(
            &self.id,
            self.login.shared_claims(),
            self.login.web_session(),
        );
        let subject = Subject {
            claims: self.login.claims(),
            record: self.rule_record.as_deref().unwrap_or(&Value::Null),
        };
        let lost = self.membership.recheck(&self.worker, &self.id, subject);
        for channel in lost {
            self.protocol
                .kicked_out(&mut self.out, &channel, LOST_ACCESS);
        }
    }

    /// What channel rules see of the socket: its record's `id`, `protocol`,
    /// `logged_in`, `user` and `auth`, rebuilt only when the identity changes
    /// (and only under `--channel-auth rules`), so deciding allocates nothing.
    fn refresh_rule_record(&mut self) {
        if self.worker.config.channels.channel_auth != ChannelAuth::Rules {
            return;
        }
        let (logged_in, user, auth) = login_view(self.login.claims());
        self.rule_record = Some(Box::new(serde_json::json!({
            "id": &*self.id,
            "protocol": P::NAME,
            "logged_in": logged_in,
            "user": user,
            "auth": auth,
        })));
    }

    fn register(&mut self) {
        self.refresh_rule_record();
        let entry = SocketEntry::new(
            P::NAME,
            self.peer,
            self.outbox.clone(),
            self.login.shared_claims(),
            self.login.web_session(),
        );
        self.worker.sockets.insert(self.id.clone(), entry);
        self.registered = true;
        self.tell_lifecycle("connected");
    }

    /// The `lifecycle` hook's `connected` / `disconnected` record.
    fn tell_lifecycle(&self, kind: &'static str) {
        let Some(app) = self.worker.app.as_ref() else {
            return;
        };
        if !self.worker.hook_on(HookKind::Lifecycle) {
            return;
        }
        let Some(socket) = self.worker.sockets.record_of(&self.id) else {
            return;
        };
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        app.lifecycle(LifecycleEvent { kind, socket, at });
    }

    /// Leaves every channel, forgets the socket and closes the connection so
    /// that the client learns why.
    async fn finish(&mut self, reason: CloseReason) {
        let worker = self.worker.clone();
        self.login.clear(&worker);
        if self.registered {
            self.tell_lifecycle("disconnected");
        }
        self.membership.leave_all(&worker, &self.id);
        if self.registered {
            worker.sockets.remove(&self.id);
        }
        if let Some(metric) = reason.metric_reason() {
            worker.metrics.protocol_error(P::NAME, metric);
        }
        if reason == CloseReason::NotReading {
            worker.metrics.slow_consumers.inc();
        }
        if reason == CloseReason::Gone {
            return;
        }
        // A client that does not read cannot take a close frame either: one
        // short try, then the connection is dropped at once instead of
        // holding its descriptor (and megabytes of unsent data) for seconds.
        let not_reading = reason == CloseReason::NotReading;
        let grace = if not_reading {
            NOT_READING_GRACE
        } else {
            CLOSE_GRACE
        };
        if not_reading || reason == CloseReason::PongTimeout {
            self.out.discard();
        }
        let close = self.protocol.close(&mut self.out, &reason);
        let _ = tokio::time::timeout(grace, self.out.drain(&mut self.ws)).await;
        let ending = if not_reading {
            Ending::Abrupt
        } else {
            Ending::Orderly
        };
        self.ws.end(close, grace, ending).await;
    }
}

/// A token that cannot be a JWT (a non-string `auth.token`, an empty `#authenticate`).
fn malformed_token(why: &str) -> Refusal {
    let mut fields = Map::new();
    fields.insert("isBadToken".into(), Value::Bool(true));
    Refusal {
        method: Method::Token,
        name: "AuthTokenInvalidError".into(),
        message: why.into(),
        reason: "invalid",
        fields: Box::new(fields),
        bad_token: true,
    }
}

/// `--require-auth` and nothing was presented.
fn credential_required() -> Refusal {
    Refusal {
        method: Method::Token,
        name: "AuthTokenError".into(),
        message: "a valid credential is required".into(),
        reason: "required",
        fields: Box::default(),
        bad_token: false,
    }
}
