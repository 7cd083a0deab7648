//! The real npm clients, driven over newline-delimited JSON.
//!
//! `tests/js/driver.js` (see its header for the protocol) hosts any number of
//! `socketcluster-client` and `socket.io-client` sockets; each command gets one
//! reply, and client events stream in between.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Notify};

use crate::repo_root;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running `driver.js`.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    next_id: u64,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
}

impl Driver {
    /// Starts the driver (needs `npm ci` in tests/js, which the test command runs).
    pub async fn start() -> Driver {
        let dir = repo_root().join("tests/js");
        assert!(dir.join("node_modules/socketcluster-client").exists(), "tests/js/node_modules is missing: run `npm ci` in tests/js (the README's test command does)");
        let mut child = Command::new("node")
            .arg("driver.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node tests/js/driver.js");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (p, e, a) = (pending.clone(), events.clone(), arrived.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                match message.get("id").and_then(Value::as_u64) {
                    Some(id) if message.get("ok").is_some() => {
                        if let Some(tx) = p.lock().unwrap().remove(&id) {
                            let _ = tx.send(message);
                        }
                    }
                    _ => {
                        e.lock().unwrap().push(message);
                        a.notify_waiters();
                    }
                }
            }
        });
        Driver {
            child,
            stdin,
            next_id: 1,
            pending,
            events,
            arrived,
        }
    }

    /// Runs one op; `Ok(result)` or `Err(error object)`.
    pub async fn call(&mut self, op: &str, fields: Value) -> Result<Value, Value> {
        self.call_within(op, fields, Duration::from_secs(30)).await
    }

    /// Like [`Driver::call`], waiting up to `limit` for the reply (for ops
    /// that legitimately run longer than the usual 30 s).
    pub async fn call_within(
        &mut self,
        op: &str,
        fields: Value,
        limit: Duration,
    ) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = match fields {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        command.insert("id".into(), json!(id));
        command.insert("op".into(), json!(op));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = Value::Object(command).to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to driver");
        let reply = tokio::time::timeout(limit, rx)
            .await
            .unwrap_or_else(|_| panic!("driver did not answer {op} in time"))
            .expect("driver alive");
        if reply["ok"] == json!(true) {
            Ok(reply["result"].clone())
        } else {
            Err(reply["error"].clone())
        }
    }

    /// Like [`Driver::call`], panicking with the error when the op fails.
    pub async fn ok(&mut self, op: &str, fields: Value) -> Value {
        match self.call(op, fields.clone()).await {
            Ok(result) => result,
            Err(error) => panic!("{op} {fields} failed: {error}"),
        }
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Events of one kind for one client.
    pub fn events_of(&self, client: &str, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["client"] == client && e["event"] == kind)
            .collect()
    }

    /// Waits for an event matching `matches` (received before or after the call).
    pub async fn wait_event(
        &self,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(found) = self.events.lock().unwrap().iter().find(|e| matches(e)) {
                return found.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; events: {:#?}",
                    self.events()
                );
            }
        }
    }

    /// Waits until at least `count` events match.
    pub async fn wait_count(
        &self,
        timeout: Duration,
        what: &str,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let found: Vec<Value> = self
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches(e))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                panic!(
                    "timed out after {timeout:?} waiting for {count} x {what}; got {}",
                    found.len()
                );
            }
        }
    }

    /// Closes every client and stops the driver.
    pub async fn shutdown(mut self) {
        let _ = self.call("shutdown", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
