//! The embedded warehouse's reader: a load batch's Parquet files read and decoded on a thread of
//! their own, a file ahead of the inserts (which own the connection's thread), each file's rows
//! in merge-key order so that the upserts walk the key index forwards instead of at random.

use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, UInt32Array,
};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Date32Type, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use protocol::{LoadBatch, LoadFile};

use super::sqlite::wh_err;
use crate::Result;
use crate::object_store::ObjectStore;

/// One file's rows, decoded into one record batch.
fn read_file(lf: &LoadFile, files: &dyn ObjectStore) -> Result<RecordBatch> {
    let key = &lf.file.key;
    let bytes = match files.local_path(key) {
        Some(p) => std::fs::read(&p).map_err(|e| wh_err(format!("read {key}: {e}")))?,
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut files.open_read(key, None)?, &mut buf)
                .map_err(|e| wh_err(format!("read {key}: {e}")))?;
            buf
        }
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| wh_err(format!("{key}: not a readable Parquet file: {e}")))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| wh_err(format!("{key}: {e}")))?;
    let schema = arrow::array::RecordBatchReader::schema(&reader);
    let parts = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| wh_err(format!("{key}: {e}")))?;
    concat_batches(&schema, &parts).map_err(|e| wh_err(format!("{key}: {e}")))
}

/// `rb` ordered by the merge keys it holds (a key that is a partition value is the same on every
/// row of a file); rows with equal keys keep their order, so the later of them still wins.
pub(super) fn sorted_by_keys(rb: RecordBatch, keys: &[String]) -> Result<RecordBatch> {
    let mut cols: Vec<SortColumn> = keys
        .iter()
        .filter_map(|k| rb.schema().index_of(k).ok())
        .map(|i| SortColumn {
            values: rb.column(i).clone(),
            options: None,
        })
        .collect();
    if cols.is_empty() || rb.num_rows() < 2 {
        return Ok(rb);
    }
    cols.push(SortColumn {
        values: Arc::new(UInt32Array::from_iter_values(0..rb.num_rows() as u32)),
        options: None,
    });
    let order = lexsort_to_indices(&cols, None).map_err(wh_err)?;
    take_record_batch(&rb, &order).map_err(wh_err)
}

/// `rb` with its timestamp and date columns as the text the warehouse stores them as
/// (`YYYY-MM-DD HH:MM:SS.ffffff` in UTC, `YYYY-MM-DD`; see `write_micros`, `write_days`), written
/// here on the reader thread: the inserts, on the thread that owns the connection, then bind
/// them in place like any text instead of writing each one and having SQLite copy it.
pub(super) fn dates_as_text(rb: RecordBatch) -> Result<RecordBatch> {
    use super::{timestamp_micros, write_days, write_micros};
    let schema = rb.schema();
    let is_date = |t: &DataType| matches!(t, DataType::Timestamp(..) | DataType::Date32);
    if !schema.fields().iter().any(|f| is_date(f.data_type())) {
        return Ok(rb);
    }
    let mut fields = Vec::with_capacity(rb.num_columns());
    let mut cols = Vec::with_capacity(rb.num_columns());
    for (f, c) in schema.fields().iter().zip(rb.columns()) {
        let text = match f.data_type() {
            DataType::Timestamp(unit, _) => texts(c, |i, out| {
                write_micros(timestamp_micros(c.as_ref(), unit, i), out)
            }),
            DataType::Date32 => {
                let days = c.as_primitive::<Date32Type>();
                texts(c, |i, out| write_days(days.value(i), out))
            }
            _ => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
                continue;
            }
        };
        fields.push(
            Field::new(f.name(), DataType::Utf8, f.is_nullable())
                .with_metadata(f.metadata().clone()),
        );
        cols.push(Arc::new(text) as ArrayRef);
    }
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), cols).map_err(wh_err)
}

/// The text `write` gives each non-null row of `col` (null stays null).
fn texts(col: &ArrayRef, write: impl Fn(usize, &mut String)) -> StringArray {
    let mut b = StringBuilder::with_capacity(col.len(), col.len() * 26);
    let mut text = String::with_capacity(32);
    for i in 0..col.len() {
        if col.is_null(i) {
            b.append_null();
        } else {
            write(i, &mut text);
            b.append_value(&text);
        }
    }
    b.finish()
}

/// Calls `insert` with each file of `batch` and its rows (in merge-key order, dates as text),
/// in the batch's order, while the next file is read and decoded on another thread. Stops at the
/// first error.
pub(super) fn each_file(
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    mut insert: impl FnMut(&LoadFile, &RecordBatch) -> Result<()>,
) -> Result<()> {
    each_file_prepared(batch, files, |_, rb| Ok(rb), |lf, rb| insert(lf, &rb))
}

/// [`each_file`], with `prepare` run on the reader thread on each file's rows (after they are
/// ordered and their dates written) and `insert` given what it returns.
pub(super) fn each_file_prepared<'b, T: Send>(
    batch: &'b LoadBatch,
    files: &dyn ObjectStore,
    mut prepare: impl FnMut(&'b LoadFile, RecordBatch) -> Result<T> + Send,
    mut insert: impl FnMut(&'b LoadFile, T) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Result<T>>(1);
        s.spawn(move || {
            for lf in &batch.files {
                let rb = read_file(lf, files)
                    .and_then(|rb| sorted_by_keys(rb, &batch.merge_keys))
                    .and_then(dates_as_text)
                    .and_then(|rb| prepare(lf, rb));
                let failed = rb.is_err();
                if tx.send(rb).is_err() || failed {
                    return;
                }
            }
        });
        for lf in &batch.files {
            let rb = rx
                .recv()
                .map_err(|_| wh_err(format!("{}: the reader thread stopped", lf.file.key)))??;
            insert(lf, rb)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(ids: &[&str], seq: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("seq", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(Int64Array::from(seq.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_are_ordered_by_key_and_equal_keys_keep_their_order() {
        let rb = batch(&["c", "a", "b", "a", "c"], &[0, 1, 2, 3, 4]);
        let sorted = sorted_by_keys(rb, &["id".into()]).unwrap();
        let seq: Vec<i64> = sorted
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec();
        assert_eq!(seq, vec![1, 3, 2, 0, 4]);
    }

    #[test]
    fn dates_become_the_text_the_cells_would_bind_and_nulls_stay_null() {
        use super::super::sqlite_cells::Cells;
        use arrow::array::{Date32Array, TimestampMicrosecondArray, TimestampMillisecondArray};
        let micros =
            TimestampMicrosecondArray::from(vec![Some(1_746_093_600_123_456), None, Some(-1)])
                .with_timezone("UTC");
        let millis = TimestampMillisecondArray::from(vec![Some(0), Some(86_400_001), None]);
        let days = Date32Array::from(vec![None, Some(20_209), Some(-1)]);
        let ids = StringArray::from(vec!["a", "b", "c"]);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(micros),
            Arc::new(millis),
            Arc::new(days),
        ];
        let schema = Schema::new(
            ["id", "ts", "ms", "day"]
                .iter()
                .zip(&cols)
                .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        let rb = RecordBatch::try_new(Arc::new(schema), cols).unwrap();
        let text = dates_as_text(rb.clone()).unwrap();
        assert_eq!(text.num_columns(), 4);
        assert!(
            text.schema()
                .fields()
                .iter()
                .all(|f| f.data_type() == &DataType::Utf8)
        );
        for c in 0..4 {
            let (mut was, mut now) = (
                Cells::of(rb.column(c).as_ref()),
                Cells::of(text.column(c).as_ref()),
            );
            for i in 0..3 {
                assert_eq!(
                    was.at(i).unwrap().value(),
                    now.at(i).unwrap().value(),
                    "column {c} row {i}"
                );
            }
        }
        assert_eq!(
            text.column(1).as_string::<i32>().value(0),
            "2025-05-01 10:00:00.123456"
        );
        assert_eq!(text.column(3).as_string::<i32>().value(2), "1969-12-31");
        // A file without dates is given back as it is.
        let plain = batch(&["x"], &[1]);
        assert_eq!(dates_as_text(plain.clone()).unwrap(), plain);
    }

    #[test]
    fn keys_the_file_lacks_leave_its_order_alone() {
        let rb = batch(&["c", "a"], &[0, 1]);
        let same = sorted_by_keys(rb.clone(), &["day".into()]).unwrap();
        assert_eq!(same, rb);
        let same = sorted_by_keys(rb.clone(), &[]).unwrap();
        assert_eq!(same, rb);
    }
}
