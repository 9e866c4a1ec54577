//! The declared column types of pipeline files: their names in TOML and their Arrow types
//! ([`crate::types`]).

use serde::{Deserialize, Serialize};

/// A declared column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColumnType {
    String,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Bool,
    /// Exact: `precision` digits of which `scale` after the point.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Microseconds, UTC.
    Timestamp,
    Date,
    /// Any JSON value, kept as its JSON text (jsonb on PostgreSQL, SUPER on Redshift).
    Json,
}

/// The type names accepted in pipeline files, for messages.
pub const TYPE_NAMES: &str =
    "string, int16, int32, int64, float32, float64, bool, decimal(P,S), timestamp, date or json";

impl ColumnType {
    pub fn parse(s: &str) -> Option<ColumnType> {
        let s = s.trim();
        Some(match s {
            "string" => ColumnType::String,
            "int16" | "smallint" => ColumnType::Int16,
            "int32" => ColumnType::Int32,
            // `int` and `integer` have meant int64 since the first release; kept.
            "int64" | "bigint" | "int" | "integer" => ColumnType::Int64,
            "float32" | "real" => ColumnType::Float32,
            "float64" | "float" | "double" => ColumnType::Float64,
            "bool" | "boolean" => ColumnType::Bool,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            "json" => ColumnType::Json,
            _ => {
                let inner = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, sc) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = sc.trim().parse().ok()?;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                ColumnType::Decimal { precision, scale }
            }
        })
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Int16 => f.write_str("int16"),
            ColumnType::Int32 => f.write_str("int32"),
            ColumnType::Int64 => f.write_str("int64"),
            ColumnType::Float32 => f.write_str("float32"),
            ColumnType::Float64 => f.write_str("float64"),
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Json => f.write_str("json"),
        }
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ColumnType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown type {s:?}: expected {TYPE_NAMES}"))
        })
    }
}
