//! The in-process workers of local mode: the fleet worker's task life cycle
//! ([`worker::daemon::handle_delivery`]) on the embedded queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use worker::daemon::TaskEnv;

pub struct WorkerCtx {
    pub id: usize,
    pub env: TaskEnv,
    pub scratch: PathBuf,
    pub stopping: Arc<AtomicBool>,
}

pub async fn work_loop(ctx: WorkerCtx) {
    // One scratch folder per loop: two loops never share one, even for the same task.
    let scratch = ctx.scratch.join(format!("w{}", ctx.id));
    while !ctx.stopping.load(Ordering::SeqCst) {
        let got = match ctx.env.tasks.receive(1, Duration::from_millis(300)).await {
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
