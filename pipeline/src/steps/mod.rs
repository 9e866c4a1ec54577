//! The steps of a pipeline, one module per kind. Each module holds the kind's whole life:
//!
//! - its **spec**: the TOML keys of a `[[steps]]` entry with that `op` (serde, unknown keys
//!   refused; the doc comments are what users read);
//! - its **check** ([`StepKind::check`]): pure validation against the columns live before it,
//!   adding the columns it writes;
//! - its **compilation** ([`StepKind::compile`]): slots resolved, regexes and expressions built,
//!   key and reference files read through [`Resources`] (this crate does no I/O of its own);
//! - its **kernel** ([`Kernel::run`]): vectorised over the Arrow columns of a batch of rows
//!   ([`Rows`], which the worker implements for its pieces).
//!
//! A new step is one new file here plus its line in [`Step`] (the `steps!` list below).
//! `dedupe` is the one step whose kernel is not here: it keeps one key set per shard across
//! pieces, which is the worker's business (`worker/src/engine/dedupe.rs`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, BooleanArray};
use serde::{Deserialize, Serialize};

use crate::validate::valid_name;
use crate::{ColumnType, ConfigError, OnError};

pub mod case;
pub mod cast;
pub mod date;
pub mod dedupe;
pub mod derive;
pub mod filter;
pub mod hash;
pub mod ipv4_truncate;
pub mod lookup;
pub mod parse_timestamp;
pub mod regex_replace;
pub mod reject;
mod strings;

pub use case::{CaseStep, TrimStep};
pub use cast::CastStep;
pub use date::DateStep;
pub use dedupe::DedupeStep;
pub use derive::DeriveStep;
pub use filter::{Condition, FilterStep};
pub use hash::{HashAlgorithm, HashStep};
pub use ipv4_truncate::Ipv4TruncateStep;
pub use lookup::{LookupStep, OnMissing};
pub use parse_timestamp::ParseTimestampStep;
pub use regex_replace::RegexReplaceStep;
pub use reject::RejectStep;

/// Rows a kernel could not handle: (row index, reason).
pub type Failures = Vec<(usize, String)>;

/// Declares [`Step`] (the `op` tag → its spec) and dispatches to each kind's [`StepKind`].
macro_rules! steps {
    ($($(#[$doc:meta])* $variant:ident($spec:ty) = $op:literal,)*) => {
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Step {
            $($(#[$doc])* $variant($spec),)*
        }

        impl Step {
            /// The `op` of the entry.
            pub fn op(&self) -> &'static str {
                match self {
                    $(Step::$variant(_) => $op,)*
                }
            }

            fn kind(&self) -> &dyn StepKind {
                match self {
                    $(Step::$variant(s) => s,)*
                }
            }
        }
    };
}

steps! {
    /// Drop rows matching any of the conditions (counted in `bucket`).
    Filter(FilterStep) = "filter",
    /// Keep the first row of each key (in source order); later ones count as duplicates.
    Dedupe(DedupeStep) = "dedupe",
    Cast(CastStep) = "cast",
    Trim(TrimStep) = "trim",
    Upper(CaseStep) = "upper",
    Lower(CaseStep) = "lower",
    RegexReplace(RegexReplaceStep) = "regex_replace",
    ParseTimestamp(ParseTimestampStep) = "parse_timestamp",
    /// The UTC calendar date of a timestamp column.
    Date(DateStep) = "date",
    Hash(HashStep) = "hash",
    Ipv4Truncate(Ipv4TruncateStep) = "ipv4_truncate",
    Lookup(LookupStep) = "lookup",
    /// Adds a column computed by an SQL expression, or replaces the column of the same name.
    Derive(DeriveStep) = "derive",
    /// Quarantines the rows where an SQL condition holds, with a reason.
    Reject(RejectStep) = "reject",
}

impl Step {
    /// Checks the step against the columns before it and adds the columns it writes.
    pub fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        self.kind().check(cx, cols)
    }

    /// Compiles the step against the slots live before it.
    pub fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        self.kind().compile(cx)
    }
}

/// What every step kind provides. `cx.op` tells kinds that share a spec (`upper`, `lower`)
/// apart.
pub trait StepKind {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError>;
    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String>;
}

/// A compiled step.
#[derive(Debug)]
pub enum Compiled {
    /// Runs on every batch of rows independently (in parallel).
    Kernel(Box<dyn Kernel>),
    /// Keep-first dedupe over these slots: runs in order across the batches of a shard.
    Dedupe(Vec<usize>),
}

/// A step's vectorised kernel.
pub trait Kernel: Debug + Send + Sync {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError>;
}

/// A batch of rows as the kernels see it: column slots (declared columns, then step outputs)
/// and the two ways a row leaves — dropped by a filter (counted in a bucket) or quarantined with
/// a reason.
pub trait Rows {
    /// Live rows.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The column in `slot` (set by parsing or an earlier step).
    fn column(&self, slot: usize) -> &ArrayRef;
    fn set_column(&mut self, slot: usize, column: ArrayRef);
    /// Drops the rows where `drop` is true, counted in the filtered `bucket`.
    fn drop_rows(&mut self, drop: &[bool], bucket: &str) -> Result<(), StepError>;
    /// Quarantines rows (index, reason) into `bucket` and drops them.
    fn quarantine(&mut self, rows: Failures, bucket: &str) -> Result<(), StepError>;
}

/// What a fallible kernel's failures mean for their rows: quarantined with the column named
/// (`on_error = "reject"`) or kept with a null (`"null"`).
pub fn fail(
    rows: &mut dyn Rows,
    failures: Failures,
    on_error: OnError,
    bucket: &str,
    column: &str,
) -> Result<(), StepError> {
    if failures.is_empty() || on_error == OnError::Null {
        return Ok(());
    }
    let failures = failures
        .into_iter()
        .map(|(i, reason)| (i, format!("{column}: {reason}")))
        .collect();
    rows.quarantine(failures, bucket)
}

/// A step that could not run at all (not a row's failure): names the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step}: {detail}")]
pub struct StepError {
    pub step: String,
    pub detail: String,
}

impl StepError {
    pub fn new(step: &str, detail: impl Into<String>) -> Self {
        StepError {
            step: step.into(),
            detail: detail.into(),
        }
    }
}

// ---- checking ----

/// Counters every run has; a step's bucket may not take their names.
const RESERVED_BUCKETS: [&str; 4] = ["lines_total", "malformed", "duplicates", "rows_out"];

/// The columns known at a point of the pipeline: declared ones, then step outputs, in order.
#[derive(Debug, Default)]
pub struct Columns(pub Vec<(String, ColumnType)>);

impl Columns {
    /// The type of the latest column of that name.
    pub fn ty(&self, name: &str) -> Option<ColumnType> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }

    pub fn push(&mut self, name: &str, ty: ColumnType) {
        self.0.push((name.to_string(), ty));
    }
}

/// Checks one step: makes its errors (`steps[i] (op).field`, at the field's line).
pub struct CheckCx<'a> {
    /// `steps[i] (op)`.
    pub entry: String,
    pub op: &'static str,
    pub err: &'a dyn Fn(&str, String) -> ConfigError,
}

impl CheckCx<'_> {
    pub fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        (self.err)(&format!("{}.{field}", self.entry), message.into())
    }

    pub fn need(&self, cols: &Columns, name: &str, field: &str) -> Result<ColumnType, ConfigError> {
        cols.ty(name)
            .ok_or_else(|| self.err(field, format!("unknown column {name:?}")))
    }

    pub fn need_string(&self, cols: &Columns, name: &str, field: &str) -> Result<(), ConfigError> {
        match self.need(cols, name, field)? {
            ColumnType::String => Ok(()),
            t => Err(self.err(
                field,
                format!("column {name:?} is {t}, this step needs a string"),
            )),
        }
    }

    pub fn out_name(&self, o: Option<&str>, field: &str) -> Result<(), ConfigError> {
        match o {
            Some(o) if !valid_name(o) => {
                Err(self.err(field, format!("{o:?} is not a valid column name")))
            }
            _ => Ok(()),
        }
    }

    pub fn bucket(&self, b: &str) -> Result<(), ConfigError> {
        if !valid_name(b) || RESERVED_BUCKETS.contains(&b) {
            return Err(self.err("bucket", format!("{b:?} is not a usable bucket name")));
        }
        Ok(())
    }

    /// A step that reads `column` (a string) and writes `output` (default: `column`) as `ty`.
    pub fn string_to(
        &self,
        cols: &mut Columns,
        column: &str,
        output: Option<&str>,
        ty: ColumnType,
    ) -> Result<(), ConfigError> {
        self.need_string(cols, column, "column")?;
        self.out_name(output, "output")?;
        cols.push(output.unwrap_or(column), ty);
        Ok(())
    }

    /// Type-checks an expression against the columns so far; refusals name the key and position.
    pub fn expr(&self, sql: &str, field: &str, cols: &Columns) -> Result<ColumnType, ConfigError> {
        crate::expr::compile(sql, &cols.0)
            .map(|e| e.ty)
            .map_err(|e| self.err(field, e.to_string()))
    }

    pub fn predicate(&self, sql: &str, field: &str, cols: &Columns) -> Result<(), ConfigError> {
        crate::expr::compile_predicate(sql, &cols.0)
            .map(|_| ())
            .map_err(|e| self.err(field, e.to_string()))
    }
}

// ---- compiling ----

/// What compiling reads from outside: key files, key environment variables, reference files.
/// The worker passes the real file system and environment; tests pass fixtures.
pub trait Resources {
    fn env(&self, var: &str) -> Option<String>;
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// The columns live while the steps compile: each name's latest slot and every slot's type.
#[derive(Debug, Default)]
pub struct Slots {
    pub names: HashMap<String, usize>,
    pub types: Vec<ColumnType>,
}

impl Slots {
    /// The slot of a column the validation has seen.
    pub fn get(&self, name: &str) -> usize {
        *self.names.get(name).expect("validated column")
    }

    /// A new slot for `name` (a later step reading `name` reads it).
    pub fn add(&mut self, name: &str, ty: ColumnType) -> usize {
        self.names.insert(name.to_string(), self.types.len());
        self.types.push(ty);
        self.types.len() - 1
    }

    /// The slot a step reads (`column`) and the new slot it writes (`output`, else the column).
    pub fn derived(
        &mut self,
        column: &str,
        output: &Option<String>,
        ty: ColumnType,
    ) -> (usize, usize) {
        let slot = self.get(column);
        (slot, self.add(output_name(output, column), ty))
    }

    pub fn all(&self, names: &[String]) -> Vec<usize> {
        names.iter().map(|n| self.get(n)).collect()
    }

    /// Compiles an expression against the columns live here (each name's latest slot).
    pub fn expr(&self, sql: &str, predicate: bool) -> Result<SlotExpr, crate::expr::ExprError> {
        let mut live: Vec<(&String, usize)> = self.names.iter().map(|(n, s)| (n, *s)).collect();
        live.sort_by_key(|(_, s)| *s);
        let columns: Vec<(String, ColumnType)> = live
            .iter()
            .map(|(n, s)| ((*n).clone(), self.types[*s]))
            .collect();
        let expr = if predicate {
            crate::expr::compile_predicate(sql, &columns)?
        } else {
            crate::expr::compile(sql, &columns)?
        };
        let inputs = expr.inputs.iter().map(|n| self.names[n]).collect();
        Ok(SlotExpr { expr, inputs })
    }
}

/// The state of compiling one pipeline's steps.
pub struct CompileCx<'a> {
    /// Index of the step compiling now, and its `op`.
    pub index: usize,
    pub op: &'static str,
    pub slots: Slots,
    /// Every bucket a step can put rows in: (rejected, name).
    pub buckets: Vec<(bool, String)>,
    pub resources: &'a dyn Resources,
    /// Folder the pipeline file's relative paths resolve against.
    pub base_dir: PathBuf,
}

impl CompileCx<'_> {
    /// A bucket rows of this step can be quarantined in (`rejected = true`) or filtered into.
    pub fn bucket(&mut self, rejected: bool, name: &str) {
        self.buckets.push((rejected, name.to_string()));
    }

    /// A path from the pipeline file, against its folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// A step's output column: `output` when set, otherwise the column it transforms.
pub fn output_name<'a>(output: &'a Option<String>, column: &'a str) -> &'a str {
    output.as_deref().unwrap_or(column)
}

/// A compiled SQL expression and the slots of the columns it reads (in its input order).
#[derive(Debug)]
pub struct SlotExpr {
    pub expr: crate::expr::Expression,
    pub inputs: Vec<usize>,
}

impl SlotExpr {
    fn columns(&self, rows: &dyn Rows) -> Vec<ArrayRef> {
        self.inputs
            .iter()
            .map(|s| rows.column(*s).clone())
            .collect()
    }

    /// The values of the expression, and the rows it could not compute.
    pub fn evaluate(&self, rows: &dyn Rows) -> Result<(ArrayRef, Failures), StepError> {
        self.expr
            .evaluate(self.columns(rows), rows.len())
            .map_err(|d| StepError::new("expression", d))
    }

    /// Where the predicate holds, and the rows it could not compute.
    pub fn predicate(&self, rows: &dyn Rows) -> Result<(BooleanArray, Failures), StepError> {
        self.expr
            .evaluate_predicate(self.columns(rows), rows.len())
            .map_err(|d| StepError::new("expression", d))
    }
}

/// Compiled kernels are boxed; a helper for the kinds.
pub(crate) fn kernel(k: impl Kernel + 'static) -> Result<Compiled, String> {
    Ok(Compiled::Kernel(Box::new(k)))
}

#[cfg(test)]
pub(crate) mod testing;
