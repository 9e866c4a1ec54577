//! `filter`: drops the rows an SQL condition (`drop_where`) holds for or any simple condition
//! (`drop_if_any`) matches, counted in `bucket`.

use arrow::array::{Array, AsArray};

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub column: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub is_null: Option<bool>,
    /// ASCII case-insensitive comparison for `equals` and `contains`.
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStep {
    /// Simple conditions: a row matching any of them is dropped.
    #[serde(default)]
    pub drop_if_any: Vec<Condition>,
    /// An SQL condition: rows where it is true are dropped (false or null: kept).
    #[serde(default)]
    pub drop_where: Option<String>,
    #[serde(default = "crate::file::filtered")]
    pub bucket: String,
}

impl StepKind for FilterStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        if self.drop_if_any.is_empty() && self.drop_where.is_none() {
            return Err(cx.err(
                "drop_if_any",
                "set drop_if_any (at least one condition) or drop_where",
            ));
        }
        if let Some(sql) = &self.drop_where {
            cx.predicate(sql, "drop_where", cols)?;
        }
        for (j, c) in self.drop_if_any.iter().enumerate() {
            let set = [
                c.equals.is_some(),
                c.contains.is_some(),
                c.is_null.is_some(),
            ];
            if set.iter().filter(|x| **x).count() != 1 {
                return Err(cx.err(
                    &format!("drop_if_any[{j}]"),
                    "set exactly one of equals, contains, is_null",
                ));
            }
            let field = format!("drop_if_any[{j}].column");
            if c.is_null.is_none() {
                cx.need_string(cols, &c.column, &field)?;
            } else {
                cx.need(cols, &c.column, &field)?;
            }
        }
        Ok(())
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(false, &self.bucket);
        let conds = self
            .drop_if_any
            .iter()
            .map(|c| Cond {
                slot: cx.slots.get(&c.column),
                kind: match (&c.equals, &c.contains, c.is_null) {
                    (Some(e), _, _) => CondKind::Equals(e.clone(), c.ignore_case),
                    (_, Some(s), _) => CondKind::Contains(s.clone(), c.ignore_case),
                    (_, _, Some(n)) => CondKind::IsNull(n),
                    _ => unreachable!("validated"),
                },
            })
            .collect();
        let predicate = match &self.drop_where {
            Some(sql) => {
                // A row whose condition cannot be computed is rejected, not dropped.
                cx.bucket(true, "rejected");
                Some(
                    cx.slots
                        .expr(sql, true)
                        .map_err(|e| format!("drop_where: {e}"))?,
                )
            }
            None => None,
        };
        kernel(Filter {
            conds,
            predicate,
            bucket: self.bucket.clone(),
        })
    }
}

#[derive(Debug)]
enum CondKind {
    Equals(String, bool),
    Contains(String, bool),
    IsNull(bool),
}

impl CondKind {
    fn matches(&self, v: &str) -> bool {
        match self {
            CondKind::Equals(s, true) => v.eq_ignore_ascii_case(s),
            CondKind::Equals(s, false) => v == s,
            CondKind::Contains(s, false) => v.contains(s.as_str()),
            CondKind::Contains(s, true) => contains_ignore_ascii_case(v.as_bytes(), s.as_bytes()),
            CondKind::IsNull(_) => false,
        }
    }
}

/// Whether `needle` occurs in `hay`, ASCII letters compared without case, without allocating:
/// candidates are found by the needle's first byte in either case (`memchr2`, many bytes at a
/// time), and only they are compared.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut from = 0;
    while let Some(p) = memchr::memchr2(lower, upper, &hay[from..=last_start]) {
        let at = from + p;
        if hay[at + 1..at + needle.len()].eq_ignore_ascii_case(rest) {
            return true;
        }
        from = at + 1;
        if from > last_start {
            break;
        }
    }
    false
}

#[derive(Debug)]
struct Cond {
    slot: usize,
    kind: CondKind,
}

#[derive(Debug)]
struct Filter {
    conds: Vec<Cond>,
    /// `drop_where`.
    predicate: Option<SlotExpr>,
    bucket: String,
}

impl Kernel for Filter {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let mut drop = match &self.predicate {
            Some(p) => drop_where(rows, p)?,
            None => vec![false; rows.len()],
        };
        for c in &self.conds {
            let col = rows.column(c.slot);
            match &c.kind {
                CondKind::IsNull(want) => {
                    for (i, d) in drop.iter_mut().enumerate() {
                        *d |= col.is_null(i) == *want;
                    }
                }
                kind => {
                    let a = col.as_string::<i32>();
                    for (i, d) in drop.iter_mut().enumerate() {
                        if *d || a.is_null(i) {
                            continue;
                        }
                        *d = kind.matches(a.value(i));
                    }
                }
            }
        }
        if drop.iter().any(|d| *d) {
            rows.drop_rows(&drop, &self.bucket)?;
        }
        Ok(())
    }
}

/// The rows a `drop_where` condition holds for. Rows whose condition cannot be computed are
/// quarantined first (bucket `rejected`), never dropped or kept unseen.
fn drop_where(rows: &mut dyn Rows, p: &SlotExpr) -> Result<Vec<bool>, StepError> {
    let (mut held, errors) = p.predicate(rows)?;
    if !errors.is_empty() {
        rows.quarantine(errors, "rejected")?;
        (held, _) = p.predicate(rows)?;
    }
    Ok(held.values().iter().collect())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn case_insensitive_contains_agrees_with_comparing_every_window() {
        let naive = |h: &[u8], n: &[u8]| {
            n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
        };
        let hays = [
            "",
            "b",
            "bo",
            "bot",
            "BOT",
            "xbOt",
            "bbot",
            "bobot",
            "bo-t",
            "Googlebot/2.1",
            "Mozilla/5.0 (compatible; BingBot)",
            "robots",
            "abc",
            "bo\u{e9}t",
            "é-bot",
        ];
        let needles = [
            "",
            "b",
            "bot",
            "BoT",
            "-",
            "bo\u{e9}",
            "é",
            "2.1",
            "mozilla/5.0 (",
        ];
        for h in hays {
            for n in needles {
                let (h, n) = (h.as_bytes(), n.as_bytes());
                assert_eq!(
                    contains_ignore_ascii_case(h, n),
                    naive(h, n),
                    "{:?} in {:?}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(h)
                );
            }
        }
    }

    #[test]
    fn simple_conditions_and_sql_drop_into_the_bucket() {
        let body = "bucket = \"bots\"\ndrop_where = \"a = 'x'\"\ndrop_if_any = [{ column = \"b\", contains = \"BOT\", ignore_case = true }, { column = \"a\", is_null = true }]";
        let (c, _) = compile_step("filter", body, &["a", "b"], &NoResources).unwrap();
        let mut rows = TestRows::new(vec![
            string_array(vec![Some("x"), Some("y"), Some("z"), None]),
            string_array(vec![Some("-"), Some("a robot"), Some("human"), Some("-")]),
        ]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(0), [Some("z".into())]);
        assert_eq!(rows.filtered["bots"], 3);
    }

    #[test]
    fn a_condition_that_cannot_be_computed_rejects_the_row() {
        let body = "drop_where = \"CAST(a AS INT) > 1\"";
        let (c, _) = compile_step("filter", body, &["a"], &NoResources).unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("1"), Some("x"), Some("5")])]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(0), [Some("1".into())]);
        assert_eq!(rows.quarantined.len(), 1);
        assert_eq!(rows.quarantined[0].0, "rejected");
        assert_eq!(rows.filtered["filtered"], 1);
    }

    #[test]
    fn each_condition_sets_exactly_one_test() {
        let e = check_step(
            "filter",
            "drop_if_any = [{ column = \"a\" }]",
            &[("a", ColumnType::String)],
        )
        .unwrap_err();
        assert!(
            e.contains("steps[0] (filter).drop_if_any[0]: set exactly one"),
            "{e}"
        );
        let e = check_step("filter", "", &[]).unwrap_err();
        assert!(
            e.contains("drop_if_any (at least one condition) or drop_where"),
            "{e}"
        );
    }
}
