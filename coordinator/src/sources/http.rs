//! Planning a run of an HTTP API source: one shard per time window.
//!
//! An incremental run asks for `[watermark − lookback, now)` (the first run from `start`, or
//! with no start bound when there is none), cut into windows of `window`; each window is one
//! shard whose worker pulls its pages into the raw zone. A backfill's run asks for its own range
//! instead. An API without window parameters is one shard that reads everything.
//!
//! What the watermark becomes: the planning time when the API is windowed, or, with
//! `watermark_field`, the latest value of that field the run's shards read (folded in when the
//! run completes, never earlier than the old watermark). Backfill runs never move it.

use anyhow::Context;
use backends::state::StateStore;
use chrono::{NaiveDateTime, Timelike};
use pipeline::Pipeline;
use pipeline::http::{HttpSource, parse_instant, watermark_text};
use protocol::{Extract, HttpRange, ShardDescriptor, ShardPlan};

use super::{SourceRun, read_watermark};
use crate::backfill::{Window, windows};
use crate::run::new_run_id;

/// One window's bounds (`None`: not sent).
pub type Bounds = (Option<NaiveDateTime>, Option<NaiveDateTime>);

/// The windows a run asks the API for (see the module docs); empty when the watermark is not
/// before `now`.
pub fn run_windows(
    http: &HttpSource,
    watermark: Option<NaiveDateTime>,
    backfill: Option<Window>,
    now: NaiveDateTime,
) -> anyhow::Result<Vec<Bounds>> {
    if !http.windowed() {
        return Ok(vec![(None, None)]);
    }
    let (from, to) = match backfill {
        Some(w) => (w.from, w.to),
        None => {
            let lookback = chrono::Duration::from_std(http.lookback()).context("lookback")?;
            match watermark.map(|w| w - lookback).or(http.start()) {
                None => return Ok(vec![(None, Some(now))]),
                Some(from) if from >= now => return Ok(Vec::new()),
                Some(from) => (from, now),
            }
        }
    };
    let width = http
        .window()
        .unwrap_or_else(|| (to - from).to_std().unwrap_or_default());
    Ok(windows(from, to, width)?
        .into_iter()
        .map(|w| (Some(w.from), Some(w.to)))
        .collect())
}

/// What the pipeline's watermark is planned to become (see the module docs).
pub fn planned_watermark(
    http: &HttpSource,
    old: Option<&str>,
    backfill: bool,
    now: NaiveDateTime,
) -> Option<String> {
    if backfill {
        None
    } else if http.watermark_field.is_some() {
        old.map(String::from)
    } else if http.windowed() {
        pipeline::http::later_watermark(old, Some(&watermark_text(now)))
    } else {
        None
    }
}

/// Plans a run of the pipeline's API source from its watermark in `state` (or the backfill
/// window), as of `now`.
pub(crate) async fn plan_http_run(
    p: &Pipeline,
    state: &dyn StateStore,
    backfill: Option<Window>,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<SourceRun> {
    let http = p
        .file
        .source
        .http
        .as_ref()
        .context("an http source has [source.http]")?;
    // An unset auth variable is refused before anything is planned.
    worker::extract::http::open_http_source(p)?;
    // Extracts are ordered by the planning time to the millisecond (two runs can start within
    // a second); the windows end at a whole second.
    let planned_at_ms = now.timestamp_millis().max(0) as u64;
    let now = now
        .naive_utc()
        .with_nanosecond(0)
        .unwrap_or(now.naive_utc());
    let old = read_watermark(state, p.name()).await?.map(|w| w.cursor);
    let bounds = run_windows(http, old.as_deref().and_then(parse_instant), backfill, now)
        .with_context(|| format!("planning the windows of {}", p.path))?;
    let run_id = new_run_id(p);
    let format = http.bound_format();
    let shards = bounds
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            let shard_id = format!("s{i:05}");
            ShardDescriptor {
                index: i as u32,
                inputs: Vec::new(),
                extract: Some(Extract::Http(Box::new(HttpRange {
                    window_from: from.map(|t| format.format(t)),
                    window_to: to.map(|t| format.format(t)),
                    raw_key: worker::extract::raw_key(p.name(), &run_id, &shard_id),
                    planned_at_ms,
                }))),
                shard_id,
            }
        })
        .collect();
    tracing::info!(pipeline = p.name(), windows = bounds.len(), watermark = ?old, "API source planned");
    Ok(SourceRun {
        plan: ShardPlan {
            run_id,
            pipeline: p.name().to_string(),
            shards,
        },
        watermark: planned_watermark(http, old.as_deref(), backfill.is_some(), now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(extra: &str) -> HttpSource {
        toml::from_str(&format!("url = \"https://api.test/v1/e\"\n{extra}")).unwrap()
    }

    fn t(s: &str) -> NaiveDateTime {
        parse_instant(s).unwrap()
    }

    #[test]
    fn an_incremental_run_asks_from_the_watermark_less_the_lookback_to_now_in_windows() {
        let h = http(
            "window_from_param = \"since\"\nwindow_to_param = \"until\"\nwindow = \"1d\"\nlookback = \"2h\"\nstart = \"2026-11-01\"",
        );
        let now = t("2026-11-03T12:00:00");
        let first = run_windows(&h, None, None, now).unwrap();
        assert_eq!(
            first,
            vec![
                (Some(t("2026-11-01")), Some(t("2026-11-02"))),
                (Some(t("2026-11-02")), Some(t("2026-11-03"))),
                (Some(t("2026-11-03")), Some(now)),
            ],
            "from start"
        );
        let next = run_windows(
            &h,
            Some(t("2026-11-03T12:00:00")),
            None,
            t("2026-11-03T13:00:00"),
        )
        .unwrap();
        assert_eq!(
            next,
            vec![(
                Some(t("2026-11-03T10:00:00")),
                Some(t("2026-11-03T13:00:00"))
            )]
        );
        assert_eq!(
            run_windows(&h, Some(t("2026-11-04")), None, now).unwrap(),
            vec![],
            "watermark ahead"
        );
    }

    #[test]
    fn without_start_or_windows_a_run_reads_up_to_now_or_everything() {
        let h = http("window_from_param = \"since\"\nwindow_to_param = \"until\"");
        let now = t("2026-11-03T12:00:00");
        assert_eq!(
            run_windows(&h, None, None, now).unwrap(),
            vec![(None, Some(now))]
        );
        assert_eq!(
            run_windows(&http(""), Some(now), None, now).unwrap(),
            vec![(None, None)],
            "an API without windows is read whole"
        );
    }

    #[test]
    fn a_backfill_run_asks_for_its_range_and_never_moves_the_watermark() {
        let h = http(
            "window_from_param = \"since\"\nwindow = \"12h\"\nwatermark_field = \"updated_at\"",
        );
        let w = Window {
            from: t("2026-10-01"),
            to: t("2026-10-02"),
        };
        let got = run_windows(&h, Some(t("2026-11-30")), Some(w), t("2026-12-01")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            (Some(t("2026-10-01T12:00:00")), Some(t("2026-10-02")))
        );
        let now = t("2026-12-01");
        assert_eq!(
            planned_watermark(&h, Some("2026-11-30T00:00:00Z"), true, now),
            None
        );
        assert_eq!(
            planned_watermark(&h, Some("2026-11-30T00:00:00Z"), false, now).as_deref(),
            Some("2026-11-30T00:00:00Z"),
            "with watermark_field: the records' latest value is folded in at the end"
        );
        let by_time = http("window_from_param = \"since\"");
        assert_eq!(
            planned_watermark(&by_time, Some("2026-11-30T00:00:00Z"), false, now).as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            planned_watermark(&by_time, Some("2027-01-01T00:00:00Z"), false, now).as_deref(),
            Some("2027-01-01T00:00:00Z"),
            "never backwards"
        );
        assert_eq!(planned_watermark(&http(""), None, false, now), None);
    }
}
