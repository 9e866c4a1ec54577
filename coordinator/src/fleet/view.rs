//! What the API and the status page read of the coordinator: runs newest first, and one JSON
//! document of everything the page shows.

use serde_json::{Value, json};

use super::Shared;
use crate::engine::RunStatus;
use crate::run::RunRecord;

/// Runs shown on the status page at most.
const PAGE_RUNS: usize = 50;

impl Shared {
    /// Runs, newest first; of one pipeline with `pipeline`.
    pub(super) fn runs_newest_first(&self, pipeline: Option<&str>) -> Vec<RunRecord> {
        let mut runs: Vec<RunRecord> = self
            .runs
            .values()
            .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
            .cloned()
            .collect();
        runs.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.run_id.cmp(&a.run_id))
        });
        runs
    }

    /// `GET /api/status`: pipelines (schedule, last run, freshness), runs (progress, rows by
    /// outcome, failures with reasons), the queues' backlog, dead letters, backfills.
    pub(super) fn status_json(&self) -> Value {
        let now = chrono::Utc::now();
        let runs = self.runs_newest_first(None);
        let pipelines: Vec<Value> = self
            .pipelines
            .iter()
            .map(|p| {
                let last = runs.iter().find(|r| r.pipeline == p.name);
                let fresh = runs
                    .iter()
                    .find(|r| r.pipeline == p.name && r.status == RunStatus::Completed)
                    .and_then(|r| age_secs(&r.started_at, now));
                json!({
                    "name": p.name,
                    "table": p.table,
                    "cron": p.cron,
                    "next_run": p.next_run,
                    "current_run": p.current_run,
                    "last_run": last.map(|r| json!({
                        "run_id": r.run_id, "status": r.status, "started_at": r.started_at,
                        "finished_at": r.finished_at,
                    })),
                    "freshness_secs": fresh,
                })
            })
            .collect();
        json!({
            "generated_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "pipelines": pipelines,
            "runs": runs.iter().take(PAGE_RUNS).map(run_json).collect::<Vec<_>>(),
            "queues": self.queues,
            "dead_letters": self.dead_letters.iter().map(|d| json!({
                "message_id": d.message_id, "reason": d.reason, "receive_count": d.receive_count,
                "task": task_of(&d.body),
            })).collect::<Vec<_>>(),
            "backfills": self.backfills.iter().map(|b| json!({
                "backfill_id": b.backfill_id, "pipeline": b.pipeline, "status": b.status,
                "windows": b.windows.len(),
                "windows_done": b.runs.iter().filter(|r| r.is_some()).count(),
                "current_run": b.current_run, "max_in_flight": b.max_in_flight,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One run as the page shows it.
fn run_json(r: &RunRecord) -> Value {
    let c = &r.counts;
    json!({
        "run_id": r.run_id,
        "pipeline": r.pipeline,
        "status": r.status,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "shards": r.shards,
        "shards_done": r.shards_done,
        "rows": {
            "in": c.lines_total, "out": c.rows_out, "malformed": c.malformed,
            "rejected": c.rejected_total(), "filtered": c.filtered_total(),
            "duplicates": c.duplicates,
        },
        "failed_shards": r.failed_shards.iter().map(|(s, why)| json!({"shard": s, "reason": why})).collect::<Vec<_>>(),
        "last_error": r.last_error,
        "backfill_window": r.backfill_window,
        "quality_passed": r.quality.as_ref().map(|q| q.passed),
    })
}

/// A dead-lettered task's run and shard, when the body is a task.
fn task_of(body: &str) -> Value {
    match protocol::Message::from_body(body) {
        Ok(protocol::Message::Task(t)) => json!({"run_id": t.run_id, "shard": t.shard.shard_id}),
        _ => Value::Null,
    }
}

fn age_secs(t: &str, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some((now - at.with_timezone(&chrono::Utc)).num_seconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_shows_freshness_from_the_last_completed_run_and_failures_with_reasons() {
        let mut sh = Shared::default();
        sh.pipelines.push(super::super::PipelineView {
            name: "orders".into(),
            table: "orders".into(),
            cron: Some("0 * * * *".into()),
            next_run: None,
            current_run: None,
        });
        let mut done = RunRecord::for_test("orders-1", "orders", RunStatus::Completed);
        done.started_at = (chrono::Utc::now() - chrono::Duration::seconds(120))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut failed = RunRecord::for_test("orders-2", "orders", RunStatus::Failed);
        failed.failed_shards = vec![("s00001".into(), "source gone".into())];
        failed.started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        sh.runs.insert(done.run_id.clone(), done);
        sh.runs.insert(failed.run_id.clone(), failed);
        let v = sh.status_json();
        let p = &v["pipelines"][0];
        assert_eq!(p["last_run"]["run_id"], "orders-2");
        let fresh = p["freshness_secs"].as_i64().unwrap();
        assert!((119..=125).contains(&fresh), "{fresh}");
        assert_eq!(v["runs"][0]["failed_shards"][0]["reason"], "source gone");
        assert_eq!(sh.runs_newest_first(Some("nope")).len(), 0);
    }
}
