//! The shared backend suites against a local moto server (SQS, S3) and the real PostgreSQL,
//! plus what only the AWS implementations do: payloads over the SQS limit, batch deletes of a
//! message delivered twice, multipart uploads, streaming ranged reads, SSE-KMS, clear errors.

use std::sync::Arc;
use std::time::Duration;

use backends::BackendError;
use backends::object_store::{LocalStore, ObjectStore, S3Store};
use backends::queue::{Queue, SqsQueue};
use backends::state::ObjectStateStore;
use backends::testkit;
use backends::warehouse::PostgresWarehouse;

async fn sqs_queue(endpoint: &str, vis: u32, max_receive: u32) -> SqsQueue {
    let sdk = testkit::sdk_config(endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, _) =
        testkit::create_queue_with_dlq(&sqs, &testkit::unique("q"), vis, max_receive).await;
    SqsQueue::connect(sqs, &url, None, Duration::from_secs(vis.into()))
        .await
        .unwrap()
}

async fn s3_store(endpoint: &str, prefix: &str, kms: Option<String>) -> (S3Store, String) {
    let sdk = testkit::sdk_config(endpoint).await;
    let s3 = testkit::s3_client(&sdk);
    let bucket = testkit::unique("b");
    testkit::create_bucket(&s3, &bucket).await;
    let store = S3Store::new(s3, &format!("s3://{bucket}/{prefix}"), kms).unwrap();
    (store, bucket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_queue_passes_the_suite() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let make = || -> Box<dyn Queue> {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(async { Box::new(sqs_queue(&ep, 1, 2).await) as Box<dyn Queue> })
        })
    };
    backends::queue::suite::run_all(&make, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_bodies_over_the_limit_travel_through_the_object_store() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let payloads: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    let q = sqs_queue(&ep, 5, 3)
        .await
        .with_payload_store(payloads.clone(), 1024);
    let big = format!("{{\"v\":1,\"data\":\"{}\"}}", "x".repeat(300_000));
    q.send_batch(vec![big.clone(), "small".into()])
        .await
        .unwrap();
    assert_eq!(payloads.list("payloads/").await.unwrap().len(), 1);
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(q.receive(10, Duration::from_secs(1)).await.unwrap());
    }
    let m = got
        .iter()
        .find(|m| m.body.len() > 1000)
        .expect("big body resolved");
    assert_eq!(m.body, big);
    let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
    q.delete_batch(&receipts).await.unwrap();
    assert!(
        payloads.list("payloads/").await.unwrap().is_empty(),
        "the stored payload is removed with its message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_batch_delete_of_a_message_delivered_twice() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let q = sqs_queue(&ep, 1, 5).await;
    q.send_batch(vec!["twice".into()]).await.unwrap();
    let first = q
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let mut second = Vec::new();
    while second.is_empty() {
        second = q.receive(1, Duration::from_secs(2)).await.unwrap();
    }
    assert_eq!(first.message_id, second[0].message_id);
    assert_eq!(second[0].receive_count, 2, "receive count is exposed");
    q.delete_batch(&[first.receipt.clone(), second[0].receipt.clone()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_missing_queue_and_unreachable_endpoint_are_clear_errors() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let sdk = testkit::sdk_config(&ep).await;
    let url = format!("{ep}/000000000000/no-such-queue");
    let err = SqsQueue::connect(
        aws_sdk_sqs::Client::new(&sdk),
        &url,
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-queue") && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(!err.is_retryable());

    // Nothing listens on port 9 of loopback.
    let sdk = testkit::sdk_config("http://127.0.0.1:9").await;
    let err = SqsQueue::connect(
        aws_sdk_sqs::Client::new(&sdk),
        "http://127.0.0.1:9/000000000000/q",
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_suite() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let (store, _) = s3_store(&ep, "root/", None).await;
    store.check().await.unwrap();
    backends::object_store::suite::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_upload_streaming_reads_and_sse_kms() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let kms = "arn:aws:kms:us-east-1:000000000000:key/tributary-test".to_string();
    let (store, bucket) = s3_store(&ep, "lake", Some(kms.clone())).await;
    let store = store.with_part_bytes(5 << 20);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.bin");
    let data: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f, &data).unwrap();
    assert_eq!(
        store.put_file("t/big.bin", &f).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(
        store.head("t/big.bin").await.unwrap(),
        Some(data.len() as u64)
    );
    let sdk = testkit::sdk_config(&ep).await;
    let head = testkit::s3_client(&sdk)
        .head_object()
        .bucket(&bucket)
        .key("lake/t/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms)
    );
    assert_eq!(head.ssekms_key_id(), Some(kms.as_str()));
    // A streaming read over several 8 MiB windows, and a range across a window boundary.
    let (all, part) = tokio::task::block_in_place(|| {
        use std::io::Read;
        let mut all = Vec::new();
        store
            .open_read("t/big.bin", None)
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        let mut part = Vec::new();
        store
            .open_read(
                "t/big.bin",
                Some(protocol::ByteRange {
                    start: (8 << 20) - 10,
                    end: (8 << 20) + 10,
                }),
            )
            .unwrap()
            .read_to_end(&mut part)
            .unwrap();
        (all, part)
    });
    assert!(all == data, "streamed bytes equal the file");
    assert_eq!(part, data[(8 << 20) - 10..(8 << 20) + 10]);
    assert_eq!(
        store.url("t/big.bin").unwrap(),
        format!("s3://{bucket}/lake/t/big.bin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_a_clear_error() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let sdk = testkit::sdk_config(&ep).await;
    let store = S3Store::new(
        testkit::s3_client(&sdk),
        "s3://no-such-bucket-tributary/x",
        None,
    )
    .unwrap();
    let err = store.check().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!err.is_retryable());
    let err = store.get("k").await.unwrap_err();
    assert!(
        !matches!(err, BackendError::NotFound { .. }) && err.to_string().contains("NoSuchBucket"),
        "a missing bucket is not a missing object: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_state_store_on_s3_passes_the_state_suite() {
    let Some(ep) = testkit::aws_endpoint() else {
        return;
    };
    let (store, bucket) = s3_store(&ep, "state/", None).await;
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let state = ObjectStateStore::new(store);
    let sdk = testkit::sdk_config(&ep).await;
    let client = testkit::s3_client(&sdk);
    let reopen = move || -> Box<dyn backends::state::StateStore> {
        Box::new(ObjectStateStore::new(Arc::new(
            S3Store::new(client.clone(), &format!("s3://{bucket}/state/"), None).unwrap(),
        )))
    };
    backends::state::suite::run_all(&state, &reopen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_warehouse_passes_the_suite() {
    let Some(pg) = testkit::postgres() else {
        return;
    };
    let conn = testkit::postgres_schema(&pg, &testkit::unique("whsuite")).await;
    let wh = PostgresWarehouse::connect(&conn, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
    backends::warehouse::suite::run_all(&wh, files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_clear_error() {
    let err = PostgresWarehouse::connect(
        "host=127.0.0.1 port=9 user=x dbname=y connect_timeout=2",
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    // Host, port and the cause (issue 8: the port and the cause were dropped).
    assert!(
        err.contains("connecting to postgresql://x@127.0.0.1:9/y") && err.contains("refused"),
        "{err}"
    );
}

/// A client on a fresh schema of the test PostgreSQL, if there is one.
async fn pg_client(prefix: &str) -> Option<tokio_postgres::Client> {
    let pg = testkit::postgres()?;
    let conn = testkit::postgres_schema(&pg, &testkit::unique(prefix)).await;
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    Some(client)
}

/// The Redshift plan's SQL (everything but the COPY from S3) on a real SQL engine: PostgreSQL
/// with a GETDATE() shim, the COPY replaced by inserting the file's rows into the file-shaped
/// table. Proves the staging, dedupe, merge and ledger statements do what the Data API transport
/// relies on, including that a second run of the same batch changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redshift_plan_merges_and_guards_with_the_ledger_on_a_real_engine() {
    use arrow::datatypes::{DataType, Field, Schema};
    use backends::warehouse::plan::{self, Dialect, LoadPlan};
    use protocol::{LoadBatch, LoadFile, OutputFile, SourcePosition};
    let Some(client) = pg_client("rsplan").await else {
        return;
    };
    client
        .batch_execute(
            "CREATE FUNCTION getdate() RETURNS timestamp AS 'SELECT now()::timestamp' LANGUAGE sql",
        )
        .await
        .unwrap();
    client
        .batch_execute(&plan::ledger_ddl(Dialect::Redshift))
        .await
        .unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("val", DataType::Int64, true),
    ]);
    let file = |key: &str, object: &str, offset| LoadFile {
        file: OutputFile {
            max_bytes: Default::default(),
            key: key.into(),
            partition: vec![("day".into(), "2025-05-01".into())],
            rows: 2,
            bytes: 100,
        },
        shard_index: 0,
        position: SourcePosition {
            object: object.into(),
            offset,
        },
    };
    // Each batch, with the rows of each of its file groups.
    type GroupRows = Vec<Vec<(&'static str, i64)>>;
    let batches: Vec<(LoadBatch, GroupRows)> = vec![
        (
            LoadBatch {
                batch_id: "r1-t-b0001".into(),
                run_id: "r1".into(),
                table: "events".into(),
                merge_keys: vec!["id".into()],
                shards: vec!["s1".into()],
                files: vec![file("p1.parquet", "raw/x", 500)],
                masked_columns: vec![],
                layout: Default::default(),
                external: None,
            },
            vec![vec![("b", 20), ("c", 30)]],
        ),
        (
            LoadBatch {
                batch_id: "r1-t-b0000".into(),
                run_id: "r1".into(),
                table: "events".into(),
                merge_keys: vec!["id".into()],
                shards: vec!["s0".into(), "s2".into()],
                // Two groups; key "a" appears in both: the earlier position (0) wins.
                files: vec![
                    file("p0.parquet", "raw/x", 0),
                    file("p2.parquet", "raw/x", 900),
                ],
                masked_columns: vec![],
                layout: Default::default(),
                external: None,
            },
            vec![vec![("a", 1), ("b", 2)], vec![("a", 99), ("d", 4)]],
        ),
    ];
    let run = |b: &LoadBatch, rows: &GroupRows, existing: Vec<plan::ExistingColumn>| {
        let cols = plan::columns_for(&schema, &["day".into()], Dialect::Redshift).unwrap();
        let lp = LoadPlan::new(b, cols, &existing, Dialect::Redshift).unwrap();
        let mut sqls = lp.before_data.clone();
        let stage = plan::FileStage::new(&lp, &schema, 0).unwrap();
        sqls.extend(stage.ddl());
        for (g, group) in plan::file_groups(b, &[]).iter().enumerate() {
            let [copy, insert, delete] =
                plan::redshift_copy_group(&stage, b, group, "s3://lake/m", "arn:aws:iam::1:role/r");
            assert!(copy.starts_with("COPY _tributary_file_stage FROM"));
            let values = rows[g]
                .iter()
                .map(|(id, v)| format!("('{id}', {v})"))
                .collect::<Vec<_>>()
                .join(", ");
            sqls.push(format!("INSERT INTO _tributary_file_stage VALUES {values}"));
            sqls.push(insert);
            sqls.push(delete);
        }
        sqls.extend(lp.after_data.clone());
        assert!(sqls.len() <= plan::REDSHIFT_MAX_STATEMENTS);
        sqls
    };
    let table = || async {
        client
            .query("SELECT id, val FROM events ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
    };
    for pass in 0..2 {
        for (b, rows) in &batches {
            let existing: Vec<plan::ExistingColumn> = client
                .query(
                    &plan::existing_columns_sql("events", Dialect::Redshift),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .filter_map(|r| {
                    let row: Vec<Option<String>> = (0..5).map(|i| r.get(i)).collect();
                    plan::existing_column(&row)
                })
                .collect();
            let sqls = run(b, rows, existing);
            // One transaction, as BatchExecuteStatement runs it.
            client
                .batch_execute(&format!("BEGIN; {}; COMMIT", sqls.join(";\n")))
                .await
                .unwrap_or_else(|e| panic!("pass {pass} batch {}: {e:?}", b.batch_id));
        }
        let want = vec![
            ("a".to_string(), 1),
            ("b".to_string(), 2),
            ("c".to_string(), 30),
            ("d".to_string(), 4),
        ];
        assert_eq!(table().await, want, "pass {pass}");
        let ledger: i64 = client
            .query_one("SELECT count(*) FROM _tributary_load_ledger", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ledger, 2, "pass {pass}: one ledger row per batch");
    }
}

/// S3 answers from a scripted local server: throttling (503 SlowDown) is retried with backoff
/// until it succeeds; access denied fails at once, not retryable, with a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_throttling_is_retried_and_access_denied_is_fatal() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let calls = c2.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let xml = |code: &str, msg: &str| {
                format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{msg}</Message><RequestId>r{n}</RequestId></Error>")
            };
            if uri.path().ends_with("/denied") {
                return (
                    axum::http::StatusCode::FORBIDDEN,
                    [("content-type", "application/xml")],
                    xml("AccessDenied", "Access Denied"),
                );
            }
            if n < 2 {
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "application/xml")],
                    xml("SlowDown", "Please reduce your request rate."),
                );
            }
            (
                axum::http::StatusCode::OK,
                [("content-type", "application/octet-stream")],
                "payload".to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sdk = testkit::sdk_config(&format!("http://{addr}")).await;
    let store = S3Store::new(testkit::s3_client(&sdk), "s3://bucket/p", None).unwrap();
    assert_eq!(store.get("object").await.unwrap(), b"payload");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two throttled answers, then success"
    );

    let before = calls.load(Ordering::SeqCst);
    let err = store.get("denied").await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "access denied is not retried"
    );
    assert!(!err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("AccessDenied") && msg.contains("HTTP 403") && msg.contains("IAM policy"),
        "{msg}"
    );
}

/// The columns of `table` as the Redshift transport reads them (its catalog query, run here).
async fn redshift_existing_columns(
    client: &tokio_postgres::Client,
    table: &str,
) -> Vec<backends::warehouse::plan::ExistingColumn> {
    use backends::warehouse::plan::{self, Dialect};
    client
        .query(&plan::existing_columns_sql(table, Dialect::Redshift), &[])
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            let row: Vec<Option<String>> = (0..5).map(|i| r.get(i)).collect();
            plan::existing_column(&row)
        })
        .collect()
}

/// The Redshift widening plan (a VARCHAR altered; other types rebuilt as a new column that takes
/// the old one's values and name) run in one transaction on a real SQL engine: the values stay and
/// the columns end up with the wider types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redshift_widening_plan_keeps_every_value_on_a_real_engine() {
    use arrow::datatypes::{DataType, Field, Schema};
    use backends::warehouse::plan::{self, Dialect};
    let Some(client) = pg_client("rswiden").await else {
        return;
    };
    client
        .batch_execute(
            "CREATE TABLE t (id VARCHAR(4), qty INTEGER, amount DECIMAL(10,2));
             INSERT INTO t VALUES ('a', 7, 12.50), ('b', NULL, NULL);",
        )
        .await
        .unwrap();
    let existing = redshift_existing_columns(&client, "t").await;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("qty", DataType::Int64, true),
        Field::new("amount", DataType::Decimal128(18, 2), true),
    ]);
    let mut cols: Vec<_> = plan::columns_for(&schema, &[], Dialect::Redshift)
        .unwrap()
        .into_iter()
        .filter(|c| c.in_file)
        .collect();
    let ddl = plan::evolve_table("t", &mut cols, &existing, Dialect::Redshift).unwrap();
    assert_eq!(ddl.len(), 9, "{ddl:#?}");
    client
        .batch_execute(&format!("BEGIN; {}; COMMIT", ddl.join(";\n")))
        .await
        .unwrap();
    let rows: Vec<(String, Option<i64>, Option<String>)> = client
        .query("SELECT id, qty, amount::text FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a".to_string(), Some(7), Some("12.50".to_string())),
            ("b".to_string(), None, None)
        ]
    );
    let types: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 't' ORDER BY column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        types,
        [
            ("amount", "numeric"),
            ("id", "character varying"),
            ("qty", "bigint")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

/// Issue 9: evolved columns (types inferred by a worker) whose new data does not widen keep their
/// text: the Redshift plan rebuilds an integer and a boolean column as VARCHAR with the values'
/// text (`CAST … AS VARCHAR`, a `CASE` for booleans, which Redshift does not cast), run here on a
/// real SQL engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redshift_plan_turns_evolved_columns_into_text_on_a_real_engine() {
    use arrow::datatypes::{DataType, Field, Schema};
    use backends::warehouse::plan::{self, Dialect};
    let Some(client) = pg_client("rsevolve").await else {
        return;
    };
    client
        .batch_execute(
            "CREATE TABLE t (id VARCHAR(4), n BIGINT, flag BOOLEAN);
             INSERT INTO t VALUES ('a', 7, true), ('b', NULL, false);",
        )
        .await
        .unwrap();
    let existing = redshift_existing_columns(&client, "t").await;
    let evolved = |name: &str| {
        backends::warehouse::evolve::mark_evolved(Field::new(name, DataType::Utf8, true))
    };
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        evolved("n"),
        evolved("flag"),
    ]);
    let mut cols: Vec<_> = plan::columns_for(&schema, &[], Dialect::Redshift)
        .unwrap()
        .into_iter()
        .filter(|c| c.in_file)
        .collect();
    let ddl = plan::evolve_table("t", &mut cols, &existing, Dialect::Redshift).unwrap();
    client
        .batch_execute(&format!("BEGIN; {}; COMMIT", ddl.join(";\n")))
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>, Option<String>)> = client
        .query("SELECT id, n, flag FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            ("a".to_string(), s("7"), s("true")),
            ("b".to_string(), None, s("false"))
        ]
    );
}
