//! The `lifecycle` hook: `connected` / `disconnected` records, batched (at
//! most [`MAX_BATCH`] per call, or what [`BATCH_WINDOW`] gathered) and
//! retried with backoff for up to [`GIVE_UP_AFTER`]. Best effort by design:
//! the queue is bounded, and what does not fit is dropped and counted, so a
//! dead app never grows a worker.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http::Inner;
use super::{HookKind, LifecycleEvent};
use crate::metrics::WorkerMetrics;

/// Most events in one call.
pub const MAX_BATCH: usize = 100;
/// How long the first event of a batch waits for company.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// How long a batch is retried before it is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Events waiting on one worker; beyond it new ones are dropped.
const QUEUE: usize = 10_000;

/// Hands events to the batcher without ever waiting.
#[derive(Clone)]
pub struct LifecycleSender {
    queue: mpsc::Sender<LifecycleEvent>,
    metrics: WorkerMetrics,
}

impl LifecycleSender {
    /// Queues one event; a full queue drops it (counted as `queue_full`).
    pub fn send(&self, event: LifecycleEvent) {
        if self.queue.try_send(event).is_err() {
            self.metrics
                .hook_call("lifecycle", "queue_full", Duration::ZERO);
        }
    }
}

/// Starts the batcher task of one worker.
pub(super) fn start(inner: Arc<Inner>, metrics: WorkerMetrics) -> LifecycleSender {
    let (queue, mut events) = mpsc::channel(QUEUE);
    let sender = LifecycleSender {
        queue,
        metrics: metrics.clone(),
    };
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = events.recv().await {
            batch.push(first);
            let window = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(window);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    _ = &mut window => break,
                    next = events.recv() => match next {
                        Some(event) => batch.push(event),
                        None => break,
                    },
                }
            }
            deliver(&inner, &metrics, std::mem::take(&mut batch)).await;
        }
    });
    sender
}

/// Sends one batch, retrying with backoff; counts every attempt.
async fn deliver(inner: &Inner, metrics: &WorkerMetrics, batch: Vec<LifecycleEvent>) {
    let body = match serde_json::to_vec(&json!({"hook": "lifecycle", "events": batch})) {
        Ok(body) => body,
        Err(_) => return,
    };
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = Instant::now();
        let outcome = match inner.post(HookKind::Lifecycle, &body).await {
            Ok(answer) if answer.outcome.is_ok() => "ok",
            Ok(_) => "error",
            Err(failure) => failure.outcome(),
        };
        metrics.hook_call("lifecycle", outcome, attempt.elapsed());
        // The app's own error is its answer: retrying would not change it.
        if matches!(outcome, "ok" | "error") || started.elapsed() + backoff > GIVE_UP_AFTER {
            if !matches!(outcome, "ok" | "error") {
                tracing::warn!(
                    events = batch.len(),
                    "lifecycle events dropped: the app did not take them within 60 s"
                );
            }
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
