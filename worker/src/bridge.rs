//! The one bridge from async code to the CPU pool.
//!
//! Parsing, transforms and Parquet encoding never run on tokio threads: async code calls
//! [`run_cpu`], which runs the closure on the global rayon pool and hands the result back over a
//! oneshot channel, keeping the caller's tracing span.

use crate::WorkerError;

pub async fn run_cpu<T, F>(f: F) -> Result<T, WorkerError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    rayon::spawn(move || {
        let _guard = span.enter();
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| WorkerError::Cancelled)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_off_the_async_threads() {
        let on_rayon = super::run_cpu(|| rayon::current_thread_index().is_some())
            .await
            .unwrap();
        assert!(on_rayon);
    }
}
