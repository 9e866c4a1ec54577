//! The outside world of Tributary, behind four narrow traits.
//!
//! | trait | embedded (local runs, tests) | production |
//! |---|---|---|
//! | [`queue::Queue`] | [`queue::MemoryQueue`]: SQS semantics in process | [`queue::SqsQueue`] |
//! | [`object_store::ObjectStore`] | [`object_store::LocalStore`]: a folder | [`object_store::S3Store`] |
//! | [`warehouse::Warehouse`] | `warehouse::SqliteWarehouse` (feature `embedded-warehouse`) | [`warehouse::RedshiftWarehouse`] (Data API), [`warehouse::PostgresWarehouse`] (PostgreSQL wire) |
//! | [`state::StateStore`] | [`state::FileStateStore`]: atomic files on local disk | [`state::ObjectStateStore`] (S3, conditional writes) |
//!
//! Each trait has ONE test suite (`queue::suite`, `object_store::suite`, `state::suite`,
//! `warehouse::suite`) written against the trait only; every implementation runs it.

pub mod aws;
pub mod object_store;
pub mod queue;
pub mod source;
pub mod state;
pub mod testkit;
pub mod tls;
pub mod warehouse;

/// Errors of every backend, with the context needed to act on them.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {key:?} not found in {store}")]
    NotFound { store: String, key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("queue {queue}: {detail}")]
    Queue { queue: String, detail: String },
    #[error("warehouse: {0}")]
    Warehouse(String),
    /// A database or API source failed; `retryable` when the connection dropped (the shard is
    /// tried again), not when the source refused the statement (a missing table or column).
    #[error("source {source_name}: {detail}")]
    Source {
        source_name: String,
        detail: String,
        retryable: bool,
    },
    /// The target table cannot take a batch's schema (a narrowed or changed column type).
    #[error("warehouse: {0}")]
    Schema(#[from] crate::warehouse::evolve::Refusal),
    #[error("state store {path}: {detail}")]
    State { path: String, detail: String },
    /// A backend named by a setting failed: says which setting, and for an endpoint that could
    /// not be reached, which address was dialled and which setting it came from.
    #[error("{setting} = {value:?}: {source}{dialled}")]
    Setting {
        setting: String,
        value: String,
        /// `" (dialled 127.0.0.1:4566, from aws.endpoint_url)"`, or empty.
        dialled: String,
        #[source]
        source: Box<BackendError>,
    },
    /// A backend this build leaves out: the AWS services (S3, SQS, the Redshift Data API) are
    /// in builds with the `aws` feature only.
    #[error(
        "{what} needs the AWS services (S3, SQS, Redshift Data API), which this build leaves out: \
         build with the `aws` feature (`cargo build --release -p coordinator -p worker --features \
         coordinator/aws,worker/aws`; the image has it)"
    )]
    NotBuilt { what: String },
    #[error("{service} {op} on {what}: {detail}")]
    Aws {
        service: String,
        op: String,
        what: String,
        detail: String,
        retryable: bool,
        status: Option<u16>,
    },
}

impl BackendError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        BackendError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Whether retrying the same call may succeed. One place decides this for every backend.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            BackendError::Queue { .. } => true,
            BackendError::Aws { retryable, .. } => *retryable,
            BackendError::Source { retryable, .. } => *retryable,
            BackendError::Setting { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// Whether the call never got an answer: the endpoint could not be reached.
    pub fn is_unreachable(&self) -> bool {
        match self {
            BackendError::Aws { status, detail, .. } => {
                status.is_none()
                    && (detail.starts_with("cannot reach the endpoint")
                        || detail.starts_with("connection timed out"))
            }
            BackendError::Setting { source, .. } => source.is_unreachable(),
            _ => false,
        }
    }

    /// Names the setting behind a failed backend. When the endpoint was unreachable, also names
    /// the address dialled: `endpoint` (`aws.endpoint_url`) when one is set, otherwise the
    /// host of the setting's own URL.
    pub fn at_setting(self, setting: &str, value: &str, endpoint: Option<&str>) -> BackendError {
        let dialled = if self.is_unreachable() {
            match endpoint {
                Some(e) => format!(" (dialled {}, from aws.endpoint_url)", host_port(e)),
                None => format!(" (dialled {}, from {setting})", host_port(value)),
            }
        } else {
            String::new()
        };
        BackendError::Setting {
            setting: setting.to_string(),
            value: value.to_string(),
            dialled,
            source: Box::new(self),
        }
    }
}

/// `host:port` of a URL (`https://sqs.eu-west-1.amazonaws.com/1/q` → `sqs.eu-west-1.amazonaws.com:443`).
/// An `s3://bucket/…` URL has no host of its own: it names the bucket.
pub fn host_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if scheme == "s3" {
        return format!("the S3 endpoint of bucket {authority}");
    }
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        let port = if scheme == "http" { 80 } else { 443 };
        format!("{authority}:{port}")
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// The civil date (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's
/// algorithm), for rendering dates without a calendar library.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    fn unreachable() -> BackendError {
        BackendError::Aws {
            service: "SQS".into(),
            op: "GetQueueAttributes".into(),
            what: "http://sqs.local/1/tasks".into(),
            detail: "cannot reach the endpoint (connection refused)".into(),
            retryable: true,
            status: None,
        }
    }

    #[test]
    fn an_unreachable_endpoint_names_the_setting_and_the_address_dialled() {
        let e = unreachable()
            .at_setting(
                "queues.tasks_url",
                "http://sqs.local/1/tasks",
                Some("http://127.0.0.1:4566"),
            )
            .to_string();
        assert!(
            e.starts_with("queues.tasks_url = \"http://sqs.local/1/tasks\": "),
            "{e}"
        );
        assert!(
            e.ends_with("(dialled 127.0.0.1:4566, from aws.endpoint_url)"),
            "{e}"
        );
        let e = unreachable()
            .at_setting(
                "queues.tasks_url",
                "https://sqs.eu-west-1.amazonaws.com/1/tasks",
                None,
            )
            .to_string();
        assert!(
            e.ends_with("(dialled sqs.eu-west-1.amazonaws.com:443, from queues.tasks_url)"),
            "{e}"
        );
    }

    #[test]
    fn an_answered_error_names_the_setting_only() {
        let e = BackendError::Aws {
            service: "S3".into(),
            op: "HeadBucket".into(),
            what: "s3://nope/x".into(),
            detail: "NotFound (HTTP 404) (the bucket does not exist)".into(),
            retryable: false,
            status: Some(404),
        }
        .at_setting("storage.files", "s3://nope/x", Some("http://127.0.0.1:1"));
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.starts_with("storage.files = \"s3://nope/x\": S3 HeadBucket"),
            "{text}"
        );
        assert!(!text.contains("dialled"), "{text}");
    }

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("http://127.0.0.1:5000/q"), "127.0.0.1:5000");
        assert_eq!(host_port("http://localhost/q"), "localhost:80");
        assert_eq!(
            host_port("https://sqs.amazonaws.com"),
            "sqs.amazonaws.com:443"
        );
    }
}
