//! The bottom layer: the stream a socket is served over and the few things
//! every layer above does to it (the close frame, the lingering close).
//!
//! - [`rewind`]: replays bytes read past the HTTP head.
//! - [`wire`]: what the socket core sends and receives frames over.
//! - [`polling`]: Engine.IO's HTTP long-polling as a wire, and its upgrade.

pub mod polling;
pub mod rewind;
pub mod wire;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockhive_shared::http::RequestHead;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

pub use rewind::Rewind;
pub use wire::{Ending, Wire};

/// A byte stream a socket can be served over: TCP in production, an
/// in-memory pipe in the socket core's tests.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for S {}

/// The WebSocket of an accepted socket, whatever the protocol.
pub type Ws<S = Rewind<TcpStream>> = WebSocketStream<S>;

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

/// Writes an unmasked close frame straight to the stream (`None`: a close
/// frame without status code). For when the WebSocket layer refuses to write
/// after a read error, e.g. an oversized frame: the client still learns why.
pub async fn write_raw_close<S: AsyncWrite + Unpin>(
    stream: &mut S,
    close: Option<(u16, &str)>,
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + MAX_CLOSE_REASON);
    frame.extend_from_slice(&[0x88, 0]);
    if let Some((code, reason)) = close {
        let reason = truncated(reason, MAX_CLOSE_REASON);
        frame[1] = (2 + reason.len()) as u8;
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(reason.as_bytes());
    }
    stream.write_all(&frame).await?;
    stream.flush().await
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

    #[tokio::test]
    async fn a_raw_close_frame_carries_code_and_a_whole_utf8_reason() {
        let mut out = Vec::new();
        write_raw_close(&mut out, Some((1009, &"ü".repeat(100))))
            .await
            .unwrap();
        assert_eq!(out[0], 0x88);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1009);
        let reason = std::str::from_utf8(&out[4..]).unwrap();
        assert_eq!(out[1] as usize, 2 + reason.len());
        let mut plain = Vec::new();
        write_raw_close(&mut plain, None).await.unwrap();
        assert_eq!(plain, [0x88, 0]);
    }
}
