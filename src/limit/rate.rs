//! [`Rate`]: how many requests per second, minute or hour, parsed from
//! `N/s`, `N/min` or `N/h`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// A request rate: `count` requests per `period`, with a burst of `count`
/// unless configured otherwise (GCRA: one request's worth of budget comes
/// back every `period / count`).
///
/// ```
/// use rmcp_guard::limit::Rate;
///
/// let rate: Rate = "100/min".parse()?;
/// assert_eq!(rate.count(), 100);
/// assert_eq!(rate.period(), std::time::Duration::from_secs(60));
/// assert_eq!(rate.to_string(), "100/min");
/// assert!("100 per minute".parse::<Rate>().is_err());
/// # Ok::<(), rmcp_guard::limit::RateParseError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU32,
    unit: Unit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Unit {
    Second,
    Minute,
    Hour,
}

impl Unit {
    fn period(self) -> Duration {
        match self {
            Unit::Second => Duration::from_secs(1),
            Unit::Minute => Duration::from_secs(60),
            Unit::Hour => Duration::from_secs(3600),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "min",
            Unit::Hour => "h",
        }
    }
}

impl Rate {
    /// `count` requests per second.
    pub const fn per_second(count: NonZeroU32) -> Rate {
        Rate {
            count,
            unit: Unit::Second,
        }
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: NonZeroU32) -> Rate {
        Rate {
            count,
            unit: Unit::Minute,
        }
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: NonZeroU32) -> Rate {
        Rate {
            count,
            unit: Unit::Hour,
        }
    }

    /// How many requests per [`period`](Self::period).
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// One second, minute or hour.
    pub fn period(&self) -> Duration {
        self.unit.period()
    }

    /// The GCRA quota: one request back every `period / count` (at least a
    /// nanosecond), at most `burst` at once.
    pub(crate) fn quota(&self, burst: NonZeroU32) -> governor::Quota {
        let interval = self.period() / self.count.get();
        let interval = interval.max(Duration::from_nanos(1));
        // Invariant: `with_period` refuses only a zero interval, excluded above.
        governor::Quota::with_period(interval)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit.as_str())
    }
}

/// Why a string is not a [`Rate`]; its message names the input and the
/// accepted forms, so a configuration error is one readable line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a rate: {reason}; write N/s, N/min or N/h with N a whole number from 1")]
pub struct RateParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Rate, RateParseError> {
        let error = |reason| RateParseError {
            // Configuration text, not a secret; cut so a wrong file stays one line.
            input: s.chars().take(64).collect(),
            reason,
        };
        let (count, unit) = s.trim().split_once('/').ok_or_else(|| error("no `/`"))?;
        let unit = match unit.trim() {
            "s" => Unit::Second,
            "min" => Unit::Minute,
            "h" => Unit::Hour,
            _ => return Err(error("the unit is not s, min or h")),
        };
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error("the count is not a whole number"));
        }
        let count = count.parse::<u32>().map_err(|_| error("the count is too large"))?;
        let count = NonZeroU32::new(count).ok_or_else(|| error("the count is 0"))?;
        Ok(Rate { count, unit })
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_units_and_prints_them_back() {
        for (text, count, secs) in [
            ("20/s", 20, 1),
            ("100/min", 100, 60),
            ("5000/h", 5000, 3600),
            (" 7 / min ", 7, 60),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(
                (rate.count(), rate.period()),
                (count, Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate);
        }
    }

    #[test]
    fn refuses_everything_else_with_one_line() {
        for text in [
            "",
            "20",
            "20/",
            "/s",
            "0/s",
            "-1/s",
            "+5/s",
            "1.5/s",
            "20/sec",
            "20/m",
            "20/day",
            "99999999999/s",
            "20/s/s",
        ] {
            let error = text.parse::<Rate>().unwrap_err().to_string();
            assert!(error.contains("N/s, N/min or N/h"), "{text}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn the_quota_spaces_requests_evenly() {
        let quota = "120/min".parse::<Rate>().unwrap().quota(NonZeroU32::new(3).unwrap());
        assert_eq!(quota.replenish_interval(), Duration::from_millis(500));
        assert_eq!(quota.burst_size().get(), 3);
        let fastest = Rate::per_second(NonZeroU32::MAX).quota(NonZeroU32::MIN);
        assert_eq!(fastest.replenish_interval(), Duration::from_nanos(1));
    }
}
