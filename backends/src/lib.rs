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
pub mod state;
pub mod testkit;
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
    #[error("state store {path}: {detail}")]
    State { path: String, detail: String },
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
            _ => false,
        }
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
