//! What a [`super::Traffic`] run recorded, and the questions fault tests ask
//! of it: which messages each subscriber missed, when handshakes were
//! refused, when `/readyz` changed.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// What became of one publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// No reply yet.
    Pending,
    /// Replied without error (at that moment).
    Ok(Instant),
    /// Replied with an error of that name: the publisher was told.
    Error(String, Instant),
    /// The socket ended before the reply: the publisher cannot know.
    Lost,
}

/// One message the publisher wrote to its socket.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its number (`{"n": n}`).
    pub n: u64,
    /// The node it went through.
    pub node: usize,
    /// When it was written.
    pub sent_at: Instant,
    /// Its reply.
    pub ack: Ack,
}

/// One socket of a subscriber.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The node it was on.
    pub node: usize,
    /// Its socket id.
    pub id: String,
    /// Its worker slot, where known (the first connection's is).
    pub worker: Option<u16>,
    /// When its subscription was confirmed.
    pub subscribed_at: Instant,
    /// When and how it ended: the close code, `None` without a close frame.
    pub closed: Option<(Instant, Option<u16>)>,
}

/// Everything one subscriber saw.
#[derive(Debug, Clone)]
pub struct SubscriberLog {
    /// The node it first connected to.
    pub home: usize,
    /// Message numbers in arrival order, with their arrival time.
    pub received: Vec<(u64, Instant)>,
    /// Its sockets, one after another.
    pub connections: Vec<Connection>,
}

impl SubscriberLog {
    /// The worker slot of its first socket.
    pub fn first_worker(&self) -> u16 {
        self.connections[0].worker.unwrap_or(0)
    }

    /// The sockets that ended.
    pub fn disconnects(&self) -> Vec<&Connection> {
        self.connections
            .iter()
            .filter(|c| c.closed.is_some())
            .collect()
    }

    /// Messages received more than once (each extra copy counts).
    pub fn duplicates(&self) -> usize {
        let distinct: BTreeSet<u64> = self.received.iter().map(|(n, _)| *n).collect();
        self.received.len() - distinct.len()
    }

    /// Messages that arrived after one with a higher number.
    pub fn out_of_order(&self) -> usize {
        let mut highest = 0;
        let mut late = 0;
        for (n, _) in &self.received {
            if *n < highest {
                late += 1;
            }
            highest = highest.max(*n);
        }
        late
    }

    /// When message `n` arrived.
    pub fn arrival(&self, n: u64) -> Option<Instant> {
        self.received
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, at)| *at)
    }

    /// The published messages this subscriber never received, in order.
    pub fn missing(&self, published: &[Published]) -> Vec<u64> {
        let got: BTreeSet<u64> = self.received.iter().map(|(n, _)| *n).collect();
        published
            .iter()
            .map(|p| p.n)
            .filter(|n| !got.contains(n))
            .collect()
    }
}

/// One fresh handshake of the prober.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The node asked.
    pub node: usize,
    /// When the connection was opened.
    pub started: Instant,
    /// From the connect to the handshake's reply (or the refusal).
    pub latency: Duration,
    /// Why the login failed (an error name, `closed 4500`, `connect: ...`,
    /// `hung`); `None` when it succeeded.
    pub refused: Option<String>,
}

/// The whole record of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the traffic started (the zero of the printed times).
    pub started: Instant,
    /// Every message written, in order.
    pub published: Vec<Published>,
    /// Every subscriber.
    pub subscribers: Vec<SubscriberLog>,
    /// Every probe, in order.
    pub probes: Vec<Probe>,
    /// `/readyz` samples per node: (when, status; 0 = no answer).
    pub readyz: Vec<Vec<(Instant, u16)>>,
}

/// Sorted numbers as inclusive runs: `[3, 4, 5, 9]` → `[3..=5, 9..=9]`.
pub fn missing_ranges(numbers: &[u64]) -> Vec<RangeInclusive<u64>> {
    let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
    for &n in numbers {
        match ranges.last_mut() {
            Some(last) if *last.end() + 1 == n => *last = *last.start()..=n,
            _ => ranges.push(n..=n),
        }
    }
    ranges
}

impl Report {
    /// Seconds since the start, for messages.
    pub fn at(&self, when: Instant) -> f64 {
        when.saturating_duration_since(self.started).as_secs_f64()
    }

    /// When message `n` was written.
    pub fn sent_at(&self, n: u64) -> Instant {
        self.published
            .iter()
            .find(|p| p.n == n)
            .map(|p| p.sent_at)
            .unwrap_or_else(|| panic!("message {n} was not published"))
    }

    /// Messages written in `[from, to)`.
    pub fn sent_between(&self, from: Instant, to: Instant) -> Vec<u64> {
        self.published
            .iter()
            .filter(|p| p.sent_at >= from && p.sent_at < to)
            .map(|p| p.n)
            .collect()
    }

    /// Messages whose publish was answered with an error.
    pub fn refused_publishes(&self) -> Vec<u64> {
        self.published
            .iter()
            .filter(|p| matches!(p.ack, Ack::Error(..)))
            .map(|p| p.n)
            .collect()
    }

    /// The subscribers whose first socket was on `node`.
    pub fn on_node(&self, node: usize) -> Vec<&SubscriberLog> {
        self.subscribers.iter().filter(|s| s.home == node).collect()
    }

    /// Probes started in `[from, to)`.
    pub fn probes_between(&self, from: Instant, to: Instant) -> Vec<&Probe> {
        self.probes
            .iter()
            .filter(|p| p.started >= from && p.started < to)
            .collect()
    }

    /// The first `/readyz` sample of `node` at or after `after` with `status`.
    pub fn readyz_first(&self, node: usize, status: u16, after: Instant) -> Option<Instant> {
        self.readyz[node]
            .iter()
            .find(|(at, s)| *at >= after && *s == status)
            .map(|(at, _)| *at)
    }

    /// Every publish answered and every connected subscriber holding the last one.
    pub fn settled(&self) -> bool {
        let Some(last) = self.published.last() else {
            return true;
        };
        self.published.iter().all(|p| p.ack != Ack::Pending)
            && self.subscribers.iter().all(|s| {
                s.connections.last().is_some_and(|c| c.closed.is_some())
                    || s.received.iter().any(|(n, _)| *n == last.n)
            })
    }

    /// A readable account of the run, to print next to the assertions.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut acks: HashMap<String, usize> = HashMap::new();
        for p in &self.published {
            let key = match &p.ack {
                Ack::Pending => "pending".to_string(),
                Ack::Ok(_) => "ok".to_string(),
                Ack::Error(name, _) => format!("error {name}"),
                Ack::Lost => "lost".to_string(),
            };
            *acks.entry(key).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "published {} {acks:?}, settled: {}",
            self.published.len(),
            self.settled()
        );
        for (i, s) in self.subscribers.iter().enumerate() {
            let missing = s.missing(&self.published);
            let closes: Vec<String> = s
                .disconnects()
                .iter()
                .map(|c| {
                    let (at, code) = c.closed.unwrap();
                    format!("{:.2}s:{code:?}", self.at(at))
                })
                .collect();
            let _ = writeln!(
                out,
                "sub {i} node {} worker {}: received {} missing {} {:?} dups {} out-of-order {} closes {closes:?} sockets {}",
                s.home,
                s.first_worker(),
                s.received.len(),
                missing.len(),
                missing_ranges(&missing),
                s.duplicates(),
                s.out_of_order(),
                s.connections.len(),
            );
        }
        let refused: Vec<String> = self
            .probes
            .iter()
            .filter_map(|p| {
                p.refused.as_ref().map(|r| {
                    format!(
                        "{:.2}s n{} {r} in {:?}",
                        self.at(p.started),
                        p.node,
                        p.latency
                    )
                })
            })
            .collect();
        let slowest = self.probes.iter().map(|p| p.latency).max();
        let _ = writeln!(
            out,
            "probes {} refused {} slowest {slowest:?}: {refused:?}",
            self.probes.len(),
            refused.len()
        );
        for (node, samples) in self.readyz.iter().enumerate() {
            let mut changes = Vec::new();
            let mut last = None;
            for (at, status) in samples {
                if last != Some(*status) {
                    changes.push(format!("{:.2}s:{status}", self.at(*at)));
                    last = Some(*status);
                }
            }
            let _ = writeln!(out, "readyz node {node}: {changes:?}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_join_consecutive_numbers() {
        assert_eq!(missing_ranges(&[3, 4, 5, 9]), vec![3..=5, 9..=9]);
        assert!(missing_ranges(&[]).is_empty());
    }

    #[test]
    fn duplicates_and_late_arrivals_are_counted() {
        let now = Instant::now();
        let log = SubscriberLog {
            home: 0,
            received: [1, 2, 2, 4, 3, 5].iter().map(|n| (*n, now)).collect(),
            connections: Vec::new(),
        };
        assert_eq!(log.duplicates(), 1);
        assert_eq!(log.out_of_order(), 1);
        let published: Vec<Published> = (1..=6)
            .map(|n| Published {
                n,
                node: 0,
                sent_at: now,
                ack: Ack::Pending,
            })
            .collect();
        assert_eq!(log.missing(&published), vec![6]);
    }
}
