//! The worker's Prometheus metrics, served on `/metrics` of its health address.
//!
//! Label values are bounded: `pipeline` is a pipeline name (a handful per deployment; a message
//! whose pipeline cannot be read counts as `unknown`), every other label has a fixed set of
//! values listed here.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tributary_worker_tasks_total` | pipeline, outcome = started, succeeded, failed, retried, dead_lettered | task deliveries by how they ended |
//! | `tributary_worker_rows_total` | pipeline, kind = in, out, filtered, deduplicated, rejected, malformed | rows by outcome |
//! | `tributary_worker_bytes_total` | pipeline, direction = read, written | source bytes read, output bytes written |
//! | `tributary_worker_parquet_files_total` | pipeline | Parquet files written |
//! | `tributary_worker_stage_seconds` | pipeline, stage = task, read, parse, transform, encode, upload | durations (histogram); the engine's stages in thread time summed over threads (`engine::StageTimes`) |
//! | `tributary_worker_tasks_in_flight` | | tasks running now |

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use protocol::Counts;

pub struct WorkerMetrics {
    pub registry: Registry,
    pub tasks: IntCounterVec,
    pub rows: IntCounterVec,
    pub bytes: IntCounterVec,
    pub parquet_files: IntCounterVec,
    pub stage_seconds: HistogramVec,
    pub in_flight: IntGauge,
}

impl WorkerMetrics {
    fn new() -> WorkerMetrics {
        let registry = Registry::new();
        let tasks = IntCounterVec::new(
            Opts::new(
                "tributary_worker_tasks_total",
                "Task deliveries by outcome.",
            ),
            &["pipeline", "outcome"],
        )
        .expect("metric");
        let rows = IntCounterVec::new(
            Opts::new("tributary_worker_rows_total", "Rows by outcome."),
            &["pipeline", "kind"],
        )
        .expect("metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "tributary_worker_bytes_total",
                "Source bytes read and output bytes written.",
            ),
            &["pipeline", "direction"],
        )
        .expect("metric");
        let parquet_files = IntCounterVec::new(
            Opts::new(
                "tributary_worker_parquet_files_total",
                "Parquet files written.",
            ),
            &["pipeline"],
        )
        .expect("metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tributary_worker_stage_seconds",
                "Duration of task stages: whole task (wall), read (reading, decompressing and splitting the source), parse (records into typed columns), transform (steps, dedupe, checks, partitioning), encode (Parquet encoding and compression), upload; the engine stages in thread time summed over threads.",
            )
            .buckets(runtime::metrics::duration_buckets()),
            &["pipeline", "stage"],
        )
        .expect("metric");
        let in_flight = IntGauge::new("tributary_worker_tasks_in_flight", "Tasks running now.")
            .expect("metric");
        for c in [&tasks, &rows, &bytes, &parquet_files] {
            registry.register(Box::new(c.clone())).expect("register");
        }
        registry
            .register(Box::new(stage_seconds.clone()))
            .expect("register");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("register");
        WorkerMetrics {
            registry,
            tasks,
            rows,
            bytes,
            parquet_files,
            stage_seconds,
            in_flight,
        }
    }

    pub fn task(&self, pipeline: &str, outcome: &str) {
        self.tasks.with_label_values(&[pipeline, outcome]).inc();
    }

    pub fn stage(&self, pipeline: &str, stage: &str, d: Duration) {
        self.stage_seconds
            .with_label_values(&[pipeline, stage])
            .observe(d.as_secs_f64());
    }

    /// Counts of one finished shard.
    pub fn shard(&self, pipeline: &str, c: &Counts, read: u64, written: u64, files: usize) {
        let rows = |kind: &str, n: u64| self.rows.with_label_values(&[pipeline, kind]).inc_by(n);
        rows("in", c.lines_total);
        rows("out", c.rows_out);
        rows("filtered", c.filtered_total());
        rows("deduplicated", c.duplicates);
        rows("rejected", c.rejected_total());
        rows("malformed", c.malformed);
        self.bytes
            .with_label_values(&[pipeline, "read"])
            .inc_by(read);
        self.bytes
            .with_label_values(&[pipeline, "written"])
            .inc_by(written);
        self.parquet_files
            .with_label_values(&[pipeline])
            .inc_by(files as u64);
    }
}

/// The process's worker metrics.
pub static METRICS: LazyLock<WorkerMetrics> = LazyLock::new(WorkerMetrics::new);
