//! Planning a run of a database source, the same for every dialect: a [`Session`] answers the
//! few statements of [`SqlSpec`] (the relation's columns, the statistics of the rows after the
//! watermark, key boundaries), and [`plan`] turns the answers into key-range shards.

use async_trait::async_trait;

use super::sql::{SqlSpec, integer_boundaries, ranges};
use super::{SourcePlan, SqlShard};
use crate::{BackendError, Result};

/// A result column of the relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// The type's name as the dialect writes it in a `CAST` (`timestamptz`, `datetime`).
    pub type_name: String,
    /// Whether the type is an integer (key ranges are then computed from min and max).
    pub integer: bool,
}

/// One connection to a database source, answering the planner's statements.
#[async_trait]
pub trait Session: Send {
    /// The relation's result columns.
    async fn columns(&mut self) -> Result<Vec<ColumnInfo>>;
    /// The first row of a statement's result as text (empty when there is none).
    async fn first_row(&mut self, sql: &str, doing: &str) -> Result<Vec<Option<String>>>;
    /// The first column of every row of a statement's result, as text.
    async fn first_column(&mut self, sql: &str, doing: &str) -> Result<Vec<String>>;
    /// The relation's average row size on disk, in bytes, when the database keeps it (a
    /// table's statistics; not a query's).
    async fn avg_row_bytes(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// Refuses a `cursor_column` or `key_column` the relation does not have, naming the key, the
/// column and the columns it has.
pub fn check_columns(spec: &SqlSpec, cols: &[ColumnInfo], source: &str, what: &str) -> Result<()> {
    for (key, name) in [("cursor_column", &spec.cursor), ("key_column", &spec.key)] {
        if let Some(n) = name
            && !cols.iter().any(|c| &c.name == n)
        {
            return Err(BackendError::Source {
                source_name: source.to_string(),
                detail: format!(
                    "{what}: source.sql.{key} {n:?} is not a column (columns: {})",
                    cols.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                retryable: false,
            });
        }
    }
    Ok(())
}

/// Plans a run: the rows after `watermark` (moved back by `lookback_secs`) up to the high mark
/// taken now, in key ranges of about `shard_rows` rows.
pub async fn plan(
    spec: &SqlSpec,
    s: &mut dyn Session,
    watermark: Option<&str>,
    lookback_secs: u64,
    shard_rows: Option<u64>,
) -> Result<SourcePlan> {
    let cols = s.columns().await?;
    let col = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| cols.iter().find(|c| &c.name == n).cloned())
    };
    let cursor = col(&spec.cursor);
    let after = match (watermark, &cursor) {
        (Some(w), Some(c)) if lookback_secs > 0 => {
            let q = spec.lookback_query(w, &c.type_name, lookback_secs);
            first(s, &q, "moving the watermark back by the lookback").await?
        }
        (w, _) => w.map(String::from),
    };
    let stats = s
        .first_row(
            &spec.stats_query(after.as_deref()),
            "counting the rows to read",
        )
        .await?;
    let get = |i: usize| stats.get(i).cloned().flatten();
    let count: u64 = get(0).and_then(|c| c.parse().ok()).unwrap_or(0);
    let high = get(3);
    if count == 0 {
        return Ok(SourcePlan {
            after,
            high: None,
            watermark: watermark.map(String::from),
            shards: Vec::new(),
            rows: 0,
        });
    }
    let next_watermark = match (watermark, &high, &cursor) {
        (Some(w), Some(h), Some(c)) if lookback_secs > 0 => {
            let q = spec.later_query(w, h, &c.type_name);
            first(s, &q, "comparing the high mark with the watermark").await?
        }
        _ => high.clone(),
    };
    let key = Keys {
        column: col(&spec.key),
        min: get(1),
        max: get(2),
        count,
    };
    let boundaries = key
        .boundaries(s, shard_rows, |n| {
            spec.boundaries_query(after.as_deref(), high.as_deref(), n)
        })
        .await?;
    Ok(SourcePlan {
        after,
        high,
        watermark: next_watermark,
        shards: shards(&boundaries, count),
        rows: count,
    })
}

/// Plans a backfill window: the rows whose cursor is in `[from, to)`, in key ranges of about
/// `shard_rows` rows. The watermark is not read and not planned to move.
pub async fn plan_window(
    spec: &SqlSpec,
    s: &mut dyn Session,
    from: &str,
    to: &str,
    shard_rows: Option<u64>,
) -> Result<SourcePlan> {
    let cols = s.columns().await?;
    if spec.cursor.is_none() {
        return Err(BackendError::Source {
            source_name: "the backfill".into(),
            detail: "a database backfill reads windows of source.sql.cursor_column: give one"
                .into(),
            retryable: false,
        });
    }
    let stats = s
        .first_row(
            &spec.window_stats_query(from, to),
            "counting the rows of the window",
        )
        .await?;
    let get = |i: usize| stats.get(i).cloned().flatten();
    let count: u64 = get(0).and_then(|c| c.parse().ok()).unwrap_or(0);
    let key = Keys {
        column: spec
            .key
            .as_ref()
            .and_then(|n| cols.iter().find(|c| &c.name == n).cloned()),
        min: get(1),
        max: get(2),
        count,
    };
    let boundaries = if count == 0 {
        Vec::new()
    } else {
        key.boundaries(s, shard_rows, |n| spec.window_boundaries_query(from, to, n))
            .await?
    };
    Ok(SourcePlan {
        after: None,
        high: None,
        watermark: None,
        shards: if count == 0 {
            Vec::new()
        } else {
            shards(&boundaries, count)
        },
        rows: count,
    })
}

/// The key column's statistics over the rows to read.
struct Keys {
    column: Option<ColumnInfo>,
    min: Option<String>,
    max: Option<String>,
    count: u64,
}

impl Keys {
    /// Where key ranges of about `shard_rows` rows start: computed from min and max for an
    /// integer key, asked of the database (`query`) otherwise; none without a key.
    async fn boundaries(
        &self,
        s: &mut dyn Session,
        shard_rows: Option<u64>,
        query: impl Fn(u64) -> Option<String>,
    ) -> Result<Vec<String>> {
        let (Some(n), Some(key)) = (shard_rows, &self.column) else {
            return Ok(Vec::new());
        };
        let lo = self.min.as_ref().and_then(|v| v.parse().ok());
        let hi = self.max.as_ref().and_then(|v| v.parse().ok());
        Ok(match (key.integer, lo, hi) {
            (true, Some(lo), Some(hi)) => integer_boundaries(lo, hi, self.count, n)
                .into_iter()
                .map(|b| b.to_string())
                .collect(),
            _ => match query(n) {
                Some(q) => s.first_column(&q, "finding key ranges").await?,
                None => Vec::new(),
            },
        })
    }
}

/// The shards of the key ranges that start at `boundaries`, each with its share of `count`.
fn shards(boundaries: &[String], count: u64) -> Vec<SqlShard> {
    let ranges = ranges(boundaries);
    let per = count.div_ceil(ranges.len() as u64);
    ranges
        .into_iter()
        .map(|(from, before)| SqlShard {
            key_from: from,
            key_before: before,
            rows: per,
        })
        .collect()
}

async fn first(s: &mut dyn Session, sql: &str, doing: &str) -> Result<Option<String>> {
    Ok(s.first_row(sql, doing).await?.into_iter().next().flatten())
}

#[cfg(test)]
mod tests {
    use super::super::sql::{Dialect, Relation};
    use super::*;

    /// A session that answers from a script and records what it was asked.
    struct Scripted {
        cols: Vec<ColumnInfo>,
        stats: Vec<Option<String>>,
        boundaries: Vec<String>,
        asked: Vec<String>,
    }

    #[async_trait]
    impl Session for Scripted {
        async fn columns(&mut self) -> Result<Vec<ColumnInfo>> {
            Ok(self.cols.clone())
        }
        async fn first_row(&mut self, sql: &str, _: &str) -> Result<Vec<Option<String>>> {
            self.asked.push(sql.to_string());
            Ok(self.stats.clone())
        }
        async fn first_column(&mut self, sql: &str, _: &str) -> Result<Vec<String>> {
            self.asked.push(sql.to_string());
            Ok(self.boundaries.clone())
        }
    }

    fn spec() -> SqlSpec {
        SqlSpec {
            dialect: Dialect::Mysql,
            relation: Relation::Table("orders".into()),
            cursor: Some("updated_at".into()),
            key: Some("code".into()),
        }
    }

    fn col(name: &str, integer: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            type_name: "datetime".into(),
            integer,
        }
    }

    #[tokio::test]
    async fn keys_that_are_not_integers_are_split_at_boundaries_the_database_finds() {
        let text = |v: &str| Some(v.to_string());
        let mut s = Scripted {
            cols: vec![col("code", false), col("updated_at", false)],
            stats: vec![
                text("25"),
                text("a"),
                text("z"),
                text("2026-12-01 10:00:00"),
            ],
            boundaries: vec!["h".into(), "p".into()],
            asked: Vec::new(),
        };
        let p = plan(&spec(), &mut s, Some("2026-11-30 00:00:00"), 0, Some(10))
            .await
            .unwrap();
        assert_eq!((p.rows, p.shards.len()), (25, 3));
        assert_eq!(p.shards[1].key_from.as_deref(), Some("h"));
        assert_eq!(p.watermark.as_deref(), Some("2026-12-01 10:00:00"));
        assert!(s.asked[1].contains("row_number()"), "{:?}", s.asked);

        s.stats = vec![text("0"), None, None, None];
        let none = plan(&spec(), &mut s, Some("2026-12-01 10:00:00"), 0, Some(10))
            .await
            .unwrap();
        assert_eq!((none.rows, none.shards.len()), (0, 0));
        assert_eq!(
            none.watermark.as_deref(),
            Some("2026-12-01 10:00:00"),
            "kept"
        );
    }

    #[test]
    fn a_missing_cursor_or_key_column_is_named() {
        let e = check_columns(
            &spec(),
            &[col("id", true)],
            "mysql orders",
            "reading table orders",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("source.sql.cursor_column \"updated_at\" is not a column (columns: id)"),
            "{e}"
        );
        assert!(!e.is_retryable());
    }
}
