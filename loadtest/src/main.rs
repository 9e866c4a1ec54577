//! `loadtest gen --sources N --rows M --out DIR`: synthetic multi-source data and pipeline files.
//! `loadtest plan --shards N`: planning and enqueueing a run of N shards, timed.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Generate synthetic multi-source data for load runs"
)]
enum Cli {
    /// Write N copies of the three demo sources, with pipeline files, under DIR.
    Gen {
        #[arg(long, default_value_t = 15)]
        sources: usize,
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Plan and enqueue a run of N shards on the embedded backends; print the time per stage.
    Plan {
        #[arg(long, default_value_t = 100_000)]
        shards: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let (sources, rows, out) = match Cli::parse() {
        Cli::Gen { sources, rows, out } => (sources, rows, out),
        Cli::Plan { shards } => {
            let dir = tempfile::tempdir()?;
            let rt = tokio::runtime::Runtime::new()?;
            let b = rt.block_on(loadtest::plan_bench::run(shards, dir.path()))?;
            println!("PLAN_BENCH {}", serde_json::to_string(&b)?);
            return Ok(());
        }
    };
    let files = loadtest::generate(&out, sources, rows)?;
    for f in &files {
        println!("{}", f.display());
    }
    eprintln!(
        "{} pipeline files; run each with `coordinator run FILE --data-dir DIR`",
        files.len()
    );
    Ok(())
}
