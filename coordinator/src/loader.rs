//! Performs a run's load actions with the backends: records a batch in state before it is
//! loaded, loads it exactly once (the warehouse's ledger skips a batch that committed before a
//! crash), marks it loaded, and judges the run's quality. What to do and when is decided by the
//! [`RunMachine`]; [`Loader::advance`] runs its actions until it waits for shards or asks to
//! finish, for both modes.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use backends::object_store::ObjectStore;
use backends::state::StateStore;
use backends::warehouse::{LoadOutcome, Warehouse};
use pipeline::Pipeline;
use protocol::{Counts, LoadBatch, LoadFile, ShardDescriptor, ShardManifest};

use crate::engine::{Action, DoneRecord, Event, RunMachine, RunStatus};
use crate::run::{Fault, fault, now};

/// The table layout a pipeline's `[load]` asks of the warehouse.
fn table_layout(l: &pipeline::LoadSection) -> protocol::TableLayout {
    protocol::TableLayout {
        sort_keys: l.sort_keys.clone(),
        dist_key: l.dist_key.clone(),
        dist_style: l
            .dist_style
            .map(|s| s.as_str().to_string())
            .or_else(|| l.dist_key.as_ref().map(|_| "key".to_string())),
        analyze_share_bp: l
            .analyze
            .then(|| (l.analyze_share * 10_000.0).round() as u32),
    }
}

/// The state key of a run's batch `seq`.
fn batch_key(run_id: &str, seq: usize) -> String {
    format!("runs/{run_id}/batches/b{seq:04}.json")
}

/// The batch number of a batch's state key (`…/batches/b0003.json` → 3).
fn batch_seq(key: &str) -> Option<usize> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix('b')?.strip_suffix(".json")?.parse().ok()
}

/// Where [`Loader::advance_to_load`] stopped.
pub(crate) enum Advanced {
    /// Waiting for shards.
    Waiting,
    /// The run is to finish with this status.
    Finish(RunStatus),
    /// Batch `seq` is to be loaded by `job`.
    Load { seq: usize, job: Box<LoadJob> },
    /// The run is to be judged by `job`; its report goes to [`Loader::judged`].
    Judge { job: Box<crate::quality::JudgeJob> },
}

/// The load of one recorded batch, owning what it needs (so it can run on a task of its own):
/// the warehouse load, exactly once by the warehouse's ledger, then the batch marked loaded in
/// state.
pub(crate) struct LoadJob {
    batch: LoadBatch,
    warehouse: Option<Arc<dyn Warehouse>>,
    output: Arc<dyn ObjectStore>,
    state: Arc<dyn StateStore>,
}

impl LoadJob {
    /// The batch's id.
    pub(crate) fn batch_id(&self) -> &str {
        &self.batch.batch_id
    }

    /// Loads the batch and marks it loaded.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let b = &self.batch;
        if let Some(w) = &self.warehouse {
            let started = std::time::Instant::now();
            let result = w.load(b, self.output.clone()).await;
            crate::metrics::METRICS.load(
                &b.table,
                match &result {
                    Ok(LoadOutcome::Loaded { .. }) => "loaded",
                    Ok(LoadOutcome::AlreadyLoaded) => "already_loaded",
                    Err(_) => "failed",
                },
                started.elapsed(),
            );
            let outcome = result.with_context(|| format!("loading batch {}", b.batch_id))?;
            tracing::info!(run = %b.run_id, table = %b.table, batch = %b.batch_id, ?outcome, "load batch");
            // Test hook: die between the warehouse commit and recording it.
            if matches!(outcome, LoadOutcome::Loaded { .. })
                && fault() == Some(Fault::CrashAfterLoadCommit)
            {
                std::process::abort();
            }
        }
        let mark = format!("runs/{}/loaded/{}", b.run_id, b.batch_id);
        self.state.put(&mark, now().as_bytes()).await?;
        Ok(())
    }
}

/// Loads one run's batches.
pub(crate) struct Loader {
    state: Arc<dyn StateStore>,
    files: Arc<dyn ObjectStore>,
    run_id: String,
    table: String,
    pipeline: String,
    merge_keys: Vec<String>,
    masked_columns: Vec<String>,
    layout: protocol::TableLayout,
    /// The Spectrum table kept over the table's lake prefix (`[load] external_schema`).
    external: Option<protocol::ExternalTable>,
    warehouse: Option<Arc<dyn Warehouse>>,
    output: Arc<dyn ObjectStore>,
    /// The recorded batches, by number.
    batches: BTreeMap<usize, LoadBatch>,
    expectations: Vec<pipeline::expect::Expectation>,
    /// The run's verdict, once judged.
    pub(crate) quality: Option<crate::quality::QualityReport>,
    /// Whether the shards' manifests carry the source's watermark (API sources with a
    /// `watermark_field`).
    watermark_from_shards: bool,
}

impl Loader {
    pub(crate) fn new(
        state: Arc<dyn StateStore>,
        files: Arc<dyn ObjectStore>,
        run_id: &str,
        p: &Pipeline,
        warehouse: Option<Arc<dyn Warehouse>>,
        output: Arc<dyn ObjectStore>,
    ) -> Loader {
        Loader {
            state,
            files,
            run_id: run_id.into(),
            table: p.table().to_string(),
            pipeline: p.name().to_string(),
            merge_keys: p.file.load.merge_keys.clone(),
            masked_columns: p.masked_columns(),
            layout: table_layout(&p.file.load),
            external: None,
            warehouse,
            output,
            batches: BTreeMap::new(),
            expectations: p.expectations.clone(),
            quality: None,
            watermark_from_shards: p
                .file
                .source
                .http
                .as_ref()
                .is_some_and(|h| h.watermark_field.is_some()),
        }
    }

    /// Keeps a Spectrum table over the lake prefix the run writes (`[load] external_schema`).
    pub(crate) fn with_external(mut self, p: &Pipeline, lake_prefix: &str) -> Loader {
        self.external =
            p.file
                .load
                .external_schema
                .as_ref()
                .map(|schema| protocol::ExternalTable {
                    schema: schema.clone(),
                    lake_prefix: lake_prefix.to_string(),
                });
        self
    }

    /// Folds the watermarks the done shards read into the record of a completed run that is not
    /// a backfill's: the latest of them and of the watermark planned (never earlier).
    pub(crate) async fn settle_watermark(
        &self,
        record: &mut crate::run::RunRecord,
        done: &BTreeMap<String, DoneRecord>,
    ) -> anyhow::Result<()> {
        if !self.watermark_from_shards
            || record.status != RunStatus::Completed
            || record.backfill_window.is_some()
        {
            return Ok(());
        }
        for (shard_id, d) in done {
            let read = self.manifest(shard_id, d).await?.source_watermark;
            record.watermark =
                pipeline::http::later_watermark(record.watermark.as_deref(), read.as_deref());
        }
        Ok(())
    }

    /// The machine of a run of `shards`, with what state holds of it replayed: finished shards,
    /// recorded batches and the ones marked loaded.
    pub(crate) async fn replay(
        &mut self,
        shards: impl IntoIterator<Item = String>,
        batch_rows: u64,
    ) -> anyhow::Result<RunMachine> {
        let gated = crate::quality::gated(&self.expectations);
        let mut m = RunMachine::new(shards, batch_rows, gated);
        let run_id = self.run_id.clone();
        for key in self.state.list(&format!("runs/{run_id}/done/")).await? {
            let bytes = self.state.get(&key).await?.unwrap_or_default();
            let done: DoneRecord = serde_json::from_slice(&bytes)
                .with_context(|| format!("state {key} is corrupt"))?;
            let shard = key.rsplit('/').next().unwrap_or_default().to_string();
            m.apply(Event::ShardDone { shard, done });
        }
        for key in self.state.list(&format!("runs/{run_id}/failed/")).await? {
            let why = self.state.get(&key).await?.unwrap_or_default();
            m.apply(Event::ShardFailed {
                shard: key.rsplit('/').next().unwrap_or_default().to_string(),
                reason: String::from_utf8_lossy(&why).into_owned(),
            });
        }
        let mut keys = self.state.list(&format!("runs/{run_id}/batches/")).await?;
        keys.sort_by_key(|k| batch_seq(k));
        for key in keys {
            let seq = batch_seq(&key).with_context(|| format!("state {key}: not a batch"))?;
            let b: LoadBatch =
                serde_json::from_slice(&self.state.get(&key).await?.unwrap_or_default())
                    .with_context(|| format!("state {key} is corrupt"))?;
            m.apply(Event::BatchRecorded {
                seq,
                shards: b.shards.clone(),
            });
            let mark = format!("runs/{run_id}/loaded/{}", b.batch_id);
            if self.state.get(&mark).await?.is_some() {
                m.apply(Event::BatchLoaded { seq });
            }
            self.batches.insert(seq, b);
        }
        Ok(m)
    }

    /// Performs the machine's actions until it waits for shards (`None`) or asks for the run to
    /// finish with a status (`Some`), which the driver commits before it reports
    /// [`Event::Finished`]. `flush`: the batch window has passed. Loads are awaited here.
    pub(crate) async fn advance(
        &mut self,
        m: &mut RunMachine,
        shards: &BTreeMap<String, ShardDescriptor>,
        flush: bool,
    ) -> anyhow::Result<Option<RunStatus>> {
        loop {
            match self.advance_to_load(m, shards, flush).await? {
                Advanced::Waiting => return Ok(None),
                Advanced::Finish(status) => return Ok(Some(status)),
                Advanced::Load { seq, job } => {
                    job.run().await?;
                    m.apply(Event::BatchLoaded { seq });
                }
                Advanced::Judge { job } => {
                    let passed = self.judged(job.run().await?);
                    m.apply(Event::Judged { passed });
                }
            }
        }
    }

    /// Performs the machine's actions until it waits for shards, asks for the run to finish, or
    /// asks for a load or a quality check that reads the run's files, which is handed back as a [`LoadJob`] or a
    /// [`JudgeJob`](crate::quality::JudgeJob) for the driver to run where it likes (the fleet
    /// runs it on a task of its own, so its loop goes on meanwhile); the driver applies
    /// [`Event::BatchLoaded`], or [`Event::Judged`] with [`Loader::judged`]'s verdict, once the
    /// job succeeded, and advances no further until then.
    pub(crate) async fn advance_to_load(
        &mut self,
        m: &mut RunMachine,
        shards: &BTreeMap<String, ShardDescriptor>,
        flush: bool,
    ) -> anyhow::Result<Advanced> {
        while let Some(action) = m.next(flush) {
            let event = match action {
                Action::RecordBatch { seq, shards: ids } => {
                    self.record(seq, &ids, m.done(), shards).await?;
                    Event::BatchRecorded { seq, shards: ids }
                }
                Action::Load { seq } => {
                    let job = Box::new(self.load_job(seq)?);
                    return Ok(Advanced::Load { seq, job });
                }
                Action::Judge => {
                    let job = self.judge_job(m.done());
                    if job.reads_files() {
                        return Ok(Advanced::Judge { job: Box::new(job) });
                    }
                    Event::Judged {
                        passed: self.judged(job.verdict_of_counts()),
                    }
                }
                Action::Finish(status) => return Ok(Advanced::Finish(status)),
            };
            m.apply(event);
        }
        Ok(Advanced::Waiting)
    }

    /// Records batch `seq` of these done shards before it is loaded: a retry after a crash
    /// loads the same batch id.
    async fn record(
        &mut self,
        seq: usize,
        ids: &[String],
        done: &BTreeMap<String, DoneRecord>,
        shards: &BTreeMap<String, ShardDescriptor>,
    ) -> anyhow::Result<()> {
        let mut files = Vec::new();
        for shard_id in ids {
            let d = done.get(shard_id).context("batched shard is not done")?;
            let m = self.manifest(shard_id, d).await?;
            let desc = shards.get(shard_id).context("shard not in plan")?;
            files.extend(m.outputs.into_iter().map(|f| LoadFile {
                file: f,
                shard_index: desc.index,
                position: desc.source_position(),
            }));
        }
        let batch = LoadBatch {
            batch_id: format!("{}-{}-b{seq:04}", self.run_id, self.table),
            run_id: self.run_id.clone(),
            table: self.table.clone(),
            merge_keys: self.merge_keys.clone(),
            shards: ids.to_vec(),
            files,
            masked_columns: self.masked_columns.clone(),
            layout: self.layout.clone(),
            external: self.external.clone(),
        };
        self.state
            .put_if_absent(&batch_key(&self.run_id, seq), &serde_json::to_vec(&batch)?)
            .await?;
        self.batches.insert(seq, batch);
        Ok(())
    }

    /// The load of recorded batch `seq`.
    fn load_job(&self, seq: usize) -> anyhow::Result<LoadJob> {
        let batch = self
            .batches
            .get(&seq)
            .with_context(|| format!("batch {seq} of run {} is not recorded", self.run_id))?;
        Ok(LoadJob {
            batch: batch.clone(),
            warehouse: self.warehouse.clone(),
            output: self.output.clone(),
            state: self.state.clone(),
        })
    }

    /// The quality check of the finished run: its summed counts and its shards' manifests.
    fn judge_job(&self, done: &BTreeMap<String, DoneRecord>) -> crate::quality::JudgeJob {
        let mut counts = Counts::default();
        for d in done.values() {
            counts.add(&d.counts);
        }
        crate::quality::JudgeJob {
            expectations: self.expectations.clone(),
            counts,
            files: self.files.clone(),
            manifests: done
                .iter()
                .map(|(id, d)| (id.clone(), d.manifest_key.clone()))
                .collect(),
            output: self.output.clone(),
        }
    }

    /// Takes the run's verdict (from a [`JudgeJob`](crate::quality::JudgeJob)): kept for the
    /// run's record and metrics; whether it passed.
    pub(crate) fn judged(&mut self, report: crate::quality::QualityReport) -> bool {
        crate::metrics::METRICS.quality(&self.pipeline, &report);
        self.quality.insert(report).passed
    }

    /// A finished shard's manifest.
    async fn manifest(&self, shard_id: &str, d: &DoneRecord) -> anyhow::Result<ShardManifest> {
        read_manifest(&*self.files, shard_id, &d.manifest_key).await
    }
}

/// A finished shard's manifest, from the files store.
pub(crate) async fn read_manifest(
    files: &dyn ObjectStore,
    shard_id: &str,
    key: &str,
) -> anyhow::Result<ShardManifest> {
    let bytes = files
        .get(key)
        .await
        .with_context(|| format!("manifest of shard {shard_id}"))?;
    Ok(ShardManifest::from_json(&String::from_utf8_lossy(&bytes))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_read_back_as_their_numbers_in_load_order() {
        assert_eq!(batch_key("r1", 3), "runs/r1/batches/b0003.json");
        assert_eq!(batch_seq(&batch_key("r1", 3)), Some(3));
        assert_eq!(batch_seq(&batch_key("r1", 12_345)), Some(12_345));
        assert_eq!(batch_seq("runs/r1/batches/notes.txt"), None);
        let mut keys = [
            batch_key("r", 10_000),
            batch_key("r", 2),
            batch_key("r", 9_999),
        ];
        keys.sort_by_key(|k| batch_seq(k));
        assert_eq!(keys[0], batch_key("r", 2));
        assert_eq!(keys[2], batch_key("r", 10_000));
    }
}
