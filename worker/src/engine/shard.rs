//! The shard loop: chunks (or Parquet batches, see `parquet_in`) through parse, steps, dedupe
//! and writers.

use super::*;
use std::time::{Duration, Instant};

/// State carried across the chunks of a shard.
pub struct ShardState {
    pub counts: Counts,
    pub seen: KeySet,
    pub writers: Writers,
    pub quarantine: Quarantine,
    pub times: StageTimes,
    /// The source bytes of the shard's text input, until its first chunk has sized the dedupe
    /// key set by them (see [`size_key_set`]).
    pub expected_bytes: Option<u64>,
}

impl ShardState {
    /// The state of a new shard: every bucket of the plan present (at zero) in the counts.
    pub fn new(plan: &Plan, writers: Writers, quarantine: PathBuf) -> ShardState {
        let mut counts = Counts::default();
        for (is_reject, b) in &plan.buckets {
            let m = if *is_reject {
                &mut counts.rejected
            } else {
                &mut counts.filtered
            };
            m.entry(b.clone()).or_default();
        }
        ShardState {
            counts,
            seen: Default::default(),
            writers,
            quarantine: Quarantine::new(quarantine),
            times: Default::default(),
            expected_bytes: None,
        }
    }
}

/// Where a shard's time went, per stage (for the stage-duration metrics and the load test's
/// report): thread time summed over the threads that did the work, since the stages overlap (the
/// reader reads ahead, pieces parse in parallel, columns encode on the pool). A wait for another
/// stage is not counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Reading, decompressing and splitting the source (the reader thread's own work, without
    /// the time it waited for the transform to take a chunk); for a Parquet input, reading and
    /// decoding its record batches.
    pub read: Duration,
    /// Records into typed columns: JSON or CSV parsing and the columns' reading rules (a Parquet
    /// input's conversion).
    pub parse: Duration,
    /// Steps, dedupe, checks, partitioning, quarantine.
    pub transform: Duration,
    /// Building Parquet: the columns' encoding and compression on the pool, row groups appended
    /// and files closed.
    pub encode: Duration,
}

impl StageTimes {
    /// Adds the time since `t` to `stage`, and returns now (the next stage's start).
    pub(crate) fn lap(stage: &mut Duration, t: Instant) -> Instant {
        let now = Instant::now();
        *stage += now - t;
        now
    }
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: StageTimes) {
        self.read += o.read;
        self.parse += o.parse;
        self.transform += o.transform;
        self.encode += o.encode;
    }
}

/// The pieces of `n` records, in parallel: each made by `make` (parsing or converting its
/// records; the parse stage), then through the steps before dedupe and `then` (the transform
/// stage). The pieces in order, and the two stages' times summed over them.
pub(crate) fn early_pieces(
    plan: &Plan,
    n: usize,
    make: impl Fn(std::ops::Range<usize>) -> Result<Piece, WorkerError> + Sync + Send,
    then: impl Fn(&mut Piece) + Sync + Send,
) -> Result<(Vec<Piece>, StageTimes), WorkerError> {
    let split = plan.dedupe_at.unwrap_or(plan.steps.len());
    let timed: Vec<(Piece, StageTimes)> = piece_ranges(n)
        .into_par_iter()
        .map(|r| {
            let mut times = StageTimes::default();
            let t = Instant::now();
            let mut p = make(r)?;
            let t = StageTimes::lap(&mut times.parse, t);
            run_steps(plan, &mut p, 0..split)?;
            then(&mut p);
            StageTimes::lap(&mut times.transform, t);
            Ok((p, times))
        })
        .collect::<Result<_, WorkerError>>()?;
    let mut total = StageTimes::default();
    let mut pieces = Vec::with_capacity(timed.len());
    for (p, t) in timed {
        total += t;
        pieces.push(p);
    }
    Ok((pieces, total))
}

/// Where a quarantined record came from, by its record index: its source offset, its line (when
/// known) and its raw bytes.
pub(crate) type RecordSource<'a> = dyn Fn(u32) -> (u64, Option<u64>, Vec<u8>) + 'a;

/// `0..n` cut into pieces of [`PIECE_ROWS`].
pub(crate) fn piece_ranges(n: usize) -> Vec<std::ops::Range<usize>> {
    (0..n)
        .step_by(PIECE_ROWS)
        .map(|s| s..(s + PIECE_ROWS).min(n))
        .collect()
}

/// A chunk parsed and through the steps before dedupe, waiting for the ordered rest.
pub struct Parsed {
    chunk: Chunk,
    pieces: Vec<Piece>,
    /// Time its pieces spent parsing, and in the steps before dedupe (summed over threads).
    times: StageTimes,
}

/// Drives a shard's chunks: while chunk N is deduped, finished and written in order, chunk N+1
/// is parsed (`rayon::join`), so the ordered part of a chunk does not leave the other cores idle.
/// At most two chunks are held here, besides the reader's.
/// Finished chunks go back to `pool` for the reader.
pub fn process_chunks(
    plan: &Plan,
    chunks: impl Iterator<Item = Chunk>,
    pool: &ChunkPool,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    let mut pending: Option<Parsed> = None;
    let finish =
        |p: Parsed, st: &mut ShardState| finish_chunk(plan, p, st).map(|chunk| pool.give(chunk));
    let hasher = st.seen.hasher.clone();
    for chunk in chunks {
        let (parsed, finished) = rayon::join(
            || parse_chunk(plan, chunk, &hasher),
            || pending.take().map_or(Ok(()), |p| finish(p, st)),
        );
        finished?;
        pending = Some(parsed?);
    }
    pending.map_or(Ok(()), |p| finish(p, st))
}

/// Parses a chunk's records and runs the steps before dedupe, its pieces in parallel; with a
/// dedupe, hashes each row's key with the shard's key set's `hasher` too.
pub fn parse_chunk(
    plan: &Plan,
    chunk: Chunk,
    hasher: &hashbrown::DefaultHashBuilder,
) -> Result<Parsed, WorkerError> {
    let (pieces, times) = early_pieces(
        plan,
        chunk.spans.len(),
        |r| Ok(parse_piece(plan, &chunk, r)),
        |p| {
            if let Some(slots) = plan.dedupe_slots() {
                hash_keys(p, slots, hasher);
            }
        },
    )?;
    Ok(Parsed {
        chunk,
        pieces,
        times,
    })
}

/// The ordered rest of a parsed chunk: its over-long records to quarantine, then dedupe, the
/// later steps and the writers. Gives the chunk back.
pub fn finish_chunk(
    plan: &Plan,
    parsed: Parsed,
    st: &mut ShardState,
) -> Result<Chunk, WorkerError> {
    let started = Instant::now();
    let Parsed {
        chunk,
        pieces,
        times,
    } = parsed;
    st.times += times;
    size_key_set(plan, &chunk, &pieces, st);
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
    let source = |record: u32| {
        let i = record as usize;
        let raw = chunk.buf[chunk.spans[i].0..chunk.spans[i].1].to_vec();
        (
            chunk.offsets[i],
            chunk.first_line.map(|f| f + i as u64),
            raw,
        )
    };
    finish_pieces(plan, &chunk.object, pieces, &source, started, st)?;
    Ok(chunk)
}

/// Before the first chunk is deduped, makes room in the key set for the keys the whole input
/// brings at the first chunk's rate (its rows that reach the dedupe, after the steps before it
/// dropped theirs, per source byte), so that the set does not grow (re-hashing every key held,
/// on the ordered path, while the other threads wait) as the shard goes on. A compressed input's
/// bytes underestimate its records: the set then grows less often, not never.
fn size_key_set(plan: &Plan, chunk: &Chunk, pieces: &[Piece], st: &mut ShardState) {
    if plan.dedupe_at.is_none() || !st.seen.is_empty() || chunk.buf.is_empty() {
        return;
    }
    if let Some(bytes) = st.expected_bytes.take() {
        let rows: usize = pieces.iter().map(|p| p.rows.len()).sum();
        let keys = bytes as u128 * rows as u128 / chunk.buf.len() as u128;
        st.seen.reserve(keys.min(u32::MAX as u128) as usize);
    }
}

/// Pieces that went through parsing and the steps before dedupe: dedupe in order, the steps
/// after it, expectations, partitioning, quarantine in record order, counts, the writers.
pub(crate) fn finish_pieces(
    plan: &Plan,
    object: &str,
    mut pieces: Vec<Piece>,
    source: &RecordSource<'_>,
    started: Instant,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    let split = plan.dedupe_at.unwrap_or(plan.steps.len());
    if let Some(slots) = plan.dedupe_slots() {
        for p in pieces.iter_mut() {
            dedupe(p, slots, &mut st.seen)?;
        }
    }
    let after = if plan.dedupe_at.is_some() {
        split + 1
    } else {
        split
    };
    // The pieces' own time in the parallel part, not its wall time: the stages' times are
    // summed over threads.
    let parallel = Instant::now();
    let timed: Vec<(Vec<PartBatch>, Duration)> = pieces
        .par_iter_mut()
        .map(|p| {
            let t = Instant::now();
            run_steps(plan, p, after..plan.steps.len())?;
            enforce_string_limit(plan, p)?;
            count_checks(plan, p)?;
            Ok((partition_piece(plan, p)?, t.elapsed()))
        })
        .collect::<Result<_, WorkerError>>()?;
    let parallel = parallel.elapsed();
    let in_pieces: Duration = timed.iter().map(|(_, d)| *d).sum();
    let parted = timed.into_iter().map(|(b, _)| b);
    // Quarantine in record order.
    let mut q: Vec<&QItem> = pieces.iter().flat_map(|p| p.quarantine.iter()).collect();
    q.sort_by_key(|x| x.record);
    for item in q {
        let (offset, line, raw) = source(item.record);
        st.quarantine
            .record(object, offset, line, &item.bucket, &item.reason, &raw, None)?;
    }
    for p in &mut pieces {
        p.counts.rows_out = p.rows.len() as u64;
        st.counts.add(&p.counts);
    }
    let writing = Instant::now();
    st.times.transform += (writing - started).saturating_sub(parallel) + in_pieces;
    // In row order: pieces are in chunk order, and each piece's groups keep row order.
    for (dir, values, batch) in parted.flatten() {
        st.writers.write(&dir, &values, batch)?;
    }
    let r = st.writers.enforce_budget();
    st.times.encode += writing.elapsed();
    r
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
