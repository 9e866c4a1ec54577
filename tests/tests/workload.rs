//! The reference workload (`../shared/bench/WORKLOAD.md`): `coordinator run examples/workload*.toml
//! --output DIR` on generated data gives the reference counts and the same `verify.py` checksum as
//! the DuckDB and Polars peers.
//!
//! Needs Python with numpy and pyarrow (for `gen_events.py` and `verify.py`): `scripts/test`
//! creates it and sets `TRIBUTARY_PYTHON`. Without it the test fails under CI and is skipped with a
//! notice elsewhere.

use std::path::PathBuf;
use std::process::Command;

use tributary_tests::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn python() -> Option<String> {
    match std::env::var("TRIBUTARY_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("CI").is_ok() => {
            panic!("TRIBUTARY_PYTHON is not set (scripts/test sets it)")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set TRIBUTARY_PYTHON to a Python with numpy and pyarrow (scripts/test does)"
            );
            None
        }
    }
}

fn bench_dir() -> PathBuf {
    std::env::var("TRIBUTARY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/bench"))
}

fn py(python: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn workload_matches_the_peers_checksum_for_ndjson_and_csv() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bench = bench_dir();
    let gen_script = bench.join("gen_events.py");
    let verify = bench.join("verify.py");
    for (format, pipeline) in [
        ("ndjson", "examples/workload.toml"),
        ("csv", "examples/workload_csv.toml"),
    ] {
        let input = dir.path().join(format!("ev200k.{format}"));
        py(
            &python,
            &[
                gen_script.to_str().unwrap(),
                "--rows",
                "200000",
                "--seed",
                "42",
                "--format",
                format,
                "--out",
                input.to_str().unwrap(),
            ],
        );
        let out_dir = dir.path().join(format!("out-{format}"));
        let data = dir.path().join(format!("data-{format}"));
        let stdout = ok(&coordinator(
            &[
                "run",
                repo().join(pipeline).to_str().unwrap(),
                "--source",
                input.to_str().unwrap(),
                "--output",
                out_dir.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--no-progress",
            ],
            None,
        ));
        let s = stats(&stdout);
        // WORKLOAD.md section 5, 200,000 rows, seed 42.
        for (k, v) in [
            ("lines_total", 200_000),
            ("malformed", 382),
            ("bad_ts", 1007),
            ("unwanted", 21_358),
            ("duplicates", 3357),
            ("rows_out", 173_896),
        ] {
            assert_eq!(s[k], v, "{format}: {k} in {s}");
        }
        assert_eq!(s["rows_in_table"], 173_896);
        let v: serde_json::Value = serde_json::from_str(&py(
            &python,
            &[
                verify.to_str().unwrap(),
                out_dir.to_str().unwrap(),
                "--json",
            ],
        ))
        .unwrap();
        assert_eq!(v["checksum"], "4d53d7cfa465c88d", "{format}: {v}");
        assert_eq!(v["problems"], serde_json::json!([]));
        // Only partition folders in the output; the run's commit record is in the data dir and
        // lists every file of the output.
        let mut in_output = 0;
        for e in std::fs::read_dir(&out_dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            assert!(name.starts_with("event_date="), "{name} in --output");
            in_output += std::fs::read_dir(e.path()).unwrap().count();
        }
        let commits: Vec<_> = std::fs::read_dir(data.join("files/_tributary/commits"))
            .unwrap()
            .collect();
        assert_eq!(commits.len(), 1);
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(commits[0].as_ref().unwrap().path()).unwrap())
                .unwrap();
        assert_eq!(c["files"].as_array().unwrap().len(), in_output, "{c}");
        assert_eq!(c["rows"], 173_896);
    }
}
