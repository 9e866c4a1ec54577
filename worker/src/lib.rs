//! The Tributary worker: takes one shard task, extracts its records, curates and transforms them,
//! and writes partitioned Parquet, a quarantine file and a shard manifest.
//!
//! * [`config`]: reading pipeline files (their model and validation are the `pipeline` crate).
//! * [`plan`]: a validated pipeline compiled for execution: the reading rules and the steps, each
//!   compiled by its own module of `pipeline::steps` (key and reference files read from here).
//! * [`extract`]: database and API shards read into the raw zone before they are processed.
//! * [`engine`]: the streaming shard engine (reader thread → parallel pieces on rayon → Parquet).
//! * [`daemon`]: the fleet worker; CPU work reaches rayon through `runtime::cpu::run_cpu`.
//! * [`harness`]: one shard of arbitrary bytes through the engine (fuzz targets, property tests).
//! * [`execute_task`]: a queue task end to end — engine, uploads, manifest last.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod extract;
pub mod harness;
pub mod metrics;
pub mod plan;
/// The fleet settings live in the `runtime` crate (the coordinator reads them too).
pub use runtime::settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backends::object_store::ObjectStore;
use protocol::{
    Counts, OutputFile, QuarantineFile, ShardDescriptor, ShardInput, ShardManifest, TaskMessage,
};

use crate::config::Format;
use crate::engine::{ShardState, WrittenFile};
use crate::plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Backend(#[from] backends::BackendError),
    #[error("reading {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Parquet: {0}")]
    Parquet(String),
    #[error("Arrow: {0}")]
    Arrow(String),
    #[error("step {step}: {detail}")]
    Step { step: String, detail: String },
    #[error("the CPU pool dropped the task")]
    Cancelled,
    /// A bug: code on the CPU pool panicked. Retried (the task may land on a healthier worker),
    /// then dead-lettered with this message.
    #[error("panicked: {message}")]
    Panicked { message: String },
}

impl From<pipeline::steps::StepError> for WorkerError {
    fn from(e: pipeline::steps::StepError) -> Self {
        WorkerError::Step {
            step: e.step,
            detail: e.detail,
        }
    }
}

impl From<runtime::cpu::CpuError> for WorkerError {
    fn from(e: runtime::cpu::CpuError) -> Self {
        match e {
            runtime::cpu::CpuError::Panicked { message } => WorkerError::Panicked { message },
            runtime::cpu::CpuError::Cancelled => WorkerError::Cancelled,
        }
    }
}

impl WorkerError {
    pub fn read(key: &str, source: std::io::Error) -> Self {
        // Decoders report corrupt input as InvalidData / InvalidInput / UnexpectedEof.
        match source.kind() {
            std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::UnexpectedEof => WorkerError::Corrupt {
                key: key.into(),
                detail: format!("corrupt or truncated compressed data: {source}"),
            },
            _ => WorkerError::Read {
                key: key.into(),
                source,
            },
        }
    }
    pub fn write(path: &Path, source: std::io::Error) -> Self {
        WorkerError::Write {
            path: path.display().to_string(),
            source,
        }
    }
    pub fn parquet(e: parquet::errors::ParquetError) -> Self {
        WorkerError::Parquet(e.to_string())
    }
    pub fn arrow(e: arrow::error::ArrowError) -> Self {
        WorkerError::Arrow(e.to_string())
    }
    /// Whether redoing the task could succeed (I/O trouble) or not (bad config, corrupt input).
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Backend(b) => b.is_retryable(),
            WorkerError::Read { .. }
            | WorkerError::Write { .. }
            | WorkerError::Cancelled
            | WorkerError::Panicked { .. } => true,
            _ => false,
        }
    }
}

/// What one shard produced, before upload.
#[derive(Debug)]
pub struct ShardOutput {
    pub files: Vec<WrittenFile>,
    pub quarantine: Option<(PathBuf, u64)>,
    pub counts: Counts,
    pub times: engine::StageTimes,
    /// The shard's output schema: the plan's, grown by any columns evolved from undeclared JSON
    /// fields (`on_new_column = "evolve"`).
    pub schema: arrow::datatypes::SchemaRef,
}

/// Where a shard's Parquet files go and how they are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputNaming {
    /// Key prefix of the table (`COLUMN=VALUE/` folders go under it); empty for the store root.
    pub prefix: String,
    /// The part of every file name that makes it unique: `RUN-SHARD` for queue tasks, so a later
    /// run never overwrites an earlier run's files while a redone shard replaces its own
    /// (`part-RUN-SHARD-00000.parquet`).
    pub file_tag: String,
}

impl OutputNaming {
    /// The naming of a queue task's outputs.
    pub fn for_task(task: &TaskMessage) -> OutputNaming {
        OutputNaming {
            prefix: task.output_prefix.clone(),
            file_tag: protocol::part_file_tag(&task.run_id, &task.shard.shard_id),
        }
    }
}

/// A task's scratch folder, removed when the last holder lets go of it: when the task succeeds,
/// fails, or is dropped mid-way (a drain that gives the task back aborts its future; the CPU job
/// holds its own handle and removes the folder when it ends). Quarantine rows (raw records,
/// possibly with personal data) never outlive their task on local disk.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(path: PathBuf) -> Arc<ScratchDir> {
        Arc::new(ScratchDir(path))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove scratch")
            }
        }
    }
}

/// The stores of one task: where it reads, where its Parquet goes, and where its manifest and
/// quarantine go (the coordinator's `storage.files`, as the task names it).
#[derive(Clone)]
pub struct TaskStores {
    pub source: Arc<dyn ObjectStore>,
    pub output: Arc<dyn ObjectStore>,
    pub files: Arc<dyn ObjectStore>,
}

/// Test hook: `TRIBUTARY_FAULT=panic_in_shard=SHARD` panics inside the CPU job of that shard, as a
/// bug in a step would (the crash trials and the fleet tests use it).
fn injected_panic(shard_id: &str) {
    if let Ok(v) = std::env::var("TRIBUTARY_FAULT")
        && v.strip_prefix("panic_in_shard=") == Some(shard_id)
    {
        panic!("injected panic in shard {shard_id} (TRIBUTARY_FAULT)");
    }
}

/// Runs the engine over a shard's inputs. Blocking and CPU-heavy: call it on the rayon pool
/// (through [`runtime::cpu::run_cpu`]).
pub fn run_shard_blocking(
    plan: &Plan,
    pipeline: &config::Pipeline,
    source: Arc<dyn ObjectStore>,
    shard: &ShardDescriptor,
    output: &OutputNaming,
    scratch: &Path,
) -> Result<ShardOutput, WorkerError> {
    std::fs::create_dir_all(scratch).map_err(|e| WorkerError::write(scratch, e))?;
    injected_panic(&shard.shard_id);
    let mut st = ShardState::new(
        plan,
        engine::Writers::new(plan, scratch, &output.prefix, &output.file_tag),
        scratch.join(format!("{}.quarantine.ndjson", shard.shard_id)),
    );
    st.expected_bytes = Some(
        shard
            .inputs
            .iter()
            .map(|i| i.range.map_or(i.object.size, |r| r.len()))
            .sum(),
    );
    for input in &shard.inputs {
        if plan.format == Format::Parquet {
            engine::process_parquet_input(plan, &*source, input, &mut st)?;
        } else {
            process_text_input(plan, &pipeline.file.source, &source, input, &mut st)?;
        }
    }
    debug_assert!(st.counts.reconciles(), "{:?}", st.counts);
    let t = std::time::Instant::now();
    let schema = st.writers.schema();
    let files = st.writers.finish()?;
    st.times.encode += t.elapsed();
    st.times.encode = st.writers.encode_time(st.times.encode);
    Ok(ShardOutput {
        schema,
        files,
        quarantine: st.quarantine.finish()?,
        counts: st.counts,
        times: st.times,
    })
}

/// The CSV header an input is read with: its own first line (checked against the plan) when the
/// source has headers, else the declared column order; none for JSON.
fn csv_header(
    plan: &Plan,
    src: &config::SourceSection,
    source: &dyn ObjectStore,
    input: &ShardInput,
) -> Result<Option<Arc<Vec<String>>>, WorkerError> {
    if plan.format != Format::Csv {
        return Ok(None);
    }
    if !src.csv.header {
        return Ok(Some(Arc::new(plan.declared_paths.clone())));
    }
    let header = engine::read_csv_header(
        source,
        &input.object.key,
        src.compression,
        plan.csv_delimiter,
        plan.csv_quote,
    )?;
    plan.check_csv_header(&header, &input.object.key)?;
    Ok(Some(Arc::new(header)))
}

/// One NDJSON, CSV or JSON-array input through the engine: a reader thread splits it into
/// chunks (reusing the engine's finished ones) while the engine processes them.
fn process_text_input(
    plan: &Plan,
    src: &config::SourceSection,
    source: &Arc<dyn ObjectStore>,
    input: &ShardInput,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    let reading = engine::LineReading {
        compression: src.compression,
        max_line: src.max_line_bytes.get(),
        header: csv_header(plan, src, &**source, input)?,
        skip_header: plan.format == Format::Csv && src.csv.header && input.start() == 0,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<engine::Chunk>(2);
    let pool = engine::ChunkPool::default();
    let (reader_pool, reader_source, reader_input) = (pool.clone(), source.clone(), input.clone());
    let format = plan.format;
    let reader = std::thread::Builder::new()
        .name("shard-reader".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let mut blocked = std::time::Duration::ZERO;
            let mut send = |c: engine::Chunk| {
                let t = std::time::Instant::now();
                let ok = tx.send(c).is_ok();
                blocked += t.elapsed();
                ok
            };
            let r = match format {
                Format::JsonArray => engine::read_json_array(
                    &*reader_source,
                    &reader_input,
                    reading.compression,
                    &mut send,
                ),
                _ => engine::read_lines(
                    &*reader_source,
                    &reader_input,
                    reading,
                    &reader_pool,
                    &mut send,
                ),
            };
            (r, started.elapsed().saturating_sub(blocked))
        })
        .map_err(|e| WorkerError::Read {
            key: input.object.key.clone(),
            source: e,
        })?;
    let failed = engine::process_chunks(plan, rx.iter(), &pool, st).err();
    drop(rx);
    let (read_result, read_time) = reader.join().map_err(|p| WorkerError::Panicked {
        message: format!(
            "reading {}: {}",
            input.object.key,
            runtime::cpu::panic_message(p.as_ref())
        ),
    })?;
    st.times.read += read_time;
    if let Some(e) = failed {
        return Err(e);
    }
    read_result
}

/// A database or API shard reads its rows into the raw zone first (in the files store), then
/// that object: returns the store and shard the engine reads, and the latest watermark value an
/// API extract read. A files shard is read where it is.
async fn extract_first(
    pipeline: &config::Pipeline,
    shard: &ShardDescriptor,
    source: Arc<dyn ObjectStore>,
    files: &Arc<dyn ObjectStore>,
    scratch: &Path,
) -> Result<(Arc<dyn ObjectStore>, ShardDescriptor, Option<String>), WorkerError> {
    Ok(match &shard.extract {
        Some(protocol::Extract::Sql(range)) => {
            let processed = extract::extract_sql(pipeline, shard, range, &**files, scratch).await?;
            (files.clone(), processed, None)
        }
        Some(protocol::Extract::Http(range)) => {
            let (processed, watermark) =
                extract::http::extract_http(pipeline, shard, range, &**files, scratch).await?;
            (files.clone(), processed, watermark)
        }
        None => (source, shard.clone(), None),
    })
}

/// A task end to end: engine on the CPU pool, uploads, then the manifest (the last write: its
/// presence means every file it lists is durable).
pub async fn execute_task(
    task: &TaskMessage,
    stores: TaskStores,
    scratch: &Path,
) -> Result<ShardManifest, WorkerError> {
    let pipeline = config::parse(
        &task.pipeline.toml,
        &task.pipeline.name,
        PathBuf::from(&task.pipeline.base_dir),
    )
    .map_err(|e| WorkerError::Config(e.to_string()))?;
    let mut plan = Plan::build(&pipeline)?;
    plan.max_string_bytes = task.max_string_bytes;
    let plan = Arc::new(plan);
    let TaskStores {
        source,
        output,
        files: state_files,
    } = stores;
    let scratch = ScratchDir::new(scratch.join(format!("{}-{}", task.run_id, task.shard.shard_id)));
    // A database or API shard's read into the raw zone is part of its read stage.
    let extracting = std::time::Instant::now();
    let (source, shard, source_watermark) =
        extract_first(&pipeline, &task.shard, source, &state_files, scratch.path()).await?;
    let extracted = extracting.elapsed();
    let processed = shard.clone();
    let naming = OutputNaming::for_task(task);
    let (p2, s2) = (plan.clone(), scratch.clone());
    let out = runtime::cpu::run_cpu(move || {
        run_shard_blocking(&p2, &pipeline, source, &shard, &naming, s2.path())
    })
    .await??;
    let m = &metrics::METRICS;
    let name = task.pipeline.name.as_str();
    m.stage(name, "read", extracted + out.times.read);
    m.stage(name, "parse", out.times.parse);
    m.stage(name, "transform", out.times.transform);
    m.stage(name, "encode", out.times.encode);
    let upload_started = std::time::Instant::now();
    let mut outputs = Vec::with_capacity(out.files.len());
    for f in &out.files {
        let bytes = output.put_file(&f.key, &f.local).await?;
        // Test hook: stop dead in the middle of a shard (one output written, no manifest), so a
        // test can kill -9 this process there.
        if std::env::var("TRIBUTARY_FAULT").as_deref() == Ok("hang_mid_shard") {
            eprintln!(
                "FAULT: hanging mid-shard {} after writing {}",
                task.shard.shard_id, f.key
            );
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            }
        }
        outputs.push(OutputFile {
            max_bytes: f.max_bytes.clone(),
            key: f.key.clone(),
            partition: f.partition.clone(),
            rows: f.rows,
            bytes,
        });
    }
    let mut quarantine = Vec::new();
    if let Some((local, rows)) = &out.quarantine {
        let key = format!(
            "{}/{}.ndjson",
            task.quarantine_prefix.trim_end_matches('/'),
            task.shard.shard_id
        );
        let bytes = state_files.put_file(&key, local).await?;
        quarantine.push(QuarantineFile {
            key,
            rows: *rows,
            bytes,
        });
    }
    drop(scratch);
    m.stage(name, "upload", upload_started.elapsed());
    m.shard(
        name,
        &out.counts,
        task.shard.bytes(),
        outputs.iter().map(|o| o.bytes).sum::<u64>()
            + quarantine.iter().map(|q| q.bytes).sum::<u64>(),
        outputs.len(),
    );
    let manifest = ShardManifest {
        v: protocol::PROTOCOL_VERSION,
        run_id: task.run_id.clone(),
        pipeline: task.pipeline.name.clone(),
        table: plan.table.clone(),
        shard: processed,
        outputs,
        quarantine,
        counts: out.counts,
        schema_digest: plan.schema_digest(&out.schema),
        source_watermark,
    };
    state_files
        .put(&task.manifest_key, manifest.to_json().into_bytes())
        .await?;
    Ok(manifest)
}

#[cfg(test)]
mod tests;
