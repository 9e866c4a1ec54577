//! What the API asks of the loop: start a run, cancel one, retry one's failed shards, plan or
//! start a backfill. Each is handled in the loop ([`Coordinator::handle`]), so it never races
//! planning, completions or loads; the reply is JSON for the API, or the reason it was refused.

use anyhow::{Context, bail};
use serde::Deserialize;

use super::Coordinator;
use crate::backfill::{BackfillRecord, Window, WindowPlan};
use crate::engine::{Event, RunStatus};
use crate::run::{RunRecord, cancel_key, now};

/// A change the API asks for.
#[derive(Debug)]
pub enum Request {
    Start { pipeline: String },
    Cancel { run_id: String },
    Retry { run_id: String },
    Backfill(BackfillRequest),
}

impl Request {
    /// Whether a success creates something (a run, a backfill): the API answers 201.
    pub fn creates(&self) -> bool {
        matches!(self, Request::Start { .. } | Request::Backfill(_))
    }
}

/// `POST /api/backfills`: the same options as `coordinator backfill`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    pub pipeline: String,
    pub from: String,
    pub to: String,
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default)]
    pub dry_run: bool,
    /// Shards of the backfill in flight at most (scheduled runs keep flowing beside it).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

fn default_window() -> String {
    "1d".into()
}

/// A request and where its answer goes.
pub type Pending = (
    Request,
    tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
);

/// The state key of a backfill's record.
pub fn backfill_key(pipeline: &str, id: &str) -> String {
    format!("backfills/{pipeline}/{id}.json")
}

impl Coordinator {
    /// Handles one request and answers it once what it changed is published: the id of a run it
    /// started is found by `GET /api/runs/ID` as soon as the answer arrives (it was not until the
    /// loop's next turn, minutes later while a large batch loaded).
    pub(super) async fn answer(
        &mut self,
        req: Request,
        reply: tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
    ) {
        let r = self.handle(req).await.map_err(|e| format!("{e:#}"));
        self.publish();
        let _ = reply.send(r);
    }

    /// Handles one request; an error is the reason it was refused.
    pub(super) async fn handle(&mut self, req: Request) -> anyhow::Result<serde_json::Value> {
        match req {
            Request::Start { pipeline } => {
                let id = self.start_run(&pipeline).await?;
                Ok(serde_json::json!({ "run_id": id }))
            }
            Request::Cancel { run_id } => self.cancel_run(&run_id).await,
            Request::Retry { run_id } => self.retry_run(&run_id).await,
            Request::Backfill(b) => self.backfill(b).await,
        }
    }

    /// Cancels an active run: recorded in state, broadcast to the workers as a `CancelRun`
    /// command (they skip its tasks), and the run ends `cancelled` at the loop's next advance,
    /// loading nothing more. Its watermark stays.
    async fn cancel_run(&mut self, run_id: &str) -> anyhow::Result<serde_json::Value> {
        let Some(run) = self.runs.get_mut(run_id) else {
            let status = self
                .shared
                .lock()
                .expect("shared")
                .runs
                .get(run_id)
                .map(|r| r.status);
            match status {
                Some(s) => bail!("run {run_id} has already ended: {s}"),
                None => bail!("no run {run_id}"),
            }
        };
        self.state
            .put(&cancel_key(run_id), now().as_bytes())
            .await?;
        let command = protocol::CommandMessage::CancelRun {
            run_id: run_id.to_string(),
        };
        self.backends
            .files
            .put(
                &command.key(),
                protocol::Message::Command(command.clone())
                    .to_body()
                    .into_bytes(),
            )
            .await?;
        run.machine.apply(Event::Cancelled);
        tracing::warn!(run = %run_id, "run cancelled");
        Ok(serde_json::json!({ "run_id": run_id, "status": "cancelling" }))
    }

    /// Takes a failed run back: its failed shards are sent again, in the same run (its done
    /// shards stay done, its loaded batches loaded: exactly once is kept).
    async fn retry_run(&mut self, run_id: &str) -> anyhow::Result<serde_json::Value> {
        if self.runs.contains_key(run_id) {
            bail!("run {run_id} is still running");
        }
        let mut rec: RunRecord = serde_json::from_slice(
            &self
                .state
                .get(&format!("runs/{run_id}/run.json"))
                .await?
                .with_context(|| format!("no run {run_id}"))?,
        )?;
        if rec.status != RunStatus::Failed || rec.failed_shards.is_empty() {
            bail!(
                "run {run_id} is {} with no failed shards: retry redoes the failed shards of a failed run",
                rec.status
            );
        }
        if self.state.get(&cancel_key(run_id)).await?.is_some() {
            bail!("run {run_id} was cancelled");
        }
        let current = format!("pipelines/{}/current", rec.pipeline);
        if rec.backfill_window.is_none()
            && let Some(other) = self.state.get(&current).await?
        {
            bail!(
                "pipeline {} has a run in progress ({}); retry {run_id} when it has ended",
                rec.pipeline,
                String::from_utf8_lossy(&other)
            );
        }
        let plan = crate::run::read_plan(&*self.state, run_id).await?;
        let shards: Vec<String> = rec.failed_shards.iter().map(|(s, _)| s.clone()).collect();
        for s in &shards {
            self.state
                .delete(&format!("runs/{run_id}/failed/{s}"))
                .await?;
        }
        // Every unfinished shard (the failed ones) is sent again.
        self.state
            .put(&format!("runs/{run_id}/enqueued"), b"0")
            .await?;
        rec.status = RunStatus::Running;
        rec.finished_at = None;
        rec.failed_shards.clear();
        rec.last_error = None;
        rec.quality = None;
        self.state
            .put(
                &format!("runs/{run_id}/run.json"),
                &serde_json::to_vec_pretty(&rec)?,
            )
            .await?;
        if rec.backfill_window.is_none() {
            self.state.put(&current, run_id.as_bytes()).await?;
        }
        tracing::info!(run = %run_id, shards = shards.len(), "retrying failed shards");
        self.activate(rec, plan).await?;
        Ok(serde_json::json!({ "run_id": run_id, "shards": shards }))
    }

    /// Plans a backfill; a dry run answers the plan, a real one starts its first window's run.
    async fn backfill(&mut self, b: BackfillRequest) -> anyhow::Result<serde_json::Value> {
        let p = &self
            .pipelines
            .get(&b.pipeline)
            .with_context(|| format!("no pipeline named {:?}", b.pipeline))?
            .pipeline;
        let (ws, plans) = self.plan_backfill(p, &b).await?;
        let line = crate::backfill::plan_line(p.name(), &b.window, &plans);
        let plan_json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("PLAN ").unwrap_or(&line))?;
        if b.dry_run {
            return Ok(serde_json::json!({ "dry_run": true, "plan": plan_json }));
        }
        let id = crate::backfill::backfill_id(p.name(), &ws, &b.window);
        let key = backfill_key(p.name(), &id);
        let mut record = match self.state.get(&key).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("state {key} is corrupt"))?
            }
            None => BackfillRecord::new(&id, p.name(), &ws),
        };
        record.max_in_flight = b.max_in_flight;
        record.status = Some("running".into());
        self.state
            .put(&key, &serde_json::to_vec_pretty(&record)?)
            .await?;
        self.backfills.insert(id.clone(), (record, plans));
        self.advance_backfills().await?;
        Ok(serde_json::json!({ "backfill_id": id, "plan": plan_json }))
    }

    /// A backfill's windows and each one's plan, from the source as it is now.
    async fn plan_backfill(
        &self,
        p: &pipeline::Pipeline,
        b: &BackfillRequest,
    ) -> anyhow::Result<(Vec<Window>, Vec<WindowPlan>)> {
        let ws = crate::backfill::range_windows(&b.from, &b.to, &b.window)?;
        let plans = match p.file.source.kind {
            pipeline::SourceKind::Files => {
                let (objects, _) = self.list_files(p).await?;
                crate::backfill::plan_file_windows(p, &objects, &ws)?
            }
            pipeline::SourceKind::Http => crate::backfill::plan_api(p, &ws)?,
            pipeline::SourceKind::Postgres | pipeline::SourceKind::Mysql => {
                crate::backfill::plan_database(p, &ws).await?
            }
        };
        Ok((ws, plans))
    }

    /// Moves every backfill on: when the run of its current window has ended, records it and
    /// starts the next window's (a failed window stops the backfill, saying which).
    /// Ended backfills stay in the map (the status page shows them) with their final status.
    pub(super) async fn advance_backfills(&mut self) -> anyhow::Result<()> {
        let ids: Vec<String> = self
            .backfills
            .iter()
            .filter(|(_, (r, _))| r.status.as_deref() == Some("running"))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let (mut record, plans) = self.backfills.remove(&id).expect("listed");
            let before = serde_json::to_vec_pretty(&record)?;
            let key = backfill_key(&record.pipeline, &id);
            if let Err(e) = self.advance_backfill(&mut record, &plans).await {
                tracing::error!(backfill = %id, error = %format!("{e:#}"), "backfill stopped");
                record.status = Some(format!("failed: {e:#}"));
            }
            // Written when it moved on (the loop comes here every turn).
            let after = serde_json::to_vec_pretty(&record)?;
            if after != before {
                self.state.put(&key, &after).await?;
            }
            self.backfills.insert(id, (record, plans));
        }
        Ok(())
    }

    /// One backfill's step: its next window's run started, or its status set to `completed`.
    async fn advance_backfill(
        &mut self,
        record: &mut BackfillRecord,
        plans: &[WindowPlan],
    ) -> anyhow::Result<()> {
        if let Some(run_id) = record.current_run.clone() {
            if self.runs.contains_key(&run_id) {
                return Ok(());
            }
            let status = self
                .shared
                .lock()
                .expect("shared")
                .runs
                .get(&run_id)
                .map(|r| r.status);
            let i = record.next_window().context("a window in progress")?;
            if status != Some(RunStatus::Completed) {
                bail!(
                    "the run {run_id} of window {} .. {} ended {}; retry it, then start the backfill again to resume",
                    record.windows[i].0,
                    record.windows[i].1,
                    status.map_or("unknown".into(), |s| s.to_string())
                );
            }
            record.runs[i] = Some(run_id);
            record.current_run = None;
        }
        while let Some(i) = record.next_window() {
            if plans[i].shards == 0 {
                record.runs[i] = Some(String::new());
                continue;
            }
            let run_id = self
                .start_backfill_run(&record.pipeline, plans[i].window, record.max_in_flight)
                .await?;
            record.current_run = Some(run_id);
            return Ok(());
        }
        record.status = Some("completed".into());
        tracing::info!(backfill = %record.backfill_id, "backfill completed");
        Ok(())
    }
}
