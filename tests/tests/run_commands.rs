//! `coordinator runs`, `retry RUN` and `cancel RUN` in local mode (issue 10, item 7).

use std::path::Path;

use tributary_tests::*;

const PIPELINE: &str = r#"
[pipeline]
name = "events"
[source]
location = "in"
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[output]
columns = ["id"]
[load]
merge_keys = ["id"]
"#;

fn lines(prefix: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"id\": \"{prefix}{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A source of a good file and a gzip file cut short (its shard fails, not retried).
fn setup(root: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/a.ndjson"), lines("a", 50)).unwrap();
    let mut gz = stored_gzip(&lines("b", 50));
    gz.truncate(gz.len() / 2);
    std::fs::write(root.join("in/b.ndjson.gz"), gz).unwrap();
    let p = root.join("events.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    p
}

fn dd(data: &Path) -> &str {
    data.to_str().unwrap()
}

fn run_id(data: &Path) -> String {
    let runs = ok(&coordinator(
        &["runs", "--data-dir", dd(data), "--json"],
        None,
    ));
    let v: serde_json::Value = serde_json::from_str(&runs).unwrap();
    v[0]["run_id"].as_str().unwrap().to_string()
}

#[test]
fn a_failed_shard_is_retried_in_the_same_run_and_loaded_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = setup(dir.path());
    let data = dir.path().join("data");
    let first = run_pipeline(&p, &data, &["--shard-size", "100"], None);
    assert!(!first.status.success(), "the cut gzip fails its shard");
    let id = run_id(&data);
    let listed = ok(&coordinator(
        &["runs", p.to_str().unwrap(), "--data-dir", dd(&data)],
        None,
    ));
    assert!(
        listed.contains(&id) && listed.contains("failed"),
        "{listed}"
    );
    assert_eq!(count(&data), "50", "the good shard loaded");
    let st = ok(&coordinator(
        &["status", &id, "--data-dir", dd(&data)],
        None,
    ));
    for want in [
        ": failed",
        "1 failed",
        "b.ndjson.gz",
        "50 out",
        "quality: passed",
    ] {
        assert!(st.contains(want), "{want:?} in\n{st}");
    }

    std::fs::write(
        dir.path().join("in/b.ndjson.gz"),
        stored_gzip(&lines("b", 50)),
    )
    .unwrap();
    let out = ok(&coordinator(&["retry", &id, "--data-dir", dd(&data)], None));
    assert!(out.contains(&id) && out.contains("completed"), "{out}");
    assert_eq!(count(&data), "100");
    let again = coordinator(&["retry", &id, "--data-dir", dd(&data)], None);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no failed shards"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_cancelled_run_loads_nothing_more_and_the_next_run_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    for f in 0..4 {
        std::fs::write(
            dir.path().join(format!("in/{f}.ndjson")),
            lines(&format!("f{f}-"), 20),
        )
        .unwrap();
    }
    let p = dir.path().join("events.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let args = ["--shard-size", "100", "--workers", "1", "--batch-rows", "1"];
    let killed = run_pipeline(&p, &data, &args, Some("crash_after_shards=1"));
    assert!(!killed.status.success());
    let id = run_id(&data);
    let said = ok(&coordinator(
        &["cancel", &id, "--data-dir", dd(&data)],
        None,
    ));
    assert!(said.contains("cancel requested"), "{said}");
    let ended = ok(&run_pipeline(&p, &data, &args, None));
    assert!(
        ended.contains(&id) && ended.contains("cancelled"),
        "{ended}"
    );
    // Every run is gated by its default expectation: nothing loads before the verdict, and a
    // cancelled run never gets one.
    let tables = table(
        &data,
        "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
    );
    assert_eq!(tables.lines().nth(2).map(str::trim), Some("0"), "{tables}");
    let e = coordinator(&["cancel", &id, "--data-dir", dd(&data)], None);
    assert!(String::from_utf8_lossy(&e.stderr).contains("already ended: cancelled"));
    let fresh = ok(&run_pipeline(&p, &data, &args, None));
    assert!(
        !fresh.contains(&id) && fresh.contains("completed"),
        "{fresh}"
    );
    assert_eq!(count(&data), "80");
}

fn count(data: &Path) -> String {
    table(data, "SELECT count(*) FROM events")
        .lines()
        .nth(2)
        .unwrap_or_default()
        .trim()
        .to_string()
}
