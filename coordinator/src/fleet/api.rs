//! The fleet coordinator's HTTP API and status page.
//!
//! Reads (`GET`) answer from the live view the loop publishes ([`Shared`]); changes (`POST`)
//! go to the loop as a [`Request`] and answer with what it replied, so every decision stays in
//! the one loop.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the status page ([`super::page`]) |
//! | `GET /api/status` | what the page shows, as JSON |
//! | `GET /api/runs[?pipeline=NAME]` | runs, newest first |
//! | `GET /api/runs/{id}` | one run |
//! | `POST /api/runs` `{"pipeline": NAME}` | start a run now |
//! | `POST /api/runs/{id}/cancel` | cancel a run |
//! | `POST /api/runs/{id}/retry` | redo a failed run's failed shards, in the same run |
//! | `GET /api/backfills`, `POST /api/backfills` | backfills; plan (dry run) or start one |
//! | `GET /api/pipelines` | pipelines and their schedules |

use super::requests::{BackfillRequest, Pending, Request};
use super::*;
use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

#[derive(Clone)]
struct Api {
    shared: Arc<Mutex<Shared>>,
    requests: tokio::sync::mpsc::Sender<Pending>,
}

#[derive(Deserialize)]
struct StartBody {
    pipeline: String,
}

#[derive(Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
}

pub async fn serve(
    addr: &str,
    shared: Arc<Mutex<Shared>>,
    requests: tokio::sync::mpsc::Sender<Pending>,
) -> anyhow::Result<std::net::SocketAddr> {
    use axum::routing::{get, post};
    let api = Api { shared, requests };
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/status", get(status))
        .route("/api/runs", get(list_runs).post(start_run))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/retry", post(retry_run))
        .route("/api/backfills", get(list_backfills).post(backfill))
        .route("/api/pipelines", get(list_pipelines))
        .with_state(api)
        .merge(runtime::metrics::route(vec![&METRICS.registry]));
    runtime::http::serve_router(addr, app, "API server").await
}

async fn ready(State(api): State<Api>) -> impl IntoResponse {
    if api.shared.lock().expect("shared").ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn page() -> Html<&'static str> {
    Html(super::page::PAGE)
}

async fn status(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(api.shared.lock().expect("shared").status_json())
}

async fn list_runs(State(api): State<Api>, Query(q): Query<RunsQuery>) -> Json<Vec<RunRecord>> {
    let sh = api.shared.lock().expect("shared");
    Json(sh.runs_newest_first(q.pipeline.as_deref()))
}

async fn get_run(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
    match api.shared.lock().expect("shared").runs.get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no run {id}")),
    }
}

async fn list_pipelines(State(api): State<Api>) -> Json<Vec<PipelineView>> {
    Json(api.shared.lock().expect("shared").pipelines.clone())
}

async fn list_backfills(State(api): State<Api>) -> Json<Vec<crate::backfill::BackfillRecord>> {
    Json(api.shared.lock().expect("shared").backfills.clone())
}

async fn start_run(State(api): State<Api>, Json(body): Json<StartBody>) -> Response {
    ask(
        &api,
        Request::Start {
            pipeline: body.pipeline,
        },
    )
    .await
}

async fn cancel_run(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
    ask(&api, Request::Cancel { run_id: id }).await
}

async fn retry_run(State(api): State<Api>, UrlPath(id): UrlPath<String>) -> Response {
    ask(&api, Request::Retry { run_id: id }).await
}

async fn backfill(State(api): State<Api>, Json(body): Json<BackfillRequest>) -> Response {
    ask(&api, Request::Backfill(body)).await
}

/// Hands a request to the loop and answers with its reply: 201 for a run or backfill started,
/// 200 otherwise, 409 with the reason when the loop refused it.
async fn ask(api: &Api, req: Request) -> Response {
    let created = req.creates();
    let (tx, rx) = tokio::sync::oneshot::channel();
    if api.requests.send((req, tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "coordinator is stopping".into(),
        );
    }
    match rx.await {
        Ok(Ok(v)) => {
            let code = if created && v.get("dry_run").is_none_or(|d| d != true) {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(v)).into_response()
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "coordinator is stopping".into(),
        ),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}
