//! Planning a run of a database source: the rows whose cursor is after the pipeline's
//! watermark (moved back by the lookback) and at most the high mark taken at planning, in key
//! ranges of about `shard_rows` rows; each range is one shard whose worker extracts it into the
//! raw zone. Also the pipeline types a database's column types are read as.

use anyhow::Context;
use backends::source::Dialect;
use backends::state::StateStore;
use pipeline::Pipeline;
use protocol::{Extract, ShardDescriptor, ShardPlan, SqlRange};

use super::{SourceRun, describe, read_watermark};
use crate::backfill::Window;
use crate::run::new_run_id;
use backends::source::SourcePlan;

/// Key ranges of this many rows when `key_column` is given without `shard_rows`.
const DEFAULT_SHARD_ROWS: u64 = 100_000;

/// `[[columns]]` entries for a database relation's columns (name, the database's type), typed
/// by the dialect's mapping.
pub(crate) fn columns_toml(dialect: Dialect, columns: &[(String, String)]) -> String {
    let mut out =
        String::from("\n# Columns read from the database source when the run was planned.\n");
    for (name, ty) in columns {
        let quoted = toml::Value::String(name.clone()).to_string();
        let ty = match dialect {
            Dialect::Postgres => pipeline_type(ty),
            Dialect::Mysql => mysql_pipeline_type(ty),
        };
        out.push_str(&format!("[[columns]]\nname = {quoted}\ntype = \"{ty}\"\n"));
    }
    out
}

/// `decimal(P,S)` from the arguments of `numeric(P,S)` / `decimal(P)`, when they fit.
fn decimal_of(args: &str) -> Option<String> {
    let mut it = args.split(',').map(|a| a.trim().parse::<u32>().ok());
    let (Some(Some(p)), s) = (it.next(), it.next()) else {
        return None;
    };
    let s = s.flatten().unwrap_or(0);
    ((1..=38).contains(&p) && s <= p).then(|| format!("decimal({p},{s})"))
}

/// The pipeline type that reads a MySQL or MariaDB type (as `information_schema` writes it)
/// faithfully: `tinyint(1)` and `bit(1)` are booleans; unsigned integers take the next wider
/// type (`bigint unsigned` a `decimal(20,0)`); `datetime` and `timestamp` are timestamps;
/// `decimal(P,S)` is exact. Other types are strings of their text (MariaDB's `JSON` is a
/// `longtext`: declare the column `json` to keep it as JSON).
pub fn mysql_pipeline_type(my: &str) -> String {
    let t = my.trim().to_ascii_lowercase();
    let unsigned = t.contains("unsigned");
    let base = t.split(['(', ' ']).next().unwrap_or(&t);
    let args = t
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(a, _)| a);
    match (base, unsigned) {
        ("tinyint", _) if args == Some("1") => "bool".into(),
        ("bit", _) if args.is_none_or(|a| a == "1") => "bool".into(),
        ("bool" | "boolean", _) => "bool".into(),
        ("tinyint" | "year", _) | ("smallint", false) => "int16".into(),
        ("smallint" | "mediumint", _) | ("int" | "integer", false) => "int32".into(),
        ("int" | "integer", true) | ("bigint", false) => "int64".into(),
        ("bigint", true) => "decimal(20,0)".into(),
        ("decimal" | "numeric" | "dec" | "fixed", _) => match args {
            Some(a) => decimal_of(a).unwrap_or_else(|| "string".into()),
            None => "decimal(10,0)".into(),
        },
        ("float", _) => "float32".into(),
        ("double" | "real", _) => "float64".into(),
        ("date", _) => "date".into(),
        ("datetime" | "timestamp", _) => "timestamp".into(),
        ("json", _) => "json".into(),
        _ => "string".into(),
    }
}

/// The pipeline type that reads a PostgreSQL type (as `format_type` writes it) faithfully.
/// An unconstrained `numeric` is `decimal(38,10)` (a value with more digits is quarantined with
/// the reason); types without a pipeline counterpart (uuid, arrays, intervals, …) are strings
/// of their text.
pub fn pipeline_type(pg: &str) -> String {
    let t = pg.trim().to_ascii_lowercase();
    if let Some(args) = t.strip_prefix("numeric(").and_then(|r| r.strip_suffix(')')) {
        return decimal_of(args).unwrap_or_else(|| "string".into());
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

/// `shard_rows`, or the default when the source has a key column.
fn shard_rows(sql: &pipeline::SqlSource) -> Option<u64> {
    sql.shard_rows
        .map(|n| n.get())
        .or(sql.key_column.as_ref().map(|_| DEFAULT_SHARD_ROWS))
}

fn sql_section(p: &Pipeline) -> anyhow::Result<&pipeline::SqlSource> {
    p.file
        .source
        .sql
        .as_ref()
        .context("a database source has [source.sql]")
}

/// A backfill window's plan of a database source: its key-range shards, the rows counted, and
/// the bytes estimated from the table's average row size (when the database keeps it).
pub(crate) async fn plan_sql_window(
    p: &Pipeline,
    window: Window,
) -> anyhow::Result<(SourcePlan, Option<u64>)> {
    let sql = sql_section(p)?;
    let source = worker::extract::open_sql_source(p)?;
    let (from, to) = (window.from.to_string(), window.to.to_string());
    let (plan, avg) = source
        .plan_window(&from, &to, shard_rows(sql))
        .await
        .with_context(|| format!("planning {} ({}) over {from} .. {to}", describe(p), p.path))?;
    let bytes = avg.map(|a| a * plan.rows);
    Ok((plan, bytes))
}

/// Plans a run of the pipeline's database source from its watermark in `state`; with a
/// backfill `window`, the rows whose cursor is in it (the watermark is neither read nor moved).
pub(crate) async fn plan_sql_run(
    p: &Pipeline,
    state: &dyn StateStore,
    window: Option<Window>,
) -> anyhow::Result<SourceRun> {
    let sql = sql_section(p)?;
    let sp = match window {
        Some(w) => plan_sql_window(p, w).await?.0,
        None => {
            let source = worker::extract::open_sql_source(p)?;
            let watermark = read_watermark(state, p.name()).await?.map(|w| w.cursor);
            source
                .plan(
                    watermark.as_deref(),
                    sql.lookback().as_secs(),
                    shard_rows(sql),
                )
                .await
                .with_context(|| format!("planning {} ({})", describe(p), p.path))?
        }
    };
    let bounds = window.map(|w| (w.from.to_string(), w.to.to_string()));
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
                    window: bounds.clone(),
                }))),
                shard_id,
            }
        })
        .collect();
    tracing::info!(pipeline = p.name(), rows = sp.rows, after = ?sp.after, high = ?sp.high, window = ?bounds, "database source planned");
    Ok(SourceRun {
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
        let toml = columns_toml(Dialect::Postgres, &[("order id".into(), "bigint".into())]);
        assert!(
            toml.contains("[[columns]]\nname = \"order id\"\ntype = \"int64\"\n"),
            "{toml}"
        );
    }

    #[test]
    fn mysql_types_map_to_the_pipeline_types_that_read_them_faithfully() {
        for (my, want) in [
            ("tinyint(1)", "bool"),
            ("bit(1)", "bool"),
            ("tinyint(4)", "int16"),
            ("tinyint(3) unsigned", "int16"),
            ("smallint(6)", "int16"),
            ("smallint(5) unsigned", "int32"),
            ("mediumint(9)", "int32"),
            ("int(11)", "int32"),
            ("int(10) unsigned", "int64"),
            ("bigint(20)", "int64"),
            ("bigint(20) unsigned", "decimal(20,0)"),
            ("decimal(12,2)", "decimal(12,2)"),
            ("decimal(10,0) unsigned", "decimal(10,0)"),
            ("decimal(65,2)", "string"),
            ("float", "float32"),
            ("double", "float64"),
            ("date", "date"),
            ("datetime(3)", "timestamp"),
            ("timestamp", "timestamp"),
            ("json", "json"),
            ("longtext", "string"),
            ("varchar(40)", "string"),
            ("enum('a','b')", "string"),
            ("year(4)", "int16"),
        ] {
            assert_eq!(mysql_pipeline_type(my), want, "{my}");
        }
    }
}
