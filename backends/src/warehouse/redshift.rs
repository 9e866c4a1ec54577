//! The load plan over the Redshift Data API (no network path to the cluster needed, IAM auth).
//!
//! One load = one `BatchExecuteStatement` (one transaction): the [`super::plan::LoadPlan`] with,
//! as data step, per group of files (same partition values and source position) a `COPY …
//! FORMAT AS PARQUET MANIFEST IAM_ROLE …` of a manifest written next to the Parquet into a
//! file-shaped temp table (Redshift maps Parquet columns by position and needs the column counts
//! to match), then an `INSERT … SELECT` into staging that adds the partition and lineage columns. The statement is polled with
//! `DescribeStatement` (backoff from `poll_initial` to `poll_max`) until it finishes, fails
//! (Redshift's error text is returned), is aborted, or the deadline passes (it is then
//! cancelled). Provisioned clusters (`cluster_identifier` + `db_user` or `secret_arn`) and
//! serverless workgroups (`workgroup_name`, optional `secret_arn`) are both supported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_redshiftdata::Client;
use aws_sdk_redshiftdata::types::{Field, StatusString};
use protocol::LoadBatch;

use super::plan::{self, Dialect, LoadPlan, REDSHIFT_MAX_STATEMENTS};
pub use super::redshift_settings::RedshiftSettings;
use super::{LoadOutcome, QueryResult, Warehouse, quote_ident, shapes, spectrum, split};
use crate::aws::classify;
use crate::object_store::ObjectStore;
use crate::{BackendError, Result};

#[derive(Debug, Clone)]
pub struct RedshiftWarehouse {
    client: Client,
    settings: RedshiftSettings,
}

/// Sets the connection fields shared by every Data API request.
macro_rules! target {
    ($req:expr, $s:expr) => {{
        let s = $s;
        $req.set_cluster_identifier(s.cluster_identifier.clone())
            .set_workgroup_name(s.workgroup_name.clone())
            .database(s.database.clone())
            .set_db_user(s.db_user.clone())
            .set_secret_arn(s.secret_arn.clone())
    }};
}

fn wh(detail: impl Into<String>) -> BackendError {
    BackendError::Warehouse(detail.into())
}

impl RedshiftWarehouse {
    /// Validates the settings and creates the load ledger if it is missing.
    pub async fn connect(client: Client, settings: RedshiftSettings) -> Result<Self> {
        settings.validate().map_err(wh)?;
        let w = RedshiftWarehouse { client, settings };
        w.execute(&plan::ledger_ddl(Dialect::Redshift)).await?;
        Ok(w)
    }

    fn what(&self) -> String {
        match (
            &self.settings.cluster_identifier,
            &self.settings.workgroup_name,
        ) {
            (Some(c), _) => format!("cluster {c}/{}", self.settings.database),
            (_, Some(w)) => format!("workgroup {w}/{}", self.settings.database),
            _ => self.settings.database.clone(),
        }
    }

    /// Submits with retries on throttling (the SDK already backs off; this covers
    /// `ActiveStatementsExceeded`, which it does not treat as throttling).
    async fn submit<F, Fut>(&self, op: &str, f: F) -> Result<String>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<String>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match f().await {
                Ok(id) => return Ok(id),
                Err(e) if e.is_retryable() && attempt < 6 => {
                    tracing::warn!(op, attempt, error = %e, "Redshift Data API busy; retrying");
                    tokio::time::sleep(Duration::from_millis(
                        self.settings.poll_initial_ms << attempt.min(5),
                    ))
                    .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn execute(&self, sql: &str) -> Result<(String, bool)> {
        let id = self
            .submit("ExecuteStatement", || async {
                let out = target!(self.client.execute_statement(), &self.settings)
                    .sql(sql)
                    .send()
                    .await
                    .map_err(|e| {
                        classify("Redshift Data API", "ExecuteStatement", &self.what(), e)
                    })?;
                Ok(out.id().unwrap_or_default().to_string())
            })
            .await?;
        let has_rows = self.wait(&id, sql).await?;
        Ok((id, has_rows))
    }

    async fn execute_batch(&self, sqls: Vec<String>, token: &str) -> Result<String> {
        let id = self
            .submit("BatchExecuteStatement", || async {
                let out = target!(self.client.batch_execute_statement(), &self.settings)
                    .set_sqls(Some(sqls.clone()))
                    .client_token(token)
                    .send()
                    .await
                    .map_err(|e| {
                        classify(
                            "Redshift Data API",
                            "BatchExecuteStatement",
                            &self.what(),
                            e,
                        )
                    })?;
                Ok(out.id().unwrap_or_default().to_string())
            })
            .await?;
        self.wait(&id, "the load transaction").await?;
        Ok(id)
    }

    /// Polls until the statement finishes; a failed or aborted statement is an error with
    /// Redshift's text, a statement over the deadline is cancelled.
    async fn wait(&self, id: &str, what: &str) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(self.settings.statement_timeout_secs);
        let mut pause = Duration::from_millis(self.settings.poll_initial_ms);
        loop {
            let d = self
                .client
                .describe_statement()
                .id(id)
                .send()
                .await
                .map_err(|e| classify("Redshift Data API", "DescribeStatement", id, e))?;
            match d.status() {
                Some(StatusString::Finished) => return Ok(d.has_result_set().unwrap_or(false)),
                Some(StatusString::Failed) => {
                    let failed_sub = d
                        .sub_statements()
                        .iter()
                        .find(|s| s.error().is_some())
                        .map(|s| {
                            format!(
                                " in sub-statement {}: {}",
                                s.id(),
                                s.query_string()
                                    .unwrap_or("")
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            )
                        })
                        .unwrap_or_default();
                    return Err(wh(format!(
                        "statement {id} ({what}) failed{failed_sub}: {}",
                        d.error().unwrap_or("no error text")
                    )));
                }
                Some(StatusString::Aborted) => {
                    return Err(wh(format!("statement {id} ({what}) was aborted")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let _ = self.client.cancel_statement().id(id).send().await;
                return Err(wh(format!(
                    "statement {id} ({what}) still running after {} s: cancelled",
                    self.settings.statement_timeout_secs
                )));
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(self.settings.poll_max_ms));
        }
    }

    async fn results(&self, id: &str) -> Result<QueryResult> {
        let mut out = QueryResult::default();
        let mut token: Option<String> = None;
        loop {
            let r = self
                .client
                .get_statement_result()
                .id(id)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| classify("Redshift Data API", "GetStatementResult", id, e))?;
            if out.columns.is_empty() {
                out.columns = r
                    .column_metadata()
                    .iter()
                    .map(|c| c.name().unwrap_or("?").to_string())
                    .collect();
            }
            for rec in r.records() {
                out.rows.push(
                    rec.iter()
                        .map(|f| match f {
                            Field::IsNull(true) => None,
                            Field::StringValue(s) => Some(s.clone()),
                            Field::LongValue(v) => Some(v.to_string()),
                            Field::DoubleValue(v) => Some(v.to_string()),
                            Field::BooleanValue(v) => Some(v.to_string()),
                            Field::BlobValue(b) => Some(format!("<{} bytes>", b.as_ref().len())),
                            _ => None,
                        })
                        .collect(),
                );
            }
            match r.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn scalar(&self, sql: &str) -> Result<i64> {
        let (id, _) = self.execute(sql).await?;
        let r = self.results(&id).await?;
        r.rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| wh(format!("no number from {sql:?}")))
    }

    /// The statements of one batch's transaction, however many.
    async fn statements_unchecked(
        &self,
        batch: &LoadBatch,
        files: &Arc<dyn ObjectStore>,
    ) -> Result<Vec<String>> {
        let first = batch
            .files
            .first()
            .ok_or_else(|| wh("a batch without files has nothing to COPY"))?;
        let shapes = shapes::read(files, batch).await?;
        let partition: Vec<String> = first
            .file
            .partition
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let mut columns = plan::columns_for(&shapes.union, &partition, Dialect::Redshift)?;
        plan::size_varchars(&mut columns, &batch.files);
        let existing: Vec<plan::ExistingColumn> = {
            let (id, _) = self
                .execute(&plan::existing_columns_sql(&batch.table, Dialect::Redshift))
                .await?;
            self.results(&id)
                .await?
                .rows
                .iter()
                .filter_map(|r| plan::existing_column(r))
                .collect()
        };
        let lp = LoadPlan::new(batch, columns, &existing, Dialect::Redshift)?;
        let groups = plan::file_groups(batch, &shapes.of_file);
        let stages: Vec<plan::FileStage> = (0..shapes.distinct.len())
            .map(|n| plan::FileStage::new(&lp, &shapes.distinct[n], n))
            .collect::<Result<_>>()?;
        let mut sqls = lp.before_data.clone();
        for stage in &stages {
            sqls.extend(stage.ddl());
        }
        for (n, g) in groups.iter().enumerate() {
            let mut entries = Vec::new();
            for f in &g.files {
                let url = files.url(&f.file.key).ok_or_else(|| {
                    wh(format!(
                        "{}: Redshift COPY reads from S3, but the Parquet is in {}",
                        f.file.key,
                        files.describe()
                    ))
                })?;
                entries.push((url, f.file.bytes));
            }
            let key = format!("_tributary/manifests/{}/g{n:04}.manifest", batch.batch_id);
            files
                .put(&key, plan::redshift_manifest(&entries).into_bytes())
                .await?;
            let manifest_url = files.url(&key).expect("checked above");
            sqls.extend(plan::redshift_copy_group(
                &stages[g.shape],
                batch,
                g,
                &manifest_url,
                &self.settings.iam_role,
            ));
        }
        sqls.extend(lp.after_data.clone());
        Ok(sqls)
    }

    /// The whole transaction of one batch (or part of one), as sent (also what the golden test
    /// pins); refused when it needs more statements than one Data API call takes.
    pub async fn statements(
        &self,
        batch: &LoadBatch,
        files: &Arc<dyn ObjectStore>,
    ) -> Result<Vec<String>> {
        let sqls = self.statements_unchecked(batch, files).await?;
        if sqls.len() > REDSHIFT_MAX_STATEMENTS {
            return Err(wh(format!(
                "batch {} needs {} statements; the Data API allows {REDSHIFT_MAX_STATEMENTS}",
                batch.batch_id,
                sqls.len(),
            )));
        }
        Ok(sqls)
    }
}

impl RedshiftWarehouse {
    /// The batch itself when its statements fit one Data API call, else its parts (see
    /// [`super::split`]): consecutive runs of its file groups, as batches of their own.
    async fn parts(
        &self,
        batch: &LoadBatch,
        files: &Arc<dyn ObjectStore>,
    ) -> Result<Vec<LoadBatch>> {
        let shapes = shapes::read(files, batch).await?;
        let groups: Vec<split::Group> = plan::file_groups(batch, &shapes.of_file)
            .iter()
            .map(|g| split::Group {
                shape: g.shape,
                files: g
                    .files
                    .iter()
                    .filter_map(|f| batch.files.iter().position(|b| std::ptr::eq(b, *f)))
                    .collect(),
            })
            .collect();
        let whole = self.statements_unchecked(batch, files).await?.len();
        if whole <= REDSHIFT_MAX_STATEMENTS {
            return Ok(vec![batch.clone()]);
        }
        let all: Vec<&split::Group> = groups.iter().collect();
        // The plan's own statements, and the last part's record of the whole batch.
        let fixed = whole - split::statements(0, &all) + 1;
        let parts = split::parts(&groups, fixed, REDSHIFT_MAX_STATEMENTS).ok_or_else(|| {
            wh(format!(
                "one file group needs more than the Data API's {REDSHIFT_MAX_STATEMENTS} statements with the plan's {fixed}"
            ))
        })?;
        tracing::info!(batch = %batch.batch_id, parts = parts.len(), groups = groups.len(), "batch loaded in parts");
        Ok(parts
            .iter()
            .enumerate()
            .map(|(n, part)| LoadBatch {
                batch_id: split::part_id(&batch.batch_id, n + 1),
                files: part
                    .iter()
                    .flat_map(|&g| groups[g].files.iter().map(|&i| batch.files[i].clone()))
                    .collect(),
                ..batch.clone()
            })
            .collect())
    }

    /// The rows Redshift recorded for a failed COPY of this batch's files: `STL_LOAD_ERRORS` on a
    /// provisioned cluster, `SYS_LOAD_ERROR_DETAIL` where STL tables do not exist (serverless).
    /// Rendered for the batch's error (and so for status and the log); a hashed column's raw
    /// value is masked. Empty when neither view answers.
    async fn load_error_rows(&self, batch: &LoadBatch, files: &Arc<dyn ObjectStore>) -> String {
        let urls: Vec<String> = batch
            .files
            .iter()
            .filter_map(|f| files.url(&f.file.key))
            .map(|u| plan::quote_literal(&u, Dialect::Redshift))
            .collect();
        if urls.is_empty() {
            return String::new();
        }
        let list = urls.join(", ");
        let queries = [
            (
                "STL_LOAD_ERRORS",
                format!(
                    "SELECT trim(filename), line_number, trim(colname), trim(type), trim(raw_field_value), trim(err_reason) FROM stl_load_errors WHERE trim(filename) IN ({list}) ORDER BY starttime DESC LIMIT {LOAD_ERROR_ROWS}"
                ),
            ),
            (
                "SYS_LOAD_ERROR_DETAIL",
                format!(
                    "SELECT trim(file_name), line_number, trim(column_name), trim(column_type), NULL, trim(error_message) FROM sys_load_error_detail WHERE trim(file_name) IN ({list}) ORDER BY start_time DESC LIMIT {LOAD_ERROR_ROWS}"
                ),
            ),
        ];
        for (view, sql) in queries {
            match self.query(&sql).await {
                Ok(r) if !r.rows.is_empty() => {
                    return format_load_errors(view, &r.rows, &batch.masked_columns);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(view, error = %e, "load errors not readable"),
            }
        }
        String::new()
    }
}

/// How many load-error rows a batch error shows.
const LOAD_ERROR_ROWS: usize = 10;

/// Whether Redshift's error text points at its load-error tables (a COPY that failed on data).
/// A fresh token per attempt: the SDK's own retries of one request are idempotent, while a
/// deliberate retry of a failed load runs again.
fn attempt_token() -> String {
    format!(
        "{:x}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        std::process::id()
    )
}

/// Records `batch` in the ledger (unless it is there) without loading anything: a batch with
/// no files, or a batch whose parts have all loaded.
fn ledger_record_sql(batch: &LoadBatch) -> String {
    let lit = |v: &str| plan::quote_literal(v, Dialect::Redshift);
    format!(
        "INSERT INTO {ledger} (batch_id, table_name, run_id, files, rows_staged, loaded_at) SELECT {}, {}, {}, {}, 0, GETDATE() WHERE NOT EXISTS (SELECT 1 FROM {ledger} WHERE batch_id = {})",
        lit(&batch.batch_id),
        lit(&batch.table),
        lit(&batch.run_id),
        batch.files.len(),
        lit(&batch.batch_id),
        ledger = super::LEDGER_TABLE,
    )
}

fn mentions_load_errors(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("stl_load_errors")
        || t.contains("sys_load_error_detail")
        || t.contains("load into table")
}

/// Renders load-error rows (`file, line, column, type, raw value, reason`) as one text:
/// `; load errors (STL_LOAD_ERRORS): s3://…/part-….parquet line 7, column amount (numeric), value "x": reason`.
/// Values of `masked` columns are never shown.
pub fn format_load_errors(view: &str, rows: &[Vec<Option<String>>], masked: &[String]) -> String {
    let cell = |r: &[Option<String>], i: usize| r.get(i).cloned().flatten().unwrap_or_default();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let column = cell(r, 2);
            let value = match r.get(4).cloned().flatten() {
                _ if masked.iter().any(|m| m.eq_ignore_ascii_case(column.trim())) => {
                    ", value masked (hashed column)".to_string()
                }
                Some(v) => format!(", value {v:?}"),
                None => String::new(),
            };
            format!(
                "{} line {}, column {} ({}){value}: {}",
                cell(r, 0),
                cell(r, 1),
                column,
                cell(r, 3),
                cell(r, 5)
            )
        })
        .collect();
    format!("; load errors ({view}): {}", lines.join("; "))
}

#[async_trait]
impl Warehouse for RedshiftWarehouse {
    fn max_string_bytes(&self) -> Option<u64> {
        Some(u64::from(super::evolve::REDSHIFT_MAX_VARCHAR))
    }

    fn describe(&self) -> String {
        format!("redshift-data://{}", self.what())
    }

    async fn load(&self, batch: &LoadBatch, files: Arc<dyn ObjectStore>) -> Result<LoadOutcome> {
        let outcome = self.load_once(batch, &files).await?;
        // The catalog after the commit, also when an earlier attempt committed it: a load that
        // failed here is retried, finds its batch in the ledger, and keeps the catalog then.
        self.keep_external_table(batch, &files).await.map_err(|e| {
            wh(format!(
                "load batch {}: the external table: {e}",
                batch.batch_id
            ))
        })?;
        Ok(outcome)
    }

    async fn is_loaded(&self, batch_id: &str) -> Result<bool> {
        Ok(self
            .scalar(&plan::is_loaded_sql(batch_id, Dialect::Redshift))
            .await?
            > 0)
    }

    async fn query(&self, sql: &str) -> Result<QueryResult> {
        let (id, has_rows) = self.execute(sql).await?;
        if !has_rows {
            return Ok(QueryResult::default());
        }
        self.results(&id).await
    }
}

impl RedshiftWarehouse {
    /// Keeps the Spectrum table of a batch with an external table (see [`super::spectrum`]):
    /// creates it, adds the columns its files gained, adds the batch's partitions — each
    /// statement on its own. Nothing without one.
    async fn keep_external_table(
        &self,
        batch: &LoadBatch,
        files: &Arc<dyn ObjectStore>,
    ) -> Result<()> {
        let (Some(ext), Some(first)) = (&batch.external, batch.files.first()) else {
            return Ok(());
        };
        let location = files
            .url(&format!("{}/", ext.lake_prefix.trim_end_matches('/')))
            .ok_or_else(|| {
                wh(format!(
                    "an external table reads the lake from S3, but it is in {}",
                    files.describe()
                ))
            })?;
        let partition: Vec<String> = first
            .file
            .partition
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let shapes = shapes::read(files, batch).await?;
        let cols = spectrum::columns(&shapes.union, &partition);
        let table = &batch.table;
        self.execute(&spectrum::create_sql(
            ext, table, &cols, &partition, &location,
        ))
        .await?;
        let existing: Vec<String> = self
            .query(&spectrum::existing_columns_sql(ext, table))
            .await?
            .rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        for sql in spectrum::add_columns_sql(ext, table, &cols, &existing) {
            self.execute(&sql).await?;
        }
        if let Some(sql) = spectrum::add_partitions_sql(ext, table, batch, &location) {
            self.execute(&sql).await?;
        }
        Ok(())
    }

    /// One attempt at the batch's transaction (nothing when the ledger has it).
    async fn load_once(
        &self,
        batch: &LoadBatch,
        files: &Arc<dyn ObjectStore>,
    ) -> Result<LoadOutcome> {
        if self.is_loaded(&batch.batch_id).await? {
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        if batch.files.is_empty() {
            self.execute(&ledger_record_sql(batch)).await?;
            return Ok(LoadOutcome::Loaded {
                rows_staged: 0,
                rows_in_table: 0,
            });
        }
        let parts = self
            .parts(batch, files)
            .await
            .map_err(|e| wh(format!("load batch {}: {e}", batch.batch_id)))?;
        let split = parts.len() > 1;
        for (n, part) in parts.iter().enumerate() {
            // A part an earlier attempt committed is not sent again.
            if split && self.is_loaded(&part.batch_id).await? {
                continue;
            }
            let mut sqls = self
                .statements(part, files)
                .await
                .map_err(|e| wh(format!("load batch {}: {e}", part.batch_id)))?;
            if split && n + 1 == parts.len() {
                // The last part's transaction also records the whole batch.
                sqls.push(ledger_record_sql(batch));
            }
            if let Err(e) = self.execute_batch(sqls, &attempt_token()).await {
                let mut text = format!("load batch {}: {e}", part.batch_id);
                if mentions_load_errors(&text) {
                    text.push_str(&self.load_error_rows(part, files).await);
                }
                return Err(wh(text));
            }
        }
        let in_table = self
            .scalar(&format!(
                "SELECT count(*) FROM {}",
                quote_ident(&batch.table)
            ))
            .await
            .unwrap_or(0);
        let in_table = in_table.max(0) as u64;
        if batch.layout.wants_analyze(batch.rows(), in_table) {
            // Statistics only: the load has committed whatever this does.
            if let Err(e) = self.execute(&super::analyze_sql(&batch.table)).await {
                tracing::warn!(table = %batch.table, error = %e, "ANALYZE after the load failed");
            }
        }
        Ok(LoadOutcome::Loaded {
            rows_staged: batch.rows(),
            rows_in_table: in_table,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_name_file_line_column_type_and_mask_hashed_values() {
        let rows = vec![
            vec![
                Some("s3://lake/t/part-r-s00000-00000.parquet".into()),
                Some("7".into()),
                Some("amount".into()),
                Some("numeric".into()),
                Some("1e999".into()),
                Some("Overflow for NUMERIC(18,2)".into()),
            ],
            vec![
                Some("s3://lake/t/part-r-s00000-00000.parquet".into()),
                Some("9".into()),
                Some("email_sha256".into()),
                Some("varchar".into()),
                Some("alice@example.com".into()),
                Some("String length exceeds DDL length".into()),
            ],
        ];
        let text = format_load_errors("STL_LOAD_ERRORS", &rows, &["email_sha256".into()]);
        assert!(
            text.starts_with("; load errors (STL_LOAD_ERRORS): "),
            "{text}"
        );
        assert!(
            text.contains("part-r-s00000-00000.parquet line 7, column amount (numeric), value \"1e999\": Overflow"),
            "{text}"
        );
        assert!(
            text.contains("column email_sha256 (varchar), value masked"),
            "{text}"
        );
        assert!(!text.contains("alice"), "{text}");
        assert!(mentions_load_errors(
            "ERROR: Load into table 'x' failed. Check 'stl_load_errors' system table for details."
        ));
        assert!(!mentions_load_errors(
            "ERROR: permission denied for relation x"
        ));
    }
}
