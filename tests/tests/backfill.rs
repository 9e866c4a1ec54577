//! `coordinator backfill` (issue 10): a file source dated by `time_template`, planned window by
//! window (a dry run writes nothing), then run and resumed.

use std::path::Path;

use tributary_tests::*;

const PIPELINE: &str = r#"
[pipeline]
name = "clicks"
[source]
location = "in"
format = "ndjson"
time_template = "%Y/%m/%d/"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "n"
type = "int64"
[output]
columns = ["id", "n"]
[load]
merge_keys = ["id"]
"#;

/// Five dated folders of one or two files each; returns each day's bytes.
fn five_days(root: &Path) -> Vec<u64> {
    let mut bytes = Vec::new();
    for day in 1..=5 {
        let dir = root.join(format!("in/2026/11/{day:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut total = 0;
        for f in 0..(1 + day % 2) {
            let body: String = (0..(10 * day + f))
                .map(|i| format!("{{\"id\": \"d{day}-f{f}-{i}\", \"n\": {i}}}\n"))
                .collect();
            std::fs::write(dir.join(format!("part-{f}.ndjson")), &body).unwrap();
            total += body.len() as u64;
        }
        bytes.push(total);
    }
    std::fs::write(root.join("in/README.txt"), "not dated\n").unwrap();
    bytes
}

fn backfill(p: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "backfill",
        p.to_str().unwrap(),
        "--from",
        "2026-11-02",
        "--to",
        "2026-11-04",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    coordinator(&args, None)
}

fn plan(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PLAN "))
        .expect("a PLAN line");
    serde_json::from_str(&line[5..]).unwrap()
}

#[test]
fn a_dry_run_plans_three_of_five_days_with_their_bytes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = five_days(dir.path());
    let p = dir.path().join("clicks.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let out = ok(&backfill(&p, &data, &["--dry-run"]));
    let v = plan(&out);
    assert_eq!(v["windows"], 3, "{v}");
    assert_eq!(v["bytes"], bytes[1] + bytes[2] + bytes[3], "{v}");
    assert_eq!(v["shards"], 3, "{v}");
    for (i, day) in [1usize, 2, 3].iter().enumerate() {
        assert_eq!(v["by_window"][i]["bytes"], bytes[*day], "{v}");
    }
    assert!(!data.exists(), "a dry run writes nothing");
}

#[test]
fn a_backfill_runs_its_windows_and_a_rerun_finds_them_done() {
    let dir = tempfile::tempdir().unwrap();
    five_days(dir.path());
    let p = dir.path().join("clicks.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let out = ok(&backfill(&p, &data, &["--max-in-flight", "1"]));
    assert!(out.contains("3 window(s) done (3 run now"), "{out}");
    // Days 2, 3 and 4: 20 + (30 + 31) + 40 rows.
    let n = table(&data, "SELECT count(*) FROM clicks");
    assert!(n.contains("121"), "{n}");
    let again = ok(&backfill(&p, &data, &[]));
    assert!(again.contains("3 window(s) done (0 run now"), "{again}");
}

#[test]
fn bad_backfill_ranges_and_templates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    five_days(dir.path());
    let p = dir.path().join("clicks.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let reversed = coordinator(
        &[
            "backfill",
            p.to_str().unwrap(),
            "--from",
            "2026-11-04",
            "--to",
            "2026-11-01",
            "--dry-run",
        ],
        None,
    );
    assert!(!reversed.status.success());
    assert!(String::from_utf8_lossy(&reversed.stderr).contains("empty or reversed"));
    let q = dir.path().join("other.toml");
    std::fs::write(&q, PIPELINE.replace("%Y/%m/%d/", "dt=%Y-%m-%d/")).unwrap();
    let none = backfill(&q, &data, &["--dry-run"]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("matches none of the"), "{err}");
    let r = dir.path().join("untimed.toml");
    std::fs::write(&r, PIPELINE.replace("time_template = \"%Y/%m/%d/\"\n", "")).unwrap();
    let untimed = backfill(&r, &data, &["--dry-run"]);
    assert!(String::from_utf8_lossy(&untimed.stderr).contains("needs [source] time_template"));
}
