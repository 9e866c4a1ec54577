//! Typed columns: the Arrow builder each column type reads into, and the conversion of text and
//! JSON values to the type (under a column's reading rules). Used by the readers and by the `cast`
//! step.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;

use crate::ColumnType;
use crate::values;

pub fn arrow_type(t: ColumnType) -> DataType {
    t.arrow()
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
    /// JSON text, validated.
    Json(StringBuilder),
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
pub enum Cell {
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
        Self::with_text_bytes(t, cap, None)
    }

    /// A builder for `cap` values; a string or json column with room for `bytes` of text
    /// (default 16 or 32 bytes a value).
    pub fn with_text_bytes(t: ColumnType, cap: usize, bytes: Option<usize>) -> Self {
        match t {
            ColumnType::String => {
                ColBuilder::Str(StringBuilder::with_capacity(cap, bytes.unwrap_or(cap * 16)))
            }
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
            ColumnType::Json => {
                ColBuilder::Json(StringBuilder::with_capacity(cap, bytes.unwrap_or(cap * 32)))
            }
        }
    }

    pub fn ty(&self) -> &'static str {
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
            ColBuilder::Json(_) => "json",
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
            ColBuilder::Json(b) => b.append_null(),
        }
    }

    /// Converts text (CSV fields, JSON strings for typed columns) to this column's type.
    pub fn text_cell(&self, s: &str) -> Result<Cell, String> {
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
            ColBuilder::Json(_) if values::is_json(s) => Cell::Str,
            ColBuilder::Json(_) => return Err(format!("expected json, got {:?}", truncate(s, 80))),
        })
    }

    /// Text under its column's rules: the column's timestamp or date format and zone, else the
    /// plain parser after rewriting numbers from the column's locale.
    pub fn rule_cell(&self, s: &str, rules: &crate::values::TextRules) -> Result<Cell, String> {
        match (self, &rules.timestamp, &rules.date) {
            // Most columns: any text is a string, kept as given (no locale rewriting to do).
            (ColBuilder::Str(_), ..) => Ok(Cell::Str),
            (ColBuilder::Ts(_), Some(r), _) => r.parse(s).map(Cell::Ts),
            (ColBuilder::Date(_), _, Some(d)) => d.parse(s).map(Cell::Date),
            _ => self.text_cell(&rules.number(s)),
        }
    }

    pub fn val_cell(&self, v: &Val<'_>) -> Result<Cell, String> {
        match v {
            Val::Null => Ok(Cell::Null),
            Val::Str(s) => self.text_cell(s),
            Val::Complex(kind) => Err(format!("expected {}, got a JSON {kind}", self.ty())),
            Val::Bool(b) => match self {
                ColBuilder::Bool(_) => Ok(Cell::Bool(*b)),
                ColBuilder::Str(_) | ColBuilder::Json(_) => Ok(Cell::Str),
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
                ColBuilder::Str(_) | ColBuilder::Json(_) => Ok(Cell::Str),
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
                ColBuilder::Str(_) | ColBuilder::Json(_) => Ok(Cell::Str),
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
                ColBuilder::Str(_) | ColBuilder::Json(_) => Ok(Cell::Str),
                _ => Err(format!("expected {}, got {f}", self.ty())),
            },
        }
    }

    pub fn push(&mut self, cell: Cell, text: &str) {
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
            (ColBuilder::Json(b), Cell::Str) => b.append_value(text),
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
            ColBuilder::Json(b) => Arc::new(b.finish()),
        }
    }
}

/// The first `max` bytes of `s` (at a character boundary), for messages.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::TextRules;

    #[test]
    fn under_a_locale_a_string_column_keeps_its_text_and_a_number_column_reads_it() {
        let de = TextRules {
            decimal_separator: Some(','),
            thousands_separator: Some('.'),
            ..TextRules::default()
        };
        let text = "1.234,5";
        let mut s = ColBuilder::new(ColumnType::String, 1);
        let cell = s.rule_cell(text, &de).unwrap();
        assert!(matches!(cell, Cell::Str));
        s.push(cell, text);
        let a = s.finish();
        assert_eq!(
            a.as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .value(0),
            text
        );
        let f = ColBuilder::new(ColumnType::Float64, 1);
        assert!(matches!(f.rule_cell(text, &de), Ok(Cell::F64(v)) if v == 1234.5));
        let i = ColBuilder::new(ColumnType::Int64, 1);
        assert!(
            i.rule_cell("12,5", &de).is_err(),
            "a fraction is not an int64"
        );
    }
}
