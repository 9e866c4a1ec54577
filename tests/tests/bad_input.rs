//! Bad input gets a clear error or a quarantined row with its reason, and counts reconcile.

use std::path::Path;

use tributary_tests::*;

const PIPELINE: &str = r#"
[pipeline]
name = "bad"
[source]
location = "in"
glob = "*"
format = "ndjson"
max_line_bytes = 1000000
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "n"
type = "int64"
[[steps]]
op = "dedupe"
keys = ["id"]
[output]
columns = ["id", "n"]
[load]
merge_keys = ["id"]
# These inputs are mostly bad on purpose: they must still load.
[[expect]]
max_rejected_ratio = 0.9
"#;

fn setup(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join("in").join(name), data).unwrap();
    }
    let p = dir.path().join("p.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    (dir, p)
}

fn run(p: &Path, data: &Path) -> std::process::Output {
    run_pipeline(p, data, &[], None)
}

fn reconciles(s: &serde_json::Value) -> bool {
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    n("lines_total") == n("malformed") + n("invalid_value") + n("duplicates") + n("rows_out")
}

#[test]
fn bad_rows_are_quarantined_with_reasons_and_counts_reconcile() {
    let mut big = b"{\"id\":\"huge\",\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 << 20)); // a single 100 MB line
    big.extend_from_slice(b"\"}\n{\"id\":\"after-huge\",\"n\":1}\n");
    let (dir, p) = setup(&[
        ("a.ndjson", b"{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":\"seven\"}\nnot json\n{\"n\":3}\n\n{\"id\":\"\xff\xfe\"}\n{\"id\":\"a\",\"n\":9}\n{\"id\":\"c\"".to_vec()),
        ("b.ndjson", big),
        ("empty.ndjson", Vec::new()),
    ]);
    let data = dir.path().join("data");
    let out = ok(&run(&p, &data));
    let s = stats(&out);
    assert!(reconciles(&s), "{s}");
    assert_eq!(s["lines_total"], 10, "{s}");
    assert_eq!(s["invalid_value"], 1, "{s}");
    assert_eq!(s["malformed"], 6, "{s}"); // not json, no id, empty line, bad UTF-8, cut short, 100 MB line
    assert_eq!(s["duplicates"], 1, "{s}");
    assert_eq!(s["rows_out"], 2, "{s}");
    let mut reasons = String::new();
    for e in files_under(&data.join("files/quarantine")) {
        reasons.push_str(&std::fs::read_to_string(e).unwrap());
    }
    for needle in [
        "expected int64, got \\\"seven\\\"",
        "not a JSON object",
        "required field \\\"id\\\"",
        "not valid UTF-8",
        "exceeds source.max_line_bytes",
        "raw_base64",
        "\"line\":3",
    ] {
        assert!(
            reasons.contains(needle),
            "quarantine lacks {needle:?}:\n{}",
            &reasons[..reasons.len().min(3000)]
        );
    }
    // The quarantine keeps the head of the huge line, not the line.
    assert!(reasons.len() < 1 << 20);
}

#[test]
fn corrupt_gzip_fails_the_shard_with_a_clear_error() {
    let mut gz = stored_gzip(b"{\"id\":\"a\"}\n".repeat(1000).as_slice());
    let n = gz.len();
    gz.truncate(n / 2);
    gz.extend_from_slice(&[0u8; 64]);
    let (dir, p) = setup(&[("c.ndjson.gz", gz)]);
    let out = run(&p, &dir.path().join("data"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("c.ndjson.gz") && err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn bad_config_and_missing_sources_are_refused_before_anything_runs() {
    let (dir, p) = setup(&[("a.ndjson", b"{\"id\":\"a\"}\n".to_vec())]);
    let data = dir.path().join("data");
    std::fs::write(
        &p,
        PIPELINE.replace("format = \"ndjson\"", "format = \"ndjson\"\nformt = 1"),
    )
    .unwrap();
    let out = run(&p, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("p.toml") && err.contains("formt"),
        "{err}"
    );
    assert!(!data.join("state").exists(), "nothing ran");

    let v = coordinator(&["validate", p.to_str().unwrap()], None);
    assert!(!v.status.success() && String::from_utf8_lossy(&v.stderr).contains("formt"));

    std::fs::write(
        &p,
        PIPELINE.replace("location = \"in\"", "location = \"nowhere\""),
    )
    .unwrap();
    let out = run(&p, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nowhere"), "{err}");

    std::fs::write(&p, PIPELINE.replace("glob = \"*\"", "glob = \"*.csv\"")).unwrap();
    let out = run(&p, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no source objects") && err.contains("*.csv"),
        "{err}"
    );

    std::fs::write(&p, PIPELINE).unwrap();
    assert!(
        coordinator(&["validate", p.to_str().unwrap()], None)
            .status
            .success()
    );
}

/// Regression (issue 9): a run whose every row was rejected exited 0 and loaded nothing,
/// without a warning. Now the default `max_rejected_ratio` (0.5) fails it: nothing is loaded,
/// the exit code is non-zero, and the QUALITY line, the error and the run's status say which
/// expectation failed and by how much.
#[test]
fn a_run_of_mostly_rejected_lines_is_not_loaded_and_says_why() {
    let (dir, p) = setup(&[(
        "a.ndjson",
        b"{\"id\":\"a\",\"n\":\"x\"}\n{\"id\":\"b\",\"n\":\"y\"}\n{\"id\":\"c\",\"n\":3}\n"
            .to_vec(),
    )]);
    let text = PIPELINE.split("# These inputs").next().unwrap();
    std::fs::write(&p, text).unwrap();
    let data = dir.path().join("data");
    let out = run(&p, &data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        err.contains("not loaded")
            && err.contains("max_rejected_ratio (observed 0.666667, limit 0.5)"),
        "{err}"
    );
    let q = quality(&stdout);
    assert_eq!(q["passed"], false, "{q}");
    assert_eq!(
        q["failed"],
        serde_json::json!(["max_rejected_ratio"]),
        "{q}"
    );
    assert_eq!(
        stats(&stdout)["rows_out"],
        1,
        "the rows were processed: {stdout}"
    );
    let dd = data.to_str().unwrap();
    let sql = coordinator(&["sql", "--data-dir", dd, "SELECT count(*) FROM bad"], None);
    assert!(!sql.status.success(), "no table was loaded");
    let status = ok(&coordinator(&["status", "--data-dir", dd], None));
    assert!(
        status.contains("failed") && status.contains("max_rejected_ratio"),
        "{status}"
    );
}

/// Regression (issue 9): a misspelled CSV header name (`Kunde_EMail`) validated and ran, with the
/// column silently all NULL. Now the run fails at its start, naming the column and the file.
#[test]
fn a_declared_csv_column_missing_from_the_header_fails_the_run_naming_it() {
    let (dir, p) = setup(&[(
        "sales.csv",
        b"Bon_Nr;Kunde_Email\n1;a@example.com\n".to_vec(),
    )]);
    let pipeline = r#"
[pipeline]
name = "pos"
[source]
location = "in"
glob = "*.csv"
format = "csv"
[source.csv]
delimiter = ";"
[[columns]]
name = "receipt"
path = "Bon_Nr"
type = "string"
[[columns]]
name = "email"
path = "Kunde_EMail"
type = "string"
[output]
columns = ["receipt", "email"]
"#;
    std::fs::write(&p, pipeline).unwrap();
    let data = dir.path().join("data");
    let out = run(&p, &data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("\"Kunde_EMail\" (column \"email\")") && err.contains("sales.csv"),
        "{err}"
    );
    assert!(err.contains("Kunde_Email"), "the header is shown: {err}");
    assert!(!data.join("state/runs").exists(), "no run was recorded");

    std::fs::write(&p, pipeline.replace("Kunde_EMail", "Kunde_Email")).unwrap();
    let out = ok(&run(&p, &data));
    assert_eq!(stats(&out)["rows_out"], 1, "{out}");
}

/// Regression (issue 8): `coordinator sql "DELETE FROM …"` deleted rows of the embedded warehouse.
#[test]
fn sql_refuses_write_statements_unless_write_is_given() {
    let (dir, p) = setup(&[(
        "a.ndjson",
        b"{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":2}\n".to_vec(),
    )]);
    let data = dir.path().join("data");
    ok(&run(&p, &data));
    let dd = data.to_str().unwrap();
    let count = || table(&data, "SELECT count(*) AS n FROM bad");
    let before = count();
    assert_eq!(before.lines().nth(2).map(str::trim), Some("2"));
    for stmt in ["DELETE FROM bad", "DROP TABLE bad", "UPDATE bad SET n = 0"] {
        let out = coordinator(&["sql", "--data-dir", dd, stmt], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stmt} was accepted");
        assert!(
            err.contains("read-only") && err.contains("--write") && err.contains(stmt),
            "{err}"
        );
    }
    assert_eq!(count(), before, "nothing changed");
    let out = ok(&coordinator(
        &[
            "sql",
            "--data-dir",
            dd,
            "--write",
            "DELETE FROM bad WHERE id = 'a'",
        ],
        None,
    ));
    assert!(out.contains("rows_changed") && out.contains('1'), "{out}");
    assert_eq!(count().lines().nth(2).map(str::trim), Some("1"));
}

/// Regression (issue 8): `sql` and `status` on a missing `--data-dir` created it before failing.
#[test]
fn sql_and_status_on_a_missing_data_dir_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-data");
    let dd = missing.to_str().unwrap();
    for args in [
        vec!["sql", "--data-dir", dd, "SELECT 1"],
        vec!["status", "--data-dir", dd],
    ] {
        let out = coordinator(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("does not exist") && err.contains(dd), "{err}");
        assert!(!missing.exists(), "{args:?} created {dd}");
    }
}
