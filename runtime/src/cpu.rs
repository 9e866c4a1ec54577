//! The one bridge from async code to the CPU pool.
//!
//! Parsing, transforms and Parquet encoding never run on tokio threads: async code calls
//! [`run_cpu`], which runs the closure on the global rayon pool and hands the result back over a
//! oneshot channel, keeping the caller's tracing span.
//!
//! A panic inside the closure is caught on the pool thread and comes back as
//! [`CpuError::Panicked`] with the panic message: it fails that task (which is retried, and
//! dead-lettered with the message once it has used its deliveries), while the process, the pool
//! and every other task in flight carry on. Without this, rayon aborts the process on a panic in
//! a spawned job.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Why a CPU job gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// A bug: the job panicked; the message is the panic's.
    #[error("panicked: {message}")]
    Panicked { message: String },
    /// The pool dropped the job without running it to the end.
    #[error("the CPU pool dropped the task")]
    Cancelled,
}

pub async fn run_cpu<T, F>(f: F) -> Result<T, CpuError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    rayon::spawn(move || {
        let _guard = span.enter();
        let _ = tx.send(catch_panic(f).map_err(|message| CpuError::Panicked { message }));
    });
    rx.await.map_err(|_| CpuError::Cancelled)?
}

/// [`run_cpu`] for a caller that is not async (a command-line run): blocks until the closure,
/// run on a pool thread, is done. Work the closure hands to the pool (`rayon::spawn`) then goes
/// to the pool's own queues, and a pool thread that waits for it can run it meanwhile.
pub fn run_cpu_blocking<T, F>(f: F) -> Result<T, CpuError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rayon::spawn(move || {
        let _ = tx.send(catch_panic(f).map_err(|message| CpuError::Panicked { message }));
    });
    rx.recv().map_err(|_| CpuError::Cancelled)?
}

/// Runs `f` on this thread; a panic in it comes back as its message instead of unwinding (a
/// panic in a job spawned on the pool would abort the process). For closures that own what they
/// touch, so that nothing half-changed by the panic is seen afterwards: asserting unwind safety
/// is sound for them.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()))
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_off_the_async_threads() {
        let on_rayon = run_cpu(|| rayon::current_thread_index().is_some())
            .await
            .unwrap();
        assert!(on_rayon);
    }

    #[test]
    fn a_blocking_run_is_on_the_pool_and_a_panic_is_its_error() {
        assert_eq!(
            run_cpu_blocking(|| rayon::current_thread_index().is_some()),
            Ok(true)
        );
        let err = run_cpu_blocking(|| -> u32 { panic!("shard s00003 hit a bug") }).unwrap_err();
        assert_eq!(
            err,
            CpuError::Panicked {
                message: "shard s00003 hit a bug".into()
            }
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_pool_keeps_serving() {
        let err = run_cpu(|| -> u32 { panic!("shard s00007 hit a bug") })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CpuError::Panicked { message } if message == "shard s00007 hit a bug"),
            "{err:?}"
        );
        let n = 3;
        let formatted = run_cpu(move || -> u32 { panic!("row {n} is odd") })
            .await
            .unwrap_err();
        assert!(
            formatted.to_string().contains("row 3 is odd"),
            "{formatted}"
        );
        // Many jobs after the panics: the pool threads are all still there.
        let mut sum = 0;
        for i in 0..(2 * rayon::current_num_threads() as u32 + 4) {
            sum += run_cpu(move || i).await.unwrap();
        }
        assert!(sum > 0);
    }
}
