//! The schemas ("shapes") of one batch's files. Files of one batch may differ: shards written
//! under an earlier version of the pipeline file, or by a JSON source under `[schema]
//! on_new_column = "evolve"` that met new fields. The batch loads as the union of its shapes —
//! every column of any file, a column in several files at the widest of their types (the rules
//! of [`evolve::compare`]) — and a file without a column contributes NULLs to it. Two files whose
//! types for one column cannot be reconciled refuse the batch, naming the column, both files and
//! both types, before anything is loaded.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use super::evolve::{self, Change, ColType};
use crate::object_store::ObjectStore;
use crate::{BackendError, Result};
use protocol::LoadBatch;

/// The batch's distinct file schemas and the union they load as.
#[derive(Debug, Clone)]
pub struct Shapes {
    /// The union: what the staging table and the target are planned from.
    pub union: Arc<Schema>,
    /// The distinct schemas, in the order their first file appears in the batch.
    pub distinct: Vec<Arc<Schema>>,
    /// For each file of the batch, the index of its schema in `distinct`.
    pub of_file: Vec<usize>,
}

impl Shapes {
    /// Groups the files' schemas (`(key, schema)` in batch order) and merges them.
    pub fn new(table: &str, files: &[(String, Arc<Schema>)]) -> Result<Shapes> {
        let mut distinct: Vec<Arc<Schema>> = Vec::new();
        let mut first_key: Vec<&str> = Vec::new();
        let mut of_file = Vec::with_capacity(files.len());
        for (key, s) in files {
            let found = distinct.iter().position(|d| d.fields() == s.fields());
            of_file.push(found.unwrap_or_else(|| {
                distinct.push(s.clone());
                first_key.push(key);
                distinct.len() - 1
            }));
        }
        let union = merge(table, &first_key, &distinct)?;
        Ok(Shapes {
            union: Arc::new(union),
            distinct,
            of_file,
        })
    }

    /// Whether every file has the same schema (the common case).
    pub fn uniform(&self) -> bool {
        self.distinct.len() <= 1
    }
}

/// The union of `schemas` (the first file of each is `keys[i]`, for errors).
fn merge(table: &str, keys: &[&str], schemas: &[Arc<Schema>]) -> Result<Schema> {
    let mut fields: Vec<Field> = Vec::new();
    let mut from: Vec<usize> = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        for f in s.fields() {
            let Some(at) = fields.iter().position(|u| u.name() == f.name()) else {
                let mut f = (**f).clone();
                if i > 0 {
                    f.set_nullable(true);
                }
                fields.push(f);
                from.push(i);
                continue;
            };
            if let Some(w) = wider(table, &fields[at], f, keys[from[at]], keys[i])? {
                fields[at] = w.with_nullable(true);
                from[at] = i;
            }
        }
    }
    // A column some shape lacks is NULL for that shape's rows.
    for f in fields.iter_mut() {
        if schemas.iter().any(|s| s.field_with_name(f.name()).is_err()) {
            f.set_nullable(true);
        }
    }
    Ok(Schema::new(fields))
}

/// The field that replaces `a` to hold `b` too (`None`: `a` holds it): the wider of the two,
/// or for an evolved column whose types do not widen, a string of the values' text. Two
/// declared types that cannot be reconciled are an error.
fn wider(table: &str, a: &Field, b: &Field, a_key: &str, b_key: &str) -> Result<Option<Field>> {
    let ty = |f: &Field| {
        ColType::of_field(f).ok_or_else(|| {
            BackendError::Warehouse(format!(
                "column type {} of column {:?} cannot be loaded into SQL",
                f.data_type(),
                f.name()
            ))
        })
    };
    let (ta, tb) = (ty(a)?, ty(b)?);
    if ta == tb {
        return Ok(None);
    }
    match evolve::compare(table, a.name(), &ta, &tb) {
        Ok(Change::Widen(_)) => return Ok(Some(b.clone())),
        Ok(Change::Keep) => return Ok(None),
        Err(_) => {}
    }
    if evolve::compare(table, a.name(), &tb, &ta).is_ok() {
        return Ok(None);
    }
    if evolve::is_evolved(a) || evolve::is_evolved(b) {
        return Ok(Some(evolve::mark_evolved(Field::new(
            a.name(),
            DataType::Utf8,
            true,
        ))));
    }
    Err(BackendError::Warehouse(format!(
        "table {table:?}, column {:?}: {a_key} has {} and {b_key} has {}; the types are incompatible, so the files cannot load in one batch (nothing was loaded)",
        a.name(),
        ta.describe(),
        tb.describe()
    )))
}

/// Reads the schema of every file of the batch from its Parquet footer (two ranged reads per
/// file, no data).
pub async fn read(files: &Arc<dyn ObjectStore>, batch: &LoadBatch) -> Result<Shapes> {
    let mut out = Vec::with_capacity(batch.files.len());
    for lf in &batch.files {
        let schema = read_footer_schema(files.clone(), lf.file.key.clone(), lf.file.bytes).await?;
        out.push((lf.file.key.clone(), schema));
    }
    Shapes::new(&batch.table, &out)
}

/// [`read`], on a thread that may block.
pub fn read_blocking(files: &dyn ObjectStore, batch: &LoadBatch) -> Result<Shapes> {
    let mut out = Vec::with_capacity(batch.files.len());
    for lf in &batch.files {
        let schema = footer_schema(files, &lf.file.key, lf.file.bytes)?;
        out.push((lf.file.key.clone(), schema));
    }
    Shapes::new(&batch.table, &out)
}

/// Reads the Arrow schema from a Parquet file's footer with two ranged reads.
pub async fn read_footer_schema(
    files: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
) -> Result<Arc<Schema>> {
    tokio::task::spawn_blocking(move || footer_schema(&*files, &key, size))
        .await
        .map_err(|e| BackendError::Warehouse(format!("reading a Parquet footer: {e}")))?
}

fn footer_schema(files: &dyn ObjectStore, key: &str, size: u64) -> Result<Arc<Schema>> {
    use std::io::Read;
    let bad =
        |d: String| BackendError::Warehouse(format!("{key}: not a readable Parquet file: {d}"));
    if size < 12 {
        return Err(bad("too small".into()));
    }
    let range = |start, end| Some(protocol::ByteRange { start, end });
    let mut tail = [0u8; 8];
    files
        .open_read(key, range(size - 8, size))?
        .read_exact(&mut tail)
        .map_err(|e| bad(e.to_string()))?;
    if &tail[4..] != b"PAR1" {
        return Err(bad("no PAR1 footer".into()));
    }
    let len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    let start = size
        .checked_sub(8 + len)
        .ok_or_else(|| bad("bad footer length".into()))?;
    let mut meta = Vec::with_capacity(len as usize);
    files
        .open_read(key, range(start, size - 8))?
        .read_to_end(&mut meta)
        .map_err(|e| bad(e.to_string()))?;
    let md = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&meta)
        .map_err(|e| bad(e.to_string()))?;
    let schema = parquet::arrow::parquet_to_arrow_schema(
        md.file_metadata().schema_descr(),
        md.file_metadata().key_value_metadata(),
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(fields: &[(&str, DataType)]) -> (String, Arc<Schema>) {
        let fs: Vec<Field> = fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), false))
            .collect();
        (format!("k{}", fields.len()), Arc::new(Schema::new(fs)))
    }

    #[test]
    fn one_shape_is_uniform_and_its_own_union() {
        let a = shape(&[("id", DataType::Utf8), ("n", DataType::Int32)]);
        let s = Shapes::new("t", &[a.clone(), a.clone()]).unwrap();
        assert!(s.uniform());
        assert_eq!(s.of_file, vec![0, 0]);
        assert_eq!(s.union.fields(), a.1.fields());
    }

    #[test]
    fn the_union_takes_every_column_at_its_widest_type() {
        let a = shape(&[("id", DataType::Utf8), ("n", DataType::Int32)]);
        let b = shape(&[
            ("id", DataType::Utf8),
            ("n", DataType::Int64),
            ("note", DataType::Utf8),
        ]);
        let s = Shapes::new("t", &[a.clone(), b.clone(), a]).unwrap();
        assert_eq!(s.of_file, vec![0, 1, 0]);
        let u = &s.union;
        let names: Vec<&str> = u.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "n", "note"]);
        assert_eq!(u.field(1).data_type(), &DataType::Int64);
        assert!(!u.field(0).is_nullable(), "in every file, as written");
        assert!(u.field(1).is_nullable() && u.field(2).is_nullable());
        // The order of the files does not change the types.
        let s2 = Shapes::new("t", &[b.clone(), shape(&[("n", DataType::Int16)])]).unwrap();
        assert_eq!(s2.union.field(1).data_type(), &DataType::Int64);
    }

    #[test]
    fn an_evolved_column_of_mixed_types_loads_as_text() {
        let ev = |t: DataType| {
            Arc::new(Schema::new(vec![evolve::mark_evolved(Field::new(
                "x", t, true,
            ))]))
        };
        let s = Shapes::new(
            "t",
            &[
                ("a".into(), ev(DataType::Int64)),
                ("b".into(), ev(DataType::Boolean)),
            ],
        )
        .unwrap();
        assert_eq!(s.union.field(0).data_type(), &DataType::Utf8);
        assert!(evolve::is_evolved(s.union.field(0)));
    }

    #[test]
    fn irreconcilable_types_name_the_column_both_files_and_types() {
        let a = (
            "p/a.parquet".to_string(),
            shape(&[("n", DataType::Int64)]).1,
        );
        let b = (
            "p/b.parquet".to_string(),
            shape(&[("n", DataType::Boolean)]).1,
        );
        let err = Shapes::new("sales", &[a, b]).unwrap_err().to_string();
        for want in [
            "\"sales\"",
            "column \"n\"",
            "p/a.parquet has BIGINT (int64)",
            "p/b.parquet has BOOLEAN (bool)",
            "nothing was loaded",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
    }
}
