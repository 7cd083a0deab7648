//! Human-friendly durations (`250ms`, `10s`, `30m`, `1d`) and byte sizes
//! (`16KiB`, `1MiB`), the units every limit in the configuration is written in.
//!
//! Both types parse strictly: a bare number without a unit is refused, because
//! `drain_timeout = 10` is ambiguous (seconds? milliseconds?) and a silent guess
//! is how limits end up a thousand times off.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parse failure for a duration or a size; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{input}`: {expected}")]
pub struct UnitError {
    kind: &'static str,
    input: String,
    expected: &'static str,
}

/// A duration written with a unit: `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

const DURATION_EXPECTED: &str =
    "expected a whole number with a unit ms, s, m, h or d (e.g. 250ms, 10s, 1d)";

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || UnitError {
            kind: "duration",
            input: input.to_string(),
            expected: DURATION_EXPECTED,
        };
        let text = input.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().map_err(|_| err())?;
        let millis_per_unit: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        let millis = value.checked_mul(millis_per_unit).ok_or_else(err)?;
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

/// A byte count written with an optional binary unit: `B`, `KiB`, `MiB`, `GiB`.
///
/// Plain integers are accepted here (bytes are unambiguous), as are the SI
/// spellings `KB`/`MB`, which are read as binary units since that is what
/// every operator writing `1MB` for a frame limit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || {
            UnitError {
            kind: "size",
            input: input.to_string(),
            expected: "expected a whole number of bytes, optionally with a unit B, KiB, MiB or GiB (e.g. 16KiB)",
        }
        };
        let text = input.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().map_err(|_| err())?;
        let per: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "K" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            _ => return Err(err()),
        };
        value.checked_mul(per).map(ByteSize).ok_or_else(err)
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
    }
}
