//! The channels a socket holds and the rules for using them.
//!
//! Every way in goes through here, whatever the protocol: the name limit
//! (`--max-channel-length`, checked before anything is stored), the channel
//! rules (`--channel-auth`), `--max-subscriptions`, the hub and the registry.
//! [`Membership::recheck`] applies the rules again whenever the socket's
//! identity changes, so losing a login loses the channels it granted.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use sockhive_shared::channel_rules::{ChannelAction, Verdict};
use sockhive_shared::config::{ChannelAuth, ChannelConfig, HookKind};

use super::protocol::ReplyError;
use super::publish_acks::Ack;
use crate::auth::Claims;
use crate::hub::channels::DeliveryEncoder;
use crate::hub::outbox::Outbox;
use crate::Worker;

/// Why a channel request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRefusal {
    /// The name is over `--max-channel-length`; never stored, never echoed.
    NameTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The channel rules refuse it.
    Forbidden,
    /// The socket holds `--max-subscriptions` channels already.
    TooMany {
        /// The limit.
        max: u32,
    },
    /// Unsubscribing from a channel the socket is not in.
    NotSubscribed,
    /// The broker failed (e.g. Redis refused the subscription).
    Broker(String),
}

impl ChannelRefusal {
    /// The error the client gets, in SocketCluster's wording where it has one.
    pub fn reply_error(&self, socket: &str, channel: &str) -> ReplyError {
        match self {
            ChannelRefusal::NameTooLong { len, max } => ReplyError::new(
                "InvalidArgumentsError",
                format!("Channel name of {len} bytes exceeds the limit of {max} bytes"),
            ),
            ChannelRefusal::Forbidden => ReplyError::new(
                "ChannelForbiddenError",
                format!("Access to the \"{channel}\" channel is forbidden"),
            ),
            ChannelRefusal::TooMany { max } => ReplyError::new(
                "BrokerError",
                format!("Socket {socket} reached the limit of {max} subscriptions"),
            ),
            ChannelRefusal::NotSubscribed => ReplyError::new(
                "BrokerError",
                format!(
                    "Failed to unsubscribe socket from the {channel} channel - InvalidActionError: \
                     Socket {socket} tried to unsubscribe from a channel which it is not subscribed to"
                ),
            ),
            ChannelRefusal::Broker(message) => ReplyError::new("BrokerError", message.clone()),
        }
    }

    /// The `reason` label of `sockhive_protocol_errors_total`, for refusals
    /// that are the client's fault.
    pub fn metric_reason(&self) -> Option<&'static str> {
        match self {
            ChannelRefusal::NameTooLong { .. } => Some("name_too_long"),
            ChannelRefusal::TooMany { .. } => Some("max_subscriptions"),
            _ => None,
        }
    }
}

/// Who asks to use a channel: the socket's verified claims and, under
/// `--channel-auth rules`, its record as the rules see it (`Null` otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The login's claims, if any.
    pub claims: Option<&'a Claims>,
    /// The socket's record for channel rules.
    pub record: &'a Value,
}

/// Whether `pattern` (a channel name, or a prefix ending in `*`) covers `channel`.
fn pattern_covers(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// What the channel rules say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused (`ChannelForbiddenError`).
    Deny,
    /// The application's `subscribe` / `publish` hook decides: a rule says
    /// `"hook"`, or no rule decides and that hook is on.
    AskApp,
}

/// What `--channel-auth` says about `action` on `channel`: `open` allows
/// all, `claims` reads the token's `channels` claim, `rules` asks the
/// compiled channel rules with the socket's record (`record`; only built
/// under `rules`). Where the mode leaves the channel undecided (open mode,
/// a channel no claim lists or no rule matches) and the action's hook is on,
/// the application decides.
///
/// Hot path (every subscribe and publish): no allocation, except reading
/// the claims under `claims`.
pub fn decide(
    worker: &Worker,
    action: ChannelAction,
    channel: &str,
    subject: Subject<'_>,
) -> Decision {
    let Subject { claims, record } = subject;
    let config = &worker.config.channels;
    let hook = match action {
        ChannelAction::Subscribe => HookKind::Subscribe,
        ChannelAction::Publish => HookKind::Publish,
    };
    let undecided = if worker.hook_on(hook) {
        Decision::AskApp
    } else {
        Decision::Deny
    };
    match config.channel_auth {
        ChannelAuth::Open if undecided == Decision::AskApp => Decision::AskApp,
        ChannelAuth::Open => Decision::Allow,
        ChannelAuth::Claims if claims_allow(config, claims, channel) => Decision::Allow,
        ChannelAuth::Claims => undecided,
        ChannelAuth::Rules => match worker.channel_rules.decide(channel, action, record) {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny => Decision::Deny,
            // Configuration refuses "hook" sides without a hook URL; an
            // embedder's in-process hooks answer them too.
            Verdict::Hook if worker.app.is_some() => Decision::AskApp,
            Verdict::Hook => Decision::Deny,
            Verdict::Unmatched => undecided,
        },
    }
}

/// The `--channel-auth claims` rule: a channel is usable when it is public or
/// listed in the token's `channels` claim.
fn claims_allow(config: &ChannelConfig, claims: Option<&Claims>, channel: &str) -> bool {
    if config
        .public_channel
        .iter()
        .any(|p| pattern_covers(p, channel))
    {
        return true;
    }
    let Some(mut claims) = claims.map(Claims::to_map) else {
        return false;
    };
    let listed = claims.remove("channels");
    listed
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|entries| {
            entries
                .iter()
                .filter_map(Value::as_str)
                .any(|p| pattern_covers(p, channel))
        })
}

/// Refuses a name over `--max-channel-length` before anything copies it.
pub fn check_name(worker: &Worker, channel: &str) -> Result<(), ChannelRefusal> {
    let max = worker.config.limits.max_channel_length;
    if channel.len() > max as usize {
        return Err(ChannelRefusal::NameTooLong {
            len: channel.len(),
            max,
        });
    }
    Ok(())
}

/// The channels one socket is subscribed to.
#[derive(Debug, Default)]
pub struct Membership {
    channels: BTreeSet<String>,
}

impl Membership {
    /// The channels held now.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// Whether the socket holds `channel`.
    pub fn holds(&self, channel: &str) -> bool {
        self.channels.contains(channel)
    }

    /// The first step of every client subscribe and publish: the name limit,
    /// then the rules. A channel already held needs no new permission to
    /// subscribe again (a no-op).
    pub fn check(
        &self,
        worker: &Worker,
        action: ChannelAction,
        channel: &str,
        subject: Subject<'_>,
    ) -> Result<Decision, ChannelRefusal> {
        check_name(worker, channel)?;
        if action == ChannelAction::Subscribe && self.holds(channel) {
            return Ok(Decision::Allow);
        }
        match decide(worker, action, channel, subject) {
            Decision::Deny => Err(ChannelRefusal::Forbidden),
            allowed_or_ask => Ok(allowed_or_ask),
        }
    }

    /// Joins a channel the rules (or the app) allowed, or that an app hook's
    /// `join` effect names: `--max-subscriptions`, the hub, the registry. A
    /// no-op when already in it.
    pub async fn join(
        &mut self,
        worker: &Worker,
        socket: &Arc<str>,
        outbox: &Outbox,
        encoder: &'static DeliveryEncoder,
        channel: String,
    ) -> Result<(), ChannelRefusal> {
        check_name(worker, &channel)?;
        if self.channels.contains(&channel) {
            return Ok(());
        }
        let max = worker.config.limits.max_subscriptions;
        if self.channels.len() >= max as usize {
            return Err(ChannelRefusal::TooMany { max });
        }
        worker
            .channels
            .subscribe(&channel, socket.clone(), outbox.clone(), encoder)
            .await
            .map_err(|e| ChannelRefusal::Broker(e.to_string()))?;
        worker.sockets.set_channel(socket, &channel, true);
        self.channels.insert(channel);
        Ok(())
    }

    /// Leaves a channel.
    pub fn unsubscribe(
        &mut self,
        worker: &Worker,
        socket: &str,
        channel: &str,
    ) -> Result<(), ChannelRefusal> {
        check_name(worker, channel)?;
        if !self.channels.remove(channel) {
            return Err(ChannelRefusal::NotSubscribed);
        }
        worker.channels.unsubscribe(channel, socket);
        worker.sockets.set_channel(socket, channel, false);
        Ok(())
    }

    /// Publishes to a channel the rules (or the app) let this socket use, at
    /// once; the returned [`Ack`] resolves when Redis confirmed it (`None`:
    /// no Redis, the publish is complete).
    pub fn publish_acknowledged(
        worker: &Arc<Worker>,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<Option<Ack>, ChannelRefusal> {
        let started = std::time::Instant::now();
        let receipt = worker
            .channels
            .publish_with_receipt(channel, data)
            .map_err(|e| ChannelRefusal::Broker(e.to_string()))?;
        let worker = worker.clone();
        Ok(receipt.map(|receipt| -> Ack {
            Box::pin(async move {
                let confirmed = receipt.confirmed().await;
                worker
                    .metrics
                    .broker_roundtrip
                    .observe(started.elapsed().as_secs_f64());
                confirmed.map_err(|e| ChannelRefusal::Broker(e.to_string()))
            })
        }))
    }

    /// Publishes without waiting for Redis to take it: for a publish the
    /// client asked no acknowledgement of, so a burst from one socket is not
    /// spread out by a Redis round trip per message.
    pub fn publish_unacknowledged(
        worker: &Worker,
        channel: &str,
        data: Box<RawValue>,
    ) -> Result<(), ChannelRefusal> {
        worker
            .channels
            .publish_unconfirmed(channel, data)
            .map_err(|e| ChannelRefusal::Broker(e.to_string()))
    }

    /// Applies the rules again after an identity change; leaves every channel
    /// the socket may no longer use and returns their names.
    pub fn recheck(&mut self, worker: &Worker, socket: &str, subject: Subject<'_>) -> Vec<String> {
        if worker.config.channels.channel_auth == ChannelAuth::Open {
            // Open channels stay open; the subscribe hook's grants stay too.
            return Vec::new();
        }
        // Holding a channel needs the right to subscribe to it. A channel
        // the app granted stays until the app says otherwise (its `leave`
        // effect): asking it again on every identity change would make a
        // login wait on the app.
        let lost: Vec<String> = self
            .channels
            .iter()
            .filter(|channel| {
                decide(worker, ChannelAction::Subscribe, channel, subject) == Decision::Deny
            })
            .cloned()
            .collect();
        for channel in &lost {
            // Removed from the hub first: nothing published from here on reaches it.
            let _ = self.unsubscribe(worker, socket, channel);
        }
        lost
    }

    /// Leaves every channel (the socket is ending).
    pub fn leave_all(&mut self, worker: &Worker, socket: &str) {
        for channel in std::mem::take(&mut self.channels) {
            worker.channels.unsubscribe(&channel, socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_public_patterns_decide() {
        let config = ChannelConfig {
            channel_auth: ChannelAuth::Claims,
            public_channel: vec!["public:*".into()],
            rule: Vec::new(),
        };
        let claims: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"channels":["room:1","team:*"]}"#).unwrap();
        let claims = Claims::new(&claims);
        assert!(claims_allow(&config, Some(&claims), "room:1"));
        assert!(claims_allow(&config, Some(&claims), "team:red"));
        assert!(claims_allow(&config, None, "public:news"));
        assert!(!claims_allow(&config, Some(&claims), "room:2"));
        assert!(!claims_allow(&config, None, "room:1"));
    }

    #[test]
    fn a_name_over_the_limit_is_refused_without_echoing_it() {
        let name = "x".repeat(900_000);
        let error = ChannelRefusal::NameTooLong {
            len: name.len(),
            max: 256,
        }
        .reply_error("s1", &name);
        assert_eq!(error.name, "InvalidArgumentsError");
        assert!(error.message.len() < 100, "{}", error.message);
    }
}
