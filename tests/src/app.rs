//! The real express + express-session + connect-redis + passport app
//! (`tests/app/app.js`), logging users in the way sockhive's users' apps do.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::http::{self, Reply};
use crate::repo_root;

/// A running web app; stopped on drop (its stdin closes).
pub struct WebApp {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// Where it serves.
    pub addr: SocketAddr,
}

impl WebApp {
    /// Starts the app on a free port against `redis_url`, with extra environment (`SESSION_SECRETS`, `SERIALIZE`, ...).
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> WebApp {
        let mut command = Command::new("node");
        command
            .arg(repo_root().join("tests/app/app.js"))
            .env("REDIS_URL", redis_url)
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .expect("start tests/app/app.js (needs `npm ci` in tests/js)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the app announces its port");
        let announced: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("unexpected app output {line:?}"));
        let port = announced["port"]
            .as_u64()
            .expect("port in the listening line");
        WebApp {
            child,
            _stdin: stdin,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    /// POSTs JSON with an optional cookie.
    pub async fn post(&self, path: &str, cookie: Option<&str>, body: &serde_json::Value) -> Reply {
        let body = body.to_string();
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{cookie}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        http::raw(self.addr, request.as_bytes()).await
    }

    /// `GET path` (no cookie), its body as JSON (panics unless 200).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let reply = http::get(self.addr, path, &[]).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }

    /// The base URL of its sockhive hook routes, for `--hook-url`.
    pub fn hook_url(&self) -> String {
        format!("http://{}/sockhive", self.addr)
    }

    /// Logs a user in and returns the `name=value` cookie pair a browser would send back.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let reply = self
            .post(
                "/login",
                None,
                &serde_json::json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(reply.status, 200, "login failed: {}", reply.body);
        set_cookie(&reply).expect("the login sets the session cookie")
    }

    /// Logs out the way passport 0.7 apps do (`req.logout` + `session.destroy`).
    pub async fn logout(&self, cookie: &str) {
        let reply = self
            .post("/logout", Some(cookie), &serde_json::json!({}))
            .await;
        assert_eq!(reply.status, 200, "logout failed: {}", reply.body);
    }
}

/// The `name=value` of a response's `Set-Cookie`.
pub fn set_cookie(reply: &Reply) -> Option<String> {
    reply
        .head
        .lines()
        .find_map(|line| {
            line.strip_prefix("Set-Cookie: ")
                .or_else(|| line.strip_prefix("set-cookie: "))
        })
        .map(|value| value.split(';').next().unwrap_or("").to_string())
}

impl Drop for WebApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
