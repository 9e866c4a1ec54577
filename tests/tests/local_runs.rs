//! End-to-end runs of the real coordinator binary on the embedded backends, with crashes.

use std::path::Path;

use tributary_tests::*;

const ROWS_SQL: &str = "SELECT event_id, ts, user_id, event_type, country, email_sha256, ip_masked, device_os, device_browser, event_date \
                        FROM web_events ORDER BY event_id";

#[test]
fn demo_runs_end_to_end_and_is_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = ok(&coordinator(
        &[
            "demo",
            "--data-dir",
            data.to_str().unwrap(),
            "--rows",
            "3000",
        ],
        None,
    ));
    for name in ["web_events", "pos_sales", "billing"] {
        assert!(
            out.contains(&format!("{name}: run ")) && out.contains("completed"),
            "{out}"
        );
    }
    assert!(
        out.contains("warehouse.db") && out.contains("sql --data-dir"),
        "{out}"
    );
    for name in ["web_events", "pos_sales", "billing_invoices"] {
        let t = table_count(&data, name);
        assert!(t > 0, "{name} is empty");
    }
    // Every invoice with status 'test' was filtered; every sale has a known store region.
    assert_eq!(
        table_count_where(&data, "billing_invoices", "status = 'test'"),
        0
    );
    assert_eq!(table_count_where(&data, "pos_sales", "region IS NULL"), 0);
    // Quarantine holds the malformed lines with their location and reason.
    let q = std::fs::read_dir(data.join("files/quarantine/web_events"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let first = std::fs::read_dir(&q)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(first).unwrap();
    let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        rec["object"].is_string() && rec["offset"].is_u64() && rec["reason"].is_string(),
        "{rec}"
    );
    let status = ok(&coordinator(
        &["status", "--data-dir", data.to_str().unwrap()],
        None,
    ));
    assert_eq!(status.matches("completed").count(), 3, "{status}");
}

/// File paths with the run id in each name replaced by `RUN`: the runs of two data dirs have
/// different ids but the same shards and files.
fn without_run_ids(files: Vec<String>) -> Vec<String> {
    files
        .into_iter()
        .map(|f| {
            let (dir, name) = f.rsplit_once('/').unwrap_or(("", &f));
            let mut parts = name.rsplitn(3, '-');
            let (seq, shard) = (parts.next().unwrap(), parts.next().unwrap());
            format!("{dir}/part-RUN-{shard}-{seq}")
        })
        .collect()
}

fn table_count(data: &Path, table: &str) -> u64 {
    table_count_where(data, table, "1 = 1")
}

fn table_count_where(data: &Path, name: &str, cond: &str) -> u64 {
    let t = table(
        data,
        &format!("SELECT count(*) AS n FROM {name} WHERE {cond}"),
    );
    t.lines().nth(2).unwrap().trim().parse().unwrap()
}

#[test]
fn dedupe_is_exact_whatever_the_sharding() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = web_fixture(dir.path(), 6000, 3);
    let whole = dir.path().join("whole");
    let split = dir.path().join("split");
    let a = stats(&ok(&run_pipeline(
        &pipeline,
        &whole,
        &["--shard-size", "100000000"],
        None,
    )));
    let b = stats(&ok(&run_pipeline(
        &pipeline,
        &split,
        &["--shard-size", "50000", "--workers", "3"],
        None,
    )));
    assert_eq!(a["shards"], 1);
    assert!(b["shards"].as_u64().unwrap() > 20, "{b}");
    // Within one shard every duplicate is caught by the worker; across shards by the load's MERGE.
    assert!(
        b["rows_out"].as_u64() > a["rows_out"].as_u64(),
        "some duplicates straddle shards: {a} {b}"
    );
    assert_eq!(a["rows_in_table"], a["rows_out"]);
    assert_eq!(a["rows_in_table"], b["rows_in_table"]);
    assert_eq!(a["lines_total"], b["lines_total"]);
    assert_eq!(table(&whole, ROWS_SQL), table(&split, ROWS_SQL));
}

#[test]
fn a_killed_run_resumes_without_redoing_or_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = web_fixture(dir.path(), 4000, 2);
    let clean = dir.path().join("clean");
    let crashed = dir.path().join("crashed");
    let args = ["--shard-size", "200000", "--workers", "1"];
    let a = stats(&ok(&run_pipeline(&pipeline, &clean, &args, None)));

    let killed = run_pipeline(&pipeline, &crashed, &args, Some("crash_after_shards=3"));
    assert!(
        !killed.status.success(),
        "the fault should have killed the run"
    );
    let status = ok(&coordinator(
        &["status", "--data-dir", crashed.to_str().unwrap()],
        None,
    ));
    assert!(
        status.contains("running") && status.contains("shards 3/"),
        "{status}"
    );

    let out = ok(&run_pipeline(&pipeline, &crashed, &args, None));
    assert!(out.contains("(resumed)"), "{out}");
    let b = stats(&out);
    assert_eq!(a["rows_out"], b["rows_out"]);
    assert_eq!(a["lines_total"], b["lines_total"]);
    assert_eq!(table(&clean, ROWS_SQL), table(&crashed, ROWS_SQL));
    assert_eq!(
        without_run_ids(parquet_files(&clean.join("lake"))),
        without_run_ids(parquet_files(&crashed.join("lake"))),
        "no extra files after the resume"
    );
    let leftovers: Vec<_> = std::fs::read_dir(crashed.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "scratch of the killed attempt is cleaned: {leftovers:?}"
    );
}

/// Small load batches, so that a run loads several.
const BATCHED: [&str; 6] = [
    "--shard-size",
    "300000",
    "--batch-rows",
    "1000",
    "--workers",
    "1",
];

/// A fixture run cleanly into `dir/clean` and killed by `fault` in `dir/crashed`, both with
/// [`BATCHED`]: (pipeline, clean, crashed).
fn clean_and_crashed(
    dir: &Path,
    fault: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let pipeline = web_fixture(dir, 4000, 2);
    let (clean, crashed) = (dir.join("clean"), dir.join("crashed"));
    ok(&run_pipeline(&pipeline, &clean, &BATCHED, None));
    let killed = run_pipeline(&pipeline, &crashed, &BATCHED, Some(fault));
    assert!(
        !killed.status.success(),
        "the fault {fault} should have killed the run"
    );
    (pipeline, clean, crashed)
}

#[test]
fn a_crash_after_a_load_commit_does_not_load_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, clean, crashed) = clean_and_crashed(dir.path(), "crash_after_load_commit");
    ok(&run_pipeline(&pipeline, &crashed, &BATCHED, None));
    assert_eq!(table(&clean, ROWS_SQL), table(&crashed, ROWS_SQL));
    // One ledger row per batch, although the first batch was loaded before the crash and offered
    // again after it.
    let ledger = table(
        &crashed,
        "SELECT count(*), count(DISTINCT batch_id) FROM _tributary_load_ledger",
    );
    let row: Vec<&str> = ledger
        .lines()
        .nth(2)
        .unwrap()
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(row[0], row[1]);
    assert!(row[0].parse::<u32>().unwrap() > 1, "{ledger}");
}

#[test]
fn a_run_killed_in_the_middle_of_a_load_keeps_the_last_commit_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, clean, crashed) = clean_and_crashed(dir.path(), "crash_mid_load");
    assert!(
        crashed.join("warehouse.db-journal").exists(),
        "the load died with its journal beside the file"
    );
    // A read-only query right after the crash sees the last commit: no batch, no rows.
    let ledger = table(&crashed, "SELECT count(*) FROM _tributary_load_ledger");
    assert_eq!(ledger.lines().nth(2).map(str::trim), Some("0"), "{ledger}");
    assert!(!crashed.join("warehouse.db-journal").exists());
    let out = ok(&run_pipeline(&pipeline, &crashed, &BATCHED, None));
    assert!(out.contains("(resumed)"), "{out}");
    assert_eq!(table(&clean, ROWS_SQL), table(&crashed, ROWS_SQL));
}

/// Rows of every Parquet file under `dir`, by relative path.
fn parquet_rows(dir: &Path) -> std::collections::BTreeMap<String, u64> {
    parquet_files(dir)
        .into_iter()
        .map(|f| {
            let file = std::fs::File::open(dir.join(&f)).unwrap();
            let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
            use parquet::file::reader::FileReader;
            let rows = reader.metadata().file_metadata().num_rows() as u64;
            (f, rows)
        })
        .collect()
}

/// Regression (issue 8): a second run into the same data dir overwrote the first run's
/// `part-s00000-NNNNN.parquet` in every partition the two shared, so the lake lost history.
#[test]
fn a_later_run_never_overwrites_an_earlier_runs_lake_files() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = web_fixture(dir.path(), 10, 1);
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(inputs.join("both")).unwrap();
    for seed in [1000u64, 2000] {
        let data = coordinator::demo::web_events(6000, seed);
        std::fs::write(inputs.join(format!("day{seed}.ndjson")), &data).unwrap();
        std::fs::write(inputs.join(format!("both/day{seed}.ndjson")), &data).unwrap();
    }
    let data = dir.path().join("data");
    let src = |seed: u64| inputs.join(format!("day{seed}.ndjson"));
    let a = stats(&ok(&run_pipeline(
        &pipeline,
        &data,
        &["--source", src(1000).to_str().unwrap()],
        None,
    )));
    let lake = data.join("lake");
    let after_first = parquet_rows(&lake);
    let b = stats(&ok(&run_pipeline(
        &pipeline,
        &data,
        &["--source", src(2000).to_str().unwrap()],
        None,
    )));
    let after_second = parquet_rows(&lake);
    // Every file of the first run is still there, unchanged, next to the second run's.
    for (f, rows) in &after_first {
        assert_eq!(
            after_second.get(f),
            Some(rows),
            "{f} was overwritten or lost"
        );
    }
    let partitions = |files: &std::collections::BTreeMap<String, u64>| {
        files
            .keys()
            .map(|f| f.rsplit_once('/').unwrap().0.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        !partitions(&after_first).is_disjoint(&partitions(&after_second)),
        "the two runs share partitions"
    );
    let lake_rows: u64 = after_second.values().sum();
    let (a_out, b_out) = (
        a["rows_out"].as_u64().unwrap(),
        b["rows_out"].as_u64().unwrap(),
    );
    assert_eq!(lake_rows, a_out + b_out, "the lake holds both runs' rows");
    // Each run's commit record lists exactly its files.
    let commits = lake.join("_tributary/commits");
    let mut listed = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&commits).unwrap() {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        assert_eq!(c["status"], "completed", "{c}");
        for f in c["files"].as_array().unwrap() {
            listed.insert(
                f["key"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            );
        }
    }
    assert_eq!(
        listed, after_second,
        "the commit records list every file once"
    );
    // The table is the union of both inputs, as one run over both gives it.
    assert_eq!(b["rows_in_table"].as_u64().unwrap(), a_out + b_out);
    let reference = dir.path().join("reference");
    ok(&run_pipeline(
        &pipeline,
        &reference,
        &["--source", inputs.join("both").to_str().unwrap()],
        None,
    ));
    assert_eq!(table(&data, ROWS_SQL), table(&reference, ROWS_SQL));
}

const EXPECT_PIPELINE: &str = r#"
[pipeline]
name = "orders"
[source]
location = "in"
glob = "*.ndjson"
format = "ndjson"
[[columns]]
name = "id"
type = "string"
[[columns]]
name = "qty"
type = "int32"
[[columns]]
name = "country"
type = "string"
[[columns]]
name = "code"
type = "string"
[[columns]]
name = "note"
type = "string"
[output]
columns = ["id", "qty", "country", "code", "note"]
[[expect]]
column = "note"
not_null = true
severity = "warn"
[[expect]]
column = "id"
unique = true
severity = "UNIQUE_SEVERITY"
[[expect]]
column = "country"
accepted_values = ["DE", "FR"]
severity = "warn"
[[expect]]
column = "qty"
range = { min = 1, max = 100 }
severity = "warn"
[[expect]]
column = "code"
matches = "[a-z]+"
severity = "warn"
[[expect]]
name = "qty_below_1000"
expr = "qty < 1000"
[[expect]]
min_rows = 4
"#;

/// Every kind of expectation, counted over two shards (the repeated id is in different files):
/// broken `warn` expectations are reported and the run loads; a broken `fail` one stops the load
/// and the run says which and by how much.
#[test]
fn expectations_are_judged_over_the_whole_run_and_gate_the_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let rows = |lines: &[&str]| lines.join("\n") + "\n";
    std::fs::write(
        dir.path().join("in/a.ndjson"),
        rows(&[
            r#"{"id":"a","qty":5,"country":"DE","code":"ab","note":"x"}"#,
            r#"{"id":"b","qty":500,"country":"XX","code":"A1","note":"y"}"#,
        ]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("in/b.ndjson"),
        rows(&[
            r#"{"id":"a","qty":7,"country":"FR","code":"cd"}"#,
            r#"{"id":"c","qty":null,"country":null,"code":"ef","note":"z"}"#,
        ]),
    )
    .unwrap();
    let p = dir.path().join("orders.toml");
    let data = dir.path().join("data");

    std::fs::write(&p, EXPECT_PIPELINE.replace("UNIQUE_SEVERITY", "warn")).unwrap();
    let out = ok(&run_pipeline(&p, &data, &["--shard-size", "1"], None));
    let q = quality(&out);
    assert_eq!(q["passed"], true, "{q}");
    let observed: Vec<(String, String, serde_json::Value)> = q["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("name"), s("status"), e["observed"].clone())
        })
        .collect();
    let want = |n: &str, st: &str, v: serde_json::Value| (n.to_string(), st.to_string(), v);
    assert_eq!(
        observed,
        vec![
            want("not_null(note)", "warn", 1.into()),
            want("unique(id)", "warn", 1.into()),
            want("accepted_values(country)", "warn", 1.into()),
            want("range(qty)", "warn", 1.into()),
            want("matches(code)", "warn", 1.into()),
            want("qty_below_1000", "pass", 0.into()),
            want("min_rows", "pass", 4.into()),
            want("max_rejected_ratio", "pass", 0.0.into()),
        ],
        "{q}"
    );
    assert_eq!(table_count(&data, "orders"), 4);

    std::fs::write(&p, EXPECT_PIPELINE.replace("UNIQUE_SEVERITY", "fail")).unwrap();
    let data2 = dir.path().join("data2");
    let out = run_pipeline(&p, &data2, &["--shard-size", "1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("unique(id) (observed 1, limit 0)"), "{err}");
    assert_eq!(
        quality(&String::from_utf8_lossy(&out.stdout))["failed"],
        serde_json::json!(["unique(id)"])
    );
    let sql = coordinator(
        &[
            "sql",
            "--data-dir",
            data2.to_str().unwrap(),
            "SELECT count(*) FROM orders",
        ],
        None,
    );
    assert!(!sql.status.success(), "nothing was loaded");
}
