//! A PostgreSQL table or query as a source: planned into key-range shards of the rows after the
//! pipeline's watermark (the coordinator), and read shard by shard through a server-side cursor
//! into NDJSON (a worker), so a worker holds at most `fetch_rows` rows at a time.
//!
//! Values are read in PostgreSQL's text form in a session set to UTC and ISO dates, and written
//! as JSON that the declared columns read faithfully: integers and floats as numbers, numeric as
//! a string of its exact digits, booleans as `true`/`false`, json and jsonb as nested JSON,
//! timestamps with time zone as RFC 3339 in UTC (`2026-12-01T10:00:00.5Z`), timestamps without
//! one and dates as ISO text; anything else as its text.

use std::io::Write;

use protocol::SqlRange;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::plan::{ColumnInfo, Session, check_columns};
use super::sql::SqlSpec;
use super::{SourcePlan, SqlSource};
use crate::warehouse::postgres::{describe_config, error_chain};
use crate::{BackendError, Result};

/// A PostgreSQL source.
pub struct PostgresSource {
    spec: SqlSpec,
    config: tokio_postgres::Config,
    describe: String,
    fetch_rows: u64,
    /// PEM certificates trusted for TLS instead of the system's roots.
    tls_ca_file: Option<std::path::PathBuf>,
}

impl PostgresSource {
    /// `conn`: a libpq-style connection string or URL (read from the pipeline's
    /// `connection_env`).
    pub fn new(spec: SqlSpec, conn: &str, fetch_rows: u64) -> Result<Self> {
        let config: tokio_postgres::Config = conn.parse().map_err(|e| BackendError::Source {
            source_name: "postgres".into(),
            detail: format!("invalid PostgreSQL connection string: {e}"),
            retryable: false,
        })?;
        let describe = describe_config(&config);
        Ok(PostgresSource {
            spec,
            config,
            describe,
            fetch_rows: fetch_rows.max(1),
            tls_ca_file: None,
        })
    }

    /// Trusts the certificates of this PEM file for TLS (`sslmode=require`) instead of the
    /// system's roots.
    pub fn with_tls_ca_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.tls_ca_file = path;
        self
    }

    fn config_err(&self, detail: String) -> BackendError {
        BackendError::Source {
            source_name: self.describe.clone(),
            detail,
            retryable: false,
        }
    }

    /// The TLS connector of `sslmode=require`: the server's certificate is verified against
    /// `tls_ca_file` or the system's roots, and its name against the host.
    fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.tls_ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| self.config_err(format!("tls_ca_file {}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        self.config_err(format!("tls_ca_file {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        self.config_err(format!("tls_ca_file {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.config_err(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    fn err(&self, doing: &str, e: tokio_postgres::Error) -> BackendError {
        let retryable = e.as_db_error().is_none_or(|db| transient(db.code().code()));
        let detail = match e.as_db_error() {
            Some(db) => format!("{doing}: {}", db.message()),
            None => format!("{doing}: {}", error_chain(&e)),
        };
        BackendError::Source {
            source_name: self.describe.clone(),
            detail,
            retryable,
        }
    }

    /// A session: over TLS when the connection string says `sslmode=require`, else plain
    /// (`prefer`, the default, does not attempt TLS).
    async fn connect(&self) -> Result<Client> {
        let client = if self.config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let (client, connection) = self
                .config
                .connect(self.tls()?)
                .await
                .map_err(|e| self.err("connecting over TLS", e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL source connection closed");
                }
            });
            client
        } else {
            let (client, connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| self.err("connecting", e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL source connection closed");
                }
            });
            client
        };
        client
            .batch_execute(
                "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3",
            )
            .await
            .map_err(|e| self.err("setting up the session", e))?;
        Ok(client)
    }

    /// The relation's columns and types; refuses a cursor or key column it does not have.
    async fn columns(&self, client: &Client) -> Result<Vec<(String, Type)>> {
        let what = match &self.spec.relation {
            super::sql::Relation::Table(t) => format!("reading table {t}"),
            super::sql::Relation::Query(_) => "preparing the query".to_string(),
        };
        let stmt = client
            .prepare(&self.spec.describe_query())
            .await
            .map_err(|e| self.err(&what, e))?;
        let cols: Vec<(String, Type)> = stmt
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_().clone()))
            .collect();
        let infos: Vec<ColumnInfo> = cols.iter().map(|(n, t)| column_info(n, t)).collect();
        check_columns(&self.spec, &infos, &self.describe, &what)?;
        Ok(cols)
    }
}

#[async_trait::async_trait]
impl SqlSource for PostgresSource {
    /// The relation's columns in order, each with its PostgreSQL type as `format_type` writes
    /// it (`numeric(12,2)`, `timestamp with time zone`): what a pipeline that declares no
    /// columns takes from its table. A query is described through a temporary view.
    async fn table_columns(&self) -> Result<Vec<(String, String)>> {
        let client = self.connect().await?;
        let regclass = match &self.spec.relation {
            super::sql::Relation::Table(t) => {
                let quoted: Vec<String> = t.split('.').map(|p| self.spec.ident(p.trim())).collect();
                self.spec.literal(&quoted.join("."))
            }
            super::sql::Relation::Query(q) => {
                client
                    .batch_execute(&format!(
                        "CREATE TEMP VIEW tributary_describe AS {}",
                        q.trim().trim_end_matches(';')
                    ))
                    .await
                    .map_err(|e| self.err("describing the query", e))?;
                "'tributary_describe'".to_string()
            }
        };
        let sql = format!(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = {regclass}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        );
        let msgs = client
            .simple_query(&sql)
            .await
            .map_err(|e| self.err("reading the columns", e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((r.get(0)?.to_string(), r.get(1)?.to_string())),
                _ => None,
            })
            .collect())
    }

    /// Plans a run: the rows after `watermark` (moved back by `lookback_secs`) up to the high
    /// mark taken now, in key ranges of about `shard_rows` rows.
    async fn plan(
        &self,
        watermark: Option<&str>,
        lookback_secs: u64,
        shard_rows: Option<u64>,
    ) -> Result<SourcePlan> {
        let client = self.connect().await?;
        let mut session = PgSession {
            source: self,
            client,
        };
        super::plan::plan(
            &self.spec,
            &mut session,
            watermark,
            lookback_secs,
            shard_rows,
        )
        .await
    }

    async fn plan_window(
        &self,
        from: &str,
        to: &str,
        shard_rows: Option<u64>,
    ) -> Result<(SourcePlan, Option<u64>)> {
        let client = self.connect().await?;
        let mut session = PgSession {
            source: self,
            client,
        };
        let plan = super::plan::plan_window(&self.spec, &mut session, from, to, shard_rows).await?;
        Ok((plan, session.avg_row_bytes().await?))
    }

    /// Reads one shard's rows into `out` as NDJSON; returns how many.
    async fn extract(&self, range: &SqlRange, out: &mut (dyn Write + Send)) -> Result<u64> {
        let mut client = self.connect().await?;
        let cols = self.columns(&client).await?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err("starting a read", e))?;
        tx.batch_execute(&format!(
            "DECLARE tributary_rows NO SCROLL CURSOR FOR {}",
            self.spec.shard_query(range)
        ))
        .await
        .map_err(|e| self.err("opening a cursor", e))?;
        let fetch = format!("FETCH FORWARD {} FROM tributary_rows", self.fetch_rows);
        let mut rows = 0u64;
        let mut line = String::new();
        loop {
            let msgs = tx
                .simple_query(&fetch)
                .await
                .map_err(|e| self.err("reading rows", e))?;
            let mut got = 0u64;
            for m in msgs {
                let SimpleQueryMessage::Row(r) = m else {
                    continue;
                };
                line.clear();
                line.push('{');
                for (i, (name, ty)) in cols.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    line.push_str(&serde_json::to_string(name).expect("a string serialises"));
                    line.push(':');
                    render_value(ty, r.get(i), &mut line);
                }
                line.push_str("}\n");
                out.write_all(line.as_bytes())
                    .map_err(|e| BackendError::io("the raw extract", e))?;
                got += 1;
            }
            rows += got;
            if got < self.fetch_rows {
                break;
            }
        }
        tx.commit()
            .await
            .map_err(|e| self.err("ending the read", e))?;
        Ok(rows)
    }
}

/// Whether an error the server sent is worth a retry: the connection was lost or shut down
/// (class 08, 57P01-57P03), the server ran short (class 53), or the transaction lost a race
/// (40001, 40P01). A refused statement (a missing table, a syntax error) is not.
fn transient(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

fn column_info(name: &str, ty: &Type) -> ColumnInfo {
    ColumnInfo {
        name: name.to_string(),
        type_name: ty.name().to_string(),
        integer: matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8),
    }
}

/// A planning session on one connection.
struct PgSession<'a> {
    source: &'a PostgresSource,
    client: Client,
}

#[async_trait::async_trait]
impl Session for PgSession<'_> {
    async fn columns(&mut self) -> Result<Vec<ColumnInfo>> {
        Ok(self
            .source
            .columns(&self.client)
            .await?
            .iter()
            .map(|(n, t)| column_info(n, t))
            .collect())
    }

    async fn first_row(&mut self, sql: &str, doing: &str) -> Result<Vec<Option<String>>> {
        for m in self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.source.err(doing, e))?
        {
            if let SimpleQueryMessage::Row(r) = m {
                return Ok((0..r.len()).map(|i| r.get(i).map(String::from)).collect());
            }
        }
        Ok(Vec::new())
    }

    /// A table's size over its rows, from `pg_class` (`None` for a query, or before the
    /// table's statistics were first gathered).
    async fn avg_row_bytes(&mut self) -> Result<Option<u64>> {
        let super::sql::Relation::Table(t) = &self.source.spec.relation else {
            return Ok(None);
        };
        let quoted: Vec<String> = t
            .split('.')
            .map(|p| self.source.spec.ident(p.trim()))
            .collect();
        let sql = format!(
            "SELECT CASE WHEN reltuples > 0 THEN CAST(pg_relation_size(oid) / reltuples AS BIGINT) END \
             FROM pg_class WHERE oid = {}::regclass",
            self.source.spec.literal(&quoted.join("."))
        );
        let row = self
            .first_row(&sql, "reading the table's statistics")
            .await?;
        Ok(row
            .into_iter()
            .next()
            .flatten()
            .and_then(|v| v.parse().ok()))
    }

    async fn first_column(&mut self, sql: &str, doing: &str) -> Result<Vec<String>> {
        let msgs = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| self.source.err(doing, e))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                _ => None,
            })
            .collect())
    }
}

/// One PostgreSQL value (its text form, `None` for NULL) as JSON.
pub(crate) fn render_value(ty: &Type, text: Option<&str>, out: &mut String) {
    let Some(t) = text else {
        out.push_str("null");
        return;
    };
    let quoted = |out: &mut String, s: &str| {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    };
    match *ty {
        Type::BOOL => out.push_str(if t == "t" { "true" } else { "false" }),
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => out.push_str(t),
        Type::FLOAT4 | Type::FLOAT8 if t.parse::<f64>().is_ok_and(f64::is_finite) => {
            out.push_str(t)
        }
        Type::JSON | Type::JSONB => out.push_str(t),
        Type::TIMESTAMPTZ => {
            let iso = t.replacen(' ', "T", 1);
            match iso.strip_suffix("+00") {
                Some(utc) => quoted(out, &format!("{utc}Z")),
                None => quoted(out, &iso),
            }
        }
        Type::TIMESTAMP => quoted(out, &t.replacen(' ', "T", 1)),
        // numeric (exact digits as a string, so no float is in between), date, text and the rest.
        _ => quoted(out, t),
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqlShard;
    use super::*;

    fn json(ty: Type, text: Option<&str>) -> String {
        let mut s = String::new();
        render_value(&ty, text, &mut s);
        s
    }

    #[test]
    fn values_are_written_as_json_the_declared_columns_read_faithfully() {
        assert_eq!(json(Type::BOOL, Some("t")), "true");
        assert_eq!(json(Type::BOOL, Some("f")), "false");
        assert_eq!(
            json(Type::INT8, Some("-9223372036854775808")),
            "-9223372036854775808"
        );
        assert_eq!(json(Type::FLOAT8, Some("0.1")), "0.1");
        assert_eq!(json(Type::FLOAT8, Some("NaN")), "\"NaN\"");
        assert_eq!(json(Type::FLOAT4, Some("-Infinity")), "\"-Infinity\"");
        assert_eq!(
            json(Type::NUMERIC, Some("12345678901234567890.123456")),
            "\"12345678901234567890.123456\"",
            "numeric keeps its digits"
        );
        assert_eq!(
            json(Type::JSONB, Some("{\"a\": [1, 2]}")),
            "{\"a\": [1, 2]}"
        );
        assert_eq!(
            json(Type::TIMESTAMPTZ, Some("2026-03-29 01:30:00.25+00")),
            "\"2026-03-29T01:30:00.25Z\""
        );
        assert_eq!(
            json(Type::TIMESTAMP, Some("2026-03-29 02:30:00")),
            "\"2026-03-29T02:30:00\""
        );
        assert_eq!(json(Type::DATE, Some("2026-12-01")), "\"2026-12-01\"");
        assert_eq!(
            json(Type::TEXT, Some("say \"hi\"\n")),
            "\"say \\\"hi\\\"\\n\""
        );
        assert_eq!(json(Type::TEXT, None), "null");
    }

    async fn seeded(name: &str) -> Option<(String, Client)> {
        let conn = crate::testkit::postgres()?;
        let conn = crate::testkit::postgres_schema(&conn, &crate::testkit::unique(name)).await;
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE orders (id BIGINT PRIMARY KEY, amount NUMERIC(12,2), paid BOOLEAN,
                   attrs JSONB, updated_at TIMESTAMPTZ, day DATE, note TEXT);
                 INSERT INTO orders SELECT g, g * 1.25, g % 2 = 0, jsonb_build_object('g', g),
                   TIMESTAMPTZ '2026-12-01 00:00:00+00' + g * INTERVAL '1 second',
                   DATE '2026-12-01', CASE WHEN g % 10 = 0 THEN NULL ELSE 'n' || g END
                 FROM generate_series(1, 1000) AS g;",
            )
            .await
            .unwrap();
        Some((conn, client))
    }

    fn orders(conn: &str, fetch_rows: u64) -> PostgresSource {
        let spec = SqlSpec {
            dialect: super::super::Dialect::Postgres,
            relation: super::super::Relation::Table("orders".into()),
            cursor: Some("updated_at".into()),
            key: Some("id".into()),
        };
        PostgresSource::new(spec, conn, fetch_rows).unwrap()
    }

    fn range(plan: &SourcePlan, s: &SqlShard) -> SqlRange {
        SqlRange {
            key_from: s.key_from.clone(),
            key_before: s.key_before.clone(),
            cursor_after: plan.after.clone(),
            cursor_upto: plan.high.clone(),
            raw_key: "raw".into(),
            rows: s.rows,
            planned_at_ms: 0,
            window: None,
        }
    }

    async fn read_all(src: &PostgresSource, plan: &SourcePlan) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for s in &plan.shards {
            let mut buf = Vec::new();
            src.extract(&range(plan, s), &mut buf).await.unwrap();
            out.extend(
                String::from_utf8(buf)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
        out
    }

    #[tokio::test]
    async fn a_table_is_planned_in_key_ranges_and_read_incrementally_after_its_watermark() {
        let Some((conn, client)) = seeded("pgsrc").await else {
            return;
        };
        let src = orders(&conn, 64);
        let plan = src.plan(None, 0, Some(300)).await.unwrap();
        assert_eq!(plan.rows, 1000);
        assert_eq!(plan.shards.len(), 4, "{plan:?}");
        assert_eq!(plan.high.as_deref(), Some("2026-12-01 00:16:40+00"));
        let rows = read_all(&src, &plan).await;
        assert_eq!(
            rows.len(),
            1000,
            "every row once, across cursor fetches of 64"
        );
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "key order");
        let r7 = &rows[6];
        assert_eq!(r7["amount"], "8.75");
        assert_eq!(r7["paid"], false);
        assert_eq!(r7["attrs"]["g"], 7);
        assert_eq!(r7["updated_at"], "2026-12-01T00:00:07Z");
        assert_eq!(r7["day"], "2026-12-01");
        assert!(rows[9]["note"].is_null());

        client
            .batch_execute(
                "UPDATE orders SET amount = 0, updated_at = TIMESTAMPTZ '2026-12-02 00:00:00+00' WHERE id IN (5, 500);
                 INSERT INTO orders VALUES (1001, 1, true, '{}', TIMESTAMPTZ '2026-12-02 00:00:01+00', NULL, NULL);",
            )
            .await
            .unwrap();
        let next = src.plan(plan.high.as_deref(), 0, Some(300)).await.unwrap();
        assert_eq!((next.rows, next.shards.len()), (3, 1), "{next:?}");
        let rows = read_all(&src, &next).await;
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, vec![5, 500, 1001]);
        let back = src
            .plan(next.high.as_deref(), 3600 * 24 + 1, None)
            .await
            .unwrap();
        assert_eq!(
            back.after.as_deref(),
            Some("2026-12-01 00:00:00+00"),
            "lookback"
        );
        assert_eq!(back.rows, 1001);
        let none = src.plan(next.high.as_deref(), 0, None).await.unwrap();
        assert_eq!((none.rows, none.shards.len(), none.high), (0, 0, None));
    }

    #[tokio::test]
    async fn a_tables_columns_and_a_querys_are_described_with_their_types() {
        let Some((conn, _client)) = seeded("pgsrc_cols").await else {
            return;
        };
        let cols = orders(&conn, 10).table_columns().await.unwrap();
        let want = [
            ("id", "bigint"),
            ("amount", "numeric(12,2)"),
            ("paid", "boolean"),
            ("attrs", "jsonb"),
            ("updated_at", "timestamp with time zone"),
            ("day", "date"),
            ("note", "text"),
        ];
        let got: Vec<(&str, &str)> = cols.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want);
        let mut spec = orders(&conn, 10).spec;
        spec.relation = super::super::Relation::Query(
            "SELECT id, amount * 2 AS doubled, now()::date AS d FROM orders".into(),
        );
        let q = PostgresSource::new(spec, &conn, 10)
            .unwrap()
            .table_columns()
            .await
            .unwrap();
        assert_eq!(q[0], ("id".to_string(), "bigint".to_string()));
        assert_eq!(q[2], ("d".to_string(), "date".to_string()));
    }

    /// The machine's PostgreSQL serves TLS with Debian's self-signed `localhost` certificate.
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

    #[tokio::test]
    async fn sslmode_require_reads_over_tls_verifying_the_certificate() {
        let Some((conn, _client)) = seeded("pgsrc_tls").await else {
            return;
        };
        if !std::path::Path::new(SNAKEOIL).is_file() {
            eprintln!("SKIPPED: no {SNAKEOIL}");
            return;
        }
        let tls = format!(
            "{} host=localhost sslmode=require",
            conn.replace("host=127.0.0.1", "")
        );
        let spec = orders(&conn, 10).spec;
        let src = PostgresSource::new(spec.clone(), &tls, 100)
            .unwrap()
            .with_tls_ca_file(Some(SNAKEOIL.into()));
        let plan = src.plan(None, 0, None).await.unwrap();
        assert_eq!(plan.rows, 1000);
        // Another CA: the server's certificate is not trusted.
        let bundle = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(bundle).is_file() {
            let other = PostgresSource::new(spec.clone(), &tls, 100)
                .unwrap()
                .with_tls_ca_file(Some(bundle.into()));
            let e = other.plan(None, 0, None).await.unwrap_err().to_string();
            assert!(
                e.contains("connecting over TLS") && e.contains("certificate"),
                "{e}"
            );
        }
        // The right CA but another name: the certificate is for localhost, not 127.0.0.1.
        let by_ip = format!("{conn} sslmode=require");
        let e = PostgresSource::new(spec, &by_ip, 100)
            .unwrap()
            .with_tls_ca_file(Some(SNAKEOIL.into()))
            .plan(None, 0, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_table_or_column_is_refused_naming_it_and_is_not_retried() {
        let Some((conn, _client)) = seeded("pgsrc_bad").await else {
            return;
        };
        let mut spec = orders(&conn, 10).spec;
        spec.cursor = Some("modified".into());
        let e = PostgresSource::new(spec.clone(), &conn, 10)
            .unwrap()
            .plan(None, 0, None)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("cursor_column \"modified\" is not a column"),
            "{e}"
        );
        assert!(!e.is_retryable());
        spec.relation = super::super::Relation::Table("nope".into());
        let e = PostgresSource::new(spec, &conn, 10)
            .unwrap()
            .plan(None, 0, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("\"nope\" does not exist"), "{e}");
        assert!(!e.is_retryable());
        let e = PostgresSource::new(orders(&conn, 1).spec, "host=127.0.0.1 port=1 user=x", 1)
            .unwrap()
            .plan(None, 0, None)
            .await
            .unwrap_err();
        assert!(
            e.is_retryable(),
            "a connection that cannot be made is retried: {e}"
        );
    }

    #[test]
    fn lost_connections_and_shutdowns_are_retried_and_refused_statements_are_not() {
        for code in ["08006", "57P01", "53300", "40001"] {
            assert!(transient(code), "{code}");
        }
        for code in ["42P01", "42703", "42601", "22P02"] {
            assert!(!transient(code), "{code}");
        }
    }

    /// Regression: a session ended by the server mid-shard (`pg_terminate_backend`, SQLSTATE
    /// 57P01) came back as a database error and failed the shard for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_dropped_mid_shard_fails_it_retryably() {
        let Some((conn, client)) = seeded("pgsrc_drop").await else {
            return;
        };
        client
            .batch_execute(
                "INSERT INTO orders SELECT g, 1, true, '{}', now(), NULL, NULL
                 FROM generate_series(1001, 200000) AS g;",
            )
            .await
            .unwrap();
        // Only this test's session is ended: tests running beside it fetch too.
        let app = crate::testkit::unique("pgsrc_drop");
        let src = orders(&format!("{conn} application_name={app}"), 100);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let killer = tokio::spawn(async move {
            tokio::task::spawn_blocking(move || rx.recv())
                .await
                .unwrap()
                .unwrap();
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE query LIKE 'FETCH FORWARD%' AND application_name = $1",
                    &[&app],
                )
                .await
                .unwrap();
            rows.len()
        });
        let plan = SourcePlan {
            after: None,
            high: None,
            watermark: None,
            shards: vec![SqlShard {
                key_from: None,
                key_before: None,
                rows: 0,
            }],
            rows: 0,
        };
        struct FirstRow(Option<std::sync::mpsc::Sender<()>>, usize);
        impl Write for FirstRow {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
                self.1 += 1;
                if self.1 < 300 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = FirstRow(Some(tx), 0);
        let got = src.extract(&range(&plan, &plan.shards[0]), &mut out).await;
        assert!(
            killer.await.unwrap() >= 1,
            "the shard's session was found and ended"
        );
        let e = got.expect_err("an ended session cannot finish the shard");
        assert!(
            e.is_retryable(),
            "a dropped connection retries the shard: {e}"
        );
    }
}
