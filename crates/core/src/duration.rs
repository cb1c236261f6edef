//! Go / Kubernetes duration strings (`24h`, `1h30m`, `2160h`, `90s`, `500ms`, `1.5h`, `0s`) as
//! [`GoDuration`], a newtype over [`std::time::Duration`] with serde support.
//!
//! Istio (`connectTimeout: 30ms`) and cert-manager (`duration: 24h`, a `metav1.Duration`) both
//! read these with Go's `time.ParseDuration`; this module implements the same grammar and
//! prints durations the way Go's `Duration.String` does (`24h0m0s`), so error messages read
//! like the ones cert-manager's webhook gives. What is not here: calendar units (`d`, `w`),
//! which Go rejects too, and negative durations, which no field trustmesh reads accepts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty or did not follow `[-+]?(<number><unit>)+`.
    #[error("invalid duration {input:?}: expected a Go duration such as 24h, 1h30m, 90s or 500ms")]
    Invalid {
        /// The rejected input.
        input: String,
    },
    /// A number was not followed by a unit (Go accepts a bare `0` only).
    #[error("missing unit in duration {input:?}: use one of ns, us, ms, s, m, h")]
    MissingUnit {
        /// The rejected input.
        input: String,
    },
    /// The unit was not one of Go's.
    #[error("unknown unit {unit:?} in duration {input:?}: use one of ns, us, ms, s, m, h")]
    UnknownUnit {
        /// The rejected input.
        input: String,
        /// The unit found.
        unit: String,
    },
    /// The duration was negative.
    #[error("negative duration {input:?} is not allowed")]
    Negative {
        /// The rejected input.
        input: String,
    },
    /// The value does not fit Go's int64 nanoseconds (about 2,562,047 hours).
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The rejected input.
        input: String,
    },
}

/// A non-negative duration written the Go way. Displays like Go's `Duration.String`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(Duration);

/// Go's `time.Duration` is int64 nanoseconds; anything larger overflows there too.
const MAX_NANOS: u128 = i64::MAX as u128;

impl GoDuration {
    /// Wraps a [`Duration`].
    pub const fn new(d: Duration) -> Self {
        Self(d)
    }

    /// `h` hours.
    pub const fn from_hours(h: u64) -> Self {
        Self(Duration::from_secs(h * 3600))
    }

    /// `m` minutes.
    pub const fn from_minutes(m: u64) -> Self {
        Self(Duration::from_secs(m * 60))
    }

    /// The wrapped [`Duration`].
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// Parses a Go duration string (`time.ParseDuration` grammar).
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let invalid = || DurationError::Invalid {
            input: input.to_owned(),
        };
        let (negative, mut rest) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        // Go: "Special case: if all that is left is "0", this is zero."
        if rest == "0" {
            return Ok(Self(Duration::ZERO));
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            // The number: digits, optionally '.', optionally digits; at least one digit.
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let (int_part, after_int) = rest.split_at(int_len);
            let (frac_part, after_num) = match after_int.strip_prefix('.') {
                Some(f) => {
                    let n = f.bytes().take_while(u8::is_ascii_digit).count();
                    f.split_at(n)
                }
                None => ("", after_int),
            };
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
            let unit_len = after_num
                .char_indices()
                .find(|(_, c)| *c == '.' || c.is_ascii_digit())
                .map_or(after_num.len(), |(i, _)| i);
            let (unit, next) = after_num.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => {
                    return Err(DurationError::MissingUnit {
                        input: input.to_owned(),
                    });
                }
                other => {
                    return Err(DurationError::UnknownUnit {
                        input: input.to_owned(),
                        unit: other.to_owned(),
                    });
                }
            };
            let overflow = || DurationError::Overflow {
                input: input.to_owned(),
            };
            let mut value: u128 = 0;
            for d in int_part.bytes() {
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u128::from(d - b'0')))
                    .filter(|v| *v <= MAX_NANOS)
                    .ok_or_else(overflow)?;
            }
            value = value.checked_mul(scale).ok_or_else(overflow)?;
            // Fractions are truncated to whole nanoseconds, as Go does.
            let mut frac_scale = scale;
            for d in frac_part.bytes().take(30) {
                frac_scale /= 10;
                value += u128::from(d - b'0') * frac_scale;
            }
            total = total
                .checked_add(value)
                .filter(|t| *t <= MAX_NANOS)
                .ok_or_else(overflow)?;
            rest = next;
        }
        if negative && total > 0 {
            return Err(DurationError::Negative {
                input: input.to_owned(),
            });
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| DurationError::Overflow {
            input: input.to_owned(),
        })?;
        // `total % 1e9` is below 1e9 and always fits.
        let nanos = u32::try_from(total % 1_000_000_000).unwrap_or(0);
        Ok(Self(Duration::new(secs, nanos)))
    }
}

impl From<Duration> for GoDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<GoDuration> for Duration {
    fn from(d: GoDuration) -> Self {
        d.0
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, DurationError> {
        Self::parse(s)
    }
}

/// Go's `Duration.String`: `0s`, `500ms`, `1.5µs`, `1h30m0s`, `24h0m0s`.
impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            let (unit, scale) = if nanos < 1_000 {
                ("ns", 1)
            } else if nanos < 1_000_000 {
                ("\u{b5}s", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return write!(f, "{}{unit}", fixed(nanos, scale));
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = (nanos / 60_000_000_000) % 60;
        let sec_nanos = nanos % 60_000_000_000;
        if hours > 0 {
            write!(f, "{hours}h{minutes}m")?;
        } else if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{}s", fixed(sec_nanos, 1_000_000_000))
    }
}

/// `value / scale` as a decimal with trailing zeros of the fraction removed.
fn fixed(value: u128, scale: u128) -> String {
    let int = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return int.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{int}.{}", digits.trim_end_matches('0'))
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoDuration({self})")
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Duration {
        GoDuration::parse(s).unwrap().as_duration()
    }

    #[test]
    fn parses_what_go_parses() {
        assert_eq!(d("24h"), Duration::from_secs(86_400));
        assert_eq!(d("12h"), Duration::from_secs(43_200));
        assert_eq!(d("1h30m"), Duration::from_secs(5_400));
        assert_eq!(d("2160h"), Duration::from_secs(2160 * 3600));
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("-0"), Duration::ZERO);
        assert_eq!(d("+5m"), Duration::from_secs(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5_400));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("1.s"), Duration::from_secs(1));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10\u{b5}s"), Duration::from_micros(10));
        assert_eq!(d("10\u{3bc}s"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(
            d("2h45m30.5s"),
            Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500)
        );
        // Go's largest duration.
        assert_eq!(
            d("2562047h47m16.854775807s"),
            Duration::from_nanos(i64::MAX as u64)
        );
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", "h", "1", "10", "1d", "3 h", "1h 30m", "1.5", ".s", "-", "+", "1hh", "abc",
        ] {
            assert!(
                GoDuration::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            GoDuration::parse("1d"),
            Err(DurationError::UnknownUnit {
                input: "1d".into(),
                unit: "d".into()
            })
        );
        assert_eq!(
            GoDuration::parse("10"),
            Err(DurationError::MissingUnit { input: "10".into() })
        );
        assert_eq!(
            GoDuration::parse("-5m"),
            Err(DurationError::Negative {
                input: "-5m".into()
            })
        );
        assert_eq!(
            GoDuration::parse("2562048h"),
            Err(DurationError::Overflow {
                input: "2562048h".into()
            })
        );
    }

    #[test]
    fn displays_like_go() {
        let cases = [
            ("0s", "0s"),
            ("1h", "1h0m0s"),
            ("24h", "24h0m0s"),
            ("5m", "5m0s"),
            ("90s", "1m30s"),
            ("500ms", "500ms"),
            ("1.5s", "1.5s"),
            ("1500us", "1.5ms"),
            ("7ns", "7ns"),
            ("2160h", "2160h0m0s"),
        ];
        for (input, want) in cases {
            assert_eq!(
                GoDuration::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn serde_reads_strings_and_reports_bad_ones() {
        let v: GoDuration = serde_json::from_str("\"12h\"").unwrap();
        assert_eq!(v, GoDuration::from_hours(12));
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"12h0m0s\"");
        let err = serde_json::from_str::<GoDuration>("\"1d\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit \"d\""), "{err}");
    }

    proptest! {
        /// Printing then parsing gives back the same duration (Go's String/ParseDuration pair).
        #[test]
        fn display_parse_round_trip(nanos in 0u64..=(i64::MAX as u64)) {
            let g = GoDuration::new(Duration::from_nanos(nanos));
            prop_assert_eq!(GoDuration::parse(&g.to_string()).unwrap(), g);
        }

        /// The parser never panics.
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = GoDuration::parse(&s);
        }
    }
}
