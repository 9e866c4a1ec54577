//! A PostgreSQL source on the fleet (issue 10): `coordinator serve` plans key-range shards from
//! the table, workers (separate processes, the connection string in their environment) extract
//! them into the raw zone on S3, and the second run takes only the rows after the watermark.

use std::time::Duration;

use tributary_tests::fleet::*;

const PIPELINE: &str = r#"
[pipeline]
name = "orders"
[source]
kind = "postgres"
[source.sql]
connection_env = "TRIBUTARY_TEST_ORDERS_DB"
table = "orders_src"
cursor_column = "updated_at"
key_column = "order_id"
shard_rows = 700
[load]
table = "orders"
merge_keys = ["order_id"]
"#;

fn count(f: &Fleet, sql: &str) -> String {
    f.pg_rows(sql)[0][0].clone().unwrap_or_default()
}

#[test]
fn the_fleet_loads_a_postgres_table_and_then_only_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.ndjson");
    std::fs::write(&unused, "{}\n").unwrap();
    let Some(mut f) = Fleet::new("fleetsql", &unused, 1 << 20) else {
        return;
    };
    f.pg_exec(
        "CREATE TABLE orders_src (order_id INT PRIMARY KEY, amount NUMERIC(10,2), note TEXT,
           updated_at TIMESTAMP NOT NULL);
         INSERT INTO orders_src SELECT g, g / 4.0, 'n' || g, TIMESTAMP '2026-11-01' + g * INTERVAL '1 s'
         FROM generate_series(1, 2000) AS g;",
    );
    f.use_pipeline("orders.toml", PIPELINE);
    let pg = f.pg.clone();
    let env = [("TRIBUTARY_TEST_ORDERS_DB", pg.as_str())];
    f.start_coordinator_with_env(&env);
    f.start_worker_with_env(&env);
    f.start_worker_with_env(&env);

    let run = f.trigger_pipeline("orders");
    let rec = f.wait_run(&run, Duration::from_secs(120));
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    assert_eq!(rec["shards"], 3, "{rec:#}");
    assert_eq!(rec["counts"]["rows_out"], 2000, "{rec:#}");
    assert_eq!(count(&f, "SELECT count(*) FROM orders"), "2000");
    assert_eq!(
        count(&f, "SELECT amount::text FROM orders WHERE order_id = 3"),
        "0.75"
    );
    let raw = f.s3_keys("tributary/raw/orders/");
    assert_eq!(raw.len(), 3, "one raw object per shard: {raw:?}");

    f.pg_exec(
        "UPDATE orders_src SET note = 'changed', updated_at = TIMESTAMP '2026-12-01' WHERE order_id IN (5, 1500);
         INSERT INTO orders_src VALUES (2001, 1, 'new', TIMESTAMP '2026-12-01 00:00:01');",
    );
    let second = f.trigger_pipeline("orders");
    let rec = f.wait_run(&second, Duration::from_secs(120));
    assert_eq!(rec["status"], "completed", "{rec:#}\n{}", f.logs());
    assert_eq!(rec["counts"]["rows_out"], 3, "{rec:#}");
    assert_eq!(count(&f, "SELECT count(*) FROM orders"), "2001");
    assert_eq!(
        count(&f, "SELECT count(*) FROM orders WHERE note = 'changed'"),
        "2"
    );
}
