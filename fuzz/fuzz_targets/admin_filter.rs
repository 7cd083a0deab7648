//! The admin API's socket filter: the input is `<filter JSON>\n<record
//! JSON>\n<capture names>\n<capture values>` (names and values split at
//! `,`). Parses the filter as the admin API and as a channel rule does,
//! matches the record, and checks what must hold for every filter:
//! - `to_json` parses back to a filter that decides the record the same way;
//! - a record the filter matches is among the candidates its `user_ids` and
//!   `channel` hints name (when the record's ids are one scalar, as the
//!   user index assumes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sockhive_fuzz::split_once;
use sockhive_shared::filter::{user_id_index_key, Filter};

fuzz_target!(|data: &[u8]| {
    let (filter, rest) = split_once(data, b'\n');
    let (record, rest) = split_once(rest, b'\n');
    let (names, values) = split_once(rest, b'\n');
    let Ok(filter) = serde_json::from_slice::<Value>(filter) else {
        return;
    };
    let record = serde_json::from_slice::<Value>(record).unwrap_or(Value::Null);
    let names = String::from_utf8_lossy(names);
    let values = String::from_utf8_lossy(values);
    let names: Vec<&str> = names.split(',').filter(|name| !name.is_empty()).collect();
    let values: Vec<&str> = values.split(',').collect();

    if let Ok(rule) = Filter::parse_rule(&filter, &names) {
        let _ = rule.matches_with(&record, &values);
        let _ = rule.to_json();
    }
    let Ok(parsed) = Filter::parse(&filter) else {
        return;
    };
    let matched = parsed.matches(&record);
    assert_eq!(
        parsed.is_match_all(),
        filter.as_object().is_some_and(|keys| keys.is_empty())
    );
    if parsed.is_match_all() {
        assert!(matched);
    }

    let json = parsed.to_json();
    let again = Filter::parse(&json)
        .unwrap_or_else(|error| panic!("to_json gave {json} which does not parse: {error}"));
    assert_eq!(
        again.matches(&record),
        matched,
        "{json} decides {record} differently"
    );
    assert_eq!(again.to_json(), json);

    if !matched {
        return;
    }
    if let Some(channel) = parsed.channel() {
        let member = match record.get("channels") {
            Some(Value::String(name)) => name == channel,
            Some(Value::Array(names)) => names.iter().any(|name| name.as_str() == Some(channel)),
            _ => false,
        };
        assert!(
            member,
            "matched record {record} is not in hinted channel {channel:?}"
        );
    }
    if let (Some(ids), Some(key)) = (parsed.user_ids(), record_user_key(&record)) {
        assert!(
            ids.contains(&key),
            "matched record {record} (id {key:?}) not among hinted {ids:?}"
        );
    }
});

/// The one user id of a record, as the user index files it: `user.id` and
/// `auth.sub` (where present) must be scalars with the same index key, or
/// the record is outside what the hint promises.
fn record_user_key(record: &Value) -> Option<String> {
    let keys: Vec<Option<String>> = [record.pointer("/user/id"), record.pointer("/auth/sub")]
        .into_iter()
        .flatten()
        .map(user_id_index_key)
        .collect();
    let first = keys.first()?.clone()?;
    keys.iter()
        .all(|key| key.as_deref() == Some(&first))
        .then_some(first)
}
