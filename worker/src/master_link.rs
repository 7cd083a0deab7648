//! The sending half of the worker's IPC with its master (the reading loop is
//! the worker entry's, [`crate::worker`]).

use sockhive_shared::ipc::{self, ToMaster};
use tokio::sync::mpsc;

/// Sends messages to the master; clone freely.
///
/// Messages are encoded by the caller's task and written by one writer task,
/// so a slow master never blocks a socket's task and frames never interleave.
#[derive(Debug, Clone)]
pub struct MasterLink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

impl MasterLink {
    /// A link and the receiver its writer task drains.
    pub fn new() -> (MasterLink, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MasterLink { tx }, rx)
    }

    /// Queues a message; false when the master is gone (the worker is exiting).
    pub fn send(&self, message: &ToMaster) -> bool {
        match ipc::encode(message) {
            Ok(frame) => self.tx.send(frame).is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a message to the master");
                false
            }
        }
    }
}
