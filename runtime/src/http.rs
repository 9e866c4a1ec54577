//! HTTP serving for both daemons: health (`/healthz`, `/readyz`), `/metrics`, and any router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Liveness and readiness of a daemon, served on its health address.
#[derive(Debug, Default)]
pub struct Health {
    pub ready: AtomicBool,
    pub draining: AtomicBool,
}

/// Serves `/healthz` (the process is alive) and `/readyz` (ready and not draining).
pub async fn serve_health(
    addr: &str,
    health: Arc<Health>,
    extra: axum::Router,
) -> anyhow::Result<std::net::SocketAddr> {
    use axum::http::StatusCode;
    let h = health.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let h = h.clone();
                async move {
                    if h.ready.load(Ordering::SeqCst) && !h.draining.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .merge(extra);
    serve_router(addr, app, "health server").await
}

/// Binds `addr` and serves `app` in the background; returns the bound address (port 0 picks one).
pub async fn serve_router(
    addr: &str,
    app: axum::Router,
    what: &'static str,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{what}: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    Ok(local)
}
