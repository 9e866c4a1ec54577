//! Running the compiled steps over a piece of rows.

use super::*;

/// The input columns of an expression, from their slots.
fn inputs(piece: &Piece, slots: &[usize]) -> Vec<ArrayRef> {
    slots
        .iter()
        .map(|s| piece.cols[*s].clone().expect("set"))
        .collect()
}

fn eval_predicate(
    piece: &Piece,
    p: &crate::plan::SlotExpr,
) -> Result<(BooleanArray, transform::Failures), WorkerError> {
    p.expr
        .evaluate_predicate(inputs(piece, &p.inputs), piece.rows.len())
        .map_err(|detail| WorkerError::Step {
            step: "expression".into(),
            detail,
        })
}

/// The rows a `drop_where` condition holds for. Rows whose condition cannot be computed are
/// quarantined first (bucket `rejected`), never dropped or kept unseen.
fn drop_where(piece: &mut Piece, p: &crate::plan::SlotExpr) -> Result<Vec<bool>, WorkerError> {
    let (mut held, errors) = eval_predicate(piece, p)?;
    if !errors.is_empty() {
        piece.quarantine_rows(errors, "rejected")?;
        (held, _) = eval_predicate(piece, p)?;
    }
    Ok(held.values().iter().collect())
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
    for (name, slot) in plan.output.columns.iter().zip(&plan.output_slots) {
        let Some(a) = piece.cols[*slot].as_ref() else {
            continue;
        };
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
            let (held, errors) = eval_predicate(piece, check)?;
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
        run_step(op, piece)?;
    }
    Ok(())
}

/// The input column in `slot` (set by parsing or an earlier step).
fn col(piece: &Piece, slot: usize) -> &ArrayRef {
    piece.cols[slot].as_ref().expect("set")
}

/// Replaces each of `slots` by `f` of itself.
fn map_each(piece: &mut Piece, slots: &[usize], f: impl Fn(&ArrayRef) -> ArrayRef) {
    for s in slots {
        piece.cols[*s] = Some(f(col(piece, *s)));
    }
}

/// One compiled step over a piece.
fn run_step(op: &StepOp, piece: &mut Piece) -> Result<(), WorkerError> {
    use crate::plan::StepOp as S;
    match op {
        S::Filter {
            conds,
            predicate,
            bucket,
        } => filter(piece, conds, predicate.as_ref(), bucket)?,
        S::Derive {
            expr,
            out,
            on_error,
            bucket,
            column,
        } => {
            let (a, errors) = expr
                .expr
                .evaluate(inputs(piece, &expr.inputs), piece.rows.len())
                .map_err(|detail| WorkerError::Step {
                    step: "derive".into(),
                    detail,
                })?;
            piece.cols[*out] = Some(a);
            piece.fail(errors, *on_error, bucket, column)?;
        }
        S::Reject {
            predicate,
            bucket,
            reason,
        } => reject(piece, predicate, bucket, reason)?,
        S::Dedupe { .. } => unreachable!("dedupe runs between the parallel phases"),
        S::Trim { slots, chars } => {
            map_each(piece, slots, |a| transform::trim(a, chars.as_deref()))
        }
        S::Upper { slots } => map_each(piece, slots, transform::upper),
        S::Lower { slots } => map_each(piece, slots, transform::lower),
        S::Regex {
            slot,
            out,
            re,
            replacement,
        } => piece.cols[*out] = Some(transform::regex_replace(col(piece, *slot), re, replacement)),
        S::ParseTs {
            slot,
            out,
            format,
            on_error,
            bucket,
            column,
        } => {
            let (a, f) = transform::parse_timestamps(col(piece, *slot), format);
            piece.cols[*out] = Some(a);
            piece.fail(f, *on_error, bucket, column)?;
        }
        S::Date { slot, out } => piece.cols[*out] = Some(transform::date_of(col(piece, *slot))),
        S::Hash {
            slot,
            out,
            algorithm,
            key,
        } => piece.cols[*out] = Some(transform::hash(col(piece, *slot), *algorithm, key)),
        S::Ipv4 {
            slot,
            out,
            keep,
            on_error,
            bucket,
            column,
        } => {
            let (a, f) = transform::ipv4_truncate(col(piece, *slot), *keep);
            piece.cols[*out] = Some(a);
            piece.fail(f, *on_error, bucket, column)?;
        }
        S::Lookup {
            slot,
            out,
            table,
            on_missing,
            bucket,
            column,
        } => {
            let (a, f) = transform::lookup(col(piece, *slot), table, *on_missing);
            piece.cols[*out] = Some(a);
            if *on_missing == OnMissing::Reject {
                piece.fail(f, OnError::Reject, bucket, column)?;
            }
        }
        S::Cast {
            slot,
            out,
            to,
            on_error,
            bucket,
            column,
        } => {
            let src = col(piece, *slot);
            let (a, f) = if src.data_type() == &DataType::Utf8 {
                transform::cast_strings(src, *to)
            } else {
                transform::cast_other(src, *to).map_err(|e| WorkerError::Step {
                    step: "cast".into(),
                    detail: e,
                })?
            };
            piece.cols[*out] = Some(a);
            piece.fail(f, *on_error, bucket, column)?;
        }
    }
    Ok(())
}

/// `filter`: drops the rows its `drop_where` holds for or any `drop_if_any` condition matches,
/// counted in `bucket`.
fn filter(
    piece: &mut Piece,
    conds: &[crate::plan::Cond],
    predicate: Option<&crate::plan::SlotExpr>,
    bucket: &str,
) -> Result<(), WorkerError> {
    let mut drop = match predicate {
        Some(p) => drop_where(piece, p)?,
        None => vec![false; piece.rows.len()],
    };
    for c in conds {
        let col = col(piece, c.slot);
        match &c.kind {
            crate::plan::CondKind::IsNull(want) => {
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
    let dropped = drop.iter().filter(|d| **d).count() as u64;
    if dropped > 0 {
        *piece.counts.filtered.entry(bucket.to_string()).or_default() += dropped;
        piece.keep(&BooleanArray::from(
            drop.into_iter().map(|d| !d).collect::<Vec<_>>(),
        ))?;
    }
    Ok(())
}

/// `reject`: quarantines the rows its condition holds for with `reason` (a row whose
/// condition cannot be computed, with the computation's error).
fn reject(
    piece: &mut Piece,
    predicate: &crate::plan::SlotExpr,
    bucket: &str,
    reason: &str,
) -> Result<(), WorkerError> {
    let (held, mut errors) = eval_predicate(piece, predicate)?;
    let failed: std::collections::HashSet<usize> = errors.iter().map(|(r, _)| *r).collect();
    errors.extend(
        held.values()
            .set_indices()
            .filter(|r| !failed.contains(r))
            .map(|r| (r, reason.to_string())),
    );
    errors.sort_by_key(|(r, _)| *r);
    piece.quarantine_rows(errors, bucket)
}
