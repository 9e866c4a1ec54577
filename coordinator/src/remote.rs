//! The CLI's commands against a serving coordinator (`--server URL`): `trigger`, `runs`,
//! `status`, `cancel`, `retry` and `backfill` through its HTTP API, printing what the local
//! commands print. PIPELINE is then a pipeline's name.

use anyhow::Context;

use crate::backfill::plan_line_text;
use crate::run::RunRecord;

/// One call to a coordinator's API; an error answer becomes an error with its message.
pub fn call(url: &str, body: Option<&serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    // The API sources' client: TLS through rustls with the system's roots.
    let agent = worker::extract::http::agent(std::time::Duration::from_secs(60));
    let mut resp = match body {
        Some(b) => agent.post(url).send_json(b),
        None => agent.get(url).call(),
    }
    .with_context(|| format!("cannot reach the coordinator at {url}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("{url} answered {status} without JSON"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{url}: {status}: {}",
            v["error"].as_str().unwrap_or("(no error text)")
        );
    }
    Ok(v)
}

fn url(server: &str, path: &str) -> String {
    format!("{}{path}", server.trim_end_matches('/'))
}

/// Runs as `coordinator runs` / `status` list them: a line each, oldest first.
pub fn run_lines(runs: &[RunRecord]) -> Vec<String> {
    let mut runs: Vec<&RunRecord> = runs.iter().collect();
    runs.sort_by(|a, b| {
        a.started_at
            .cmp(&b.started_at)
            .then(a.run_id.cmp(&b.run_id))
    });
    runs.iter().map(|r| run_line(r, r.shards_done)).collect()
}

/// One run in a line.
pub fn run_line(r: &RunRecord, done: usize) -> String {
    format!(
        "{:<40} {:<12} {:<10} shards {done}/{}  rows_out {}  batches loaded {}  started {}{}",
        r.run_id,
        r.pipeline,
        r.status,
        r.shards,
        r.counts.rows_out,
        r.batches_loaded,
        r.started_at,
        r.last_error
            .as_ref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default()
    )
}

/// `coordinator runs [PIPELINE] --server URL`.
pub fn runs(server: &str, pipeline: Option<&str>, json: bool) -> anyhow::Result<String> {
    let path = match pipeline {
        Some(p) => format!("/api/runs?pipeline={}", urlencode(p)),
        None => "/api/runs".into(),
    };
    let v = call(&url(server, &path), None)?;
    let runs: Vec<RunRecord> = serde_json::from_value(v)?;
    if json {
        return Ok(serde_json::to_string_pretty(&runs)?);
    }
    if runs.is_empty() {
        return Ok(format!("no runs on {server}"));
    }
    Ok(run_lines(&runs).join("\n"))
}

/// `coordinator status RUN --server URL`: the run in detail, as for a data dir.
pub fn status(server: &str, run_id: &str, json: bool) -> anyhow::Result<String> {
    let v = call(&url(server, &format!("/api/runs/{run_id}")), None)?;
    if json {
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    let r: RunRecord = serde_json::from_value(v)?;
    Ok(crate::status::run_detail(
        &r,
        r.shards_done,
        &r.counts,
        false,
    ))
}

/// `coordinator cancel RUN --server URL`.
pub fn cancel(server: &str, run_id: &str) -> anyhow::Result<String> {
    call(
        &url(server, &format!("/api/runs/{run_id}/cancel")),
        Some(&serde_json::json!({})),
    )?;
    Ok(format!(
        "run {run_id}: cancelled — nothing more of it is enqueued or loaded; workers skip its tasks; the watermark stays"
    ))
}

/// `coordinator retry RUN --server URL`.
pub fn retry(server: &str, run_id: &str) -> anyhow::Result<String> {
    let v = call(
        &url(server, &format!("/api/runs/{run_id}/retry")),
        Some(&serde_json::json!({})),
    )?;
    let shards: Vec<String> = serde_json::from_value(v["shards"].clone()).unwrap_or_default();
    Ok(format!(
        "run {run_id}: {} failed shard(s) sent again ({}); follow it with `coordinator status {run_id} --server {server}`",
        shards.len(),
        shards.join(", ")
    ))
}

/// `coordinator backfill PIPELINE --server URL …`: the plan's windows and `PLAN` line; for a
/// real backfill, its id.
pub fn backfill(server: &str, request: &serde_json::Value) -> anyhow::Result<String> {
    let v = call(&url(server, "/api/backfills"), Some(request))?;
    let mut out = plan_line_text(&v["plan"]);
    match v["backfill_id"].as_str() {
        Some(id) => out.push_str(&format!(
            "\nbackfill {id} started on {server}: its windows run one after another (`coordinator runs {} --server {server}`)",
            request["pipeline"].as_str().unwrap_or("")
        )),
        None => out.push_str("\ndry run: nothing was written"),
    }
    Ok(out)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lines_are_oldest_first_and_names_are_escaped() {
        let mut a = RunRecord::for_test("p-2", "p", crate::engine::RunStatus::Running);
        a.started_at = "2026-12-02T00:00:00Z".into();
        let mut b = RunRecord::for_test("p-1", "p", crate::engine::RunStatus::Completed);
        b.started_at = "2026-12-01T00:00:00Z".into();
        let lines = run_lines(&[a, b]);
        assert!(
            lines[0].starts_with("p-1") && lines[1].starts_with("p-2"),
            "{lines:?}"
        );
        assert_eq!(urlencode("web events/ü"), "web%20events%2F%C3%BC");
    }
}
