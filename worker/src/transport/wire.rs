//! What a socket is served over, seen from the socket core: frames in,
//! frames out, and how the connection ends. A WebSocket is one wire; an
//! Engine.IO long-polling session (which may upgrade to a WebSocket) is
//! another, so one core serves both.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message;

/// How long a closed connection keeps reading and discarding, so the close
/// frame is not destroyed by a reset (interface.md: lingering close).
pub const LINGER: Duration = Duration::from_secs(2);

/// How a wire ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Send the close, wait up to the grace for the peer's, then linger.
    Orderly,
    /// The peer does not read: one short try, then drop the connection at
    /// once (no waiting, no linger: its descriptor and unsent data go now).
    Abrupt,
}

/// A socket's connection: a sink and a stream of frames, and its ending.
pub trait Wire:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin + Send + 'static
{
    /// Sends `close` (the WebSocket close frame, or the transport's own
    /// goodbye) after everything already written, and ends the connection
    /// within `grace` (plus the lingering close of an orderly ending).
    fn end(
        &mut self,
        close: Option<(u16, String)>,
        grace: Duration,
        ending: Ending,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
