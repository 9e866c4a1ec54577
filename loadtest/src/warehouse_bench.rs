//! `loadtest warehouse --lake DIR --table T [--merge-key K] [--postgres URL] [--sqlite FILE]`:
//! how fast a warehouse takes a lake's files — the load path `coordinator` uses (PostgreSQL:
//! `COPY` into a staging table, then the merge; the embedded SQLite: one prepared upsert), timed
//! twice: into an empty table, then the same files again as a new batch (every key already there:
//! the merge path). Prints one `WAREHOUSE_BENCH {json}` line per warehouse.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use backends::object_store::{LocalStore, ObjectStore};
use backends::warehouse::{LoadOutcome, Warehouse};
use protocol::{LoadBatch, LoadFile, OutputFile, SourcePosition, TableLayout};

/// One warehouse's two loads of the lake.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WarehouseBench {
    pub warehouse: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub first_load_s: f64,
    pub first_rows_per_s: f64,
    pub merge_load_s: f64,
    pub merge_rows_per_s: f64,
    pub rows_in_table: u64,
}

/// The Parquet files of `store` (a lake folder at `lake`), with their Hive partition values and
/// rows from each footer.
pub async fn lake_files(store: &LocalStore, lake: &Path) -> anyhow::Result<Vec<OutputFile>> {
    let mut objects = store.list("").await?;
    objects.retain(|o| o.key.ends_with(".parquet"));
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    objects
        .into_iter()
        .map(|o| {
            let p = lake.join(&o.key);
            let f = std::fs::File::open(&p).with_context(|| format!("{}", p.display()))?;
            let meta = parquet::file::reader::SerializedFileReader::new(f)
                .with_context(|| format!("{}: not a Parquet file", p.display()))?;
            let rows = parquet::file::reader::FileReader::metadata(&meta)
                .file_metadata()
                .num_rows() as u64;
            Ok(OutputFile {
                partition: partition_of(&o.key),
                key: o.key,
                rows,
                bytes: o.size,
                max_bytes: Default::default(),
            })
        })
        .collect()
}

/// `a=1/b=x/file.parquet` → `[(a, 1), (b, x)]`.
fn partition_of(key: &str) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = key.split('/').collect();
    parts.pop();
    parts
        .iter()
        .filter_map(|d| d.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A batch of every file, each its own source position.
pub fn batch_of(files: &[OutputFile], table: &str, merge_keys: &[String], id: &str) -> LoadBatch {
    LoadBatch {
        batch_id: id.into(),
        run_id: "warehouse-bench".into(),
        table: table.into(),
        merge_keys: merge_keys.to_vec(),
        shards: vec!["s00000".into()],
        files: files
            .iter()
            .enumerate()
            .map(|(i, f)| LoadFile {
                file: f.clone(),
                shard_index: 0,
                position: SourcePosition {
                    object: f.key.clone(),
                    offset: i as u64,
                },
            })
            .collect(),
        masked_columns: Vec::new(),
        layout: TableLayout::default(),
        external: None,
    }
}

/// Loads the lake twice into `wh` and times both loads.
pub async fn run(
    wh: Arc<dyn Warehouse>,
    lake: &Path,
    table: &str,
    merge_keys: &[String],
) -> anyhow::Result<WarehouseBench> {
    let local = LocalStore::new(lake)?;
    let files = lake_files(&local, lake).await?;
    anyhow::ensure!(
        !files.is_empty(),
        "no Parquet files under {}",
        lake.display()
    );
    let store: Arc<dyn ObjectStore> = Arc::new(local);
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut times = Vec::new();
    let mut in_table = 0;
    for pass in ["first", "merge"] {
        let batch = batch_of(&files, table, merge_keys, &format!("bench-{stamp}-{pass}"));
        let t = Instant::now();
        match wh.load(&batch, store.clone()).await? {
            LoadOutcome::Loaded { rows_in_table, .. } => in_table = rows_in_table,
            LoadOutcome::AlreadyLoaded => {
                anyhow::bail!("batch {} was loaded before", batch.batch_id)
            }
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let per_s = |s: f64| (rows as f64 / s).round();
    Ok(WarehouseBench {
        warehouse: wh.describe(),
        files: files.len(),
        rows,
        bytes,
        first_load_s: (times[0] * 100.0).round() / 100.0,
        first_rows_per_s: per_s(times[0]),
        merge_load_s: (times[1] * 100.0).round() / 100.0,
        merge_rows_per_s: per_s(times[1]),
        rows_in_table: in_table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_come_from_the_hive_folders() {
        assert_eq!(
            partition_of("event_date=2025-05-01/region=eu/part-0.parquet"),
            vec![
                ("event_date".to_string(), "2025-05-01".to_string()),
                ("region".to_string(), "eu".to_string())
            ]
        );
        assert!(partition_of("part-0.parquet").is_empty());
    }

    #[tokio::test]
    async fn a_lake_loads_twice_into_the_embedded_warehouse_and_merges() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        for (day, ids) in [("2025-05-01", ["a", "b"]), ("2025-05-02", ["c", "d"])] {
            let folder = lake.join(format!("event_date={day}"));
            std::fs::create_dir_all(&folder).unwrap();
            let schema = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, true),
            ]));
            let batch = arrow::record_batch::RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ids.to_vec())),
                    Arc::new(Int64Array::from(vec![1, 2])),
                ],
            )
            .unwrap();
            let f = std::fs::File::create(folder.join("part-0.parquet")).unwrap();
            let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        let wh =
            Arc::new(backends::warehouse::SqliteWarehouse::open(dir.path().join("w.db")).unwrap());
        let b = run(wh, &lake, "t", &["id".to_string()]).await.unwrap();
        assert_eq!((b.files, b.rows, b.rows_in_table), (2, 4, 4));
        assert!(b.first_rows_per_s > 0.0 && b.merge_rows_per_s > 0.0);
    }
}
