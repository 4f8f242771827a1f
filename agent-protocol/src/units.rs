//! Durations and sizes as people write them in job specs and the operator configuration.
//!
//! Durations are one or more `<whole number><unit>` groups from the largest unit to the
//! smallest, with units `h`, `m`, `s`, `ms`: `90s`, `10m`, `1h30m`, `500ms`. Sizes are one
//! `<whole number><unit>` with the binary units `B`, `KiB`, `MiB`, `GiB`, `TiB`: `4GiB`.
//!
//! Why our own small parser and not `humantime` or `bytesize`: the accepted language is part of
//! the user-facing contract, so it has to be small, strict and stable. Decimal units (`GB`),
//! fractions (`1.5h`), spaces (`10 minutes`) and bare numbers are refused rather than guessed
//! at, because a guess that differs from the operator's intent by a factor of 1.07 or 1000 is a
//! silent policy change. Zero is parseable here; whether zero is allowed is the caller's rule.
//!
//! CPU counts are the exception: a share of a CPU is what people mean (`cpus = 1.5`, as
//! Docker's `--cpus`), so they are TOML or JSON numbers, whole or decimal, kept to a
//! thousandth of a CPU ([`cpu_millis`]); the kernel's bandwidth control goes no finer than a
//! hundredth (1 ms in a 100 ms period), which is the smallest count accepted.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The duration forms, for error messages.
pub const DURATION_FORMS: &str = "forms like 90s, 10m, 1h30m or 500ms (units h, m, s, ms)";

/// The size forms, for error messages.
pub const SIZE_FORMS: &str =
    "a whole number with one of the units B, KiB, MiB, GiB, TiB, like 4GiB";

/// Longest input either parser looks at; anything longer is refused before parsing.
const MAX_INPUT_LEN: usize = 64;

const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

const SIZE_UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Parses a duration such as `90s`, `10m`, `1h30m` or `500ms`.
///
/// The error is a sentence fragment naming the bad value and the accepted forms; callers
/// prefix it with the field path.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{} is not a duration; use {DURATION_FORMS}",
            crate::error::quote(s)
        )
    };
    if s.is_empty() {
        return Err(format!("empty duration; use {DURATION_FORMS}"));
    }
    if s.len() > MAX_INPUT_LEN {
        return Err(bad());
    }
    if s.starts_with('-') {
        return Err(format!(
            "{} is negative; durations must be positive",
            crate::error::quote(s)
        ));
    }
    let mut rest = s;
    let mut total_ms: u64 = 0;
    // Index into DURATION_UNITS of the last unit used: units must strictly descend.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (number, tail) = rest.split_at(digits);
        let letters = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(letters);
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(bad());
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "{} is not a duration; write each unit once, largest first, like 1h30m",
                crate::error::quote(s)
            ));
        }
        last_unit = Some(index);
        let too_large = || format!("{} is too large for a duration", crate::error::quote(s));
        let value: u64 = number.parse().map_err(|_| too_large())?;
        let ms = value
            .checked_mul(DURATION_UNITS[index].1)
            .ok_or_else(too_large)?;
        total_ms = total_ms.checked_add(ms).ok_or_else(too_large)?;
        rest = tail;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size such as `100B`, `512MiB` or `4GiB` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let quoted = crate::error::quote(s);
    if s.is_empty() {
        return Err(format!("empty size; use {SIZE_FORMS}"));
    }
    if s.starts_with('-') {
        return Err(format!("{quoted} is negative; sizes must be positive"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if digits == 0 || s.len() > MAX_INPUT_LEN {
        return Err(format!("{quoted} is not a size; use {SIZE_FORMS}"));
    }
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        if unit.is_empty() {
            return Err(format!(
                "{quoted} is not a size (no unit); use {SIZE_FORMS}"
            ));
        }
        // Decimal or abbreviated units: say which binary unit was probably meant.
        let hint = match unit {
            "K" | "k" | "KB" | "kB" | "kb" | "Ki" => Some("KiB"),
            "M" | "MB" | "mb" | "Mi" => Some("MiB"),
            "G" | "GB" | "gb" | "Gi" => Some("GiB"),
            "T" | "TB" | "tb" | "Ti" => Some("TiB"),
            "b" => Some("B"),
            _ => None,
        };
        return Err(match hint {
            Some(unit) => format!(
                "{quoted} is not a size; only binary units are accepted (B, KiB, MiB, GiB, TiB): did you mean {number}{unit}?"
            ),
            None => format!("{quoted} is not a size; use {SIZE_FORMS}"),
        });
    };
    let too_large = || format!("{quoted} is too large for a size");
    let value: u64 = number.parse().map_err(|_| too_large())?;
    value.checked_mul(factor).ok_or_else(too_large)
}

/// Formats a byte count exactly, in the largest binary unit that divides it: `16GiB`,
/// `1536MiB`, `123B`. The result parses back with [`parse_size`] to the same value.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0B".to_owned();
    }
    for (name, factor) in SIZE_UNITS {
        if bytes % factor == 0 {
            return format!("{}{name}", bytes / factor);
        }
    }
    // Unreachable: every number is a multiple of 1 byte.
    format!("{bytes}B")
}

/// Formats a duration as `1h30m`, `90ms`, `0s`. Below a millisecond is truncated; every
/// duration that [`parse_duration`] produces formats back to an equivalent input.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, factor) in DURATION_UNITS {
        let factor = u128::from(factor);
        let count = ms / factor;
        if count > 0 {
            out.push_str(&format!("{count}{name}"));
            ms %= factor;
        }
    }
    out
}

/// A number of CPUs as written (`cpus = 2`, `cpus = 1.5`), kept as written until
/// [`cpu_millis`] checks it, so that validation can name every bad value at once.
#[derive(Debug, Clone, Copy)]
pub enum CpuCount {
    /// A whole number (a TOML or JSON integer).
    Whole(i64),
    /// A decimal number.
    Decimal(f64),
}

/// Fewest thousandths of a CPU a limit may give: the kernel's smallest quota, 1 ms of CPU
/// time per 100 ms period.
pub const MIN_CPU_MILLIS: u64 = 10;

/// Most thousandths of a CPU a count may say (a million CPUs): anything larger is a typo.
const MAX_CPU_MILLIS: u64 = 1_000_000_000;

/// The count in thousandths of a CPU (`1.5` is 1500). Refused: zero, negative, not finite,
/// finer than a thousandth, below [`MIN_CPU_MILLIS`], absurdly large.
pub fn cpu_millis(count: CpuCount) -> Result<u64, String> {
    let millis = match count {
        CpuCount::Whole(n) if n <= 0 => {
            return Err(format!("{n} is not a positive number of CPUs"))
        }
        CpuCount::Whole(n) => u64::try_from(n).ok().and_then(|n| n.checked_mul(1000)),
        CpuCount::Decimal(x) if !x.is_finite() || x <= 0.0 => {
            return Err(format!("{x} is not a positive number of CPUs"))
        }
        CpuCount::Decimal(x) => {
            let scaled = x * 1000.0;
            let rounded = scaled.round();
            if (scaled - rounded).abs() > 1e-6 {
                return Err(format!(
                    "{x} is finer than a thousandth of a CPU; use at most three decimals"
                ));
            }
            // Exact: a finite value no larger than MAX_CPU_MILLIS converts without loss.
            (rounded <= MAX_CPU_MILLIS as f64).then_some(rounded as u64)
        }
    };
    match millis {
        Some(m) if m > MAX_CPU_MILLIS => Err(format!("{count} is too many CPUs")),
        None => Err(format!("{count} is too many CPUs")),
        Some(m) if m < MIN_CPU_MILLIS => Err(format!(
            "{count} is below the smallest CPU limit the kernel enforces, 0.01"
        )),
        Some(m) => Ok(m),
    }
}

/// Formats thousandths of a CPU as a count: `2`, `1.5`, `0.25`.
pub fn format_cpus(millis: u64) -> String {
    let whole = millis / 1000;
    match millis % 1000 {
        0 => whole.to_string(),
        frac => {
            let digits = format!("{frac:03}");
            format!("{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl fmt::Display for CpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuCount::Whole(n) => write!(f, "{n}"),
            CpuCount::Decimal(x) => write!(f, "{x}"),
        }
    }
}

/// Equal when written alike: a decimal compares by its bits, so every value (NaN included)
/// equals itself and `Eq` holds.
impl PartialEq for CpuCount {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CpuCount::Whole(a), CpuCount::Whole(b)) => a == b,
            (CpuCount::Decimal(a), CpuCount::Decimal(b)) => a.to_bits() == b.to_bits(),
            _ => false,
        }
    }
}

impl Eq for CpuCount {}

impl Serialize for CpuCount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            CpuCount::Whole(n) => serializer.serialize_i64(n),
            CpuCount::Decimal(x) => serializer.serialize_f64(x),
        }
    }
}

impl<'de> Deserialize<'de> for CpuCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl Visitor<'_> for Count {
            type Value = CpuCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs, like 2 or 1.5")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CpuCount, E> {
                Ok(CpuCount::Whole(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuCount, E> {
                // Above i64::MAX: too many CPUs, said by `cpu_millis`.
                Ok(CpuCount::Whole(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CpuCount, E> {
                Ok(CpuCount::Decimal(v))
            }
        }
        deserializer.deserialize_any(Count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_are_kept_to_thousandths_and_bounded() {
        assert_eq!(cpu_millis(CpuCount::Whole(2)), Ok(2000));
        assert_eq!(cpu_millis(CpuCount::Decimal(1.5)), Ok(1500));
        assert_eq!(cpu_millis(CpuCount::Decimal(0.1)), Ok(100));
        assert_eq!(cpu_millis(CpuCount::Decimal(0.01)), Ok(10));
        assert_eq!(cpu_millis(CpuCount::Decimal(2.0)), Ok(2000));
        for (count, why) in [
            (CpuCount::Whole(0), "not a positive number"),
            (CpuCount::Whole(-1), "not a positive number"),
            (CpuCount::Decimal(0.0), "not a positive number"),
            (CpuCount::Decimal(-0.5), "not a positive number"),
            (CpuCount::Decimal(f64::NAN), "not a positive number"),
            (CpuCount::Decimal(f64::INFINITY), "not a positive number"),
            (CpuCount::Decimal(0.005), "below the smallest"),
            (CpuCount::Decimal(0.0015), "finer than a thousandth"),
            (CpuCount::Whole(i64::MAX), "too many CPUs"),
            (CpuCount::Decimal(1e300), "too many CPUs"),
        ] {
            let e = cpu_millis(count).unwrap_err();
            assert!(e.contains(why), "{count}: {e}");
        }
        for millis in [10, 250, 1000, 1500, 2000, 12_345] {
            assert_eq!(
                format_cpus(millis)
                    .parse::<f64>()
                    .map(|x| (x * 1000.0).round() as u64),
                Ok(millis)
            );
        }
        assert_eq!(format_cpus(1500), "1.5");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(10), "0.01");
    }

    #[test]
    fn durations_in_every_unit_and_combination_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "10",
            "10 minutes",
            "1.5h",
            "10d",
            "h",
            "1h 30m",
            "+5s",
            "5S",
            "1m1h",
            "1s1s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
        assert!(parse_duration("10 minutes")
            .unwrap_err()
            .contains("90s, 10m, 1h30m"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("1m1h")
            .unwrap_err()
            .contains("largest first"));
    }

    #[test]
    fn durations_that_overflow_are_refused_not_wrapped() {
        assert!(parse_duration("99999999999999999999h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("9999999999999999h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("18446744073709551615ms").is_ok());
        let max = "5124095576030h25m51s615ms";
        assert_eq!(parse_duration(max), Ok(Duration::from_millis(u64::MAX)));
        assert!(parse_duration("5124095576030h25m51s616ms")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_in_every_unit_parse() {
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("0B"), Ok(0));
    }

    #[test]
    fn malformed_sizes_name_the_accepted_units() {
        let err = parse_size("4GB").unwrap_err();
        assert!(
            err.contains("B, KiB, MiB, GiB, TiB") && err.contains("did you mean 4GiB?"),
            "{err}"
        );
        for bad in [
            "", "4", "GiB", "4 GiB", "4gib", "1.5GiB", "4PiB", "-1B", "4GiBs",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("size"), "{bad}: {err}");
        }
        assert!(parse_size("4").unwrap_err().contains("(no unit)"));
    }

    #[test]
    fn sizes_that_overflow_are_refused_not_wrapped() {
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("99999999999999999999B")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
        assert!(parse_size("16777216TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn formatted_sizes_and_durations_parse_back_to_the_same_value() {
        for bytes in [0, 1, 1023, 1024, 1536 << 20, 16 << 30, 3 << 40, u64::MAX] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
        assert_eq!(format_size(16 << 30), "16GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        for ms in [0, 1, 999, 1000, 90_000, 5_400_000, 3_723_004] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
