//! The Tributary worker: takes one shard task, extracts its records, curates and transforms them,
//! and writes partitioned Parquet, a quarantine file and a shard manifest.
//!
//! * [`config`]: reading pipeline files (their model and validation are the `pipeline` crate).
//! * [`plan`]: a validated pipeline compiled for execution: the reading rules and the steps, each
//!   compiled by its own module of `pipeline::steps` (key and reference files read from here).
//! * [`engine`]: the streaming shard engine (reader thread → parallel pieces on rayon → Parquet).
//! * [`daemon`]: the fleet worker; CPU work reaches rayon through `runtime::cpu::run_cpu`.
//! * [`harness`]: one shard of arbitrary bytes through the engine (fuzz targets, property tests).
//! * [`execute_task`]: a queue task end to end — engine, uploads, manifest last.

pub mod config;
pub mod daemon;
pub mod engine;
pub mod harness;
pub mod metrics;
pub mod plan;
/// The fleet settings live in the `runtime` crate (the coordinator reads them too).
pub use runtime::settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backends::object_store::ObjectStore;
use protocol::{Counts, OutputFile, QuarantineFile, ShardDescriptor, ShardManifest, TaskMessage};

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
    let src = &pipeline.file.source;
    let mut st = ShardState {
        counts: Counts::default(),
        seen: Default::default(),
        writers: engine::Writers::new(plan, scratch, &output.prefix, &output.file_tag),
        quarantine: engine::Quarantine::new(
            scratch.join(format!("{}.quarantine.ndjson", shard.shard_id)),
        ),
        times: Default::default(),
    };
    for (is_reject, b) in &plan.buckets {
        let m = if *is_reject {
            &mut st.counts.rejected
        } else {
            &mut st.counts.filtered
        };
        m.entry(b.clone()).or_default();
    }
    for input in &shard.inputs {
        if plan.format == Format::Parquet {
            engine::process_parquet_input(plan, &*source, input, &mut st)?;
            continue;
        }
        let header = if plan.format == Format::Csv && src.csv.header {
            let header = engine::read_csv_header(
                &*source,
                &input.object.key,
                src.compression,
                plan.csv_delimiter,
                plan.csv_quote,
            )?;
            plan.check_csv_header(&header, &input.object.key)?;
            Some(Arc::new(header))
        } else if plan.format == Format::Csv {
            Some(Arc::new(plan.declared_paths.clone()))
        } else {
            None
        };
        let skip_header = plan.format == Format::Csv && src.csv.header && input.start() == 0;
        let (tx, rx) = std::sync::mpsc::sync_channel::<engine::Chunk>(2);
        let reader_source = source.clone();
        let reader_input = input.clone();
        let (compression, max_line, format) =
            (src.compression, src.max_line_bytes.get(), plan.format);
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
                        compression,
                        &mut send,
                    ),
                    _ => engine::read_lines(
                        &*reader_source,
                        &reader_input,
                        compression,
                        max_line,
                        header,
                        skip_header,
                        &mut send,
                    ),
                };
                (r, started.elapsed().saturating_sub(blocked))
            })
            .map_err(|e| WorkerError::Read {
                key: input.object.key.clone(),
                source: e,
            })?;
        let mut failed = None;
        for chunk in rx.iter() {
            if let Err(e) = engine::process_chunk(plan, &chunk, &mut st) {
                failed = Some(e);
                break;
            }
        }
        drop(rx);
        let (read_result, extract) = reader.join().map_err(|p| WorkerError::Panicked {
            message: format!(
                "reading {}: {}",
                input.object.key,
                runtime::cpu::panic_message(p.as_ref())
            ),
        })?;
        st.times.extract += extract;
        if let Some(e) = failed {
            return Err(e);
        }
        read_result?;
    }
    debug_assert!(st.counts.reconciles(), "{:?}", st.counts);
    let t = std::time::Instant::now();
    let files = st.writers.finish()?;
    st.times.write += t.elapsed();
    Ok(ShardOutput {
        files,
        quarantine: st.quarantine.finish()?,
        counts: st.counts,
        times: st.times,
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
    let shard = task.shard.clone();
    let naming = OutputNaming::for_task(task);
    let (p2, s2) = (plan.clone(), scratch.clone());
    let out = runtime::cpu::run_cpu(move || {
        run_shard_blocking(&p2, &pipeline, source, &shard, &naming, s2.path())
    })
    .await??;
    let m = &metrics::METRICS;
    let name = task.pipeline.name.as_str();
    m.stage(name, "extract", out.times.extract);
    m.stage(name, "transform", out.times.transform);
    m.stage(name, "write", out.times.write);
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
        shard: task.shard.clone(),
        outputs,
        quarantine,
        counts: out.counts,
        schema_digest: plan.schema_digest(),
    };
    state_files
        .put(&task.manifest_key, manifest.to_json().into_bytes())
        .await?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Array, ArrayRef, AsArray, Decimal128Array, Int64Array, StringArray, StructArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use backends::object_store::LocalStore;
    use protocol::{ObjectRef, ShardInput};

    const PARQUET_PIPELINE: &str = r#"
[pipeline]
name = "pq"
[source]
location = "."
format = "parquet"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "n"
type = "int64"
[[columns]]
name = "ts"
type = "timestamp"
[[columns]]
name = "amount"
type = "decimal(18,2)"
[[columns]]
name = "os"
path = "device.os"
type = "string"
[[steps]]
op = "dedupe"
keys = ["id"]
[output]
columns = ["id", "n", "ts", "amount", "os"]
"#;

    /// Runs one shard of the whole object `key` in `dir` (Parquet to `out/`, scratch as given).
    fn run_whole(
        plan: &Plan,
        p: &config::Pipeline,
        dir: &Path,
        key: &str,
        scratch: &Path,
    ) -> ShardOutput {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir).unwrap());
        let size = std::fs::metadata(dir.join(key)).unwrap().len();
        let shard = ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            inputs: vec![ShardInput {
                object: ObjectRef {
                    key: key.into(),
                    size,
                },
                range: None,
            }],
        };
        let naming = OutputNaming {
            prefix: "out".into(),
            file_tag: "s00000".into(),
        };
        run_shard_blocking(plan, p, store, &shard, &naming, scratch).unwrap()
    }

    /// The first record batch of the shard's first Parquet file.
    fn first_batch(out: &ShardOutput) -> arrow::record_batch::RecordBatch {
        let f = std::fs::File::open(&out.files[0].local).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn scratch_is_removed_when_its_last_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r1-s00000");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("s00000.quarantine.ndjson"), "raw rows").unwrap();
        let task_side = ScratchDir::new(path.clone());
        let cpu_side = task_side.clone();
        // The task's future is dropped first (a drain gave it back) …
        drop(task_side);
        assert!(path.exists(), "the CPU job still uses it");
        // … then the CPU job ends.
        drop(cpu_side);
        assert!(!path.exists());
        // Never created (the job never started): nothing to do, no error.
        drop(ScratchDir::new(dir.path().join("never")));
    }

    #[test]
    fn parquet_sources_with_nested_columns_run_through_the_same_steps() {
        let dir = tempfile::tempdir().unwrap();
        let os = StringArray::from(vec![Some("linux"), None, Some("ios"), Some("mac")]);
        let device = StructArray::from(vec![(
            Arc::new(Field::new("os", DataType::Utf8, true)),
            Arc::new(os) as ArrayRef,
        )]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("amount", DataType::Decimal128(18, 2), true),
            Field::new("device", device.data_type().clone(), true),
            Field::new("ignored", DataType::Utf8, true),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    None,
                    Some("a"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_746_093_600_000_000; 4])
                        .with_timezone("UTC"),
                ),
                Arc::new(
                    Decimal128Array::from(vec![1230, -300, 5, 7])
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(device),
                Arc::new(StringArray::from(vec!["x"; 4])),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::write(dir.path().join("in.parquet"), &buf).unwrap();
        let p = config::parse(PARQUET_PIPELINE, "pq.toml", dir.path().to_path_buf()).unwrap();
        let plan = Plan::build(&p).unwrap();
        let out = run_whole(
            &plan,
            &p,
            dir.path(),
            "in.parquet",
            &dir.path().join("scratch"),
        );
        assert_eq!(
            (
                out.counts.lines_total,
                out.counts.malformed,
                out.counts.duplicates,
                out.counts.rows_out
            ),
            (4, 1, 1, 2)
        );
        let rb = first_batch(&out);
        assert_eq!(rb.column(0).as_string::<i32>().value(1), "b");
        assert_eq!(
            rb.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(1),
            2
        );
        assert_eq!(
            rb.column(2)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            1_746_093_600_000_000
        );
        assert_eq!(
            rb.column(3)
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(0),
            1230
        );
        assert_eq!(
            rb.column(3)
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(1),
            -300
        );
        assert_eq!(rb.column(4).as_string::<i32>().value(0), "linux");
        assert!(rb.column(4).is_null(1));
    }

    /// `[schema] on_new_column = "freeze"` rejects a record with an undeclared field, naming it by
    /// its dotted path (nested too); the default, `discard`, drops such fields and keeps the row.
    #[test]
    fn freeze_rejects_records_with_undeclared_fields_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("in.ndjson"),
            "{\"id\":\"a\",\"device\":{\"os\":\"ios\"}}\n{\"id\":\"b\",\"extra\":1}\n\
             {\"id\":\"c\",\"device\":{\"os\":\"x\",\"model\":\"y\"}}\n",
        )
        .unwrap();
        let text = "[pipeline]\nname = \"t\"\n[source]\nlocation = \".\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"os\"\npath = \"device.os\"\ntype = \"string\"\n\
                    [output]\ncolumns = [\"id\", \"os\"]\nSCHEMA";
        let run = |schema: &str| {
            let p = config::parse(
                &text.replace("SCHEMA", schema),
                "t.toml",
                dir.path().to_path_buf(),
            )
            .unwrap();
            let plan = Plan::build(&p).unwrap();
            run_whole(
                &plan,
                &p,
                dir.path(),
                "in.ndjson",
                &dir.path().join(format!("scratch{}", schema.len())),
            )
        };
        let kept = run("");
        assert_eq!(kept.counts.rows_out, 3, "discard keeps every row");
        let frozen = run("[schema]\non_new_column = \"freeze\"\n");
        assert_eq!(frozen.counts.rows_out, 1);
        assert_eq!(frozen.counts.rejected.get("invalid_value"), Some(&2));
        let q = std::fs::read_to_string(frozen.quarantine.unwrap().0).unwrap();
        assert!(q.contains("field \\\"extra\\\" is not declared"), "{q}");
        assert!(
            q.contains("field \\\"device.model\\\" is not declared"),
            "{q}"
        );
    }

    /// `[schema] on_new_column = "evolve"`: undeclared fields become nullable columns after the
    /// declared ones, typed from their values, nested ones named by their path; a field whose
    /// name a declared column has is not evolved. Pieces that meet new fields or wider types
    /// grow the partition's schema: each file has one schema, the last holds every column, and
    /// rows of earlier pieces read NULL for columns they lacked.
    #[test]
    fn evolve_adds_undeclared_fields_as_typed_columns() {
        use arrow::array::AsArray;
        let dir = tempfile::tempdir().unwrap();
        let mut input = String::new();
        for i in 0..10_000 {
            input.push_str(&format!("{{\"id\":\"r{i}\",\"device\":{{\"os\":\"ios\""));
            if i >= 5_000 {
                input.push_str(",\"model\":\"x1\"");
            }
            input.push_str("},\"os\":\"shadowed\"");
            match i {
                0..5_000 => {}
                5_000..9_000 => input.push_str(&format!(",\"coupon\":\"C{i}\",\"n\":{i}")),
                _ => input.push_str(",\"n\":1.5,\"flag\":true,\"meta\":{\"k\":[1]}"),
            }
            input.push_str("}\n");
        }
        std::fs::write(dir.path().join("in.ndjson"), input).unwrap();
        let text = "[pipeline]\nname = \"t\"\n[source]\nlocation = \".\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"os\"\npath = \"device.os\"\ntype = \"string\"\n\
                    [output]\ncolumns = [\"id\", \"os\"]\n[schema]\non_new_column = \"evolve\"\n";
        let p = config::parse(text, "t.toml", dir.path().to_path_buf()).unwrap();
        let plan = Plan::build(&p).unwrap();
        let out = run_whole(&plan, &p, dir.path(), "in.ndjson", &dir.path().join("s"));
        assert_eq!(out.counts.rows_out, 10_000);
        assert!(out.files.len() >= 2, "a grown schema opens a new file");
        let mut rows = 0;
        let mut last = None;
        for f in &out.files {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&f.local).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for rb in r {
                let rb = rb.unwrap();
                rows += rb.num_rows();
                last = Some(rb);
            }
        }
        assert_eq!(rows, 10_000);
        let rb = last.unwrap();
        let schema = rb.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["id", "os", "coupon", "device_model", "n", "flag", "meta"]
        );
        let n = rb.num_rows() - 1;
        let col = |name: &str| rb.column(schema.index_of(name).unwrap());
        assert_eq!(
            col("os").as_string::<i32>().value(n),
            "ios",
            "declared wins"
        );
        assert_eq!(col("n").data_type(), &arrow::datatypes::DataType::Float64);
        assert_eq!(
            col("n")
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(n),
            1.5
        );
        assert!(col("flag").as_boolean().value(n));
        assert!(col("coupon").is_null(n));
        assert_eq!(col("meta").as_string::<i32>().value(n), "{\"k\":[1]}");
        assert!(
            schema
                .fields()
                .iter()
                .skip(2)
                .all(|f| f.metadata().contains_key(protocol::EVOLVED_FIELD_KEY))
        );
    }

    /// A `json` column keeps any JSON value as its JSON text (objects, arrays, strings with
    /// their quotes); JSON null and a missing field are null; the Parquet field is marked with
    /// Arrow's JSON extension type.
    #[test]
    fn json_columns_keep_each_value_as_its_json_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("in.ndjson"),
            "{\"id\":\"a\",\"attrs\":{\"x\": [1, 2]}}\n{\"id\":\"b\",\"attrs\":\"str\"}\n\
             {\"id\":\"c\",\"attrs\":null}\n{\"id\":\"d\"}\n{\"id\":\"e\",\"attrs\":12.5}\n",
        )
        .unwrap();
        let text = "[pipeline]\nname = \"t\"\n[source]\nlocation = \".\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"attrs\"\ntype = \"json\"\n\
                    [output]\ncolumns = [\"id\", \"attrs\"]\n";
        let p = config::parse(text, "t.toml", dir.path().to_path_buf()).unwrap();
        let plan = Plan::build(&p).unwrap();
        let out = run_whole(
            &plan,
            &p,
            dir.path(),
            "in.ndjson",
            &dir.path().join("scratch"),
        );
        assert_eq!(out.counts.rows_out, 5);
        let rb = first_batch(&out);
        let field = rb.schema().field(1).clone();
        assert_eq!(
            field
                .metadata()
                .get("ARROW:extension:name")
                .map(String::as_str),
            Some("arrow.json")
        );
        let a = rb.column(1).as_string::<i32>();
        let got: Vec<Option<&str>> = (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i)))
            .collect();
        assert_eq!(
            got,
            [
                Some("{\"x\": [1, 2]}"),
                Some("\"str\""),
                None,
                None,
                Some("12.5")
            ]
        );
    }

    /// A warehouse's string limit (Redshift VARCHAR) quarantines the row with a longer output
    /// value, naming the column and its length; the written file records the longest value.
    #[test]
    fn strings_longer_than_the_warehouse_holds_are_quarantined_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("in.ndjson"),
            "{\"id\":\"a\",\"note\":\"abc\"}\n{\"id\":\"b\",\"note\":\"abcdefgh\"}\n{\"id\":\"c\"}\n",
        )
        .unwrap();
        let text = "[pipeline]\nname = \"t\"\n[source]\nlocation = \".\"\nformat = \"ndjson\"\n\
                    [[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"note\"\ntype = \"string\"\n\
                    [output]\ncolumns = [\"id\", \"note\"]\n";
        let p = config::parse(text, "t.toml", dir.path().to_path_buf()).unwrap();
        let mut plan = Plan::build(&p).unwrap();
        plan.max_string_bytes = Some(5);
        let out = run_whole(
            &plan,
            &p,
            dir.path(),
            "in.ndjson",
            &dir.path().join("scratch"),
        );
        assert_eq!(out.counts.rows_out, 2);
        assert_eq!(out.counts.rejected.get("too_long"), Some(&1));
        assert!(out.counts.reconciles());
        assert_eq!(out.files[0].max_bytes.get("note"), Some(&3));
        let q = std::fs::read_to_string(out.quarantine.unwrap().0).unwrap();
        assert!(q.contains("column \\\"note\\\" holds 8 bytes"), "{q}");
    }

    /// Parquet columns whose type differs from the declared one are converted value by value
    /// under the column's rules (a wider integer, a decimal-comma string); a value that does not
    /// fit quarantines its row with the reason and the row as JSON.
    #[test]
    fn parquet_columns_of_other_types_are_converted_under_the_column_rules() {
        use arrow::array::Int32Array;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("qty", DataType::Int32, true),
            Field::new("price", DataType::Utf8, true),
            Field::new("big", DataType::Int64, true),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec!["12,5", "0,99", "1"])),
                Arc::new(Int64Array::from(vec![7, 8, 5_000_000_000])),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::write(dir.path().join("in.parquet"), &buf).unwrap();
        let text = r#"
[pipeline]
name = "pq"
[source]
location = "."
format = "parquet"
[[columns]]
name = "id"
type = "string"
[[columns]]
name = "qty"
type = "int64"
[[columns]]
name = "price"
type = "decimal(10,2)"
decimal_separator = ","
[[columns]]
name = "big"
type = "int32"
[output]
columns = ["id", "qty", "price", "big"]
"#;
        let p = config::parse(text, "pq.toml", dir.path().to_path_buf()).unwrap();
        let plan = Plan::build(&p).unwrap();
        let out = run_whole(
            &plan,
            &p,
            dir.path(),
            "in.parquet",
            &dir.path().join("scratch"),
        );
        assert_eq!(
            (
                out.counts.rows_out,
                out.counts.rejected.get("invalid_value")
            ),
            (2, Some(&1))
        );
        let rb = first_batch(&out);
        let qty = rb.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!((qty.value(0), qty.is_null(1)), (1, true));
        let price = rb
            .column(2)
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!((price.value(0), price.value(1)), (1250, 99));
        let (qpath, _) = out.quarantine.expect("a quarantined row");
        let q = std::fs::read_to_string(qpath).unwrap();
        assert!(q.contains("5000000000 does not fit int32"), "{q}");
        assert!(q.contains(r#"\"id\":\"c\""#), "the row as JSON: {q}");
    }
}
