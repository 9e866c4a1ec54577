//! A run the fleet coordinator is driving, and its job in flight: a batch load, or the run's
//! quality check (which reads and hashes the run's output files for `unique` expectations), runs
//! on a tokio task of its own, so the coordinator's loop answers the API, takes results and
//! advances other runs while it runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use protocol::ShardDescriptor;

use crate::engine::{Event, RunMachine, RunStatus};
use crate::loader::{Advanced, Loader};
use crate::run::RunRecord;

/// A run in progress.
pub(super) struct ActiveRun {
    pub(super) record: RunRecord,
    pub(super) shards: BTreeMap<String, ShardDescriptor>,
    pub(super) machine: RunMachine,
    pub(super) loader: Loader,
    pub(super) oldest_unbatched: Option<Instant>,
    pub(super) next_load_try: Instant,
    /// The load or quality check in flight on a task of its own.
    loading: Option<InFlight>,
    /// Told when a task of this run ends, so the loop notices it at once instead of on its next
    /// turn (shared by all of the coordinator's runs).
    load_ended: Arc<Notify>,
}

/// A load or a quality check running on its own task while the coordinator's loop goes on.
struct InFlight {
    /// What it is, for the log: "the load of batch ID" or "the quality check".
    what: String,
    task: tokio::task::JoinHandle<anyhow::Result<Landed>>,
}

/// What a task in flight brought back, for the run's machine.
enum Landed {
    /// Batch `seq` is in the warehouse.
    Loaded { seq: usize },
    /// The run's verdict.
    Judged(crate::quality::QualityReport),
}

impl ActiveRun {
    /// A run being driven, with no load in flight; its load tasks tell `load_ended` when they end.
    pub(super) fn new(
        record: RunRecord,
        shards: BTreeMap<String, ShardDescriptor>,
        machine: RunMachine,
        loader: Loader,
        load_ended: Arc<Notify>,
    ) -> ActiveRun {
        ActiveRun {
            record,
            shards,
            machine,
            loader,
            oldest_unbatched: None,
            next_load_try: Instant::now(),
            loading: None,
            load_ended,
        }
    }

    /// Whether a load or the quality check of this run is running on its task.
    pub(super) fn load_in_flight(&self) -> bool {
        self.loading.is_some()
    }

    /// One advance of the run's machine: `Some(None)` when it waits (for shards, or for its
    /// load in flight), `Some(Some(s))` when it is to finish with status `s`, `None` when a
    /// load failed (retried with backoff).
    ///
    /// A load runs on a task of its own, so the loop answers the API, takes results and
    /// advances other runs meanwhile; the run moves on only once the task has ended, which
    /// this notices on a later call (a cancel asked meanwhile takes effect after the load).
    pub(super) async fn advance(
        &mut self,
        window: Duration,
        attempts: u32,
    ) -> Option<Option<RunStatus>> {
        if let Some(flight) = &self.loading {
            if !flight.task.is_finished() {
                return Some(None);
            }
            let flight = self.loading.take().expect("checked above");
            let ended = flight
                .task
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("{} stopped: {e}", flight.what)));
            match ended {
                Ok(Landed::Loaded { seq }) => self.machine.apply(Event::BatchLoaded { seq }),
                Ok(Landed::Judged(report)) => {
                    let passed = self.loader.judged(report);
                    self.machine.apply(Event::Judged { passed })
                }
                Err(e) => return self.load_failed(e, attempts),
            };
        }
        if self.machine.has_unbatched() {
            self.oldest_unbatched.get_or_insert_with(Instant::now);
        }
        let flush = self.oldest_unbatched.is_some_and(|t| t.elapsed() >= window);
        match self
            .loader
            .advance_to_load(&mut self.machine, &self.shards, flush)
            .await
        {
            Ok(advanced) => {
                if !self.machine.has_unbatched() {
                    self.oldest_unbatched = None;
                }
                self.record.last_error = None;
                Some(match advanced {
                    Advanced::Waiting => None,
                    Advanced::Finish(status) => Some(status),
                    Advanced::Load { seq, job } => {
                        let what = format!("the load of batch {}", job.batch_id());
                        self.fly(what, async move {
                            job.run().await.map(|()| Landed::Loaded { seq })
                        });
                        None
                    }
                    Advanced::Judge { job } => {
                        self.fly("the quality check".into(), async move {
                            job.run().await.map(Landed::Judged)
                        });
                        None
                    }
                })
            }
            Err(e) => self.load_failed(e, attempts),
        }
    }

    /// Runs `job` on a task of its own, which tells `load_ended` as it ends.
    fn fly(
        &mut self,
        what: String,
        job: impl std::future::Future<Output = anyhow::Result<Landed>> + Send + 'static,
    ) {
        let ended = self.load_ended.clone();
        let task = tokio::spawn(async move {
            let r = job.await;
            // A permit is kept if no one waits yet: the end is never missed.
            ended.notify_one();
            r
        });
        self.loading = Some(InFlight { what, task });
    }

    /// Notes a failed advance and when to try again (backoff).
    fn load_failed(&mut self, e: anyhow::Error, attempts: u32) -> Option<Option<RunStatus>> {
        self.record.load_failures += 1;
        let backoff = if self.record.load_failures >= attempts {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(1 << self.record.load_failures.min(6))
        };
        tracing::error!(run = %self.record.run_id, error = %format!("{e:#}"), failures = self.record.load_failures, retry_in_s = backoff.as_secs(), "load failed; will retry");
        self.record.last_error = Some(format!("{e:#}"));
        self.next_load_try = Instant::now() + backoff;
        None
    }

    /// Waits up to `grace` for the load in flight (at shutdown); a load still running then is
    /// stopped, and loaded again on the next start (the warehouse's ledger keeps it exactly once).
    pub(super) async fn settle_load(&mut self, grace: Duration) {
        let Some(flight) = self.loading.take() else {
            return;
        };
        let abort = flight.task.abort_handle();
        match tokio::time::timeout(grace, flight.task).await {
            Ok(Ok(Ok(_))) => {
                tracing::info!(run = %self.record.run_id, job = %flight.what, "job in flight finished before stopping")
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(run = %self.record.run_id, job = %flight.what, error = %format!("{e:#}"), "job in flight failed; done again on the next start")
            }
            Ok(Err(e)) => {
                tracing::warn!(run = %self.record.run_id, job = %flight.what, error = %e, "job in flight stopped; done again on the next start")
            }
            Err(_) => {
                abort.abort();
                tracing::warn!(run = %self.record.run_id, job = %flight.what, "job in flight stopped at shutdown; done again on the next start")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use backends::object_store::{LocalStore, ObjectStore};
    use backends::state::{FileStateStore, StateStore};
    use backends::warehouse::{LoadOutcome, QueryResult, Warehouse};
    use protocol::{Counts, LoadBatch, OutputFile, ShardManifest};

    use super::*;
    use crate::engine::DoneRecord;

    /// A warehouse whose loads wait until the test opens the gate.
    #[derive(Debug)]
    struct GatedWarehouse {
        gate: tokio::sync::Semaphore,
        loads: AtomicUsize,
    }

    impl GatedWarehouse {
        fn closed() -> Arc<GatedWarehouse> {
            Arc::new(GatedWarehouse {
                gate: tokio::sync::Semaphore::new(0),
                loads: AtomicUsize::new(0),
            })
        }
    }

    #[async_trait]
    impl Warehouse for GatedWarehouse {
        fn describe(&self) -> String {
            "gated".into()
        }
        async fn load(
            &self,
            _batch: &LoadBatch,
            _files: Arc<dyn ObjectStore>,
        ) -> backends::Result<LoadOutcome> {
            let _pass = self.gate.acquire().await.expect("gate open");
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(LoadOutcome::Loaded {
                rows_staged: 1,
                rows_in_table: 1,
            })
        }
        async fn is_loaded(&self, _batch_id: &str) -> backends::Result<bool> {
            Ok(false)
        }
        async fn query(&self, _sql: &str) -> backends::Result<QueryResult> {
            Err(backends::BackendError::Warehouse("not queried here".into()))
        }
    }

    /// A run `r` of one shard, done with one file, over `wh`.
    async fn one_shard_run(
        dir: &std::path::Path,
        wh: Arc<GatedWarehouse>,
    ) -> (ActiveRun, Arc<dyn StateStore>) {
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("files")).unwrap());
        one_shard_run_with(dir, wh, "", files).await
    }

    /// [`one_shard_run`] with `extra` appended to its pipeline file and its Parquet in `output`.
    async fn one_shard_run_with(
        dir: &std::path::Path,
        wh: Arc<GatedWarehouse>,
        extra: &str,
        output: Arc<dyn ObjectStore>,
    ) -> (ActiveRun, Arc<dyn StateStore>) {
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::new(dir.join("state")).unwrap());
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("files")).unwrap());
        let shard = ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            extract: None,
            inputs: vec![],
        };
        let counts = Counts {
            lines_total: 1,
            rows_out: 1,
            ..Counts::default()
        };
        let manifest = ShardManifest {
            v: protocol::PROTOCOL_VERSION,
            run_id: "r".into(),
            pipeline: "p".into(),
            table: "t".into(),
            shard: shard.clone(),
            outputs: vec![OutputFile {
                key: "lake/t/part-s00000-00000.parquet".into(),
                partition: vec![],
                rows: 1,
                bytes: 1,
                max_bytes: Default::default(),
            }],
            quarantine: vec![],
            counts: counts.clone(),
            schema_digest: String::new(),
            source_watermark: None,
        };
        let key = "manifests/r/s00000.json";
        files
            .put(key, manifest.to_json().into_bytes())
            .await
            .unwrap();
        let text = "[pipeline]\nname = \"p\"\n[source]\nlocation = \"raw\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"string\"\n[load]\ntable = \"t\"\nmerge_keys = [\"id\"]\n";
        let p = pipeline::parse(&format!("{text}{extra}"), "p.toml", dir.into()).unwrap();
        // Gated (judged before anything loads) only when the test adds expectations.
        let gated = !extra.is_empty();
        let loader = Loader::new(state.clone(), files.clone(), "r", &p, Some(wh), output);
        let mut machine = RunMachine::new(["s00000".to_string()], 1, gated);
        let done = DoneRecord {
            manifest_key: key.into(),
            counts,
        };
        machine.apply(Event::ShardDone {
            shard: "s00000".into(),
            done,
        });
        let record: RunRecord = serde_json::from_value(serde_json::json!({
            "run_id": "r", "pipeline": "p", "table": "t", "status": "running",
            "started_at": "2026-12-06T00:00:00Z", "finished_at": null, "source": "raw",
            "output": "lake", "output_prefix": "t", "shards": 1, "source_bytes": 1,
            "counts": Counts::default(), "batches_loaded": 0, "failed_shards": []
        }))
        .unwrap();
        let shards = BTreeMap::from([("s00000".to_string(), shard)]);
        let run = ActiveRun::new(record, shards, machine, loader, Default::default());
        (run, state)
    }

    /// Waits until the load `run` has in flight has ended, for at most five seconds.
    async fn until_landed(run: &ActiveRun) {
        for _ in 0..500 {
            if run.loading.as_ref().is_none_or(|f| f.task.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the load never ended");
    }

    const WINDOW: Duration = Duration::ZERO;

    /// A one-shard run over a closed [`GatedWarehouse`], advanced until its load is in flight.
    async fn run_with_load_in_flight() -> (
        tempfile::TempDir,
        Arc<GatedWarehouse>,
        ActiveRun,
        Arc<dyn StateStore>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let wh = GatedWarehouse::closed();
        let (mut run, state) = one_shard_run(dir.path(), wh.clone()).await;
        let step = tokio::time::timeout(Duration::from_secs(5), run.advance(WINDOW, 3));
        assert_eq!(
            step.await.expect("advance returns while the load waits"),
            Some(None)
        );
        (dir, wh, run, state)
    }

    /// Stop 21's note: the loop noticed a finished load only on its next turn, after the
    /// results queue's long poll (up to a second per batch). The load's task now tells the
    /// loop's `Notify` as it ends.
    #[tokio::test]
    async fn a_finished_load_wakes_the_loop() {
        let (_dir, wh, run, _state) = run_with_load_in_flight().await;
        assert!(run.load_in_flight());
        let ended = run.load_ended.clone();
        let woken = ended.notified();
        tokio::pin!(woken);
        // Registered before the gate opens; not woken while the load waits.
        assert!(futures_util::poll!(woken.as_mut()).is_pending());
        wh.gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("the load's end wakes the loop");
        assert_eq!(wh.loads.load(Ordering::SeqCst), 1);
    }

    /// Stop 20's note: the fleet loop awaited its loads, so no API request, result or other run
    /// was served while one ran. Now advancing a run hands its load to a task and returns; the
    /// run waits for it, and moves on (judged, finished) once it has landed.
    #[tokio::test]
    async fn a_load_runs_on_its_own_task_and_the_run_waits_for_it() {
        let (_dir, wh, mut run, state) = run_with_load_in_flight().await;
        assert!(run.loading.is_some());
        assert_eq!(run.advance(WINDOW, 3).await, Some(None), "still loading");
        assert_eq!(run.machine.batches_loaded(), 0);
        assert_eq!(wh.loads.load(Ordering::SeqCst), 0);

        wh.gate.add_permits(1);
        until_landed(&run).await;
        let status = run.advance(WINDOW, 3).await;
        assert_eq!(status, Some(Some(RunStatus::Completed)));
        assert_eq!(run.machine.batches_loaded(), 1);
        assert_eq!(wh.loads.load(Ordering::SeqCst), 1);
        let marks = state.list("runs/r/loaded/").await.unwrap();
        assert_eq!(marks, vec!["runs/r/loaded/r-t-b0000".to_string()]);
    }

    /// A cancel asked while a load is in flight takes effect once the load has landed: the run
    /// never finishes with its load still running.
    #[tokio::test]
    async fn a_cancel_during_a_load_waits_for_the_load() {
        let (_dir, wh, mut run, _state) = run_with_load_in_flight().await;
        run.machine.apply(Event::Cancelled);
        assert_eq!(
            run.advance(WINDOW, 3).await,
            Some(None),
            "waits for the load"
        );
        wh.gate.add_permits(1);
        until_landed(&run).await;
        assert_eq!(
            run.advance(WINDOW, 3).await,
            Some(Some(RunStatus::Cancelled))
        );
        assert_eq!(run.machine.batches_loaded(), 1);
    }

    /// At shutdown a load that does not end within the grace is stopped (and loaded again on
    /// the next start); one that ends is waited for.
    #[tokio::test]
    async fn stopping_waits_for_a_load_in_flight_up_to_the_grace() {
        let (_dir, _wh, mut run, state) = run_with_load_in_flight().await;
        run.settle_load(Duration::from_millis(50)).await;
        assert!(run.loading.is_none());
        assert!(state.list("runs/r/loaded/").await.unwrap().is_empty());

        let (_dir, wh, mut run, state) = run_with_load_in_flight().await;
        wh.gate.add_permits(1);
        run.settle_load(Duration::from_secs(5)).await;
        assert_eq!(state.list("runs/r/loaded/").await.unwrap().len(), 1);
    }

    /// A store whose reads wait until the test opens the gate.
    #[derive(Debug)]
    struct GatedStore {
        inner: LocalStore,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl ObjectStore for GatedStore {
        fn describe(&self) -> String {
            "gated".into()
        }
        async fn put(&self, key: &str, data: Vec<u8>) -> backends::Result<()> {
            self.inner.put(key, data).await
        }
        async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> backends::Result<bool> {
            self.inner.put_if_absent(key, data).await
        }
        async fn put_file(&self, key: &str, path: &std::path::Path) -> backends::Result<u64> {
            self.inner.put_file(key, path).await
        }
        async fn get(&self, key: &str) -> backends::Result<Vec<u8>> {
            let _pass = self.gate.acquire().await.expect("gate open");
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> backends::Result<Option<u64>> {
            self.inner.head(key).await
        }
        async fn list(&self, prefix: &str) -> backends::Result<Vec<protocol::ObjectRef>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> backends::Result<()> {
            self.inner.delete(key).await
        }
        fn open_read(
            &self,
            key: &str,
            range: Option<protocol::ByteRange>,
        ) -> backends::Result<Box<dyn std::io::Read + Send>> {
            self.inner.open_read(key, range)
        }
        fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
            self.inner.local_path(key)
        }
    }

    /// Stops 21 and 22's note: the fleet loop awaited a run's quality check, which reads and
    /// hashes every output file of the run for a `unique` expectation, so nothing else was
    /// served meanwhile. Now the check runs on a task of its own like a load; the run takes its
    /// verdict once the task has ended.
    #[tokio::test]
    async fn a_quality_check_runs_on_its_own_task_and_the_run_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Arc::new(GatedStore {
            inner: LocalStore::new(dir.path().join("lake")).unwrap(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let ids = arrow::array::StringArray::from(vec!["a", "b", "a"]);
        let batch =
            arrow::record_batch::RecordBatch::try_from_iter([("id", Arc::new(ids) as _)]).unwrap();
        let mut bytes = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        lake.inner
            .put("lake/t/part-s00000-00000.parquet", bytes)
            .await
            .unwrap();
        let wh = GatedWarehouse::closed();
        let expect = "[[expect]]\ncolumn = \"id\"\nunique = true\nseverity = \"fail\"\n";
        let (mut run, _state) =
            one_shard_run_with(dir.path(), wh.clone(), expect, lake.clone()).await;
        let step = tokio::time::timeout(Duration::from_secs(5), run.advance(WINDOW, 3));
        assert_eq!(
            step.await.expect("advance returns while the check waits"),
            Some(None)
        );
        assert!(run.load_in_flight(), "the check is in flight");
        assert_eq!(run.advance(WINDOW, 3).await, Some(None), "still checking");
        assert!(run.loader.quality.is_none());

        lake.gate.add_permits(10);
        until_landed(&run).await;
        let status = run.advance(WINDOW, 3).await;
        assert_eq!(
            status,
            Some(Some(RunStatus::Failed)),
            "one repeated id fails the run"
        );
        let report = run.loader.quality.as_ref().expect("judged");
        assert_eq!(report.results[0].observed, serde_json::json!(1));
        assert_eq!(
            wh.loads.load(Ordering::SeqCst),
            0,
            "a failed run loads nothing"
        );
    }
}
