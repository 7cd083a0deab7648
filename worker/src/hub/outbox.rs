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

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tokio_tungstenite::tungstenite::Utf8Bytes;

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
///
/// The budget and the queue share one small allocation ([`Shared`]): an idle
/// socket's way in costs one `Arc` and nothing else (issue 19; tokio's mpsc
/// allocated a block of 32 items with every socket).
#[derive(Debug, Clone)]
pub struct SendBudget {
    shared: Arc<Shared>,
}

/// A socket's queue and byte count.
#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Empty until the first push: `VecDeque::new` allocates nothing.
    items: VecDeque<Outbound>,
    /// The socket's task waiting in [`Inbox::recv`].
    item_waker: Option<Waker>,
    /// The socket's task waiting in [`SendBudget::overflowed`].
    overflow_waker: Option<Waker>,
    /// The limit was passed: the socket is being dropped.
    overflowed: bool,
    /// Live [`Outbox`]es; at 0, `recv` answers `None`.
    senders: usize,
    /// The [`Inbox`] is gone: pushes are dropped.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds a
        // consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SendBudget {
    fn with_senders(limit: usize, senders: usize) -> SendBudget {
        SendBudget {
            shared: Arc::new(Shared {
                queued: AtomicUsize::new(0),
                limit,
                state: Mutex::new(State {
                    senders,
                    ..State::default()
                }),
            }),
        }
    }

    /// A budget of `limit` bytes (`max_send_queue`).
    pub fn new(limit: usize) -> SendBudget {
        SendBudget::with_senders(limit, 0)
    }

    /// Counts `size` more bytes; false (and the socket marked) when they do not fit.
    pub fn charge(&self, size: usize) -> bool {
        let before = self.shared.queued.fetch_add(size, Ordering::Relaxed);
        if before + size > self.shared.limit {
            self.shared.queued.fetch_sub(size, Ordering::Relaxed);
            let waker = {
                let mut state = self.shared.lock();
                state.overflowed = true;
                state.overflow_waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            return false;
        }
        true
    }

    /// Bytes that left the queue (written, or dropped with the socket).
    pub fn release(&self, size: usize) {
        self.shared.queued.fetch_sub(size, Ordering::Relaxed);
    }

    /// Bytes counted now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// True once the budget has been exceeded.
    pub fn is_overflowed(&self) -> bool {
        self.shared.lock().overflowed
    }

    /// Resolves once the budget has been exceeded.
    pub fn overflowed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.shared.lock();
            if state.overflowed {
                return Poll::Ready(());
            }
            if !state
                .overflow_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.overflow_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// The sending half of a socket's queue.
#[derive(Debug)]
pub struct Outbox {
    budget: SendBudget,
}

/// The receiving half, owned by the socket's task.
#[derive(Debug)]
pub struct Inbox {
    budget: SendBudget,
}

/// The push did not fit in `max_send_queue`; the socket is being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send queue of the socket is full")]
pub struct QueueFull;

/// A socket's queue: `limit` is `max_send_queue` in bytes.
pub fn outbox(limit: usize) -> (Outbox, Inbox) {
    let budget = SendBudget::with_senders(limit, 1);
    (
        Outbox {
            budget: budget.clone(),
        },
        Inbox { budget },
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

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.budget.shared.lock().senders += 1;
        Outbox {
            budget: self.budget.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.budget.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.item_waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Outbox {
    /// Queues an item; past the byte limit the socket is marked for disconnection instead.
    pub fn push(&self, item: Outbound) -> Result<(), QueueFull> {
        let size = cost(&item);
        if !self.budget.charge(size) {
            return Err(QueueFull);
        }
        let mut state = self.budget.shared.lock();
        if state.closed {
            // The socket task is gone; nothing will drain the count.
            drop(state);
            self.budget.release(size);
            drop(item);
            return Ok(());
        }
        state.items.push_back(item);
        let waker = state.item_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// True once the socket's task has ended.
    pub fn is_closed(&self) -> bool {
        self.budget.shared.lock().closed
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let items = {
            let mut state = self.budget.shared.lock();
            state.closed = true;
            state.item_waker = None;
            std::mem::take(&mut state.items)
        };
        for item in &items {
            self.budget.release(cost(item));
        }
    }
}

impl Inbox {
    /// The next queued item; `None` never happens while an [`Outbox`] lives.
    /// Its bytes leave the count here: the socket charges the frames it
    /// encodes from it to the same budget (see [`Inbox::budget`]).
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            let mut state = self.budget.shared.lock();
            if let Some(item) = state.items.pop_front() {
                drop(state);
                self.budget.release(cost(&item));
                return Poll::Ready(Some(item));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            if !state
                .item_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.item_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next queued item if one is waiting now: the socket takes the
    /// rest of a burst in the same turn as its first item, so its loop (its
    /// timers, its cancellation checks) runs once per burst, not per frame.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut state = self.budget.shared.lock();
        let Some(item) = state.items.pop_front() else {
            // A burst is over: an idle socket keeps no queue buffer.
            if state.items.capacity() > 0 {
                state.items = VecDeque::new();
            }
            return None;
        };
        drop(state);
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
        assert!(inbox.budget().is_overflowed());
        assert!(matches!(inbox.recv().await, Some(Outbound::Frame(_))));
        outbox.push(Outbound::Frame("12345".into())).unwrap();
        assert_eq!(inbox.budget().queued(), 10);
    }

    /// Queued items are moved in and out of the queue's buffer: an unboxed
    /// `serde_json::Value` (80 bytes with `preserve_order`) in a rare
    /// variant would enlarge every delivery. (With tokio's mpsc, whose first
    /// block of 32 items came with every socket, it cost 1.4 KB per socket.)
    #[test]
    fn an_outbound_item_stays_small_because_every_socket_preallocates_a_block_of_them() {
        assert!(
            std::mem::size_of::<Outbound>() <= 48,
            "Outbound is {} bytes",
            std::mem::size_of::<Outbound>()
        );
    }

    #[test]
    fn a_burst_is_taken_in_one_turn_and_released_from_the_count() {
        let (outbox, mut inbox) = outbox(100);
        for _ in 0..3 {
            outbox.push(Outbound::Frame("1234".into())).unwrap();
        }
        let mut taken = 0;
        while let Some(Outbound::Frame(_)) = inbox.try_recv() {
            taken += 1;
        }
        assert_eq!(taken, 3);
        assert_eq!(inbox.budget().queued(), 0);
    }

    /// Issue 19: an idle socket's queue is one small allocation (the
    /// budget, the queue and its wakers together), and a drained burst
    /// leaves no buffer behind.
    #[test]
    fn an_idle_outbox_holds_no_buffer() {
        let (outbox, mut inbox) = outbox(1 << 20);
        assert_eq!(inbox.budget().shared.lock().items.capacity(), 0);
        assert!(
            std::mem::size_of::<Shared>() <= 128,
            "{}",
            std::mem::size_of::<Shared>()
        );
        for _ in 0..40 {
            outbox.push(Outbound::Frame("12".into())).unwrap();
        }
        while inbox.try_recv().is_some() {}
        assert_eq!(inbox.budget().shared.lock().items.capacity(), 0);
        assert_eq!(inbox.budget().queued(), 0);
    }

    #[tokio::test]
    async fn recv_wakes_on_a_push_and_ends_with_the_last_outbox() {
        let (outbox, mut inbox) = outbox(100);
        let second = outbox.clone();
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            second.push(Outbound::LoggedOut).unwrap();
        });
        assert!(matches!(inbox.recv().await, Some(Outbound::LoggedOut)));
        pusher.await.unwrap();
        drop(outbox);
        assert!(inbox.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_push_to_a_gone_socket_is_dropped_and_uncounted() {
        let (outbox, inbox) = outbox(100);
        outbox.push(Outbound::Frame("123".into())).unwrap();
        assert!(!outbox.is_closed());
        let budget = inbox.budget().clone();
        drop(inbox);
        assert!(outbox.is_closed());
        assert_eq!(budget.queued(), 0);
        outbox.push(Outbound::Frame("123".into())).unwrap();
        assert_eq!(budget.queued(), 0);
    }

    #[tokio::test]
    async fn overflowed_wakes_a_waiting_socket() {
        let (outbox, inbox) = outbox(4);
        let budget = inbox.budget().clone();
        let waiter = tokio::spawn(async move { budget.overflowed().await });
        tokio::task::yield_now().await;
        assert_eq!(outbox.push(Outbound::Frame("12345".into())), Err(QueueFull));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
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
