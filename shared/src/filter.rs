//! The socket filter language of the admin API.
//!
//! Why it exists: `POST /api/sockets/{query,emit,kick}` and the `sockets` CLI commands select sockets
//! across the whole cluster, so the selection must be data (shippable to every node), not a closure
//! as in passport.socketio's `filterSocketsByUser`. The master parses a filter once, answers bad ones
//! with HTTP 400 and the [`FilterError`] text, and every worker runs [`Filter::matches`] on each of
//! its socket records.
//!
//! # Language
//!
//! A filter is a JSON object. Each key is a dotted path into the socket record (`user.role`,
//! `auth.sub`, `session.cart`, `channels`, `logged_in`, `worker`); each value is either a literal or
//! one operator object. A record matches when every key matches (AND); `{}` matches every socket.
//!
//! ```json
//! {"user.role": "admin", "user.age": {"$gte": 18}, "channels": "room:1"}
//! ```
//!
//! **Paths.** Split on `.`; a segment is looked up as an object key. A segment of plain decimal
//! digits (`0`, `12`; no sign, no leading zero) indexes an array when the value reached so far is an
//! array (`channels.0`), and is an ordinary key on an object. There is no implicit fan-out: on an
//! array of objects, `user.groups.name` reaches nothing; use `user.groups.0.name` or a literal.
//! A path through a scalar or past the end of an array is *missing*. An empty key or an empty
//! segment (`a..b`, `.a`, `a.`) is a parse error. Keys containing a literal `.` cannot be addressed.
//!
//! **Literal** (any JSON value that is not an operator object): matches when the field is equal to
//! it, or when the field is an array with an element equal to it ("contains"). Equality is deep
//! (arrays element by element in order, objects key by key regardless of order), numbers compare
//! by value at every depth (`1` equals `1.0`), and values of different JSON types are never equal
//! (`7` is not `"7"`, `null` is only equal to `null`). A missing path never matches a literal, not
//! even `null`; a field holding `null` does match `null`.
//!
//! **Operator object**: a non-empty object whose keys *all* start with `$`. It must hold exactly
//! one operator; operators are recognised only directly under a path key, so inside a literal
//! (e.g. an element of `$in`) `{"$in": 1}` is just an object compared deeply.
//!
//! | operator | operand | matches when |
//! |---|---|---|
//! | `$in` | array | some element of the operand would match as a literal (so against an array field: any element in common, or the whole array equal). Missing path: false. `[]` matches nothing. |
//! | `$ne` | any value | the operand would *not* match as a literal: missing path is true, an array field is true when it does not contain the operand. |
//! | `$exists` | `true` / `false` | the path resolves (even to `null`) / does not. |
//! | `$gt` `$gte` `$lt` `$lte` | number or string | the field is of the same kind and compares so: numbers by value, strings by Unicode code point (so ISO-8601 UTC timestamps such as `connected_at` order correctly). Any other pairing (string vs number, `null`, bool, object) does not match. An array field matches when one of its elements does. Missing path: false. |
//!
//! An object with no `$` keys (or `{}`) is a literal compared deeply. An object mixing `$` keys and
//! plain keys, an object with more than one operator, an unknown operator (`$regex`, `$eq`, ...),
//! `$in` without an array, `$exists` without a bool, or a comparison with anything but a number or
//! a string is a parse error. So is a value nested more than [`MAX_VALUE_DEPTH`] containers deep,
//! which bounds the recursion of deep equality whatever the record looks like.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Number, Value};

/// Deepest container nesting accepted in a filter value. Deep equality recurses once per level,
/// so this bounds the stack a hostile filter can demand; it equals serde_json's own parse limit,
/// so nothing that arrives as JSON text is refused by it.
pub const MAX_VALUE_DEPTH: usize = 128;

/// Why a filter was refused. The `Display` text goes verbatim into the HTTP 400 body, so each
/// variant names the offending path and what it needs; the fault is always the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A channel rule's filter names `{name}` that its pattern does not capture.
    #[error("`{placeholder}` at `{path}` is not captured by the rule's pattern")]
    UnknownCapture {
        /// The path whose value holds the placeholder.
        path: String,
        /// The placeholder as written.
        placeholder: String,
    },
    /// The filter itself was an array, string, number, bool or null.
    #[error("filter must be a JSON object")]
    NotAnObject,
    /// A key was the empty string.
    #[error("empty path in filter: keys are dotted paths like `user.id`")]
    EmptyPath,
    /// A key had an empty segment (`a..b`, `.a`, `a.`).
    #[error("path `{path}` has an empty segment")]
    EmptySegment {
        /// The key as written.
        path: String,
    },
    /// An operator name the language does not have.
    #[error("unknown operator `{operator}` at `{path}`")]
    UnknownOperator {
        /// The operator as written, e.g. `$regex`.
        operator: String,
        /// The key it was found under.
        path: String,
    },
    /// An operator object with two or more operators; only the first two are named.
    #[error(
        "more than one operator at `{path}` (`{first}` and `{second}`): use one operator per path"
    )]
    SeveralOperators {
        /// The key they were found under.
        path: String,
        /// First operator in the object's key order.
        first: String,
        /// Second operator in the object's key order.
        second: String,
    },
    /// An object with both `$` keys and plain keys: neither an operator nor a clear literal.
    #[error("value at `{path}` mixes operators (`$` keys) with plain keys")]
    MixedOperatorObject {
        /// The key it was found under.
        path: String,
    },
    /// `$in` with an operand that is not an array.
    #[error("`$in` at `{path}` needs an array")]
    InNeedsArray {
        /// The key it was found under.
        path: String,
    },
    /// `$exists` with an operand that is not a bool.
    #[error("`$exists` at `{path}` needs true or false")]
    ExistsNeedsBool {
        /// The key it was found under.
        path: String,
    },
    /// `$gt`, `$gte`, `$lt` or `$lte` with an operand that is neither a number nor a string.
    #[error("`{operator}` at `{path}` needs a number or a string")]
    ComparisonNeedsNumberOrString {
        /// The operator as written.
        operator: String,
        /// The key it was found under.
        path: String,
    },
    /// A value nested deeper than [`MAX_VALUE_DEPTH`].
    #[error("value at `{path}` is nested more than {limit} levels deep")]
    TooDeep {
        /// The key it was found under.
        path: String,
        /// The limit, [`MAX_VALUE_DEPTH`].
        limit: usize,
    },
}

/// A parsed, validated filter: built once per admin request, then run against every socket
/// record of the cluster, so all the work that does not depend on the record is done here.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// All must hold (AND); empty means "every socket".
    conditions: Vec<Condition>,
}

/// One key of the filter: where to look and what must hold there.
#[derive(Debug, Clone)]
struct Condition {
    path: FieldPath,
    test: Test,
}

/// A dotted path split at parse time so matching never touches the text.
#[derive(Debug, Clone)]
struct FieldPath {
    /// The key as written, for [`Filter::user_ids`] and for turning the filter back into JSON.
    text: Box<str>,
    segments: Box<[Segment]>,
}

/// One path segment with its array index worked out ahead of the hot path.
#[derive(Debug, Clone)]
struct Segment {
    key: Box<str>,
    /// `Some` when the segment is plain decimal digits, so it can also index an array.
    index: Option<usize>,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    NotEquals(Value),
    /// Equals the channel-name segment a channel rule captured (see [`Filter::parse_rule`]).
    EqualsCapture(usize),
    /// Does not equal that captured segment.
    NotEqualsCapture(usize),
    In(Vec<Value>),
    Exists(bool),
    /// The operand is a `Value::Number` or a `Value::String`; parsing guarantees it.
    Compare(Comparison, Value),
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    fn from_operator(operator: &str) -> Option<Comparison> {
        match operator {
            "$gt" => Some(Comparison::Greater),
            "$gte" => Some(Comparison::GreaterOrEqual),
            "$lt" => Some(Comparison::Less),
            "$lte" => Some(Comparison::LessOrEqual),
            _ => None,
        }
    }

    fn operator(self) -> &'static str {
        match self {
            Comparison::Greater => "$gt",
            Comparison::GreaterOrEqual => "$gte",
            Comparison::Less => "$lt",
            Comparison::LessOrEqual => "$lte",
        }
    }

    /// `ordering` is how the field compares to the operand.
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Greater => ordering == Ordering::Greater,
            Comparison::GreaterOrEqual => ordering != Ordering::Less,
            Comparison::Less => ordering == Ordering::Less,
            Comparison::LessOrEqual => ordering != Ordering::Greater,
        }
    }
}

impl Filter {
    /// Validates a filter as it arrives in an admin request body; the error text is meant for the
    /// HTTP 400 reply. See the module docs for the language. When several keys are wrong, the
    /// first in the object's key order is reported.
    pub fn parse(value: &Value) -> Result<Filter, FilterError> {
        Filter::parse_rule(value, &[])
    }

    /// A channel rule's filter: as [`Filter::parse`], except that a value (or `$ne` operand)
    /// that is exactly `"{name}"` stands for the channel-name segment the rule's pattern
    /// captured as `name` (`captures` lists the pattern's names in order). A `{name}` the
    /// pattern does not capture is refused, so a typo cannot silently compare with the text.
    pub fn parse_rule(value: &Value, captures: &[&str]) -> Result<Filter, FilterError> {
        let Value::Object(keys) = value else {
            return Err(FilterError::NotAnObject);
        };
        let mut conditions = Vec::with_capacity(keys.len());
        for (key, expected) in keys {
            let path = FieldPath::parse(key)?;
            let test = match Test::parse(key, expected)? {
                Test::Equals(Value::String(text)) => capture_test(key, &text, captures)?
                    .map_or(Test::Equals(Value::String(text)), Test::EqualsCapture),
                Test::NotEquals(Value::String(text)) => capture_test(key, &text, captures)?
                    .map_or(Test::NotEquals(Value::String(text)), Test::NotEqualsCapture),
                test => test,
            };
            conditions.push(Condition { path, test });
        }
        Ok(Filter { conditions })
    }

    /// Whether a socket record is selected. Hot: runs once per socket per admin request on every
    /// worker, so it walks the pre-split paths and borrows from the record without allocating.
    pub fn matches(&self, record: &Value) -> bool {
        self.matches_with(record, &[])
    }

    /// [`Filter::matches`] for a channel rule's filter, with the segments its pattern captured
    /// from the channel name. Hot (every subscribe and publish under `--channel-auth rules`):
    /// borrows everything, allocates nothing.
    pub fn matches_with(&self, record: &Value, captures: &[&str]) -> bool {
        self.conditions.iter().all(|condition| {
            condition
                .test
                .holds(condition.path.resolve(record), captures)
        })
    }

    /// True for `{}`, so callers can skip evaluating and, e.g., answer with every record directly.
    pub fn is_match_all(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Candidate user ids for the cluster's user → sockets index, so a query pinned to users can
    /// read the index instead of asking every node.
    ///
    /// `Some(ids)` when a `user.id` or `auth.sub` key is an equality literal or an `$in` whose
    /// entries are all strings or numbers; when both keys pin, the result is their intersection.
    /// `Some(vec![])` means no socket can match (e.g. `$in: []`). `None` means the filter does
    /// not pin user ids and the caller must fall back to a broadcast query.
    ///
    /// Ids are rendered by [`user_id_index_key`], deduplicated and sorted (so the answer does not
    /// depend on the filter's key order); the index must be keyed the same way. That rendering makes `7` and `"7"` the same key, and the hint
    /// assumes `user.id` and `auth.sub` hold the socket's scalar user id (true for JWT sockets,
    /// whose `user.id` is `sub`), so the ids give *candidates*: the caller must still run
    /// [`Filter::matches`] on each candidate record.
    pub fn user_ids(&self) -> Option<Vec<String>> {
        let mut pinned: Option<BTreeSet<String>> = None;
        for condition in &self.conditions {
            if !matches!(&*condition.path.text, "user.id" | "auth.sub") {
                continue;
            }
            let Some(ids) = condition.test.pinned_user_ids() else {
                continue;
            };
            pinned = Some(match pinned {
                None => ids,
                Some(mut earlier) => {
                    earlier.retain(|id| ids.contains(id));
                    earlier
                }
            });
        }
        pinned.map(|ids| ids.into_iter().collect())
    }

    /// The channel a filter pins (`"channels": "room:1"`, a literal name): only
    /// that channel's members can match, so a worker visits them alone. A
    /// hint like [`Filter::user_ids`]: candidates still go through
    /// [`Filter::matches`].
    pub fn channel(&self) -> Option<&str> {
        self.conditions.iter().find_map(|condition| {
            match (&*condition.path.text, &condition.test) {
                ("channels", Test::Equals(Value::String(name))) => Some(name.as_str()),
                _ => None,
            }
        })
    }

    /// The filter as JSON again, equivalent to what was parsed; lets the master forward a
    /// validated filter to other nodes (and makes `Filter` `Serialize`).
    pub fn to_json(&self) -> Value {
        let mut keys = Map::new();
        for condition in &self.conditions {
            let operator = |name: &str, operand: Value| {
                let mut object = Map::new();
                object.insert(name.to_owned(), operand);
                Value::Object(object)
            };
            let expected = match &condition.test {
                Test::Equals(literal) => literal.clone(),
                Test::NotEquals(literal) => operator("$ne", literal.clone()),
                Test::EqualsCapture(index) => Value::String(format!("{{#{index}}}")),
                Test::NotEqualsCapture(index) => {
                    operator("$ne", Value::String(format!("{{#{index}}}")))
                }
                Test::In(literals) => operator("$in", Value::Array(literals.clone())),
                Test::Exists(wanted) => operator("$exists", Value::Bool(*wanted)),
                Test::Compare(comparison, operand) => {
                    operator(comparison.operator(), operand.clone())
                }
            };
            keys.insert(condition.path.text.to_string(), expected);
        }
        Value::Object(keys)
    }
}

/// The string a user id is filed under in the user → sockets index, shared by the index writer
/// and [`Filter::user_ids`] so both agree. Strings as they are; numbers as decimal text, with an
/// integral float written as an integer (`7.0` → `"7"`) because the filter treats `7` and `7.0`
/// as equal. `None` for other JSON types, which do not name a user.
pub fn user_id_index_key(id: &Value) -> Option<String> {
    match id {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(render_number(number)),
        _ => None,
    }
}

fn render_number(number: &Number) -> String {
    if number.is_i64() || number.is_u64() {
        return number.to_string();
    }
    // Beyond 2^53 a float no longer pins one integer, so it keeps its own spelling.
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() <= EXACT_INTEGER_LIMIT => {
            format!("{}", float as i64)
        }
        _ => number.to_string(),
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Lets request bodies carry a `Filter` field directly; a bad filter becomes a deserialization
/// error with the same text as [`Filter::parse`].
impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::parse(&value).map_err(serde::de::Error::custom)
    }
}

impl FieldPath {
    fn parse(text: &str) -> Result<FieldPath, FilterError> {
        if text.is_empty() {
            return Err(FilterError::EmptyPath);
        }
        let segments = text
            .split('.')
            .map(|key| {
                if key.is_empty() {
                    return Err(FilterError::EmptySegment {
                        path: text.to_owned(),
                    });
                }
                Ok(Segment {
                    key: key.into(),
                    index: array_index(key),
                })
            })
            .collect::<Result<Box<[Segment]>, FilterError>>()?;
        Ok(FieldPath {
            text: text.into(),
            segments,
        })
    }

    /// `None` is a missing path: a key absent, an index out of range, or a scalar in the way.
    fn resolve<'record>(&self, record: &'record Value) -> Option<&'record Value> {
        let mut current = record;
        for segment in self.segments.iter() {
            current = match current {
                Value::Object(fields) => fields.get(&*segment.key)?,
                Value::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// Canonical decimal only, so `01` or `+1` stay plain keys and each index has one spelling.
fn array_index(segment: &str) -> Option<usize> {
    let canonical = segment.bytes().all(|byte| byte.is_ascii_digit())
        && (segment.len() == 1 || !segment.starts_with('0'));
    if canonical {
        segment.parse().ok()
    } else {
        None
    }
}

impl Test {
    fn parse(path: &str, expected: &Value) -> Result<Test, FilterError> {
        let Value::Object(object) = expected else {
            return Ok(Test::Equals(literal(path, expected)?));
        };
        let operator_keys = object.keys().filter(|key| key.starts_with('$')).count();
        if operator_keys == 0 {
            return Ok(Test::Equals(literal(path, expected)?));
        }
        if operator_keys < object.len() {
            return Err(FilterError::MixedOperatorObject {
                path: path.to_owned(),
            });
        }
        let mut entries = object.iter();
        let (Some((operator, operand)), None) = (entries.next(), entries.next()) else {
            let mut names = object.keys();
            return Err(FilterError::SeveralOperators {
                path: path.to_owned(),
                first: names.next().cloned().unwrap_or_default(),
                second: names.next().cloned().unwrap_or_default(),
            });
        };
        match operator.as_str() {
            "$in" => {
                let Value::Array(candidates) = operand else {
                    return Err(FilterError::InNeedsArray {
                        path: path.to_owned(),
                    });
                };
                check_depth(path, operand)?;
                Ok(Test::In(candidates.clone()))
            }
            "$ne" => Ok(Test::NotEquals(literal(path, operand)?)),
            "$exists" => match operand {
                Value::Bool(wanted) => Ok(Test::Exists(*wanted)),
                _ => Err(FilterError::ExistsNeedsBool {
                    path: path.to_owned(),
                }),
            },
            name => {
                let Some(comparison) = Comparison::from_operator(name) else {
                    return Err(FilterError::UnknownOperator {
                        operator: name.to_owned(),
                        path: path.to_owned(),
                    });
                };
                match operand {
                    Value::Number(_) | Value::String(_) => {
                        Ok(Test::Compare(comparison, operand.clone()))
                    }
                    _ => Err(FilterError::ComparisonNeedsNumberOrString {
                        operator: name.to_owned(),
                        path: path.to_owned(),
                    }),
                }
            }
        }
    }

    /// `field` is `None` when the path is missing from the record; `captures` are a channel
    /// rule's captured segments (empty for admin filters).
    fn holds(&self, field: Option<&Value>, captures: &[&str]) -> bool {
        let captured = |index: &usize| captures.get(*index).copied();
        match (self, field) {
            (Test::Exists(wanted), field) => field.is_some() == *wanted,
            (Test::NotEquals(literal), Some(field)) => !matches_literal(field, literal),
            (Test::NotEquals(_) | Test::NotEqualsCapture(_), None) => true,
            (Test::EqualsCapture(index), Some(field)) => {
                captured(index).is_some_and(|segment| matches_segment(field, segment))
            }
            (Test::NotEqualsCapture(index), Some(field)) => {
                !captured(index).is_some_and(|segment| matches_segment(field, segment))
            }
            (_, None) => false,
            (Test::Equals(literal), Some(field)) => matches_literal(field, literal),
            (Test::In(literals), Some(field)) => literals
                .iter()
                .any(|literal| matches_literal(field, literal)),
            (Test::Compare(comparison, operand), Some(Value::Array(items))) => items
                .iter()
                .any(|item| compare_scalar(item, *comparison, operand)),
            (Test::Compare(comparison, operand), Some(field)) => {
                compare_scalar(field, *comparison, operand)
            }
        }
    }

    fn pinned_user_ids(&self) -> Option<BTreeSet<String>> {
        match self {
            Test::Equals(literal) => user_id_index_key(literal).map(|id| BTreeSet::from([id])),
            Test::In(literals) => literals.iter().map(user_id_index_key).collect(),
            _ => None,
        }
    }
}

/// `Some(index)` when `text` is a `{name}` placeholder naming capture `index`.
fn capture_test(path: &str, text: &str, captures: &[&str]) -> Result<Option<usize>, FilterError> {
    let Some(name) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return Ok(None);
    };
    match captures.iter().position(|capture| *capture == name) {
        Some(index) => Ok(Some(index)),
        None => Err(FilterError::UnknownCapture {
            path: path.to_owned(),
            placeholder: text.to_owned(),
        }),
    }
}

/// A field against a segment captured from a channel name (always text): a string equal to
/// it, an integer whose decimal spelling it is (`user:7` for the numeric id 7), or an array
/// holding either. Allocates nothing.
fn matches_segment(field: &Value, segment: &str) -> bool {
    match field {
        Value::String(text) => text == segment,
        Value::Number(number) => {
            number.as_u64().is_some_and(|n| segment.parse() == Ok(n))
                || number.as_i64().is_some_and(|n| segment.parse() == Ok(n))
        }
        Value::Array(items) => items.iter().any(|item| matches_segment(item, segment)),
        _ => false,
    }
}

fn literal(path: &str, value: &Value) -> Result<Value, FilterError> {
    check_depth(path, value)?;
    Ok(value.clone())
}

/// Iterative on purpose: the value being measured may be the hostile one.
fn check_depth(path: &str, value: &Value) -> Result<(), FilterError> {
    let mut pending: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((container, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match container {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > MAX_VALUE_DEPTH {
            return Err(FilterError::TooDeep {
                path: path.to_owned(),
                limit: MAX_VALUE_DEPTH,
            });
        }
        pending.extend(
            children
                .filter(|child| child.is_array() || child.is_object())
                .map(|child| (child, depth + 1)),
        );
    }
    Ok(())
}

/// Equal, or (for an array field) containing an equal element.
fn matches_literal(field: &Value, literal: &Value) -> bool {
    if json_equal(field, literal) {
        return true;
    }
    match field {
        Value::Array(items) => items.iter().any(|item| json_equal(item, literal)),
        _ => false,
    }
}

/// Deep equality with numbers compared by value. Recurses only while both sides are containers,
/// so the depth is bounded by the literal's, which parsing capped at [`MAX_VALUE_DEPTH`].
fn json_equal(field: &Value, literal: &Value) -> bool {
    match (field, literal) {
        (Value::Number(left), Value::Number(right)) => {
            compare_numbers(left, right) == Some(Ordering::Equal)
        }
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .zip(right)
                    .all(|(left, right)| json_equal(left, right))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && right
                    .iter()
                    .all(|(key, right)| left.get(key).is_some_and(|left| json_equal(left, right)))
        }
        // Null, bool and string compare as serde_json does; different types are never equal.
        _ => field == literal,
    }
}

fn compare_scalar(field: &Value, comparison: Comparison, operand: &Value) -> bool {
    let ordering = match (field, operand) {
        (Value::Number(field), Value::Number(operand)) => compare_numbers(field, operand),
        (Value::String(field), Value::String(operand)) => Some(field.as_str().cmp(operand)),
        _ => None,
    };
    ordering.is_some_and(|ordering| comparison.accepts(ordering))
}

/// Exact comparison across serde_json's integer and float representations, so `u64::MAX` and a
/// float near it, or `1` and `1.0`, compare by value and not after a lossy cast.
fn compare_numbers(left: &Number, right: &Number) -> Option<Ordering> {
    match (exact_number(left), exact_number(right)) {
        (ExactNumber::Integer(left), ExactNumber::Integer(right)) => Some(left.cmp(&right)),
        (ExactNumber::Float(left), ExactNumber::Float(right)) => left.partial_cmp(&right),
        (ExactNumber::Integer(left), ExactNumber::Float(right)) => {
            compare_integer_with_float(left, right)
        }
        (ExactNumber::Float(left), ExactNumber::Integer(right)) => {
            compare_integer_with_float(right, left).map(Ordering::reverse)
        }
    }
}

enum ExactNumber {
    /// Holds every i64 and u64 without loss.
    Integer(i128),
    Float(f64),
}

fn exact_number(number: &Number) -> ExactNumber {
    if let Some(signed) = number.as_i64() {
        ExactNumber::Integer(i128::from(signed))
    } else if let Some(unsigned) = number.as_u64() {
        ExactNumber::Integer(i128::from(unsigned))
    } else {
        // NaN only if serde_json could not give a finite float (arbitrary precision); it compares
        // as unordered, so it matches nothing.
        ExactNumber::Float(number.as_f64().unwrap_or(f64::NAN))
    }
}

fn compare_integer_with_float(integer: i128, float: f64) -> Option<Ordering> {
    if float.is_nan() {
        return None;
    }
    // `i128::MAX as f64` rounds to exactly 2^127, past every integer `exact_number` yields.
    let bound = i128::MAX as f64;
    if float >= bound {
        return Some(Ordering::Less);
    }
    if float < -bound {
        return Some(Ordering::Greater);
    }
    let whole = float.trunc();
    // Exact: `whole` is integral and inside the i128 range.
    let whole_integer = whole as i128;
    match integer.cmp(&whole_integer) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(float - whole)),
        unequal => Some(unequal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    fn record() -> Value {
        json!({
            "id": "sock-1", "node": "n1", "worker": 1, "protocol": "socketcluster",
            "logged_in": true,
            "user": {"id": "alice", "role": "admin", "age": 30, "score": 2.5,
                     "tags": ["a", "b"], "groups": [{"name": "ops"}], "address": {"city": "Oslo", "zip": 150},
                     "nickname": null},
            "auth": {"sub": "alice", "iat": 1_700_000_000},
            "session": {"cart": [1, 2, 3], "prefs": {"theme": "dark"}},
            "channels": ["room:1", "room:2"],
            "remote_addr": "127.0.0.1:51234",
            "connected_at": "2026-11-22T14:00:00Z"
        })
    }

    fn filter(value: Value) -> Filter {
        match Filter::parse(&value) {
            Ok(filter) => filter,
            Err(error) => panic!("filter {value} should parse: {error}"),
        }
    }

    fn selects(value: Value) -> bool {
        filter(value).matches(&record())
    }

    fn error_text(value: Value) -> String {
        match Filter::parse(&value) {
            Ok(_) => panic!("filter {value} should be refused"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        let everything = filter(json!({}));
        assert!(everything.is_match_all());
        assert!(everything.matches(&record()));
        assert!(everything.matches(&json!(null)));
        assert!(!filter(json!({"worker": 1})).is_match_all());
        assert!(Filter::default().is_match_all());
    }

    #[test]
    fn literal_equality_on_scalars() {
        assert!(selects(json!({"user.role": "admin"})));
        assert!(!selects(json!({"user.role": "Admin"})));
        assert!(selects(json!({"logged_in": true})));
        assert!(!selects(json!({"logged_in": false})));
        assert!(selects(json!({"worker": 1})));
        assert!(selects(json!({"user.nickname": null})));
        assert!(!selects(json!({"user.role": null})));
    }

    #[test]
    fn all_keys_must_match() {
        assert!(selects(
            json!({"user.role": "admin", "user.age": {"$gte": 18}})
        ));
        assert!(!selects(
            json!({"user.role": "admin", "user.age": {"$gte": 31}})
        ));
        assert!(!selects(
            json!({"user.role": "guest", "user.age": {"$gte": 18}})
        ));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(selects(json!({"worker": 1.0})));
        assert!(selects(json!({"user.score": 2.5})));
        assert!(!selects(json!({"user.score": 2})));
        assert!(selects(json!({"session.cart": 2.0})));
        assert!(selects(
            json!({"user.address": {"city": "Oslo", "zip": 150.0}})
        ));
        let big = json!({"n": u64::MAX});
        assert!(filter(json!({"n": u64::MAX})).matches(&big));
        assert!(!filter(json!({"n": u64::MAX - 1})).matches(&big));
        // 2^64 as a float is above u64::MAX, never equal despite a lossy cast saying so.
        assert!(!filter(json!({"n": 18_446_744_073_709_551_616.0_f64})).matches(&big));
        assert!(filter(json!({"n": {"$lt": 18_446_744_073_709_551_616.0_f64}})).matches(&big));
        assert!(filter(json!({"n": {"$gt": -0.5}})).matches(&json!({"n": 0})));
        assert!(filter(json!({"n": {"$lt": -1}})).matches(&json!({"n": -1.5})));
        assert!(filter(json!({"n": 0})).matches(&json!({"n": -0.0})));
        assert!(filter(json!({"n": i64::MIN})).matches(&json!({"n": i64::MIN})));
        assert!(filter(json!({"n": {"$gt": i64::MIN}})).matches(&json!({"n": u64::MAX})));
    }

    #[test]
    fn different_types_are_never_equal() {
        assert!(!selects(json!({"worker": "1"})));
        assert!(!selects(json!({"logged_in": 1})));
        assert!(!selects(json!({"user.id": ["alice"]})));
        assert!(!selects(json!({"user.address": "Oslo"})));
    }

    #[test]
    fn array_field_contains_literal() {
        assert!(selects(json!({"channels": "room:1"})));
        assert!(selects(json!({"channels": "room:2"})));
        assert!(!selects(json!({"channels": "room:3"})));
        assert!(selects(json!({"session.cart": 3})));
        // Whole-array equality still holds, in order only.
        assert!(selects(json!({"channels": ["room:1", "room:2"]})));
        assert!(!selects(json!({"channels": ["room:2", "room:1"]})));
        // An element that is itself an array is "contained" too.
        assert!(filter(json!({"m": [1, 2]})).matches(&json!({"m": [[1, 2], [3]]})));
    }

    #[test]
    fn object_literal_is_deep_equality() {
        assert!(selects(json!({"session.prefs": {"theme": "dark"}})));
        assert!(!selects(json!({"session.prefs": {"theme": "light"}})));
        assert!(!selects(json!({"session.prefs": {}})));
        assert!(!selects(
            json!({"session.prefs": {"theme": "dark", "extra": 1}})
        ));
        assert!(filter(json!({"p": {}})).matches(&json!({"p": {}})));
        assert!(selects(json!({"user.groups": {"name": "ops"}})));
        // `$` keys nested inside a literal are data, not operators.
        assert!(filter(json!({"p": [{"$in": 1}]})).matches(&json!({"p": [{"$in": 1}]})));
    }

    #[test]
    fn nested_paths_and_array_indexes() {
        assert!(selects(json!({"user.address.city": "Oslo"})));
        assert!(selects(json!({"channels.0": "room:1"})));
        assert!(selects(json!({"channels.1": "room:2"})));
        assert!(!selects(json!({"channels.2": {"$exists": true}})));
        assert!(selects(json!({"user.groups.0.name": "ops"})));
        // No implicit fan-out over arrays of objects.
        assert!(!selects(json!({"user.groups.name": "ops"})));
        // Non-canonical indexes are plain keys.
        assert!(!selects(json!({"channels.01": "room:2"})));
        assert!(!selects(json!({"channels.+1": "room:2"})));
        // A numeric segment is an ordinary key on an object.
        assert!(filter(json!({"m.0": "x"})).matches(&json!({"m": {"0": "x"}})));
        // Through a scalar: missing.
        assert!(!selects(json!({"user.role.name": {"$exists": true}})));
    }

    #[test]
    fn missing_paths() {
        assert!(!selects(json!({"user.missing": "x"})));
        assert!(!selects(json!({"user.missing": null})));
        assert!(selects(json!({"user.missing": {"$ne": "x"}})));
        assert!(selects(json!({"user.missing": {"$exists": false}})));
        assert!(!selects(json!({"user.missing": {"$exists": true}})));
        assert!(!selects(json!({"user.missing": {"$in": ["x", null]}})));
        assert!(!selects(json!({"user.missing": {"$gt": 0}})));
        assert!(!selects(json!({"user.missing": {"$lt": "z"}})));
    }

    #[test]
    fn operator_in() {
        assert!(selects(json!({"user.id": {"$in": ["bob", "alice"]}})));
        assert!(!selects(json!({"user.id": {"$in": ["bob", "carol"]}})));
        assert!(!selects(json!({"user.id": {"$in": []}})));
        assert!(selects(json!({"worker": {"$in": [2, 1.0]}})));
        // Against an array field: any element in common.
        assert!(selects(json!({"channels": {"$in": ["room:9", "room:2"]}})));
        assert!(!selects(json!({"channels": {"$in": ["room:9", "room:8"]}})));
        assert!(selects(
            json!({"session.prefs": {"$in": [{"theme": "dark"}]}})
        ));
    }

    #[test]
    fn operator_ne() {
        assert!(selects(json!({"user.role": {"$ne": "guest"}})));
        assert!(!selects(json!({"user.role": {"$ne": "admin"}})));
        assert!(!selects(json!({"worker": {"$ne": 1.0}})));
        assert!(selects(json!({"worker": {"$ne": "1"}})));
        // On an array field: does not contain.
        assert!(!selects(json!({"channels": {"$ne": "room:1"}})));
        assert!(selects(json!({"channels": {"$ne": "room:3"}})));
        assert!(!selects(json!({"user.nickname": {"$ne": null}})));
        assert!(selects(json!({"user.role": {"$ne": null}})));
    }

    #[test]
    fn operator_exists() {
        assert!(selects(json!({"user.role": {"$exists": true}})));
        assert!(!selects(json!({"user.role": {"$exists": false}})));
        // Present but null still exists.
        assert!(selects(json!({"user.nickname": {"$exists": true}})));
    }

    #[test]
    fn comparison_operators_on_numbers() {
        assert!(selects(json!({"user.age": {"$gt": 29}})));
        assert!(!selects(json!({"user.age": {"$gt": 30}})));
        assert!(selects(json!({"user.age": {"$gte": 30}})));
        assert!(!selects(json!({"user.age": {"$gte": 30.5}})));
        assert!(selects(json!({"user.age": {"$lt": 30.5}})));
        assert!(!selects(json!({"user.age": {"$lt": 30}})));
        assert!(selects(json!({"user.age": {"$lte": 30}})));
        assert!(!selects(json!({"user.age": {"$lte": 29}})));
        assert!(selects(json!({"user.score": {"$gt": 2}})));
        // Any element of an array field.
        assert!(selects(json!({"session.cart": {"$gte": 3}})));
        assert!(!selects(json!({"session.cart": {"$gt": 3}})));
    }

    #[test]
    fn comparison_operators_on_strings() {
        assert!(selects(
            json!({"connected_at": {"$gte": "2026-11-22T14:00:00Z"}})
        ));
        assert!(selects(
            json!({"connected_at": {"$gt": "2026-11-22T13:59:59Z"}})
        ));
        assert!(!selects(
            json!({"connected_at": {"$gt": "2026-11-22T14:00:00Z"}})
        ));
        assert!(selects(
            json!({"connected_at": {"$lt": "2026-11-22T14:00:01Z"}})
        ));
        assert!(selects(
            json!({"connected_at": {"$lte": "2026-11-22T14:00:00Z"}})
        ));
        assert!(!selects(
            json!({"connected_at": {"$lt": "2025-12-31T23:59:59Z"}})
        ));
        assert!(selects(json!({"user.role": {"$lt": "b"}})));
        assert!(selects(json!({"channels": {"$gt": "room:1"}})));
    }

    #[test]
    fn comparison_type_mismatch_never_matches() {
        for operator in ["$gt", "$gte", "$lt", "$lte"] {
            assert!(
                !selects(json!({"user.age": {operator: "30"}})),
                "{operator}"
            );
            assert!(!selects(json!({"user.role": {operator: 0}})), "{operator}");
            assert!(!selects(json!({"logged_in": {operator: 0}})), "{operator}");
            assert!(
                !selects(json!({"user.nickname": {operator: 0}})),
                "{operator}"
            );
            assert!(
                !selects(json!({"user.address": {operator: ""}})),
                "{operator}"
            );
        }
    }

    #[test]
    fn error_messages() {
        let cases = [
            (json!([]), "filter must be a JSON object"),
            (json!("user.id"), "filter must be a JSON object"),
            (json!(null), "filter must be a JSON object"),
            (
                json!({"": 1}),
                "empty path in filter: keys are dotted paths like `user.id`",
            ),
            (json!({"a..b": 1}), "path `a..b` has an empty segment"),
            (json!({".a": 1}), "path `.a` has an empty segment"),
            (json!({"a.": 1}), "path `a.` has an empty segment"),
            (
                json!({"user.name": {"$regex": "^a"}}),
                "unknown operator `$regex` at `user.name`",
            ),
            (json!({"x": {"$eq": 1}}), "unknown operator `$eq` at `x`"),
            (
                json!({"user.age": {"$gte": 18, "$lt": 65}}),
                "more than one operator at `user.age` (`$gte` and `$lt`): use one operator per path",
            ),
            (
                json!({"user": {"$in": [1], "id": 1}}),
                "value at `user` mixes operators (`$` keys) with plain keys",
            ),
            (json!({"user.id": {"$in": "alice"}}), "`$in` at `user.id` needs an array"),
            (json!({"user.id": {"$in": {}}}), "`$in` at `user.id` needs an array"),
            (json!({"a": {"$exists": 1}}), "`$exists` at `a` needs true or false"),
            (json!({"a": {"$exists": "true"}}), "`$exists` at `a` needs true or false"),
            (json!({"a": {"$gt": null}}), "`$gt` at `a` needs a number or a string"),
            (json!({"a": {"$gte": true}}), "`$gte` at `a` needs a number or a string"),
            (json!({"a": {"$lt": [1]}}), "`$lt` at `a` needs a number or a string"),
            (json!({"a": {"$lte": {}}}), "`$lte` at `a` needs a number or a string"),
        ];
        for (value, expected) in cases {
            assert_eq!(error_text(value.clone()), expected, "for {value}");
        }
    }

    /// `json!` would serialize an interpolated value (recursively, by copy); this moves it.
    fn object(key: &str, value: Value) -> Value {
        let mut fields = Map::new();
        fields.insert(key.to_owned(), value);
        Value::Object(fields)
    }

    fn nested_arrays(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn nesting_limit() {
        assert!(Filter::parse(&json!({"a": nested_arrays(MAX_VALUE_DEPTH)})).is_ok());
        let too_deep = nested_arrays(MAX_VALUE_DEPTH + 1);
        assert_eq!(
            error_text(json!({"a": too_deep.clone()})),
            "value at `a` is nested more than 128 levels deep"
        );
        assert!(Filter::parse(&json!({"a": {"$ne": too_deep.clone()}})).is_err());
        assert!(Filter::parse(&json!({"a": {"$in": [too_deep.clone()]}})).is_err());
        // `$in`'s own array counts as a level.
        assert!(Filter::parse(&json!({"a": {"$in": nested_arrays(MAX_VALUE_DEPTH - 1)}})).is_ok());
        assert!(Filter::parse(&json!({"a": {"$in": nested_arrays(MAX_VALUE_DEPTH)}})).is_ok());
        // Deep equality at the limit against an equally deep record works.
        let deep = nested_arrays(MAX_VALUE_DEPTH);
        assert!(filter(json!({"a": deep.clone()})).matches(&json!({"a": deep})));
    }

    #[test]
    fn hostile_value_is_refused_without_recursion() {
        // Built, used and leaked without ever cloning or dropping it: serde_json's own clone and
        // drop recurse, and those are not what is under test.
        let hostile = object("a", nested_arrays(200_000));
        let started = Instant::now();
        assert!(matches!(
            Filter::parse(&hostile),
            Err(FilterError::TooDeep { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A deep record against a shallow literal only recurses as deep as the literal.
        assert!(!filter(json!({"a": [[1]]})).matches(&hostile));
        assert!(filter(json!({"a": {"$exists": true}})).matches(&hostile));
        std::mem::forget(hostile);
    }

    #[test]
    fn many_keys_and_long_paths_are_fast() {
        let mut keys = Map::new();
        for index in 0..10_000 {
            keys.insert(format!("k{index}.x"), json!({"$exists": false}));
        }
        let started = Instant::now();
        let wide = filter(Value::Object(keys));
        assert!(wide.matches(&record()));

        let long_path = vec!["a"; 1_000].join(".");
        let mut nested = json!(5);
        for _ in 0..1_000 {
            nested = object("a", nested);
        }
        let long = filter(json!({ long_path.clone(): {"$gte": 5} }));
        assert!(long.matches(&nested));
        assert!(!filter(json!({ long_path: 6 })).matches(&nested));
        assert!(started.elapsed() < Duration::from_secs(2));

        let mut operators = Map::new();
        for index in 0..10_000 {
            operators.insert(format!("${index}"), json!(1));
        }
        assert!(matches!(
            Filter::parse(&json!({"a": operators})),
            Err(FilterError::SeveralOperators { .. })
        ));
    }

    #[test]
    fn user_ids_hint() {
        let ids = |value: Value| filter(value).user_ids();
        let strings = |ids: &[&str]| Some(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>());
        assert_eq!(ids(json!({"user.id": "alice"})), strings(&["alice"]));
        assert_eq!(ids(json!({"auth.sub": "alice"})), strings(&["alice"]));
        assert_eq!(ids(json!({"user.id": 7})), strings(&["7"]));
        assert_eq!(ids(json!({"user.id": 7.0})), strings(&["7"]));
        assert_eq!(ids(json!({"user.id": 7.5})), strings(&["7.5"]));
        assert_eq!(ids(json!({"user.id": -3})), strings(&["-3"]));
        assert_eq!(
            ids(json!({"user.id": {"$in": ["a", 7, "a", "7", "b"]}})),
            strings(&["7", "a", "b"])
        );
        assert_eq!(ids(json!({"user.id": {"$in": []}})), strings(&[]));
        assert_eq!(
            ids(json!({"user.id": {"$in": ["a", "b", "c"]}, "auth.sub": {"$in": ["c", "a"]}})),
            strings(&["a", "c"])
        );
        assert_eq!(ids(json!({"user.id": "a", "auth.sub": "b"})), strings(&[]));
        // Other keys do not disturb the hint.
        assert_eq!(
            ids(json!({"user.id": "a", "user.role": "admin"})),
            strings(&["a"])
        );
        // Not pinned.
        assert_eq!(ids(json!({})), None);
        assert_eq!(ids(json!({"user.role": "admin"})), None);
        assert_eq!(ids(json!({"user.id": {"$ne": "a"}})), None);
        assert_eq!(ids(json!({"user.id": {"$exists": true}})), None);
        assert_eq!(ids(json!({"user.id": {"$gt": "a"}})), None);
        assert_eq!(ids(json!({"user.id": null})), None);
        assert_eq!(ids(json!({"user.id": ["a"]})), None);
        assert_eq!(ids(json!({"user.id": {"$in": ["a", null]}})), None);
        assert_eq!(ids(json!({"user": {"id": "a"}})), None);
        assert_eq!(ids(json!({"user.id.x": "a"})), None);
        // An unusable pin on one key leaves the other key's pin standing.
        assert_eq!(
            ids(json!({"user.id": {"$ne": "b"}, "auth.sub": "a"})),
            strings(&["a"])
        );
    }

    #[test]
    fn user_id_index_key_rendering() {
        assert_eq!(user_id_index_key(&json!("7")), Some("7".to_owned()));
        assert_eq!(user_id_index_key(&json!(7)), Some("7".to_owned()));
        assert_eq!(user_id_index_key(&json!(7.0)), Some("7".to_owned()));
        assert_eq!(user_id_index_key(&json!(-0.0)), Some("0".to_owned()));
        assert_eq!(
            user_id_index_key(&json!(u64::MAX)),
            Some(u64::MAX.to_string())
        );
        assert_eq!(user_id_index_key(&json!(true)), None);
        assert_eq!(user_id_index_key(&json!({"id": 1})), None);
    }

    #[test]
    fn json_round_trip_and_serde() {
        let original = json!({
            "user.role": "admin", "user.age": {"$gte": 18}, "channels": {"$in": ["r"]},
            "a": {"$ne": {"x": 1}}, "b": {"$exists": false}, "c": {"$lt": "z"},
            "d": {"$gt": 1.5}, "e": {"$lte": 3}, "f": {"k": [1]}, "g": {}
        });
        let parsed = filter(original.clone());
        assert_eq!(parsed.to_json(), original);
        let reparsed = filter(parsed.to_json());
        assert_eq!(reparsed.to_json(), original);

        let text = serde_json::to_string(&parsed).unwrap_or_default();
        let decoded: Filter = match serde_json::from_str(&text) {
            Ok(decoded) => decoded,
            Err(error) => panic!("round trip failed: {error}"),
        };
        assert_eq!(decoded.to_json(), original);

        #[derive(serde::Deserialize)]
        struct QueryBody {
            filter: Filter,
        }
        let body: Result<QueryBody, _> =
            serde_json::from_str(r#"{"filter": {"user.name": {"$regex": "a"}}}"#);
        match body {
            Ok(_) => panic!("bad filter accepted"),
            Err(error) => assert!(
                error
                    .to_string()
                    .contains("unknown operator `$regex` at `user.name`"),
                "{error}"
            ),
        }
        let body: Result<QueryBody, _> = serde_json::from_str(r#"{"filter": {"worker": 1}}"#);
        assert!(body.is_ok_and(|body| body.filter.matches(&record())));
    }
}
