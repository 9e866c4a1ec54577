//! Warehouses: where finished Parquet is loaded, exactly once per [`LoadBatch`].
//!
//! Every implementation runs the same plan in ONE transaction:
//! 1. if the batch id is in the load ledger, stop (already loaded);
//! 2. create the target table if needed (columns from the Parquet schema, the partition columns,
//!    and the lineage columns `_tributary_source_object`, `_tributary_source_offset`,
//!    `_tributary_batch_id`);
//! 3. copy the batch's rows into a staging table;
//! 4. merge staging into the target by the merge keys, keeping for each key the row with the
//!    earliest source position (so the table does not depend on how the source was sharded; at
//!    the same position the later load wins: the source sent that place again), or append when
//!    the table has no merge keys;
//! 5. insert the batch id into the ledger; commit.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::LoadBatch;

use crate::Result;
use crate::object_store::ObjectStore;

pub const LEDGER_TABLE: &str = "_tributary_load_ledger";
pub const SOURCE_OBJECT_COLUMN: &str = "_tributary_source_object";
pub const SOURCE_OFFSET_COLUMN: &str = "_tributary_source_offset";
pub const BATCH_COLUMN: &str = "_tributary_batch_id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded {
        rows_staged: u64,
        rows_in_table: u64,
    },
    AlreadyLoaded,
}

/// A query result with every value rendered as text (`None` for NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// Renders an aligned text table, as a SQL shell would.
    pub fn to_table(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
        for r in &self.rows {
            for (i, v) in r.iter().enumerate() {
                widths[i] = widths[i].max(cell(v).chars().count());
            }
        }
        let line = |vals: Vec<String>| {
            vals.iter()
                .enumerate()
                .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let mut out = line(self.columns.clone());
        out.push('\n');
        out.push_str(
            &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-+-"),
        );
        for r in &self.rows {
            out.push('\n');
            out.push_str(&line(r.iter().map(cell).collect()));
        }
        out.push_str(&format!(
            "\n({} row{})",
            self.rows.len(),
            if self.rows.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

#[async_trait]
pub trait Warehouse: Send + Sync + std::fmt::Debug {
    fn describe(&self) -> String;
    /// Loads the batch's files (read from `files`) in one transaction; a batch already in the
    /// ledger is skipped.
    async fn load(&self, batch: &LoadBatch, files: Arc<dyn ObjectStore>) -> Result<LoadOutcome>;
    async fn is_loaded(&self, batch_id: &str) -> Result<bool>;
    async fn query(&self, sql: &str) -> Result<QueryResult>;
    /// The longest string value the warehouse holds, in bytes (Redshift: 65,535); workers
    /// quarantine a row with a longer one. `None`: no limit.
    fn max_string_bytes(&self) -> Option<u64> {
        None
    }
}

/// Quotes an SQL identifier (`"a""b"`), so table and column names from pipeline files are safe.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `ANALYZE table`: run after a load that changed more than the pipeline's `analyze_share` of
/// the table (see [`protocol::TableLayout::wants_analyze`]), outside the load transaction.
pub fn analyze_sql(table: &str) -> String {
    format!("ANALYZE {}", quote_ident(table))
}

/// A comma-separated list of quoted identifiers.
pub fn quote_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn format_decimal(v: i128, scale: i8) -> String {
    if scale <= 0 {
        return v.to_string();
    }
    let s = scale as u32;
    let p = 10i128.pow(s);
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!(
        "{sign}{}.{:0w$}",
        a / p as u128,
        a % p as u128,
        w = s as usize
    )
}

pub(crate) fn format_days(d: i32) -> String {
    let mut text = String::with_capacity(10);
    write_days(d, &mut text);
    text
}

/// [`format_days`] into `out`, replacing what it held.
pub(crate) fn write_days(d: i32, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let (y, m, dd) = crate::civil_from_days(d.into());
    let _ = write!(out, "{y:04}-{m:02}-{dd:02}");
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) of microseconds since the epoch: the text timestamps
/// SQLite's date functions read. Written digit by digit for years 0 to 9999 (one per timestamp
/// cell of every embedded load; `format!` was ~3 % of a load's profile), else through `format!`.
pub(crate) fn format_micros(us: i64) -> String {
    let mut text = String::with_capacity(26);
    write_micros(us, &mut text);
    text
}

/// [`format_micros`] into `out`, replacing what it held (a buffer reused cell after cell).
pub(crate) fn write_micros(us: i64, out: &mut String) {
    out.clear();
    let days = us.div_euclid(86_400_000_000);
    let rem = us.rem_euclid(86_400_000_000);
    let (y, m, d) = crate::civil_from_days(days);
    let secs = rem / 1_000_000;
    let (h, mi, s, f) = (secs / 3600, secs / 60 % 60, secs % 60, rem % 1_000_000);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(out, "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{f:06}");
        return;
    }
    let mut b = *b"0000-00-00 00:00:00.000000";
    let fields = [
        (0..4, y),
        (5..7, m.into()),
        (8..10, d.into()),
        (11..13, h),
        (14..16, mi),
        (17..19, s),
        (20..26, f),
    ];
    for (at, v) in fields {
        put_digits(&mut b[at], v);
    }
    out.push_str(std::str::from_utf8(&b).expect("ASCII digits and separators"));
}

/// `v` (non-negative, fitting) as the decimal digits of `out`, zero-padded.
fn put_digits(out: &mut [u8], mut v: i64) {
    for c in out.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A timestamp column's value at `i` in microseconds since the epoch, whatever its unit.
pub(crate) fn timestamp_micros(
    col: &dyn arrow::array::Array,
    unit: &arrow::datatypes::TimeUnit,
    i: usize,
) -> i64 {
    use arrow::array::AsArray;
    use arrow::datatypes::{self as t, TimeUnit};
    match unit {
        TimeUnit::Second => col.as_primitive::<t::TimestampSecondType>().value(i) * 1_000_000,
        TimeUnit::Millisecond => col.as_primitive::<t::TimestampMillisecondType>().value(i) * 1000,
        TimeUnit::Microsecond => col.as_primitive::<t::TimestampMicrosecondType>().value(i),
        TimeUnit::Nanosecond => col.as_primitive::<t::TimestampNanosecondType>().value(i) / 1000,
    }
}

pub mod evolve;
pub mod plan;
pub(crate) mod postgres;
#[cfg(feature = "aws")]
mod redshift;
mod redshift_settings;
pub mod shapes;
pub mod spectrum;
pub mod split;
pub use postgres::PostgresWarehouse;
#[cfg(feature = "aws")]
pub use redshift::RedshiftWarehouse;
pub use redshift_settings::RedshiftSettings;

#[cfg(feature = "embedded-warehouse")]
mod sqlite;
#[cfg(feature = "embedded-warehouse")]
mod sqlite_bulk;
#[cfg(feature = "embedded-warehouse")]
mod sqlite_cells;
#[cfg(feature = "embedded-warehouse")]
mod sqlite_insert;
#[cfg(feature = "embedded-warehouse")]
mod sqlite_read;
#[cfg(feature = "embedded-warehouse")]
mod sqlite_writeback;
#[cfg(feature = "embedded-warehouse")]
pub use sqlite::{SqliteWarehouse, query_file};

/// The shared test suite every [`Warehouse`] must pass. It writes its own Parquet files into
/// `files`.
pub mod suite {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use protocol::{LoadFile, OutputFile, SourcePosition};

    pub(crate) async fn write_file(
        files: &dyn ObjectStore,
        key: &str,
        ids: &[&str],
        vals: &[i64],
    ) -> OutputFile {
        let vals = Arc::new(Int64Array::from(vals.to_vec())) as ArrayRef;
        write_typed(files, key, ids, vals).await
    }

    /// A file of `id` strings and a `val` column of any type.
    async fn write_typed(
        files: &dyn ObjectStore,
        key: &str,
        ids: &[&str],
        vals: ArrayRef,
    ) -> OutputFile {
        let field = Field::new("val", vals.data_type().clone(), true);
        write_field(files, key, ids, field, vals).await
    }

    /// A file of `id` strings and one `val` field as given (with its metadata).
    async fn write_field(
        files: &dyn ObjectStore,
        key: &str,
        ids: &[&str],
        field: Field,
        vals: ArrayRef,
    ) -> OutputFile {
        let id = Field::new("id", DataType::Utf8, false);
        let ids = Arc::new(StringArray::from(ids.to_vec())) as ArrayRef;
        write_columns(files, key, vec![(id, ids), (field, vals)]).await
    }

    /// A file of the given columns, partition `day=2025-05-01`.
    pub(crate) async fn write_columns(
        files: &dyn ObjectStore,
        key: &str,
        columns: Vec<(Field, ArrayRef)>,
    ) -> OutputFile {
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
        let rows = arrays[0].len() as u64;
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bytes = buf.len() as u64;
        files.put(key, buf).await.unwrap();
        OutputFile {
            max_bytes: Default::default(),
            key: key.into(),
            partition: vec![("day".into(), "2025-05-01".into())],
            rows,
            bytes,
        }
    }

    pub(crate) fn load_file(file: OutputFile, object: &str, offset: u64, index: u32) -> LoadFile {
        LoadFile {
            file,
            shard_index: index,
            position: SourcePosition {
                object: object.into(),
                offset,
            },
        }
    }

    pub(crate) fn batch(id: &str, table: &str, files: Vec<LoadFile>) -> LoadBatch {
        LoadBatch {
            batch_id: id.into(),
            run_id: "r1".into(),
            table: table.into(),
            merge_keys: vec!["id".into()],
            shards: files
                .iter()
                .map(|f| format!("s{}", f.shard_index))
                .collect(),
            files,
            masked_columns: vec![],
            layout: Default::default(),
            external: None,
        }
    }

    async fn table_rows(wh: &dyn Warehouse, table: &str) -> Vec<Vec<Option<String>>> {
        wh.query(&format!(
            "SELECT id, val, day FROM {} ORDER BY id",
            quote_ident(table)
        ))
        .await
        .unwrap()
        .rows
    }

    fn row(id: &str, val: i64) -> Vec<Option<String>> {
        vec![
            Some(id.into()),
            Some(val.to_string()),
            Some("2025-05-01".into()),
        ]
    }

    pub async fn run_all(wh: &dyn Warehouse, files: Arc<dyn ObjectStore>) {
        // Two shards with an overlapping key "b": shard 0 (earlier in the source) must win,
        // whichever batch is loaded first.
        let f0 = write_file(&*files, "wh-suite/p0.parquet", &["a", "b"], &[1, 2]).await;
        let f1 = write_file(&*files, "wh-suite/p1.parquet", &["b", "c"], &[20, 30]).await;
        let later = batch(
            "r1-t-b0001",
            "suite events",
            vec![load_file(f1.clone(), "raw/x", 500, 1)],
        );
        let earlier = batch(
            "r1-t-b0000",
            "suite events",
            vec![load_file(f0.clone(), "raw/x", 0, 0)],
        );

        assert!(!wh.is_loaded("r1-t-b0001").await.unwrap());
        let out = wh.load(&later, files.clone()).await.unwrap();
        assert_eq!(
            out,
            LoadOutcome::Loaded {
                rows_staged: 2,
                rows_in_table: 2
            }
        );
        assert!(wh.is_loaded("r1-t-b0001").await.unwrap());
        let out = wh.load(&earlier, files.clone()).await.unwrap();
        assert_eq!(
            out,
            LoadOutcome::Loaded {
                rows_staged: 2,
                rows_in_table: 3
            }
        );
        let want = vec![row("a", 1), row("b", 2), row("c", 30)];
        assert_eq!(table_rows(wh, "suite events").await, want);

        // Exactly once: the same batch again changes nothing.
        assert_eq!(
            wh.load(&later, files.clone()).await.unwrap(),
            LoadOutcome::AlreadyLoaded
        );
        assert_eq!(
            wh.load(&earlier, files.clone()).await.unwrap(),
            LoadOutcome::AlreadyLoaded
        );
        assert_eq!(table_rows(wh, "suite events").await, want);

        // The same place of the source loaded again by a later run (an object rewritten under
        // its key) replaces what was loaded from there; an earlier place still wins.
        let rewritten = write_file(&*files, "wh-suite/p0b.parquet", &["a", "b"], &[100, 200]).await;
        let again = batch(
            "r3-t-b0000",
            "suite events",
            vec![load_file(rewritten, "raw/x", 0, 0)],
        );
        wh.load(&again, files.clone()).await.unwrap();
        let rewritten_rows = vec![row("a", 100), row("b", 200), row("c", 30)];
        assert_eq!(table_rows(wh, "suite events").await, rewritten_rows);

        // One batch holding both shards gives the same table.
        let both = batch(
            "r2-t-b0000",
            "suite events 2",
            vec![load_file(f1, "raw/x", 500, 1), load_file(f0, "raw/x", 0, 0)],
        );
        wh.load(&both, files.clone()).await.unwrap();
        assert_eq!(table_rows(wh, "suite events 2").await, want);

        // A batch whose file is missing fails as a whole and is not recorded.
        let missing = OutputFile {
            max_bytes: Default::default(),
            key: "wh-suite/none.parquet".into(),
            partition: vec![],
            rows: 1,
            bytes: 1,
        };
        let bad = batch(
            "r1-t-b0009",
            "suite events",
            vec![load_file(missing, "raw/y", 0, 9)],
        );
        let err = wh.load(&bad, files.clone()).await.unwrap_err().to_string();
        assert!(err.contains("wh-suite/none.parquet"), "{err}");
        assert!(!wh.is_loaded("r1-t-b0009").await.unwrap());
        assert_eq!(table_rows(wh, "suite events").await, rewritten_rows);

        evolution(wh, files.clone()).await;
        mixed_shapes(wh, files.clone()).await;

        // Bad SQL is an error naming the problem, not a panic.
        assert!(wh.query("SELEC nonsense").await.is_err());
    }

    /// An `id` column of `ids`.
    fn id_column(ids: Vec<&str>) -> (Field, ArrayRef) {
        (
            Field::new("id", DataType::Utf8, false),
            Arc::new(StringArray::from(ids)) as ArrayRef,
        )
    }

    /// A file of `id` and one more column `(name, values)`.
    async fn write_pair(
        files: &dyn ObjectStore,
        key: &str,
        id: &str,
        field: Field,
        vals: ArrayRef,
    ) -> OutputFile {
        write_columns(files, key, vec![id_column(vec![id]), (field, vals)]).await
    }

    /// A batch of `fs` into `table`, each file at its own source position.
    fn batch_of(id: &str, table: &str, fs: Vec<OutputFile>) -> LoadBatch {
        let lfs = fs
            .into_iter()
            .enumerate()
            .map(|(i, f)| load_file(f, "raw/m", i as u64 * 100, i as u32))
            .collect();
        batch(id, table, lfs)
    }

    async fn rows_of(wh: &dyn Warehouse, sql: &str) -> Vec<Vec<Option<String>>> {
        wh.query(sql).await.unwrap().rows
    }

    fn text(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    /// Issue 9: one batch whose files differ in schema (shards of different pipeline versions, or
    /// JSON fields met under `on_new_column = "evolve"`) loads as the union of the files: a
    /// column at its widest type, NULL where a file lacks it; irreconcilable types refuse the
    /// batch naming both files, with nothing loaded.
    async fn mixed_shapes(wh: &dyn Warehouse, files: Arc<dyn ObjectStore>) {
        use arrow::array::{BooleanArray, Int32Array};
        let val = |t: DataType| Field::new("val", t, true);
        let f0 = write_pair(
            &*files,
            "wh-suite/m0.parquet",
            "a",
            val(DataType::Int32),
            Arc::new(Int32Array::from(vec![7])),
        )
        .await;
        let f1 = write_columns(
            &*files,
            "wh-suite/m1.parquet",
            vec![
                id_column(vec!["b"]),
                (
                    val(DataType::Int64),
                    Arc::new(Int64Array::from(vec![5_000_000_000])),
                ),
                (
                    Field::new("note", DataType::Utf8, true),
                    Arc::new(StringArray::from(vec!["new"])),
                ),
            ],
        )
        .await;
        let b = batch_of("r8-m-b0000", "suite shapes", vec![f0.clone(), f1]);
        wh.load(&b, files.clone()).await.unwrap();
        let got = rows_of(wh, "SELECT id, val, note FROM \"suite shapes\" ORDER BY id").await;
        assert_eq!(
            got,
            vec![
                vec![text("a"), text("7"), None],
                vec![text("b"), text("5000000000"), text("new")]
            ]
        );

        let f2 = write_pair(
            &*files,
            "wh-suite/m2.parquet",
            "c",
            val(DataType::Boolean),
            Arc::new(BooleanArray::from(vec![true])),
        )
        .await;
        let bad = batch_of("r9-m-b0000", "suite shapes", vec![f0, f2]);
        let msg = wh.load(&bad, files.clone()).await.unwrap_err().to_string();
        for want in [
            "column \"val\"",
            "wh-suite/m0.parquet",
            "wh-suite/m2.parquet",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        assert!(!wh.is_loaded("r9-m-b0000").await.unwrap());
        evolved_shapes(wh, files).await;
    }

    /// Evolved columns (types inferred by the worker): a conflict keeps the values' text,
    /// across the files of a batch and against the table.
    async fn evolved_shapes(wh: &dyn Warehouse, files: Arc<dyn ObjectStore>) {
        use arrow::array::BooleanArray;
        let ev = |t: DataType| evolve::mark_evolved(Field::new("x", t, true));
        let e0 = write_pair(
            &*files,
            "wh-suite/v0.parquet",
            "a",
            ev(DataType::Int64),
            Arc::new(Int64Array::from(vec![5])),
        )
        .await;
        let e1 = write_pair(
            &*files,
            "wh-suite/v1.parquet",
            "b",
            ev(DataType::Boolean),
            Arc::new(BooleanArray::from(vec![true])),
        )
        .await;
        let e2 = write_pair(
            &*files,
            "wh-suite/v2.parquet",
            "c",
            ev(DataType::Utf8),
            Arc::new(StringArray::from(vec!["s"])),
        )
        .await;
        let table = "suite evolved";
        wh.load(&batch_of("r10-v-b0000", table, vec![e0]), files.clone())
            .await
            .unwrap();
        wh.load(&batch_of("r11-v-b0000", table, vec![e1, e2]), files.clone())
            .await
            .unwrap();
        let got = rows_of(wh, "SELECT id, x FROM \"suite evolved\" ORDER BY id").await;
        let bool_text = got[1][1].clone().unwrap_or_default();
        assert!(
            ["true", "1"].contains(&bool_text.as_str()),
            "a boolean's text: {got:?}"
        );
        assert_eq!(
            (got[0][1].clone(), got[2][1].clone()),
            (text("5"), text("s"))
        );
    }

    /// Type widening between loads (int32 then int64), a narrowing refused naming the column and
    /// both types with nothing loaded, and decimals read back exactly.
    async fn evolution(wh: &dyn Warehouse, files: Arc<dyn ObjectStore>) {
        use arrow::array::{Decimal128Array, Int16Array, Int32Array};
        let load =
            |id: &str, f: OutputFile| batch(id, "suite evolve", vec![load_file(f, "raw/e", 0, 0)]);
        let i32s = Arc::new(Int32Array::from(vec![7])) as ArrayRef;
        let f = write_typed(&*files, "wh-suite/e0.parquet", &["a"], i32s).await;
        wh.load(&load("r3-e-b0000", f), files.clone())
            .await
            .unwrap();
        let i64s = Arc::new(Int64Array::from(vec![5_000_000_000])) as ArrayRef;
        let f = write_typed(&*files, "wh-suite/e1.parquet", &["b"], i64s).await;
        wh.load(&load("r4-e-b0000", f), files.clone())
            .await
            .unwrap();
        let want = vec![row("a", 7), row("b", 5_000_000_000)];
        assert_eq!(table_rows(wh, "suite evolve").await, want);

        let i16s = Arc::new(Int16Array::from(vec![1])) as ArrayRef;
        let f = write_typed(&*files, "wh-suite/e2.parquet", &["c"], i16s).await;
        let err = wh
            .load(&load("r5-e-b0000", f), files.clone())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("column \"val\"") && msg.contains("(int64)") && msg.contains("(int16)"),
            "{msg}"
        );
        assert!(!err.is_retryable(), "{msg}");
        assert!(!wh.is_loaded("r5-e-b0000").await.unwrap());
        assert_eq!(table_rows(wh, "suite evolve").await, want);

        let decimals = Decimal128Array::from(vec![100_500, 8_113_618])
            .with_precision_and_scale(18, 2)
            .unwrap();
        let f = write_typed(
            &*files,
            "wh-suite/d0.parquet",
            &["a", "b"],
            Arc::new(decimals),
        )
        .await;
        let b = batch(
            "r6-d-b0000",
            "suite decimals",
            vec![load_file(f, "raw/d", 0, 0)],
        );
        wh.load(&b, files.clone()).await.unwrap();
        let got = wh
            .query("SELECT val FROM \"suite decimals\" ORDER BY id")
            .await
            .unwrap()
            .rows;
        assert_eq!(
            got,
            vec![vec![Some("1005.00".into())], vec![Some("81136.18".into())]]
        );

        // A field marked with Arrow's JSON extension type loads as JSON (jsonb on PostgreSQL).
        let json = Field::new("val", DataType::Utf8, true)
            .with_metadata([("ARROW:extension:name".to_string(), "arrow.json".to_string())].into());
        let vals = Arc::new(StringArray::from(vec![Some(r#"{"tier": "gold"}"#), None])) as ArrayRef;
        let f = write_field(&*files, "wh-suite/j0.parquet", &["a", "b"], json, vals).await;
        let b = batch(
            "r7-j-b0000",
            "suite json",
            vec![load_file(f, "raw/j", 0, 0)],
        );
        wh.load(&b, files.clone()).await.unwrap();
        let got = wh
            .query("SELECT val FROM \"suite json\" ORDER BY id")
            .await
            .unwrap()
            .rows;
        assert_eq!(
            got,
            vec![vec![Some(r#"{"tier": "gold"}"#.into())], vec![None]]
        );
    }
}
