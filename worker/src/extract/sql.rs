//! A database shard's rows, read through a server-side cursor into the raw zone.

use std::path::Path;

use backends::object_store::ObjectStore;
use backends::source::{Dialect, MysqlSource, PostgresSource, Relation, SqlSource, SqlSpec};
use pipeline::{Pipeline, SourceKind, SourceSection};
use protocol::{ShardDescriptor, SqlRange};

use super::RawWriter;
use crate::WorkerError;

/// What the pipeline's `[source.sql]` reads, in its dialect.
pub fn sql_spec(p: &Pipeline) -> Option<SqlSpec> {
    sql_spec_of(&p.file.source)
}

/// What a `[source]` section's `[source.sql]` reads, in its dialect.
pub fn sql_spec_of(src: &SourceSection) -> Option<SqlSpec> {
    let sql = src.sql.as_ref()?;
    let dialect = match src.kind {
        SourceKind::Postgres => Dialect::Postgres,
        SourceKind::Mysql => Dialect::Mysql,
        _ => return None,
    };
    let relation = match (&sql.table, &sql.query) {
        (Some(t), _) => Relation::Table(t.clone()),
        (None, Some(q)) => Relation::Query(q.clone()),
        (None, None) => return None,
    };
    Some(SqlSpec {
        dialect,
        relation,
        cursor: sql.cursor_column.clone(),
        key: sql.key_column.clone(),
    })
}

/// The database source of a pipeline, connected through the variable its `connection_env`
/// names (in this process's environment).
pub fn open_sql_source(p: &Pipeline) -> Result<Box<dyn SqlSource>, WorkerError> {
    open_source_of(&p.file.source, &p.path, &p.base_dir)
}

/// The database source of a `[source]` section (`file` names the pipeline file in messages;
/// `base` is its folder, which a relative `tls_ca_file` is read from).
pub fn open_source_of(
    src: &SourceSection,
    file: &str,
    base: &Path,
) -> Result<Box<dyn SqlSource>, WorkerError> {
    let (Some(spec), Some(sql)) = (sql_spec_of(src), src.sql.as_ref()) else {
        return Err(WorkerError::Config(format!(
            "{file}: source kind {:?} has no [source.sql]",
            src.kind.name()
        )));
    };
    let var = &sql.connection_env;
    let conn = std::env::var(var).map_err(|_| {
        WorkerError::Config(format!(
            "{file}: environment variable {var} (source.sql.connection_env) is not set"
        ))
    })?;
    let ca = sql.tls_ca_file.as_ref().map(|f| base.join(f));
    Ok(match spec.dialect {
        Dialect::Postgres => {
            Box::new(PostgresSource::new(spec, &conn, sql.fetch_rows.get())?.with_tls_ca_file(ca))
        }
        Dialect::Mysql => Box::new(MysqlSource::new(spec, &conn)?.with_tls_ca_file(ca)),
    })
}

/// Reads a database shard into its raw-zone object and returns the shard as it is processed:
/// its one input is that object.
pub async fn extract_sql(
    p: &Pipeline,
    shard: &ShardDescriptor,
    range: &SqlRange,
    files: &dyn ObjectStore,
    scratch: &Path,
) -> Result<ShardDescriptor, WorkerError> {
    let source = open_sql_source(p)?;
    let mut raw = RawWriter::create(scratch, &shard.shard_id)?;
    let rows = source.extract(range, raw.out()).await?;
    let (processed, size) = raw.land(files, &range.raw_key, shard).await?;
    tracing::info!(shard = %shard.shard_id, rows, raw = %range.raw_key, bytes = size, "extracted");
    Ok(processed)
}
