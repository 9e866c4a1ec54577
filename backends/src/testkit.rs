//! Helpers for tests that need the local services: a moto server (SQS, S3), PostgreSQL and
//! MariaDB.
//!
//! `scripts/test` starts moto on 127.0.0.1, points `TRIBUTARY_TEST_AWS_ENDPOINT` at it, sets
//! `TRIBUTARY_TEST_POSTGRES` and `TRIBUTARY_TEST_MYSQL` to the machine's PostgreSQL and
//! MariaDB, and sets
//! `TRIBUTARY_REQUIRE_SERVICES=1`: with that (or `CI`) set, a missing service fails the test
//! instead of skipping it, so no test can pass silently in CI.

#[cfg(feature = "aws")]
use std::time::Duration;

#[cfg(feature = "aws")]
use aws_config::BehaviorVersion;

fn required() -> bool {
    std::env::var("TRIBUTARY_REQUIRE_SERVICES").is_ok() || std::env::var("CI").is_ok()
}

fn service(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if required() => panic!("{var} is not set: {what} is required (scripts/test sets it)"),
        _ => {
            eprintln!("SKIPPED: set {var} ({what}); scripts/test does");
            None
        }
    }
}

/// The moto endpoint, or `None` (test skipped) outside CI.
pub fn aws_endpoint() -> Option<String> {
    service(
        "TRIBUTARY_TEST_AWS_ENDPOINT",
        "a moto server for SQS and S3",
    )
}

/// A PostgreSQL connection string, or `None` (test skipped) outside CI.
pub fn postgres() -> Option<String> {
    service("TRIBUTARY_TEST_POSTGRES", "a PostgreSQL server")
}

/// A MySQL/MariaDB connection URL (`mysql://root@127.0.0.1:3306/test`), or `None` (test
/// skipped) outside CI.
pub fn mysql() -> Option<String> {
    service("TRIBUTARY_TEST_MYSQL", "a MySQL or MariaDB server")
}

/// The URL of a fresh database (created here, dropped first if it exists) on the server of
/// `url`, so parallel tests never see each other's tables.
pub async fn mysql_database(url: &str, name: &str) -> String {
    use mysql_async::prelude::Queryable;
    let db = name.replace('-', "_");
    let mut conn = mysql_async::Conn::from_url(url)
        .await
        .expect("connect to MySQL");
    conn.query_drop(format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`"
    ))
    .await
    .expect("create database");
    let _ = conn.disconnect().await;
    let mut u = url::Url::parse(url).expect("a mysql:// URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

#[cfg(feature = "aws")]
/// SDK configuration for the moto endpoint, with dummy credentials.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "tributary-tests",
        ))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(20)),
        )
        .load()
        .await
}

#[cfg(feature = "aws")]
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

/// A name unique to this process and call (queues and buckets of parallel tests never clash).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

#[cfg(feature = "aws")]
/// Creates a queue and its dead-letter queue (redrive after `max_receive` receives); returns
/// (queue URL, dead-letter queue URL).
pub async fn create_queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: u32,
    max_receive: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("create dead-letter queue");
    let dlq_url = dlq.queue_url().expect("dlq url").to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq arn")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("QueueArn");
    let q = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive})
                .to_string(),
        )
        .send()
        .await
        .expect("create queue");
    (q.queue_url().expect("queue url").to_string(), dlq_url)
}

#[cfg(feature = "aws")]
pub async fn create_bucket(s3: &aws_sdk_s3::Client, name: &str) {
    s3.create_bucket()
        .bucket(name)
        .send()
        .await
        .expect("create bucket");
}

/// A PostgreSQL connection string whose `search_path` is a fresh schema (created here), so
/// parallel tests never see each other's tables.
pub async fn postgres_schema(conn: &str, name: &str) -> String {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let schema = name.replace('-', "_");
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .expect("create schema");
    format!("{conn} options='-c search_path={schema}'")
}
