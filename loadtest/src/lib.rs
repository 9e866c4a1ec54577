//! Synthetic multi-source data at the field's scale ([`preset`], [`files`]), the driver that
//! runs it and reports ([`drive`]), and the planning benchmark ([`plan_bench`]).
//!
//! `loadtest gen` writes many sources at once (web events, POS sales, billing), each with its
//! pipeline file, so a run can be driven at the field's shape: dozens of sources, millions of rows.
//! The generators are the demo's (deterministic, with the same anomalies).

pub mod drive;
pub mod files;
pub mod plan_bench;
pub mod preset;
/// The fleet as processes against moto and PostgreSQL: needs the `aws` feature.
#[cfg(feature = "aws")]
pub mod processes;
pub mod scrape;
pub mod warehouse_bench;

use std::path::Path;

/// Writes `sources` copies of the three demo sources (`rows` records per file) under `out`, each in
/// its own folder with its own pipeline files. Returns the pipeline files.
pub fn generate(
    out: &Path,
    sources: usize,
    rows: usize,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut all = Vec::new();
    for i in 0..sources {
        let dir = out.join(format!("source{i:03}"));
        let pipelines = coordinator::demo::write_demo(&dir, rows)?;
        for p in pipelines {
            // Give every copy its own pipeline and table name.
            let text = std::fs::read_to_string(&p)?;
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("p")
                .to_string();
            let text = text
                .replacen(
                    &format!("name = \"{stem}\""),
                    &format!("name = \"{stem}_{i:03}\""),
                    1,
                )
                .replace("table = \"", &format!("table = \"s{i:03}_"));
            std::fs::write(&p, text)?;
            all.push(p);
        }
    }
    Ok(all)
}

/// What `loadtest run --processes` needs.
#[derive(Debug, Clone)]
pub struct ProcessesOptions {
    /// The generated preset (`sources/`, `pipelines/`).
    pub dir: std::path::PathBuf,
    /// Where the fleet's configuration, logs and scratch go.
    pub work: std::path::PathBuf,
    /// The S3 and SQS endpoint (a moto server).
    pub endpoint: String,
    /// The warehouse: a PostgreSQL connection string (a fresh schema is created in it).
    pub postgres: String,
    /// Where the `coordinator` and `worker` binaries are.
    pub bin_dir: std::path::PathBuf,
    pub workers: usize,
    /// Threads of each worker's shard engine.
    pub worker_threads: usize,
    /// Only the first N pipelines (in name order).
    pub only: Option<usize>,
    /// Give up when the runs have not finished after this long.
    pub timeout: std::time::Duration,
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_pipelines_are_valid_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let files = super::generate(dir.path(), 2, 50).unwrap();
        assert_eq!(files.len(), 6);
        let mut names = std::collections::BTreeSet::new();
        for f in &files {
            let p = worker::config::load_file(f).unwrap();
            assert!(names.insert(p.name().to_string()));
            assert!(p.table().starts_with('s'));
        }
    }
}
