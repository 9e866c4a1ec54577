//! Writing partitioned Parquet.

use super::encode::{Encoding, InFlight};
use super::*;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowLeafColumn, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use std::collections::BTreeSet;

/// Hive-style escaping of a partition value (as Hive and Spark do).
pub fn escape_partition(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control() || "\"#%'*/:=?\\{[]^".contains(c) {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

pub(crate) fn partition_value(col: &ArrayRef, i: usize) -> String {
    if col.is_null(i) {
        return NULL_PARTITION.into();
    }
    match col.data_type() {
        DataType::Utf8 => escape_partition(col.as_string::<i32>().value(i)),
        _ => escape_partition(
            &arrow::util::display::array_value_to_string(col, i).unwrap_or_default(),
        ),
    }
}

/// A written Parquet file, still in the scratch folder.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub key: String,
    pub partition: Vec<(String, String)>,
    pub rows: u64,
    pub local: PathBuf,
    /// The longest value of each string column, in bytes.
    pub max_bytes: BTreeMap<String, u64>,
}

pub(crate) struct OpenFile {
    pub(crate) writer: SerializedFileWriter<BufWriter<File>>,
    /// Makes each row group's column writers (the file's Arrow schema and properties).
    pub(crate) groups: ArrowRowGroupWriterFactory,
    /// Row groups started (their column writers made).
    pub(crate) row_groups: usize,
    /// Row groups started and not yet appended.
    pub(crate) in_flight: usize,
    pub(crate) local: PathBuf,
    pub(crate) key: String,
    pub(crate) rows: u64,
    pub(crate) max_bytes: BTreeMap<String, u64>,
}

/// Raises `max` to the longest value of each string column of `batch`, in bytes (from the
/// offsets: no value is read).
pub(crate) fn track_max_bytes(max: &mut BTreeMap<String, u64>, batch: &RecordBatch) {
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.data_type() != &DataType::Utf8 {
            continue;
        }
        let a = col.as_string::<i32>();
        let longest = (0..a.len())
            .filter(|i| a.is_valid(*i))
            .map(|i| a.value_length(i) as u64)
            .max()
            .unwrap_or(0);
        let m = max.entry(f.name().clone()).or_default();
        *m = (*m).max(longest);
    }
}

pub(crate) struct PartitionWriter {
    /// The schema of this partition's files: the plan's output, grown by evolved columns
    /// (`evolve::union`); a growth closes the open file, so every file has one schema.
    pub(crate) schema: SchemaRef,
    pub(crate) values: PartitionValues,
    pub(crate) dir: String,
    pub(crate) seq: u32,
    pub(crate) open: Option<OpenFile>,
    /// Rows waiting for a full row group, as Arrow batches.
    pub(crate) pending: Vec<RecordBatch>,
    pub(crate) pending_rows: usize,
    pub(crate) pending_bytes: usize,
}

/// The Parquet settings of a pipeline's `[output]`: its codec and row group size, small
/// dictionaries (a high-cardinality column falls back to plain early) and small data pages.
///
/// Each data page is compressed on its own, and zstd sizes its match tables to the page: a page
/// of [`DATA_PAGE_BYTES`] keeps them within a core's cache where a 1 MiB page (the crate's
/// default) does not. On the reference workload (1M rows, one thread) that is ~5 % less time in
/// all and ~1 % smaller files (BENCHMARKS.md, stop 27).
pub(crate) fn writer_props(o: &crate::config::OutputSection) -> WriterProperties {
    let compression = match o.codec {
        Codec::Zstd => PqCompression::ZSTD(ZstdLevel::try_new(o.level).expect("validated level")),
        Codec::Snappy => PqCompression::SNAPPY,
        Codec::None => PqCompression::UNCOMPRESSED,
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(o.row_group_rows.get() as usize))
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .set_created_by("tributary".into())
        .build()
}

/// `props` with `encoding` for the text and binary columns of `schema` (top-level ones) that
/// are written without a dictionary: a column whose dictionary is full goes on in it, and one
/// written without a dictionary uses it from the start. `plain` changes nothing.
pub(crate) fn string_encoded(
    props: &WriterProperties,
    schema: &Schema,
    encoding: crate::config::StringEncoding,
) -> WriterProperties {
    use crate::config::StringEncoding;
    if encoding == StringEncoding::Plain {
        return props.clone();
    }
    let is_bytes = |t: &DataType| {
        matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
    };
    schema
        .fields()
        .iter()
        .filter(|f| is_bytes(f.data_type()))
        .fold(props.clone().into_builder(), |b, f| {
            b.set_column_encoding(
                ColumnPath::from(f.name().as_str()),
                parquet::basic::Encoding::DELTA_LENGTH_BYTE_ARRAY,
            )
        })
        .build()
}

/// Partitioned Parquet output of one shard.
///
/// Rows are buffered per partition as Arrow batches and encoded a whole row group at a time, so
/// the Parquet column encoders and their zstd contexts exist only while a row group is written,
/// not once per open partition (31 partitions × 16 columns of zstd contexts is hundreds of MB).
/// When the buffered rows of all partitions pass [`WRITER_BUDGET`], the largest buffer is written
/// early as a smaller row group.
pub struct Writers {
    pub(crate) schema: SchemaRef,
    pub(crate) props: WriterProperties,
    pub(crate) scratch: PathBuf,
    pub(crate) prefix: String,
    pub(crate) shard_id: String,
    pub(crate) target_bytes: u64,
    pub(crate) row_group_rows: usize,
    pub(crate) parts: BTreeMap<String, PartitionWriter>,
    pub(crate) pending_bytes: usize,
    pub(crate) opened: u64,
    /// Columns whose dictionary outgrew its page in a row group of this shard: files opened
    /// later write them without a dictionary from the start (plain, or text in the
    /// `string_encoding`; see [`plain_after_fallback`]).
    pub(crate) plain: BTreeSet<Vec<String>>,
    /// The pipeline's `[output] string_encoding`, set on each file's text columns as it opens.
    pub(crate) string_encoding: crate::config::StringEncoding,
    /// Row groups encoding on the pool, oldest first (`encode`), and their batches' memory.
    pub(crate) encoding: std::collections::VecDeque<InFlight>,
    pub(crate) encoding_bytes: usize,
    /// The shard loop's time waiting for row groups to encode, and the pool's time encoding them
    /// (see [`Writers::encode_time`]).
    pub(crate) waited: std::time::Duration,
    pub(crate) encoded: std::time::Duration,
    pub done: Vec<WrittenFile>,
}

impl Writers {
    pub fn new(plan: &Plan, scratch: &Path, prefix: &str, shard_id: &str) -> Writers {
        let o = &plan.output;
        Writers {
            schema: plan.output_schema.clone(),
            props: writer_props(o),
            scratch: scratch.to_path_buf(),
            prefix: prefix.trim_end_matches('/').to_string(),
            shard_id: shard_id.to_string(),
            target_bytes: o.target_file_bytes.get(),
            row_group_rows: o.row_group_rows.get() as usize,
            parts: BTreeMap::new(),
            pending_bytes: 0,
            opened: 0,
            plain: BTreeSet::new(),
            string_encoding: o.string_encoding,
            encoding: Default::default(),
            encoding_bytes: 0,
            waited: Default::default(),
            encoded: Default::default(),
            done: Vec::new(),
        }
    }

    /// The shard's time building Parquet: `ordered`, the shard loop's time in the writers, less
    /// its waits for the pool (it runs other pool jobs meanwhile, counted where they belong),
    /// plus the pool's time encoding columns.
    pub(crate) fn encode_time(&self, ordered: std::time::Duration) -> std::time::Duration {
        ordered.saturating_sub(self.waited) + self.encoded
    }

    pub(crate) fn write(
        &mut self,
        dir: &str,
        values: &[(String, String)],
        batch: RecordBatch,
    ) -> Result<(), WorkerError> {
        let base = self.schema.clone();
        let pw = self
            .parts
            .entry(dir.to_string())
            .or_insert_with(|| PartitionWriter {
                schema: base,
                values: values.to_vec(),
                dir: dir.to_string(),
                seq: 0,
                open: None,
                pending: Vec::new(),
                pending_rows: 0,
                pending_bytes: 0,
            });
        let batch = if batch.schema().fields() == pw.schema.fields() {
            batch
        } else {
            let grown = union(&pw.schema, &batch.schema());
            if grown.fields() != pw.schema.fields() {
                self.grow_partition(dir, Arc::new(grown))?;
            }
            let pw = self.parts.get(dir).expect("partition exists");
            conform(batch, &pw.schema)?
        };
        let pw = self.parts.get_mut(dir).expect("partition exists");
        let bytes = batch.get_array_memory_size();
        pw.pending_rows += batch.num_rows();
        pw.pending_bytes += bytes;
        pw.pending.push(batch);
        self.pending_bytes += bytes;
        if pw.pending_rows >= self.row_group_rows {
            let d = dir.to_string();
            self.flush_partition(&d, true)?;
        }
        Ok(())
    }

    /// A partition meets evolved columns it has not written: what it holds is written and its
    /// file closed under the old schema, and later files have the grown one.
    fn grow_partition(&mut self, dir: &str, grown: SchemaRef) -> Result<(), WorkerError> {
        self.flush_partition(dir, false)?;
        self.settle_partition(dir)?;
        let pw = self.parts.get_mut(dir).expect("partition exists");
        if let Some(of) = pw.open.take() {
            self.done.push(close(of, &pw.values)?);
        }
        pw.schema = grown;
        Ok(())
    }

    /// Writes the partition's buffered rows as row groups (only whole ones when `whole_only`).
    pub(crate) fn flush_partition(
        &mut self,
        dir: &str,
        whole_only: bool,
    ) -> Result<(), WorkerError> {
        let rg = self.row_group_rows;
        let pw = self.parts.get_mut(dir).expect("partition exists");
        if pw.pending_rows == 0 || (whole_only && pw.pending_rows < rg) {
            return Ok(());
        }
        let mut pending: std::collections::VecDeque<RecordBatch> =
            std::mem::take(&mut pw.pending).into();
        self.pending_bytes -= pw.pending_bytes;
        pw.pending_rows = 0;
        pw.pending_bytes = 0;
        loop {
            let available: usize = pending.iter().map(RecordBatch::num_rows).sum();
            if available == 0 || (whole_only && available < rg) {
                // Keep the rest for a later row group (slices of small batches, no big copies).
                let pw = self.parts.get_mut(dir).expect("partition exists");
                pw.pending_rows = available;
                pw.pending_bytes = pending.iter().map(RecordBatch::get_array_memory_size).sum();
                self.pending_bytes += pw.pending_bytes;
                pw.pending = pending.into();
                break;
            }
            let (group, rows) = take_group(&mut pending, rg);
            self.start_group(dir, group, rows)?;
        }
        Ok(())
    }

    /// Opens the partition's next file (in the scratch folder; its lake key by the partition's
    /// folder and sequence number).
    pub(crate) fn open_partition_file(&mut self, dir: &str) -> Result<(), WorkerError> {
        let pw = self.parts.get_mut(dir).expect("partition exists");
        let name = format!("part-{}-{:05}.parquet", self.shard_id, pw.seq);
        let key = [self.prefix.as_str(), pw.dir.as_str(), name.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join("/");
        self.opened += 1;
        let local = unique_path(
            self.scratch
                .join(format!("{}-{:06}.parquet", self.shard_id, self.opened)),
        );
        let props = string_encoded(&self.props, &pw.schema, self.string_encoding);
        pw.open = Some(open_file(local, key, &pw.schema, props)?);
        pw.seq += 1;
        Ok(())
    }

    /// Writes the biggest buffers early while the total is over budget.
    pub(crate) fn enforce_budget(&mut self) -> Result<(), WorkerError> {
        self.settle_ready()?;
        while self.pending_bytes > WRITER_BUDGET {
            let biggest = self
                .parts
                .iter()
                .max_by_key(|(_, p)| p.pending_bytes)
                .map(|(d, _)| d.clone())
                .expect("some partition holds the bytes");
            self.flush_partition(&biggest, false)?;
        }
        Ok(())
    }

    /// The schema of everything written: the plan's output grown by every partition's evolved
    /// columns.
    pub fn schema(&self) -> SchemaRef {
        let mut s = (*self.schema).clone();
        for pw in self.parts.values() {
            if pw.schema.fields() != s.fields() {
                s = union(&s, &pw.schema);
            }
        }
        Arc::new(s)
    }

    /// Writes what every partition holds and closes the files. The files the last groups need
    /// are opened first (with the dictionary fallbacks of everything before), so that the
    /// partitions' last groups encode side by side.
    pub fn finish(&mut self) -> Result<Vec<WrittenFile>, WorkerError> {
        let dirs: Vec<String> = self.parts.keys().cloned().collect();
        self.settle_all()?;
        for d in &dirs {
            let pw = &self.parts[d];
            if pw.pending_rows > 0 && pw.open.is_none() {
                self.open_partition_file(d)?;
            }
        }
        for d in &dirs {
            self.flush_partition(d, false)?;
        }
        self.settle_all()?;
        for d in &dirs {
            let pw = self.parts.get_mut(d).expect("partition exists");
            if let Some(of) = pw.open.take() {
                self.done.push(close(of, &pw.values)?);
            }
        }
        self.done.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(std::mem::take(&mut self.done))
    }
}

/// Exactly one row group's rows (or all there are) from the front of `pending`, slicing the
/// batch that straddles the boundary; the rows taken.
fn take_group(
    pending: &mut std::collections::VecDeque<RecordBatch>,
    rg: usize,
) -> (Vec<RecordBatch>, usize) {
    let mut group = Vec::new();
    let mut rows = 0;
    while rows < rg {
        let Some(b) = pending.pop_front() else { break };
        if rows + b.num_rows() > rg {
            let take = rg - rows;
            group.push(b.slice(0, take));
            pending.push_front(b.slice(take, b.num_rows() - take));
            rows += take;
        } else {
            rows += b.num_rows();
            group.push(b);
        }
    }
    (group, rows)
}

pub(crate) fn unique_path(p: PathBuf) -> PathBuf {
    if !p.exists() {
        return p;
    }
    for i in 1.. {
        let q = p.with_extension(format!("{i}.parquet"));
        if !q.exists() {
            return q;
        }
    }
    unreachable!()
}

/// Creates a Parquet file for `schema`. `ArrowWriter` sets the file up (the Parquet schema, the
/// Arrow schema in the footer's metadata); its lower-level parts then write whole row groups.
pub(crate) fn open_file(
    local: PathBuf,
    key: String,
    schema: &SchemaRef,
    props: WriterProperties,
) -> Result<OpenFile, WorkerError> {
    let f = File::create(&local).map_err(|e| WorkerError::write(&local, e))?;
    let (writer, groups) = ArrowWriter::try_new(
        BufWriter::with_capacity(1 << 20, f),
        schema.clone(),
        Some(props),
    )
    .and_then(ArrowWriter::into_serialized_writer)
    .map_err(WorkerError::parquet)?;
    Ok(OpenFile {
        writer,
        groups,
        row_groups: 0,
        in_flight: 0,
        local,
        key,
        rows: 0,
        max_bytes: BTreeMap::new(),
    })
}

/// Notes the columns whose dictionary fell back to plain encoding in a row group; whether any
/// is new. A column that does so (ids, hashes, URLs, timestamps: more distinct values than a
/// dictionary page holds) would do so again in every row group, after paying for a dictionary
/// of its first values and writing its first pages twice encoded; files opened later skip it.
/// (Smaller files too: the reference workload's output is ~4 % smaller, BENCHMARKS.md.)
pub(crate) fn plain_after_fallback(
    plain: &mut BTreeSet<Vec<String>>,
    fell_back: Vec<Vec<String>>,
) -> bool {
    let before = plain.len();
    plain.extend(fell_back);
    plain.len() > before
}

/// `props` with dictionary encoding off for the columns `plain`.
pub(crate) fn without_dictionary(
    props: &WriterProperties,
    plain: &BTreeSet<Vec<String>>,
) -> WriterProperties {
    plain
        .iter()
        .fold(props.clone().into_builder(), |b, c| {
            b.set_column_dictionary_enabled(ColumnPath::new(c.clone()), false)
        })
        .build()
}

/// Whether a written column chunk began with a dictionary and then wrote data pages without it
/// (its dictionary outgrew the page limit): plain ones, or in the `[output] string_encoding`.
fn dictionary_fell_back(meta: &parquet::file::metadata::ColumnChunkMetaData) -> bool {
    use parquet::basic::{Encoding, PageType};
    const WITHOUT: [Encoding; 2] = [Encoding::PLAIN, Encoding::DELTA_LENGTH_BYTE_ARRAY];
    if meta.dictionary_page_offset().is_none() {
        return false;
    }
    if let Some(stats) = meta.page_encoding_stats() {
        return stats.iter().any(|s| {
            matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2)
                && WITHOUT.contains(&s.encoding)
        });
    }
    meta.page_encoding_stats_mask()
        .is_some_and(|m| WITHOUT.iter().any(|e| m.is_set(*e)))
}

/// Starts encoding the rows of `batches`, in order, as the file's next row group: its columns
/// in parallel on the pool (`encode`), each column writer taking the batches one after another,
/// so the buffered batches are never concatenated into one copy first.
pub(crate) fn start_row_group(
    of: &mut OpenFile,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Encoding, WorkerError> {
    let writers = of
        .groups
        .create_column_writers(of.row_groups)
        .map_err(WorkerError::parquet)?;
    // Each column's leaves (one per column of this flat schema), batch after batch.
    let mut leaves: Vec<Vec<ArrowLeafColumn>> = writers.iter().map(|_| Vec::new()).collect();
    for b in batches {
        let mut slot = leaves.iter_mut();
        for (field, col) in schema.fields().iter().zip(b.columns()) {
            for leaf in compute_leaves(field, col).map_err(WorkerError::parquet)? {
                slot.next().expect("one writer per leaf").push(leaf);
            }
        }
    }
    of.row_groups += 1;
    Ok(Encoding::start(writers, leaves))
}

/// Appends a row group's encoded columns (in column order) to the file; the columns whose
/// dictionary fell back to plain encoding.
pub(crate) fn append_row_group(
    of: &mut OpenFile,
    chunks: Vec<ArrowColumnChunk>,
) -> Result<Vec<Vec<String>>, WorkerError> {
    let fell_back = chunks
        .iter()
        .map(|c| &c.close().metadata)
        .filter(|m| dictionary_fell_back(m))
        .map(|m| m.column_path().parts().to_vec())
        .collect();
    let mut group = of.writer.next_row_group().map_err(WorkerError::parquet)?;
    for c in chunks {
        c.append_to_row_group(&mut group)
            .map_err(WorkerError::parquet)?;
    }
    group.close().map_err(WorkerError::parquet)?;
    Ok(fell_back)
}

pub(crate) fn close(of: OpenFile, values: &[(String, String)]) -> Result<WrittenFile, WorkerError> {
    let mut w = of.writer.into_inner().map_err(WorkerError::parquet)?;
    w.flush().map_err(|e| WorkerError::write(&of.local, e))?;
    Ok(WrittenFile {
        key: of.key,
        partition: values.to_vec(),
        rows: of.rows,
        local: of.local,
        max_bytes: of.max_bytes,
    })
}

/// Projects a piece to the output columns and splits it by partition, in row order.
pub(crate) fn partition_piece(plan: &Plan, piece: &Piece) -> Result<Vec<PartBatch>, WorkerError> {
    if piece.rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut cols: Vec<ArrayRef> = plan
        .output_slots
        .iter()
        .map(|s| piece.cols.get(*s).cloned().expect("set"))
        .collect();
    let schema = if piece.extra.is_empty() {
        plan.output_schema.clone()
    } else {
        // Evolved columns after the declared ones.
        let mut fields: Vec<Field> = plan
            .output_schema
            .fields()
            .iter()
            .map(|f| (**f).clone())
            .collect();
        for (f, c) in &piece.extra {
            fields.push(f.clone());
            cols.push(c.clone());
        }
        schema_of(fields)
    };
    let batch = RecordBatch::try_new(schema, cols).map_err(WorkerError::arrow)?;
    if plan.partition_slots.is_empty() {
        return Ok(vec![(String::new(), Vec::new(), batch)]);
    }
    let pcols: Vec<&ArrayRef> = plan
        .partition_slots
        .iter()
        .map(|s| piece.cols.get(*s).expect("set"))
        .collect();
    let groups = group_rows(&plan.partition_names, &pcols, piece.rows.len())?;
    groups
        .into_iter()
        .map(|(dir, values, idx)| Ok((dir, values, rows_of(&batch, idx)?)))
        .collect()
}

/// The piece's rows grouped by partition (folder, values, row indices in order), in order of
/// first appearance. The partition's text is worked out once per run of rows with equal
/// partition values (a row equal to the one before joins its group), not once per row: sources
/// partitioned by date arrive mostly in time order.
fn group_rows(
    names: &[String],
    pcols: &[&ArrayRef],
    rows: usize,
) -> Result<Vec<(String, PartitionValues, Vec<u32>)>, WorkerError> {
    let same: Vec<arrow::array::DynComparator> = pcols
        .iter()
        .map(|c| arrow::array::make_comparator(c.as_ref(), c.as_ref(), Default::default()))
        .collect::<Result<_, _>>()
        .map_err(WorkerError::arrow)?;
    let mut groups: Vec<(String, PartitionValues, Vec<u32>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut last = 0;
    for i in 0..rows {
        if i > 0 && same.iter().all(|eq| eq(i, i - 1).is_eq()) {
            groups[last].2.push(i as u32);
            continue;
        }
        let values: Vec<(String, String)> = names
            .iter()
            .zip(pcols)
            .map(|(n, c)| (n.clone(), partition_value(c, i)))
            .collect();
        let dir = values
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("/");
        last = *index.entry(dir.clone()).or_insert_with(|| {
            groups.push((dir, values, Vec::new()));
            groups.len() - 1
        });
        groups[last].2.push(i as u32);
    }
    Ok(groups)
}

/// The rows `idx` (ascending) of `batch`: a zero-copy slice when they are one run — a piece
/// within one partition, as time-ordered sources partitioned by date mostly are — else a copy by
/// a filter, which copies runs of kept rows at once (a piece of one day with a few late events
/// is a few long runs).
fn rows_of(batch: &RecordBatch, idx: Vec<u32>) -> Result<RecordBatch, WorkerError> {
    let (first, last) = (idx[0] as usize, idx[idx.len() - 1] as usize);
    if last - first + 1 == idx.len() {
        return Ok(batch.slice(first, idx.len()));
    }
    let mut keep = vec![false; batch.num_rows()];
    for i in idx {
        keep[i as usize] = true;
    }
    let mask = BooleanArray::from(keep);
    let mut filter = arrow::compute::FilterBuilder::new(&mask);
    if batch.num_columns() > 1 {
        filter = filter.optimize();
    }
    filter
        .build()
        .filter_record_batch(batch)
        .map_err(WorkerError::arrow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn names(b: &RecordBatch) -> Vec<&str> {
        b.column(0).as_string::<i32>().iter().flatten().collect()
    }

    fn values_ptr(b: &RecordBatch) -> *const u8 {
        b.column(0).to_data().buffers()[1].as_ptr()
    }

    fn batch() -> RecordBatch {
        let col = StringArray::from(vec!["a", "b", "c", "d", "e"]);
        RecordBatch::try_from_iter([("s", Arc::new(col) as ArrayRef)]).unwrap()
    }

    #[test]
    fn rows_are_grouped_by_partition_values_in_runs_and_scattered() {
        let day = arrow::array::Date32Array::from(vec![
            Some(0),
            Some(0),
            Some(1),
            Some(0),
            None,
            None,
            Some(1),
        ]);
        let kind = StringArray::from(vec!["x", "x", "x", "x", "x", "y", "x"]);
        let (day, kind): (ArrayRef, ArrayRef) = (Arc::new(day), Arc::new(kind));
        let names = ["day".to_string(), "kind".to_string()];
        let groups = group_rows(&names, &[&day, &kind], 7).unwrap();
        let got: Vec<(&str, &[u32])> = groups
            .iter()
            .map(|(dir, _, idx)| (dir.as_str(), idx.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("day=1970-01-01/kind=x", &[0, 1, 3][..]),
                ("day=1970-01-02/kind=x", &[2, 6][..]),
                ("day=__HIVE_DEFAULT_PARTITION__/kind=x", &[4][..]),
                ("day=__HIVE_DEFAULT_PARTITION__/kind=y", &[5][..]),
            ]
        );
        assert_eq!(
            groups[1].1,
            [
                ("day".into(), "1970-01-02".into()),
                ("kind".into(), "x".into())
            ]
        );
    }

    /// A row group of `rows` rows: `id` all distinct, `kind` of three values.
    fn ids_and_kinds(rows: usize) -> RecordBatch {
        let ids: Vec<String> = (0..rows).map(|i| format!("id-{i:016}")).collect();
        let kinds: Vec<&str> = (0..rows).map(|i| ["a", "b", "c"][i % 3]).collect();
        RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("kind", Arc::new(StringArray::from(kinds)) as ArrayRef),
        ])
        .unwrap()
    }

    /// `batch` written as the one row group of a new file `name` with `props`: the file, and
    /// the columns whose dictionary fell back.
    fn one_group(
        dir: &Path,
        name: &str,
        batch: &RecordBatch,
        props: &WriterProperties,
    ) -> (OpenFile, Vec<Vec<String>>) {
        let schema = batch.schema();
        let mut of = open_file(dir.join(name), name.into(), &schema, props.clone()).unwrap();
        let group = start_row_group(&mut of, &schema, std::slice::from_ref(batch)).unwrap();
        let fell_back = append_row_group(&mut of, group.into_chunks().unwrap()).unwrap();
        (of, fell_back)
    }

    #[test]
    fn a_column_whose_dictionary_overflows_is_written_plain_in_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let batch = ids_and_kinds(20_000);
        let props = WriterProperties::builder()
            .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
            .build();
        // 20,000 distinct ids of 19 bytes outgrow a 128 KiB dictionary; three kinds do not.
        let (_, fell_back) = one_group(dir.path(), "a.parquet", &batch, &props);
        assert_eq!(fell_back, [vec!["id".to_string()]]);
        let mut plain = BTreeSet::new();
        assert!(plain_after_fallback(&mut plain, fell_back.clone()));
        assert!(
            !plain_after_fallback(&mut plain, fell_back),
            "known already"
        );
        let later = without_dictionary(&props, &plain);
        assert!(!later.dictionary_enabled(&ColumnPath::from("id")));
        assert!(later.dictionary_enabled(&ColumnPath::from("kind")));
        let (of, fell_back) = one_group(dir.path(), "b.parquet", &batch, &later);
        assert!(fell_back.is_empty());
        let written = close(of, &[]).unwrap();
        let f = std::fs::File::open(&written.local).unwrap();
        let meta = parquet::file::reader::SerializedFileReader::new(f).unwrap();
        let rg = parquet::file::reader::FileReader::metadata(&meta).row_group(0);
        let has_dictionary = |c: usize| rg.column(c).dictionary_page_offset().is_some();
        assert!(!has_dictionary(0), "id written plain");
        assert!(has_dictionary(1), "kind keeps its dictionary");
    }

    /// The encodings of the data pages of column `c` of `file`'s first row group (among plain,
    /// dictionary and delta-length), and whether it has a dictionary page.
    fn data_encodings(file: &Path, c: usize) -> (Vec<parquet::basic::Encoding>, bool) {
        use parquet::basic::Encoding;
        let meta =
            parquet::file::reader::SerializedFileReader::new(File::open(file).unwrap()).unwrap();
        let rg = parquet::file::reader::FileReader::metadata(&meta).row_group(0);
        let col = rg.column(c);
        let mask = col
            .page_encoding_stats_mask()
            .expect("page encodings written");
        let data = [
            Encoding::PLAIN,
            Encoding::RLE_DICTIONARY,
            Encoding::DELTA_LENGTH_BYTE_ARRAY,
        ]
        .into_iter()
        .filter(|e| mask.is_set(*e))
        .collect();
        (data, col.dictionary_page_offset().is_some())
    }

    #[test]
    fn delta_length_text_is_the_fallback_of_a_full_dictionary_and_later_files_start_in_it() {
        use crate::config::StringEncoding;
        use parquet::basic::Encoding;
        let dir = tempfile::tempdir().unwrap();
        let mut batch = ids_and_kinds(20_000);
        let n = batch.num_rows() as i64;
        let nums = Arc::new(arrow::array::Int64Array::from_iter_values(
            (0..n).map(|i| i % 1000),
        )) as ArrayRef;
        let mut cols = batch.columns().to_vec();
        cols.push(nums);
        batch = RecordBatch::try_from_iter(["id", "kind", "n"].into_iter().zip(cols)).unwrap();
        let base = writer_props(&crate::config::OutputSection::default());
        let schema = batch.schema();
        let enc = |p: &WriterProperties| string_encoded(p, &schema, StringEncoding::DeltaLength);
        assert_eq!(
            string_encoded(&base, &schema, StringEncoding::Plain).encoding(&ColumnPath::from("id")),
            None,
            "plain leaves the crate's defaults"
        );
        let props = enc(&base);
        assert_eq!(
            props.encoding(&ColumnPath::from("n")),
            None,
            "numbers untouched"
        );
        // The ids outgrow their dictionary and go on in DELTA_LENGTH_BYTE_ARRAY, which counts
        // as a fallback: later files write them without a dictionary from the start.
        let (of, fell_back) = one_group(dir.path(), "a.parquet", &batch, &props);
        close(of, &[]).unwrap();
        assert_eq!(fell_back, [vec!["id".to_string()]]);
        let (data, dict) = data_encodings(&dir.path().join("a.parquet"), 0);
        assert!(
            dict && data.contains(&Encoding::DELTA_LENGTH_BYTE_ARRAY),
            "{data:?}"
        );
        let plain: BTreeSet<_> = fell_back.into_iter().collect();
        let (of, fell_back) = one_group(
            dir.path(),
            "b.parquet",
            &batch,
            &enc(&without_dictionary(&base, &plain)),
        );
        assert!(fell_back.is_empty());
        let written = close(of, &[]).unwrap();
        assert_eq!(
            data_encodings(&written.local, 0),
            (vec![Encoding::DELTA_LENGTH_BYTE_ARRAY], false)
        );
        assert!(
            data_encodings(&written.local, 1).1,
            "kind keeps its dictionary"
        );
        let back: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                File::open(&written.local).unwrap(),
                batch.num_rows(),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, [batch]);
    }

    #[test]
    fn a_wide_column_is_cut_into_pages_of_about_64_kib_not_1_mib() {
        let dir = tempfile::tempdir().unwrap();
        // 20,000 distinct 64-character hashes, written plain after the dictionary overflows.
        let hashes: Vec<String> = (0..20_000u64)
            .map(|i| format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let batch =
            RecordBatch::try_from_iter([("h", Arc::new(StringArray::from(hashes)) as ArrayRef)])
                .unwrap();
        let props = writer_props(&crate::config::OutputSection::default());
        let (of, _) = one_group(dir.path(), "h.parquet", &batch, &props);
        let written = close(of, &[]).unwrap();
        let f = std::fs::File::open(&written.local).unwrap();
        let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .build();
        let meta =
            parquet::file::reader::SerializedFileReader::new_with_options(f, options).unwrap();
        let index = parquet::file::reader::FileReader::metadata(&meta)
            .offset_index()
            .expect("page index read");
        let pages = &index[0][0].page_locations;
        // 1,024 values of 68 bytes pass 64 KiB: once the dictionary has fallen back (the first
        // page), about a page per write batch of 1,024 values, where the default 1 MiB page
        // would hold 15,000 of them.
        assert!(pages.len() >= 19, "{} pages", pages.len());
        for w in pages[1..].windows(2) {
            assert!(w[1].first_row_index - w[0].first_row_index <= 2048);
        }
    }

    #[test]
    fn a_partition_run_of_a_piece_is_sliced_not_copied() {
        let b = batch();
        let run = rows_of(&b, vec![1, 2, 3]).unwrap();
        assert_eq!(names(&run), ["b", "c", "d"]);
        // The slice shares the piece's string bytes.
        assert_eq!(values_ptr(&run), values_ptr(&b));
    }

    #[test]
    fn rows_that_are_not_one_run_are_copied_in_order() {
        let b = batch();
        let picked = rows_of(&b, vec![0, 2, 4]).unwrap();
        assert_eq!(names(&picked), ["a", "c", "e"]);
        assert_ne!(values_ptr(&picked), values_ptr(&b));
    }
}
