//! The socket's writes, kept out of the way of its deadlines.
//!
//! Handlers never await a write: they queue frames in [`Out`], and the
//! socket's one loop drives the queue and the reads from the same poll
//! ([`Out::poll_io`]). A client that stops reading therefore blocks nothing:
//! the loop still sees its heartbeat deadline, the send budget's overflow and
//! the write-stall deadline, and ends the socket while the write is pending.
//! Everything queued here counts against the socket's `--max-send-queue`
//! budget until it is handed to the WebSocket layer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::hub::outbox::SendBudget;
use crate::transport::Wire;

/// What the transport did while the loop waited on it.
#[derive(Debug)]
pub enum Io {
    /// A frame from the client.
    Frame(Message),
    /// The client's frame was refused by the WebSocket layer (too big, bad UTF-8...).
    ReadError(WsError),
    /// The connection is gone (closed, reset, or a write failed).
    Closed,
}

/// Frames waiting to be written to one client.
#[derive(Debug)]
pub struct Out {
    queue: VecDeque<Message>,
    budget: SendBudget,
    /// Frames handed to the WebSocket layer that still need a flush.
    unflushed: bool,
    /// Since when a write has made no progress, if it is blocked now.
    blocked_since: Option<Instant>,
    /// `sockhive_messages_total{direction="out"}`.
    sent: IntCounter,
}

/// Frames handed to the transport in one [`Out::poll_write`].
#[derive(Debug, Default)]
struct Handed {
    frames: u64,
    bytes: usize,
}

fn size_of(message: &Message) -> usize {
    match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
    }
}

impl Out {
    /// An empty queue charging `budget`.
    pub fn new(budget: SendBudget, sent: IntCounter) -> Out {
        Out {
            queue: VecDeque::new(),
            budget,
            unflushed: false,
            blocked_since: None,
            sent,
        }
    }

    fn push(&mut self, message: Message) {
        // Past the budget the socket is marked for disconnection (the loop
        // sees it first); the frame is dropped, never buffered without bound.
        if self.budget.charge(size_of(&message)) {
            self.queue.push_back(message);
        }
    }

    /// Queues a text frame.
    pub fn text(&mut self, text: impl Into<Utf8Bytes>) {
        self.push(Message::Text(text.into()));
    }

    /// Queues a static text frame (pings, fixed control messages).
    pub fn text_static(&mut self, text: &'static str) {
        self.push(Message::Text(Utf8Bytes::from_static(text)));
    }

    /// Queues a binary frame.
    pub fn binary(&mut self, bytes: Vec<u8>) {
        self.push(Message::Binary(bytes.into()));
    }

    /// Frames waiting now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Since when writing has been stuck, if it is.
    pub fn blocked_since(&self) -> Option<Instant> {
        self.blocked_since
    }

    /// Forgets every queued frame (a socket ending because it does not read).
    pub fn discard(&mut self) {
        for message in self.queue.drain(..) {
            self.budget.release(size_of(&message));
        }
    }

    /// Writes what the transport takes without blocking; an error when the
    /// connection is broken.
    ///
    /// Hot path: every queued frame is handed over in one wake and flushed
    /// once.
    pub fn poll_write<W: Wire>(&mut self, ws: &mut W, cx: &mut Context<'_>) -> Result<(), WsError> {
        // The budget and the counter are settled once per batch, not per frame.
        let mut handed = Handed::default();
        let result = self.hand_over(ws, cx, &mut handed);
        if handed.frames > 0 {
            self.budget.release(handed.bytes);
            self.sent.inc_by(handed.frames);
            self.unflushed = true;
        }
        result?;
        if !self.queue.is_empty() {
            return Ok(());
        }
        if self.queue.capacity() > 0 {
            // Drained: an idle socket keeps no queue buffer (issue 19).
            self.queue = VecDeque::new();
        }
        if self.unflushed {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
            }
        }
        self.blocked_since = None;
        Ok(())
    }

    /// Hands queued frames to the transport while it takes them; counts
    /// them in `handed` (whatever happens, so the caller settles the count).
    fn hand_over<W: Wire>(
        &mut self,
        ws: &mut W,
        cx: &mut Context<'_>,
        handed: &mut Handed,
    ) -> Result<(), WsError> {
        while !self.queue.is_empty() {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
            }
            let message = self.queue.pop_front().expect("not empty");
            handed.bytes += size_of(&message);
            handed.frames += 1;
            self.blocked_since = None;
            Pin::new(&mut *ws).start_send(message)?;
        }
        Ok(())
    }

    /// Drives the writes, then waits for the next inbound frame.
    pub fn poll_io<W: Wire>(&mut self, ws: &mut W, cx: &mut Context<'_>) -> Poll<Io> {
        if self.poll_write(ws, cx).is_err() {
            return Poll::Ready(Io::Closed);
        }
        match Pin::new(&mut *ws).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Io::Frame(message)),
            Poll::Ready(Some(Err(
                WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_),
            )))
            | Poll::Ready(None) => Poll::Ready(Io::Closed),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Io::ReadError(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes everything queued, waiting as long as it takes (callers bound it).
    pub async fn drain<W: Wire>(&mut self, ws: &mut W) -> Result<(), WsError> {
        std::future::poll_fn(|cx| match self.poll_write(ws, cx) {
            Err(e) => Poll::Ready(Err(e)),
            Ok(()) if self.queue.is_empty() && !self.unflushed => Poll::Ready(Ok(())),
            Ok(()) => Poll::Pending,
        })
        .await
    }
}
