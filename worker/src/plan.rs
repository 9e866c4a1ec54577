//! A validated pipeline compiled for execution: column slots, steps with their regexes, keys and
//! reference tables loaded, the JSON path tree and the output schema.
//!
//! Building a plan reads key files, key environment variables and reference files; every failure
//! names the pipeline file and the step.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{Field, SchemaRef};

use crate::WorkerError;
use crate::config::{
    ColumnType, Format, HashAlgorithm, OnError, OnMissing, OutputSection, Pipeline, Step,
};
use crate::engine::{JsonTree, schema_of};
use crate::transform::TimestampFormat;

#[derive(Debug)]
pub enum CondKind {
    Equals(String, bool),
    Contains(String, bool),
    IsNull(bool),
}

impl CondKind {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            CondKind::Equals(s, ci) => {
                if *ci {
                    v.eq_ignore_ascii_case(s)
                } else {
                    v == s
                }
            }
            CondKind::Contains(s, false) => v.contains(s.as_str()),
            CondKind::Contains(s, true) => {
                // ASCII case-insensitive substring search without allocating.
                let (h, n) = (v.as_bytes(), s.as_bytes());
                n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
            }
            CondKind::IsNull(_) => false,
        }
    }
}

#[derive(Debug)]
pub struct Cond {
    pub slot: usize,
    pub kind: CondKind,
}

/// A compiled SQL expression and the slots of the columns it reads (in its input order).
#[derive(Debug)]
pub struct SlotExpr {
    pub expr: pipeline::expr::Expression,
    pub inputs: Vec<usize>,
}

#[derive(Debug)]
pub enum StepOp {
    Filter {
        conds: Vec<Cond>,
        /// `drop_where`.
        predicate: Option<SlotExpr>,
        bucket: String,
    },
    Derive {
        expr: SlotExpr,
        out: usize,
        on_error: OnError,
        bucket: String,
        column: String,
    },
    Reject {
        predicate: SlotExpr,
        bucket: String,
        reason: String,
    },
    Dedupe {
        slots: Vec<usize>,
    },
    Trim {
        slots: Vec<usize>,
        chars: Option<String>,
    },
    Upper {
        slots: Vec<usize>,
    },
    Lower {
        slots: Vec<usize>,
    },
    Regex {
        slot: usize,
        out: usize,
        re: regex::Regex,
        replacement: String,
    },
    ParseTs {
        slot: usize,
        out: usize,
        format: TimestampFormat,
        on_error: OnError,
        bucket: String,
        column: String,
    },
    Date {
        slot: usize,
        out: usize,
    },
    Hash {
        slot: usize,
        out: usize,
        algorithm: HashAlgorithm,
        key: Vec<u8>,
    },
    Ipv4 {
        slot: usize,
        out: usize,
        keep: u8,
        on_error: OnError,
        bucket: String,
        column: String,
    },
    Lookup {
        slot: usize,
        out: usize,
        table: HashMap<String, String>,
        on_missing: OnMissing,
        bucket: String,
        column: String,
    },
    Cast {
        slot: usize,
        out: usize,
        to: ColumnType,
        on_error: OnError,
        bucket: String,
        column: String,
    },
}

#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub table: String,
    pub format: Format,
    /// Declared columns: (name, type, required); slot i is declared column i.
    pub declared: Vec<(String, ColumnType, bool)>,
    pub declared_paths: Vec<String>,
    /// How each declared column reads text: null values, default, number locale.
    pub text_rules: Vec<pipeline::values::TextRules>,
    pub slot_types: Vec<ColumnType>,
    pub json_tree: JsonTree,
    pub csv_delimiter: u8,
    pub csv_quote: u8,
    pub steps: Vec<StepOp>,
    pub dedupe_at: Option<usize>,
    pub output: OutputSection,
    pub output_slots: Vec<usize>,
    pub output_schema: SchemaRef,
    pub partition_names: Vec<String>,
    pub partition_slots: Vec<usize>,
    /// Every bucket a step can put rows in (so counts always show them, zero or not).
    pub buckets: Vec<(bool, String)>,
    /// The row-level `[[expect]]` checks, by expectation name: each counts the output rows
    /// that make its predicate false.
    pub checks: Vec<(String, SlotExpr)>,
    /// The longest output string the warehouse holds (set from the task; Redshift 65,535):
    /// rows with a longer value are quarantined in bucket `too_long`.
    pub max_string_bytes: Option<u64>,
    /// `[schema] on_new_column = "freeze"`: a record with an undeclared field is rejected.
    pub freeze: bool,
}

/// Compiles an expression against the columns live at its step (each name's latest slot).
pub(crate) fn slot_expr(
    sql: &str,
    predicate: bool,
    names: &HashMap<String, usize>,
    types: &[ColumnType],
) -> Result<SlotExpr, pipeline::expr::ExprError> {
    let mut live: Vec<(&String, usize)> = names.iter().map(|(n, s)| (n, *s)).collect();
    live.sort_by_key(|(_, s)| *s);
    let columns: Vec<(String, ColumnType)> = live
        .iter()
        .map(|(n, s)| ((*n).clone(), types[*s]))
        .collect();
    let expr = if predicate {
        pipeline::expr::compile_predicate(sql, &columns)?
    } else {
        pipeline::expr::compile(sql, &columns)?
    };
    let inputs = expr.inputs.iter().map(|n| names[n]).collect();
    Ok(SlotExpr { expr, inputs })
}

/// Compiles the row-level expectations against the columns live after the last step.
fn row_checks(
    p: &Pipeline,
    names: &HashMap<String, usize>,
    types: &[ColumnType],
) -> Result<Vec<(String, SlotExpr)>, WorkerError> {
    use pipeline::expect::Check;
    let mut out = Vec::new();
    for x in &p.expectations {
        if let Check::Rows { predicate, .. } = &x.check {
            let e = slot_expr(predicate, true, names, types).map_err(|e| {
                WorkerError::Config(format!("{}: expectation {:?}: {e}", p.path, x.name))
            })?;
            out.push((x.name.clone(), e));
        }
    }
    Ok(out)
}

impl Plan {
    /// Index of declared column `c` in a CSV header (by its path), if present.
    pub fn csv_index(&self, header: &[String], c: usize) -> Option<usize> {
        let want = &self.declared_paths[c];
        header.iter().position(|h| h == want)
    }

    /// Refuses a CSV header that lacks a declared column: a misspelled header name would
    /// otherwise run with the column silently all NULL. Names the column, its header name, the
    /// file and what the header holds.
    pub fn check_csv_header(&self, header: &[String], key: &str) -> Result<(), WorkerError> {
        let missing: Vec<String> = (0..self.declared.len())
            .filter(|&c| self.csv_index(header, c).is_none())
            .map(|c| {
                let (name, path) = (&self.declared[c].0, &self.declared_paths[c]);
                if name == path {
                    format!("{name:?}")
                } else {
                    format!("{path:?} (column {name:?})")
                }
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = header.iter().take(40).map(String::as_str).collect();
        Err(WorkerError::Corrupt {
            key: key.into(),
            detail: format!(
                "the CSV header has no {}; it holds {:?}{} (a column's header name is its `path`, else its `name`)",
                missing.join(", "),
                shown,
                if header.len() > shown.len() {
                    " …"
                } else {
                    ""
                }
            ),
        })
    }

    pub fn build(p: &Pipeline) -> Result<Plan, WorkerError> {
        let f = &p.file;
        let mut slot_types: Vec<ColumnType> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut declared = Vec::new();
        let mut paths = Vec::new();
        let mut text_rules = Vec::new();
        for (i, c) in f.columns.iter().enumerate() {
            text_rules.push(pipeline::columns::text_rules(c).map_err(|(key, m)| {
                WorkerError::Config(format!("{}: columns[{i}].{key}: {m}", p.path))
            })?);
            names.insert(c.name.clone(), slot_types.len());
            slot_types.push(c.ty);
            declared.push((c.name.clone(), c.ty, c.required));
            paths.push(c.path().to_string());
        }
        let json_tree = JsonTree::build(
            &paths
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, p)| (p, i, declared[i].1 == ColumnType::Json))
                .collect::<Vec<_>>(),
        );
        let mut cx = crate::compile::Compiler {
            p,
            slots: crate::compile::Slots {
                names,
                types: slot_types,
            },
            buckets: Vec::new(),
        };
        let mut steps = Vec::new();
        let mut dedupe_at = None;
        for (i, step) in f.steps.iter().enumerate() {
            if matches!(step, Step::Dedupe(_)) {
                dedupe_at = Some(i);
            }
            steps.push(cx.step(i, step)?);
        }
        let crate::compile::Compiler {
            slots:
                crate::compile::Slots {
                    names,
                    types: slot_types,
                },
            buckets,
            ..
        } = cx;
        let slot =
            |names: &HashMap<String, usize>, n: &str| *names.get(n).expect("validated column");
        let output_slots: Vec<usize> = f.output.columns.iter().map(|c| slot(&names, c)).collect();
        let fields: Vec<Field> = f
            .output
            .columns
            .iter()
            .zip(&output_slots)
            .map(|(n, s)| slot_types[*s].field(n))
            .collect();
        let partition_slots = f
            .output
            .partition_by
            .iter()
            .map(|c| slot(&names, c))
            .collect();
        let checks = row_checks(p, &names, &slot_types)?;
        Ok(Plan {
            name: p.name().to_string(),
            table: p.table().to_string(),
            format: f.source.format,
            declared,
            declared_paths: paths,
            text_rules,
            slot_types,
            json_tree,
            csv_delimiter: f.source.csv.delimiter.as_bytes()[0],
            csv_quote: f.source.csv.quote.as_bytes()[0],
            steps,
            dedupe_at,
            output: f.output.clone(),
            output_slots,
            output_schema: schema_of(fields),
            partition_names: f.output.partition_by.clone(),
            partition_slots,
            buckets,
            checks,
            max_string_bytes: None,
            freeze: f.schema.on_new_column == pipeline::OnNewColumn::Freeze,
        })
    }

    /// SHA-256 of the output schema (names, types, nullability) and partition columns.
    pub fn schema_digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for f in self.output_schema.fields() {
            let ext = f.metadata().get(pipeline::expr::types::EXTENSION_NAME);
            let ext = ext.map(|e| format!(":{e}")).unwrap_or_default();
            h.update(
                format!("{}:{}:{}{ext}\n", f.name(), f.data_type(), f.is_nullable()).as_bytes(),
            );
        }
        for p in &self.partition_names {
            h.update(format!("partition:{p}\n").as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A step's output column: `output` when set, otherwise the column it transforms.
pub(crate) fn output_name<'a>(output: &'a Option<String>, column: &'a str) -> &'a str {
    output.as_deref().unwrap_or(column)
}

/// Loads a two-column mapping from a CSV reference file with a header.
pub(crate) fn load_reference(
    path: &std::path::Path,
    key: &str,
    value: &str,
) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reference file {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let ki = header
        .iter()
        .position(|h| *h == key)
        .ok_or_else(|| format!("{}: no column {key:?} in the header", path.display()))?;
    let vi = header
        .iter()
        .position(|h| *h == value)
        .ok_or_else(|| format!("{}: no column {value:?} in the header", path.display()))?;
    let mut map = HashMap::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(format!(
                "{} line {}: {} fields, the header has {}",
                path.display(),
                n + 2,
                fields.len(),
                header.len()
            ));
        }
        map.insert(fields[ki].trim().to_string(), fields[vi].trim().to_string());
    }
    Ok(map)
}

pub type SharedPlan = Arc<Plan>;
