//! `date`: the UTC calendar date of a timestamp column.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Date32Builder, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DateStep {
    pub column: String,
    pub output: String,
}

impl StepKind for DateStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        match cx.need(cols, &self.column, "column")? {
            ColumnType::Timestamp => {}
            t => {
                return Err(cx.err(
                    "column",
                    format!("column {:?} is {t}, date needs a timestamp", self.column),
                ));
            }
        }
        cx.out_name(Some(&self.output), "output")?;
        cols.push(&self.output, ColumnType::Date);
        Ok(())
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        let slot = cx.slots.get(&self.column);
        let out = cx.slots.add(&self.output, ColumnType::Date);
        kernel(Date { slot, out })
    }
}

#[derive(Debug)]
struct Date {
    slot: usize,
    out: usize,
}

impl Kernel for Date {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let a = date_of(rows.column(self.slot));
        rows.set_column(self.out, a);
        Ok(())
    }
}

/// The UTC calendar date of each timestamp.
pub fn date_of(col: &ArrayRef) -> ArrayRef {
    let a: &TimestampMicrosecondArray = col.as_primitive::<TimestampMicrosecondType>();
    let mut b = Date32Builder::with_capacity(a.len());
    for v in a.iter() {
        match v {
            Some(us) => b.append_value(us.div_euclid(86_400_000_000) as i32),
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use arrow::array::{Array, TimestampMicrosecondArray};
    use arrow::datatypes::Date32Type;

    #[test]
    fn dates_are_utc_days_also_before_1970() {
        let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(1_746_093_600_000_000),
            Some(-1),
            None,
        ]));
        let d = date_of(&ts);
        let d = d.as_primitive::<Date32Type>();
        assert_eq!((d.value(0), d.value(1), d.is_null(2)), (20_209, -1, true));
    }

    #[test]
    fn the_column_must_be_a_timestamp() {
        let e = check_step(
            "date",
            "column = \"s\"\noutput = \"d\"",
            &[("s", ColumnType::String)],
        )
        .unwrap_err();
        assert!(
            e.contains("steps[0] (date).column") && e.contains("needs a timestamp"),
            "{e}"
        );
    }
}
