//! Where each entry of `[[columns]]`, `[[steps]]` and `[[expect]]` starts, so that an error inside one is
//! reported as `steps[2]` at its own line, not at the first `[[steps]]` of the file.
//!
//! serde's internally tagged enums (a step is tagged by `op`) buffer their input and lose the
//! TOML spans, so every entry is deserialized on its own from a spanned outline of the file.

use serde::Deserialize;
use toml::Spanned;

/// The arrays of tables of a pipeline file, each entry with its span.
#[derive(Deserialize, Default)]
struct Outline {
    #[serde(default)]
    columns: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    steps: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    expect: Vec<Spanned<toml::Value>>,
}

/// An array of tables whose entries are located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Columns,
    Steps,
    Expect,
}

impl Section {
    pub fn key(self) -> &'static str {
        match self {
            Section::Columns => "columns",
            Section::Steps => "steps",
            Section::Expect => "expect",
        }
    }
}

/// The located entries of one file.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    /// The file's lines.
    lines: Vec<String>,
    columns: Vec<usize>,
    steps: Vec<usize>,
    expect: Vec<usize>,
    /// The raw entries, for deserializing one at a time.
    pub column_values: Vec<toml::Value>,
    pub step_values: Vec<toml::Value>,
    pub expect_values: Vec<toml::Value>,
}

impl Entries {
    /// Locates the entries of `text`. A file whose `columns` or `steps` are not arrays of tables
    /// (or that is not TOML) yields no entries: the full parse reports it.
    pub fn scan(text: &str) -> Entries {
        let outline: Outline = toml::from_str(text).unwrap_or_default();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut e = Entries {
            line_starts,
            lines: text.lines().map(String::from).collect(),
            ..Entries::default()
        };
        for v in outline.columns {
            e.columns.push(e.line_at(v.span().start));
            e.column_values.push(v.into_inner());
        }
        for v in outline.steps {
            e.steps.push(e.line_at(v.span().start));
            e.step_values.push(v.into_inner());
        }
        for v in outline.expect {
            e.expect.push(e.line_at(v.span().start));
            e.expect_values.push(v.into_inner());
        }
        e
    }

    /// The 1-based line holding byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The header line of entry `i` of `section`.
    pub fn entry_line(&self, section: Section, i: usize) -> Option<usize> {
        match section {
            Section::Columns => self.columns.get(i).copied(),
            Section::Steps => self.steps.get(i).copied(),
            Section::Expect => self.expect.get(i).copied(),
        }
    }

    /// The line of `key` inside entry `i` (a `[[section]]` table), else the entry's header line.
    pub fn key_line(&self, section: Section, i: usize, key: Option<&str>) -> Option<usize> {
        let header = self.entry_line(section, i)?;
        let Some(key) = key else {
            return Some(header);
        };
        let body = self
            .lines
            .iter()
            .enumerate()
            .skip(header) // lines after the header (`header` is 1-based)
            .take_while(|(_, l)| !l.trim_start().starts_with('['));
        for (n, l) in body {
            let k = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            if l.contains('=') && k == key {
                return Some(n + 1);
            }
        }
        Some(header)
    }

    /// The line a field path such as `steps[1] (hash).key_env` or `columns[0].path` points at:
    /// the key's own line inside its entry, else the entry's header; `None` outside entries.
    pub fn line_of_field(&self, field: &str) -> Option<usize> {
        let (section, rest) = if let Some(r) = field.strip_prefix("steps[") {
            (Section::Steps, r)
        } else if let Some(r) = field.strip_prefix("columns[") {
            (Section::Columns, r)
        } else if let Some(r) = field.strip_prefix("expect[") {
            (Section::Expect, r)
        } else {
            return None;
        };
        let (i, after) = rest.split_once(']')?;
        let i: usize = i.parse().ok()?;
        // `] (op).key...` or `].key...`
        let after = match after.find(").") {
            Some(p) if after.starts_with(" (") => &after[p + 1..],
            _ => after,
        };
        let key = after
            .strip_prefix('.')
            .map(|k| k.split(['.', '[']).next().unwrap_or(k));
        self.key_line(section, i, key)
    }
}

/// The field a serde message names (`unknown field \`x\``, `missing field \`x\``), if any.
pub fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[pipeline]\nname = \"t\"\n\n[[columns]]\nname = \"a\"\ntype = \"string\"\n\n[[steps]]\nop = \"trim\"\ncolumns = [\"a\"]\n\n[[steps]]\nop = \"hash\"\ncolumn = \"a\"\n\"key_env\" = \"K\"\n\n[output]\ncolumns = [\"a\"]\n";

    #[test]
    fn entries_are_located_at_their_headers() {
        let e = Entries::scan(TEXT);
        assert_eq!(e.entry_line(Section::Columns, 0), Some(4));
        assert_eq!(e.entry_line(Section::Steps, 0), Some(8));
        assert_eq!(e.entry_line(Section::Steps, 1), Some(12));
        assert_eq!(e.entry_line(Section::Steps, 2), None);
        assert_eq!(e.step_values.len(), 2);
    }

    #[test]
    fn a_field_path_points_at_its_key_line() {
        let e = Entries::scan(TEXT);
        assert_eq!(e.line_of_field("steps[1] (hash).key_env"), Some(15));
        assert_eq!(e.line_of_field("steps[1] (hash).column"), Some(14));
        assert_eq!(e.line_of_field("steps[1] (hash).missing"), Some(12));
        assert_eq!(e.line_of_field("steps[0] (trim)"), Some(8));
        assert_eq!(e.line_of_field("columns[0].type"), Some(6));
        assert_eq!(e.line_of_field("output.columns"), None);
        // the `columns` key of [output] is outside every entry
        assert_eq!(e.key_line(Section::Steps, 1, Some("columns")), Some(12));
    }

    #[test]
    fn messages_name_their_field() {
        assert_eq!(
            named_field("unknown field `colunms`, expected `columns`"),
            Some("colunms")
        );
        assert_eq!(named_field("missing field `to`"), Some("to"));
        assert_eq!(named_field("invalid type: string \"x\""), None);
    }

    #[test]
    fn text_that_is_not_toml_has_no_entries() {
        let e = Entries::scan("[[steps]\nop = ");
        assert_eq!(e.entry_line(Section::Steps, 0), None);
        assert_eq!(e.line_at(0), 1);
    }
}
