//! `coordinator backfill`: a time range of a source, run again window by window.
//!
//! A file source gets its time dimension from `[source] time_template` (each key's time read
//! from the start of its path, see [`pipeline::template`]). The range `--from … --to …` is cut
//! into windows of `--window` (default a day; `--to` given as a date includes that day); each
//! window's objects are sharded as a run would shard them. `--dry-run` prints that plan and one
//! `PLAN {json}` line, and writes nothing. A real backfill runs the windows in order as runs of
//! the pipeline, records each window done in the state store (`backfills/PIPELINE/ID.json`), and
//! on a rerun of the same command resumes at the first window not done (the run it was in
//! resumes as any unfinished run does).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{NaiveDate, NaiveDateTime};
use pipeline::Pipeline;
use pipeline::template::TimeTemplate;
use protocol::ObjectRef;
use serde::{Deserialize, Serialize};

use crate::planner::plan_shards;

/// One window of a backfill: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: NaiveDateTime,
    pub to: NaiveDateTime,
}

impl Window {
    pub fn contains(&self, t: NaiveDateTime) -> bool {
        self.from <= t && t < self.to
    }
}

/// A `--from` or `--to` bound: a date (`2026-11-02`) or a timestamp (`2026-11-02T06:00:00`,
/// `2026-11-02 06:00`, or RFC 3339 with an offset, taken in UTC). A date given to `--to`
/// includes its whole day.
pub fn parse_bound(s: &str, is_to: bool) -> anyhow::Result<NaiveDateTime> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if is_to { d.succ_opt().unwrap_or(d) } else { d };
        return Ok(d.and_time(chrono::NaiveTime::MIN));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.naive_utc());
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t);
        }
    }
    bail!(
        "{} {s:?} is not a date (2026-11-02) or a timestamp (2026-11-02T06:00:00)",
        if is_to { "--to" } else { "--from" }
    )
}

/// The windows of `[from, to)`; the last one ends at `to`. An empty or reversed range is refused.
pub fn windows(
    from: NaiveDateTime,
    to: NaiveDateTime,
    width: Duration,
) -> anyhow::Result<Vec<Window>> {
    if from >= to {
        bail!("the backfill range is empty or reversed: --from {from} is not before the end {to}");
    }
    let step = chrono::Duration::from_std(width).context("--window is too long")?;
    if step <= chrono::Duration::zero() {
        bail!("--window must be longer than zero");
    }
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let next = (at + step).min(to);
        out.push(Window { from: at, to: next });
        at = next;
        if out.len() > 100_000 {
            bail!(
                "the range {from} .. {to} makes more than 100,000 windows of {width:?}: use a longer --window"
            );
        }
    }
    Ok(out)
}

/// One window's share of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub window: Window,
    /// A files source's objects in the window (none for other kinds).
    pub objects: Vec<ObjectRef>,
    pub shards: usize,
    /// `None` where the source cannot know before it is read (an API).
    pub bytes: Option<u64>,
    /// Rows counted at planning (a database); `None` where the source cannot count them.
    pub rows: Option<u64>,
}

impl WindowPlan {
    /// `12345 bytes`, or `bytes unknown`.
    pub fn bytes_text(&self) -> String {
        self.bytes
            .map_or_else(|| "bytes unknown".into(), |b| format!("{b} bytes"))
    }
}

/// Places every object of the listing in its window by its key's time; objects outside the
/// range are left out. A template that dates no object of the listing is refused, with a key
/// it did not match.
pub fn plan_windows(
    objects: &[ObjectRef],
    template: &TimeTemplate,
    windows: &[Window],
    shard_bytes: u64,
    splittable: &dyn Fn(&ObjectRef) -> bool,
) -> anyhow::Result<Vec<WindowPlan>> {
    let dated: Vec<(NaiveDateTime, &ObjectRef)> = objects
        .iter()
        .filter_map(|o| template.time_of(&o.key).map(|t| (t, o)))
        .collect();
    if dated.is_empty() {
        bail!(
            "source.time_template {:?} matches none of the {} object(s){}",
            template.as_str(),
            objects.len(),
            objects
                .first()
                .map(|o| format!(", e.g. not {:?}", o.key))
                .unwrap_or_default()
        );
    }
    Ok(windows
        .iter()
        .map(|w| {
            let objects: Vec<ObjectRef> = dated
                .iter()
                .filter(|(t, _)| w.contains(*t))
                .map(|(_, o)| (*o).clone())
                .collect();
            WindowPlan {
                window: *w,
                shards: plan_shards(&objects, shard_bytes, splittable).len(),
                bytes: Some(objects.iter().map(|o| o.size).sum()),
                rows: None,
                objects,
            }
        })
        .collect())
}

/// A backfill's plan as `coordinator backfill` prints it (from the JSON of its `PLAN` line):
/// a line per window, then the `PLAN {json}` line.
pub fn plan_line_text(plan: &serde_json::Value) -> String {
    let mut out = String::new();
    for w in plan["by_window"].as_array().into_iter().flatten() {
        let bytes = match w["bytes"].as_u64() {
            Some(b) => format!("{b} bytes"),
            None => "bytes unknown".into(),
        };
        let rows = w["rows"]
            .as_u64()
            .map(|r| format!(", {r} row(s)"))
            .unwrap_or_default();
        out.push_str(&format!(
            "window {} .. {}: {} object(s), {} shard(s){rows}, {bytes}\n",
            w["from"].as_str().unwrap_or(""),
            w["to"].as_str().unwrap_or(""),
            w["objects"],
            w["shards"]
        ));
    }
    out.push_str(&format!("PLAN {plan}"));
    out
}

/// The `PLAN {json}` line of a backfill: totals, then every window (`bytes` is null where the
/// source cannot know them before it is read).
pub fn plan_line(pipeline: &str, width: &str, plans: &[WindowPlan]) -> String {
    let by_window: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "from": p.window.from.to_string(),
                "to": p.window.to.to_string(),
                "objects": p.objects.len(),
                "shards": p.shards,
                "bytes": p.bytes,
                "rows": p.rows,
            })
        })
        .collect();
    let v = serde_json::json!({
        "pipeline": pipeline,
        "window": width,
        "windows": plans.len(),
        "shards": plans.iter().map(|p| p.shards).sum::<usize>(),
        "objects": plans.iter().map(|p| p.objects.len()).sum::<usize>(),
        "bytes": plans.iter().map(|p| p.bytes).sum::<Option<u64>>(),
        "rows": plans.iter().map(|p| p.rows).sum::<Option<u64>>(),
        "by_window": by_window,
    });
    format!("PLAN {v}")
}

/// Options of `coordinator backfill` in local mode.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub pipeline: PathBuf,
    pub data_dir: PathBuf,
    pub from: String,
    pub to: String,
    pub window: String,
    pub dry_run: bool,
    pub max_in_flight: usize,
    pub workers: usize,
    pub batch_rows: u64,
}

/// A backfill's progress, as kept in state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillRecord {
    pub backfill_id: String,
    pub pipeline: String,
    /// Each window's start and end, as `2026-11-02 00:00:00`.
    pub windows: Vec<(String, String)>,
    /// The runs of the windows done so far, in order (`""`: a window with nothing to read).
    pub runs: Vec<Option<String>>,
    /// Fleet: the run of the window in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<String>,
    /// Fleet: shards in flight at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Fleet: `running`, `completed`, or `failed: REASON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl BackfillRecord {
    pub fn new(id: &str, pipeline: &str, ws: &[Window]) -> BackfillRecord {
        BackfillRecord {
            backfill_id: id.to_string(),
            pipeline: pipeline.to_string(),
            windows: ws
                .iter()
                .map(|w| (w.from.to_string(), w.to.to_string()))
                .collect(),
            runs: vec![None; ws.len()],
            ..BackfillRecord::default()
        }
    }

    /// The first window not done.
    pub fn next_window(&self) -> Option<usize> {
        self.runs.iter().position(Option::is_none)
    }
}

/// The windows of `--from … --to …` cut by `--window`.
pub fn range_windows(from: &str, to: &str, window: &str) -> anyhow::Result<Vec<Window>> {
    let width = humantime::parse_duration(window)
        .with_context(|| format!("--window {window:?} is not a duration (1d, 6h)"))?;
    windows(parse_bound(from, false)?, parse_bound(to, true)?, width)
}

/// The windows' plans of a local source.
pub async fn plan_local(
    p: &Pipeline,
    opts: &BackfillOptions,
) -> anyhow::Result<(Vec<Window>, Vec<WindowPlan>)> {
    let ws = range_windows(&opts.from, &opts.to, &opts.window)?;
    match p.file.source.kind {
        pipeline::SourceKind::Files => {
            let objects = crate::local_source::list_source(p).await?;
            Ok((ws.clone(), plan_file_windows(p, &objects, &ws)?))
        }
        pipeline::SourceKind::Http => Ok((ws.clone(), plan_api(p, &ws)?)),
        pipeline::SourceKind::Postgres | pipeline::SourceKind::Mysql => {
            Ok((ws.clone(), plan_database(p, &ws).await?))
        }
    }
}

/// A database source's windows over its cursor: each window's key-range shards, its rows
/// counted and its bytes estimated (rows × the table's average row size, when the database
/// keeps one).
pub async fn plan_database(p: &Pipeline, ws: &[Window]) -> anyhow::Result<Vec<WindowPlan>> {
    let mut out = Vec::with_capacity(ws.len());
    for w in ws {
        let (plan, bytes) = crate::sources::sql::plan_sql_window(p, *w).await?;
        out.push(WindowPlan {
            window: *w,
            objects: Vec::new(),
            shards: plan.shards.len(),
            bytes,
            rows: Some(plan.rows),
        });
    }
    Ok(out)
}

/// An API source's windows: each backfill window asked for in the API's own windows.
pub fn plan_api(p: &Pipeline, ws: &[Window]) -> anyhow::Result<Vec<WindowPlan>> {
    let http = p.file.source.http.as_ref().context("[source.http]")?;
    if !http.windowed() {
        bail!(
            "{}: a backfill asks the API for time windows: give source.http.window_from_param (and window_to_param)",
            p.path
        );
    }
    let now = chrono::Utc::now().naive_utc();
    ws.iter()
        .map(|w| {
            Ok(WindowPlan {
                window: *w,
                objects: Vec::new(),
                shards: crate::sources::http::run_windows(http, None, Some(*w), now)?.len(),
                bytes: None,
                rows: None,
            })
        })
        .collect()
}

/// A files source's windows: each object of the listing in the window its key's time falls in.
pub fn plan_file_windows(
    p: &Pipeline,
    objects: &[ObjectRef],
    ws: &[Window],
) -> anyhow::Result<Vec<WindowPlan>> {
    let template = p.file.source.time_template.as_deref().with_context(|| {
        format!(
            "{}: a backfill needs [source] time_template (e.g. \"%Y/%m/%d/\") to date the source's keys",
            p.path
        )
    })?;
    let template = TimeTemplate::new(template).map_err(anyhow::Error::msg)?;
    plan_windows(
        objects,
        &template,
        ws,
        p.file.source.shard_bytes.get(),
        &crate::local_source::splittable(p),
    )
}

/// What a backfill did: its plan only (a dry run), or the runs of its windows.
#[derive(Debug)]
pub enum BackfillOutcome {
    Planned(Vec<WindowPlan>),
    Ran {
        plans: Vec<WindowPlan>,
        record: BackfillRecord,
        /// The reports of the runs made by this command (windows done before are skipped).
        reports: Vec<crate::run::RunReport>,
    },
}

/// A backfill's id: the same command names the same backfill, so a rerun resumes it.
pub fn backfill_id(pipeline: &str, ws: &[Window], width: &str) -> String {
    let (from, to) = (ws[0].from, ws[ws.len() - 1].to);
    format!(
        "{pipeline}-{}-{}-{width}",
        from.format("%Y%m%dT%H%M%S"),
        to.format("%Y%m%dT%H%M%S")
    )
}

/// `coordinator backfill` in local mode.
pub async fn backfill_local(opts: &BackfillOptions) -> anyhow::Result<BackfillOutcome> {
    let p = crate::sources::load_pipeline(&opts.pipeline).await?;
    let (ws, plans) = plan_local(&p, opts).await?;
    if opts.dry_run {
        return Ok(BackfillOutcome::Planned(plans));
    }
    let dd = crate::run::DataDir::open(&opts.data_dir)?;
    let id = backfill_id(p.name(), &ws, &opts.window);
    let key = format!("backfills/{}/{id}.json", p.name());
    let mut record = match dd.state.get(&key).await? {
        Some(b) => serde_json::from_slice(&b).with_context(|| format!("state {key} is corrupt"))?,
        None => BackfillRecord::new(&id, p.name(), &ws),
    };
    let mut reports = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        if record.runs.get(i).is_some_and(Option::is_some) {
            continue;
        }
        let run_id = if plan.shards == 0 {
            String::new()
        } else {
            let report = crate::run::run_local(&crate::run::RunOptions {
                pipeline: opts.pipeline.clone(),
                data_dir: opts.data_dir.clone(),
                workers: opts.workers.min(opts.max_in_flight).max(1),
                source: None,
                output: None,
                shard_size: None,
                progress: false,
                batch_rows: opts.batch_rows,
                window: Some(plan.window),
            })
            .await
            .with_context(|| {
                format!(
                    "backfill {id}, window {} .. {}",
                    plan.window.from, plan.window.to
                )
            })?;
            let ok = report.record.status == crate::engine::RunStatus::Completed;
            let run_id = report.record.run_id.clone();
            reports.push(report);
            if !ok {
                dd.state
                    .put(&key, &serde_json::to_vec_pretty(&record)?)
                    .await?;
                bail!(
                    "backfill {id}: the run {run_id} of window {} .. {} did not complete; rerun the same command to resume",
                    plan.window.from,
                    plan.window.to
                );
            }
            run_id
        };
        record.runs[i] = Some(run_id);
        dd.state
            .put(&key, &serde_json::to_vec_pretty(&record)?)
            .await?;
    }
    Ok(BackfillOutcome::Ran {
        plans,
        record,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        parse_bound(s, false).unwrap()
    }

    fn obj(key: &str, size: u64) -> ObjectRef {
        ObjectRef {
            key: key.into(),
            size,
        }
    }

    #[test]
    fn bounds_are_dates_or_timestamps_and_a_to_date_includes_its_day() {
        assert_eq!(t("2026-11-02").to_string(), "2026-11-02 00:00:00");
        assert_eq!(
            parse_bound("2026-11-04", true).unwrap().to_string(),
            "2026-11-05 00:00:00"
        );
        assert_eq!(t("2026-11-02T06:30:00").to_string(), "2026-11-02 06:30:00");
        assert_eq!(t("2026-11-02 06:30").to_string(), "2026-11-02 06:30:00");
        assert_eq!(
            t("2026-11-02T06:30:00+01:00").to_string(),
            "2026-11-02 05:30:00"
        );
        let e = parse_bound("yesterday", true).unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("yesterday"), "{e}");
    }

    #[test]
    fn a_range_is_cut_into_windows_and_an_empty_one_is_refused() {
        let day = Duration::from_secs(86_400);
        let ws = windows(
            t("2026-11-02"),
            parse_bound("2026-11-04", true).unwrap(),
            day,
        )
        .unwrap();
        assert_eq!(ws.len(), 3);
        assert_eq!(ws[2].to, t("2026-11-05"));
        let short = windows(t("2026-11-02"), t("2026-11-02T12:00:00"), day).unwrap();
        assert_eq!(
            short,
            vec![Window {
                from: t("2026-11-02"),
                to: t("2026-11-02T12:00:00")
            }]
        );
        let e = windows(t("2026-11-04"), t("2026-11-02"), day)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty or reversed"), "{e}");
        assert!(windows(t("2026-11-02"), t("2026-11-02"), day).is_err());
    }

    #[test]
    fn objects_fall_in_the_window_of_their_keys_time() {
        let template = TimeTemplate::new("%Y/%m/%d/").unwrap();
        let objects = [
            obj("2026/11/01/a.ndjson", 10),
            obj("2026/11/02/a.ndjson", 20),
            obj("2026/11/02/b.ndjson", 22),
            obj("2026/11/03/a.ndjson", 30),
            obj("2026/11/05/a.ndjson", 50),
            obj("README.md", 5),
        ];
        let ws = windows(
            t("2026-11-02"),
            parse_bound("2026-11-04", true).unwrap(),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let plans = plan_windows(&objects, &template, &ws, 1 << 20, &|_| true).unwrap();
        let got: Vec<(usize, usize, u64)> = plans
            .iter()
            .map(|p| (p.objects.len(), p.shards, p.bytes.unwrap()))
            .collect();
        assert_eq!(got, vec![(2, 1, 42), (1, 1, 30), (0, 0, 0)]);
        let line = plan_line("events", "1d", &plans);
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("PLAN ").unwrap()).unwrap();
        assert_eq!(
            (
                v["windows"].as_u64(),
                v["shards"].as_u64(),
                v["bytes"].as_u64()
            ),
            (Some(3), Some(2), Some(72))
        );
        assert_eq!(v["by_window"][1]["bytes"], 30);
        let unknown = WindowPlan {
            bytes: None,
            ..plans[0].clone()
        };
        let line = plan_line("api", "1d", &[unknown, plans[1].clone()]);
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("PLAN ").unwrap()).unwrap();
        assert!(v["bytes"].is_null(), "an API cannot know its bytes: {v}");

        let other = TimeTemplate::new("dt=%Y-%m-%d/").unwrap();
        let e = plan_windows(&objects, &other, &ws, 1 << 20, &|_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches none of the 6 object(s)"), "{e}");
    }
}
