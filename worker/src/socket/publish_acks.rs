//! Replies to acknowledged publishes, held while Redis confirms them and
//! sent in the client's order, while the socket goes on reading.
//!
//! Why: a socket that awaited each Redis confirmation before reading its next
//! frame fell one Redis round trip behind per message. With Redis answering
//! 500 ms late (tests/tests/faults.rs, `redis_slow`), a publisher at 20
//! messages/s had its messages delivered 3 s late, on its own node too, and
//! its heartbeats waited behind them. The message is published (and this
//! node's subscribers have it) before the receipt is held; only the reply
//! waits.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::membership::ChannelRefusal;
use super::protocol::ReplyTo;

/// Most replies one socket may hold; past it the socket waits for the oldest
/// before reading more, which bounds what a publisher can queue against a
/// stalled Redis (each confirmation is bounded by the broker's command timeout).
pub const MAX_PENDING_ACKS: usize = 256;

/// Redis's confirmation of one publish, as the reply will report it.
pub type Ack = Pin<Box<dyn Future<Output = Result<(), ChannelRefusal>> + Send>>;

/// A reply that is ready: where it goes, the channel, the outcome.
pub type AckReady = (ReplyTo, String, Result<(), ChannelRefusal>);

/// The replies waiting for Redis, oldest first.
#[derive(Default)]
pub struct PendingAcks {
    queue: VecDeque<(ReplyTo, String, Ack)>,
}

impl PendingAcks {
    /// Holds the reply to `reply` until `ack` resolves.
    pub fn push(&mut self, reply: ReplyTo, channel: String, ack: Ack) {
        self.queue.push_back((reply, channel, ack));
    }

    /// True when nothing waits (the socket's loop then does not poll).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when the socket must wait for the oldest before reading more.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= MAX_PENDING_ACKS
    }

    /// The oldest reply, once Redis answered it. Only the oldest is polled:
    /// the broker sends a worker's publishes in order, so it is also the
    /// first to be answered, and the replies keep the client's order.
    pub fn poll_oldest(&mut self, cx: &mut Context<'_>) -> Poll<AckReady> {
        let Some((_, _, ack)) = self.queue.front_mut() else {
            return Poll::Pending;
        };
        let result = std::task::ready!(ack.as_mut().poll(cx));
        let (reply, channel, _) = self.queue.pop_front().expect("polled the front");
        Poll::Ready((reply, channel, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn ack(rx: oneshot::Receiver<bool>) -> Ack {
        Box::pin(async move {
            match rx.await {
                Ok(true) => Ok(()),
                _ => Err(ChannelRefusal::Broker("redis did not confirm".into())),
            }
        })
    }

    #[tokio::test]
    async fn replies_leave_in_the_clients_order_whatever_order_redis_answers_in() {
        let mut acks = PendingAcks::default();
        let (first, first_rx) = oneshot::channel();
        let (second, second_rx) = oneshot::channel();
        acks.push(1, "a".into(), ack(first_rx));
        acks.push(2, "b".into(), ack(second_rx));
        second.send(false).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            acks.poll_oldest(&mut cx).is_pending(),
            "the second waits for the first"
        );
        first.send(true).unwrap();
        let Poll::Ready((reply, channel, result)) = acks.poll_oldest(&mut cx) else {
            panic!("the first is answered");
        };
        assert_eq!((reply, channel.as_str()), (1, "a"));
        assert!(result.is_ok());
        let Poll::Ready((reply, _, result)) = acks.poll_oldest(&mut cx) else {
            panic!("the second is answered");
        };
        assert_eq!(reply, 2);
        assert!(result.is_err());
        assert!(acks.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut acks = PendingAcks::default();
        for i in 0..MAX_PENDING_ACKS as u64 {
            assert!(!acks.is_full());
            acks.push(i, "c".into(), Box::pin(std::future::pending()));
        }
        assert!(acks.is_full());
    }
}
