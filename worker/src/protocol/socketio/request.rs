//! The checks of a request to the Socket.IO route, before any WebSocket check,
//! so a client asking for something sockhive does not serve learns why.

use serde_json::json;
use sockhive_shared::http::{RequestHead, Response};

use super::codec;

/// Why a request to [`PATH`] is answered with 400 instead of being upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    /// `transport=websocket` on a plain HTTP request (no WebSocket upgrade).
    #[error("Transport unknown: transport=websocket needs a WebSocket upgrade request")]
    NotAnUpgrade,
    /// No `transport`, or an unknown one.
    #[error("Transport unknown: use transport=polling or transport=websocket")]
    TransportUnknown,
    /// `EIO` other than 4 (a Socket.IO v2 client, or none).
    #[error(
        "Unsupported protocol version: sockhive speaks Engine.IO 4 (socket.io-client 3 and 4)"
    )]
    UnsupportedVersion,
    /// A `sid` on the plain WebSocket path (the front door serves a polling
    /// session's upgrade before these checks).
    #[error("Session ID unknown")]
    SessionIdUnknown,
}

impl RequestRefusal {
    /// Engine.IO's error code for this refusal (the real server's JSON error body).
    fn code(self) -> u8 {
        match self {
            RequestRefusal::NotAnUpgrade | RequestRefusal::TransportUnknown => 0,
            RequestRefusal::SessionIdUnknown => 1,
            RequestRefusal::UnsupportedVersion => 5,
        }
    }

    /// The 400 the client is sent: the real server's `{"code", "message"}` body.
    /// The npm client only shows the status; curl users and logs see the text.
    pub fn response(self) -> Response {
        Response::json(
            400,
            &json!({"code": self.code(), "message": self.to_string()}),
        )
    }

    /// The `reason` label of `sockhive_rejected_connections_total`.
    pub fn metric_reason(self) -> &'static str {
        "bad_upgrade"
    }
}

/// Checks the Engine.IO query of an upgrade request before any WebSocket check,
/// so a polling client learns why instead of seeing a generic upgrade error.
pub fn check_request(head: &RequestHead) -> Result<(), RequestRefusal> {
    match head.query_param("transport").as_deref() {
        Some("websocket") => {}
        Some("polling") => return Err(RequestRefusal::NotAnUpgrade),
        _ => return Err(RequestRefusal::TransportUnknown),
    }
    if !head.header_has_token("upgrade", "websocket") {
        return Err(RequestRefusal::NotAnUpgrade);
    }
    if head.query_param("EIO").as_deref() != Some(codec::ENGINE_IO_VERSION) {
        return Err(RequestRefusal::UnsupportedVersion);
    }
    if head.query_param("sid").is_some() {
        return Err(RequestRefusal::SessionIdUnknown);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::PATH;
    use super::*;

    fn head(query: &str, upgrade: bool) -> RequestHead {
        let mut headers = vec![("Host".to_string(), "127.0.0.1".to_string())];
        if upgrade {
            headers.push(("Upgrade".into(), "websocket".into()));
        }
        RequestHead {
            method: "GET".into(),
            path: PATH.into(),
            query: Some(query.into()),
            headers,
        }
    }

    #[test]
    fn only_engine_io_4_over_websocket_is_upgraded() {
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket", true)),
            Ok(())
        );
        assert_eq!(
            check_request(&head("room=a&EIO=4&transport=websocket&b64=1", true)),
            Ok(())
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=polling", false)),
            Err(RequestRefusal::NotAnUpgrade)
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket", false)),
            Err(RequestRefusal::NotAnUpgrade)
        );
        assert_eq!(
            check_request(&head("EIO=4", true)),
            Err(RequestRefusal::TransportUnknown)
        );
        assert_eq!(
            check_request(&head("EIO=3&transport=websocket", true)),
            Err(RequestRefusal::UnsupportedVersion)
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket&sid=abc", true)),
            Err(RequestRefusal::SessionIdUnknown)
        );
        let body = String::from_utf8(RequestRefusal::NotAnUpgrade.response().body).unwrap();
        assert!(body.contains("needs a WebSocket upgrade"), "{body}");
        assert_eq!(RequestRefusal::NotAnUpgrade.response().status, 400);
    }
}
