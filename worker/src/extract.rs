//! Extraction of sources that are not files: a database shard's rows are read into the raw zone
//! (`raw/PIPELINE/RUN/SHARD.ndjson.zst` in the files store, one zstd NDJSON object, replaced by
//! a redone shard) and the shard then reads that object like any NDJSON file.

use std::io::Write;
use std::path::Path;

use backends::object_store::ObjectStore;
use backends::source::{Dialect, PostgresSource, Relation, SqlSpec};
use pipeline::{Pipeline, SourceKind, SourceSection};
use protocol::{ObjectRef, ShardDescriptor, ShardInput, SqlRange};

use crate::WorkerError;

/// The raw-zone key of a database shard's extract.
pub fn raw_key(pipeline: &str, run_id: &str, shard_id: &str) -> String {
    format!("raw/{pipeline}/{run_id}/{shard_id}.ndjson.zst")
}

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
pub fn open_sql_source(p: &Pipeline) -> Result<PostgresSource, WorkerError> {
    open_source_of(&p.file.source, &p.path, &p.base_dir)
}

/// The database source of a `[source]` section (`file` names the pipeline file in messages;
/// `base` is its folder, which a relative `tls_ca_file` is read from).
pub fn open_source_of(
    src: &SourceSection,
    file: &str,
    base: &Path,
) -> Result<PostgresSource, WorkerError> {
    let (Some(spec), Some(sql)) = (sql_spec_of(src), src.sql.as_ref()) else {
        return Err(WorkerError::Config(format!(
            "{file}: source kind {:?} has no [source.sql]",
            src.kind.name()
        )));
    };
    if spec.dialect == Dialect::Mysql {
        return Err(WorkerError::Config(format!(
            "{file}: kind = \"mysql\" sources are not built yet"
        )));
    }
    let var = &sql.connection_env;
    let conn = std::env::var(var).map_err(|_| {
        WorkerError::Config(format!(
            "{file}: environment variable {var} (source.sql.connection_env) is not set"
        ))
    })?;
    let ca = sql.tls_ca_file.as_ref().map(|f| base.join(f));
    Ok(PostgresSource::new(spec, &conn, sql.fetch_rows.get())?.with_tls_ca_file(ca))
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
    std::fs::create_dir_all(scratch).map_err(|e| WorkerError::write(scratch, e))?;
    let local = scratch.join(format!("{}.raw.ndjson.zst", shard.shard_id));
    let file = std::fs::File::create(&local).map_err(|e| WorkerError::write(&local, e))?;
    let mut zst = zstd::Encoder::new(std::io::BufWriter::new(file), 3)
        .map_err(|e| WorkerError::write(&local, e))?;
    let rows = source.extract(range, &mut zst).await?;
    zst.finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| WorkerError::write(&local, e))?;
    let size = files.put_file(&range.raw_key, &local).await?;
    let _ = std::fs::remove_file(&local);
    tracing::info!(shard = %shard.shard_id, rows, raw = %range.raw_key, bytes = size, "extracted");
    Ok(ShardDescriptor {
        inputs: vec![ShardInput {
            object: ObjectRef {
                key: range.raw_key.clone(),
                size,
            },
            range: None,
        }],
        ..shard.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_are_deterministic_per_shard() {
        assert_eq!(
            raw_key("orders", "orders-1", "s00003"),
            "raw/orders/orders-1/s00003.ndjson.zst"
        );
    }
}
