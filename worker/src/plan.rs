//! A validated pipeline compiled for execution: column slots, steps with their regexes, keys and
//! reference tables loaded, the JSON path tree and the output schema.
//!
//! Building a plan reads key files, key environment variables and reference files; every failure
//! names the pipeline file and the step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::{Field, SchemaRef};
use pipeline::steps::{CompileCx, Compiled, Resources, SlotExpr, Slots};

use crate::WorkerError;
use crate::config::{ColumnType, Format, OutputSection, Pipeline};
use crate::engine::{JsonTree, schema_of};
use pipeline::OnNewColumn;

/// The worker's resources for compiling steps: the process environment and the file system.
pub struct Host;

impl Resources for Host {
    fn env(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
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
    pub steps: Vec<Compiled>,
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
    /// `[schema] on_new_column`: what becomes of a JSON record's undeclared fields.
    pub on_new_column: OnNewColumn,
    /// For each declared column, the text bytes per row of the last piece parsed (0: none yet):
    /// a piece's string builders start that large instead of growing (and copying) to it.
    pub value_bytes: Vec<std::sync::atomic::AtomicUsize>,
    /// Names an evolved column cannot take: every column of the plan, the partition columns and
    /// the warehouse's lineage columns.
    pub taken_names: HashSet<String>,
}

/// See [`Plan::taken_names`].
fn taken_names(slots: &HashMap<String, usize>, o: &OutputSection) -> HashSet<String> {
    use backends::warehouse::{BATCH_COLUMN, SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN};
    let mut taken: HashSet<String> = slots.keys().cloned().collect();
    taken.extend(o.columns.iter().cloned());
    taken.extend(o.partition_by.iter().cloned());
    taken.extend([BATCH_COLUMN, SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN].map(String::from));
    taken
}

/// Compiles the row-level expectations against the columns live after the last step.
fn row_checks(p: &Pipeline, slots: &Slots) -> Result<Vec<(String, SlotExpr)>, WorkerError> {
    use pipeline::expect::Check;
    let mut out = Vec::new();
    for x in &p.expectations {
        if let Check::Rows { predicate, .. } = &x.check {
            let e = slots.expr(predicate, true).map_err(|e| {
                WorkerError::Config(format!("{}: expectation {:?}: {e}", p.path, x.name))
            })?;
            out.push((x.name.clone(), e));
        }
    }
    Ok(out)
}

impl Plan {
    /// The key slots of the pipeline's dedupe step, if it has one.
    pub fn dedupe_slots(&self) -> Option<&[usize]> {
        match &self.steps[self.dedupe_at?] {
            Compiled::Dedupe(slots) => Some(slots),
            _ => unreachable!("dedupe_at points at a dedupe"),
        }
    }

    /// The evolved columns of a record's undeclared fields (dotted path, raw JSON): each named
    /// for its path, those whose name is taken dropped.
    pub(crate) fn evolved_names<'a>(&self, found: &[(String, &'a str)]) -> Vec<(String, &'a str)> {
        found
            .iter()
            .map(|(path, raw)| (crate::engine::evolved_column_name(path), *raw))
            .filter(|(name, _)| !self.taken_names.contains(name))
            .collect()
    }

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
        let (steps, slots, buckets) = compile_steps(
            p,
            Slots {
                names,
                types: slot_types,
            },
        )?;
        let dedupe_at = steps.iter().position(|s| matches!(s, Compiled::Dedupe(_)));
        let Slots {
            names,
            types: slot_types,
        } = slots;
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
        let checks = row_checks(
            p,
            &Slots {
                names: names.clone(),
                types: slot_types.clone(),
            },
        )?;
        let declared_count = declared.len();
        Ok(Plan {
            name: p.name().to_string(),
            table: p.table().to_string(),
            format: f.source.format(),
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
            on_new_column: f.schema.on_new_column,
            taken_names: taken_names(&names, &f.output),
            value_bytes: (0..declared_count).map(|_| Default::default()).collect(),
        })
    }

    /// SHA-256 of a shard's output schema (names, types, nullability; the plan's, grown by any
    /// evolved columns) and the partition columns.
    pub fn schema_digest(&self, schema: &arrow::datatypes::Schema) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for f in schema.fields() {
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

/// Compiles the steps in order against the slots live at each (`pipeline::steps`); a failure
/// names the pipeline file and the step.
#[allow(clippy::type_complexity)]
fn compile_steps(
    p: &Pipeline,
    slots: Slots,
) -> Result<(Vec<Compiled>, Slots, Vec<(bool, String)>), WorkerError> {
    let mut cx = CompileCx {
        index: 0,
        op: "",
        slots,
        buckets: Vec::new(),
        resources: &Host,
        base_dir: p.base_dir.clone(),
    };
    let mut steps = Vec::with_capacity(p.file.steps.len());
    for (i, step) in p.file.steps.iter().enumerate() {
        (cx.index, cx.op) = (i, step.op());
        let c = step.compile(&mut cx).map_err(|detail| {
            WorkerError::Config(format!("{}: steps[{i}] ({}): {detail}", p.path, step.op()))
        })?;
        steps.push(c);
    }
    Ok((steps, cx.slots, cx.buckets))
}

pub type SharedPlan = Arc<Plan>;
