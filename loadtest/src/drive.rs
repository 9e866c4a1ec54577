//! `loadtest run --dir DIR`: every pipeline of a generated preset run end to end on the
//! embedded backends (in this process, one pipeline after another, each with its in-process
//! workers), and the report: rows/s and MB/s, time per stage, task latency percentiles, peak RSS,
//! Parquet file count and sizes, load batches, and an estimated AWS cost per million rows.
//!
//! The cost is an estimate from counts, with the prices written down below (us-east-1 list
//! prices, on-demand): SQS requests (a task's send, receive and delete, and its result's, in
//! batches of ten where SQS allows), S3 requests (each source object read, each Parquet,
//! manifest and quarantine object written), and the compute seconds this run used, as Fargate
//! vCPU-seconds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::scrape::Stages;

/// SQS, per million requests.
pub const SQS_PER_MILLION: f64 = 0.40;
/// S3 PUT, COPY, POST, LIST per thousand requests.
pub const S3_PUT_PER_THOUSAND: f64 = 0.005;
/// S3 GET per thousand requests.
pub const S3_GET_PER_THOUSAND: f64 = 0.0004;
/// Fargate, per vCPU-hour (Linux/x86).
pub const FARGATE_VCPU_HOUR: f64 = 0.04048;

/// One pipeline's run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineResult {
    pub pipeline: String,
    pub status: String,
    pub shards: usize,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_rejected: u64,
    pub input_bytes: u64,
    pub parquet_files: usize,
    pub parquet_bytes: u64,
    pub batches_loaded: usize,
    pub seconds: f64,
}

impl PipelineResult {
    /// The result of a finished run that read `input_bytes` and wrote Parquet files of `parquet`
    /// bytes each, in `seconds`.
    pub fn of(
        r: &coordinator::run::RunRecord,
        input_bytes: u64,
        parquet: &[u64],
        seconds: f64,
    ) -> PipelineResult {
        PipelineResult {
            pipeline: r.pipeline.clone(),
            status: r.status.to_string(),
            shards: r.shards,
            rows_in: r.counts.lines_total,
            rows_out: r.counts.rows_out,
            rows_rejected: r.counts.rejected_total() + r.counts.malformed,
            input_bytes,
            parquet_files: parquet.len(),
            parquet_bytes: parquet.iter().sum(),
            batches_loaded: r.batches_loaded,
            seconds,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `embedded` (one process) or `processes` (a coordinator and worker processes).
    pub mode: String,
    pub pipelines: usize,
    pub rows_in: u64,
    pub rows_out: u64,
    pub input_mb: f64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub cpu_seconds: f64,
    /// The largest of `peak_rss_mb_per_worker`.
    pub peak_rss_mb: f64,
    /// Peak RSS of each process that ran tasks.
    pub peak_rss_mb_per_worker: Vec<f64>,
    /// Seconds summed over the tasks, per stage (read, parse, transform, encode, upload; thread time, see
    /// `worker::engine::StageTimes`), and the
    /// coordinator's warehouse loads (load).
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
    /// Task latency (seconds), estimated from the worker's histogram buckets.
    pub task_latency_p50: f64,
    pub task_latency_p95: f64,
    pub task_latency_p99: f64,
    pub parquet_files: usize,
    /// Parquet file sizes: min, median, p90, max (bytes).
    pub parquet_size_quantiles: [u64; 4],
    pub load_batches: usize,
    pub estimated_cost_per_million_rows_usd: f64,
    pub results: Vec<PipelineResult>,
}

/// Every file under `dir` (none if it does not exist).
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

pub(crate) fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Runs one pipeline of the preset; its result and its Parquet files' sizes.
async fn run_one(
    pipeline: &Path,
    data_dir: &Path,
    workers: usize,
) -> anyhow::Result<(PipelineResult, Vec<u64>)> {
    let started = Instant::now();
    let report = coordinator::run::run_local(&coordinator::run::RunOptions {
        pipeline: pipeline.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
        workers,
        source: None,
        output: None,
        shard_size: None,
        progress: false,
        batch_rows: 2_000_000,
        window: None,
    })
    .await?;
    let r = &report.record;
    let source_dir = pipeline
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sources").join(&r.pipeline))
        .unwrap_or_default();
    let parquet: Vec<u64> = files_under(&report.parquet_location)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| size(p))
        .collect();
    let result = PipelineResult::of(
        r,
        files_under(&source_dir).iter().map(|p| size(p)).sum(),
        &parquet,
        started.elapsed().as_secs_f64(),
    );
    Ok((result, parquet))
}

/// The pipeline files under `dir/pipelines`, in name order (the first `only`, if given).
pub(crate) fn pipeline_files(dir: &Path, only: Option<usize>) -> anyhow::Result<Vec<PathBuf>> {
    let mut pipelines: Vec<PathBuf> = files_under(&dir.join("pipelines"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    pipelines.sort();
    pipelines.truncate(only.unwrap_or(usize::MAX));
    anyhow::ensure!(
        !pipelines.is_empty(),
        "no pipeline files under {}/pipelines (run `loadtest gen` first)",
        dir.display()
    );
    Ok(pipelines)
}

/// Runs every pipeline under `dir/pipelines` (the first `only`, if given) into `data_dir`.
pub async fn run(
    dir: &Path,
    data_dir: &Path,
    workers: usize,
    only: Option<usize>,
) -> anyhow::Result<Report> {
    let pipelines = pipeline_files(dir, only)?;
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let mut results = Vec::new();
    let mut sizes = Vec::new();
    for p in &pipelines {
        let (r, s) = run_one(p, data_dir, workers).await?;
        eprintln!(
            "{:<24} {:>10} rows in {:>10} out {:>7.1} s  {}",
            r.pipeline, r.rows_in, r.rows_out, r.seconds, r.status
        );
        results.push(r);
        sizes.extend(s);
    }
    let mut stages = Stages::default();
    stages.add_registry(&worker::metrics::METRICS.registry);
    stages.add_registry(&coordinator::metrics::METRICS.registry);
    Ok(report(
        Measured {
            mode: "embedded",
            seconds: started.elapsed().as_secs_f64(),
            cpu_seconds: cpu_seconds() - cpu0,
            stages,
            peak_rss_mb: vec![peak_rss_mb()],
        },
        results,
        sizes,
    ))
}

/// What a run measured besides its pipelines' results.
pub struct Measured {
    pub mode: &'static str,
    pub seconds: f64,
    /// CPU seconds of every process of the run.
    pub cpu_seconds: f64,
    pub stages: Stages,
    /// Peak RSS of each process that ran tasks (one for an embedded run).
    pub peak_rss_mb: Vec<f64>,
}

/// The report of a run from its pipelines' results and their Parquet files' sizes.
pub fn report(m: Measured, results: Vec<PipelineResult>, mut sizes: Vec<u64>) -> Report {
    let (seconds, cpu) = (m.seconds, m.cpu_seconds);
    sizes.sort_unstable();
    let q = |f: f64| {
        sizes
            .get(((sizes.len() as f64 - 1.0) * f).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let rows_in: u64 = results.iter().map(|r| r.rows_in).sum();
    let input: u64 = results.iter().map(|r| r.input_bytes).sum();
    let shards: usize = results.iter().map(|r| r.shards).sum();
    let cost = cost_per_million(rows_in, shards, sizes.len(), cpu);
    Report {
        mode: m.mode.to_string(),
        pipelines: results.len(),
        rows_in,
        rows_out: results.iter().map(|r| r.rows_out).sum(),
        input_mb: input as f64 / 1e6,
        seconds,
        rows_per_sec: rows_in as f64 / seconds.max(1e-9),
        mb_per_sec: input as f64 / 1e6 / seconds.max(1e-9),
        cpu_seconds: cpu,
        peak_rss_mb: m.peak_rss_mb.iter().copied().fold(0.0, f64::max),
        peak_rss_mb_per_worker: m.peak_rss_mb,
        task_latency_p50: m.stages.task_latency(0.5),
        task_latency_p95: m.stages.task_latency(0.95),
        task_latency_p99: m.stages.task_latency(0.99),
        stage_seconds: m.stages.seconds,
        parquet_files: sizes.len(),
        parquet_size_quantiles: [q(0.0), q(0.5), q(0.9), q(1.0)],
        load_batches: results.iter().map(|r| r.batches_loaded).sum(),
        estimated_cost_per_million_rows_usd: cost,
        results,
    }
}

/// The AWS cost of a run of `rows` rows in `shards` shards writing `files` Parquet files with
/// `cpu` compute seconds, per million rows (see the module docs for what is counted).
pub fn cost_per_million(rows: u64, shards: usize, files: usize, cpu: f64) -> f64 {
    let shards = shards as f64;
    // Tasks sent in tens; each received, deleted, its result sent, received and deleted.
    let sqs = shards / 10.0 + shards * 2.0 + shards + shards * 2.0;
    // A source read (ranged GETs: ~one per 8 MB shard), a manifest and a quarantine file
    // written per shard, each Parquet file written; the coordinator reads each manifest.
    let gets = shards * 2.0;
    let puts = shards * 2.0 + files as f64;
    let dollars = sqs / 1e6 * SQS_PER_MILLION
        + puts / 1e3 * S3_PUT_PER_THOUSAND
        + gets / 1e3 * S3_GET_PER_THOUSAND
        + cpu / 3600.0 * FARGATE_VCPU_HOUR;
    dollars / (rows.max(1) as f64 / 1e6)
}

/// This process's CPU seconds (user + system).
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// A process's CPU seconds (user + system), from `/proc/PID/stat` (0 if it is gone).
pub(crate) fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// This process's peak resident set, in MB.
fn peak_rss_mb() -> f64 {
    process_peak_rss_mb("self")
}

/// A process's peak resident set (`VmHWM`), in MB (0 if it is gone).
pub(crate) fn process_peak_rss_mb(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_estimate_counts_requests_and_compute_per_million_rows() {
        // 1M rows in 100 shards writing 300 files with 100 CPU seconds.
        let c = cost_per_million(1_000_000, 100, 300, 100.0);
        let want = (10.0 + 500.0) / 1e6 * SQS_PER_MILLION
            + 500.0 / 1e3 * S3_PUT_PER_THOUSAND
            + 200.0 / 1e3 * S3_GET_PER_THOUSAND
            + 100.0 / 3600.0 * FARGATE_VCPU_HOUR;
        assert!((c - want).abs() < 1e-12, "{c} {want}");
        assert!(
            cost_per_million(2_000_000, 100, 300, 100.0) < c,
            "per million rows"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_small_preset_runs_end_to_end_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let specs = crate::preset::sources(45_000);
        // Four sources: one of each format, with each codec among them.
        let chosen: Vec<_> = [0, 5, 10, 3].iter().map(|&i| specs[i].clone()).collect();
        let codecs: std::collections::BTreeSet<String> =
            chosen.iter().map(|s| format!("{:?}", s.codec)).collect();
        assert_eq!(codecs.len(), 3, "plain, gzip and zstd");
        crate::preset::write(dir.path(), &chosen, 5_000).unwrap();
        let data = dir.path().join("data");
        let r = run(dir.path(), &data, 2, None).await.unwrap();
        assert_eq!(r.pipelines, 4);
        let want: u64 = chosen.iter().map(|s| s.rows).sum();
        assert_eq!(r.rows_in, want, "{r:#?}");
        assert!(
            r.rows_out > want * 9 / 10 && r.rows_out < want,
            "dirty rows rejected: {r:#?}"
        );
        assert!(r.results.iter().all(|p| p.status == "completed"), "{r:#?}");
        assert!(r.parquet_files > 0 && r.parquet_size_quantiles[3] > 0);
        // Every stage the report names, measured.
        for stage in ["read", "parse", "transform", "encode", "upload", "load"] {
            assert!(
                r.stage_seconds.get(stage).is_some_and(|s| *s > 0.0),
                "{stage}: {:?}",
                r.stage_seconds
            );
        }
        assert!(r.task_latency_p99 >= r.task_latency_p50 && r.task_latency_p50 > 0.0);
        assert!(r.estimated_cost_per_million_rows_usd > 0.0);
    }
}
