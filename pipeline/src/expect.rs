//! Data-quality expectations: the `[[expect]]` entries of a pipeline file.
//!
//! ```toml
//! [[expect]]
//! column = "amount"
//! range = { min = 0, max = 10000 }
//! severity = "warn"          # or "fail" (the default): a failed run is not loaded
//! ```
//!
//! Each entry holds exactly one check. Row checks (`not_null`, `accepted_values`, `range`,
//! `matches`, `expr`) become one SQL predicate over the output columns that a row must not make
//! false (a NULL passes every check but `not_null`, as in SQL `CHECK` constraints); workers count
//! the rows that break it, per shard. `unique` is checked over the run's output files,
//! `min_rows` and `max_rejected_ratio` over the run's counts. Without a `max_rejected_ratio`
//! entry, every pipeline has one of 0.5 (severity fail): a run whose malformed and rejected lines
//! are more than half its lines is not loaded.

use serde::{Deserialize, Serialize};

use crate::{ColumnType, ConfigError};

/// The default `max_rejected_ratio` of a pipeline that declares none.
pub const DEFAULT_MAX_REJECTED_RATIO: f64 = 0.5;

/// One `[[expect]]` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectEntry {
    /// The name in `QUALITY` lines, status and metrics; defaults to `CHECK(COLUMN)`.
    #[serde(default)]
    pub name: Option<String>,
    /// The output column a column check is about.
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub not_null: Option<bool>,
    #[serde(default)]
    pub unique: Option<bool>,
    #[serde(default)]
    pub accepted_values: Option<Vec<toml::Value>>,
    #[serde(default)]
    pub range: Option<RangeSpec>,
    /// A regular expression the whole value must match.
    #[serde(default)]
    pub matches: Option<String>,
    /// An SQL predicate over the output columns that every row must not make false.
    #[serde(default)]
    pub expr: Option<String>,
    #[serde(default)]
    pub min_rows: Option<u64>,
    #[serde(default)]
    pub max_rejected_ratio: Option<f64>,
    #[serde(default)]
    pub severity: Severity,
}

/// `range = { min = …, max = … }` (either bound may be left out; both are inclusive).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    #[serde(default)]
    pub min: Option<toml::Value>,
    #[serde(default)]
    pub max: Option<toml::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Reported; the run is loaded.
    Warn,
    /// Reported; a run that breaks it is not loaded.
    #[default]
    Fail,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Fail => "fail",
        }
    }
}

/// A validated expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub name: String,
    pub severity: Severity,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Every output row must not make `predicate` false (SQL over the output columns; it is
    /// already wrapped so that NULL counts as true).
    Rows {
        kind: &'static str,
        predicate: String,
    },
    /// No two output rows of the run share a non-null value of `column`.
    Unique { column: String },
    /// At least this many output rows.
    MinRows(u64),
    /// (malformed + rejected) / lines at most this.
    MaxRejectedRatio(f64),
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Rows { kind, .. } => kind,
            Check::Unique { .. } => "unique",
            Check::MinRows(_) => "min_rows",
            Check::MaxRejectedRatio(_) => "max_rejected_ratio",
        }
    }
}

fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A TOML scalar as an SQL literal.
fn sql_literal(v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) if f.is_finite() => format!("{f:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        other => return Err(format!("{other} is not a string, number or bool")),
    })
}

/// Which check keys an entry sets.
fn checks_set(e: &ExpectEntry) -> Vec<&'static str> {
    [
        ("not_null", e.not_null.is_some()),
        ("unique", e.unique.is_some()),
        ("accepted_values", e.accepted_values.is_some()),
        ("range", e.range.is_some()),
        ("matches", e.matches.is_some()),
        ("expr", e.expr.is_some()),
        ("min_rows", e.min_rows.is_some()),
        ("max_rejected_ratio", e.max_rejected_ratio.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

/// Validates every entry against the output columns (`field` builds `expect[i].KEY` errors).
pub fn validate(
    entries: &[ExpectEntry],
    output: &[(String, ColumnType)],
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<Expectation>, ConfigError> {
    let mut out: Vec<Expectation> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |k: &str| format!("expect[{i}].{k}");
        let x = check_entry(e, output).map_err(|(k, m)| err(&field(k), m))?;
        if out.iter().any(|o| o.name == x.name) {
            return Err(err(
                &field("name"),
                format!("two expectations are named {:?}: set `name` on one", x.name),
            ));
        }
        out.push(x);
    }
    if !out
        .iter()
        .any(|x| matches!(x.check, Check::MaxRejectedRatio(_)))
    {
        out.push(Expectation {
            name: "max_rejected_ratio".into(),
            severity: Severity::Fail,
            check: Check::MaxRejectedRatio(DEFAULT_MAX_REJECTED_RATIO),
        });
    }
    Ok(out)
}

type EntryError = (&'static str, String);

fn check_entry(
    e: &ExpectEntry,
    output: &[(String, ColumnType)],
) -> Result<Expectation, EntryError> {
    let set = checks_set(e);
    let kind = match set.as_slice() {
        [one] => *one,
        [] => return Err(("column", "set one check: not_null, unique, accepted_values, range, matches, expr, min_rows or max_rejected_ratio".into())),
        many => return Err((many[1], format!("one check per entry, this one sets {}", many.join(" and ")))),
    };
    let column = match (&e.column, kind) {
        (Some(_), "min_rows" | "max_rejected_ratio" | "expr") => {
            return Err((
                "column",
                format!("{kind} is about the whole run: leave out `column`"),
            ));
        }
        (None, "min_rows" | "max_rejected_ratio" | "expr") => None,
        (None, _) => return Err(("column", format!("{kind} needs the `column` it checks"))),
        (Some(c), _) => {
            if !output.iter().any(|(n, _)| n == c) {
                return Err(("column", format!("unknown output column {c:?}")));
            }
            Some(c.as_str())
        }
    };
    let name = e.name.clone().unwrap_or_else(|| match column {
        Some(c) => format!("{kind}({c})"),
        None => kind.to_string(),
    });
    let check = build_check(e, kind, column, output)?;
    Ok(Expectation {
        name,
        severity: e.severity,
        check,
    })
}

fn build_check(
    e: &ExpectEntry,
    kind: &'static str,
    column: Option<&str>,
    output: &[(String, ColumnType)],
) -> Result<Check, EntryError> {
    let col = column.map(sql_ident).unwrap_or_default();
    let cond = match kind {
        "not_null" if e.not_null == Some(true) => format!("{col} IS NOT NULL"),
        "not_null" => return Err(("not_null", "write `not_null = true`".into())),
        "unique" if e.unique == Some(true) => {
            return Ok(Check::Unique {
                column: column.unwrap_or_default().into(),
            });
        }
        "unique" => return Err(("unique", "write `unique = true`".into())),
        "accepted_values" => {
            let vals = e.accepted_values.as_deref().unwrap_or_default();
            if vals.is_empty() {
                return Err(("accepted_values", "list at least one value".into()));
            }
            let lits = vals
                .iter()
                .map(sql_literal)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| ("accepted_values", m))?;
            format!("{col} IN ({})", lits.join(", "))
        }
        "range" => range_condition(&col, e.range.as_ref().expect("set"))?,
        "matches" => {
            let re = e.matches.as_deref().unwrap_or_default();
            regex::Regex::new(re)
                .map_err(|x| ("matches", format!("not a regular expression: {x}")))?;
            // Anchored: the whole value must match.
            let anchored = format!("^(?:{re})$");
            format!("regexp_like({col}, '{}')", anchored.replace('\'', "''"))
        }
        "expr" => format!("({})", e.expr.as_deref().unwrap_or_default()),
        "min_rows" => return Ok(Check::MinRows(e.min_rows.unwrap_or_default())),
        "max_rejected_ratio" => {
            let r = e.max_rejected_ratio.unwrap_or_default();
            if !(0.0..=1.0).contains(&r) {
                return Err(("max_rejected_ratio", format!("{r} is not between 0 and 1")));
            }
            return Ok(Check::MaxRejectedRatio(r));
        }
        other => unreachable!("check {other} is listed in checks_set"),
    };
    let predicate = format!("COALESCE({cond}, true)");
    crate::expr::compile_predicate(&predicate, output).map_err(|x| (kind, x.to_string()))?;
    Ok(Check::Rows { kind, predicate })
}

fn range_condition(col: &str, r: &RangeSpec) -> Result<String, EntryError> {
    let mut parts = Vec::new();
    for (bound, op) in [(&r.min, ">="), (&r.max, "<=")] {
        if let Some(v) = bound {
            let lit = sql_literal(v).map_err(|m| ("range", m))?;
            parts.push(format!("{col} {op} {lit}"));
        }
    }
    if parts.is_empty() {
        return Err(("range", "set `min`, `max` or both".into()));
    }
    Ok(format!("({})", parts.join(" AND ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> Vec<(String, ColumnType)> {
        vec![
            ("id".into(), ColumnType::String),
            (
                "amount".into(),
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            ("qty".into(), ColumnType::Int32),
        ]
    }

    fn entry(toml_text: &str) -> ExpectEntry {
        toml::from_str(toml_text).unwrap()
    }

    fn run(entries: &[ExpectEntry]) -> Result<Vec<Expectation>, ConfigError> {
        validate(entries, &out(), &|f, m| ConfigError::new("p.toml", f, m))
    }

    #[test]
    fn row_checks_become_null_tolerant_predicates() {
        let got = run(&[
            entry("column = \"id\"\nnot_null = true"),
            entry("column = \"qty\"\nrange = { min = 1, max = 99 }\nseverity = \"warn\""),
            entry("column = \"id\"\naccepted_values = [\"a\", \"o'b\"]"),
            entry("column = \"id\"\nmatches = \"[a-z]+\""),
            entry("expr = \"amount >= 0\"\nname = \"no_negative_amounts\""),
        ])
        .unwrap();
        let preds: Vec<(&str, &str)> = got
            .iter()
            .filter_map(|x| match &x.check {
                Check::Rows { predicate, .. } => Some((x.name.as_str(), predicate.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            preds,
            vec![
                ("not_null(id)", "COALESCE(\"id\" IS NOT NULL, true)"),
                (
                    "range(qty)",
                    "COALESCE((\"qty\" >= 1 AND \"qty\" <= 99), true)"
                ),
                (
                    "accepted_values(id)",
                    "COALESCE(\"id\" IN ('a', 'o''b'), true)"
                ),
                (
                    "matches(id)",
                    "COALESCE(regexp_like(\"id\", '^(?:[a-z]+)$'), true)"
                ),
                ("no_negative_amounts", "COALESCE((amount >= 0), true)"),
            ]
        );
        assert_eq!(got[1].severity, Severity::Warn);
        // The default ratio comes last.
        let last = got.last().unwrap();
        assert_eq!(
            last.check,
            Check::MaxRejectedRatio(DEFAULT_MAX_REJECTED_RATIO)
        );
        assert_eq!(last.severity, Severity::Fail);
    }

    #[test]
    fn a_declared_ratio_replaces_the_default() {
        let got = run(&[
            entry("max_rejected_ratio = 0.1\nseverity = \"warn\""),
            entry("min_rows = 5"),
        ])
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].check, Check::MaxRejectedRatio(0.1));
        assert_eq!(got[1].check, Check::MinRows(5));
    }

    #[test]
    fn bad_entries_name_their_key() {
        let e = |t: &str| run(&[entry("column = \"id\"\nnot_null = true"), entry(t)]).unwrap_err();
        let x = e("column = \"idd\"\nnot_null = true");
        assert_eq!(x.field, "expect[1].column");
        assert!(x.message.contains("unknown output column \"idd\""), "{x}");
        let x = e("column = \"id\"\nnot_null = true\nunique = true");
        assert_eq!(x.field, "expect[1].unique");
        let x = e("column = \"id\"");
        assert_eq!(x.field, "expect[1].column");
        let x = e("expr = \"amount >= 'x\"");
        assert_eq!(x.field, "expect[1].expr");
        let x = e("expr = \"nope > 1\"");
        assert!(x.message.contains("nope"), "{x}");
        let x = e("column = \"id\"\nmatches = \"(\"");
        assert_eq!(x.field, "expect[1].matches");
        let x = e("max_rejected_ratio = 1.5");
        assert_eq!(x.field, "expect[1].max_rejected_ratio");
        let x = e("column = \"id\"\nmin_rows = 3");
        assert_eq!(x.field, "expect[1].column");
        let x = e("column = \"id\"\nnot_null = true");
        assert_eq!(x.field, "expect[1].name");
    }
}
