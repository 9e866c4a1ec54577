//! Schema evolution of a target table between loads, on every warehouse.
//!
//! A column's type in the table and its type in a new batch's Parquet are both brought to one
//! [`ColType`]; [`compare`] says whether the table keeps its type, is widened to the batch's
//! (int16 → int32 → int64, float32 → float64, decimal precision up at the same scale, a longer
//! VARCHAR), or refuses the batch (a narrowing or an incompatible change), naming the column and
//! both types. The transports turn a widening into their DDL inside the load transaction:
//! PostgreSQL `ALTER COLUMN … TYPE`, Redshift `ALTER COLUMN … TYPE VARCHAR(n)` for strings and
//! add/copy/drop/rename for the rest (Redshift alters no other type in place), SQLite a table
//! rebuild (it has no `ALTER COLUMN`).

use arrow::datatypes::{DataType, Field};

use super::plan::Dialect;

/// Redshift's longest VARCHAR, in bytes.
pub const REDSHIFT_MAX_VARCHAR: u32 = 65_535;

/// A column type, normalised across the warehouses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColType {
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// A string; `max_bytes` is the declared VARCHAR length where the warehouse has one.
    Text {
        max_bytes: Option<u32>,
    },
    Bool,
    Timestamp,
    Date,
    /// JSON (jsonb on PostgreSQL, SUPER on Redshift, JSON text in the embedded warehouse).
    Json,
    /// A type Tributary does not write (a column a user added or changed by hand).
    Other(String),
}

/// What a load does to one existing column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Keep,
    /// Widen the table's column to this type.
    Widen(ColType),
}

/// A batch the table cannot take: the column and both types, for the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "table {table:?}, column {column:?}: the table has {existing} and the new data has {incoming}; {reason} (nothing was loaded)"
)]
pub struct Refusal {
    pub table: String,
    pub column: String,
    pub existing: String,
    pub incoming: String,
    pub reason: &'static str,
}

impl ColType {
    /// The type a Parquet field is loaded as: a string marked with Arrow's JSON extension type
    /// (`arrow.json`, how workers write `json` columns) is JSON.
    pub fn of_field(f: &Field) -> Option<ColType> {
        let json =
            f.metadata().get("ARROW:extension:name").map(String::as_str) == Some("arrow.json");
        match ColType::from_arrow(f.data_type())? {
            ColType::Text { .. } if json => Some(ColType::Json),
            t => Some(t),
        }
    }

    /// The type a Parquet column of this Arrow type is loaded as.
    pub fn from_arrow(dt: &DataType) -> Option<ColType> {
        Some(match dt {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                ColType::Text { max_bytes: None }
            }
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => ColType::Int16,
            DataType::Int32 | DataType::UInt16 => ColType::Int32,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ColType::Int64,
            DataType::Boolean => ColType::Bool,
            DataType::Float32 => ColType::Float32,
            DataType::Float64 => ColType::Float64,
            DataType::Decimal128(p, s) => ColType::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::Timestamp(_, _) => ColType::Timestamp,
            DataType::Date32 => ColType::Date,
            _ => return None,
        })
    }

    /// A column as `information_schema.columns` describes it (PostgreSQL and Redshift):
    /// `data_type`, `character_maximum_length`, `numeric_precision`, `numeric_scale`.
    pub fn from_catalog(
        data_type: &str,
        char_len: Option<i64>,
        precision: Option<i64>,
        scale: Option<i64>,
    ) -> ColType {
        match data_type.to_ascii_lowercase().as_str() {
            "smallint" => ColType::Int16,
            "integer" => ColType::Int32,
            "bigint" => ColType::Int64,
            "real" => ColType::Float32,
            "double precision" => ColType::Float64,
            "numeric" => match (precision, scale) {
                (Some(p), Some(s)) => ColType::Decimal {
                    precision: p.clamp(1, 38) as u8,
                    scale: s.clamp(0, 38) as i8,
                },
                _ => ColType::Other("numeric".into()),
            },
            "text" => ColType::Text { max_bytes: None },
            "character varying" | "character" => ColType::Text {
                max_bytes: char_len.map(|n| n.clamp(0, u32::MAX as i64) as u32),
            },
            "boolean" => ColType::Bool,
            "timestamp without time zone" | "timestamp with time zone" => ColType::Timestamp,
            "date" => ColType::Date,
            "jsonb" | "json" | "super" => ColType::Json,
            other => ColType::Other(other.into()),
        }
    }
}

/// Significant decimal digits that survive a round trip through a REAL (an IEEE double:
/// `DBL_DIG`), so a decimal of at most this many digits is stored exactly as a number.
pub const SQLITE_EXACT_DIGITS: u32 = 15;

/// The embedded warehouse's declared type for a decimal wider than [`SQLITE_EXACT_DIGITS`],
/// up to the opening parenthesis.
const EXACT_DECIMAL_SQLITE: &str = "DECIMAL_BLOB(";

impl ColType {
    /// A column as SQLite's `PRAGMA table_info` gives its declared type. The older spellings
    /// (`INTEGER` for every integer, `REAL` for every float, `DECIMAL` without precision) read
    /// as the narrowest type they held, so a newer batch widens them.
    pub fn from_sqlite(decl: &str) -> ColType {
        let d = decl.trim().to_ascii_uppercase();
        let args = d
            .strip_prefix("DECIMAL(")
            .or_else(|| d.strip_prefix(EXACT_DECIMAL_SQLITE))
            .and_then(|r| r.strip_suffix(')'));
        if let Some(args) = args {
            let mut it = args.split(',').map(|x| x.trim().parse::<i64>().ok());
            if let (Some(Some(p)), Some(Some(sc))) = (it.next(), it.next()) {
                return ColType::Decimal {
                    precision: p.clamp(1, 38) as u8,
                    scale: sc.clamp(0, 38) as i8,
                };
            }
        }
        match d.as_str() {
            "SMALLINT" => ColType::Int16,
            "INTEGER" => ColType::Int32,
            "BIGINT" => ColType::Int64,
            "REAL" => ColType::Float32,
            "DOUBLE" => ColType::Float64,
            "TEXT" => ColType::Text { max_bytes: None },
            "BOOLEAN" => ColType::Bool,
            "TIMESTAMP" => ColType::Timestamp,
            "DATE" => ColType::Date,
            "JSON_TEXT" => ColType::Json,
            // Declared without precision and scale by older versions: any decimal replaces it.
            "DECIMAL" => ColType::Other("DECIMAL".into()),
            _ => ColType::Other(decl.into()),
        }
    }

    /// The column type in a dialect's DDL. Strings without a known length are `TEXT` on
    /// PostgreSQL and the longest VARCHAR on Redshift.
    pub fn sql(&self, d: Dialect) -> String {
        match self {
            ColType::Int16 => "SMALLINT".into(),
            ColType::Int32 => "INTEGER".into(),
            ColType::Int64 => "BIGINT".into(),
            ColType::Float32 => "REAL".into(),
            ColType::Float64 => "DOUBLE PRECISION".into(),
            ColType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            ColType::Text { max_bytes } => match (d, max_bytes) {
                (Dialect::Postgres, None) => "TEXT".into(),
                (Dialect::Postgres, Some(n)) => format!("VARCHAR({n})"),
                (Dialect::Redshift, n) => {
                    format!("VARCHAR({})", n.unwrap_or(REDSHIFT_MAX_VARCHAR))
                }
            },
            ColType::Bool => "BOOLEAN".into(),
            // Timestamps are UTC instants, stored without a zone (the convention of both
            // engines' COPY from Parquet).
            ColType::Timestamp => "TIMESTAMP".into(),
            ColType::Date => "DATE".into(),
            ColType::Json => match d {
                Dialect::Postgres => "JSONB".into(),
                Dialect::Redshift => "SUPER".into(),
            },
            ColType::Other(t) => t.clone(),
        }
    }

    /// The declared type in the embedded warehouse: the pipeline type's name (SQLite derives
    /// the storage affinity from it; `DECIMAL(P,S)` keeps the scale that reads render with).
    ///
    /// A decimal of more than [`SQLITE_EXACT_DIGITS`] digits is `DECIMAL_BLOB(P,S)`: the name
    /// holds BLOB, so the column has no affinity and keeps each value as the loader stored it
    /// (a number where a REAL holds it exactly, exact text otherwise). NUMERIC affinity would
    /// turn `1234567890123456.78` into the REAL `1.23456789012346e+15`.
    pub fn sqlite(&self) -> String {
        match self {
            ColType::Decimal { precision, scale } if *precision as u32 > SQLITE_EXACT_DIGITS => {
                format!("{EXACT_DECIMAL_SQLITE}{precision},{scale})")
            }
            ColType::Float64 => "DOUBLE".into(),
            ColType::Text { .. } => "TEXT".into(),
            // TEXT affinity (the name holds TEXT): the JSON text is kept as written.
            ColType::Json => "JSON_TEXT".into(),
            other => other.sql(Dialect::Postgres),
        }
    }

    /// How the type reads in an error: the warehouse spelling and the pipeline type.
    pub fn describe(&self) -> String {
        let pipeline = match self {
            ColType::Int16 => "int16".to_string(),
            ColType::Int32 => "int32".into(),
            ColType::Int64 => "int64".into(),
            ColType::Float32 => "float32".into(),
            ColType::Float64 => "float64".into(),
            ColType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColType::Text { max_bytes: Some(n) } => format!("string of at most {n} bytes"),
            ColType::Text { max_bytes: None } => "string".into(),
            ColType::Bool => "bool".into(),
            ColType::Timestamp => "timestamp".into(),
            ColType::Date => "date".into(),
            ColType::Json => "json".into(),
            ColType::Other(t) => return t.clone(),
        };
        format!("{} ({pipeline})", self.sql(Dialect::Postgres))
    }

    fn int_rank(&self) -> Option<u8> {
        match self {
            ColType::Int16 => Some(1),
            ColType::Int32 => Some(2),
            ColType::Int64 => Some(3),
            _ => None,
        }
    }

    fn float_rank(&self) -> Option<u8> {
        match self {
            ColType::Float32 => Some(1),
            ColType::Float64 => Some(2),
            _ => None,
        }
    }
}

/// `f` marked as a column a worker added under `on_new_column = "evolve"` (its other metadata
/// kept).
pub fn mark_evolved(f: Field) -> Field {
    let mut meta = f.metadata().clone();
    meta.insert(protocol::EVOLVED_FIELD_KEY.to_string(), "true".to_string());
    f.with_metadata(meta)
}

/// Whether a Parquet field is a column a worker added under `on_new_column = "evolve"`.
pub fn is_evolved(f: &Field) -> bool {
    f.metadata().contains_key(protocol::EVOLVED_FIELD_KEY)
}

/// [`compare`], except that for an evolved column (its type inferred from the values, see
/// [`is_evolved`]) a change `compare` refuses keeps the values' text instead: the column is or
/// becomes a string, which holds any of them.
pub fn reconcile(
    table: &str,
    column: &str,
    existing: &ColType,
    incoming: &ColType,
    evolved: bool,
) -> Result<Change, Refusal> {
    match compare(table, column, existing, incoming) {
        Err(_) if evolved && matches!(existing, ColType::Text { .. }) => Ok(Change::Keep),
        Err(_) if evolved => Ok(Change::Widen(ColType::Text { max_bytes: None })),
        other => other,
    }
}

/// What loading `incoming` data into a column of type `existing` needs.
pub fn compare(
    table: &str,
    column: &str,
    existing: &ColType,
    incoming: &ColType,
) -> Result<Change, Refusal> {
    use std::cmp::Ordering::*;
    let refuse = |reason| Refusal {
        table: table.into(),
        column: column.into(),
        existing: existing.describe(),
        incoming: incoming.describe(),
        reason,
    };
    let by_rank = |a: Option<u8>, b: Option<u8>| -> Option<Result<Change, Refusal>> {
        let (a, b) = (a?, b?);
        Some(match a.cmp(&b) {
            Equal => Ok(Change::Keep),
            Less => Ok(Change::Widen(incoming.clone())),
            Greater => Err(refuse("narrowing a column is refused")),
        })
    };
    if existing == incoming {
        return Ok(Change::Keep);
    }
    if let Some(r) = by_rank(existing.int_rank(), incoming.int_rank()) {
        return r;
    }
    if let Some(r) = by_rank(existing.float_rank(), incoming.float_rank()) {
        return r;
    }
    match (existing, incoming) {
        (ColType::Text { max_bytes: have }, ColType::Text { max_bytes: need }) => {
            Ok(match (have, need) {
                (None, _) => Change::Keep,
                (Some(h), Some(n)) if n <= h => Change::Keep,
                _ => Change::Widen(incoming.clone()),
            })
        }
        (
            ColType::Decimal {
                precision: p1,
                scale: s1,
            },
            ColType::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => match (s1 == s2, p2.cmp(p1)) {
            (false, _) => Err(refuse(
                "changing a decimal's scale is refused (it would round stored values)",
            )),
            (true, Less) => Err(refuse("narrowing a column is refused")),
            (true, _) => Ok(Change::Widen(incoming.clone())),
        },
        // A decimal column of an older embedded warehouse (NUMERIC affinity, no precision).
        (ColType::Other(t), ColType::Decimal { .. }) if t == "DECIMAL" => {
            Ok(Change::Widen(incoming.clone()))
        }
        _ => Err(refuse("the types are incompatible")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(a: &ColType, b: &ColType) -> Result<Change, Refusal> {
        compare("t", "c", a, b)
    }

    fn dec(p: u8, s: i8) -> ColType {
        ColType::Decimal {
            precision: p,
            scale: s,
        }
    }

    /// Issue 9: an evolved column whose inferred type changes keeps its values as text; a
    /// declared one is still refused.
    #[test]
    fn evolved_columns_fall_back_to_text() {
        use ColType::*;
        let text = Text { max_bytes: None };
        let r = |a: &ColType, b: &ColType, ev| reconcile("t", "c", a, b, ev);
        assert_eq!(r(&Int64, &text, true), Ok(Change::Widen(text.clone())));
        assert_eq!(r(&text, &Bool, true), Ok(Change::Keep));
        assert_eq!(r(&Json, &Float64, true), Ok(Change::Widen(text.clone())));
        assert_eq!(r(&Int32, &Int64, true), Ok(Change::Widen(Int64)));
        assert!(r(&Int64, &text, false).is_err());
        assert!(r(&text, &Bool, false).is_err());
    }

    #[test]
    fn integers_and_floats_widen_and_never_narrow() {
        use ColType::*;
        assert_eq!(cmp(&Int32, &Int64), Ok(Change::Widen(Int64)));
        assert_eq!(cmp(&Int16, &Int32), Ok(Change::Widen(Int32)));
        assert_eq!(cmp(&Int64, &Int64), Ok(Change::Keep));
        assert_eq!(cmp(&Float32, &Float64), Ok(Change::Widen(Float64)));
        let e = cmp(&Int64, &Int32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "table \"t\", column \"c\": the table has BIGINT (int64) and the new data has \
             INTEGER (int32); narrowing a column is refused (nothing was loaded)"
        );
        assert!(cmp(&Float64, &Float32).is_err());
        let e = cmp(&Int64, &Text { max_bytes: None }).unwrap_err();
        assert_eq!(e.reason, "the types are incompatible");
        assert!(cmp(&Int64, &Float64).is_err());
    }

    #[test]
    fn decimals_widen_in_precision_at_the_same_scale() {
        assert_eq!(cmp(&dec(10, 2), &dec(18, 2)), Ok(Change::Widen(dec(18, 2))));
        assert!(cmp(&dec(18, 2), &dec(10, 2)).is_err());
        let e = cmp(&dec(18, 2), &dec(18, 4)).unwrap_err();
        assert!(e.reason.contains("scale"), "{e}");
        let legacy = ColType::from_sqlite("DECIMAL");
        assert_eq!(cmp(&legacy, &dec(18, 2)), Ok(Change::Widen(dec(18, 2))));
    }

    #[test]
    fn strings_widen_only_when_longer() {
        let v = |n| ColType::Text { max_bytes: n };
        assert_eq!(cmp(&v(Some(256)), &v(Some(100))), Ok(Change::Keep));
        assert_eq!(
            cmp(&v(Some(256)), &v(Some(300))),
            Ok(Change::Widen(v(Some(300))))
        );
        assert_eq!(cmp(&v(None), &v(Some(70_000))), Ok(Change::Keep));
        assert_eq!(cmp(&v(Some(256)), &v(None)), Ok(Change::Widen(v(None))));
    }

    #[test]
    fn catalog_and_sqlite_spellings_read_back_as_written() {
        for t in [
            ColType::Int16,
            ColType::Int32,
            ColType::Int64,
            ColType::Float32,
            ColType::Float64,
            dec(18, 2),
            dec(15, 4),
            dec(38, 9),
            ColType::Bool,
            ColType::Timestamp,
            ColType::Date,
            ColType::Text { max_bytes: None },
            ColType::Json,
        ] {
            assert_eq!(ColType::from_sqlite(&t.sqlite()), t, "{}", t.sqlite());
        }
        assert_eq!(dec(15, 4).sqlite(), "DECIMAL(15,4)");
        assert_eq!(dec(16, 2).sqlite(), "DECIMAL_BLOB(16,2)");
        assert_eq!(
            ColType::from_catalog("character varying", Some(300), None, None),
            ColType::Text {
                max_bytes: Some(300)
            }
        );
        assert_eq!(
            ColType::from_catalog("numeric", None, Some(18), Some(2)),
            dec(18, 2)
        );
        assert_eq!(
            ColType::from_catalog("double precision", None, Some(53), None),
            ColType::Float64
        );
        assert_eq!(
            ColType::Text { max_bytes: None }.sql(Dialect::Redshift),
            "VARCHAR(65535)"
        );
    }
}
