//! Running the compiled steps over a piece of rows (the kernels are `pipeline::steps`; a piece
//! is their [`Rows`]), the warehouse's string limit and the expectations' counts.

use pipeline::steps::{Compiled, Rows, StepError};

use super::*;

impl Rows for Piece {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn column(&self, slot: usize) -> &ArrayRef {
        self.cols.get(slot).expect("set")
    }
    fn set_column(&mut self, slot: usize, column: ArrayRef) {
        self.cols.set(slot, column);
    }
    fn drop_rows(&mut self, drop: &[bool], bucket: &str) -> Result<(), StepError> {
        let dropped = drop.iter().filter(|d| **d).count() as u64;
        *self.counts.filtered.entry(bucket.to_string()).or_default() += dropped;
        self.keep(drop.iter().map(|d| !d).collect())
            .map_err(|e| StepError::new("filter", e.to_string()))
    }
    fn quarantine(&mut self, rows: Failures, bucket: &str) -> Result<(), StepError> {
        self.quarantine_rows(rows, bucket)
            .map_err(|e| StepError::new(bucket, e.to_string()))
    }
}

/// The bucket of rows with an output string longer than the warehouse holds.
pub const TOO_LONG: &str = "too_long";

/// Quarantines the rows whose output strings are longer than the warehouse can hold (Redshift's
/// VARCHAR: 65,535 bytes), with the column and the length: never truncated silently.
pub(crate) fn enforce_string_limit(plan: &Plan, piece: &mut Piece) -> Result<(), WorkerError> {
    let Some(limit) = plan.max_string_bytes else {
        return Ok(());
    };
    let mut failed: Vec<(usize, String)> = Vec::new();
    // One reason per row: the first column over the limit.
    let mut flagged = vec![false; piece.rows.len()];
    let declared = plan
        .output
        .columns
        .iter()
        .zip(&plan.output_slots)
        .filter_map(|(name, slot)| Some((name.as_str(), piece.cols.get(*slot)?)));
    let evolved = piece.extra.iter().map(|(f, a)| (f.name().as_str(), a));
    for (name, a) in declared.chain(evolved) {
        if a.data_type() != &DataType::Utf8 {
            continue;
        }
        let s = a.as_string::<i32>();
        for (r, seen) in flagged.iter_mut().enumerate() {
            let n = if s.is_valid(r) {
                s.value_length(r) as u64
            } else {
                0
            };
            if n > limit && !*seen {
                *seen = true;
                failed.push((
                    r,
                    format!("column {name:?} holds {n} bytes; the warehouse holds at most {limit} (values are never truncated)"),
                ));
            }
        }
    }
    failed.sort_by_key(|(r, _)| *r);
    piece.quarantine_rows(failed, TOO_LONG)
}

/// Counts, per row-level expectation, the piece's rows that make its predicate false (a row
/// whose predicate cannot be computed breaks it too). Rows stay: expectations only count.
pub(crate) fn count_checks(plan: &Plan, piece: &mut Piece) -> Result<(), WorkerError> {
    for (name, check) in &plan.checks {
        let broken = if piece.rows.is_empty() {
            0
        } else {
            let (held, errors) = check.predicate(piece)?;
            let failed: std::collections::HashSet<usize> = errors.iter().map(|(r, _)| *r).collect();
            let held_ok = held
                .values()
                .set_indices()
                .filter(|r| !failed.contains(r))
                .count();
            (piece.rows.len() - held_ok) as u64
        };
        *piece.counts.quality.entry(name.clone()).or_default() += broken;
    }
    Ok(())
}

/// Runs steps `range` of the plan on a piece.
pub(crate) fn run_steps(
    plan: &Plan,
    piece: &mut Piece,
    steps: std::ops::Range<usize>,
) -> Result<(), WorkerError> {
    for op in &plan.steps[steps] {
        if piece.rows.is_empty() {
            return Ok(());
        }
        match op {
            Compiled::Kernel(k) => k.run(piece)?,
            Compiled::Dedupe(_) => unreachable!("dedupe runs between the parallel phases"),
        }
    }
    Ok(())
}
