//! Column types and Arrow types, both ways: what a column holds in a batch, and which column type
//! an expression's result is stored as.

use arrow::datatypes::{DataType, Field, TimeUnit};

use crate::ColumnType;

/// The field metadata key of an Arrow extension type.
pub const EXTENSION_NAME: &str = "ARROW:extension:name";
/// Arrow's canonical JSON extension type: how a `json` column is marked in batches and Parquet,
/// so that warehouses load it as jsonb / SUPER.
pub const JSON_EXTENSION: &str = "arrow.json";

impl ColumnType {
    /// The output field of a column of this type (nullable; `json` carries its extension name).
    pub fn field(self, name: &str) -> Field {
        let f = Field::new(name, self.arrow(), true);
        match self {
            ColumnType::Json => {
                f.with_metadata([(EXTENSION_NAME.to_string(), JSON_EXTENSION.to_string())].into())
            }
            _ => f,
        }
    }

    /// The Arrow type a column of this type has in every batch (timestamps: microseconds, UTC).
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int16 => DataType::Int16,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Date => DataType::Date32,
            // JSON text; expressions see it as a string.
            ColumnType::Json => DataType::Utf8,
        }
    }

    /// The column type an expression result of Arrow type `t` is stored as, if any. Narrow
    /// integers widen to int16, unsigned ones to the next signed width, and every timestamp
    /// becomes microseconds UTC (a time without a zone is taken as UTC).
    pub fn from_arrow(t: &DataType) -> Option<ColumnType> {
        Some(match t {
            DataType::Boolean => ColumnType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => ColumnType::Int16,
            DataType::Int32 | DataType::UInt16 => ColumnType::Int32,
            DataType::Int64 | DataType::UInt32 => ColumnType::Int64,
            DataType::Float16 | DataType::Float32 => ColumnType::Float32,
            DataType::Float64 => ColumnType::Float64,
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s)
                if *s >= 0 && *p <= 38 =>
            {
                ColumnType::Decimal {
                    precision: *p,
                    scale: *s,
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
            DataType::Date32 | DataType::Date64 => ColumnType::Date,
            DataType::Timestamp(_, _) => ColumnType::Timestamp,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_type_maps_back_to_itself() {
        for t in [
            ColumnType::String,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Bool,
            ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            ColumnType::Timestamp,
            ColumnType::Date,
        ] {
            assert_eq!(ColumnType::from_arrow(&t.arrow()), Some(t));
        }
    }

    #[test]
    fn results_without_a_column_type_are_none() {
        assert_eq!(ColumnType::from_arrow(&DataType::UInt64), None);
        assert_eq!(ColumnType::from_arrow(&DataType::Null), None);
        assert_eq!(ColumnType::from_arrow(&DataType::Decimal128(10, -2)), None);
        assert_eq!(
            ColumnType::from_arrow(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            Some(ColumnType::Timestamp)
        );
        assert_eq!(
            ColumnType::from_arrow(&DataType::Int8),
            Some(ColumnType::Int16)
        );
    }
}
