//! `loadtest plan --shards N`: how long the coordinator takes to plan and enqueue a run of N
//! shards — the listing sharded by the planner, the plan encoded and written to the state store,
//! one task message per shard built and sent to the embedded queue in batches of ten (SQS's
//! largest). Prints a `PLAN_BENCH {json}` line with the time of each stage and the queue calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::queue::{MemoryQueue, Queue};
use backends::state::{FileStateStore, StateStore};
use protocol::{Message, ObjectRef, PipelineSpec, ShardPlan, TaskMessage};

/// The stages' times and the queue calls of one planning.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanBench {
    pub shards: usize,
    pub plan_ms: f64,
    pub record_ms: f64,
    pub messages_ms: f64,
    pub enqueue_ms: f64,
    pub total_ms: f64,
    pub queue_calls: usize,
    pub plan_bytes: usize,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Plans and enqueues a run of `shards` shards (one object of 64 MiB each) into `state_dir`.
pub async fn run(shards: usize, state_dir: &std::path::Path) -> anyhow::Result<PlanBench> {
    let t0 = Instant::now();
    let objects: Vec<ObjectRef> = (0..shards)
        .map(|i| ObjectRef {
            key: format!("events/2026/11/{:02}/part-{i:07}.ndjson", i % 28 + 1),
            size: 64 << 20,
        })
        .collect();
    let planned = coordinator::planner::plan_shards(&objects, 64 << 20, &|_| true);
    let plan = ShardPlan {
        run_id: "bench-run".into(),
        pipeline: "bench".into(),
        shards: planned,
    };
    let t_plan = t0.elapsed();
    let state = FileStateStore::new(state_dir)?;
    let bytes = protocol::encode_binary(&plan);
    state.put("runs/bench-run/plan.bin", &bytes).await?;
    let t_record = t0.elapsed();
    let spec = PipelineSpec {
        name: "bench".into(),
        toml: include_str!("../../examples/workload.toml").into(),
        base_dir: ".".into(),
    };
    let task = |s: &protocol::ShardDescriptor| {
        Message::Task(TaskMessage {
            task_id: format!("bench-run/{}", s.shard_id),
            run_id: "bench-run".into(),
            pipeline: spec.clone(),
            shard: s.clone(),
            output_prefix: "web_events".into(),
            quarantine_prefix: "quarantine/bench/bench-run".into(),
            manifest_key: format!("manifests/bench-run/{}.json", s.shard_id),
            source_url: None,
            output_url: None,
            files_url: None,
            max_string_bytes: None,
        })
        .to_body()
    };
    // Built ten at a time, as the coordinator sends them.
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new("tasks", Duration::from_secs(30), 3));
    let mut calls = 0;
    let mut building = Duration::ZERO;
    for chunk in plan.shards.chunks(10) {
        let t = Instant::now();
        let bodies: Vec<String> = chunk.iter().map(task).collect();
        building += t.elapsed();
        queue.send_batch(bodies).await?;
        calls += 1;
    }
    let total = t0.elapsed();
    let t_messages = t_record + building;
    anyhow::ensure!(
        queue.depth().await?.visible == shards,
        "the queue holds every task"
    );
    Ok(PlanBench {
        shards: plan.shards.len(),
        plan_ms: ms(t_plan),
        record_ms: ms(t_record - t_plan),
        messages_ms: ms(building),
        enqueue_ms: ms(total - t_messages),
        total_ms: ms(total),
        queue_calls: calls,
        plan_bytes: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_planned_run_is_enqueued_whole_in_batches_of_ten() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::run(1_234, dir.path()).await.unwrap();
        assert_eq!((b.shards, b.queue_calls), (1_234, 124));
        assert!(dir.path().join("runs/bench-run/plan.bin").is_file());
    }
}
