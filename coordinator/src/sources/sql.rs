//! Planning a run of a database source: the rows whose cursor is after the pipeline's
//! watermark (moved back by the lookback) and at most the high mark taken at planning, in key
//! ranges of about `shard_rows` rows; each range is one shard whose worker extracts it into the
//! raw zone. Also the pipeline types a database's column types are read as.

use anyhow::Context;
use backends::state::StateStore;
use pipeline::Pipeline;
use protocol::{Extract, ShardDescriptor, ShardPlan, SqlRange};

use super::{SourceRun, describe, read_watermark};
use crate::run::new_run_id;

/// Key ranges of this many rows when `key_column` is given without `shard_rows`.
const DEFAULT_SHARD_ROWS: u64 = 100_000;

/// `[[columns]]` entries for a database relation's columns (name, PostgreSQL type).
pub(crate) fn columns_toml(columns: &[(String, String)]) -> String {
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

/// Plans a run of the pipeline's database source from its watermark in `state`.
pub(crate) async fn plan_sql_run(
    p: &Pipeline,
    state: &dyn StateStore,
) -> anyhow::Result<SourceRun> {
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
        let toml = columns_toml(&[("order id".into(), "bigint".into())]);
        assert!(
            toml.contains("[[columns]]\nname = \"order id\"\ntype = \"int64\"\n"),
            "{toml}"
        );
    }
}
