//! Helpers for the cross-process tests in `tests/tests/`: they start the real `coordinator`
//! binary (built on first use) as a child process, with fault injection through
//! `TRIBUTARY_FAULT`.

pub mod api;
pub mod chaos;
pub mod chaos_local;
pub mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The path of the `coordinator` binary of this build, building it if needed.
pub fn coordinator_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> (a test) or target/<profile>/<bin> (the chaos binary)
        // → target/<profile>
        let mut profile_dir = exe.parent().expect("target dir").to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir = profile_dir.parent().expect("target dir").to_path_buf();
        }
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The same command as scripts/lib/build.sh: one feature resolution for the whole
        // workspace, so this neither rebuilds the tree nor replaces the binary the tests and
        // the image share with a differently featured one.
        cmd.args(["build", "-q", "--workspace", "--all-targets"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("cargo build runs");
        assert!(st.success(), "building the coordinator failed");
        profile_dir.join("coordinator")
    })
    .clone()
}

/// Runs the coordinator with `args`; `fault` sets TRIBUTARY_FAULT.
pub fn coordinator(args: &[&str], fault: Option<&str>) -> Output {
    coordinator_with(args, fault, &[])
}

/// The coordinator binary as a command, without the fault hook or data dir this process's
/// environment may carry.
pub fn coordinator_command() -> Command {
    let mut cmd = Command::new(coordinator_bin());
    cmd.env_remove("TRIBUTARY_FAULT")
        .env_remove("TRIBUTARY_DATA_DIR");
    cmd
}

/// Runs the coordinator with `args` and these extra environment variables.
pub fn coordinator_with(args: &[&str], fault: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = coordinator_command();
    cmd.args(args);
    if let Some(f) = fault {
        cmd.env("TRIBUTARY_FAULT", f);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("coordinator starts")
}

pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "coordinator failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `STATS {json}` line of a run.
pub fn stats(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("STATS "))
        .expect("a STATS line");
    serde_json::from_str(&line[6..]).expect("STATS is JSON")
}

/// The `QUALITY {json}` line of a run's output.
pub fn quality(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("QUALITY "))
        .expect("a QUALITY line");
    serde_json::from_str(&line[8..]).expect("QUALITY is JSON")
}

/// A table's rows as text, sorted, without the batch lineage column (batch ids name their run).
pub fn table(data_dir: &Path, sql: &str) -> String {
    ok(&coordinator(
        &["sql", "--data-dir", data_dir.to_str().unwrap(), sql],
        None,
    ))
}

/// `coordinator run PIPELINE --data-dir DATA --no-progress EXTRA…`, optionally with a fault.
pub fn run_pipeline(pipeline: &Path, data: &Path, extra: &[&str], fault: Option<&str>) -> Output {
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    coordinator(&args, fault)
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Every Parquet file under `dir`, relative and sorted.
pub fn parquet_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Writes the demo's web-events pipeline and `files` days of generated events under `root`;
/// returns the pipeline path.
pub fn web_fixture(root: &Path, rows: usize, files: u64) -> PathBuf {
    let demo = root.join("fixture");
    let pipelines = coordinator::demo::write_demo(&demo, 10).expect("demo files");
    let web = demo.join("sources/web");
    for e in std::fs::read_dir(&web).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for i in 0..files {
        std::fs::write(
            web.join(format!("events-part{i}.ndjson")),
            coordinator::demo::web_events(rows, 1000 + i),
        )
        .unwrap();
    }
    pipelines[0].clone()
}

/// A gzip member written by hand (stored blocks), so the test needs no compression crate.
pub fn stored_gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    for (i, chunk) in data.chunks(65535).enumerate() {
        let last = (i + 1) * 65535 >= data.len();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        std::io::Write::write_all(&mut out, &len.to_le_bytes()).unwrap();
        std::io::Write::write_all(&mut out, &(!len).to_le_bytes()).unwrap();
        out.extend_from_slice(chunk);
    }
    let crc = crc32(data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The CRC-32 of a gzip trailer.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}
