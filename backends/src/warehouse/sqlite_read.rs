//! The embedded warehouse's reader: a load batch's Parquet files read and decoded on a thread of
//! their own, a file ahead of the inserts (which own the connection's thread), each file's rows
//! in merge-key order so that the upserts walk the key index forwards instead of at random.

use std::sync::Arc;
use std::sync::mpsc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
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

/// Calls `insert` with each file of `batch` and its rows (in merge-key order), in the batch's
/// order, while the next file is read and decoded on another thread. Stops at the first error.
pub(super) fn each_file(
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    mut insert: impl FnMut(&LoadFile, &RecordBatch) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Result<RecordBatch>>(1);
        s.spawn(move || {
            for lf in &batch.files {
                let rb = read_file(lf, files).and_then(|rb| sorted_by_keys(rb, &batch.merge_keys));
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
            insert(lf, &rb)?;
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
    fn keys_the_file_lacks_leave_its_order_alone() {
        let rb = batch(&["c", "a"], &[0, 1]);
        let same = sorted_by_keys(rb.clone(), &["day".into()]).unwrap();
        assert_eq!(same, rb);
        let same = sorted_by_keys(rb.clone(), &[]).unwrap();
        assert_eq!(same, rb);
    }
}
