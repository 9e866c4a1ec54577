//! `derive`: a column computed by an SQL expression (new, or replacing the one of that name).

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveStep {
    /// The column written: a new one, or one of the same name replaced.
    pub column: String,
    /// An SQL expression over the columns before this step; its type is inferred (`CAST` sets
    /// it).
    pub expr: String,
    /// A row whose value cannot be computed (a failing `CAST`, a division by zero).
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
}

impl StepKind for DeriveStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        if !valid_name(&self.column) {
            return Err(cx.err(
                "column",
                format!("{:?} is not a valid column name", self.column),
            ));
        }
        let ty = cx.expr(&self.expr, "expr", cols)?;
        cols.push(&self.column, ty);
        Ok(())
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(true, &self.bucket);
        let expr = cx
            .slots
            .expr(&self.expr, false)
            .map_err(|e| format!("expr: {e}"))?;
        let out = cx.slots.add(&self.column, expr.expr.ty);
        kernel(Derive {
            expr,
            out,
            on_error: self.on_error,
            bucket: self.bucket.clone(),
            column: self.column.clone(),
        })
    }
}

#[derive(Debug)]
struct Derive {
    expr: SlotExpr,
    out: usize,
    on_error: OnError,
    bucket: String,
    column: String,
}

impl Kernel for Derive {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let (a, errors) = self
            .expr
            .evaluate(rows)
            .map_err(|e| StepError::new("derive", e.detail))?;
        rows.set_column(self.out, a);
        fail(rows, errors, self.on_error, &self.bucket, &self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    #[test]
    fn a_division_by_zero_is_rejected_or_null_per_on_error() {
        for (on_error, quarantined) in [("reject", 1), ("null", 0)] {
            let body = format!(
                "column = \"q\"\nexpr = \"CAST(a AS BIGINT) / CAST(b AS BIGINT)\"\non_error = \"{on_error}\""
            );
            let (c, slots) = compile_step("derive", &body, &["a", "b"], &NoResources).unwrap();
            let mut rows = TestRows::new(vec![
                string_array(vec![Some("6"), Some("1")]),
                string_array(vec![Some("3"), Some("0")]),
            ]);
            run(&c, &mut rows);
            assert_eq!(rows.quarantined.len(), quarantined, "{on_error}");
            let q = rows.column(slots.get("q")).as_primitive::<Int64Type>();
            assert_eq!(q.value(0), 2);
            if quarantined == 0 {
                assert!(q.is_null(1));
            } else {
                assert!(
                    rows.quarantined[0].1.starts_with("q: "),
                    "{:?}",
                    rows.quarantined
                );
            }
        }
    }

    #[test]
    fn a_replaced_column_takes_its_new_type() {
        let cols = check_step(
            "derive",
            "column = \"s\"\nexpr = \"length(s)\"",
            &[("s", ColumnType::String)],
        )
        .unwrap();
        assert_ne!(cols.ty("s"), Some(ColumnType::String));
        let e = check_step(
            "derive",
            "column = \"x\"\nexpr = \"nope + 1\"",
            &[("s", ColumnType::String)],
        )
        .unwrap_err();
        assert!(e.contains("steps[0] (derive).expr"), "{e}");
    }
}
