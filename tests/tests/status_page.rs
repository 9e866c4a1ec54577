//! The coordinator's status page (issue 10, item 8), loaded from a running `coordinator serve`
//! in headless Chromium (Debian's `chromium`, which `scripts/test` installs): the page shows the
//! pipeline with its last run and freshness, the runs with their progress, rows by outcome and a
//! failed shard's reason, and the queues' backlog. A screenshot is kept as an artifact
//! (`$TRIBUTARY_ARTIFACTS/status-page.png`, default `target/artifacts/`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tributary_tests::fleet::*;

/// Headless Chromium as these machines run it: no sandbox (root), no GPU, and no background
/// connections (the network is closed), with a profile of its own.
fn chromium(bin: &str, profile: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        // The page's first fetch of /api/status completes within the budget.
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn artifacts() -> PathBuf {
    let dir = std::env::var("TRIBUTARY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/artifacts"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn the_status_page_shows_pipelines_runs_failures_and_backlog_in_a_browser() {
    let Some(bin) = tool("TRIBUTARY_CHROMIUM") else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let input = workload_file(&python, 5_000);
    let size = std::fs::metadata(&input).unwrap().len();
    let Some(mut f) = Fleet::new("status-page", &input, size / 3 + 1) else {
        return;
    };
    f.start_coordinator(None);
    f.start_worker(None);
    let ok_run = f.trigger();
    let rec = f.wait_run(&ok_run, Duration::from_secs(120));
    assert_eq!(rec["status"], "completed", "{rec:#}");
    // A second run with a shard whose object vanishes before a worker reads it.
    let data = std::fs::read_to_string(&input).unwrap();
    f.s3_put(
        "raw/late.ndjson",
        data.lines()
            .take(20)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes(),
    );
    let failed_run = f.trigger();
    f.s3_delete("raw/late.ndjson");
    let rec = f.wait_run(&failed_run, Duration::from_secs(120));
    assert_eq!(rec["status"], "failed", "{rec:#}");
    // The queues are polled every 10 s: wait for the page's backlog figures.
    let t0 = std::time::Instant::now();
    while f
        .get("/api/status")
        .is_none_or(|s| s["queues"]["tasks"].is_null())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "queues never polled"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/", f.api);
    let dom = chromium(&bin, profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs");
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("data-loaded=\"true\""),
        "the page rendered /api/status: {}\n{}",
        html,
        String::from_utf8_lossy(&dom.stderr)
    );
    for (what, needle) in [
        ("the pipeline", "<td>workload</td>"),
        ("the completed run", ok_run.as_str()),
        ("the failed run", failed_run.as_str()),
        ("its status", "class=\"status failed\""),
        ("the failed shard's reason", "late.ndjson"),
        ("progress", "shards"),
        ("rows out", "<th class=\"num\">Out</th>"),
        ("freshness", " ago</td>"),
        ("the backlog", "tasks backlog"),
        ("no backfill", "no backfill in progress"),
    ] {
        assert!(
            html.contains(needle),
            "the page shows {what} ({needle:?}):\n{html}"
        );
    }
    let shot = artifacts().join("status-page.png");
    let out = chromium(&bin, profile.path())
        .arg("--window-size=1400,900")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("chromium runs");
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("status page screenshot: {}", shot.display());
}
