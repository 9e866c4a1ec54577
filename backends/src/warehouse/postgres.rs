//! The load plan over the PostgreSQL wire protocol: PostgreSQL itself, or Redshift through its
//! Postgres-compatible endpoint (as many loaders connect).
//!
//! The data step is a bulk `COPY staging (...) FROM STDIN` (text format) of the Parquet rows,
//! streamed: each file is decoded on a blocking thread into 1 MiB chunks of COPY text that flow
//! through a bounded channel into the connection, so memory stays flat whatever the batch size.
//! Everything else is [`super::plan::LoadPlan`], in one transaction.

use std::sync::Arc;

use arrow::array::RecordBatchReader;
use arrow::datatypes::Schema;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::SinkExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use protocol::{LoadBatch, LoadFile};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::plan::{self, Dialect, LoadPlan};
use super::{LEDGER_TABLE, LoadOutcome, QueryResult, Warehouse, quote_ident};
use crate::object_store::ObjectStore;
use crate::{BackendError, Result};

/// A warehouse reached over the PostgreSQL wire protocol.
#[derive(Debug)]
pub struct PostgresWarehouse {
    config: tokio_postgres::Config,
    describe: String,
    dialect: Dialect,
    /// Connections, each opened on first use; a call takes a free one or waits for one.
    /// Loads of different tables run side by side; loads of one table queue on its lock.
    clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    /// Which connection a call waits for when all are busy.
    next: std::sync::atomic::AtomicUsize,
}

fn pg_err(context: &str, e: tokio_postgres::Error) -> BackendError {
    let detail = match e.as_db_error() {
        Some(db) => format!(
            "{}: {}{}",
            db.severity(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => error_chain(&e),
    };
    BackendError::Warehouse(format!("{context}: {detail}"))
}

/// An error and its causes (`error connecting to server: Connection refused (os error 111)`):
/// tokio-postgres keeps the cause out of its own message.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `postgresql://user@host:port/db` of a connection config (never the password), for messages.
pub(crate) fn describe_config(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(s) => format!("{s}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => format!("{}:{port}", p.display()),
            }
        })
        .collect();
    format!(
        "postgresql://{}@{}/{}",
        config.get_user().unwrap_or(""),
        if hosts.is_empty() {
            "localhost:5432".to_string()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("")
    )
}

impl PostgresWarehouse {
    /// Connects with a libpq-style connection string (`host=… port=… user=… dbname=…`) or URL
    /// (`postgresql://user@host:5432/db`). `redshift` selects Redshift's SQL dialect. Creates the
    /// load ledger if it is missing.
    pub async fn connect(conn: &str, redshift: bool) -> Result<Self> {
        let config: tokio_postgres::Config = conn.parse().map_err(|e| {
            BackendError::Warehouse(format!("invalid PostgreSQL connection string: {e}"))
        })?;
        let describe = describe_config(&config);
        let wh = PostgresWarehouse {
            config,
            describe,
            dialect: if redshift {
                Dialect::Redshift
            } else {
                Dialect::Postgres
            },
            clients: vec![tokio::sync::Mutex::new(None)],
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        {
            let mut guard = wh.client().await;
            let c = wh.ensure(&mut guard).await?;
            c.batch_execute(&plan::ledger_ddl(wh.dialect))
                .await
                .map_err(|e| pg_err("creating the load ledger", e))?;
        }
        Ok(wh)
    }

    /// At most `n` connections (at least one), so that up to `n` loads run at once.
    pub fn with_connections(mut self, n: usize) -> Self {
        self.clients
            .resize_with(n.max(1), || tokio::sync::Mutex::new(None));
        self
    }

    /// A free connection slot, or — all busy — one to wait for (in turn).
    async fn client(&self) -> tokio::sync::MutexGuard<'_, Option<Client>> {
        if let Some(free) = self.clients.iter().find_map(|c| c.try_lock().ok()) {
            return free;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        self.clients[i].lock().await
    }

    /// The connection, opened again if it was lost.
    async fn ensure<'a>(&self, slot: &'a mut Option<Client>) -> Result<&'a mut Client> {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| pg_err(&format!("connecting to {}", self.describe), e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                }
            });
            *slot = Some(client);
        }
        Ok(slot.as_mut().expect("connected"))
    }

    async fn load_inner(
        &self,
        batch: &LoadBatch,
        files: Arc<dyn ObjectStore>,
    ) -> Result<LoadOutcome> {
        let mut guard = self.client().await;
        let client = self.ensure(&mut guard).await?;
        let tx = client.transaction().await.map_err(|e| pg_err("BEGIN", e))?;
        // Under the ledger lock, a batch already loaded is skipped before any data moves.
        let lock = &plan::LoadPlan::new(batch, Vec::new(), &[], self.dialect)?.before_data[0];
        tx.batch_execute(lock)
            .await
            .map_err(|e| pg_err("locking the ledger", e))?;
        let seen = tx
            .query_one(
                &format!("SELECT count(*) FROM {LEDGER_TABLE} WHERE batch_id = $1"),
                &[&batch.batch_id],
            )
            .await
            .map_err(|e| pg_err("reading the ledger", e))?;
        if seen.get::<_, i64>(0) > 0 {
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        let Some(first) = batch.files.first() else {
            // Every row of the batch's shards was filtered out: only the ledger row.
            tx.execute(
                &format!(
                    "INSERT INTO {LEDGER_TABLE} (batch_id, table_name, run_id, files, rows_staged, loaded_at) \
                     VALUES ($1, $2, $3, 0, 0, now())"
                ),
                &[&batch.batch_id, &batch.table, &batch.run_id],
            )
            .await
            .map_err(|e| pg_err("recording the batch", e))?;
            tx.commit().await.map_err(|e| pg_err("COMMIT", e))?;
            return Ok(LoadOutcome::Loaded {
                rows_staged: 0,
                rows_in_table: 0,
            });
        };
        let shapes = super::shapes::read(&files, batch).await?;
        let schema = shapes.union.clone();
        let partition: Vec<String> = first
            .file
            .partition
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let mut columns = plan::columns_for(&schema, &partition, self.dialect)?;
        if self.dialect == Dialect::Redshift {
            plan::size_varchars(&mut columns, &batch.files);
        }
        let existing: Vec<plan::ExistingColumn> = tx
            .query(&plan::existing_columns_sql(&batch.table, self.dialect), &[])
            .await
            .map_err(|e| pg_err("reading the target's columns", e))?
            .iter()
            .filter_map(|r| {
                let row: Vec<Option<String>> = (0..5).map(|i| r.get(i)).collect();
                plan::existing_column(&row)
            })
            .collect();
        let lp = LoadPlan::new(batch, columns, &existing, self.dialect)?;
        for sql in &lp.before_data[1..] {
            tx.batch_execute(sql)
                .await
                .map_err(|e| pg_err(&format!("batch {}: {sql}", batch.batch_id), e))?;
        }
        let sink = tx
            .copy_in::<_, Bytes>(&plan::postgres_copy_sql(&lp))
            .await
            .map_err(|e| pg_err("COPY FROM STDIN", e))?;
        futures_util::pin_mut!(sink);
        copy_files(sink.as_mut(), batch, &*files, &schema).await?;
        let staged = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| pg_err("finishing COPY", e))?;
        for sql in &lp.after_data {
            tx.batch_execute(sql)
                .await
                .map_err(|e| pg_err(&format!("batch {}: {sql}", batch.batch_id), e))?;
        }
        let in_table = tx
            .query_one(
                &format!("SELECT count(*) FROM {}", quote_ident(&batch.table)),
                &[],
            )
            .await
            .map_err(|e| pg_err("counting rows", e))?
            .get::<_, i64>(0);
        tx.commit().await.map_err(|e| pg_err("COMMIT", e))?;
        if batch.layout.wants_analyze(staged, in_table as u64) {
            // Statistics only: the load has committed whatever this does.
            if let Err(e) = client
                .batch_execute(&super::analyze_sql(&batch.table))
                .await
            {
                tracing::warn!(table = %batch.table, error = %e, "ANALYZE after the load failed");
            }
        }
        Ok(LoadOutcome::Loaded {
            rows_staged: staged,
            rows_in_table: in_table as u64,
        })
    }
}

/// Streams every file of the batch into the open COPY, each rendered against the batch's
/// schema on a blocking thread while the previous chunk is sent.
async fn copy_files(
    mut sink: std::pin::Pin<&mut tokio_postgres::CopyInSink<Bytes>>,
    batch: &LoadBatch,
    files: &dyn ObjectStore,
    schema: &Arc<Schema>,
) -> Result<()> {
    for lf in &batch.files {
        let bytes = read_file(files, lf).await?;
        let (tx_chunks, mut rx_chunks) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(4);
        let lf2 = lf.clone();
        let batch_id = batch.batch_id.clone();
        let want = schema.clone();
        let producer = tokio::task::spawn_blocking(move || {
            if let Err(e) = render_file(&lf2, &batch_id, bytes, &want, &tx_chunks) {
                let _ = tx_chunks.blocking_send(Err(e));
            }
        });
        while let Some(chunk) = rx_chunks.recv().await {
            sink.send(Bytes::from(chunk?))
                .await
                .map_err(|e| pg_err(&format!("COPY of {}", lf.file.key), e))?;
        }
        producer
            .await
            .map_err(|e| BackendError::Warehouse(format!("decoding {}: {e}", lf.file.key)))?;
    }
    Ok(())
}

async fn read_file(files: &dyn ObjectStore, lf: &LoadFile) -> Result<Bytes> {
    files
        .get(&lf.file.key)
        .await
        .map(Bytes::from)
        .map_err(|e| BackendError::Warehouse(format!("reading {}: {e}", lf.file.key)))
}

/// Decodes one Parquet file into COPY text chunks: the batch's columns (`want`, the union of its
/// files' schemas; a column this file lacks is NULL), partition values, lineage.
fn render_file(
    lf: &LoadFile,
    batch_id: &str,
    bytes: Bytes,
    want: &Schema,
    out: &tokio::sync::mpsc::Sender<Result<Vec<u8>>>,
) -> Result<()> {
    let key = &lf.file.key;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| BackendError::Warehouse(format!("{key}: not a readable Parquet file: {e}")))?
        .with_batch_size(8192)
        .build()
        .map_err(|e| BackendError::Warehouse(format!("{key}: {e}")))?;
    let have = reader.schema();
    let picks: Vec<Option<usize>> = want
        .fields()
        .iter()
        .map(|f| have.index_of(f.name()).ok())
        .collect();
    let mut tail = Vec::new();
    for (_, v) in &lf.file.partition {
        tail.push(b'\t');
        plan::push_copy_text(&mut tail, Some(v));
    }
    tail.push(b'\t');
    plan::push_copy_text(&mut tail, Some(&lf.position.object));
    tail.extend_from_slice(format!("\t{}\t", lf.position.offset).as_bytes());
    plan::push_copy_text(&mut tail, Some(batch_id));
    tail.push(b'\n');
    let mut buf = Vec::with_capacity(1 << 20);
    for rb in reader {
        let rb = rb.map_err(|e| BackendError::Warehouse(format!("{key}: {e}")))?;
        for i in 0..rb.num_rows() {
            for (c, pick) in picks.iter().enumerate() {
                if c > 0 {
                    buf.push(b'\t');
                }
                let v = match pick {
                    Some(at) => plan::render_value(rb.column(*at).as_ref(), i)?,
                    None => None,
                };
                plan::push_copy_text(&mut buf, v.as_deref());
            }
            buf.extend_from_slice(&tail);
            if buf.len() >= 1 << 20 {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(1 << 20));
                if out.blocking_send(Ok(full)).is_err() {
                    return Ok(()); // the loader gave up
                }
            }
        }
    }
    if !buf.is_empty() {
        let _ = out.blocking_send(Ok(buf));
    }
    Ok(())
}

#[async_trait]
impl Warehouse for PostgresWarehouse {
    fn max_string_bytes(&self) -> Option<u64> {
        (self.dialect == Dialect::Redshift)
            .then_some(u64::from(super::evolve::REDSHIFT_MAX_VARCHAR))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn load(&self, batch: &LoadBatch, files: Arc<dyn ObjectStore>) -> Result<LoadOutcome> {
        self.load_inner(batch, files).await.map_err(|e| match e {
            BackendError::Warehouse(m) => {
                BackendError::Warehouse(format!("load batch {}: {m}", batch.batch_id))
            }
            other => other,
        })
    }

    async fn is_loaded(&self, batch_id: &str) -> Result<bool> {
        let mut guard = self.client().await;
        let client = self.ensure(&mut guard).await?;
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM {LEDGER_TABLE} WHERE batch_id = $1"),
                &[&batch_id],
            )
            .await
            .map_err(|e| pg_err("reading the ledger", e))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn query(&self, sql: &str) -> Result<QueryResult> {
        let mut guard = self.client().await;
        let client = self.ensure(&mut guard).await?;
        let msgs = client
            .simple_query(sql)
            .await
            .map_err(|e| pg_err("query", e))?;
        let mut out = QueryResult::default();
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    out.columns = cols.iter().map(|c| c.name().to_string()).collect();
                    out.rows.clear();
                }
                SimpleQueryMessage::Row(r) => {
                    if out.columns.is_empty() {
                        out.columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                    }
                    out.rows
                        .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8: a connection error dropped the port and the cause ("error connecting to server").
    #[tokio::test]
    async fn a_connection_error_names_host_port_and_cause() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = PostgresWarehouse::connect(
            &format!("host=127.0.0.1 port={port} user=nobody dbname=x connect_timeout=2"),
            false,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }

    /// `with_connections(2)`: a call made while another runs takes the second connection
    /// instead of queueing behind it (two PostgreSQL backends answer; with one connection the
    /// same backend answers both, one after the other).
    #[tokio::test]
    async fn calls_made_together_run_on_connections_of_their_own() {
        let Some(conn) = crate::testkit::postgres() else {
            return;
        };
        let pid = |r: QueryResult| r.rows[0][0].clone().expect("a pid");
        for (n, distinct) in [(2, true), (1, false)] {
            let wh = PostgresWarehouse::connect(&conn, false)
                .await
                .unwrap()
                .with_connections(n);
            let (a, b) = tokio::join!(
                wh.query("SELECT pg_backend_pid(), pg_sleep(0.3)"),
                wh.query("SELECT pg_backend_pid(), pg_sleep(0.3)"),
            );
            assert_eq!(
                pid(a.unwrap()) != pid(b.unwrap()),
                distinct,
                "{n} connection(s)"
            );
        }
    }

    #[test]
    fn descriptions_never_carry_the_password() {
        let c: tokio_postgres::Config =
            "host=db.internal port=5439 user=loader password=s3cret dbname=dw"
                .parse()
                .unwrap();
        let d = describe_config(&c);
        assert_eq!(d, "postgresql://loader@db.internal:5439/dw");
        let c: tokio_postgres::Config = "postgresql://u:pw@h:6000/db".parse().unwrap();
        assert_eq!(describe_config(&c), "postgresql://u@h:6000/db");
    }
}
