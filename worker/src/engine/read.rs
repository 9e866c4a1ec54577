//! Reading: chunks of records with their source locations (line splitting, JSON arrays, CSV headers).

use super::*;

/// A batch of raw records: `buf[spans[i].0..spans[i].1]` is record `i`, found at `offsets[i]` of
/// its object (decompressed offset for compressed objects) and on line `first_line + i` when the
/// chunk's lines are numbered (reads that start at byte 0).
pub struct Chunk {
    pub object: Arc<str>,
    pub buf: Vec<u8>,
    pub spans: Vec<(usize, usize)>,
    pub offsets: Vec<u64>,
    pub first_line: Option<u64>,
    /// Records that were too long to hold: (offset, line, length, first bytes).
    pub oversized: Vec<(u64, Option<u64>, u64, Vec<u8>)>,
    /// For CSV: the header fields of this object.
    pub header: Option<Arc<Vec<String>>>,
}

pub(crate) fn open_decoded(
    reader: Box<dyn Read + Send>,
    compression: Compression,
    key: &str,
) -> Result<Box<dyn Read + Send>, WorkerError> {
    let mut br = BufReader::with_capacity(1 << 20, reader);
    let kind = match compression {
        Compression::Auto => {
            let head = br.fill_buf().map_err(|e| WorkerError::read(key, e))?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Compression::Gzip
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(br).map_err(|e| WorkerError::read(key, e))?,
        ),
        _ => Box::new(br),
    })
}

/// How the lines of an input are read.
pub struct LineReading {
    pub compression: Compression,
    /// A longer line is counted malformed and skipped, not held.
    pub max_line: u64,
    /// For CSV: the object's header fields, carried by every chunk.
    pub header: Option<Arc<Vec<String>>>,
    /// The first line is the CSV header (a read from the start of the object).
    pub skip_header: bool,
}

/// Opens an input for line reading: `(reader, object offset of its first byte, end offset of
/// the range, whether lines are numbered)`. A byte range starts one byte early, so the reader
/// learns whether `start` begins a line; a whole object is decompressed as needed.
fn open_input(
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    compression: Compression,
) -> Result<(Box<dyn Read + Send>, u64, u64, bool), WorkerError> {
    let key = &input.object.key;
    Ok(match input.range {
        None => (
            open_decoded(
                store.open_read(key, None).map_err(WorkerError::Backend)?,
                compression,
                key,
            )?,
            0u64,
            u64::MAX,
            true,
        ),
        Some(r) => {
            let from = r.start.saturating_sub(1);
            let raw = store
                .open_read(
                    key,
                    Some(ByteRange {
                        start: from,
                        end: u64::MAX,
                    }),
                )
                .map_err(WorkerError::Backend)?;
            (
                Box::new(BufReader::with_capacity(1 << 20, raw)) as Box<dyn Read + Send>,
                from,
                r.end,
                r.start == 0,
            )
        }
    })
}

/// Reads the lines of one input (a whole object or a byte range of it) and sends them as chunks
/// (taken from `pool` when one was handed back). A range's lines are those that start inside it.
pub fn read_lines(
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    reading: LineReading,
    pool: &ChunkPool,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), WorkerError> {
    let LineReading {
        compression,
        max_line,
        header,
        skip_header,
    } = reading;
    let key = &input.object.key;
    let object: Arc<str> = Arc::from(key.as_str());
    let (mut reader, pos, end, numbered) = open_input(store, input, compression)?;
    let mut line_no: u64 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut buf_start = pos; // object offset of buf[0]
    let mut skipping_partial = input.range.is_some_and(|r| r.start > 0);
    let mut skip_header = skip_header;
    let mut eof = false;
    // An over-long record being skipped: (offset, line, bytes so far, first bytes).
    let mut oversized: Option<(u64, Option<u64>, u64, Vec<u8>)> = None;
    let mut chunk = pool.take(&object, &header, numbered.then_some(0));
    let mut block = vec![0u8; 1 << 20];
    while !eof {
        let n = loop {
            match reader.read(&mut block) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkerError::read(key, e)),
            }
        };
        if n == 0 {
            eof = true;
        } else {
            buf.extend_from_slice(&block[..n]);
        }
        let mut start = 0usize;
        loop {
            let nl = memchr::memchr(b'\n', &buf[start..]).map(|i| start + i);
            let line_end = match nl {
                Some(i) => i,
                None if eof && start < buf.len() => buf.len(),
                None => break,
            };
            let offset = buf_start + start as u64;
            let next = nl.map_or(buf.len(), |i| i + 1);
            if skipping_partial {
                // The byte before `range.start` was read first: if it is a newline, the next line
                // starts exactly at range.start; otherwise this partial line belongs to the
                // previous range.
                skipping_partial = false;
                start = next;
                continue;
            }
            if let Some((o, l, len, head)) = oversized.take() {
                // The end of a record that was too long: count it, keep its head.
                chunk
                    .oversized
                    .push((o, l, len + (line_end - start) as u64, head));
                start = next;
                line_no += 1;
                continue;
            }
            if offset >= end {
                return flush(send, chunk);
            }
            if skip_header {
                skip_header = false;
                start = next;
                line_no += 1;
                if let Some(f) = chunk.first_line.as_mut() {
                    *f += 1;
                }
                continue;
            }
            let mut e = line_end;
            if e > start && buf[e - 1] == b'\r' {
                e -= 1;
            }
            if (e - start) as u64 > max_line {
                let head = buf[start..start + 1024.min(e - start)].to_vec();
                chunk.oversized.push((
                    offset,
                    numbered.then_some(line_no),
                    (e - start) as u64,
                    head,
                ));
            } else {
                let s = chunk.buf.len();
                chunk.buf.extend_from_slice(&buf[start..e]);
                chunk.spans.push((s, chunk.buf.len()));
                chunk.offsets.push(offset);
            }
            line_no += 1;
            start = next;
            if chunk.buf.len() >= CHUNK_BYTES {
                let full = std::mem::replace(
                    &mut chunk,
                    pool.take(&object, &header, numbered.then_some(line_no)),
                );
                if !send(full) {
                    return Ok(());
                }
            }
        }
        // `buf[start..]` is an unfinished line.
        buf.drain(..start);
        buf_start += start as u64;
        if buf.is_empty() {
            continue;
        }
        if skipping_partial {
            buf_start += buf.len() as u64;
            buf.clear();
        } else if let Some(o) = oversized.as_mut() {
            o.2 += buf.len() as u64;
            buf_start += buf.len() as u64;
            buf.clear();
        } else if buf_start >= end {
            return flush(send, chunk);
        } else if buf.len() as u64 > max_line {
            // Too long to hold: remember where it starts and skip to its end.
            let head = buf[..1024.min(buf.len())].to_vec();
            oversized = Some((
                buf_start,
                numbered.then_some(line_no),
                buf.len() as u64,
                head,
            ));
            buf_start += buf.len() as u64;
            buf.clear();
        }
    }
    if let Some((o, l, len, head)) = oversized.take() {
        chunk.oversized.push((o, l, len, head));
    }
    flush(send, chunk)
}

pub(crate) fn new_chunk(
    object: &Arc<str>,
    header: &Option<Arc<Vec<String>>>,
    first_line: Option<u64>,
) -> Chunk {
    Chunk {
        object: object.clone(),
        buf: Vec::with_capacity(CHUNK_BYTES + (64 << 10)),
        spans: Vec::new(),
        offsets: Vec::new(),
        first_line,
        oversized: Vec::new(),
        header: header.clone(),
    }
}

/// Chunks the engine has finished with, for the reader to fill again: a chunk's buffers keep
/// their memory, so reading does not fault in (and the kernel zero) fresh pages per chunk.
#[derive(Clone, Default)]
pub struct ChunkPool(Arc<std::sync::Mutex<Vec<Chunk>>>);

/// Chunks kept for reuse (the reader's two in flight and the engine's two need no more).
const POOLED_CHUNKS: usize = 4;

impl ChunkPool {
    /// Hands a finished chunk back.
    pub fn give(&self, mut chunk: Chunk) {
        chunk.buf.clear();
        chunk.spans.clear();
        chunk.offsets.clear();
        chunk.oversized.clear();
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOLED_CHUNKS {
            free.push(chunk);
        }
    }

    /// An empty chunk of `object`, reused when one was handed back.
    pub(crate) fn take(
        &self,
        object: &Arc<str>,
        header: &Option<Arc<Vec<String>>>,
        first_line: Option<u64>,
    ) -> Chunk {
        let reused = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(mut c) => {
                c.object = object.clone();
                c.header = header.clone();
                c.first_line = first_line;
                c
            }
            None => new_chunk(object, header, first_line),
        }
    }
}

pub(crate) fn flush(send: &mut dyn FnMut(Chunk) -> bool, chunk: Chunk) -> Result<(), WorkerError> {
    if !chunk.spans.is_empty() || !chunk.oversized.is_empty() {
        send(chunk);
    }
    Ok(())
}

/// Streams the elements of a JSON array document as records (one chunk per ~4 MiB).
pub fn read_json_array(
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    compression: Compression,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), WorkerError> {
    let key = &input.object.key;
    let object: Arc<str> = Arc::from(key.as_str());
    let reader = open_decoded(
        store.open_read(key, None).map_err(WorkerError::Backend)?,
        compression,
        key,
    )?;
    struct Elements<'s> {
        object: Arc<str>,
        send: &'s mut dyn FnMut(Chunk) -> bool,
        index: u64,
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of records")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut chunk = new_chunk(&self.object, &None, Some(self.index));
            let mut index = self.index;
            while let Some(raw) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
                let s = chunk.buf.len();
                chunk.buf.extend_from_slice(raw.get().as_bytes());
                chunk.spans.push((s, chunk.buf.len()));
                chunk.offsets.push(index);
                index += 1;
                if chunk.buf.len() >= CHUNK_BYTES {
                    let full =
                        std::mem::replace(&mut chunk, new_chunk(&self.object, &None, Some(index)));
                    if !(self.send)(full) {
                        return Ok(());
                    }
                }
            }
            if !chunk.spans.is_empty() {
                (self.send)(chunk);
            }
            Ok(())
        }
    }
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, reader));
    de.deserialize_seq(Elements {
        object,
        send,
        index: 0,
    })
    .and_then(|()| de.end())
    .map_err(|e| WorkerError::Corrupt {
        key: key.clone(),
        detail: format!("not a JSON array of records: {e}"),
    })
}

/// Reads the CSV header (the first line of the object).
pub fn read_csv_header(
    store: &dyn backends::object_store::ObjectStore,
    key: &str,
    compression: Compression,
    delimiter: u8,
    quote: u8,
) -> Result<Vec<String>, WorkerError> {
    let reader = open_decoded(
        store.open_read(key, None).map_err(WorkerError::Backend)?,
        compression,
        key,
    )?;
    let mut line = Vec::new();
    BufReader::new(reader.take(1 << 20))
        .read_until(b'\n', &mut line)
        .map_err(|e| WorkerError::read(key, e))?;
    if line.is_empty() {
        return Ok(Vec::new());
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    let mut fields = Vec::new();
    let text = std::str::from_utf8(&line).map_err(|_| WorkerError::Corrupt {
        key: key.into(),
        detail: "CSV header is not UTF-8".into(),
    })?;
    let mut rdr = csv_core::ReaderBuilder::new()
        .delimiter(delimiter)
        .quote(quote)
        .build();
    split_csv(text.as_bytes(), &mut rdr, &mut Vec::new(), &mut |f| {
        fields.push(String::from_utf8_lossy(f).into_owned())
    })
    .map_err(|d| WorkerError::Corrupt {
        key: key.into(),
        detail: format!("CSV header: {d}"),
    })?;
    Ok(fields)
}

/// Checks that the header of every CSV object holds the declared columns, before a run starts
/// (the worker checks again per shard). Nothing to do for other formats or headerless CSV.
pub fn check_csv_headers<'k>(
    plan: &Plan,
    source: &crate::config::SourceSection,
    store: &dyn backends::object_store::ObjectStore,
    keys: impl IntoIterator<Item = &'k str>,
) -> Result<(), WorkerError> {
    if plan.format != Format::Csv || !source.csv.header {
        return Ok(());
    }
    for key in keys {
        let header = read_csv_header(
            store,
            key,
            source.compression,
            plan.csv_delimiter,
            plan.csv_quote,
        )?;
        plan.check_csv_header(&header, key)?;
    }
    Ok(())
}

/// Splits one CSV record into fields (quotes doubled inside quoted fields).
pub(crate) fn split_csv(
    line: &[u8],
    rdr: &mut csv_core::Reader,
    field: &mut Vec<u8>,
    out: &mut dyn FnMut(&[u8]),
) -> Result<(), String> {
    rdr.reset();
    let mut input = line;
    field.clear();
    field.resize(line.len() + 1, 0);
    let mut len = 0usize;
    loop {
        let (res, nin, nout) = rdr.read_field(input, &mut field[len..]);
        input = &input[nin..];
        len += nout;
        match res {
            csv_core::ReadFieldResult::InputEmpty => {
                if input.is_empty() {
                    // Signal the end of the record.
                    let (res, _, nout) = rdr.read_field(&[], &mut field[len..]);
                    len += nout;
                    match res {
                        csv_core::ReadFieldResult::Field { .. } => {
                            out(&field[..len]);
                            return Ok(());
                        }
                        csv_core::ReadFieldResult::End => return Ok(()),
                        _ => return Err("unterminated quoted field".into()),
                    }
                }
            }
            csv_core::ReadFieldResult::OutputFull => {
                return Err("field longer than the line".into());
            }
            csv_core::ReadFieldResult::Field { record_end } => {
                out(&field[..len]);
                len = 0;
                if record_end {
                    return Ok(());
                }
            }
            csv_core::ReadFieldResult::End => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_handed_back_is_reused_empty_with_its_memory() {
        let pool = ChunkPool::default();
        let object: Arc<str> = Arc::from("a.ndjson");
        let mut c = pool.take(&object, &None, Some(0));
        c.buf.extend_from_slice(b"{}");
        c.spans.push((0, 2));
        c.offsets.push(0);
        let at = c.buf.as_ptr();
        pool.give(c);
        let other: Arc<str> = Arc::from("b.ndjson");
        let again = pool.take(&other, &None, Some(7));
        assert_eq!(again.buf.as_ptr(), at, "the same buffer");
        assert!(again.buf.is_empty() && again.spans.is_empty() && again.offsets.is_empty());
        assert_eq!((&*again.object, again.first_line), ("b.ndjson", Some(7)));
        for _ in 0..10 {
            pool.give(new_chunk(&object, &None, None));
        }
        assert_eq!(
            pool.0.lock().unwrap().len(),
            POOLED_CHUNKS,
            "the pool is bounded"
        );
    }
}
