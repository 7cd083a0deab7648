//! The plain HTTP endpoints of the public port.

use sockhive_shared::http::{RequestHead, Response};

use crate::Worker;

/// `GET /healthz`: 200 while the worker accepts connections, 503 once it drains.
pub fn healthz(worker: &Worker) -> Response {
    if worker.shutdown.is_cancelled() {
        Response::json(503, &serde_json::json!({"status": "draining"}))
    } else {
        Response::json(
            200,
            &serde_json::json!({"status": "ok", "worker": worker.slot}),
        )
    }
}

/// `GET /negotiate`: a valid session cookie is traded for a short-lived access
/// token (Azure Web PubSub for Socket.IO's flow); the client then connects
/// with `?access_token=`. The caller has checked the origin.
pub async fn negotiate(worker: &std::sync::Arc<Worker>, head: &RequestHead) -> Response {
    let response = match worker.credentials.negotiate(head).await {
        Ok((token, lifetime)) => {
            let scheme = match head.header("x-forwarded-proto") {
                Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
                _ => "http",
            };
            let host = head.header("host").unwrap_or("127.0.0.1");
            Response::json(
                200,
                &serde_json::json!({
                    "endpoint": format!("{scheme}://{host}"),
                    "path": crate::protocol::socketio::PATH,
                    "token": token,
                    "expires_in": lifetime.as_secs(),
                }),
            )
        }
        Err(refusal) => Response::json(
            refusal.status(),
            &serde_json::json!({"error": refusal.name, "message": refusal.message, "reason": refusal.reason}),
        ),
    };
    response.with_header("Cache-Control", "no-store")
}
