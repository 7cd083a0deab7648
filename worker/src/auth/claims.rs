//! A login's verified claims, as a socket holds them for its life.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The verified claims of a login: one JSON object, kept as its compact text.
///
/// Why text and not a `Map`: a socket keeps its claims as long as it lives,
/// and serde_json's map spends a B-tree node of about 640 bytes on a handful
/// of keys, plus an allocation per key and string: about 1.6 KB for a cookie
/// login's five claims, against one allocation of about 100 bytes as text
/// (issue 19). Reading them (records, channel rules, renewal) parses the
/// text, which is rare next to holding them. Cloning shares the text: the
/// socket and its registry entry hold one copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims(Arc<str>);

/// The ids a login is indexed under, read without building the rest.
#[derive(Deserialize)]
struct Ids {
    sub: Option<Value>,
    user: Option<UserId>,
}

#[derive(Deserialize)]
struct UserId {
    id: Option<Value>,
}

impl Claims {
    /// The claims of `map`.
    pub fn new(map: &Map<String, Value>) -> Claims {
        let text = serde_json::to_string(map).expect("a JSON map always serializes");
        Claims(text.into())
    }

    /// The claims as a map (parsed anew).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).expect("written by Claims::new")
    }

    /// The compact JSON text of the claims.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sub`, and the claims' `user.id`, when present.
    pub fn ids(&self) -> (Option<Value>, Option<Value>) {
        match serde_json::from_str::<Ids>(&self.0) {
            Ok(ids) => (ids.sub, ids.user.and_then(|user| user.id)),
            // `user` is not an object: it has no id.
            Err(_) => (self.to_map().remove("sub"), None),
        }
    }

    /// How many hold this text (tests: the socket and its registry entry).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            unreachable!("an object")
        };
        map
    }

    #[test]
    fn the_claims_come_back_as_they_were_signed() {
        let signed = map(json!({
            "sub": "u7", "exp": 1_765_000_000u64, "iat": 1_764_990_000u64,
            "user": {"id": "u7", "name": "Ann", "roles": ["a", "b"], "n": null},
            "sh": "aGFzaA", "score": -1.5,
        }));
        let claims = Claims::new(&signed);
        assert_eq!(claims.to_map(), signed);
        assert_eq!(claims.ids(), (Some(json!("u7")), Some(json!("u7"))));
        let shared = claims.clone();
        assert_eq!(shared.holders(), 2);
        // One allocation of the text: far below the map's B-tree nodes.
        assert!(claims.as_str().len() < 160, "{}", claims.as_str());
    }

    #[test]
    fn ids_are_read_whatever_the_user_claim_is() {
        let claims = Claims::new(&map(json!({"user": {"id": 42}})));
        assert_eq!(claims.ids(), (None, Some(json!(42))));
        let claims = Claims::new(&map(json!({"sub": "a", "user": "not an object"})));
        assert_eq!(claims.ids(), (Some(json!("a")), None));
        assert_eq!(Claims::new(&Map::new()).ids(), (None, None));
    }
}
