//! Engine.IO's HTTP long-polling transport as a [`Wire`]: the socket core
//! writes and reads frames as on a WebSocket, while the client fetches what
//! was written with held `GET`s and sends with `POST`s, each request handled
//! by the front door against the [`PollingSession`] it names.
//!
//! The session may upgrade: the client opens a WebSocket naming the same
//! session id, probes it (`2probe` / `3probe`), the held `GET` is released
//! with a noop (`6`), and the client's `5` switches the wire over. Frames
//! written before the switch and not yet fetched go out first on the
//! WebSocket, and frames posted before it are read first, so nothing is lost
//! or reordered in either direction.
//!
//! Only the transport-level packets are known here (`1` close, `2probe`,
//! `3probe`, `5` upgrade, `6` noop); the rest is the protocol's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::wire::{Ending, Wire};
use super::Ws;

/// The client's probe on the new WebSocket, and the answer.
const PROBE: &str = "2probe";
const PROBE_ANSWER: &str = "3probe";
/// The client's "switch to the WebSocket now".
const UPGRADE: &str = "5";
/// Releases a held `GET` so the client can pause polling for the upgrade.
pub const NOOP: &str = "6";

/// While an upgrade waits for the client's `5`, a `GET` is held this long at
/// most, then released with a noop (the real server's check interval).
/// Why: the noop that answers the held `GET` and the `3probe` on the
/// WebSocket travel on different connections. When the noop wins, the
/// client polls again before it knows the probe succeeded, then pauses
/// polling and waits for that new `GET` to return before it sends `5`. Held
/// for the whole ping interval, it stalled the upgrade, and every emit the
/// client buffered meanwhile, for 25 s or more (seen behind nginx with two
/// nodes: the chat demo's test).
pub const UPGRADE_RELEASE: Duration = Duration::from_millis(100);

/// How long a probe may take from the WebSocket's arrival to the client's
/// `5` (the real server's `upgradeTimeout`). Past it the probe is closed and
/// the client goes on polling: a client that answers the probe and never
/// switches does not keep its `GET`s released every 100 ms.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine.IO's close packet.
pub const CLOSE_PACKET: &str = "1";

/// Why a polling request could not be served by its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PollRefusal {
    /// A second `GET` while one is held, or a request after the upgrade:
    /// Engine.IO's `Bad request` (the real server ends the session too).
    #[error("Bad request")]
    BadRequest,
    /// The session has ended.
    #[error("Session ID unknown")]
    Gone,
}

/// What one session's two sides share.
#[derive(Debug, Default)]
struct State {
    /// Written by the core, waiting for a `GET`.
    out: VecDeque<Message>,
    /// Posted by the client, waiting for the core.
    inbound: VecDeque<Message>,
    /// The core's task, waiting for input or for its writes to be fetched.
    core: Option<Waker>,
    /// A `GET` is held now (Engine.IO allows one at a time).
    get_held: bool,
    /// A WebSocket the client opened to upgrade, not yet taken by the wire.
    offered: Option<Box<Ws>>,
    /// The probe was answered and the switch (`5`) has not come yet: a
    /// `GET` is released after [`UPGRADE_RELEASE`].
    upgrading: bool,
    /// The wire switched to the WebSocket: polling requests are refused.
    upgraded: bool,
    /// The client said goodbye (`1`) or broke the protocol.
    client_gone: bool,
    /// The core ended the session: what is left in `out` is the last of it.
    ended: bool,
}

/// One long-polling session: the front door's handle on it.
#[derive(Debug)]
pub struct PollingSession {
    sid: Arc<str>,
    state: Mutex<State>,
    /// Wakes the held `GET` when frames are written or the session ends.
    readable: Notify,
}

impl PollingSession {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_core(state: &mut State) {
        if let Some(waker) = state.core.take() {
            waker.wake();
        }
    }

    /// A `POST`: the client's packets, in order, for the core. A close
    /// packet ends the session from the client's side.
    pub fn post(&self, packets: Vec<Message>) -> Result<(), PollRefusal> {
        let mut state = self.lock();
        if state.upgraded {
            return Err(PollRefusal::BadRequest);
        }
        if state.ended {
            return Err(PollRefusal::Gone);
        }
        for packet in packets {
            if matches!(&packet, Message::Text(text) if text.as_str() == CLOSE_PACKET) {
                state.client_gone = true;
                break;
            }
            state.inbound.push_back(packet);
        }
        Self::wake_core(&mut state);
        Ok(())
    }

    /// Claims the session's one held `GET`; a second at once is refused
    /// and ends the session, as on the real server.
    pub fn begin_get(&self) -> Result<(), PollRefusal> {
        let mut state = self.lock();
        if state.upgraded || state.get_held {
            state.client_gone = true;
            Self::wake_core(&mut state);
            return Err(PollRefusal::BadRequest);
        }
        if state.ended && state.out.is_empty() {
            return Err(PollRefusal::Gone);
        }
        state.get_held = true;
        Ok(())
    }

    /// Takes what the core wrote (possibly nothing yet); the held `GET`
    /// answers with it. Waiting for more is [`PollingSession::readable`].
    pub fn take(&self) -> Vec<Message> {
        let mut state = self.lock();
        let taken: Vec<Message> = state.out.drain(..).collect();
        // The core may be waiting for its writes to be fetched (to flush, or
        // to end once its last frames are out).
        Self::wake_core(&mut state);
        drop(state);
        self.readable.notify_one();
        taken
    }

    /// True when the held `GET` should answer now (frames waiting, or the
    /// session over).
    pub fn has_output(&self) -> bool {
        let state = self.lock();
        !state.out.is_empty() || state.ended || state.upgraded || state.client_gone
    }

    /// True while an upgrade waits for the client's `5`: a `GET` is then
    /// held for [`UPGRADE_RELEASE`] at most and answered with a noop.
    pub fn is_upgrading(&self) -> bool {
        self.lock().upgrading
    }

    /// The held `GET` answered.
    pub fn end_get(&self) {
        self.lock().get_held = false;
    }

    /// Resolves when frames may be waiting (check [`has_output`](Self::has_output)).
    pub async fn readable(&self) {
        self.readable.notified().await
    }

    /// A `GET` that never came back: the client is gone (the core's heartbeat
    /// ends the socket; this only makes it notice sooner).
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.client_gone = true;
        Self::wake_core(&mut state);
    }

    /// The client opened a WebSocket to upgrade to; the wire takes it over.
    /// Refused when the session already upgraded or ended.
    pub fn offer_upgrade(&self, ws: Ws) -> Result<(), PollRefusal> {
        let mut state = self.lock();
        if state.upgraded || state.offered.is_some() {
            return Err(PollRefusal::BadRequest);
        }
        if state.ended || state.client_gone {
            return Err(PollRefusal::Gone);
        }
        state.offered = Some(Box::new(ws));
        Self::wake_core(&mut state);
        Ok(())
    }
}

/// The live sessions of one worker, by id.
#[derive(Debug, Default)]
pub struct PollingSessions {
    sessions: Mutex<HashMap<Arc<str>, Arc<PollingSession>>>,
}

impl PollingSessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<PollingSession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session under `sid`: the front door's handle and the core's wire.
    pub fn open(self: &Arc<Self>, sid: &str) -> (Arc<PollingSession>, PollingWire) {
        let session = Arc::new(PollingSession {
            sid: sid.into(),
            state: Mutex::default(),
            readable: Notify::new(),
        });
        self.lock().insert(session.sid.clone(), session.clone());
        let wire = PollingWire {
            session: session.clone(),
            sessions: self.clone(),
            ws: None,
            probe: None,
            unflushed: false,
        };
        (session, wire)
    }

    /// The session `sid`, if it lives on this worker.
    pub fn get(&self, sid: &str) -> Option<Arc<PollingSession>> {
        self.lock().get(sid).cloned()
    }

    fn forget(&self, sid: &str) {
        self.lock().remove(sid);
    }
}

/// A WebSocket being probed before the switch.
#[derive(Debug)]
struct Probe {
    ws: Box<Ws>,
    /// `3probe` was queued on it and still needs a flush.
    answered: bool,
    /// [`UPGRADE_TIMEOUT`] after the WebSocket arrived.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The socket core's side of a polling session.
#[derive(Debug)]
pub struct PollingWire {
    session: Arc<PollingSession>,
    sessions: Arc<PollingSessions>,
    /// After the upgrade: the WebSocket every frame goes over.
    ws: Option<Box<Ws>>,
    /// During the upgrade: the WebSocket being probed.
    probe: Option<Probe>,
    /// Frames moved to the WebSocket at the switch still need a flush.
    unflushed: bool,
}

impl PollingWire {
    /// The probe failed or was abandoned: the client goes on polling, and
    /// `GET`s are held for the ping interval again.
    fn drop_probe(&mut self) {
        self.probe = None;
        self.session.lock().upgrading = false;
    }

    /// Drives an upgrade in progress: answers the probe, releases the held
    /// `GET`, and switches on `5`. Ready when the switch happened.
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(probe) = self.probe.as_mut() else {
                return Poll::Pending;
            };
            if probe.deadline.as_mut().poll(cx).is_ready() {
                self.drop_probe();
                return Poll::Pending;
            }
            if probe.answered {
                match Pin::new(&mut *probe.ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => probe.answered = false,
                    Poll::Ready(Err(_)) => {
                        self.drop_probe();
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            let probe = self.probe.as_mut().expect("still probing");
            let message = match Pin::new(&mut *probe.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(message))) => message,
                // The probe failed: the client goes on polling.
                Poll::Ready(_) => {
                    self.drop_probe();
                    return Poll::Pending;
                }
            };
            match &message {
                Message::Text(text) if text.as_str() == PROBE => {
                    let ws = Pin::new(&mut *probe.ws);
                    if ws
                        .start_send(Message::Text(Utf8Bytes::from_static(PROBE_ANSWER)))
                        .is_err()
                    {
                        self.drop_probe();
                        return Poll::Pending;
                    }
                    probe.answered = true;
                    // Written now: the WebSocket gathers frames until a flush.
                    if let Poll::Ready(Ok(())) = Pin::new(&mut *probe.ws).poll_flush(cx) {
                        probe.answered = false;
                    }
                    // The held GET returns, so the client can pause polling.
                    let mut state = self.session.lock();
                    state
                        .out
                        .push_back(Message::Text(Utf8Bytes::from_static(NOOP)));
                    state.upgrading = true;
                    drop(state);
                    self.session.readable.notify_one();
                }
                Message::Text(text) if text.as_str() == UPGRADE => {
                    let mut ws = self.probe.take().expect("probing").ws;
                    let mut state = self.session.lock();
                    state.upgraded = true;
                    state.upgrading = false;
                    // What the client has not fetched yet goes first, in order.
                    let unfetched: Vec<Message> = state
                        .out
                        .drain(..)
                        .filter(|m| !matches!(m, Message::Text(t) if t.as_str() == NOOP))
                        .collect();
                    drop(state);
                    self.session.readable.notify_one();
                    self.unflushed = !unfetched.is_empty();
                    for message in unfetched {
                        if Pin::new(&mut *ws).start_send(message).is_err() {
                            break;
                        }
                    }
                    self.ws = Some(ws);
                    return Poll::Ready(());
                }
                // Anything else before the switch is not Engine.IO: drop the probe.
                _ => {
                    self.drop_probe();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Stream for PollingWire {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            {
                let mut state = this.session.lock();
                // Posted before the switch: read before anything after it.
                if let Some(message) = state.inbound.pop_front() {
                    return Poll::Ready(Some(Ok(message)));
                }
                if this.ws.is_none() {
                    if state.client_gone {
                        return Poll::Ready(None);
                    }
                    if let Some(ws) = state.offered.take() {
                        // A new probe replaces any earlier one, unanswered.
                        state.upgrading = false;
                        this.probe = Some(Probe {
                            ws,
                            answered: false,
                            deadline: Box::pin(tokio::time::sleep(UPGRADE_TIMEOUT)),
                        });
                    }
                    state.core = Some(cx.waker().clone());
                }
            }
            if let Some(ws) = this.ws.as_mut() {
                // Frames moved over at the switch go out without waiting for
                // the core's next write.
                if this.unflushed {
                    if let Poll::Ready(result) = Pin::new(&mut **ws).poll_flush(cx) {
                        this.unflushed = false;
                        if let Err(e) = result {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                return Pin::new(&mut **ws).poll_next(cx);
            }
            match this.poll_probe(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Sink<Message> for PollingWire {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.ws.as_mut() {
            Some(ws) => Pin::new(&mut **ws).poll_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        if let Some(ws) = self.ws.as_mut() {
            return Pin::new(&mut **ws).start_send(message);
        }
        let mut state = self.session.lock();
        if state.upgraded {
            // The switch happened in poll_next of this same task; unreachable
            // in order, but never lose a frame.
            drop(state);
            return Err(WsError::AlreadyClosed);
        }
        state.out.push_back(message);
        drop(state);
        self.session.readable.notify_one();
        Ok(())
    }

    /// Pending while written frames wait for a `GET`: a client that stops
    /// polling is a client that does not read, and the core's write-stall
    /// deadline ends it.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if let Some(ws) = self.ws.as_mut() {
            return Pin::new(&mut **ws).poll_flush(cx);
        }
        let mut state = self.session.lock();
        if state.out.is_empty() || state.client_gone {
            return Poll::Ready(Ok(()));
        }
        state.core = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.ws.as_mut() {
            Some(ws) => Pin::new(&mut **ws).poll_close(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Wire for PollingWire {
    fn end(
        &mut self,
        close: Option<(u16, String)>,
        grace: Duration,
        ending: Ending,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(ws) = self.ws.as_mut() {
                ws.end(close, grace, ending).await;
                self.sessions.forget(&self.session.sid);
                return;
            }
            {
                let mut state = self.session.lock();
                if !state.client_gone {
                    state
                        .out
                        .push_back(Message::Text(Utf8Bytes::from_static(CLOSE_PACKET)));
                }
                state.ended = true;
            }
            self.session.readable.notify_one();
            if ending == Ending::Orderly {
                // Give the client's next GET the last frames and the close.
                let _ = tokio::time::timeout(grace, async {
                    while self.session.has_unfetched() {
                        self.session.readable.notified().await;
                    }
                })
                .await;
            }
            self.sessions.forget(&self.session.sid);
        })
    }
}

impl PollingSession {
    fn has_unfetched(&self) -> bool {
        !self.lock().out.is_empty()
    }
}

impl Drop for PollingWire {
    fn drop(&mut self) {
        self.sessions.forget(&self.session.sid);
        let mut state = self.session.lock();
        state.ended = true;
        drop(state);
        self.session.readable.notify_one();
    }
}
