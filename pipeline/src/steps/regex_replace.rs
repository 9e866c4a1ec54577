//! `regex_replace`: every match of a pattern in a string column replaced.

use arrow::array::ArrayRef;

use super::strings::map_strings;
use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexReplaceStep {
    pub column: String,
    pub pattern: String,
    /// May refer to groups (`$1`, `${name}`).
    pub replacement: String,
    #[serde(default)]
    pub output: Option<String>,
}

impl StepKind for RegexReplaceStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        if let Err(e) = regex::Regex::new(&self.pattern) {
            return Err(cx.err("pattern", format!("invalid regex: {e}")));
        }
        cx.string_to(
            cols,
            &self.column,
            self.output.as_deref(),
            ColumnType::String,
        )
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        let re = regex::Regex::new(&self.pattern).map_err(|e| e.to_string())?;
        let (slot, out) = cx
            .slots
            .derived(&self.column, &self.output, ColumnType::String);
        kernel(RegexReplace {
            slot,
            out,
            re,
            replacement: self.replacement.clone(),
        })
    }
}

#[derive(Debug)]
struct RegexReplace {
    slot: usize,
    out: usize,
    re: regex::Regex,
    replacement: String,
}

impl Kernel for RegexReplace {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let a = regex_replace(rows.column(self.slot), &self.re, &self.replacement);
        rows.set_column(self.out, a);
        Ok(())
    }
}

pub fn regex_replace(col: &ArrayRef, re: &regex::Regex, replacement: &str) -> ArrayRef {
    map_strings(col, |s, out| out.push_str(&re.replace_all(s, replacement)))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn replaces_every_match_into_the_output_column() {
        let (c, slots) = compile_step(
            "regex_replace",
            "column = \"ip\"\npattern = '\\.[0-9]+$'\nreplacement = \".0\"\noutput = \"net\"",
            &["ip"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("178.234.215.76"), None])]);
        run(&c, &mut rows);
        assert_eq!(
            rows.strs(slots.get("net")),
            [Some("178.234.215.0".into()), None]
        );
        assert_eq!(rows.strs(0)[0].as_deref(), Some("178.234.215.76"));
    }

    #[test]
    fn an_invalid_pattern_is_refused_naming_the_key() {
        let e = check_step(
            "regex_replace",
            "column = \"s\"\npattern = \"(\"\nreplacement = \"\"",
            &[("s", ColumnType::String)],
        )
        .unwrap_err();
        assert!(
            e.contains("steps[0] (regex_replace).pattern: invalid regex"),
            "{e}"
        );
    }
}
