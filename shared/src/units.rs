//! Human-friendly durations (`250ms`, `10s`, `30m`, `1d`) and byte sizes
//! (`16KiB`, `1MiB`), the units every limit in the configuration is written in.
//!
//! Both types parse strictly: a bare number without a unit is refused, because
//! `drain_timeout = 10` is ambiguous (seconds? milliseconds?) and a silent guess
//! is how limits end up a thousand times off. For the same reason sizes refuse
//! the decimal spellings (`2MB`, `2 mb`, `2M`): half of the operators writing
//! them mean 2,000,000 bytes and half mean 2 MiB. Every refusal says what to
//! write instead, so the fix is one copy and paste away.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parse failure for a duration or a size; the hint says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a duration sockhive reads.
    #[error("invalid duration `{input}`: {hint}")]
    Duration {
        /// What was written.
        input: String,
        /// Why it is refused and the accepted spelling.
        hint: String,
    },
    /// Not a size sockhive reads.
    #[error("invalid size `{input}`: {hint}")]
    Size {
        /// What was written.
        input: String,
        /// Why it is refused and the accepted spelling.
        hint: String,
    },
}

/// A duration written with a unit: `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

const DURATION_UNITS: &str = "a whole number with a unit ms, s, m, h or d (e.g. 250ms, 10s, 1d)";

/// The accepted duration units with their length in milliseconds.
const DURATION_UNIT_MILLIS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Spellings people write for each accepted unit (compared in lower case):
/// recognised only to name the right one in the error, never accepted.
fn duration_alias(unit: &str) -> Option<&'static str> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "msec" | "msecs" | "milli" | "millis" | "millisecond" | "milliseconds" => "ms",
        "s" | "sec" | "secs" | "second" | "seconds" => "s",
        "m" | "min" | "mins" | "minute" | "minutes" => "m",
        "h" | "hr" | "hrs" | "hour" | "hours" => "h",
        "d" | "day" | "days" => "d",
        _ => return None,
    })
}

/// Splits `"12.5 MiB"` into the number text and the unit text (trimmed).
fn split_number(text: &str) -> (&str, &str) {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    (number, unit.trim())
}

/// `value * per` when it is a whole number: what a decimal like `1.5` means in a smaller unit.
fn whole_product(number: &str, per: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let scale = 10u64.checked_pow(fraction.len() as u32)?;
    let digits: u64 = format!("{whole}{fraction}").parse().ok()?;
    let scaled = digits.checked_mul(per)?;
    (scaled % scale == 0).then_some(scaled / scale)
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |hint: String| UnitError::Duration {
            input: input.to_string(),
            hint,
        };
        let (number, unit) = split_number(input.trim());
        if number.is_empty() {
            return Err(err(format!("expected {DURATION_UNITS}")));
        }
        let Some(&(_, per)) = DURATION_UNIT_MILLIS.iter().find(|(name, _)| *name == unit) else {
            let hint = match (unit, duration_alias(unit)) {
                ("", _) => format!(
                    "a duration needs a unit: write {number}s, {number}ms, {number}m, {number}h or {number}d"
                ),
                (_, Some(canonical)) => {
                    format!("unknown unit `{unit}`: write {number}{canonical} (units: ms, s, m, h, d)")
                }
                (_, None) => format!("unknown unit `{unit}`: expected {DURATION_UNITS}"),
            };
            return Err(err(hint));
        };
        if number.contains('.') {
            let hint = match whole_product(number, per) {
                Some(millis) => format!(
                    "not a whole number: write {}",
                    HumanDuration(Duration::from_millis(millis))
                ),
                None => format!("not a whole number: expected {DURATION_UNITS}"),
            };
            return Err(err(hint));
        }
        let millis = number
            .parse::<u64>()
            .ok()
            .and_then(|value| value.checked_mul(per))
            .ok_or_else(|| err("too large".to_string()))?;
        Ok(HumanDuration(Duration::from_millis(millis)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= per && ms % per == 0 {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte count: plain bytes, or a whole number with a binary unit `B`, `KiB`, `MiB`, `GiB`.
///
/// The decimal spellings (`KB`, `MB`, `GB`, `K`, `M`, `G`, any case) are
/// refused as ambiguous, with both readings spelled out in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: &str =
    "plain bytes or a whole number with a unit B, KiB, MiB or GiB (e.g. 16KiB)";

/// The accepted size units with their length in bytes.
const SIZE_UNIT_BYTES: [(&str, u64); 5] = [
    ("", 1),
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |hint: String| UnitError::Size {
            input: input.to_string(),
            hint,
        };
        let (number, unit) = split_number(input.trim());
        if number.is_empty() {
            return Err(err(format!("expected {SIZE_UNITS}")));
        }
        let lower = unit.to_ascii_lowercase();
        // (binary unit, its bytes, the decimal reading's bytes) for the
        // spellings that mean one thing to some operators and another to others.
        let ambiguous = match lower.as_str() {
            "k" | "kb" => Some(("KiB", 1u64 << 10, 1_000u64)),
            "m" | "mb" => Some(("MiB", 1 << 20, 1_000_000)),
            "g" | "gb" => Some(("GiB", 1 << 30, 1_000_000_000)),
            _ => None,
        };
        if let Some((binary, per, decimal)) = ambiguous {
            let hint = match (whole_product(number, per), whole_product(number, decimal)) {
                (Some(bytes), Some(decimal_bytes)) => format!(
                    "`{unit}` is ambiguous (decimal or binary?): use {} ({bytes} bytes) or {decimal_bytes}; sizes take {SIZE_UNITS}",
                    if number.contains('.') { ByteSize(bytes).to_string() } else { format!("{number}{binary}") }
                ),
                _ => format!("`{unit}` is ambiguous (decimal or binary?): sizes take {SIZE_UNITS}"),
            };
            return Err(err(hint));
        }
        let Some(&(_, per)) = SIZE_UNIT_BYTES.iter().find(|(name, _)| *name == unit) else {
            let hint = match SIZE_UNIT_BYTES
                .iter()
                .find(|(name, _)| name.to_ascii_lowercase() == lower)
            {
                Some((canonical, _)) => format!(
                    "unknown unit `{unit}`: write {number}{canonical} (units: B, KiB, MiB, GiB)"
                ),
                None if matches!(lower.as_str(), "byte" | "bytes") => {
                    format!("unknown unit `{unit}`: write {number} (plain bytes) or {number}B")
                }
                None => format!("unknown unit `{unit}`: expected {SIZE_UNITS}"),
            };
            return Err(err(hint));
        };
        if number.contains('.') {
            let hint = match whole_product(number, per) {
                Some(bytes) => format!("not a whole number: write {}", ByteSize(bytes)),
                None => format!("not a whole number of bytes: expected {SIZE_UNITS}"),
            };
            return Err(err(hint));
        }
        number
            .parse::<u64>()
            .ok()
            .and_then(|value| value.checked_mul(per))
            .map(ByteSize)
            .ok_or_else(|| err("too large".to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, per) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= per && self.0 % per == 0 {
                return write!(f, "{}{unit}", self.0 / per);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Bytes(u64),
            Text(String),
        }
        match Spelling::deserialize(deserializer)? {
            Spelling::Bytes(n) => Ok(ByteSize(n)),
            Spelling::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "10s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            "1d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(86_400)
        );
        assert!("10".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
        assert!("10 parsecs".parse::<HumanDuration>().is_err());
        assert!("99999999999999999999d".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(HumanDuration(Duration::from_secs(30)).to_string(), "30s");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        assert_eq!(HumanDuration(Duration::from_secs(86_400)).to_string(), "1d");
    }

    #[test]
    fn sizes_accept_binary_units_and_plain_bytes() {
        assert_eq!("16KiB".parse::<ByteSize>().unwrap().0, 16 * 1024);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
        assert!("1.5MiB".parse::<ByteSize>().is_err());
        assert!("1TiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!("2 MiB".parse::<ByteSize>().unwrap().0, 2 << 20);
        assert_eq!("100B".parse::<ByteSize>().unwrap().0, 100);
    }

    fn size_error(input: &str) -> String {
        input.parse::<ByteSize>().unwrap_err().to_string()
    }

    fn duration_error(input: &str) -> String {
        input.parse::<HumanDuration>().unwrap_err().to_string()
    }

    #[test]
    fn decimal_size_units_are_refused_with_both_readings() {
        for input in ["2 MB", "2MB", "2 mb", "2mb", "2M", "2 m", "2Mb"] {
            let err = size_error(input);
            assert!(
                err.contains("ambiguous") && err.contains("use 2MiB (2097152 bytes) or 2000000"),
                "{input}: {err}"
            );
            assert!(err.contains("KiB, MiB or GiB"), "{input}: {err}");
        }
        assert!(size_error("16KB").contains("use 16KiB (16384 bytes) or 16000"));
        assert!(size_error("1k").contains("use 1KiB (1024 bytes) or 1000"));
        assert!(size_error("1GB").contains("use 1GiB (1073741824 bytes) or 1000000000"));
        assert!(size_error("1.5MB").contains("use 1536KiB (1572864 bytes) or 1500000"));
    }

    #[test]
    fn size_units_in_another_spelling_name_the_accepted_one() {
        assert!(
            size_error("2 mib").contains("write 2MiB"),
            "{}",
            size_error("2 mib")
        );
        assert!(size_error("16kib").contains("write 16KiB"));
        assert!(size_error("512 bytes").contains("write 512 (plain bytes)"));
        assert!(size_error("1.5MiB").contains("write 1536KiB"));
        let err = size_error("1TiB");
        assert!(
            err.contains("`TiB`") && err.contains("B, KiB, MiB or GiB"),
            "{err}"
        );
        assert!(size_error("lots").starts_with("invalid size `lots`"));
    }

    #[test]
    fn spelled_out_duration_units_are_refused_naming_the_short_one() {
        let err = duration_error("10 sec");
        assert!(
            err.contains("unknown unit `sec`") && err.contains("write 10s"),
            "{err}"
        );
        assert!(duration_error("5 minutes").contains("write 5m"));
        assert!(duration_error("2hours").contains("write 2h"));
        assert!(duration_error("250 millis").contains("write 250ms"));
        assert!(duration_error("10S").contains("write 10s"));
        assert!(duration_error("1.5s").contains("write 1500ms"));
        assert!(duration_error("0.5d").contains("write 12h"));
        assert!(duration_error("10").contains("needs a unit: write 10s"));
        assert!(duration_error("10 parsecs").contains("ms, s, m, h or d"));
        assert_eq!(
            "10 s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(10),
            "a space before the unit is still read"
        );
    }
}
