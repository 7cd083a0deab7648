//! The sending half of the worker's IPC with its master (the reading loop is
//! the worker entry's, [`crate::worker`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sockhive_shared::ipc::{self, ToMaster};
use tokio::sync::{mpsc, oneshot};

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

/// Requests this worker sent through the master, waiting for their answers
/// (which arrive on the reading loop and are matched here by id).
#[derive(Debug)]
pub struct Replies<T> {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies {
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
        }
    }
}

impl<T> Replies<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new request id and where its answer will arrive.
    pub fn expect(&self) -> (u64, oneshot::Receiver<T>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    /// Hands an answer to whoever waits for it (nobody, if it gave up).
    pub fn complete(&self, id: u64, answer: T) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Stops waiting for `id` (the asker timed out).
    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }
}
