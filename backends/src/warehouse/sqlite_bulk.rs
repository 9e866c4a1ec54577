//! The first load into an empty table, in bulk: the rows go in without the merge-key index,
//! which is then built once (SQLite sorts the keys), as a restore loads a table before it
//! indexes it. Keeping a unique index up to date row by row costs a descent of the index per
//! row; on the reference workload's 868,395 rows in 34 files, loading in bulk took the load's
//! inserting thread from 2.67 to 2.04 CPU seconds and the load from 2.93 to 2.40 s
//! (BENCHMARKS.md, stop 31).
//!
//! The merge is the same as the upserts' (`sqlite::upsert_sql`). The reader thread remembers a
//! 64-bit hash of every key it has passed ([`FirstSeen`]): a row whose key is new to the batch
//! is inserted plainly; a row whose key hash was seen (a repeat, or rarely another key with the
//! same hash) is held back and upserted after the index exists, in the batch's order, which is
//! what the upserts would have done with it: the table is the same, row for row and in the same
//! places. Two keys SQLite takes as equal but that hash apart (text `'5'` and the integer 5 in an
//! integer column, from files whose types differ) make the index fail to build: the bulk
//! insert is then rolled back to its savepoint and the batch goes through the upserts.
//!
//! Memory is bounded ([`Budget`]): once the reader thread would remember more than ~4M keys, or
//! the held rows pass 64 MB, the index is built over what is in, the held rows are merged, and
//! the batch's remaining files go through the upserts, as a table that holds rows would.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use protocol::{LoadBatch, LoadFile};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::sqlite::{insert_file, insert_sql, key_index_name, key_index_sql, upsert_sql, wh_err};
use super::sqlite_cells::Cells;
use super::sqlite_insert::GroupInsert;
use super::{BATCH_COLUMN, SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN, quote_ident};
use crate::Result;
use crate::object_store::ObjectStore;

/// Whether building the key index failed because keys repeat (keys equal only to SQLite,
/// which the load's own hashing told apart): expected, and the batch merges row by row. Any
/// other failure (the disk full, the temporary file of the index's sort not created) is a
/// fault of the machine, logged as a warning before the same fallback.
fn keys_repeat(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// Whether the batch loads in bulk: it merges by keys that are the rows' own columns (not the
/// load's lineage, which every row of a file shares), and its table is empty.
pub(super) fn applies(tx: &Connection, batch: &LoadBatch) -> Result<bool> {
    let lineage = [SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN, BATCH_COLUMN];
    if batch.merge_keys.is_empty() || batch.merge_keys.iter().any(|k| lineage.contains(&&**k)) {
        return Ok(false);
    }
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {})",
        quote_ident(&batch.table)
    );
    tx.query_row(&sql, [], |r| r.get(0)).map_err(wh_err)
}

/// How much a bulk load keeps before it merges the rest of its batch through the index.
#[derive(Clone, Copy, Debug)]
pub(super) struct Budget {
    /// Key hashes the reader thread remembers (8 bytes each in a hash set: ~75 MB at most).
    pub(super) keys: usize,
    /// Bytes of held-back rows (repeats waiting for the index).
    pub(super) held_bytes: usize,
}

impl Budget {
    pub(super) const DEFAULT: Budget = Budget {
        keys: 4 << 20,
        held_bytes: 64 << 20,
    };
}

/// Loads the batch into its empty table in bulk (see the module's comment) until the batch is
/// done or [`Budget::DEFAULT`] is spent, then builds the index, merges the held rows and the
/// batch's remaining files through it. The rows loaded, or `None` when the keys could not be
/// indexed as inserted: nothing of the batch is then left in the table and the caller merges
/// it through the upserts.
pub(super) fn load_fresh(
    tx: &Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    columns: &[String],
) -> Result<Option<u64>> {
    load_fresh_within(tx, batch, files, columns, Budget::DEFAULT)
}

fn load_fresh_within(
    tx: &Connection,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    columns: &[String],
    budget: Budget,
) -> Result<Option<u64>> {
    tx.execute_batch(&format!(
        "SAVEPOINT tributary_bulk; DROP INDEX IF EXISTS {}",
        key_index_name(batch)
    ))
    .map_err(wh_err)?;
    let mut inserts = Inserts::new(tx, batch, columns)?;
    let mut seen = FirstSeen::new(&batch.merge_keys, budget);
    // Each file in key order, as the upserts take it: the rows land where the upserts put them,
    // and SQLite's sort of the keys for the index is given runs already in order (without
    // them, the load's thread ran 5 % more instructions on 100k rows; BENCHMARKS.md, stop 31).
    let loaded = super::sqlite_read::each_file_prepared(
        batch,
        files,
        |lf, rb| seen.prepare(lf, rb),
        |lf, prepared| inserts.file(lf, prepared),
    )
    .and_then(|()| inserts.end_bulk());
    if inserts.unindexable {
        tx.execute_batch("ROLLBACK TO tributary_bulk; RELEASE tributary_bulk")
            .map_err(wh_err)?;
        return Ok(None);
    }
    loaded?;
    let staged = inserts.staged;
    drop(inserts);
    tx.execute_batch("RELEASE tributary_bulk").map_err(wh_err)?;
    Ok(Some(staged))
}

/// What the reader thread gives the inserts for a file.
pub(super) enum Prepared {
    /// While the batch loads in bulk: the file's rows split by whether their key is new.
    Bulk(Split),
    /// Once the bulk's [`Budget`] is spent: the file's rows, to merge through the index.
    Merge(RecordBatch),
}

/// The inserts' side of a bulk load: plain inserts and held-back repeats until the index is
/// built, upserts after.
struct Inserts<'c, 'b> {
    tx: &'c Connection,
    batch: &'b LoadBatch,
    columns: &'b [String],
    plain: Option<GroupInsert<'c>>,
    merge: Option<GroupInsert<'c>>,
    held: Vec<(&'b LoadFile, RecordBatch)>,
    staged: u64,
    /// The index could not be built over the inserted keys (the load stops; see the module).
    unindexable: bool,
}

impl<'c, 'b> Inserts<'c, 'b> {
    fn new(tx: &'c Connection, batch: &'b LoadBatch, columns: &'b [String]) -> Result<Self> {
        let plain =
            GroupInsert::prepare(tx, columns.len(), |rows| insert_sql(batch, columns, rows))
                .map_err(wh_err)?;
        Ok(Inserts {
            tx,
            batch,
            columns,
            plain: Some(plain),
            merge: None,
            held: Vec::new(),
            staged: 0,
            unindexable: false,
        })
    }

    fn file(&mut self, lf: &'b LoadFile, prepared: Prepared) -> Result<()> {
        let (batch, columns) = (self.batch, self.columns);
        match (prepared, self.plain.as_mut()) {
            (Prepared::Bulk(split), Some(plain)) => {
                self.staged += insert_file(plain, columns, batch, lf, &split.first)?;
                self.held.extend(split.repeats.map(|r| (lf, r)));
                Ok(())
            }
            // The reader thread splits no file after it has handed one over whole; were it to,
            // a key's first row still merges before its repeats.
            (Prepared::Bulk(split), None) => {
                self.merge_file(lf, &split.first)?;
                split.repeats.map_or(Ok(()), |r| self.merge_file(lf, &r))
            }
            (Prepared::Merge(rb), _) => self.merge_file(lf, &rb),
        }
    }

    /// Merges a file's rows through the index (the bulk ended first if it has not).
    fn merge_file(&mut self, lf: &'b LoadFile, rb: &RecordBatch) -> Result<()> {
        self.end_bulk()?;
        let (batch, columns) = (self.batch, self.columns);
        let Some(merge) = self.merge.as_mut() else {
            return Err(wh_err(format!("{}: no upsert after the bulk", lf.file.key)));
        };
        self.staged += insert_file(merge, columns, batch, lf, rb)?;
        Ok(())
    }

    /// Ends the bulk, once: builds the index over the inserted rows, then merges the held rows
    /// through it, in the batch's order.
    fn end_bulk(&mut self) -> Result<()> {
        if self.plain.take().is_none() {
            return Ok(());
        }
        let (batch, columns) = (self.batch, self.columns);
        if let Err(e) = self.tx.execute_batch(&key_index_sql(batch)) {
            if keys_repeat(&e) {
                tracing::info!(table = %batch.table, reason = %e,
                    "the bulk load's keys did not index as inserted; merging the batch row by row");
            } else {
                tracing::warn!(table = %batch.table, error = %e,
                    "the bulk load's key index could not be built; merging the batch row by row");
            }
            self.unindexable = true;
            return Err(wh_err(format!("indexing {}: {e}", batch.table)));
        }
        let mut merge = GroupInsert::prepare(self.tx, columns.len(), |rows| {
            upsert_sql(batch, columns, rows)
        })
        .map_err(wh_err)?;
        for (lf, rows) in std::mem::take(&mut self.held) {
            self.staged += insert_file(&mut merge, columns, batch, lf, &rows)?;
        }
        self.merge = Some(merge);
        Ok(())
    }
}

/// A file's rows split by whether their key is new to the batch.
pub(super) struct Split {
    /// The rows whose key no earlier row of the batch has (or whose key has a NULL, which
    /// never merges), in their order.
    pub(super) first: RecordBatch,
    /// The rows whose key hash an earlier row had, in their order; `None` when there are none.
    pub(super) repeats: Option<RecordBatch>,
}

/// The hashes of the merge keys a batch's rows have had so far, on the reader thread.
pub(super) struct FirstSeen {
    keys: Vec<String>,
    seen: HashSet<u64>,
    hasher: DefaultHashBuilder,
    budget: Budget,
    held_bytes: usize,
    /// The budget was spent: every later file merges through the index.
    spent: bool,
}

impl FirstSeen {
    pub(super) fn new(keys: &[String], budget: Budget) -> FirstSeen {
        FirstSeen {
            keys: keys.to_vec(),
            seen: HashSet::new(),
            hasher: DefaultHashBuilder::default(),
            budget,
            held_bytes: 0,
            spent: false,
        }
    }

    /// One file's rows for the inserts: split while the budget lasts (a file whose rows could
    /// pass the key budget merges), whole to merge after.
    pub(super) fn prepare(&mut self, lf: &LoadFile, rb: RecordBatch) -> Result<Prepared> {
        if !self.spent && self.seen.len() + rb.num_rows() > self.budget.keys {
            self.spend();
        }
        if self.spent {
            return Ok(Prepared::Merge(rb));
        }
        let split = self.split(lf, rb)?;
        self.held_bytes += split
            .repeats
            .as_ref()
            .map_or(0, RecordBatch::get_array_memory_size);
        if self.held_bytes > self.budget.held_bytes {
            self.spend();
        }
        Ok(Prepared::Bulk(split))
    }

    fn spend(&mut self) {
        self.spent = true;
        self.seen = HashSet::new();
    }

    /// Splits one file's rows `rb` (`lf`: its partition values), remembering their keys.
    fn split(&mut self, lf: &LoadFile, rb: RecordBatch) -> Result<Split> {
        let repeat = self.repeats(lf, &rb)?;
        if !repeat.iter().any(|r| *r) {
            return Ok(Split {
                first: rb,
                repeats: None,
            });
        }
        let keep = |want: bool| {
            let mask = BooleanArray::from_iter(repeat.iter().map(|r| Some(*r == want)));
            filter_record_batch(&rb, &mask).map_err(wh_err)
        };
        Ok(Split {
            first: keep(false)?,
            repeats: Some(keep(true)?),
        })
    }

    /// For each row of `rb`, whether its key's hash was seen before (and it is remembered).
    fn repeats(&mut self, lf: &LoadFile, rb: &RecordBatch) -> Result<Vec<bool>> {
        let schema = rb.schema();
        let mut parts: Vec<Part> = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let part = match schema.index_of(k) {
                Ok(i) => Part::Column(Cells::of(rb.column(i).as_ref())),
                Err(_) => match lf.file.partition.iter().find(|(p, _)| p == k) {
                    Some((_, v)) => Part::Shared(ValueRef::Text(v.as_bytes())),
                    // A column this file lacks is NULL on every row: no row of it merges.
                    None => return Ok(vec![false; rb.num_rows()]),
                },
            };
            parts.push(part);
        }
        let mut out = Vec::with_capacity(rb.num_rows());
        for row in 0..rb.num_rows() {
            let hash = key_hash(&mut parts, row, self.hasher.build_hasher())
                .map_err(|e| wh_err(format!("{}: {e}", lf.file.key)))?;
            out.push(hash.is_some_and(|h| !self.seen.insert(h)));
        }
        Ok(out)
    }
}

/// One merge key of a file: a column of it, or a value every row shares.
enum Part<'a> {
    Column(Cells<'a>),
    Shared(ValueRef<'a>),
}

/// The hash of row `row`'s key, as the values SQLite is given; `None` when a part is NULL (or a
/// NaN, which SQLite stores as NULL): such a key never merges.
fn key_hash(
    parts: &mut [Part<'_>],
    row: usize,
    mut h: impl Hasher,
) -> std::result::Result<Option<u64>, String> {
    for part in parts.iter_mut() {
        let hashed = match part {
            Part::Shared(v) => hash_value(*v, &mut h),
            Part::Column(c) => hash_value(c.at(row)?.value(), &mut h),
        };
        if !hashed {
            return Ok(None);
        }
    }
    Ok(Some(h.finish()))
}

/// Adds `v`, with its storage class, to `h`; false for a NULL.
fn hash_value(v: ValueRef<'_>, h: &mut impl Hasher) -> bool {
    match v {
        ValueRef::Null => return false,
        ValueRef::Real(f) if f.is_nan() => return false,
        ValueRef::Integer(i) => (1u8, i).hash(h),
        ValueRef::Real(f) => (2u8, f.to_bits()).hash(h),
        ValueRef::Text(t) => (3u8, t).hash(h),
        ValueRef::Blob(b) => (4u8, b).hash(h),
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use protocol::OutputFile;
    use rusqlite::types::Value;

    use super::*;
    use crate::object_store::LocalStore;
    use crate::warehouse::sqlite::merge_rows;
    use crate::warehouse::suite::{batch, load_file, write_columns};

    const COLUMNS: [&str; 5] = [
        "id",
        "val",
        SOURCE_OBJECT_COLUMN,
        SOURCE_OFFSET_COLUMN,
        BATCH_COLUMN,
    ];

    fn columns() -> Vec<String> {
        COLUMNS.iter().map(|c| c.to_string()).collect()
    }

    /// A Parquet file of `id` (text, NULL for `None`) and `val`.
    async fn put(
        files: &dyn ObjectStore,
        key: &str,
        ids: &[Option<&str>],
        vals: &[i64],
    ) -> OutputFile {
        let id = Field::new("id", DataType::Utf8, true);
        let val = Field::new("val", DataType::Int64, false);
        let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
        let vals: ArrayRef = Arc::new(Int64Array::from(vals.to_vec()));
        write_columns(files, key, vec![(id, ids), (val, vals)]).await
    }

    /// A connection whose table `t` has the batch's columns, `id` declared as `id_type`.
    fn table(id_type: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE t (id {id_type}, val INTEGER, {SOURCE_OBJECT_COLUMN} TEXT, \
             {SOURCE_OFFSET_COLUMN} INTEGER, {BATCH_COLUMN} TEXT)"
        ))
        .unwrap();
        conn
    }

    /// The table's rows (id, val, offset) in its order.
    fn rows(conn: &Connection) -> Vec<Vec<Value>> {
        let mut st = conn
            .prepare(&format!(
                "SELECT id, val, {SOURCE_OFFSET_COLUMN} FROM t ORDER BY rowid"
            ))
            .unwrap();
        st.query_map([], |r| (0..3).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Three files: keys repeated inside a file and across files, NULL keys, a later file from
    /// an earlier source position, and two files from the same one (14 rows, 8 after the merge).
    async fn three_files(files: &dyn ObjectStore) -> LoadBatch {
        let (k1, k2, k3) = (Some("k1"), Some("k2"), Some("k3"));
        let ids = [k1, k2, k1, None, k3, k2, None];
        let f1 = put(files, "a.parquet", &ids, &[1, 2, 3, 4, 5, 6, 7]).await;
        let ids = [k2, None, Some("k4"), k3];
        let f2 = put(files, "b.parquet", &ids, &[10, 11, 12, 13]).await;
        let f3 = put(files, "c.parquet", &[k3, Some("k5"), k1], &[20, 21, 22]).await;
        batch(
            "r1-t-b0000",
            "t",
            vec![
                load_file(f1, "raw/x", 500, 1),
                load_file(f2, "raw/x", 0, 0),
                load_file(f3, "raw/x", 500, 1),
            ],
        )
    }

    /// Past its budget (keys remembered, or bytes held back) a bulk load builds the index and
    /// merges the held rows and the files left through it: the table is still the upserts'.
    #[tokio::test]
    async fn past_its_budget_a_bulk_load_merges_the_rest_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let b = three_files(&*files).await;
        let upserted = table("TEXT");
        merge_rows(&upserted, &b, &*files, &columns()).unwrap();
        let unlimited = usize::MAX;
        for budget in [
            // a.parquet in bulk, b.parquet would pass 8 keys: b and c merge.
            Budget {
                keys: 8,
                held_bytes: unlimited,
            },
            // The first file already passes it: everything merges.
            Budget {
                keys: 1,
                held_bytes: unlimited,
            },
            // a.parquet's repeats spend it: b and c merge.
            Budget {
                keys: unlimited,
                held_bytes: 1,
            },
        ] {
            let conn = table("TEXT");
            let staged = load_fresh_within(&conn, &b, &*files, &columns(), budget).unwrap();
            assert_eq!(staged, Some(14), "{budget:?}");
            assert_eq!(rows(&conn), rows(&upserted), "{budget:?}");
        }
    }

    /// Keys repeated inside a file and across files, NULL keys (which never merge), a later
    /// file from an earlier source position, and two files from the same one: the bulk load
    /// leaves the table the row-by-row upserts leave, row for row and in the same places.
    #[tokio::test]
    async fn a_bulk_load_leaves_the_table_the_upserts_leave() {
        let dir = tempfile::tempdir().unwrap();
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let b = three_files(&*files).await;
        let bulk = table("TEXT");
        assert!(applies(&bulk, &b).unwrap());
        let staged = load_fresh(&bulk, &b, &*files, &columns()).unwrap();
        assert_eq!(staged, Some(14));
        let upserted = table("TEXT");
        assert_eq!(merge_rows(&upserted, &b, &*files, &columns()).unwrap(), 14);
        assert_eq!(rows(&bulk), rows(&upserted));
        // k1..k5 once each, the two NULL-keyed rows of a.parquet and the one of b.parquet:
        // each file in key order (NULL first), each key's winner where its first row went in.
        let (int, text) = (Value::Integer, |s: &str| Value::Text(s.into()));
        let row = |id: Value, val, offset| vec![id, int(val), int(offset)];
        assert_eq!(
            rows(&bulk),
            vec![
                row(Value::Null, 4, 500),
                row(Value::Null, 7, 500),
                row(text("k1"), 22, 500),
                row(text("k2"), 10, 0),
                row(text("k3"), 13, 0),
                row(Value::Null, 11, 0),
                row(text("k4"), 12, 0),
                row(text("k5"), 21, 500),
            ]
        );
        let index: i64 = bulk
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 't__merge_key'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 1, "the merge-key index is built");
        assert!(
            !applies(&bulk, &b).unwrap(),
            "a table with rows merges through the index"
        );
    }

    /// Text `'5'` and `'5.0'` hash apart but are the same integer in an INTEGER column: the
    /// index cannot be built over the bulk insert, which is rolled back whole, and the upserts
    /// merge the batch.
    #[tokio::test]
    async fn keys_equal_only_to_sqlite_roll_the_bulk_insert_back() {
        let dir = tempfile::tempdir().unwrap();
        let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
        let f1 = put(&*files, "a.parquet", &[Some("5"), Some("7")], &[1, 2]).await;
        let f2 = put(&*files, "b.parquet", &[Some("5.0")], &[3]).await;
        let b = batch(
            "r1-t-b0000",
            "t",
            vec![load_file(f1, "raw/x", 0, 0), load_file(f2, "raw/x", 0, 1)],
        );
        let conn = table("INTEGER");
        conn.execute_batch("BEGIN").unwrap();
        assert_eq!(load_fresh(&conn, &b, &*files, &columns()).unwrap(), None);
        assert!(rows(&conn).is_empty(), "nothing of the bulk insert is left");
        assert_eq!(merge_rows(&conn, &b, &*files, &columns()).unwrap(), 3);
        conn.execute_batch("COMMIT").unwrap();
        let int = Value::Integer;
        assert_eq!(
            rows(&conn),
            vec![vec![int(5), int(3), int(0)], vec![int(7), int(2), int(0)]]
        );
    }

    #[test]
    fn an_index_that_fails_on_repeated_keys_is_expected_and_a_full_disk_is_not() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER); INSERT INTO t VALUES (5), (5.0)")
            .unwrap();
        let repeated = conn
            .execute_batch("CREATE UNIQUE INDEX t_k ON t (k)")
            .unwrap_err();
        assert!(keys_repeat(&repeated), "{repeated}");
        // A database allowed no more pages than it has: the index has nowhere to go.
        conn.execute_batch("CREATE TABLE u (k TEXT); INSERT INTO u VALUES ('a'), ('b')")
            .unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        let full = conn
            .execute_batch("CREATE UNIQUE INDEX u_k ON u (k)")
            .unwrap_err();
        assert!(full.to_string().contains("full"), "{full}");
        assert!(!keys_repeat(&full), "{full}");
    }

    #[test]
    fn only_an_empty_table_merged_by_its_own_columns_loads_in_bulk() {
        let conn = table("TEXT");
        let mut b = batch("r1-t-b0000", "t", vec![]);
        assert!(applies(&conn, &b).unwrap());
        b.merge_keys = vec![];
        assert!(!applies(&conn, &b).unwrap(), "no keys: nothing to index");
        b.merge_keys = vec!["id".into(), SOURCE_OFFSET_COLUMN.into()];
        assert!(!applies(&conn, &b).unwrap(), "a lineage key");
        b.merge_keys = vec!["id".into()];
        conn.execute_batch("INSERT INTO t (id) VALUES ('x')")
            .unwrap();
        assert!(!applies(&conn, &b).unwrap(), "a table with rows");
    }

    fn file(partition: &[(&str, &str)]) -> LoadFile {
        let mut f = load_file(
            OutputFile {
                max_bytes: Default::default(),
                key: "f.parquet".into(),
                partition: vec![],
                rows: 0,
                bytes: 0,
            },
            "raw/x",
            0,
            0,
        );
        f.file.partition = partition
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        f
    }

    fn reals(xs: &[Option<f64>]) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("x", DataType::Float64, true)]);
        let col: ArrayRef = Arc::new(Float64Array::from(xs.to_vec()));
        RecordBatch::try_new(Arc::new(schema), vec![col]).unwrap()
    }

    fn column_of(rb: &Option<RecordBatch>) -> Vec<Option<f64>> {
        rb.as_ref().map_or(vec![], |rb| {
            rb.column(0)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .iter()
                .collect()
        })
    }

    /// The reader thread stops splitting, and forgets its keys, once a file could pass the key
    /// budget or the rows held back pass their bytes.
    #[test]
    fn the_budget_spent_every_later_file_merges() {
        let d1 = file(&[("day", "d1")]);
        let budget = Budget {
            keys: 3,
            held_bytes: usize::MAX,
        };
        let mut seen = FirstSeen::new(&["x".into()], budget);
        let bulk = |p: Prepared| matches!(p, Prepared::Bulk(_));
        assert!(bulk(
            seen.prepare(&d1, reals(&[Some(1.0), Some(2.0)])).unwrap()
        ));
        assert!(!bulk(
            seen.prepare(&d1, reals(&[Some(3.0), Some(4.0)])).unwrap()
        ));
        assert!(seen.seen.is_empty(), "its keys are let go");
        assert!(!bulk(seen.prepare(&d1, reals(&[Some(5.0)])).unwrap()));
        let budget = Budget {
            keys: usize::MAX,
            held_bytes: 1,
        };
        let mut seen = FirstSeen::new(&["x".into()], budget);
        assert!(bulk(
            seen.prepare(&d1, reals(&[Some(1.0), Some(2.0)])).unwrap()
        ));
        assert!(
            bulk(seen.prepare(&d1, reals(&[Some(1.0)])).unwrap()),
            "held, then spent"
        );
        assert!(!bulk(seen.prepare(&d1, reals(&[Some(3.0)])).unwrap()));
    }

    /// A key with a NULL or NaN part never repeats (SQLite never merges it); a partition value
    /// is part of the key; repeats are found inside a file and across files, in order.
    #[test]
    fn repeats_are_keys_seen_before_and_null_parts_never_repeat() {
        let mut seen = FirstSeen::new(&["x".into(), "day".into()], Budget::DEFAULT);
        let d1 = file(&[("day", "d1")]);
        let rb = reals(&[
            Some(1.0),
            None,
            Some(f64::NAN),
            Some(1.0),
            None,
            Some(f64::NAN),
            Some(2.0),
        ]);
        let s = seen.split(&d1, rb).unwrap();
        assert_eq!(s.first.num_rows(), 6);
        assert_eq!(column_of(&s.repeats), vec![Some(1.0)]);
        let s = seen.split(&d1, reals(&[Some(2.0), Some(3.0)])).unwrap();
        assert_eq!(column_of(&s.repeats), vec![Some(2.0)]);
        assert_eq!(s.first.num_rows(), 1);
        // The same values in another partition are other keys.
        let s = seen
            .split(&file(&[("day", "d2")]), reals(&[Some(1.0), Some(2.0)]))
            .unwrap();
        assert!(s.repeats.is_none());
        assert_eq!(s.first.num_rows(), 2);
        // A key part the file lacks is NULL on every row.
        let s = seen
            .split(&file(&[]), reals(&[Some(1.0), Some(1.0)]))
            .unwrap();
        assert!(s.repeats.is_none());
    }
}
