//! A JSON API for the HTTP source's tests, served on 127.0.0.1 from a thread of its own (so a
//! test may block on a coordinator process while it answers). It serves `GET /v1/orders`:
//! records filtered by `updated_since` / `updated_until` on their `updated_at`, in id order,
//! paginated by the rule the test sets, and misbehaves on request: throttles (429 with
//! `Retry-After`), fails (503), answers invalid JSON, refuses a wrong token (401). Every request
//! is logged for the test to read.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the API paginates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// `links.next` in the body.
    NextLink,
    /// A `Link: <…>; rel="next"` header.
    LinkHeader,
    /// `meta.next_cursor` in the body, sent back as `cursor`.
    Cursor,
    /// `page` from 1, `per_page`.
    Page,
    /// `offset`, `limit`.
    Offset,
}

/// What the next request gets instead of its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: SECS`.
    Throttle(u64),
    /// 503.
    Unavailable,
    /// 200 with a body that is not JSON.
    InvalidJson,
}

/// The API's records and behaviour; tests change it between runs.
#[derive(Debug)]
pub struct ApiState {
    pub records: Vec<Value>,
    pub paging: Paging,
    pub page_size: usize,
    /// Answers given, in order, to the next requests (one each).
    pub faults: VecDeque<Fault>,
    /// Every request fails with this one from now on.
    pub always: Option<Fault>,
    /// The `Authorization` value wanted (`None`: no credentials needed).
    pub token: Option<String>,
    /// Path and query of every request, in order.
    pub requests: Vec<String>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// Starts the API with `records` (objects with `id` and `updated_at`).
    pub fn start(records: Vec<Value>, paging: Paging, page_size: usize) -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState {
            records,
            paging,
            page_size,
            faults: VecDeque::new(),
            always: None,
            token: None,
            requests: Vec::new(),
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new()
                    .route("/v1/orders", axum::routing::get(serve_orders))
                    .with_state(shared);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().expect("the API starts");
        FakeApi { addr, state }
    }

    /// `http://127.0.0.1:PORT/v1/orders`.
    pub fn url(&self) -> String {
        format!("http://{}/v1/orders", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut ApiState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }
}

/// `n` orders from id `first`, one a minute from `start` (RFC 3339).
pub fn orders(first: u64, n: u64, start: &str) -> Vec<Value> {
    let t0 = chrono::DateTime::parse_from_rfc3339(start).unwrap();
    (first..first + n)
        .map(|id| {
            let at = t0 + chrono::Duration::minutes((id - first) as i64);
            json!({
                "id": id,
                "customer": {"name": format!("c{}", id % 37), "tier": if id % 2 == 0 { "gold" } else { "basic" }},
                "amount": format!("{}.{:02}", id / 100, id % 100),
                "updated_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn instant(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

async fn serve_orders(
    State(state): State<Arc<Mutex<ApiState>>>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
    uri: axum::http::Uri,
) -> Response {
    let mut s = state.lock().unwrap();
    s.requests.push(uri.to_string());
    if let Some(want) = &s.token
        && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad token"})),
        )
            .into_response();
    }
    let fault = s.faults.pop_front().or_else(|| s.always.clone());
    match fault {
        Some(Fault::Throttle(secs)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "slow down",
            )
                .into_response();
        }
        Some(Fault::Unavailable) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "upstream down").into_response();
        }
        Some(Fault::InvalidJson) => {
            return (StatusCode::OK, "{\"data\": [{\"id\": 1,").into_response();
        }
        None => {}
    }
    let since = param(&q, "updated_since").and_then(instant);
    let until = param(&q, "updated_until").and_then(instant);
    let mut all: Vec<&Value> = s
        .records
        .iter()
        .filter(|r| {
            let at = r["updated_at"].as_str().and_then(instant);
            since.is_none_or(|f| at.is_some_and(|a| a >= f))
                && until.is_none_or(|u| at.is_some_and(|a| a < u))
        })
        .collect();
    all.sort_by_key(|r| r["id"].as_u64());
    page(&s, &all, &q, &uri)
}

/// One page of `all` by the API's pagination rule.
fn page(s: &ApiState, all: &[&Value], q: &[(String, String)], uri: &axum::http::Uri) -> Response {
    let size = s.page_size;
    let number = |k: &str, d: usize| param(q, k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let start = match s.paging {
        Paging::NextLink | Paging::LinkHeader => number("page", 1).saturating_sub(1) * size,
        Paging::Page => number("page", 1).saturating_sub(1) * number("per_page", size),
        Paging::Offset => number("offset", 0),
        Paging::Cursor => param(q, "cursor")
            .and_then(|c| c.strip_prefix("after-"))
            .and_then(|id| id.parse::<u64>().ok())
            .map_or(0, |id| {
                all.iter()
                    .take_while(|r| r["id"].as_u64() <= Some(id))
                    .count()
            }),
    };
    let size = match s.paging {
        Paging::Page => number("per_page", size),
        Paging::Offset => number("limit", size),
        _ => size,
    };
    let rows: Vec<Value> = all
        .iter()
        .skip(start)
        .take(size)
        .map(|r| (*r).clone())
        .collect();
    let more = start + rows.len() < all.len();
    let this_page = start / size.max(1) + 1;
    let next_uri = || {
        let mut pairs: Vec<(String, String)> =
            q.iter().filter(|(k, _)| k != "page").cloned().collect();
        pairs.push(("page".into(), (this_page + 1).to_string()));
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(':', "%3A")))
            .collect();
        format!("{}?{}", uri.path(), query.join("&"))
    };
    let mut body = json!({"data": rows, "links": {"next": null}, "meta": {"next_cursor": null}});
    let mut headers = Vec::new();
    if more {
        match s.paging {
            Paging::NextLink => body["links"]["next"] = json!(next_uri()),
            Paging::LinkHeader => headers.push((
                "link",
                format!(
                    "<{}>; rel=\"next\", </v1/orders?page=1>; rel=\"first\"",
                    next_uri()
                ),
            )),
            Paging::Cursor => {
                let last = rows.last().and_then(|r| r["id"].as_u64()).unwrap_or(0);
                body["meta"]["next_cursor"] = json!(format!("after-{last}"));
            }
            Paging::Page | Paging::Offset => {}
        }
    }
    let mut resp = Json(body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}
