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
use serde_json::{Map, Value};
use sockhive_shared::config::{ChannelAuth, ChannelConfig};

use super::protocol::ReplyError;
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

/// Whether `pattern` (a channel name, or a prefix ending in `*`) covers `channel`.
fn pattern_covers(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// The `--channel-auth claims` rule: a channel is usable when it is public or
/// listed in the token's `channels` claim. Under `open` everything is allowed.
pub fn channel_allowed(
    config: &ChannelConfig,
    claims: Option<&Map<String, Value>>,
    channel: &str,
) -> bool {
    if config.channel_auth == ChannelAuth::Open
        || config
            .public_channel
            .iter()
            .any(|p| pattern_covers(p, channel))
    {
        return true;
    }
    let listed = claims
        .and_then(|c| c.get("channels"))
        .and_then(Value::as_array);
    listed.is_some_and(|entries| {
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

    /// Joins a channel (a no-op when already in it).
    pub async fn subscribe(
        &mut self,
        worker: &Worker,
        socket: &Arc<str>,
        outbox: &Outbox,
        encoder: &'static DeliveryEncoder,
        channel: String,
        claims: Option<&Map<String, Value>>,
    ) -> Result<(), ChannelRefusal> {
        check_name(worker, &channel)?;
        if self.channels.contains(&channel) {
            return Ok(());
        }
        if !channel_allowed(&worker.config.channels, claims, &channel) {
            return Err(ChannelRefusal::Forbidden);
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
        worker
            .sockets
            .update(socket, |entry| entry.channels.insert(channel.clone()));
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
        worker
            .sockets
            .update(socket, |entry| entry.channels.remove(channel));
        Ok(())
    }

    /// Publishes to a channel the rules let this socket use.
    pub async fn publish(
        worker: &Worker,
        channel: &str,
        data: Box<RawValue>,
        claims: Option<&Map<String, Value>>,
    ) -> Result<(), ChannelRefusal> {
        check_name(worker, channel)?;
        if !channel_allowed(&worker.config.channels, claims, channel) {
            return Err(ChannelRefusal::Forbidden);
        }
        let started = std::time::Instant::now();
        let published = worker.channels.publish(channel, data).await;
        worker
            .metrics
            .broker_roundtrip
            .observe(started.elapsed().as_secs_f64());
        published.map_err(|e| ChannelRefusal::Broker(e.to_string()))
    }

    /// Applies the rules again after an identity change; leaves every channel
    /// the socket may no longer use and returns their names.
    pub fn recheck(
        &mut self,
        worker: &Worker,
        socket: &str,
        claims: Option<&Map<String, Value>>,
    ) -> Vec<String> {
        let config = &worker.config.channels;
        if config.channel_auth == ChannelAuth::Open {
            return Vec::new();
        }
        let lost: Vec<String> = self
            .channels
            .iter()
            .filter(|channel| !channel_allowed(config, claims, channel))
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
        };
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"channels":["room:1","team:*"]}"#).unwrap();
        assert!(channel_allowed(&config, Some(&claims), "room:1"));
        assert!(channel_allowed(&config, Some(&claims), "team:red"));
        assert!(channel_allowed(&config, None, "public:news"));
        assert!(!channel_allowed(&config, Some(&claims), "room:2"));
        assert!(!channel_allowed(&config, None, "room:1"));
        let open = ChannelConfig {
            channel_auth: ChannelAuth::Open,
            public_channel: vec![],
        };
        assert!(channel_allowed(&open, None, "anything"));
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
