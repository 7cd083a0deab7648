//! What the application asks sockhive to do with a hook's answer, parsed and
//! checked whole before anything is applied.

use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sockhive_shared::filter::Filter;
use sockhive_shared::units::HumanDuration;

/// One effect of a hook answer (interface.md "App hooks").
#[derive(Debug, Clone)]
pub enum Effect {
    /// Log the socket in with these claims, signed with the auth key.
    SetAuthToken {
        /// The token's claims (`exp`/`iat` are sockhive's).
        claims: Map<String, Value>,
        /// Lifetime instead of `--token-expiry`.
        expires_in: Option<Duration>,
    },
    /// End the socket's login.
    Deauthenticate,
    /// Subscribe the socket server-side (no rule check).
    Join(String),
    /// Unsubscribe the socket server-side.
    Leave(String),
    /// Merge into the socket's session (`null` deletes a key).
    SetSession(Map<String, Value>),
    /// Send an event, cluster-wide like the admin API.
    Emit {
        /// Who gets it.
        to: EmitTarget,
        /// Event name.
        event: String,
        /// Payload.
        data: Box<RawValue>,
    },
    /// Close the socket after the reply.
    Disconnect {
        /// WebSocket close code: 1000 or 4000-4999.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Who an `emit` effect reaches.
#[derive(Debug, Clone)]
pub enum EmitTarget {
    /// The calling socket.
    SelfSocket,
    /// Every socket of every node matching this filter (a user, a channel's
    /// subscribers, any filter of the admin API), as filter JSON.
    Matching(Value),
}

/// The one effect name of an effect object.
fn single(effect: &Map<String, Value>) -> Result<(&str, &Value), String> {
    let names: Vec<&str> = effect
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "expires_in")
        .collect();
    match names.as_slice() {
        [name] => Ok((name, &effect[*name])),
        _ => Err(format!(
            "an effect is an object with one of set_auth_token, deauthenticate, join, leave, set_session, emit, disconnect; got keys {:?}",
            effect.keys().collect::<Vec<_>>()
        )),
    }
}

fn channel_name(value: &Value, effect: &str) -> Result<String, String> {
    match value.as_str() {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(format!("`{effect}` needs a channel name")),
    }
}

impl Effect {
    /// Parses one effect object.
    pub fn parse(value: Value) -> Result<Effect, String> {
        let Value::Object(effect) = value else {
            return Err("an effect must be an object".into());
        };
        let (name, body) = single(&effect)?;
        Ok(match name {
            "set_auth_token" => {
                let Value::Object(claims) = body.clone() else {
                    return Err("`set_auth_token` needs the claims object".into());
                };
                let expires_in = match effect.get("expires_in") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(text)) => Some(
                        text.parse::<HumanDuration>()
                            .map_err(|e| format!("`expires_in`: {e}"))?
                            .0,
                    ),
                    Some(Value::Number(n)) => Some(Duration::from_secs(
                        n.as_u64()
                            .ok_or("`expires_in` seconds must be a whole number")?,
                    )),
                    Some(_) => return Err("`expires_in` must be like \"30m\" or seconds".into()),
                };
                if expires_in.is_some_and(|d| d.is_zero()) {
                    return Err("`expires_in` must be above zero".into());
                }
                Effect::SetAuthToken { claims, expires_in }
            }
            "deauthenticate" => match body {
                Value::Bool(true) => Effect::Deauthenticate,
                _ => return Err("`deauthenticate` must be true".into()),
            },
            "join" => Effect::Join(channel_name(body, "join")?),
            "leave" => Effect::Leave(channel_name(body, "leave")?),
            "set_session" => match body {
                Value::Object(changes) => Effect::SetSession(changes.clone()),
                _ => return Err("`set_session` needs an object of keys to set".into()),
            },
            "emit" => {
                let event = body
                    .get("event")
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                    .ok_or("`emit` needs an `event` name")?
                    .to_owned();
                let data =
                    serde_json::value::to_raw_value(body.get("data").unwrap_or(&Value::Null))
                        .map_err(|e| e.to_string())?;
                let to = match body.get("to") {
                    Some(Value::String(to)) if to == "self" => EmitTarget::SelfSocket,
                    Some(Value::Object(to)) if to.len() == 1 => {
                        let (kind, target) = to.iter().next().expect("one entry");
                        let filter = match (kind.as_str(), target) {
                            ("user", id @ (Value::String(_) | Value::Number(_))) => {
                                serde_json::json!({ "user.id": id })
                            }
                            ("channel", Value::String(channel)) if !channel.is_empty() => {
                                serde_json::json!({ "channels": channel })
                            }
                            ("filter", filter @ Value::Object(_)) => {
                                Filter::parse(filter).map_err(|e| format!("`emit.to.filter`: {e}"))?;
                                filter.clone()
                            }
                            _ => return Err(format!("`emit.to.{kind}` is not a user id, channel name or filter")),
                        };
                        EmitTarget::Matching(filter)
                    }
                    _ => {
                        return Err(
                            "`emit.to` must be \"self\", {\"user\": id}, {\"channel\": name} or {\"filter\": {...}}"
                                .into(),
                        )
                    }
                };
                Effect::Emit { to, event, data }
            }
            "disconnect" => {
                let code = match body.get("code") {
                    None | Some(Value::Null) => 4000,
                    Some(code) => code
                        .as_u64()
                        .and_then(|c| u16::try_from(c).ok())
                        .filter(|c| *c == 1000 || (4000..=4999).contains(c))
                        .ok_or("`disconnect.code` must be 1000 or 4000-4999")?,
                };
                let reason = body
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                Effect::Disconnect { code, reason }
            }
            other => return Err(format!("unknown effect `{other}`")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_effect_of_the_contract_parses() {
        let parse = |v: Value| Effect::parse(v).unwrap();
        assert!(matches!(
            parse(json!({"set_auth_token": {"sub": "a"}, "expires_in": "30m"})),
            Effect::SetAuthToken { expires_in: Some(d), .. } if d == Duration::from_secs(1800)
        ));
        assert!(matches!(
            parse(json!({"deauthenticate": true})),
            Effect::Deauthenticate
        ));
        assert!(matches!(parse(json!({"join": "room:1"})), Effect::Join(c) if c == "room:1"));
        assert!(matches!(
            parse(json!({"leave": "room:1"})),
            Effect::Leave(_)
        ));
        assert!(
            matches!(parse(json!({"set_session": {"a": 1, "b": null}})), Effect::SetSession(m) if m.len() == 2)
        );
        for (to, expect) in [
            (json!({"user": "u-1"}), json!({"user.id": "u-1"})),
            (json!({"channel": "room:1"}), json!({"channels": "room:1"})),
            (
                json!({"filter": {"user.role": "admin"}}),
                json!({"user.role": "admin"}),
            ),
        ] {
            let Effect::Emit {
                to: EmitTarget::Matching(filter),
                event,
                ..
            } = parse(json!({"emit": {"to": to, "event": "e", "data": 1}}))
            else {
                panic!("emit")
            };
            assert_eq!((filter, event.as_str()), (expect, "e"));
        }
        assert!(matches!(
            parse(json!({"emit": {"to": "self", "event": "e"}})),
            Effect::Emit {
                to: EmitTarget::SelfSocket,
                ..
            }
        ));
        assert!(matches!(
            parse(json!({"disconnect": {"code": 4123, "reason": "bye"}})),
            Effect::Disconnect { code: 4123, .. }
        ));
    }

    #[test]
    fn bad_effects_are_refused_with_what_is_wrong() {
        for (bad, says) in [
            (json!("join"), "object"),
            (json!({"join": "a", "leave": "b"}), "one of"),
            (json!({"fly": true}), "unknown effect `fly`"),
            (json!({"join": ""}), "channel name"),
            (json!({"deauthenticate": false}), "must be true"),
            (json!({"emit": {"to": "everyone", "event": "e"}}), "emit.to"),
            (
                json!({"emit": {"to": {"filter": {"a": {"$regex": "x"}}}, "event": "e"}}),
                "filter",
            ),
            (json!({"emit": {"to": "self"}}), "event"),
            (json!({"disconnect": {"code": 1006}}), "4000-4999"),
            (json!({"set_auth_token": "alice"}), "claims"),
            (
                json!({"set_auth_token": {}, "expires_in": "2 MB"}),
                "expires_in",
            ),
        ] {
            let error = Effect::parse(bad.clone()).expect_err(&bad.to_string());
            assert!(error.contains(says), "{bad} → {error}");
        }
    }
}
