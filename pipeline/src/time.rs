//! Timestamps and dates of declared columns: a chrono `format`, and an IANA `timezone` for
//! timestamps written without an offset, resolved across DST switches by `on_ambiguous` (the
//! hour that happens twice in autumn) and `on_nonexistent` (the hour skipped in spring).

use chrono::{NaiveDate, NaiveDateTime, Offset, TimeZone};
use serde::{Deserialize, Serialize};

use crate::values;

/// What a local time that DST makes ambiguous or nonexistent becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolve {
    /// The row is quarantined with the reason.
    #[default]
    Reject,
    /// The earlier of the two instants it can mean.
    Earliest,
    /// The later of the two instants it can mean.
    Latest,
}

/// How a `timestamp` column reads text.
#[derive(Debug, Clone)]
pub struct TimestampRule {
    /// A chrono format; `None`: RFC 3339 / ISO 8601 with or without an offset.
    pub format: Option<String>,
    /// Whether `format` carries an offset (`%z`, `%:z`, …).
    format_has_offset: bool,
    /// The zone of times written without an offset (default UTC).
    pub zone: Option<chrono_tz::Tz>,
    pub on_ambiguous: Resolve,
    pub on_nonexistent: Resolve,
}

impl TimestampRule {
    /// Checks `format` and `timezone`; the message names what is wrong.
    pub fn new(
        format: Option<&str>,
        timezone: Option<&str>,
        on_ambiguous: Resolve,
        on_nonexistent: Resolve,
    ) -> Result<TimestampRule, (&'static str, String)> {
        if let Some(f) = format {
            check_format(f).map_err(|m| ("format", m))?;
        }
        let zone = match timezone {
            None => None,
            Some(z) => Some(z.parse::<chrono_tz::Tz>().map_err(|_| {
                (
                    "timezone",
                    format!("{z:?} is not an IANA time zone (e.g. \"Europe/Berlin\")"),
                )
            })?),
        };
        Ok(TimestampRule {
            format: format.map(String::from),
            format_has_offset: format.is_some_and(has_offset),
            zone,
            on_ambiguous,
            on_nonexistent,
        })
    }

    /// Microseconds since the epoch (UTC), or why `s` is not a timestamp of this column.
    pub fn parse(&self, s: &str) -> Result<i64, String> {
        let bad = || match &self.format {
            Some(f) => format!("{s:?} does not match format {f:?}"),
            None => format!("{s:?} is not a timestamp"),
        };
        let naive = match &self.format {
            Some(f) if self.format_has_offset => {
                return chrono::DateTime::parse_from_str(s, f)
                    .map(|t| t.timestamp_micros())
                    .map_err(|_| bad());
            }
            Some(f) => NaiveDateTime::parse_from_str(s, f).map_err(|_| bad())?,
            None => {
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                    return Ok(t.timestamp_micros());
                }
                match self.zone {
                    // Without a zone: the established reading (offset or UTC).
                    None => return values::parse_timestamp_text(s).ok_or_else(bad),
                    Some(_) => parse_naive(s).ok_or_else(bad)?,
                }
            }
        };
        match self.zone {
            None => Ok(naive.and_utc().timestamp_micros()),
            Some(z) => self.localize(z, naive, s),
        }
    }

    fn localize(&self, z: chrono_tz::Tz, naive: NaiveDateTime, s: &str) -> Result<i64, String> {
        use chrono::LocalResult;
        let pick = |rule: Resolve, a: i64, b: i64, what: &str| match rule {
            Resolve::Reject => Err(format!(
                "{s:?} is {what} in {} (a DST switch); set on_{} to earliest or latest",
                z.name(),
                if what == "ambiguous" {
                    "ambiguous"
                } else {
                    "nonexistent"
                }
            )),
            Resolve::Earliest => Ok(a.min(b)),
            Resolve::Latest => Ok(a.max(b)),
        };
        match z.from_local_datetime(&naive) {
            LocalResult::Single(t) => Ok(t.timestamp_micros()),
            LocalResult::Ambiguous(a, b) => pick(
                self.on_ambiguous,
                a.timestamp_micros(),
                b.timestamp_micros(),
                "ambiguous",
            ),
            LocalResult::None => {
                // The wall time read with the offsets in force before and after the gap.
                let around = |h: i64| {
                    let probe = naive.and_utc() + chrono::Duration::hours(h);
                    let off = z.offset_from_utc_datetime(&probe.naive_utc()).fix();
                    (naive - chrono::Duration::seconds(i64::from(off.local_minus_utc())))
                        .and_utc()
                        .timestamp_micros()
                };
                pick(self.on_nonexistent, around(-6), around(6), "nonexistent")
            }
        }
    }
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.fff]]` without an offset.
fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// Whether a chrono format carries a UTC offset.
pub(crate) fn has_offset(f: &str) -> bool {
    ["%z", "%:z", "%::z", "%#z"].iter().any(|z| f.contains(z))
}

/// Refuses a chrono format with an invalid specifier.
pub(crate) fn check_format(f: &str) -> Result<(), String> {
    let items: Vec<_> = chrono::format::StrftimeItems::new(f).collect();
    if items
        .iter()
        .any(|i| matches!(i, chrono::format::Item::Error))
    {
        return Err(format!("{f:?} is not a valid chrono format"));
    }
    Ok(())
}

/// How a `date` column reads text: a chrono format, else `YYYY-MM-DD`.
#[derive(Debug, Clone, Default)]
pub struct DateRule {
    pub format: Option<String>,
}

impl DateRule {
    pub fn new(format: Option<&str>) -> Result<DateRule, (&'static str, String)> {
        if let Some(f) = format {
            check_format(f).map_err(|m| ("format", m))?;
        }
        Ok(DateRule {
            format: format.map(String::from),
        })
    }

    /// Days since 1970-01-01, or why `s` is not a date of this column.
    pub fn parse(&self, s: &str) -> Result<i32, String> {
        match &self.format {
            None => values::parse_date(s).ok_or_else(|| format!("{s:?} is not a date")),
            Some(f) => NaiveDate::parse_from_str(s, f)
                .map(|d| {
                    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
                    (d - epoch).num_days() as i32
                })
                .map_err(|_| format!("{s:?} does not match format {f:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(ambiguous: Resolve, nonexistent: Resolve) -> TimestampRule {
        TimestampRule::new(
            Some("%d.%m.%Y %H:%M"),
            Some("Europe/Berlin"),
            ambiguous,
            nonexistent,
        )
        .unwrap()
    }

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn berlin_local_times_become_utc_on_both_sides_of_the_switches() {
        let r = berlin(Resolve::Reject, Resolve::Reject);
        // Winter (+01:00) and summer (+02:00), 2026: DST from 29 March to 25 October.
        assert_eq!(r.parse("28.03.2026 12:00"), Ok(utc("2026-03-28T11:00:00Z")));
        assert_eq!(r.parse("29.03.2026 03:30"), Ok(utc("2026-03-29T01:30:00Z")));
        assert_eq!(r.parse("25.10.2026 03:30"), Ok(utc("2026-10-25T02:30:00Z")));
        assert_eq!(r.parse("24.10.2026 02:30"), Ok(utc("2026-10-24T00:30:00Z")));
        // 2027 has other dates (28 March): nothing is hard-coded.
        assert_eq!(r.parse("28.03.2027 03:30"), Ok(utc("2027-03-28T01:30:00Z")));
        assert_eq!(r.parse("27.03.2027 03:30"), Ok(utc("2027-03-27T02:30:00Z")));
    }

    #[test]
    fn the_gap_and_the_doubled_hour_follow_their_rules() {
        let strict = berlin(Resolve::Reject, Resolve::Reject);
        let gap = strict.parse("29.03.2026 02:30").unwrap_err();
        assert!(
            gap.contains("nonexistent") && gap.contains("Europe/Berlin"),
            "{gap}"
        );
        let twice = strict.parse("25.10.2026 02:30").unwrap_err();
        assert!(twice.contains("ambiguous"), "{twice}");

        let early = berlin(Resolve::Earliest, Resolve::Earliest);
        let late = berlin(Resolve::Latest, Resolve::Latest);
        assert_eq!(
            early.parse("25.10.2026 02:30"),
            Ok(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            late.parse("25.10.2026 02:30"),
            Ok(utc("2026-10-25T01:30:00Z"))
        );
        // 02:30 does not exist on 29 March: read with +02:00 (00:30Z) or +01:00 (01:30Z).
        assert_eq!(
            early.parse("29.03.2026 02:30"),
            Ok(utc("2026-03-29T00:30:00Z"))
        );
        assert_eq!(
            late.parse("29.03.2026 02:30"),
            Ok(utc("2026-03-29T01:30:00Z"))
        );
    }

    #[test]
    fn offsets_in_the_text_win_and_bad_settings_are_named() {
        let r = TimestampRule::new(
            None,
            Some("Europe/Berlin"),
            Resolve::Reject,
            Resolve::Reject,
        )
        .unwrap();
        assert_eq!(
            r.parse("2026-07-01T10:00:00Z"),
            Ok(utc("2026-07-01T10:00:00Z"))
        );
        assert_eq!(
            r.parse("2026-07-01 10:00:00"),
            Ok(utc("2026-07-01T08:00:00Z"))
        );
        assert!(r.parse("gestern").unwrap_err().contains("gestern"));
        let plain = TimestampRule::new(None, None, Resolve::Reject, Resolve::Reject).unwrap();
        assert_eq!(
            plain.parse("2026-07-01 10:00:00"),
            Ok(utc("2026-07-01T10:00:00Z"))
        );
        let e = TimestampRule::new(
            None,
            Some("Europe/Berlln"),
            Resolve::Reject,
            Resolve::Reject,
        )
        .unwrap_err();
        assert_eq!(e.0, "timezone");
        assert!(e.1.contains("Berlln"));
        let with_offset = TimestampRule::new(
            Some("%d/%m/%Y %H:%M %z"),
            None,
            Resolve::Reject,
            Resolve::Reject,
        )
        .unwrap();
        assert_eq!(
            with_offset.parse("01/07/2026 12:00 +0200"),
            Ok(utc("2026-07-01T10:00:00Z"))
        );
    }

    #[test]
    fn dates_with_a_format() {
        let d = DateRule::new(Some("%d.%m.%Y")).unwrap();
        assert_eq!(d.parse("01.01.1970"), Ok(0));
        assert_eq!(d.parse("29.02.2024"), Ok(19_782));
        assert!(d.parse("30.02.2024").is_err());
        assert_eq!(DateRule::default().parse("2024-02-29"), Ok(19_782));
    }

    proptest::proptest! {
        /// Every instant of 2020–2030, shown as Berlin wall time and read back with `earliest`,
        /// is itself or (in the doubled hour) the earlier instant with the same wall time.
        #[test]
        fn berlin_wall_time_round_trips(secs in 1_577_836_800i64..1_924_991_999) {
            let z: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
            let t = chrono::DateTime::from_timestamp(secs - secs % 60, 0).unwrap();
            let wall = t.with_timezone(&z).format("%d.%m.%Y %H:%M").to_string();
            let back = berlin(Resolve::Earliest, Resolve::Reject).parse(&wall).unwrap();
            let diff = t.timestamp_micros() - back;
            proptest::prop_assert!(diff == 0 || diff == 3_600_000_000, "{wall}: {diff}");
            let later = berlin(Resolve::Latest, Resolve::Reject).parse(&wall).unwrap();
            proptest::prop_assert!(later == t.timestamp_micros() || later - back == 3_600_000_000);
        }
    }
}
