//! Randomized crash trials of a local run (`scripts/chaos --local-trials N`): `coordinator run`
//! with the embedded queue and warehouse, killed with `kill -9` at moments drawn from the seed
//! (planning, shards in flight, a load's transaction, the run's end), rerun after each kill
//! until it completes, then compared row by row with a clean run of the same input and shards.
//!
//! The pipeline is the reference workload without merge keys: a load that ran twice, or a
//! shard's rows loaded twice, shows as duplicated rows instead of being merged away.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

use crate::chaos::{Comparison, FaultKind, Rng, TrialResult, compare};
use crate::fleet::{COMPARE_SQLITE, Table, repo, sqlite_rows};

/// Everything a local trial will do, drawn from its seed before anything starts.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPlan {
    /// Shards the input is split into.
    pub shards: u64,
    /// In-process workers.
    pub workers: usize,
    /// Rows per load batch (small, so that a run has several loads to be killed in).
    pub batch_rows: u64,
    /// When each kill lands, as a share of a clean run's wall time after the (re)start.
    pub kills: Vec<f64>,
}

impl LocalPlan {
    pub fn draw(rng: &mut Rng) -> LocalPlan {
        LocalPlan {
            shards: 3 + rng.below(8),
            workers: 1 + rng.below(3) as usize,
            batch_rows: 1_000 + rng.below(6_000),
            kills: (0..1 + rng.below(4))
                .map(|_| rng.below(1_000) as f64 / 1_000.0)
                .collect(),
        }
    }
}

/// The rows compared: the fleet trials' columns of the table (the key first), rows of the same
/// key (a duplicate across shards) in source order.
fn table_sql() -> String {
    format!("{COMPARE_SQLITE}, _tributary_source_offset")
}

/// The reference workload's pipeline without `merge_keys`, written into `dir` beside its key
/// file.
fn pipeline_without_merge_keys(dir: &Path) -> PathBuf {
    let examples = repo().join("examples");
    let text = std::fs::read_to_string(examples.join("workload.toml")).expect("workload.toml");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("merge_keys"))
        .collect();
    assert!(
        kept.len() < text.lines().count(),
        "workload.toml has merge_keys"
    );
    let path = dir.join("workload.toml");
    std::fs::write(&path, kept.join("\n")).expect("write pipeline");
    std::fs::copy(examples.join("workload.key"), dir.join("workload.key")).expect("key file");
    path
}

/// A trial's `coordinator run` arguments.
struct LocalRun {
    pipeline: PathBuf,
    input: PathBuf,
    shard_bytes: u64,
    plan: LocalPlan,
}

impl LocalRun {
    fn start(&self, data_dir: &Path) -> Child {
        crate::coordinator_command()
            .arg("run")
            .arg(&self.pipeline)
            .arg("--source")
            .arg(&self.input)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--shard-size", &self.shard_bytes.to_string()])
            .args(["--workers", &self.plan.workers.to_string()])
            .args(["--batch-rows", &self.plan.batch_rows.to_string()])
            .arg("--no-progress")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("coordinator starts")
    }

    /// Runs to its end; the error output of a run that failed.
    fn finish(&self, data_dir: &Path) -> Result<(), String> {
        let out = self
            .start(data_dir)
            .wait_with_output()
            .expect("coordinator");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "coordinator run failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// Whether a run in `data_dir` has completed (its record says so).
fn completed(data_dir: &Path) -> bool {
    let Ok(runs) = std::fs::read_dir(data_dir.join("state/runs")) else {
        return false;
    };
    runs.flatten().any(|r| {
        std::fs::read(r.path().join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["status"] == "completed")
    })
}

fn table(data_dir: &Path) -> Table {
    sqlite_rows(&data_dir.join("warehouse.db"), &table_sql())
}

/// Runs one local trial of `plan` on `input`.
pub fn run_local_trial(input: &Path, plan: &LocalPlan) -> TrialResult {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let size = std::fs::metadata(input).expect("input").len();
    let run = LocalRun {
        pipeline: pipeline_without_merge_keys(dir.path()),
        input: input.to_path_buf(),
        shard_bytes: size / plan.shards + 1,
        plan: plan.clone(),
    };
    let clean = dir.path().join("clean");
    let t0 = Instant::now();
    run.finish(&clean).expect("the clean run");
    let clean_time = t0.elapsed();
    let want = table(&clean);

    let trial = dir.path().join("trial");
    let mut injected = Vec::new();
    let mut note = String::new();
    for share in &plan.kills {
        if completed(&trial) {
            break;
        }
        let mut child = run.start(&trial);
        std::thread::sleep(clean_time.mul_f64(*share));
        let killed = child.try_wait().expect("wait").is_none();
        if killed {
            let _ = child.kill(); // SIGKILL
        }
        let out = child.wait_with_output().expect("coordinator");
        if killed {
            // A journal left beside the file: the kill landed inside a load's transaction.
            let in_load = trial.join("warehouse.db-journal").exists();
            injected.push(if in_load {
                FaultKind::KillLocalRunInLoad
            } else {
                FaultKind::KillLocalRun
            });
        }
        if !out.status.success() && out.status.code().is_some() {
            note = format!(
                "a run exited with an error before it was killed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
    }
    if note.is_empty()
        && !completed(&trial)
        && let Err(e) = run.finish(&trial)
    {
        note = e;
    }
    let done = completed(&trial);
    let comparison = if trial.join("warehouse.db").exists() {
        compare(&table(&trial), &want)
    } else {
        Comparison {
            lost: want.len() as u64,
            ..Comparison::default()
        }
    };
    TrialResult {
        injected,
        comparison,
        completed: done && note.is_empty(),
        note,
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_local_plan() {
        let (a, b) = (
            LocalPlan::draw(&mut Rng::new(7)),
            LocalPlan::draw(&mut Rng::new(7)),
        );
        assert_eq!(a, b);
        assert!(!a.kills.is_empty() && a.kills.iter().all(|k| (0.0..1.0).contains(k)));
        assert!((3..=10).contains(&a.shards) && (1..=3).contains(&a.workers));
    }

    #[test]
    fn the_trial_pipeline_is_the_workload_without_merge_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = std::fs::read_to_string(pipeline_without_merge_keys(dir.path())).unwrap();
        assert!(!p.contains("merge_keys") && p.contains("[load]"));
        assert!(dir.path().join("workload.key").exists());
    }
}
