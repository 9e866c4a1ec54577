//! `[source] time_template`: the time dimension of a file source, read from its object keys.
//!
//! The template is a chrono format (`%Y/%m/%d/`, `dt=%Y-%m-%d/%H/`) matched against the start of
//! a key relative to the source location; what follows the match is ignored. Fields not in the
//! template are the earliest they can be (no `%H`: midnight; no `%d`: the first of the month),
//! so a key's time is the start of the period its folder holds.

use chrono::format::{Item, Parsed, StrftimeItems, parse_and_remainder};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

/// A validated time template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeTemplate {
    text: String,
}

impl TimeTemplate {
    /// Refuses a template chrono cannot read, or one without a year.
    pub fn new(text: &str) -> Result<TimeTemplate, String> {
        if StrftimeItems::new(text).any(|i| matches!(i, Item::Error)) {
            return Err(format!("{text:?} is not a chrono format"));
        }
        if !(text.contains("%Y") || text.contains("%F") || text.contains("%s")) {
            return Err(format!(
                "{text:?} has no year (%Y, %F): a key's time cannot be read from it"
            ));
        }
        Ok(TimeTemplate { text: text.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The time a key (relative to the source location) belongs to, or `None` when its start
    /// does not match the template.
    pub fn time_of(&self, key: &str) -> Option<NaiveDateTime> {
        let mut parsed = Parsed::new();
        parse_and_remainder(&mut parsed, key, StrftimeItems::new(&self.text)).ok()?;
        if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
            return Some(t);
        }
        if parsed.month.is_none() && parsed.ordinal.is_none() && parsed.isoweek.is_none() {
            parsed.set_month(1).ok()?;
        }
        if parsed.day.is_none() && parsed.ordinal.is_none() && parsed.weekday.is_none() {
            parsed.set_day(1).ok()?;
        }
        if parsed.hour_mod_12().is_some() && parsed.minute().is_none() {
            parsed.set_minute(0).ok()?;
        }
        let date: NaiveDate = parsed.to_naive_date().ok()?;
        let time = parsed.to_naive_time().unwrap_or(NaiveTime::MIN);
        Some(date.and_time(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn keys_are_dated_by_the_start_of_their_path() {
        let t = TimeTemplate::new("%Y/%m/%d/").unwrap();
        assert_eq!(
            t.time_of("2026/11/02/part-1.ndjson"),
            Some(at("2026-11-02 00:00"))
        );
        assert_eq!(t.time_of("2026/11/02/"), Some(at("2026-11-02 00:00")));
        assert_eq!(t.time_of("2026/13/02/x"), None, "no 13th month");
        assert_eq!(t.time_of("latest/x.ndjson"), None);
        assert_eq!(t.time_of("x/2026/11/02/a"), None, "matched from the start");
        let hourly = TimeTemplate::new("dt=%Y-%m-%d/hour=%H/").unwrap();
        assert_eq!(
            hourly.time_of("dt=2026-03-29/hour=02/a.csv.gz"),
            Some(at("2026-03-29 02:00"))
        );
        let monthly = TimeTemplate::new("%Y-%m/").unwrap();
        assert_eq!(monthly.time_of("2026-02/a"), Some(at("2026-02-01 00:00")));
        let yearly = TimeTemplate::new("year=%Y/").unwrap();
        assert_eq!(yearly.time_of("year=2025/a"), Some(at("2025-01-01 00:00")));
    }

    #[test]
    fn templates_chrono_cannot_read_or_without_a_year_are_refused() {
        assert!(
            TimeTemplate::new("%Y/%Q/")
                .unwrap_err()
                .contains("not a chrono format")
        );
        assert!(TimeTemplate::new("%m/%d/").unwrap_err().contains("no year"));
        assert!(TimeTemplate::new("%F/").is_ok());
    }
}
