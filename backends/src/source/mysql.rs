//! A MySQL or MariaDB table or query as a source, planned like any database source
//! ([`super::plan`]) and read shard by shard as a streamed result (the rows come off the socket
//! as they are read, as `mysql --quick` reads them), so a worker holds one row at a time.
//!
//! The session is set to UTC (`time_zone = '+00:00'`), so a `TIMESTAMP` reads in UTC. Values are
//! read in the text protocol and written as JSON the declared columns read faithfully: integers
//! and floats as numbers, `DECIMAL` as a string of its exact digits, `TINYINT(1)` and `BIT(1)`
//! as booleans, `JSON` nested, `TIMESTAMP` as RFC 3339 in UTC (`2026-12-01T10:00:00Z`),
//! `DATETIME` and `DATE` as ISO text without a zone; anything else as its text.
//!
//! The connection string is a URL: `mysql://user:password@host:3306/database`; with
//! `?require_ssl=true` the connection is TLS (rustls), verified against `tls_ca_file` or the
//! Mozilla roots built in.

use std::io::Write;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Opts, OptsBuilder, Row, SslOpts, Value};
use protocol::SqlRange;

use super::plan::{ColumnInfo, Session, check_columns};
use super::sql::{Relation, SqlSpec};
use super::{SourcePlan, SqlSource};
use crate::{BackendError, Result};

/// A MySQL or MariaDB source.
pub struct MysqlSource {
    spec: SqlSpec,
    opts: Opts,
    describe: String,
    tls_ca_file: Option<std::path::PathBuf>,
}

impl MysqlSource {
    /// `conn`: a `mysql://` URL (read from the pipeline's `connection_env`).
    pub fn new(spec: SqlSpec, conn: &str) -> Result<Self> {
        let opts = Opts::from_url(conn).map_err(|e| BackendError::Source {
            source_name: "mysql".into(),
            detail: format!(
                "invalid MySQL connection URL (mysql://user:password@host:3306/db): {e}"
            ),
            retryable: false,
        })?;
        let describe = format!(
            "mysql://{}@{}:{}/{}",
            opts.user().unwrap_or(""),
            opts.ip_or_hostname(),
            opts.tcp_port(),
            opts.db_name().unwrap_or("")
        );
        Ok(MysqlSource {
            spec,
            opts,
            describe,
            tls_ca_file: None,
        })
    }

    /// Trusts the certificates of this PEM file for TLS (`require_ssl=true`) instead of the
    /// built-in roots.
    pub fn with_tls_ca_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.tls_ca_file = path;
        self
    }

    fn err(&self, doing: &str, e: mysql_async::Error) -> BackendError {
        // A statement the server refused is not retried; a connection that failed or dropped is.
        let retryable = !matches!(e, mysql_async::Error::Server(_));
        let detail = match &e {
            mysql_async::Error::Server(s) => format!("{doing}: {} (error {})", s.message, s.code),
            other => format!("{doing}: {other}"),
        };
        BackendError::Source {
            source_name: self.describe.clone(),
            detail,
            retryable,
        }
    }

    async fn connect(&self) -> Result<Conn> {
        // mysql_async builds its TLS config from the process's default provider.
        crate::tls::install_process_default();
        let mut opts = OptsBuilder::from_opts(self.opts.clone());
        if let Some(ca) = &self.tls_ca_file {
            let ssl = self
                .opts
                .ssl_opts()
                .cloned()
                .unwrap_or_else(SslOpts::default);
            opts = opts.ssl_opts(ssl.with_root_certs(vec![ca.clone().into()]));
        }
        let mut conn = Conn::new(opts)
            .await
            .map_err(|e| self.err("connecting", e))?;
        conn.query_drop("SET time_zone = '+00:00'")
            .await
            .map_err(|e| self.err("setting up the session", e))?;
        Ok(conn)
    }

    /// The relation's result columns (refusing a cursor or key column it lacks).
    async fn columns(&self, conn: &mut Conn) -> Result<Vec<Column>> {
        let what = match &self.spec.relation {
            Relation::Table(t) => format!("reading table {t}"),
            Relation::Query(_) => "preparing the query".to_string(),
        };
        let result = conn
            .query_iter(self.spec.describe_query())
            .await
            .map_err(|e| self.err(&what, e))?;
        let cols: Vec<Column> = result.columns_ref().to_vec();
        result.drop_result().await.map_err(|e| self.err(&what, e))?;
        let infos: Vec<ColumnInfo> = cols.iter().map(column_info).collect();
        check_columns(&self.spec, &infos, &self.describe, &what)?;
        Ok(cols)
    }
}

#[async_trait::async_trait]
impl SqlSource for MysqlSource {
    async fn plan(
        &self,
        watermark: Option<&str>,
        lookback_secs: u64,
        shard_rows: Option<u64>,
    ) -> Result<SourcePlan> {
        let mut session = MySession {
            source: self,
            conn: self.connect().await?,
        };
        let plan = super::plan::plan(
            &self.spec,
            &mut session,
            watermark,
            lookback_secs,
            shard_rows,
        )
        .await;
        let _ = session.conn.disconnect().await;
        plan
    }

    async fn plan_window(
        &self,
        from: &str,
        to: &str,
        shard_rows: Option<u64>,
    ) -> Result<(SourcePlan, Option<u64>)> {
        let mut session = MySession {
            source: self,
            conn: self.connect().await?,
        };
        let plan = super::plan::plan_window(&self.spec, &mut session, from, to, shard_rows).await;
        let bytes = match &plan {
            Ok(_) => session.avg_row_bytes().await?,
            Err(_) => None,
        };
        let _ = session.conn.disconnect().await;
        Ok((plan?, bytes))
    }

    async fn extract(&self, range: &SqlRange, out: &mut (dyn Write + Send)) -> Result<u64> {
        let mut conn = self.connect().await?;
        let cols = self.columns(&mut conn).await?;
        let kinds: Vec<Kind> = cols.iter().map(Kind::of).collect();
        let names: Vec<String> = cols
            .iter()
            .map(|c| serde_json::to_string(&c.name_str()).expect("a string serialises"))
            .collect();
        let mut result = conn
            .query_iter(self.spec.shard_query(range))
            .await
            .map_err(|e| self.err("reading rows", e))?;
        let mut rows = 0u64;
        let mut line = String::new();
        while let Some(row) = result
            .next()
            .await
            .map_err(|e| self.err("reading rows", e))?
        {
            render_row(&row, &names, &kinds, &mut line);
            out.write_all(line.as_bytes())
                .map_err(|e| BackendError::io("the raw extract", e))?;
            rows += 1;
        }
        drop(result);
        let _ = conn.disconnect().await;
        Ok(rows)
    }

    /// Each column with its type as `information_schema` writes it (`decimal(12,2)`,
    /// `tinyint(1)`, `bigint(20) unsigned`); a query's from its result's metadata.
    async fn table_columns(&self) -> Result<Vec<(String, String)>> {
        let mut conn = self.connect().await?;
        let cols = self.columns(&mut conn).await?;
        let out = match &self.spec.relation {
            Relation::Table(t) => {
                let (schema, table) = match t.split_once('.') {
                    Some((s, t)) => (self.spec.literal(s.trim()), self.spec.literal(t.trim())),
                    None => ("DATABASE()".to_string(), self.spec.literal(t.trim())),
                };
                let sql = format!(
                    "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
                     WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {table} ORDER BY ORDINAL_POSITION"
                );
                let rows: Vec<(String, String)> = conn
                    .query(sql)
                    .await
                    .map_err(|e| self.err("reading the columns", e))?;
                rows
            }
            Relation::Query(_) => cols
                .iter()
                .map(|c| (c.name_str().to_string(), metadata_type(c)))
                .collect(),
        };
        let _ = conn.disconnect().await;
        Ok(out)
    }
}

/// A planning session on one connection.
struct MySession<'a> {
    source: &'a MysqlSource,
    conn: Conn,
}

#[async_trait::async_trait]
impl Session for MySession<'_> {
    async fn columns(&mut self) -> Result<Vec<ColumnInfo>> {
        let cols = self.source.columns(&mut self.conn).await?;
        Ok(cols.iter().map(column_info).collect())
    }

    async fn first_row(&mut self, sql: &str, doing: &str) -> Result<Vec<Option<String>>> {
        let row: Option<Row> = self
            .conn
            .query_first(sql)
            .await
            .map_err(|e| self.source.err(doing, e))?;
        Ok(row
            .map(|r| (0..r.len()).map(|i| text(r.as_ref(i))).collect())
            .unwrap_or_default())
    }

    /// `AVG_ROW_LENGTH` of `information_schema.TABLES` (`None` for a query).
    async fn avg_row_bytes(&mut self) -> Result<Option<u64>> {
        let Relation::Table(t) = &self.source.spec.relation else {
            return Ok(None);
        };
        let spec = &self.source.spec;
        let (schema, table) = match t.split_once('.') {
            Some((s, t)) => (spec.literal(s.trim()), spec.literal(t.trim())),
            None => ("DATABASE()".to_string(), spec.literal(t.trim())),
        };
        let sql = format!(
            "SELECT AVG_ROW_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = {table}"
        );
        let row = self
            .first_row(&sql, "reading the table's statistics")
            .await?;
        Ok(row
            .into_iter()
            .next()
            .flatten()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0))
    }

    async fn first_column(&mut self, sql: &str, doing: &str) -> Result<Vec<String>> {
        let rows: Vec<Row> = self
            .conn
            .query(sql)
            .await
            .map_err(|e| self.source.err(doing, e))?;
        Ok(rows.iter().filter_map(|r| text(r.as_ref(0))).collect())
    }
}

/// A value of the text protocol as text.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

fn column_info(c: &Column) -> ColumnInfo {
    use ColumnType::*;
    let ty = c.column_type();
    ColumnInfo {
        name: c.name_str().to_string(),
        type_name: metadata_type(c),
        integer: matches!(
            ty,
            MYSQL_TYPE_TINY
                | MYSQL_TYPE_SHORT
                | MYSQL_TYPE_INT24
                | MYSQL_TYPE_LONG
                | MYSQL_TYPE_LONGLONG
        ) && !(ty == MYSQL_TYPE_LONGLONG
            && c.flags().contains(ColumnFlags::UNSIGNED_FLAG)),
    }
}

/// A result column's type as a MySQL type name, from the protocol's metadata (a query has no
/// `information_schema` row): `decimal(12,2)`, `tinyint(1)`, `datetime`.
fn metadata_type(c: &Column) -> String {
    use ColumnType::*;
    let unsigned = if c.flags().contains(ColumnFlags::UNSIGNED_FLAG) {
        " unsigned"
    } else {
        ""
    };
    let base = match c.column_type() {
        MYSQL_TYPE_TINY if c.column_length() == 1 => "tinyint(1)".to_string(),
        MYSQL_TYPE_TINY => "tinyint".into(),
        MYSQL_TYPE_SHORT => "smallint".into(),
        MYSQL_TYPE_INT24 => "mediumint".into(),
        MYSQL_TYPE_LONG => "int".into(),
        MYSQL_TYPE_LONGLONG => "bigint".into(),
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
            // The display length counts the digits, a sign unless unsigned, and a point when
            // there is a scale.
            let scale = u32::from(c.decimals());
            let sign = u32::from(unsigned.is_empty());
            let point = u32::from(scale > 0);
            let precision = c.column_length().saturating_sub(sign + point).max(1);
            return format!("decimal({precision},{scale})");
        }
        MYSQL_TYPE_FLOAT => "float".into(),
        MYSQL_TYPE_DOUBLE => "double".into(),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date".into(),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "datetime".into(),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "timestamp".into(),
        MYSQL_TYPE_JSON => "json".into(),
        MYSQL_TYPE_BIT if c.column_length() == 1 => "bit(1)".into(),
        MYSQL_TYPE_YEAR => "year".into(),
        _ => "text".into(),
    };
    format!("{base}{unsigned}")
}

/// How a column's text is written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Float,
    /// `TINYINT(1)`: MySQL's boolean (any value other than 0 is true).
    Bool,
    /// `BIT(1)`: one byte, 0 or 1.
    Bit,
    Json,
    /// `TIMESTAMP`: read in the session's zone, UTC.
    Utc,
    /// `DATETIME`: no zone.
    Naive,
    /// Decimals (exact digits), dates, text and the rest.
    Text,
}

impl Kind {
    fn of(c: &Column) -> Kind {
        use ColumnType::*;
        match c.column_type() {
            MYSQL_TYPE_TINY if c.column_length() == 1 => Kind::Bool,
            MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
            | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR => Kind::Integer,
            MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => Kind::Float,
            MYSQL_TYPE_BIT if c.column_length() == 1 => Kind::Bit,
            MYSQL_TYPE_JSON => Kind::Json,
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Utc,
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::Naive,
            _ => Kind::Text,
        }
    }
}

/// One row as an NDJSON line (with its newline) in `line`.
fn render_row(row: &Row, names: &[String], kinds: &[Kind], line: &mut String) {
    line.clear();
    line.push('{');
    for (i, (name, kind)) in names.iter().zip(kinds).enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(name);
        line.push(':');
        let raw = match row.as_ref(i) {
            Some(Value::Bytes(b)) => Some(b.as_slice()),
            _ => None,
        };
        render_value(*kind, raw, line);
    }
    line.push_str("}\n");
}

/// One value of the text protocol (`None` for NULL) as JSON.
fn render_value(kind: Kind, raw: Option<&[u8]>, out: &mut String) {
    let Some(raw) = raw else {
        out.push_str("null");
        return;
    };
    let quoted = |out: &mut String, s: &str| {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    };
    let t = String::from_utf8_lossy(raw);
    match kind {
        Kind::Integer if t.parse::<i128>().is_ok() => out.push_str(&t),
        Kind::Float if t.parse::<f64>().is_ok_and(f64::is_finite) => out.push_str(&t),
        Kind::Bool => out.push_str(if t.trim() == "0" { "false" } else { "true" }),
        Kind::Bit => out.push_str(if raw.iter().all(|b| *b == 0) {
            "false"
        } else {
            "true"
        }),
        Kind::Json if serde_json::from_str::<serde_json::Value>(&t).is_ok() => out.push_str(&t),
        Kind::Utc => quoted(out, &format!("{}Z", t.replacen(' ', "T", 1))),
        Kind::Naive => quoted(out, &t.replacen(' ', "T", 1)),
        _ => quoted(out, &t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(kind: Kind, raw: Option<&[u8]>) -> String {
        let mut s = String::new();
        render_value(kind, raw, &mut s);
        s
    }

    #[test]
    fn values_are_written_as_json_the_declared_columns_read_faithfully() {
        assert_eq!(
            json(Kind::Integer, Some(b"-9223372036854775808")),
            "-9223372036854775808"
        );
        assert_eq!(
            json(Kind::Integer, Some(b"18446744073709551615")),
            "18446744073709551615"
        );
        assert_eq!(json(Kind::Float, Some(b"0.1")), "0.1");
        assert_eq!(json(Kind::Bool, Some(b"1")), "true");
        assert_eq!(json(Kind::Bool, Some(b"0")), "false");
        assert_eq!(
            json(Kind::Bool, Some(b"7")),
            "true",
            "MySQL: non-zero is true"
        );
        assert_eq!(json(Kind::Bit, Some(&[1u8])), "true");
        assert_eq!(json(Kind::Bit, Some(&[0u8])), "false");
        assert_eq!(
            json(Kind::Text, Some(b"12345678901234567890.123456")),
            "\"12345678901234567890.123456\"",
            "decimals keep their digits"
        );
        assert_eq!(
            json(Kind::Json, Some(b"{\"a\": [1, 2]}")),
            "{\"a\": [1, 2]}"
        );
        assert_eq!(
            json(Kind::Json, Some(b"{oops")),
            "\"{oops\"",
            "not JSON: its text"
        );
        assert_eq!(
            json(Kind::Utc, Some(b"2026-03-29 01:30:00.250000")),
            "\"2026-03-29T01:30:00.250000Z\""
        );
        assert_eq!(
            json(Kind::Naive, Some(b"2026-03-29 02:30:00")),
            "\"2026-03-29T02:30:00\""
        );
        assert_eq!(json(Kind::Text, Some(b"2026-12-01")), "\"2026-12-01\"");
        assert_eq!(json(Kind::Text, None), "null");
        assert_eq!(
            json(Kind::Text, Some(b"say \"hi\"\n")),
            "\"say \\\"hi\\\"\\n\""
        );
    }

    #[test]
    fn a_bad_url_is_refused_and_the_source_is_named_without_its_password() {
        let spec = SqlSpec {
            dialect: super::super::Dialect::Mysql,
            relation: Relation::Table("orders".into()),
            cursor: None,
            key: None,
        };
        let e = MysqlSource::new(spec.clone(), "postgres://x@h/db")
            .err()
            .unwrap();
        assert!(e.to_string().contains("mysql://user:password@host"), "{e}");
        let s = MysqlSource::new(spec, "mysql://app:hush@db.internal:3307/shop").unwrap();
        assert_eq!(s.describe, "mysql://app@db.internal:3307/shop");
    }

    async fn seeded(name: &str) -> Option<String> {
        let url = crate::testkit::mysql()?;
        let url = crate::testkit::mysql_database(&url, &crate::testkit::unique(name)).await;
        let mut conn = Conn::from_url(url.as_str()).await.unwrap();
        conn.query_drop(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, code VARCHAR(8) NOT NULL, amount DECIMAL(12,2),
               paid TINYINT(1), flag BIT(1), big BIGINT UNSIGNED, attrs JSON,
               updated_at TIMESTAMP(6) NULL, created DATETIME, day DATE, note TEXT);
             SET time_zone = '+00:00';
             INSERT INTO orders
               WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000)
               SELECT n, CONCAT('k', LPAD(n, 5, '0')), n * 1.25, n % 2 = 0, n % 2, 18446744073709551615,
                 JSON_OBJECT('g', n), TIMESTAMP '2026-12-01 00:00:00' + INTERVAL n SECOND,
                 CAST('2026-03-29 02:30:00' AS DATETIME), DATE '2026-12-01', IF(n % 10 = 0, NULL, CONCAT('n', n))
               FROM g;",
        )
        .await
        .unwrap();
        let _ = conn.disconnect().await;
        Some(url)
    }

    fn orders(url: &str, key: &str) -> MysqlSource {
        let spec = SqlSpec {
            dialect: super::super::Dialect::Mysql,
            relation: Relation::Table("orders".into()),
            cursor: Some("updated_at".into()),
            key: Some(key.into()),
        };
        MysqlSource::new(spec, url).unwrap()
    }

    async fn read_all(src: &MysqlSource, plan: &SourcePlan) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for s in &plan.shards {
            let range = SqlRange {
                key_from: s.key_from.clone(),
                key_before: s.key_before.clone(),
                cursor_after: plan.after.clone(),
                cursor_upto: plan.high.clone(),
                raw_key: "raw".into(),
                rows: s.rows,
                planned_at_ms: 0,
                window: None,
            };
            let mut buf = Vec::new();
            src.extract(&range, &mut buf).await.unwrap();
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
        let Some(url) = seeded("mysrc").await else {
            return;
        };
        let src = orders(&url, "id");
        let plan = src.plan(None, 0, Some(300)).await.unwrap();
        assert_eq!((plan.rows, plan.shards.len()), (1000, 4), "{plan:?}");
        assert_eq!(plan.high.as_deref(), Some("2026-12-01 00:16:40.000000"));
        let rows = read_all(&src, &plan).await;
        assert_eq!(rows.len(), 1000, "every row once");
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "key order");
        let r7 = &rows[6];
        assert_eq!(r7["amount"], "8.75", "DECIMAL keeps its digits");
        assert_eq!(
            (r7["paid"].clone(), r7["flag"].clone()),
            (serde_json::json!(false), serde_json::json!(true))
        );
        assert_eq!(r7["big"], serde_json::json!(18446744073709551615u64));
        assert_eq!(
            r7["updated_at"], "2026-12-01T00:00:07.000000Z",
            "TIMESTAMP in UTC"
        );
        assert_eq!(
            r7["created"], "2026-03-29T02:30:00",
            "DATETIME without a zone"
        );
        assert_eq!(r7["day"], "2026-12-01");
        assert!(rows[9]["note"].is_null());
        // MariaDB's JSON is a longtext: its text. MySQL's: nested.
        assert!(
            r7["attrs"] == serde_json::json!({"g": 7}) || r7["attrs"] == "{\"g\": 7}",
            "{}",
            r7["attrs"]
        );

        let mut conn = Conn::from_url(url.as_str()).await.unwrap();
        conn.query_drop(
            "SET time_zone = '+00:00';
             UPDATE orders SET amount = 0, updated_at = TIMESTAMP '2026-12-02 00:00:00' WHERE id IN (5, 500);
             INSERT INTO orders (id, code, updated_at) VALUES (1001, 'k01001', TIMESTAMP '2026-12-02 00:00:01');",
        )
        .await
        .unwrap();
        let next = src.plan(plan.high.as_deref(), 0, Some(300)).await.unwrap();
        assert_eq!((next.rows, next.shards.len()), (3, 1), "{next:?}");
        let ids: Vec<i64> = read_all(&src, &next)
            .await
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![5, 500, 1001]);
        let back = src
            .plan(next.high.as_deref(), 3600 * 24 + 1, None)
            .await
            .unwrap();
        assert_eq!(
            back.after.as_deref(),
            Some("2026-12-01 00:00:00.000000"),
            "lookback"
        );
        assert_eq!(back.rows, 1001);
        let none = src.plan(next.high.as_deref(), 0, None).await.unwrap();
        assert_eq!((none.rows, none.shards.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_backfill_window_counts_its_rows_and_the_table_knows_its_row_size() {
        let Some(url) = seeded("mysrc_window").await else {
            return;
        };
        let src = orders(&url, "id");
        let (plan, avg) = src
            .plan_window("2026-12-01 00:00:00", "2026-12-01 00:10:00", Some(250))
            .await
            .unwrap();
        assert_eq!((plan.rows, plan.shards.len()), (599, 3), "{plan:?}");
        assert_eq!((plan.after, plan.watermark), (None, None));
        assert!(avg.is_some_and(|b| b > 10), "{avg:?}");
        let range = SqlRange {
            key_from: plan.shards[0].key_from.clone(),
            key_before: plan.shards[0].key_before.clone(),
            cursor_after: None,
            cursor_upto: None,
            raw_key: "raw".into(),
            rows: 0,
            planned_at_ms: 0,
            window: Some(("2026-12-01 00:00:00".into(), "2026-12-01 00:10:00".into())),
        };
        let mut buf = Vec::new();
        let n = src.extract(&range, &mut buf).await.unwrap();
        assert!(n > 0 && n <= 250, "{n}");
        let none = src
            .plan_window("2027-01-01 00:00:00", "2027-01-02 00:00:00", Some(250))
            .await
            .unwrap()
            .0;
        assert_eq!((none.rows, none.shards.len()), (0, 0));
    }

    #[tokio::test]
    async fn a_text_key_is_split_where_the_database_finds_boundaries() {
        let Some(url) = seeded("mysrc_text").await else {
            return;
        };
        let src = orders(&url, "code");
        let plan = src.plan(None, 0, Some(400)).await.unwrap();
        assert_eq!(plan.shards.len(), 3, "{plan:?}");
        assert_eq!(plan.shards[1].key_from.as_deref(), Some("k00401"));
        assert_eq!(read_all(&src, &plan).await.len(), 1000);
    }

    #[tokio::test]
    async fn columns_are_described_with_their_types_and_missing_ones_are_refused() {
        let Some(url) = seeded("mysrc_cols").await else {
            return;
        };
        let cols = orders(&url, "id").table_columns().await.unwrap();
        let types: Vec<&str> = cols.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            &types[..6],
            [
                "bigint(20)",
                "varchar(8)",
                "decimal(12,2)",
                "tinyint(1)",
                "bit(1)",
                "bigint(20) unsigned"
            ]
        );
        let mut spec = orders(&url, "id").spec;
        spec.relation =
            Relation::Query("SELECT id, amount * 2 AS doubled, paid FROM orders".into());
        spec.cursor = None;
        let q = MysqlSource::new(spec.clone(), &url)
            .unwrap()
            .table_columns()
            .await
            .unwrap();
        assert_eq!(q[0], ("id".to_string(), "bigint".to_string()));
        assert!(q[1].1.starts_with("decimal("), "{q:?}");
        spec.relation = Relation::Table("orders".into());
        spec.cursor = Some("modified".into());
        let e = MysqlSource::new(spec.clone(), &url)
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
        spec.relation = Relation::Table("nope".into());
        let e = MysqlSource::new(spec, &url)
            .unwrap()
            .plan(None, 0, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nope") && !e.is_retryable(), "{e}");
        let e = MysqlSource::new(orders(&url, "id").spec, "mysql://root@127.0.0.1:1/x")
            .unwrap()
            .plan(None, 0, None)
            .await
            .unwrap_err();
        assert!(
            e.is_retryable(),
            "a connection that cannot be made is retried: {e}"
        );
    }

    /// A writer that waits a little per row after its first one, and says when that came.
    struct SlowOut {
        first: Option<std::sync::mpsc::Sender<()>>,
        rows: usize,
    }

    impl Write for SlowOut {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(tx) = self.first.take() {
                let _ = tx.send(());
            }
            self.rows += 1;
            if self.rows < 200 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_dropped_mid_shard_fails_it_retryably() {
        let Some(url) = crate::testkit::mysql() else {
            return;
        };
        let url = crate::testkit::mysql_database(&url, &crate::testkit::unique("mysrc_drop")).await;
        let mut admin = Conn::from_url(url.as_str()).await.unwrap();
        admin
            .query_drop(
                "CREATE TABLE big (id BIGINT PRIMARY KEY, pad VARCHAR(100));
                 SET max_recursive_iterations = 1000000;
                 INSERT INTO big WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200000)
                   SELECT n, REPEAT('x', 100) FROM g;",
            )
            .await
            .unwrap();
        let spec = SqlSpec {
            dialect: super::super::Dialect::Mysql,
            relation: Relation::Table("big".into()),
            cursor: None,
            key: Some("id".into()),
        };
        let src = MysqlSource::new(spec, &url).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let killer = tokio::spawn(async move {
            tokio::task::spawn_blocking(move || rx.recv())
                .await
                .unwrap()
                .unwrap();
            let ids: Vec<u64> = admin
                .query("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT * FROM `big`%'")
                .await
                .unwrap();
            for id in &ids {
                admin
                    .query_drop(format!("KILL CONNECTION {id}"))
                    .await
                    .unwrap();
            }
            ids.len()
        });
        let range = SqlRange {
            key_from: None,
            key_before: None,
            cursor_after: None,
            cursor_upto: None,
            raw_key: "raw".into(),
            rows: 0,
            planned_at_ms: 0,
            window: None,
        };
        let mut out = SlowOut {
            first: Some(tx),
            rows: 0,
        };
        let got = src.extract(&range, &mut out).await;
        assert_eq!(
            killer.await.unwrap(),
            1,
            "the shard's connection was found and killed"
        );
        let e = got.expect_err("a killed connection cannot finish the shard");
        assert!(
            e.is_retryable(),
            "a dropped connection retries the shard: {e}"
        );
        assert!(out.rows < 200_000, "{} rows", out.rows);
    }
}
