//! MySQL and MariaDB sources end to end (issue 10, item 2), on the machine's MariaDB: a table
//! read in key-range shards through the raw zone, then incrementally after its watermark with
//! updated rows merged by key; its columns and types read from the table when the pipeline
//! declares none.

use std::path::Path;

use mysql_async::prelude::Queryable;
use tributary_tests::*;

const VAR: &str = "TRIBUTARY_TEST_SHOP_DB";

const PIPELINE: &str = r#"
[pipeline]
name = "shop_orders"
[source]
kind = "mysql"
[source.sql]
connection_env = "TRIBUTARY_TEST_SHOP_DB"
table = "orders"
cursor_column = "updated_at"
key_column = "order_id"
shard_rows = 1500
lookback = "1s"
[load]
merge_keys = ["order_id"]
"#;

async fn seed(name: &str) -> Option<(String, mysql_async::Conn)> {
    let url = backends::testkit::mysql()?;
    let url = backends::testkit::mysql_database(&url, &backends::testkit::unique(name)).await;
    let mut conn = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
    conn.query_drop(
        "SET time_zone = '+00:00'; SET max_recursive_iterations = 100000;
         CREATE TABLE orders (order_id BIGINT PRIMARY KEY, customer VARCHAR(40), amount DECIMAL(12,2),
           paid TINYINT(1), placed DATETIME, updated_at TIMESTAMP(3) NOT NULL);
         INSERT INTO orders
           WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 5000)
           SELECT n, CONCAT('c', n % 97), n * 0.01, n % 3 = 0,
             CAST('2026-03-29 02:30:00' AS DATETIME) + INTERVAL n MINUTE,
             TIMESTAMP '2026-11-01 00:00:00' + INTERVAL n MINUTE
           FROM g;",
    )
    .await
    .unwrap();
    Some((url, conn))
}

fn run(p: &Path, data: &Path, url: &str) -> serde_json::Value {
    let args = [
        "run",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-progress",
    ];
    stats(&ok(&coordinator_with(&args, None, &[(VAR, url)])))
}

fn one(data: &Path, sql: &str) -> String {
    table(data, sql)
        .lines()
        .nth(2)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mysql_table_loads_with_its_types_then_only_new_and_updated_rows_are_taken() {
    let Some((url, mut conn)) = seed("mysrc_e2e").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shop_orders.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");

    let first = run(&p, &data, &url);
    assert_eq!(first["rows_out"], 5000, "{first}");
    assert_eq!(first["shards"], 4, "{first}");
    let cols = table(
        &data,
        "SELECT name || ':' || type AS c FROM pragma_table_info('shop_orders') WHERE name NOT LIKE '_tributary%' ORDER BY cid",
    );
    for want in [
        "order_id:BIGINT",
        "customer:TEXT",
        "amount:DECIMAL(12,2)",
        "paid:BOOLEAN",
        "placed:TIMESTAMP",
        "updated_at:TIMESTAMP",
    ] {
        assert!(cols.contains(want), "{want} in {cols}");
    }
    assert_eq!(
        one(&data, "SELECT amount FROM shop_orders WHERE order_id = 7"),
        "0.07"
    );
    assert_eq!(
        one(&data, "SELECT paid FROM shop_orders WHERE order_id = 9"),
        "1"
    );
    assert_eq!(
        one(&data, "SELECT placed FROM shop_orders WHERE order_id = 1"),
        "2026-03-29 02:31:00.000000",
        "a DATETIME as written (no zone)"
    );

    conn.query_drop(
        "INSERT INTO orders (order_id, customer, amount, paid, updated_at)
           WITH RECURSIVE g(n) AS (SELECT 5001 UNION ALL SELECT n + 1 FROM g WHERE n < 5100)
           SELECT n, 'new', 1.50, 0, NOW(3) FROM g;
         UPDATE orders SET amount = 999.99, updated_at = NOW(3) WHERE order_id IN (1, 2500, 4999);",
    )
    .await
    .unwrap();
    let second = run(&p, &data, &url);
    assert_eq!(
        second["rows_out"], 104,
        "the rows after the watermark, and the last row again (within the 1 s lookback): {second}"
    );
    assert_eq!(one(&data, "SELECT count(*) FROM shop_orders"), "5100");
    assert_eq!(
        one(
            &data,
            "SELECT count(*) FROM shop_orders WHERE amount = 999.99"
        ),
        "3",
        "merged by key"
    );
    let _ = conn.disconnect().await;
}

#[test]
fn a_wrong_url_or_a_missing_table_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shop_orders.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let args = [
        "run",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let out = coordinator_with(&args, None, &[(VAR, "postgres://u@127.0.0.1/db")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mysql://user:password@host"),
        "{err}"
    );
    let Some(url) = backends::testkit::mysql() else {
        return;
    };
    let out = coordinator_with(&args, None, &[(VAR, &url)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("orders") && err.contains("doesn't exist"),
        "{err}"
    );
    assert!(!data.exists(), "nothing was written");
}
