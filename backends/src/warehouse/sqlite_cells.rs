//! One file's columns as the embedded load binds them, a row at a time.
//!
//! Each column's Arrow array is matched to its type once per file ([`Cells::of`]), not once per
//! cell: text is borrowed from the array's buffer for the whole file ([`Bound::Kept`]) and
//! numbers are read by value. A decimal of at most 15 digits becomes its double by one
//! division, without formatting it first. Timestamps and dates reach the load's inserts as text
//! already (the reader thread writes it, `sqlite_read::dates_as_text`); any other type goes
//! through the general conversion (bound for its row only, [`Bound::Row`]).

use arrow::array::{
    Array, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, LargeStringArray,
    StringArray, StringViewArray,
};
use arrow::datatypes::DataType;
use rusqlite::types::{Value, ValueRef};

use super::evolve::SQLITE_EXACT_DIGITS;
use super::sqlite_insert::Bound;

/// A column of a file, read as the statement binds it, row by row.
pub(super) enum Cells<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Int64(&'a Int64Array),
    Boolean(&'a BooleanArray),
    Float64(&'a Float64Array),
    Decimal {
        col: &'a Decimal128Array,
        scale: i8,
        /// The value of a decimal too long for [`exact_double`].
        own: Value,
    },
    /// Any other type the warehouse takes, through the general conversion (timestamps and dates
    /// among them: the load's reader turns those into text first, `sqlite_read::dates_as_text`).
    Other {
        col: &'a dyn Array,
        own: Value,
    },
}

impl<'a> Cells<'a> {
    /// The cells of the column `col`.
    pub(super) fn of(col: &'a dyn Array) -> Cells<'a> {
        match col.data_type() {
            DataType::Utf8 => Cells::Utf8(col.as_string::<i32>()),
            DataType::LargeUtf8 => Cells::LargeUtf8(col.as_string::<i64>()),
            DataType::Utf8View => Cells::Utf8View(col.as_string_view()),
            DataType::Int64 => Cells::Int64(col.as_primitive()),
            DataType::Boolean => Cells::Boolean(col.as_boolean()),
            DataType::Float64 => Cells::Float64(col.as_primitive()),
            DataType::Decimal128(_, scale) => Cells::Decimal {
                col: col.as_primitive(),
                scale: *scale,
                own: Value::Null,
            },
            _ => Cells::Other {
                col,
                own: Value::Null,
            },
        }
    }

    /// The value of row `i`: borrowed from the file's arrays for as long as they live, or from
    /// this column's buffer until the next call.
    pub(super) fn at(&mut self, i: usize) -> Result<Bound<'a, '_>, String> {
        fn text(s: &str) -> ValueRef<'_> {
            ValueRef::Text(s.as_bytes())
        }
        let kept = |v| Ok(Bound::Kept(v));
        match self {
            Cells::Utf8(c) => kept(or_null(c.is_valid(i), || text(c.value(i)))),
            Cells::LargeUtf8(c) => kept(or_null(c.is_valid(i), || text(c.value(i)))),
            Cells::Utf8View(c) => kept(or_null(c.is_valid(i), || text(c.value(i)))),
            Cells::Int64(c) => kept(or_null(c.is_valid(i), || ValueRef::Integer(c.value(i)))),
            Cells::Boolean(c) => kept(or_null(c.is_valid(i), || {
                ValueRef::Integer(c.value(i).into())
            })),
            Cells::Float64(c) => kept(or_null(c.is_valid(i), || ValueRef::Real(c.value(i)))),
            Cells::Decimal { col, scale, own } => {
                if col.is_null(i) {
                    return kept(ValueRef::Null);
                }
                let v = col.value(i);
                match exact_double(v, *scale) {
                    Some(f) => kept(ValueRef::Real(f)),
                    None => {
                        *own = super::sqlite::decimal_value(v, *scale);
                        Ok(Bound::Row(ValueRef::from(&*own)))
                    }
                }
            }
            Cells::Other { col, own } => {
                *own = super::sqlite::value_at(*col, i).map_err(|e| e.to_string())?;
                Ok(Bound::Row(ValueRef::from(&*own)))
            }
        }
    }
}

fn or_null<'v>(valid: bool, v: impl FnOnce() -> ValueRef<'v>) -> ValueRef<'v> {
    if valid { v() } else { ValueRef::Null }
}

impl Bound<'_, '_> {
    /// The value, however it is bound.
    pub(super) fn value(&self) -> ValueRef<'_> {
        match self {
            Bound::Kept(v) | Bound::Row(v) => *v,
        }
    }
}

/// The double a decimal `v` of scale `scale` is stored as, when one division gives it exactly:
/// at most [`SQLITE_EXACT_DIGITS`] digits (so `v` is an exact double) and a positive scale of at
/// most 22 (so is `10^scale`). IEEE division rounds the exact quotient to the nearest double,
/// which is what parsing the decimal's text gives. `None`: the general path decides.
fn exact_double(v: i128, scale: i8) -> Option<f64> {
    const LIMIT: u128 = 10u128.pow(SQLITE_EXACT_DIGITS);
    if !(1..=22).contains(&scale) || v.unsigned_abs() >= LIMIT {
        return None;
    }
    Some(v as f64 / 10f64.powi(scale.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
        TimestampMicrosecondArray, TimestampMillisecondArray,
    };
    use std::sync::Arc;

    /// Every row of `col` read through [`Cells`] is what the general conversion gives.
    fn same_as_general(col: ArrayRef) {
        let mut cells = Cells::of(col.as_ref());
        for i in 0..col.len() {
            let general = super::super::sqlite::value_at(col.as_ref(), i).unwrap();
            let got = cells.at(i).unwrap();
            assert_eq!(
                got.value(),
                ValueRef::from(&general),
                "{} row {i}",
                col.data_type()
            );
        }
    }

    #[test]
    fn every_type_reads_as_the_general_conversion_row_after_row() {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some(""),
                Some("é"),
            ])),
            Arc::new(LargeStringArray::from(vec![Some("x"), None])),
            Arc::new(StringViewArray::from(vec![
                Some("a string longer than twelve bytes"),
                None,
                Some("short"),
            ])),
            Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(7)])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
            Arc::new(Float64Array::from(vec![Some(0.1), None, Some(-2.5)])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(1_746_093_600_123_456),
                    None,
                    Some(-1),
                    Some(0),
                ])
                .with_timezone("UTC"),
            ),
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_746_093_600_123),
                None,
            ])),
            Arc::new(Date32Array::from(vec![
                Some(20_209),
                None,
                Some(0),
                Some(-1),
            ])),
            Arc::new(Int32Array::from(vec![Some(-3), None])),
        ];
        for col in cols {
            same_as_general(col);
        }
    }

    #[test]
    fn decimals_read_as_the_general_conversion_at_every_scale_and_length() {
        let mut values = vec![0i128, 1, -1, 5, -3, 1230, 44604, -999_999];
        // Around the 15-digit limit, where the division stops and the general path takes over.
        let limit = 10i128.pow(SQLITE_EXACT_DIGITS);
        values.extend([
            limit - 1,
            -(limit - 1),
            limit,
            -limit,
            limit + 7,
            i64::MAX.into(),
        ]);
        let mut x: i128 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..2_000 {
            x = (x * 6_364_136_223_846_793_005 + 1) % (1 << 62);
            values.push(if x % 2 == 0 {
                x % limit
            } else {
                -(x % (limit * 1000))
            });
        }
        for scale in [0i8, 1, 2, 3, 9, 18, 22, 25, -2] {
            let precision = 38;
            let col = Decimal128Array::from(values.clone())
                .with_precision_and_scale(precision, scale)
                .unwrap();
            same_as_general(Arc::new(col));
        }
    }

    #[test]
    fn a_timestamp_buffer_reused_for_a_shorter_text_holds_only_the_new_row() {
        // Year 10000 is written by `format!`, longer than the 26 bytes of years 0..=9999.
        let far = 253_402_300_800_000_000i64; // 10000-01-01
        let col: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![far, 0]));
        let mut cells = Cells::of(col.as_ref());
        assert_eq!(
            cells.at(0).unwrap(),
            Bound::Row(ValueRef::Text(b"10000-01-01 00:00:00.000000"))
        );
        assert_eq!(
            cells.at(1).unwrap(),
            Bound::Row(ValueRef::Text(b"1970-01-01 00:00:00.000000"))
        );
    }
}
