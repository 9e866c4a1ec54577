//! The end of a run in the lake: delete the run's files that no finished shard lists, then write
//! the run's commit record (`<lake>/_tributary/commits/RUN.json`) listing the files readers may
//! trust.
//!
//! Files are named per run (`part-RUN-SHARD-NNNNN.parquet`, see [`protocol::part_file_tag`]), so
//! runs never overwrite each other's files; within a run a redone shard rewrites the same names.
//! What is left that no manifest lists comes from attempts that never finished: a shard that
//! failed after writing some files, or a worker that was cut off and whose redo wrote fewer
//! files. Those are never loaded (loads read manifests only) and are removed here.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use backends::object_store::ObjectStore;
use protocol::{OutputFile, RunCommit, ShardManifest};

use crate::engine::DoneRecord;
use crate::run::{RunRecord, now};

/// Sweeps the run's unlisted files under its table prefix in `lake` and writes its commit record
/// into `commits` (the lake itself, except for `coordinator run --output DIR`, whose DIR holds
/// only partition folders). Idempotent: a coordinator that dies half-way does it again on resume.
pub async fn commit_run(
    record: &RunRecord,
    done: &BTreeMap<String, DoneRecord>,
    files: &dyn ObjectStore,
    lake: &dyn ObjectStore,
    commits: &dyn ObjectStore,
) -> anyhow::Result<RunCommit> {
    let mut listed: Vec<OutputFile> = Vec::new();
    for (shard, d) in done {
        let bytes = files
            .get(&d.manifest_key)
            .await
            .with_context(|| format!("manifest of shard {shard} ({})", d.manifest_key))?;
        let m = ShardManifest::from_json(&String::from_utf8_lossy(&bytes))
            .with_context(|| format!("manifest {}", d.manifest_key))?;
        listed.extend(m.outputs);
    }
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keep: BTreeSet<&str> = listed.iter().map(|f| f.key.as_str()).collect();
    let prefix = if record.output_prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", record.output_prefix.trim_end_matches('/'))
    };
    let mut removed = Vec::new();
    for o in lake.list(&prefix).await? {
        if protocol::is_part_file_of_run(&o.key, &record.run_id) && !keep.contains(o.key.as_str()) {
            lake.delete(&o.key).await?;
            removed.push(o.key);
        }
    }
    if !removed.is_empty() {
        tracing::info!(run = %record.run_id, files = removed.len(), "removed files of unfinished attempts");
    }
    let commit = RunCommit {
        v: protocol::PROTOCOL_VERSION,
        run_id: record.run_id.clone(),
        pipeline: record.pipeline.clone(),
        table: record.table.clone(),
        status: record.status.to_string(),
        committed_at: now(),
        rows: listed.iter().map(|f| f.rows).sum(),
        files: listed,
        failed_shards: record.failed_shards.clone(),
        removed,
    };
    commits
        .put(
            &protocol::run_commit_key(&record.run_id),
            commit.to_json().into_bytes(),
        )
        .await?;
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::object_store::LocalStore;
    use protocol::{Counts, ShardDescriptor};

    fn record(run: &str) -> RunRecord {
        let mut r = RunRecord::for_test(run, "web", crate::engine::RunStatus::Completed);
        r.table = "web_events".into();
        r.output_prefix = "web_events".into();
        r
    }

    fn manifest(run: &str, shard: &str, keys: &[&str]) -> ShardManifest {
        ShardManifest {
            v: protocol::PROTOCOL_VERSION,
            run_id: run.into(),
            pipeline: "web".into(),
            table: "web_events".into(),
            shard: ShardDescriptor {
                shard_id: shard.into(),
                index: 0,
                extract: None,
                inputs: vec![],
            },
            outputs: keys
                .iter()
                .map(|k| OutputFile {
                    max_bytes: Default::default(),
                    key: (*k).into(),
                    partition: vec![],
                    rows: 10,
                    bytes: 1,
                })
                .collect(),
            quarantine: vec![],
            counts: Counts::default(),
            schema_digest: String::new(),
            source_watermark: None,
        }
    }

    #[tokio::test]
    async fn commit_lists_manifest_files_and_removes_only_this_runs_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalStore::new(dir.path().join("files")).unwrap();
        let lake = LocalStore::new(dir.path().join("lake")).unwrap();
        let (run, other) = ("web-1-aa00", "web-0-bb00");
        let kept = format!("web_events/d=1/part-{run}-s00000-00000.parquet");
        let orphan = format!("web_events/d=2/part-{run}-s00001-00000.parquet");
        let earlier = format!("web_events/d=1/part-{other}-s00000-00000.parquet");
        for k in [&kept, &orphan, &earlier] {
            lake.put(k, b"PAR1".to_vec()).await.unwrap();
        }
        files
            .put(
                "manifests/r/s00000.json",
                manifest(run, "s00000", &[&kept]).to_json().into_bytes(),
            )
            .await
            .unwrap();
        let done = BTreeMap::from([(
            "s00000".to_string(),
            DoneRecord {
                manifest_key: "manifests/r/s00000.json".into(),
                counts: Counts::default(),
            },
        )]);
        let c = commit_run(&record(run), &done, &files, &lake, &lake)
            .await
            .unwrap();
        assert_eq!(
            c.files.iter().map(|f| f.key.clone()).collect::<Vec<_>>(),
            vec![kept.clone()]
        );
        assert_eq!(c.removed, vec![orphan.clone()]);
        assert_eq!(c.rows, 10);
        assert!(lake.head(&kept).await.unwrap().is_some());
        assert!(
            lake.head(&earlier).await.unwrap().is_some(),
            "another run's file"
        );
        assert!(lake.head(&orphan).await.unwrap().is_none());
        let stored = lake.get(&protocol::run_commit_key(run)).await.unwrap();
        assert_eq!(
            RunCommit::from_json(&String::from_utf8_lossy(&stored)).unwrap(),
            c
        );
        // Again (a resumed coordinator): the same files, nothing more to remove.
        let again = commit_run(&record(run), &done, &files, &lake, &lake)
            .await
            .unwrap();
        assert_eq!((again.files, again.removed.len()), (c.files, 0));
    }
}
