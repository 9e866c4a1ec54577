//! Raw-zone retention: with `[source] raw_retention_days = N`, the raw objects of a database
//! source's runs that ended more than N days ago move from `raw/PIPELINE/RUN/` to
//! `archive/raw/PIPELINE/RUN/` in the files store (on S3 copied server-side into
//! `raw_archive_storage_class`, GLACIER_IR by default), and the run is marked archived in
//! state (`runs/RUN/archived`). Manifests keep naming the raw key: the archived object is the same
//! key under `archive/`. Local mode archives after each run; the fleet coordinator hourly.

use backends::object_store::ObjectStore;
use backends::state::StateStore;
use chrono::{DateTime, Utc};
use pipeline::Pipeline;

use crate::run::{RunRecord, all_runs};

/// The key an archived raw object moves to.
pub fn archived_key(raw_key: &str) -> String {
    format!("archive/{raw_key}")
}

/// The runs of `pipeline` that ended more than `days` days before `now`.
pub fn due_runs(
    records: &[RunRecord],
    pipeline: &str,
    days: u32,
    now: DateTime<Utc>,
) -> Vec<String> {
    let cutoff = now - chrono::Duration::days(i64::from(days));
    records
        .iter()
        .filter(|r| r.pipeline == pipeline && r.status.is_final())
        .filter(|r| {
            r.finished_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&Utc) < cutoff)
        })
        .map(|r| r.run_id.clone())
        .collect()
}

/// Archives the raw objects of the pipeline's runs that are past its retention; returns how
/// many objects moved.
pub async fn archive_raw(
    state: &dyn StateStore,
    files: &dyn ObjectStore,
    p: &Pipeline,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let Some(days) = p.file.source.raw_retention_days else {
        return Ok(0);
    };
    let class = p.file.source.raw_archive_storage_class.as_str();
    let mut moved = 0;
    for run in due_runs(&all_runs(state).await?, p.name(), days.get(), now) {
        let mark = format!("runs/{run}/archived");
        if state.get(&mark).await?.is_some() {
            continue;
        }
        for o in files.list(&format!("raw/{}/{run}/", p.name())).await? {
            files
                .archive(&o.key, &archived_key(&o.key), Some(class))
                .await?;
            moved += 1;
        }
        state.put(&mark, now.to_rfc3339().as_bytes()).await?;
    }
    if moved > 0 {
        tracing::info!(
            pipeline = p.name(),
            objects = moved,
            days = days.get(),
            "raw objects archived"
        );
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RunStatus;
    use backends::object_store::LocalStore;
    use backends::state::FileStateStore;

    fn record(run: &str, status: RunStatus, finished: Option<&str>) -> RunRecord {
        let mut r = RunRecord::for_test(run, "orders", status);
        r.finished_at = finished.map(String::from);
        r
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-31T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn only_runs_that_ended_before_the_retention_are_due() {
        let records = [
            record("old", RunStatus::Completed, Some("2026-11-01T00:00:00Z")),
            record(
                "failed-old",
                RunStatus::Failed,
                Some("2026-11-02T00:00:00Z"),
            ),
            record("recent", RunStatus::Completed, Some("2026-12-30T00:00:00Z")),
            record("running", RunStatus::Running, None),
        ];
        assert_eq!(
            due_runs(&records, "orders", 30, now()),
            ["old", "failed-old"]
        );
        assert!(due_runs(&records, "other", 30, now()).is_empty());
    }

    #[tokio::test]
    async fn due_raw_objects_move_to_the_archive_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileStateStore::new(dir.path().join("state")).unwrap();
        let files = LocalStore::new(dir.path().join("files")).unwrap();
        for (run, finished) in [
            ("r-old", "2026-11-01T00:00:00Z"),
            ("r-new", "2026-12-30T00:00:00Z"),
        ] {
            let r = record(run, RunStatus::Completed, Some(finished));
            state
                .put(
                    &format!("runs/{run}/run.json"),
                    &serde_json::to_vec(&r).unwrap(),
                )
                .await
                .unwrap();
            files
                .put(
                    &format!("raw/orders/{run}/s00000.ndjson.zst"),
                    b"x".to_vec(),
                )
                .await
                .unwrap();
        }
        let text = "[pipeline]\nname = \"orders\"\n[source]\nkind = \"postgres\"\nraw_retention_days = 30\n\
                    [source.sql]\nconnection_env = \"DB\"\ntable = \"orders\"\n[[columns]]\nname = \"id\"\ntype = \"int64\"\n";
        let p = pipeline::parse(text, "orders.toml", dir.path().into()).unwrap();
        assert_eq!(archive_raw(&state, &files, &p, now()).await.unwrap(), 1);
        assert_eq!(
            files
                .head("raw/orders/r-old/s00000.ndjson.zst")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            files
                .head("archive/raw/orders/r-old/s00000.ndjson.zst")
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            files
                .head("raw/orders/r-new/s00000.ndjson.zst")
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            archive_raw(&state, &files, &p, now()).await.unwrap(),
            0,
            "marked archived"
        );
    }
}
