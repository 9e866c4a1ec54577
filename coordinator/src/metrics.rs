//! The coordinator's Prometheus metrics, served on `/metrics` of its API address.
//!
//! Label values are bounded: `pipeline` and `table` come from the configured pipelines; every
//! other label has a fixed set of values listed here.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `tributary_coordinator_runs_total` | pipeline, status = started, completed, failed | runs |
//! | `tributary_coordinator_shards_total` | pipeline, outcome = succeeded, failed | shard completions recorded |
//! | `tributary_coordinator_messages_dead_lettered_total` | queue = results | undecodable completions |
//! | `tributary_load_batches_total` | table, outcome = loaded, already_loaded, failed | load attempts |
//! | `tributary_load_seconds` | table | load duration (histogram) |
//! | `tributary_queue_messages` | queue = tasks, results; state = visible, in_flight, dead | queue depth, polled |
//! | `tributary_queue_oldest_task_age_seconds` | | age of the oldest run that still has unfinished tasks |
//! | `tributary_freshness_lag_seconds` | pipeline | now minus the start of the newest fully loaded run |
//! | `tributary_coordinator_active_runs` | | runs in progress |
//! | `tributary_quality_checks_total` | pipeline, expectation (from the pipeline file), status = pass, warn, fail | expectations judged, one per finished run |

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct CoordinatorMetrics {
    pub registry: Registry,
    pub runs: IntCounterVec,
    pub shards: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub load_batches: IntCounterVec,
    pub load_seconds: HistogramVec,
    pub queue_messages: IntGaugeVec,
    pub oldest_task_age: prometheus::Gauge,
    pub freshness_lag: GaugeVec,
    pub active_runs: IntGauge,
    pub quality_checks: IntCounterVec,
}

impl CoordinatorMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let runs = counter(
            "tributary_coordinator_runs_total",
            "Pipeline runs by status.",
            &["pipeline", "status"],
        );
        let shards = counter(
            "tributary_coordinator_shards_total",
            "Shard completions recorded, by outcome.",
            &["pipeline", "outcome"],
        );
        let dead_lettered = counter(
            "tributary_coordinator_messages_dead_lettered_total",
            "Messages the coordinator could not read and dead-lettered.",
            &["queue"],
        );
        let load_batches = counter(
            "tributary_load_batches_total",
            "Load batch attempts by outcome.",
            &["table", "outcome"],
        );
        let load_seconds = HistogramVec::new(
            HistogramOpts::new("tributary_load_seconds", "Duration of load batches.")
                .buckets(runtime::metrics::duration_buckets()),
            &["table"],
        )
        .expect("metric");
        registry
            .register(Box::new(load_seconds.clone()))
            .expect("register");
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "tributary_queue_messages",
                "Messages in the queues (approximate, polled).",
            ),
            &["queue", "state"],
        )
        .expect("metric");
        registry
            .register(Box::new(queue_messages.clone()))
            .expect("register");
        let oldest_task_age = prometheus::Gauge::new(
            "tributary_queue_oldest_task_age_seconds",
            "Age of the oldest run that still has unfinished tasks.",
        )
        .expect("metric");
        registry
            .register(Box::new(oldest_task_age.clone()))
            .expect("register");
        let freshness_lag = GaugeVec::new(
            Opts::new(
                "tributary_freshness_lag_seconds",
                "Now minus the start of the newest run whose data is fully loaded.",
            ),
            &["pipeline"],
        )
        .expect("metric");
        registry
            .register(Box::new(freshness_lag.clone()))
            .expect("register");
        let quality_checks = counter(
            "tributary_quality_checks_total",
            "Data-quality expectations judged at the end of runs, by status.",
            &["pipeline", "expectation", "status"],
        );
        let active_runs = IntGauge::new("tributary_coordinator_active_runs", "Runs in progress.")
            .expect("metric");
        registry
            .register(Box::new(active_runs.clone()))
            .expect("register");
        CoordinatorMetrics {
            registry,
            runs,
            shards,
            dead_lettered,
            load_batches,
            load_seconds,
            queue_messages,
            oldest_task_age,
            freshness_lag,
            active_runs,
            quality_checks,
        }
    }

    /// Counts a run's verdict, one increment per expectation.
    pub fn quality(&self, pipeline: &str, report: &crate::quality::QualityReport) {
        for r in &report.results {
            self.quality_checks
                .with_label_values(&[pipeline, &r.name, &r.status])
                .inc();
        }
    }

    pub fn load(&self, table: &str, outcome: &str, d: Duration) {
        self.load_batches.with_label_values(&[table, outcome]).inc();
        self.load_seconds
            .with_label_values(&[table])
            .observe(d.as_secs_f64());
    }

    pub fn depth(&self, queue: &str, d: &backends::queue::QueueDepth) {
        for (state, n) in [
            ("visible", d.visible),
            ("in_flight", d.in_flight),
            ("dead", d.dead),
        ] {
            self.queue_messages
                .with_label_values(&[queue, state])
                .set(n as i64);
        }
    }
}

pub static METRICS: LazyLock<CoordinatorMetrics> = LazyLock::new(CoordinatorMetrics::new);
