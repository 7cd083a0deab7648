//! The one trait between the socket core and a wire protocol, and the
//! protocol-neutral words they speak: what a client asked for
//! ([`SocketEvent`]) and what the core answers ([`ReplyError`], the
//! `Protocol` methods).
//!
//! A protocol adapter only translates: frames into events, outcomes into
//! frames, [`CloseReason`]s into close codes. Deadlines, logins, channel rules,
//! the outbox and the ending live in the core, once for every protocol.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::ending::CloseReason;
use super::heartbeat::HeartbeatPolicy;
use super::writer::Out;
use crate::auth::{Claims, Refusal};
use crate::hub::channels::DeliveryEncoder;

/// Names the request a reply answers: SocketCluster's `cid`, Socket.IO's ack id.
pub type ReplyTo = u64;

/// The token a client offered in its protocol handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeToken {
    /// None offered.
    Absent,
    /// A string to verify as a JWT.
    Present(String),
    /// Something that cannot be a JWT; the text says what was wrong.
    Malformed(&'static str),
}

/// What a client asked for, decoded from its protocol's frames.
#[derive(Debug)]
pub enum SocketEvent {
    /// An answer to the server's ping.
    Pong,
    /// The protocol handshake (SocketCluster `#handshake`, Socket.IO CONNECT).
    Handshake {
        /// The token it carried.
        token: HandshakeToken,
        /// Where the handshake reply goes.
        reply: ReplyTo,
    },
    /// Join a channel.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where the outcome goes, if the client asked for one.
        reply: Option<ReplyTo>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: String,
        /// Where the outcome goes, if the client asked for one.
        reply: Option<ReplyTo>,
    },
    /// Publish to a channel.
    Publish {
        /// The channel.
        channel: String,
        /// The message, as JSON.
        data: Box<RawValue>,
        /// Where the outcome goes, if the client asked for one.
        reply: Option<ReplyTo>,
    },
    /// Present a token on an open socket (SocketCluster `#authenticate`).
    Authenticate {
        /// The JWT to verify.
        token: String,
        /// Where the outcome goes.
        reply: ReplyTo,
    },
    /// The client drops its login (SocketCluster `#removeAuthToken`).
    Deauthenticate {
        /// Where the outcome goes, if the client asked for one.
        reply: Option<ReplyTo>,
    },
    /// The client's token turned out bad while decoding (already answered by
    /// the adapter); the socket loses its login as for any bad token.
    TokenRefused,
    /// An application procedure call that wants an answer (SocketCluster
    /// `invoke`, Socket.IO emit with an ack): the app's `rpc` hook.
    Call {
        /// What was sent.
        event: AppEvent,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// An application event without an answer (SocketCluster `transmit`,
    /// Socket.IO emit without an ack): the app's `event` hook.
    Message(AppEvent),
    /// Input the protocol refused without closing: count it.
    Counted(&'static str),
    /// End the socket.
    Close(CloseReason),
}

/// An application event as the client sent it.
#[derive(Debug)]
pub struct AppEvent {
    /// Procedure or event name.
    pub name: String,
    /// SocketCluster's `data`; Socket.IO's first argument (`null` without one).
    pub data: Box<RawValue>,
    /// Socket.IO: every argument, as a JSON array (binary ones inlined).
    pub args: Option<Box<RawValue>>,
}

/// An error reply in protocol-neutral form; each adapter encodes it
/// (SocketCluster's error object, Socket.IO's `{"error": {name, message}}` ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// The error name the client sees, e.g. `ChannelForbiddenError` (or the
    /// application's own, from a hook).
    pub name: Cow<'static, str>,
    /// Readable text.
    pub message: String,
}

impl ReplyError {
    /// An error with this name and text.
    pub fn new(name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> ReplyError {
        ReplyError {
            name: name.into(),
            message: message.into(),
        }
    }
}

/// How a handshake went, for the adapter's reply.
#[derive(Debug)]
pub struct HandshakeLogin<'a> {
    /// The socket's id, as the client will see it.
    pub socket_id: &'a str,
    /// The socket now carries a verified login.
    pub authenticated: bool,
    /// The login is the token the client itself sent in the handshake
    /// (SocketCluster's `isAuthenticated`): it needs no token handed to it.
    pub token_accepted: bool,
    /// The credential that was presented and refused (soft mode), if any.
    pub refusal: Option<&'a Refusal>,
    /// The token the socket's login holds: minted for it (session and
    /// access-token logins, to be handed to the client) or, when
    /// `token_accepted`, the client's own.
    pub token: Option<&'a str>,
    /// The login's verified claims (an adapter that tells the client who it
    /// is derives the record's `user` from them, only then).
    pub claims: Option<&'a Claims>,
}

/// A wire protocol, seen from the socket core. One value per socket holds
/// the protocol's own per-socket state (a binary packet being assembled, a
/// token waiting for the client's first pong...).
pub trait Protocol: Send + 'static {
    /// Label of this protocol in metrics and socket records.
    const NAME: &'static str;
    /// How channel messages are encoded for this protocol's sockets.
    const DELIVERY: &'static DeliveryEncoder;

    /// A fresh socket id, shaped as the protocol's real server makes them.
    fn new_socket_id(&self) -> String;
    /// The protocol's heartbeat, with its limits from the configuration.
    fn heartbeat(&self) -> HeartbeatPolicy;
    /// True when the heartbeat runs from the upgrade on (Engine.IO); false
    /// when it starts with the handshake reply (SocketCluster).
    fn starts_heartbeat_at_open(&self) -> bool {
        false
    }
    /// Frames sent right after the upgrade, before anything is read.
    fn open(&mut self, _socket_id: &str, _out: &mut Out) {}
    /// Decodes one inbound frame into events (and may answer protocol-level
    /// frames itself). `registered`: the handshake is complete.
    fn decode(
        &mut self,
        message: Message,
        registered: bool,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    );
    /// Answers a handshake that may create the socket; false when the
    /// protocol has no socket for it (Socket.IO's CONNECT_ERROR in soft mode).
    fn accept_handshake(
        &mut self,
        out: &mut Out,
        reply: ReplyTo,
        login: &HandshakeLogin<'_>,
    ) -> bool;
    /// Answers a handshake `--require-auth` refuses; the socket then ends so.
    fn reject_handshake(&mut self, out: &mut Out, reply: ReplyTo, refusal: &Refusal)
        -> CloseReason;
    /// Answers a channel request or call.
    fn reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &ReplyError>);
    /// Answers an application call with the app's result or error
    /// (SocketCluster `{rid, data}` / `{rid, error}`, Socket.IO's ack).
    fn call_result(&mut self, out: &mut Out, reply: ReplyTo, result: Result<&Value, &ReplyError>);
    /// Answers SocketCluster's `#authenticate`.
    fn authenticate_reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &Refusal>);
    /// Hands the client a token it should store (login, renewal), with the
    /// claims of who it now is.
    fn token_issued(&mut self, out: &mut Out, token: &str, claims: Option<&Claims>);
    /// Tells the client the server ended its login (expiry, logout, bad token).
    fn deauthenticated(&mut self, out: &mut Out, name: &str, message: &str);
    /// Tells the client it was removed from a channel.
    fn kicked_out(&mut self, out: &mut Out, channel: &str, message: &str);
    /// A server-side event (admin emit).
    fn event(&mut self, out: &mut Out, name: &str, data: &RawValue);
    /// A channel delivery encoded by [`Protocol::DELIVERY`].
    fn delivery(&mut self, out: &mut Out, frame: Utf8Bytes);
    /// The heartbeat's ping frame.
    fn ping(&mut self, out: &mut Out);
    /// The close frame for `reason` (`None`: a close frame without status
    /// code); may queue a last protocol frame first.
    fn close(&mut self, out: &mut Out, reason: &CloseReason) -> Option<(u16, String)>;
}
