//! Database sources end to end (issue 10): a PostgreSQL table read in key-range shards through
//! the raw zone, then incrementally after its watermark, with updated rows merged by key.

use std::path::Path;

use tributary_tests::*;

const PIPELINE: &str = r#"
[pipeline]
name = "orders"
[source]
kind = "postgres"
[source.sql]
connection_env = "TRIBUTARY_TEST_ORDERS_DB"
table = "orders"
cursor_column = "updated_at"
key_column = "order_id"
shard_rows = 1500
[[columns]]
name = "order_id"
type = "int64"
required = true
[[columns]]
name = "customer"
type = "string"
[[columns]]
name = "amount"
type = "decimal(12,2)"
[[columns]]
name = "paid"
type = "bool"
[[columns]]
name = "updated_at"
type = "timestamp"
[output]
columns = ["order_id", "customer", "amount", "paid", "updated_at"]
[load]
merge_keys = ["order_id"]
"#;

async fn seed(conn: &str, schema: &str) -> (String, tokio_postgres::Client) {
    let conn = backends::testkit::postgres_schema(conn, schema).await;
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer TEXT, amount NUMERIC(12,2),
               paid BOOLEAN, updated_at TIMESTAMPTZ NOT NULL);
             INSERT INTO orders SELECT g, 'c' || (g % 97), g * 0.01, g % 3 = 0,
               TIMESTAMPTZ '2026-11-01 00:00:00+00' + g * INTERVAL '1 minute'
             FROM generate_series(1, 5000) AS g;",
        )
        .await
        .unwrap();
    (conn, client)
}

fn run(p: &Path, data: &Path, conn: &str) -> serde_json::Value {
    let args = [
        "run",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-progress",
    ];
    stats(&ok(&coordinator_with(
        &args,
        None,
        &[("TRIBUTARY_TEST_ORDERS_DB", conn)],
    )))
}

fn count(data: &Path, sql: &str) -> String {
    table(data, sql)
        .lines()
        .nth(2)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test]
async fn a_postgres_table_loads_then_only_new_and_updated_rows_are_taken() {
    let Some(pg) = backends::testkit::postgres() else {
        return;
    };
    let (conn, client) = seed(&pg, &backends::testkit::unique("sqlsrc")).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");

    let first = run(&p, &data, &conn);
    assert_eq!(first["rows_out"], 5000, "{first}");
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "5000");
    let raw: Vec<_> = files_under(&data.join("files/raw/orders"));
    assert_eq!(
        raw.len(),
        4,
        "one raw zstd NDJSON object per key-range shard: {raw:?}"
    );
    assert!(
        raw.iter()
            .all(|r| r.to_string_lossy().ends_with(".ndjson.zst"))
    );

    client
        .batch_execute(
            "INSERT INTO orders SELECT g, 'new', 1.50, false, now() FROM generate_series(5001, 5100) AS g;
             UPDATE orders SET amount = 999.99, updated_at = now() WHERE order_id IN (1, 2500, 4999);",
        )
        .await
        .unwrap();
    let second = run(&p, &data, &conn);
    assert_eq!(
        second["rows_out"], 103,
        "only rows after the watermark: {second}"
    );
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "5100");
    assert_eq!(
        count(&data, "SELECT count(*) FROM orders WHERE amount = 999.99"),
        "3",
        "updates merged by key: {}",
        table(
            &data,
            "SELECT order_id, amount, typeof(amount), updated_at FROM orders WHERE order_id IN (1, 2500, 4999)"
        )
    );
    assert_eq!(
        count(&data, "SELECT amount FROM orders WHERE order_id = 7"),
        "0.07",
        "exact decimals through the raw zone"
    );

    let third = run(&p, &data, &conn);
    assert_eq!(third["rows_out"], 0, "nothing new: {third}");
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "5100");
}

#[test]
fn a_missing_connection_variable_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &p,
        PIPELINE.replace("TRIBUTARY_TEST_ORDERS_DB", "TRIBUTARY_TEST_NOT_SET"),
    )
    .unwrap();
    let out = run_pipeline(&p, &data, &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TRIBUTARY_TEST_NOT_SET") && err.contains("is not set"),
        "{err}"
    );
    assert!(!data.exists(), "nothing was written");
}

/// The keys of the issue only: no `[[columns]]` and no `[output]`; the table's columns are
/// read from PostgreSQL with their types.
const BARE: &str = r#"
[pipeline]
name = "orders"
[source]
kind = "postgres"
[source.sql]
connection_env = "TRIBUTARY_TEST_ORDERS_DB"
table = "orders"
cursor_column = "updated_at"
key_column = "order_id"
shard_rows = 2000
[load]
merge_keys = ["order_id"]
"#;

#[tokio::test]
async fn a_pipeline_without_columns_takes_the_tables_columns_and_types() {
    let Some(pg) = backends::testkit::postgres() else {
        return;
    };
    let (conn, client) = seed(&pg, &backends::testkit::unique("sqlbare")).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    std::fs::write(&p, BARE).unwrap();
    let data = dir.path().join("data");
    let env = [("TRIBUTARY_TEST_ORDERS_DB", conn.as_str())];
    let v = ok(&coordinator_with(
        &["validate", p.to_str().unwrap()],
        None,
        &env,
    ));
    assert!(v.contains("5 columns"), "{v}");
    assert_eq!(run(&p, &data, &conn)["rows_out"], 5000);
    let cols = table(
        &data,
        "SELECT name || ':' || type AS c FROM pragma_table_info('orders') WHERE name NOT LIKE '_tributary%' ORDER BY cid",
    );
    for want in [
        "order_id:BIGINT",
        "customer:TEXT",
        "amount:DECIMAL(12,2)",
        "paid:BOOLEAN",
        "updated_at:TIMESTAMP",
    ] {
        assert!(cols.contains(want), "{want} in {cols}");
    }
    client
        .batch_execute("UPDATE orders SET paid = true, updated_at = now() WHERE order_id = 10")
        .await
        .unwrap();
    assert_eq!(run(&p, &data, &conn)["rows_out"], 1);
    assert_eq!(
        count(&data, "SELECT paid FROM orders WHERE order_id = 10"),
        "1"
    );
}

/// `sslmode=require` in the connection string: the run reads over TLS, the server's certificate
/// verified against `tls_ca_file` (the machine's PostgreSQL serves Debian's `localhost` one).
#[tokio::test]
async fn a_run_reads_over_tls_when_the_connection_string_requires_it() {
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let Some(pg) = backends::testkit::postgres() else {
        return;
    };
    if !Path::new(snakeoil).is_file() {
        eprintln!("SKIPPED: no {snakeoil}");
        return;
    }
    let (conn, _client) = seed(&pg, &backends::testkit::unique("sqltls")).await;
    let tls = format!(
        "{} host=localhost sslmode=require",
        conn.replace("host=127.0.0.1", "")
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    std::fs::write(
        &p,
        PIPELINE.replace(
            "shard_rows = 1500\n",
            &format!("shard_rows = 1500\ntls_ca_file = \"{snakeoil}\"\n"),
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    assert_eq!(run(&p, &data, &tls)["rows_out"], 5000);
}

/// Issue 10's check as it is stated: 50,000 orders through a pipeline file with only the keys
/// the issue names (no `[[columns]]`, no `[load]`: the key column is the merge key), then 1,000
/// new and 10 updated rows picked up by a second run.
const ISSUE_CHECK: &str = r#"
[pipeline]
name = "orders"
[source]
kind = "postgres"
[source.sql]
connection_env = "TRIBUTARY_TEST_ORDERS_DB"
table = "orders"
cursor_column = "updated_at"
key_column = "order_id"
shard_rows = 10000
"#;

#[tokio::test]
async fn fifty_thousand_orders_then_a_thousand_new_and_ten_updated_with_only_the_issues_keys() {
    let Some(pg) = backends::testkit::postgres() else {
        return;
    };
    let conn = backends::testkit::postgres_schema(&pg, &backends::testkit::unique("sql50k")).await;
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer TEXT, amount NUMERIC(12,2),
               status TEXT, updated_at TIMESTAMPTZ NOT NULL);
             INSERT INTO orders SELECT g, 'c' || (g % 977), g * 0.01, 'open',
               TIMESTAMPTZ '2026-10-01 00:00:00+00' + g * INTERVAL '1 second'
             FROM generate_series(1, 50000) AS g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    std::fs::write(&p, ISSUE_CHECK).unwrap();
    let data = dir.path().join("data");
    let first = run(&p, &data, &conn);
    assert_eq!(
        (first["rows_out"].as_u64(), first["shards"].as_u64()),
        (Some(50_000), Some(5)),
        "{first}"
    );
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "50000");
    client
        .batch_execute(
            "INSERT INTO orders SELECT g, 'new', 5.00, 'open', now() FROM generate_series(50001, 51000) AS g;
             UPDATE orders SET status = 'shipped', updated_at = now() WHERE order_id % 5000 = 0;",
        )
        .await
        .unwrap();
    let second = run(&p, &data, &conn);
    assert_eq!(second["rows_out"], 1010, "{second}");
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "51000");
    assert_eq!(
        count(
            &data,
            "SELECT count(*) FROM orders WHERE status = 'shipped'"
        ),
        "10",
        "updates merged"
    );
}

/// Issue 10, item 7: a database source backfilled over windows of its cursor — the dry run
/// counts each window's rows and estimates its bytes from the table's statistics; the real one
/// loads exactly the rows of the range and leaves the watermark alone.
#[tokio::test]
async fn a_database_backfill_plans_windows_over_the_cursor_with_rows_and_bytes() {
    let Some(pg) = backends::testkit::postgres() else {
        return;
    };
    let (conn, client) = seed(&pg, &backends::testkit::unique("sqlbackfill")).await;
    // 5,000 orders a minute apart from 2026-11-01 00:01: days of 1,440 (the first 1,439).
    client.batch_execute("ANALYZE orders").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("orders.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let env = [("TRIBUTARY_TEST_ORDERS_DB", conn.as_str())];
    let args = |dry: bool| {
        let mut a = vec![
            "backfill",
            p.to_str().unwrap(),
            "--from",
            "2026-11-02",
            "--to",
            "2026-11-03",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        if dry {
            a.push("--dry-run");
        }
        a
    };
    let out = ok(&coordinator_with(&args(true), None, &env));
    let plan: serde_json::Value =
        serde_json::from_str(out.lines().find_map(|l| l.strip_prefix("PLAN ")).unwrap()).unwrap();
    assert_eq!(
        (plan["windows"].as_u64(), plan["rows"].as_u64()),
        (Some(2), Some(2880)),
        "{plan}"
    );
    assert_eq!(plan["by_window"][0]["rows"], 1440, "{plan}");
    assert!(plan["shards"].as_u64().unwrap() >= 2, "{plan}");
    assert!(
        plan["bytes"].as_u64().is_some_and(|b| b > 2880 * 10),
        "estimated: {plan}"
    );
    assert!(!data.exists(), "a dry run writes nothing");

    ok(&coordinator_with(&args(false), None, &env));
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "2880");
    assert_eq!(
        count(&data, "SELECT min(updated_at) FROM orders"),
        "2026-11-02 00:00:00.000000"
    );
    assert!(
        !data.join("state/pipelines/orders/watermark").exists(),
        "a backfill never moves the watermark"
    );
    let full = run(&p, &data, &conn);
    assert_eq!(full["rows_out"], 5000, "{full}");
    assert_eq!(count(&data, "SELECT count(*) FROM orders"), "5000");
}
