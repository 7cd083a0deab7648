//! The application's hooks over HTTP: `POST {hook-url}/{hook}` with a JSON
//! body, signed, over a small pool of kept-alive connections.
//!
//! Requests carry `X-Sockhive-Signature: sha256=<hex>` once per configured
//! secret (the app verifies any one of them, so secrets rotate without a
//! flag day) and `X-Sockhive-Event-Id`, unique per call, for the app's
//! de-duplication of retried lifecycle batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sockhive_shared::config::HooksConfig;
use sockhive_shared::http_url::HttpUrl;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::lifecycle::LifecycleSender;
use super::{AppHooks, HookAnswer, HookCall, HookFailure, HookFuture, HookKind, LifecycleEvent};
use crate::http_client::{CallError, Connection};
use crate::metrics::WorkerMetrics;

/// An idle connection older than this is closed rather than reused: Node's
/// `server.keepAliveTimeout` defaults to 5 s, and reusing a connection the app
/// is closing at that moment would fail the call.
const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(4);

/// Why the hook configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HookSetupError {
    /// `--hook-url` is not a URL a worker can call.
    #[error("{0}")]
    BadUrl(#[from] sockhive_shared::http_url::BadHttpUrl),
    /// No `--hook-secret`.
    #[error("hooks need at least one --hook-secret")]
    NoSecret,
}

/// Calls the application's hook routes over HTTP.
#[derive(Clone)]
pub struct HttpHooks {
    inner: Arc<Inner>,
    lifecycle: Option<LifecycleSender>,
}

pub(super) struct Inner {
    url: HttpUrl,
    secrets: Vec<Vec<u8>>,
    /// `--hook-concurrency`: calls in flight on this worker.
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<(Connection, Instant)>>,
    max_idle: usize,
    /// Event ids: a per-start random prefix and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

impl HttpHooks {
    /// Hooks as configured; the lifecycle batcher starts when that hook is on
    /// (so this runs inside the worker's runtime).
    pub fn new(
        config: &HooksConfig,
        slot: u16,
        metrics: WorkerMetrics,
    ) -> Result<HttpHooks, HookSetupError> {
        let url = HttpUrl::parse(config.hook_url.as_deref().unwrap_or(""))?;
        if config.hook_secret.is_empty() {
            return Err(HookSetupError::NoSecret);
        }
        let concurrency = config.hook_concurrency.max(1) as usize;
        let inner = Arc::new(Inner {
            url,
            secrets: config
                .hook_secret
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            slots: Arc::new(Semaphore::new(concurrency)),
            idle: Mutex::new(Vec::new()),
            max_idle: concurrency,
            id_prefix: format!("{:012x}-{slot}", rand::random::<u64>() & 0xffff_ffff_ffff),
            next_id: AtomicU64::new(1),
        });
        let lifecycle = config
            .enabled(HookKind::Lifecycle)
            .then(|| super::lifecycle::start(inner.clone(), metrics));
        Ok(HttpHooks { inner, lifecycle })
    }
}

impl AppHooks for HttpHooks {
    fn call(&self, call: HookCall) -> HookFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&call)
                .map_err(|e| HookFailure::Unavailable(format!("cannot encode the call: {e}")))?;
            inner.post(call.hook, &body).await
        })
    }

    fn lifecycle(&self, event: LifecycleEvent) {
        if let Some(sender) = &self.lifecycle {
            sender.send(event);
        }
    }
}

impl Inner {
    /// `X-Sockhive-Signature` for `body`: one `sha256=<hex>` per secret.
    fn signature(&self, body: &[u8]) -> String {
        let mut header = String::with_capacity(self.secrets.len() * 72);
        for secret in &self.secrets {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
            mac.update(body);
            if !header.is_empty() {
                header.push(',');
            }
            header.push_str("sha256=");
            for byte in mac.finalize().into_bytes() {
                header.push_str(&format!("{byte:02x}"));
            }
        }
        header
    }

    /// POSTs `body` to `{hook-url}/{hook}` and reads the hook answer.
    pub(super) async fn post(
        &self,
        hook: HookKind,
        body: &[u8],
    ) -> Result<HookAnswer, HookFailure> {
        let _slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HookFailure::Unavailable("the worker is stopping".into()))?;
        let path = format!("{}/{}", self.url.path.trim_end_matches('/'), hook.as_str());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "X-Sockhive-Signature: {}\r\nX-Sockhive-Event-Id: {}-{id}\r\nX-Sockhive-Hook: {}\r\n",
            self.signature(body),
            self.id_prefix,
            hook.as_str()
        );
        let mut connection = self.take_idle();
        let answer = loop {
            let mut fresh = match connection.take() {
                Some(reused) => reused,
                None => Connection::open(&self.url.authority)
                    .await
                    .map_err(|e| HookFailure::Unavailable(e.to_string()))?,
            };
            match fresh
                .post_json(&self.url.authority, &path, &head, body)
                .await
            {
                Ok(answer) => {
                    if answer.reusable {
                        self.put_idle(fresh);
                    }
                    break answer;
                }
                // The app closed an idle connection under us: the request
                // was never read, send it once more on a new connection.
                Err(CallError::Stale) => continue,
                Err(e) => return Err(HookFailure::Unavailable(e.to_string())),
            }
        };
        if !(200..300).contains(&answer.status) {
            return Err(HookFailure::Unavailable(format!(
                "the app answered HTTP {}",
                answer.status
            )));
        }
        HookAnswer::from_json(&answer.body).map_err(HookFailure::Unavailable)
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((connection, since)) = idle.pop() {
            if since.elapsed() < IDLE_REUSE_LIMIT {
                return Some(connection);
            }
        }
        None
    }

    fn put_idle(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push((connection, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_signs_the_body_in_order() {
        let config = HooksConfig {
            hook_url: Some("http://127.0.0.1:9/sockhive".into()),
            hook_secret: vec!["new".into(), "old".into()],
            ..HooksConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let hooks = HttpHooks::new(&config, 1, WorkerMetrics::new()).unwrap();
        // Computed independently (Python's hmac, as Node's crypto does it).
        assert_eq!(
            hooks.inner.signature(b"{\"hook\":\"rpc\"}"),
            "sha256=93779c382f2d10c9dcd4590c01b8e2b27a988ef5625e76e82f019a7a216f6de8,\
             sha256=3b915d367a807374d7d68470d68c6bd56016f74b06306f2a79f913089c50c84f"
        );
    }
}
