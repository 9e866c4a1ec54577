//! Randomized crash trials of a local run (`scripts/chaos --local-trials N`): `coordinator run`
//! with the embedded queue and warehouse, killed with `kill -9` at moments drawn from the seed
//! (planning, shards in flight, a load's transaction, the run's end), rerun after each kill
//! until it completes, then compared row by row with a clean run of the same input and shards.
//!
//! The pipeline is the reference workload without merge keys in half the trials: a load that ran
//! twice, or a shard's rows loaded twice, shows as duplicated rows instead of being merged away.
//! The other half keeps its merge keys (`event_id`), half of those with every row in one load
//! batch: the first load into the empty table goes in bulk (plain inserts, then the key index,
//! then the held-back repeats upserted), so kills land inside it, and the merge's winners (the
//! earliest source position of each key) must be the clean run's.

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
    /// The workload's merge keys kept (the table merged by `event_id`).
    pub merge_keys: bool,
}

/// Rows per load batch that no trial's input reaches: the whole run is one batch.
const ONE_BATCH: u64 = 100_000_000;

impl LocalPlan {
    pub fn draw(rng: &mut Rng) -> LocalPlan {
        let shards = 3 + rng.below(8);
        let workers = 1 + rng.below(3) as usize;
        let mut batch_rows = 1_000 + rng.below(6_000);
        let kills = (0..1 + rng.below(4))
            .map(|_| rng.below(1_000) as f64 / 1_000.0)
            .collect();
        let merge_keys = rng.chance(50);
        if merge_keys && rng.chance(50) {
            batch_rows = ONE_BATCH;
        }
        LocalPlan {
            shards,
            workers,
            batch_rows,
            kills,
            merge_keys,
        }
    }

    /// The trial's line: workers, shards, batches, and whether the table merges.
    pub fn describe(&self) -> String {
        let batches = if self.batch_rows == ONE_BATCH {
            "one load batch".to_string()
        } else {
            format!("batches of {} rows", self.batch_rows)
        };
        let keys = if self.merge_keys {
            "merged by event_id"
        } else {
            "no merge keys"
        };
        format!(
            "local run, {} worker(s), {} shards, {batches}, {keys}",
            self.workers, self.shards
        )
    }
}

/// The rows compared: the fleet trials' columns of the table (the key first), rows of the same
/// key (a duplicate across shards) in source order.
fn table_sql() -> String {
    format!("{COMPARE_SQLITE}, _tributary_source_offset")
}

/// The reference workload's pipeline, without its `merge_keys` unless `merge_keys`, written into
/// `dir` beside its key file.
fn trial_pipeline(dir: &Path, merge_keys: bool) -> PathBuf {
    let examples = repo().join("examples");
    let text = std::fs::read_to_string(examples.join("workload.toml")).expect("workload.toml");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| merge_keys || !l.trim_start().starts_with("merge_keys"))
        .collect();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("merge_keys")),
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
        pipeline: trial_pipeline(dir.path(), plan.merge_keys),
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
    fn the_trial_pipeline_is_the_workload_with_or_without_merge_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = std::fs::read_to_string(trial_pipeline(dir.path(), false)).unwrap();
        assert!(!p.contains("merge_keys") && p.contains("[load]"));
        assert!(dir.path().join("workload.key").exists());
        let p = std::fs::read_to_string(trial_pipeline(dir.path(), true)).unwrap();
        assert!(p.contains("merge_keys = [\"event_id\"]") && p.contains("[load]"));
    }

    #[test]
    fn seeds_draw_merged_trials_some_in_one_batch_and_unmerged_ones() {
        let plans: Vec<LocalPlan> = (0..64).map(|s| LocalPlan::draw(&mut Rng::new(s))).collect();
        let one = |p: &&LocalPlan| p.batch_rows == ONE_BATCH;
        assert!(plans.iter().any(|p| !p.merge_keys));
        assert!(plans.iter().filter(|p| p.merge_keys).any(|p| one(&p)));
        assert!(plans.iter().filter(|p| p.merge_keys).any(|p| !one(&p)));
        assert!(plans.iter().filter(one).all(|p| p.merge_keys));
        assert!(plans[0].describe().starts_with("local run, "));
    }
}
