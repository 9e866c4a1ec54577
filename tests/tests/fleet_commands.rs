//! The run commands against a serving coordinator (issue 10, item 7): `cancel --server` stops a
//! run and every worker skips its tasks; `runs --server` lists runs; `backfill --server` plans and
//! runs windows with at most `--max-in-flight` shards in flight while scheduled runs go on.

use std::time::{Duration, Instant};

use serde_json::json;
use tributary_tests::api::{FakeApi, Paging, orders};
use tributary_tests::fleet::*;
use tributary_tests::{coordinator, ok};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn workload() -> Option<(std::path::PathBuf, u64)> {
    let python = python()?;
    let f = workload_file(&python, 20_000);
    let size = std::fs::metadata(&f).expect("input").len();
    Some((f, size / 8 + 1))
}

/// A fleet named `name` over the workload file, its coordinator started and no worker yet
/// (`None` when the services or Python are missing outside CI).
fn workload_fleet(name: &str) -> Option<Fleet> {
    let (input, shard) = workload()?;
    let mut f = Fleet::new(name, &input, shard)?;
    f.start_coordinator(None);
    Some(f)
}

/// Found by `loadtest run --processes` on the field preset: `POST /api/runs` answered a run id
/// that `GET /api/runs/ID` did not know (404) until the coordinator's loop turned again — minutes
/// later while a large batch loaded. The answer now waits until the run is published.
#[test]
fn a_run_started_through_the_api_is_found_at_once() {
    let Some(f) = workload_fleet("fleet-found") else {
        return;
    };
    let run = f.trigger();
    let rec = f.get(&format!("/api/runs/{run}"));
    assert!(
        rec.as_ref().is_some_and(|r| r["run_id"] == run.as_str()),
        "{run}: {rec:?}\n{}",
        f.logs()
    );
    let said = ok(&coordinator(&["cancel", &run, "--server", &f.api], None));
    assert!(said.contains("cancelled"), "{said}");
}

#[test]
fn a_cancelled_run_loads_nothing_more_and_workers_skip_its_tasks() {
    let Some(mut f) = workload_fleet("fleet-cancel") else {
        return;
    };
    // No worker yet: every task of the run waits on the queue when the run is cancelled.
    let run = f.trigger();
    let t0 = Instant::now();
    while f
        .status(&run)
        .is_none_or(|r| r["shards"].as_u64().unwrap_or(0) == 0)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the run was not planned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let said = ok(&coordinator(&["cancel", &run, "--server", &f.api], None));
    assert!(said.contains("cancelled"), "{said}");
    let rec = f.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(rec["status"], "cancelled", "{rec:#}");
    let w = f.start_worker(None);
    assert!(
        f.procs[w].wait_for_log(
            "skipping a task of a cancelled run",
            Duration::from_secs(60)
        ),
        "the worker skips the cancelled run's tasks\n{}",
        f.logs()
    );
    // The queue drains: every task was skipped (none dead-lettered) and nothing was loaded.
    let t0 = Instant::now();
    loop {
        let status = f.get("/api/status").unwrap();
        let waiting = status["queues"]["tasks"].clone();
        if waiting["visible"] == 0 && waiting["in_flight"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "tasks still waiting: {waiting:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(f.dead_letters().is_empty(), "skipped, not dead-lettered");
    assert!(
        f.s3_keys("lake/").iter().all(|k| !k.ends_with(".parquet")),
        "no shard of the cancelled run wrote to the lake"
    );
    let again = coordinator(&["cancel", &run, "--server", &f.api], None);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already ended: cancelled"),
        "{err}"
    );
    // The pipeline is free again: the next run completes.
    let next = f.trigger();
    let rec = f.wait_run(&next, RUN_TIMEOUT);
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    let listed = ok(&coordinator(
        &["runs", "workload", "--server", &f.api],
        None,
    ));
    assert!(
        listed.contains(&run) && listed.contains("cancelled") && listed.contains(&next),
        "{listed}"
    );
}

const API_PIPELINE: &str = r#"
[pipeline]
name = "api_orders"
[source]
kind = "http"
[source.http]
url = "URL"
records_path = "data"
window_from_param = "updated_since"
window_to_param = "updated_until"
window = "6h"
start = "START"
[source.http.pagination]
kind = "next_link"
next_path = "links.next"
[[columns]]
name = "id"
type = "int64"
required = true
[[columns]]
name = "amount"
type = "decimal(12,2)"
[[columns]]
name = "updated_at"
type = "timestamp"
[load]
merge_keys = ["id"]
"#;

#[test]
fn a_backfill_on_the_fleet_runs_its_windows_beside_a_scheduled_run() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.ndjson");
    std::fs::write(&unused, "{}\n").unwrap();
    let Some(mut f) = Fleet::new("fleet-backfill", &unused, 1 << 20) else {
        return;
    };
    let api = FakeApi::start(
        orders(1, 4 * 1440, "2026-11-01T00:00:00Z"),
        Paging::NextLink,
        500,
    );
    let today = chrono::Utc::now().date_naive();
    let text = API_PIPELINE
        .replace("URL", &api.url())
        .replace("START", &today.to_string());
    f.use_pipeline("api_orders.toml", &text);
    f.start_coordinator(None);
    f.start_worker(None);
    f.start_worker(None);

    let backfill = |dry: bool| {
        let mut args = vec![
            "backfill",
            "api_orders",
            "--from",
            "2026-11-02",
            "--to",
            "2026-11-03",
            "--max-in-flight",
            "1",
            "--server",
            &f.api,
        ];
        if dry {
            args.push("--dry-run");
        }
        ok(&coordinator(&args, None))
    };
    let dry = backfill(true);
    let plan: serde_json::Value =
        serde_json::from_str(dry.lines().find_map(|l| l.strip_prefix("PLAN ")).unwrap()).unwrap();
    assert_eq!(
        (plan["windows"].as_u64(), plan["shards"].as_u64()),
        (Some(2), Some(8)),
        "{plan}"
    );
    assert!(api.requests().is_empty(), "a dry run asks the API nothing");

    let started = backfill(false);
    assert!(started.contains("backfill api_orders-"), "{started}");
    // A scheduled run of the same pipeline is not held up by the backfill.
    let scheduled = f.trigger_pipeline("api_orders");
    let rec = f.wait_run(&scheduled, RUN_TIMEOUT);
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    let t0 = Instant::now();
    loop {
        let b = f.get("/api/backfills").unwrap();
        if b[0]["status"] == "completed" {
            break;
        }
        assert!(
            t0.elapsed() < RUN_TIMEOUT,
            "backfill not done: {b:#}\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let count = f.pg_rows("SELECT count(*), min(updated_at)::text FROM api_orders");
    assert_eq!(
        count[0][0].as_deref(),
        Some("2880"),
        "two days of a minute each: {count:?}"
    );
    assert_eq!(count[0][1].as_deref(), Some("2026-11-02 00:00:00"));
    let runs = f.get("/api/runs?pipeline=api_orders").unwrap();
    let backfill_runs: Vec<&serde_json::Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["backfill_window"].is_string())
        .collect();
    assert_eq!(backfill_runs.len(), 2, "a run per window: {runs:#}");
    assert!(
        backfill_runs
            .iter()
            .all(|r| r["max_in_flight"] == json!(1) && r["status"] == "completed"),
        "{runs:#}"
    );
}
