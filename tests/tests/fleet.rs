//! The fleet across real processes: a moto server (SQS, S3), one `coordinator serve`, at least two
//! `worker --config` processes, and the real PostgreSQL as warehouse. The reference workload is
//! split into at least 8 byte-range shards; the warehouse table must equal the embedded run's.
//! Each fault test injects one fault.
//!
//! Needs moto, PostgreSQL and Python (numpy) for the workload generator: `scripts/test` provides
//! all three; without them the tests fail under CI and are skipped elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tributary_tests::fleet::*;

const ROWS: usize = 30_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The input file and a shard size that splits it into 10 byte ranges.
fn input() -> Option<(PathBuf, u64)> {
    let python = python()?;
    let f = workload_file(&python, ROWS);
    let size = std::fs::metadata(&f).expect("input").len();
    Some((f, size / 10 + 1))
}

fn setup(name: &str) -> Option<(Fleet, PathBuf, u64)> {
    let (f, shard) = input()?;
    let fleet = Fleet::new(name, &f, shard)?;
    Some((fleet, f, shard))
}

/// Every Parquet key of the run in the lake, and the outputs the run's manifests list.
fn lake_and_manifests(f: &Fleet, run: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let lake: BTreeSet<String> = f
        .s3_keys("lake/")
        .into_iter()
        .filter(|k| protocol::is_part_file_of_run(k, run))
        .collect();
    let others = f
        .s3_keys("lake/")
        .into_iter()
        .filter(|k| k.ends_with(".parquet") && !protocol::is_part_file_of_run(k, run))
        .filter(|k| !k.contains("/part-workload-"))
        .count();
    assert_eq!(others, 0, "every Parquet file in the lake belongs to a run");
    let mut listed = BTreeSet::new();
    for key in f.s3_keys(&format!("tributary/manifests/{run}/")) {
        let m: serde_json::Value = serde_json::from_slice(&f.s3_get(&key)).expect("manifest");
        for o in m["outputs"].as_array().expect("outputs") {
            listed.insert(format!("lake/{}", o["key"].as_str().expect("key")));
        }
    }
    (lake, listed)
}

/// The checks every fleet test ends with: completed, ≥ 8 shards, the embedded run's table,
/// each batch loaded once, and no data file that no manifest lists.
fn assert_run_matches_embedded(
    f: &Fleet,
    run: &str,
    input: &Path,
    shard: u64,
) -> serde_json::Value {
    let rec = f.wait_run(run, RUN_TIMEOUT);
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    assert!(rec["shards"].as_u64().unwrap() >= 8, "{rec:#}");
    let fleet = fleet_table(f);
    let embedded = embedded_table(input, shard);
    assert_eq!(fleet.len(), embedded.len(), "row count");
    assert!(
        fleet == embedded,
        "the fleet's table differs from the embedded run's"
    );
    let dup = f.pg_rows(
        "SELECT batch_id, count(*) FROM _tributary_load_ledger GROUP BY batch_id HAVING count(*) > 1",
    );
    assert!(dup.is_empty(), "batches loaded twice: {dup:?}");
    let ledger = f.pg_rows(&format!(
        "SELECT count(*) FROM _tributary_load_ledger WHERE run_id = '{run}'"
    ))[0][0]
        .clone()
        .unwrap();
    assert_eq!(
        ledger,
        rec["batches_loaded"].to_string(),
        "one ledger row per batch"
    );
    let (lake, listed) = lake_and_manifests(f, run);
    assert_eq!(
        lake, listed,
        "every Parquet file in the lake is one a manifest lists"
    );
    rec
}

#[test]
fn a_fleet_run_loads_the_same_table_as_the_embedded_run() {
    let Some((mut f, input, shard)) = setup("fleet-main") else {
        return;
    };
    f.start_coordinator(None);
    let w0 = f.start_worker(None);
    let w1 = f.start_worker(None);
    let run = f.trigger();
    let rec = assert_run_matches_embedded(&f, &run, &input, shard);
    assert!(rec["batches_loaded"].as_u64().unwrap() >= 2, "{rec:#}");
    // Both workers took part.
    for w in [w0, w1] {
        assert!(
            f.procs[w].wait_for_log("task succeeded", Duration::from_secs(10)),
            "{} did no task:\n{}",
            f.procs[w].name,
            f.logs()
        );
    }
    // Metrics of the coordinator and of a worker, checked by promtool.
    let c = f.coordinator_metrics();
    let pl = "pipeline=\"workload\"";
    assert_eq!(
        sample(
            &c,
            "tributary_coordinator_runs_total",
            &[pl, "status=\"completed\""]
        ),
        Some(1.0),
        "{c}"
    );
    assert_eq!(
        sample(
            &c,
            "tributary_coordinator_runs_total",
            &[pl, "status=\"started\""]
        ),
        Some(1.0)
    );
    assert!(sample(&c, "tributary_coordinator_shards_total", &[pl, "succeeded"]).unwrap() >= 8.0);
    let loaded = sample(
        &c,
        "tributary_load_batches_total",
        &["web_events", "outcome=\"loaded\""],
    )
    .unwrap();
    assert_eq!(loaded, rec["batches_loaded"].as_f64().unwrap());
    assert_eq!(
        sample(&c, "tributary_load_seconds_count", &["web_events"]),
        Some(loaded)
    );
    assert!(
        sample(
            &c,
            "tributary_queue_messages",
            &["queue=\"tasks\"", "visible"]
        )
        .is_some()
    );
    assert!(sample(&c, "tributary_freshness_lag_seconds", &[pl]).unwrap() >= 0.0);
    assert_eq!(
        sample(&c, "tributary_coordinator_active_runs", &[]),
        Some(0.0)
    );
    let addr = f.worker_addr(w0);
    let w = String::from_utf8(
        std::process::Command::new("curl")
            .args(["-sf", &format!("http://{addr}/metrics")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let done: f64 = [w0, w1]
        .iter()
        .map(|&i| {
            let a = f.worker_addr(i);
            let text = String::from_utf8(
                std::process::Command::new("curl")
                    .args(["-sf", &format!("http://{a}/metrics")])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            sample(&text, "tributary_worker_tasks_total", &[pl, "succeeded"]).unwrap_or(0.0)
        })
        .sum();
    assert_eq!(done, rec["shards"].as_f64().unwrap(), "{w}");
    assert_eq!(
        sample(&w, "tributary_worker_tasks_in_flight", &[]),
        Some(0.0)
    );
    if let Some(promtool) = tool("TRIBUTARY_PROMTOOL") {
        promtool_check_metrics(&promtool, &c);
        promtool_check_metrics(&promtool, &w);
    }
    // Health endpoints of a worker.
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{addr}{path}")])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(want),
            "{path}: {out:?}"
        );
    }
    // No seeded PII or secret in any process's log.
    let all: String = f
        .procs
        .iter()
        .map(|p| p.log.lock().unwrap().clone())
        .collect();
    let key = std::fs::read_to_string(repo().join("examples/workload.key")).unwrap();
    assert!(!all.contains(&key), "the hashing key appears in the logs");
    let data = std::fs::read_to_string(&input).unwrap();
    for email in data
        .split("\"email\":\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .filter(|e| e.contains('@'))
        .take(500)
    {
        assert!(!all.contains(email), "email {email} appears in the logs");
    }
    // A worker drains and exits 0 on SIGTERM.
    f.procs[w0].sigterm();
    let st = f.procs[w0].child.wait().unwrap();
    assert!(st.success(), "worker exit status {st}");
    // Its last lines reach the log through a reader thread, which may trail the exit.
    assert!(
        f.procs[w0].wait_for_log("worker stopped", Duration::from_secs(10)),
        "{}",
        f.logs()
    );
}

#[test]
fn a_worker_killed_mid_shard_has_its_task_redone_with_identical_output() {
    let Some((mut f, input, shard)) = setup("fleet-kill-worker") else {
        return;
    };
    f.start_coordinator(None);
    let doomed = f.start_worker(Some("hang_mid_shard"));
    let run = f.trigger();
    assert!(
        f.procs[doomed].wait_for_log("FAULT: hanging mid-shard", Duration::from_secs(120)),
        "the worker never reached the middle of a shard:\n{}",
        f.logs()
    );
    f.procs[doomed].kill9();
    let survivor = f.start_worker(None);
    assert_run_matches_embedded(&f, &run, &input, shard);
    let log = f.procs[survivor].log.lock().unwrap().clone();
    assert!(
        log.contains("attempt=2"),
        "the killed task was delivered again:\n{log}"
    );
}

/// Starts a coordinator with `fault` (a crash), waits for it to die, restarts it and checks the
/// run against the embedded one. Returns the fleet for more checks.
fn crash_and_restart_coordinator(name: &str, fault: &str) -> Option<Fleet> {
    let (mut f, input, shard) = setup(name)?;
    let c = f.start_coordinator(Some(fault));
    f.start_worker(None);
    f.start_worker(None);
    let run = f.trigger();
    let st = f.procs[c].child.wait().unwrap();
    assert!(!st.success(), "the coordinator crashed as injected");
    f.start_coordinator(None);
    assert_run_matches_embedded(&f, &run, &input, shard);
    Some(f)
}

#[test]
fn a_coordinator_killed_mid_run_resumes_and_loads_each_batch_once() {
    let Some(f) = crash_and_restart_coordinator("fleet-kill-coord", "crash_after_shards=4") else {
        return;
    };
    assert!(
        f.logs().contains("resuming run"),
        "the restarted coordinator resumed the run:\n{}",
        f.logs()
    );
}

#[test]
fn a_coordinator_killed_between_a_load_commit_and_its_record_does_not_load_twice() {
    crash_and_restart_coordinator("fleet-kill-commit", "crash_after_load_commit");
}

#[test]
fn poison_messages_are_dead_lettered_with_reasons_and_work_carries_on() {
    let Some((mut f, input, shard)) = setup("fleet-poison") else {
        return;
    };
    // A task whose source object is gone: a well-formed task for a shard of a deleted object.
    let pipeline = std::fs::read_to_string(f.dir.path().join("workload.toml")).unwrap();
    let gone = protocol::Message::Task(protocol::TaskMessage {
        max_string_bytes: None,
        task_id: "orphan/s00000".into(),
        run_id: "orphan".into(),
        pipeline: protocol::PipelineSpec {
            name: "workload".into(),
            toml: pipeline,
            base_dir: f.dir.path().display().to_string(),
        },
        shard: protocol::ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            extract: None,
            inputs: vec![protocol::ShardInput {
                object: protocol::ObjectRef {
                    key: "deleted.ndjson".into(),
                    size: 1000,
                },
                range: None,
            }],
        },
        output_prefix: "web_events".into(),
        quarantine_prefix: "quarantine/workload/orphan".into(),
        manifest_key: "manifests/orphan/s00000.json".into(),
        source_url: Some(format!("s3://{}/raw/", f.bucket)),
        output_url: Some(format!("s3://{}/lake", f.bucket)),
        files_url: Some(format!("s3://{}/tributary", f.bucket)),
    })
    .to_body();
    f.send_tasks(&[
        "this is not json".into(),
        r#"{"v":99,"kind":"task","task_id":"x"}"#.into(),
        gone,
    ]);
    // And a completion the coordinator cannot read.
    f.send_to(
        &f.results_url.clone(),
        &["{\"v\":1,\"kind\":\"result\"}".into()],
    );
    f.start_coordinator(None);
    f.start_worker(None);
    f.start_worker(None);
    let run = f.trigger();
    assert_run_matches_embedded(&f, &run, &input, shard);
    let c = f.coordinator_metrics();
    assert_eq!(
        sample(
            &c,
            "tributary_coordinator_messages_dead_lettered_total",
            &["queue=\"results\""]
        ),
        Some(1.0),
        "{c}\n{}",
        f.logs()
    );
    let dead = f.dead_letters();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 3, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported protocol version 99")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("deleted.ndjson") && r.contains("not found")),
        "{reasons:#?}"
    );
}

#[test]
fn the_same_task_delivered_twice_at_once_gives_one_set_of_outputs() {
    let Some((mut f, input, shard)) = setup("fleet-twice") else {
        return;
    };
    f.start_coordinator(Some("duplicate_tasks"));
    f.start_worker(None);
    f.start_worker(None);
    let run = f.trigger();
    let rec = assert_run_matches_embedded(&f, &run, &input, shard);
    let shards = rec["shards"].as_u64().unwrap() as usize;
    let done = f.logs().matches("task succeeded").count();
    assert!(
        done > shards,
        "some tasks really ran twice ({done} runs of {shards} shards)"
    );
}

#[test]
fn a_failing_load_statement_is_retried_and_the_ledger_prevents_a_double_load() {
    let Some((mut f, input, shard)) = setup("fleet-load-fail") else {
        return;
    };
    f.start_coordinator(None); // creates the ledger
    // The first ledger insert fails, rolling back its whole load transaction. A sequence is not
    // transactional, so the failure happens exactly once.
    f.pg_exec(
        "CREATE SEQUENCE fault_seq;
         CREATE FUNCTION fail_once() RETURNS trigger AS $$
         BEGIN
           IF nextval('fault_seq') = 1 THEN
             RAISE EXCEPTION 'injected failure: ledger insert refused';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER fail_once BEFORE INSERT ON _tributary_load_ledger
           FOR EACH ROW EXECUTE FUNCTION fail_once();",
    );
    f.start_worker(None);
    f.start_worker(None);
    let run = f.trigger();
    let rec = assert_run_matches_embedded(&f, &run, &input, shard);
    assert!(rec["load_failures"].as_u64().unwrap() >= 1, "{rec:#}");
    let c = f.coordinator_metrics();
    assert!(
        sample(&c, "tributary_load_batches_total", &["outcome=\"failed\""]).unwrap() >= 1.0,
        "{c}"
    );
    assert!(f.logs().contains("injected failure"), "{}", f.logs());
}

#[test]
fn a_cron_schedule_starts_runs_without_a_trigger() {
    let Some((mut f, input, shard)) = setup("fleet-cron") else {
        return;
    };
    f.set_cron("*/2 * * * * *");
    f.start_coordinator(None);
    f.start_worker(None);
    let pipelines = f.get("/api/pipelines").expect("pipelines");
    assert_eq!(pipelines[0]["cron"], "*/2 * * * * *", "{pipelines:#}");
    assert!(pipelines[0]["next_run"].as_str().is_some(), "{pipelines:#}");
    let t0 = std::time::Instant::now();
    let run = loop {
        if let Some(runs) = f.get("/api/runs")
            && let Some(id) = runs[0]["run_id"].as_str()
        {
            break id.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no scheduled run:\n{}",
            f.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_run_matches_embedded(&f, &run, &input, shard);
}

#[test]
fn a_real_prometheus_scrapes_the_worker_and_the_coordinator() {
    let Some(prometheus) = tool("TRIBUTARY_PROMETHEUS") else {
        return;
    };
    let Some((mut f, input, shard)) = setup("fleet-prometheus") else {
        return;
    };
    f.start_coordinator(None);
    let w = f.start_worker(None);
    let run = f.trigger();
    assert_run_matches_embedded(&f, &run, &input, shard);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = f.api.trim_start_matches("http://").to_string();
    let config = f.dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tributary-coordinator\n    static_configs: [{{targets: ['{api}']}}]\n  - job_name: tributary-worker\n    static_configs: [{{targets: ['{}']}}]\n",
            f.worker_addr(w)
        ),
    )
    .unwrap();
    let mut server = std::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            f.dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let query = |q: &str| -> Option<serde_json::Value> {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "--get",
                &format!("http://127.0.0.1:{port}/api/v1/query"),
                "--data-urlencode",
                &format!("query={q}"),
            ])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = v["data"]["result"].as_array()?.first()?.clone();
        Some(r)
    };
    let t0 = std::time::Instant::now();
    let mut got = (None, None);
    while t0.elapsed() < Duration::from_secs(60) && (got.0.is_none() || got.1.is_none()) {
        got = (
            query("sum(tributary_worker_tasks_total{outcome=\"succeeded\"})"),
            query("tributary_coordinator_runs_total{status=\"completed\"}"),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = server.kill();
    let _ = server.wait();
    let (worker, coord) = (
        got.0.expect("Prometheus answers for the worker"),
        got.1.expect("Prometheus answers for the coordinator"),
    );
    assert!(
        worker["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 8.0,
        "{worker}"
    );
    assert_eq!(coord["value"][1], "1", "{coord}");
}

#[test]
fn a_shard_whose_object_vanished_fails_with_its_reason_and_the_rest_is_loaded() {
    let Some((mut f, input, shard)) = setup("fleet-vanished") else {
        return;
    };
    // A second, small source object: planned into a shard of its own, then deleted before any
    // worker runs.
    let data = std::fs::read_to_string(&input).unwrap();
    let extra: String = data.lines().take(50).map(|l| format!("{l}\n")).collect();
    f.s3_put("raw/extra.ndjson", extra.into_bytes());
    f.start_coordinator(None);
    let run = f.trigger();
    f.s3_delete("raw/extra.ndjson");
    f.start_worker(None);
    f.start_worker(None);
    let rec = f.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(rec["status"], "failed", "{rec:#}");
    let failed = rec["failed_shards"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{rec:#}");
    let why = failed[0][1].as_str().unwrap();
    assert!(
        why.contains("extra.ndjson") && why.contains("not found"),
        "{why}"
    );
    // Nothing else is lost: every other shard is loaded, exactly as the embedded run of the
    // remaining object.
    assert_eq!(fleet_table(&f), embedded_table(&input, shard));
    let c = f.coordinator_metrics();
    assert_eq!(
        sample(
            &c,
            "tributary_coordinator_shards_total",
            &["outcome=\"failed\""]
        ),
        Some(1.0),
        "{c}"
    );
    assert_eq!(
        sample(
            &c,
            "tributary_coordinator_runs_total",
            &["status=\"failed\""]
        ),
        Some(1.0)
    );
    // The failed task is in the dead-letter queue with the same reason.
    let dead = f.dead_letters();
    assert!(
        dead.iter().any(|d| d.reason.contains("extra.ndjson")),
        "{dead:#?}"
    );
    // The object is back: `retry --server` redoes that shard only, in the same run.
    f.s3_put(
        "raw/extra.ndjson",
        data.lines()
            .take(50)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let out = tributary_tests::coordinator(&["retry", &run, "--server", &f.api], None);
    let said = tributary_tests::ok(&out);
    assert!(said.contains("1 failed shard(s) sent again"), "{said}");
    let rec = f.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    assert_eq!(rec["shards_done"], rec["shards"], "{rec:#}");
    assert_eq!(
        fleet_table(&f),
        embedded_table(&input, shard),
        "the retried shard's rows are the same keys: merged, nothing doubled"
    );
    let detail = tributary_tests::ok(&tributary_tests::coordinator(
        &["status", &run, "--server", &f.api],
        None,
    ));
    assert!(
        detail.contains(&format!("run {run} of pipeline workload")) && detail.contains("completed"),
        "{detail}"
    );
}

/// Rows of each Parquet file under `lake/` in the test bucket, read from the footers.
fn lake_rows(f: &Fleet) -> std::collections::BTreeMap<String, u64> {
    use parquet::file::reader::FileReader;
    f.s3_keys("lake/")
        .into_iter()
        .filter(|k| k.ends_with(".parquet"))
        .map(|k| {
            let bytes = bytes::Bytes::from(f.s3_get(&k));
            let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes)
                .expect("a Parquet file");
            let rows = reader.metadata().file_metadata().num_rows() as u64;
            (k, rows)
        })
        .collect()
}

/// Regression (issue 8), on S3: every incremental run overwrote the previous run's
/// `part-s00000-NNNNN.parquet` in the partitions they shared.
#[test]
fn two_runs_into_the_same_lake_keep_both_runs_files_and_the_table_is_their_union() {
    let Some(python) = python() else { return };
    let inputs = tempfile::tempdir().unwrap();
    let a = generate_workload(&python, 8_000, 7, &inputs.path().join("events-a.ndjson"));
    let b = generate_workload(&python, 8_000, 8, &inputs.path().join("events-b.ndjson"));
    let shard = std::fs::metadata(&a).unwrap().len() / 4 + 1;
    let Some(mut f) = Fleet::new("fleet-two-runs", &a, shard) else {
        return;
    };
    f.start_coordinator(None);
    f.start_worker(None);
    f.start_worker(None);
    let first = f.trigger();
    let rec1 = f.wait_run(&first, RUN_TIMEOUT);
    assert_eq!(rec1["status"], "completed", "{rec1:#}\n{}", f.logs());
    let after_first = lake_rows(&f);
    // The next increment: a new object, the old one gone from the source.
    f.s3_delete("raw/events-a.ndjson");
    f.s3_put("raw/events-b.ndjson", std::fs::read(&b).unwrap());
    let second = f.trigger();
    let rec2 = f.wait_run(&second, RUN_TIMEOUT);
    assert_eq!(rec2["status"], "completed", "{rec2:#}\n{}", f.logs());
    let after_second = lake_rows(&f);
    for (k, rows) in &after_first {
        assert_eq!(
            after_second.get(k),
            Some(rows),
            "{k} was overwritten or lost"
        );
    }
    let dirs = |m: &std::collections::BTreeMap<String, u64>| -> BTreeSet<String> {
        m.keys()
            .map(|k| k.rsplit_once('/').unwrap().0.to_string())
            .collect()
    };
    assert!(!dirs(&after_first).is_disjoint(&dirs(&after_second)));
    let rows_out =
        rec1["counts"]["rows_out"].as_u64().unwrap() + rec2["counts"]["rows_out"].as_u64().unwrap();
    assert_eq!(
        after_second.values().sum::<u64>(),
        rows_out,
        "both runs' rows"
    );
    // One commit record per run, listing exactly the lake's files.
    let mut listed = std::collections::BTreeMap::new();
    for run in [&first, &second] {
        let c: serde_json::Value =
            serde_json::from_slice(&f.s3_get(&format!("lake/_tributary/commits/{run}.json")))
                .expect("a commit record");
        assert_eq!(c["status"], "completed");
        for file in c["files"].as_array().unwrap() {
            listed.insert(
                format!("lake/{}", file["key"].as_str().unwrap()),
                file["rows"].as_u64().unwrap(),
            );
        }
    }
    assert_eq!(listed, after_second);
    // The table is the union: what one embedded run over both objects loads.
    assert_eq!(fleet_table(&f), embedded_table(inputs.path(), shard));
}

/// Issue 8: a panic in a CPU job aborted the whole worker process.
#[test]
fn a_shard_that_panics_is_dead_lettered_with_the_panic_and_the_worker_serves_the_rest() {
    let Some((mut f, _input, _shard)) = setup("fleet-panic") else {
        return;
    };
    f.start_coordinator(None);
    let w = f.start_worker(Some("panic_in_shard=s00003"));
    let run = f.trigger();
    let rec = f.wait_run(&run, RUN_TIMEOUT);
    assert_eq!(rec["status"], "failed", "{rec:#}");
    let failed = rec["failed_shards"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{rec:#}");
    assert_eq!(failed[0][0], "s00003");
    let why = failed[0][1].as_str().unwrap();
    assert!(
        why.contains("panicked: injected panic in shard s00003"),
        "{why}"
    );
    assert_eq!(
        rec["shards_done"].as_u64().unwrap() + 1,
        rec["shards"].as_u64().unwrap(),
        "every other shard was done by the same worker"
    );
    assert!(
        f.procs[w].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    assert!(
        f.dead_letters()
            .iter()
            .any(|d| d.reason.contains("panicked")),
        "dead-lettered with the panic as the reason"
    );
}

/// Issue 8: a worker whose own `storage.files` differs from the coordinator's writes its
/// manifests where the task says, so the coordinator finds them.
#[test]
fn workers_write_manifests_where_the_task_says() {
    let Some((mut f, input, shard)) = setup("fleet-files-url") else {
        return;
    };
    f.start_coordinator(None);
    let elsewhere = format!("s3://{}/elsewhere", f.bucket);
    f.start_worker_with_env(&[("TRIBUTARY_STORAGE_FILES", &elsewhere)]);
    let run = f.trigger();
    assert_run_matches_embedded(&f, &run, &input, shard);
    assert!(f.s3_keys("elsewhere/manifests/").is_empty());
}

/// Issue 8: a missing bucket or queue, or an unreachable endpoint, stops a process at start
/// with an error naming the setting (and the address dialled).
#[test]
fn missing_buckets_queues_and_endpoints_are_refused_at_start_by_setting() {
    let Some((f, _input, _shard)) = setup("fleet-bad-settings") else {
        return;
    };
    let missing_queue = f.tasks_url.replace("-tasks", "-no-such-queue");
    // (binary, environment, what its error must say)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "coordinator",
            vec![(
                "TRIBUTARY_STORAGE_FILES",
                "s3://no-such-bucket-tributary/x".into(),
            )],
            vec!["storage.files".into(), "does not exist".into()],
        ),
        (
            "worker",
            vec![(
                "TRIBUTARY_STORAGE_LAKE",
                "s3://no-such-bucket-tributary/lake".into(),
            )],
            vec!["storage.lake".into(), "does not exist".into()],
        ),
        (
            "worker",
            vec![("TRIBUTARY_QUEUES_TASKS_URL", missing_queue.clone())],
            vec!["queues.tasks_url".into(), "queue does not exist".into()],
        ),
        (
            "coordinator",
            vec![
                ("TRIBUTARY_AWS_ENDPOINT_URL", "http://127.0.0.1:9".into()),
                ("TRIBUTARY_AWS_MAX_ATTEMPTS", "1".into()),
            ],
            vec!["dialled 127.0.0.1:9, from aws.endpoint_url".into()],
        ),
    ];
    for (bin, env, wants) in cases {
        let out = f.run_to_exit(bin, &env, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} {env:?} started:\n{err}");
        for w in &wants {
            assert!(
                err.contains(w.as_str()),
                "{bin} {env:?}: wanted {w:?} in:\n{err}"
            );
        }
    }
}

/// The image built from the repository's Dockerfile runs the fleet's workers: two worker
/// containers (`--network host`, non-root, read-only root) against moto and PostgreSQL load the
/// same table as the embedded run. `TRIBUTARY_TEST_IMAGE` names the image (scripts/test builds
/// `localhost/tributary:test` with scripts/build-image).
#[test]
fn workers_in_containers_load_the_same_table_as_the_embedded_run() {
    let Some(image) = tool("TRIBUTARY_TEST_IMAGE") else {
        return;
    };
    let Some((mut f, input, shard)) = setup("fleet-containers") else {
        return;
    };
    f.start_coordinator(None);
    let w0 = f.start_worker_container(&image);
    let w1 = f.start_worker_container(&image);
    let run = f.trigger();
    assert_run_matches_embedded(&f, &run, &input, shard);
    let worked = [w0, w1]
        .iter()
        .filter(|&&w| f.procs[w].log.lock().unwrap().contains("task succeeded"))
        .count();
    assert!(worked >= 1, "no container did a task:\n{}", f.logs());
}

/// Issue 8: a task whose manifest location the worker cannot write to fails with the reason
/// (dead-lettered, and reported), and the worker goes on.
#[test]
fn a_task_naming_a_bucket_the_worker_cannot_write_fails_with_the_reason() {
    let Some((mut f, input, _shard)) = setup("fleet-unwritable") else {
        return;
    };
    let pipeline = std::fs::read_to_string(f.dir.path().join("workload.toml")).unwrap();
    let name = input.file_name().unwrap().to_string_lossy().to_string();
    let size = std::fs::metadata(&input).unwrap().len();
    let task = protocol::Message::Task(protocol::TaskMessage {
        max_string_bytes: None,
        task_id: "elsewhere/s00000".into(),
        run_id: "elsewhere".into(),
        pipeline: protocol::PipelineSpec {
            name: "workload".into(),
            toml: pipeline,
            base_dir: f.dir.path().display().to_string(),
        },
        shard: protocol::ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            extract: None,
            inputs: vec![protocol::ShardInput {
                object: protocol::ObjectRef { key: name, size },
                range: Some(protocol::ByteRange {
                    start: 0,
                    end: size.min(20_000),
                }),
            }],
        },
        output_prefix: "web_events".into(),
        quarantine_prefix: "quarantine/workload/elsewhere".into(),
        manifest_key: "manifests/elsewhere/s00000.json".into(),
        source_url: Some(format!("s3://{}/raw/", f.bucket)),
        output_url: Some(format!("s3://{}/lake", f.bucket)),
        files_url: Some("s3://no-such-bucket-tributary/tributary".into()),
    })
    .to_body();
    f.send_tasks(&[task]);
    let w = f.start_worker(None);
    assert!(
        f.procs[w].wait_for_log("task failed", Duration::from_secs(60)),
        "{}",
        f.logs()
    );
    let t0 = std::time::Instant::now();
    let dead = loop {
        let d = f.dead_letters();
        if !d.is_empty() || t0.elapsed() > Duration::from_secs(30) {
            break d;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(
        dead[0].reason.contains("no-such-bucket-tributary")
            && dead[0].reason.contains("NoSuchBucket"),
        "{}",
        dead[0].reason
    );
    assert!(
        f.procs[w].child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Issue 8: a task handed back at the end of a drain left its quarantine file (raw rows with
/// e-mail addresses) in the worker's scratch dir.
#[test]
fn a_task_given_back_at_the_end_of_a_drain_leaves_no_scratch() {
    let Some((mut f, input, shard)) = setup("fleet-drain-scratch") else {
        return;
    };
    f.start_coordinator(None);
    let scratch = f.dir.path().join(format!("scratch{}", 0));
    let w = f.start_worker(Some("hang_mid_shard"));
    let run = f.trigger();
    assert!(
        f.procs[w].wait_for_log("FAULT: hanging mid-shard", Duration::from_secs(120)),
        "{}",
        f.logs()
    );
    assert!(
        files_under(&scratch)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".quarantine.ndjson")),
        "the hanging task holds its quarantine in scratch: {:?}",
        files_under(&scratch)
    );
    f.procs[w].sigterm();
    let st = f.procs[w].child.wait().unwrap();
    assert!(st.success(), "worker exit status {st}");
    assert!(
        f.procs[w]
            .log
            .lock()
            .unwrap()
            .contains("releasing the task to the queue"),
        "{}",
        f.logs()
    );
    let left = files_under(&scratch);
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    f.start_worker(None);
    assert_run_matches_embedded(&f, &run, &input, shard);
}
