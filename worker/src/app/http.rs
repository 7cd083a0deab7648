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
    /// One keyed HMAC state per secret, cloned per call (keying hashes the
    /// secret; doing it once saves that on every call).
    macs: Vec<Hmac<Sha256>>,
    /// `{hook-url path}/{hook}` for each hook, built once.
    paths: [String; 6],
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
        let base = url.path.trim_end_matches('/').to_owned();
        let inner = Arc::new(Inner {
            paths: HookKind::ALL.map(|hook| format!("{base}/{}", hook.as_str())),
            url,
            macs: config
                .hook_secret
                .iter()
                .map(|s| {
                    Hmac::<Sha256>::new_from_slice(s.as_bytes()).expect("HMAC takes any key size")
                })
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
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut header = String::with_capacity(self.macs.len() * 72);
        for keyed in &self.macs {
            let mut mac = keyed.clone();
            mac.update(body);
            if !header.is_empty() {
                header.push(',');
            }
            header.push_str("sha256=");
            for byte in mac.finalize().into_bytes() {
                header.push(HEX[usize::from(byte >> 4)] as char);
                header.push(HEX[usize::from(byte & 0x0f)] as char);
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
        let path = &self.paths[HookKind::ALL
            .iter()
            .position(|h| *h == hook)
            .expect("every hook is in ALL")];
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
                .post_json(&self.url.authority, path, &head, body)
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app that answers `{"result": n}` for the n-th request on each
    /// connection, closing each connection after `per_connection` answers;
    /// returns its URL and the count of connections it accepted.
    async fn app(per_connection: usize) -> (String, Arc<AtomicU64>) {
        let (url, accepted, _) = app_counting(per_connection).await;
        (url, accepted)
    }

    /// [`app`], also counting the requests answered.
    async fn app_counting(per_connection: usize) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let counting = accepted.clone();
        let answering = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counting.fetch_add(1, Ordering::SeqCst);
                let answering = answering.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    while answered < per_connection {
                        let Ok(read) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        // One whole request: head, then Content-Length bytes.
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buffer.len() < end + 4 + length {
                            continue;
                        }
                        buffer.drain(..end + 4 + length);
                        answered += 1;
                        answering.fetch_add(1, Ordering::SeqCst);
                        let body = format!("{{\"result\":{answered}}}");
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, requests)
    }

    fn hooks(url: String) -> HttpHooks {
        let config = HooksConfig {
            hook_url: Some(url),
            hook_secret: vec!["s".into()],
            ..HooksConfig::default()
        };
        HttpHooks::new(&config, 1, WorkerMetrics::new()).unwrap()
    }

    fn call() -> HookCall {
        HookCall::new(HookKind::Rpc, serde_json::json!({"id": "s1"}))
    }

    #[tokio::test]
    async fn calls_reuse_one_kept_alive_connection() {
        let (url, accepted) = app(usize::MAX).await;
        let hooks = hooks(url);
        for n in 1..=3 {
            let answer = hooks.call(call()).await.unwrap();
            assert_eq!(answer.outcome, Ok(serde_json::json!(n)));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_while_idle_is_replaced_without_failing_the_call() {
        let (url, accepted) = app(1).await;
        let hooks = hooks(url);
        for _ in 1..=3 {
            let answer = hooks.call(call()).await.unwrap();
            assert_eq!(answer.outcome, Ok(serde_json::json!(1)));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn lifecycle_events_go_in_batches_of_at_most_one_hundred() {
        let (url, _, requests) = app_counting(usize::MAX).await;
        let config = HooksConfig {
            hook_url: Some(url),
            hook_secret: vec!["s".into()],
            hooks: vec![HookKind::Lifecycle],
            ..HooksConfig::default()
        };
        let metrics = WorkerMetrics::new();
        let hooks = HttpHooks::new(&config, 1, metrics.clone()).unwrap();
        for n in 0..150 {
            hooks.lifecycle(LifecycleEvent {
                kind: "connected",
                socket: serde_json::json!({"id": n}),
                at: String::new(),
            });
        }
        let ok = || {
            metrics
                .hook_calls
                .with_label_values(&["lifecycle", "ok"])
                .get()
        };
        for _ in 0..100 {
            if ok() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!((ok(), requests.load(Ordering::SeqCst)), (2, 2));
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        drop(listener);
        let failure = hooks(url).call(call()).await.unwrap_err();
        assert!(
            matches!(failure, HookFailure::Unavailable(_)),
            "{failure:?}"
        );
        assert_eq!(failure.name(), "HookUnavailableError");
    }

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
