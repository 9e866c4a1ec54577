//! Logs: JSON when configured, with the pipeline, run, task and shard ids on every line of task
//! work, and never a seeded PII value or a secret — even at the most verbose level.

use tributary_tests::*;

#[test]
fn logs_are_json_with_ids_and_never_carry_pii_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(coordinator_bin())
        .args(["demo", "--rows", "3000", "--data-dir"])
        .arg(dir.path())
        .env("TRIBUTARY_LOG", "trace")
        .env("TRIBUTARY_LOG_FORMAT", "json")
        .env_remove("TRIBUTARY_FAULT")
        .output()
        .unwrap();
    ok(&out);
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 6, "trace logging produced lines:\n{logs}");

    // Every line is one JSON object; every line of task work names its pipeline, run, task and
    // shard.
    let mut task_lines = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("worker::daemon"))
        {
            task_lines += 1;
            let span = &v["span"];
            for id in ["pipeline", "run", "task", "shard"] {
                assert!(span[id].is_string(), "no {id} on a task line: {l}");
            }
        }
    }
    assert!(task_lines >= 6, "task lines were logged ({task_lines})");

    // The seeded PII of the demo sources and the HMAC key never appear.
    let lower = logs.to_lowercase();
    for needle in ["@example.com", "@example.org", "demo-hmac-key-change-me"] {
        assert!(!lower.contains(needle), "{needle:?} appears in the logs");
    }
    let sources =
        std::fs::read_to_string(dir.path().join("demo/sources/web/events-part0.ndjson")).unwrap();
    let ips: Vec<&str> = sources
        .split("\"ip\":\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .take(200)
        .collect();
    assert!(!ips.is_empty());
    for ip in ips {
        assert!(
            !logs.contains(&format!("\"{ip}\"")) && !logs.contains(&format!(" {ip} ")),
            "IP {ip} appears in the logs"
        );
    }
}
