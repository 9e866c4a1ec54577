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
    for (name, slot) in plan.output.columns.iter().zip(&plan.output_slots) {
        let Some(a) = piece.cols[*slot].as_ref() else {
            continue;
        };
        if a.data_type() != &DataType::Utf8 {
            continue;
        }
        let s = a.as_string::<i32>();
        for r in 0..s.len() {
            let n = if s.is_valid(r) {
                s.value_length(r) as u64
            } else {
                0
            };
            if n > limit && !failed.iter().any(|(x, _)| *x == r) {
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
        match op {
            StepOp::Filter {
                conds,
                predicate,
                bucket,
            } => {
                let mut drop = match predicate {
                    Some(p) => drop_where(piece, p)?,
                    None => vec![false; piece.rows.len()],
                };
                for c in conds {
                    let col = piece.cols[c.slot].as_ref().expect("set");
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
                    *piece.counts.filtered.entry(bucket.clone()).or_default() += dropped;
                    piece.keep(&BooleanArray::from(
                        drop.into_iter().map(|d| !d).collect::<Vec<_>>(),
                    ))?;
                }
            }
            StepOp::Derive {
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
            StepOp::Reject {
                predicate,
                bucket,
                reason,
            } => {
                let (held, mut errors) = eval_predicate(piece, predicate)?;
                let failed: std::collections::HashSet<usize> =
                    errors.iter().map(|(r, _)| *r).collect();
                errors.extend(
                    held.values()
                        .set_indices()
                        .filter(|r| !failed.contains(r))
                        .map(|r| (r, reason.clone())),
                );
                errors.sort_by_key(|(r, _)| *r);
                piece.quarantine_rows(errors, bucket)?;
            }
            StepOp::Dedupe { .. } => unreachable!("dedupe runs between the parallel phases"),
            StepOp::Trim { slots, chars } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::trim(
                        piece.cols[*s].as_ref().expect("set"),
                        chars.as_deref(),
                    ));
                }
            }
            StepOp::Upper { slots } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::upper(piece.cols[*s].as_ref().expect("set")));
                }
            }
            StepOp::Lower { slots } => {
                for s in slots {
                    piece.cols[*s] = Some(transform::lower(piece.cols[*s].as_ref().expect("set")));
                }
            }
            StepOp::Regex {
                slot,
                out,
                re,
                replacement,
            } => {
                piece.cols[*out] = Some(transform::regex_replace(
                    piece.cols[*slot].as_ref().expect("set"),
                    re,
                    replacement,
                ));
            }
            StepOp::ParseTs {
                slot,
                out,
                format,
                on_error,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::parse_timestamps(piece.cols[*slot].as_ref().expect("set"), format);
                piece.cols[*out] = Some(a);
                piece.fail(f, *on_error, bucket, column)?;
            }
            StepOp::Date { slot, out } => {
                piece.cols[*out] =
                    Some(transform::date_of(piece.cols[*slot].as_ref().expect("set")));
            }
            StepOp::Hash {
                slot,
                out,
                algorithm,
                key,
            } => {
                piece.cols[*out] = Some(transform::hash(
                    piece.cols[*slot].as_ref().expect("set"),
                    *algorithm,
                    key,
                ));
            }
            StepOp::Ipv4 {
                slot,
                out,
                keep,
                on_error,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::ipv4_truncate(piece.cols[*slot].as_ref().expect("set"), *keep);
                piece.cols[*out] = Some(a);
                piece.fail(f, *on_error, bucket, column)?;
            }
            StepOp::Lookup {
                slot,
                out,
                table,
                on_missing,
                bucket,
                column,
            } => {
                let (a, f) =
                    transform::lookup(piece.cols[*slot].as_ref().expect("set"), table, *on_missing);
                piece.cols[*out] = Some(a);
                if *on_missing == OnMissing::Reject {
                    piece.fail(f, OnError::Reject, bucket, column)?;
                }
            }
            StepOp::Cast {
                slot,
                out,
                to,
                on_error,
                bucket,
                column,
            } => {
                let src = piece.cols[*slot].as_ref().expect("set");
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
    }
    Ok(())
}
