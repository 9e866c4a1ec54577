//! An API window's records, pulled page by page into the raw zone.
//!
//! One window is read in order on a thread of its own (the HTTP client blocks; pages of one
//! window follow each other): the first URL with the window's bounds, then whatever the
//! `pagination` rule says comes next ([`super::paging`]). Every request waits for the
//! pipeline's rate limit (shared by the extracting shards of this process), and a failed one is
//! retried by the rules of [`super::retry`]. Each record of a page (the array at
//! `records_path`) becomes one NDJSON line of the raw object, exactly as the API sent it: a
//! record the pipeline cannot read is quarantined by the curate step with its reason, never
//! dropped here. With `watermark_field`, the latest value of that field is returned for the
//! pipeline's watermark.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backends::BackendError;
use backends::object_store::ObjectStore;
use chrono::NaiveDateTime;
use pipeline::Pipeline;
use pipeline::http::{HttpSource, json_at, watermark_text, watermark_value};
use protocol::{HttpRange, ShardDescriptor};
use url::Url;

use super::RawWriter;
use super::paging::{Paging, set_param};
use super::retry::{Decision, Outcome, decide};
use crate::WorkerError;

/// The largest page body read (a guard against an answer that never ends).
const MAX_PAGE_BYTES: u64 = 256 << 20;

/// What a window's pull read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    pub records: u64,
    pub pages: u64,
    /// The latest `watermark_field` value read.
    pub watermark: Option<NaiveDateTime>,
    /// Records whose `watermark_field` was missing or not a time.
    pub without_watermark: u64,
}

/// The `[source.http]` of a pipeline, with its secret read from the environment.
pub struct HttpPull<'a> {
    spec: &'a HttpSource,
    /// The `auth_header_env` variable's value.
    auth: Option<String>,
    agent: ureq::Agent,
    limiter: Arc<RateLimiter>,
}

/// The `[source.http]` of a pipeline, ready to pull: refuses a missing section or an unset
/// `auth_header_env` variable, naming the file and the variable.
pub fn open_http_source(p: &Pipeline) -> Result<HttpPull<'_>, WorkerError> {
    let spec = p.file.source.http.as_ref().ok_or_else(|| {
        WorkerError::Config(format!("{}: kind = \"http\" reads [source.http]", p.path))
    })?;
    let auth = match &spec.auth_header_env {
        None => None,
        Some(var) => Some(std::env::var(var).map_err(|_| {
            WorkerError::Config(format!(
                "{}: environment variable {var} (source.http.auth_header_env) is not set",
                p.path
            ))
        })?),
    };
    Ok(HttpPull {
        spec,
        auth,
        agent: agent(spec.timeout()),
        limiter: RateLimiter::of(p.name(), spec.rate_limit_per_sec),
    })
}

/// Pulls an API window into its raw-zone object; returns the shard as it is processed (its one
/// input is that object) and the latest watermark value read.
pub async fn extract_http(
    p: &Pipeline,
    shard: &ShardDescriptor,
    range: &HttpRange,
    files: &dyn ObjectStore,
    scratch: &Path,
) -> Result<(ShardDescriptor, Option<String>), WorkerError> {
    let mut raw = RawWriter::create(scratch, &shard.shard_id)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (p2, range2) = (p.clone(), range.clone());
    std::thread::Builder::new()
        .name("http-extract".into())
        .spawn(move || {
            let r = open_http_source(&p2).and_then(|src| src.pull(&range2, raw.out()));
            let _ = tx.send(r.map(|pulled| (pulled, raw)));
        })
        .map_err(|e| WorkerError::write(scratch, e))?;
    let (pulled, raw) = rx.await.map_err(|_| WorkerError::Panicked {
        message: "the HTTP extract thread ended without an answer".into(),
    })??;
    let (processed, size) = raw.land(files, &range.raw_key, shard).await?;
    if pulled.without_watermark > 0 {
        tracing::warn!(shard = %shard.shard_id, records = pulled.without_watermark, "records without a readable watermark_field");
    }
    tracing::info!(shard = %shard.shard_id, records = pulled.records, pages = pulled.pages, raw = %range.raw_key, bytes = size, "extracted");
    Ok((processed, pulled.watermark.map(watermark_text)))
}

impl HttpPull<'_> {
    /// The window's first URL: the source's URL with the window's bounds.
    pub fn window_url(&self, range: &HttpRange) -> Result<Url, WorkerError> {
        let mut url = Url::parse(&self.spec.url)
            .map_err(|e| WorkerError::Config(format!("source.http.url: {e}")))?;
        for (param, value) in [
            (&self.spec.window_from_param, &range.window_from),
            (&self.spec.window_to_param, &range.window_to),
        ] {
            if let (Some(p), Some(v)) = (param, value) {
                set_param(&mut url, p, v);
            }
        }
        Ok(url)
    }

    /// Reads every page of the window, writing each record as an NDJSON line to `out`.
    pub fn pull(
        &self,
        range: &HttpRange,
        out: &mut (dyn Write + Send),
    ) -> Result<Pulled, WorkerError> {
        let mut paging = Paging::new(&self.spec.pagination);
        let mut next = Some(paging.first(self.window_url(range)?));
        let mut pulled = Pulled::default();
        while let Some(url) = next.take() {
            if pulled.pages >= u64::from(self.spec.max_pages.get()) {
                return Err(source_err(
                    &url,
                    format!(
                        "still paginating after {} pages (source.http.max_pages); the pagination rule may not match this API",
                        pulled.pages
                    ),
                    false,
                ));
            }
            let (body, link) = self.get_json(&url, pulled.pages + 1)?;
            pulled.pages += 1;
            let records = self.records(&body, &url, pulled.pages)?;
            for r in records {
                self.write_record(r, out, &mut pulled)
                    .map_err(|e| BackendError::io("the raw extract", e))?;
            }
            next = paging
                .next(&url, &body, link.as_deref(), records.len())
                .map_err(|e| source_err(&url, format!("page {}: {e}", pulled.pages), false))?;
        }
        Ok(pulled)
    }

    /// The page's records: the array at `records_path` (null is none).
    fn records<'b>(
        &self,
        body: &'b serde_json::Value,
        url: &Url,
        page: u64,
    ) -> Result<&'b [serde_json::Value], WorkerError> {
        let path = &self.spec.records_path;
        match json_at(body, path) {
            Some(serde_json::Value::Array(a)) => Ok(a),
            Some(serde_json::Value::Null) => Ok(&[]),
            found => Err(source_err(
                url,
                format!(
                    "page {page}: {} (source.http.records_path {path:?}); the page starts {}",
                    match found {
                        None => "has no records array there".to_string(),
                        Some(v) => format!("holds {} there, not an array of records", kind_of(v)),
                    },
                    snippet(&body.to_string())
                ),
                false,
            )),
        }
    }

    fn write_record(
        &self,
        r: &serde_json::Value,
        out: &mut (dyn Write + Send),
        pulled: &mut Pulled,
    ) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
        pulled.records += 1;
        if let Some(f) = &self.spec.watermark_field {
            match json_at(r, f).and_then(watermark_value) {
                Some(t) => pulled.watermark = pulled.watermark.max(Some(t)),
                None => pulled.without_watermark += 1,
            }
        }
        Ok(())
    }

    /// One page as JSON, retried by the rules of [`decide`]; also its `Link` header.
    fn get_json(
        &self,
        url: &Url,
        page: u64,
    ) -> Result<(serde_json::Value, Option<String>), WorkerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limiter.wait();
            let (outcome, detail) = match self.get_once(url) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err((outcome, detail))) => (outcome, detail),
                Err(e) => (Outcome::NoAnswer, format!("no answer: {e}")),
            };
            let decision = decide(
                &outcome,
                attempt,
                self.spec.max_retries,
                self.spec.retry_backoff(),
                self.spec.max_retry_after(),
                chrono::Utc::now(),
            );
            match decision {
                Decision::RetryAfter(wait) => {
                    tracing::warn!(url = %redacted(url), page, attempt, wait_ms = wait.as_millis() as u64, %detail, "API request failed; retrying");
                    std::thread::sleep(wait);
                }
                Decision::GiveUp { retryable, why } => {
                    let hint = self.auth_hint(&outcome);
                    return Err(source_err(
                        url,
                        format!("page {page}: {detail} ({why}){hint}"),
                        retryable,
                    ));
                }
            }
        }
    }

    /// One request: the page and its `Link` header, or why it failed (the outcome and the
    /// answer's status and start); `Err` when there was no answer.
    #[allow(clippy::type_complexity)]
    fn get_once(
        &self,
        url: &Url,
    ) -> Result<Result<(serde_json::Value, Option<String>), (Outcome, String)>, ureq::Error> {
        let mut req = self
            .agent
            .get(url.as_str())
            .header("Accept", "application/json");
        for (k, v) in &self.spec.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(a) = &self.auth {
            req = req.header(self.spec.auth_header_name.as_str(), a.as_str());
        }
        let mut resp = req.call()?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let (retry_after, link) = (header("retry-after"), header("link"));
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_PAGE_BYTES)
            .read_to_vec()?;
        if !status.is_success() {
            let detail = format!(
                "answered {status}: {}",
                snippet(&String::from_utf8_lossy(&body))
            );
            let outcome = Outcome::Status {
                code: status.as_u16(),
                retry_after,
            };
            return Ok(Err((outcome, detail)));
        }
        match serde_json::from_slice(&body) {
            Ok(v) => Ok(Ok((v, link))),
            Err(e) => Ok(Err((
                Outcome::InvalidJson,
                format!(
                    "answered {status} with invalid JSON ({e}): {}",
                    snippet(&String::from_utf8_lossy(&body))
                ),
            ))),
        }
    }

    /// What a refused credential points at.
    fn auth_hint(&self, outcome: &Outcome) -> String {
        let Outcome::Status {
            code: 401 | 403, ..
        } = outcome
        else {
            return String::new();
        };
        match &self.spec.auth_header_env {
            Some(v) => format!(
                "; the API refused the {} header taken from {v} (source.http.auth_header_env)",
                self.spec.auth_header_name
            ),
            None => "; the API wants credentials: set source.http.auth_header_env".into(),
        }
    }
}

fn source_err(url: &Url, detail: String, retryable: bool) -> WorkerError {
    WorkerError::Backend(BackendError::Source {
        source_name: format!("GET {}", redacted(url)),
        detail,
        retryable,
    })
}

/// The URL as errors and logs show it: the values of query parameters that look like secrets
/// (`api_key`, `token`, `signature`, …) replaced by `***`.
pub fn redacted(url: &Url) -> String {
    const SECRET: [&str; 6] = ["key", "token", "secret", "signature", "password", "auth"];
    if !url
        .query_pairs()
        .any(|(k, _)| SECRET.iter().any(|s| k.to_ascii_lowercase().contains(s)))
    {
        return url.to_string();
    }
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let secret = SECRET.iter().any(|s| k.to_ascii_lowercase().contains(s));
            (
                k.into_owned(),
                if secret { "***".into() } else { v.into_owned() },
            )
        })
        .collect();
    shown.query_pairs_mut().clear().extend_pairs(pairs);
    shown.to_string()
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The start of a body, for an error message.
fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The HTTP client: TLS through rustls (`backends::tls`'s provider) with the system's roots; status codes are answers, not errors.
pub fn agent(timeout: Duration) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    static ROOTS: OnceLock<Arc<Vec<Certificate<'static>>>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        Arc::new(
            rustls_native_certs::load_native_certs()
                .certs
                .into_iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        )
    });
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(roots.clone()))
        .unversioned_rustls_crypto_provider(backends::tls::provider())
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(tls)
        .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// At most `per_sec` requests a second, shared by every pull of one pipeline in this process.
pub struct RateLimiter {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// The limiter of pipeline `name` (one per process; a changed rate replaces it).
    pub fn of(name: &str, per_sec: Option<f64>) -> Arc<RateLimiter> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<RateLimiter>>>> = OnceLock::new();
        let interval = per_sec.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut all = ALL.get_or_init(Default::default).lock().expect("limiters");
        let l = all
            .entry(name.to_string())
            .or_insert_with(|| RateLimiter::new(interval));
        if l.interval != interval {
            *l = RateLimiter::new(interval);
        }
        l.clone()
    }

    fn new(interval: Option<Duration>) -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            interval,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Takes the next request slot: how long to wait for it from `now`.
    pub fn take(&self, now: Instant) -> Duration {
        let Some(step) = self.interval else {
            return Duration::ZERO;
        };
        let mut next = self.next.lock().expect("limiter");
        let at = (*next).max(now);
        *next = at + step;
        at - now
    }

    fn wait(&self) {
        let d = self.take(Instant::now());
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_spaces_requests_evenly_from_the_first() {
        let l = RateLimiter::new(Some(Duration::from_millis(250)));
        let t0 = Instant::now();
        assert_eq!(l.take(t0), Duration::ZERO);
        assert_eq!(l.take(t0), Duration::from_millis(250));
        assert_eq!(
            l.take(t0 + Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(
            l.take(t0 + Duration::from_secs(10)),
            Duration::ZERO,
            "an idle limiter does not bank slots"
        );
        assert_eq!(RateLimiter::new(None).take(t0), Duration::ZERO);
        let a = RateLimiter::of("p-limit", Some(4.0));
        assert!(
            Arc::ptr_eq(&a, &RateLimiter::of("p-limit", Some(4.0))),
            "shared per pipeline"
        );
        assert!(!Arc::ptr_eq(&a, &RateLimiter::of("p-limit", Some(2.0))));
    }

    #[test]
    fn error_snippets_are_short_and_urls_hide_their_secrets() {
        let long = "x".repeat(500);
        assert_eq!(snippet(&long).chars().count(), 201);
        let e = source_err(
            &Url::parse("https://api.test/v1/a?api_key=hush&page=2").unwrap(),
            "page 2: boom".into(),
            true,
        );
        let text = e.to_string();
        assert!(
            text.contains("GET https://api.test/v1/a?api_key=***&page=2") && !text.contains("hush"),
            "{text}"
        );
        assert!(e.is_retryable());
        let plain = Url::parse("https://api.test/v1/a?since=2026-11-02T00:00:00Z").unwrap();
        assert_eq!(redacted(&plain), plain.to_string());
    }
}
