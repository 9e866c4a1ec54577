//! Writing a source's rows in its format and codec: NDJSON and CSV lines, one JSON array, or a
//! Parquet file (zstd inside, every column text or its Arrow type), plain or gzip/zstd wrapped.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::preset::{AttrType, Codec, Format, SourceSpec};

type Row = Map<String, Value>;

/// Writes part `n` of a source into `dir`: `part-0000.ndjson.gz` and the like.
pub fn write_part(dir: &Path, n: u64, spec: &SourceSpec, rows: &[Row]) -> anyhow::Result<()> {
    let ext = match spec.format {
        Format::Ndjson => "ndjson",
        Format::Csv => "csv",
        Format::JsonArray => "json",
        Format::Parquet => "parquet",
    };
    let body = match spec.format {
        Format::Ndjson => ndjson(rows),
        Format::Csv => csv(spec, rows),
        Format::JsonArray => serde_json::to_vec(rows)?,
        Format::Parquet => {
            return Ok(std::fs::write(
                dir.join(format!("part-{n:04}.{ext}")),
                parquet(spec, rows)?,
            )?);
        }
    };
    let (suffix, bytes) = match spec.codec {
        Codec::Plain => ("", body),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body)?;
            (".gz", e.finish()?)
        }
        Codec::Zstd => (".zst", zstd::encode_all(&body[..], 3)?),
    };
    std::fs::write(dir.join(format!("part-{n:04}.{ext}{suffix}")), bytes)?;
    Ok(())
}

fn ndjson(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, r).expect("rows serialise");
        out.push(b'\n');
    }
    out
}

/// A CSV value: its text, quoted when it holds a delimiter, a quote or a line break.
fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(spec: &SourceSpec, rows: &[Row]) -> Vec<u8> {
    let names: Vec<&str> = spec.attrs.iter().map(|(n, _)| n.as_str()).collect();
    let mut out = names.join(",").into_bytes();
    out.push(b'\n');
    for r in rows {
        let fields: Vec<String> = names.iter().map(|n| csv_field(&r[*n])).collect();
        out.extend_from_slice(fields.join(",").as_bytes());
        out.push(b'\n');
    }
    out
}

/// A Parquet file: integers, floats and booleans in their Arrow types, the rest as text (the
/// declared columns read it: decimals, timestamps and dates from their text).
fn parquet(spec: &SourceSpec, rows: &[Row]) -> anyhow::Result<Vec<u8>> {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, ty) in &spec.attrs {
        let vals = rows.iter().map(|r| &r[name]);
        let (dt, col): (DataType, ArrayRef) = match ty {
            AttrType::Int => (
                DataType::Int64,
                Arc::new(vals.map(Value::as_i64).collect::<Int64Array>()),
            ),
            AttrType::Float => (
                DataType::Float64,
                Arc::new(vals.map(Value::as_f64).collect::<Float64Array>()),
            ),
            AttrType::Bool => (
                DataType::Boolean,
                Arc::new(vals.map(Value::as_bool).collect::<BooleanArray>()),
            ),
            _ => (
                DataType::Utf8,
                Arc::new(
                    vals.map(|v| v.as_str().map(String::from))
                        .collect::<StringArray>(),
                ),
            ),
        };
        fields.push(Field::new(name, dt, true));
        columns.push(col);
    }
    let batch = arrow::record_batch::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field(&Value::from("plain")), "plain");
        assert_eq!(csv_field(&Value::from("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&Value::from("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(&Value::from(12)), "12");
        assert_eq!(csv_field(&Value::Null), "");
    }
}
