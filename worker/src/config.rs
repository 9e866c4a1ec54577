//! Pipeline files: what a pipeline reads, how it curates and transforms rows, and where they go.
//!
//! Two phases, as in ripgrep's arguments: [`PipelineFile`] is the raw TOML (serde, unknown keys
//! refused), and [`PipelineFile::validate`] is a pure function that checks every cross-reference
//! and returns a [`Pipeline`] or an error naming the file and the field. Nothing touches the
//! network or the source here; key files and reference files are read when a worker builds its
//! plan (`crate::plan`).
//!
//! `examples/pipeline.example.toml` documents every key.

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration error: the file, the field path and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub pipeline: PipelineSection,
    pub source: SourceSection,
    /// The declared, typed input schema.
    pub columns: Vec<ColumnDecl>,
    /// Curation and transform steps, run in order on every row.
    #[serde(default)]
    pub steps: Vec<Step>,
    pub output: OutputSection,
    #[serde(default)]
    pub load: LoadSection,
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// A folder (relative to the pipeline file) or an `s3://bucket/prefix`.
    pub location: String,
    /// Glob matched against object keys relative to `location`.
    #[serde(default = "default_glob")]
    pub glob: String,
    pub format: Format,
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

/// A declared column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Microseconds, UTC.
    Timestamp,
    Date,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<ColumnType> {
        let s = s.trim();
        Some(match s {
            "string" => ColumnType::String,
            "int64" | "int" | "integer" => ColumnType::Int64,
            "float64" | "float" | "double" => ColumnType::Float64,
            "bool" | "boolean" => ColumnType::Bool,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            _ => {
                let inner = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, sc) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = sc.trim().parse().ok()?;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Date => f.write_str("date"),
        }
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ColumnType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown type {s:?}: expected string, int64, float64, bool, decimal(P,S), timestamp or date"
            ))
        })
    }
}

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
    /// A record without this value (missing, null or empty) is malformed.
    #[serde(default)]
    pub required: bool,
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

fn rejected() -> String {
    "rejected".into()
}
fn filtered() -> String {
    "filtered".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Drop rows matching any of the conditions (counted in `bucket`).
    Filter(FilterStep),
    /// Keep the first row of each key (in source order); later ones count as duplicates.
    Dedupe(DedupeStep),
    Cast(CastStep),
    Trim(CaseStep),
    Upper(CaseStep),
    Lower(CaseStep),
    RegexReplace(RegexReplaceStep),
    ParseTimestamp(ParseTimestampStep),
    /// The UTC calendar date of a timestamp column.
    Date(DateStep),
    Hash(HashStep),
    Ipv4Truncate(Ipv4TruncateStep),
    Lookup(LookupStep),
}

impl Step {
    pub fn op(&self) -> &'static str {
        match self {
            Step::Filter(_) => "filter",
            Step::Dedupe(_) => "dedupe",
            Step::Cast(_) => "cast",
            Step::Trim(_) => "trim",
            Step::Upper(_) => "upper",
            Step::Lower(_) => "lower",
            Step::RegexReplace(_) => "regex_replace",
            Step::ParseTimestamp(_) => "parse_timestamp",
            Step::Date(_) => "date",
            Step::Hash(_) => "hash",
            Step::Ipv4Truncate(_) => "ipv4_truncate",
            Step::Lookup(_) => "lookup",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub column: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub is_null: Option<bool>,
    /// ASCII case-insensitive comparison for `equals` and `contains`.
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStep {
    pub drop_if_any: Vec<Condition>,
    #[serde(default = "filtered")]
    pub bucket: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeStep {
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CastStep {
    pub column: String,
    pub to: ColumnType,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "rejected")]
    pub bucket: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseStep {
    pub columns: Vec<String>,
    /// For `trim` only: the characters removed from both ends (default: all whitespace).
    #[serde(default)]
    pub chars: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexReplaceStep {
    pub column: String,
    pub pattern: String,
    pub replacement: String,
    #[serde(default)]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParseTimestampStep {
    pub column: String,
    /// A chrono format with an offset (`%Y-%m-%dT%H:%M:%S%.3f%:z`), or `rfc3339`. The result is UTC.
    pub format: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "rejected")]
    pub bucket: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DateStep {
    pub column: String,
    pub output: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// `hex(sha256(key || value))`: the key is a salt prefix.
    SaltedSha256,
    /// `hex(hmac_sha256(key, value))`.
    HmacSha256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashStep {
    pub column: String,
    #[serde(default)]
    pub output: Option<String>,
    pub algorithm: HashAlgorithm,
    /// Environment variable holding the key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding the key (relative to the pipeline file); one trailing newline is ignored.
    #[serde(default)]
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4TruncateStep {
    pub column: String,
    #[serde(default)]
    pub output: Option<String>,
    /// Leading octets kept; the rest become 0.
    #[serde(default = "three")]
    pub keep_octets: u8,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "rejected")]
    pub bucket: String,
}
fn three() -> u8 {
    3
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    #[default]
    Null,
    Keep,
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LookupStep {
    pub column: String,
    /// A CSV file with a header (relative to the pipeline file).
    pub file: String,
    pub key_field: String,
    pub value_field: String,
    pub output: String,
    #[serde(default)]
    pub on_missing: OnMissing,
    #[serde(default = "rejected")]
    pub bucket: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    #[default]
    Zstd,
    Snappy,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The data columns, in order (curation: everything else is dropped).
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

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadSection {
    /// Target table (defaults to the pipeline name).
    #[serde(default)]
    pub table: Option<String>,
    /// Merge keys: one row per key, the earliest in the source. Empty: append.
    #[serde(default)]
    pub merge_keys: Vec<String>,
    /// Whether the coordinator loads this pipeline into the warehouse.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A validated pipeline and where it came from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PipelineFile,
    /// The pipeline file's path (for messages).
    pub path: String,
    /// Folder relative paths resolve against.
    pub base_dir: PathBuf,
    /// The file's text (travels with tasks).
    pub text: String,
    /// Every column with its type: declared ones, then step outputs, in order.
    pub columns: Vec<(String, ColumnType)>,
}

impl Pipeline {
    /// Columns that hold personal data in hashed form (the input and output of every `hash`
    /// step): error messages never show their values.
    pub fn masked_columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in &self.file.steps {
            if let Step::Hash(h) = step {
                out.push(h.column.clone());
                if let Some(o) = &h.output {
                    out.push(o.clone());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn name(&self) -> &str {
        &self.file.pipeline.name
    }
    pub fn table(&self) -> &str {
        self.file
            .load
            .table
            .as_deref()
            .unwrap_or(&self.file.pipeline.name)
    }
    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }
    /// Resolves a path from the pipeline file against its folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Reads and validates a pipeline file.
pub fn load_file(path: &Path) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let base = base.canonicalize().unwrap_or(base);
    parse(&text, &path.display().to_string(), base)
}

/// Parses and validates pipeline text.
pub fn parse(text: &str, file: &str, base_dir: PathBuf) -> Result<Pipeline, ConfigError> {
    let raw: PipelineFile = toml::from_str(text).map_err(|e| {
        let span = e.span().map(|s| {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        });
        ConfigError {
            file: file.into(),
            field: span.unwrap_or_else(|| "(toml)".into()),
            message: e.message().trim().to_string(),
        }
    })?;
    raw.validate(file, base_dir, text)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl PipelineFile {
    /// Pure validation: names, references between steps and columns, option ranges.
    pub fn validate(
        self,
        file: &str,
        base_dir: PathBuf,
        text: &str,
    ) -> Result<Pipeline, ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            file: file.into(),
            field: field.into(),
            message,
        };
        if !valid_name(&self.pipeline.name) {
            return Err(err(
                "pipeline.name",
                format!(
                    "{:?} must be 1-128 letters, digits, '_' or '-'",
                    self.pipeline.name
                ),
            ));
        }
        if self.source.location.trim().is_empty() {
            return Err(err("source.location", "must not be empty".into()));
        }
        if let Err(e) = globset::Glob::new(&self.source.glob) {
            return Err(err("source.glob", format!("invalid glob: {e}")));
        }
        for (f, v) in [
            ("source.csv.delimiter", &self.source.csv.delimiter),
            ("source.csv.quote", &self.source.csv.quote),
        ] {
            if v.len() != 1 || !v.is_ascii() {
                return Err(err(f, format!("{v:?} must be exactly one ASCII character")));
            }
        }
        if self.columns.is_empty() {
            return Err(err("columns", "declare at least one column".into()));
        }
        let mut cols: Vec<(String, ColumnType)> = Vec::new();
        let mut paths = BTreeSet::new();
        for (i, c) in self.columns.iter().enumerate() {
            let f = format!("columns[{i}]");
            if !valid_name(&c.name) {
                return Err(err(
                    &format!("{f}.name"),
                    format!("{:?} must be letters, digits, '_' or '-'", c.name),
                ));
            }
            if cols.iter().any(|(n, _)| *n == c.name) {
                return Err(err(
                    &format!("{f}.name"),
                    format!("column {:?} is declared twice", c.name),
                ));
            }
            if c.path().split('.').any(str::is_empty) {
                return Err(err(
                    &format!("{f}.path"),
                    format!("{:?} is not a valid dotted path", c.path()),
                ));
            }
            if !paths.insert(c.path().to_string()) {
                return Err(err(
                    &format!("{f}.path"),
                    format!("path {:?} is read by two columns", c.path()),
                ));
            }
            if self.source.format == Format::Csv && c.path().contains('.') {
                return Err(err(
                    &format!("{f}.path"),
                    "CSV columns are flat: use the header name".into(),
                ));
            }
            cols.push((c.name.clone(), c.ty));
        }
        // Paths must not be both a leaf and a parent (`device` and `device.os`).
        for p in &paths {
            if paths.iter().any(|q| q.starts_with(&format!("{p}."))) {
                return Err(err(
                    "columns",
                    format!("path {p:?} is both a value and an object of other paths"),
                ));
            }
        }
        let ty_of = |cols: &[(String, ColumnType)], name: &str| {
            cols.iter().rev().find(|(n, _)| n == name).map(|(_, t)| *t)
        };
        let mut dedupes = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let f = format!("steps[{i}] ({})", step.op());
            let need = |cols: &[(String, ColumnType)],
                        name: &str,
                        field: &str|
             -> Result<ColumnType, ConfigError> {
                ty_of(cols, name)
                    .ok_or_else(|| err(&format!("{f}.{field}"), format!("unknown column {name:?}")))
            };
            let need_string = |cols: &[(String, ColumnType)],
                               name: &str,
                               field: &str|
             -> Result<(), ConfigError> {
                match need(cols, name, field)? {
                    ColumnType::String => Ok(()),
                    t => Err(err(
                        &format!("{f}.{field}"),
                        format!("column {name:?} is {t}, this step needs a string"),
                    )),
                }
            };
            let out_name = |o: &Option<String>, field: &str| -> Result<(), ConfigError> {
                match o {
                    Some(o) if !valid_name(o) => Err(err(
                        &format!("{f}.{field}"),
                        format!("{o:?} is not a valid column name"),
                    )),
                    _ => Ok(()),
                }
            };
            let bucket_ok = |b: &str| -> Result<(), ConfigError> {
                if !valid_name(b)
                    || ["lines_total", "malformed", "duplicates", "rows_out"].contains(&b)
                {
                    return Err(err(
                        &format!("{f}.bucket"),
                        format!("{b:?} is not a usable bucket name"),
                    ));
                }
                Ok(())
            };
            match step {
                Step::Filter(s) => {
                    bucket_ok(&s.bucket)?;
                    if s.drop_if_any.is_empty() {
                        return Err(err(
                            &format!("{f}.drop_if_any"),
                            "needs at least one condition".into(),
                        ));
                    }
                    for (j, c) in s.drop_if_any.iter().enumerate() {
                        let n = [
                            c.equals.is_some(),
                            c.contains.is_some(),
                            c.is_null.is_some(),
                        ]
                        .iter()
                        .filter(|x| **x)
                        .count();
                        if n != 1 {
                            return Err(err(
                                &format!("{f}.drop_if_any[{j}]"),
                                "set exactly one of equals, contains, is_null".into(),
                            ));
                        }
                        if c.is_null.is_none() {
                            need_string(&cols, &c.column, &format!("drop_if_any[{j}].column"))?;
                        } else {
                            need(&cols, &c.column, &format!("drop_if_any[{j}].column"))?;
                        }
                    }
                }
                Step::Dedupe(s) => {
                    dedupes += 1;
                    if s.keys.is_empty() {
                        return Err(err(
                            &format!("{f}.keys"),
                            "needs at least one key column".into(),
                        ));
                    }
                    for k in &s.keys {
                        need(&cols, k, "keys")?;
                    }
                }
                Step::Cast(s) => {
                    bucket_ok(&s.bucket)?;
                    need(&cols, &s.column, "column")?;
                    out_name(&s.output, "output")?;
                    cols.push((s.output.clone().unwrap_or(s.column.clone()), s.to));
                }
                Step::Trim(s) | Step::Upper(s) | Step::Lower(s) => {
                    if s.columns.is_empty() {
                        return Err(err(
                            &format!("{f}.columns"),
                            "needs at least one column".into(),
                        ));
                    }
                    if s.chars.is_some() && !matches!(step, Step::Trim(_)) {
                        return Err(err(&format!("{f}.chars"), "only trim takes chars".into()));
                    }
                    for c in &s.columns {
                        need_string(&cols, c, "columns")?;
                    }
                }
                Step::RegexReplace(s) => {
                    need_string(&cols, &s.column, "column")?;
                    if let Err(e) = regex::Regex::new(&s.pattern) {
                        return Err(err(&format!("{f}.pattern"), format!("invalid regex: {e}")));
                    }
                    out_name(&s.output, "output")?;
                    cols.push((
                        s.output.clone().unwrap_or(s.column.clone()),
                        ColumnType::String,
                    ));
                }
                Step::ParseTimestamp(s) => {
                    bucket_ok(&s.bucket)?;
                    need_string(&cols, &s.column, "column")?;
                    crate::transform::TimestampFormat::new(&s.format)
                        .map_err(|m| err(&format!("{f}.format"), m))?;
                    out_name(&s.output, "output")?;
                    cols.push((
                        s.output.clone().unwrap_or(s.column.clone()),
                        ColumnType::Timestamp,
                    ));
                }
                Step::Date(s) => {
                    match need(&cols, &s.column, "column")? {
                        ColumnType::Timestamp => {}
                        t => {
                            return Err(err(
                                &format!("{f}.column"),
                                format!("column {:?} is {t}, date needs a timestamp", s.column),
                            ));
                        }
                    }
                    out_name(&Some(s.output.clone()), "output")?;
                    cols.push((s.output.clone(), ColumnType::Date));
                }
                Step::Hash(s) => {
                    need_string(&cols, &s.column, "column")?;
                    out_name(&s.output, "output")?;
                    match (&s.key_env, &s.key_file) {
                        (Some(_), None) | (None, Some(_)) => {}
                        _ => {
                            return Err(err(
                                &format!("{f}.key_env"),
                                "set exactly one of key_env or key_file (keys are never inline)"
                                    .into(),
                            ));
                        }
                    }
                    cols.push((
                        s.output.clone().unwrap_or(s.column.clone()),
                        ColumnType::String,
                    ));
                }
                Step::Ipv4Truncate(s) => {
                    bucket_ok(&s.bucket)?;
                    need_string(&cols, &s.column, "column")?;
                    out_name(&s.output, "output")?;
                    if s.keep_octets > 3 {
                        return Err(err(&format!("{f}.keep_octets"), "must be 0 to 3".into()));
                    }
                    cols.push((
                        s.output.clone().unwrap_or(s.column.clone()),
                        ColumnType::String,
                    ));
                }
                Step::Lookup(s) => {
                    bucket_ok(&s.bucket)?;
                    need_string(&cols, &s.column, "column")?;
                    out_name(&Some(s.output.clone()), "output")?;
                    cols.push((s.output.clone(), ColumnType::String));
                }
            }
        }
        if dedupes > 1 {
            return Err(err("steps", "at most one dedupe step".into()));
        }
        let o = &self.output;
        if o.columns.is_empty() {
            return Err(err(
                "output.columns",
                "list at least one output column".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for c in o.columns.iter().chain(o.partition_by.iter()) {
            if ty_of(&cols, c).is_none() {
                return Err(err("output.columns", format!("unknown column {c:?}")));
            }
            if !seen.insert(c) {
                return Err(err(
                    "output.columns",
                    format!(
                        "column {c:?} is listed twice (partition columns are not stored in files)"
                    ),
                ));
            }
        }
        for c in &o.partition_by {
            if matches!(
                ty_of(&cols, c),
                Some(ColumnType::Float64 | ColumnType::Timestamp)
            ) {
                return Err(err(
                    "output.partition_by",
                    format!("column {c:?}: partition by a string, integer, bool or date"),
                ));
            }
        }
        match o.codec {
            Codec::Zstd if !(1..=22).contains(&o.level) => {
                return Err(err("output.level", "zstd level must be 1 to 22".into()));
            }
            _ => {}
        }
        if o.row_group_rows.get() > 1 << 24 {
            return Err(err("output.row_group_rows", "at most 16,777,216".into()));
        }
        if let Some(t) = &self.load.table
            && !valid_name(t)
        {
            return Err(err(
                "load.table",
                format!("{t:?} must be letters, digits, '_' or '-'"),
            ));
        }
        for k in &self.load.merge_keys {
            if !o.columns.contains(k) && !o.partition_by.contains(k) {
                return Err(err(
                    "load.merge_keys",
                    format!("{k:?} is not an output column"),
                ));
            }
        }
        Ok(Pipeline {
            file: self,
            path: file.into(),
            base_dir,
            text: text.into(),
            columns: cols,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pipeline]
name = "t"
[source]
location = "in"
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "os"
path = "device.os"
type = "string"
[[columns]]
name = "amount"
type = "decimal(18,2)"
[[steps]]
op = "upper"
columns = ["os"]
[output]
columns = ["id", "os", "amount"]
[load]
merge_keys = ["id"]
"#;

    fn check(text: &str) -> Result<Pipeline, ConfigError> {
        parse(text, "p.toml", PathBuf::from("."))
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for f in [
            "pipeline.example.toml",
            "workload.toml",
            "workload_csv.toml",
            "demo/web_events.toml",
            "demo/pos_sales.toml",
            "demo/billing.toml",
        ] {
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
            if let Err(e) = parse(&text, f, dir.clone()) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn minimal_pipeline_is_valid() {
        let p = check(MINIMAL).unwrap();
        assert_eq!(p.table(), "t");
        assert_eq!(
            p.column_type("amount"),
            Some(ColumnType::Decimal {
                precision: 18,
                scale: 2
            })
        );
        assert_eq!(p.file.output.row_group_rows.get(), 122_880);
    }

    fn expect_err(text: &str, field: &str, needle: &str) {
        let e = check(text).unwrap_err();
        assert_eq!(e.file, "p.toml");
        assert!(
            e.field.contains(field),
            "field {:?} does not contain {field:?} ({e})",
            e.field
        );
        assert!(
            e.to_string().contains(needle),
            "{e} does not contain {needle:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        expect_err(
            &MINIMAL.replace("format = \"ndjson\"", "format = \"ndjson\"\nfromat = 1"),
            "line 7",
            "fromat",
        );
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"os\"]\nlocale = \"tr\""),
            "line",
            "locale",
        );
        expect_err(
            &MINIMAL.replace("type = \"decimal(18,2)\"", "type = \"money\""),
            "line",
            "unknown type",
        );
        expect_err(
            &MINIMAL.replace("op = \"upper\"", "op = \"uppercase\""),
            "line",
            "uppercase",
        );
    }

    #[test]
    fn references_are_checked() {
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"nope\"]"),
            "steps[0] (upper).columns",
            "unknown column \"nope\"",
        );
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"amount\"]"),
            "steps[0]",
            "needs a string",
        );
        expect_err(
            &MINIMAL.replace("[\"id\", \"os\", \"amount\"]", "[\"id\", \"gone\"]"),
            "output.columns",
            "gone",
        );
        expect_err(
            &MINIMAL.replace("merge_keys = [\"id\"]", "merge_keys = [\"x\"]"),
            "load.merge_keys",
            "\"x\"",
        );
        expect_err(
            &MINIMAL.replace("name = \"t\"", "name = \"bad name\""),
            "pipeline.name",
            "bad name",
        );
        expect_err(
            &MINIMAL.replace("path = \"device.os\"", "path = \"device..os\""),
            "columns[1].path",
            "dotted",
        );
    }

    #[test]
    fn secrets_are_never_inline() {
        let t = MINIMAL.replace(
            "[output]",
            "[[steps]]\nop = \"hash\"\ncolumn = \"id\"\nalgorithm = \"hmac_sha256\"\n[output]",
        );
        expect_err(&t, "steps[1] (hash).key_env", "never inline");
        let t = MINIMAL.replace(
            "[output]",
            "[[steps]]\nop = \"hash\"\ncolumn = \"id\"\nalgorithm = \"hmac_sha256\"\nkey = \"s3cr3t\"\n[output]",
        );
        expect_err(&t, "line", "key");
    }

    #[test]
    fn bad_options_are_named() {
        expect_err(&MINIMAL.replace("[output]", "[[steps]]\nop = \"regex_replace\"\ncolumn = \"id\"\npattern = \"(\"\nreplacement = \"\"\n[output]"), "pattern", "invalid regex");
        expect_err(&MINIMAL.replace("[output]", "[[steps]]\nop = \"parse_timestamp\"\ncolumn = \"id\"\nformat = \"%Y-%m-%d\"\n[output]"), "format", "offset");
        expect_err(
            &MINIMAL.replace("[output]", "[output]\nlevel = 99"),
            "output.level",
            "1 to 22",
        );
        expect_err(
            &MINIMAL.replace(
                "format = \"ndjson\"",
                "format = \"csv\"\n[source.csv]\ndelimiter = \";;\"",
            ),
            "source.csv.delimiter",
            "one ASCII",
        );
        expect_err(
            &MINIMAL.replace(
                "format = \"ndjson\"",
                "format = \"ndjson\"\nshard_bytes = 0",
            ),
            "line",
            "zero",
        );
    }
}
