//! `chaos --trials N --seed S [--rows R]`: randomized crash trials of the fleet (see
//! `tributary_tests::chaos`). Run through `scripts/chaos`, which starts moto and sets the
//! environment. Prints one line per trial and a final `CHAOS {json}` line; exits non-zero when
//! any row was lost or duplicated, or any trial did not complete.

use std::time::Instant;

use clap::Parser;
use tributary_tests::chaos::{Rng, TrialPlan, run_trial, summary};

#[derive(Parser)]
#[command(name = "chaos", about = "Randomized crash trials of the fleet")]
struct Args {
    /// How many trials.
    #[arg(long, default_value_t = 3)]
    trials: usize,
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
        let kinds: Vec<&str> = r.injected.iter().map(|k| k.name()).collect();
        println!(
            "trial {}/{}: {} worker(s), {} shards, faults [{}] → {}, lost {}, duplicated {}, mismatched {} ({:.0} s)",
            t + 1,
            args.trials,
            plan.workers,
            plan.shards,
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
        results.push(r);
    }
    let s = summary(args.seed, &results, started.elapsed().as_secs_f64());
    println!("CHAOS {s}");
    let bad = s["lost"] != 0 || s["duplicated"] != 0 || s["failed_trials"] != 0;
    std::process::exit(i32::from(bad));
}
