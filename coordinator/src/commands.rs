//! `coordinator cancel RUN` and `coordinator retry RUN` in local mode (a data dir).
//!
//! Cancel records a request in state (`runs/RUN/cancel`): a `coordinator run` working on the
//! run stops enqueueing at its next step, loads nothing more and ends the run `cancelled`; if
//! no process is working on it, the next `coordinator run` of its pipeline does that before
//! anything else. The pipeline's watermark stays where it was.
//!
//! Retry takes a run that failed because shards failed and runs those shards again in the same
//! run: the shards done stay done, batches already loaded are not loaded again (their ledger
//! entries and loaded marks), so every row is still loaded exactly once.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::engine::RunStatus;
use crate::run::{DataDir, RunOptions, RunRecord, RunReport, cancel_key, now, run_local};

/// Whether `run_id` is its pipeline's unfinished run.
async fn is_current(dd: &DataDir, r: &RunRecord) -> anyhow::Result<bool> {
    let current = dd
        .state
        .get(&format!("pipelines/{}/current", r.pipeline))
        .await?;
    Ok(current.as_deref() == Some(r.run_id.as_bytes()))
}

/// Requests that an unfinished run stop; returns what happens next, for the user.
pub async fn cancel_local(dd: &DataDir, run_id: &str) -> anyhow::Result<String> {
    let r = dd.run(run_id).await?;
    if r.status.is_final() && !is_current(dd, &r).await? {
        bail!("run {run_id} has already ended: {}", r.status);
    }
    dd.state.put(&cancel_key(run_id), now().as_bytes()).await?;
    Ok(format!(
        "run {run_id}: cancel requested — a `coordinator run` working on it stops at its next step; \
         otherwise the next `coordinator run` of pipeline {} ends it as cancelled; nothing more of it is loaded",
        r.pipeline
    ))
}

/// Runs a failed run's failed shards again, in the same run.
pub async fn retry_local(
    data_dir: &std::path::Path,
    run_id: &str,
    workers: usize,
) -> anyhow::Result<RunReport> {
    let dd = DataDir::open_existing(data_dir)?;
    let r = dd.run(run_id).await?;
    if r.status != RunStatus::Failed || r.failed_shards.is_empty() {
        bail!(
            "run {run_id} is {} with no failed shards: retry redoes the failed shards of a failed run{}",
            r.status,
            if r.quality.as_ref().is_some_and(|q| !q.passed) {
                " (this one broke an expectation: its shards would give the same verdict)"
            } else {
                ""
            }
        );
    }
    if dd.state.get(&cancel_key(run_id)).await?.is_some() {
        bail!("run {run_id} was cancelled");
    }
    if !is_current(&dd, &r).await? {
        bail!(
            "run {run_id} is no longer pipeline {}'s current run: a later run has started",
            r.pipeline
        );
    }
    let pipeline = r.pipeline_file.clone().with_context(|| {
        format!("run {run_id} does not name its pipeline file (it was started by an older version)")
    })?;
    let p = crate::sources::load_pipeline(std::path::Path::new(&pipeline)).await?;
    let source = (!p.file.source.kind.extracts()).then(|| PathBuf::from(&r.source));
    let lake = dd.lake.display().to_string();
    let output = (r.output != lake).then(|| PathBuf::from(&r.output));
    run_local(&RunOptions {
        pipeline: PathBuf::from(pipeline),
        data_dir: data_dir.to_path_buf(),
        workers,
        source,
        output,
        shard_size: None,
        progress: false,
        batch_rows: 2_000_000,
        window: None,
    })
    .await
}
