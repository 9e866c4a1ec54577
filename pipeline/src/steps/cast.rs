//! `cast`: a column converted to another type; a value that does not convert fails its row.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;

use super::*;
use crate::builder::ColBuilder;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CastStep {
    pub column: String,
    pub to: ColumnType,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
}

impl StepKind for CastStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        cx.need(cols, &self.column, "column")?;
        cx.out_name(self.output.as_deref(), "output")?;
        cols.push(output_name(&self.output, &self.column), self.to);
        Ok(())
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(true, &self.bucket);
        let (slot, out) = cx.slots.derived(&self.column, &self.output, self.to);
        kernel(Cast {
            slot,
            out,
            to: self.to,
            on_error: self.on_error,
            bucket: self.bucket.clone(),
            column: self.column.clone(),
        })
    }
}

#[derive(Debug)]
struct Cast {
    slot: usize,
    out: usize,
    to: ColumnType,
    on_error: OnError,
    bucket: String,
    column: String,
}

impl Kernel for Cast {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let src = rows.column(self.slot);
        let (a, f) = if src.data_type() == &DataType::Utf8 {
            cast_strings(src, self.to)
        } else {
            cast_other(src, self.to).map_err(|e| StepError::new("cast", e))?
        };
        rows.set_column(self.out, a);
        fail(rows, f, self.on_error, &self.bucket, &self.column)
    }
}

/// Casts a string column to `to`, under the plain text rules; values that do not parse are
/// failures.
pub fn cast_strings(col: &ArrayRef, to: ColumnType) -> (ArrayRef, Failures) {
    let a = col.as_string::<i32>();
    let mut b = ColBuilder::new(to, a.len());
    let mut fails = Vec::new();
    for (i, v) in a.iter().enumerate() {
        match v {
            None => b.append_null(),
            Some(s) => {
                if let Err(e) = b.append_text(s) {
                    fails.push((i, e));
                    b.append_null();
                }
            }
        }
    }
    (b.finish(), fails)
}

/// Casts a non-string column with Arrow's cast; values that become null are failures.
pub fn cast_other(col: &ArrayRef, to: ColumnType) -> Result<(ArrayRef, Failures), String> {
    let out = arrow::compute::cast(col, &to.arrow()).map_err(|e| e.to_string())?;
    let fails = (0..col.len())
        .filter(|&i| col.is_valid(i) && out.is_null(i))
        .map(|i| (i, format!("value does not fit {to}")))
        .collect();
    Ok((out, fails))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use arrow::datatypes::{Int16Type, Int64Type};

    #[test]
    fn strings_that_do_not_parse_fail_their_rows() {
        let (out, f) = cast_strings(
            &string_array(vec![Some("12"), Some("x1"), None]),
            ColumnType::Int64,
        );
        assert_eq!(out.as_primitive::<Int64Type>().value(0), 12);
        assert_eq!(f.len(), 1);
        assert!(f[0].1.contains("x1"));
    }

    #[test]
    fn a_value_out_of_range_is_quarantined_with_the_column_or_nulled() {
        let (c, slots) = compile_step(
            "cast",
            "column = \"n\"\nto = \"int16\"\noutput = \"m\"",
            &["n"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("7"), Some("70000")])]);
        run(&c, &mut rows);
        assert_eq!(
            rows.column(slots.get("m"))
                .as_primitive::<Int16Type>()
                .value(0),
            7
        );
        assert_eq!(rows.quarantined.len(), 1);
        assert_eq!(rows.quarantined[0].0, "rejected");
        assert!(
            rows.quarantined[0].1.starts_with("n: "),
            "{:?}",
            rows.quarantined
        );
        let (c, _) = compile_step(
            "cast",
            "column = \"n\"\nto = \"int16\"\non_error = \"null\"",
            &["n"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("70000")])]);
        run(&c, &mut rows);
        assert!(rows.quarantined.is_empty());
        assert!(rows.column(1).is_null(0));
    }

    #[test]
    fn non_strings_cast_with_arrow() {
        let src: ArrayRef =
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![Some(1), Some(1 << 40)]));
        let (out, f) = cast_other(&src, ColumnType::Int32).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), [1]);
    }
}
