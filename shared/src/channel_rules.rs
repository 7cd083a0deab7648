//! Channel rules (`--channel-auth rules`): which socket may subscribe to or
//! publish on which channel, decided from the socket's record.
//!
//! Why here: the master validates the rules once (`check-config` reports a
//! bad rule by its index), every worker compiles the same text into
//! [`ChannelRules`], and the subscribe path then decides without allocating:
//! patterns are split into pieces at compile time, captures are byte ranges
//! of the channel name on the stack, and filters borrow from the record.
//!
//! A rule's `pattern` is a channel name split on `:`; a segment `{name}`
//! captures one segment, a last segment ending in `*` matches any rest (`*`
//! alone: anything, including more `:` segments). Each side (`subscribe`,
//! `publish`) is `true`, `false`, `"hook"` (the application decides), or a
//! filter over the socket record in the admin API's language, in which the
//! value `"{name}"` stands for the captured segment. The first rule whose
//! pattern matches decides; a channel no rule matches is refused.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::filter::{Filter, FilterError};

/// Most `{name}` captures one pattern may hold (they live on the stack while deciding).
pub const MAX_CAPTURES: usize = 8;

/// One `[[channels.rule]]` entry as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The channel names the rule covers.
    pub pattern: String,
    /// Who may subscribe: `true`, `false`, `"hook"` or a filter.
    #[serde(default = "refuse")]
    pub subscribe: Value,
    /// Who may publish: `true`, `false`, `"hook"` or a filter.
    #[serde(default = "refuse")]
    pub publish: Value,
}

fn refuse() -> Value {
    Value::Bool(false)
}

/// A rule that cannot be compiled, named by its position (0-based) in the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel rule {index} (pattern `{pattern}`): {reason}")]
pub struct RuleError {
    /// Position of the rule in `[[channels.rule]]`, from 0.
    pub index: usize,
    /// The rule's pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What a client asks to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAction {
    /// Join it.
    Subscribe,
    /// Publish on it.
    Publish,
}

/// The rules' answer for one channel and socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused (`ChannelForbiddenError`).
    Deny,
    /// The application's hook decides.
    Hook,
    /// No rule matches the channel: refused, unless the app's hook for the
    /// action is on (then it decides).
    Unmatched,
}

/// One `:`-separated piece of a pattern.
#[derive(Debug, Clone)]
enum Piece {
    /// Exactly this segment.
    Literal(Box<str>),
    /// Any one non-empty segment, captured.
    Capture,
    /// The rest of the name, from this segment on, starting with this text.
    Rest(Box<str>),
}

/// What one side of a rule says.
#[derive(Debug, Clone)]
enum Side {
    Allow,
    Deny,
    Hook,
    When(Filter),
}

#[derive(Debug, Clone)]
struct Rule {
    pieces: Box<[Piece]>,
    subscribe: Side,
    publish: Side,
}

/// The compiled rules of a node.
#[derive(Debug, Clone, Default)]
pub struct ChannelRules {
    rules: Box<[Rule]>,
}

impl ChannelRules {
    /// Compiles the rules; the first bad one is reported with its index and reason.
    pub fn compile(specs: &[RuleSpec]) -> Result<ChannelRules, RuleError> {
        let rules = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let error = |reason: String| RuleError {
                    index,
                    pattern: spec.pattern.clone(),
                    reason,
                };
                let (pieces, names) = compile_pattern(&spec.pattern).map_err(error)?;
                let side = |which: &str, value: &Value| {
                    compile_side(value, &names)
                        .map_err(|reason| error(format!("`{which}`: {reason}")))
                };
                Ok(Rule {
                    subscribe: side("subscribe", &spec.subscribe)?,
                    publish: side("publish", &spec.publish)?,
                    pieces,
                })
            })
            .collect::<Result<Box<[Rule]>, RuleError>>()?;
        Ok(ChannelRules { rules })
    }

    /// The index of the first rule that leaves a decision to the
    /// application's hook, if any.
    pub fn first_hook_rule(&self) -> Option<usize> {
        self.rules.iter().position(|rule| {
            matches!(rule.subscribe, Side::Hook) || matches!(rule.publish, Side::Hook)
        })
    }

    /// Decides `action` on `channel` for the socket whose record is `record`.
    ///
    /// Hot path (every subscribe and publish, and every channel held when the
    /// socket's identity changes): no allocation.
    pub fn decide(&self, channel: &str, action: ChannelAction, record: &Value) -> Verdict {
        let mut captured = [""; MAX_CAPTURES];
        for rule in self.rules.iter() {
            let Some(count) = match_pattern(&rule.pieces, channel, &mut captured) else {
                continue;
            };
            let side = match action {
                ChannelAction::Subscribe => &rule.subscribe,
                ChannelAction::Publish => &rule.publish,
            };
            return match side {
                Side::Allow => Verdict::Allow,
                Side::Deny => Verdict::Deny,
                Side::Hook => Verdict::Hook,
                Side::When(filter) if filter.matches_with(record, &captured[..count]) => {
                    Verdict::Allow
                }
                Side::When(_) => Verdict::Deny,
            };
        }
        Verdict::Unmatched
    }
}

/// Splits a pattern into pieces and the names of its captures.
fn compile_pattern(pattern: &str) -> Result<(Box<[Piece]>, Vec<String>), String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".into());
    }
    let segments: Vec<&str> = pattern.split(':').collect();
    let mut pieces = Vec::with_capacity(segments.len());
    let mut names: Vec<String> = Vec::new();
    for (position, segment) in segments.iter().enumerate() {
        let last = position + 1 == segments.len();
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`{segment}`: a capture is `{{name}}` with letters, digits or `_`"
                ));
            }
            if names.iter().any(|known| known == name) {
                return Err(format!("`{segment}` is captured twice"));
            }
            if names.len() == MAX_CAPTURES {
                return Err(format!("more than {MAX_CAPTURES} captures"));
            }
            names.push(name.to_string());
            pieces.push(Piece::Capture);
        } else if let Some(prefix) = segment.strip_suffix('*') {
            if !last {
                return Err("`*` may only end the pattern".into());
            }
            check_literal(prefix)?;
            pieces.push(Piece::Rest(prefix.into()));
        } else {
            if segment.is_empty() {
                return Err("a segment between `:` is empty".into());
            }
            check_literal(segment)?;
            pieces.push(Piece::Literal((*segment).into()));
        }
    }
    Ok((pieces.into_boxed_slice(), names))
}

fn check_literal(text: &str) -> Result<(), String> {
    match text.chars().find(|c| matches!(c, '{' | '}' | '*')) {
        Some(c) => Err(format!(
            "`{c}` may only appear as a whole `{{name}}` segment or a final `*`"
        )),
        None => Ok(()),
    }
}

fn compile_side(value: &Value, names: &[String]) -> Result<Side, String> {
    match value {
        Value::Bool(true) => Ok(Side::Allow),
        Value::Bool(false) => Ok(Side::Deny),
        Value::String(text) if text == "hook" => Ok(Side::Hook),
        Value::Object(_) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            Filter::parse_rule(value, &names)
                .map(Side::When)
                .map_err(|e: FilterError| e.to_string())
        }
        other => Err(format!(
            "must be true, false, \"hook\" or a filter object, not {other}"
        )),
    }
}

/// Matches `channel` against the pieces; the number of captures on success.
fn match_pattern<'c>(
    pieces: &[Piece],
    channel: &'c str,
    captured: &mut [&'c str; MAX_CAPTURES],
) -> Option<usize> {
    let mut rest = Some(channel);
    let mut count = 0;
    for piece in pieces {
        let remaining = rest?;
        if let Piece::Rest(prefix) = piece {
            return remaining.starts_with(&**prefix).then_some(count);
        }
        let (segment, after) = match remaining.split_once(':') {
            Some((segment, after)) => (segment, Some(after)),
            None => (remaining, None),
        };
        match piece {
            Piece::Literal(text) if **text == *segment => {}
            Piece::Capture if !segment.is_empty() => {
                captured[count] = segment;
                count += 1;
            }
            _ => return None,
        }
        rest = after;
    }
    // Every segment of the name must be consumed.
    rest.is_none().then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(specs: Value) -> ChannelRules {
        let specs: Vec<RuleSpec> = serde_json::from_value(specs).unwrap();
        ChannelRules::compile(&specs).unwrap()
    }

    fn alice() -> Value {
        json!({"id": "s1", "logged_in": true, "user": {"id": "alice", "role": "user"}})
    }

    #[test]
    fn a_private_channel_per_user_and_admin_only_announcements() {
        let rules = rules(json!([
            {"pattern": "user:{id}", "subscribe": {"user.id": "{id}"}, "publish": false},
            {"pattern": "news:*", "subscribe": {"logged_in": true}, "publish": {"user.role": "admin"}},
        ]));
        let sub = ChannelAction::Subscribe;
        assert_eq!(rules.decide("user:alice", sub, &alice()), Verdict::Allow);
        assert_eq!(rules.decide("user:bob", sub, &alice()), Verdict::Deny);
        assert_eq!(
            rules.decide("user:alice", ChannelAction::Publish, &alice()),
            Verdict::Deny
        );
        assert_eq!(
            rules.decide("user:alice:x", sub, &alice()),
            Verdict::Unmatched,
            "one segment"
        );
        assert_eq!(
            rules.decide("user:", sub, &alice()),
            Verdict::Unmatched,
            "empty capture"
        );
        assert_eq!(
            rules.decide("news:sports:eu", sub, &alice()),
            Verdict::Allow
        );
        assert_eq!(
            rules.decide("news:x", ChannelAction::Publish, &alice()),
            Verdict::Deny
        );
        let admin = json!({"logged_in": true, "user": {"id": "root", "role": "admin"}});
        assert_eq!(
            rules.decide("news:x", ChannelAction::Publish, &admin),
            Verdict::Allow
        );
        let anonymous = json!({"logged_in": false, "user": null});
        assert_eq!(rules.decide("news:x", sub, &anonymous), Verdict::Deny);
        assert_eq!(
            rules.decide("elsewhere", sub, &alice()),
            Verdict::Unmatched,
            "no rule matches"
        );
    }

    #[test]
    fn first_match_wins_and_numeric_ids_match_their_segment() {
        let rules = rules(json!([
            {"pattern": "room:lobby", "subscribe": true},
            {"pattern": "room:{name}", "subscribe": {"user.rooms": "{name}"}},
            {"pattern": "team:{team}:{member}", "subscribe": {"user.id": "{member}", "user.team": {"$ne": "{team}"}}},
            {"pattern": "*", "subscribe": "hook"},
        ]));
        let carol = json!({"user": {"id": 7, "rooms": ["a", "b"], "team": "red"}});
        let sub = ChannelAction::Subscribe;
        assert_eq!(rules.decide("room:lobby", sub, &carol), Verdict::Allow);
        assert_eq!(rules.decide("room:b", sub, &carol), Verdict::Allow);
        assert_eq!(rules.decide("room:c", sub, &carol), Verdict::Deny);
        assert_eq!(rules.decide("team:blue:7", sub, &carol), Verdict::Allow);
        assert_eq!(rules.decide("team:red:7", sub, &carol), Verdict::Deny);
        assert_eq!(rules.decide("team:blue:8", sub, &carol), Verdict::Deny);
        assert_eq!(rules.decide("other", sub, &carol), Verdict::Hook);
        assert_eq!(rules.first_hook_rule(), Some(3));
    }

    #[test]
    fn a_bad_rule_is_reported_with_its_index_and_reason() {
        let bad = |rule: Value| {
            let specs: Vec<RuleSpec> =
                serde_json::from_value(json!([{"pattern": "ok", "subscribe": true}, rule]))
                    .unwrap();
            ChannelRules::compile(&specs).unwrap_err()
        };
        let error = bad(json!({"pattern": "user:{id}", "subscribe": {"user.id": "{name}"}}));
        assert_eq!(error.index, 1);
        assert!(error.to_string().contains("channel rule 1"), "{error}");
        assert!(error.reason.contains("{name}"), "{error}");
        assert!(bad(json!({"pattern": "a*:b"})).reason.contains("`*`"));
        assert!(bad(json!({"pattern": "a::b"})).reason.contains("empty"));
        assert!(bad(json!({"pattern": "x:{a}:{a}"}))
            .reason
            .contains("twice"));
        assert!(bad(json!({"pattern": "x", "publish": 3}))
            .reason
            .contains("publish"));
        assert!(
            bad(json!({"pattern": "x", "subscribe": {"a": {"$regex": 1}}}))
                .reason
                .contains("$regex")
        );
        assert!(bad(json!({"pattern": ""})).reason.contains("empty"));
    }

    #[test]
    fn unknown_keys_in_a_rule_are_refused() {
        let parsed: Result<Vec<RuleSpec>, _> =
            serde_json::from_value(json!([{"pattern": "x", "subscrbe": true}]));
        assert!(parsed.is_err());
    }
}
