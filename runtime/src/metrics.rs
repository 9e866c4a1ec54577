//! Prometheus helpers both daemons use: the text exposition of registries, a `/metrics` route,
//! and the histogram buckets of task and load durations.

use prometheus::{Encoder, Registry, TextEncoder};

/// Buckets from 10 ms to ~1 h: shard stages of tiny test files up to multi-GB backfill shards.
pub fn duration_buckets() -> Vec<f64> {
    vec![
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        3600.0,
    ]
}

/// Renders registries in the Prometheus text format.
pub fn render(registries: &[&Registry]) -> String {
    let mut families = Vec::new();
    for r in registries {
        families.extend(r.gather());
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buf)
        .expect("text encoding never fails");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// An axum route serving `/metrics` from `registries`.
pub fn route(registries: Vec<&'static Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render(&registries);
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                )
            }
        }),
    )
}
