//! `[source.http]`: an HTTP JSON API read page by page — what the keys say, their pure checks,
//! and the pure helpers the planner and the extractor share (JSON paths into a page or a record,
//! window bounds as the API wants them, watermark values read from records).
//!
//! A run of an HTTP source is one shard per time window (`window_from_param` /
//! `window_to_param`, cut by `window`), or one shard when the API has no windows. A worker pulls
//! its window's pages in order (the `pagination` rule gives the next request), writes every
//! record as one NDJSON line into the raw zone, and that object then goes through the same
//! curate/transform path as a file.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// `[source.http]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// The first page's URL (`https://api.example.com/v1/orders?status=all`).
    pub url: String,
    /// Where a page's array of records is: a dotted path (`data`, `result.items`, `data.0.rows`);
    /// empty (the default) when the page itself is the array.
    #[serde(default)]
    pub records_path: String,
    /// How the next page is asked for; default: one page only. A table with `kind`, or just
    /// the kind's name for the kinds without keys (`pagination = "link_header"`).
    #[serde(default, deserialize_with = "pagination_table_or_name")]
    pub pagination: Pagination,
    /// Headers sent with every request (`Accept`, an API version).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The environment variable whose value is sent as the `Authorization` header (`Bearer …`):
    /// a secret is never written in the file.
    #[serde(default)]
    pub auth_header_env: Option<String>,
    /// The header `auth_header_env`'s value goes in.
    #[serde(default = "default_auth_header")]
    pub auth_header_name: String,
    /// Requests per second at most, per extracting process.
    #[serde(default)]
    pub rate_limit_per_sec: Option<f64>,
    /// Retries of one request answered 429, 5xx, invalid JSON, or not answered at all.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The first retry's wait; it doubles each time (at most a minute), unless the answer says
    /// `Retry-After`.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: String,
    /// The longest `Retry-After` honoured; a longer one fails the request.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: String,
    /// How long one request may take.
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The query parameter that takes a window's start (incremental runs and backfills).
    #[serde(default)]
    pub window_from_param: Option<String>,
    /// The query parameter that takes a window's end (exclusive).
    #[serde(default)]
    pub window_to_param: Option<String>,
    /// Each run and backfill is cut into windows this wide (`"1d"`, `"6h"`); default one window.
    #[serde(default)]
    pub window: Option<String>,
    /// How a window bound is written: `rfc3339` (`2026-11-02T00:00:00Z`, the default),
    /// `unix` (seconds), `unix_ms`, or a chrono format (`"%Y-%m-%d"`).
    #[serde(default)]
    pub window_format: Option<String>,
    /// Where the first incremental run starts (a date or a timestamp); without it the first run
    /// sends no start bound.
    #[serde(default)]
    pub start: Option<String>,
    /// A record field (dotted path) holding the record's time (`updated_at`): the pipeline's
    /// watermark becomes the latest value loaded, and the next run starts there.
    #[serde(default)]
    pub watermark_field: Option<String>,
    /// Re-read this far behind the watermark (`"2h"`), for records the API publishes late.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Pages read at most per window (a guard against an API that never stops paginating).
    #[serde(default = "default_max_pages")]
    pub max_pages: NonZeroU32,
}

fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_max_retries() -> u32 {
    5
}
fn default_retry_backoff() -> String {
    "1s".into()
}
fn default_max_retry_after() -> String {
    "5m".into()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_max_pages() -> NonZeroU32 {
    NonZeroU32::new(100_000).expect("non-zero")
}

/// `[source.http.pagination]`: how the next page is asked for. A page with no records ends
/// `page` and `offset` pagination; the others end when the page names no next page.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One page.
    #[default]
    None,
    /// The page holds the next page's URL (absolute or relative to the page's) at `next_path`;
    /// absent, null or empty ends.
    NextLink { next_path: String },
    /// The `Link` header's `rel="next"` URL (RFC 8288, as GitHub sends it); absent ends.
    LinkHeader,
    /// The page holds a cursor at `cursor_path`, sent back as the query parameter
    /// `cursor_param`; absent, null, empty or repeated ends.
    Cursor {
        cursor_path: String,
        cursor_param: String,
    },
    /// Numbered pages: `page_param` from `first_page` up; with `size` (sent as `size_param`
    /// when given), a page shorter than `size` is the last.
    Page {
        #[serde(default = "default_page_param")]
        page_param: String,
        #[serde(default = "default_first_page")]
        first_page: u64,
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    /// `offset_param` from 0 by the records read, `size_param` = `size`; a page shorter than
    /// `size` is the last.
    Offset {
        #[serde(default = "default_offset_param")]
        offset_param: String,
        #[serde(default = "default_limit_param")]
        size_param: String,
        size: u64,
    },
}

/// `pagination = "link_header"` reads as `pagination = { kind = "link_header" }`.
fn pagination_table_or_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Pagination, D::Error> {
    use serde::de::Error;
    let v = toml::Value::deserialize(d)?;
    let table = match v {
        toml::Value::String(kind) => {
            let mut t = toml::Table::new();
            t.insert("kind".into(), toml::Value::String(kind));
            toml::Value::Table(t)
        }
        other => other,
    };
    Pagination::deserialize(table).map_err(D::Error::custom)
}

fn default_page_param() -> String {
    "page".into()
}
fn default_first_page() -> u64 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}

/// How window bounds are written into the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundFormat {
    Rfc3339,
    Unix,
    UnixMs,
    Chrono(String),
}

impl BoundFormat {
    pub fn parse(s: Option<&str>) -> Result<BoundFormat, String> {
        Ok(match s {
            None | Some("rfc3339") => BoundFormat::Rfc3339,
            Some("unix") => BoundFormat::Unix,
            Some("unix_ms") => BoundFormat::UnixMs,
            Some(f) => {
                use chrono::format::{Item, StrftimeItems};
                if f.is_empty() || StrftimeItems::new(f).any(|i| matches!(i, Item::Error)) {
                    return Err(format!(
                        "{f:?} is not rfc3339, unix, unix_ms or a chrono format (\"%Y-%m-%d\")"
                    ));
                }
                BoundFormat::Chrono(f.to_string())
            }
        })
    }

    /// A bound (UTC) as the API reads it.
    pub fn format(&self, t: NaiveDateTime) -> String {
        match self {
            BoundFormat::Rfc3339 => t.and_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            BoundFormat::Unix => t.and_utc().timestamp().to_string(),
            BoundFormat::UnixMs => t.and_utc().timestamp_millis().to_string(),
            BoundFormat::Chrono(f) => t.format(f).to_string(),
        }
    }
}

impl HttpSource {
    /// Whether runs are cut into time windows (the API takes a window's start).
    pub fn windowed(&self) -> bool {
        self.window_from_param.is_some() || self.window_to_param.is_some()
    }

    pub fn bound_format(&self) -> BoundFormat {
        BoundFormat::parse(self.window_format.as_deref()).unwrap_or(BoundFormat::Rfc3339)
    }

    /// `window` (validated; `None` when runs are one window).
    pub fn window(&self) -> Option<std::time::Duration> {
        self.window
            .as_deref()
            .and_then(|w| humantime::parse_duration(w).ok())
    }

    /// `lookback` (validated; zero when not given).
    pub fn lookback(&self) -> std::time::Duration {
        duration_or(self.lookback.as_deref(), std::time::Duration::ZERO)
    }

    pub fn retry_backoff(&self) -> std::time::Duration {
        duration_or(Some(&self.retry_backoff), std::time::Duration::from_secs(1))
    }

    pub fn max_retry_after(&self) -> std::time::Duration {
        duration_or(
            Some(&self.max_retry_after),
            std::time::Duration::from_secs(300),
        )
    }

    pub fn timeout(&self) -> std::time::Duration {
        duration_or(Some(&self.timeout), std::time::Duration::from_secs(30))
    }

    /// `start` (validated).
    pub fn start(&self) -> Option<NaiveDateTime> {
        self.start.as_deref().and_then(parse_instant)
    }

    /// The pure checks of the section; errors name the key (under `source.http.`).
    pub fn check(&self) -> Result<(), (String, String)> {
        self.check_request()
            .and_then(|()| self.check_durations())
            .and_then(|()| self.check_windows())
            .and_then(|()| {
                self.pagination
                    .check()
                    .map_err(|(k, m)| (format!("pagination.{k}"), m))
            })
            .map_err(|(k, m)| (format!("source.http.{k}"), m))
    }

    /// The URL, the credential variable, the headers and the rate.
    fn check_request(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => {
                let scheme = u.scheme();
                return err(
                    "url",
                    format!("{:?}: scheme {scheme:?} is not http or https", self.url),
                );
            }
            Err(e) => return err("url", format!("{:?} is not a URL: {e}", self.url)),
        }
        if let Some(v) = &self.auth_header_env
            && !is_env_name(v)
        {
            return err(
                "auth_header_env",
                format!(
                    "{v:?} must name an environment variable (letters, digits, '_'); a secret is never written in the file"
                ),
            );
        }
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case(&self.auth_header_name) && self.auth_header_env.is_some() {
                return err(
                    "headers",
                    format!("{name:?} is set by auth_header_env; give it once"),
                );
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic() && c != ':') {
                return err("headers", format!("{name:?} is not a header name"));
            }
            if value.chars().any(|c| c == '\r' || c == '\n') {
                return err("headers", format!("the value of {name:?} has a line break"));
            }
        }
        match self.rate_limit_per_sec {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                err("rate_limit_per_sec", format!("{r} must be more than zero"))
            }
            _ => Ok(()),
        }
    }

    /// Every duration key reads as one (`window` and `timeout` longer than zero).
    fn check_durations(&self) -> Result<(), (String, String)> {
        for (k, v) in [
            ("retry_backoff", Some(&self.retry_backoff)),
            ("max_retry_after", Some(&self.max_retry_after)),
            ("timeout", Some(&self.timeout)),
            ("window", self.window.as_ref()),
            ("lookback", self.lookback.as_ref()),
        ] {
            let Some(v) = v else { continue };
            match humantime::parse_duration(v) {
                Ok(d) if d.is_zero() && matches!(k, "window" | "timeout") => {
                    return Err((k.into(), format!("{v:?} must be longer than zero")));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err((
                        k.into(),
                        format!("{v:?} is not a duration (\"30s\", \"2h\", \"1d\"): {e}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The window keys: a format, a start, and only with a window parameter.
    fn check_windows(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if let Err(e) = BoundFormat::parse(self.window_format.as_deref()) {
            return err("window_format", e);
        }
        if let Some(s) = &self.start
            && parse_instant(s).is_none()
        {
            return err(
                "start",
                format!("{s:?} is not a date (2026-11-02) or a timestamp (2026-11-02T06:00:00Z)"),
            );
        }
        if !self.windowed() {
            for (k, given) in [
                ("window", self.window.is_some()),
                ("window_format", self.window_format.is_some()),
                ("start", self.start.is_some()),
                ("lookback", self.lookback.is_some()),
            ] {
                if given {
                    return err(
                        k,
                        "needs window_from_param or window_to_param: the API is asked for a time window".into(),
                    );
                }
            }
        }
        for (k, p) in [
            ("window_from_param", &self.window_from_param),
            ("window_to_param", &self.window_to_param),
        ] {
            if p.as_deref().is_some_and(str::is_empty) {
                return err(k, "must not be empty".into());
            }
        }
        match &self.watermark_field {
            Some(f) if f.trim().is_empty() => err("watermark_field", "must not be empty".into()),
            _ => Ok(()),
        }
    }
}

impl Pagination {
    fn check(&self) -> Result<(), (String, String)> {
        let empty = |k: &str, v: &str| {
            if v.trim().is_empty() {
                Err((k.to_string(), "must not be empty".to_string()))
            } else {
                Ok(())
            }
        };
        match self {
            Pagination::None | Pagination::LinkHeader => Ok(()),
            Pagination::NextLink { next_path } => empty("next_path", next_path),
            Pagination::Cursor {
                cursor_path,
                cursor_param,
            } => empty("cursor_path", cursor_path).and(empty("cursor_param", cursor_param)),
            Pagination::Page {
                page_param,
                size_param,
                size,
                ..
            } => {
                if size_param.is_some() && size.is_none() {
                    return Err(("size".into(), "needed with size_param".into()));
                }
                if *size == Some(0) {
                    return Err(("size".into(), "must be more than zero".into()));
                }
                empty("page_param", page_param)
            }
            Pagination::Offset {
                offset_param,
                size_param,
                size,
            } => {
                if *size == 0 {
                    return Err(("size".into(), "must be more than zero".into()));
                }
                empty("offset_param", offset_param).and(empty("size_param", size_param))
            }
        }
    }
}

fn duration_or(s: Option<&str>, default: std::time::Duration) -> std::time::Duration {
    s.and_then(|s| humantime::parse_duration(s).ok())
        .unwrap_or(default)
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The value at a dotted path (`data.items`, `meta.next`, `rows.0`); the empty path is the value
/// itself. A segment that is a number also indexes an array.
pub fn json_at<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let path = path.trim().trim_start_matches("$.").trim_start_matches('$');
    if path.is_empty() {
        return Some(v);
    }
    // `links[0].href` is `links.0.href`.
    let path = path.replace('[', ".").replace(']', "");
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(v, |at, seg| match at {
            serde_json::Value::Object(m) => m.get(seg),
            serde_json::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
}

/// A date, a timestamp (UTC unless it carries an offset) or RFC 3339, as a UTC instant.
pub fn parse_instant(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.naive_utc());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.naive_utc());
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_time(chrono::NaiveTime::MIN))
}

/// A record's watermark value as an instant: a timestamp or date string, or a number of Unix
/// seconds (milliseconds when it is past the year 5138 as seconds).
pub fn watermark_value(v: &serde_json::Value) -> Option<NaiveDateTime> {
    match v {
        serde_json::Value::String(s) => parse_instant(s),
        serde_json::Value::Number(n) => {
            let x = n.as_f64()?;
            let (secs, nanos) = if x.abs() >= 1e11 {
                ((x / 1000.0).floor() as i64, ((x % 1000.0) * 1e6) as u32)
            } else {
                (x.floor() as i64, ((x - x.floor()) * 1e9) as u32)
            };
            DateTime::<Utc>::from_timestamp(secs, nanos).map(|t| t.naive_utc())
        }
        _ => None,
    }
}

/// An instant as a watermark is stored: RFC 3339 in UTC with the fraction it needs.
pub fn watermark_text(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The later of two stored watermarks (either may be absent; text that is not an instant loses).
pub fn later_watermark(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a.and_then(parse_instant), b.and_then(parse_instant)) {
        (Some(x), Some(y)) => Some(watermark_text(x.max(y))),
        (Some(x), None) => Some(watermark_text(x)),
        (None, Some(y)) => Some(watermark_text(y)),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HttpSource, String> {
        toml::from_str::<HttpSource>(toml_text).map_err(|e| e.to_string())
    }

    fn t(s: &str) -> NaiveDateTime {
        parse_instant(s).unwrap()
    }

    #[test]
    fn every_pagination_kind_reads_from_its_table_and_unknown_keys_are_refused() {
        let h =
            parse("url = \"https://x.test/a\"\npagination = { kind = \"link_header\" }").unwrap();
        assert_eq!(h.pagination, Pagination::LinkHeader);
        let h = parse("url = \"https://x.test/a\"\n[pagination]\nkind = \"page\"\nsize = 50\nsize_param = \"per_page\"").unwrap();
        assert_eq!(
            h.pagination,
            Pagination::Page {
                page_param: "page".into(),
                first_page: 1,
                size_param: Some("per_page".into()),
                size: Some(50)
            }
        );
        let h = parse("url = \"https://x.test/a\"\npagination = { kind = \"cursor\", cursor_path = \"meta.next\", cursor_param = \"after\" }").unwrap();
        assert!(matches!(h.pagination, Pagination::Cursor { .. }));
        assert_eq!(
            parse("url = \"https://x.test/a\"").unwrap().pagination,
            Pagination::None
        );
        let h = parse("url = \"https://x.test/a\"\npagination = \"link_header\"").unwrap();
        assert_eq!(
            h.pagination,
            Pagination::LinkHeader,
            "a kind without keys by its name"
        );
        let e = parse("url = \"https://x.test/a\"\npagination = \"cursor\"").unwrap_err();
        assert!(e.contains("cursor_path"), "{e}");
        let e = parse(
            "url = \"https://x.test/a\"\npagination = { kind = \"next_link\", next = \"a\" }",
        )
        .unwrap_err();
        assert!(e.contains("next"), "{e}");
        let e = parse("url = \"https://x.test/a\"\npagination = { kind = \"pages\" }").unwrap_err();
        assert!(e.contains("pages"), "{e}");
        let e = parse("url = \"https://x.test/a\"\nrate_limit = 2").unwrap_err();
        assert!(e.contains("rate_limit"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let base = "url = \"https://x.test/a\"\n";
        for (extra, key) in [
            ("", ""),
            (
                "auth_header_env = \"API TOKEN\"",
                "source.http.auth_header_env",
            ),
            ("rate_limit_per_sec = 0.0", "source.http.rate_limit_per_sec"),
            (
                "window_from_param = \"since\"\nwindow = \"daily\"",
                "source.http.window",
            ),
            ("window = \"1d\"", "source.http.window"),
            (
                "window_from_param = \"since\"\nstart = \"last week\"",
                "source.http.start",
            ),
            (
                "window_from_param = \"since\"\nwindow_format = \"%Q\"",
                "source.http.window_format",
            ),
            (
                "pagination = { kind = \"offset\", size = 0 }",
                "source.http.pagination.size",
            ),
            (
                "pagination = { kind = \"next_link\", next_path = \"\" }",
                "source.http.pagination.next_path",
            ),
            ("headers = { \"X-A\" = \"1\\n2\" }", "source.http.headers"),
            ("timeout = \"0s\"", "source.http.timeout"),
        ] {
            let got = parse(&format!("{base}{extra}")).unwrap().check();
            if key.is_empty() {
                assert_eq!(got, Ok(()));
            } else {
                assert_eq!(got.unwrap_err().0, key, "{extra}");
            }
        }
        let e = parse("url = \"ftp://x.test/a\"")
            .unwrap()
            .check()
            .unwrap_err();
        assert!(e.1.contains("ftp"), "{e:?}");
        let e = parse("url = \"not a url\"").unwrap().check().unwrap_err();
        assert_eq!(e.0, "source.http.url");
    }

    #[test]
    fn json_paths_reach_into_objects_and_arrays() {
        let v = serde_json::json!({"data": {"items": [{"id": 1}, {"id": 2}]}, "next": null});
        assert_eq!(json_at(&v, "data.items.1.id"), Some(&serde_json::json!(2)));
        assert_eq!(
            json_at(&v, "$.data.items[1].id"),
            Some(&serde_json::json!(2))
        );
        assert_eq!(
            json_at(&v, "$.data.items.0.id"),
            Some(&serde_json::json!(1))
        );
        assert_eq!(json_at(&v, ""), Some(&v));
        assert_eq!(json_at(&v, "data.nope"), None);
        assert_eq!(json_at(&v, "next"), Some(&serde_json::Value::Null));
    }

    #[test]
    fn window_bounds_are_written_as_the_api_reads_them() {
        let at = t("2026-11-02T06:30:00");
        assert_eq!(
            BoundFormat::parse(None).unwrap().format(at),
            "2026-11-02T06:30:00Z"
        );
        assert_eq!(
            BoundFormat::parse(Some("unix")).unwrap().format(at),
            "1793601000"
        );
        assert_eq!(
            BoundFormat::parse(Some("unix_ms")).unwrap().format(at),
            "1793601000000"
        );
        assert_eq!(
            BoundFormat::parse(Some("%Y-%m-%d")).unwrap().format(at),
            "2026-11-02"
        );
    }

    #[test]
    fn watermark_values_are_instants_and_the_later_one_wins() {
        assert_eq!(
            watermark_value(&serde_json::json!("2026-11-02T06:30:00+01:00")),
            Some(t("2026-11-02T05:30:00"))
        );
        assert_eq!(
            watermark_value(&serde_json::json!("2026-11-02")),
            Some(t("2026-11-02"))
        );
        assert_eq!(
            watermark_value(&serde_json::json!(1793601000)),
            Some(t("2026-11-02T06:30:00"))
        );
        assert_eq!(
            watermark_value(&serde_json::json!(1793601000500u64)),
            Some(t("2026-11-02T06:30:00.5"))
        );
        assert_eq!(watermark_value(&serde_json::json!("soon")), None);
        assert_eq!(watermark_value(&serde_json::json!(true)), None);
        assert_eq!(
            watermark_text(t("2026-11-02T06:30:00.5")),
            "2026-11-02T06:30:00.500Z"
        );
        // Text order would put "…00.5Z" before "…00Z"; instants do not.
        assert_eq!(
            later_watermark(Some("2026-11-02T06:30:00Z"), Some("2026-11-02T06:30:00.5Z"))
                .as_deref(),
            Some("2026-11-02T06:30:00.500Z")
        );
        assert_eq!(
            later_watermark(None, Some("2026-11-02")).as_deref(),
            Some("2026-11-02T00:00:00Z")
        );
        assert_eq!(later_watermark(Some("x"), None), None);
    }
}
