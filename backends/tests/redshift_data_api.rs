//! The Redshift Data API transport against a small local HTTP server that speaks the Data API's
//! JSON protocol (moto cannot serve it to the Rust SDK; see TOOLING.md). The server runs no SQL:
//! it records every request, answers `DescribeStatement` with scripted statuses, and keeps a
//! ledger of the batch ids whose load transaction "committed", so the ledger checks the client
//! makes can be answered truthfully.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use backends::object_store::{LocalStore, ObjectStore};
use backends::warehouse::{LoadOutcome, RedshiftSettings, RedshiftWarehouse, Warehouse};
use protocol::{ByteRange, LoadBatch, LoadFile, ObjectRef, OutputFile, SourcePosition};

/// How the next load transaction behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Script {
    #[default]
    Finish,
    /// FAILED with an error text; nothing commits.
    Fail,
    /// FAILED as a COPY that hit bad data does (rows in STL_LOAD_ERRORS); nothing commits.
    FailLoad,
    /// ABORTED; nothing commits.
    Abort,
    /// Commits at once but reports STARTED forever (the client's deadline passes).
    CommitButHang,
}

#[derive(Debug, Default)]
struct Fake {
    requests: Vec<(String, serde_json::Value)>,
    statements: HashMap<String, Stmt>,
    ledger: BTreeSet<String>,
    next: u64,
    batch_script: Vec<Script>,
    throttle_execute: u32,
    busy_batch: u32,
}

#[derive(Debug, Clone)]
struct Stmt {
    sqls: Vec<String>,
    polls: u32,
    script: Script,
}

/// The batch ids a transaction records in the ledger (a batch's last part records two).
fn ledger_ids_of(sqls: &[String]) -> Vec<String> {
    sqls.iter()
        .filter(|s| s.starts_with("INSERT INTO _tributary_load_ledger"))
        .filter_map(|ins| {
            let start = ins.find("SELECT '")? + 8;
            let end = ins[start..].find('\'')? + start;
            Some(ins[start..end].to_string())
        })
        .collect()
}

async fn handle(
    axum::extract::State(fake): axum::extract::State<Arc<Mutex<Fake>>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start_matches("RedshiftData.")
        .to_string();
    let req: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut f = fake.lock().unwrap();
    f.requests.push((target.clone(), req.clone()));
    let error = |code: &str, msg: &str| {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            serde_json::json!({"__type": code, "message": msg}).to_string(),
        )
            .into_response()
    };
    let ok = |v: serde_json::Value| {
        (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            v.to_string(),
        )
            .into_response()
    };
    match target.as_str() {
        "ExecuteStatement" | "BatchExecuteStatement" => {
            if target == "ExecuteStatement" && f.throttle_execute > 0 {
                f.throttle_execute -= 1;
                return error("ThrottlingException", "Rate exceeded");
            }
            if target == "BatchExecuteStatement" && f.busy_batch > 0 {
                f.busy_batch -= 1;
                return error(
                    "ActiveStatementsExceededException",
                    "Active statements exceeded the allowed quota (500).",
                );
            }
            let sqls: Vec<String> = if target == "ExecuteStatement" {
                vec![req["Sql"].as_str().unwrap_or("").to_string()]
            } else {
                req["Sqls"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| s.as_str().unwrap_or("").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            f.next += 1;
            let id = format!("stmt-{:04}", f.next);
            let script = if target == "BatchExecuteStatement" {
                let s = if f.batch_script.is_empty() {
                    Script::Finish
                } else {
                    f.batch_script.remove(0)
                };
                if s == Script::CommitButHang {
                    f.ledger.extend(ledger_ids_of(&sqls));
                }
                s
            } else {
                Script::Finish
            };
            f.statements.insert(
                id.clone(),
                Stmt {
                    sqls,
                    polls: 0,
                    script,
                },
            );
            ok(
                serde_json::json!({"Id": id, "CreatedAt": 1_764_000_000.0, "Database": req["Database"]}),
            )
        }
        "DescribeStatement" => {
            let id = req["Id"].as_str().unwrap_or("").to_string();
            let Some(st) = f.statements.get_mut(&id) else {
                return error("ResourceNotFoundException", "no such statement");
            };
            st.polls += 1;
            let st = st.clone();
            // The first poll always sees the statement running: the client has to poll.
            let (status, err) = if st.polls == 1 || st.script == Script::CommitButHang {
                ("STARTED", None)
            } else {
                match st.script {
                    Script::Fail => (
                        "FAILED",
                        Some(
                            "ERROR: Spectrum Scan Error: S3 access denied for s3://lake/t/a.parquet",
                        ),
                    ),
                    Script::FailLoad => (
                        "FAILED",
                        Some(
                            "ERROR: Load into table '_tributary_file_stage' failed. Check 'stl_load_errors' system table for details.",
                        ),
                    ),
                    Script::Abort => ("ABORTED", None),
                    _ => ("FINISHED", None),
                }
            };
            if status == "FINISHED" && st.sqls.len() > 1 {
                f.ledger.extend(ledger_ids_of(&st.sqls));
            }
            let has_rows = st.sqls.len() == 1 && st.sqls[0].starts_with("SELECT");
            let mut v = serde_json::json!({
                "Id": id, "Status": status, "HasResultSet": has_rows,
                "CreatedAt": 1_764_000_000.0, "UpdatedAt": 1_764_000_001.0,
            });
            if let Some(e) = err {
                v["Error"] = e.into();
            }
            ok(v)
        }
        "GetStatementResult" => {
            let id = req["Id"].as_str().unwrap_or("").to_string();
            let sql = f
                .statements
                .get(&id)
                .map(|s| s.sqls[0].clone())
                .unwrap_or_default();
            if sql.contains("FROM stl_load_errors") {
                let file = "s3://lake/t/day=2025-05-01/a.parquet";
                let row = |line: i64, col: &str, ty: &str, raw: &str, why: &str| {
                    serde_json::json!([
                        {"stringValue": file}, {"longValue": line}, {"stringValue": col},
                        {"stringValue": ty}, {"stringValue": raw}, {"stringValue": why}
                    ])
                };
                let named = sql.contains(&format!("'{file}'"));
                let records = if named {
                    vec![
                        row(2, "val", "int8", "4111111111111111", "Overflow for INT8"),
                        row(3, "id", "varchar", "b\u{0}", "Invalid null byte"),
                    ]
                } else {
                    vec![]
                };
                return ok(serde_json::json!({
                    "Records": records,
                    "ColumnMetadata": [{"name": "btrim"}, {"name": "line_number"}, {"name": "btrim"}, {"name": "btrim"}, {"name": "btrim"}, {"name": "btrim"}],
                    "TotalNumRows": 2
                }));
            }
            if sql.contains("FROM svv_external_columns") {
                // An external table made by an earlier version of the pipeline: `id` and the
                // partition column.
                return ok(serde_json::json!({
                    "Records": [[{"stringValue": "id"}], [{"stringValue": "day"}]],
                    "ColumnMetadata": [{"name": "columnname"}], "TotalNumRows": 2
                }));
            }
            if sql.contains("information_schema.columns") {
                return ok(
                    serde_json::json!({"Records": [], "ColumnMetadata": [{"name": "column_name"}], "TotalNumRows": 0}),
                );
            }
            let n: i64 = if sql.contains("_tributary_load_ledger WHERE batch_id") {
                let start = sql.find("batch_id = '").map(|i| i + 12).unwrap_or(0);
                let end = sql[start..].find('\'').map(|i| i + start).unwrap_or(start);
                i64::from(f.ledger.contains(&sql[start..end]))
            } else {
                42
            };
            ok(serde_json::json!({
                "Records": [[{"longValue": n}]],
                "ColumnMetadata": [{"name": "count"}],
                "TotalNumRows": 1
            }))
        }
        "CancelStatement" => ok(serde_json::json!({"Status": true})),
        other => error(
            "UnknownOperationException",
            &format!("unknown operation {other}"),
        ),
    }
}

async fn start_fake() -> (String, Arc<Mutex<Fake>>) {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let app = axum::Router::new()
        .route("/", axum::routing::post(handle))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn client(endpoint: &str) -> aws_sdk_redshiftdata::Client {
    let conf = aws_sdk_redshiftdata::config::Builder::new()
        .behavior_version(aws_sdk_redshiftdata::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_redshiftdata::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_redshiftdata::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .retry_config(
            aws_sdk_redshiftdata::config::retry::RetryConfig::standard()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .build();
    aws_sdk_redshiftdata::Client::from_conf(conf)
}

fn settings() -> RedshiftSettings {
    RedshiftSettings {
        cluster_identifier: Some("analytics".into()),
        workgroup_name: None,
        database: "dev".into(),
        db_user: Some("loader".into()),
        secret_arn: None,
        iam_role: "arn:aws:iam::123456789012:role/tributary-copy".into(),
        poll_initial_ms: 10,
        poll_max_ms: 40,
        statement_timeout_secs: 30,
    }
}

/// A folder that says its objects are in `s3://lake/` (what COPY needs to be told).
#[derive(Debug)]
struct FakeS3(LocalStore);

#[async_trait::async_trait]
impl ObjectStore for FakeS3 {
    fn describe(&self) -> String {
        "s3://lake/".into()
    }
    async fn put(&self, key: &str, data: Vec<u8>) -> backends::Result<()> {
        self.0.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> backends::Result<bool> {
        self.0.put_if_absent(key, data).await
    }
    async fn put_file(&self, key: &str, path: &std::path::Path) -> backends::Result<u64> {
        self.0.put_file(key, path).await
    }
    async fn get(&self, key: &str) -> backends::Result<Vec<u8>> {
        self.0.get(key).await
    }
    async fn head(&self, key: &str) -> backends::Result<Option<u64>> {
        self.0.head(key).await
    }
    async fn list(&self, prefix: &str) -> backends::Result<Vec<ObjectRef>> {
        self.0.list(prefix).await
    }
    async fn delete(&self, key: &str) -> backends::Result<()> {
        self.0.delete(key).await
    }
    fn open_read(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> backends::Result<Box<dyn std::io::Read + Send>> {
        self.0.open_read(key, range)
    }
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
    fn url(&self, key: &str) -> Option<String> {
        Some(format!("s3://lake/{key}"))
    }
}

async fn files_and_batch(id: &str) -> (tempfile::TempDir, Arc<dyn ObjectStore>, LoadBatch) {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let files: Arc<dyn ObjectStore> = Arc::new(FakeS3(LocalStore::new(dir.path()).unwrap()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("val", DataType::Int64, true),
    ]));
    let rb = arrow::record_batch::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&rb).unwrap();
    w.close().unwrap();
    let bytes = buf.len() as u64;
    files.put("t/day=2025-05-01/a.parquet", buf).await.unwrap();
    let batch = LoadBatch {
        batch_id: id.into(),
        run_id: "run-1".into(),
        table: "events".into(),
        merge_keys: vec!["id".into()],
        shards: vec!["s00000".into()],
        files: vec![LoadFile {
            file: OutputFile {
                max_bytes: Default::default(),
                key: "t/day=2025-05-01/a.parquet".into(),
                partition: vec![("day".into(), "2025-05-01".into())],
                rows: 2,
                bytes,
            },
            shard_index: 0,
            position: SourcePosition {
                object: "raw/events.ndjson".into(),
                offset: 0,
            },
        }],
        masked_columns: vec!["val".into()],
        layout: Default::default(),
        external: None,
    };
    (dir, files, batch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_is_one_polled_transaction_with_copy_merge_and_ledger() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0000").await;
    let out = wh.load(&batch, files.clone()).await.unwrap();
    assert_eq!(
        out,
        LoadOutcome::Loaded {
            rows_staged: 2,
            rows_in_table: 42
        }
    );
    {
        let f = fake.lock().unwrap();
        let ops: Vec<&str> = f.requests.iter().map(|(op, _)| op.as_str()).collect();
        let batches: Vec<&serde_json::Value> = f
            .requests
            .iter()
            .filter(|(op, _)| op == "BatchExecuteStatement")
            .map(|(_, r)| r)
            .collect();
        assert_eq!(batches.len(), 1, "one transaction per load: {ops:?}");
        let req = batches[0];
        // Request shape: a provisioned cluster with temporary credentials for a database user.
        assert_eq!(req["ClusterIdentifier"], "analytics");
        assert_eq!(req["Database"], "dev");
        assert_eq!(req["DbUser"], "loader");
        assert!(req.get("WorkgroupName").is_none());
        assert!(req["ClientToken"].as_str().is_some_and(|t| !t.is_empty()));
        let sqls: Vec<&str> = req["Sqls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            sqls[0].starts_with("LOCK _tributary_load_ledger"),
            "{sqls:?}"
        );
        let copy = sqls.iter().find(|s| s.starts_with("COPY")).unwrap();
        assert_eq!(
            *copy,
            "COPY _tributary_file_stage FROM 's3://lake/_tributary/manifests/run-1-events-b0000/g0000.manifest' IAM_ROLE 'arn:aws:iam::123456789012:role/tributary-copy' FORMAT AS PARQUET MANIFEST"
        );
        assert!(
            sqls.last()
                .unwrap()
                .starts_with("INSERT INTO _tributary_load_ledger")
        );
        // The transaction was polled until it finished (first poll: STARTED).
        let batch_id = f
            .statements
            .iter()
            .find(|(_, s)| s.sqls.len() > 1)
            .map(|(id, _)| id.clone())
            .unwrap();
        assert!(f.statements[&batch_id].polls >= 2);
    }
    // The COPY manifest is Redshift's format, with content_length for Parquet.
    let m: serde_json::Value = serde_json::from_slice(
        &files
            .get("_tributary/manifests/run-1-events-b0000/g0000.manifest")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["entries"][0]["url"],
        "s3://lake/t/day=2025-05-01/a.parquet"
    );
    assert_eq!(m["entries"][0]["mandatory"], true);
    assert_eq!(
        m["entries"][0]["meta"]["content_length"],
        batch.files[0].file.bytes
    );
    // Loaded once: again is skipped by the ledger, with no second transaction.
    assert_eq!(
        wh.load(&batch, files).await.unwrap(),
        LoadOutcome::AlreadyLoaded
    );
    let f = fake.lock().unwrap();
    assert_eq!(
        f.requests
            .iter()
            .filter(|(op, _)| op == "BatchExecuteStatement")
            .count(),
        1
    );
}

/// Issue 10, item 9: with an external schema, each load keeps a Spectrum table over the lake
/// prefix and adds its partitions, each statement on its own after the transaction (Redshift
/// runs external DDL outside transactions), again when a retry finds the batch loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_with_an_external_schema_keeps_the_spectrum_table_and_its_partitions() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, mut batch) = files_and_batch("run-1-events-b0007").await;
    batch.external = Some(protocol::ExternalTable {
        schema: "lake_ext".into(),
        lake_prefix: "t".into(),
    });
    let singles = |f: &Fake| -> Vec<String> {
        f.requests
            .iter()
            .filter(|(op, _)| op == "ExecuteStatement")
            .filter_map(|(_, r)| r["Sql"].as_str().map(String::from))
            .filter(|s| s.contains("lake_ext"))
            .collect()
    };
    wh.load(&batch, files.clone()).await.unwrap();
    let sent = singles(&fake.lock().unwrap());
    assert_eq!(
        sent,
        vec![
            "CREATE EXTERNAL TABLE IF NOT EXISTS \"lake_ext\".\"events\" (\"id\" VARCHAR(65535), \"val\" BIGINT) PARTITIONED BY (\"day\" VARCHAR(1024)) STORED AS PARQUET LOCATION 's3://lake/t/'".to_string(),
            "SELECT columnname FROM svv_external_columns WHERE schemaname = 'lake_ext' AND tablename = 'events'".to_string(),
            "ALTER TABLE \"lake_ext\".\"events\" ADD COLUMN \"val\" BIGINT".to_string(),
            "ALTER TABLE \"lake_ext\".\"events\" ADD IF NOT EXISTS PARTITION (\"day\"='2025-05-01') LOCATION 's3://lake/t/day=2025-05-01/'".to_string(),
        ],
        "create, look at its columns, add the one it lacks, add the batch's partitions"
    );
    assert_eq!(
        wh.load(&batch, files).await.unwrap(),
        LoadOutcome::AlreadyLoaded
    );
    let again = singles(&fake.lock().unwrap());
    assert_eq!(
        again.len(),
        8,
        "a retried load keeps the catalog again: {again:?}"
    );
}

/// Issue 11, item 3: a batch of more file groups than one Data API call takes (it failed at
/// ten) loads in parts, each a transaction of at most 40 statements with its own ledger id; the
/// last also records the batch, and a retry after a part committed loads only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_statement_limit_loads_in_parts_each_once() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, mut batch) = files_and_batch("run-1-events-b0011").await;
    let one = batch.files[0].clone();
    batch.files = (0..20)
        .map(|i| {
            let mut f = one.clone();
            f.position.offset = i * 1000;
            f
        })
        .collect();
    // The first part commits, then the call fails: the retry must not load it again.
    fake.lock().unwrap().batch_script = vec![Script::Finish, Script::Fail];
    assert!(wh.load(&batch, files.clone()).await.is_err());
    assert!(!wh.is_loaded("run-1-events-b0011").await.unwrap());
    assert!(wh.is_loaded("run-1-events-b0011.p1").await.unwrap());
    wh.load(&batch, files.clone()).await.unwrap();
    assert!(wh.is_loaded("run-1-events-b0011").await.unwrap());
    let f = fake.lock().unwrap();
    let calls: Vec<Vec<String>> = f
        .requests
        .iter()
        .filter(|(op, _)| op == "BatchExecuteStatement")
        .map(|(_, r)| {
            r["Sqls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert!(
        calls.len() >= 3,
        "parts, a failed one, and the retry: {}",
        calls.len()
    );
    assert!(
        calls.iter().all(|c| c.len() <= 40),
        "{:?}",
        calls.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let copies = |c: &Vec<String>| c.iter().filter(|s| s.starts_with("COPY")).count();
    let retried: usize = calls[2..].iter().map(copies).sum();
    assert_eq!(
        copies(&calls[0]) + retried,
        20,
        "every group copied once across the parts that committed"
    );
    let last = calls.last().unwrap();
    assert_eq!(
        ledger_ids_of(last).len(),
        2,
        "the last part records itself and the batch: {:?}",
        ledger_ids_of(last)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_surfaces_redshift_error_and_the_retry_loads_once() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0001").await;
    fake.lock().unwrap().batch_script = vec![Script::Fail, Script::Finish];
    let err = wh
        .load(&batch, files.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run-1-events-b0001") && err.contains("Spectrum Scan Error: S3 access denied"),
        "{err}"
    );
    assert!(!wh.is_loaded("run-1-events-b0001").await.unwrap());
    assert!(matches!(
        wh.load(&batch, files.clone()).await.unwrap(),
        LoadOutcome::Loaded { .. }
    ));
    assert_eq!(
        wh.load(&batch, files).await.unwrap(),
        LoadOutcome::AlreadyLoaded
    );
}

/// Issue 8: a failed COPY surfaces the load-error rows (file, line, column, type, raw value),
/// with the value of a hashed column masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_surfaces_its_load_error_rows_with_hashed_values_masked() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0002").await;
    fake.lock().unwrap().batch_script = vec![Script::FailLoad];
    let err = wh.load(&batch, files).await.unwrap_err().to_string();
    assert!(err.contains("stl_load_errors"), "{err}");
    assert!(err.contains("load errors (STL_LOAD_ERRORS)"), "{err}");
    assert!(
        err.contains(
            "s3://lake/t/day=2025-05-01/a.parquet line 2, column val (int8), value masked"
        ),
        "{err}"
    );
    assert!(
        !err.contains("4111111111111111"),
        "a hashed value leaked: {err}"
    );
    assert!(
        err.contains("line 3, column id (varchar), value \"b\\0\": Invalid null byte"),
        "{err}"
    );
    // The query asked for exactly the batch's files.
    let asked = fake
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(op, r)| {
            op == "ExecuteStatement" && r["Sql"].as_str().unwrap_or("").contains("stl_load_errors")
        })
        .count();
    assert_eq!(asked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_statement_is_an_error() {
    let (ep, fake) = start_fake().await;
    let wh = RedshiftWarehouse::connect(client(&ep), settings())
        .await
        .unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0002").await;
    fake.lock().unwrap().batch_script = vec![Script::Abort];
    let err = wh.load(&batch, files).await.unwrap_err().to_string();
    assert!(err.contains("was aborted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_its_deadline_is_cancelled_and_the_ledger_stops_a_double_load() {
    let (ep, fake) = start_fake().await;
    let mut s = settings();
    s.statement_timeout_secs = 1;
    let wh = RedshiftWarehouse::connect(client(&ep), s).await.unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0003").await;
    fake.lock().unwrap().batch_script = vec![Script::CommitButHang];
    let err = wh
        .load(&batch, files.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("still running after 1 s: cancelled"), "{err}");
    assert!(
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .any(|(op, _)| op == "CancelStatement")
    );
    // It had committed after all: the retry finds it in the ledger and sends nothing.
    assert_eq!(
        wh.load(&batch, files).await.unwrap(),
        LoadOutcome::AlreadyLoaded
    );
    assert_eq!(
        fake.lock()
            .unwrap()
            .requests
            .iter()
            .filter(|(op, _)| op == "BatchExecuteStatement")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_busy_answers_are_retried_with_backoff() {
    let (ep, fake) = start_fake().await;
    {
        let mut f = fake.lock().unwrap();
        f.throttle_execute = 2;
        f.busy_batch = 2;
    }
    let mut s = settings();
    s.cluster_identifier = None;
    s.db_user = None;
    s.workgroup_name = Some("wg".into());
    s.secret_arn = Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:rs".into());
    let wh = RedshiftWarehouse::connect(client(&ep), s).await.unwrap();
    let (_dir, files, batch) = files_and_batch("run-1-events-b0004").await;
    assert!(matches!(
        wh.load(&batch, files).await.unwrap(),
        LoadOutcome::Loaded { .. }
    ));
    let f = fake.lock().unwrap();
    let b: Vec<&serde_json::Value> = f
        .requests
        .iter()
        .filter(|(op, _)| op == "BatchExecuteStatement")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(b.len(), 3, "two busy answers, then accepted");
    // Serverless with a Secrets Manager secret.
    assert_eq!(b[2]["WorkgroupName"], "wg");
    assert!(
        b[2]["SecretArn"]
            .as_str()
            .unwrap()
            .contains("secretsmanager")
    );
    assert!(b[2].get("ClusterIdentifier").is_none());
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused() {
    let mut s = settings();
    s.workgroup_name = Some("wg".into());
    assert!(s.validate().unwrap_err().contains("not both"));
    let mut s = settings();
    s.db_user = None;
    assert!(s.validate().unwrap_err().contains("db_user"));
    let mut s = settings();
    s.iam_role = "tributary-copy".into();
    assert!(s.validate().unwrap_err().contains("iam_role"));
}
