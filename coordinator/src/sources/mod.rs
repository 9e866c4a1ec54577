//! Sources that a worker extracts (databases and APIs): planning their runs, and the pipeline
//! watermarks that make such runs incremental. (File sources are planned from a listing by
//! [`crate::planner`].)
//!
//! * [`sql`]: key ranges of the rows after the watermark, up to the high mark taken at planning.
//! * [`http`]: time windows from the watermark (or `start`) to the planning time.
//!
//! The run record keeps what the watermark becomes; it is written to state
//! (`pipelines/NAME/watermark`) only when the run completed, after its loads committed, so a
//! failed or cancelled run never moves it and a watermark never passes rows that were not
//! loaded. A backfill's runs never move it.

pub mod http;
pub mod sql;

use anyhow::{Context, bail};
use backends::state::StateStore;
use pipeline::{Pipeline, SourceKind};
use protocol::ShardPlan;
use serde::{Deserialize, Serialize};

use crate::engine::RunStatus;
use crate::run::{RunRecord, now};

pub use sql::{mysql_pipeline_type, pipeline_type};

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
    let dialect = match raw.source.kind {
        SourceKind::Mysql => backends::source::Dialect::Mysql,
        _ => backends::source::Dialect::Postgres,
    };
    full.push_str(&sql::columns_toml(dialect, &columns));
    Ok(pipeline::parse(&full, &file, base)?)
}

/// A planned run of a database or API source.
pub(crate) struct SourceRun {
    pub plan: ShardPlan,
    /// What the watermark becomes once the run has loaded.
    pub watermark: Option<String>,
}

/// Plans a run of the pipeline's database or API source from its watermark in `state`; with a
/// backfill `window`, that time range instead (API sources).
pub(crate) async fn plan_source_run(
    p: &Pipeline,
    state: &dyn StateStore,
    window: Option<crate::backfill::Window>,
) -> anyhow::Result<SourceRun> {
    match p.file.source.kind {
        SourceKind::Postgres | SourceKind::Mysql => sql::plan_sql_run(p, state, window).await,
        SourceKind::Http => http::plan_http_run(p, state, window, chrono::Utc::now()).await,
        SourceKind::Files => bail!("{}: a files source is planned from its listing", p.path),
    }
}

/// Refuses, before anything is written, a source whose kind is not built or whose connection or
/// credential variable is not set.
pub fn check_source(p: &Pipeline) -> anyhow::Result<()> {
    match p.file.source.kind {
        SourceKind::Postgres | SourceKind::Mysql => {
            worker::extract::open_sql_source(p)?;
        }
        SourceKind::Http => {
            worker::extract::http::open_http_source(p)?;
        }
        SourceKind::Files => {}
    }
    Ok(())
}

/// How a database or API source is named in run records and messages: `postgres shop.orders`,
/// `http https://api.example.com/v1/orders`.
pub fn describe(p: &Pipeline) -> String {
    if let Some(h) = &p.file.source.http {
        let mut url = h.url.clone();
        if let Some(i) = url.find('?') {
            url.truncate(i);
        }
        return format!("http {url}");
    }
    let sql = p.file.source.sql.as_ref();
    let what = match (sql.and_then(|s| s.table.as_deref()), sql) {
        (Some(t), _) => t.to_string(),
        (None, Some(_)) => "query".to_string(),
        (None, None) => String::new(),
    };
    format!("{} {what}", p.file.source.kind.name())
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
