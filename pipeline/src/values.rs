//! Value-level parsing: text to the typed values a column holds (dates, timestamps, decimals,
//! booleans). Pure functions with no Arrow and no I/O; the column readers and the steps call them
//! row by row, and validation uses [`TimestampFormat::new`] to check a format before anything runs.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// A timestamp format: the strict ISO-8601 form with milliseconds and an offset
/// (`YYYY-MM-DDTHH:MM:SS.mmm±HH:MM`, parsed by hand), RFC 3339, or any chrono format with an offset.
#[derive(Debug, Clone)]
pub enum TimestampFormat {
    IsoMillisOffset,
    Rfc3339,
    Chrono(String),
}

pub const ISO_MILLIS_OFFSET: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";

impl TimestampFormat {
    pub fn new(format: &str) -> Result<Self, String> {
        if format == ISO_MILLIS_OFFSET {
            return Ok(TimestampFormat::IsoMillisOffset);
        }
        if format.eq_ignore_ascii_case("rfc3339") {
            return Ok(TimestampFormat::Rfc3339);
        }
        if !crate::time::has_offset(format) {
            return Err(format!(
                "{format:?} has no UTC offset (%z or %:z); timestamps are converted to UTC from their offset"
            ));
        }
        crate::time::check_format(format)?;
        Ok(TimestampFormat::Chrono(format.to_string()))
    }

    /// Microseconds since the epoch in UTC, or `None` when `s` does not match or is not a real
    /// date and time.
    pub fn parse(&self, s: &str) -> Option<i64> {
        match self {
            TimestampFormat::IsoMillisOffset => parse_iso_millis_offset(s.as_bytes()),
            TimestampFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_micros()),
            TimestampFormat::Chrono(f) => chrono::DateTime::parse_from_str(s, f)
                .ok()
                .map(|t| t.timestamp_micros()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmm±HH:MM`, exactly, with a real calendar date, hours 00–23, minutes and
/// seconds 00–59, offset below 24 h.
pub fn parse_iso_millis_offset(b: &[u8]) -> Option<i64> {
    if b.len() != 29 {
        return None;
    }
    let sep = |i: usize, c: u8| b[i] == c;
    if !(sep(4, b'-')
        && sep(7, b'-')
        && sep(10, b'T')
        && sep(13, b':')
        && sep(16, b':')
        && sep(19, b'.')
        && sep(26, b':'))
    {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let h = digits(&b[11..13])?;
    let mi = digits(&b[14..16])?;
    let s = digits(&b[17..19])?;
    let ms = digits(&b[20..23])?;
    let sign = match b[23] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return None,
    };
    let oh = digits(&b[24..26])?;
    let om = digits(&b[27..29])?;
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || s > 59
        || oh > 23
        || om > 59
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs =
        days * 86_400 + i64::from(h * 3600 + mi * 60 + s) - sign * i64::from(oh * 3600 + om * 60);
    Some(secs * 1_000_000 + i64::from(ms) * 1000)
}

/// Parses a decimal string (`-12.3`, `446.04`, `7`) into an integer scaled by `scale`, rounding
/// half away from zero past `scale` digits (`1.005` → 1.01, `-1.005` → -1.01, as DuckDB and
/// PostgreSQL do). `None` if not a plain decimal or too large for `precision`.
pub fn parse_decimal(s: &str, precision: u8, scale: i8) -> Option<i128> {
    let b = s.as_bytes();
    let (neg, rest) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.iter().chain(frac).all(u8::is_ascii_digit)
        || int.len() > 38
    {
        return None;
    }
    let scale = scale.max(0) as usize;
    let mut v: i128 = 0;
    for &c in int {
        v = v.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    for i in 0..scale {
        let dgt = frac.get(i).map_or(0, |c| c - b'0');
        v = v.checked_mul(10)?.checked_add(i128::from(dgt))?;
    }
    // Half away from zero: the sign is applied after rounding the magnitude.
    if frac.get(scale).is_some_and(|&d| d >= b'5') {
        v = v.checked_add(1)?;
    }
    if v >= 10i128.pow(u32::from(precision)) {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// A timestamp value of a `timestamp` column: RFC 3339 with an offset, or without one (then UTC),
/// with `T` or a space between date and time.
pub fn parse_timestamp_text(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "TRUE" | "True" | "1" | "t" => Some(true),
        "false" | "FALSE" | "False" | "0" | "f" => Some(false),
        _ => None,
    }
}

/// `YYYY-MM-DD` → days since the epoch.
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let m = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

/// How one declared column reads text before its type parses it: which texts are null, the
/// default for a null, and the locale of numbers.
#[derive(Debug, Clone)]
pub struct TextRules {
    pub null_values: Vec<String>,
    /// Whether `null_values` was set in the file. JSON strings are compared with it only then
    /// (a JSON `""` stays an empty string by default; JSON has its own `null`).
    pub null_values_set: bool,
    /// The default as text, parsed like a value of the column.
    pub default: Option<String>,
    pub decimal_separator: Option<char>,
    pub thousands_separator: Option<char>,
    /// A `timestamp` column's format and zone, when it sets them.
    pub timestamp: Option<crate::time::TimestampRule>,
    /// A `date` column's format, when it sets one.
    pub date: Option<crate::time::DateRule>,
}

impl Default for TextRules {
    fn default() -> Self {
        TextRules {
            null_values: vec![String::new()],
            null_values_set: false,
            default: None,
            decimal_separator: None,
            thousands_separator: None,
            timestamp: None,
            date: None,
        }
    }
}

impl TextRules {
    /// Whether text `s` (a CSV field) reads as null. Called for every cell: an empty field is
    /// told by length alone (equal-length slices compare through a `memcmp` call, even at
    /// length 0, which was ~4 % of a CSV shard's time).
    #[inline]
    pub fn is_null(&self, s: &str) -> bool {
        self.null_values
            .iter()
            .any(|n| n.len() == s.len() && (s.is_empty() || n == s))
    }

    /// Whether a JSON string reads as null: only when `null_values` was set.
    #[inline]
    pub fn is_null_json(&self, s: &str) -> bool {
        self.null_values_set && self.is_null(s)
    }

    /// Whether numbers need rewriting before they parse.
    #[inline]
    pub fn has_locale(&self) -> bool {
        self.decimal_separator.is_some_and(|c| c != '.') || self.thousands_separator.is_some()
    }

    /// A number in this column's locale rewritten with `.` as the decimal point and no grouping
    /// (`1.234,56` → `1234.56` with `,` and `.`). Text without either character is returned as
    /// is, so the common case does not allocate.
    pub fn number<'a>(&self, s: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.has_locale() {
            return s.into();
        }
        let dec = self.decimal_separator.unwrap_or('.');
        let thou = self.thousands_separator;
        if !s.contains(|c| c == dec || Some(c) == thou) {
            return s.into();
        }
        s.chars()
            .filter(|&c| Some(c) != thou)
            .map(|c| if c == dec { '.' } else { c })
            .collect::<String>()
            .into()
    }
}

/// Whether `s` is one JSON value (an object, array, string, number, bool or null).
pub fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_is_recognised() {
        for ok in [
            "{\"a\":[1,2]}",
            "[]",
            "\"x\"",
            "12.5",
            "true",
            "null",
            " {} ",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in ["", "{", "abc", "{\"a\":1} x", "'x'"] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn iso_timestamps_follow_the_workload_rules() {
        let t = |s: &str| parse_iso_millis_offset(s.as_bytes());
        // 2025-05-01T12:00:00.123+02:00 == 10:00:00.123Z
        assert_eq!(
            t("2025-05-01T12:00:00.123+02:00"),
            Some(1_746_093_600_123_000)
        );
        assert_eq!(
            t("2025-05-01T04:30:00.000-05:30"),
            Some(1_746_093_600_000_000)
        );
        assert_eq!(
            t("2025-05-01T00:30:00.000+05:30"),
            Some(1_746_039_600_000_000)
        );
        // every anomaly in WORKLOAD.md is invalid
        for bad in [
            "",
            "N/A",
            "not-a-timestamp",
            "2025-13-01T10:00:00.000+00:00",
            "2025-02-30T10:00:00.000+00:00",
            "2025-05-01 10:00:00",
            "1746093600",
            "2025-05-01T24:00:00.000+00:00",
            "2025-05-01T10:60:00.000+00:00",
            "2025-05-01T10:00:60.000+00:00",
            "2025-05-01T10:00:00.00+00:00",
            "2025-05-01T10:00:00.000Z",
            "2025-05-01T10:00:00.000+0000",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        assert_eq!(
            t("2024-02-29T00:00:00.000+00:00"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(t("2025-02-29T00:00:00.000+00:00"), None);
    }

    /// Regression (issue 9): decimals rounded half to even (`1,005` → 1.00) where DuckDB and
    /// PostgreSQL give 1.01.
    #[test]
    fn regression_decimals_round_half_away_from_zero() {
        assert_eq!(parse_decimal("1.005", 18, 2), Some(101));
        assert_eq!(parse_decimal("-1.005", 18, 2), Some(-101));
        assert_eq!(parse_decimal("0.125", 18, 2), Some(13));
        assert_eq!(parse_decimal("2.5", 18, 0), Some(3));
        assert_eq!(parse_decimal("-2.5", 18, 0), Some(-3));
        assert_eq!(parse_decimal("2.4999", 18, 0), Some(2));
    }

    #[test]
    fn locale_numbers_are_rewritten_only_when_they_need_it() {
        let de = TextRules {
            decimal_separator: Some(','),
            thousands_separator: Some('.'),
            ..TextRules::default()
        };
        assert_eq!(de.number("1.234,56"), "1234.56");
        assert_eq!(de.number("-0,5"), "-0.5");
        assert_eq!(de.number("7"), "7");
        assert!(matches!(de.number("7"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(parse_decimal(&de.number("1,005"), 18, 2), Some(101));
        let plain = TextRules::default();
        assert!(!plain.has_locale());
        assert_eq!(
            plain.number("1,5"),
            "1,5",
            "no locale: commas are left for the parser to refuse"
        );
        assert!(plain.is_null("") && !plain.is_null("N/A"));
    }

    #[test]
    fn null_values_match_whole_fields_only() {
        let r = TextRules {
            null_values: vec!["".into(), "NA".into(), "-".into()],
            ..TextRules::default()
        };
        assert!(r.is_null("") && r.is_null("NA") && r.is_null("-"));
        assert!(!r.is_null("NB") && !r.is_null("N") && !r.is_null("NAN") && !r.is_null(" "));
        let none = TextRules {
            null_values: vec![],
            ..TextRules::default()
        };
        assert!(!none.is_null("") && !none.is_null("NA"));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("446.04", 18, 2), Some(44_604));
        assert_eq!(parse_decimal("12.3", 18, 2), Some(1230));
        assert_eq!(parse_decimal("-3", 18, 2), Some(-300));
        assert_eq!(parse_decimal("0.135", 18, 2), Some(14));
        assert_eq!(parse_decimal("0.134999", 18, 2), Some(13));
        assert_eq!(
            parse_decimal("99.995", 4, 2),
            None,
            "rounds up past the precision"
        );
        assert_eq!(parse_decimal(".5", 18, 2), Some(50));
        assert_eq!(parse_decimal("abc", 18, 2), None);
        assert_eq!(parse_decimal("1e3", 18, 2), None);
        assert_eq!(parse_decimal("", 18, 2), None);
        assert_eq!(parse_decimal("-", 18, 2), None);
        assert_eq!(parse_decimal("10000000000000000", 18, 2), None);
    }

    /// A reference by other means: all digits as one integer, then integer division with a
    /// half-up remainder test.
    fn reference(int: u64, frac: &str, neg: bool, scale: u32) -> i128 {
        let digits = format!("{int}{frac}");
        let n: i128 = digits.parse().unwrap();
        let k = frac.len() as u32;
        let scaled = if k <= scale {
            n * 10i128.pow(scale - k)
        } else {
            let d = 10i128.pow(k - scale);
            let (q, r) = (n / d, n % d);
            if 2 * r >= d { q + 1 } else { q }
        };
        if neg { -scaled } else { scaled }
    }

    proptest::proptest! {
        #[test]
        fn decimal_parsing_matches_the_reference(
            int in 0u64..1_000_000_000_000,
            frac in "[0-9]{0,8}",
            neg in proptest::bool::ANY,
            scale in 0u32..6,
        ) {
            let text = format!("{}{int}{}{frac}", if neg { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
            let want = reference(int, &frac, neg, scale);
            let got = parse_decimal(&text, 38, scale as i8);
            proptest::prop_assert_eq!(got, Some(want), "{}", text);
            // Within a smaller precision: the same value, or None when it does not fit.
            let fits = want.unsigned_abs() < 10u128.pow(12 + scale);
            proptest::prop_assert_eq!(parse_decimal(&text, 12 + scale as u8, scale as i8), fits.then_some(want));
        }
    }
}
