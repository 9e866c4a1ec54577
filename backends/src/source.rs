//! Sources that are not files: databases read through `[source.sql]` (PostgreSQL, MySQL and
//! MariaDB). The coordinator plans a
//! run of one ([`SourcePlan`]: the watermark it starts after, the high mark it stops at, key
//! ranges); a worker extracts one range into the raw zone as NDJSON, which then goes through the
//! same curate and transform path as a file.

pub mod mysql;
pub mod plan;
pub mod postgres;
pub mod sql;

use std::io::Write;

pub use mysql::MysqlSource;
pub use postgres::PostgresSource;
pub use sql::{Dialect, Relation, SqlSpec};

use protocol::SqlRange;

/// A database source: planned by the coordinator, extracted shard by shard by workers.
#[async_trait::async_trait]
pub trait SqlSource: Send + Sync {
    /// Plans a run: the rows after `watermark` (moved back by `lookback_secs`) up to the high
    /// mark taken now, in key ranges of about `shard_rows` rows.
    async fn plan(
        &self,
        watermark: Option<&str>,
        lookback_secs: u64,
        shard_rows: Option<u64>,
    ) -> crate::Result<SourcePlan>;

    /// Plans a backfill window: the rows whose cursor is in `[from, to)`, in key ranges; with
    /// the relation's average row size when the database keeps it (for a dry run's bytes).
    async fn plan_window(
        &self,
        from: &str,
        to: &str,
        shard_rows: Option<u64>,
    ) -> crate::Result<(SourcePlan, Option<u64>)>;

    /// Reads one shard's rows into `out` as NDJSON; returns how many.
    async fn extract(&self, range: &SqlRange, out: &mut (dyn Write + Send)) -> crate::Result<u64>;

    /// The relation's columns in order, each with its type as the database writes it
    /// (`numeric(12,2)`, `decimal(12,2)`, `tinyint(1)`): what a pipeline that declares no columns
    /// takes from its table.
    async fn table_columns(&self) -> crate::Result<Vec<(String, String)>>;
}

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
