//! The task life cycle shared by every worker (the fleet daemon and the in-process workers of
//! local mode), and the fleet daemon itself (`worker --config FILE`).
//!
//! One delivery: decode (undecodable or unknown version: dead-letter with the reason) → visibility
//! heartbeat while the engine runs → outputs, quarantine and manifest durable → result message →
//! delete the task. Nothing is acknowledged before it is durable: a worker killed at any point
//! leaves the task to reappear after its visibility timeout, and a redone task overwrites its own
//! outputs with the same keys. A retryable failure (I/O, throttling) leaves the task to reappear;
//! a permanent one (corrupt input, missing object, bad pipeline) is reported as failed and
//! dead-lettered with the reason.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::object_store::ObjectStore;
use backends::queue::{Queue, Received};
use protocol::{Message, ResultMessage, TaskMessage, TaskOutcome};

use crate::metrics::METRICS;
use crate::settings::{FleetBackends, FleetSettings};
use crate::{TaskStores, WorkerError};
use runtime::http::{Health, serve_health};

/// Gives a task its stores: source, output, and manifests + quarantine.
pub type StoreResolver = Arc<dyn Fn(&TaskMessage) -> Result<TaskStores, WorkerError> + Send + Sync>;

/// What a worker needs to run tasks.
#[derive(Clone)]
pub struct TaskEnv {
    pub tasks: Arc<dyn Queue>,
    pub results: Arc<dyn Queue>,
    pub stores: StoreResolver,
    pub visibility: Duration,
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Succeeded,
    /// Reported as failed and dead-lettered.
    Failed,
    /// Left on the queue to be redone.
    Retry,
    /// Not a task this build can read: dead-lettered.
    DeadLettered,
    /// A task of a cancelled run: not run, reported as failed and deleted.
    Skipped,
}

/// Runs one delivery to its end. `scratch` must not be shared with a concurrent task.
pub async fn handle_delivery(env: &TaskEnv, m: &Received, scratch: &std::path::Path) -> Handled {
    let task = match Message::from_body(&m.body) {
        Ok(Message::Task(t)) => t,
        Ok(other) => {
            let kind = match other {
                Message::Result(_) => "result",
                _ => "command",
            };
            let reason = format!(
                "message {}: a {kind} message on the tasks queue",
                m.message_id
            );
            tracing::error!(message_id = %m.message_id, %reason, "dead-lettering");
            let _ = env.tasks.dead_letter(&m.receipt, &reason).await;
            return Handled::DeadLettered;
        }
        Err(e) => {
            let reason = format!("message {}: {e}", m.message_id);
            METRICS.task("unknown", "dead_lettered");
            tracing::error!(message_id = %m.message_id, %reason, "dead-lettering an undecodable message");
            if let Err(e) = env.tasks.dead_letter(&m.receipt, &reason).await {
                tracing::warn!(error = %e, "could not dead-letter; the queue's redrive policy will");
            }
            return Handled::DeadLettered;
        }
    };
    let span = tracing::info_span!(
        "task",
        pipeline = %task.pipeline.name,
        run = %task.run_id,
        task = %task.task_id,
        shard = %task.shard.shard_id,
        attempt = m.receive_count
    );
    use tracing::Instrument;
    let name = task.pipeline.name.clone();
    METRICS.task(&name, "started");
    METRICS.in_flight.inc();
    let started = std::time::Instant::now();
    let handled = run_task(env, m, task, scratch).instrument(span).await;
    METRICS.in_flight.dec();
    METRICS.stage(&name, "task", started.elapsed());
    METRICS.task(
        &name,
        match handled {
            Handled::Succeeded => "succeeded",
            Handled::Failed => "failed",
            Handled::Retry => "retried",
            Handled::DeadLettered => "dead_lettered",
            Handled::Skipped => "skipped",
        },
    );
    handled
}

/// Whether the coordinator has cancelled the task's run: its `CancelRun` command is in the
/// files store (a store that cannot be read now does not stop the task).
pub async fn run_cancelled(files: &dyn ObjectStore, run_id: &str) -> bool {
    let Ok(bytes) = files.get(&protocol::cancel_command_key(run_id)).await else {
        return false;
    };
    matches!(
        Message::from_body(&String::from_utf8_lossy(&bytes)),
        Ok(Message::Command(protocol::CommandMessage::CancelRun { run_id: r })) if r == run_id
    )
}

/// Reports a task of a cancelled run as failed, without running it, and deletes it.
async fn skip_cancelled(env: &TaskEnv, m: &Received, task: &TaskMessage) -> Handled {
    tracing::info!("skipping a task of a cancelled run");
    let body = Message::Result(ResultMessage {
        task_id: task.task_id.clone(),
        run_id: task.run_id.clone(),
        shard_id: task.shard.shard_id.clone(),
        outcome: TaskOutcome::Failed {
            error: format!("skipped: run {} was cancelled", task.run_id),
        },
    })
    .to_body();
    if let Err(e) = env.results.send_batch(vec![body]).await {
        tracing::warn!(error = %e, "could not report the skipped task; it will be seen again");
        return Handled::Retry;
    }
    if let Err(e) = env.tasks.delete(&m.receipt).await {
        tracing::warn!(error = %e, "could not delete the skipped task (harmless)");
    }
    Handled::Skipped
}

async fn run_task(
    env: &TaskEnv,
    m: &Received,
    task: TaskMessage,
    scratch: &std::path::Path,
) -> Handled {
    if let Ok(stores) = (env.stores)(&task)
        && run_cancelled(&*stores.files, &task.run_id).await
    {
        return skip_cancelled(env, m, &task).await;
    }
    tracing::info!(bytes = task.shard.bytes(), "task started");
    // Visibility heartbeat: extends at a third of the timeout, stops when the task ends.
    let hb_queue = env.tasks.clone();
    let receipt = m.receipt.clone();
    let vis = env.visibility;
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::time::sleep(vis / 3).await;
            if let Err(e) = hb_queue.extend_visibility(&receipt, vis).await {
                tracing::warn!(error = %e, "visibility heartbeat failed; the task may be redelivered");
                if !e.is_retryable() {
                    break;
                }
            }
        }
    });
    let started = std::time::Instant::now();
    let result = match (env.stores)(&task) {
        Ok(stores) => crate::execute_task(&task, stores, scratch).await,
        Err(e) => Err(e),
    };
    heartbeat.abort();
    let outcome = match result {
        Ok(manifest) => {
            tracing::info!(
                rows_out = manifest.counts.rows_out,
                files = manifest.outputs.len(),
                secs = started.elapsed().as_secs_f64(),
                "task succeeded"
            );
            TaskOutcome::Succeeded {
                manifest_key: task.manifest_key.clone(),
                counts: manifest.counts,
            }
        }
        Err(e) if e.is_retryable() && !last_delivery(env.tasks.as_ref(), m) => {
            tracing::warn!(error = %e, "task failed; it will be redone after its visibility timeout");
            return Handled::Retry;
        }
        Err(e) if e.is_retryable() => {
            let reason = format!(
                "shard {}: {e} (on each of {} deliveries)",
                task.shard.shard_id, m.receive_count
            );
            tracing::error!(error = %reason, "task failed on its last delivery");
            TaskOutcome::Failed { error: reason }
        }
        Err(e) => {
            let reason = format!("shard {}: {e}", task.shard.shard_id);
            tracing::error!(error = %reason, "task failed permanently");
            TaskOutcome::Failed { error: reason }
        }
    };
    let reason = match &outcome {
        TaskOutcome::Failed { error } => Some(error.clone()),
        _ => None,
    };
    let body = Message::Result(ResultMessage {
        task_id: task.task_id.clone(),
        run_id: task.run_id.clone(),
        shard_id: task.shard.shard_id.clone(),
        outcome,
    })
    .to_body();
    if let Err(e) = env.results.send_batch(vec![body]).await {
        tracing::warn!(error = %e, "could not report the result; the task will be redone");
        return Handled::Retry;
    }
    if let Some(reason) = reason {
        if let Err(e) = env.tasks.dead_letter(&m.receipt, &reason).await {
            tracing::warn!(error = %e, "could not dead-letter the failed task");
        }
        return Handled::Failed;
    }
    if let Err(e) = env.tasks.delete(&m.receipt).await {
        tracing::warn!(error = %e, "could not delete the finished task; it may be redone (harmless)");
    }
    Handled::Succeeded
}

/// Whether this is the message's last delivery before the queue would dead-letter it.
fn last_delivery(queue: &dyn Queue, m: &Received) -> bool {
    queue
        .max_receive_count()
        .is_some_and(|max| m.receive_count >= max)
}

/// The fleet worker: pulls tasks from SQS with bounded concurrency until `shutdown` resolves,
/// then drains (see [`FleetSettings::worker`]'s `shutdown_grace_secs`).
pub async fn run_daemon(
    settings: FleetSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ws = settings.worker.clone();
    let backends = FleetBackends::open(&settings).await?;
    let health = Arc::new(Health::default());
    let addr = serve_health(
        &ws.health_addr,
        health.clone(),
        runtime::metrics::route(vec![&METRICS.registry]),
    )
    .await?;
    tracing::info!(%addr, concurrency = ws.concurrency, tasks = %settings.queues.tasks_url, "worker started");

    let env = TaskEnv {
        tasks: backends.tasks.clone(),
        results: backends.results.clone(),
        stores: fleet_store_resolver(backends.clone()),
        visibility: Duration::from_secs(settings.queues.visibility_timeout_secs),
    };
    std::fs::create_dir_all(&ws.scratch_dir)?;
    // A killed predecessor may have left task scratch (quarantine rows among it): remove it.
    clear_slots(&ws.scratch_dir);
    let slots: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new((0..ws.concurrency).rev().collect()));
    let inflight: Arc<Mutex<HashMap<String, String>>> = Arc::default(); // receipt → task
    let mut running = tokio::task::JoinSet::new();
    health.ready.store(true, Ordering::SeqCst);

    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        while running.try_join_next().is_some() {}
        let free = slots.lock().expect("slots").len();
        if free == 0 {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = running.join_next() => continue,
            }
        }
        // Short long-polls, so that SIGTERM is noticed within seconds and never while a
        // receive is half done (a received message is always handed to a task).
        let got = tokio::select! {
            _ = &mut shutdown => break,
            r = env.tasks.receive(free.min(10), Duration::from_secs(5)) => r,
        };
        let got = match got {
            Ok(g) => {
                backoff = Duration::from_millis(200);
                g
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receiving tasks failed");
                health.ready.store(
                    !e.is_retryable() || backoff < Duration::from_secs(10),
                    Ordering::SeqCst,
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        health.ready.store(true, Ordering::SeqCst);
        for m in got {
            let slot = slots
                .lock()
                .expect("slots")
                .pop()
                .expect("a free slot per message");
            let scratch = ws.scratch_dir.join(format!("slot{slot}"));
            let env = env.clone();
            let slots = slots.clone();
            let inflight = inflight.clone();
            inflight
                .lock()
                .expect("inflight")
                .insert(m.receipt.clone(), m.message_id.clone());
            running.spawn(async move {
                let outcome = handle_delivery(&env, &m, &scratch).await;
                tracing::debug!(?outcome, message_id = %m.message_id, "delivery handled");
                inflight.lock().expect("inflight").remove(&m.receipt);
                slots.lock().expect("slots").push(slot);
            });
        }
    }

    // Drain: stop receiving, let in-flight tasks finish within the grace period, then release
    // what is left so another worker takes it at once.
    health.draining.store(true, Ordering::SeqCst);
    let n = running.len();
    tracing::info!(
        in_flight = n,
        grace_secs = ws.shutdown_grace_secs,
        "draining"
    );
    let grace = Duration::from_secs(ws.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        let left: Vec<(String, String)> = inflight
            .lock()
            .expect("inflight")
            .iter()
            .map(|(r, id)| (r.clone(), id.clone()))
            .collect();
        running.abort_all();
        for (receipt, id) in left {
            tracing::warn!(message_id = %id, "grace period over: releasing the task to the queue");
            let _ = env.tasks.extend_visibility(&receipt, Duration::ZERO).await;
        }
    }
    // Tasks given back were aborted; their CPU jobs may still be writing when the process
    // exits, so their scratch is removed here rather than left to them.
    clear_slots(&ws.scratch_dir);
    tracing::info!(drained, "worker stopped");
    Ok(())
}

/// Removes every task slot's scratch folder (`slotN/`) under the worker's scratch dir, and only
/// those: the dir may be shared with other files.
fn clear_slots(scratch_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(scratch_dir) else {
        return;
    };
    for e in entries.flatten() {
        let is_slot = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("slot"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_slot && let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!(path = %e.path().display(), error = %err, "could not remove scratch");
        }
    }
}

/// The fleet's stores for a task: the locations the task names (the coordinator's view), each
/// opened once and cached. The manifest and quarantine store is the task's `files_url`, or this
/// worker's `storage.files` for a task from an older coordinator that does not name one.
fn fleet_store_resolver(backends: FleetBackends) -> StoreResolver {
    let cache: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = Arc::default();
    Arc::new(move |t: &TaskMessage| {
        let get = |url: &Option<String>, what: &str| -> Result<Arc<dyn ObjectStore>, WorkerError> {
            let url = url.as_deref().ok_or_else(|| {
                WorkerError::Config(format!("task {} has no {what} location", t.task_id))
            })?;
            let mut c = cache.lock().expect("store cache");
            if let Some(s) = c.get(url) {
                return Ok(s.clone());
            }
            let s = backends.store(url)?;
            c.insert(url.to_string(), s.clone());
            Ok(s)
        };
        let files = match &t.files_url {
            Some(_) => get(&t.files_url, "files")?,
            None => backends.files.clone(),
        };
        Ok(TaskStores {
            source: get(&t.source_url, "source")?,
            output: get(&t.output_url, "output")?,
            files,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::object_store::LocalStore;
    use backends::queue::MemoryQueue;
    use protocol::{ObjectRef, PipelineSpec, ShardDescriptor, ShardInput};

    const PIPELINE: &str = r#"
[pipeline]
name = "metrics_test"
[source]
location = "."
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "n"
type = "int64"
[[columns]]
name = "kind"
type = "string"
[[steps]]
op = "filter"
bucket = "unwanted"
drop_if_any = [{ column = "kind", equals = "heartbeat" }]
[[steps]]
op = "dedupe"
keys = ["id"]
[output]
columns = ["id", "n"]
"#;

    fn task(key: &str, size: u64) -> String {
        task_of_shard(key, size, "s00000")
    }

    fn task_of_shard(key: &str, size: u64, shard_id: &str) -> String {
        Message::Task(TaskMessage {
            max_string_bytes: None,
            task_id: format!("r1/{key}"),
            run_id: "r1".into(),
            pipeline: PipelineSpec {
                name: "metrics_test".into(),
                toml: PIPELINE.into(),
                base_dir: ".".into(),
            },
            shard: ShardDescriptor {
                shard_id: shard_id.into(),
                index: 0,
                extract: None,
                inputs: vec![ShardInput {
                    object: ObjectRef {
                        key: key.into(),
                        size,
                    },
                    range: None,
                }],
            },
            output_prefix: "t".into(),
            quarantine_prefix: "q".into(),
            manifest_key: format!("m/{key}.json"),
            source_url: None,
            output_url: None,
            files_url: None,
        })
        .to_body()
    }

    /// A task environment on the embedded queues whose every store is `store`.
    fn local_env(
        store: &Arc<dyn ObjectStore>,
        tasks: &Arc<dyn Queue>,
        results: &Arc<dyn Queue>,
    ) -> TaskEnv {
        let s2 = store.clone();
        TaskEnv {
            tasks: tasks.clone(),
            results: results.clone(),
            stores: Arc::new(move |_| {
                Ok(TaskStores {
                    source: s2.clone(),
                    output: s2.clone(),
                    files: s2.clone(),
                })
            }),
            visibility: Duration::from_secs(30),
        }
    }

    fn value(name: &str, labels: &[(&str, &str)]) -> f64 {
        for fam in METRICS.registry.gather() {
            if fam.name() != name {
                continue;
            }
            for m in fam.get_metric() {
                let ok = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if ok {
                    if m.get_histogram().get_sample_count() > 0 {
                        return m.get_histogram().get_sample_count() as f64;
                    }
                    if fam.get_field_type() == prometheus::proto::MetricType::COUNTER {
                        return m.get_counter().get_value();
                    }
                    return m.get_gauge().get_value();
                }
            }
        }
        0.0
    }

    /// Held by the tests that handle deliveries: they move the process-wide metrics, and
    /// `cargo test` runs a crate's tests as threads of one process (nextest runs each in its
    /// own), where one test's task in flight showed in another's `in_flight` gauge.
    static DELIVERIES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Issue 8: one panicking shard aborted the whole worker process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_shard_fails_its_task_with_the_message_and_the_worker_goes_on() {
        let _one = DELIVERIES.lock().await;
        // Only shard s09999 panics (the hook matches the shard id), so tests running beside this
        // one in the same process are not affected.
        // SAFETY: set once, before any thread of this test reads the environment; nextest runs
        // each test in its own process.
        unsafe { std::env::set_var("TRIBUTARY_FAULT", "panic_in_shard=s09999") };
        let dir = tempfile::tempdir().unwrap();
        let data = "{\"id\":\"a\",\"n\":1}\n";
        std::fs::write(dir.path().join("in.ndjson"), data).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let tasks: Arc<dyn Queue> = Arc::new(MemoryQueue::new("t", Duration::from_secs(30), 2));
        let results: Arc<dyn Queue> = Arc::new(MemoryQueue::new("r", Duration::from_secs(30), 3));
        let env = local_env(&store, &tasks, &results);
        let size = data.len() as u64;
        tasks
            .send_batch(vec![task_of_shard("in.ndjson", size, "s09999")])
            .await
            .unwrap();
        let scratch = dir.path().join("scratch");
        // First delivery: retried.
        let m = tasks
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(handle_delivery(&env, &m, &scratch).await, Handled::Retry);
        tasks
            .extend_visibility(&m.receipt, Duration::ZERO)
            .await
            .unwrap();
        // Last delivery: failed and dead-lettered, with the panic message as the reason.
        let m = tasks
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(m.receive_count, 2);
        assert_eq!(handle_delivery(&env, &m, &scratch).await, Handled::Failed);
        let dead = tasks.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0]
                .reason
                .contains("panicked: injected panic in shard s09999"),
            "{}",
            dead[0].reason
        );
        let reported = results.receive(10, Duration::from_secs(1)).await.unwrap();
        assert!(
            reported[0].body.contains("panicked"),
            "{}",
            reported[0].body
        );
        // The same worker goes on serving other tasks, and no scratch is left behind.
        tasks
            .send_batch(vec![task("in.ndjson", size)])
            .await
            .unwrap();
        let m = tasks
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            handle_delivery(&env, &m, &scratch).await,
            Handled::Succeeded
        );
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
    }

    #[tokio::test]
    async fn a_task_of_a_cancelled_run_is_reported_and_deleted_without_running() {
        let _one = DELIVERIES.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let tasks: Arc<dyn Queue> = Arc::new(MemoryQueue::new("t", Duration::from_secs(30), 2));
        let results: Arc<dyn Queue> = Arc::new(MemoryQueue::new("r", Duration::from_secs(30), 3));
        let env = local_env(&store, &tasks, &results);
        let cancel = protocol::CommandMessage::CancelRun {
            run_id: "r1".into(),
        };
        store
            .put(
                &cancel.key(),
                Message::Command(cancel.clone()).to_body().into_bytes(),
            )
            .await
            .unwrap();
        assert!(run_cancelled(&*store, "r1").await);
        assert!(!run_cancelled(&*store, "r2").await);
        // The source object does not exist: running the task would fail it for that reason.
        tasks
            .send_batch(vec![task("gone.ndjson", 10)])
            .await
            .unwrap();
        let m = tasks
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .remove(0);
        let scratch = dir.path().join("scratch");
        assert_eq!(handle_delivery(&env, &m, &scratch).await, Handled::Skipped);
        let reported = results.receive(10, Duration::from_secs(1)).await.unwrap();
        assert!(
            reported[0].body.contains("skipped: run r1 was cancelled"),
            "{}",
            reported[0].body
        );
        assert!(
            tasks.dead_letters().await.unwrap().is_empty(),
            "deleted, not dead-lettered"
        );
        assert!(
            tasks
                .receive(1, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn clear_slots_removes_task_scratch_only() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["slot0/r1-s00000", "slot12", "slotx", "keep"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("slot0/r1-s00000/s00000.quarantine.ndjson"),
            "{}",
        )
        .unwrap();
        clear_slots(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["keep", "slotx"]);
    }

    /// Sends `body` to `tasks` and handles its delivery.
    async fn deliver(
        env: &TaskEnv,
        tasks: &Arc<dyn Queue>,
        body: String,
        scratch: &std::path::Path,
    ) -> Handled {
        tasks.send_batch(vec![body.clone()]).await.unwrap();
        let got = tasks.receive(10, Duration::from_secs(1)).await.unwrap();
        let m = got.into_iter().find(|m| m.body == body).expect("delivered");
        handle_delivery(env, &m, scratch).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_metric_moves_when_its_event_happens() {
        let _one = DELIVERIES.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let data = "{\"id\":\"a\",\"n\":1}\n{\"id\":\"a\",\"n\":2}\nnot json\n{\"id\":\"b\",\"n\":\"x\"}\n{\"id\":\"c\",\"kind\":\"heartbeat\"}\n{\"id\":\"d\",\"n\":4}\n";
        std::fs::write(dir.path().join("in.ndjson"), data).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let tasks: Arc<dyn Queue> = Arc::new(MemoryQueue::new("t", Duration::from_secs(30), 3));
        let results: Arc<dyn Queue> = Arc::new(MemoryQueue::new("r", Duration::from_secs(30), 3));
        let mut env = local_env(&store, &tasks, &results);
        let p: &[(&str, &str)] = &[("pipeline", "metrics_test")];
        fn with<'a>(extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
            vec![("pipeline", "metrics_test"), extra]
        }
        let before = |n: &str, l: (&str, &str)| value(n, &with(l));

        let (started0, ok0) = (
            before("tributary_worker_tasks_total", ("outcome", "started")),
            before("tributary_worker_tasks_total", ("outcome", "succeeded")),
        );
        let scratch = dir.path().join("scratch");
        let body = task("in.ndjson", data.len() as u64);
        assert_eq!(
            deliver(&env, &tasks, body, &scratch).await,
            Handled::Succeeded
        );
        let get = |n: &str, l: (&str, &str)| value(n, &with(l));
        assert_eq!(
            get("tributary_worker_tasks_total", ("outcome", "started")),
            started0 + 1.0
        );
        assert_eq!(
            get("tributary_worker_tasks_total", ("outcome", "succeeded")),
            ok0 + 1.0
        );
        for (kind, at_least) in [
            ("in", 6.0),
            ("out", 2.0),
            ("filtered", 1.0),
            ("deduplicated", 1.0),
            ("rejected", 1.0),
            ("malformed", 1.0),
        ] {
            assert!(
                get("tributary_worker_rows_total", ("kind", kind)) >= at_least,
                "rows {kind}"
            );
        }
        assert!(get("tributary_worker_bytes_total", ("direction", "read")) >= data.len() as f64);
        assert!(get("tributary_worker_bytes_total", ("direction", "written")) > 0.0);
        assert!(value("tributary_worker_parquet_files_total", p) >= 1.0);
        for stage in ["task", "read", "parse", "transform", "encode", "upload"] {
            assert!(
                get("tributary_worker_stage_seconds", ("stage", stage)) >= 1.0,
                "stage {stage} observed"
            );
        }
        assert_eq!(METRICS.in_flight.get(), 0);

        // A shard whose object is gone fails (and is dead-lettered).
        let failed0 = get("tributary_worker_tasks_total", ("outcome", "failed"));
        let body = task("gone.ndjson", 10);
        assert_eq!(deliver(&env, &tasks, body, &scratch).await, Handled::Failed);
        assert_eq!(
            get("tributary_worker_tasks_total", ("outcome", "failed")),
            failed0 + 1.0
        );
        // Scratch of the succeeded and the failed task is gone.
        let left: Vec<_> = std::fs::read_dir(&scratch)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "scratch left behind: {left:?}");

        // A retryable failure leaves the task for later.
        let retried0 = get("tributary_worker_tasks_total", ("outcome", "retried"));
        env.stores = Arc::new(|_| {
            Err(WorkerError::Read {
                key: "x".into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"),
            })
        });
        let body = task("in.ndjson", 10);
        assert_eq!(deliver(&env, &tasks, body, &scratch).await, Handled::Retry);
        assert_eq!(
            get("tributary_worker_tasks_total", ("outcome", "retried")),
            retried0 + 1.0
        );

        // A body that is not a task is dead-lettered under pipeline "unknown".
        let dl = |v: &[(&str, &str)]| value("tributary_worker_tasks_total", v);
        let unknown = [("pipeline", "unknown"), ("outcome", "dead_lettered")];
        let dead0 = dl(&unknown);
        assert_eq!(
            deliver(&env, &tasks, "garbage".into(), &scratch).await,
            Handled::DeadLettered
        );
        assert_eq!(dl(&unknown), dead0 + 1.0);
        // The text format renders.
        let text = runtime::metrics::render(&[&METRICS.registry]);
        assert!(
            text.contains("tributary_worker_tasks_in_flight 0"),
            "{text}"
        );
    }
}
