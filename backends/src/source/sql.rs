//! The SQL a database source sends, per dialect: the relation read (a table or a query as a
//! subquery), the cursor and key filters of a shard, the planning statistics and the key
//! boundaries of shards. Pure text building, pinned by golden tests; bounds are always written
//! as quoted literals, which both PostgreSQL and MySQL compare in the column's own type.

use protocol::SqlRange;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

/// What a database source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// `table` or `schema.table`.
    Table(String),
    /// A `SELECT …`, read as a subquery.
    Query(String),
}

/// One database source: its relation, its cursor and key columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSpec {
    pub dialect: Dialect,
    pub relation: Relation,
    pub cursor: Option<String>,
    pub key: Option<String>,
}

/// The alias of the relation in every statement.
const SRC: &str = "tributary_src";

impl SqlSpec {
    pub fn ident(&self, name: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// A string literal (MySQL also escapes backslashes, as its default SQL mode reads them).
    pub fn literal(&self, value: &str) -> String {
        let v = value.replace('\'', "''");
        match self.dialect {
            Dialect::Postgres => format!("'{v}'"),
            Dialect::Mysql => format!("'{}'", v.replace('\\', "\\\\")),
        }
    }

    /// `expr` as text, the way the dialect prints the value.
    fn as_text(&self, expr: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST({expr} AS TEXT)"),
            Dialect::Mysql => format!("CAST({expr} AS CHAR)"),
        }
    }

    /// `FROM … AS tributary_src`.
    pub fn from(&self) -> String {
        match &self.relation {
            Relation::Table(t) => {
                let parts: Vec<String> = t.split('.').map(|p| self.ident(p.trim())).collect();
                format!("FROM {} AS {SRC}", parts.join("."))
            }
            Relation::Query(q) => format!("FROM ({}) AS {SRC}", q.trim().trim_end_matches(';')),
        }
    }

    /// The conditions on the cursor: after the watermark, at most the high mark. A first run
    /// (no watermark) also takes the rows whose cursor is NULL.
    fn cursor_conditions(&self, after: Option<&str>, upto: Option<&str>) -> Vec<String> {
        let Some(c) = &self.cursor else {
            return Vec::new();
        };
        let c = self.ident(c);
        match (after, upto) {
            (Some(a), Some(u)) => vec![
                format!("{c} > {}", self.literal(a)),
                format!("{c} <= {}", self.literal(u)),
            ],
            (Some(a), None) => vec![format!("{c} > {}", self.literal(a))],
            (None, Some(u)) => vec![format!("({c} <= {} OR {c} IS NULL)", self.literal(u))],
            (None, None) => Vec::new(),
        }
    }

    /// A backfill window over the cursor: `from <= cursor < to`.
    fn window_conditions(&self, from: &str, to: &str) -> Vec<String> {
        let Some(c) = &self.cursor else {
            return Vec::new();
        };
        let c = self.ident(c);
        vec![
            format!("{c} >= {}", self.literal(from)),
            format!("{c} < {}", self.literal(to)),
        ]
    }

    /// The cursor conditions of the rows a range reads: its window, or after its watermark up
    /// to its high mark.
    fn range_conditions(&self, r: &SqlRange) -> Vec<String> {
        match &r.window {
            Some((from, to)) => self.window_conditions(from, to),
            None => self.cursor_conditions(r.cursor_after.as_deref(), r.cursor_upto.as_deref()),
        }
    }

    fn key_conditions(&self, from: Option<&str>, before: Option<&str>) -> Vec<String> {
        let Some(k) = &self.key else {
            return Vec::new();
        };
        let k = self.ident(k);
        let mut out = Vec::new();
        if let Some(f) = from {
            out.push(format!("{k} >= {}", self.literal(f)));
        }
        if let Some(b) = before {
            out.push(format!("{k} < {}", self.literal(b)));
        }
        out
    }

    fn where_of(conditions: Vec<String>) -> String {
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }

    /// The rows of one shard, in key order when there is a key.
    pub fn shard_query(&self, r: &SqlRange) -> String {
        let mut conds = self.range_conditions(r);
        conds.extend(self.key_conditions(r.key_from.as_deref(), r.key_before.as_deref()));
        let order = match &self.key {
            Some(k) => format!(" ORDER BY {}", self.ident(k)),
            None => String::new(),
        };
        format!("SELECT * {}{}{order}", self.from(), Self::where_of(conds))
    }

    /// The result columns and their types, without reading a row.
    pub fn describe_query(&self) -> String {
        format!("SELECT * {} WHERE 1 = 0", self.from())
    }

    /// What planning needs of the rows after the watermark: their count, the key's min and
    /// max, and the cursor's max (the high mark), each as text (NULL when absent).
    pub fn stats_query(&self, after: Option<&str>) -> String {
        self.stats_query_where(self.cursor_conditions(after, None))
    }

    /// [`SqlSpec::stats_query`] of the rows in a backfill window.
    pub fn window_stats_query(&self, from: &str, to: &str) -> String {
        self.stats_query_where(self.window_conditions(from, to))
    }

    fn stats_query_where(&self, conds: Vec<String>) -> String {
        let null = "NULL".to_string();
        let (kmin, kmax) = match &self.key {
            Some(k) => {
                let k = self.ident(k);
                (
                    self.as_text(&format!("min({k})")),
                    self.as_text(&format!("max({k})")),
                )
            }
            None => (null.clone(), null.clone()),
        };
        let cmax = match &self.cursor {
            Some(c) => self.as_text(&format!("max({})", self.ident(c))),
            None => null,
        };
        format!(
            "SELECT count(*), {kmin}, {kmax}, {cmax} {}{}",
            self.from(),
            Self::where_of(conds)
        )
    }

    /// The first key of every `shard_rows` rows in key order (for keys that are not integers,
    /// whose ranges cannot be computed from min and max).
    pub fn boundaries_query(
        &self,
        after: Option<&str>,
        upto: Option<&str>,
        shard_rows: u64,
    ) -> Option<String> {
        self.boundaries_query_where(self.cursor_conditions(after, upto), shard_rows)
    }

    /// [`SqlSpec::boundaries_query`] of the rows in a backfill window.
    pub fn window_boundaries_query(&self, from: &str, to: &str, shard_rows: u64) -> Option<String> {
        self.boundaries_query_where(self.window_conditions(from, to), shard_rows)
    }

    fn boundaries_query_where(&self, conds: Vec<String>, shard_rows: u64) -> Option<String> {
        let k = self.ident(self.key.as_ref()?);
        Some(format!(
            "SELECT {} FROM (SELECT {k} AS tributary_key, row_number() OVER (ORDER BY {k}) AS tributary_rn {}{}) AS tributary_b WHERE MOD(tributary_rn - 1, {shard_rows}) = 0 AND tributary_rn > 1 ORDER BY tributary_rn",
            self.as_text("tributary_key"),
            self.from(),
            Self::where_of(conds)
        ))
    }

    /// The later of two cursor values, in the cursor's type (so a lookback never moves a
    /// watermark back).
    pub fn later_query(&self, a: &str, b: &str, cursor_type: &str) -> String {
        let (a, b) = (self.literal(a), self.literal(b));
        match self.dialect {
            Dialect::Postgres => format!(
                "SELECT CASE WHEN CAST({a} AS {cursor_type}) >= CAST({b} AS {cursor_type}) THEN {a} ELSE {b} END"
            ),
            Dialect::Mysql => format!("SELECT CASE WHEN {a} >= {b} THEN {a} ELSE {b} END"),
        }
    }

    /// The watermark moved back by a lookback, as the cursor's own type prints it.
    pub fn lookback_query(&self, watermark: &str, cursor_type: &str, seconds: u64) -> String {
        match self.dialect {
            Dialect::Postgres => format!(
                "SELECT CAST(CAST({} AS {cursor_type}) - INTERVAL '{seconds} seconds' AS TEXT)",
                self.literal(watermark)
            ),
            Dialect::Mysql => format!(
                "SELECT CAST(TIMESTAMPADD(SECOND, -{seconds}, {}) AS CHAR)",
                self.literal(watermark)
            ),
        }
    }
}

/// Key ranges of about `shard_rows` rows for an integer key from its min, max and count:
/// boundaries (each range's first key) after the first range, which starts unbounded.
pub fn integer_boundaries(min: i64, max: i64, count: u64, shard_rows: u64) -> Vec<i64> {
    let shards = count.div_ceil(shard_rows.max(1)).max(1) as i128;
    let span = i128::from(max) - i128::from(min) + 1;
    if span <= 1 || shards <= 1 {
        return Vec::new();
    }
    let width = (span + shards - 1) / shards;
    (1..shards)
        .map(|i| i128::from(min) + i * width)
        .take_while(|b| *b <= i128::from(max))
        .map(|b| b as i64)
        .collect()
}

/// Consecutive ranges from boundaries: `(None, b1), (b1, b2), …, (bn, None)`.
pub fn ranges(boundaries: &[String]) -> Vec<(Option<String>, Option<String>)> {
    let mut out = Vec::with_capacity(boundaries.len() + 1);
    let mut from = None;
    for b in boundaries {
        out.push((from.take(), Some(b.clone())));
        from = Some(b.clone());
    }
    out.push((from, None));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg() -> SqlSpec {
        SqlSpec {
            dialect: Dialect::Postgres,
            relation: Relation::Table("shop.orders".into()),
            cursor: Some("updated_at".into()),
            key: Some("id".into()),
        }
    }

    fn range(after: Option<&str>, from: Option<&str>, before: Option<&str>) -> SqlRange {
        SqlRange {
            key_from: from.map(String::from),
            key_before: before.map(String::from),
            cursor_after: after.map(String::from),
            cursor_upto: Some("2026-12-01 10:00:00+00".into()),
            raw_key: "raw/p/r/s00000.ndjson.zst".into(),
            rows: 0,
            planned_at_ms: 0,
            window: None,
        }
    }

    #[test]
    fn shard_queries_are_pinned() {
        assert_eq!(
            pg().shard_query(&range(
                Some("2026-11-30 00:00:00+00"),
                Some("100"),
                Some("200")
            )),
            "SELECT * FROM \"shop\".\"orders\" AS tributary_src WHERE \"updated_at\" > '2026-11-30 00:00:00+00' AND \"updated_at\" <= '2026-12-01 10:00:00+00' AND \"id\" >= '100' AND \"id\" < '200' ORDER BY \"id\""
        );
        assert_eq!(
            pg().shard_query(&range(None, None, Some("100"))),
            "SELECT * FROM \"shop\".\"orders\" AS tributary_src WHERE (\"updated_at\" <= '2026-12-01 10:00:00+00' OR \"updated_at\" IS NULL) AND \"id\" < '100' ORDER BY \"id\"",
            "a first run also reads rows without a cursor"
        );
        let my = SqlSpec {
            dialect: Dialect::Mysql,
            relation: Relation::Query("SELECT * FROM orders WHERE shop = 'a\\\\b';".into()),
            cursor: None,
            key: None,
        };
        assert_eq!(
            my.shard_query(&range(None, None, None)),
            "SELECT * FROM (SELECT * FROM orders WHERE shop = 'a\\\\b') AS tributary_src"
        );
        assert_eq!(my.literal("it's a\\b"), "'it''s a\\\\b'");
        assert_eq!(my.ident("we`ird"), "`we``ird`");
        assert_eq!(pg().ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn a_backfill_window_reads_from_its_start_up_to_before_its_end() {
        let mut r = range(Some("2026-11-30 00:00:00+00"), Some("100"), None);
        r.window = Some(("2026-11-02 00:00:00".into(), "2026-11-03 00:00:00".into()));
        assert_eq!(
            pg().shard_query(&r),
            "SELECT * FROM \"shop\".\"orders\" AS tributary_src WHERE \"updated_at\" >= '2026-11-02 00:00:00' AND \"updated_at\" < '2026-11-03 00:00:00' AND \"id\" >= '100' ORDER BY \"id\""
        );
        assert_eq!(
            pg().window_stats_query("2026-11-02 00:00:00", "2026-11-03 00:00:00"),
            "SELECT count(*), CAST(min(\"id\") AS TEXT), CAST(max(\"id\") AS TEXT), CAST(max(\"updated_at\") AS TEXT) FROM \"shop\".\"orders\" AS tributary_src WHERE \"updated_at\" >= '2026-11-02 00:00:00' AND \"updated_at\" < '2026-11-03 00:00:00'"
        );
        assert!(
            pg().window_boundaries_query("a", "b", 10)
                .unwrap()
                .contains("WHERE \"updated_at\" >= 'a' AND \"updated_at\" < 'b')")
        );
    }

    #[test]
    fn planning_queries_are_pinned() {
        assert_eq!(
            pg().stats_query(Some("2026-11-30 00:00:00+00")),
            "SELECT count(*), CAST(min(\"id\") AS TEXT), CAST(max(\"id\") AS TEXT), CAST(max(\"updated_at\") AS TEXT) FROM \"shop\".\"orders\" AS tributary_src WHERE \"updated_at\" > '2026-11-30 00:00:00+00'"
        );
        assert_eq!(
            pg().boundaries_query(None, Some("2026-12-01 10:00:00+00"), 1000)
                .unwrap(),
            "SELECT CAST(tributary_key AS TEXT) FROM (SELECT \"id\" AS tributary_key, row_number() OVER (ORDER BY \"id\") AS tributary_rn FROM \"shop\".\"orders\" AS tributary_src WHERE (\"updated_at\" <= '2026-12-01 10:00:00+00' OR \"updated_at\" IS NULL)) AS tributary_b WHERE MOD(tributary_rn - 1, 1000) = 0 AND tributary_rn > 1 ORDER BY tributary_rn"
        );
        assert_eq!(
            pg().lookback_query("2026-12-01 10:00:00+00", "timestamptz", 7200),
            "SELECT CAST(CAST('2026-12-01 10:00:00+00' AS timestamptz) - INTERVAL '7200 seconds' AS TEXT)"
        );
        assert_eq!(
            pg().describe_query(),
            "SELECT * FROM \"shop\".\"orders\" AS tributary_src WHERE 1 = 0"
        );
    }

    #[test]
    fn integer_keys_split_into_ranges_of_about_shard_rows() {
        assert_eq!(
            integer_boundaries(1, 50_000, 50_000, 10_000),
            vec![10_001, 20_001, 30_001, 40_001]
        );
        assert_eq!(integer_boundaries(1, 10, 10, 100), Vec::<i64>::new());
        assert_eq!(integer_boundaries(5, 5, 1, 1), Vec::<i64>::new());
        assert_eq!(
            integer_boundaries(i64::MIN, i64::MAX, 4, 1).len(),
            3,
            "no overflow"
        );
        let b: Vec<String> = ["10", "20"].map(String::from).to_vec();
        assert_eq!(
            ranges(&b),
            vec![
                (None, Some("10".to_string())),
                (Some("10".to_string()), Some("20".to_string())),
                (Some("20".to_string()), None),
            ]
        );
        assert_eq!(ranges(&[]), vec![(None, None)]);
    }
}
