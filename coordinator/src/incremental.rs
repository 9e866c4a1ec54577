//! Incremental file runs (`[source] incremental = true`): a run takes only the objects whose
//! version it has not loaded before — new keys, and keys rewritten since (another size, ETag or
//! modification time and inode). Versions are compared, not times, so objects written in the same
//! second as the last run are neither missed nor taken twice.
//!
//! A run records the versions it takes (`runs/RUN/objects.json`); when it completes they join the
//! pipeline's loaded set (`pipelines/NAME/objects.json`). A failed or cancelled run adds nothing,
//! so its objects are taken again by the next run; a backfill's runs add nothing either.

use std::collections::BTreeMap;

use anyhow::Context;
use backends::object_store::ObjectVersion;
use backends::state::StateStore;
use protocol::ObjectRef;

use crate::engine::RunStatus;
use crate::run::RunRecord;

/// Key → identity of the object versions loaded (see [`ObjectVersion::identity`]).
pub type Loaded = BTreeMap<String, String>;

fn loaded_key(pipeline: &str) -> String {
    format!("pipelines/{pipeline}/objects.json")
}

fn taken_key(run_id: &str) -> String {
    format!("runs/{run_id}/objects.json")
}

/// The objects of `listed` whose version is not in `loaded`, and the versions they are.
pub fn fresh(
    listed: &[ObjectRef],
    versions: &[ObjectVersion],
    loaded: &Loaded,
) -> (Vec<ObjectRef>, Loaded) {
    let by_key: BTreeMap<&str, &ObjectVersion> = versions
        .iter()
        .map(|v| (v.object.key.as_str(), v))
        .collect();
    let mut taken = Loaded::new();
    let objects = listed
        .iter()
        .filter(|o| {
            let identity = by_key
                .get(o.key.as_str())
                .map_or_else(|| format!("{}:", o.size), |v| v.identity());
            let new = loaded.get(&o.key) != Some(&identity);
            if new {
                taken.insert(o.key.clone(), identity);
            }
            new
        })
        .cloned()
        .collect();
    (objects, taken)
}

async fn read(state: &dyn StateStore, key: &str) -> anyhow::Result<Loaded> {
    match state.get(key).await? {
        None => Ok(Loaded::new()),
        Some(b) => serde_json::from_slice(&b).with_context(|| format!("state {key} is corrupt")),
    }
}

/// The objects of `listed` the pipeline has not loaded (their versions from `versions`), and the
/// versions taken.
pub async fn new_objects(
    state: &dyn StateStore,
    pipeline: &str,
    listed: &[ObjectRef],
    versions: &[ObjectVersion],
) -> anyhow::Result<(Vec<ObjectRef>, Loaded)> {
    let loaded = read(state, &loaded_key(pipeline)).await?;
    Ok(fresh(listed, versions, &loaded))
}

/// Records the versions a new run takes.
pub async fn record_taken(
    state: &dyn StateStore,
    run_id: &str,
    taken: &Loaded,
) -> anyhow::Result<()> {
    state
        .put(&taken_key(run_id), &serde_json::to_vec(taken)?)
        .await?;
    Ok(())
}

/// Adds a completed run's versions to its pipeline's loaded set (not a backfill's run).
pub async fn settle(state: &dyn StateStore, record: &RunRecord) -> anyhow::Result<()> {
    if record.status != RunStatus::Completed || record.backfill_window.is_some() {
        return Ok(());
    }
    let taken = read(state, &taken_key(&record.run_id)).await?;
    if taken.is_empty() {
        return Ok(());
    }
    let key = loaded_key(&record.pipeline);
    let mut loaded = read(state, &key).await?;
    loaded.extend(taken);
    state.put(&key, &serde_json::to_vec(&loaded)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::state::FileStateStore;

    fn obj(key: &str, size: u64) -> ObjectRef {
        ObjectRef {
            key: key.into(),
            size,
        }
    }

    fn ver(key: &str, size: u64, version: &str) -> ObjectVersion {
        ObjectVersion {
            object: obj(key, size),
            version: version.into(),
        }
    }

    #[test]
    fn only_new_keys_and_rewritten_versions_are_taken() {
        let listed = [obj("a", 10), obj("b", 20), obj("c", 30)];
        let versions = [
            ver("a", 10, "etag:1"),
            ver("b", 20, "etag:2"),
            ver("c", 30, "etag:3"),
        ];
        let mut loaded = Loaded::new();
        loaded.insert("a".into(), "10:etag:1".into());
        loaded.insert("b".into(), "20:etag:old".into());
        let (objects, taken) = fresh(&listed, &versions, &loaded);
        assert_eq!(
            objects,
            vec![obj("b", 20), obj("c", 30)],
            "b was rewritten, c is new"
        );
        assert_eq!(taken.get("b").map(String::as_str), Some("20:etag:2"));
        assert!(!taken.contains_key("a"));
    }

    #[tokio::test]
    async fn a_completed_run_adds_what_it_took_and_a_failed_or_backfill_run_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileStateStore::new(dir.path()).unwrap();
        let listed = [obj("a", 10)];
        let versions = [ver("a", 10, "mtime:5:ino:9")];
        let mut taken = Loaded::new();
        taken.insert("a".into(), versions[0].identity());
        for (id, status, backfill) in [
            ("p-1", RunStatus::Failed, None),
            (
                "p-2",
                RunStatus::Completed,
                Some("2026-11-01 .. 2026-11-02".to_string()),
            ),
        ] {
            record_taken(&state, id, &taken).await.unwrap();
            let mut r = RunRecord::for_test(id, "p", status);
            r.backfill_window = backfill;
            settle(&state, &r).await.unwrap();
            let (objects, _) = new_objects(&state, "p", &listed, &versions).await.unwrap();
            assert_eq!(objects.len(), 1, "{id} added nothing");
        }
        record_taken(&state, "p-3", &taken).await.unwrap();
        settle(
            &state,
            &RunRecord::for_test("p-3", "p", RunStatus::Completed),
        )
        .await
        .unwrap();
        let (objects, _) = new_objects(&state, "p", &listed, &versions).await.unwrap();
        assert!(objects.is_empty(), "loaded once, not taken again");
    }
}
