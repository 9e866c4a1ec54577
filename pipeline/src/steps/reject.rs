//! `reject`: the rows where an SQL condition holds go to quarantine with a reason.

use std::collections::HashSet;

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RejectStep {
    /// An SQL condition: rows where it is true are quarantined (false or null: kept).
    #[serde(rename = "where")]
    pub condition: String,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
    /// The reason recorded with each quarantined row (default: the condition).
    #[serde(default)]
    pub reason: Option<String>,
}

impl StepKind for RejectStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        cx.predicate(&self.condition, "where", cols)
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(true, &self.bucket);
        let predicate = cx
            .slots
            .expr(&self.condition, true)
            .map_err(|e| format!("where: {e}"))?;
        kernel(Reject {
            predicate,
            bucket: self.bucket.clone(),
            reason: self
                .reason
                .clone()
                .unwrap_or_else(|| format!("steps[{}] (reject): {}", cx.index, self.condition)),
        })
    }
}

#[derive(Debug)]
struct Reject {
    predicate: SlotExpr,
    bucket: String,
    reason: String,
}

impl Kernel for Reject {
    /// A row whose condition cannot be computed is quarantined with the computation's error.
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let (held, mut errors) = self.predicate.predicate(rows)?;
        let failed: HashSet<usize> = errors.iter().map(|(r, _)| *r).collect();
        errors.extend(
            held.values()
                .set_indices()
                .filter(|r| !failed.contains(r))
                .map(|r| (r, self.reason.clone())),
        );
        errors.sort_by_key(|(r, _)| *r);
        rows.quarantine(errors, &self.bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn rows_where_it_holds_are_quarantined_with_the_reason() {
        let (c, _) = compile_step(
            "reject",
            "where = \"s LIKE 'V%'\"\nbucket = \"vouchers\"",
            &["s"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("V1"), Some("A"), None])]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(0), [Some("A".into()), None]);
        assert_eq!(
            rows.quarantined,
            [(
                "vouchers".to_string(),
                "steps[0] (reject): s LIKE 'V%'".to_string()
            )]
        );
    }

    #[test]
    fn the_condition_must_be_a_predicate() {
        let e = check_step(
            "reject",
            "where = \"length(s)\"",
            &[("s", ColumnType::String)],
        )
        .unwrap_err();
        assert!(e.contains("steps[0] (reject).where"), "{e}");
    }
}
