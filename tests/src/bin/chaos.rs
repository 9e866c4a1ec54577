//! `chaos --trials N --local-trials L --seed S [--rows R]`: randomized crash trials of the fleet
//! (see `tributary_tests::chaos`) and of local runs with the embedded warehouse
//! (`tributary_tests::chaos_local`). Run through `scripts/chaos`, which starts moto and sets the
//! environment. Prints one line per trial and a final `CHAOS {json}` line (both kinds of trial
//! together); exits non-zero when any row was lost or duplicated, or any trial did not complete.

use std::time::Instant;

use clap::Parser;
use tributary_tests::chaos::{Rng, TrialPlan, TrialResult, run_trial, summary};
use tributary_tests::chaos_local::{LocalPlan, run_local_trial};

#[derive(Parser)]
#[command(name = "chaos", about = "Randomized crash trials of the fleet")]
struct Args {
    /// How many trials of the fleet.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// How many trials of a local run (`coordinator run`, embedded warehouse), after the
    /// fleet's.
    #[arg(long, default_value_t = 2)]
    local_trials: usize,
    /// Seed of the fault plans (the same seed draws the same plans).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rows of the reference workload per trial.
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
}

fn main() {
    let args = Args::parse();
    let python = tributary_tests::fleet::python()
        .expect("TRIBUTARY_PYTHON must name a Python with numpy (scripts/chaos sets it)");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = tributary_tests::fleet::generate_workload(
        &python,
        args.rows,
        42,
        &dir.path().join("events.ndjson"),
    );
    let started = Instant::now();
    let mut rng = Rng::new(args.seed);
    let mut results = Vec::new();
    for t in 0..args.trials {
        let plan = TrialPlan::draw(&mut rng);
        let name = format!("chaos-{}-{t}", args.seed);
        let Some(r) = run_trial(&name, &input, &plan) else {
            eprintln!("chaos: moto and PostgreSQL are needed (scripts/chaos starts them)");
            std::process::exit(2);
        };
        let what = format!("{} worker(s), {} shards", plan.workers, plan.shards);
        report(&format!("trial {}/{}", t + 1, args.trials), &what, &r);
        results.push(r);
    }
    for t in 0..args.local_trials {
        let plan = LocalPlan::draw(&mut rng);
        let r = run_local_trial(&input, &plan);
        report(
            &format!("local trial {}/{}", t + 1, args.local_trials),
            &plan.describe(),
            &r,
        );
        results.push(r);
    }
    let s = summary(args.seed, &results, started.elapsed().as_secs_f64());
    println!("CHAOS {s}");
    let bad = s["lost"] != 0 || s["duplicated"] != 0 || s["failed_trials"] != 0;
    std::process::exit(i32::from(bad));
}

/// One trial's line (and its note, on standard error).
fn report(name: &str, what: &str, r: &TrialResult) {
    let kinds: Vec<&str> = r.injected.iter().map(|k| k.name()).collect();
    println!(
        "{name}: {what}, faults [{}] → {}, lost {}, duplicated {}, mismatched {} ({:.0} s)",
        kinds.join(", "),
        if r.completed {
            "completed"
        } else {
            "NOT completed"
        },
        r.comparison.lost,
        r.comparison.duplicated,
        r.comparison.mismatched,
        r.seconds
    );
    if !r.note.is_empty() {
        eprintln!("{}", r.note);
    }
}
