//! The embedded warehouse: one SQLite database file that users open with `coordinator sql` or any
//! SQLite client.
//!
//! One dedicated thread owns the connection; async callers send it jobs and await the answer, so
//! neither Parquet decoding nor SQLite work runs on tokio threads.
//!
//! Type mapping: strings → TEXT, integers and booleans → INTEGER, floats → REAL, decimals →
//! DECIMAL (SQLite's NUMERIC affinity), timestamps → TEXT `YYYY-MM-DD HH:MM:SS.ffffff` in UTC (what
//! SQLite's date functions read), dates → TEXT `YYYY-MM-DD`, partition columns → TEXT.

use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{Array, AsArray, RecordBatchReader};
use arrow::datatypes::{DataType, Schema};
use async_trait::async_trait;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use protocol::LoadBatch;
use rusqlite::types::Value;
use rusqlite::{Connection, params};

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
}

fn wh_err(e: impl std::fmt::Display) -> BackendError {
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
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
               batch_id TEXT PRIMARY KEY, table_name TEXT NOT NULL, run_id TEXT NOT NULL,
               files INTEGER NOT NULL, rows_staged INTEGER NOT NULL, loaded_at TEXT NOT NULL)"
        ))
        .map_err(|e| wh_err(format!("initialise {}: {e}", path.display())))?;
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
        Ok(SqliteWarehouse { path, jobs: tx })
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

fn sql_type(dt: &DataType) -> Result<&'static str> {
    Ok(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "INTEGER",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "INTEGER",
        DataType::Boolean => "BOOLEAN",
        DataType::Float32 | DataType::Float64 => "REAL",
        DataType::Decimal128(_, _) => "DECIMAL",
        DataType::Timestamp(_, _) => "TIMESTAMP",
        DataType::Date32 => "DATE",
        other => {
            return Err(wh_err(format!(
                "column type {other} cannot be loaded into the embedded warehouse"
            )));
        }
    })
}

/// The f64 with the same shortest decimal form as `v` (a float32 stored in a REAL column).
fn float32_as_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn value_at(col: &dyn Array, i: usize) -> Result<Value> {
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
            let v = col.as_primitive::<t::Decimal128Type>().value(i);
            Value::Text(format_decimal(v, *s))
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

fn existing_columns(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let mut st = conn
        .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
        .map_err(wh_err)?;
    let cols = st
        .query_map([], |r| r.get::<_, String>(1))
        .map_err(wh_err)?;
    cols.collect::<Result<Vec<_>, _>>().map_err(wh_err)
}

fn load_batch(
    conn: &mut Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
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
    let mut schema: Option<Arc<Schema>> = None;
    let mut columns: Vec<String> = Vec::new();
    let mut staged = 0u64;
    for lf in &batch.files {
        let key = &lf.file.key;
        let bytes = match files.local_path(key) {
            Some(p) => std::fs::read(&p).map_err(|e| wh_err(format!("read {key}: {e}")))?,
            None => {
                let mut buf = Vec::new();
                files
                    .open_read(key, None)?
                    .read_to_end(&mut buf)
                    .map_err(|e| wh_err(format!("read {key}: {e}")))?;
                buf
            }
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .map_err(|e| wh_err(format!("{key}: not a readable Parquet file: {e}")))?
            .with_batch_size(8192)
            .build()
            .map_err(|e| wh_err(format!("{key}: {e}")))?;
        let file_schema = reader.schema();
        if schema.is_none() {
            // First file: create the target and staging tables.
            let mut defs = Vec::new();
            for f in file_schema.fields() {
                defs.push((f.name().clone(), sql_type(f.data_type())?));
            }
            for (col, _) in &lf.file.partition {
                defs.push((col.clone(), "TEXT"));
            }
            defs.push((SOURCE_OBJECT_COLUMN.into(), "TEXT"));
            defs.push((SOURCE_OFFSET_COLUMN.into(), "INTEGER"));
            defs.push((BATCH_COLUMN.into(), "TEXT"));
            let ddl = defs
                .iter()
                .map(|(n, t)| format!("{} {t}", quote_ident(n)))
                .collect::<Vec<_>>()
                .join(", ");
            tx.execute_batch(&format!("CREATE TABLE IF NOT EXISTS {table} ({ddl})"))
                .map_err(wh_err)?;
            let have = existing_columns(&tx, &batch.table)?;
            for (n, t) in &defs {
                if !have.contains(n) {
                    tx.execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {} {t}",
                        quote_ident(n)
                    ))
                    .map_err(wh_err)?;
                }
            }
            if !batch.merge_keys.is_empty() {
                let keys = quote_list(&batch.merge_keys);
                let idx = quote_ident(&format!("{}__merge_key", batch.table));
                tx.execute_batch(&format!(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {idx} ON {table} ({keys})"
                ))
                .map_err(wh_err)?;
            }
            tx.execute_batch(&format!("DROP TABLE IF EXISTS temp._tributary_staging; CREATE TEMP TABLE _tributary_staging ({ddl})"))
                .map_err(wh_err)?;
            columns = defs.into_iter().map(|(n, _)| n).collect();
            schema = Some(file_schema.clone());
        } else if schema.as_ref().map(|s| s.fields() != file_schema.fields()) == Some(true) {
            return Err(wh_err(format!(
                "{key}: schema differs from the other files of batch {}",
                batch.batch_id
            )));
        }
        let placeholders = (1..=columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert_sql = format!(
            "INSERT INTO temp._tributary_staging ({}) VALUES ({placeholders})",
            quote_list(&columns)
        );
        let mut insert = tx.prepare_cached(&insert_sql).map_err(wh_err)?;
        for rb in reader {
            let rb = rb.map_err(|e| wh_err(format!("{key}: {e}")))?;
            let mut row: Vec<Value> = Vec::with_capacity(columns.len());
            for i in 0..rb.num_rows() {
                row.clear();
                for c in rb.columns() {
                    row.push(value_at(c.as_ref(), i)?);
                }
                for (_, v) in &lf.file.partition {
                    row.push(Value::Text(v.clone()));
                }
                row.push(Value::Text(lf.position.object.clone()));
                row.push(Value::Integer(lf.position.offset as i64));
                row.push(Value::Text(batch.batch_id.clone()));
                insert
                    .execute(rusqlite::params_from_iter(row.iter()))
                    .map_err(wh_err)?;
                staged += 1;
            }
        }
    }
    if schema.is_some() {
        let cols = quote_list(&columns);
        let merge = if batch.merge_keys.is_empty() {
            format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM temp._tributary_staging")
        } else {
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
            // Keep the earliest source position per key, whatever order batches arrive in.
            format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM temp._tributary_staging WHERE true \
                 ORDER BY {so}, {sf} \
                 ON CONFLICT ({keys}) DO UPDATE SET {sets} \
                 WHERE (excluded.{so}, excluded.{sf}) < ({table}.{so}, {table}.{sf})"
            )
        };
        tx.execute_batch(&merge).map_err(wh_err)?;
        tx.execute_batch("DROP TABLE temp._tributary_staging")
            .map_err(wh_err)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {LEDGER_TABLE} (batch_id, table_name, run_id, files, rows_staged, loaded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', 'now'))"
        ),
        params![batch.batch_id, batch.table, batch.run_id, batch.files.len() as i64, staged as i64],
    )
    .map_err(wh_err)?;
    let in_table: i64 = if schema.is_some() {
        tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(wh_err)?
    } else {
        0
    };
    tx.commit().map_err(wh_err)?;
    Ok(LoadOutcome::Loaded {
        rows_staged: staged,
        rows_in_table: in_table as u64,
    })
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
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| wh_err(format!("open {}: {e}", path.display())))?;
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

/// The first words of a statement, for error messages.
fn statement_head(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn collect_rows(st: &mut rusqlite::Statement<'_>, n: usize) -> Result<Vec<Vec<Option<String>>>> {
    let mut rows = Vec::new();
    let mut q = st.query([]).map_err(wh_err)?;
    while let Some(r) = q.next().map_err(wh_err)? {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let v: Value = r.get(i).map_err(wh_err)?;
            out.push(match v {
                Value::Null => None,
                Value::Integer(i) => Some(i.to_string()),
                Value::Real(f) => Some(f.to_string()),
                Value::Text(t) => Some(t),
                Value::Blob(b) => Some(format!("<{} bytes>", b.len())),
            });
        }
        rows.push(out);
    }
    Ok(rows)
}

use std::io::Read;

#[async_trait]
impl Warehouse for SqliteWarehouse {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    async fn load(&self, batch: &LoadBatch, files: Arc<dyn ObjectStore>) -> Result<LoadOutcome> {
        let batch = batch.clone();
        self.call(move |c| {
            load_batch(c, &batch, &*files)
                .map_err(|e| wh_err(format!("load batch {}: {e}", batch.batch_id)))
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

    #[tokio::test]
    async fn sqlite_warehouse_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let wh = SqliteWarehouse::open(dir.path().join("wh.db")).unwrap();
        let files: Arc<dyn ObjectStore> =
            Arc::new(LocalStore::new(dir.path().join("files")).unwrap());
        super::super::suite::run_all(&wh, files).await;
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
}
