//! A run's data-quality verdict: every expectation of its pipeline, measured on the run.
//!
//! Row checks arrive as partial counts in the shards' [`Counts::quality`] (summed over the run);
//! `unique` is measured here over the run's output files (one projected column per file, a set of
//! 64-bit hashes of the values); `min_rows` and `max_rejected_ratio` come from the run's counts.
//! A run that breaks an expectation of severity `fail` is not loaded: its files stay in the lake
//! and its record says which expectation failed and by how much.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use anyhow::Context;
use backends::object_store::ObjectStore;
use pipeline::expect::{Check, Expectation, Severity};
use protocol::Counts;
use serde::{Deserialize, Serialize};

/// One expectation's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityResult {
    pub name: String,
    pub check: String,
    pub severity: String,
    /// `pass`, `warn` (a `warn` expectation broken) or `fail`.
    pub status: String,
    /// What was measured: rows breaking a row check, duplicate values, output rows, or the
    /// rejected ratio.
    pub observed: serde_json::Value,
    /// The bound it was held to (`0` broken rows, `min_rows`, `max_rejected_ratio`).
    pub limit: serde_json::Value,
}

/// A run's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// False when an expectation of severity `fail` is broken: the run is not loaded.
    pub passed: bool,
    pub results: Vec<QualityResult>,
}

impl QualityReport {
    /// The broken `fail` expectations, as `NAME (observed X, limit Y)`.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| r.status == "fail")
            .map(|r| format!("{} (observed {}, limit {})", r.name, r.observed, r.limit))
            .collect()
    }

    /// The `QUALITY {json}` line `coordinator run` prints.
    pub fn line(&self, run_id: &str) -> String {
        let v = serde_json::json!({
            "run_id": run_id,
            "passed": self.passed,
            "failed": self.results.iter().filter(|r| r.status == "fail").map(|r| r.name.clone()).collect::<Vec<_>>(),
            "warned": self.results.iter().filter(|r| r.status == "warn").map(|r| r.name.clone()).collect::<Vec<_>>(),
            "expectations": self.results,
        });
        format!("QUALITY {v}")
    }
}

/// Whether a run of these expectations waits for its verdict before loading anything (any
/// `fail` expectation). Otherwise batches load as they fill.
pub fn gated(expectations: &[Expectation]) -> bool {
    expectations.iter().any(|x| x.severity == Severity::Fail)
}

/// The rejected share of a run's lines: (malformed + rejected) / lines (0 for no lines).
pub fn rejected_ratio(c: &Counts) -> f64 {
    if c.lines_total == 0 {
        return 0.0;
    }
    (c.malformed + c.rejected_total()) as f64 / c.lines_total as f64
}

/// Judges a run: `duplicates` gives the duplicate count of each `unique` expectation's column.
pub fn judge(
    expectations: &[Expectation],
    counts: &Counts,
    duplicates: &dyn Fn(&str) -> u64,
) -> QualityReport {
    let mut results = Vec::new();
    for x in expectations {
        let (ok, observed, limit) = match &x.check {
            Check::Rows { .. } => {
                let n = counts.quality.get(&x.name).copied().unwrap_or(0);
                (n == 0, n.into(), 0.into())
            }
            Check::Unique { column } => {
                let n = duplicates(column);
                (n == 0, n.into(), 0.into())
            }
            Check::MinRows(min) => (
                counts.rows_out >= *min,
                counts.rows_out.into(),
                (*min).into(),
            ),
            Check::MaxRejectedRatio(max) => {
                let r = rejected_ratio(counts);
                let rounded = (r * 1e6).round() / 1e6;
                (r <= *max, rounded.into(), (*max).into())
            }
        };
        let status = match (ok, x.severity) {
            (true, _) => "pass",
            (false, Severity::Warn) => "warn",
            (false, Severity::Fail) => "fail",
        };
        results.push(QualityResult {
            name: x.name.clone(),
            check: x.check.kind().into(),
            severity: x.severity.as_str().into(),
            status: status.into(),
            observed,
            limit,
        });
    }
    QualityReport {
        passed: results.iter().all(|r| r.status != "fail"),
        results,
    }
}

/// Non-null values of `column` that repeat an earlier value, over the run's output files.
pub async fn count_duplicates(
    store: Arc<dyn ObjectStore>,
    files: Vec<String>,
    column: String,
) -> anyhow::Result<u64> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut dupes = 0u64;
    for key in files {
        let bytes = store.get(&key).await?;
        let hashes = tokio::task::spawn_blocking({
            let (key, column) = (key.clone(), column.clone());
            move || column_hashes(bytes, &key, &column)
        })
        .await??;
        for h in hashes {
            dupes += u64::from(!seen.insert(h));
        }
    }
    Ok(dupes)
}

/// The quality check of a finished run, owning what it needs so that it can run on a task of its
/// own (the fleet's loop goes on meanwhile): the run's summed counts, and for `unique`
/// expectations the shards' manifests, whose output files it reads and hashes.
pub(crate) struct JudgeJob {
    pub(crate) expectations: Vec<Expectation>,
    pub(crate) counts: Counts,
    /// Where the manifests are, and each done shard's (id, manifest key), in shard order.
    pub(crate) files: Arc<dyn ObjectStore>,
    pub(crate) manifests: Vec<(String, String)>,
    /// Where the run's Parquet files are.
    pub(crate) output: Arc<dyn ObjectStore>,
}

impl JudgeJob {
    /// Whether the check reads the run's files (a `unique` expectation); without one the
    /// verdict is [`JudgeJob::verdict_of_counts`], at once.
    pub(crate) fn reads_files(&self) -> bool {
        self.expectations
            .iter()
            .any(|x| matches!(x.check, Check::Unique { .. }))
    }

    /// The verdict of a check that reads no files.
    pub(crate) fn verdict_of_counts(&self) -> QualityReport {
        debug_assert!(!self.reads_files());
        judge(&self.expectations, &self.counts, &|_| 0)
    }

    /// The run's verdict. The output files are listed (from the manifests) once, for every
    /// `unique` expectation.
    pub(crate) async fn run(self) -> anyhow::Result<QualityReport> {
        let mut dupes = std::collections::BTreeMap::new();
        let mut files: Option<Vec<String>> = None;
        for x in &self.expectations {
            if let Check::Unique { column } = &x.check {
                if files.is_none() {
                    files = Some(self.output_files().await?);
                }
                let files = files.clone().unwrap_or_default();
                let n = count_duplicates(self.output.clone(), files, column.clone())
                    .await
                    .with_context(|| format!("checking expectation {}", x.name))?;
                dupes.insert(column.clone(), n);
            }
        }
        Ok(judge(&self.expectations, &self.counts, &|c| {
            dupes.get(c).copied().unwrap_or(0)
        }))
    }

    async fn output_files(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for (shard_id, key) in &self.manifests {
            let m = crate::loader::read_manifest(&*self.files, shard_id, key).await?;
            out.extend(m.outputs.into_iter().map(|f| f.key));
        }
        Ok(out)
    }
}

/// A 64-bit hash of every non-null value of `column` in one Parquet file.
fn column_hashes(bytes: Vec<u8>, key: &str, column: &str) -> anyhow::Result<Vec<u64>> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .with_context(|| format!("{key}: not a readable Parquet file"))?;
    let idx = b
        .schema()
        .index_of(column)
        .with_context(|| format!("{key}: no column {column:?} to check for uniqueness"))?;
    let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
    let reader = b.with_projection(mask).build()?;
    let mut out = Vec::new();
    for rb in reader {
        let rb = rb.with_context(|| format!("reading {key}"))?;
        let col = rb.column(0);
        let conv = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
            col.data_type().clone(),
        )])?;
        let rows = conv.convert_columns(std::slice::from_ref(col))?;
        for i in 0..col.len() {
            if col.is_null(i) {
                continue;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rows.row(i).as_ref().hash(&mut h);
            out.push(h.finish());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn x(name: &str, severity: Severity, check: Check) -> Expectation {
        Expectation {
            name: name.into(),
            severity,
            check,
        }
    }

    fn counts() -> Counts {
        Counts {
            lines_total: 10,
            malformed: 2,
            rejected: BTreeMap::from([("bad".into(), 4)]),
            rows_out: 4,
            quality: BTreeMap::from([("not_null(id)".into(), 0), ("range(qty)".into(), 3)]),
            ..Counts::default()
        }
    }

    fn rows(kind: &'static str) -> Check {
        Check::Rows {
            kind,
            predicate: String::new(),
        }
    }

    #[test]
    fn a_run_fails_only_on_a_broken_fail_expectation() {
        let exps = vec![
            x("not_null(id)", Severity::Fail, rows("not_null")),
            x("range(qty)", Severity::Warn, rows("range")),
            x(
                "unique(id)",
                Severity::Fail,
                Check::Unique {
                    column: "id".into(),
                },
            ),
            x("min_rows", Severity::Fail, Check::MinRows(3)),
            x(
                "max_rejected_ratio",
                Severity::Fail,
                Check::MaxRejectedRatio(0.5),
            ),
        ];
        let r = judge(&exps, &counts(), &|_| 0);
        let status: Vec<&str> = r.results.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(status, ["pass", "warn", "pass", "pass", "fail"]);
        assert!(!r.passed);
        assert_eq!(
            r.failures(),
            ["max_rejected_ratio (observed 0.6, limit 0.5)"]
        );
        let line = r.line("run-1");
        assert!(line.starts_with("QUALITY {"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line[8..]).unwrap();
        assert_eq!(v["failed"], serde_json::json!(["max_rejected_ratio"]));
        assert_eq!(v["warned"], serde_json::json!(["range(qty)"]));
        assert_eq!(v["expectations"][1]["observed"], 3);

        let dup = judge(&exps[2..3], &counts(), &|c| if c == "id" { 2 } else { 0 });
        assert!(!dup.passed);
        assert_eq!(dup.results[0].observed, 2);
    }

    #[test]
    fn an_empty_run_has_no_rejected_ratio_and_warn_only_runs_are_not_gated() {
        assert_eq!(rejected_ratio(&Counts::default()), 0.0);
        let warn = [x("min_rows", Severity::Warn, Check::MinRows(1))];
        assert!(!gated(&warn));
        let r = judge(&warn, &Counts::default(), &|_| 0);
        assert!(r.passed);
        assert_eq!(r.results[0].status, "warn");
    }

    #[tokio::test]
    async fn duplicates_are_counted_across_files() {
        use arrow::array::{ArrayRef, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(backends::object_store::LocalStore::new(dir.path()).unwrap());
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        for (key, ids) in [
            ("a.parquet", vec![Some("x"), Some("y"), None]),
            ("b.parquet", vec![Some("y"), None, Some("z")]),
        ] {
            let rb = arrow::record_batch::RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(StringArray::from(ids)) as ArrayRef],
            )
            .unwrap();
            let mut buf = Vec::new();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), None).unwrap();
            w.write(&rb).unwrap();
            w.close().unwrap();
            store.put(key, buf).await.unwrap();
        }
        let files = vec!["a.parquet".to_string(), "b.parquet".to_string()];
        let n = count_duplicates(store.clone(), files.clone(), "id".into())
            .await
            .unwrap();
        assert_eq!(n, 1, "y repeats; nulls never count");
        let err = count_duplicates(store, files, "nope".into())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("a.parquet: no column \"nope\""),
            "{err:#}"
        );
    }
}
