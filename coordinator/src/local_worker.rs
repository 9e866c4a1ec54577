//! The in-process workers of local mode: the fleet worker's task life cycle
//! ([`worker::daemon::handle_delivery`]) on the embedded queue.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use worker::daemon::TaskEnv;

/// How long a loop's wait on the embedded queue lasts.
pub const POLL: Duration = Duration::from_millis(300);

pub struct WorkerCtx {
    pub id: usize,
    pub env: TaskEnv,
    pub scratch: PathBuf,
    /// Turns true when the run has no more work for the loops: they stop at once, also in the
    /// middle of a wait on the queue.
    pub stopping: watch::Receiver<bool>,
    pub poll: Duration,
}

pub async fn work_loop(mut ctx: WorkerCtx) {
    // One scratch folder per loop: two loops never share one, even for the same task.
    let scratch = ctx.scratch.join(format!("w{}", ctx.id));
    loop {
        // The embedded queue's receive takes nothing before it returns (cancel-safe).
        let got = tokio::select! {
            biased;
            _ = ctx.stopping.wait_for(|stop| *stop) => return,
            got = ctx.env.tasks.receive(1, ctx.poll) => got,
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(worker = ctx.id, error = %e, "receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in got {
            worker::daemon::handle_delivery(&ctx.env, &m, &scratch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::queue::{MemoryQueue, Queue};
    use std::sync::Arc;

    #[tokio::test]
    async fn regression_a_loop_waiting_on_the_queue_stops_as_soon_as_the_run_ends() {
        // A local run waited for each loop's current wait on the queue (300 ms) before it
        // ended. A loop waiting an hour must still stop at once.
        let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new("tasks", Duration::from_secs(30), 3));
        let (stop, stopping) = watch::channel(false);
        let dir = tempfile::tempdir().unwrap();
        let ctx = WorkerCtx {
            id: 0,
            env: TaskEnv {
                tasks: queue.clone(),
                results: queue,
                stores: Arc::new(|_: &protocol::TaskMessage| unreachable!("no task is sent")),
                visibility: Duration::from_secs(30),
            },
            scratch: dir.path().to_path_buf(),
            stopping,
            poll: Duration::from_secs(3600),
        };
        let running = tokio::spawn(work_loop(ctx));
        tokio::task::yield_now().await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(60), running)
            .await
            .expect("the loop stopped in its wait")
            .unwrap();
    }
}
