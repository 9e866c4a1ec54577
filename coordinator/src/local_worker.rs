//! The in-process worker loop of local mode: the same life cycle as a fleet worker, on the
//! embedded queue.
//!
//! receive → decode (undecodable: dead-letter with the reason) → visibility heartbeat while the
//! engine runs → outputs and manifest durable → result message → delete the task. A retryable
//! failure leaves the task to reappear; a permanent one is reported and dead-lettered.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backends::object_store::ObjectStore;
use backends::queue::Queue;
use protocol::{Message, ResultMessage, TaskOutcome};

pub struct WorkerCtx {
    pub id: usize,
    pub tasks: Arc<dyn Queue>,
    pub results: Arc<dyn Queue>,
    pub source: Arc<dyn ObjectStore>,
    pub output: Arc<dyn ObjectStore>,
    pub files: Arc<dyn ObjectStore>,
    pub scratch: PathBuf,
    pub visibility: Duration,
    pub stopping: Arc<AtomicBool>,
}

pub async fn work_loop(ctx: WorkerCtx) {
    while !ctx.stopping.load(Ordering::SeqCst) {
        let got = match ctx.tasks.receive(1, Duration::from_millis(300)).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(worker = ctx.id, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in got {
            let task = match Message::from_body(&m.body) {
                Ok(Message::Task(t)) => t,
                Ok(_) => {
                    let _ = ctx
                        .tasks
                        .dead_letter(&m.receipt, "not a task message")
                        .await;
                    continue;
                }
                Err(e) => {
                    let _ = ctx.tasks.dead_letter(&m.receipt, &e.to_string()).await;
                    continue;
                }
            };
            let span = tracing::info_span!("task", run = %task.run_id, shard = %task.shard.shard_id, attempt = m.receive_count);
            let _e = span.enter();
            // Visibility heartbeat: extends well before expiry, stops when the task ends.
            let hb_queue = ctx.tasks.clone();
            let receipt = m.receipt.clone();
            let vis = ctx.visibility;
            let heartbeat = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(vis / 3).await;
                    if hb_queue.extend_visibility(&receipt, vis).await.is_err() {
                        break;
                    }
                }
            });
            let result = worker::execute_task(
                &task,
                ctx.source.clone(),
                ctx.output.clone(),
                ctx.files.clone(),
                &ctx.scratch,
            )
            .await;
            heartbeat.abort();
            let outcome = match result {
                Ok(manifest) => TaskOutcome::Succeeded {
                    manifest_key: task.manifest_key.clone(),
                    counts: manifest.counts,
                },
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "task failed; it will be retried");
                    continue;
                }
                Err(e) => {
                    let reason = format!("shard {}: {e}", task.shard.shard_id);
                    tracing::error!(error = %reason, "task failed permanently");
                    let _ = ctx.tasks.dead_letter(&m.receipt, &reason).await;
                    TaskOutcome::Failed { error: reason }
                }
            };
            let failed = matches!(outcome, TaskOutcome::Failed { .. });
            let body = Message::Result(ResultMessage {
                task_id: task.task_id.clone(),
                run_id: task.run_id.clone(),
                shard_id: task.shard.shard_id.clone(),
                outcome,
            })
            .to_body();
            if let Err(e) = ctx.results.send_batch(vec![body]).await {
                tracing::warn!(error = %e, "could not report the result; the task will be redone");
                continue;
            }
            if !failed {
                let _ = ctx.tasks.delete(&m.receipt).await;
            }
        }
    }
}
