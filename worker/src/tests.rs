//! Whole shards through the engine: Parquet, JSON and CSV inputs, the `[schema]` modes, the
//! string limit and scratch handling (the engine's parts have their unit tests beside them).

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
        extract: None,
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

/// Every stage of the shard took some time: read, parse, transform, encode.
fn assert_every_stage_timed(out: &ShardOutput) {
    let t = out.times;
    let stages = [t.read, t.parse, t.transform, t.encode];
    assert!(stages.iter().all(|d| !d.is_zero()), "{t:?}");
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
    assert_every_stage_timed(&out);
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
    // The manifest's digest is of what the shard wrote, evolved columns included.
    assert_eq!(out.schema.fields().len(), 7);
    assert_ne!(
        plan.schema_digest(&out.schema),
        plan.schema_digest(&plan.output_schema)
    );
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
    assert_every_stage_timed(&out);
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

const PIPELINED: &str = r#"
[pipeline]
name = "pipelined"
[source]
location = "."
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "v"
type = "int64"
[[columns]]
name = "ts"
type = "timestamp"
[[steps]]
op = "dedupe"
keys = ["id"]
[output]
columns = ["id", "v", "ts"]
row_group_rows = 3
"#;

/// A shard's state writing under `dir` (files of shard `s0` under `out/`, quarantine `q.ndjson`).
fn shard_state(plan: &Plan, dir: &Path) -> ShardState {
    ShardState::new(
        plan,
        engine::Writers::new(plan, dir, "out", "s0"),
        dir.join("q.ndjson"),
    )
}

/// A chunk of NDJSON lines, as the reader makes them.
fn chunk_of(lines: &[String], first_line: u64) -> engine::Chunk {
    let mut c = engine::new_chunk(&Arc::from("in.ndjson"), &None, Some(first_line));
    for l in lines {
        let s = c.buf.len();
        c.buf.extend_from_slice(l.as_bytes());
        c.spans.push((s, c.buf.len()));
        c.offsets.push(s as u64);
    }
    c
}

#[test]
fn pipelined_chunks_keep_the_first_row_of_a_key_and_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = config::parse(PIPELINED, "t.toml", dir.path().to_path_buf()).unwrap();
    let plan = Plan::build(&p).unwrap();
    let mut st = shard_state(&plan, dir.path());
    let line = |id: &str, v: i64| format!(r#"{{"id":"{id}","v":{v},"ts":"2025-05-01T10:00:00Z"}}"#);
    // Chunk 2 repeats a key of chunk 0 and chunk 3 one of chunk 2: while chunk N+1 is parsed,
    // chunk N's dedupe must already have seen every earlier chunk.
    let chunks = vec![
        chunk_of(&[line("a", 1), line("b", 2)], 0),
        chunk_of(&[line("c", 3), "not json".into()], 2),
        chunk_of(&[line("a", 10), line("d", 4)], 4),
        chunk_of(&[line("d", 40), line("e", 5), line("f", 6)], 6),
    ];
    engine::process_chunks(&plan, chunks.into_iter(), &Default::default(), &mut st).unwrap();
    assert_eq!(st.counts.lines_total, 9);
    assert_eq!((st.counts.malformed, st.counts.duplicates), (1, 2));
    let files = st.writers.finish().unwrap();
    assert_eq!(files.len(), 1);
    let f = std::fs::File::open(&files[0].local).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    // Row groups of 3 rows, each encoded column by column in parallel.
    assert_eq!(reader.metadata().num_row_groups(), 2);
    // The Arrow schema travels in the footer: the timestamp keeps its zone.
    assert_eq!(
        reader.schema().field_with_name("ts").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let batches: Vec<_> = reader.build().unwrap().map(Result::unwrap).collect();
    let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let ids: Vec<&str> = rows.column(0).as_string::<i32>().iter().flatten().collect();
    let vs: Vec<i64> = rows
        .column(1)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(vs, [1, 2, 3, 4, 5, 6]);
}

const ROLLING: &str = r#"
[pipeline]
name = "rolling"
[source]
location = "."
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "v"
type = "int64"
[[columns]]
name = "kind"
type = "string"
[output]
columns = ["id", "v"]
partition_by = ["kind"]
row_group_rows = 40
target_file_bytes = 1500
"#;

/// A written file: its key, its row groups' row counts, its bytes and its `v` values.
type FileSeen = (String, Vec<i64>, Vec<u8>, Vec<i64>);

/// The shard's files, in key order, as [`FileSeen`].
fn files_of(files: &[engine::WrittenFile]) -> Vec<FileSeen> {
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(&f.local).unwrap();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(bytes.clone()),
            )
            .unwrap();
            let groups = (0..reader.metadata().num_row_groups())
                .map(|g| reader.metadata().row_group(g).num_rows())
                .collect();
            let vs = reader
                .build()
                .unwrap()
                .flat_map(|b| {
                    b.unwrap()
                        .column(1)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect();
            (f.key.clone(), groups, bytes, vs)
        })
        .collect()
}

/// Row groups are encoded on the pool while the chunk loop goes on, and appended later: each
/// partition's files must still hold its rows in order, roll over at their target size as when
/// groups were written in place, and be the same bytes on every run, whatever the timing.
#[test]
fn row_groups_encoded_on_the_pool_keep_row_order_and_the_same_files_every_run() {
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        let p = config::parse(ROLLING, "t.toml", dir.path().to_path_buf()).unwrap();
        let plan = Plan::build(&p).unwrap();
        let mut st = shard_state(&plan, dir.path());
        let kinds = ["a", "b", "c"];
        let chunks: Vec<engine::Chunk> = (0..30)
            .map(|c| {
                let lines: Vec<String> = (0..37)
                    .map(|i| {
                        let v = c * 37 + i;
                        let kind = kinds[(v / 11 % 3) as usize];
                        format!(r#"{{"id":"id-{v:08}","v":{v},"kind":"{kind}"}}"#)
                    })
                    .collect();
                chunk_of(&lines, c as u64 * 37)
            })
            .collect();
        engine::process_chunks(&plan, chunks.into_iter(), &Default::default(), &mut st).unwrap();
        let files = files_of(&st.writers.finish().unwrap());
        (dir, files)
    };
    let (_d1, first) = run();
    for (key, groups, _, vs) in &first {
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "{key}: rows out of order"
        );
        assert!(groups.iter().all(|g| *g <= 40), "{key}: {groups:?}");
    }
    let partition = |k: &str| k.split('/').nth(1).unwrap().to_string();
    let expected = |kind: &str| {
        (0..1110)
            .filter(|v| format!("kind={}", ["a", "b", "c"][v / 11 % 3]) == kind)
            .count()
    };
    for kind in ["kind=a", "kind=b", "kind=c"] {
        let vs: Vec<i64> = first
            .iter()
            .filter(|f| partition(&f.0) == kind)
            .flat_map(|f| f.3.clone())
            .collect();
        assert!(
            vs.windows(2).all(|w| w[0] < w[1]),
            "{kind}: files out of order"
        );
        assert_eq!(vs.len(), expected(kind), "{kind}");
    }
    assert!(
        first.iter().filter(|f| partition(&f.0) == "kind=a").count() > 1,
        "files roll over at their target size"
    );
    for _ in 0..3 {
        let (_d, again) = run();
        assert_eq!(again.len(), first.len());
        for (a, b) in again.iter().zip(&first) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1));
            assert!(a.2 == b.2, "{}: different bytes on another run", a.0);
        }
    }
}

/// The first chunk sizes the dedupe key set for the whole input (at its rate of rows that reach
/// the dedupe per source byte), so the set does not grow, re-hashing its keys on the ordered
/// path, as the shard goes on.
#[test]
fn the_key_set_is_sized_for_the_input_by_its_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let p = config::parse(PIPELINED, "t.toml", dir.path().to_path_buf()).unwrap();
    let plan = Plan::build(&p).unwrap();
    let mut st = shard_state(&plan, dir.path());
    // Every other line is malformed: half of the records reach the dedupe.
    let lines: Vec<String> = (0..100)
        .map(|i| match i % 2 {
            0 => format!(r#"{{"id":"k{i:05}","v":{i},"ts":"2025-05-01T10:00:00Z"}}"#),
            _ => format!(r#"{{"id":"k{i:05}","v":{i},"ts":"2025-05-01T10:00:00Z""#),
        })
        .collect();
    let first = chunk_of(&lines, 0);
    // An input 500 times the first chunk: 50,000 records, 25,000 keys.
    st.expected_bytes = Some(first.buf.len() as u64 * 500);
    engine::process_chunks(&plan, std::iter::once(first), &Default::default(), &mut st).unwrap();
    assert_eq!((st.seen.len(), st.counts.malformed), (50, 50));
    let room = st.seen.table.capacity();
    assert!(
        (25_000..50_000).contains(&room),
        "room for the keys, not for every record: {room}"
    );
    assert_eq!(st.expected_bytes, None, "sized once");
}
