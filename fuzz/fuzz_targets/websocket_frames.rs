//! sockhive's own WebSocket framing (`transport::websocket`), server side:
//! the input is the bytes a client sends after the upgrade. Its first byte
//! picks how the bytes arrive (how many per read, and how many were read
//! ahead with the request's head); the rest is the stream. Checks what must
//! hold for any input:
//! - the same bytes give the same messages and the same error, whichever way
//!   they arrive (all at once, a few per read, partly read ahead): the
//!   reader's buffering between reads never changes what it decides;
//! - no message carries more payload than the input had;
//! - nothing is read after an error or after the peer's close.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use libfuzzer_sys::fuzz_target;
use sockhive_fuzz::TrickleReader;
use sockhive_worker::transport::{WebSocket, WsLimits};
use tokio_tungstenite::tungstenite::Message;

const LIMITS: WsLimits = WsLimits {
    max_message: 4096,
    write_coalesce: 4096,
};

/// Everything the server reads from `stream` (after `ahead`), in reads of
/// `chunk` bytes (0: all at once), the ending included, as comparable text.
/// What the server writes (pongs, close replies) is discarded.
fn read_all(ahead: &[u8], stream: &[u8], chunk: u8) -> Vec<String> {
    let sizes = [chunk];
    let reads = TrickleReader::new(stream, &sizes);
    let mut ws = WebSocket::new(
        tokio::io::join(reads, tokio::io::sink()),
        ahead.to_vec(),
        LIMITS,
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut seen = Vec::new();
    let mut payload = 0;
    // Every poll uses at least one byte or ends the stream.
    for _ in 0..ahead.len() + stream.len() + 3 {
        match Pin::new(&mut ws).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(message))) => {
                let closed = matches!(message, Message::Close(_));
                payload += message.len();
                seen.push(format!("{message:?}"));
                if closed {
                    assert!(
                        matches!(Pin::new(&mut ws).poll_next(&mut cx), Poll::Ready(None)),
                        "read past a close"
                    );
                    break;
                }
            }
            Poll::Ready(Some(Err(error))) => {
                seen.push(format!("error: {error}"));
                assert!(
                    matches!(Pin::new(&mut ws).poll_next(&mut cx), Poll::Ready(None)),
                    "read past an error"
                );
                break;
            }
            Poll::Ready(None) => {
                seen.push("end".into());
                break;
            }
            Poll::Pending => unreachable!("the input is always ready"),
        }
    }
    assert!(
        payload <= ahead.len() + stream.len(),
        "payload out of nothing"
    );
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, bytes)) = data.split_first() else {
        return;
    };
    let whole = read_all(&[], bytes, 0);
    let chunk = 1 + (how & 0x0f);
    assert_eq!(read_all(&[], bytes, chunk), whole, "{chunk} bytes per read");
    let ahead = ((how >> 4) as usize * 3).min(bytes.len());
    assert_eq!(
        read_all(&bytes[..ahead], &bytes[ahead..], chunk),
        whole,
        "{ahead} bytes read ahead"
    );
});
