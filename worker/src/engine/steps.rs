//! Running the compiled steps over a piece of rows.

use super::*;

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
            StepOp::Filter { conds, bucket } => {
                let n = piece.rows.len();
                let mut drop = vec![false; n];
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
