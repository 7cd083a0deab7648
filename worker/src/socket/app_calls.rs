//! One socket's calls to the application (the app hooks): queued in the
//! client's order, one in flight at a time, polled by the socket's own loop
//! so a slow app never stalls its pings, deliveries or channel requests.
//! `--hook-queue` bounds what one socket may have waiting; beyond it a call
//! is answered at once (`HookUnavailableError`) and counted.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use sockhive_shared::channel_rules::ChannelAction;
use tokio::time::Instant;

use super::membership::{ChannelRefusal, Membership};
use super::protocol::{AppEvent, Protocol, ReplyError, ReplyTo};
use super::{CloseReason, Socket};
use crate::app::{Effect, HookAnswer, HookCall, HookFailure, HookFuture, HookKind};
use crate::auth::{Claims, Method, Refusal};
use crate::hub::outbox::outbox;
use crate::hub::registry::SocketEntry;
use crate::transport::Wire;
use crate::Worker;

/// The `connect` hook's time limit never exceeds this: a handshake waits on it.
pub const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(1);

/// What to do with an answer when it comes.
#[derive(Debug)]
pub enum Then {
    /// Answer the client's call.
    Reply(ReplyTo),
    /// Nothing: an event has no answer.
    Nothing,
    /// Subscribe if the app allows; answer if asked.
    Subscribe {
        /// The channel.
        channel: String,
        /// Where the outcome goes.
        reply: Option<ReplyTo>,
    },
    /// Publish (the app may replace the data) if the app allows.
    Publish {
        /// The channel.
        channel: String,
        /// The client's message.
        data: Box<RawValue>,
        /// Where the outcome goes.
        reply: Option<ReplyTo>,
    },
}

/// A call waiting for its turn.
#[derive(Debug)]
pub struct Waiting {
    hook: HookKind,
    then: Then,
    event: Option<AppEvent>,
}

impl Waiting {
    /// An `rpc` (with a reply) or `event` (without).
    pub fn app_event(event: AppEvent, reply: Option<ReplyTo>) -> Waiting {
        Waiting {
            hook: if reply.is_some() {
                HookKind::Rpc
            } else {
                HookKind::Event
            },
            then: reply.map_or(Then::Nothing, Then::Reply),
            event: Some(event),
        }
    }

    /// A `subscribe` or `publish` the rules leave to the app.
    pub fn channel(then: Then) -> Waiting {
        let hook = match then {
            Then::Publish { .. } => HookKind::Publish,
            _ => HookKind::Subscribe,
        };
        Waiting {
            hook,
            then,
            event: None,
        }
    }
}

struct InFlight {
    hook: HookKind,
    then: Then,
    started: Instant,
    answer: HookFuture,
}

/// A finished call.
pub struct Finished {
    hook: HookKind,
    then: Then,
    started: Instant,
    answer: Result<HookAnswer, HookFailure>,
}

/// The calls of one socket (created at its first call: idle sockets pay a pointer).
#[derive(Default)]
pub struct AppCalls {
    waiting: VecDeque<Waiting>,
    in_flight: Option<InFlight>,
}

impl AppCalls {
    /// True while a call is in flight (the loop then polls for its answer).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The answer of the call in flight, when it comes.
    pub fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Finished> {
        let Some(call) = self.in_flight.as_mut() else {
            return Poll::Pending;
        };
        let answer = std::task::ready!(call.answer.as_mut().poll(cx));
        let call = self.in_flight.take().expect("in flight");
        Poll::Ready(Finished {
            hook: call.hook,
            then: call.then,
            started: call.started,
            answer,
        })
    }
}

/// A call bounded by `limit`: past it, `HookTimeoutError`.
pub fn bounded(answer: HookFuture, limit: Duration) -> HookFuture {
    Box::pin(async move {
        tokio::time::timeout(limit, answer)
            .await
            .unwrap_or(Err(HookFailure::Timeout))
    })
}

/// Asks the app's `connect` hook about a socket about to exist (`id`,
/// logged in with `claims`): its effects, to apply once it exists, or the
/// refusal its client gets (the app's error, or `HookTimeoutError` /
/// `HookUnavailableError`, which count as the server's fault).
pub async fn ask_connect(
    worker: &Worker,
    protocol: &'static str,
    id: &str,
    peer: SocketAddr,
    claims: Option<&Claims>,
    web_session: Option<String>,
) -> Result<Vec<Effect>, Refusal> {
    let Some(app) = worker.app.clone() else {
        return Ok(Vec::new());
    };
    let (outbox, _) = outbox(0);
    let entry = SocketEntry::new(protocol, peer, outbox, claims.cloned(), web_session);
    let record = worker.sockets.record(id, &entry);
    drop(entry);
    let limit = worker.config.hooks.hook_timeout.min(CONNECT_TIMEOUT_CAP);
    let started = Instant::now();
    let answer = bounded(app.call(HookCall::new(HookKind::Connect, record)), limit).await;
    let (outcome, result) = match answer {
        Ok(HookAnswer {
            outcome: Ok(_),
            effects,
        }) => ("ok", Ok(effects)),
        Ok(HookAnswer {
            outcome: Err(error),
            ..
        }) => (
            "error",
            Err((Cow::Owned(error.name), error.message, "hook_refused")),
        ),
        Err(failure) => (failure.outcome(), {
            crate::app::log_failure(HookKind::Connect, &failure);
            Err((
                Cow::Borrowed(failure.name()),
                failure.message(HookKind::Connect),
                "hook_unavailable",
            ))
        }),
    };
    worker
        .metrics
        .hook_call(HookKind::Connect.as_str(), outcome, started.elapsed());
    result.map_err(|(name, message, reason)| Refusal {
        method: Method::Token,
        name,
        message,
        reason,
        fields: Box::default(),
        bad_token: false,
    })
}

/// The client-facing error of a failed call.
fn failure_error(hook: HookKind, failure: &HookFailure) -> ReplyError {
    ReplyError::new(failure.name(), failure.message(hook))
}

impl<P: Protocol, W: Wire> Socket<P, W> {
    /// Queues a call to the app behind this socket's earlier ones.
    pub(super) fn call_app(&mut self, call: Waiting) {
        let calls = self.calls.get_or_insert_with(Box::default);
        let queued = calls.waiting.len() + usize::from(calls.in_flight.is_some());
        if queued >= self.worker.config.hooks.hook_queue as usize {
            self.worker
                .metrics
                .hook_call(call.hook.as_str(), "queue_full", Duration::ZERO);
            let error = ReplyError::new(
                "HookUnavailableError",
                format!(
                    "too many calls waiting for the application on this socket (--hook-queue {queued})"
                ),
            );
            self.refuse(call.then, &error);
            return;
        }
        calls.waiting.push_back(call);
        self.start_next_call();
    }

    /// Starts the next waiting call, if none is in flight. The socket's
    /// record is read now, not when queued, so a call sees what the calls
    /// before it did (a `login` then a `whoami`).
    fn start_next_call(&mut self) {
        let Some(app) = self.worker.app.clone() else {
            return;
        };
        let Some(calls) = self.calls.as_mut() else {
            return;
        };
        if calls.in_flight.is_some() {
            return;
        }
        let Some(next) = calls.waiting.pop_front() else {
            return;
        };
        let record = self
            .worker
            .sockets
            .record_of(&self.id)
            .unwrap_or(Value::Null);
        let mut call = HookCall::new(next.hook, record);
        if let Some(event) = next.event {
            call.name = Some(event.name);
            call.data = Some(event.data);
            call.args = event.args;
        }
        match &next.then {
            Then::Subscribe { channel, .. } => call.channel = Some(channel.clone()),
            Then::Publish { channel, data, .. } => {
                call.channel = Some(channel.clone());
                call.data = Some(data.clone());
            }
            Then::Reply(_) | Then::Nothing => {}
        }
        let limit = self.worker.config.hooks.hook_timeout;
        calls.in_flight = Some(InFlight {
            hook: next.hook,
            then: next.then,
            started: Instant::now(),
            answer: bounded(app.call(call), limit),
        });
    }

    /// Answers a call that never reached the app.
    fn refuse(&mut self, then: Then, error: &ReplyError) {
        match then {
            Then::Reply(reply) => self.protocol.call_result(&mut self.out, reply, Err(error)),
            Then::Subscribe {
                reply: Some(reply), ..
            }
            | Then::Publish {
                reply: Some(reply), ..
            } => self.protocol.reply(&mut self.out, reply, Err(error)),
            _ => {}
        }
    }

    /// The app answered (or failed to): effects first, then the reply, then
    /// the next call; a `disconnect` effect ends the socket after the reply.
    pub(super) async fn on_app_answer(&mut self, finished: Finished) -> Option<CloseReason> {
        let Finished {
            hook,
            then,
            started,
            answer,
        } = finished;
        let outcome = match &answer {
            Ok(HookAnswer { outcome: Ok(_), .. }) => "ok",
            Ok(_) => "error",
            Err(failure) => failure.outcome(),
        };
        self.worker
            .metrics
            .hook_call(hook.as_str(), outcome, started.elapsed());
        let mut ending = None;
        match answer {
            Err(failure) => {
                crate::app::log_failure(hook, &failure);
                self.refuse(then, &failure_error(hook, &failure));
            }
            Ok(HookAnswer { outcome, effects }) => {
                ending = self.apply_effects(effects).await;
                let outcome = outcome.map_err(|e| ReplyError::new(e.name, e.message));
                self.settle(then, outcome).await;
            }
        }
        self.start_next_call();
        ending
    }

    /// Carries out what the call was for, now that the app answered.
    async fn settle(&mut self, then: Then, outcome: Result<Value, ReplyError>) {
        match (then, outcome) {
            (Then::Reply(reply), outcome) => {
                self.protocol
                    .call_result(&mut self.out, reply, outcome.as_ref())
            }
            (Then::Nothing, _) => {}
            (then, Err(error)) => self.refuse(then, &error),
            (Then::Subscribe { channel, reply }, Ok(_)) => {
                let result = self
                    .membership
                    .join(
                        &self.worker,
                        &self.id,
                        &self.outbox,
                        P::DELIVERY,
                        channel.clone(),
                    )
                    .await;
                self.answer_channel(reply, &channel, result);
            }
            (
                Then::Publish {
                    channel,
                    data,
                    reply,
                },
                Ok(result),
            ) => {
                // `{"result": {"data": X}}` replaces the payload (e.g. to
                // stamp the sender); any other result publishes it as sent.
                let data = match result.get("data") {
                    Some(replaced) => match serde_json::value::to_raw_value(replaced) {
                        Ok(replaced) => replaced,
                        Err(_) => data,
                    },
                    None => data,
                };
                self.publish(reply, channel, data).await;
            }
        }
    }

    /// A client's subscribe or publish: the rules decide, or hand it to the app.
    pub(super) async fn channel_request(
        &mut self,
        action: ChannelAction,
        channel: String,
        data: Option<Box<RawValue>>,
        reply: Option<ReplyTo>,
    ) {
        use super::membership::Decision;
        let decision = self
            .membership
            .check(&self.worker, action, &channel, self.subject());
        let result: Result<(), ChannelRefusal> = match (decision, action, data) {
            (Err(refusal), _, _) => Err(refusal),
            (Ok(Decision::AskApp), ChannelAction::Subscribe, _) => {
                return self.call_app(Waiting::channel(Then::Subscribe { channel, reply }))
            }
            (Ok(Decision::AskApp), ChannelAction::Publish, data) => {
                let data = data.unwrap_or_else(null_json);
                return self.call_app(Waiting::channel(Then::Publish {
                    channel,
                    data,
                    reply,
                }));
            }
            (Ok(_), ChannelAction::Subscribe, _) => {
                self.membership
                    .join(
                        &self.worker,
                        &self.id,
                        &self.outbox,
                        P::DELIVERY,
                        channel.clone(),
                    )
                    .await
            }
            (Ok(_), ChannelAction::Publish, data) if reply.is_none() => {
                Membership::publish_unacknowledged(
                    &self.worker,
                    &channel,
                    data.unwrap_or_else(null_json),
                )
            }
            (Ok(_), ChannelAction::Publish, data) => {
                return self
                    .publish(reply, channel, data.unwrap_or_else(null_json))
                    .await;
            }
        };
        if let (Err(e), None, ChannelAction::Publish) = (&result, reply, action) {
            tracing::debug!(socket = %self.id, error = ?e, "publish without ack refused or not fully delivered");
        }
        self.answer_channel(reply, &channel, result);
    }
}

impl<P: Protocol, W: Wire> Socket<P, W> {
    /// Publishes now and answers when Redis confirmed it, without holding up
    /// the socket's reading (see [`super::publish_acks`]); past
    /// [`super::publish_acks::MAX_PENDING_ACKS`] unanswered replies it waits
    /// for the oldest first.
    async fn publish(&mut self, reply: Option<ReplyTo>, channel: String, data: Box<RawValue>) {
        let ack = match Membership::publish_acknowledged(&self.worker, &channel, data) {
            Ok(Some(ack)) => ack,
            result => return self.answer_channel(reply, &channel, result.map(drop)),
        };
        // Nobody asked: the broker still sends it, and logs a failure.
        let Some(reply) = reply else { return };
        let acks = self.acks.get_or_insert_with(Default::default);
        if acks.is_full() {
            let (reply, channel, result) = std::future::poll_fn(|cx| acks.poll_oldest(cx)).await;
            self.answer_channel(Some(reply), &channel, result);
        }
        self.acks
            .get_or_insert_with(Default::default)
            .push(reply, channel, ack);
    }
}

fn null_json() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}
