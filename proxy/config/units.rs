//! Parsing of human-written quantities: durations (`"500ms"`, `"1.5s"`) and byte sizes (`"20MiB"`).

use std::time::Duration;

const DURATION_HELP: &str =
    r#"write a number and a unit (ms, s, m or h), e.g. "500ms", "2s", "1.5s", "5m""#;
const SIZE_HELP: &str = r#"write a whole number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. "512KiB", "20MiB", or a plain number of bytes"#;

/// The longest duration accepted anywhere: one year. Longer values are almost certainly
/// mistakes, and keeping them bounded means `Instant + Duration` can never overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A non-negative decimal number as written, split at the decimal point.
struct Number<'s> {
    whole: u128,
    /// Digits after the decimal point (empty when there is none).
    fraction: &'s str,
}

impl Number<'_> {
    /// `self * scale`, truncated to an integer; `None` on overflow.
    fn times(&self, scale: u128) -> Option<u128> {
        let whole = self.whole.checked_mul(scale)?;
        let mut frac: u128 = 0;
        let mut denom: u128 = 1;
        for d in self.fraction.bytes() {
            frac = frac.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
            denom = denom.checked_mul(10)?;
        }
        whole.checked_add(frac.checked_mul(scale)? / denom)
    }
}

/// Splits `"1.5 s"` into the number `1.5` and the unit `"s"`. The error says what is wrong.
fn split_number(s: &str) -> Result<(Number<'_>, &str), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the value is empty".into());
    }
    if s.starts_with('-') {
        return Err("negative values are not allowed".into());
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err("it must start with a number".into());
    }
    let (whole_str, rest) = s.split_at(digits_end);
    let whole = whole_str
        .parse::<u128>()
        .map_err(|_| "the number is too large".to_string())?;
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if end == 0 {
                return Err("a digit must follow the decimal point".into());
            }
            if end > 20 {
                return Err("too many digits after the decimal point".into());
            }
            after.split_at(end)
        }
        None => ("", rest),
    };
    let unit = rest.trim_start();
    if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("unknown unit {unit:?}"));
    }
    Ok((Number { whole, fraction }, unit))
}

/// Parses a duration such as `"500ms"`, `"2s"`, `"1.5s"`, `"5m"` or `"1h"`.
///
/// A unit is required (`"0s"`, not `"0"`); at most one year ([`MAX_DURATION`]) is accepted.
/// Sub-nanosecond fractions are truncated. The error text says what is wrong and how to
/// write it instead.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}; {DURATION_HELP}");
    let (number, unit) = split_number(s).map_err(bad)?;
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(bad("the unit is missing".into())),
        other => return Err(bad(format!("unknown unit {other:?}"))),
    };
    let too_long =
        || format!("invalid duration {s:?}: it is too long; the maximum is \"8760h\" (one year)");
    let nanos = number.times(nanos_per_unit).ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it always fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    let d = Duration::new(secs, sub);
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// Parses a byte size such as `"20MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`, `"100KB"`, `"123B"`
/// or `"4096"` (bytes). Units are case-insensitive; the number must be whole.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = |why: String| format!("invalid size {s:?}: {why}; {SIZE_HELP}");
    let (number, unit) = split_number(s).map_err(bad)?;
    if !number.fraction.is_empty() {
        return Err(bad(
            "the number must be whole (write \"1536KiB\", not \"1.5MiB\")".into(),
        ));
    }
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad(format!("unknown unit {unit:?}"))),
    };
    number
        .times(scale)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| bad("it is too large".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("0s", Duration::ZERO),
            ("1.5s", Duration::from_millis(1500)),
            ("0.001s", Duration::from_millis(1)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("2.5h", Duration::from_secs(9000)),
            (" 3 s ", Duration::from_secs(3)),
            ("8760h", MAX_DURATION),
            ("0.0000000001s", Duration::ZERO),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        let help = DURATION_HELP;
        let bad = [
            (
                "",
                format!("invalid duration \"\": the value is empty; {help}"),
            ),
            (
                "30",
                format!("invalid duration \"30\": the unit is missing; {help}"),
            ),
            (
                "2x",
                format!("invalid duration \"2x\": unknown unit \"x\"; {help}"),
            ),
            (
                "2S",
                format!("invalid duration \"2S\": unknown unit \"S\"; {help}"),
            ),
            (
                "-1s",
                format!("invalid duration \"-1s\": negative values are not allowed; {help}"),
            ),
            (
                "s",
                format!("invalid duration \"s\": it must start with a number; {help}"),
            ),
            (
                "1.s",
                format!("invalid duration \"1.s\": a digit must follow the decimal point; {help}"),
            ),
            (
                "1s2",
                format!("invalid duration \"1s2\": unknown unit \"s2\"; {help}"),
            ),
            (
                "8761h",
                "invalid duration \"8761h\": it is too long; the maximum is \"8760h\" (one year)"
                    .to_string(),
            ),
        ];
        for (s, want) in bad {
            assert_eq!(parse_duration(s), Err(want), "{s}");
        }
        let huge = "99999999999999999999999999999999999999999h";
        assert_eq!(
            parse_duration(huge),
            Err(format!(
                "invalid duration {huge:?}: the number is too large; {help}"
            ))
        );
        assert!(parse_duration("1e3s").is_err());
        assert!(parse_duration("١s").is_err());
    }

    #[test]
    fn sizes() {
        let ok = [
            ("20MiB", 20 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("10MB", 10_000_000),
            ("100KB", 100_000),
            ("123B", 123),
            ("4096", 4096),
            ("0", 0),
            ("20mib", 20 << 20),
            ("2 KiB", 2048),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        let help = SIZE_HELP;
        assert_eq!(
            parse_size("1.5MiB"),
            Err(format!("invalid size \"1.5MiB\": the number must be whole (write \"1536KiB\", not \"1.5MiB\"); {help}"))
        );
        assert_eq!(
            parse_size("20MIB!"),
            Err(format!(
                "invalid size \"20MIB!\": unknown unit \"MIB!\"; {help}"
            ))
        );
        assert_eq!(
            parse_size("5PB"),
            Err(format!("invalid size \"5PB\": unknown unit \"PB\"; {help}"))
        );
        assert_eq!(
            parse_size("16777216TiB"),
            Err(format!(
                "invalid size \"16777216TiB\": it is too large; {help}"
            ))
        );
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215u64 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
