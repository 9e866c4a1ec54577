//! Extraction of sources that are not files. A database shard's rows or an API window's records
//! are read into the raw zone (`raw/PIPELINE/RUN/SHARD.ndjson.zst` in the files store, one zstd
//! NDJSON object, replaced by a redone shard), and the shard then reads that object like any
//! NDJSON file.
//!
//! * [`sql`]: PostgreSQL (and MySQL) tables and queries, through server-side cursors.
//! * [`http`]: HTTP JSON APIs, page by page, with retries and a rate limit.
//! * [`paging`]: the pure rules that give an API's next page.
//! * [`retry`]: the pure rules that say which answers are retried and after how long.

pub mod http;
pub mod paging;
pub mod retry;
pub mod sql;

use std::io::Write;
use std::path::Path;

use backends::object_store::ObjectStore;
use protocol::{ObjectRef, ShardDescriptor, ShardInput};

use crate::WorkerError;

pub use sql::{extract_sql, open_source_of, open_sql_source, sql_spec, sql_spec_of};

/// The raw-zone key of an extracting shard.
pub fn raw_key(pipeline: &str, run_id: &str, shard_id: &str) -> String {
    format!("raw/{pipeline}/{run_id}/{shard_id}.ndjson.zst")
}

/// A raw extract being written: a local zstd NDJSON file, put into the files store at the end.
pub(crate) struct RawWriter {
    local: std::path::PathBuf,
    zst: zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>,
}

impl RawWriter {
    pub(crate) fn create(scratch: &Path, shard_id: &str) -> Result<RawWriter, WorkerError> {
        std::fs::create_dir_all(scratch).map_err(|e| WorkerError::write(scratch, e))?;
        let local = scratch.join(format!("{shard_id}.raw.ndjson.zst"));
        let file = std::fs::File::create(&local).map_err(|e| WorkerError::write(&local, e))?;
        let zst = zstd::Encoder::new(std::io::BufWriter::new(file), 3)
            .map_err(|e| WorkerError::write(&local, e))?;
        Ok(RawWriter { local, zst })
    }

    pub(crate) fn out(&mut self) -> &mut (dyn Write + Send) {
        &mut self.zst
    }

    /// Finishes the object and puts it at `raw_key`; returns the shard as it is processed: its
    /// one input is that object.
    pub(crate) async fn land(
        self,
        files: &dyn ObjectStore,
        raw_key: &str,
        shard: &ShardDescriptor,
    ) -> Result<(ShardDescriptor, u64), WorkerError> {
        let RawWriter { local, zst } = self;
        zst.finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| WorkerError::write(&local, e))?;
        let size = files.put_file(raw_key, &local).await?;
        let _ = std::fs::remove_file(&local);
        let processed = ShardDescriptor {
            inputs: vec![ShardInput {
                object: ObjectRef {
                    key: raw_key.to_string(),
                    size,
                },
                range: None,
            }],
            ..shard.clone()
        };
        Ok((processed, size))
    }
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
