//! The way into one socket from anywhere else in the worker.
//!
//! Channel deliveries, admin emits and kicks reach a socket through its
//! [`Outbox`]: an unbounded queue whose bytes are capped by `max_send_queue`.
//! A publisher never waits on a slow client: the push either fits or the
//! socket is marked for disconnection, so one client that stops reading can
//! neither stall its channel nor grow memory without bound.
//!
//! The byte count is shared with the socket's own writer (see
//! [`SendBudget`]): a frame stays counted until it is handed to the
//! transport, so replies the socket queues for itself and deliveries waiting
//! behind a blocked write are bounded by the same limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Something for the socket's own task to do.
#[derive(Debug)]
pub enum Outbound {
    /// A channel delivery, already encoded in the socket's wire format (shared
    /// between all recipients of a publish).
    Frame(Utf8Bytes),
    /// A server-side event (admin emit); the socket's protocol encodes it.
    Event {
        /// Event name.
        event: String,
        /// JSON payload.
        data: Arc<serde_json::value::RawValue>,
    },
    /// An operator removed the socket (admin kick); the client must not retry.
    Kick {
        /// Shown to the client where its protocol carries a reason.
        reason: String,
    },
    /// The web session the socket logged in with ended.
    LoggedOut,
    /// The app's record of the socket's user changed (the user lookup now
    /// answers this): the login follows it, channel rights included. Boxed,
    /// as every rare variant must be: see
    /// `an_outbound_item_stays_small_because_every_socket_preallocates_a_block_of_them`.
    UserChanged(Box<serde_json::Value>),
}

/// Bytes queued towards one client, wherever they wait: in the outbox or in
/// the socket's writer. Past `limit` the socket is marked for disconnection.
#[derive(Debug, Clone)]
pub struct SendBudget {
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Cancelled when the limit is passed: the socket task drops the client
    /// even while a write to it is blocked.
    overflow: CancellationToken,
}

impl SendBudget {
    /// A budget of `limit` bytes (`max_send_queue`).
    pub fn new(limit: usize) -> SendBudget {
        SendBudget {
            queued: Arc::new(AtomicUsize::new(0)),
            limit,
            overflow: CancellationToken::new(),
        }
    }

    /// Counts `size` more bytes; false (and the socket marked) when they do not fit.
    pub fn charge(&self, size: usize) -> bool {
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        if before + size > self.limit {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.overflow.cancel();
            return false;
        }
        true
    }

    /// Bytes that left the queue (written, or dropped with the socket).
    pub fn release(&self, size: usize) {
        self.queued.fetch_sub(size, Ordering::Relaxed);
    }

    /// Bytes counted now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Resolves once the budget has been exceeded.
    pub fn overflowed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.overflow.cancelled()
    }
}

/// The sending half of a socket's queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    budget: SendBudget,
}

/// The receiving half, owned by the socket's task.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Outbound>,
    budget: SendBudget,
}

/// The push did not fit in `max_send_queue`; the socket is being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send queue of the socket is full")]
pub struct QueueFull;

/// A socket's queue: `limit` is `max_send_queue` in bytes.
pub fn outbox(limit: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = SendBudget::new(limit);
    (
        Outbox {
            tx,
            budget: budget.clone(),
        },
        Inbox { rx, budget },
    )
}

fn cost(item: &Outbound) -> usize {
    match item {
        Outbound::Frame(text) => text.len(),
        Outbound::Event { event, data } => event.len() + data.get().len(),
        Outbound::Kick { reason } => reason.len(),
        Outbound::LoggedOut | Outbound::UserChanged(_) => 0,
    }
}

impl Outbox {
    /// Queues an item; past the byte limit the socket is marked for disconnection instead.
    pub fn push(&self, item: Outbound) -> Result<(), QueueFull> {
        let size = cost(&item);
        if !self.budget.charge(size) {
            return Err(QueueFull);
        }
        if self.tx.send(item).is_err() {
            // The socket task is gone; nothing will drain the count.
            self.budget.release(size);
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
    /// Its bytes leave the count here: the socket charges the frames it
    /// encodes from it to the same budget (see [`Inbox::budget`]).
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.budget.release(cost(&item));
        Some(item)
    }

    /// The byte budget shared with the outbox.
    pub fn budget(&self) -> &SendBudget {
        &self.budget
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
        assert!(inbox.budget().overflow.is_cancelled());
        assert!(matches!(inbox.recv().await, Some(Outbound::Frame(_))));
        outbox.push(Outbound::Frame("12345".into())).unwrap();
        assert_eq!(inbox.budget().queued(), 10);
    }

    /// The queue's first block (32 items) is allocated with every socket, so
    /// each byte an item grows costs every idle socket 32 bytes: an unboxed
    /// `serde_json::Value` (80 bytes with `preserve_order`) once cost 1.4 KB
    /// per socket in bench/'s idle figure.
    #[test]
    fn an_outbound_item_stays_small_because_every_socket_preallocates_a_block_of_them() {
        assert!(
            std::mem::size_of::<Outbound>() <= 48,
            "Outbound is {} bytes",
            std::mem::size_of::<Outbound>()
        );
    }

    #[test]
    fn the_writer_and_the_outbox_share_one_budget() {
        let (outbox, inbox) = outbox(10);
        assert!(inbox.budget().charge(8));
        assert_eq!(outbox.push(Outbound::Frame("123".into())), Err(QueueFull));
        inbox.budget().release(8);
        assert_eq!(inbox.budget().queued(), 0);
    }
}
