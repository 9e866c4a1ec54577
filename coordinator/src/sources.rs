//! Planning a run of a database source, and the pipeline watermarks that make such runs
//! incremental. (File sources are planned from a listing by [`crate::planner`].)
//!
//! A run reads the rows whose cursor is after the pipeline's watermark (moved back by the
//! lookback) and at most the high mark taken at planning, in key ranges of about `shard_rows`
//! rows; each range is one shard whose worker extracts it into the raw zone. The run record
//! keeps what the watermark becomes; it is written to state (`pipelines/NAME/watermark`) only
//! when the run completed, after its loads committed, so a failed or cancelled run never moves
//! it and a watermark never passes rows that were not loaded.

use anyhow::{Context, bail};
use backends::state::StateStore;
use pipeline::Pipeline;
use protocol::{Extract, ShardDescriptor, ShardPlan, SqlRange};
use serde::{Deserialize, Serialize};

use crate::engine::RunStatus;
use crate::run::{RunRecord, new_run_id, now};

/// Key ranges of this many rows when `key_column` is given without `shard_rows`.
const DEFAULT_SHARD_ROWS: u64 = 100_000;

/// A pipeline's watermark, as stored in state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The cursor value, as the database prints it.
    pub cursor: String,
    /// The run that moved it here.
    pub run_id: String,
    pub at: String,
}

fn watermark_key(pipeline: &str) -> String {
    format!("pipelines/{pipeline}/watermark")
}

pub async fn read_watermark(
    state: &dyn StateStore,
    pipeline: &str,
) -> anyhow::Result<Option<Watermark>> {
    let key = watermark_key(pipeline);
    match state.get(&key).await? {
        None => Ok(None),
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("state {key} is corrupt"))?,
        )),
    }
}

/// Moves the pipeline's watermark to what the finished run read up to, if it completed.
pub(crate) async fn advance_watermark(
    state: &dyn StateStore,
    record: &RunRecord,
) -> anyhow::Result<()> {
    let Some(cursor) = &record.watermark else {
        return Ok(());
    };
    if record.status != RunStatus::Completed {
        return Ok(());
    }
    let w = Watermark {
        cursor: cursor.clone(),
        run_id: record.run_id.clone(),
        at: now(),
    };
    state
        .put(&watermark_key(&record.pipeline), &serde_json::to_vec(&w)?)
        .await?;
    tracing::info!(pipeline = %record.pipeline, run = %record.run_id, watermark = %cursor, "watermark advanced");
    Ok(())
}

/// Reads and validates a pipeline file. A database source that declares no `[[columns]]` gets
/// its table's (or query's) columns, each typed from the database type ([`pipeline_type`]),
/// appended to its text as `[[columns]]` entries, so the workers read the same declaration and
/// errors in the user's part keep their lines.
pub async fn load_pipeline(path: &std::path::Path) -> anyhow::Result<Pipeline> {
    let (text, file, base) = worker::config::read_file(path)?;
    let raw: Option<pipeline::PipelineFile> = toml::from_str(&text).ok();
    let Some(raw) = raw.filter(|r| r.source.kind.is_sql() && r.columns.is_empty()) else {
        return Ok(pipeline::parse(&text, &file, base)?);
    };
    let source = worker::extract::open_source_of(&raw.source, &file, &base)?;
    let columns = source
        .table_columns()
        .await
        .with_context(|| format!("{file}: reading the columns of the source"))?;
    if columns.is_empty() {
        bail!("{file}: the source has no columns");
    }
    let mut full = text.clone();
    full.push_str(&columns_toml(&columns));
    Ok(pipeline::parse(&full, &file, base)?)
}

/// `[[columns]]` entries for a database relation's columns (name, PostgreSQL type).
fn columns_toml(columns: &[(String, String)]) -> String {
    let mut out =
        String::from("\n# Columns read from the database source when the run was planned.\n");
    for (name, ty) in columns {
        let quoted = toml::Value::String(name.clone()).to_string();
        out.push_str(&format!(
            "[[columns]]\nname = {quoted}\ntype = \"{}\"\n",
            pipeline_type(ty)
        ));
    }
    out
}

/// The pipeline type that reads a PostgreSQL type (as `format_type` writes it) faithfully.
/// An unconstrained `numeric` is `decimal(38,10)` (a value with more digits is quarantined with
/// the reason); types without a pipeline counterpart (uuid, arrays, intervals, …) are strings
/// of their text.
pub fn pipeline_type(pg: &str) -> String {
    let t = pg.trim().to_ascii_lowercase();
    if let Some(args) = t.strip_prefix("numeric(").and_then(|r| r.strip_suffix(')')) {
        let mut it = args.split(',').map(|a| a.trim().parse::<u32>().ok());
        if let (Some(Some(p)), s) = (it.next(), it.next()) {
            let s = s.flatten().unwrap_or(0);
            if (1..=38).contains(&p) && s <= p {
                return format!("decimal({p},{s})");
            }
        }
        return "string".into();
    }
    let base = t.split('(').next().unwrap_or(&t).trim();
    match base {
        "smallint" => "int16",
        "integer" => "int32",
        "bigint" => "int64",
        "real" => "float32",
        "double precision" => "float64",
        "numeric" => "decimal(38,10)",
        "boolean" => "bool",
        "date" => "date",
        "json" | "jsonb" => "json",
        _ if base.starts_with("timestamp") => "timestamp",
        _ => "string",
    }
    .into()
}

/// A planned run of a database source.
pub(crate) struct SqlRun {
    pub plan: ShardPlan,
    /// What the watermark becomes once the run has loaded.
    pub watermark: Option<String>,
}

/// How a database source is named in run records and messages: `postgres shop.orders`.
pub fn describe(p: &Pipeline) -> String {
    let sql = p.file.source.sql.as_ref();
    let what = match (sql.and_then(|s| s.table.as_deref()), sql) {
        (Some(t), _) => t.to_string(),
        (None, Some(_)) => "query".to_string(),
        (None, None) => String::new(),
    };
    format!("{} {what}", p.file.source.kind.name())
}

/// Plans a run of the pipeline's database source from its watermark in `state`.
pub(crate) async fn plan_sql_run(p: &Pipeline, state: &dyn StateStore) -> anyhow::Result<SqlRun> {
    let sql = p
        .file
        .source
        .sql
        .as_ref()
        .context("a database source has [source.sql]")?;
    let source = worker::extract::open_sql_source(p)?;
    let watermark = read_watermark(state, p.name()).await?.map(|w| w.cursor);
    let shard_rows = sql
        .shard_rows
        .map(|n| n.get())
        .or(sql.key_column.as_ref().map(|_| DEFAULT_SHARD_ROWS));
    let sp = source
        .plan(watermark.as_deref(), sql.lookback().as_secs(), shard_rows)
        .await
        .with_context(|| format!("planning {} ({})", describe(p), p.path))?;
    let run_id = new_run_id(p);
    let planned_at_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let shards = sp
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shard_id = format!("s{i:05}");
            ShardDescriptor {
                index: i as u32,
                inputs: Vec::new(),
                extract: Some(Extract::Sql(Box::new(SqlRange {
                    key_from: s.key_from.clone(),
                    key_before: s.key_before.clone(),
                    cursor_after: sp.after.clone(),
                    cursor_upto: sp.high.clone(),
                    raw_key: worker::extract::raw_key(p.name(), &run_id, &shard_id),
                    rows: s.rows,
                    planned_at_ms,
                }))),
                shard_id,
            }
        })
        .collect();
    tracing::info!(pipeline = p.name(), rows = sp.rows, after = ?sp.after, high = ?sp.high, "database source planned");
    Ok(SqlRun {
        plan: ShardPlan {
            run_id,
            pipeline: p.name().to_string(),
            shards,
        },
        watermark: sp.watermark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::state::FileStateStore;

    fn record(status: RunStatus, watermark: Option<&str>) -> RunRecord {
        let mut r = RunRecord::for_test("orders-1", "orders", status);
        r.watermark = watermark.map(String::from);
        r
    }

    #[test]
    fn database_types_map_to_the_pipeline_types_that_read_them_faithfully() {
        for (pg, want) in [
            ("smallint", "int16"),
            ("integer", "int32"),
            ("bigint", "int64"),
            ("real", "float32"),
            ("double precision", "float64"),
            ("numeric(12,2)", "decimal(12,2)"),
            ("numeric(10)", "decimal(10,0)"),
            ("numeric", "decimal(38,10)"),
            ("numeric(50,2)", "string"),
            ("boolean", "bool"),
            ("date", "date"),
            ("timestamp with time zone", "timestamp"),
            ("timestamp(3) without time zone", "timestamp"),
            ("jsonb", "json"),
            ("json", "json"),
            ("text", "string"),
            ("character varying(40)", "string"),
            ("uuid", "string"),
            ("integer[]", "string"),
        ] {
            assert_eq!(pipeline_type(pg), want, "{pg}");
        }
        let toml = columns_toml(&[("order id".into(), "bigint".into())]);
        assert!(
            toml.contains("[[columns]]\nname = \"order id\"\ntype = \"int64\"\n"),
            "{toml}"
        );
    }

    #[tokio::test]
    async fn only_a_completed_run_moves_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileStateStore::new(dir.path()).unwrap();
        for s in [RunStatus::Failed, RunStatus::Cancelled, RunStatus::Running] {
            advance_watermark(&state, &record(s, Some("2026-12-01 00:00:00+00")))
                .await
                .unwrap();
            assert_eq!(read_watermark(&state, "orders").await.unwrap(), None, "{s}");
        }
        advance_watermark(&state, &record(RunStatus::Completed, None))
            .await
            .unwrap();
        assert_eq!(read_watermark(&state, "orders").await.unwrap(), None);
        advance_watermark(
            &state,
            &record(RunStatus::Completed, Some("2026-12-01 00:00:00+00")),
        )
        .await
        .unwrap();
        let w = read_watermark(&state, "orders").await.unwrap().unwrap();
        assert_eq!(
            (w.cursor.as_str(), w.run_id.as_str()),
            ("2026-12-01 00:00:00+00", "orders-1")
        );
    }
}
