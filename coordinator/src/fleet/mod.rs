//! `coordinator serve --config FILE`: the fleet coordinator.
//!
//! ```text
//!  cron / POST /api/runs ──▶ plan (list S3 source, shard) ──▶ state: plan, run ──▶ SQS tasks
//!  SQS results ──▶ state: runs/RUN/done/SHARD (then delete the messages)
//!            ──▶ batches per table (rows or time window) ──▶ state: batch ──▶ warehouse.load
//!                (staging → COPY → merge → ledger, one transaction) ──▶ state: loaded
//! ```
//!
//! One loop owns all decisions (no locks between planning, completions and loads); a batch load,
//! or a run's quality check that reads its files (`unique`), itself runs on a task of its own
//! (see `active`), so the loop answers the API and takes
//! completions while the warehouse works, and a run moves past its load only once the loop has
//! seen the load end. At shutdown the loop waits for loads in flight up to a grace. Its state is a
//! [`StateStore`] — by default objects under `<storage.files>/state/` in S3, so a coordinator pod
//! can be rescheduled anywhere — with the same layout as local mode (`pipelines/NAME/current`,
//! `runs/RUN/{run.json,plan.bin,enqueued,done/,failed/,batches/,loaded/}`). On start it resumes
//! every run named by a `pipelines/NAME/current` key: tasks are re-sent if the run had not
//! finished enqueueing, recorded batches are loaded again (the warehouse ledger skips those that
//! committed), and completions keep arriving from the queue. Completion messages are deleted only
//! after their record is durable, and recording is idempotent, so a redelivered completion is
//! harmless.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backends::state::{FileStateStore, ObjectStateStore, StateStore};
#[cfg(feature = "aws")]
use backends::warehouse::RedshiftWarehouse;
use backends::warehouse::{PostgresWarehouse, Warehouse};
use pipeline::Pipeline;
use protocol::{
    Message, ObjectRef, ResultMessage, ShardDescriptor, ShardPlan, TaskMessage, TaskOutcome,
};
use runtime::settings::{FleetBackends, FleetSettings, WarehouseKind};
use serde::{Deserialize, Serialize};

use crate::engine::{Applied, DoneRecord, Event, RunStatus};
use crate::loader::Loader;
use crate::metrics::METRICS;
use crate::run::{Fault, RunRecord, fault, plan_run, record_new_run, task_bodies};
use active::ActiveRun;

/// How often the results queue is polled while a load is in flight (between polls the loop
/// waits for a load to end).
const LOAD_RESULTS_POLL: Duration = Duration::from_millis(200);

/// How long a stopping coordinator waits for the loads in flight.
const LOAD_GRACE: Duration = Duration::from_secs(20);

/// A pipeline the coordinator knows, and its schedule.
struct Scheduled {
    pipeline: Pipeline,
    cron: Option<croner::Cron>,
    cron_text: Option<String>,
}

/// What the API shows of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    pub name: String,
    pub table: String,
    pub cron: Option<String>,
    pub next_run: Option<String>,
    pub current_run: Option<String>,
}

/// Live view shared with the HTTP API.
#[derive(Default)]
struct Shared {
    runs: BTreeMap<String, RunRecord>,
    pipelines: Vec<PipelineView>,
    backfills: Vec<crate::backfill::BackfillRecord>,
    /// The task and result queues' depths, as last polled.
    queues: BTreeMap<String, backends::queue::QueueDepth>,
    /// The task queue's dead letters, as last read.
    dead_letters: Vec<backends::queue::DeadLetter>,
    ready: bool,
}

pub struct Coordinator {
    settings: FleetSettings,
    state: Arc<dyn StateStore>,
    backends: FleetBackends,
    warehouse: Option<Arc<dyn Warehouse>>,
    pipelines: BTreeMap<String, Scheduled>,
    runs: BTreeMap<String, ActiveRun>,
    /// Backfills in progress, with their windows' plans.
    backfills: BTreeMap<
        String,
        (
            crate::backfill::BackfillRecord,
            Vec<crate::backfill::WindowPlan>,
        ),
    >,
    shared: Arc<Mutex<Shared>>,
    last_dead_letter_check: Instant,
    last_depth_poll: Instant,
    last_archive: Instant,
    /// Told by every load task as it ends (see `consume_results`).
    load_ended: Arc<tokio::sync::Notify>,
}

/// Opens the state store named by the settings.
pub fn open_state(
    s: &FleetSettings,
    backends: &FleetBackends,
) -> anyhow::Result<Arc<dyn StateStore>> {
    let url = s
        .coordinator
        .state
        .clone()
        .unwrap_or_else(|| format!("{}/state", s.storage.files.trim_end_matches('/')));
    Ok(if url.starts_with("s3://") {
        Arc::new(ObjectStateStore::new(backends.store(&url)?))
    } else {
        Arc::new(FileStateStore::new(
            url.strip_prefix("file://").unwrap_or(&url),
        )?)
    })
}

/// Opens the configured warehouse.
pub async fn open_warehouse(
    s: &FleetSettings,
    backends: &FleetBackends,
) -> anyhow::Result<Option<Arc<dyn Warehouse>>> {
    let w = &s.warehouse;
    Ok(match w.kind {
        WarehouseKind::None => None,
        WarehouseKind::Postgres => Some(Arc::new(
            PostgresWarehouse::connect(
                w.postgres.as_deref().context("warehouse.postgres")?,
                w.postgres_is_redshift,
            )
            .await?
            .with_connections(w.postgres_connections),
        )),
        #[cfg(not(feature = "aws"))]
        WarehouseKind::RedshiftData => {
            let _ = backends;
            return Err(backends::BackendError::NotBuilt {
                what: "warehouse.kind = \"redshift-data\"".into(),
            }
            .into());
        }
        #[cfg(feature = "aws")]
        WarehouseKind::RedshiftData => {
            let client = aws_sdk_redshiftdata::Client::new(&backends.aws.sdk);
            Some(Arc::new(
                RedshiftWarehouse::connect(
                    client,
                    w.redshift.clone().context("warehouse.redshift")?,
                )
                .await?,
            ))
        }
    })
}

fn parse_cron(expr: &str) -> anyhow::Result<croner::Cron> {
    expr.parse::<croner::Cron>()
        .map_err(|e| anyhow::anyhow!("cron {expr:?}: {e}"))
}

impl Coordinator {
    /// Loads and validates every pipeline, opens the backends and the warehouse: any problem
    /// is reported before anything runs.
    pub async fn open(settings: FleetSettings, base: &Path) -> anyhow::Result<Coordinator> {
        // A build without the AWS services says so before reading any pipeline.
        #[cfg(not(feature = "aws"))]
        FleetBackends::open(&settings).await?;
        let mut pipelines = BTreeMap::new();
        for sp in &settings.coordinator.pipelines {
            let path = if sp.file.is_absolute() {
                sp.file.clone()
            } else {
                base.join(&sp.file)
            };
            let p = crate::sources::load_pipeline(&path).await?;
            worker::plan::Plan::build(&p)?;
            if !p.file.source.kind.extracts()
                && !p.file.source.location.starts_with("s3://")
                && !Path::new(&p.resolve(&p.file.source.location)).is_dir()
            {
                bail!(
                    "{}: source.location {:?} must be an s3:// prefix (or a local folder shared with the workers)",
                    p.path,
                    p.file.source.location
                );
            }
            let name = p.name().to_string();
            if pipelines.contains_key(&name) {
                bail!("two pipelines are named {name:?}");
            }
            let cron = sp.cron.as_deref().map(parse_cron).transpose()?;
            pipelines.insert(
                name,
                Scheduled {
                    pipeline: p,
                    cron,
                    cron_text: sp.cron.clone(),
                },
            );
        }
        let backends = FleetBackends::open(&settings).await?;
        let state = open_state(&settings, &backends)?;
        let warehouse = open_warehouse(&settings, &backends).await?;
        Ok(Coordinator {
            settings,
            state,
            backends,
            warehouse,
            pipelines,
            runs: BTreeMap::new(),
            backfills: BTreeMap::new(),
            shared: Arc::default(),
            last_dead_letter_check: Instant::now() - Duration::from_secs(3600),
            last_depth_poll: Instant::now() - Duration::from_secs(3600),
            last_archive: Instant::now(),
            load_ended: Arc::default(),
        })
    }

    fn source_url(&self, p: &Pipeline) -> String {
        let loc = &p.file.source.location;
        if loc.starts_with("s3://") {
            loc.clone()
        } else {
            p.resolve(loc).display().to_string()
        }
    }

    /// Plans a run of `name`, records it, and enqueues its tasks.
    async fn start_run(&mut self, name: &str) -> anyhow::Result<String> {
        let current_key = format!("pipelines/{name}/current");
        if let Some(id) = self.state.get(&current_key).await? {
            bail!(
                "pipeline {name} already has a run in progress: {}",
                String::from_utf8_lossy(&id)
            );
        }
        self.plan_and_start(name, None, None).await
    }

    /// Plans and starts the run of one backfill window: it does not take the pipeline's
    /// current run (scheduled runs go on beside it), keeps at most `max_in_flight` shards in
    /// flight, and never moves the watermark.
    pub(super) async fn start_backfill_run(
        &mut self,
        name: &str,
        window: crate::backfill::Window,
        max_in_flight: Option<usize>,
    ) -> anyhow::Result<String> {
        self.plan_and_start(name, Some(window), max_in_flight).await
    }

    async fn plan_and_start(
        &mut self,
        name: &str,
        window: Option<crate::backfill::Window>,
        max_in_flight: Option<usize>,
    ) -> anyhow::Result<String> {
        let sched = self
            .pipelines
            .get(name)
            .with_context(|| format!("no pipeline named {name:?}"))?;
        let p = &sched.pipeline;
        let (plan, mut record) = if p.file.source.kind.extracts() {
            let run = crate::sources::plan_source_run(p, &*self.state, window).await?;
            let table = p.table().to_string();
            let mut record = RunRecord::started(
                &run.plan,
                &table,
                crate::sources::describe(p),
                self.backends.lake_url.clone(),
                table.clone(),
                0,
            );
            record.watermark = run.watermark;
            (run.plan, record)
        } else {
            self.plan_files_run(p, window).await?
        };
        record.backfill_window = window.map(|w| format!("{} .. {}", w.from, w.to));
        record.max_in_flight = max_in_flight;
        let run_id = plan.run_id.clone();
        record_new_run(&*self.state, &plan, &record, window.is_none()).await?;
        tracing::info!(run = %run_id, pipeline = name, shards = plan.shards.len(), "run planned");
        METRICS.runs.with_label_values(&[name, "started"]).inc();
        self.activate(record, plan).await?;
        Ok(run_id)
    }

    /// The objects of a files source: its location listed with its glob; and the location.
    pub(super) async fn list_files(
        &self,
        p: &Pipeline,
    ) -> anyhow::Result<(Vec<ObjectRef>, String)> {
        let source_url = self.source_url(p);
        let source = self.backends.store(&source_url)?;
        let glob = globset::Glob::new(&p.file.source.glob)?.compile_matcher();
        let objects: Vec<ObjectRef> = source
            .list("")
            .await?
            .into_iter()
            .filter(|o| glob.is_match(&o.key))
            .collect();
        if objects.is_empty() {
            bail!(
                "no source objects: nothing under {source_url} matches glob {:?}",
                p.file.source.glob
            );
        }
        Ok((objects, source_url))
    }

    /// Plans a run of a files source from a listing of its location (of one backfill window's
    /// objects, with `window`).
    async fn plan_files_run(
        &self,
        p: &Pipeline,
        window: Option<crate::backfill::Window>,
    ) -> anyhow::Result<(ShardPlan, RunRecord)> {
        let (mut objects, source_url) = self.list_files(p).await?;
        if let Some(w) = window {
            let keep = crate::local_source::window_filter(p, Some(w))?;
            objects.retain(|o| keep(o));
        }
        let mut taken = None;
        if p.file.source.incremental && window.is_none() {
            let versions = self.backends.store(&source_url)?.list_versions("").await?;
            let (fresh, t) =
                crate::incremental::new_objects(&*self.state, p.name(), &objects, &versions)
                    .await?;
            objects = fresh;
            taken = Some(t);
        }
        let shard_bytes = self
            .settings
            .coordinator
            .shard_bytes
            .unwrap_or(p.file.source.shard_bytes.get());
        let plan = plan_run(p, &objects, shard_bytes);
        if let Some(t) = &taken {
            crate::incremental::record_taken(&*self.state, &plan.run_id, t).await?;
        }
        let table = p.table().to_string();
        let record = RunRecord::started(
            &plan,
            &table,
            source_url,
            self.backends.lake_url.clone(),
            table.clone(),
            objects.iter().map(|o| o.size).sum(),
        );
        Ok((plan, record))
    }

    /// Takes a recorded run into the loop: replays its state (shards done, failed and sent,
    /// batches recorded and loaded); the loop then sends what was never sent, and recorded
    /// batches not marked loaded load on its first advance (the ledger skips those that
    /// committed).
    async fn activate(&mut self, record: RunRecord, plan: ShardPlan) -> anyhow::Result<()> {
        let run_id = record.run_id.clone();
        let sched = self.pipelines.get(&record.pipeline).with_context(|| {
            format!(
                "run {run_id} is of pipeline {}, which is not configured",
                record.pipeline
            )
        })?;
        let p = &sched.pipeline;
        let shards: BTreeMap<String, ShardDescriptor> = plan
            .shards
            .into_iter()
            .map(|s| (s.shard_id.clone(), s))
            .collect();
        let mut loader = Loader::new(
            self.state.clone(),
            self.backends.files.clone(),
            &run_id,
            p,
            self.warehouse.clone(),
            self.backends.store(&record.output)?,
        )
        .with_external(p, &record.output_prefix);
        let mut machine = loader
            .replay(shards.keys().cloned(), self.settings.coordinator.batch_rows)
            .await?
            .with_max_in_flight(record.max_in_flight);
        // `runs/RUN/enqueued` counts the shards sent, the first ones in plan order (an older
        // coordinator wrote a time there once it had sent them all).
        let sent = match self.state.get(&enqueued_key(&run_id)).await? {
            None => 0,
            Some(v) => String::from_utf8_lossy(&v)
                .trim()
                .parse()
                .unwrap_or(shards.len()),
        };
        machine.apply(Event::Enqueued {
            shards: shards.keys().take(sent).cloned().collect(),
        });
        self.runs.insert(
            run_id,
            ActiveRun::new(record, shards, machine, loader, self.load_ended.clone()),
        );
        Ok(())
    }

    /// Resumes the backfills recorded as running, and the run of each one's current window.
    async fn resume_backfills(&mut self) -> anyhow::Result<()> {
        for key in self.state.list("backfills/").await? {
            let Some(bytes) = self.state.get(&key).await? else {
                continue;
            };
            let record: crate::backfill::BackfillRecord = serde_json::from_slice(&bytes)
                .with_context(|| format!("state {key} is corrupt"))?;
            if record.status.as_deref() != Some("running") {
                continue;
            }
            let Some(sched) = self.pipelines.get(&record.pipeline) else {
                tracing::warn!(backfill = %record.backfill_id, pipeline = %record.pipeline, "backfill of a pipeline that is not configured; left");
                continue;
            };
            let p = sched.pipeline.clone();
            let ws: Vec<crate::backfill::Window> = record
                .windows
                .iter()
                .map(|(f, t)| {
                    Ok(crate::backfill::Window {
                        from: crate::backfill::parse_bound(f, false)?,
                        to: crate::backfill::parse_bound(t, false)?,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let plans = match p.file.source.kind {
                pipeline::SourceKind::Files => {
                    let (objects, _) = self.list_files(&p).await?;
                    crate::backfill::plan_file_windows(&p, &objects, &ws)?
                }
                pipeline::SourceKind::Http => crate::backfill::plan_api(&p, &ws)?,
                pipeline::SourceKind::Postgres | pipeline::SourceKind::Mysql => {
                    crate::backfill::plan_database(&p, &ws).await?
                }
            };
            if let Some(run_id) = &record.current_run
                && let Some(rec) = self.state.get(&format!("runs/{run_id}/run.json")).await?
            {
                let rec: RunRecord = serde_json::from_slice(&rec)?;
                if rec.status == RunStatus::Running {
                    let plan = crate::run::read_plan(&*self.state, run_id).await?;
                    tracing::info!(run = %run_id, backfill = %record.backfill_id, "resuming a backfill's run");
                    self.activate(rec, plan).await?;
                }
            }
            self.backfills
                .insert(record.backfill_id.clone(), (record, plans));
        }
        Ok(())
    }

    /// Resumes every unfinished run recorded in state.
    async fn resume_all(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.pipelines.keys().cloned().collect();
        for name in names {
            let Some(id) = self.state.get(&format!("pipelines/{name}/current")).await? else {
                continue;
            };
            let id = String::from_utf8_lossy(&id).to_string();
            let rec: RunRecord = serde_json::from_slice(
                &self
                    .state
                    .get(&format!("runs/{id}/run.json"))
                    .await?
                    .with_context(|| format!("run {id} has no run.json"))?,
            )?;
            let plan = crate::run::read_plan(&*self.state, &id).await?;
            tracing::info!(run = %id, "resuming run");
            self.activate(rec, plan).await?;
        }
        Ok(())
    }

    /// Sends every active run's next tasks (within its in-flight limit), then records how
    /// many of its shards have been sent.
    async fn enqueue_runs(&mut self) -> anyhow::Result<()> {
        let max_string_bytes = self.warehouse.as_ref().and_then(|w| w.max_string_bytes());
        for (run_id, run) in self.runs.iter_mut() {
            let sending = run.machine.to_enqueue();
            if sending.is_empty() {
                continue;
            }
            let p = &self.pipelines[&run.record.pipeline].pipeline;
            // A thousand tasks at a time: a message carries the pipeline file, so a large run's
            // all at once would sit in memory together.
            for chunk in sending.chunks(1000) {
                let mut bodies = task_bodies(chunk, &run.shards, |s| {
                    task_message(p, &run.record, s, &self.backends, max_string_bytes)
                });
                if fault() == Some(Fault::DuplicateTasks) {
                    let copy = bodies.clone();
                    bodies.extend(copy);
                }
                self.backends.tasks.send_batch(bodies).await?;
                run.machine.apply(Event::Enqueued {
                    shards: chunk.to_vec(),
                });
                self.state
                    .put(
                        &enqueued_key(run_id),
                        run.machine.enqueued_count().to_string().as_bytes(),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads completions from the results queue and records them durably, then deletes them.
    ///
    /// With no load in flight it long-polls (up to a second). With one, it polls without waiting
    /// and, when nothing came, waits for a load to end or [`LOAD_RESULTS_POLL`]: a load that ends
    /// moves its run on at once, and a receive is never cut short (a dropped SQS receive hides
    /// what it took until the visibility timeout).
    async fn consume_results(&mut self) -> anyhow::Result<usize> {
        let loading = self.runs.values().any(ActiveRun::load_in_flight);
        let wait = if loading {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        let got = self.backends.results.receive(10, wait).await?;
        if got.is_empty() && loading {
            tokio::select! {
                _ = self.load_ended.notified() => {}
                _ = tokio::time::sleep(LOAD_RESULTS_POLL) => {}
            }
        }
        let n = got.len();
        let mut handled = Vec::new();
        for m in got {
            let r = match Message::from_body(&m.body) {
                Ok(Message::Result(r)) => r,
                Ok(_) => {
                    METRICS.dead_lettered.with_label_values(&["results"]).inc();
                    self.backends
                        .results
                        .dead_letter(
                            &m.receipt,
                            &format!("message {}: not a result message", m.message_id),
                        )
                        .await?;
                    continue;
                }
                Err(e) => {
                    METRICS.dead_lettered.with_label_values(&["results"]).inc();
                    tracing::error!(message_id = %m.message_id, error = %e, "dead-lettering an undecodable result");
                    self.backends
                        .results
                        .dead_letter(&m.receipt, &format!("message {}: {e}", m.message_id))
                        .await?;
                    continue;
                }
            };
            self.record_result(r).await?;
            handled.push(m.receipt);
        }
        // Deleted only once recorded: a crash before this line redelivers them (harmless).
        self.backends.results.delete_batch(&handled).await?;
        Ok(n)
    }

    async fn record_result(&mut self, r: ResultMessage) -> anyhow::Result<()> {
        let Some(run) = self.runs.get_mut(&r.run_id) else {
            tracing::warn!(run = %r.run_id, shard = %r.shard_id, "result for a run that is not active; ignored");
            return Ok(());
        };
        if !run.shards.contains_key(&r.shard_id) || run.machine.done().contains_key(&r.shard_id) {
            return Ok(()); // unknown shard, or a duplicate completion
        }
        let outcome =
            verify_manifest(&*self.backends.files, &self.backends.files_url, r.outcome).await?;
        match outcome {
            TaskOutcome::Succeeded {
                manifest_key,
                counts,
            } => {
                let d = DoneRecord {
                    manifest_key,
                    counts,
                };
                self.state
                    .put(
                        &format!("runs/{}/done/{}", r.run_id, r.shard_id),
                        &serde_json::to_vec(&d)?,
                    )
                    .await?;
                let shard = r.shard_id.clone();
                if run.machine.apply(Event::ShardDone { shard, done: d }) == Applied::Ignored {
                    return Ok(());
                }
                METRICS
                    .shards
                    .with_label_values(&[&run.record.pipeline, "succeeded"])
                    .inc();
                run.oldest_unbatched.get_or_insert_with(Instant::now);
                let done = run.machine.done().len();
                tracing::info!(run = %r.run_id, shard = %r.shard_id, done, of = run.shards.len(), "shard done");
                if let Some(Fault::CrashAfterShards(n)) = fault()
                    && done == n
                {
                    std::process::abort();
                }
            }
            TaskOutcome::Failed { error } => {
                self.state
                    .put(
                        &format!("runs/{}/failed/{}", r.run_id, r.shard_id),
                        error.as_bytes(),
                    )
                    .await?;
                tracing::error!(run = %r.run_id, shard = %r.shard_id, %error, "shard failed");
                METRICS
                    .shards
                    .with_label_values(&[&run.record.pipeline, "failed"])
                    .inc();
                run.machine.apply(Event::ShardFailed {
                    shard: r.shard_id,
                    reason: error,
                });
            }
        }
        Ok(())
    }

    /// Tasks the queue gave up on (redelivered too often) fail their shard, with the reason.
    async fn check_dead_letters(&mut self) -> anyhow::Result<()> {
        if self.last_dead_letter_check.elapsed() < Duration::from_secs(10) || self.runs.is_empty() {
            return Ok(());
        }
        self.last_dead_letter_check = Instant::now();
        for dl in self.backends.tasks.dead_letters().await? {
            let Ok(Message::Task(t)) = Message::from_body(&dl.body) else {
                continue;
            };
            if let Some(run) = self.runs.get_mut(&t.run_id)
                && run
                    .machine
                    .unfinished()
                    .contains(&t.shard.shard_id.as_str())
            {
                let why = format!("dead-lettered: {}", dl.reason);
                self.state
                    .put(
                        &format!("runs/{}/failed/{}", t.run_id, t.shard.shard_id),
                        why.as_bytes(),
                    )
                    .await?;
                run.machine.apply(Event::ShardFailed {
                    shard: t.shard.shard_id.clone(),
                    reason: why,
                });
            }
        }
        Ok(())
    }

    /// Advances every run's machine (batches closed by size or time window, loads, verdicts) —
    /// the runs side by side, so that loads of different runs overlap (each run's own batches
    /// still load in order) — retrying failed loads with backoff, and finishes the runs it ends.
    async fn advance_runs(&mut self) -> anyhow::Result<()> {
        let window = Duration::from_secs(self.settings.coordinator.batch_window_secs);
        let attempts = self.settings.coordinator.load_attempts;
        let now = Instant::now();
        let advanced = futures_util::future::join_all(
            self.runs
                .iter_mut()
                .filter(|(_, run)| now >= run.next_load_try)
                .map(|(id, run)| async move { (id.clone(), run.advance(window, attempts).await) }),
        )
        .await;
        let mut finished = Vec::new();
        for (id, status) in advanced {
            let Some(status) = status else {
                continue;
            };
            let run = self.runs.get_mut(&id).expect("an advanced run is active");
            run.record.observe(&run.machine);
            if let Some(status) = status {
                run.record.finish(status, run.loader.quality.clone());
                let lake = self.backends.store(&run.record.output)?;
                crate::commit::commit_run(
                    &run.record,
                    run.machine.done(),
                    &*self.backends.files,
                    &*lake,
                    &*lake,
                )
                .await
                .with_context(|| format!("committing run {id} to the lake"))?;
                run.loader
                    .settle_watermark(&mut run.record, run.machine.done())
                    .await?;
                crate::sources::advance_watermark(&*self.state, &run.record).await?;
                crate::incremental::settle(&*self.state, &run.record).await?;
                finished.push(id.clone());
            }
            self.state
                .put(
                    &format!("runs/{id}/run.json"),
                    &serde_json::to_vec_pretty(&run.record)?,
                )
                .await?;
            if let Some(status) = status {
                run.machine.apply(Event::Finished(status));
            }
        }
        for id in finished {
            let run = self.runs.remove(&id).expect("finished run");
            // A backfill's run never took its pipeline's current run.
            if run.record.backfill_window.is_none() {
                self.state
                    .delete(&format!("pipelines/{}/current", run.record.pipeline))
                    .await?;
            }
            tracing::info!(run = %id, status = %run.record.status, rows_out = run.record.counts.rows_out, batches = run.record.batches_loaded, "run finished");
            METRICS
                .runs
                .with_label_values(&[&run.record.pipeline, run.record.status.as_str()])
                .inc();
            self.shared
                .lock()
                .expect("shared")
                .runs
                .insert(id, run.record);
        }
        Ok(())
    }

    /// Moves raw objects past their pipeline's retention to `archive/`, once an hour.
    async fn archive_hourly(&mut self) {
        if self.last_archive.elapsed() < Duration::from_secs(3600) {
            return;
        }
        self.last_archive = Instant::now();
        for (name, s) in &self.pipelines {
            let r = crate::archive::archive_raw(
                &*self.state,
                &*self.backends.files,
                &s.pipeline,
                chrono::Utc::now(),
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(pipeline = %name, error = %format!("{e:#}"), "archiving raw objects failed; tried again in an hour");
            }
        }
    }

    /// Starts the runs whose cron time has come (once per fire time, across restarts).
    async fn fire_schedules(&mut self) -> anyhow::Result<()> {
        let now_t = chrono::Utc::now();
        let mut due = Vec::new();
        for (name, s) in &self.pipelines {
            let Some(cron) = &s.cron else { continue };
            let key = format!("pipelines/{name}/last_fire");
            let last = match self.state.get(&key).await? {
                Some(v) => chrono::DateTime::parse_from_rfc3339(&String::from_utf8_lossy(&v))
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .unwrap_or(now_t),
                None => {
                    // First start: schedule from now, do not fire for the past.
                    self.state.put(&key, now_t.to_rfc3339().as_bytes()).await?;
                    continue;
                }
            };
            if let Ok(next) = cron.find_next_occurrence(&last, false)
                && next <= now_t
            {
                due.push((name.clone(), next));
            }
        }
        for (name, at) in due {
            self.state
                .put(
                    &format!("pipelines/{name}/last_fire"),
                    at.to_rfc3339().as_bytes(),
                )
                .await?;
            match self.start_run(&name).await {
                Ok(id) => tracing::info!(pipeline = %name, run = %id, "scheduled run started"),
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %format!("{e:#}"), "scheduled run not started")
                }
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let now_t = chrono::Utc::now();
        let age = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| (now_t - d.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0)
                .ok()
        };
        METRICS.active_runs.set(self.runs.len() as i64);
        METRICS.oldest_task_age.set(
            self.runs
                .values()
                .filter(|r| !r.machine.is_complete())
                .filter_map(|r| age(&r.record.started_at))
                .fold(0.0, f64::max),
        );
        let mut sh = self.shared.lock().expect("shared");
        for name in self.pipelines.keys() {
            if let Some(lag) = sh
                .runs
                .values()
                .filter(|r| &r.pipeline == name && r.status == RunStatus::Completed)
                .filter_map(|r| age(&r.started_at))
                .reduce(f64::min)
            {
                METRICS.freshness_lag.with_label_values(&[name]).set(lag);
            }
        }
        for (id, run) in &self.runs {
            let mut r = run.record.clone();
            r.shards_done = run.machine.done().len();
            sh.runs.insert(id.clone(), r);
        }
        sh.pipelines = self
            .pipelines
            .iter()
            .map(|(name, s)| PipelineView {
                name: name.clone(),
                table: s.pipeline.table().to_string(),
                cron: s.cron_text.clone(),
                next_run: s
                    .cron
                    .as_ref()
                    .and_then(|c| c.find_next_occurrence(&chrono::Utc::now(), false).ok())
                    .map(|t| t.to_rfc3339()),
                current_run: self
                    .runs
                    .values()
                    .find(|r| &r.record.pipeline == name)
                    .map(|r| r.record.run_id.clone()),
            })
            .collect();
        sh.backfills = self.backfills.values().map(|(r, _)| r.clone()).collect();
        sh.ready = true;
    }

    /// One turn of the loop: the API's requests, schedules, tasks to send, queue depths,
    /// completions, loads, backfills and archiving.
    async fn step(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<requests::Pending>,
    ) -> anyhow::Result<()> {
        while let Ok((req, reply)) = rx.try_recv() {
            self.answer(req, reply).await;
        }
        self.fire_schedules().await?;
        self.enqueue_runs().await?;
        if self.last_depth_poll.elapsed() >= Duration::from_secs(10) {
            self.last_depth_poll = Instant::now();
            self.poll_queues().await?;
        }
        if !self.runs.is_empty() {
            // Drain what is waiting, then move runs forward.
            for _ in 0..20 {
                if self.consume_results().await? < 10 {
                    break;
                }
            }
            self.check_dead_letters().await?;
        }
        self.advance_runs().await?;
        self.advance_backfills().await?;
        self.archive_hourly().await;
        Ok(())
    }

    /// The queues' depths (metrics and the status page) and the task queue's dead letters.
    async fn poll_queues(&mut self) -> anyhow::Result<()> {
        let tasks = self.backends.tasks.depth().await?;
        let results = self.backends.results.depth().await?;
        METRICS.depth("tasks", &tasks);
        METRICS.depth("results", &results);
        let mut dead = self.backends.tasks.dead_letters().await?;
        dead.truncate(50);
        let mut sh = self.shared.lock().expect("shared");
        sh.queues.insert("tasks".into(), tasks);
        sh.queues.insert("results".into(), results);
        sh.dead_letters = dead;
        Ok(())
    }

    /// Runs until `shutdown` resolves.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Runs already finished, for the API.
        for key in self.state.list("runs/").await? {
            if key.ends_with("/run.json")
                && let Ok(Some(b)) = self.state.get(&key).await
                && let Ok(r) = serde_json::from_slice::<RunRecord>(&b)
            {
                self.shared
                    .lock()
                    .expect("shared")
                    .runs
                    .insert(r.run_id.clone(), r);
            }
        }
        self.resume_all().await?;
        self.resume_backfills().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<requests::Pending>(16);
        let addr = api::serve(&self.settings.coordinator.listen, self.shared.clone(), tx).await?;
        tracing::info!(%addr, pipelines = self.pipelines.len(), resumed = self.runs.len(), "coordinator serving");
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(500);
        loop {
            self.publish();
            let r = tokio::select! {
                _ = &mut shutdown => break,
                r = self.step(&mut rx) => r,
            };
            match r {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "coordinator step failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
            if self.runs.is_empty() {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {},
                    Some((req, reply)) = rx.recv() => self.answer(req, reply).await,
                }
            }
        }
        for run in self.runs.values_mut() {
            run.settle_load(LOAD_GRACE).await;
        }
        tracing::info!("coordinator stopped; unfinished runs resume on the next start");
        Ok(())
    }
}

mod active;
mod api;
mod page;
mod requests;
mod view;

fn enqueued_key(run_id: &str) -> String {
    format!("runs/{run_id}/enqueued")
}

/// The task of shard `s` of a run of `p`.
fn task_message(
    p: &Pipeline,
    record: &RunRecord,
    s: &ShardDescriptor,
    backends: &FleetBackends,
    max_string_bytes: Option<u64>,
) -> TaskMessage {
    TaskMessage {
        // Database and API shards read the raw zone they extract into, in the files store.
        source_url: Some(if p.file.source.kind.extracts() {
            backends.files_url.clone()
        } else {
            record.source.clone()
        }),
        output_url: Some(record.output.clone()),
        files_url: Some(backends.files_url.clone()),
        ..crate::run::shard_task(
            p,
            &record.run_id,
            s,
            &record.output_prefix,
            max_string_bytes,
        )
    }
}

/// A success is trusted only once its manifest can be read where this coordinator looks for it
/// (`storage.files`): a worker that wrote elsewhere, or a manifest that is gone or corrupt, fails
/// the shard with the reason instead of failing its load batch over and over. A retryable read
/// error (throttling, an unreachable endpoint) is returned, so the completion is read again.
async fn verify_manifest(
    files: &dyn backends::object_store::ObjectStore,
    files_url: &str,
    outcome: TaskOutcome,
) -> anyhow::Result<TaskOutcome> {
    let TaskOutcome::Succeeded { manifest_key, .. } = &outcome else {
        return Ok(outcome);
    };
    let why = match files.get(manifest_key).await {
        Ok(bytes) => match protocol::ShardManifest::from_json(&String::from_utf8_lossy(&bytes)) {
            Ok(_) => return Ok(outcome),
            Err(e) => format!("is not a valid manifest: {e}"),
        },
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => format!("cannot be read: {e}"),
    };
    Ok(TaskOutcome::Failed {
        error: format!(
            "the worker reported success, but manifest {manifest_key} in storage.files ({files_url}) {why}"
        ),
    })
}

/// Loads the settings (file and environment) for `coordinator serve`.
pub fn load_settings(config: Option<&Path>) -> anyhow::Result<(FleetSettings, PathBuf)> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Ok(FleetSettings::load(config, &env)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::object_store::{LocalStore, ObjectStore};
    use protocol::Counts;

    fn success(key: &str) -> TaskOutcome {
        TaskOutcome::Succeeded {
            manifest_key: key.into(),
            counts: Counts::default(),
        }
    }

    /// Issue 8: a coordinator whose storage.files differed from the workers' retried the load of
    /// manifests it could not read forever; now the shard fails with the reason.
    #[tokio::test]
    async fn a_reported_manifest_that_cannot_be_read_fails_its_shard_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalStore::new(dir.path()).unwrap();
        let url = "s3://coordinator-bucket/tributary";
        let gone = verify_manifest(&files, url, success("manifests/r/s00001.json"))
            .await
            .unwrap();
        let TaskOutcome::Failed { error } = gone else {
            panic!("a missing manifest must fail the shard: {gone:?}")
        };
        assert!(
            error.contains("manifests/r/s00001.json")
                && error.contains(url)
                && error.contains("cannot be read"),
            "{error}"
        );
        files
            .put("manifests/r/bad.json", b"{not a manifest".to_vec())
            .await
            .unwrap();
        let bad = verify_manifest(&files, url, success("manifests/r/bad.json"))
            .await
            .unwrap();
        assert!(
            matches!(&bad, TaskOutcome::Failed { error } if error.contains("is not a valid manifest")),
            "{bad:?}"
        );
        let m = protocol::ShardManifest {
            v: protocol::PROTOCOL_VERSION,
            run_id: "r".into(),
            pipeline: "p".into(),
            table: "t".into(),
            shard: ShardDescriptor {
                shard_id: "s00002".into(),
                index: 2,
                extract: None,
                inputs: vec![],
            },
            outputs: vec![],
            quarantine: vec![],
            counts: Counts::default(),
            schema_digest: String::new(),
            source_watermark: None,
        };
        files
            .put("manifests/r/s00002.json", m.to_json().into_bytes())
            .await
            .unwrap();
        let ok = success("manifests/r/s00002.json");
        assert_eq!(verify_manifest(&files, url, ok.clone()).await.unwrap(), ok);
        let failed = TaskOutcome::Failed { error: "x".into() };
        assert_eq!(
            verify_manifest(&files, url, failed.clone()).await.unwrap(),
            failed
        );
    }
}
