//! A pipeline run in local mode: plan → enqueue → in-process workers → completions → batched
//! exactly-once loads, with every step recorded durably so a killed run resumes.
//!
//! ```text
//!  planner ──tasks──▶ MemoryQueue "tasks" ──▶ N worker loops ──▶ execute_task (rayon via bridge)
//!                                                  │ manifest written, then result sent, then task deleted
//!  coordinator loop ◀── MemoryQueue "results" ◀────┘
//!     record shard done (state) → group into LoadBatch (state, before loading) → warehouse.load
//!     (staging → MERGE → ledger, one transaction) → record batch loaded (state)
//! ```
//!
//! Durable state (`DATA_DIR/state`, a [`StateStore`]):
//! `pipelines/NAME/current` (the unfinished run), `runs/RUN/run.json`, `runs/RUN/plan.bin` (bincode),
//! `runs/RUN/done/SHARD` (manifest key + counts), `runs/RUN/batches/bNNNN.json` (the batch, written
//! before it is loaded), `runs/RUN/loaded/bNNNN`. On restart, shards with a done record (or a
//! manifest already written) are not redone, recorded batches are re-loaded (the warehouse ledger
//! skips those that committed), and the rest is planned as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use backends::object_store::{LocalStore, ObjectStore};
use backends::queue::{MemoryQueue, Queue};
use backends::state::{FileStateStore, StateStore};
use backends::warehouse::Warehouse;
use pipeline::Pipeline;
use protocol::{
    Counts, Message, ObjectRef, PipelineSpec, ResultMessage, ShardDescriptor, ShardManifest,
    ShardPlan, TaskMessage, TaskOutcome,
};
use serde::{Deserialize, Serialize};

use crate::engine::{DoneRecord, Event, RunMachine, RunStatus};
use crate::loader::Loader;
use crate::local_source::{LocalSource, splittable, window_filter};
use crate::planner::plan_shards;

/// Options of `coordinator run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pipeline: PathBuf,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub source: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub shard_size: Option<u64>,
    pub progress: bool,
    /// Rows per load batch (a batch closes when it reaches this many rows).
    pub batch_rows: u64,
    /// Only the objects whose key's time (`[source] time_template`) is in this window: one
    /// window of a backfill.
    pub window: Option<crate::backfill::Window>,
}

/// Test hook: crash the process at a chosen point, as `kill -9` would (no cleanup). One more,
/// `crash_mid_load`, is the embedded warehouse's own (inside a load's transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    CrashAfterShards(usize),
    CrashAfterLoadCommit,
    /// Fleet: enqueue every task twice (two workers then run the same task at once).
    DuplicateTasks,
}

pub(crate) fn fault() -> Option<Fault> {
    let v = std::env::var("TRIBUTARY_FAULT").ok()?;
    if let Some(n) = v.strip_prefix("crash_after_shards=") {
        return n.parse().ok().map(Fault::CrashAfterShards);
    }
    match v.as_str() {
        "crash_after_load_commit" => Some(Fault::CrashAfterLoadCommit),
        "duplicate_tasks" => Some(Fault::DuplicateTasks),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub table: String,
    pub status: RunStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub source: String,
    pub output: String,
    pub output_prefix: String,
    pub shards: usize,
    pub source_bytes: u64,
    pub counts: Counts,
    pub batches_loaded: usize,
    pub failed_shards: Vec<(String, String)>,
    /// Shards finished so far (kept current by the fleet coordinator).
    #[serde(default)]
    pub shards_done: usize,
    /// The last load error, while a batch is being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed load attempts so far (each retried with backoff).
    #[serde(default)]
    pub load_failures: u32,
    /// The data-quality verdict, once every shard has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::quality::QualityReport>,
    /// A database source's cursor value this run read up to: the pipeline's watermark once the
    /// run has completed (see [`crate::sources`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Local mode: the pipeline file the run was started from (`coordinator retry` reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_file: Option<String>,
    /// Unfinished shards in flight at most (a backfill's `--max-in-flight`); `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// A backfill's run: the time range it reads (`2026-11-02 00:00:00 .. 2026-11-03 00:00:00`).
    /// It never moves the pipeline's watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_window: Option<String>,
}

impl RunRecord {
    /// Brings the record up to the machine: shards done and failed, counts, batches loaded.
    pub(crate) fn observe(&mut self, m: &RunMachine) {
        self.shards_done = m.done().len();
        self.counts = m.counts();
        self.batches_loaded = m.batches_loaded();
        self.failed_shards = m
            .failed()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// The end of a run, with the status the machine gave it. When a `fail` expectation is
    /// broken (then nothing was loaded), `last_error` says which and by how much.
    pub(crate) fn finish(
        &mut self,
        status: RunStatus,
        quality: Option<crate::quality::QualityReport>,
    ) {
        let broken = quality.as_ref().map(|q| q.failures()).unwrap_or_default();
        if !broken.is_empty() {
            self.last_error = Some(format!(
                "not loaded: expectation(s) failed: {}",
                broken.join("; ")
            ));
        }
        self.status = status;
        self.quality = quality;
        self.finished_at = Some(now());
    }
}

impl RunRecord {
    /// The record of a run that is being started.
    pub(crate) fn started(
        plan: &ShardPlan,
        table: &str,
        source: String,
        output: String,
        output_prefix: String,
        source_bytes: u64,
    ) -> RunRecord {
        RunRecord {
            run_id: plan.run_id.clone(),
            pipeline: plan.pipeline.clone(),
            table: table.to_string(),
            status: RunStatus::Running,
            started_at: now(),
            finished_at: None,
            source,
            output,
            output_prefix,
            shards: plan.shards.len(),
            source_bytes,
            counts: Counts::default(),
            batches_loaded: 0,
            failed_shards: Vec::new(),
            shards_done: 0,
            last_error: None,
            load_failures: 0,
            quality: None,
            watermark: None,
            pipeline_file: None,
            backfill_window: None,
            max_in_flight: None,
        }
    }
}

/// A run id unique across processes and restarts: time to the millisecond, process id, and a
/// per-process sequence.
pub(crate) fn new_run_id(p: &Pipeline) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "{}-{}-{:04x}{seq:02x}",
        p.name(),
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"),
        std::process::id() & 0xffff
    )
}

#[cfg(test)]
impl RunRecord {
    /// A record of run `run_id` of `pipeline` into a table of the same name, for tests.
    pub(crate) fn for_test(run_id: &str, pipeline: &str, status: RunStatus) -> RunRecord {
        let plan = ShardPlan {
            run_id: run_id.into(),
            pipeline: pipeline.into(),
            shards: Vec::new(),
        };
        let mut r = RunRecord::started(
            &plan,
            pipeline,
            "src".into(),
            "lake".into(),
            pipeline.into(),
            0,
        );
        r.status = status;
        r
    }
}

/// A new run of `p` over `objects`, and its shards.
pub(crate) fn plan_run(p: &Pipeline, objects: &[ObjectRef], shard_bytes: u64) -> ShardPlan {
    ShardPlan {
        run_id: new_run_id(p),
        pipeline: p.name().to_string(),
        shards: plan_shards(objects, shard_bytes, &splittable(p)),
    }
}

/// Records a new run durably: its shard plan, its record, and (`current`) that it is its
/// pipeline's current run (the key a restart resumes from; a fleet backfill's runs are resumed
/// from their backfill's record instead).
pub(crate) async fn record_new_run(
    state: &dyn StateStore,
    plan: &ShardPlan,
    record: &RunRecord,
    current: bool,
) -> anyhow::Result<()> {
    let run_id = &plan.run_id;
    state
        .put(
            &format!("runs/{run_id}/plan.bin"),
            &protocol::encode_binary(plan),
        )
        .await?;
    state
        .put(
            &format!("runs/{run_id}/run.json"),
            &serde_json::to_vec_pretty(record)?,
        )
        .await?;
    if current {
        state
            .put(
                &format!("pipelines/{}/current", plan.pipeline),
                run_id.as_bytes(),
            )
            .await?;
    }
    Ok(())
}

/// A recorded run's shard plan (`runs/RUN/plan.bin`); a missing one is an error naming the run.
pub(crate) async fn read_plan(state: &dyn StateStore, run_id: &str) -> anyhow::Result<ShardPlan> {
    let bytes = state
        .get(&format!("runs/{run_id}/plan.bin"))
        .await?
        .with_context(|| format!("run {run_id} has no shard plan in state"))?;
    protocol::decode_binary(&bytes)
        .with_context(|| format!("the shard plan of run {run_id} cannot be read"))
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    pub record: RunRecord,
    pub resumed: bool,
    pub parquet_location: PathBuf,
    pub warehouse: Option<String>,
    pub rows_in_table: Option<u64>,
    pub quarantine_files: Vec<PathBuf>,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The folders of a data dir.
pub struct DataDir {
    pub root: PathBuf,
    pub state: Arc<dyn StateStore>,
    /// Manifests and quarantine files.
    pub files: Arc<dyn ObjectStore>,
    pub lake: PathBuf,
    pub warehouse_path: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating data dir {}", root.display()))?;
        let root = root.canonicalize()?;
        check_writable(&root)?;
        Ok(DataDir {
            state: Arc::new(FileStateStore::new(root.join("state"))?),
            files: Arc::new(LocalStore::new(root.join("files"))?),
            lake: root.join("lake"),
            warehouse_path: root.join("warehouse.db"),
            root,
        })
    }

    /// The canonical root of a data dir that must already exist (`status`, `sql`): a missing one
    /// is an error that says so, and nothing is created.
    pub fn existing_root(root: &Path) -> anyhow::Result<PathBuf> {
        if !root.is_dir() {
            bail!(
                "data dir {} does not exist (run a pipeline first, or pass --data-dir)",
                root.display()
            );
        }
        Ok(root.canonicalize()?)
    }

    /// Opens a data dir that must already exist, creating nothing in it.
    pub fn open_existing(root: &Path) -> anyhow::Result<DataDir> {
        let root = Self::existing_root(root)?;
        if !root.join("state").is_dir() {
            bail!(
                "{} is not a Tributary data dir (it has no state/; run a pipeline first)",
                root.display()
            );
        }
        Self::open(&root)
    }

    #[cfg(feature = "embedded-warehouse")]
    pub fn warehouse(&self) -> anyhow::Result<Arc<dyn Warehouse>> {
        Ok(Arc::new(backends::warehouse::SqliteWarehouse::open(
            &self.warehouse_path,
        )?))
    }

    #[cfg(not(feature = "embedded-warehouse"))]
    pub fn warehouse(&self) -> anyhow::Result<Arc<dyn Warehouse>> {
        bail!(
            "this coordinator was built without the embedded warehouse (feature `embedded-warehouse`)"
        )
    }

    pub async fn runs(&self) -> anyhow::Result<Vec<RunRecord>> {
        all_runs(&*self.state).await
    }

    /// One run's record; a run the data dir does not hold is an error naming both.
    pub async fn run(&self, run_id: &str) -> anyhow::Result<RunRecord> {
        let bytes = self
            .state
            .get(&format!("runs/{run_id}/run.json"))
            .await?
            .with_context(|| format!("no run {run_id} in {}", self.root.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("state of run {run_id} is corrupt"))
    }
}

/// Every run recorded in a state store.
pub async fn all_runs(state: &dyn StateStore) -> anyhow::Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    for key in state.list("runs/").await? {
        if key.ends_with("/run.json") {
            let bytes = state.get(&key).await?.unwrap_or_default();
            out.push(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("state {key} is corrupt"))?,
            );
        }
    }
    Ok(out)
}

/// Fails with a hint when this process cannot write into the data dir (typically a folder
/// mounted into the container, which runs as uid 65532, owned by another user).
fn check_writable(root: &Path) -> anyhow::Result<()> {
    let probe = root.join(format!(".tributary-write-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "data dir {} is not writable by this process (uid {}): {e}; give that user the folder \
             (for a folder mounted into the image: chown 65532 it on the host) or pass another --data-dir",
            root.display(),
            current_uid().map_or_else(|| "unknown".to_string(), |u| u.to_string())
        ),
    }
}

/// The real uid of this process, from /proc (no libc call needed).
fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// `coordinator sql` on the embedded warehouse of the data dir at `root` (read-only unless
/// `write`; see [`backends::warehouse::query_file`]).
#[cfg(feature = "embedded-warehouse")]
pub fn sql_query(
    root: &Path,
    sql: &str,
    write: bool,
) -> anyhow::Result<backends::warehouse::QueryResult> {
    Ok(backends::warehouse::query_file(
        &root.join("warehouse.db"),
        sql,
        write,
    )?)
}

#[cfg(not(feature = "embedded-warehouse"))]
pub fn sql_query(
    _root: &Path,
    _sql: &str,
    _write: bool,
) -> anyhow::Result<backends::warehouse::QueryResult> {
    bail!(
        "this coordinator was built without the embedded warehouse (feature `embedded-warehouse`)"
    )
}

/// What a local run starts from: its options, pipeline, data dir, source and output.
struct Starting<'a> {
    opts: &'a RunOptions,
    pipeline: &'a Pipeline,
    compiled: &'a worker::plan::Plan,
    dd: &'a DataDir,
    src: &'a LocalSource,
    output_root: &'a Path,
    output_prefix: &'a str,
}

impl Starting<'_> {
    /// The pipeline's unfinished run (refused if it read another source or wrote another
    /// output), or a new run planned and recorded; and whether it was resumed.
    async fn resume_or_plan(&self) -> anyhow::Result<(RunRecord, ShardPlan, bool)> {
        let (p, dd) = (self.pipeline, self.dd);
        let name = p.name();
        let current_key = format!("pipelines/{name}/current");
        if let Some(id) = dd.state.get(&current_key).await? {
            let id = String::from_utf8_lossy(&id).to_string();
            if let Some(bytes) = dd.state.get(&format!("runs/{id}/run.json")).await? {
                let r: RunRecord = serde_json::from_slice(&bytes)?;
                if r.source != self.src.describe(p)
                    || r.output != self.output_root.display().to_string()
                {
                    bail!(
                        "run {id} of pipeline {name} is unfinished with source {} and output {}; rerun with those to resume it, or remove {} to abandon it",
                        r.source,
                        r.output,
                        dd.root.join("state").join(&current_key).display()
                    );
                }
                let plan = read_plan(&*dd.state, &id).await?;
                return Ok((r, plan, true));
            }
        }
        if let Some(o) = &self.opts.output
            && std::fs::read_dir(o)?.next().is_some()
        {
            bail!("output folder {} exists and is not empty", o.display());
        }
        let (rec, plan) = self.plan_new().await?;
        Ok((rec, plan, false))
    }

    /// Plans a new run from the source and records it.
    async fn plan_new(&self) -> anyhow::Result<(RunRecord, ShardPlan)> {
        let (p, opts) = (self.pipeline, self.opts);
        let mut taken = None;
        let (plan, source_bytes, watermark) = match self.src {
            LocalSource::Folder { .. } | LocalSource::S3 { .. } => {
                let keep = window_filter(p, opts.window)?;
                let mut objects = self.src.objects(p, self.compiled, &keep).await?;
                if p.file.source.incremental && opts.window.is_none() {
                    let versions = self.src.store(&self.dd.files)?.list_versions("").await?;
                    let (fresh, t) = crate::incremental::new_objects(
                        &*self.dd.state,
                        p.name(),
                        &objects,
                        &versions,
                    )
                    .await?;
                    objects = fresh;
                    taken = Some(t);
                }
                let shard_bytes = opts.shard_size.unwrap_or(p.file.source.shard_bytes.get());
                let bytes = objects.iter().map(|o| o.size).sum();
                (plan_run(p, &objects, shard_bytes), bytes, None)
            }
            LocalSource::Extracted => {
                let run = crate::sources::plan_source_run(p, &*self.dd.state, opts.window).await?;
                (run.plan, 0, run.watermark)
            }
        };
        let mut rec = RunRecord::started(
            &plan,
            p.table(),
            self.src.describe(p),
            self.output_root.display().to_string(),
            self.output_prefix.to_string(),
            source_bytes,
        );
        rec.watermark = watermark;
        rec.backfill_window = opts.window.map(|w| format!("{} .. {}", w.from, w.to));
        rec.pipeline_file = Some(
            opts.pipeline
                .canonicalize()
                .unwrap_or_else(|_| opts.pipeline.clone())
                .display()
                .to_string(),
        );
        if let Some(t) = &taken {
            crate::incremental::record_taken(&*self.dd.state, &plan.run_id, t).await?;
        }
        record_new_run(&*self.dd.state, &plan, &rec, true).await?;
        Ok((rec, plan))
    }
}

/// The rows of the table after the run's loads (for the report; `None` if it cannot be read).
async fn rows_in(w: &dyn Warehouse, table: &str) -> Option<u64> {
    let r = w
        .query(&format!(
            "SELECT count(*) FROM {}",
            backends::warehouse::quote_ident(table)
        ))
        .await
        .ok()?;
    r.rows.first()?.first()?.as_ref()?.parse().ok()
}

/// The quarantine files the run's done shards wrote.
async fn quarantine_files(dd: &DataDir, done: &BTreeMap<String, DoneRecord>) -> Vec<PathBuf> {
    let files_root = dd.root.join("files");
    let mut out = Vec::new();
    for d in done.values() {
        if let Ok(bytes) = dd.files.get(&d.manifest_key).await
            && let Ok(m) = ShardManifest::from_json(&String::from_utf8_lossy(&bytes))
        {
            out.extend(m.quarantine.iter().map(|q| files_root.join(&q.key)));
        }
    }
    out
}

pub async fn run_local(opts: &RunOptions) -> anyhow::Result<RunReport> {
    let pipeline = crate::sources::load_pipeline(&opts.pipeline).await?;
    // Fail on bad key files or reference files before anything runs.
    let compiled = worker::plan::Plan::build(&pipeline)?;
    // The source is resolved (a database source's kind and connection variable checked)
    // before the data dir is created.
    let src = LocalSource::resolve(&pipeline, opts.source.as_deref()).await?;
    let dd = DataDir::open(&opts.data_dir)?;
    let (output_root, output_prefix) = output_of(opts, &dd, pipeline.table())?;
    let started = Starting {
        opts,
        pipeline: &pipeline,
        compiled: &compiled,
        dd: &dd,
        src: &src,
        output_root: &output_root,
        output_prefix: &output_prefix,
    };
    let (record, plan, resumed) = started.resume_or_plan().await?;
    let mut run = Running::open(&started, &record.run_id, &plan).await?;
    run.follow(record.source_bytes).await?;
    let status = run.settle().await?;
    run.end(record, status, resumed).await
}

/// A local run under way: its shards, the machine that tracks them, its loader and stores.
struct Running<'a> {
    started: &'a Starting<'a>,
    run_id: String,
    shards: BTreeMap<String, ShardDescriptor>,
    m: RunMachine,
    loader: Loader,
    source: Arc<dyn ObjectStore>,
    output: Arc<dyn ObjectStore>,
    warehouse: Option<Arc<dyn Warehouse>>,
    progress: indicatif::ProgressBar,
}

impl<'a> Running<'a> {
    /// The run's machine with what state holds of it replayed (done shards, recorded and loaded
    /// batches, manifests written before a crash, a cancel asked for).
    async fn open(
        started: &'a Starting<'a>,
        run_id: &str,
        plan: &ShardPlan,
    ) -> anyhow::Result<Running<'a>> {
        let (pipeline, dd) = (started.pipeline, started.dd);
        let source = started.src.store(&dd.files)?;
        let output: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(started.output_root)?);
        let warehouse = if pipeline.file.load.enabled {
            Some(dd.warehouse()?)
        } else {
            None
        };
        let shards: BTreeMap<String, ShardDescriptor> = plan
            .shards
            .iter()
            .map(|s| (s.shard_id.clone(), s.clone()))
            .collect();
        let mut loader = Loader::new(
            dd.state.clone(),
            dd.files.clone(),
            run_id,
            pipeline,
            warehouse.clone(),
            output.clone(),
        );
        let mut m = loader
            .replay(shards.keys().cloned(), started.opts.batch_rows)
            .await?;
        adopt_written_manifests(dd, run_id, &mut m).await?;
        observe_cancel(&*dd.state, run_id, &mut m).await?;
        Ok(Running {
            started,
            run_id: run_id.to_string(),
            shards,
            m,
            loader,
            source,
            output,
            warehouse,
            progress: indicatif::ProgressBar::hidden(),
        })
    }

    /// The task of shard `s`.
    fn task(&self, s: &ShardDescriptor) -> TaskMessage {
        let max_string_bytes = self.warehouse.as_ref().and_then(|w| w.max_string_bytes());
        let prefix = self.started.output_prefix;
        shard_task(
            self.started.pipeline,
            &self.run_id,
            s,
            prefix,
            max_string_bytes,
        )
    }

    /// Enqueues the shards still to do, runs the in-process workers on them and takes their
    /// completions (loading batches as they close) until every shard has ended or the run is
    /// cancelled; then stops the workers.
    async fn follow(&mut self, source_bytes: u64) -> anyhow::Result<()> {
        let (opts, dd) = (self.started.opts, self.started.dd);
        let tasks: Arc<dyn Queue> = Arc::new(MemoryQueue::new("tasks", Duration::from_secs(30), 3));
        let results: Arc<dyn Queue> =
            Arc::new(MemoryQueue::new("results", Duration::from_secs(30), 5));
        let sending = self.m.to_enqueue();
        send_tasks(&*tasks, &sending, &self.shards, |s| self.task(s)).await?;
        self.m.apply(Event::Enqueued { shards: sending });

        self.progress = progress_bar(opts.progress, source_bytes, self.started.pipeline.name());
        self.progress.inc(
            self.m
                .done()
                .keys()
                .filter_map(|k| self.shards.get(k))
                .map(|s| s.bytes())
                .sum(),
        );
        let scratch = dd.root.join("tmp");
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let env = local_env(
            &tasks,
            &results,
            worker::TaskStores {
                source: self.source.clone(),
                output: self.output.clone(),
                files: dd.files.clone(),
            },
        );
        let workers = spawn_workers(opts.workers, &env, &scratch, &stopping);
        follow_shards(
            &mut self.m,
            &mut self.loader,
            &self.shards,
            &*tasks,
            &*results,
            &*dd.state,
            &self.run_id,
            &self.progress,
        )
        .await?;
        // The loops stop now, not when their wait on the queue ends.
        let _ = stop.send(true);
        for w in workers {
            let _ = w.await;
        }
        // Every worker loop has stopped: no task of this run is using scratch any more.
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(())
    }

    /// Once every shard has ended: the last batches loaded (or the run judged), and the status
    /// the run finishes with.
    async fn settle(&mut self) -> anyhow::Result<RunStatus> {
        let status = self
            .loader
            .advance(&mut self.m, &self.shards, false)
            .await?
            .context("a run whose shards have all ended finishes")?;
        self.progress.finish_and_clear();
        Ok(status)
    }

    /// After the run's last load or verdict: its record finished with `status`, its commit
    /// record and end state written, the pipeline's `current` cleared unless shards failed, raw
    /// objects archived, and the report.
    async fn end(
        mut self,
        mut record: RunRecord,
        status: RunStatus,
        resumed: bool,
    ) -> anyhow::Result<RunReport> {
        let (opts, dd) = (self.started.opts, self.started.dd);
        record.observe(&self.m);
        record.finish(status, self.loader.quality.clone());
        // `--output DIR` holds only partition folders (the reference workload's contract): its
        // commit record goes to the data dir's files.
        let commits: &dyn ObjectStore = if opts.output.is_some() {
            &*dd.files
        } else {
            &*self.output
        };
        let done = self.m.done();
        crate::commit::commit_run(&record, done, &*dd.files, &*self.output, commits).await?;
        record_end(dd, &self.loader, &mut record, &self.m).await?;
        self.m.apply(Event::Finished(status));
        // A run with failed shards stays its pipeline's current run: the next `coordinator run`
        // (or `coordinator retry RUN`) redoes them in the same run.
        if self.m.failed().is_empty() || status == RunStatus::Cancelled {
            let current_key = format!("pipelines/{}/current", self.started.pipeline.name());
            dd.state.delete(&current_key).await?;
        }
        let (root, prefix) = (self.started.output_root, self.started.output_prefix);
        archive_and_report(
            dd,
            self.started.pipeline,
            record,
            resumed,
            self.m.done(),
            self.warehouse.as_deref(),
            if prefix.is_empty() {
                root.to_path_buf()
            } else {
                root.join(prefix)
            },
        )
        .await
    }
}

/// The in-process workers' environment: the run's queues, every task's stores.
fn local_env(
    tasks: &Arc<dyn Queue>,
    results: &Arc<dyn Queue>,
    stores: worker::TaskStores,
) -> worker::daemon::TaskEnv {
    worker::daemon::TaskEnv {
        tasks: tasks.clone(),
        results: results.clone(),
        stores: Arc::new(move |_| Ok(stores.clone())),
        visibility: Duration::from_secs(30),
    }
}

/// After a run has ended: raw objects past the source's retention archived, and the report.
async fn archive_and_report(
    dd: &DataDir,
    pipeline: &Pipeline,
    record: RunRecord,
    resumed: bool,
    done: &BTreeMap<String, DoneRecord>,
    warehouse: Option<&dyn Warehouse>,
    parquet_location: PathBuf,
) -> anyhow::Result<RunReport> {
    if let Err(e) =
        crate::archive::archive_raw(&*dd.state, &*dd.files, pipeline, chrono::Utc::now()).await
    {
        tracing::warn!(pipeline = %pipeline.name(), error = %format!("{e:#}"), "archiving raw objects failed; tried again after the next run");
    }
    let rows_in_table = match warehouse {
        Some(w) => rows_in(w, pipeline.table()).await,
        None => None,
    };
    Ok(RunReport {
        parquet_location,
        warehouse: warehouse.map(|w| w.describe()),
        rows_in_table,
        quarantine_files: quarantine_files(dd, done).await,
        record,
        resumed,
    })
}

/// Where a local run's Parquet goes: `--output DIR` itself (partition folders only), or the
/// table's prefix in the data dir's lake.
fn output_of(opts: &RunOptions, dd: &DataDir, table: &str) -> anyhow::Result<(PathBuf, String)> {
    Ok(match &opts.output {
        Some(o) => {
            std::fs::create_dir_all(o).with_context(|| format!("output folder {}", o.display()))?;
            (o.canonicalize()?, String::new())
        }
        None => (dd.lake.clone(), table.to_string()),
    })
}

/// Sends the tasks of `sending`, ten messages at a time (a message carries the pipeline file:
/// all of a large run's at once would sit in memory together).
async fn send_tasks(
    tasks: &dyn Queue,
    sending: &[String],
    shards: &BTreeMap<String, ShardDescriptor>,
    task: impl Fn(&ShardDescriptor) -> TaskMessage + Copy,
) -> anyhow::Result<()> {
    for chunk in sending.chunks(10) {
        tasks.send_batch(task_bodies(chunk, shards, task)).await?;
    }
    Ok(())
}

/// Takes completions until every shard has ended or the run is cancelled: each done shard
/// recorded, tasks the queue gave up on (redelivered too often) failed, batches loaded as they
/// close.
#[allow(clippy::too_many_arguments)]
async fn follow_shards(
    m: &mut RunMachine,
    loader: &mut Loader,
    shards: &BTreeMap<String, ShardDescriptor>,
    tasks: &dyn Queue,
    results: &dyn Queue,
    state: &dyn StateStore,
    run_id: &str,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let fault = fault();
    let mut done_here = 0usize;
    while !m.is_complete() && !m.is_cancelled() {
        observe_cancel(state, run_id, m).await?;
        for shard in receive_results(results, state, run_id, m).await? {
            progress.inc(shards.get(&shard).map(|s| s.bytes()).unwrap_or(0));
            done_here += 1;
            if fault == Some(Fault::CrashAfterShards(done_here)) {
                std::process::abort();
            }
        }
        for dl in tasks.dead_letters().await? {
            if let Ok(Message::Task(t)) = Message::from_body(&dl.body) {
                m.apply(Event::ShardFailed {
                    shard: t.shard.shard_id.clone(),
                    reason: dl.reason.clone(),
                });
            }
        }
        if m.is_complete() {
            // The engine is done with this run: its pool gives its pages back before the last
            // loads allocate theirs (the run's peak RSS is then the larger of the two, not the
            // sum). On the pool's threads, off this runtime thread.
            tokio::task::spawn_blocking(crate::memory::release_engine_memory).await?;
        }
        loader.advance(m, shards, false).await?;
    }
    Ok(())
}

/// What a run's end moves, after its commit record: the watermark (a completed run's), the
/// incremental objects it took, and its record.
async fn record_end(
    dd: &DataDir,
    loader: &Loader,
    record: &mut RunRecord,
    m: &RunMachine,
) -> anyhow::Result<()> {
    loader.settle_watermark(record, m.done()).await?;
    crate::sources::advance_watermark(&*dd.state, record).await?;
    crate::incremental::settle(&*dd.state, record).await?;
    dd.state
        .put(
            &format!("runs/{}/run.json", record.run_id),
            &serde_json::to_vec_pretty(record)?,
        )
        .await?;
    Ok(())
}

/// The state key whose presence asks a run to stop (`coordinator cancel RUN`).
pub fn cancel_key(run_id: &str) -> String {
    format!("runs/{run_id}/cancel")
}

/// Takes a cancel request of the run into the machine: nothing more is enqueued or loaded.
async fn observe_cancel(
    state: &dyn StateStore,
    run_id: &str,
    m: &mut RunMachine,
) -> anyhow::Result<()> {
    if !m.is_cancelled() && state.get(&cancel_key(run_id)).await?.is_some() {
        tracing::warn!(run = %run_id, "run cancelled");
        m.apply(Event::Cancelled);
    }
    Ok(())
}

/// A shard whose manifest was written before a crash is done: it is recorded instead of redone.
async fn adopt_written_manifests(
    dd: &DataDir,
    run_id: &str,
    m: &mut RunMachine,
) -> anyhow::Result<()> {
    let unfinished: Vec<String> = m.unfinished().into_iter().map(String::from).collect();
    for shard in unfinished {
        let manifest_key = format!("manifests/{run_id}/{shard}.json");
        if let Ok(bytes) = dd.files.get(&manifest_key).await
            && let Ok(man) = ShardManifest::from_json(&String::from_utf8_lossy(&bytes))
        {
            let done = DoneRecord {
                manifest_key,
                counts: man.counts,
            };
            let key = format!("runs/{run_id}/done/{shard}");
            dd.state.put(&key, &serde_json::to_vec(&done)?).await?;
            m.apply(Event::ShardDone { shard, done });
        }
    }
    Ok(())
}

/// The in-process workers: each takes tasks from the embedded queue until `stopping`.
fn spawn_workers(
    n: usize,
    env: &worker::daemon::TaskEnv,
    scratch: &Path,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n.max(1))
        .map(|id| {
            tokio::spawn(crate::local_worker::work_loop(
                crate::local_worker::WorkerCtx {
                    id,
                    env: env.clone(),
                    scratch: scratch.to_path_buf(),
                    stopping: stopping.clone(),
                    poll: crate::local_worker::POLL,
                },
            ))
        })
        .collect()
}

/// The task of shard `s` of run `run_id` of `p`, writing under `output_prefix`, with no store
/// URLs (a local run's workers share the coordinator's stores; the fleet sets them).
pub(crate) fn shard_task(
    p: &Pipeline,
    run_id: &str,
    s: &ShardDescriptor,
    output_prefix: &str,
    max_string_bytes: Option<u64>,
) -> TaskMessage {
    TaskMessage {
        max_string_bytes,
        task_id: format!("{run_id}/{}", s.shard_id),
        run_id: run_id.to_string(),
        pipeline: PipelineSpec {
            name: p.name().to_string(),
            toml: p.text.clone(),
            base_dir: p.base_dir.display().to_string(),
        },
        shard: s.clone(),
        output_prefix: output_prefix.to_string(),
        quarantine_prefix: format!("quarantine/{}/{run_id}", p.name()),
        manifest_key: format!("manifests/{run_id}/{}.json", s.shard_id),
        source_url: None,
        output_url: None,
        files_url: None,
    }
}

/// The task messages of these shards.
pub(crate) fn task_bodies(
    ids: &[String],
    shards: &BTreeMap<String, ShardDescriptor>,
    task: impl Fn(&ShardDescriptor) -> TaskMessage,
) -> Vec<String> {
    ids.iter()
        .filter_map(|id| shards.get(id))
        .map(|s| Message::Task(task(s)).to_body())
        .collect()
}

/// Reads a round of completions, records each newly done shard durably before the machine
/// takes it, and deletes the messages; returns the shards done by this round.
async fn receive_results(
    results: &dyn Queue,
    state: &dyn StateStore,
    run_id: &str,
    m: &mut RunMachine,
) -> anyhow::Result<Vec<String>> {
    let mut newly_done = Vec::new();
    for msg in results.receive(10, Duration::from_millis(500)).await? {
        let r = match Message::from_body(&msg.body) {
            Ok(Message::Result(r)) => r,
            Ok(other) => {
                tracing::warn!(?other, "unexpected message on the results queue");
                results.delete(&msg.receipt).await?;
                continue;
            }
            Err(e) => {
                results.dead_letter(&msg.receipt, &e.to_string()).await?;
                continue;
            }
        };
        let ResultMessage {
            shard_id, outcome, ..
        } = r;
        match outcome {
            TaskOutcome::Succeeded {
                manifest_key,
                counts,
            } if !m.done().contains_key(&shard_id) => {
                let done = DoneRecord {
                    manifest_key,
                    counts,
                };
                let key = format!("runs/{run_id}/done/{shard_id}");
                state.put(&key, &serde_json::to_vec(&done)?).await?;
                let shard = shard_id.clone();
                if m.apply(Event::ShardDone { shard, done }) == crate::engine::Applied::Changed {
                    newly_done.push(shard_id);
                }
            }
            TaskOutcome::Succeeded { .. } => {}
            TaskOutcome::Failed { error } => {
                m.apply(Event::ShardFailed {
                    shard: shard_id,
                    reason: error,
                });
            }
        }
        results.delete(&msg.receipt).await?;
    }
    Ok(newly_done)
}

fn progress_bar(enabled: bool, total: u64, name: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_task_names_its_run_shard_manifest_and_quarantine_and_carries_the_pipeline() {
        let text = "[pipeline]\nname = \"events\"\n[source]\nlocation = \"in\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"int64\"\n";
        let p = pipeline::parse(text, "events.toml", "/pipes".into()).unwrap();
        let s = ShardDescriptor {
            shard_id: "s00007".into(),
            index: 7,
            inputs: Vec::new(),
            extract: None,
        };
        let t = shard_task(&p, "run-1", &s, "web_events", Some(65_535));
        assert_eq!(t.task_id, "run-1/s00007");
        assert_eq!(t.manifest_key, "manifests/run-1/s00007.json");
        assert_eq!(t.quarantine_prefix, "quarantine/events/run-1");
        assert_eq!(
            (t.output_prefix.as_str(), t.max_string_bytes),
            ("web_events", Some(65_535))
        );
        assert_eq!(
            (t.pipeline.name.as_str(), t.pipeline.toml.as_str()),
            ("events", text)
        );
        assert_eq!(t.pipeline.base_dir, "/pipes");
        assert_eq!(
            (t.source_url, t.output_url, t.files_url),
            (None, None, None)
        );
        assert_eq!(t.shard, s);
    }

    #[test]
    fn opening_a_data_dir_checks_it_is_writable_and_leaves_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let dd = DataDir::open(&root).unwrap();
        let names: Vec<String> = std::fs::read_dir(&dd.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("write-check")),
            "{names:?}"
        );
        assert!(current_uid().is_some());
    }

    #[test]
    fn an_existing_data_dir_is_required_by_status_and_sql() {
        let dir = tempfile::tempdir().unwrap();
        let err = DataDir::open_existing(&dir.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("nope").exists());
        let err = DataDir::open_existing(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a Tributary data dir"), "{err}");
    }
}
