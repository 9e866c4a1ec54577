//! HTTP API sources end to end (issue 10, item 3): `coordinator run` against an API the test
//! serves on 127.0.0.1 ([`tributary_tests::api`]), which paginates five ways, throttles, fails,
//! answers invalid JSON, refuses a wrong token and changes its schema mid-run.

use std::path::{Path, PathBuf};

use serde_json::json;
use tributary_tests::api::{FakeApi, Fault, Paging, orders};
use tributary_tests::*;

const TOKEN_VAR: &str = "TRIBUTARY_TEST_API_TOKEN";

/// A pipeline over the fake API with the given pagination table and extra `[source.http]` keys.
fn pipeline(url: &str, pagination: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "api_orders"
[source]
kind = "http"
[source.http]
url = "{url}"
records_path = "data"
retry_backoff = "50ms"
max_retries = 3
{extra}
[source.http.pagination]
{pagination}
[[columns]]
name = "id"
type = "int64"
required = true
[[columns]]
name = "customer"
path = "customer.name"
type = "string"
[[columns]]
name = "tier"
path = "customer.tier"
type = "string"
[[columns]]
name = "amount"
type = "decimal(12,2)"
required = true
[[columns]]
name = "updated_at"
type = "timestamp"
required = true
[load]
merge_keys = ["id"]
"#
    )
}

const NEXT_LINK: &str = "kind = \"next_link\"\nnext_path = \"links.next\"";

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("api_orders.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_api(p: &Path, data: &Path, token: Option<&str>) -> std::process::Output {
    let args = [
        "run",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-progress",
    ];
    match token {
        Some(t) => coordinator_with(&args, None, &[(TOKEN_VAR, t)]),
        None => coordinator(&args, None),
    }
}

fn count(data: &Path, sql: &str) -> String {
    table(data, sql)
        .lines()
        .nth(2)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn watermark(data: &Path) -> Option<String> {
    let w = std::fs::read(data.join("state/pipelines/api_orders/watermark")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
    v["cursor"].as_str().map(String::from)
}

/// Midnight UTC `days` days ago, as RFC 3339.
fn days_ago(days: i64) -> String {
    let d = chrono::Utc::now().date_naive() - chrono::Duration::days(days);
    format!("{d}T00:00:00Z")
}

#[test]
fn an_api_is_read_window_by_window_then_only_what_changed_after_its_watermark() {
    let start = days_ago(3);
    let api = FakeApi::start(orders(1, 3000, &start), Paging::NextLink, 250);
    api.with(|s| s.token = Some("Bearer s3cret".into()));
    let dir = tempfile::tempdir().unwrap();
    let windowed = format!(
        "window_from_param = \"updated_since\"\nwindow_to_param = \"updated_until\"\nwindow = \"1d\"\n\
         start = \"{}\"\nwatermark_field = \"updated_at\"\nauth_header_env = \"{TOKEN_VAR}\"",
        &start[..10]
    );
    let p = write(dir.path(), &pipeline(&api.url(), NEXT_LINK, &windowed));
    let data = dir.path().join("data");

    let first = stats(&ok(&run_api(&p, &data, Some("Bearer s3cret"))));
    assert_eq!(first["rows_out"], 3000, "{first}");
    assert_eq!(count(&data, "SELECT count(*) FROM api_orders"), "3000");
    let windows = first["shards"].as_u64().unwrap();
    assert_eq!(windows, 4, "three days and today, a window each: {first}");
    let raw = files_under(&data.join("files/raw/api_orders"));
    assert_eq!(
        raw.len(),
        4,
        "one raw zstd NDJSON object per window: {raw:?}"
    );
    let pages = api.requests().len();
    assert!(pages >= 3000 / 250, "paginated: {pages} requests");
    let last = orders(1, 3000, &start)[2999]["updated_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        watermark(&data).as_deref(),
        Some(last.as_str()),
        "the latest updated_at loaded"
    );
    assert_eq!(
        count(
            &data,
            "SELECT customer || '/' || tier FROM api_orders WHERE id = 2"
        ),
        "c2/gold"
    );

    // 100 new orders and 10 changed ones, all after the watermark.
    let at = |ago: i64| {
        (chrono::Utc::now() - chrono::Duration::seconds(ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    api.with(|s| {
        s.records.extend(orders(3001, 100, &at(7200)));
        for (i, r) in s
            .records
            .iter_mut()
            .filter(|r| r["id"].as_u64().unwrap() % 300 == 0)
            .enumerate()
        {
            r["amount"] = json!("999.99");
            r["updated_at"] = json!(at(600 - i as i64));
        }
        s.requests.clear();
    });
    let second = stats(&ok(&run_api(&p, &data, Some("Bearer s3cret"))));
    assert_eq!(second["rows_out"], 110, "only what changed: {second}");
    assert_eq!(count(&data, "SELECT count(*) FROM api_orders"), "3100");
    assert_eq!(
        count(
            &data,
            "SELECT count(*) FROM api_orders WHERE amount = 999.99"
        ),
        "10",
        "updates merged by key: {}",
        table(
            &data,
            "SELECT id, amount, updated_at, _tributary_source_object FROM api_orders WHERE id % 300 = 0"
        )
    );
    let asked = api.requests();
    let since = format!("updated_since={}", last.replace(':', "%3A"));
    assert!(
        asked.iter().any(|r| r.contains(&since)),
        "the next run starts at the watermark: {asked:?}"
    );

    // The API's window start is inclusive: the record at the watermark is read again and merged.
    let third = stats(&ok(&run_api(&p, &data, Some("Bearer s3cret"))));
    assert_eq!(
        third["rows_out"], 1,
        "nothing new but the record at the watermark: {third}"
    );
    assert_eq!(count(&data, "SELECT count(*) FROM api_orders"), "3100");

    // A refused credential fails the run, names the variable, and moves nothing.
    let before = watermark(&data);
    let out = run_api(&p, &data, Some("Bearer wrong"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(text.contains("401") && text.contains(TOKEN_VAR), "{text}");
    assert_eq!(
        watermark(&data),
        before,
        "a failed run never moves the watermark"
    );
}

#[test]
fn throttling_failures_and_invalid_json_are_retried_and_a_lasting_fault_fails_the_shard() {
    let api = FakeApi::start(orders(1, 500, "2026-11-01T00:00:00Z"), Paging::Cursor, 100);
    api.with(|s| {
        s.faults
            .extend([Fault::Throttle(1), Fault::Unavailable, Fault::InvalidJson]);
    });
    let dir = tempfile::tempdir().unwrap();
    let cursor = "kind = \"cursor\"\ncursor_path = \"meta.next_cursor\"\ncursor_param = \"cursor\"";
    let p = write(
        dir.path(),
        &pipeline(&api.url(), cursor, "rate_limit_per_sec = 50"),
    );
    let data = dir.path().join("data");
    let started = std::time::Instant::now();
    let s = stats(&ok(&run_api(&p, &data, None)));
    assert_eq!(s["rows_out"], 500, "{s}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was honoured"
    );
    let asked = api.requests();
    assert_eq!(
        asked.len(),
        5 + 3,
        "five pages and three retried requests: {asked:?}"
    );
    assert!(
        asked.iter().any(|r| r.contains("cursor=after-400")),
        "{asked:?}"
    );

    api.with(|s| {
        s.always = Some(Fault::InvalidJson);
        s.records.extend(orders(501, 10, "2026-11-02T00:00:00Z"));
    });
    let out = run_api(&p, &data, None);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAILED s00000")
            && stdout.contains("invalid JSON")
            && stdout.contains(&api.url()),
        "the shard fails naming the URL and why: {stdout}"
    );
    assert_eq!(
        count(&data, "SELECT count(*) FROM api_orders"),
        "500",
        "nothing of the failed run loaded"
    );
    let run_id = stats(&stdout)["run_id"].as_str().unwrap().to_string();
    api.with(|s| s.always = None);
    let retried = ok(&coordinator(
        &["retry", &run_id, "--data-dir", data.to_str().unwrap()],
        None,
    ));
    assert_eq!(stats(&retried)["rows_out"], 510, "{retried}");
    assert_eq!(count(&data, "SELECT count(*) FROM api_orders"), "510");
}

#[test]
fn records_whose_shape_changes_mid_run_are_quarantined_with_their_reason() {
    let mut records = orders(1, 400, "2026-11-01T00:00:00Z");
    for r in records.iter_mut().skip(200) {
        // From the third page on, the API renames `amount` and flattens `customer`.
        let amount = r.as_object_mut().unwrap().remove("amount").unwrap();
        r["total"] = amount;
        r["customer"] = json!("flat");
    }
    let api = FakeApi::start(records, Paging::Page, 100);
    let dir = tempfile::tempdir().unwrap();
    let page = "kind = \"page\"\npage_param = \"page\"\nsize_param = \"per_page\"\nsize = 100";
    let p = write(dir.path(), &pipeline(&api.url(), page, ""));
    let data = dir.path().join("data");
    let s = stats(&ok(&run_api(&p, &data, None)));
    assert_eq!(s["lines_total"], 400, "{s}");
    assert_eq!(s["rows_out"], 200, "{s}");
    let q: String = files_under(&data.join("files/quarantine/api_orders"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(
        q.lines().count(),
        200,
        "every changed record kept with its reason"
    );
    assert!(
        q.contains("amount"),
        "the reason names the field: {}",
        q.lines().next().unwrap()
    );
    assert_eq!(count(&data, "SELECT count(*) FROM api_orders"), "200");
}

#[test]
fn every_pagination_rule_reads_every_record_once() {
    for (paging, rule) in [
        (Paging::NextLink, NEXT_LINK.to_string()),
        (Paging::LinkHeader, "kind = \"link_header\"".to_string()),
        (
            Paging::Cursor,
            "kind = \"cursor\"\ncursor_path = \"meta.next_cursor\"\ncursor_param = \"cursor\""
                .into(),
        ),
        (
            Paging::Page,
            "kind = \"page\"\nsize_param = \"per_page\"\nsize = 5".into(),
        ),
        (Paging::Offset, "kind = \"offset\"\nsize = 5".into()),
    ] {
        let api = FakeApi::start(orders(1, 23, "2026-11-01T00:00:00Z"), paging, 5);
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &pipeline(&api.url(), &rule, ""));
        let data = dir.path().join("data");
        let s = stats(&ok(&run_api(&p, &data, None)));
        assert_eq!(
            (s["lines_total"].as_u64(), s["rows_out"].as_u64()),
            (Some(23), Some(23)),
            "{paging:?}: {s}"
        );
        assert_eq!(api.requests().len(), 5, "{paging:?}: {:?}", api.requests());
        assert_eq!(
            count(&data, "SELECT count(DISTINCT id) FROM api_orders"),
            "23",
            "{paging:?}"
        );
    }
}

#[test]
fn a_backfill_asks_the_api_window_by_window_and_leaves_the_watermark() {
    let api = FakeApi::start(
        orders(1, 3 * 1440, "2026-11-01T00:00:00Z"),
        Paging::NextLink,
        1000,
    );
    let dir = tempfile::tempdir().unwrap();
    let windowed = "window_from_param = \"updated_since\"\nwindow_to_param = \"updated_until\"\nwatermark_field = \"updated_at\"";
    let p = write(dir.path(), &pipeline(&api.url(), NEXT_LINK, windowed));
    let data = dir.path().join("data");
    let args = |dry: bool| {
        let mut a = vec![
            "backfill".to_string(),
            p.display().to_string(),
            "--from".into(),
            "2026-11-02".into(),
            "--to".into(),
            "2026-11-03".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        if dry {
            a.push("--dry-run".into());
        }
        a
    };
    let dry: Vec<String> = args(true);
    let out = ok(&coordinator(
        &dry.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    ));
    let plan: serde_json::Value = serde_json::from_str(
        out.lines()
            .find_map(|l| l.strip_prefix("PLAN "))
            .expect("a PLAN line"),
    )
    .unwrap();
    assert_eq!(
        (plan["windows"].as_u64(), plan["shards"].as_u64()),
        (Some(2), Some(2)),
        "{plan}"
    );
    assert!(
        plan["bytes"].is_null(),
        "an API cannot know its bytes before it is read: {plan}"
    );
    assert!(!data.exists(), "a dry run writes nothing");
    assert!(api.requests().is_empty(), "and asks the API nothing");

    let real: Vec<String> = args(false);
    ok(&coordinator(
        &real.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    ));
    assert_eq!(
        count(&data, "SELECT count(*) FROM api_orders"),
        "2880",
        "two days of a minute each"
    );
    assert_eq!(
        count(&data, "SELECT min(updated_at) FROM api_orders"),
        "2026-11-02 00:00:00.000000",
        "{}",
        table(
            &data,
            "SELECT min(updated_at), max(updated_at) FROM api_orders"
        )
    );
    assert_eq!(
        watermark(&data),
        None,
        "a backfill never moves the watermark"
    );
}

#[test]
fn an_unset_credential_variable_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        &pipeline(
            "http://127.0.0.1:9/v1/orders",
            NEXT_LINK,
            "auth_header_env = \"TRIBUTARY_TEST_NOT_SET\"",
        ),
    );
    let data = dir.path().join("data");
    let out = run_api(&p, &data, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("TRIBUTARY_TEST_NOT_SET")
            && err.contains("is not set"),
        "{err}"
    );
    assert!(!data.exists(), "nothing was written");
}
