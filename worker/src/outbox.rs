//! The way into one socket from anywhere else in the worker.
//!
//! Channel deliveries, admin emits and kicks reach a socket through its
//! [`Outbox`]: an unbounded queue whose byte total is capped by
//! `max_send_queue`. A publisher never waits on a slow client: the push either
//! fits or the socket is marked for disconnection, so one client that stops
//! reading can neither stall its channel nor grow memory without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Something for the socket's own task to do.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol frame, already encoded (shared between all recipients of a publish).
    Frame(Utf8Bytes),
    /// A server-side event (admin emit); the protocol encodes it.
    Event {
        /// Event name.
        event: String,
        /// JSON payload.
        data: Arc<serde_json::value::RawValue>,
    },
    /// Close the socket with this code and reason (admin kick).
    Close(u16, String),
    /// The socket's session-level auth was revoked (e.g. logout elsewhere).
    Deauthenticate,
}

/// The sending half of a socket's queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Cancelled when the queue overflows: the socket task drops the client
    /// even while blocked writing to it.
    overflow: CancellationToken,
}

/// The receiving half, owned by the socket's task.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    /// See [`Outbox::overflow`].
    pub overflow: CancellationToken,
}

/// The push did not fit in `max_send_queue`; the socket is being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send queue of the socket is full")]
pub struct QueueFull;

/// A socket's queue: `limit` is `max_send_queue` in bytes.
pub fn outbox(limit: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let overflow = CancellationToken::new();
    (
        Outbox {
            tx,
            queued: queued.clone(),
            limit,
            overflow: overflow.clone(),
        },
        Inbox {
            rx,
            queued,
            overflow,
        },
    )
}

fn cost(item: &Outbound) -> usize {
    match item {
        Outbound::Frame(text) => text.len(),
        Outbound::Event { event, data } => event.len() + data.get().len(),
        Outbound::Close(_, reason) => reason.len(),
        Outbound::Deauthenticate => 0,
    }
}

impl Outbox {
    /// Queues an item; past the byte limit the socket is marked for disconnection instead.
    pub fn push(&self, item: Outbound) -> Result<(), QueueFull> {
        let size = cost(&item);
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        if before + size > self.limit {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.overflow.cancel();
            return Err(QueueFull);
        }
        if self.tx.send(item).is_err() {
            // The socket task is gone; nothing will drain the count.
            self.queued.fetch_sub(size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// True once the socket's task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl Inbox {
    /// The next queued item; `None` never happens while an [`Outbox`] lives.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.queued.fetch_sub(cost(&item), Ordering::Relaxed);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_marks_the_socket_and_keeps_the_count_right() {
        let (outbox, mut inbox) = outbox(10);
        outbox.push(Outbound::Frame("12345".into())).unwrap();
        outbox.push(Outbound::Frame("12345".into())).unwrap();
        assert_eq!(outbox.push(Outbound::Frame("1".into())), Err(QueueFull));
        assert!(inbox.overflow.is_cancelled());
        assert!(matches!(inbox.recv().await, Some(Outbound::Frame(_))));
        outbox.push(Outbound::Frame("12345".into())).unwrap();
    }
}
