//! `loadtest gen --sources N --rows M --out DIR`: synthetic multi-source data and pipeline files.

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
}

fn main() -> anyhow::Result<()> {
    let Cli::Gen { sources, rows, out } = Cli::parse();
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
