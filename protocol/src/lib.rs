//! The contract between the Tributary coordinator and its workers.
//!
//! Everything that crosses a process boundary is defined here and nothing else: queue messages
//! (tasks, results, commands), the shard descriptors a task carries, the [`ShardManifest`] a worker
//! writes when a shard is done, and the [`LoadBatch`] the coordinator hands to the warehouse.
//!
//! * Queue bodies are JSON (debuggable with any SQS console) inside an [`Envelope`] that carries the
//!   protocol version. A body of an unknown version, or one that does not decode, is a
//!   [`ProtocolError`], never a panic: the consumer dead-letters it with that error as the reason.
//! * Large, machine-only documents (a shard plan of a multi-year backfill) use bincode behind a
//!   small header ([`encode_binary`] / [`decode_binary`]) that also carries the version.
//!
//! This crate has no I/O and no AWS dependency on purpose.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bumped on any incompatible change of a message.
pub const PROTOCOL_VERSION: u32 = 1;

/// The Parquet field metadata key (value `"true"`) that marks a column a worker added under
/// `[schema] on_new_column = "evolve"`: its type was inferred from the values, so the loaders
/// reconcile a type conflict of such a column by keeping its text (a string column) instead of
/// refusing the batch.
pub const EVOLVED_FIELD_KEY: &str = "tributary.evolved";

/// Magic bytes at the start of every bincode document.
const BINARY_MAGIC: &[u8; 4] = b"TRB1";

/// The largest binary document [`decode_binary`] reads (256 MiB: a shard plan of about two million
/// shards). It also bounds what a corrupt length prefix can make the decoder allocate.
pub const MAX_BINARY_BYTES: usize = 256 << 20;

/// Why a message or document could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    #[error("message has no protocol version field \"v\"")]
    MissingVersion,
    #[error("unsupported protocol version {found} (this build speaks version {supported})")]
    UnsupportedVersion { found: u64, supported: u32 },
    #[error("message of protocol version {version} does not decode: {detail}")]
    Invalid { version: u32, detail: String },
    #[error("binary document is not a Tributary document (bad magic)")]
    BadMagic,
    #[error("binary document does not decode: {0}")]
    BadBinary(String),
}

/// A queue message body: the version and one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub message: Message,
}

/// The messages that travel on the queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Coordinator → worker: process one shard.
    Task(TaskMessage),
    /// Worker → coordinator: a shard finished (or failed for good).
    Result(ResultMessage),
    /// Coordinator → fleet: an operational command.
    Command(CommandMessage),
}

impl Message {
    /// Encode as a JSON queue body with the current protocol version.
    pub fn to_body(&self) -> String {
        let env = Envelope {
            v: PROTOCOL_VERSION,
            message: self.clone(),
        };
        serde_json::to_string(&env).expect("protocol messages always serialise")
    }

    /// Decode a JSON queue body. Checks the version before looking at anything else, so that a
    /// message from a newer coordinator gets a clear error rather than a confusing field error.
    pub fn from_body(body: &str) -> Result<Message, ProtocolError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: Option<serde_json::Value>,
        }
        let probe: VersionOnly =
            serde_json::from_str(body).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        let v = probe.v.ok_or(ProtocolError::MissingVersion)?;
        let found = v.as_u64().ok_or(ProtocolError::MissingVersion)?;
        if found != u64::from(PROTOCOL_VERSION) {
            return Err(ProtocolError::UnsupportedVersion {
                found,
                supported: PROTOCOL_VERSION,
            });
        }
        let env: Envelope = serde_json::from_str(body).map_err(|e| ProtocolError::Invalid {
            version: PROTOCOL_VERSION,
            detail: e.to_string(),
        })?;
        Ok(env.message)
    }
}

/// Where a task's pipeline definition comes from: the pipeline file's text travels with the task
/// (pipeline files are small), plus the folder its relative paths (reference files, key files)
/// resolve against on the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    pub toml: String,
    pub base_dir: String,
}

/// Coordinator → worker: process one shard and write its outputs under the given prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub task_id: String,
    pub run_id: String,
    pub pipeline: PipelineSpec,
    pub shard: ShardDescriptor,
    /// Object-store prefix under which the Parquet partitions go (`COLUMN=VALUE/` folders).
    pub output_prefix: String,
    /// Object-store prefix for quarantined rows.
    pub quarantine_prefix: String,
    /// Object-store key where the worker writes the [`ShardManifest`] (the last write of a task).
    pub manifest_key: String,
    /// Where the source objects are (`s3://bucket/prefix`); absent in local mode, where the
    /// in-process workers are handed their stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// Root of the output store (`s3://bucket/lake`); absent in local mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    /// Root of the store the coordinator reads manifests and quarantine files from (its
    /// `storage.files`): the worker writes there, whatever its own settings say, so the two
    /// cannot disagree. Absent in local mode (and from older coordinators: the worker's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_url: Option<String>,
    /// The longest string value the warehouse can hold, in bytes (65,535 on Redshift): a row
    /// with a longer output value is quarantined, never truncated. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_string_bytes: Option<u64>,
}

/// Worker → coordinator: how a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub task_id: String,
    pub run_id: String,
    pub shard_id: String,
    pub outcome: TaskOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Outputs and manifest are durable at `manifest_key`.
    Succeeded {
        manifest_key: String,
        counts: Counts,
    },
    /// The shard cannot be processed (for example its source object is gone). Not retried.
    Failed { error: String },
}

/// Operational commands broadcast by the coordinator. A queue hands a message to one
/// consumer, so a command is broadcast as an object every worker reads: the coordinator writes
/// it (as a [`Message::Command`] body) at [`CommandMessage::key`] in the files store, where
/// workers also write manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum CommandMessage {
    /// Drop every task of this run that has not started.
    CancelRun { run_id: String },
}

impl CommandMessage {
    /// Where the command is written in the files store.
    pub fn key(&self) -> String {
        match self {
            CommandMessage::CancelRun { run_id } => cancel_command_key(run_id),
        }
    }
}

/// The files-store key of the command that cancels `run_id` (see [`CommandMessage`]).
pub fn cancel_command_key(run_id: &str) -> String {
    format!("commands/cancel/{run_id}.json")
}

/// One object in the source, as listed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
}

/// A half-open byte range `[start, end)` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// One input of a shard: a whole object, or a byte range of one.
///
/// A range's lines are the lines that *start* in `[start, end)`: a reader that does not start at
/// byte 0 skips the partial line it lands in, and a reader reads past `end` to finish its last line.
/// So adjacent ranges cover every line exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInput {
    pub object: ObjectRef,
    pub range: Option<ByteRange>,
}

impl ShardInput {
    pub fn start(&self) -> u64 {
        self.range.map_or(0, |r| r.start)
    }
}

/// A unit of work: one or more inputs, processed by one worker in one go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDescriptor {
    /// Stable within a run: `s00042`. Output object names derive from it, so a redone shard
    /// overwrites its own files instead of adding new ones.
    pub shard_id: String,
    /// Position of the shard in the plan. Shards cover consecutive, disjoint stretches of the
    /// source in (object key, offset) order, so this index orders rows across shards.
    pub index: u32,
    /// The objects the worker reads. Empty in the plan of a database shard: the worker fills it
    /// with the raw-zone object its [`Extract`] wrote.
    pub inputs: Vec<ShardInput>,
    /// What the worker extracts first, for sources that are not files.
    #[serde(default)]
    pub extract: Option<Extract>,
}

/// What a worker extracts before it curates: the rows of a database source or the records of
/// an API, landed as one zstd NDJSON object in the raw zone (a redone shard replaces its own
/// object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extract {
    Sql(Box<SqlRange>),
    Http(Box<HttpRange>),
}

impl Extract {
    /// The raw-zone object (in the files store) the extract writes.
    pub fn raw_key(&self) -> &str {
        match self {
            Extract::Sql(r) => &r.raw_key,
            Extract::Http(r) => &r.raw_key,
        }
    }
}

/// One time window of an HTTP API source: the pages a worker pulls from the source's URL with
/// the window's bounds as query parameters (written as the API reads them; `None` is not sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRange {
    pub window_from: Option<String>,
    pub window_to: Option<String>,
    /// The raw-zone object key: `raw/PIPELINE/RUN/SHARD.ndjson.zst`.
    pub raw_key: String,
    /// When the run was planned (Unix milliseconds): orders extracts across runs.
    pub planned_at_ms: u64,
}

impl HttpRange {
    /// An API record's place in the source order: as for a database, a later extract sorts
    /// earlier, and within a run a later window (`index`) before an earlier one — an API's
    /// latest answer is its truth.
    pub fn source_position(&self, index: u32) -> SourcePosition {
        SourcePosition {
            object: format!(
                "http/{:020}/{:010}/{}",
                u64::MAX - self.planned_at_ms,
                u32::MAX - index,
                self.raw_key
            ),
            offset: 0,
        }
    }
}

/// The rows of one database shard: a key range of the rows whose cursor is in
/// `(cursor_after, cursor_upto]`. Bounds are the text of SQL literals as the database printed
/// them; `None` is unbounded. Rows whose cursor is NULL are read only when `cursor_after` is
/// `None` (a pipeline's first run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlRange {
    /// Inclusive.
    pub key_from: Option<String>,
    /// Exclusive: the next shard's `key_from`.
    pub key_before: Option<String>,
    pub cursor_after: Option<String>,
    pub cursor_upto: Option<String>,
    /// The raw-zone object key: `raw/PIPELINE/RUN/SHARD.ndjson.zst`.
    pub raw_key: String,
    /// Rows the planner counted in the range (at planning time).
    pub rows: u64,
    /// When the run was planned (Unix milliseconds): orders extracts across runs.
    pub planned_at_ms: u64,
    /// A backfill's window `[from, to)` over the cursor, instead of `(cursor_after,
    /// cursor_upto]`. (A plan written before this field existed does not decode.)
    #[serde(default)]
    pub window: Option<(String, String)>,
}

impl SqlRange {
    /// A database row's place in the source order. The load keeps the row at the earliest
    /// position per merge key; a database's truth is its latest state, so a later extract sorts
    /// earlier (`sql/` and the planning time counted down), and within one run the shards' key
    /// ranges are disjoint.
    pub fn source_position(&self) -> SourcePosition {
        SourcePosition {
            object: format!("sql/{:020}/{}", u64::MAX - self.planned_at_ms, self.raw_key),
            offset: 0,
        }
    }
}

impl ShardDescriptor {
    pub fn bytes(&self) -> u64 {
        self.inputs
            .iter()
            .map(|i| i.range.map_or(i.object.size, |r| r.len()))
            .sum()
    }

    /// Where the shard starts in the source: its first input's object and offset, or for a
    /// database shard its extract's place (see [`SqlRange::source_position`]).
    pub fn source_position(&self) -> SourcePosition {
        match &self.extract {
            Some(Extract::Sql(r)) => return r.source_position(),
            Some(Extract::Http(r)) => return r.source_position(self.index),
            None => {}
        }
        let first = self.inputs.first();
        SourcePosition {
            object: first.map(|i| i.object.key.clone()).unwrap_or_default(),
            offset: first.map_or(0, ShardInput::start),
        }
    }
}

/// A place in the source stream: object key, then byte offset. Ordered lexicographically, which is
/// the order in which the planner lays out shards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourcePosition {
    pub object: String,
    pub offset: u64,
}

/// Where each input line of a shard ended up. Every line is in exactly one bucket, so
/// `lines_total == malformed + Σ rejected + Σ filtered + duplicates + rows_out`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub lines_total: u64,
    /// Lines that are not a record at all (parse errors, missing required fields).
    pub malformed: u64,
    /// Records refused by a validating step, by the step's bucket name (e.g. `bad_ts`).
    pub rejected: BTreeMap<String, u64>,
    /// Records removed on purpose by a row filter, by bucket name (e.g. `unwanted`).
    pub filtered: BTreeMap<String, u64>,
    /// Records dropped because an earlier record had the same dedupe key.
    pub duplicates: u64,
    pub rows_out: u64,
    /// Output rows that break each row-level `[[expect]]` entry, by expectation name (a
    /// partial count per shard, summed over the run). Outside the reconciliation: these rows
    /// are in `rows_out`.
    #[serde(default)]
    pub quality: BTreeMap<String, u64>,
}

impl Counts {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    pub fn filtered_total(&self) -> u64 {
        self.filtered.values().sum()
    }

    /// True when every line is accounted for exactly once.
    pub fn reconciles(&self) -> bool {
        self.lines_total
            == self.malformed
                + self.rejected_total()
                + self.filtered_total()
                + self.duplicates
                + self.rows_out
    }

    pub fn add(&mut self, other: &Counts) {
        self.lines_total += other.lines_total;
        self.malformed += other.malformed;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.filtered {
            *self.filtered.entry(k.clone()).or_default() += v;
        }
        self.duplicates += other.duplicates;
        self.rows_out += other.rows_out;
        for (k, v) in &other.quality {
            *self.quality.entry(k.clone()).or_default() += v;
        }
    }

    /// The flat form printed on `STATS` lines: `lines_total`, `malformed`, each named bucket,
    /// `duplicates`, `rows_out`.
    pub fn to_flat_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("lines_total".into(), self.lines_total.into());
        m.insert("malformed".into(), self.malformed.into());
        for (k, v) in self.rejected.iter().chain(self.filtered.iter()) {
            let e = m.entry(k.clone()).or_insert(0u64.into());
            *e = (e.as_u64().unwrap_or(0) + v).into();
        }
        m.insert("duplicates".into(), self.duplicates.into());
        m.insert("rows_out".into(), self.rows_out.into());
        m
    }
}

/// The tag that makes a task's Parquet file names unique: `RUN-SHARD`. Files are named
/// `part-RUN-SHARD-NNNNN.parquet`, so a later run never overwrites an earlier run's files while a
/// redone shard of the same run replaces its own.
pub fn part_file_tag(run_id: &str, shard_id: &str) -> String {
    format!("{run_id}-{shard_id}")
}

/// Whether `key` names a Parquet file written by a task of `run_id` (see [`part_file_tag`]).
pub fn is_part_file_of_run(key: &str, run_id: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let Some(rest) = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_prefix(run_id))
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".parquet"))
    else {
        return false;
    };
    // What is left is `SHARD-NNNNN`, with no further dash in the shard id.
    matches!(rest.split_once('-'), Some((shard, seq))
        if !shard.is_empty() && !shard.contains('-') && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
}

/// One Parquet file a shard wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub key: String,
    /// Partition column values, in the pipeline's partition order (they live in the path only).
    pub partition: Vec<(String, String)>,
    pub rows: u64,
    pub bytes: u64,
    /// The longest value of each string column in the file, in bytes (Redshift sizes its
    /// VARCHAR columns from these).
    #[serde(default)]
    pub max_bytes: BTreeMap<String, u64>,
}

/// One quarantine file: the malformed and rejected rows of a shard with their reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineFile {
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Written by a worker as the last step of a task; its presence means every file it lists is
/// durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub v: u32,
    pub run_id: String,
    pub pipeline: String,
    pub table: String,
    pub shard: ShardDescriptor,
    pub outputs: Vec<OutputFile>,
    pub quarantine: Vec<QuarantineFile>,
    pub counts: Counts,
    /// SHA-256 of the output Arrow schema (names, types, nullability), hex.
    pub schema_digest: String,
    /// An API source with a `watermark_field`: the latest value of that field the shard read
    /// (RFC 3339, UTC). The pipeline's watermark moves to the latest of a completed run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_watermark: Option<String>,
}

impl ShardManifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifests always serialise")
    }
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        let m: ShardManifest =
            serde_json::from_str(text).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        if m.v != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: u64::from(m.v),
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(m)
    }
}

/// Where a run's commit record lives in the lake, relative to the lake root.
pub fn run_commit_key(run_id: &str) -> String {
    format!("_tributary/commits/{run_id}.json")
}

/// The commit record of a run, written to the lake (`_tributary/commits/RUN.json`, see
/// [`run_commit_key`]) once the run has ended and its loads are done. It lists every Parquet
/// file of the run a reader may trust: exactly the files of the shard manifests that finished.
/// Files of the run that are not listed (a shard that failed half-way, an attempt that was
/// abandoned) were deleted before the record was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCommit {
    pub v: u32,
    pub run_id: String,
    pub pipeline: String,
    pub table: String,
    /// `completed`, or `failed` when some shards failed (their rows are in no listed file).
    pub status: String,
    pub committed_at: String,
    /// Keys relative to the lake root, in key order.
    pub files: Vec<OutputFile>,
    pub rows: u64,
    /// Shards that failed, with the reason.
    pub failed_shards: Vec<(String, String)>,
    /// Files of the run that no manifest listed, deleted before this record was written.
    pub removed: Vec<String>,
}

impl RunCommit {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("commit records always serialise")
    }
    pub fn from_json(text: &str) -> Result<Self, ProtocolError> {
        let c: RunCommit =
            serde_json::from_str(text).map_err(|e| ProtocolError::NotJson(e.to_string()))?;
        if c.v != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: u64::from(c.v),
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(c)
    }
}

/// A file in a load batch, with the source position its rows come from (used by the MERGE to keep
/// the earliest copy of a key across shards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadFile {
    pub file: OutputFile,
    pub shard_index: u32,
    pub position: SourcePosition,
}

/// A group of finished shards' files loaded into one table in one warehouse transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBatch {
    /// Deterministic (`RUN-TABLE-b0003`): a retried load carries the same id, so the ledger can
    /// refuse to apply it twice.
    pub batch_id: String,
    pub run_id: String,
    pub table: String,
    pub merge_keys: Vec<String>,
    pub shards: Vec<String>,
    pub files: Vec<LoadFile>,
    /// Columns whose values are hashed (personal data): a load error names them but never shows
    /// their raw value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_columns: Vec<String>,
    /// How the target table is laid out and maintained (`[load]` of the pipeline file).
    #[serde(default)]
    pub layout: TableLayout,
    /// The external (Spectrum) table the load keeps over the table's lake prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalTable>,
}

/// A Redshift Spectrum table over a table's files in the lake: `SCHEMA.TABLE` over
/// `LAKE/PREFIX/`, partitioned like the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalTable {
    /// The external schema (`[load] external_schema`).
    pub schema: String,
    /// The table's prefix in the lake store (its files are `PREFIX/COLUMN=VALUE/…`).
    pub lake_prefix: String,
}

/// The physical layout and upkeep of a target table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLayout {
    /// Redshift: the COMPOUND SORTKEY columns of a table the load creates.
    #[serde(default)]
    pub sort_keys: Vec<String>,
    /// Redshift: the DISTKEY column of a table the load creates.
    #[serde(default)]
    pub dist_key: Option<String>,
    /// Redshift: the DISTSTYLE (`auto`, `even`, `key`, `all`) of a table the load creates.
    #[serde(default)]
    pub dist_style: Option<String>,
    /// ANALYZE the table after a load whose rows exceed this share of the table's rows, in
    /// basis points (1000 = 10 %); `None`: never.
    #[serde(default)]
    pub analyze_share_bp: Option<u32>,
}

impl TableLayout {
    /// Whether a load of `staged` rows into a table now holding `in_table` rows calls for an
    /// ANALYZE.
    pub fn wants_analyze(&self, staged: u64, in_table: u64) -> bool {
        match self.analyze_share_bp {
            Some(bp) => {
                staged > 0 && u128::from(staged) * 10_000 > u128::from(bp) * u128::from(in_table)
            }
            None => false,
        }
    }
}

impl LoadBatch {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.file.rows).sum()
    }
}

/// The full shard plan of a run. Can be large (a backfill of years), so it is stored in binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub run_id: String,
    pub pipeline: String,
    pub shards: Vec<ShardDescriptor>,
}

/// Encode a document as `TRB1` + version (u32 LE) + bincode.
pub fn encode_binary<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(BINARY_MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("protocol documents always serialise");
    out.extend_from_slice(&body);
    out
}

/// Decode a document written by [`encode_binary`], refusing other versions.
pub fn decode_binary<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    if bytes.len() < 8 || &bytes[..4] != BINARY_MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion {
            found: u64::from(version),
            supported: PROTOCOL_VERSION,
        });
    }
    if bytes.len() - 8 > MAX_BINARY_BYTES {
        return Err(ProtocolError::BadBinary(format!(
            "{} bytes is over the limit of {MAX_BINARY_BYTES}",
            bytes.len() - 8
        )));
    }
    // The limit makes bincode refuse a length prefix larger than it before allocating (a
    // corrupt document claiming terabytes aborted the process).
    let config = bincode::config::standard().with_limit::<MAX_BINARY_BYTES>();
    let (value, used) = bincode::serde::decode_from_slice(&bytes[8..], config)
        .map_err(|e| ProtocolError::BadBinary(e.to_string()))?;
    if used != bytes.len() - 8 {
        return Err(ProtocolError::BadBinary(format!(
            "{} trailing bytes after the document",
            bytes.len() - 8 - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_later_database_extract_sorts_before_an_earlier_one() {
        let at = |ms: u64, key: &str| SqlRange {
            key_from: None,
            key_before: None,
            cursor_after: None,
            cursor_upto: None,
            raw_key: key.into(),
            rows: 0,
            planned_at_ms: ms,
            window: None,
        };
        let (old, new) = (at(1_000, "raw/o/r1/s00000"), at(2_000, "raw/o/r2/s00000"));
        assert!(new.source_position() < old.source_position());
        let d = ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            inputs: Vec::new(),
            extract: Some(Extract::Sql(Box::new(new.clone()))),
        };
        assert_eq!(d.source_position(), new.source_position());
        assert_eq!(d.extract.as_ref().unwrap().raw_key(), "raw/o/r2/s00000");
        let plan = ShardPlan {
            run_id: "r2".into(),
            pipeline: "o".into(),
            shards: vec![d],
        };
        let back: ShardPlan = decode_binary(&encode_binary(&plan)).unwrap();
        assert_eq!(back, plan, "a database shard survives the binary plan");
    }

    #[test]
    fn a_later_api_window_and_a_later_api_extract_sort_first() {
        let window = |ms: u64, index: u32| ShardDescriptor {
            shard_id: format!("s{index:05}"),
            index,
            inputs: Vec::new(),
            extract: Some(Extract::Http(Box::new(HttpRange {
                window_from: Some("2026-11-02T00:00:00Z".into()),
                window_to: None,
                raw_key: format!("raw/api/r{ms}/s{index:05}.ndjson.zst"),
                planned_at_ms: ms,
            }))),
        };
        assert!(window(1_000, 1).source_position() < window(1_000, 0).source_position());
        assert!(window(2_000, 0).source_position() < window(1_000, 9).source_position());
        let plan = ShardPlan {
            run_id: "r".into(),
            pipeline: "api".into(),
            shards: vec![window(1_000, 0), window(1_000, 1)],
        };
        let back: ShardPlan = decode_binary(&encode_binary(&plan)).unwrap();
        assert_eq!(back, plan, "an API shard survives the binary plan");
        assert_eq!(
            plan.shards[1].extract.as_ref().unwrap().raw_key(),
            "raw/api/r1000/s00001.ndjson.zst"
        );
    }

    fn shard() -> ShardDescriptor {
        ShardDescriptor {
            shard_id: "s00003".into(),
            index: 3,
            extract: None,
            inputs: vec![
                ShardInput {
                    object: ObjectRef {
                        key: "raw/a.ndjson".into(),
                        size: 1000,
                    },
                    range: Some(ByteRange {
                        start: 100,
                        end: 600,
                    }),
                },
                ShardInput {
                    object: ObjectRef {
                        key: "raw/b.ndjson".into(),
                        size: 50,
                    },
                    range: None,
                },
            ],
        }
    }

    fn task() -> Message {
        Message::Task(TaskMessage {
            max_string_bytes: None,
            task_id: "r1/s00003".into(),
            run_id: "r1".into(),
            pipeline: PipelineSpec {
                name: "web".into(),
                toml: "[x]".into(),
                base_dir: "/tmp".into(),
            },
            shard: shard(),
            output_prefix: "lake/web".into(),
            quarantine_prefix: "quarantine/web/r1".into(),
            manifest_key: "manifests/r1/s00003.json".into(),
            source_url: Some("s3://raw/web/".into()),
            output_url: None,
            files_url: Some("s3://files/tributary".into()),
        })
    }

    fn counts() -> Counts {
        Counts {
            lines_total: 10,
            malformed: 1,
            rejected: BTreeMap::from([("bad_ts".into(), 2)]),
            filtered: BTreeMap::from([("unwanted".into(), 3)]),
            duplicates: 1,
            rows_out: 3,
            quality: BTreeMap::from([("not_null(email)".into(), 1)]),
        }
    }

    #[test]
    fn a_load_larger_than_the_share_asks_for_an_analyze() {
        let l = TableLayout {
            analyze_share_bp: Some(1000),
            ..TableLayout::default()
        };
        assert!(l.wants_analyze(100, 100), "a first load");
        assert!(l.wants_analyze(11, 100));
        assert!(
            !l.wants_analyze(10, 100),
            "exactly 10 % is not more than 10 %"
        );
        assert!(!l.wants_analyze(0, 0));
        assert!(!TableLayout::default().wants_analyze(100, 100));
    }

    #[test]
    fn every_message_round_trips_through_json() {
        let msgs = vec![
            task(),
            Message::Result(ResultMessage {
                task_id: "r1/s00003".into(),
                run_id: "r1".into(),
                shard_id: "s00003".into(),
                outcome: TaskOutcome::Succeeded {
                    manifest_key: "m".into(),
                    counts: counts(),
                },
            }),
            Message::Result(ResultMessage {
                task_id: "t".into(),
                run_id: "r".into(),
                shard_id: "s".into(),
                outcome: TaskOutcome::Failed {
                    error: "object raw/a is gone".into(),
                },
            }),
            Message::Command(CommandMessage::CancelRun {
                run_id: "r1".into(),
            }),
        ];
        for m in msgs {
            let body = m.to_body();
            assert!(body.starts_with("{\"v\":1,"), "{body}");
            assert_eq!(Message::from_body(&body).unwrap(), m);
        }
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let body = task().to_body().replacen("\"v\":1", "\"v\":7", 1);
        assert_eq!(
            Message::from_body(&body),
            Err(ProtocolError::UnsupportedVersion {
                found: 7,
                supported: 1
            })
        );
        let err = Message::from_body(&body).unwrap_err().to_string();
        assert!(err.contains("unsupported protocol version 7"), "{err}");
    }

    #[test]
    fn garbage_and_missing_fields_are_errors_not_panics() {
        assert!(matches!(
            Message::from_body("not json"),
            Err(ProtocolError::NotJson(_))
        ));
        assert_eq!(Message::from_body("{}"), Err(ProtocolError::MissingVersion));
        assert_eq!(
            Message::from_body("{\"v\":\"1\"}"),
            Err(ProtocolError::MissingVersion)
        );
        assert!(matches!(
            Message::from_body("{\"v\":1,\"kind\":\"task\"}"),
            Err(ProtocolError::Invalid { .. })
        ));
        assert!(matches!(
            Message::from_body("{\"v\":1,\"kind\":\"teleport\"}"),
            Err(ProtocolError::Invalid { .. })
        ));
    }

    #[test]
    fn manifest_round_trips_and_checks_version() {
        let m = ShardManifest {
            v: PROTOCOL_VERSION,
            run_id: "r1".into(),
            pipeline: "web".into(),
            table: "web_events".into(),
            shard: shard(),
            outputs: vec![OutputFile {
                max_bytes: Default::default(),
                key: "lake/web/event_date=2025-05-01/part-s00003-00000.parquet".into(),
                partition: vec![("event_date".into(), "2025-05-01".into())],
                rows: 3,
                bytes: 900,
            }],
            quarantine: vec![QuarantineFile {
                key: "q/s00003.ndjson".into(),
                rows: 3,
                bytes: 10,
            }],
            counts: counts(),
            schema_digest: "ab".into(),
            source_watermark: None,
        };
        assert_eq!(ShardManifest::from_json(&m.to_json()).unwrap(), m);
        let old = m.to_json().replacen("\"v\": 1", "\"v\": 0", 1);
        assert!(matches!(
            ShardManifest::from_json(&old),
            Err(ProtocolError::UnsupportedVersion { found: 0, .. })
        ));
    }

    #[test]
    fn binary_plan_round_trips_and_rejects_garbage() {
        let plan = ShardPlan {
            run_id: "r1".into(),
            pipeline: "web".into(),
            shards: vec![shard(); 3],
        };
        let bytes = encode_binary(&plan);
        assert_eq!(decode_binary::<ShardPlan>(&bytes).unwrap(), plan);
        assert_eq!(
            decode_binary::<ShardPlan>(b"nope"),
            Err(ProtocolError::BadMagic)
        );
        let mut newer = bytes.clone();
        newer[4] = 9;
        assert!(matches!(
            decode_binary::<ShardPlan>(&newer),
            Err(ProtocolError::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            decode_binary::<ShardPlan>(&bytes[..bytes.len() - 3]),
            Err(ProtocolError::BadBinary(_))
        ));
    }

    /// Found by the protocol_decode fuzz target: a shard plan whose string length prefix claimed
    /// ~4.9 × 10^18 bytes made bincode allocate it, aborting the process (a corrupt plan.bin
    /// would have killed the coordinator on every restart).
    #[test]
    fn regression_a_length_prefix_claiming_exabytes_is_an_error_not_an_abort() {
        let mut bytes = BINARY_MAGIC.to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        // run_id: a varint length of 0x446e696f6c6b7200 (0xfd = u64 follows), then nothing.
        bytes.push(0xfd);
        bytes.extend_from_slice(&0x446e_696f_6c6b_7200u64.to_le_bytes());
        bytes.extend_from_slice(b"rkloinDexad");
        let err = decode_binary::<ShardPlan>(&bytes).unwrap_err();
        assert!(matches!(err, ProtocolError::BadBinary(_)), "{err:?}");
        // The same shape in a nested string (the fuzz artifact's place).
        let plan = ShardPlan {
            run_id: "r".into(),
            pipeline: "p".into(),
            shards: vec![shard()],
        };
        let mut good = encode_binary(&plan);
        let at = good.len() - 20;
        good.truncate(at);
        good.push(0xfd);
        good.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_binary::<ShardPlan>(&good).is_err());
    }

    #[test]
    fn part_files_are_recognised_per_run() {
        let run = "web-20261202T064601123-1a2b00";
        let tag = part_file_tag(run, "s00003");
        let key = format!("lake/web/event_date=2026-12-01/part-{tag}-00000.parquet");
        assert!(is_part_file_of_run(&key, run));
        assert!(!is_part_file_of_run(&key, "web-20261202T064601123-1a2b0"));
        assert!(!is_part_file_of_run(&key, "web-20261202T064601123"));
        assert!(!is_part_file_of_run(
            "lake/web/part-s00003-00000.parquet",
            run
        ));
        assert!(!is_part_file_of_run(
            &format!("lake/web/part-{tag}-00000.parquet.tmp"),
            run
        ));
        assert!(!is_part_file_of_run(
            &format!("lake/web/_tributary/commits/{run}.json"),
            run
        ));
    }

    #[test]
    fn counts_reconcile_and_flatten() {
        let c = counts();
        assert!(c.reconciles());
        let flat = c.to_flat_json();
        let keys: Vec<_> = flat.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "lines_total",
                "malformed",
                "bad_ts",
                "unwanted",
                "duplicates",
                "rows_out"
            ]
        );
        let mut sum = Counts::default();
        sum.add(&c);
        sum.add(&c);
        assert!(sum.reconciles());
        assert_eq!(sum.rejected["bad_ts"], 4);
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in ".{0,200}") {
            let _ = Message::from_body(&body);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_binary::<ShardPlan>(&bytes);
        }
    }
}
