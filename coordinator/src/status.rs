//! `coordinator status RUN`: one run in detail — progress, rows by outcome, failures with their
//! reasons, the quality verdict and what the run moves the watermark to.

use std::fmt::Write;

use protocol::Counts;

use crate::run::RunRecord;

/// The run as `coordinator status RUN` prints it. `done` and `counts`: the shards done so far
/// and their counts (live, from state, while the run is going); `cancel_requested`: a
/// `coordinator cancel` is waiting to be taken.
pub fn run_detail(r: &RunRecord, done: usize, counts: &Counts, cancel_requested: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run {} of pipeline {} → table {}: {}{}",
        r.run_id,
        r.pipeline,
        r.table,
        r.status,
        if cancel_requested && !r.status.is_final() {
            " (cancel requested)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  started {}{}",
        r.started_at,
        r.finished_at
            .as_ref()
            .map(|f| format!(", finished {f}"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "  source {} → {}", r.source, r.output);
    let _ = writeln!(
        s,
        "  shards {done}/{} done, {} failed; {} batch(es) loaded",
        r.shards,
        r.failed_shards.len(),
        r.batches_loaded
    );
    let _ = writeln!(
        s,
        "  rows: {} lines → {} out, {} malformed, {} rejected, {} filtered, {} duplicates",
        counts.lines_total,
        counts.rows_out,
        counts.malformed,
        counts.rejected_total(),
        counts.filtered_total(),
        counts.duplicates
    );
    for (kind, buckets) in [
        ("rejected", &counts.rejected),
        ("filtered", &counts.filtered),
    ] {
        for (bucket, n) in buckets.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(s, "    {kind} {bucket}: {n}");
        }
    }
    for (shard, why) in &r.failed_shards {
        let _ = writeln!(s, "  FAILED {shard}: {why}");
    }
    if let Some(e) = &r.last_error {
        let _ = writeln!(s, "  last error: {e}");
    }
    if let Some(q) = &r.quality {
        let _ = writeln!(
            s,
            "  quality: {}",
            if q.passed { "passed" } else { "FAILED" }
        );
        for x in &q.results {
            let _ = writeln!(
                s,
                "    {} {} ({}): observed {}, limit {}",
                x.status.to_uppercase(),
                x.name,
                x.severity,
                x.observed,
                x.limit
            );
        }
    }
    if let Some(w) = &r.watermark {
        let _ = writeln!(s, "  watermark once completed: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RunStatus;

    #[test]
    fn a_run_shows_progress_outcomes_failures_and_its_verdict() {
        let mut r = RunRecord::for_test("orders-1", "orders", RunStatus::Failed);
        r.shards = 3;
        r.failed_shards = vec![("s00002".into(), "b.ndjson.gz: corrupt".into())];
        r.quality = Some(crate::quality::QualityReport {
            passed: false,
            results: vec![crate::quality::QualityResult {
                name: "max_rejected_ratio".into(),
                check: "max_rejected_ratio".into(),
                severity: "fail".into(),
                status: "fail".into(),
                observed: serde_json::json!(0.75),
                limit: serde_json::json!(0.5),
            }],
        });
        let mut c = Counts {
            lines_total: 8,
            rows_out: 2,
            ..Counts::default()
        };
        c.rejected.insert("bad_ts".into(), 6);
        let text = run_detail(&r, 2, &c, false);
        for want in [
            "run orders-1 of pipeline orders → table orders: failed",
            "shards 2/3 done, 1 failed",
            "8 lines → 2 out, 0 malformed, 6 rejected",
            "rejected bad_ts: 6",
            "FAILED s00002: b.ndjson.gz: corrupt",
            "quality: FAILED",
            "FAIL max_rejected_ratio (fail): observed 0.75, limit 0.5",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        r.status = RunStatus::Running;
        assert!(run_detail(&r, 2, &c, true).contains("running (cancel requested)"));
    }
}
