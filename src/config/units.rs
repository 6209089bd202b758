//! Durations and byte sizes as people write them in the config file.
//!
//! The formats are deliberately narrow: whole numbers with one unit, so `2m` can never be
//! misread as minutes-or-megabytes and a bare `30` (seconds? milliseconds?) is refused instead
//! of guessed. Sizes use binary units only because every limit they feed is a buffer size.

use std::time::Duration;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// The longest duration accepted: a year. Timers add durations to `Instant::now()`, which panics
/// on overflow, and no timeout or age in a gateway has a use for more.
const MAX_DURATION: Duration = Duration::from_secs(8760 * 3600);

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare `0`.
///
/// Zero is the only unitless value because "off" means the same in every unit, and several
/// options use zero to disable themselves.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?} (use a number with ms, s, m or h, e.g. 30s)");
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let too_large = || format!("duration {s:?} is too large (at most 8760h)");
    // Digits only, so the one way `parse` can fail here is overflow.
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let duration = match unit {
        "" if n == 0 => Duration::ZERO,
        "" => {
            return Err(format!(
                "invalid duration {s:?}: a number needs a unit (ms, s, m or h), e.g. {n}s"
            ))
        }
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_large)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_large)?),
        _ => return Err(invalid()),
    };
    if duration > MAX_DURATION {
        return Err(too_large());
    }
    Ok(duration)
}

/// Writes a duration in the largest unit that represents it exactly, so the output reads like
/// what someone would have typed and parses back to the same value.
///
/// Durations that are not whole milliseconds cannot be written in the config syntax at all; they
/// only show up in logs, so they fall back to the standard debug form (`1.5ms`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".to_string();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a byte count: a bare integer, or an integer followed by `KiB`, `MiB` or `GiB`.
///
/// `KB`/`MB` are refused rather than accepted as either 1000 or 1024, since both readings are
/// common and guessing wrong silently shifts a limit by 2.4%–7%.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let invalid = || {
        format!("invalid size {s:?} (use a number of bytes, optionally with KiB, MiB or GiB, e.g. 64KiB)")
    };
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let multiplier = match unit {
        "" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        _ => return Err(invalid()),
    };
    let too_large = || format!("size {s:?} is too large");
    let n: usize = number.parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}

/// Writes a size in the largest binary unit that represents it exactly, so messages show the
/// same spelling the config file uses (`16KiB` rather than `16384`).
pub fn format_size(n: usize) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n != 0 && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_number_asks_for_a_unit() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("needs a unit"), "{err}");
        assert!(err.contains("30s"), "{err}");
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in [
            "",
            "s",
            "2 minutes",
            "1.5s",
            "-1s",
            "30S",
            "1m30s",
            "10d",
            "ms",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.starts_with("invalid duration"), "{bad:?}: {err}");
        }
        assert_eq!(
            parse_duration("2 minutes").unwrap_err(),
            r#"invalid duration "2 minutes" (use a number with ms, s, m or h, e.g. 30s)"#
        );
    }

    #[test]
    fn duration_overflow_is_an_error() {
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration(&format!("{}h", u64::MAX / 60))
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_beyond_a_year_are_refused() {
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
        for huge in [
            "8761h",
            "31536001s",
            "31536000001ms",
            "9223372036854775807s",
            "18446744073709551615s",
            "18446744073709551615ms",
        ] {
            assert_eq!(
                parse_duration(huge).unwrap_err(),
                format!("duration {huge:?} is too large (at most 8760h)")
            );
        }
    }

    #[test]
    fn durations_format_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        for text in ["250ms", "45s", "3m", "5h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn sizes_with_binary_units() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn other_size_units_are_rejected_with_the_accepted_ones_listed() {
        for bad in [
            "4KB", "1MB", "4kib", "4 KiB", "KiB", "", "1.5MiB", "-1", "1TiB",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("KiB, MiB or GiB"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn size_overflow_is_an_error() {
        assert!(parse_size("99999999999999999999999")
            .unwrap_err()
            .contains("too large"));
        let huge = format!("{}GiB", usize::MAX / 1024);
        assert!(parse_size(&huge).unwrap_err().contains("too large"));
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(123), "123");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(3 << 30), "3GiB");
        assert_eq!(format_size(1536 * 1024), "1536KiB");
        for text in ["256", "16KiB", "16MiB", "1GiB"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
    }
}
