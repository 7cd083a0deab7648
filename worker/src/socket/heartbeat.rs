//! The heartbeat: when to ping, and when a silent client is given up.
//!
//! Both protocols' heartbeats are one state machine with two styles, their
//! limits from the configuration (`--ping-interval`/`--ping-timeout` for
//! SocketCluster, `--socketio-ping-interval`/`--socketio-ping-timeout` for
//! Engine.IO).

use std::time::Duration;

use tokio::time::Instant;

/// How a protocol's heartbeat runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatStyle {
    /// SocketCluster: the server pings every interval from the handshake on;
    /// a client that sends nothing (no pong, no message) for the timeout is gone.
    Periodic,
    /// Engine.IO: from the open packet on, a ping one interval after the last
    /// pong; a ping unanswered for the timeout ends the connection.
    PingPong,
}

/// A protocol's heartbeat and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Which state machine.
    pub style: HeartbeatStyle,
    /// Time between pings.
    pub interval: Duration,
    /// How long silence (or an unanswered ping) is tolerated.
    pub timeout: Duration,
}

/// What the heartbeat wants now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing due.
    Idle,
    /// Send a ping.
    Ping,
    /// The client missed its deadline.
    TimedOut,
}

/// One socket's heartbeat.
#[derive(Debug)]
pub struct Heartbeat {
    policy: HeartbeatPolicy,
    /// When the next ping is due (none before the start, and none while
    /// Engine.IO awaits a pong).
    next_ping: Option<Instant>,
    /// When the client is given up unless it shows life. For the periodic
    /// style it is moved lazily: an inbound frame only records `last_seen`,
    /// and the deadline is re-armed from it when it fires, so a busy socket
    /// does not re-register a timer per frame.
    deadline: Option<Instant>,
    /// When the client last sent anything (periodic style).
    last_seen: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat that has not started.
    pub fn new(policy: HeartbeatPolicy) -> Heartbeat {
        Heartbeat {
            policy,
            next_ping: None,
            deadline: None,
            last_seen: None,
        }
    }

    /// The limits in force.
    pub fn policy(&self) -> HeartbeatPolicy {
        self.policy
    }

    /// Starts pinging (SocketCluster: after the handshake reply; Engine.IO:
    /// after the open packet).
    pub fn start(&mut self, now: Instant) {
        self.next_ping = Some(now + self.policy.interval);
        self.last_seen = Some(now);
        self.deadline = match self.policy.style {
            HeartbeatStyle::Periodic => Some(now + self.policy.timeout),
            HeartbeatStyle::PingPong => None,
        };
    }

    /// True once started.
    pub fn is_running(&self) -> bool {
        self.next_ping.is_some() || self.deadline.is_some()
    }

    /// A frame arrived; `pong` when it answered a ping.
    pub fn on_inbound(&mut self, now: Instant, pong: bool) {
        if !self.is_running() {
            return;
        }
        match self.policy.style {
            HeartbeatStyle::Periodic => self.last_seen = Some(now),
            HeartbeatStyle::PingPong if pong => {
                self.deadline = None;
                self.next_ping = Some(now + self.policy.interval);
            }
            HeartbeatStyle::PingPong => {}
        }
    }

    /// A ping was queued.
    pub fn on_ping_sent(&mut self, now: Instant) {
        match self.policy.style {
            HeartbeatStyle::Periodic => self.next_ping = Some(now + self.policy.interval),
            HeartbeatStyle::PingPong => {
                self.next_ping = None;
                self.deadline = Some(now + self.policy.timeout);
            }
        }
    }

    /// The earliest moment something is due.
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.next_ping, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now`; a missed deadline wins over a due ping. A
    /// periodic deadline the client has since moved is re-armed here.
    pub fn due(&mut self, now: Instant) -> Beat {
        if self.deadline.is_some_and(|at| at <= now) {
            let moved = match (self.policy.style, self.last_seen) {
                (HeartbeatStyle::Periodic, Some(seen)) => Some(seen + self.policy.timeout),
                _ => None,
            };
            match moved {
                Some(at) if at > now => self.deadline = Some(at),
                _ => return Beat::TimedOut,
            }
        }
        if self.next_ping.is_some_and(|at| at <= now) {
            Beat::Ping
        } else {
            Beat::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(style: HeartbeatStyle) -> HeartbeatPolicy {
        HeartbeatPolicy {
            style,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn periodic_pings_every_interval_and_gives_up_after_silence() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(policy(HeartbeatStyle::Periodic));
        assert_eq!(beat.next_timer(), None);
        beat.start(t0);
        assert_eq!(beat.due(t0), Beat::Idle);
        assert_eq!(beat.due(t0 + Duration::from_secs(1)), Beat::Ping);
        beat.on_ping_sent(t0 + Duration::from_secs(1));
        beat.on_inbound(t0 + Duration::from_secs(2), true);
        assert_eq!(beat.due(t0 + Duration::from_millis(4900)), Beat::Ping);
        assert_eq!(beat.due(t0 + Duration::from_secs(5)), Beat::TimedOut);
    }

    #[test]
    fn ping_pong_waits_for_the_pong_and_restarts_the_interval_from_it() {
        let t0 = Instant::now();
        let mut beat = Heartbeat::new(policy(HeartbeatStyle::PingPong));
        beat.start(t0);
        assert_eq!(beat.due(t0 + Duration::from_secs(1)), Beat::Ping);
        beat.on_ping_sent(t0 + Duration::from_secs(1));
        // No further ping while one is unanswered; its deadline is the timeout.
        assert_eq!(beat.next_timer(), Some(t0 + Duration::from_secs(4)));
        assert_eq!(beat.due(t0 + Duration::from_secs(4)), Beat::TimedOut);
        beat.on_inbound(t0 + Duration::from_secs(2), false);
        assert_eq!(beat.due(t0 + Duration::from_secs(4)), Beat::TimedOut);
        beat.on_inbound(t0 + Duration::from_secs(2), true);
        assert_eq!(beat.next_timer(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(beat.due(t0 + Duration::from_secs(10)), Beat::Ping);
    }
}
