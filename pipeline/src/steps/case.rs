//! `trim`, `upper` and `lower`: string columns changed in place.

use arrow::array::ArrayRef;

use super::strings::map_strings;
use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrimStep {
    pub columns: Vec<String>,
    /// The characters removed from both ends (default: all whitespace).
    #[serde(default)]
    pub chars: Option<String>,
}

/// `upper` and `lower`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseStep {
    pub columns: Vec<String>,
}

fn check_columns(cx: &CheckCx<'_>, columns: &[String], cols: &Columns) -> Result<(), ConfigError> {
    if columns.is_empty() {
        return Err(cx.err("columns", "needs at least one column"));
    }
    for c in columns {
        cx.need_string(cols, c, "columns")?;
    }
    Ok(())
}

impl StepKind for TrimStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        check_columns(cx, &self.columns, cols)
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        kernel(InPlace {
            slots: cx.slots.all(&self.columns),
            change: Change::Trim(self.chars.clone()),
        })
    }
}

impl StepKind for CaseStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        check_columns(cx, &self.columns, cols)
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        let change = if cx.op == "upper" {
            Change::Upper
        } else {
            Change::Lower
        };
        kernel(InPlace {
            slots: cx.slots.all(&self.columns),
            change,
        })
    }
}

#[derive(Debug)]
enum Change {
    Trim(Option<String>),
    Upper,
    Lower,
}

#[derive(Debug)]
struct InPlace {
    slots: Vec<usize>,
    change: Change,
}

impl Kernel for InPlace {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        for s in &self.slots {
            let out = match &self.change {
                Change::Trim(chars) => trim(rows.column(*s), chars.as_deref()),
                Change::Upper => upper(rows.column(*s)),
                Change::Lower => lower(rows.column(*s)),
            };
            rows.set_column(*s, out);
        }
        Ok(())
    }
}

pub fn trim(col: &ArrayRef, chars: Option<&str>) -> ArrayRef {
    match chars {
        None => map_strings(col, |s, out| out.push_str(s.trim())),
        // ASCII characters (a space, quotes, punctuation) are trimmed as bytes: an ASCII byte
        // is never part of a longer character, so the rest is still whole characters.
        Some(cs) if cs.is_ascii() => {
            let set = cs.as_bytes();
            map_strings(col, |s, out| out.push_str(trim_bytes(s, set)))
        }
        Some(cs) => map_strings(col, |s, out| {
            out.push_str(s.trim_matches(|c| cs.contains(c)))
        }),
    }
}

/// `s` without the bytes of the ASCII set `set` at either end.
fn trim_bytes<'s>(s: &'s str, set: &[u8]) -> &'s str {
    let b = s.as_bytes();
    let start = b.iter().position(|c| !set.contains(c)).unwrap_or(b.len());
    let end = b[start..]
        .iter()
        .rposition(|c| !set.contains(c))
        .map_or(start, |i| start + i + 1);
    &s[start..end]
}

pub fn upper(col: &ArrayRef) -> ArrayRef {
    map_strings(col, |s, out| {
        if s.is_ascii() {
            out.push_str(s);
            out.make_ascii_uppercase();
        } else {
            out.push_str(&s.to_uppercase());
        }
    })
}

pub fn lower(col: &ArrayRef) -> ArrayRef {
    map_strings(col, |s, out| {
        if s.is_ascii() {
            out.push_str(s);
            out.make_ascii_lowercase();
        } else {
            out.push_str(&s.to_lowercase());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn string_transforms() {
        let col = string_array(vec![Some("  Fr "), Some("de"), None, Some(" \tUS\t ")]);
        assert_eq!(
            strs(&upper(&trim(&col, Some(" ")))),
            [
                Some("FR".into()),
                Some("DE".into()),
                None,
                Some("\tUS\t".into())
            ]
        );
        assert_eq!(strs(&trim(&col, None))[3], Some("US".into()));
        assert_eq!(
            strs(&lower(&string_array(vec![Some("ÄB")])))[0],
            Some("äb".into())
        );
    }

    #[test]
    fn ascii_sets_trim_as_bytes_exactly_as_by_characters() {
        let texts = [
            "",
            " ",
            "  ",
            "ab",
            " a b ",
            "--x--",
            "é",
            " é ",
            "-é-",
            " \u{a0}x\u{a0} ",
            "\"q\"",
            "日本 ",
            " - ",
            "x-",
            "-x",
        ];
        for set in [" ", " -", "\"", "-\" "] {
            for t in texts {
                let by_chars = t.trim_matches(|c| set.contains(c));
                assert_eq!(trim_bytes(t, set.as_bytes()), by_chars, "{t:?} by {set:?}");
            }
        }
    }

    #[test]
    fn compiled_steps_change_every_listed_column_in_place() {
        let (c, _) = compile_step("upper", "columns = [\"b\"]", &["a", "b"], &NoResources).unwrap();
        let mut rows = TestRows::new(vec![
            string_array(vec![Some("x")]),
            string_array(vec![Some("y")]),
        ]);
        run(&c, &mut rows);
        assert_eq!(
            (rows.strs(0), rows.strs(1)),
            (vec![Some("x".into())], vec![Some("Y".into())])
        );
        let (c, _) = compile_step(
            "trim",
            "columns = [\"a\"]\nchars = \"x\"",
            &["a"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("xxaxx")])]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(0), [Some("a".into())]);
    }

    #[test]
    fn checks_name_the_column_and_refuse_chars_outside_trim() {
        let e = check_step("lower", "columns = [\"n\"]", &[("n", ColumnType::Int64)]).unwrap_err();
        assert!(
            e.contains("steps[0] (lower).columns") && e.contains("needs a string"),
            "{e}"
        );
        let e = check_step("upper", "columns = [\"s\"]\nchars = \"x\"", &[]).unwrap_err();
        assert!(e.contains("chars"), "{e}");
        assert!(
            check_step("trim", "columns = []", &[])
                .unwrap_err()
                .contains("at least one")
        );
    }
}
