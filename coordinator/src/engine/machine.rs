//! The state machine of one run and of its load batches. Pure: no I/O, no clock. Drivers
//! (`coordinator run` in [`crate::run`], `coordinator serve` in [`crate::fleet`]) feed it
//! [`Event`]s as they happen or as they read them back from state on a restart, and ask it for the
//! next [`Action`], perform it with their backends, and feed back the event that says it was
//! done:
//!
//! ```text
//!  Enqueued                ──▶ ┌────────────┐ ──▶ to_enqueue(): shards to send ──▶ Enqueued
//!  ShardDone / ShardFailed ──▶ │            │ ──▶ RecordBatch{seq, shards} ──▶ BatchRecorded
//!  BatchRecorded / Loaded  ──▶ │ RunMachine │ ──▶ Load{seq}                ──▶ BatchLoaded
//!  Judged / Cancelled      ──▶ └────────────┘ ──▶ Judge                    ──▶ Judged
//!                                              ──▶ Finish(status)           ──▶ Finished
//! ```
//!
//! Rules it owns: shards are sent in plan order, at most `max_in_flight` of them unfinished at
//! a time (a backfill leaves room for scheduled runs), none once the run is cancelled; a shard
//! ends once (a late success replaces a failure until the run is judged;
//! anything else repeated is ignored, so redelivered completions are harmless); done shards close
//! into batches in shard order once they hold `batch_rows` rows, and the rest when the run is
//! complete or the driver's batch window has passed; recorded batches load one at a time, in
//! order; a run with a `fail` expectation records no batch before its verdict and none at all if
//! the verdict failed; a cancelled run loads nothing more.

use std::collections::{BTreeMap, BTreeSet};

use protocol::Counts;

use super::{DoneRecord, RunStatus};

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// These shards' tasks were sent to the queue.
    Enqueued { shards: Vec<String> },
    /// A shard finished; its manifest is written.
    ShardDone { shard: String, done: DoneRecord },
    /// A shard failed for good (a failed result, or its task was dead-lettered).
    ShardFailed { shard: String, reason: String },
    /// A load batch of these shards was recorded durably under `seq`.
    BatchRecorded { seq: usize, shards: Vec<String> },
    /// Batch `seq` is in the warehouse (loaded now, or found in the ledger or in state).
    BatchLoaded { seq: usize },
    /// The run's data-quality verdict.
    Judged { passed: bool },
    /// The run was cancelled: nothing more is enqueued or loaded.
    Cancelled,
    /// The run's end was committed and recorded with this status.
    Finished(RunStatus),
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record a batch of these done shards (in this order) durably under `seq`, then report
    /// [`Event::BatchRecorded`].
    RecordBatch { seq: usize, shards: Vec<String> },
    /// Load recorded batch `seq`, then report [`Event::BatchLoaded`].
    Load { seq: usize },
    /// Judge the run against its expectations, then report [`Event::Judged`].
    Judge,
    /// Commit the run's end with this status, then report [`Event::Finished`].
    Finish(RunStatus),
}

/// Whether an event changed the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// A repeat, an unknown shard, or an event after the run's end: nothing changed.
    Ignored,
}

#[derive(Debug, Clone, PartialEq)]
struct Batch {
    shards: Vec<String>,
    loaded: bool,
}

/// One run: its shards' outcomes, its load batches and its verdict.
#[derive(Debug, Clone)]
pub struct RunMachine {
    shards: BTreeSet<String>,
    done: BTreeMap<String, DoneRecord>,
    failed: BTreeMap<String, String>,
    batches: Vec<Batch>,
    batched: BTreeSet<String>,
    batch_rows: u64,
    gated: bool,
    verdict: Option<bool>,
    cancelled: bool,
    finished: Option<RunStatus>,
    /// Shards sent to the queue.
    enqueued: BTreeSet<String>,
    /// Unfinished shards in flight at most (`None`: all at once).
    max_in_flight: Option<usize>,
}

impl RunMachine {
    /// A run of these shards. `batch_rows`: rows that close a batch; `gated`: whether nothing
    /// is batched before the run's verdict (it has a `fail` expectation).
    pub fn new(shards: impl IntoIterator<Item = String>, batch_rows: u64, gated: bool) -> Self {
        RunMachine {
            shards: shards.into_iter().collect(),
            done: BTreeMap::new(),
            failed: BTreeMap::new(),
            batches: Vec::new(),
            batched: BTreeSet::new(),
            batch_rows: batch_rows.max(1),
            gated,
            verdict: None,
            cancelled: false,
            finished: None,
            enqueued: BTreeSet::new(),
            max_in_flight: None,
        }
    }

    /// Keeps at most `n` unfinished shards in flight (`None`, or 0: no limit).
    pub fn with_max_in_flight(mut self, n: Option<usize>) -> Self {
        self.max_in_flight = n.filter(|n| *n > 0);
        self
    }

    /// The shards to send now, in plan order: those not sent and not ended, as many as the
    /// in-flight limit leaves room for; none once the run is cancelled or finished.
    pub fn to_enqueue(&self) -> Vec<String> {
        if self.cancelled || self.finished.is_some() {
            return Vec::new();
        }
        let ended = |s: &String| self.done.contains_key(s) || self.failed.contains_key(s);
        let in_flight = self.enqueued.iter().filter(|s| !ended(s)).count();
        let room = self
            .max_in_flight
            .map_or(usize::MAX, |n| n.saturating_sub(in_flight));
        self.shards
            .iter()
            .filter(|s| !ended(s) && !self.enqueued.contains(*s))
            .take(room)
            .cloned()
            .collect()
    }

    /// How many shards have been sent (they are always the first ones in plan order, but for
    /// those done before they were sent).
    pub fn enqueued_count(&self) -> usize {
        self.enqueued.len()
    }

    pub fn apply(&mut self, event: Event) -> Applied {
        if self.finished.is_some() {
            return Applied::Ignored;
        }
        let changed = match event {
            Event::Enqueued { shards } => {
                let before = self.enqueued.len();
                self.enqueued
                    .extend(shards.into_iter().filter(|s| self.shards.contains(s)));
                self.enqueued.len() > before
            }
            Event::ShardDone { shard, done } => self.shard_done(shard, done),
            Event::ShardFailed { shard, reason } => self.shard_failed(shard, reason),
            Event::BatchRecorded { seq, shards } => self.batch_recorded(seq, shards),
            Event::BatchLoaded { seq } => match self.batches.get_mut(seq) {
                Some(b) if !b.loaded => {
                    b.loaded = true;
                    true
                }
                _ => false,
            },
            Event::Judged { passed } => self.verdict.replace(passed).is_none(),
            Event::Cancelled => !std::mem::replace(&mut self.cancelled, true),
            Event::Finished(status) => {
                self.finished = Some(status);
                true
            }
        };
        if changed {
            Applied::Changed
        } else {
            Applied::Ignored
        }
    }

    fn shard_done(&mut self, shard: String, done: DoneRecord) -> bool {
        if !self.shards.contains(&shard) || self.done.contains_key(&shard) {
            return false;
        }
        // A late success replaces a failure (a redelivered task that made it after all),
        // unless the run was already judged without it.
        if self.failed.contains_key(&shard) {
            if self.verdict.is_some() {
                return false;
            }
            self.failed.remove(&shard);
        }
        self.done.insert(shard, done);
        true
    }

    fn shard_failed(&mut self, shard: String, reason: String) -> bool {
        if !self.shards.contains(&shard)
            || self.done.contains_key(&shard)
            || self.failed.contains_key(&shard)
        {
            return false;
        }
        self.failed.insert(shard, reason);
        true
    }

    fn batch_recorded(&mut self, seq: usize, shards: Vec<String>) -> bool {
        if seq < self.batches.len() {
            return false;
        }
        // Batches are recorded in order; a gap (a record lost) would break the load order.
        debug_assert_eq!(seq, self.batches.len(), "batches are recorded in order");
        self.batched.extend(shards.iter().cloned());
        self.batches.push(Batch {
            shards,
            loaded: false,
        });
        true
    }

    /// The next thing to do. `flush`: the driver's batch window has passed, so done shards are
    /// batched even if they hold fewer than `batch_rows` rows.
    pub fn next(&self, flush: bool) -> Option<Action> {
        if self.finished.is_some() {
            return None;
        }
        if self.cancelled {
            return Some(Action::Finish(RunStatus::Cancelled));
        }
        if let Some(seq) = self.batches.iter().position(|b| !b.loaded) {
            return Some(Action::Load { seq });
        }
        let complete = self.is_complete();
        if complete && self.verdict.is_none() {
            return Some(Action::Judge);
        }
        let held = match self.verdict {
            None => self.gated,
            Some(passed) => !passed,
        };
        if !held && let Some(shards) = self.next_batch(complete || flush) {
            let seq = self.batches.len();
            return Some(Action::RecordBatch { seq, shards });
        }
        complete.then(|| Action::Finish(self.end_status()))
    }

    /// Done shards not yet batched, in shard order, up to the first that brings the group to
    /// `batch_rows` rows; a smaller rest only when `all`.
    fn next_batch(&self, all: bool) -> Option<Vec<String>> {
        let mut group = Vec::new();
        let mut rows = 0u64;
        for (id, d) in self.done.iter().filter(|(k, _)| !self.batched.contains(*k)) {
            group.push(id.clone());
            rows += d.counts.rows_out;
            if rows >= self.batch_rows {
                return Some(group);
            }
        }
        (all && !group.is_empty()).then_some(group)
    }

    /// How a complete run ends: failed when a shard failed or a `fail` expectation broke.
    fn end_status(&self) -> RunStatus {
        if self.failed.is_empty() && self.verdict != Some(false) {
            RunStatus::Completed
        } else {
            RunStatus::Failed
        }
    }

    /// Whether every shard has ended (done or failed).
    pub fn is_complete(&self) -> bool {
        self.done.len() + self.failed.len() >= self.shards.len()
    }

    /// Shards that have not ended: the ones to enqueue (none once cancelled).
    pub fn unfinished(&self) -> Vec<&str> {
        if self.cancelled {
            return Vec::new();
        }
        self.shards
            .iter()
            .filter(|s| !self.done.contains_key(*s) && !self.failed.contains_key(*s))
            .map(String::as_str)
            .collect()
    }

    /// Whether done shards wait for a batch (what a driver's batch window measures).
    pub fn has_unbatched(&self) -> bool {
        self.done.keys().any(|k| !self.batched.contains(k))
    }

    pub fn done(&self) -> &BTreeMap<String, DoneRecord> {
        &self.done
    }

    pub fn failed(&self) -> &BTreeMap<String, String> {
        &self.failed
    }

    /// The shards of recorded batch `seq`.
    pub fn batch(&self, seq: usize) -> Option<&[String]> {
        self.batches.get(seq).map(|b| b.shards.as_slice())
    }

    pub fn batches_loaded(&self) -> usize {
        self.batches.iter().filter(|b| b.loaded).count()
    }

    /// Counts summed over the done shards.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for d in self.done.values() {
            c.add(&d.counts);
        }
        c
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    pub fn status(&self) -> RunStatus {
        match self.finished {
            Some(s) => s,
            None if self.cancelled => RunStatus::Cancelled,
            None => RunStatus::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(rows: u64) -> DoneRecord {
        DoneRecord {
            manifest_key: format!("m/{rows}"),
            counts: Counts {
                rows_out: rows,
                ..Counts::default()
            },
        }
    }

    fn shard_done(m: &mut RunMachine, shard: &str, rows: u64) -> Applied {
        m.apply(Event::ShardDone {
            shard: shard.into(),
            done: done(rows),
        })
    }

    fn machine(n: usize, batch_rows: u64, gated: bool) -> RunMachine {
        RunMachine::new((0..n).map(|i| format!("s{i}")), batch_rows, gated)
    }

    /// Performs every action the machine asks for, as a driver whose backends always succeed
    /// would, and returns them. `verdict`: what judging says.
    fn drive(m: &mut RunMachine, flush: bool, verdict: bool) -> Vec<Action> {
        let mut seen = Vec::new();
        while let Some(a) = m.next(flush) {
            let e = match &a {
                Action::RecordBatch { seq, shards } => Event::BatchRecorded {
                    seq: *seq,
                    shards: shards.clone(),
                },
                Action::Load { seq } => Event::BatchLoaded { seq: *seq },
                Action::Judge => Event::Judged { passed: verdict },
                Action::Finish(s) => Event::Finished(*s),
            };
            assert_eq!(m.apply(e), Applied::Changed, "{a:?} must make progress");
            seen.push(a);
        }
        seen
    }

    #[test]
    fn done_shards_close_into_batches_by_rows_in_shard_order() {
        let mut m = machine(4, 100, false);
        shard_done(&mut m, "s1", 60);
        assert_eq!(drive(&mut m, false, true), vec![], "60 rows stay open");
        shard_done(&mut m, "s0", 50);
        assert_eq!(
            drive(&mut m, false, true),
            vec![
                Action::RecordBatch {
                    seq: 0,
                    shards: vec!["s0".into(), "s1".into()]
                },
                Action::Load { seq: 0 },
            ]
        );
        shard_done(&mut m, "s2", 10);
        assert!(m.has_unbatched());
        assert_eq!(
            drive(&mut m, true, true)[0],
            Action::RecordBatch {
                seq: 1,
                shards: vec!["s2".into()]
            },
            "the batch window flushes a small rest"
        );
        assert_eq!(m.unfinished(), vec!["s3"]);
    }

    #[test]
    fn a_complete_run_is_judged_batched_loaded_and_finished_in_that_order() {
        let mut m = machine(2, 1_000, true);
        shard_done(&mut m, "s0", 5);
        assert_eq!(
            m.next(true),
            None,
            "a gated run batches nothing before its verdict"
        );
        shard_done(&mut m, "s1", 5);
        assert_eq!(
            drive(&mut m, false, true),
            vec![
                Action::Judge,
                Action::RecordBatch {
                    seq: 0,
                    shards: vec!["s0".into(), "s1".into()]
                },
                Action::Load { seq: 0 },
                Action::Finish(RunStatus::Completed),
            ]
        );
        assert_eq!(m.status(), RunStatus::Completed);
        assert_eq!(m.batches_loaded(), 1);
        assert_eq!(m.counts().rows_out, 10);
        assert_eq!(m.next(true), None);
        assert_eq!(shard_done(&mut m, "s0", 5), Applied::Ignored);
    }

    #[test]
    fn a_failed_verdict_loads_nothing_and_fails_the_run() {
        let mut m = machine(1, 1, true);
        shard_done(&mut m, "s0", 5);
        assert_eq!(
            drive(&mut m, true, false),
            vec![Action::Judge, Action::Finish(RunStatus::Failed)]
        );
    }

    #[test]
    fn a_failed_shard_fails_the_run_but_the_rest_loads() {
        let mut m = machine(2, 1, false);
        shard_done(&mut m, "s0", 5);
        m.apply(Event::ShardFailed {
            shard: "s1".into(),
            reason: "boom".into(),
        });
        let actions = drive(&mut m, false, true);
        assert_eq!(actions.last(), Some(&Action::Finish(RunStatus::Failed)));
        assert_eq!(m.batches_loaded(), 1);
        assert_eq!(m.failed()["s1"], "boom");
    }

    #[test]
    fn repeated_and_unknown_events_are_ignored() {
        let mut m = machine(2, 10, false);
        assert_eq!(shard_done(&mut m, "s0", 1), Applied::Changed);
        assert_eq!(shard_done(&mut m, "s0", 1), Applied::Ignored);
        assert_eq!(shard_done(&mut m, "nope", 1), Applied::Ignored);
        let fail = |s: &str, why: &str| Event::ShardFailed {
            shard: s.into(),
            reason: why.into(),
        };
        assert_eq!(
            m.apply(fail("s0", "late")),
            Applied::Ignored,
            "done stays done"
        );
        assert_eq!(m.apply(fail("s1", "first")), Applied::Changed);
        assert_eq!(m.apply(fail("s1", "second")), Applied::Ignored);
        assert_eq!(m.failed()["s1"], "first", "the first reason is kept");
        assert_eq!(m.apply(Event::BatchLoaded { seq: 7 }), Applied::Ignored);
    }

    #[test]
    fn a_late_success_replaces_a_failure_until_the_run_is_judged() {
        let mut m = machine(2, 10, false);
        let fail = |s: &str| Event::ShardFailed {
            shard: s.into(),
            reason: "dead-lettered".into(),
        };
        m.apply(fail("s0"));
        assert_eq!(shard_done(&mut m, "s0", 1), Applied::Changed);
        assert!(m.failed().is_empty());
        m.apply(fail("s1"));
        assert_eq!(m.next(false), Some(Action::Judge));
        m.apply(Event::Judged { passed: true });
        assert_eq!(shard_done(&mut m, "s1", 1), Applied::Ignored);
    }

    #[test]
    fn a_restart_replays_state_and_loads_what_was_recorded_but_not_loaded() {
        let mut m = machine(3, 1, false);
        for s in ["s0", "s1", "s2"] {
            shard_done(&mut m, s, 1);
        }
        m.apply(Event::BatchRecorded {
            seq: 0,
            shards: vec!["s0".into()],
        });
        m.apply(Event::BatchLoaded { seq: 0 });
        m.apply(Event::BatchRecorded {
            seq: 1,
            shards: vec!["s1".into()],
        });
        assert_eq!(m.next(false), Some(Action::Load { seq: 1 }));
        assert_eq!(m.batch(1), Some(&["s1".to_string()][..]));
        let rest = drive(&mut m, false, true);
        assert_eq!(
            rest,
            vec![
                Action::Load { seq: 1 },
                Action::Judge,
                Action::RecordBatch {
                    seq: 2,
                    shards: vec!["s2".into()]
                },
                Action::Load { seq: 2 },
                Action::Finish(RunStatus::Completed),
            ]
        );
    }

    #[test]
    fn a_cancelled_run_enqueues_and_loads_nothing_more() {
        let mut m = machine(3, 1, false);
        shard_done(&mut m, "s0", 1);
        m.apply(Event::BatchRecorded {
            seq: 0,
            shards: vec!["s0".into()],
        });
        assert_eq!(m.apply(Event::Cancelled), Applied::Changed);
        assert_eq!(m.apply(Event::Cancelled), Applied::Ignored);
        assert!(m.unfinished().is_empty());
        assert_eq!(m.status(), RunStatus::Cancelled);
        assert_eq!(
            drive(&mut m, true, true),
            vec![Action::Finish(RunStatus::Cancelled)]
        );
        assert_eq!(m.batches_loaded(), 0, "the recorded batch is not loaded");
    }

    #[test]
    fn an_empty_run_is_judged_and_finishes() {
        let mut m = machine(0, 1, true);
        assert_eq!(
            drive(&mut m, false, true),
            vec![Action::Judge, Action::Finish(RunStatus::Completed)]
        );
    }

    #[test]
    fn shards_are_sent_in_plan_order_within_the_in_flight_limit() {
        let mut m = machine(5, 100, false).with_max_in_flight(Some(2));
        assert_eq!(m.to_enqueue(), vec!["s0", "s1"]);
        m.apply(Event::Enqueued {
            shards: vec!["s0".into(), "s1".into()],
        });
        assert!(m.to_enqueue().is_empty(), "two in flight");
        shard_done(&mut m, "s1", 1);
        assert_eq!(m.to_enqueue(), vec!["s2"]);
        m.apply(Event::Enqueued {
            shards: vec!["s2".into()],
        });
        m.apply(Event::ShardFailed {
            shard: "s0".into(),
            reason: "x".into(),
        });
        assert_eq!(m.to_enqueue(), vec!["s3"], "a failed shard frees its place");
        assert_eq!(m.enqueued_count(), 3);
        m.apply(Event::Cancelled);
        assert!(m.to_enqueue().is_empty(), "nothing is sent once cancelled");

        let mut all = machine(3, 100, false);
        shard_done(&mut all, "s1", 1);
        assert_eq!(
            all.to_enqueue(),
            vec!["s0", "s2"],
            "no limit: every unfinished shard"
        );
        assert_eq!(
            all.apply(Event::Enqueued {
                shards: vec!["s9".into()]
            }),
            Applied::Ignored,
            "an unknown shard"
        );
    }
}
