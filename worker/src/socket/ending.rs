//! How a socket ends, in words every protocol maps to its own close codes.

/// The close reason a draining worker sends, whatever the protocol.
pub const GOING_AWAY_TEXT: &str = "server shutting down";

/// The close reason of a socket dropped because it does not read.
pub const NOT_READING_TEXT: &str = "send queue overflow: the client is not reading";

/// Why the socket core is closing a socket. Each protocol adapter turns it
/// into its close frame (SocketCluster's 4000-range codes, Engine.IO's plain
/// or 1008 closes) in [`Protocol::close`](super::Protocol::close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The worker is draining: 1001, the client reconnects elsewhere.
    GoingAway,
    /// An operator removed the socket (admin kick); the client must not retry.
    Kicked(String),
    /// The socket lost the login `--require-auth` demands (expiry, logout);
    /// the text names the error, e.g. `SessionNotFoundError: logged out`.
    AuthRequired(String),
    /// `--require-auth` refused the credential at the protocol handshake.
    HandshakeRejected(String),
    /// No protocol handshake within `--handshake-timeout`.
    HandshakeTimeout,
    /// The client did not answer pings in time.
    PongTimeout,
    /// The client does not read: its send queue passed `--max-send-queue`, or
    /// a write to it stayed blocked for the ping timeout.
    NotReading,
    /// A frame or message above `--max-payload` (1009).
    TooBig {
        /// The size the client announced, when known.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Invalid UTF-8 in a text frame (1007).
    BadUtf8,
    /// A broken WebSocket frame (1002); the text says what broke.
    BadFrame(String),
    /// The protocol's own close for input it refuses: code and reason.
    Protocol(u16, String),
    /// The application's `disconnect` effect: its code (1000 or 4000-4999)
    /// and reason, after the reply.
    App {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The client said goodbye at the protocol level (Socket.IO DISCONNECT);
    /// a normal close follows.
    ClientLeft,
    /// The peer is gone or closed itself; nothing to send.
    Gone,
}

impl CloseReason {
    /// The `reason` label of `sockhive_protocol_errors_total`, for endings
    /// caused by bad or slow input; `None` for the others.
    pub fn metric_reason(&self) -> Option<&'static str> {
        match self {
            CloseReason::HandshakeTimeout => Some("handshake_timeout"),
            CloseReason::PongTimeout => Some("ping_timeout"),
            CloseReason::TooBig { .. } => Some("too_big"),
            CloseReason::BadUtf8 => Some("bad_utf8"),
            CloseReason::BadFrame(_) => Some("bad_frame"),
            _ => None,
        }
    }
}
