//! Randomized crash trials of the fleet (`scripts/chaos --trials N --seed S`).
//!
//! Each trial starts a fleet on one machine — moto (SQS, S3), the machine's PostgreSQL as
//! warehouse, one `coordinator serve` and 2–3 `worker --config` processes — runs the reference
//! workload split into at least 8 byte-range shards, and injects faults at moments drawn from
//! the seed: `kill -9` or SIGTERM of a random worker or of the coordinator (each restarted after
//! a short pause), and optionally a coordinator that dies between a load commit and its record,
//! a failing load statement, every task delivered twice, and poison messages on both queues. At
//! the end it compares the warehouse table with an embedded run of the same input, key by key.
//!
//! The same seed gives the same fault plan (what, where and when); the exact interleaving with
//! the processes still depends on timing, which is the point of running many trials.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, Table, embedded_table, fleet_table};

/// SplitMix64: a small, seedable generator (the trials need reproducible plans, not crypto).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Uniform in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// One kind of injected fault (the keys of `faults_by_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    KillWorker,
    TermWorker,
    KillCoordinator,
    TermCoordinator,
    CoordinatorCrashAfterLoadCommit,
    FailingLoad,
    DuplicateDelivery,
    PoisonMessages,
    /// `kill -9` of a local `coordinator run` (the local trials) outside a load's transaction.
    KillLocalRun,
    /// `kill -9` of a local `coordinator run` that landed inside a load's transaction (the
    /// warehouse's journal was left beside it).
    KillLocalRunInLoad,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill9_worker",
            FaultKind::TermWorker => "sigterm_worker",
            FaultKind::KillCoordinator => "kill9_coordinator",
            FaultKind::TermCoordinator => "sigterm_coordinator",
            FaultKind::CoordinatorCrashAfterLoadCommit => "crash_after_load_commit",
            FaultKind::FailingLoad => "failing_load",
            FaultKind::DuplicateDelivery => "duplicate_delivery",
            FaultKind::PoisonMessages => "poison_messages",
            FaultKind::KillLocalRun => "kill9_local_run",
            FaultKind::KillLocalRunInLoad => "kill9_local_run_in_load",
        }
    }
}

/// A process fault at a moment after the run was triggered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedFault {
    pub after: Duration,
    pub kind: FaultKind,
    /// Which worker (index among the live ones, modulo their number).
    pub worker: usize,
    /// How long the process stays down before it is restarted.
    pub down: Duration,
}

/// Everything a trial will do, drawn from its seed before anything starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialPlan {
    pub workers: usize,
    /// Shards the input is split into (at least 8).
    pub shards: u64,
    /// A fault the coordinator injects into itself (`TRIBUTARY_FAULT`), if any.
    pub coordinator_fault: Option<FaultKind>,
    pub failing_load: bool,
    pub poison: bool,
    pub timed: Vec<TimedFault>,
}

impl TrialPlan {
    pub fn draw(rng: &mut Rng) -> TrialPlan {
        let workers = 2 + rng.below(2) as usize;
        let shards = 8 + rng.below(5);
        let coordinator_fault = match rng.below(4) {
            0 => Some(FaultKind::DuplicateDelivery),
            1 => Some(FaultKind::CoordinatorCrashAfterLoadCommit),
            _ => None,
        };
        let failing_load = rng.chance(35);
        let poison = rng.chance(35);
        // The first process fault comes early, so that it lands while shards are in flight;
        // the others follow at random gaps.
        let n = 1 + rng.below(3) as usize;
        let mut at = rng.millis(150, 2_000);
        let mut timed = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = match rng.below(10) {
                0..=3 => FaultKind::KillWorker,
                4..=5 => FaultKind::TermWorker,
                6..=8 => FaultKind::KillCoordinator,
                _ => FaultKind::TermCoordinator,
            };
            timed.push(TimedFault {
                after: at,
                kind,
                worker: rng.below(8) as usize,
                down: rng.millis(100, 2_500),
            });
            at += rng.millis(300, 4_000);
        }
        TrialPlan {
            workers,
            shards,
            coordinator_fault,
            failing_load,
            poison,
            timed,
        }
    }

    /// Every fault of the plan, by kind.
    pub fn kinds(&self) -> Vec<FaultKind> {
        let mut out: Vec<FaultKind> = self.timed.iter().map(|t| t.kind).collect();
        out.extend(self.coordinator_fault);
        if self.failing_load {
            out.push(FaultKind::FailingLoad);
        }
        if self.poison {
            out.push(FaultKind::PoisonMessages);
        }
        out
    }
}

/// How a trial's table compares with the embedded run's, by event id (the first column).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Rows of the embedded run missing from the fleet's table.
    pub lost: u64,
    /// Rows of the fleet's table beyond the embedded run's (extra copies, unknown keys).
    pub duplicated: u64,
    /// Keys present in both whose rows differ.
    pub mismatched: u64,
}

type Rows<'a> = HashMap<Option<String>, Vec<&'a Vec<Option<String>>>>;

fn by_key(t: &Table) -> Rows<'_> {
    let mut m: Rows<'_> = HashMap::new();
    for r in t {
        m.entry(r.first().cloned().flatten()).or_default().push(r);
    }
    m
}

/// Compares two tables whose first column is the key.
pub fn compare(fleet: &Table, embedded: &Table) -> Comparison {
    let (f, e) = (by_key(fleet), by_key(embedded));
    let mut c = Comparison::default();
    for (k, want) in &e {
        let got = f.get(k).map_or(&[][..], Vec::as_slice);
        c.lost += want.len().saturating_sub(got.len()) as u64;
        c.duplicated += got.len().saturating_sub(want.len()) as u64;
        if let (Some(g), Some(w)) = (got.first(), want.first())
            && g != w
        {
            c.mismatched += 1;
        }
    }
    for (k, got) in &f {
        if !e.contains_key(k) {
            c.duplicated += got.len() as u64;
        }
    }
    c
}

/// What one trial did and found.
#[derive(Debug, Clone)]
pub struct TrialResult {
    pub injected: Vec<FaultKind>,
    pub comparison: Comparison,
    pub completed: bool,
    pub note: String,
    pub seconds: f64,
}

const RUN_TIMEOUT: Duration = Duration::from_secs(420);

/// Runs one trial of `plan` on `input`; `None` when the services are missing.
pub fn run_trial(name: &str, input: &Path, plan: &TrialPlan) -> Option<TrialResult> {
    let started = Instant::now();
    let size = std::fs::metadata(input).expect("input").len();
    let shard_bytes = size / plan.shards + 1;
    let mut f = Fleet::new(name, input, shard_bytes)?;
    let mut injected = Vec::new();
    let env_fault = match plan.coordinator_fault {
        Some(FaultKind::DuplicateDelivery) => Some("duplicate_tasks"),
        Some(FaultKind::CoordinatorCrashAfterLoadCommit) => Some("crash_after_load_commit"),
        _ => None,
    };
    let mut coordinator = f.start_coordinator(env_fault);
    injected.extend(plan.coordinator_fault);
    if plan.failing_load {
        inject_failing_load(&f);
        injected.push(FaultKind::FailingLoad);
    }
    let mut workers: Vec<usize> = (0..plan.workers).map(|_| f.start_worker(None)).collect();
    if plan.poison {
        send_poison(&f);
        injected.push(FaultKind::PoisonMessages);
    }
    let run = f.trigger();
    let t0 = Instant::now();
    for tf in &plan.timed {
        if let Some(wait) = tf.after.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        if run_finished(&f, &run) {
            break;
        }
        restart_if_crashed(&mut f, &mut coordinator);
        apply(&mut f, tf, &mut coordinator, &mut workers);
        injected.push(tf.kind);
    }
    // The coordinator may still crash by its own injected fault: keep it up until the run ends.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        restart_if_crashed(&mut f, &mut coordinator);
        if let Some(rec) = f.status(&run) {
            if rec["status"] != "running" {
                last = rec;
                break;
            }
            last = rec;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let completed = last["status"] == "completed";
    // The same sharding: the lineage column `_tributary_source_offset` names where each row's
    // shard starts.
    let comparison = compare(&fleet_table(&f), &embedded_table(input, shard_bytes));
    let note = if completed {
        String::new()
    } else {
        format!("run {run} ended {}: {last}\n{}", last["status"], f.logs())
    };
    Some(TrialResult {
        injected,
        comparison,
        completed,
        note,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_finished(f: &Fleet, run: &str) -> bool {
    f.status(run).is_some_and(|r| r["status"] != "running")
}

/// A coordinator that died by its own injected crash is started again (without the fault).
fn restart_if_crashed(f: &mut Fleet, coordinator: &mut usize) {
    if let Ok(Some(_)) = f.procs[*coordinator].child.try_wait() {
        *coordinator = f.start_coordinator(None);
    }
}

fn apply(f: &mut Fleet, tf: &TimedFault, coordinator: &mut usize, workers: &mut [usize]) {
    match tf.kind {
        FaultKind::KillWorker | FaultKind::TermWorker => {
            let slot = tf.worker % workers.len();
            let w = workers[slot];
            if tf.kind == FaultKind::KillWorker {
                f.procs[w].kill9();
            } else {
                // A draining worker finishes or gives back its task; its replacement starts
                // meanwhile, as a new pod would.
                f.procs[w].sigterm();
            }
            std::thread::sleep(tf.down);
            workers[slot] = f.start_worker(None);
        }
        FaultKind::KillCoordinator | FaultKind::TermCoordinator => {
            let c = *coordinator;
            if tf.kind == FaultKind::KillCoordinator {
                f.procs[c].kill9();
            } else {
                f.procs[c].sigterm();
                if !f.procs[c].wait_exit(Duration::from_secs(30)) {
                    f.procs[c].kill9();
                }
            }
            std::thread::sleep(tf.down);
            *coordinator = f.start_coordinator(None);
        }
        _ => {}
    }
}

/// The first ledger insert fails, rolling back its whole load transaction (a sequence is not
/// transactional, so the failure happens exactly once).
fn inject_failing_load(f: &Fleet) {
    f.pg_exec(
        "CREATE SEQUENCE IF NOT EXISTS chaos_fault_seq;
         CREATE OR REPLACE FUNCTION chaos_fail_once() RETURNS trigger AS $$
         BEGIN
           IF nextval('chaos_fault_seq') = 1 THEN
             RAISE EXCEPTION 'chaos: injected failure of a load';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER chaos_fail_once BEFORE INSERT ON _tributary_load_ledger
           FOR EACH ROW EXECUTE FUNCTION chaos_fail_once();",
    );
}

/// Bodies no worker or coordinator can use: each must be dead-lettered, never crash anything.
fn send_poison(f: &Fleet) {
    let poison = [
        "not json at all".to_string(),
        r#"{"v":99,"kind":"task","task_id":"from-the-future"}"#.to_string(),
        r#"{"v":1,"kind":"task"}"#.to_string(),
    ];
    f.send_tasks(&poison);
    f.send_to(&f.results_url.clone(), &poison);
}

/// Totals over all trials, printed as the `CHAOS {json}` line.
pub fn summary(seed: u64, results: &[TrialResult], seconds: f64) -> serde_json::Value {
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for r in results {
        for k in &r.injected {
            *by_kind.entry(k.name()).or_default() += 1;
        }
    }
    let sum = |f: fn(&TrialResult) -> u64| results.iter().map(f).sum::<u64>();
    serde_json::json!({
        "trials": results.len(),
        "seed": seed,
        "faults": by_kind.values().sum::<u64>(),
        "faults_by_kind": by_kind,
        "lost": sum(|r| r.comparison.lost),
        "duplicated": sum(|r| r.comparison.duplicated),
        "mismatched": sum(|r| r.comparison.mismatched),
        "failed_trials": results.iter().filter(|r| !r.completed || r.comparison != Comparison::default()).count(),
        "seconds": (seconds * 10.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_plan() {
        let a = TrialPlan::draw(&mut Rng::new(7));
        let b = TrialPlan::draw(&mut Rng::new(7));
        assert_eq!(a, b);
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            let p = TrialPlan::draw(&mut rng);
            assert!(p.shards >= 8 && (2..=3).contains(&p.workers));
            assert!(
                !p.timed.is_empty(),
                "every trial injects at least one fault"
            );
            assert!(p.timed.windows(2).all(|w| w[0].after <= w[1].after));
        }
    }

    fn row(k: &str, v: &str) -> Vec<Option<String>> {
        vec![Some(k.into()), Some(v.into())]
    }

    #[test]
    fn compare_counts_lost_duplicated_and_mismatched_rows() {
        let embedded = vec![row("a", "1"), row("b", "2"), row("c", "3")];
        assert_eq!(compare(&embedded, &embedded), Comparison::default());
        let fleet = vec![row("a", "1"), row("a", "1"), row("c", "9"), row("z", "0")];
        assert_eq!(
            compare(&fleet, &embedded),
            Comparison {
                lost: 1,
                duplicated: 2,
                mismatched: 1
            }
        );
    }

    #[test]
    fn summary_totals_faults_by_kind() {
        let r = TrialResult {
            injected: vec![
                FaultKind::KillWorker,
                FaultKind::KillWorker,
                FaultKind::FailingLoad,
            ],
            comparison: Comparison::default(),
            completed: true,
            note: String::new(),
            seconds: 1.0,
        };
        let s = summary(5, &[r.clone(), r], 2.0);
        assert_eq!(s["trials"], 2);
        assert_eq!(s["faults"], 6);
        assert_eq!(s["faults_by_kind"]["kill9_worker"], 4);
        assert_eq!(s["lost"], 0);
        assert_eq!(s["failed_trials"], 0);
    }
}
