//! The shard engine: source bytes → records → Arrow → steps → partitioned Parquet + quarantine.
//!
//! ```text
//!  reader thread ──sync_channel(2)──▶ engine loop (on the rayon pool)
//!  (range-aligned read,               per chunk of ~8 MiB of lines:
//!   gzip/zstd, line split,              pieces of 4,096 lines in parallel: parse → steps before dedupe
//!   over-long lines skipped)            in order:                           dedupe (one key set per shard)
//!                                       pieces in parallel:                 steps after dedupe → project → partition
//!                                       partition writers:                  Parquet row groups to local files
//! ```
//! Memory is bounded by two chunks in flight, one row group per open partition file (flushed early
//! when the total passes a budget) and the dedupe key set (the keys only, in an arena).
//!
//! Every line lands in exactly one bucket: `lines_total = malformed + rejected + filtered +
//! duplicates + rows_out`; malformed and rejected lines go to the quarantine file with the reason
//! and the source location.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use protocol::{ByteRange, Counts, ShardInput};
use rayon::prelude::*;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::config::{Codec, ColumnType, Compression, Format, OnError, OnMissing};
use crate::transform;
use crate::{WorkerError, plan::Plan, plan::StepOp};
use pipeline::values;

pub const CHUNK_BYTES: usize = 4 << 20;
const PIECE_ROWS: usize = 4096;
/// Encoded-but-unflushed row group bytes across all open partition files before the largest is
/// flushed early.
const WRITER_BUDGET: usize = 32 << 20;
const DICTIONARY_PAGE_BYTES: usize = 128 << 10;
/// A partition folder, its column values, and its rows.
type PartBatch = (String, PartitionValues, RecordBatch);
type PartitionValues = Vec<(String, String)>;

pub const MALFORMED: &str = "malformed";
pub const INVALID_VALUE: &str = "invalid_value";

pub fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::String => DataType::Utf8,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Date => DataType::Date32,
    }
}

/// A typed column being built row by row.
pub enum ColBuilder {
    Str(StringBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Dec(Decimal128Builder, u8, i8),
    Ts(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

/// One parsed value, before it is checked against its declared type.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(std::borrow::Cow<'a, str>),
    Complex(&'static str),
}

/// A value converted to its column's type (conversion happens before anything is appended, so a
/// row that fails leaves no partial values behind).
enum Cell {
    Null,
    Str,
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Dec(i128),
    Ts(i64),
    Date(i32),
}

impl ColBuilder {
    pub fn new(t: ColumnType, cap: usize) -> Self {
        match t {
            ColumnType::String => ColBuilder::Str(StringBuilder::with_capacity(cap, cap * 16)),
            ColumnType::Int16 => ColBuilder::I16(Int16Builder::with_capacity(cap)),
            ColumnType::Int32 => ColBuilder::I32(Int32Builder::with_capacity(cap)),
            ColumnType::Int64 => ColBuilder::I64(Int64Builder::with_capacity(cap)),
            ColumnType::Float32 => ColBuilder::F32(Float32Builder::with_capacity(cap)),
            ColumnType::Float64 => ColBuilder::F64(Float64Builder::with_capacity(cap)),
            ColumnType::Bool => ColBuilder::Bool(BooleanBuilder::with_capacity(cap)),
            ColumnType::Decimal { precision, scale } => ColBuilder::Dec(
                Decimal128Builder::with_capacity(cap)
                    .with_precision_and_scale(precision, scale)
                    .expect("validated"),
                precision,
                scale,
            ),
            ColumnType::Timestamp => {
                ColBuilder::Ts(TimestampMicrosecondBuilder::with_capacity(cap))
            }
            ColumnType::Date => ColBuilder::Date(Date32Builder::with_capacity(cap)),
        }
    }

    fn ty(&self) -> &'static str {
        match self {
            ColBuilder::Str(_) => "string",
            ColBuilder::I16(_) => "int16",
            ColBuilder::I32(_) => "int32",
            ColBuilder::I64(_) => "int64",
            ColBuilder::F32(_) => "float32",
            ColBuilder::F64(_) => "float64",
            ColBuilder::Bool(_) => "bool",
            ColBuilder::Dec(..) => "decimal",
            ColBuilder::Ts(_) => "timestamp",
            ColBuilder::Date(_) => "date",
        }
    }

    pub fn append_null(&mut self) {
        match self {
            ColBuilder::Str(b) => b.append_null(),
            ColBuilder::I16(b) => b.append_null(),
            ColBuilder::I32(b) => b.append_null(),
            ColBuilder::I64(b) => b.append_null(),
            ColBuilder::F32(b) => b.append_null(),
            ColBuilder::F64(b) => b.append_null(),
            ColBuilder::Bool(b) => b.append_null(),
            ColBuilder::Dec(b, ..) => b.append_null(),
            ColBuilder::Ts(b) => b.append_null(),
            ColBuilder::Date(b) => b.append_null(),
        }
    }

    /// Converts text (CSV fields, JSON strings for typed columns) to this column's type.
    fn text_cell(&self, s: &str) -> Result<Cell, String> {
        let bad = || format!("expected {}, got {:?}", self.ty(), truncate(s, 80));
        Ok(match self {
            ColBuilder::Str(_) => Cell::Str,
            ColBuilder::I16(_) => Cell::I16(s.parse().map_err(|_| bad())?),
            ColBuilder::I32(_) => Cell::I32(s.parse().map_err(|_| bad())?),
            ColBuilder::I64(_) => Cell::I64(s.parse().map_err(|_| bad())?),
            ColBuilder::F32(_) => Cell::F32(s.parse().map_err(|_| bad())?),
            ColBuilder::F64(_) => Cell::F64(s.parse().map_err(|_| bad())?),
            ColBuilder::Bool(_) => Cell::Bool(values::parse_bool(s).ok_or_else(bad)?),
            ColBuilder::Dec(_, p, sc) => {
                Cell::Dec(values::parse_decimal(s, *p, *sc).ok_or_else(bad)?)
            }
            ColBuilder::Ts(_) => Cell::Ts(values::parse_timestamp_text(s).ok_or_else(bad)?),
            ColBuilder::Date(_) => Cell::Date(values::parse_date(s).ok_or_else(bad)?),
        })
    }

    /// Text under its column's rules: the column's timestamp or date format and zone, else the
    /// plain parser after rewriting numbers from the column's locale.
    fn rule_cell(&self, s: &str, rules: &pipeline::values::TextRules) -> Result<Cell, String> {
        match (self, &rules.timestamp, &rules.date) {
            (ColBuilder::Ts(_), Some(r), _) => r.parse(s).map(Cell::Ts),
            (ColBuilder::Date(_), _, Some(d)) => d.parse(s).map(Cell::Date),
            _ => self.text_cell(&rules.number(s)),
        }
    }

    fn val_cell(&self, v: &Val<'_>) -> Result<Cell, String> {
        match v {
            Val::Null => Ok(Cell::Null),
            Val::Str(s) => self.text_cell(s),
            Val::Complex(kind) => Err(format!("expected {}, got a JSON {kind}", self.ty())),
            Val::Bool(b) => match self {
                ColBuilder::Bool(_) => Ok(Cell::Bool(*b)),
                ColBuilder::Str(_) => Ok(Cell::Str),
                _ => Err(format!("expected {}, got {b}", self.ty())),
            },
            Val::I64(i) => match self {
                ColBuilder::I16(_) => i16::try_from(*i)
                    .map(Cell::I16)
                    .map_err(|_| format!("{i} does not fit int16")),
                ColBuilder::I32(_) => i32::try_from(*i)
                    .map(Cell::I32)
                    .map_err(|_| format!("{i} does not fit int32")),
                ColBuilder::I64(_) => Ok(Cell::I64(*i)),
                ColBuilder::F32(_) => Ok(Cell::F32(*i as f32)),
                ColBuilder::F64(_) => Ok(Cell::F64(*i as f64)),
                ColBuilder::Dec(_, p, s) => values::parse_decimal(&i.to_string(), *p, *s)
                    .map(Cell::Dec)
                    .ok_or_else(|| format!("{i} does not fit decimal({p},{s})")),
                ColBuilder::Str(_) => Ok(Cell::Str),
                _ => Err(format!("expected {}, got {i}", self.ty())),
            },
            Val::U64(u) => match self {
                ColBuilder::I16(_) => i16::try_from(*u)
                    .map(Cell::I16)
                    .map_err(|_| format!("{u} does not fit int16")),
                ColBuilder::I32(_) => i32::try_from(*u)
                    .map(Cell::I32)
                    .map_err(|_| format!("{u} does not fit int32")),
                ColBuilder::I64(_) => i64::try_from(*u)
                    .map(Cell::I64)
                    .map_err(|_| format!("{u} does not fit int64")),
                ColBuilder::F32(_) => Ok(Cell::F32(*u as f32)),
                ColBuilder::F64(_) => Ok(Cell::F64(*u as f64)),
                ColBuilder::Str(_) => Ok(Cell::Str),
                _ => Err(format!("expected {}, got {u}", self.ty())),
            },
            Val::F64(f) => match self {
                ColBuilder::F64(_) => Ok(Cell::F64(*f)),
                // JSON numbers are read as f64; the float32 nearest to it.
                ColBuilder::F32(_) if f.is_finite() && f.abs() <= f64::from(f32::MAX) => {
                    Ok(Cell::F32(*f as f32))
                }
                ColBuilder::F32(_) => Err(format!("{f} does not fit float32")),
                ColBuilder::Dec(_, p, s) => values::parse_decimal(&f.to_string(), *p, *s)
                    .map(Cell::Dec)
                    .ok_or_else(|| format!("{f} does not fit decimal({p},{s})")),
                ColBuilder::Str(_) => Ok(Cell::Str),
                _ => Err(format!("expected {}, got {f}", self.ty())),
            },
        }
    }

    fn push(&mut self, cell: Cell, text: &str) {
        match (self, cell) {
            (b, Cell::Null) => b.append_null(),
            (ColBuilder::Str(b), Cell::Str) => b.append_value(text),
            (ColBuilder::I16(b), Cell::I16(v)) => b.append_value(v),
            (ColBuilder::I32(b), Cell::I32(v)) => b.append_value(v),
            (ColBuilder::I64(b), Cell::I64(v)) => b.append_value(v),
            (ColBuilder::F32(b), Cell::F32(v)) => b.append_value(v),
            (ColBuilder::F64(b), Cell::F64(v)) => b.append_value(v),
            (ColBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColBuilder::Dec(b, ..), Cell::Dec(v)) => b.append_value(v),
            (ColBuilder::Ts(b), Cell::Ts(v)) => b.append_value(v),
            (ColBuilder::Date(b), Cell::Date(v)) => b.append_value(v),
            _ => unreachable!("cells are made by their own builder"),
        }
    }

    /// Appends one text value (used by casts); an error leaves nothing appended.
    pub fn append_text(&mut self, s: &str) -> Result<(), String> {
        let c = self.text_cell(s)?;
        self.push(c, s);
        Ok(())
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Str(b) => Arc::new(b.finish()),
            ColBuilder::I16(b) => Arc::new(b.finish()),
            ColBuilder::I32(b) => Arc::new(b.finish()),
            ColBuilder::I64(b) => Arc::new(b.finish()),
            ColBuilder::F32(b) => Arc::new(b.finish()),
            ColBuilder::F64(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::Dec(b, ..) => Arc::new(b.finish()),
            ColBuilder::Ts(b) => Arc::new(b.finish().with_timezone("UTC")),
            ColBuilder::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// Where a CSV row's text for a declared column is: a field of the row (`start..end` in its
/// field buffer), or the column's `default`.
#[derive(Clone, Copy)]
enum CsvText {
    Field(usize, usize),
    Default(usize),
}

/// A JSON value under its column's rules: a string listed in `null_values` (when set) is null,
/// and a null takes the `default` (parsed like a value, by `rule_cell`).
fn apply_text_rules(rules: &pipeline::values::TextRules, v: &mut Val<'_>) {
    if let Val::Str(s) = v
        && rules.is_null_json(s)
    {
        *v = Val::Null;
    }
    if let (Val::Null, Some(d)) = (&*v, &rules.default) {
        *v = Val::Str(std::borrow::Cow::Owned(d.clone()));
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------------------------
// Reading: chunks of records with their source locations.

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

fn open_decoded(
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

/// Reads the lines of one input (a whole object or a byte range of it) and sends them as chunks.
/// A range's lines are those that start inside it.
pub fn read_lines(
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    compression: Compression,
    max_line: u64,
    header: Option<Arc<Vec<String>>>,
    skip_header: bool,
    send: &mut dyn FnMut(Chunk) -> bool,
) -> Result<(), WorkerError> {
    let key = &input.object.key;
    let object: Arc<str> = Arc::from(key.as_str());
    let (mut reader, pos, end, numbered) = match input.range {
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
            // Start one byte early to learn whether `start` begins a line.
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
    };
    let mut line_no: u64 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut buf_start = pos; // object offset of buf[0]
    let mut skipping_partial = input.range.is_some_and(|r| r.start > 0);
    let mut skip_header = skip_header;
    let mut eof = false;
    // An over-long record being skipped: (offset, line, bytes so far, first bytes).
    let mut oversized: Option<(u64, Option<u64>, u64, Vec<u8>)> = None;
    let mut chunk = new_chunk(&object, &header, numbered.then_some(0));
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
                    new_chunk(&object, &header, numbered.then_some(line_no)),
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

fn new_chunk(
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

fn flush(send: &mut dyn FnMut(Chunk) -> bool, chunk: Chunk) -> Result<(), WorkerError> {
    if !chunk.spans.is_empty() || !chunk.oversized.is_empty() {
        send(chunk);
    }
    Ok(())
}

/// Streams the elements of a JSON array document as records (one chunk per ~8 MiB).
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
fn split_csv(
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

// ---------------------------------------------------------------------------------------------
// Parsing records into columns.

/// Where each declared column is found in a JSON record.
#[derive(Debug, Default)]
pub struct JsonTree {
    entries: Vec<(Box<str>, JsonNode)>,
}

#[derive(Debug)]
enum JsonNode {
    Leaf(usize),
    Object(JsonTree),
}

impl JsonTree {
    pub fn build(paths: &[(String, usize)]) -> JsonTree {
        let mut root = JsonTree::default();
        for (path, col) in paths {
            let mut node = &mut root;
            let parts: Vec<&str> = path.split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let idx = match node.entries.iter().position(|(k, _)| &**k == *p) {
                    Some(i) => i,
                    None => {
                        let n = if last {
                            JsonNode::Leaf(*col)
                        } else {
                            JsonNode::Object(JsonTree::default())
                        };
                        node.entries.push(((*p).into(), n));
                        node.entries.len() - 1
                    }
                };
                match &mut node.entries[idx].1 {
                    JsonNode::Object(t) => node = t,
                    JsonNode::Leaf(_) => break,
                }
            }
        }
        root
    }

    fn get(&self, key: &str) -> Option<&JsonNode> {
        self.entries
            .iter()
            .find(|(k, _)| k.len() == key.len() && &**k == key)
            .map(|(_, n)| n)
    }
}

struct KeyStr<'de>(std::borrow::Cow<'de, str>);
impl<'de> serde::Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

struct LeafSeed;
impl<'de> DeserializeSeed<'de> for LeafSeed {
    type Value = Val<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Val<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value")
            }
            fn visit_unit<E>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_none<E>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
                Ok(Val::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
                Ok(Val::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
                Ok(Val::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
                Ok(Val::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Owned(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Val<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Val::Complex("object"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Val<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Val::Complex("array"))
            }
        }
        d.deserialize_any(V)
    }
}

struct ObjSeed<'t, 's, 'de> {
    tree: &'t JsonTree,
    slots: &'s mut Vec<Val<'de>>,
    root: bool,
}

impl<'de> DeserializeSeed<'de> for ObjSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.root {
            d.deserialize_map(self)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for ObjSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(()) // a null parent: every child is null
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(KeyStr(k)) = m.next_key::<KeyStr<'de>>()? {
            match self.tree.get(&k) {
                Some(JsonNode::Leaf(i)) => self.slots[*i] = m.next_value_seed(LeafSeed)?,
                Some(JsonNode::Object(t)) => m.next_value_seed(ObjSeed {
                    tree: t,
                    slots: self.slots,
                    root: false,
                })?,
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
    // A scalar where an object was expected: the children are absent.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// A processing unit: up to [`PIECE_ROWS`] records of one chunk, as Arrow columns.
pub struct Piece {
    /// Column slots (declared columns, then step outputs); `None` until set.
    pub cols: Vec<Option<ArrayRef>>,
    /// For each live row, its record index in the chunk.
    pub rows: Vec<u32>,
    pub quarantine: Vec<QItem>,
    pub counts: Counts,
}

pub struct QItem {
    pub record: u32,
    pub bucket: String,
    pub reason: String,
}

impl Piece {
    fn keep(&mut self, mask: &BooleanArray) -> Result<(), WorkerError> {
        if mask.true_count() == mask.len() {
            return Ok(());
        }
        for c in self.cols.iter_mut().flatten() {
            *c = arrow::compute::filter(c, mask).map_err(WorkerError::arrow)?;
        }
        let mut i = 0;
        self.rows.retain(|_| {
            let k = mask.value(i);
            i += 1;
            k
        });
        Ok(())
    }

    /// Applies a transform's failures: quarantine (and drop) or leave null.
    fn fail(
        &mut self,
        fails: transform::Failures,
        on_error: OnError,
        bucket: &str,
        column: &str,
    ) -> Result<(), WorkerError> {
        if fails.is_empty() || on_error == OnError::Null {
            return Ok(());
        }
        let mut mask = vec![true; self.rows.len()];
        for (i, reason) in fails {
            mask[i] = false;
            self.quarantine.push(QItem {
                record: self.rows[i],
                bucket: bucket.into(),
                reason: format!("{column}: {reason}"),
            });
            *self.counts.rejected.entry(bucket.into()).or_default() += 1;
        }
        self.keep(&BooleanArray::from(mask))
    }
}

/// Parses records `range` of a chunk into a piece.
fn parse_piece(plan: &Plan, chunk: &Chunk, range: std::ops::Range<usize>) -> Piece {
    let ncols = plan.slot_types.len();
    let declared = plan.declared.len();
    let mut builders: Vec<ColBuilder> = plan
        .declared
        .iter()
        .map(|(_, t, _)| ColBuilder::new(*t, range.len()))
        .collect();
    let mut piece = Piece {
        cols: vec![None; ncols],
        rows: Vec::with_capacity(range.len()),
        quarantine: Vec::new(),
        counts: Counts::default(),
    };
    piece.counts.lines_total = range.len() as u64;
    let mut cells: Vec<Cell> = Vec::with_capacity(declared);
    let mut texts: Vec<std::borrow::Cow<str>> = Vec::with_capacity(declared);
    let mut slots: Vec<Val> = vec![Val::Null; declared];
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut field_buf: Vec<u8> = Vec::new();
    let mut csv_scratch: Vec<u8> = Vec::new();
    let mut csv_reader = csv_core::ReaderBuilder::new()
        .delimiter(plan.csv_delimiter)
        .quote(plan.csv_quote)
        .build();
    // For CSV: where each declared column's text is.
    let mut csv_texts: Vec<CsvText> = Vec::with_capacity(declared);
    let csv_header = chunk.header.as_deref().map(Vec::as_slice).unwrap_or(&[]);
    let csv_map: Vec<Option<usize>> = (0..declared)
        .map(|c| plan.csv_index(csv_header, c))
        .collect();
    let malformed = |piece: &mut Piece, i: usize, reason: String| {
        piece.counts.malformed += 1;
        piece.quarantine.push(QItem {
            record: i as u32,
            bucket: MALFORMED.into(),
            reason,
        });
    };
    for i in range {
        let raw = &chunk.buf[chunk.spans[i].0..chunk.spans[i].1];
        cells.clear();
        texts.clear();
        let outcome: Result<(), (bool, String)> = match plan.format {
            Format::Ndjson | Format::JsonArray | Format::Parquet => {
                let text = match std::str::from_utf8(raw) {
                    Ok(t) => t,
                    Err(e) => {
                        malformed(
                            &mut piece,
                            i,
                            format!("not valid UTF-8 at byte {}", e.valid_up_to()),
                        );
                        continue;
                    }
                };
                for s in slots.iter_mut() {
                    *s = Val::Null;
                }
                let mut de = serde_json::Deserializer::from_str(text);
                let parsed = ObjSeed {
                    tree: &plan.json_tree,
                    slots: &mut slots,
                    root: true,
                }
                .deserialize(&mut de)
                .and_then(|()| de.end());
                match parsed {
                    Err(e) => Err((true, format!("not a JSON object: {e}"))),
                    Ok(()) => {
                        let mut r = Ok(());
                        for (c, (name, _, required)) in plan.declared.iter().enumerate() {
                            apply_text_rules(&plan.text_rules[c], &mut slots[c]);
                            if *required && matches!(slots[c], Val::Null) {
                                r = Err((
                                    true,
                                    format!("required field {name:?} is missing or null"),
                                ));
                                break;
                            }
                            let cell = match &slots[c] {
                                Val::Str(s) => builders[c].rule_cell(s, &plan.text_rules[c]),
                                v => builders[c].val_cell(v),
                            };
                            match cell {
                                Ok(cell) => {
                                    texts.push(match &slots[c] {
                                        Val::Str(s) => s.clone(),
                                        Val::I64(v) => v.to_string().into(),
                                        Val::U64(v) => v.to_string().into(),
                                        Val::F64(v) => v.to_string().into(),
                                        Val::Bool(v) => v.to_string().into(),
                                        _ => "".into(),
                                    });
                                    cells.push(cell);
                                }
                                Err(e) => {
                                    r = Err((false, format!("field {name:?}: {e}")));
                                    break;
                                }
                            }
                        }
                        r
                    }
                }
            }
            Format::Csv => {
                let header = csv_header;
                fields.clear();
                field_buf.clear();
                csv_texts.clear();
                let split = split_csv(raw, &mut csv_reader, &mut csv_scratch, &mut |f| {
                    let s = field_buf.len();
                    field_buf.extend_from_slice(f);
                    fields.push((s, field_buf.len()));
                });
                if let Err(e) = split {
                    Err((true, format!("CSV: {e}")))
                } else if fields.len() != header.len() {
                    Err((
                        true,
                        format!(
                            "CSV row has {} fields, the header has {}",
                            fields.len(),
                            header.len()
                        ),
                    ))
                } else {
                    match std::str::from_utf8(&field_buf) {
                        Err(e) => {
                            Err((true, format!("not valid UTF-8 at byte {}", e.valid_up_to())))
                        }
                        Ok(all) => {
                            let mut r = Ok(());
                            for (c, (name, _, required)) in plan.declared.iter().enumerate() {
                                let rules = &plan.text_rules[c];
                                let span = csv_map[c].map(|j| fields[j]);
                                let given = span
                                    .map(|(a, b)| (&all[a..b], CsvText::Field(a, b)))
                                    .filter(|(s, _)| !rules.is_null(s));
                                let v = given.or_else(|| {
                                    rules.default.as_deref().map(|d| (d, CsvText::Default(c)))
                                });
                                match v {
                                    None if *required => {
                                        r = Err((
                                            true,
                                            format!("required field {name:?} is empty"),
                                        ));
                                        break;
                                    }
                                    None => {
                                        cells.push(Cell::Null);
                                        csv_texts.push(CsvText::Field(0, 0));
                                    }
                                    Some((s, at)) => match builders[c].rule_cell(s, rules) {
                                        Ok(cell) => {
                                            cells.push(cell);
                                            csv_texts.push(at);
                                        }
                                        Err(e) => {
                                            r = Err((false, format!("field {name:?}: {e}")));
                                            break;
                                        }
                                    },
                                }
                            }
                            r
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(()) if plan.format == Format::Csv => {
                // Validated as UTF-8 above.
                let all = std::str::from_utf8(&field_buf).unwrap_or_default();
                for (c, cell) in cells.drain(..).enumerate() {
                    let text = match csv_texts[c] {
                        CsvText::Field(a, b) => &all[a..b],
                        CsvText::Default(d) => plan.text_rules[d].default.as_deref().unwrap_or(""),
                    };
                    builders[c].push(cell, text);
                }
                piece.rows.push(i as u32);
            }
            Ok(()) => {
                for (c, cell) in cells.drain(..).enumerate() {
                    builders[c].push(cell, &texts[c]);
                }
                piece.rows.push(i as u32);
            }
            Err((true, reason)) => malformed(&mut piece, i, reason),
            Err((false, reason)) => {
                *piece
                    .counts
                    .rejected
                    .entry(INVALID_VALUE.into())
                    .or_default() += 1;
                piece.quarantine.push(QItem {
                    record: i as u32,
                    bucket: INVALID_VALUE.into(),
                    reason,
                });
            }
        }
    }
    for (c, b) in builders.iter_mut().enumerate() {
        piece.cols[c] = Some(b.finish());
    }
    piece
}

/// Runs steps `range` of the plan on a piece.
fn run_steps(
    plan: &Plan,
    piece: &mut Piece,
    steps: std::ops::Range<usize>,
) -> Result<(), WorkerError> {
    for op in &plan.steps[steps] {
        if piece.rows.is_empty() {
            return Ok(());
        }
        match op {
            StepOp::Filter { conds, bucket } => {
                let n = piece.rows.len();
                let mut drop = vec![false; n];
                for c in conds {
                    let col = piece.cols[c.slot].as_ref().expect("set");
                    match &c.kind {
                        crate::plan::CondKind::IsNull(want) => {
                            for (i, d) in drop.iter_mut().enumerate() {
                                *d |= col.is_null(i) == *want;
                            }
                        }
                        kind => {
                            let a = col.as_string::<i32>();
                            for (i, d) in drop.iter_mut().enumerate() {
                                if *d || a.is_null(i) {
                                    continue;
                                }
                                *d = kind.matches(a.value(i));
                            }
                        }
                    }
                }
                let dropped = drop.iter().filter(|d| **d).count() as u64;
                if dropped > 0 {
                    *piece.counts.filtered.entry(bucket.clone()).or_default() += dropped;
                    piece.keep(&BooleanArray::from(
                        drop.into_iter().map(|d| !d).collect::<Vec<_>>(),
                    ))?;
                }
            }
            StepOp::Dedupe { .. } => unreachable!("dedupe runs between the parallel phases"),
            StepOp::Trim { slots, chars } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::trim(
                        piece.cols[*s].as_ref().expect("set"),
                        chars.as_deref(),
                    ));
                }
            }
            StepOp::Upper { slots } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::upper(piece.cols[*s].as_ref().expect("set")));
                }
            }
            StepOp::Lower { slots } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::lower(piece.cols[*s].as_ref().expect("set")));
                }
            }
            StepOp::Regex {
                slot,
                out,
                re,
                replacement,
            } => {
                piece.cols[*out] = Some(transform::regex_replace(
                    piece.cols[*slot].as_ref().expect("set"),
                    re,
                    replacement,
                ));
            }
            StepOp::ParseTs {
                slot,
                out,
                format,
                on_error,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::parse_timestamps(piece.cols[*slot].as_ref().expect("set"), format);
                piece.cols[*out] = Some(a);
                piece.fail(f, *on_error, bucket, column)?;
            }
            StepOp::Date { slot, out } => {
                piece.cols[*out] =
                    Some(transform::date_of(piece.cols[*slot].as_ref().expect("set")));
            }
            StepOp::Hash {
                slot,
                out,
                algorithm,
                key,
            } => {
                piece.cols[*out] = Some(transform::hash(
                    piece.cols[*slot].as_ref().expect("set"),
                    *algorithm,
                    key,
                ));
            }
            StepOp::Ipv4 {
                slot,
                out,
                keep,
                on_error,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::ipv4_truncate(piece.cols[*slot].as_ref().expect("set"), *keep);
                piece.cols[*out] = Some(a);
                piece.fail(f, *on_error, bucket, column)?;
            }
            StepOp::Lookup {
                slot,
                out,
                table,
                on_missing,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::lookup(piece.cols[*slot].as_ref().expect("set"), table, *on_missing);
                piece.cols[*out] = Some(a);
                if *on_missing == OnMissing::Reject {
                    piece.fail(f, OnError::Reject, bucket, column)?;
                }
            }
            StepOp::Cast {
                slot,
                out,
                to,
                on_error,
                bucket,
                column,
            } => {
                let src = piece.cols[*slot].as_ref().expect("set");
                let (a, f) = if src.data_type() == &DataType::Utf8 {
                    transform::cast_strings(src, *to)
                } else {
                    transform::cast_other(src, *to).map_err(|e| WorkerError::Step {
                        step: "cast".into(),
                        detail: e,
                    })?
                };
                piece.cols[*out] = Some(a);
                piece.fail(f, *on_error, bucket, column)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dedupe: exact, keep-first, over the whole shard.

/// The keys seen so far, stored once in an arena of 16 MiB blocks (no copy-on-grow spikes).
pub struct KeySet {
    blocks: Vec<Vec<u8>>,
    /// Each key's place, packed: block (20 bits) | position (24 bits) | length (20 bits).
    table: hashbrown::HashTable<u64>,
    hasher: hashbrown::DefaultHashBuilder,
}

const BLOCK: usize = 16 << 20;
/// Keys of this length or more are replaced by a SHA-256 digest of them (1 MiB keys do not occur
/// in practice; the digest keeps the set small if one does).
const MAX_KEY: usize = 1 << 20;

impl Default for KeySet {
    fn default() -> Self {
        KeySet {
            blocks: vec![Vec::with_capacity(BLOCK)],
            table: hashbrown::HashTable::new(),
            hasher: Default::default(),
        }
    }
}

fn key_at(blocks: &[Vec<u8>], e: u64) -> &[u8] {
    let (b, p, l) = (
        (e >> 44) as usize,
        ((e >> 20) & 0xFF_FFFF) as usize,
        (e & 0xF_FFFF) as usize,
    );
    &blocks[b][p..p + l]
}

impl KeySet {
    /// Inserts `key`; returns false if it was already there.
    pub fn insert(&mut self, key: &[u8]) -> bool {
        use sha2::Digest;
        use std::hash::BuildHasher;
        let digest;
        let key = if key.len() >= MAX_KEY {
            let mut d = vec![0xFE];
            d.extend_from_slice(&sha2::Sha256::digest(key));
            digest = d;
            &digest[..]
        } else {
            key
        };
        let h = self.hasher.hash_one(key);
        if self
            .table
            .find(h, |&e| key_at(&self.blocks, e) == key)
            .is_some()
        {
            return false;
        }
        if self
            .blocks
            .last()
            .is_some_and(|b| b.len() + key.len() > BLOCK)
        {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        let block = self.blocks.len() - 1;
        let b = self.blocks.last_mut().expect("one block");
        let pos = b.len();
        b.extend_from_slice(key);
        let entry = ((block as u64) << 44) | ((pos as u64) << 20) | key.len() as u64;
        let (blocks, hasher) = (&self.blocks, &self.hasher);
        self.table
            .insert_unique(h, entry, |&e| hasher.hash_one(key_at(blocks, e)));
        true
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod keyset_tests {
    use super::KeySet;

    #[test]
    fn keyset_is_exact_across_blocks_and_long_keys() {
        let mut k = KeySet::default();
        for i in 0..200_000u32 {
            assert!(k.insert(format!("key-{i}-{}", "x".repeat((i % 200) as usize)).as_bytes()));
        }
        for i in (0..200_000u32).step_by(7) {
            assert!(!k.insert(format!("key-{i}-{}", "x".repeat((i % 200) as usize)).as_bytes()));
        }
        assert!(k.insert(b""));
        assert!(!k.insert(b""));
        let long = vec![b'a'; 2 << 20];
        assert!(k.insert(&long));
        assert!(!k.insert(&long));
        let mut other = long.clone();
        other[5] = b'b';
        assert!(k.insert(&other));
        assert!(k.blocks.len() > 1, "spans several 16 MiB blocks");
    }
}

fn key_bytes(cols: &[&ArrayRef], row: usize, out: &mut Vec<u8>) {
    out.clear();
    if let [c] = cols
        && c.data_type() == &DataType::Utf8
    {
        // One string key: its bytes as they are; null as 0xFF, which no UTF-8 string holds.
        if c.is_null(row) {
            out.push(0xFF);
        } else {
            out.extend_from_slice(c.as_string::<i32>().value(row).as_bytes());
        }
        return;
    }
    for c in cols {
        if c.is_null(row) {
            out.push(0);
            continue;
        }
        out.push(1);
        match c.data_type() {
            DataType::Utf8 => {
                let s = c.as_string::<i32>().value(row).as_bytes();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
            _ => {
                let v = arrow::util::display::array_value_to_string(c, row).unwrap_or_default();
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
}

fn dedupe(piece: &mut Piece, slots: &[usize], seen: &mut KeySet) -> Result<(), WorkerError> {
    // A piece left with no rows (all malformed, rejected or filtered) never had its later
    // columns built: nothing to dedupe.
    if piece.rows.is_empty() {
        return Ok(());
    }
    let cols: Vec<&ArrayRef> = slots
        .iter()
        .map(|s| piece.cols[*s].as_ref().expect("set"))
        .collect();
    let mut buf = Vec::new();
    let mut keep = Vec::with_capacity(piece.rows.len());
    for i in 0..piece.rows.len() {
        key_bytes(&cols, i, &mut buf);
        keep.push(seen.insert(&buf));
    }
    let dups = keep.iter().filter(|k| !**k).count() as u64;
    piece.counts.duplicates += dups;
    if dups > 0 {
        piece.keep(&BooleanArray::from(keep))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing partitioned Parquet.

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

fn partition_value(col: &ArrayRef, i: usize) -> String {
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
}

struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    local: PathBuf,
    key: String,
    rows: u64,
}

struct PartitionWriter {
    values: PartitionValues,
    dir: String,
    seq: u32,
    open: Option<OpenFile>,
    /// Rows waiting for a full row group, as Arrow batches.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    pending_bytes: usize,
}

/// Partitioned Parquet output of one shard.
///
/// Rows are buffered per partition as Arrow batches and encoded a whole row group at a time, so
/// the Parquet column encoders and their zstd contexts exist only while a row group is written,
/// not once per open partition (31 partitions × 16 columns of zstd contexts is hundreds of MB).
/// When the buffered rows of all partitions pass [`WRITER_BUDGET`], the largest buffer is written
/// early as a smaller row group.
pub struct Writers {
    schema: SchemaRef,
    props: WriterProperties,
    scratch: PathBuf,
    prefix: String,
    shard_id: String,
    target_bytes: u64,
    row_group_rows: usize,
    parts: BTreeMap<String, PartitionWriter>,
    pending_bytes: usize,
    opened: u64,
    pub done: Vec<WrittenFile>,
}

impl Writers {
    pub fn new(plan: &Plan, scratch: &Path, prefix: &str, shard_id: &str) -> Writers {
        let o = &plan.output;
        let compression = match o.codec {
            Codec::Zstd => {
                PqCompression::ZSTD(ZstdLevel::try_new(o.level).expect("validated level"))
            }
            Codec::Snappy => PqCompression::SNAPPY,
            Codec::None => PqCompression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(o.row_group_rows.get() as usize))
            // High-cardinality columns fall back to plain encoding early.
            .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
            .set_created_by("tributary".into())
            .build();
        Writers {
            schema: plan.output_schema.clone(),
            props,
            scratch: scratch.to_path_buf(),
            prefix: prefix.trim_end_matches('/').to_string(),
            shard_id: shard_id.to_string(),
            target_bytes: o.target_file_bytes.get(),
            row_group_rows: o.row_group_rows.get() as usize,
            parts: BTreeMap::new(),
            pending_bytes: 0,
            opened: 0,
            done: Vec::new(),
        }
    }

    fn write(
        &mut self,
        dir: &str,
        values: &[(String, String)],
        batch: RecordBatch,
    ) -> Result<(), WorkerError> {
        let pw = self
            .parts
            .entry(dir.to_string())
            .or_insert_with(|| PartitionWriter {
                values: values.to_vec(),
                dir: dir.to_string(),
                seq: 0,
                open: None,
                pending: Vec::new(),
                pending_rows: 0,
                pending_bytes: 0,
            });
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

    /// Writes the partition's buffered rows as row groups (only whole ones when `whole_only`).
    fn flush_partition(&mut self, dir: &str, whole_only: bool) -> Result<(), WorkerError> {
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
                pw.pending_rows = available;
                pw.pending_bytes = pending.iter().map(RecordBatch::get_array_memory_size).sum();
                self.pending_bytes += pw.pending_bytes;
                pw.pending = pending.into();
                break;
            }
            // Take exactly one row group's rows (or all that is left) from the front.
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
            let batch =
                arrow::compute::concat_batches(&self.schema, &group).map_err(WorkerError::arrow)?;
            drop(group);
            if pw.open.is_none() {
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
                let f = File::create(&local).map_err(|e| WorkerError::write(&local, e))?;
                let writer = ArrowWriter::try_new(
                    BufWriter::with_capacity(1 << 20, f),
                    self.schema.clone(),
                    Some(self.props.clone()),
                )
                .map_err(WorkerError::parquet)?;
                pw.open = Some(OpenFile {
                    writer,
                    local,
                    key,
                    rows: 0,
                });
                pw.seq += 1;
            }
            let of = pw.open.as_mut().expect("opened above");
            of.writer.write(&batch).map_err(WorkerError::parquet)?;
            of.writer.flush().map_err(WorkerError::parquet)?;
            of.rows += rows as u64;
            if of.writer.bytes_written() as u64 >= self.target_bytes {
                let of = pw.open.take().expect("open");
                self.done.push(close(of, &pw.values)?);
            }
        }
        Ok(())
    }

    /// Writes the biggest buffers early while the total is over budget.
    fn enforce_budget(&mut self) -> Result<(), WorkerError> {
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

    pub fn finish(mut self) -> Result<Vec<WrittenFile>, WorkerError> {
        let dirs: Vec<String> = self.parts.keys().cloned().collect();
        for d in dirs {
            self.flush_partition(&d, false)?;
            let pw = self.parts.get_mut(&d).expect("partition exists");
            if let Some(of) = pw.open.take() {
                self.done.push(close(of, &pw.values)?);
            }
        }
        self.done.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(self.done)
    }
}

fn unique_path(p: PathBuf) -> PathBuf {
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

fn close(of: OpenFile, values: &[(String, String)]) -> Result<WrittenFile, WorkerError> {
    let mut w = of.writer.into_inner().map_err(WorkerError::parquet)?;
    w.flush().map_err(|e| WorkerError::write(&of.local, e))?;
    Ok(WrittenFile {
        key: of.key,
        partition: values.to_vec(),
        rows: of.rows,
        local: of.local,
    })
}

/// Projects a piece to the output columns and splits it by partition, in row order.
fn partition_piece(plan: &Plan, piece: &Piece) -> Result<Vec<PartBatch>, WorkerError> {
    if piece.rows.is_empty() {
        return Ok(Vec::new());
    }
    let cols: Vec<ArrayRef> = plan
        .output_slots
        .iter()
        .map(|s| piece.cols[*s].clone().expect("set"))
        .collect();
    let batch =
        RecordBatch::try_new(plan.output_schema.clone(), cols).map_err(WorkerError::arrow)?;
    if plan.partition_slots.is_empty() {
        return Ok(vec![(String::new(), Vec::new(), batch)]);
    }
    let pcols: Vec<&ArrayRef> = plan
        .partition_slots
        .iter()
        .map(|s| piece.cols[*s].as_ref().expect("set"))
        .collect();
    let mut groups: Vec<(String, PartitionValues, Vec<u32>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for i in 0..piece.rows.len() {
        let values: Vec<(String, String)> = plan
            .partition_names
            .iter()
            .zip(&pcols)
            .map(|(n, c)| (n.clone(), partition_value(c, i)))
            .collect();
        let dir = values
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("/");
        let g = *index.entry(dir.clone()).or_insert_with(|| {
            groups.push((dir, values, Vec::new()));
            groups.len() - 1
        });
        groups[g].2.push(i as u32);
    }
    groups
        .into_iter()
        .map(|(dir, values, idx)| {
            let idx = arrow::array::UInt32Array::from(idx);
            let taken =
                arrow::compute::take_record_batch(&batch, &idx).map_err(WorkerError::arrow)?;
            Ok((dir, values, taken))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Quarantine.

pub struct Quarantine {
    out: Option<BufWriter<File>>,
    pub local: PathBuf,
    pub rows: u64,
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl Quarantine {
    pub fn new(local: PathBuf) -> Self {
        Quarantine {
            out: None,
            local,
            rows: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        object: &str,
        offset: u64,
        line: Option<u64>,
        bucket: &str,
        reason: &str,
        raw: &[u8],
        truncated_from: Option<u64>,
    ) -> Result<(), WorkerError> {
        if self.out.is_none() {
            let f = File::create(&self.local).map_err(|e| WorkerError::write(&self.local, e))?;
            self.out = Some(BufWriter::new(f));
        }
        let mut rec = serde_json::Map::new();
        rec.insert("object".into(), object.into());
        rec.insert("offset".into(), offset.into());
        if let Some(l) = line {
            rec.insert("line".into(), (l + 1).into());
        }
        rec.insert("bucket".into(), bucket.into());
        rec.insert("reason".into(), reason.into());
        match std::str::from_utf8(raw) {
            Ok(s) => rec.insert("raw".into(), s.into()),
            Err(_) => rec.insert("raw_base64".into(), b64(raw).into()),
        };
        if let Some(len) = truncated_from {
            rec.insert("raw_truncated_from_bytes".into(), len.into());
        }
        let out = self.out.as_mut().expect("opened");
        serde_json::to_writer(&mut *out, &rec)
            .map_err(|e| WorkerError::write(&self.local, e.into()))?;
        out.write_all(b"\n")
            .map_err(|e| WorkerError::write(&self.local, e))?;
        self.rows += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<Option<(PathBuf, u64)>, WorkerError> {
        match self.out {
            None => Ok(None),
            Some(mut w) => {
                w.flush().map_err(|e| WorkerError::write(&self.local, e))?;
                Ok(Some((self.local, self.rows)))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shard loop.

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

fn utc_offset_timestamps(rb: RecordBatch) -> Result<RecordBatch, WorkerError> {
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
