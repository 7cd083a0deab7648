//! The application's side of a socket: the hooks the socket core dispatches
//! through ([`AppHooks`]), what a call carries ([`HookCall`]) and what the
//! app answers ([`HookAnswer`] with its [`Effect`]s).
//!
//! sockhive never runs application code. [`http::HttpHooks`] calls the app's
//! own HTTP routes (`--hook-url`); a Rust program that embeds the worker can
//! answer in-process instead by handing its own [`AppHooks`] to
//! [`crate::worker::serve_with_hooks`]. Either way the core applies the same
//! effects, with the same timeouts, ordering and metrics.
//!
//! Answering in-process, from a Rust program that runs the worker itself
//! (tested in `worker/tests/in_process.rs`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use sockhive_worker::app::{AppHooks, Effect, HookAnswer, HookCall, HookFuture};
//!
//! struct MyApp;
//!
//! impl AppHooks for MyApp {
//!     fn call(&self, call: HookCall) -> HookFuture {
//!         Box::pin(async move {
//!             Ok(match call.name.as_deref() {
//!                 // `socket.invoke('login', {username})`: log the socket in.
//!                 Some("login") => HookAnswer::result(serde_json::json!("welcome")).with_effect(
//!                     Effect::parse(serde_json::json!({"set_auth_token": {"sub": "ada"}}))
//!                         .expect("a valid effect"),
//!                 ),
//!                 _ => HookAnswer::error("UnknownProcedureError", "no such procedure"),
//!             })
//!         })
//!     }
//! }
//!
//! # async fn run(listener: tokio::net::TcpListener, ipc: tokio::net::UnixStream) -> anyhow::Result<()> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! sockhive_worker::worker::serve_with_hooks(listener, ipc, shutdown, Some(Arc::new(MyApp))).await
//! # }
//! ```
//!
//! (This layer sits under the shared [`crate::Worker`] so that the worker can
//! hold the hooks; the core re-exports the trait as `socket::AppHooks`.)

pub mod effects;
pub mod http;
mod lifecycle;

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
pub use sockhive_shared::config::HookKind;

pub use effects::{Effect, EmitTarget};

/// One call to the application, as the body of `POST {hook-url}/{hook}` carries it.
#[derive(Debug, Serialize)]
pub struct HookCall {
    /// Which hook.
    pub hook: HookKind,
    /// The socket's record (the admin API's, with `session`).
    pub socket: Value,
    /// Procedure or event name (`rpc`, `event`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SocketCluster's `data`; Socket.IO's first argument; a publish's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Socket.IO: every argument (the ack excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Box<RawValue>>,
    /// The channel (`subscribe`, `publish`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl HookCall {
    /// A call of `hook` for the socket whose record is `socket`.
    pub fn new(hook: HookKind, socket: Value) -> HookCall {
        HookCall {
            hook,
            socket,
            name: None,
            data: None,
            args: None,
            channel: None,
        }
    }
}

/// An error the application answered with; the client sees its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// E.g. `LoginFailedError`.
    pub name: String,
    /// Readable text.
    pub message: String,
}

/// What the application answered.
#[derive(Debug)]
pub struct HookAnswer {
    /// `result`, or the app's `error`.
    pub outcome: Result<Value, AppError>,
    /// Applied in order, before the reply reaches the client.
    pub effects: Vec<Effect>,
}

impl HookAnswer {
    /// An answer with a result and no effects.
    pub fn result(value: Value) -> HookAnswer {
        HookAnswer {
            outcome: Ok(value),
            effects: Vec::new(),
        }
    }

    /// An answer refusing with the app's error.
    pub fn error(name: impl Into<String>, message: impl Into<String>) -> HookAnswer {
        HookAnswer {
            outcome: Err(AppError {
                name: name.into(),
                message: message.into(),
            }),
            effects: Vec::new(),
        }
    }

    /// Adds an effect.
    pub fn with_effect(mut self, effect: Effect) -> HookAnswer {
        self.effects.push(effect);
        self
    }

    /// Reads the JSON answer of a hook route: `{"result"}` or `{"error":
    /// {name, message}}`, and `effects`. Every effect is checked before any
    /// is applied, so a bad answer changes nothing.
    pub fn from_json(body: &[u8]) -> Result<HookAnswer, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let Value::Object(mut answer) = value else {
            return Err("the answer is not a JSON object".into());
        };
        let effects = match answer.remove("effects") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .into_iter()
                .enumerate()
                .map(|(index, effect)| {
                    Effect::parse(effect).map_err(|e| format!("effects[{index}]: {e}"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`effects` must be an array".into()),
        };
        let outcome = match answer.remove("error") {
            None | Some(Value::Null) => Ok(answer.remove("result").unwrap_or(Value::Null)),
            Some(Value::Object(error)) => {
                let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
                Err(AppError {
                    name: text("name").unwrap_or_else(|| "Error".into()),
                    message: text("message").unwrap_or_default(),
                })
            }
            Some(Value::String(message)) => Err(AppError {
                name: "Error".into(),
                message,
            }),
            Some(_) => return Err("`error` must be {name, message}".into()),
        };
        Ok(HookAnswer { outcome, effects })
    }
}

/// Why a call got no answer from the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookFailure {
    /// No answer within `--hook-timeout` (`HookTimeoutError`).
    Timeout,
    /// Refused, unreachable, 5xx, a non-2xx status, or an answer that is not
    /// the hook format (`HookUnavailableError`); the text says which.
    Unavailable(String),
}

impl HookFailure {
    /// The error name the client sees.
    pub fn name(&self) -> &'static str {
        match self {
            HookFailure::Timeout => "HookTimeoutError",
            HookFailure::Unavailable(_) => "HookUnavailableError",
        }
    }

    /// The `outcome` label of `sockhive_hook_calls_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            HookFailure::Timeout => "timeout",
            HookFailure::Unavailable(_) => "unavailable",
        }
    }

    /// Readable text for the client.
    pub fn message(&self, hook: HookKind) -> String {
        match self {
            HookFailure::Timeout => format!(
                "the application's {} hook did not answer in time",
                hook.as_str()
            ),
            HookFailure::Unavailable(why) => {
                format!(
                    "the application's {} hook is unavailable: {why}",
                    hook.as_str()
                )
            }
        }
    }
}

/// Logs why a call failed: a warning at most once a second per worker (a
/// dead app fails every socket's calls at once), the rest at debug level.
pub fn log_failure(hook: HookKind, failure: &HookFailure) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_WARNED.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(hook = hook.as_str(), ?failure, "an app hook call failed");
    } else {
        tracing::debug!(hook = hook.as_str(), ?failure, "an app hook call failed");
    }
}

/// A call in flight: the core polls it without blocking the socket.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<HookAnswer, HookFailure>> + Send>>;

/// A socket's life event for the `lifecycle` hook.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleEvent {
    /// `connected` or `disconnected`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The socket's record at that moment.
    pub socket: Value,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// The application, as the socket core sees it: one call per client action
/// that the application answers. [`http::HttpHooks`] is the HTTP
/// implementation; an embedding Rust program may answer in-process.
///
/// The core bounds every call in time (`--hook-timeout`), runs the calls of
/// one socket one at a time in the client's order, counts them
/// (`sockhive_hook_calls_total`, `sockhive_hook_duration_seconds`) and
/// applies the effects; an implementation only answers.
pub trait AppHooks: Send + Sync + 'static {
    /// Starts a call; the future resolves to the application's answer.
    fn call(&self, call: HookCall) -> HookFuture;

    /// Hands over a `connected` / `disconnected` event (best effort: an
    /// implementation may batch, retry or drop; the default drops).
    fn lifecycle(&self, _event: LifecycleEvent) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_whole_or_refused_whole() {
        let ok =
            HookAnswer::from_json(br#"{"result": {"a": 1}, "effects": [{"join": "c"}]}"#).unwrap();
        assert_eq!(ok.outcome, Ok(serde_json::json!({"a": 1})));
        assert_eq!(ok.effects.len(), 1);
        let refused =
            HookAnswer::from_json(br#"{"error": {"name": "LoginFailedError", "message": "no"}}"#)
                .unwrap();
        assert_eq!(refused.outcome.unwrap_err().name, "LoginFailedError");
        assert_eq!(
            HookAnswer::from_json(b"{}").unwrap().outcome,
            Ok(Value::Null)
        );
        for (bad, says) in [
            (&b"<html>"[..], "not JSON"),
            (b"[1]", "not a JSON object"),
            (br#"{"effects": {"join": "c"}}"#, "array"),
            (
                br#"{"result": 1, "effects": [{"join": "c"}, {"fly": 1}]}"#,
                "effects[1]",
            ),
            (br#"{"error": 7}"#, "`error`"),
        ] {
            let error = HookAnswer::from_json(bad).expect_err("refused");
            assert!(error.contains(says), "{error}");
        }
    }
}
