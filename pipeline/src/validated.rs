//! [`Pipeline`]: a pipeline file that passed validation, and [`parse`], which makes one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::entries::{Entries, Section, named_field};
use crate::{ColumnDecl, ColumnType, ConfigError, PipelineFile, Step};

/// A validated pipeline and where it came from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PipelineFile,
    /// The pipeline file's path (for messages).
    pub path: String,
    /// Folder relative paths resolve against.
    pub base_dir: PathBuf,
    /// The file's text (travels with tasks).
    pub text: String,
    /// Every column with its type: declared ones, then step outputs, in order.
    pub columns: Vec<(String, ColumnType)>,
    /// The data-quality expectations: the `[[expect]]` entries, then the default
    /// `max_rejected_ratio` when none is declared.
    pub expectations: Vec<crate::expect::Expectation>,
}

impl Pipeline {
    /// Columns that hold personal data in hashed form (the input and output of every `hash`
    /// step): error messages never show their values.
    pub fn masked_columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in &self.file.steps {
            if let Step::Hash(h) = step {
                out.push(h.column.clone());
                if let Some(o) = &h.output {
                    out.push(o.clone());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn name(&self) -> &str {
        &self.file.pipeline.name
    }
    pub fn table(&self) -> &str {
        self.file
            .load
            .table
            .as_deref()
            .unwrap_or(&self.file.pipeline.name)
    }
    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }
    /// Resolves a path from the pipeline file against its folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Parses and validates pipeline text. `file` names it in errors; relative paths in it resolve
/// against `base_dir`. Errors inside `[[columns]]` and `[[steps]]` name the entry and its line.
pub fn parse(text: &str, file: &str, base_dir: PathBuf) -> Result<Pipeline, ConfigError> {
    let entries = Entries::scan(text);
    check_entries::<ColumnDecl>(&entries, Section::Columns, &entries.column_values, file)?;
    check_entries::<Step>(&entries, Section::Steps, &entries.step_values, file)?;
    check_entries::<crate::expect::ExpectEntry>(
        &entries,
        Section::Expect,
        &entries.expect_values,
        file,
    )?;
    let mut raw: PipelineFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| entries.line_at(s.start.min(text.len())));
        let field = e
            .span()
            .and_then(|s| enclosing_table(text, s.start))
            .unwrap_or_else(|| "(toml)".into());
        ConfigError::new(file, field, e.message().trim()).at_line(line)
    })?;
    raw.load.merge_keys_given = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("load")?.get("merge_keys").cloned())
        .is_some();
    raw.validate(file, base_dir, text, &entries)
}

/// Deserializes every entry of `section` on its own, so that its error names it (`steps[2]
/// (derive)`) and its line (the offending key's, else the entry's header).
fn check_entries<T: for<'de> Deserialize<'de>>(
    entries: &Entries,
    section: Section,
    values: &[toml::Value],
    file: &str,
) -> Result<(), ConfigError> {
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = T::deserialize(v.clone()) {
            let message = e.message().trim().to_string();
            let op = v.get("op").and_then(toml::Value::as_str);
            let field = match op {
                Some(op) => format!("{}[{i}] ({op})", section.key()),
                None => format!("{}[{i}]", section.key()),
            };
            let line = entries.key_line(section, i, named_field(&message));
            return Err(ConfigError::new(file, field, message).at_line(line));
        }
    }
    Ok(())
}

/// The `[table]` header in force at byte `offset` (for errors outside the located entries).
fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    before.lines().rev().find_map(|l| {
        let l = l.trim();
        let name = l.strip_prefix('[')?.trim_start_matches('[');
        let name = name.split(']').next()?.trim();
        (!name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_STEPS: &str = r#"[pipeline]
name = "t"

[source]
location = "in"
format = "csv"

[[columns]]
name = "id"
type = "string"

[[columns]]
name = "email"
type = "string"

[[steps]]
op = "trim"
columns = ["id"]

[[steps]]
op = "lower"
columns = ["email"]

[[steps]]
op = "upper"
columns = ["id"]

[output]
columns = ["id", "email"]
"#;

    fn err(text: &str) -> ConfigError {
        parse(text, "p.toml", PathBuf::from(".")).unwrap_err()
    }

    #[test]
    fn an_unknown_key_in_the_third_step_is_reported_at_its_own_line() {
        let text = THREE_STEPS.replace(
            "op = \"upper\"\ncolumns = [\"id\"]",
            "op = \"upper\"\ncolumns = [\"id\"]\ncolunms = [\"email\"]",
        );
        let e = err(&text);
        assert_eq!(e.field, "steps[2] (upper)");
        assert_eq!(e.line, Some(27), "{e}");
        assert!(
            e.to_string()
                .starts_with("p.toml:27: steps[2] (upper): unknown field `colunms`")
        );
    }

    #[test]
    fn a_bad_value_in_a_step_is_reported_at_its_entry() {
        let e = err(&THREE_STEPS.replace("op = \"lower\"", "op = \"lowercase\""));
        assert_eq!(e.field, "steps[1] (lowercase)");
        assert_eq!(e.line, Some(20), "{e}");
        let e = err(&THREE_STEPS.replace("columns = [\"email\"]", "columns = \"email\""));
        assert_eq!(e.field, "steps[1] (lower)");
        assert_eq!(e.line, Some(20), "{e}");
    }

    #[test]
    fn a_validation_error_in_a_step_names_its_key_line() {
        let e = err(&THREE_STEPS.replace("columns = [\"email\"]", "columns = [\"mail\"]"));
        assert_eq!(e.field, "steps[1] (lower).columns");
        assert_eq!(e.line, Some(22), "{e}");
    }

    #[test]
    fn column_errors_name_their_entry_and_line() {
        let e = err(&THREE_STEPS.replace(
            "name = \"email\"\ntype = \"string\"",
            "name = \"email\"\ntype = \"money\"",
        ));
        assert_eq!(e.field, "columns[1]");
        assert_eq!(e.line, Some(12), "{e}");
        let e = err(&THREE_STEPS.replace("name = \"email\"", "name = \"id\""));
        assert_eq!(e.field, "columns[1].name");
        assert_eq!(e.line, Some(13), "{e}");
    }

    /// Regression (issue 9): a file without `[load]` got `enabled = false` (the derived
    /// default), unlike an empty `[load]`, and silently loaded nothing.
    #[test]
    fn a_file_without_load_loads_like_an_empty_load_section() {
        let p = parse(THREE_STEPS, "p.toml", PathBuf::from(".")).unwrap();
        assert!(p.file.load.enabled);
        assert!(p.file.load.analyze);
        assert_eq!(p.file.load.analyze_share, 0.1);
        assert_eq!(p.table(), "t");
    }

    #[test]
    fn errors_outside_entries_name_their_table_and_line() {
        let e = err(&THREE_STEPS.replace("format = \"csv\"", "format = \"csv\"\nfromat = 1"));
        assert_eq!(e.field, "source");
        assert_eq!(e.line, Some(7), "{e}");
    }
}
