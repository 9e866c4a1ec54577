//! `dedupe`: keeps the first row of each key in source order; later ones count as duplicates.
//! Its kernel spans the pieces of a shard (one key set per shard), so it lives with the shard
//! loop in the worker (`worker/src/engine/dedupe.rs`); here are its spec, check and slots.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeStep {
    pub keys: Vec<String>,
}

impl StepKind for DedupeStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return Err(cx.err("keys", "needs at least one key column"));
        }
        for k in &self.keys {
            cx.need(cols, k, "keys")?;
        }
        Ok(())
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        Ok(Compiled::Dedupe(cx.slots.all(&self.keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn keys_are_checked_and_compile_to_their_slots() {
        let e = check_step("dedupe", "keys = [\"k\"]", &[("a", ColumnType::String)]).unwrap_err();
        assert!(
            e.contains("steps[0] (dedupe).keys: unknown column \"k\""),
            "{e}"
        );
        let (c, _) =
            compile_step("dedupe", "keys = [\"b\", \"a\"]", &["a", "b"], &NoResources).unwrap();
        assert!(matches!(c, Compiled::Dedupe(s) if s == [1, 0]));
    }
}
