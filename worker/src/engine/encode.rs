//! Row groups encoded on the pool while the shard loop goes on.
//!
//! Each column of a flushed row group becomes one pool job (`rayon::spawn`): the chunk loop hands
//! the group over and goes on parsing and deduping instead of waiting for the group's slowest
//! column (one column's zstd dominates a group). The writers append a group to its file once all
//! its columns are done, in the order the groups were started (`Writers::encoding`), so a file's
//! row groups keep row order. A thread that must wait for a group (a file to close, too many
//! bytes in flight) helps the pool meanwhile (`rayon::yield_now`), so the wait runs the very jobs
//! it waits on when no other thread has taken them.

use super::*;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

type Encoded = Result<ArrowColumnChunk, WorkerError>;

/// A row group whose columns are encoding on the pool.
pub(crate) struct Encoding {
    columns: Arc<Columns>,
}

struct Columns {
    done: AtomicUsize,
    /// The jobs' time encoding, in nanoseconds, summed (added before a job counts itself done).
    nanos: AtomicU64,
    /// Each column's result, set once by its job (a `Mutex`: an encoded chunk is `Send`, not
    /// `Sync`).
    chunks: Vec<Mutex<Option<Encoded>>>,
    /// Told as each column is done, for a waiter with no pool work to run.
    told: (Mutex<()>, Condvar),
}

impl Encoding {
    /// Starts one pool job per column: `writers[i]` takes `leaves[i]` (the column's leaves of each
    /// batch, in row order) and is closed into its encoded chunk.
    pub(crate) fn start(
        writers: Vec<ArrowColumnWriter>,
        leaves: Vec<Vec<ArrowLeafColumn>>,
    ) -> Encoding {
        let columns = Arc::new(Columns {
            done: AtomicUsize::new(0),
            nanos: AtomicU64::new(0),
            chunks: writers.iter().map(|_| Mutex::new(None)).collect(),
            told: (Mutex::new(()), Condvar::new()),
        });
        for (i, (w, l)) in writers.into_iter().zip(leaves).enumerate() {
            let columns = columns.clone();
            rayon::spawn(move || {
                let t = Instant::now();
                let encoded = encode_column(w, l);
                let took = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                columns.nanos.fetch_add(took, Ordering::Relaxed);
                *columns.chunks[i].lock().expect("no job panics holding it") = Some(encoded);
                columns.done.fetch_add(1, Ordering::Release);
                let _told = columns.told.0.lock().expect("never poisoned");
                columns.told.1.notify_all();
            });
        }
        Encoding { columns }
    }

    /// The time its columns' jobs spent encoding, summed (all of it once [`Encoding::wait`]
    /// returned).
    pub(crate) fn took(&self) -> Duration {
        Duration::from_nanos(self.columns.nanos.load(Ordering::Acquire))
    }

    pub(crate) fn is_done(&self) -> bool {
        self.columns.done.load(Ordering::Acquire) == self.columns.chunks.len()
    }

    /// Waits until every column is encoded. On a pool thread it runs pool jobs meanwhile (often
    /// the very columns it waits for); with none to run (or off the pool) it sleeps until a
    /// column is done, waking now and then to look for pool work again.
    pub(crate) fn wait(&self) {
        let (lock, told) = &self.columns.told;
        while !self.is_done() {
            if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                continue;
            }
            let guard = lock.lock().expect("never poisoned");
            if self.is_done() {
                return;
            }
            let _ = told
                .wait_timeout(guard, std::time::Duration::from_micros(200))
                .expect("never poisoned");
        }
    }

    /// The encoded columns in order (waiting for them first); the first column's error.
    pub(crate) fn into_chunks(self) -> Result<Vec<ArrowColumnChunk>, WorkerError> {
        self.wait();
        // A job may still hold its handle for a moment after counting itself done: the results
        // are taken out of the shared slots, not unwrapped.
        self.columns
            .chunks
            .iter()
            .map(|c| {
                c.lock()
                    .expect("no job panics holding it")
                    .take()
                    .expect("set before counted done")
            })
            .collect()
    }
}

/// A row group started and not yet appended to its partition's file.
pub(crate) struct InFlight {
    dir: String,
    /// Its Arrow batches' memory, held until the group is appended.
    bytes: usize,
    group: Encoding,
}

impl Writers {
    /// Starts the partition's next row group on the pool, in its open file or a new one. A file
    /// with groups in flight takes them first (its size decides whether it is closed); a new
    /// file is opened once every group started before is appended, so that it is opened knowing
    /// every dictionary fallback so far: the same files whatever the timing of the pool.
    pub(crate) fn start_group(
        &mut self,
        dir: &str,
        group: Vec<RecordBatch>,
        rows: usize,
    ) -> Result<(), WorkerError> {
        self.settle_partition(dir)?;
        if self.parts[dir].open.is_none() {
            self.settle_all()?;
            self.open_partition_file(dir)?;
        }
        let pw = self.parts.get_mut(dir).expect("partition exists");
        let of = pw.open.as_mut().expect("opened above");
        for b in &group {
            track_max_bytes(&mut of.max_bytes, b);
        }
        of.rows += rows as u64;
        of.in_flight += 1;
        let encoding = start_row_group(of, &pw.schema, &group)?;
        let bytes = group.iter().map(RecordBatch::get_array_memory_size).sum();
        self.encoding.push_back(InFlight {
            dir: dir.to_string(),
            bytes,
            group: encoding,
        });
        self.encoding_bytes += bytes;
        self.settle_ready()?;
        while self.encoding_bytes > WRITER_BUDGET {
            self.append_oldest()?;
        }
        Ok(())
    }

    /// Appends the groups whose columns are all encoded, oldest first, without waiting.
    pub(crate) fn settle_ready(&mut self) -> Result<(), WorkerError> {
        while self.encoding.front().is_some_and(|f| f.group.is_done()) {
            self.append_oldest()?;
        }
        Ok(())
    }

    /// Appends groups, oldest first, until the partition's open file has none in flight.
    pub(crate) fn settle_partition(&mut self, dir: &str) -> Result<(), WorkerError> {
        while self.parts[dir]
            .open
            .as_ref()
            .is_some_and(|of| of.in_flight > 0)
        {
            self.append_oldest()?;
        }
        Ok(())
    }

    /// Appends every group in flight.
    pub(crate) fn settle_all(&mut self) -> Result<(), WorkerError> {
        while !self.encoding.is_empty() {
            self.append_oldest()?;
        }
        Ok(())
    }

    /// Appends the oldest group in flight to its file (waiting for its columns), notes the
    /// columns whose dictionary fell back, and closes the file when it reached its target size
    /// with nothing more in flight.
    fn append_oldest(&mut self) -> Result<(), WorkerError> {
        let f = self.encoding.pop_front().expect("a group in flight");
        self.encoding_bytes -= f.bytes;
        let t = Instant::now();
        f.group.wait();
        self.waited += t.elapsed();
        self.encoded += f.group.took();
        let chunks = f.group.into_chunks()?;
        let pw = self.parts.get_mut(&f.dir).expect("partition exists");
        let of = pw
            .open
            .as_mut()
            .expect("a file with groups in flight stays open");
        let fell_back = append_row_group(of, chunks)?;
        of.in_flight -= 1;
        if plain_after_fallback(&mut self.plain, fell_back) {
            self.props = without_dictionary(&self.props, &self.plain);
        }
        if of.in_flight == 0 && of.writer.bytes_written() as u64 >= self.target_bytes {
            let of = pw.open.take().expect("open");
            self.done.push(close(of, &pw.values)?);
        }
        Ok(())
    }
}

/// One column's leaves through its writer.
fn encode_column(mut w: ArrowColumnWriter, leaves: Vec<ArrowLeafColumn>) -> Encoded {
    caught(move || {
        for leaf in &leaves {
            w.write(leaf)?;
        }
        w.close()
    })
}

/// A column's encoding with a panic turned into the shard's error: a panic in a spawned pool
/// job would abort the process.
fn caught(
    encode: impl FnOnce() -> Result<ArrowColumnChunk, parquet::errors::ParquetError>,
) -> Encoded {
    runtime::cpu::catch_panic(encode)
        .map_err(|p| WorkerError::Panicked {
            message: format!("encoding a Parquet column: {p}"),
        })?
        .map_err(WorkerError::parquet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use parquet::arrow::arrow_writer::compute_leaves;

    fn group(rows: i64) -> RecordBatch {
        let ids = Int64Array::from_iter_values(0..rows);
        let names = StringArray::from_iter_values((0..rows).map(|i| format!("n{i}")));
        RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("name", Arc::new(names) as ArrayRef),
        ])
        .unwrap()
    }

    fn start(dir: &Path, batches: &[RecordBatch]) -> (OpenFile, Encoding) {
        let schema = batches[0].schema();
        let props = WriterProperties::builder().build();
        let mut of = open_file(dir.join("f.parquet"), "f".into(), &schema, props).unwrap();
        let enc = start_row_group(&mut of, &schema, batches).unwrap();
        (of, enc)
    }

    #[test]
    fn columns_encoded_on_the_pool_come_back_in_column_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (group(1000), group(500));
        let (mut of, enc) = start(dir.path(), &[a, b]);
        let chunks = enc.into_chunks().unwrap();
        let paths: Vec<String> = chunks
            .iter()
            .map(|c| c.close().metadata.column_path().string())
            .collect();
        assert_eq!(paths, ["id", "name"]);
        assert!(chunks.iter().all(|c| c.close().rows_written == 1500));
        append_row_group(&mut of, chunks).unwrap();
        let written = close(of, &[]).unwrap();
        let f = File::open(&written.local).unwrap();
        let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&r);
        assert_eq!(meta.num_row_groups(), 1);
        assert_eq!(meta.row_group(0).num_rows(), 1500);
    }

    #[test]
    fn a_column_that_fails_to_encode_fails_its_group() {
        let b = group(10);
        let schema = b.schema();
        let props = WriterProperties::builder().build();
        let dir = tempfile::tempdir().unwrap();
        let of = open_file(dir.path().join("p.parquet"), "p".into(), &schema, props).unwrap();
        let writers = of.groups.create_column_writers(0).unwrap();
        // Every writer is handed the string column's leaf: the integer one refuses it.
        let wrong: Vec<Vec<ArrowLeafColumn>> = writers
            .iter()
            .map(|_| compute_leaves(schema.field(1), b.column(1)).unwrap())
            .collect();
        let err = Encoding::start(writers, wrong).into_chunks().unwrap_err();
        assert!(err.to_string().contains("Cannot coerce Utf8"), "{err}");
    }

    #[test]
    fn a_panic_while_encoding_is_an_error_not_an_abort() {
        let err = caught(|| panic!("page of row 7 overflowed")).unwrap_err();
        assert!(
            matches!(&err, WorkerError::Panicked { message }
                if message == "encoding a Parquet column: page of row 7 overflowed"),
            "{err}"
        );
    }
}
