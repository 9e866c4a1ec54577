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
///
/// The input is read straight into the chunk's buffer and its lines are found in place (their
/// spans), so no byte is copied after the read; only a line cut by the end of a chunk is carried
/// into the next one.
pub fn read_lines(
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    reading: LineReading,
    pool: &ChunkPool,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), WorkerError> {
    let key = &input.object.key;
    let (mut reader, pos, end, numbered) = open_input(store, input, reading.compression)?;
    let mut lines = Lines::new(input, reading, pool, end, numbered);
    // `lines.chunk.buf[from..]` is read but not yet taken as lines; object offset `at`.
    let (mut from, mut at) = (0usize, pos);
    loop {
        let want = match CHUNK_BYTES.saturating_sub(lines.chunk.buf.len()) {
            room if room >= MIN_READ => room,
            _ => READ_BYTES,
        };
        let eof = read_more(&mut *reader, &mut lines.chunk.buf, want, key)? < want;
        let start = match lines.take(from, at, eof) {
            Taken::Unfinished(start) => start,
            Taken::RangeEnded => return flush(send, lines.chunk),
        };
        // `buf[start..]` is an unfinished line (none at the end of the input).
        at += (start - from) as u64;
        from = start;
        if eof {
            break;
        }
        if lines.hold_unfinished(from, &mut at) {
            return flush(send, lines.chunk);
        }
        if from > 0 && lines.chunk.buf.len() + MIN_READ > CHUNK_BYTES {
            if !lines.next_chunk(from, send) {
                return Ok(());
            }
            from = 0;
        }
    }
    if let Some(o) = lines.oversized.take() {
        lines.chunk.oversized.push(o);
    }
    flush(send, lines.chunk)
}

/// A chunk with less room than this is sent (when it holds a whole line) rather than read into.
const MIN_READ: usize = 64 << 10;
/// What a read asks for when a chunk holds one unfinished line that outgrows it.
const READ_BYTES: usize = 1 << 20;

/// Appends up to `want` more bytes of the input to `buf`, read into its spare room (no zeroing
/// or copying for a file); fewer only at the end of the input. The bytes appended.
fn read_more(
    reader: &mut dyn Read,
    buf: &mut Vec<u8>,
    want: usize,
    key: &str,
) -> Result<usize, WorkerError> {
    buf.reserve(want);
    reader
        .take(want as u64)
        .read_to_end(buf)
        .map_err(|e| WorkerError::read(key, e))
}

/// A record too long to hold, being skipped: (offset, line, bytes so far, first bytes).
type Oversized = (u64, Option<u64>, u64, Vec<u8>);

/// Where [`Lines::take`] stopped.
enum Taken {
    /// At the start of an unfinished line (or the end of the bytes read).
    Unfinished(usize),
    /// A line starts past the input's range: the chunk is to be flushed.
    RangeEnded,
}

/// The line splitter of one input: it turns blocks of bytes into chunks of lines.
struct Lines<'p> {
    object: Arc<str>,
    header: Option<Arc<Vec<String>>>,
    pool: &'p ChunkPool,
    max_line: u64,
    /// The end offset of the input's range.
    end: u64,
    numbered: bool,
    line_no: u64,
    /// A range that starts after byte 0 skips the line it starts inside.
    skipping_partial: bool,
    skip_header: bool,
    oversized: Option<Oversized>,
    chunk: Chunk,
}

impl<'p> Lines<'p> {
    fn new(
        input: &ShardInput,
        reading: LineReading,
        pool: &'p ChunkPool,
        end: u64,
        numbered: bool,
    ) -> Lines<'p> {
        let object: Arc<str> = Arc::from(input.object.key.as_str());
        let chunk = pool.take(&object, &reading.header, numbered.then_some(0));
        Lines {
            object,
            header: reading.header,
            pool,
            max_line: reading.max_line,
            end,
            numbered,
            line_no: 0,
            skipping_partial: input.range.is_some_and(|r| r.start > 0),
            skip_header: reading.skip_header,
            oversized: None,
            chunk,
        }
    }

    /// Takes the complete lines of the chunk's bytes from `from` (object offset `at`; at `eof`
    /// the last line too) as spans of the buffer.
    fn take(&mut self, from: usize, at: u64, eof: bool) -> Taken {
        let mut start = from;
        loop {
            let buf = &self.chunk.buf;
            let nl = memchr::memchr(b'\n', &buf[start..]).map(|i| start + i);
            let line_end = match nl {
                Some(i) => i,
                None if eof && start < buf.len() => buf.len(),
                None => return Taken::Unfinished(start),
            };
            let offset = at + (start - from) as u64;
            let next = nl.map_or(buf.len(), |i| i + 1);
            if self.skipping_partial {
                // The byte before `range.start` was read first: if it is a newline, the next line
                // starts exactly at range.start; otherwise this partial line belongs to the
                // previous range.
                self.skipping_partial = false;
                start = next;
                continue;
            }
            if let Some((o, l, len, head)) = self.oversized.take() {
                // The end of a record that was too long: count it, keep its head.
                let len = len + (line_end - start) as u64;
                self.chunk.oversized.push((o, l, len, head));
                start = next;
                self.line_no += 1;
                continue;
            }
            if offset >= self.end {
                return Taken::RangeEnded;
            }
            if self.skip_header {
                self.skip_header = false;
                start = next;
                self.line_no += 1;
                if let Some(f) = self.chunk.first_line.as_mut() {
                    *f += 1;
                }
                continue;
            }
            self.line(start, line_end, offset);
            start = next;
        }
    }

    /// The line `buf[start..end]` found at `offset` (without its `\n`) as a span of the chunk,
    /// or counted as oversized.
    fn line(&mut self, start: usize, end: usize, offset: u64) {
        let c = &mut self.chunk;
        let end = if end > start && c.buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        if (end - start) as u64 > self.max_line {
            let head = c.buf[start..end.min(start + 1024)].to_vec();
            let at_line = self.numbered.then_some(self.line_no);
            c.oversized
                .push((offset, at_line, (end - start) as u64, head));
        } else {
            c.spans.push((start, end));
            c.offsets.push(offset);
        }
        self.line_no += 1;
    }

    /// Decides what to keep of the unfinished line `buf[from..]` (at object offset `at`) until
    /// more is read: a partial line being skipped and the rest of an oversized record are
    /// dropped (counted), a line that has grown too long becomes oversized. True when it starts
    /// past the range.
    fn hold_unfinished(&mut self, from: usize, at: &mut u64) -> bool {
        let buf = &mut self.chunk.buf;
        let len = (buf.len() - from) as u64;
        if self.skipping_partial {
            *at += len;
            buf.truncate(from);
        } else if let Some(o) = self.oversized.as_mut() {
            o.2 += len;
            *at += len;
            buf.truncate(from);
        } else if *at >= self.end {
            return true;
        } else if len > self.max_line {
            // Too long to hold: remember where it starts and skip to its end.
            let head = buf[from..from + 1024.min(len as usize)].to_vec();
            let at_line = self.numbered.then_some(self.line_no);
            self.oversized = Some((*at, at_line, len, head));
            *at += len;
            buf.truncate(from);
        }
        false
    }

    /// Sends the chunk, whose lines end at `from`, and goes on in a fresh one that starts with
    /// the unfinished line `buf[from..]`. False when the receiver wants no more chunks.
    fn next_chunk(&mut self, from: usize, send: &mut dyn FnMut(Chunk) -> bool) -> bool {
        let mut fresh = self.pool.take(
            &self.object,
            &self.header,
            self.numbered.then_some(self.line_no),
        );
        fresh.buf.extend_from_slice(&self.chunk.buf[from..]);
        self.chunk.buf.truncate(from);
        send(std::mem::replace(&mut self.chunk, fresh))
    }
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
    // Room for the longest field (the whole line); what an earlier record left in it is
    // overwritten before it is read, so the buffer is only grown, never cleared.
    if field.len() <= line.len() {
        field.resize(line.len() + 1, 0);
    }
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

    /// An oversized record's (offset, line, length).
    type OversizedAt = (u64, Option<u64>, u64);

    /// Reads `key` of `store` (or its byte range) with lines longer than `max_line` oversized:
    /// each line's (offset, text), and the oversized records (offset, line, length).
    fn lines_of(
        store: &backends::object_store::LocalStore,
        size: u64,
        range: Option<(u64, u64)>,
        max_line: u64,
    ) -> (Vec<(u64, String)>, Vec<OversizedAt>) {
        let input = ShardInput {
            object: protocol::ObjectRef {
                key: "in.ndjson".into(),
                size,
            },
            range: range.map(|(start, end)| protocol::ByteRange { start, end }),
        };
        let reading = LineReading {
            compression: Compression::None,
            max_line,
            header: None,
            skip_header: false,
        };
        let (mut lines, mut oversized) = (Vec::new(), Vec::new());
        let mut send = |c: Chunk| {
            for ((s, e), o) in c.spans.iter().zip(&c.offsets) {
                lines.push((*o, String::from_utf8_lossy(&c.buf[*s..*e]).into_owned()));
            }
            oversized.extend(c.oversized.iter().map(|(o, l, n, _)| (*o, *l, *n)));
            true
        };
        read_lines(store, &input, reading, &ChunkPool::default(), &mut send).unwrap();
        (lines, oversized)
    }

    fn store_with(text: &[u8]) -> (tempfile::TempDir, backends::object_store::LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.ndjson"), text).unwrap();
        let store = backends::object_store::LocalStore::new(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn every_line_is_read_once_by_the_range_it_starts_in_wherever_the_split() {
        let text = b"aa\nbbb\r\n\ncc\nlast";
        let (_dir, store) = store_with(text);
        let n = text.len() as u64;
        let (whole, _) = lines_of(&store, n, None, 100);
        let expected: Vec<(u64, String)> =
            [(0, "aa"), (3, "bbb"), (8, ""), (9, "cc"), (12, "last")]
                .iter()
                .map(|(o, l)| (*o, l.to_string()))
                .collect();
        assert_eq!(
            whole, expected,
            "CR stripped, the last line without a newline kept"
        );
        for split in 0..=n {
            let (mut a, _) = lines_of(&store, n, Some((0, split)), 100);
            let (b, _) = lines_of(&store, n, Some((split, n)), 100);
            a.extend(b);
            assert_eq!(a, expected, "split at byte {split}");
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_counted_with_its_place_not_held() {
        let long = "x".repeat(3 << 20);
        let text = format!("ab\n{long}\ncd\n");
        let (_dir, store) = store_with(text.as_bytes());
        let (lines, oversized) = lines_of(&store, text.len() as u64, None, 1 << 20);
        assert_eq!(
            lines,
            vec![(0, "ab".into()), (3 + (3 << 20) + 1, "cd".into())]
        );
        assert_eq!(oversized, vec![(3, Some(1), 3 << 20)]);
        // Within one block: the line is whole when it is judged.
        let (_dir, store) = store_with(b"aa\nbbb\r\n\ncc\nlast");
        let (lines, oversized) = lines_of(&store, 17, None, 2);
        assert_eq!(
            lines,
            vec![(0, "aa".into()), (8, "".into()), (9, "cc".into())]
        );
        assert_eq!(oversized, vec![(3, Some(1), 3), (12, Some(4), 4)]);
    }

    #[test]
    fn lines_are_taken_in_place_and_a_line_cut_by_a_chunk_s_end_goes_whole_into_the_next() {
        // Lines of 1 to 199 bytes, some ending in CRLF, over three chunks and a bit.
        let mut text = Vec::new();
        let mut expected = Vec::new();
        let mut n = 0usize;
        while text.len() < 3 * CHUNK_BYTES + 1000 {
            let line = format!("{n:07}-{}", "y".repeat(n % 192));
            expected.push((text.len() as u64, line.clone()));
            text.extend_from_slice(line.as_bytes());
            text.extend_from_slice(if n.is_multiple_of(5) { b"\r\n" } else { b"\n" });
            n += 1;
        }
        let (_dir, store) = store_with(&text);
        let input = ShardInput {
            object: protocol::ObjectRef {
                key: "in.ndjson".into(),
                size: text.len() as u64,
            },
            range: None,
        };
        let reading = LineReading {
            compression: Compression::None,
            max_line: 1 << 20,
            header: None,
            skip_header: false,
        };
        let (mut lines, mut chunks) = (Vec::new(), 0);
        let mut send = |c: Chunk| {
            let first = c.offsets[0] as usize;
            // The chunk's buffer is the input as read, newlines and carriage returns included.
            assert_eq!(c.buf, text[first..first + c.buf.len()], "chunk {chunks}");
            assert_eq!(c.first_line, Some(lines.len() as u64), "chunk {chunks}");
            for ((s, e), o) in c.spans.iter().zip(&c.offsets) {
                assert_eq!(*s as u64, *o - first as u64, "a span is its line's place");
                lines.push((*o, String::from_utf8(c.buf[*s..*e].to_vec()).unwrap()));
            }
            chunks += 1;
            true
        };
        read_lines(&store, &input, reading, &ChunkPool::default(), &mut send).unwrap();
        assert_eq!(chunks, 4);
        assert_eq!(lines, expected);
    }

    /// The fields `split_csv` finds in `line`, with `field` as its buffer.
    fn fields(line: &str, field: &mut Vec<u8>) -> Result<Vec<String>, String> {
        let mut rdr = csv_core::Reader::new();
        let mut out = Vec::new();
        split_csv(line.as_bytes(), &mut rdr, field, &mut |f| {
            out.push(String::from_utf8_lossy(f).into_owned())
        })?;
        Ok(out)
    }

    #[test]
    fn a_csv_buffer_reused_from_a_longer_record_splits_the_next_one_exactly() {
        let mut field = Vec::new();
        let long = fields(
            r#"a-long-first-field,"quoted, with ""quotes""",x"#,
            &mut field,
        );
        assert_eq!(
            long.unwrap(),
            ["a-long-first-field", r#"quoted, with "quotes""#, "x"]
        );
        let grown = field.len();
        assert_eq!(fields(r#"b,"",c"#, &mut field).unwrap(), ["b", "", "c"]);
        assert_eq!(fields(",", &mut field).unwrap(), ["", ""]);
        assert_eq!(field.len(), grown, "kept, not cleared or shrunk");
        // csv_core ends an unterminated quoted field at the end of the record.
        assert_eq!(fields(r#"x,"open"#, &mut field).unwrap(), ["x", "open"]);
    }

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
