//! Native Parquet input: record batches from the Parquet reader, projected to the columns the
//! pipeline declares, go straight into the column path. A column whose Parquet type already is
//! its declared type (and needs no default) is taken as it is; any other is converted value by
//! value under the column's rules, as a JSON value of the same type would be. Nothing is
//! rendered as text, except a quarantined row (as one JSON object, its `raw`).

use super::*;

use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Rows read from Parquet per record batch; cut into pieces of [`PIECE_ROWS`] for the pool.
const PARQUET_BATCH_ROWS: usize = PIECE_ROWS * 8;

/// Reads a Parquet input and feeds it to the pipeline, record batch by record batch.
pub fn process_parquet_input(
    plan: &Plan,
    store: &dyn backends::object_store::ObjectStore,
    input: &ShardInput,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    let key = &input.object.key;
    let corrupt = |detail: String| WorkerError::Corrupt {
        key: key.clone(),
        detail,
    };
    let reading = std::time::Instant::now();
    let mut bytes = Vec::new();
    store
        .open_read(key, None)
        .map_err(WorkerError::Backend)?
        .read_to_end(&mut bytes)
        .map_err(|e| WorkerError::read(key, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .map_err(|e| corrupt(format!("not a Parquet file: {e}")))?;
    let roots = declared_roots(plan, builder.schema());
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut reader = builder
        .with_projection(mask)
        .with_batch_size(PARQUET_BATCH_ROWS)
        .build()
        .map_err(|e| corrupt(e.to_string()))?;
    let object: Arc<str> = Arc::from(key.as_str());
    let mut row0 = 0u64;
    st.times.read += reading.elapsed();
    loop {
        // Decoding a record batch is part of reading.
        let reading = std::time::Instant::now();
        let Some(rb) = reader.next() else { break };
        st.times.read += reading.elapsed();
        let rb = rb.map_err(|e| corrupt(e.to_string()))?;
        process_batch(plan, &object, row0, &rb, st)?;
        row0 += rb.num_rows() as u64;
    }
    Ok(())
}

/// The indexes of the top-level Parquet fields the declared paths start with.
fn declared_roots(plan: &Plan, schema: &Schema) -> Vec<usize> {
    let mut roots: Vec<usize> = plan
        .declared_paths
        .iter()
        .filter_map(|p| {
            schema
                .index_of(p)
                .or_else(|_| schema.index_of(p.split('.').next().unwrap_or(p)))
                .ok()
        })
        .collect();
    roots.sort_unstable();
    roots.dedup();
    roots
}

/// One record batch through parse (here: conversion), steps, dedupe and the writers.
fn process_batch(
    plan: &Plan,
    object: &Arc<str>,
    row0: u64,
    rb: &RecordBatch,
    st: &mut ShardState,
) -> Result<(), WorkerError> {
    let columns: Vec<Option<ArrayRef>> = plan
        .declared_paths
        .iter()
        .map(|p| find_column(rb, p))
        .collect();
    let (pieces, times) = early_pieces(
        plan,
        rb.num_rows(),
        |r| convert_piece(plan, &columns, r),
        |_| {},
    )?;
    st.times += times;
    let started = std::time::Instant::now();
    let source = |record: u32| {
        let i = record as usize;
        (row0 + i as u64, None, row_json(rb, i))
    };
    finish_pieces(plan, object, pieces, &source, started, st)
}

/// The array at a declared path: a top-level column of that name, else the dotted path through
/// struct columns. `None` when the file does not have it (its values are null).
fn find_column(rb: &RecordBatch, path: &str) -> Option<ArrayRef> {
    if let Some(c) = rb.column_by_name(path) {
        return Some(c.clone());
    }
    let mut parts = path.split('.');
    let mut cur = rb.column_by_name(parts.next()?)?.clone();
    for part in parts {
        let s = cur.as_any().downcast_ref::<arrow::array::StructArray>()?;
        let child = s.column_by_name(part)?.clone();
        // A null parent makes its children null.
        cur = match s.nulls() {
            Some(parent) => {
                let nulls = arrow::buffer::NullBuffer::union(Some(parent), child.nulls());
                arrow::array::make_array(child.to_data().into_builder().nulls(nulls).build().ok()?)
            }
            None => child,
        };
    }
    Some(cur)
}

/// Whether a column can be taken as it is: its type is the declared one, and no default would
/// replace its nulls.
fn as_is(plan: &Plan, c: usize, col: &ArrayRef) -> bool {
    let rules = &plan.text_rules[c];
    // A listed null string must become null, as in JSON: such columns are converted.
    col.data_type() == &arrow_type(plan.declared[c].1)
        && rules.default.is_none()
        && !(col.data_type() == &DataType::Utf8 && rules.null_values_set)
}

/// Rows `range` of the batch as a piece: each row's declared values converted, or the row
/// quarantined (malformed: a required value missing; invalid_value: a value that does not fit).
fn convert_piece(
    plan: &Plan,
    columns: &[Option<ArrayRef>],
    range: std::ops::Range<usize>,
) -> Result<Piece, WorkerError> {
    let mut piece = Piece::new(plan, range.len());
    let cols: Vec<Option<ArrayRef>> = columns
        .iter()
        .map(|c| c.as_ref().map(|a| a.slice(range.start, range.len())))
        .collect();
    let direct: Vec<bool> = cols
        .iter()
        .enumerate()
        .map(|(c, a)| a.as_ref().is_some_and(|a| as_is(plan, c, a)))
        .collect();
    let mut builders: Vec<Option<ColBuilder>> = plan
        .declared
        .iter()
        .enumerate()
        .map(|(c, (_, t, _))| (!direct[c]).then(|| ColBuilder::new(*t, range.len())))
        .collect();
    let mut cells: Vec<(usize, Cell, String)> = Vec::with_capacity(plan.declared.len());
    for i in 0..range.len() {
        cells.clear();
        match convert_row(plan, &cols, &direct, &builders, i, &mut cells) {
            Ok(()) => {
                for (c, cell, text) in cells.drain(..) {
                    builders[c]
                        .as_mut()
                        .expect("converted columns have builders")
                        .push(cell, &text);
                }
                piece.rows.push(i as u32);
            }
            Err((malformed, reason)) => {
                let bucket = if malformed { MALFORMED } else { INVALID_VALUE };
                if malformed {
                    piece.counts.malformed += 1;
                } else {
                    *piece
                        .counts
                        .rejected
                        .entry(INVALID_VALUE.into())
                        .or_default() += 1;
                }
                piece.quarantine.push(QItem {
                    record: i as u32,
                    bucket: bucket.into(),
                    reason,
                });
            }
        }
    }
    let mut mask = vec![false; range.len()];
    for r in &piece.rows {
        mask[*r as usize] = true;
    }
    let kept = BooleanArray::from(mask);
    let all_kept = piece.rows.len() == range.len();
    for (c, b) in builders.iter_mut().enumerate() {
        piece.cols.set(
            c,
            match (b, &cols[c]) {
                (Some(b), _) => b.finish(),
                (None, Some(a)) if all_kept => a.clone(),
                (None, Some(a)) => arrow::compute::filter(a, &kept).map_err(WorkerError::arrow)?,
                (None, None) => unreachable!("a column without data is converted"),
            },
        );
    }
    // Record indexes are positions in the batch's slice; quarantine reads them from there.
    for q in piece.quarantine.iter_mut() {
        q.record += range.start as u32;
    }
    for r in piece.rows.iter_mut() {
        *r += range.start as u32;
    }
    Ok(piece)
}

/// One row's declared values: converted cells for the converted columns (direct columns are
/// only checked for a required value).
fn convert_row(
    plan: &Plan,
    cols: &[Option<ArrayRef>],
    direct: &[bool],
    builders: &[Option<ColBuilder>],
    i: usize,
    cells: &mut Vec<(usize, Cell, String)>,
) -> Result<(), (bool, String)> {
    for (c, (name, _, required)) in plan.declared.iter().enumerate() {
        if direct[c] {
            let col = cols[c].as_ref().expect("direct columns exist");
            if *required && col.is_null(i) {
                return Err((true, format!("required field {name:?} is missing or null")));
            }
            continue;
        }
        let mut v = match &cols[c] {
            Some(a) => value_at(a, i),
            None => Val::Null,
        };
        apply_text_rules(&plan.text_rules[c], &mut v);
        if *required && matches!(v, Val::Null) {
            return Err((true, format!("required field {name:?} is missing or null")));
        }
        let b = builders[c]
            .as_ref()
            .expect("converted columns have builders");
        let cell = match &v {
            Val::Str(s) => b.rule_cell(s, &plan.text_rules[c]),
            v => b.val_cell(v),
        };
        let text = match &v {
            Val::Str(s) => s.to_string(),
            Val::I64(x) => x.to_string(),
            Val::U64(x) => x.to_string(),
            Val::F64(x) => x.to_string(),
            Val::Bool(x) => x.to_string(),
            Val::Null | Val::Complex(_) => String::new(),
        };
        cells.push((
            c,
            cell.map_err(|e| (false, format!("field {name:?}: {e}")))?,
            text,
        ));
    }
    Ok(())
}

/// A Parquet value as the JSON reader would have seen it. Decimals, timestamps (UTC,
/// RFC 3339) and dates become their text, which the column's parser reads exactly.
fn value_at(a: &ArrayRef, i: usize) -> Val<'_> {
    use arrow::datatypes as t;
    if a.is_null(i) {
        return Val::Null;
    }
    match a.data_type() {
        DataType::Utf8 => Val::Str(a.as_string::<i32>().value(i).into()),
        DataType::LargeUtf8 => Val::Str(a.as_string::<i64>().value(i).into()),
        DataType::Utf8View => Val::Str(a.as_string_view().value(i).into()),
        DataType::Boolean => Val::Bool(a.as_boolean().value(i)),
        DataType::Int8 => Val::I64(a.as_primitive::<t::Int8Type>().value(i).into()),
        DataType::Int16 => Val::I64(a.as_primitive::<t::Int16Type>().value(i).into()),
        DataType::Int32 => Val::I64(a.as_primitive::<t::Int32Type>().value(i).into()),
        DataType::Int64 => Val::I64(a.as_primitive::<t::Int64Type>().value(i)),
        DataType::UInt8 => Val::U64(a.as_primitive::<t::UInt8Type>().value(i).into()),
        DataType::UInt16 => Val::U64(a.as_primitive::<t::UInt16Type>().value(i).into()),
        DataType::UInt32 => Val::U64(a.as_primitive::<t::UInt32Type>().value(i).into()),
        DataType::UInt64 => Val::U64(a.as_primitive::<t::UInt64Type>().value(i)),
        DataType::Float32 => Val::F64(a.as_primitive::<t::Float32Type>().value(i).into()),
        DataType::Float64 => Val::F64(a.as_primitive::<t::Float64Type>().value(i)),
        DataType::Struct(_) => Val::Complex("object"),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            Val::Complex("array")
        }
        _ => match arrow::util::display::array_value_to_string(&utc(a), i) {
            Ok(s) => Val::Str(s.into()),
            Err(_) => Val::Complex("value of an unsupported Parquet type"),
        },
    }
}

/// Timestamps with a zone shown as UTC instants (`…Z`), so their text names the instant.
fn utc(a: &ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Timestamp(unit, Some(_)) => {
            let t = DataType::Timestamp(*unit, Some("+00:00".into()));
            arrow::compute::cast(a, &t).unwrap_or_else(|_| a.clone())
        }
        _ => a.clone(),
    }
}

/// Row `i` of the batch as one JSON object (a quarantined row's `raw`).
fn row_json(rb: &RecordBatch, i: usize) -> Vec<u8> {
    let row = match utc_offset_timestamps(rb.slice(i, 1)) {
        Ok(r) => r,
        Err(_) => rb.slice(i, 1),
    };
    let mut buf = Vec::new();
    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
    if w.write(&row).and_then(|()| w.finish()).is_err() {
        return format!("(row {i} cannot be shown as JSON)").into_bytes();
    }
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    buf
}
