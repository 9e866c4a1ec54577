//! The embedded warehouse: one SQLite database file that users open with `coordinator sql` or any
//! SQLite client.
//!
//! One dedicated thread owns the connection; async callers send it jobs and await the answer, so
//! neither Parquet decoding nor SQLite work runs on tokio threads.
//!
//! Type mapping (declared types name the pipeline type, see [`ColType::sqlite`]): strings → TEXT;
//! int16, int32, int64 → SMALLINT, INTEGER, BIGINT and booleans → BOOLEAN (all stored as
//! integers); float32 → REAL, float64 → DOUBLE; decimal(P,S) with P ≤ 15 → DECIMAL(P,S)
//! (NUMERIC affinity: compared and sorted as numbers by every SQLite client, and exact, since a
//! double holds 15 significant digits); decimal(P,S) with P > 15 → DECIMAL_BLOB(P,S) (no
//! affinity: a value of at most 15 significant digits stored as a number, a longer one as its
//! exact text, see [`decimal_value`]); both read back with their scale's digits by
//! `coordinator sql` (see [`render`]); timestamps → TEXT `YYYY-MM-DD HH:MM:SS.ffffff` in UTC (what SQLite's date
//! functions read), dates → TEXT `YYYY-MM-DD`, partition columns → TEXT. Types widen between
//! loads as on the other warehouses (see `evolve`).

use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use async_trait::async_trait;
use protocol::LoadBatch;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, params};

use super::evolve::{Change, ColType, SQLITE_EXACT_DIGITS, reconcile};
use super::sqlite_cells::Cells;
use super::sqlite_insert::GroupInsert;
use super::sqlite_writeback::{INTERVAL as WRITEBACK_INTERVAL, Writeback, open_for_writeback};
use super::{
    BATCH_COLUMN, LEDGER_TABLE, LoadOutcome, QueryResult, SOURCE_OBJECT_COLUMN,
    SOURCE_OFFSET_COLUMN, Warehouse, format_days, format_decimal, format_micros, quote_ident,
    quote_list,
};
use crate::object_store::ObjectStore;
use crate::{BackendError, Result};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

#[derive(Debug)]
pub struct SqliteWarehouse {
    path: std::path::PathBuf,
    jobs: mpsc::Sender<Job>,
    /// The file, opened once for the loads' early writeback (and never closed:
    /// `sqlite_writeback::open_for_writeback` says why).
    pages: Option<Arc<std::fs::File>>,
}

pub(super) fn wh_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Warehouse(e.to_string())
}

impl SqliteWarehouse {
    /// Opens (creating if needed) the database file and its load ledger.
    pub fn open(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BackendError::io(dir.display(), e))?;
        }
        let conn =
            Connection::open(&path).map_err(|e| wh_err(format!("open {}: {e}", path.display())))?;
        // 16 KiB pages for a new file (an existing one keeps its own): a bulk load handles a
        // quarter as many b-tree pages as with SQLite's default 4 KiB.
        let init = |e: rusqlite::Error| wh_err(format!("initialise {}: {e}", path.display()));
        conn.execute_batch(&format!("PRAGMA page_size={PAGE_BYTES}"))
            .map_err(init)?;
        conn.busy_timeout(LOCK_WAIT).map_err(init)?;
        use_rollback_journal(&conn, &path);
        // A full sync at each commit (one per load batch: a load the coordinator records as
        // done is on disk); a 64 MiB page cache, so merging into a large table's key index
        // does not go to disk for every row. A sort larger than the page cache (the key index
        // a bulk load builds over more than ~1.3M keys) spills its runs to a temporary file
        // (`TEMP_STORE`), not to the heap.
        conn.execute_batch(&format!(
            "PRAGMA synchronous=FULL; PRAGMA cache_size=-65536; PRAGMA temp_store={TEMP_STORE};
             CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
               batch_id TEXT PRIMARY KEY, table_name TEXT NOT NULL, run_id TEXT NOT NULL,
               files INTEGER NOT NULL, rows_staged INTEGER NOT NULL, loaded_at TEXT NOT NULL)"
        ))
        .map_err(init)?;
        let pages = open_for_writeback(&path);
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("warehouse".into())
            .spawn(move || {
                let mut conn = conn;
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| BackendError::io("warehouse thread", e))?;
        Ok(SqliteWarehouse {
            path,
            jobs: tx,
            pages,
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| wh_err("warehouse thread has stopped"))?;
        rx.await
            .map_err(|_| wh_err("warehouse thread has stopped"))?
    }
}

/// The page size of a new warehouse file.
const PAGE_BYTES: u32 = 16 << 10;

/// Where the warehouse connection's temporary data goes: `FILE`, an unlinked file in SQLite's
/// temporary directory (`SQLITE_TMPDIR`, `TMPDIR`, `/var/tmp`, `/tmp`), which the kernel keeps in
/// its page cache and writes back only under pressure. With `MEMORY` the sorted runs of a large
/// index build were kept on the heap: a 5M-row `coordinator run` peaked ~95 MB higher at the
/// same speed (BENCHMARKS.md, stop 32). A sort that fits the page cache never spills either way.
const TEMP_STORE: &str = "FILE";

/// How long the warehouse's connection, and `coordinator sql`, wait for a lock another
/// connection holds (a load being written, a reader in the middle of a statement) before the
/// statement fails with "database is locked".
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Puts the file in SQLite's rollback-journal mode (`DELETE`, SQLite's default), converting a
/// warehouse an earlier version left in WAL mode. A load writes its new pages once, into the
/// file; under WAL they were written twice (into the WAL, then copied by the checkpoint), the
/// larger part of a load's commit (`bench/sqlite_modes.py`, BENCHMARKS.md). The cost: while a
/// load spills to or commits into the file, readers in other processes wait for it (up to
/// [`LOCK_WAIT`]) instead of reading the state before it. If another connection holds the file
/// open, the mode stays as it is (loads are as correct, only slower) and a warning says so.
fn use_rollback_journal(conn: &Connection, path: &std::path::Path) {
    let mode = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0));
    match mode {
        Ok(m) if m.eq_ignore_ascii_case("delete") => {}
        Ok(m) => tracing::warn!(path = %path.display(), mode = %m,
            "the embedded warehouse stays in its journal mode: another connection holds it open"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e,
            "the embedded warehouse stays in its journal mode"),
    }
}

fn col_type(dt: &DataType) -> Result<ColType> {
    ColType::from_arrow(dt).ok_or_else(|| {
        wh_err(format!(
            "column type {dt} cannot be loaded into the embedded warehouse"
        ))
    })
}

/// The f64 with the same shortest decimal form as `v` (a float32 stored in a REAL column).
fn float32_as_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// How a decimal is stored so that it reads back exactly: an INTEGER when it is whole and fits
/// one, a REAL when it has at most [`SQLITE_EXACT_DIGITS`] significant digits (a double holds
/// those exactly: its shortest decimal form is the value), else its exact text. Only a
/// `DECIMAL_BLOB(P,S)` column (no affinity) keeps the text; a `DECIMAL(P,S)` column holds at
/// most 15 digits, so nothing of it is lost.
pub(super) fn decimal_value(v: i128, scale: i8) -> Value {
    if scale <= 0 {
        let whole = v.checked_mul(10i128.pow(u32::from(scale.unsigned_abs())));
        if let Some(i) = whole.and_then(|w| i64::try_from(w).ok()) {
            return Value::Integer(i);
        }
    }
    let text = format_decimal(v, scale);
    if significant_digits(&text) <= SQLITE_EXACT_DIGITS as usize
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Real(f);
    }
    Value::Text(text)
}

/// The significant digits of a plain decimal text (`-0.0120` has 2).
fn significant_digits(text: &str) -> usize {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    let digits = if text.contains('.') {
        digits.trim_end_matches('0')
    } else {
        digits
    };
    digits.len()
}

pub(super) fn value_at(col: &dyn Array, i: usize) -> Result<Value> {
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    use arrow::datatypes as t;
    Ok(match col.data_type() {
        DataType::Utf8 => Value::Text(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::Text(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::Text(col.as_string_view().value(i).to_string()),
        DataType::Int8 => Value::Integer(col.as_primitive::<t::Int8Type>().value(i).into()),
        DataType::Int16 => Value::Integer(col.as_primitive::<t::Int16Type>().value(i).into()),
        DataType::Int32 => Value::Integer(col.as_primitive::<t::Int32Type>().value(i).into()),
        DataType::Int64 => Value::Integer(col.as_primitive::<t::Int64Type>().value(i)),
        DataType::UInt8 => Value::Integer(col.as_primitive::<t::UInt8Type>().value(i).into()),
        DataType::UInt16 => Value::Integer(col.as_primitive::<t::UInt16Type>().value(i).into()),
        DataType::UInt32 => Value::Integer(col.as_primitive::<t::UInt32Type>().value(i).into()),
        DataType::UInt64 => Value::Integer(col.as_primitive::<t::UInt64Type>().value(i) as i64),
        DataType::Boolean => Value::Integer(col.as_boolean().value(i).into()),
        // Through its shortest decimal form, so 0.1f32 reads back as 0.1, not 0.10000000149011612.
        DataType::Float32 => Value::Real(float32_as_f64(
            col.as_primitive::<t::Float32Type>().value(i),
        )),
        DataType::Float64 => Value::Real(col.as_primitive::<t::Float64Type>().value(i)),
        DataType::Decimal128(_, s) => {
            decimal_value(col.as_primitive::<t::Decimal128Type>().value(i), *s)
        }
        DataType::Timestamp(unit, _) => {
            let raw = super::timestamp_micros(col, unit, i);
            Value::Text(format_micros(raw))
        }
        DataType::Date32 => {
            let d = col.as_primitive::<t::Date32Type>().value(i);
            Value::Text(format_days(d))
        }
        other => return Err(wh_err(format!("unsupported column type {other}"))),
    })
}

/// The table's columns and declared types, in table order (empty if it does not exist).
fn existing_columns(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let mut st = conn
        .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
        .map_err(wh_err)?;
    let cols = st
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .map_err(wh_err)?;
    cols.collect::<Result<Vec<_>, _>>().map_err(wh_err)
}

/// The columns one file loads: its own, the partition columns, then lineage.
fn file_columns(schema: &Schema, partition: &[(String, String)]) -> Result<Vec<(String, ColType)>> {
    let text = || ColType::Text { max_bytes: None };
    let mut defs = Vec::new();
    for f in schema.fields() {
        let ty = match ColType::of_field(f) {
            Some(t) => t,
            None => col_type(f.data_type())?,
        };
        defs.push((f.name().clone(), ty));
    }
    for (col, _) in partition {
        defs.push((col.clone(), text()));
    }
    defs.push((SOURCE_OBJECT_COLUMN.into(), text()));
    defs.push((SOURCE_OFFSET_COLUMN.into(), ColType::Int64));
    defs.push((BATCH_COLUMN.into(), text()));
    Ok(defs)
}

fn column_ddl<'a>(defs: impl Iterator<Item = (&'a String, String)>) -> String {
    defs.map(|(n, t)| format!("{} {t}", quote_ident(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Brings the target table to a file's columns inside the load transaction: creates it, adds
/// new columns, and widens columns the file holds in a wider type. SQLite has no ALTER COLUMN,
/// so a widening rebuilds the table (same rows, new declared types). A narrowing or
/// incompatible change refuses the batch before anything of it is loaded.
///
/// `evolved`: the file's columns added under `on_new_column = "evolve"`, whose type conflicts
/// keep the values' text (`evolve::reconcile`).
fn evolve_target(
    tx: &Connection,
    batch: &LoadBatch,
    defs: &[(String, ColType)],
    evolved: &[&str],
) -> Result<()> {
    let table = quote_ident(&batch.table);
    let have = existing_columns(tx, &batch.table)?;
    if have.is_empty() {
        let ddl = column_ddl(defs.iter().map(|(n, t)| (n, t.sqlite())));
        return tx
            .execute_batch(&format!("CREATE TABLE {table} ({ddl})"))
            .map_err(wh_err);
    }
    let mut decls: Vec<(String, String)> = have.clone();
    for (name, ty) in defs {
        match have.iter().position(|(n, _)| n == name) {
            None => {
                tx.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {} {}",
                    quote_ident(name),
                    ty.sqlite()
                ))
                .map_err(wh_err)?;
                decls.push((name.clone(), ty.sqlite()));
            }
            Some(i) => {
                let existing = ColType::from_sqlite(&have[i].1);
                let ev = evolved.contains(&name.as_str());
                if let Change::Widen(to) = reconcile(&batch.table, name, &existing, ty, ev)? {
                    decls[i].1 = to.sqlite();
                }
            }
        }
    }
    if decls.iter().zip(&have).any(|(a, b)| a.1 != b.1) {
        rebuild_table(tx, &batch.table, &decls)?;
    }
    Ok(())
}

/// Recreates `table` with the declared types `decls` (in its column order) and its rows. Its
/// indexes and triggers (a user's among them) are created again on the new table; what is
/// written into the table's own definition (a `CHECK`, `NOT NULL` or `UNIQUE` on a column) is
/// not: the table takes the pipeline's definition.
fn rebuild_table(tx: &Connection, table: &str, decls: &[(String, String)]) -> Result<()> {
    let (q, tmp) = (quote_ident(table), quote_ident("_tributary_rebuild"));
    let ddl = column_ddl(decls.iter().map(|(n, t)| (n, t.clone())));
    let cols = quote_list(&decls.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let widening = |e: rusqlite::Error| wh_err(format!("widening the columns of {q}: {e}"));
    let kept = indexes_and_triggers(tx, table).map_err(widening)?;
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS {tmp}; CREATE TABLE {tmp} ({ddl});
         INSERT INTO {tmp} ({cols}) SELECT {cols} FROM {q};
         DROP TABLE {q}; ALTER TABLE {tmp} RENAME TO {q};"
    ))
    .map_err(widening)?;
    kept.iter()
        .try_for_each(|sql| tx.execute_batch(sql))
        .map_err(widening)
}

/// The statements that create `table`'s indexes and triggers (not the indexes SQLite makes for
/// constraints of the table's definition, which have none).
fn indexes_and_triggers(tx: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    tx.prepare(
        "SELECT sql FROM sqlite_master WHERE tbl_name = ?1 AND type IN ('index', 'trigger') \
         AND sql IS NOT NULL ORDER BY type, name",
    )?
    .query_map([table], |r| r.get(0))?
    .collect()
}

/// A plain insert of the batch's columns into the target, `rows` at a run.
pub(super) fn insert_sql(batch: &LoadBatch, columns: &[String], rows: usize) -> String {
    let table = quote_ident(&batch.table);
    let cols = quote_list(columns);
    let width = columns.len();
    let values = (0..rows)
        .map(|r| {
            let marks = (1..=width)
                .map(|i| format!("?{}", r * width + i))
                .collect::<Vec<_>>();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("INSERT INTO {table} ({cols}) VALUES {values}")
}

/// The statement the rows of a batch are merged through, `rows` at a run: [`insert_sql`], or —
/// with merge keys — an upsert that keeps, per key, the row at the earliest source position,
/// whatever order rows and batches arrive in (at the same position the later row or load wins:
/// the source sent that place again, a rewritten object or a database row read again; rows of
/// one statement run are taken in their order, as if each had its own). The unique index on the
/// merge keys makes the conflict a lookup, not a scan.
pub(super) fn upsert_sql(batch: &LoadBatch, columns: &[String], rows: usize) -> String {
    let insert = insert_sql(batch, columns, rows);
    if batch.merge_keys.is_empty() {
        return insert;
    }
    let table = quote_ident(&batch.table);
    let keys = quote_list(&batch.merge_keys);
    let sets = columns
        .iter()
        .filter(|c| !batch.merge_keys.contains(c))
        .map(|c| format!("{q} = excluded.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let (so, sf) = (
        quote_ident(SOURCE_OBJECT_COLUMN),
        quote_ident(SOURCE_OFFSET_COLUMN),
    );
    format!(
        "{insert} ON CONFLICT ({keys}) DO UPDATE SET {sets} \
         WHERE (excluded.{so}, excluded.{sf}) <= ({table}.{so}, {table}.{sf})"
    )
}

/// Inserts one file's rows `rb`, with its partition values and lineage, through `insert` (the
/// batch's statement over `columns`, the union of its files'). A column this file lacks is
/// NULL. The rows loaded.
pub(super) fn insert_file(
    insert: &mut GroupInsert<'_>,
    columns: &[String],
    batch: &LoadBatch,
    lf: &protocol::LoadFile,
    rb: &RecordBatch,
) -> Result<u64> {
    let schema = rb.schema();
    let named = |e: String| wh_err(format!("{}: {e}", lf.file.key));
    // A column of the file is read row by row; what every row shares (a partition value,
    // lineage, or NULL for a column this file lacks) is bound once.
    let mut rows = insert.rows(rb.num_rows());
    let mut varying = Vec::with_capacity(columns.len());
    for (at, c) in (1..).zip(columns) {
        if let Ok(i) = schema.index_of(c) {
            varying.push((at, Cells::of(rb.column(i).as_ref())));
            continue;
        }
        let shared = if let Some((_, v)) = lf.file.partition.iter().find(|(k, _)| k == c) {
            ValueRef::Text(v.as_bytes())
        } else if c == SOURCE_OBJECT_COLUMN {
            ValueRef::Text(lf.position.object.as_bytes())
        } else if c == SOURCE_OFFSET_COLUMN {
            ValueRef::Integer(lf.position.offset as i64)
        } else if c == BATCH_COLUMN {
            ValueRef::Text(batch.batch_id.as_bytes())
        } else {
            ValueRef::Null
        };
        rows.bind_each(at, shared).map_err(named)?;
    }
    for row in 0..rb.num_rows() {
        rows.execute(
            varying
                .iter_mut()
                .map(|(at, c)| c.at(row).map(|v| (*at, v))),
        )
        .map_err(named)?;
    }
    Ok(rb.num_rows() as u64)
}

/// The name of the unique index on the batch's merge keys, quoted.
pub(super) fn key_index_name(batch: &LoadBatch) -> String {
    quote_ident(&format!("{}__merge_key", batch.table))
}

/// The unique index on the batch's merge keys that the upserts merge by, if it is missing.
pub(super) fn key_index_sql(batch: &LoadBatch) -> String {
    format!(
        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})",
        key_index_name(batch),
        quote_ident(&batch.table),
        quote_list(&batch.merge_keys)
    )
}

/// Inserts the batch's rows into its table, merged by its keys: into an empty table in bulk
/// (`sqlite_bulk`), into one that holds rows through the key index. The rows loaded.
fn insert_rows(
    tx: &Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    columns: &[String],
) -> Result<u64> {
    if super::sqlite_bulk::applies(tx, batch)?
        && let Some(staged) = super::sqlite_bulk::load_fresh(tx, batch, files, columns)?
    {
        return Ok(staged);
    }
    merge_rows(tx, batch, files, columns)
}

/// Upserts the batch's rows one file after another through the merge-key index (created if
/// missing), each file's rows in key order. The rows loaded.
pub(super) fn merge_rows(
    tx: &Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    columns: &[String],
) -> Result<u64> {
    if !batch.merge_keys.is_empty() {
        tx.execute_batch(&key_index_sql(batch)).map_err(wh_err)?;
    }
    let mut insert =
        GroupInsert::prepare(tx, columns.len(), |rows| upsert_sql(batch, columns, rows))
            .map_err(wh_err)?;
    let mut staged = 0u64;
    super::sqlite_read::each_file(batch, files, |lf, rb| {
        staged += insert_file(&mut insert, columns, batch, lf, rb)?;
        Ok(())
    })?;
    Ok(staged)
}

/// Loads `batch` in one transaction; `pages` is the file's descriptor for the early writeback
/// (`None`: none, the commit writes everything).
fn load_batch(
    conn: &mut Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    pages: Option<&Arc<std::fs::File>>,
) -> Result<LoadOutcome> {
    let tx = conn.transaction().map_err(wh_err)?;
    let seen: i64 = tx
        .query_row(
            &format!("SELECT count(*) FROM {LEDGER_TABLE} WHERE batch_id = ?1"),
            [&batch.batch_id],
            |r| r.get(0),
        )
        .map_err(wh_err)?;
    if seen > 0 {
        return Ok(LoadOutcome::AlreadyLoaded);
    }
    let table = quote_ident(&batch.table);
    // The target takes the union of the batch's files (their schemas may differ), once.
    let mut columns = None;
    if let Some(first) = batch.files.first() {
        let shapes = super::shapes::read_blocking(files, batch)?;
        let defs = file_columns(&shapes.union, &first.file.partition)?;
        let evolved: Vec<&str> = shapes
            .union
            .fields()
            .iter()
            .filter(|f| super::evolve::is_evolved(f))
            .map(|f| f.name().as_str())
            .collect();
        evolve_target(&tx, batch, &defs, &evolved)?;
        columns = Some(defs.into_iter().map(|(n, _)| n).collect::<Vec<String>>());
    }
    // Every row straight into the target (the batch's columns: the union of its files'), the
    // pages it spills into the file on their way to the disk meanwhile.
    let writeback = pages.map(|f| Writeback::start(f, WRITEBACK_INTERVAL));
    let staged = match &columns {
        Some(columns) => insert_rows(&tx, batch, files, columns)?,
        None => 0,
    };
    if let Some(handed) = writeback.map(Writeback::finish) {
        tracing::debug!(table = %batch.table, handed, "the load's pages handed to the disk early");
    }
    crash_mid_load_if_asked(&tx);
    tx.execute(
        &format!(
            "INSERT INTO {LEDGER_TABLE} (batch_id, table_name, run_id, files, rows_staged, loaded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', 'now'))"
        ),
        params![batch.batch_id, batch.table, batch.run_id, batch.files.len() as i64, staged as i64],
    )
    .map_err(wh_err)?;
    let in_table: i64 = if columns.is_some() {
        tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(wh_err)?
    } else {
        0
    };
    tx.commit().map_err(wh_err)?;
    if batch.layout.wants_analyze(staged, in_table as u64)
        && let Err(e) = analyze(conn, &batch.table)
    {
        // Statistics only: the load has committed whatever this does.
        tracing::warn!(table = %batch.table, error = %e, "ANALYZE after the load failed");
    }
    Ok(LoadOutcome::Loaded {
        rows_staged: staged,
        rows_in_table: in_table as u64,
    })
}

/// Rows of each index the `ANALYZE` after a load reads (SQLite's `analysis_limit`, in its
/// recommended range): the statistics come from a sample, so their time does not grow with the
/// table. A full `ANALYZE` of the reference workload's 868,395 rows took 0.27 s, a tenth of the
/// load (BENCHMARKS.md, stop 30); of a table of years it would take minutes after every load
/// that passes `analyze_share`. A sampled `ANALYZE` keeps `sqlite_stat1` (rows per key and the
/// table's size, estimated) and no `sqlite_stat4` histograms.
const ANALYSIS_ROWS: u32 = 1000;

/// `ANALYZE` of `table`, sampled (see [`ANALYSIS_ROWS`]).
fn analyze(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA analysis_limit={ANALYSIS_ROWS}; {}",
        super::analyze_sql(table)
    ))
}

/// Test hook (`TRIBUTARY_FAULT=crash_mid_load`, beside the coordinator's faults): the process
/// dies in the middle of a load, as `kill -9` would, after the batch's rows are inserted and
/// written into the file (the page cache flushed) and before the commit, leaving the file with
/// uncommitted pages and its journal beside it.
fn crash_mid_load_if_asked(tx: &Connection) {
    if std::env::var("TRIBUTARY_FAULT").as_deref() == Ok("crash_mid_load") {
        let _ = tx.cache_flush();
        std::process::abort();
    }
}

/// `coordinator sql`: runs one statement on the warehouse file at `path`.
///
/// Read-only unless `write`: the file is opened with `SQLITE_OPEN_READ_ONLY` (so no statement,
/// `ATTACH` or `PRAGMA` can change it) and a statement that would write is refused before it runs,
/// with a message naming it. A missing file is an error; nothing is created.
pub fn query_file(path: &std::path::Path, sql: &str, write: bool) -> Result<QueryResult> {
    use rusqlite::OpenFlags;
    if !path.is_file() {
        return Err(wh_err(format!(
            "no warehouse at {} (run a pipeline first)",
            path.display()
        )));
    }
    if !write {
        roll_back_an_interrupted_load(path)?;
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| wh_err(format!("open {}: {e}", path.display())))?;
    // A load being written into the file holds it for a while: wait for it, not fail.
    conn.busy_timeout(LOCK_WAIT).map_err(wh_err)?;
    let mut st = conn.prepare(sql).map_err(wh_err)?;
    if !write && !st.readonly() {
        return Err(wh_err(format!(
            "refusing to run {:?}: `coordinator sql` is read-only; pass --write to change the warehouse",
            statement_head(sql)
        )));
    }
    let columns: Vec<String> = st.column_names().into_iter().map(String::from).collect();
    let rows = collect_rows(&mut st, columns.len())?;
    if columns.is_empty() && write {
        return Ok(QueryResult {
            columns: vec!["rows_changed".into()],
            rows: vec![vec![Some(conn.changes().to_string())]],
        });
    }
    Ok(QueryResult { columns, rows })
}

/// A load that stopped half way (a killed coordinator) leaves its rollback journal beside the
/// file, and a read-only connection cannot undo it ("attempt to write a readonly database"). So a
/// read-only query first opens the file for writing and reads it once, which makes SQLite roll the
/// unfinished load back, as the coordinator's next start would: the file returns to its last
/// committed state and nothing committed changes. A journal of a load still being written (its
/// connection holds the file's lock) is not touched; the query then waits for that load.
fn roll_back_an_interrupted_load(path: &std::path::Path) -> Result<()> {
    let mut journal = path.as_os_str().to_owned();
    journal.push("-journal");
    if !std::path::Path::new(&journal).exists() {
        return Ok(());
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| wh_err(format!("open {}: {e}", path.display())))?;
    conn.busy_timeout(LOCK_WAIT).map_err(wh_err)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| {
        wh_err(format!(
            "rolling back the unfinished load in {}: {e}",
            path.display()
        ))
    })?;
    Ok(())
}

/// A value as text. A decimal column's REAL reads back with its scale's digits (`2469.00`); any
/// other REAL with at most 15 significant digits, as the sqlite3 shell prints it, so a sum of
/// decimals prints `81136.18`, not the binary float's `81136.18000000001`.
fn render(v: Value, decimal_scale: Option<usize>) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Integer(i) => match decimal_scale {
            Some(s) if s > 0 => format!("{i}.{}", "0".repeat(s)),
            _ => i.to_string(),
        },
        Value::Real(f) => match decimal_scale {
            Some(s) if f.is_finite() => with_scale(f, s),
            _ => real_15(f),
        },
        Value::Text(t) => t,
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    })
}

/// A decimal column's REAL with its scale's digits: its shortest decimal form (the value the
/// loader stored) padded with zeros, so a `DECIMAL_BLOB(38,20)` holding 0.1 reads `0.1000…0`,
/// not the binary float's `0.10000000000000000555`. A REAL with more digits than the scale (one
/// written by hand) is rounded to it.
fn with_scale(f: f64, scale: usize) -> String {
    let shortest = f.to_string();
    let have = shortest.split_once('.').map_or(0, |(_, frac)| frac.len());
    if have > scale {
        format!("{f:.scale$}")
    } else if have == 0 && scale > 0 {
        format!("{shortest}.{}", "0".repeat(scale))
    } else {
        format!("{shortest}{}", "0".repeat(scale - have))
    }
}

/// `f` with at most 15 significant digits (SQLite's `%!.15g`): `0.1`, `2469.0`, `1.5e+20`.
fn real_15(f: f64) -> String {
    if !f.is_finite() || f == 0.0 {
        return if f == 0.0 {
            "0.0".into()
        } else {
            f.to_string()
        };
    }
    let exp = f.abs().log10().floor() as i32;
    if !(-5..15).contains(&exp) {
        let s = format!("{f:.14e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f:.*}", (14 - exp).max(0) as usize);
    let s = s.trim_end_matches('0');
    match s.strip_suffix('.') {
        Some(whole) => format!("{whole}.0"),
        None => s.to_string(),
    }
}

/// The first words of a statement, for error messages.
fn statement_head(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn collect_rows(st: &mut rusqlite::Statement<'_>, n: usize) -> Result<Vec<Vec<Option<String>>>> {
    // A result column that is a DECIMAL(P,S) column of a table renders with S digits.
    let scales: Vec<Option<usize>> = st
        .columns()
        .iter()
        .map(|c| match c.decl_type().map(ColType::from_sqlite) {
            Some(ColType::Decimal { scale, .. }) => Some(scale.max(0) as usize),
            _ => None,
        })
        .collect();
    let mut rows = Vec::new();
    let mut q = st.query([]).map_err(wh_err)?;
    while let Some(r) = q.next().map_err(wh_err)? {
        let mut out = Vec::with_capacity(n);
        for (i, scale) in scales.iter().enumerate().take(n) {
            let v: Value = r.get(i).map_err(wh_err)?;
            out.push(render(v, *scale));
        }
        rows.push(out);
    }
    Ok(rows)
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn load(&self, batch: &LoadBatch, files: Arc<dyn ObjectStore>) -> Result<LoadOutcome> {
        let batch = batch.clone();
        let pages = self.pages.clone();
        self.call(move |c| {
            // The batch named once, before the warehouse's own message (as PostgreSQL's load).
            load_batch(c, &batch, &*files, pages.as_ref()).map_err(|e| match e {
                BackendError::Warehouse(m) => wh_err(format!("load batch {}: {m}", batch.batch_id)),
                other => other,
            })
        })
        .await
    }

    async fn is_loaded(&self, batch_id: &str) -> Result<bool> {
        let id = batch_id.to_string();
        self.call(move |c| {
            let n: i64 = c
                .query_row(
                    &format!("SELECT count(*) FROM {LEDGER_TABLE} WHERE batch_id = ?1"),
                    [&id],
                    |r| r.get(0),
                )
                .map_err(wh_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn query(&self, sql: &str) -> Result<QueryResult> {
        let sql = sql.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&sql).map_err(wh_err)?;
            let columns: Vec<String> = st.column_names().into_iter().map(String::from).collect();
            let rows = collect_rows(&mut st, columns.len())?;
            Ok(QueryResult { columns, rows })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::LocalStore;

    /// A warehouse file in `dir` (its path), the warehouse, and a files store beside it.
    fn warehouse_in(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, SqliteWarehouse, Arc<dyn ObjectStore>) {
        let db = dir.join("wh.db");
        let wh = SqliteWarehouse::open(&db).unwrap();
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.join("files")).unwrap());
        (db, wh, files)
    }

    /// A load that is more than `analyze_share` of its table leaves statistics of the
    /// merge-key index that SQLite's planner reads, from a sample of it; a small load into a
    /// large table does not analyze again.
    #[tokio::test]
    async fn a_large_load_leaves_sampled_statistics_and_a_small_one_does_not_redo_them() {
        use super::super::suite::{batch, load_file, write_file};
        let dir = tempfile::tempdir().unwrap();
        let (db, wh, files) = warehouse_in(dir.path());
        let analyzed = |b: LoadBatch| LoadBatch {
            layout: protocol::TableLayout {
                analyze_share_bp: Some(1000),
                ..Default::default()
            },
            ..b
        };
        let ids: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let vals: Vec<i64> = (0..5000).collect();
        let big = write_file(&*files, "a/big.parquet", &ids, &vals).await;
        let b0 = analyzed(batch(
            "r1-an-b0000",
            "an",
            vec![load_file(big, "raw/x", 0, 0)],
        ));
        wh.load(&b0, files.clone()).await.unwrap();
        let stat = || {
            query_file(
                &db,
                "SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'an' ORDER BY idx",
                false,
            )
            .unwrap()
            .rows
        };
        let after_big = stat();
        assert_eq!(after_big.len(), 1, "{after_big:?}");
        assert_eq!(after_big[0][0].as_deref(), Some("an__merge_key"));
        // "ROWS 1": a unique key, one row per key; the rows are estimated from a sample.
        let s = after_big[0][1].clone().unwrap();
        let (rows, per_key) = s.split_once(' ').unwrap();
        assert_eq!(per_key, "1");
        let rows: u64 = rows.parse().unwrap();
        assert!((2500..=10000).contains(&rows), "{s}");
        let limit = wh.query("PRAGMA analysis_limit").await.unwrap().rows;
        assert_eq!(limit, [[Some(ANALYSIS_ROWS.to_string())]]);
        // 5 rows into 5,005: under the 10 % share, the statistics stay as they were.
        let small = write_file(
            &*files,
            "a/small.parquet",
            &["z1", "z2", "z3", "z4", "z5"],
            &[1, 2, 3, 4, 5],
        )
        .await;
        let b1 = analyzed(batch(
            "r1-an-b0001",
            "an",
            vec![load_file(small, "raw/x", 9, 1)],
        ));
        wh.load(&b1, files.clone()).await.unwrap();
        assert_eq!(stat(), after_big);
    }

    /// Rows go through the upsert [`GROUP_ROWS`](super::super::sqlite_insert::GROUP_ROWS) at a
    /// statement run: a key twice in one group, in two groups of one file and in two files
    /// must merge as row-by-row statements did (the earliest source position wins; at the same
    /// position, the later row), and the rows after a file's last whole group are loaded too.
    #[tokio::test]
    async fn rows_merged_in_groups_keep_the_earliest_position_and_the_later_row_at_the_same_one() {
        use super::super::suite::{batch, load_file, write_file};
        let dir = tempfile::tempdir().unwrap();
        let (_db, wh, files) = warehouse_in(dir.path());
        // File `late` (offset 500): keys k000..k099, each twice in a row (values i, then
        // 1000 + i): 200 rows, six whole groups of 32 and 8 more. File `early` (offset 0):
        // every third key, value 5000 + i: 34 rows.
        let late_ids: Vec<String> = (0..200).map(|r| format!("k{:03}", r / 2)).collect();
        let late_vals: Vec<i64> = (0..100).flat_map(|i| [i, 1000 + i]).collect();
        let early: Vec<i64> = (0..100).filter(|i| i % 3 == 0).collect();
        let early_ids: Vec<String> = early.iter().map(|i| format!("k{i:03}")).collect();
        let early_vals: Vec<i64> = early.iter().map(|i| 5000 + i).collect();
        let late_ids: Vec<&str> = late_ids.iter().map(String::as_str).collect();
        let early_ids: Vec<&str> = early_ids.iter().map(String::as_str).collect();
        let f_late = write_file(&*files, "g/late.parquet", &late_ids, &late_vals).await;
        let f_early = write_file(&*files, "g/early.parquet", &early_ids, &early_vals).await;
        let b = batch(
            "r1-grouped-b0000",
            "grouped",
            vec![
                load_file(f_late, "raw/x", 500, 1),
                load_file(f_early, "raw/x", 0, 0),
            ],
        );
        let out = wh.load(&b, files.clone()).await.unwrap();
        assert_eq!(
            out,
            LoadOutcome::Loaded {
                rows_staged: 234,
                rows_in_table: 100
            }
        );
        let got = wh
            .query("SELECT id, val FROM grouped ORDER BY id")
            .await
            .unwrap()
            .rows;
        let want: Vec<Vec<Option<String>>> = (0..100)
            .map(|i: i64| {
                let val = if i % 3 == 0 { 5000 + i } else { 1000 + i };
                vec![Some(format!("k{i:03}")), Some(val.to_string())]
            })
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn regression_a_failed_row_insert_names_its_file_and_sqlite_s_reason_once() {
        use super::super::suite::{batch, load_file, write_file};
        let dir = tempfile::tempdir().unwrap();
        let (db, wh, files) = warehouse_in(dir.path());
        // A table the warehouse made, then given a trigger that refuses large values.
        let ok = write_file(&*files, "lake/checked/p0.parquet", &["a"], &[1]).await;
        let first = batch(
            "r1-checked-b0000",
            "checked",
            vec![load_file(ok, "raw/x", 0, 0)],
        );
        wh.load(&first, files.clone()).await.unwrap();
        query_file(
            &db,
            "CREATE TRIGGER refuse BEFORE INSERT ON checked WHEN NEW.val >= 10 \
             BEGIN SELECT RAISE(ABORT, 'val too large'); END",
            true,
        )
        .unwrap();
        let f = write_file(&*files, "lake/checked/p1.parquet", &["b", "c"], &[2, 20]).await;
        let b = batch(
            "r1-checked-b0001",
            "checked",
            vec![load_file(f, "raw/x", 9, 1)],
        );
        let e = wh.load(&b, files.clone()).await.unwrap_err().to_string();
        assert!(e.contains("lake/checked/p1.parquet"), "{e}");
        assert!(e.contains("val too large"), "{e}");
        assert_eq!(
            e,
            "warehouse: load batch r1-checked-b0001: lake/checked/p1.parquet: inserting a row: \
             val too large (SQLite code 1811)"
        );
        // Nothing of the batch stayed: its transaction rolled back.
        assert!(!wh.is_loaded("r1-checked-b0001").await.unwrap());
        let n = query_file(&db, "SELECT count(*) FROM checked", false).unwrap();
        assert_eq!(n.rows, vec![vec![Some("1".to_string())]]);
    }

    #[tokio::test]
    async fn a_table_widened_by_a_load_keeps_its_indexes_and_triggers() {
        use super::super::suite::{batch, load_file, write_file};
        let dir = tempfile::tempdir().unwrap();
        let (db, wh, files) = warehouse_in(dir.path());
        // `val INTEGER` is widened to the pipeline's BIGINT by the load: the table is rebuilt.
        Connection::open(&db)
            .unwrap()
            .execute_batch(
                "CREATE TABLE t (id TEXT, val INTEGER, day TEXT);
                 CREATE INDEX t_by_val ON t (val);
                 CREATE TABLE audit (id TEXT);
                 CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (NEW.id); END",
            )
            .unwrap();
        let f = write_file(&*files, "lake/t/p0.parquet", &["a", "b"], &[1, 2]).await;
        let b = batch("r1-t-b0000", "t", vec![load_file(f, "raw/x", 0, 0)]);
        wh.load(&b, files.clone()).await.unwrap();
        let rows = |sql: &str| query_file(&db, sql, false).unwrap().rows;
        let decl = rows("SELECT type FROM pragma_table_info('t') WHERE name = 'val'");
        assert_eq!(decl, vec![vec![Some("BIGINT".to_string())]], "rebuilt");
        let kept = rows(
            "SELECT type, name FROM sqlite_master WHERE tbl_name = 't' AND sql IS NOT NULL \
             ORDER BY name",
        );
        let names: Vec<_> = kept.iter().map(|r| r[1].clone().unwrap()).collect();
        assert_eq!(names, ["t", "t__merge_key", "t_audit", "t_by_val"]);
        // The trigger was in place for the batch's rows.
        assert_eq!(
            rows("SELECT id FROM audit ORDER BY id"),
            vec![vec![Some("a".to_string())], vec![Some("b".to_string())]]
        );
    }

    #[tokio::test]
    async fn sqlite_warehouse_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let wh = SqliteWarehouse::open(dir.path().join("wh.db")).unwrap();
        let files: Arc<dyn ObjectStore> =
            Arc::new(LocalStore::new(dir.path().join("files")).unwrap());
        super::super::suite::run_all(&wh, files).await;
    }

    #[test]
    fn reals_print_with_15_significant_digits_and_decimals_with_their_scale() {
        assert_eq!(real_15(81136.18000000001), "81136.18");
        assert_eq!(real_15(0.1 + 0.2), "0.3");
        assert_eq!(real_15(2469.0), "2469.0");
        assert_eq!(real_15(-0.000123), "-0.000123");
        assert_eq!(real_15(1.5e20), "1.5e+20");
        assert_eq!(real_15(2.5e-7), "2.5e-07");
        assert_eq!(render(Value::Real(2469.0), Some(2)), Some("2469.00".into()));
        assert_eq!(render(Value::Real(1.005), Some(3)), Some("1.005".into()));
        assert_eq!(render(Value::Integer(7), Some(2)), Some("7.00".into()));
        assert_eq!(render(Value::Integer(7), None), Some("7".into()));
        assert_eq!(render(Value::Null, Some(2)), None);
    }

    #[test]
    fn decimals_beyond_15_digits_are_stored_as_exact_text() {
        assert_eq!(
            decimal_value(123_456_789_012_345_678, 2),
            Value::Text("1234567890123456.78".into())
        );
        assert_eq!(decimal_value(1250, 2), Value::Real(12.5));
        assert_eq!(decimal_value(-1, 18), Value::Real(-1e-18));
        assert_eq!(decimal_value(42, 0), Value::Integer(42));
        assert_eq!(
            decimal_value(i128::from(i64::MAX) + 1, 0),
            Value::Text("9223372036854775808".into())
        );
        assert_eq!(significant_digits("-0.0120"), 2);
        assert_eq!(significant_digits("1200"), 4);
        assert_eq!(significant_digits("123456789012345.6"), 16);
    }

    #[test]
    fn a_wide_decimal_real_reads_back_with_its_scale_not_binary_noise() {
        assert_eq!(with_scale(0.1, 20), format!("0.1{}", "0".repeat(19)));
        assert_eq!(with_scale(12.0, 2), "12.00");
        assert_eq!(with_scale(12.0, 0), "12");
        assert_eq!(with_scale(1e-18, 18), "0.000000000000000001");
        assert_eq!(with_scale(2.675, 1), "2.7");
    }

    #[test]
    fn a_float32_is_stored_as_the_decimal_it_shows() {
        assert_eq!(float32_as_f64(0.1), 0.1);
        assert_eq!(float32_as_f64(-1234.5), -1234.5);
        assert_eq!(float32_as_f64(f32::MAX), 3.4028235e38);
    }

    #[tokio::test]
    async fn sql_is_read_only_unless_write_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wh.db");
        let wh = SqliteWarehouse::open(&path).unwrap();
        wh.call(|c| {
            c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2);")
                .map_err(wh_err)
        })
        .await
        .unwrap();
        drop(wh);
        let read = query_file(&path, "SELECT count(*) FROM t", false).unwrap();
        assert_eq!(read.rows, vec![vec![Some("2".to_string())]]);
        for stmt in [
            "DELETE FROM t",
            "drop table t",
            "INSERT INTO t VALUES (3)",
            "CREATE TABLE u (y)",
            "UPDATE t SET x = 0",
        ] {
            let err = query_file(&path, stmt, false).unwrap_err().to_string();
            assert!(
                err.contains("read-only") && err.contains("--write"),
                "{err}"
            );
        }
        let after = query_file(&path, "SELECT count(*) FROM t", false).unwrap();
        assert_eq!(after.rows, vec![vec![Some("2".to_string())]]);
        let changed = query_file(&path, "DELETE FROM t WHERE x = 1", true).unwrap();
        assert_eq!(changed.rows, vec![vec![Some("1".to_string())]]);
    }

    fn journal_mode(path: &std::path::Path) -> String {
        let c = Connection::open(path).unwrap();
        c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_warehouse_left_in_wal_mode_gets_a_rollback_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wh.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER)")
            .unwrap();
        assert_eq!(journal_mode(&path), "wal");
        drop(SqliteWarehouse::open(&path).unwrap());
        assert_eq!(journal_mode(&path), "delete");
    }

    #[test]
    fn a_read_only_query_after_a_load_was_killed_sees_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wh.db");
        drop(SqliteWarehouse::open(&path).unwrap());
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA cache_size=8; CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('kept');
                 BEGIN; UPDATE t SET x = 'half-loaded';",
            )
            .unwrap();
        let fill = "x".repeat(2000);
        for _ in 0..500 {
            writer
                .execute("INSERT INTO t VALUES (?1)", [&fill])
                .unwrap();
        }
        // The files as a killed coordinator leaves them: the load's pages partly in the file,
        // its journal beside it, and no process holding the lock.
        let killed = dir.path().join("killed.db");
        std::fs::copy(&path, &killed).unwrap();
        std::fs::copy(
            dir.path().join("wh.db-journal"),
            dir.path().join("killed.db-journal"),
        )
        .unwrap();
        drop(writer);
        let read = query_file(&killed, "SELECT count(*), min(x) FROM t", false).unwrap();
        assert_eq!(
            read.rows,
            vec![vec![Some("1".to_string()), Some("kept".to_string())]]
        );
        assert!(!dir.path().join("killed.db-journal").exists());
    }

    #[tokio::test]
    async fn an_index_sort_larger_than_the_page_cache_spills_to_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let wh = SqliteWarehouse::open(dir.path().join("wh.db")).unwrap();
        let (store, rows, check) = wh
            .call(|c| {
                // 30,000 keys of ~90 bytes (~2.7 MB to sort) through a 128 KiB page cache: the
                // sorter writes runs and merges them.
                c.execute_batch(
                    "PRAGMA cache_size=-128; CREATE TABLE t (k TEXT);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
                     INSERT INTO t SELECT printf('%05d', (i * 7919) % 30000) || hex(randomblob(40))
                     FROM n;
                     CREATE UNIQUE INDEX t_k ON t (k);",
                )
                .map_err(wh_err)?;
                let one = |sql: &str| -> Result<String> {
                    c.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                        .map(|v| format!("{v:?}"))
                        .map_err(wh_err)
                };
                Ok((
                    one("PRAGMA temp_store")?,
                    one("SELECT count(DISTINCT k) FROM t INDEXED BY t_k")?,
                    one("PRAGMA integrity_check")?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(store, "Integer(1)", "temp_store is FILE");
        assert_eq!(rows, "Integer(30000)");
        assert_eq!(check, "Text(\"ok\")");
    }

    #[test]
    fn a_new_warehouse_has_large_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |p: &std::path::Path| -> u32 {
            let c = Connection::open(p).unwrap();
            c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
        };
        let new = dir.path().join("new.db");
        drop(SqliteWarehouse::open(&new).unwrap());
        assert_eq!(page_size(&new), PAGE_BYTES);
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("PRAGMA page_size=4096; CREATE TABLE t (x INTEGER)")
            .unwrap();
        drop(SqliteWarehouse::open(&old).unwrap());
        assert_eq!(page_size(&old), 4096);
    }

    #[test]
    fn a_reader_waits_for_a_load_being_committed_and_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wh.db");
        let wh = SqliteWarehouse::open(&path).unwrap();
        drop(wh);
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2)")
            .unwrap();
        // A load in the middle of writing the file: the lock is held until it commits.
        writer
            .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (3)")
            .unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let commit = std::thread::spawn(move || {
            ready_rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            writer.execute_batch("COMMIT").unwrap();
        });
        ready_tx.send(()).unwrap();
        let read = query_file(&path, "SELECT count(*) FROM t", false).unwrap();
        commit.join().unwrap();
        assert_eq!(read.rows, vec![vec![Some("3".to_string())]]);
    }

    #[test]
    fn sql_on_a_missing_warehouse_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("wh.db");
        let err = query_file(&path, "SELECT 1", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no warehouse at"), "{err}");
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn formats_match_sqlite_conventions() {
        assert_eq!(format_decimal(-300, 2), "-3.00");
        assert_eq!(format_decimal(1230, 2), "12.30");
        assert_eq!(format_decimal(5, 2), "0.05");
        assert_eq!(format_days(0), "1970-01-01");
        assert_eq!(format_days(20_209), "2025-05-01");
        assert_eq!(
            format_micros(1_746_093_600_123_456),
            "2025-05-01 10:00:00.123456"
        );
        assert_eq!(format_micros(-1), "1969-12-31 23:59:59.999999");
    }

    #[test]
    fn timestamps_written_digit_by_digit_match_the_formatted_text() {
        let formatted = |us: i64| {
            let (days, rem) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
            let (y, m, d) = crate::civil_from_days(days);
            let s = rem / 1_000_000;
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}",
                s / 3600,
                s / 60 % 60,
                s % 60,
                rem % 1_000_000
            )
        };
        // Across the fast path's edges (years 0 and 9999) and beyond them.
        let day = 86_400_000_000i64;
        let edges = [-62_167_219_200_000_000i64, 253_402_300_799_999_999];
        for base in edges.into_iter().chain([0, 1_746_093_600_123_456]) {
            for k in [
                -400 * day - 1,
                -day,
                -1,
                0,
                1,
                999_999,
                day + 7,
                400 * day + 3,
            ] {
                let us = base + k;
                assert_eq!(format_micros(us), formatted(us), "{us}");
            }
        }
        assert_eq!(format_micros(edges[0] - 1), "-001-12-31 23:59:59.999999");
    }
}
