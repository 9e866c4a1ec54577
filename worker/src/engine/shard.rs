//! The shard loop: chunks through parse, steps, dedupe and writers.

use super::*;

/// State carried across the chunks of a shard.
pub struct ShardState {
    pub counts: Counts,
    pub seen: KeySet,
    pub writers: Writers,
    pub quarantine: Quarantine,
    pub times: StageTimes,
}

/// Time spent per stage of a shard (for the stage-duration metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Reading, decompressing and splitting the source (the reader thread's own work, without
    /// the time it waited for the transform to take a chunk).
    pub extract: std::time::Duration,
    /// Parsing, steps, dedupe, partitioning, quarantine.
    pub transform: std::time::Duration,
    /// Building and encoding Parquet.
    pub write: std::time::Duration,
}

/// Processes one chunk: parse and steps in parallel, dedupe in order, write.
pub fn process_chunk(plan: &Plan, chunk: &Chunk, st: &mut ShardState) -> Result<(), WorkerError> {
    let started = std::time::Instant::now();
    for (offset, line, len, head) in &chunk.oversized {
        st.counts.lines_total += 1;
        st.counts.malformed += 1;
        st.quarantine.record(
            &chunk.object,
            *offset,
            *line,
            MALFORMED,
            &format!("record of {len} bytes exceeds source.max_line_bytes"),
            head,
            Some(*len),
        )?;
    }
    let n = chunk.spans.len();
    let ranges: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(PIECE_ROWS)
        .map(|s| s..(s + PIECE_ROWS).min(n))
        .collect();
    let split = plan.dedupe_at.unwrap_or(plan.steps.len());
    let mut pieces: Vec<Piece> = ranges
        .into_par_iter()
        .map(|r| {
            let mut p = parse_piece(plan, chunk, r);
            run_steps(plan, &mut p, 0..split)?;
            Ok(p)
        })
        .collect::<Result<_, WorkerError>>()?;
    if let Some(d) = plan.dedupe_at {
        let StepOp::Dedupe { slots } = &plan.steps[d] else {
            unreachable!("dedupe_at points at a dedupe")
        };
        for p in pieces.iter_mut() {
            dedupe(p, slots, &mut st.seen)?;
        }
    }
    let after = if plan.dedupe_at.is_some() {
        split + 1
    } else {
        split
    };
    let parted: Vec<Vec<PartBatch>> = pieces
        .par_iter_mut()
        .map(|p| {
            run_steps(plan, p, after..plan.steps.len())?;
            count_checks(plan, p)?;
            partition_piece(plan, p)
        })
        .collect::<Result<_, WorkerError>>()?;
    // Quarantine in record order.
    let mut q: Vec<&QItem> = pieces.iter().flat_map(|p| p.quarantine.iter()).collect();
    q.sort_by_key(|x| x.record);
    for item in q {
        let i = item.record as usize;
        let raw = &chunk.buf[chunk.spans[i].0..chunk.spans[i].1];
        let line = chunk.first_line.map(|f| f + i as u64);
        st.quarantine.record(
            &chunk.object,
            chunk.offsets[i],
            line,
            &item.bucket,
            &item.reason,
            raw,
            None,
        )?;
    }
    for p in &mut pieces {
        p.counts.rows_out = p.rows.len() as u64;
        st.counts.add(&p.counts);
    }
    let writing = std::time::Instant::now();
    st.times.transform += writing - started;
    // In row order: pieces are in chunk order, and each piece's groups keep row order.
    for (dir, values, batch) in parted.into_iter().flatten() {
        st.writers.write(&dir, &values, batch)?;
    }
    let r = st.writers.enforce_budget();
    st.times.write += writing.elapsed();
    r
}

/// Reads a Parquet input and feeds it to the same pipeline, record batch by record batch.
/// Columns are matched by their path (nested struct fields by dotted path) and cast to the
/// declared types.
pub fn process_parquet_input(
    plan: &Plan,
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let key = &input.object.key;
    let mut bytes = Vec::new();
    store
        .open_read(key, None)
        .map_err(WorkerError::Backend)?
        .read_to_end(&mut bytes)
        .map_err(|e| WorkerError::read(key, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| WorkerError::Corrupt {
            key: key.clone(),
            detail: format!("not a Parquet file: {e}"),
        })?
        .with_batch_size(PIECE_ROWS)
        .build()
        .map_err(|e| WorkerError::Corrupt {
            key: key.clone(),
            detail: e.to_string(),
        })?;
    let mut row0 = 0u64;
    for rb in reader {
        let rb = rb.map_err(|e| WorkerError::Corrupt {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        // Timestamps are UTC instants whatever zone name they carry; name it by its offset so the
        // JSON rendering needs no time-zone database.
        let rb = utc_offset_timestamps(rb)?;
        // Render each row as JSON so that the row path (and quarantine) is the same as NDJSON's.
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(&rb).map_err(WorkerError::arrow)?;
            w.finish().map_err(WorkerError::arrow)?;
        }
        let mut chunk = new_chunk(&Arc::from(key.as_str()), &None, Some(row0));
        let mut start = 0;
        for (i, nl) in memchr::memchr_iter(b'\n', &buf).enumerate() {
            chunk.spans.push((start, nl));
            chunk.offsets.push(row0 + i as u64);
            start = nl + 1;
        }
        chunk.buf = buf;
        row0 += rb.num_rows() as u64;
        process_chunk(plan, &chunk, st)?;
    }
    Ok(())
}

pub(crate) fn utc_offset_timestamps(rb: RecordBatch) -> Result<RecordBatch, WorkerError> {
    let mut fields = Vec::with_capacity(rb.num_columns());
    let mut cols = Vec::with_capacity(rb.num_columns());
    for (f, c) in rb.schema().fields().iter().zip(rb.columns()) {
        match f.data_type() {
            DataType::Timestamp(unit, Some(_)) => {
                let t = DataType::Timestamp(*unit, Some("+00:00".into()));
                let data = c
                    .to_data()
                    .into_builder()
                    .data_type(t.clone())
                    .build()
                    .map_err(WorkerError::arrow)?;
                cols.push(arrow::array::make_array(data));
                fields.push(Field::new(f.name(), t, f.is_nullable()));
            }
            _ => {
                cols.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(schema_of(fields), cols).map_err(WorkerError::arrow)
}

pub fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}
