//! The master's admin port: health, readiness, metrics, and the cluster API.
//!
//! `/metrics`, `/healthz` and `/readyz` are open (probes and scrapers carry no
//! secrets); `/api/*` needs `Authorization: Bearer <admin token>`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sockhive_shared::filter::Filter;
use sockhive_shared::http::{self, RequestHead, Response};
use sockhive_shared::ipc::{ClusterCommand, ClusterReply, ToWorker};
use tokio::net::{TcpListener, TcpStream};

use crate::supervisor::Master;

/// Time an admin client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest admin request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest admin request body (a filter or an emitted payload).
const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a scrape waits for each worker's metrics.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default and maximum `limit` of a socket query.
const DEFAULT_QUERY_LIMIT: usize = 1000;
/// Queries asking for more are capped and marked truncated.
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// Serves the admin port until the process exits.
pub async fn serve(master: Arc<Master>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(master.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(master: Arc<Master>, mut stream: TcpStream) {
    let request = async {
        let (head, rest) = http::read_head(&mut stream, MAX_HEAD_BYTES).await?;
        let body = http::read_body(&mut stream, &head, rest, MAX_BODY_BYTES).await?;
        Ok::<_, http::HeadError>((head, body))
    };
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Err(_) => return,
        Ok(Err(http::HeadError::TooLarge(_))) => Response::error(413, "request too large"),
        Ok(Err(http::HeadError::Malformed(why))) => Response::error(400, why),
        Ok(Err(_)) => return,
        Ok(Ok((head, body))) => route(&master, &head, &body).await,
    };
    let _ = response.write_to(&mut stream).await;
}

async fn route(master: &Arc<Master>, head: &RequestHead, body: &[u8]) -> Response {
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/healthz") => Response::json(200, &json!({"status": "ok"})),
        ("GET", "/readyz") => readyz(master),
        ("GET", "/metrics") => {
            let (replies, asked) = master
                .gather(
                    |request| ToWorker::MetricsRequest { request },
                    SCRAPE_TIMEOUT,
                )
                .await;
            master
                .metrics
                .scrape_misses
                .inc_by(asked.saturating_sub(replies.len()) as u64);
            let mut response = Response::text(200, master.metrics.render(replies));
            response.content_type = "text/plain; version=0.0.4; charset=utf-8";
            response
        }
        ("GET", path) if crate::console::owns(path) => crate::console::serve(path),
        (_, path) if path.starts_with("/api/") => match authorize(master, head) {
            Err(response) => response,
            Ok(()) => api(master, head, body).await,
        },
        _ => Response::error(404, format!("no admin endpoint at {}", head.path)),
    }
}

fn readyz(master: &Master) -> Response {
    let missing = master.missing_slots();
    if master.shutdown.is_cancelled() {
        return Response::json(503, &json!({"ready": false, "draining": true}));
    }
    // With a Redis broker, ready also needs the node's heartbeat to reach
    // Redis (the balancer then sends clients to nodes that can serve them).
    let (broker, broker_connected) = match &master.cluster {
        Some(cluster) => ("redis", cluster.is_healthy()),
        None => ("embedded", true),
    };
    let ready = missing.is_empty() && broker_connected;
    let mut body = json!({"ready": ready, "broker": broker, "broker_connected": broker_connected});
    if missing.is_empty() {
        body["workers"] = json!(master.config.server.workers);
    } else {
        body["workers_missing"] = json!(missing);
    }
    Response::json(if ready { 200 } else { 503 }, &body)
}

/// Compares in constant time so the token cannot be guessed byte by byte from response timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(master: &Master, head: &RequestHead) -> Result<(), Response> {
    let Some(expected) = master.config.server.admin_token.as_deref() else {
        return Err(Response::error(
            401,
            "the admin API is disabled: start sockhive with --admin-token",
        ));
    };
    match head.bearer_token() {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Response::error(401, "wrong admin token")),
        None => Err(Response::error(
            401,
            "missing `Authorization: Bearer <admin token>`",
        )),
    }
}

fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Response::error(400, "request body must be a JSON object")),
        Err(e) => Err(Response::error(400, format!("malformed JSON body: {e}"))),
    }
}

fn parse_filter(body: &serde_json::Map<String, Value>) -> Result<Value, Response> {
    let filter = body.get("filter").cloned().unwrap_or_else(|| json!({}));
    Filter::parse(&filter).map_err(|e| Response::error(400, format!("bad filter: {e}")))?;
    Ok(filter)
}

fn raw_json(value: &Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| {
        serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
    })
}

/// The 400 for a channel or event name over `--max-{what}-length`: the
/// sockets' own limit, so the admin API stores nothing a client could not; the
/// name is not echoed.
fn over_limit(what: &str, name: &str, max: u32) -> Option<Response> {
    (name.len() > max as usize).then(|| {
        Response::error(
            400,
            format!(
                "`{what}` is {} bytes, over --max-{what}-length ({max} bytes)",
                name.len()
            ),
        )
    })
}

async fn api(master: &Arc<Master>, head: &RequestHead, body: &[u8]) -> Response {
    let path = head.path.trim_end_matches('/');
    let socket_path = path
        .strip_prefix("/api/sockets/")
        .filter(|rest| !rest.is_empty() && !matches!(*rest, "query" | "emit" | "kick"));
    match (head.method.as_str(), path, socket_path) {
        ("GET", _, Some(id)) if !id.contains('/') => return socket_by_id(master, id).await,
        ("PATCH", _, Some(rest)) if rest.ends_with("/session") => {
            let id = rest.trim_end_matches("/session").trim_end_matches('/');
            return match parse_body(body) {
                Ok(changes) => patch_session(master, id, changes).await,
                Err(response) => response,
            };
        }
        (
            "POST",
            "/api/sockets/query" | "/api/sockets/emit" | "/api/sockets/kick" | "/api/publish",
            _,
        ) => {}
        _ => {
            return Response::error(
                404,
                format!("no API endpoint {} {}", head.method, head.path),
            )
        }
    }
    let body = match parse_body(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    if path == "/api/publish" {
        let Some(channel) = body.get("channel").and_then(Value::as_str) else {
            return Response::error(400, "`channel` must be a string");
        };
        if let Some(refused) =
            over_limit("channel", channel, master.config.limits.max_channel_length)
        {
            return refused;
        }
        return match master
            .publish_everywhere(channel, raw_json(body.get("data").unwrap_or(&Value::Null)))
            .await
        {
            Ok(()) => Response::json(200, &json!({"ok": true})),
            Err(e) => Response::error(503, format!("published on this node only: {e}")),
        };
    }
    let filter = match parse_filter(&body) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let (command, limit, truncated_by_cap) = match path {
        "/api/sockets/query" => {
            let asked = match body.get("limit") {
                None => DEFAULT_QUERY_LIMIT,
                Some(limit) => match limit.as_u64() {
                    Some(n) => n as usize,
                    None => return Response::error(400, "`limit` must be a non-negative integer"),
                },
            };
            let limit = asked.min(MAX_QUERY_LIMIT);
            (
                ClusterCommand::Query { filter, limit },
                limit,
                asked > MAX_QUERY_LIMIT,
            )
        }
        "/api/sockets/emit" => {
            let Some(event) = body
                .get("event")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return Response::error(400, "`event` must be a string");
            };
            if let Some(refused) =
                over_limit("event", &event, master.config.limits.max_event_length)
            {
                return refused;
            }
            let data = raw_json(body.get("data").unwrap_or(&Value::Null));
            (
                ClusterCommand::Emit {
                    filter,
                    event,
                    data,
                },
                0,
                false,
            )
        }
        _ => {
            let reason = match body.get("reason") {
                None => "kicked by the server".to_string(),
                Some(Value::String(reason)) => reason.clone(),
                Some(_) => return Response::error(400, "`reason` must be a string"),
            };
            (ClusterCommand::Kick { filter, reason }, 0, false)
        }
    };
    let outcome = master.cluster_command(command).await;
    let mut reply = match outcome.reply {
        ClusterReply::Query { mut sockets } => {
            let truncated = truncated_by_cap || sockets.len() > limit;
            sockets.truncate(limit);
            let mut reply = json!({"sockets": sockets});
            if truncated {
                reply["truncated"] = json!(true);
            }
            reply
        }
        ClusterReply::Emit { delivered } => json!({"delivered": delivered}),
        ClusterReply::Kick { disconnected } => json!({"disconnected": disconnected}),
        ClusterReply::PatchSession { .. } | ClusterReply::Poll { .. } => json!({}),
    };
    reply["nodes_answered"] = json!(outcome.nodes_answered);
    reply["nodes_expected"] = json!(outcome.nodes_expected);
    reply["workers_answered"] = json!(outcome.workers_answered);
    reply["workers_expected"] = json!(outcome.workers_expected);
    if let Some(error) = outcome.broker_error {
        reply["broker_error"] = json!(error);
    }
    Response::json(200, &reply)
}

async fn socket_by_id(master: &Arc<Master>, id: &str) -> Response {
    let id = http::percent_decode(id);
    let outcome = master
        .cluster_command(ClusterCommand::Query {
            filter: json!({"id": id}),
            limit: 1,
        })
        .await;
    match outcome.reply {
        ClusterReply::Query { mut sockets } if !sockets.is_empty() => {
            Response::json(200, &sockets.remove(0))
        }
        _ => Response::error(404, format!("no socket with id {id:?}")),
    }
}

async fn patch_session(
    master: &Arc<Master>,
    id: &str,
    changes: serde_json::Map<String, Value>,
) -> Response {
    let id = http::percent_decode(id);
    let outcome = master
        .cluster_command(ClusterCommand::PatchSession {
            id: id.clone(),
            changes,
        })
        .await;
    match outcome.reply {
        ClusterReply::PatchSession {
            session: Some(session),
        } => Response::json(200, &Value::Object(session)),
        _ => Response::error(404, format!("no socket with id {id:?}")),
    }
}
