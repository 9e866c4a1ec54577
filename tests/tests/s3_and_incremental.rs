//! `coordinator run` on an `s3://` location (moto) and incremental file runs (issue 10, item 5):
//! each run takes only the objects not loaded before — new keys, and keys rewritten since, even
//! with the same size within the same second.

use std::path::Path;

use tributary_tests::*;

fn pipeline(location: &str) -> String {
    format!(
        r#"
[pipeline]
name = "clicks"
[source]
location = "{location}"
format = "ndjson"
incremental = true
[[columns]]
name = "id"
type = "int64"
required = true
[[columns]]
name = "page"
type = "string"
[load]
merge_keys = ["id"]
"#
    )
}

fn lines(from: u64, n: u64, page: &str) -> Vec<u8> {
    (from..from + n)
        .map(|i| format!("{{\"id\":{i},\"page\":\"{page}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn run(p: &Path, data: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let args = [
        "run",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-progress",
    ];
    stats(&ok(&coordinator_with(&args, None, env)))
}

fn count(data: &Path, sql: &str) -> String {
    table(data, sql)
        .lines()
        .nth(2)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_local_folder_is_read_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.ndjson"), lines(1, 100, "home")).unwrap();
    std::fs::write(src.join("b.ndjson"), lines(101, 100, "home")).unwrap();
    let p = dir.path().join("clicks.toml");
    std::fs::write(&p, pipeline("in")).unwrap();
    let data = dir.path().join("data");
    assert_eq!(run(&p, &data, &[])["rows_out"], 200);
    // A new file, and a.ndjson rewritten with the same size at once.
    std::fs::write(src.join("c.ndjson"), lines(201, 10, "home")).unwrap();
    std::fs::write(src.join("a.ndjson"), lines(1, 100, "cart")).unwrap();
    let second = run(&p, &data, &[]);
    assert_eq!(
        (second["lines_total"].as_u64(), second["rows_out"].as_u64()),
        (Some(110), Some(110)),
        "the new file and the rewritten one, not b.ndjson: {second}"
    );
    assert_eq!(
        count(&data, "SELECT count(*) FROM clicks WHERE page = 'cart'"),
        "100"
    );
    let third = run(&p, &data, &[]);
    assert_eq!(
        (third["rows_out"].as_u64(), third["shards"].as_u64()),
        (Some(0), Some(0)),
        "nothing new: {third}"
    );
    assert_eq!(count(&data, "SELECT count(*) FROM clicks"), "210");
}

#[test]
fn an_s3_location_is_read_by_coordinator_run() {
    let Some(endpoint) = backends::testkit::aws_endpoint() else {
        return;
    };
    let bucket = backends::testkit::unique("s3-local").to_ascii_lowercase();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(async {
        let sdk = backends::testkit::sdk_config(&endpoint).await;
        let s3 = backends::testkit::s3_client(&sdk);
        backends::testkit::create_bucket(&s3, &bucket).await;
        s3
    });
    let put = |key: &str, body: Vec<u8>| {
        rt.block_on(
            s3.put_object()
                .bucket(&bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body))
                .send(),
        )
        .unwrap();
    };
    put("in/2026/11/01/a.ndjson", lines(1, 50, "home"));
    put("in/2026/11/02/b.ndjson", lines(51, 50, "home"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("clicks.toml");
    std::fs::write(&p, pipeline(&format!("s3://{bucket}/in/"))).unwrap();
    let data = dir.path().join("data");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let first = run(&p, &data, &env);
    assert_eq!(first["rows_out"], 100, "{first}");
    put("in/2026/11/03/c.ndjson", lines(101, 5, "home"));
    let second = run(&p, &data, &env);
    assert_eq!(second["rows_out"], 5, "only the new object: {second}");
    assert_eq!(count(&data, "SELECT count(*) FROM clicks"), "105");
    let status = ok(&coordinator(
        &["runs", "clicks", "--data-dir", data.to_str().unwrap()],
        None,
    ));
    assert_eq!(status.matches("completed").count(), 2, "{status}");

    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, pipeline("s3://no-such-bucket-tributary/in/")).unwrap();
    let args = [
        "run",
        missing.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let out = coordinator_with(&args, None, &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no-such-bucket-tributary"),
        "{err}"
    );
}
