//! The serde model of a pipeline file: every section and key with its default.
//!
//! Unknown keys are refused everywhere (`deny_unknown_fields`), so a misspelled key never runs
//! silently with its default. Cross-references are checked in [`crate::validate`].

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub pipeline: PipelineSection,
    pub source: SourceSection,
    /// The declared, typed input schema. A database source may leave it out: its columns are
    /// then read from its table when a run is planned.
    #[serde(default)]
    pub columns: Vec<ColumnDecl>,
    /// Curation and transform steps, run in order on every row.
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub load: LoadSection,
    /// Data-quality expectations (see [`crate::expect`]).
    #[serde(default)]
    pub expect: Vec<crate::expect::ExpectEntry>,
    #[serde(default)]
    pub schema: SchemaSection,
}

/// `[schema]`: how a run treats what the source sends beyond the declared columns.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSection {
    #[serde(default)]
    pub on_new_column: OnNewColumn,
}

/// What happens to a field a JSON source sends that the pipeline does not declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNewColumn {
    /// The field is dropped; the record is kept.
    #[default]
    Discard,
    /// The record is rejected (bucket `invalid_value`), naming the field.
    Freeze,
    /// The field becomes a column of the output, after the declared ones: nullable, its type
    /// inferred from the values (integers `int64`, other numbers `float64`, `bool`, strings
    /// `string`, objects and arrays `json`; values of mixed kinds make it a `string` of their
    /// text). A top-level field keeps its name; a field inside a declared object is named by its
    /// path with `_` (`device.os` → `device_os`); characters other than letters, digits, `_`
    /// and `-` become `_`. A name taken by a declared or step column is not evolved (the field
    /// is dropped). Steps and expectations see only declared columns.
    Evolve,
}

impl OnNewColumn {
    /// The key's value as written.
    pub fn name(self) -> &'static str {
        match self {
            OnNewColumn::Discard => "discard",
            OnNewColumn::Freeze => "freeze",
            OnNewColumn::Evolve => "evolve",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Ndjson,
    Csv,
    JsonArray,
    Parquet,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Detected from the first bytes (gzip and zstd magic numbers).
    #[default]
    Auto,
    None,
    Gzip,
    Zstd,
}

/// Where a pipeline's rows come from.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Objects under `location` (a folder or an `s3://` prefix).
    #[default]
    Files,
    /// A PostgreSQL table or query (`[source.sql]`).
    Postgres,
    /// A MySQL or MariaDB table or query (`[source.sql]`).
    Mysql,
    /// An HTTP JSON API (`[source.http]`).
    Http,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Postgres => "postgres",
            SourceKind::Mysql => "mysql",
            SourceKind::Http => "http",
        }
    }

    /// Whether the source is a database read through `[source.sql]`.
    pub fn is_sql(self) -> bool {
        matches!(self, SourceKind::Postgres | SourceKind::Mysql)
    }

    /// Whether workers extract the source into the raw zone before they curate it (databases
    /// and APIs); a files source is read where it is.
    pub fn extracts(self) -> bool {
        self != SourceKind::Files
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    #[serde(default)]
    pub kind: SourceKind,
    /// A folder (relative to the pipeline file) or an `s3://bucket/prefix` (files only).
    #[serde(default)]
    pub location: String,
    /// Glob matched against object keys relative to `location`.
    #[serde(default = "default_glob")]
    pub glob: String,
    /// Required for files; database and API extracts are NDJSON (see [`SourceSection::format`]).
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub compression: Compression,
    /// Longest line accepted (NDJSON, CSV); longer lines are quarantined without being held in memory.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: NonZeroU64,
    /// Files larger than this are split into byte ranges (NDJSON and uncompressed CSV only).
    #[serde(default = "default_shard_bytes")]
    pub shard_bytes: NonZeroU64,
    #[serde(default)]
    pub csv: CsvOptions,
    /// Files: each run takes only the objects not loaded by an earlier completed run (new keys,
    /// and keys rewritten since: another size, ETag or modification time).
    #[serde(default)]
    pub incremental: bool,
    /// A chrono format matched against the start of each key relative to `location`
    /// (`"%Y/%m/%d/"`): gives the source a time dimension for backfills (files only).
    #[serde(default)]
    pub time_template: Option<String>,
    /// The table or query of a `postgres` or `mysql` source.
    #[serde(default)]
    pub sql: Option<SqlSource>,
    /// The API of an `http` source.
    #[serde(default)]
    pub http: Option<crate::http::HttpSource>,
    /// Database and API sources: the raw-zone objects of runs that ended more than this many days ago
    /// move to `archive/` (file sources are referenced where they are, never copied).
    #[serde(default)]
    pub raw_retention_days: Option<std::num::NonZeroU32>,
    /// The S3 storage class archived raw objects are copied into.
    #[serde(default = "default_archive_class")]
    pub raw_archive_storage_class: String,
}

fn default_archive_class() -> String {
    "GLACIER_IR".into()
}

impl SourceSection {
    /// The format the worker parses: the declared one for files; NDJSON for database and API
    /// sources, whose rows land in the raw zone as zstd NDJSON objects.
    pub fn format(&self) -> Format {
        match self.kind {
            SourceKind::Files => self.format.unwrap_or(Format::Ndjson),
            _ => Format::Ndjson,
        }
    }
}

/// `[source.sql]`: what a database source reads and how it is sharded and made incremental.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqlSource {
    /// The environment variable holding the connection string (never written in the file):
    /// `host=… user=… dbname=…` or `postgres://…` for PostgreSQL, `mysql://…` for MySQL.
    pub connection_env: String,
    /// `schema.table` or `table` (each part quoted as an identifier).
    #[serde(default)]
    pub table: Option<String>,
    /// A `SELECT …` read as a subquery (instead of `table`).
    #[serde(default)]
    pub query: Option<String>,
    /// Incremental runs read rows whose cursor is after the pipeline's watermark and at most
    /// the high mark taken when the run is planned.
    #[serde(default)]
    pub cursor_column: Option<String>,
    /// Shards are key ranges of about `shard_rows` rows each.
    #[serde(default)]
    pub key_column: Option<String>,
    #[serde(default)]
    pub shard_rows: Option<NonZeroU64>,
    /// Re-read this far behind the watermark (`"2h"`, `"1d"`), for rows that committed late.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Rows per round trip of the server-side cursor (bounds a worker's memory).
    #[serde(default = "default_fetch_rows")]
    pub fetch_rows: NonZeroU64,
    /// With `sslmode=require` in the connection string: the PEM certificates trusted for the
    /// server's (relative to the pipeline file); default the system's roots. The server's name
    /// is always verified.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
}

impl SqlSource {
    /// `lookback` as a duration (validated; zero when not given).
    pub fn lookback(&self) -> std::time::Duration {
        self.lookback
            .as_deref()
            .and_then(|l| humantime::parse_duration(l).ok())
            .unwrap_or_default()
    }
}

fn default_fetch_rows() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}

fn default_glob() -> String {
    "**/*".into()
}
fn default_max_line() -> NonZeroU64 {
    NonZeroU64::new(64 << 20).expect("non-zero")
}
fn default_shard_bytes() -> NonZeroU64 {
    NonZeroU64::new(256 << 20).expect("non-zero")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    #[serde(default = "yes")]
    pub header: bool,
    #[serde(default = "comma")]
    pub delimiter: String,
    #[serde(default = "dquote")]
    pub quote: String,
    /// Whether large CSV files may be split into byte ranges. Turn off when quoted fields can
    /// hold line breaks.
    #[serde(default = "yes")]
    pub splittable: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            delimiter: ",".into(),
            quote: "\"".into(),
            splittable: true,
        }
    }
}
fn yes() -> bool {
    true
}
fn comma() -> String {
    ",".into()
}
fn dquote() -> String {
    "\"".into()
}

/// A declared column type (with the SQL expressions that type-check against it, in `sqlexpr`).
pub use sqlexpr::{ColumnType, TYPE_NAMES};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDecl {
    pub name: String,
    /// Where the value is in a record: a key, or a dotted path into nested objects (`device.os`).
    /// For CSV, the header name (defaults to `name`).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// A record without this value (missing, null or one of `null_values`, and no `default`) is
    /// malformed.
    #[serde(default)]
    pub required: bool,
    /// Text values read as null (default: the empty string). Compared before any other rule.
    #[serde(default)]
    pub null_values: Option<Vec<String>>,
    /// A literal used when the value is null (missing, JSON null or one of `null_values`).
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// Numeric columns: the character between the integer and the fraction (`","` for German
    /// exports; default `"."`).
    #[serde(default)]
    pub decimal_separator: Option<String>,
    /// Numeric columns: a grouping character removed before parsing (`"."` in `1.234,56`).
    #[serde(default)]
    pub thousands_separator: Option<String>,
    /// `timestamp` and `date` columns: a chrono format (`"%d.%m.%Y %H:%M"`). Default: RFC 3339 /
    /// ISO 8601 (timestamps), `YYYY-MM-DD` (dates).
    #[serde(default)]
    pub format: Option<String>,
    /// `timestamp` columns: the IANA zone of times written without an offset (`"Europe/Berlin"`);
    /// default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// With `timezone`: a wall time that happens twice (autumn switch).
    #[serde(default)]
    pub on_ambiguous: Option<crate::time::Resolve>,
    /// With `timezone`: a wall time that is skipped (spring switch).
    #[serde(default)]
    pub on_nonexistent: Option<crate::time::Resolve>,
}

impl ColumnDecl {
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(&self.name)
    }
}

/// What a fallible step does with a row it cannot handle.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Quarantine the row with the reason (counted in the step's bucket).
    #[default]
    Reject,
    /// Keep the row with a null value.
    Null,
}

pub(crate) fn rejected() -> String {
    "rejected".into()
}
pub(crate) fn filtered() -> String {
    "filtered".into()
}

pub use crate::steps::{
    CaseStep, CastStep, Condition, DateStep, DedupeStep, DeriveStep, FilterStep, HashAlgorithm,
    HashStep, Ipv4TruncateStep, LookupStep, OnMissing, ParseTimestampStep, RegexReplaceStep,
    RejectStep, Step, TrimStep,
};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    #[default]
    Zstd,
    Snappy,
    None,
}

/// How the lake's Parquet files encode a text column whose values do not fit a dictionary (ids,
/// hashes, URLs: the values of a column with few distinct ones are dictionary-encoded either way).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StringEncoding {
    /// `PLAIN`: each value after its 4-byte length. Every Parquet reader takes it.
    #[default]
    Plain,
    /// `DELTA_LENGTH_BYTE_ARRAY`: the lengths packed apart and the values back to back, so the
    /// compressor meets the text alone (for hashes and ids, about twice as fast under zstd and
    /// a few per cent smaller). Arrow, pyarrow, DuckDB, Polars, Trino/Athena and Spark 3.3+
    /// read it; older Parquet readers (Spark's vectorized reader before 3.3, among others) do
    /// not.
    DeltaLength,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The data columns, in order (curation: everything else is dropped). Default: every
    /// declared and derived column, in that order, but the partition columns.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Hive partition columns (`COLUMN=VALUE/` folders); they are not stored inside the files.
    #[serde(default)]
    pub partition_by: Vec<String>,
    #[serde(default)]
    pub codec: Codec,
    #[serde(default = "default_level")]
    pub level: i32,
    #[serde(default = "default_rg")]
    pub row_group_rows: NonZeroU64,
    /// A partition file is closed and a new one started past this size.
    #[serde(default = "default_file_bytes")]
    pub target_file_bytes: NonZeroU64,
    /// How text columns that outgrow their dictionary are encoded (default `plain`).
    #[serde(default)]
    pub string_encoding: StringEncoding,
}
impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            columns: Vec::new(),
            partition_by: Vec::new(),
            codec: Codec::default(),
            level: default_level(),
            row_group_rows: default_rg(),
            target_file_bytes: default_file_bytes(),
            string_encoding: StringEncoding::default(),
        }
    }
}

fn default_level() -> i32 {
    3
}
fn default_rg() -> NonZeroU64 {
    NonZeroU64::new(122_880).expect("non-zero")
}
fn default_file_bytes() -> NonZeroU64 {
    NonZeroU64::new(256 << 20).expect("non-zero")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSection {
    /// Target table (defaults to the pipeline name).
    #[serde(default)]
    pub table: Option<String>,
    /// Merge keys: one row per key, the earliest in the source. Empty: append. A database
    /// source with a `key_column` that leaves this out merges by that column (its rows are
    /// updated in place); `merge_keys = []` appends.
    #[serde(default)]
    pub merge_keys: Vec<String>,
    /// Whether the file gave `merge_keys` (an empty list is an explicit append); set when the
    /// file is parsed.
    #[serde(skip)]
    pub merge_keys_given: bool,
    /// Whether the coordinator loads this pipeline into the warehouse.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Redshift: the COMPOUND SORTKEY columns of the table, when a load creates it.
    #[serde(default)]
    pub sort_keys: Vec<String>,
    /// Redshift: the DISTKEY column of the table (implies `dist_style = "key"`).
    #[serde(default)]
    pub dist_key: Option<String>,
    /// Redshift: the DISTSTYLE of the table (default `key` with a `dist_key`, else `auto`).
    #[serde(default)]
    pub dist_style: Option<DistStyle>,
    /// ANALYZE the table after a load whose rows are more than this share of the table's rows
    /// (0 to 1; default 0.1); `analyze = false` never does.
    #[serde(default = "default_analyze_share")]
    pub analyze_share: f64,
    #[serde(default = "yes")]
    pub analyze: bool,
    /// Redshift (Data API): an external schema (`CREATE EXTERNAL SCHEMA … FROM DATA CATALOG`,
    /// made once by an administrator) in which each load also keeps a Spectrum external table
    /// over the table's lake prefix, with every partition the load added.
    #[serde(default)]
    pub external_schema: Option<String>,
}

fn default_analyze_share() -> f64 {
    0.1
}

/// A file without `[load]` has the same settings as an empty `[load]`: it loads.
impl Default for LoadSection {
    fn default() -> Self {
        toml::from_str("").expect("every [load] key has a default")
    }
}

/// Redshift's distribution styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistStyle {
    Auto,
    Even,
    Key,
    All,
}

impl DistStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            DistStyle::Auto => "auto",
            DistStyle::Even => "even",
            DistStyle::Key => "key",
            DistStyle::All => "all",
        }
    }
}
