//! Chunks parsed ahead of the ordered loop.
//!
//! The shard loop finishes chunks in order on one thread (dedupe, the writers), while later
//! chunks are parsed on the pool: each one a FIFO pool job of its own, up to [`PARSED_AHEAD`]
//! beyond the one being finished. A thread that runs out of work parses the next chunk instead
//! of waiting for the slowest piece of the current one; the loop, when it must wait for a
//! chunk, runs pool jobs meanwhile — on one thread, the very parse it waits for, oldest first.

use std::sync::{Condvar, Mutex};

use crate::WorkerError;

/// Chunks parsed (or being parsed) beyond the one the loop finishes: each holds its source
/// bytes and, once parsed, its columns.
pub(crate) const PARSED_AHEAD: usize = 2;

/// A value a pool job sets once and the shard loop takes.
pub(crate) struct Ready<T> {
    slot: Mutex<Option<T>>,
    told: Condvar,
}

impl<T> Ready<T> {
    pub(crate) fn new() -> Ready<T> {
        Ready {
            slot: Mutex::new(None),
            told: Condvar::new(),
        }
    }

    pub(crate) fn set(&self, value: T) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        self.told.notify_all();
    }

    /// Waits for the value and takes it. On a pool thread it runs pool jobs meanwhile; with none
    /// to run (or off the pool) it sleeps until the value is set, waking now and then to look for
    /// pool work again.
    pub(crate) fn take(&self) -> T {
        loop {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = slot.take() {
                return v;
            }
            drop(slot);
            if let Some(rayon::Yield::Executed) = rayon::yield_now() {
                continue;
            }
            slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = slot.take() {
                return v;
            }
            let (mut slot, _) = self
                .told
                .wait_timeout(slot, std::time::Duration::from_micros(200))
                .unwrap_or_else(|p| p.into_inner());
            if let Some(v) = slot.take() {
                return v;
            }
        }
    }
}

/// Runs `job` and sets `ready` to what it gives; a panic in it is its error, so that the loop
/// waiting for `ready` gets an answer, never waits forever.
pub(crate) fn run_into<T>(
    ready: &Ready<Result<T, WorkerError>>,
    job: impl FnOnce() -> Result<T, WorkerError>,
) {
    let result = runtime::cpu::catch_panic(job)
        .unwrap_or_else(|message| Err(WorkerError::Panicked { message }));
    ready.set(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_value_set_by_another_thread_is_taken_once_set() {
        let ready = Arc::new(Ready::new());
        let setter = ready.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            setter.set(7);
        });
        assert_eq!(ready.take(), 7);
        t.join().unwrap();
    }

    #[test]
    fn on_a_one_thread_pool_the_wait_runs_the_job_it_waits_for() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let got = pool.scope_fifo(|s| {
            let ready = Arc::new(Ready::new());
            let r = ready.clone();
            s.spawn_fifo(move |_| r.set("parsed"));
            ready.take()
        });
        assert_eq!(got, "parsed");
    }

    #[test]
    fn a_panic_in_a_job_ahead_is_its_error_not_a_wait_forever() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let got: Result<(), WorkerError> = pool.scope_fifo(|s| {
            let ready = Arc::new(Ready::new());
            let r = ready.clone();
            s.spawn_fifo(move |_| run_into(&r, || panic!("parser bug")));
            ready.take()
        });
        let err = got.unwrap_err().to_string();
        assert!(err.contains("parser bug"), "{err}");
    }
}
