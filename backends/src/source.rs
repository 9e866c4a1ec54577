//! Sources that are not files: databases read through `[source.sql]`. The coordinator plans a
//! run of one ([`SourcePlan`]: the watermark it starts after, the high mark it stops at, key
//! ranges); a worker extracts one range into the raw zone as NDJSON, which then goes through the
//! same curate and transform path as a file.

pub mod postgres;
pub mod sql;

pub use postgres::PostgresSource;
pub use sql::{Dialect, Relation, SqlSpec};

/// A planned run of a database source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlan {
    /// Rows with a cursor after this are read (the watermark, moved back by the lookback).
    pub after: Option<String>,
    /// ... up to this cursor value, taken at planning.
    pub high: Option<String>,
    /// What the pipeline's watermark becomes once the run has loaded: the high mark, or the
    /// old watermark when a lookback re-read found nothing newer (it never moves back).
    pub watermark: Option<String>,
    /// Key ranges in key order.
    pub shards: Vec<SqlShard>,
    /// Rows counted at planning.
    pub rows: u64,
}

/// One key range of a planned run: `[key_from, key_before)`, `None` unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlShard {
    pub key_from: Option<String>,
    pub key_before: Option<String>,
    /// Rows estimated in the range.
    pub rows: u64,
}
