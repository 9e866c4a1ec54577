//! Compiling a pipeline's steps into [`StepOp`]s, one function per step kind, against the
//! column slots live at each step. Reads the key files, key environment variables and reference
//! files the steps name; every failure names the pipeline file and the step.

use std::collections::HashMap;

use crate::WorkerError;
use crate::config::{
    CastStep, ColumnType, Condition, DeriveStep, FilterStep, HashStep, Ipv4TruncateStep,
    LookupStep, OnMissing, ParseTimestampStep, Pipeline, RegexReplaceStep, RejectStep, Step,
};
use crate::plan::{Cond, CondKind, SlotExpr, StepOp, load_reference, output_name, slot_expr};
use crate::transform::TimestampFormat;

/// The columns live while the steps compile: each name's latest slot and every slot's type.
#[derive(Debug, Default)]
pub(crate) struct Slots {
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
    fn derived(&mut self, column: &str, output: &Option<String>, ty: ColumnType) -> (usize, usize) {
        let slot = self.get(column);
        (slot, self.add(output_name(output, column), ty))
    }

    fn all(&self, names: &[String]) -> Vec<usize> {
        names.iter().map(|n| self.get(n)).collect()
    }

    fn expr(&self, sql: &str, predicate: bool) -> Result<SlotExpr, pipeline::expr::ExprError> {
        slot_expr(sql, predicate, &self.names, &self.types)
    }
}

/// The state of compiling one pipeline's steps.
pub(crate) struct Compiler<'a> {
    pub p: &'a Pipeline,
    pub slots: Slots,
    /// Every bucket a step can put rows in: (rejected, name).
    pub buckets: Vec<(bool, String)>,
}

impl Compiler<'_> {
    fn err(&self, i: usize, op: &str, detail: String) -> WorkerError {
        WorkerError::Config(format!("{}: steps[{i}] ({op}): {detail}", self.p.path))
    }

    /// Compiles step `i`.
    pub fn step(&mut self, i: usize, step: &Step) -> Result<StepOp, WorkerError> {
        Ok(match step {
            Step::Filter(s) => self.filter(i, s)?,
            Step::Derive(s) => self.derive(i, s)?,
            Step::Reject(s) => self.reject(i, s)?,
            Step::Dedupe(s) => StepOp::Dedupe {
                slots: self.slots.all(&s.keys),
            },
            Step::Trim(s) => StepOp::Trim {
                slots: self.slots.all(&s.columns),
                chars: s.chars.clone(),
            },
            Step::Upper(s) => StepOp::Upper {
                slots: self.slots.all(&s.columns),
            },
            Step::Lower(s) => StepOp::Lower {
                slots: self.slots.all(&s.columns),
            },
            Step::RegexReplace(s) => self.regex_replace(i, s)?,
            Step::ParseTimestamp(s) => self.parse_timestamp(i, s)?,
            Step::Date(s) => {
                let slot = self.slots.get(&s.column);
                let out = self.slots.add(&s.output, ColumnType::Date);
                StepOp::Date { slot, out }
            }
            Step::Hash(s) => self.hash(i, s)?,
            Step::Ipv4Truncate(s) => self.ipv4_truncate(s),
            Step::Lookup(s) => self.lookup(i, s)?,
            Step::Cast(s) => self.cast(s),
        })
    }

    fn filter(&mut self, i: usize, s: &FilterStep) -> Result<StepOp, WorkerError> {
        self.buckets.push((false, s.bucket.clone()));
        let conds = s
            .drop_if_any
            .iter()
            .map(|c: &Condition| Cond {
                slot: self.slots.get(&c.column),
                kind: match (&c.equals, &c.contains, c.is_null) {
                    (Some(e), _, _) => CondKind::Equals(e.clone(), c.ignore_case),
                    (_, Some(s), _) => CondKind::Contains(s.clone(), c.ignore_case),
                    (_, _, Some(n)) => CondKind::IsNull(n),
                    _ => unreachable!("validated"),
                },
            })
            .collect();
        let predicate = match &s.drop_where {
            Some(sql) => {
                // A row whose condition cannot be computed is rejected, not dropped.
                self.buckets.push((true, "rejected".into()));
                Some(
                    self.slots
                        .expr(sql, true)
                        .map_err(|e| self.err(i, "filter", format!("drop_where: {e}")))?,
                )
            }
            None => None,
        };
        Ok(StepOp::Filter {
            conds,
            predicate,
            bucket: s.bucket.clone(),
        })
    }

    fn derive(&mut self, i: usize, s: &DeriveStep) -> Result<StepOp, WorkerError> {
        self.buckets.push((true, s.bucket.clone()));
        let expr = self
            .slots
            .expr(&s.expr, false)
            .map_err(|e| self.err(i, "derive", format!("expr: {e}")))?;
        let out = self.slots.add(&s.column, expr.expr.ty);
        Ok(StepOp::Derive {
            expr,
            out,
            on_error: s.on_error,
            bucket: s.bucket.clone(),
            column: s.column.clone(),
        })
    }

    fn reject(&mut self, i: usize, s: &RejectStep) -> Result<StepOp, WorkerError> {
        self.buckets.push((true, s.bucket.clone()));
        let predicate = self
            .slots
            .expr(&s.condition, true)
            .map_err(|e| self.err(i, "reject", format!("where: {e}")))?;
        Ok(StepOp::Reject {
            predicate,
            bucket: s.bucket.clone(),
            reason: s
                .reason
                .clone()
                .unwrap_or_else(|| format!("steps[{i}] (reject): {}", s.condition)),
        })
    }

    fn regex_replace(&mut self, i: usize, s: &RegexReplaceStep) -> Result<StepOp, WorkerError> {
        let slot = self.slots.get(&s.column);
        let re = regex::Regex::new(&s.pattern)
            .map_err(|e| self.err(i, "regex_replace", e.to_string()))?;
        let out = self
            .slots
            .add(output_name(&s.output, &s.column), ColumnType::String);
        Ok(StepOp::Regex {
            slot,
            out,
            re,
            replacement: s.replacement.clone(),
        })
    }

    fn parse_timestamp(&mut self, i: usize, s: &ParseTimestampStep) -> Result<StepOp, WorkerError> {
        self.buckets.push((true, s.bucket.clone()));
        let slot = self.slots.get(&s.column);
        let format =
            TimestampFormat::new(&s.format).map_err(|e| self.err(i, "parse_timestamp", e))?;
        let out = self
            .slots
            .add(output_name(&s.output, &s.column), ColumnType::Timestamp);
        Ok(StepOp::ParseTs {
            slot,
            out,
            format,
            on_error: s.on_error,
            bucket: s.bucket.clone(),
            column: s.column.clone(),
        })
    }

    fn hash(&mut self, i: usize, s: &HashStep) -> Result<StepOp, WorkerError> {
        let key = self.hash_key(i, s)?;
        let (slot, out) = self.slots.derived(&s.column, &s.output, ColumnType::String);
        Ok(StepOp::Hash {
            slot,
            out,
            algorithm: s.algorithm,
            key,
        })
    }

    /// A hash step's key, from its environment variable or its key file (a trailing line end
    /// is not part of the key).
    fn hash_key(&self, i: usize, s: &HashStep) -> Result<Vec<u8>, WorkerError> {
        let key = match (&s.key_env, &s.key_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| {
                    self.err(
                        i,
                        "hash",
                        format!("environment variable {var} (key_env) is not set"),
                    )
                })?
                .into_bytes(),
            (_, Some(file)) => {
                let path = self.p.resolve(file);
                let mut k = std::fs::read(&path).map_err(|e| {
                    self.err(i, "hash", format!("key_file {}: {e}", path.display()))
                })?;
                if k.ends_with(b"\n") {
                    k.pop();
                    if k.ends_with(b"\r") {
                        k.pop();
                    }
                }
                k
            }
            _ => unreachable!("validated"),
        };
        if key.is_empty() {
            return Err(self.err(i, "hash", "the key is empty".into()));
        }
        Ok(key)
    }

    fn ipv4_truncate(&mut self, s: &Ipv4TruncateStep) -> StepOp {
        self.buckets.push((true, s.bucket.clone()));
        let (slot, out) = self.slots.derived(&s.column, &s.output, ColumnType::String);
        StepOp::Ipv4 {
            slot,
            out,
            keep: s.keep_octets,
            on_error: s.on_error,
            bucket: s.bucket.clone(),
            column: s.column.clone(),
        }
    }

    fn lookup(&mut self, i: usize, s: &LookupStep) -> Result<StepOp, WorkerError> {
        if s.on_missing == OnMissing::Reject {
            self.buckets.push((true, s.bucket.clone()));
        }
        let path = self.p.resolve(&s.file);
        let table = load_reference(&path, &s.key_field, &s.value_field)
            .map_err(|e| self.err(i, "lookup", e))?;
        let slot = self.slots.get(&s.column);
        let out = self.slots.add(&s.output, ColumnType::String);
        Ok(StepOp::Lookup {
            slot,
            out,
            table,
            on_missing: s.on_missing,
            bucket: s.bucket.clone(),
            column: s.column.clone(),
        })
    }

    fn cast(&mut self, s: &CastStep) -> StepOp {
        self.buckets.push((true, s.bucket.clone()));
        let (slot, out) = self.slots.derived(&s.column, &s.output, s.to);
        StepOp::Cast {
            slot,
            out,
            to: s.to,
            on_error: s.on_error,
            bucket: s.bucket.clone(),
            column: s.column.clone(),
        }
    }
}
