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

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pipelines: usize,
    pub rows_in: u64,
    pub rows_out: u64,
    pub input_mb: f64,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub mb_per_sec: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    /// Seconds summed over the tasks, per stage (extract, transform, write, upload).
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
fn files_under(dir: &Path) -> Vec<PathBuf> {
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

fn size(p: &Path) -> u64 {
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
    let result = PipelineResult {
        pipeline: r.pipeline.clone(),
        status: r.status.to_string(),
        shards: r.shards,
        rows_in: r.counts.lines_total,
        rows_out: r.counts.rows_out,
        rows_rejected: r.counts.rejected_total() + r.counts.malformed,
        input_bytes: files_under(&source_dir).iter().map(|p| size(p)).sum(),
        parquet_files: parquet.len(),
        parquet_bytes: parquet.iter().sum(),
        batches_loaded: r.batches_loaded,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((result, parquet))
}

/// Runs every pipeline under `dir/pipelines` (the first `only`, if given) into `data_dir`.
pub async fn run(
    dir: &Path,
    data_dir: &Path,
    workers: usize,
    only: Option<usize>,
) -> anyhow::Result<Report> {
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
    Ok(report(
        results,
        sizes,
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
    ))
}

fn report(results: Vec<PipelineResult>, mut sizes: Vec<u64>, seconds: f64, cpu: f64) -> Report {
    sizes.sort_unstable();
    let q = |f: f64| {
        sizes
            .get(((sizes.len() as f64 - 1.0) * f).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let rows_in: u64 = results.iter().map(|r| r.rows_in).sum();
    let input: u64 = results.iter().map(|r| r.input_bytes).sum();
    let (stages, latency) = worker_stages();
    let shards: usize = results.iter().map(|r| r.shards).sum();
    let cost = cost_per_million(rows_in, shards, sizes.len(), cpu);
    Report {
        pipelines: results.len(),
        rows_in,
        rows_out: results.iter().map(|r| r.rows_out).sum(),
        input_mb: input as f64 / 1e6,
        seconds,
        rows_per_sec: rows_in as f64 / seconds.max(1e-9),
        mb_per_sec: input as f64 / 1e6 / seconds.max(1e-9),
        cpu_seconds: cpu,
        peak_rss_mb: peak_rss_mb(),
        stage_seconds: stages,
        task_latency_p50: latency(0.5),
        task_latency_p95: latency(0.95),
        task_latency_p99: latency(0.99),
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

/// Seconds per stage summed over the tasks of this process, and a task-latency quantile
/// estimated from the histogram's buckets (the upper bound of the bucket it falls in).
fn worker_stages() -> (std::collections::BTreeMap<String, f64>, impl Fn(f64) -> f64) {
    let mut sums = std::collections::BTreeMap::new();
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for fam in worker::metrics::METRICS.registry.gather() {
        if fam.name() != "tributary_worker_stage_seconds" {
            continue;
        }
        for m in fam.get_metric() {
            let stage = m
                .get_label()
                .iter()
                .find(|l| l.name() == "stage")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let h = m.get_histogram();
            *sums.entry(stage.clone()).or_insert(0.0) += h.get_sample_sum();
            if stage == "task" {
                for (i, b) in h.get_bucket().iter().enumerate() {
                    match buckets.get_mut(i) {
                        Some(x) => x.1 += b.cumulative_count(),
                        None => buckets.push((b.upper_bound(), b.cumulative_count())),
                    }
                }
            }
        }
    }
    let total = buckets.last().map_or(0, |b| b.1);
    let quantile = move |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        buckets
            .iter()
            .find(|(_, c)| *c >= want.max(1))
            .map_or(0.0, |(le, _)| *le)
    };
    (sums, quantile)
}

/// This process's CPU seconds (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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

/// This process's peak resident set (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
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
        assert!(
            r.stage_seconds.contains_key("transform"),
            "{:?}",
            r.stage_seconds
        );
        assert!(r.task_latency_p99 >= r.task_latency_p50 && r.task_latency_p50 > 0.0);
        assert!(r.estimated_cost_per_million_rows_usd > 0.0);
    }
}
