//! The embedded broker's routing table.
//!
//! The master owns one [`EmbeddedBroker`]. Each publish is looked up here and
//! forwarded, encoded once, to every worker that holds a subscriber. Because
//! every worker's messages reach the master over one ordered stream and the
//! master forwards them in arrival order, messages from one publisher arrive
//! in order at every subscriber.

use std::collections::{BTreeSet, HashMap};

/// Identifies one worker process (not its slot: during a rolling restart an
/// old and a new worker share a slot and have separate subscriptions).
pub type WorkerId = u64;

/// Which workers subscribe to which channels.
#[derive(Debug, Default)]
pub struct EmbeddedBroker {
    channels: HashMap<String, BTreeSet<WorkerId>>,
}

impl EmbeddedBroker {
    /// An empty table.
    pub fn new() -> EmbeddedBroker {
        EmbeddedBroker::default()
    }

    /// Routes `channel` to `worker`.
    pub fn subscribe(&mut self, worker: WorkerId, channel: String) {
        self.channels.entry(channel).or_default().insert(worker);
    }

    /// Stops routing `channel` to `worker`.
    pub fn unsubscribe(&mut self, worker: WorkerId, channel: &str) {
        if let Some(workers) = self.channels.get_mut(channel) {
            workers.remove(&worker);
            if workers.is_empty() {
                self.channels.remove(channel);
            }
        }
    }

    /// Drops every route of a worker that exited.
    pub fn remove_worker(&mut self, worker: WorkerId) {
        self.channels.retain(|_, workers| {
            workers.remove(&worker);
            !workers.is_empty()
        });
    }

    /// The workers to forward a publish on `channel` to.
    pub fn subscribers(&self, channel: &str) -> impl Iterator<Item = WorkerId> + '_ {
        self.channels.get(channel).into_iter().flatten().copied()
    }

    /// Number of (worker, channel) routes: one per worker per channel, however many sockets listen.
    pub fn route_count(&self) -> usize {
        self.channels.values().map(BTreeSet::len).sum()
    }

    /// Number of channels with at least one subscribed worker.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_subscriptions_and_exits() {
        let mut broker = EmbeddedBroker::new();
        broker.subscribe(1, "news".into());
        broker.subscribe(2, "news".into());
        broker.subscribe(2, "chat".into());
        assert_eq!(broker.subscribers("news").collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(broker.route_count(), 3);
        broker.unsubscribe(1, "news");
        assert_eq!(broker.subscribers("news").collect::<Vec<_>>(), vec![2]);
        broker.remove_worker(2);
        assert_eq!(broker.channel_count(), 0);
        assert_eq!(broker.subscribers("news").count(), 0);
    }
}
