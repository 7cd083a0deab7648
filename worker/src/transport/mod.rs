//! The bottom layer: the stream a socket is served over and the few things
//! every layer above does to it (the close frame, the lingering close).
//!
//! - [`websocket`]: RFC 6455 framing, server side, with no per-socket buffer
//!   while idle.
//! - [`wire`]: what the socket core sends and receives frames over.
//! - [`polling`]: Engine.IO's HTTP long-polling as a wire, and its upgrade.

pub mod polling;
pub mod websocket;
pub mod wire;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockhive_shared::http::RequestHead;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub use websocket::{WebSocket, WsLimits};
pub use wire::{Ending, Wire};

/// A byte stream a socket can be served over: TCP in production, an
/// in-memory pipe in the socket core's tests.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for S {}

/// The WebSocket of an accepted socket, whatever the protocol.
pub type Ws<S = TcpStream> = WebSocket<S>;

/// What the socket core and the protocols need to know about the upgrade.
#[derive(Debug)]
pub struct Upgraded {
    /// The request that asked for the upgrade (headers dropped once the
    /// credential task has its copy: a socket should not keep kilobytes of
    /// request headers for its lifetime).
    pub head: RequestHead,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the first byte of the request was awaited, for handshake latency.
    pub started: Instant,
}

/// Longest close reason a close frame can carry (125 bytes minus the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// At most `max` bytes of `text`, cut at a character boundary, so a close
/// reason never carries half a UTF-8 character (which a client rejects as 1007).
pub fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Ends a connection without losing what was last written to it.
///
/// Closing a socket that still has unread bytes makes the kernel send RST,
/// which can destroy the close frame (or HTTP refusal) before the client
/// reads it: a 10 MiB frame refused with 1009 was seen as 1006. So send FIN,
/// then read and discard what the client still sends, until it closes or
/// `within` passes.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, within: Duration) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_at_character_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
        let long = "é".repeat(100);
        assert!(truncated(&long, MAX_CLOSE_REASON).len() <= MAX_CLOSE_REASON);
        assert!(std::str::from_utf8(truncated(&long, MAX_CLOSE_REASON).as_bytes()).is_ok());
    }
}
