//! The lake in the catalog: a Redshift Spectrum external table over a table's lake prefix,
//! kept by each load of a batch with an [`ExternalTable`] (`[load] external_schema`).
//!
//! After the batch's transaction has committed (or was found in the ledger), the Data API runs,
//! one statement at a time (Redshift runs external-table DDL outside transactions):
//!
//! ```text
//! CREATE EXTERNAL TABLE IF NOT EXISTS schema.table (…) PARTITIONED BY (…) STORED AS PARQUET LOCATION 's3://…/table/'
//! ALTER TABLE schema.table ADD COLUMN …            -- columns the files gained since
//! ALTER TABLE schema.table ADD IF NOT EXISTS PARTITION (day='…') LOCATION 's3://…/table/day=…/' …
//! ```
//!
//! Every statement is idempotent, so a retried load repeats them harmlessly. Pure SQL building,
//! pinned by golden tests.

use std::collections::BTreeSet;

use arrow::datatypes::{DataType, Schema};
use protocol::{ExternalTable, LoadBatch};

use super::plan::{Dialect, quote_literal};
use super::quote_ident;
use crate::warehouse::{BATCH_COLUMN, SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN};

/// The Spectrum type that reads a Parquet column of this Arrow type.
pub fn spectrum_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE PRECISION".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        _ => "VARCHAR(65535)".into(),
    }
}

/// The external table's name: `"schema"."table"`.
fn name(ext: &ExternalTable, table: &str) -> String {
    format!("{}.{}", quote_ident(&ext.schema), quote_ident(table))
}

/// The data columns of the files (lineage columns are the warehouse's, not the files').
pub fn columns(union: &Schema, partition: &[String]) -> Vec<(String, String)> {
    union
        .fields()
        .iter()
        .filter(|f| !partition.contains(f.name()))
        .filter(|f| {
            ![SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN, BATCH_COLUMN].contains(&f.name().as_str())
        })
        .map(|f| (f.name().clone(), spectrum_type(f.data_type())))
        .collect()
}

/// `CREATE EXTERNAL TABLE IF NOT EXISTS` over `location` (the table's prefix, ending in `/`).
pub fn create_sql(
    ext: &ExternalTable,
    table: &str,
    cols: &[(String, String)],
    partition: &[String],
    location: &str,
) -> String {
    let defs: Vec<String> = cols
        .iter()
        .map(|(n, t)| format!("{} {t}", quote_ident(n)))
        .collect();
    let parts = if partition.is_empty() {
        String::new()
    } else {
        let p: Vec<String> = partition
            .iter()
            .map(|n| format!("{} VARCHAR(1024)", quote_ident(n)))
            .collect();
        format!(" PARTITIONED BY ({})", p.join(", "))
    };
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {} ({}){parts} STORED AS PARQUET LOCATION {}",
        name(ext, table),
        defs.join(", "),
        quote_literal(location, Dialect::Redshift)
    )
}

/// The external table's columns as Redshift lists them (for [`add_columns_sql`]).
pub fn existing_columns_sql(ext: &ExternalTable, table: &str) -> String {
    format!(
        "SELECT columnname FROM svv_external_columns WHERE schemaname = {} AND tablename = {}",
        quote_literal(&ext.schema, Dialect::Redshift),
        quote_literal(&table.to_ascii_lowercase(), Dialect::Redshift)
    )
}

/// `ALTER TABLE … ADD COLUMN` for each column the table lacks (names compared as Redshift
/// folds them, in lower case).
pub fn add_columns_sql(
    ext: &ExternalTable,
    table: &str,
    cols: &[(String, String)],
    existing: &[String],
) -> Vec<String> {
    let have: BTreeSet<String> = existing.iter().map(|c| c.to_ascii_lowercase()).collect();
    cols.iter()
        .filter(|(n, _)| !have.contains(&n.to_ascii_lowercase()))
        .map(|(n, t)| {
            format!(
                "ALTER TABLE {} ADD COLUMN {} {t}",
                name(ext, table),
                quote_ident(n)
            )
        })
        .collect()
}

/// One `ALTER TABLE … ADD IF NOT EXISTS PARTITION` naming every partition of the batch's files
/// with its location; `None` when the table is not partitioned.
pub fn add_partitions_sql(
    ext: &ExternalTable,
    table: &str,
    batch: &LoadBatch,
    location: &str,
) -> Option<String> {
    let parts: BTreeSet<&Vec<(String, String)>> = batch
        .files
        .iter()
        .map(|f| &f.file.partition)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return None;
    }
    let clauses: Vec<String> = parts
        .iter()
        .map(|p| {
            let values: Vec<String> = p
                .iter()
                .map(|(k, v)| format!("{}={}", quote_ident(k), quote_literal(v, Dialect::Redshift)))
                .collect();
            let path: String = p.iter().map(|(k, v)| format!("{k}={v}/")).collect();
            format!(
                "PARTITION ({}) LOCATION {}",
                values.join(", "),
                quote_literal(&format!("{location}{path}"), Dialect::Redshift)
            )
        })
        .collect();
    Some(format!(
        "ALTER TABLE {} ADD IF NOT EXISTS {}",
        name(ext, table),
        clauses.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};
    use protocol::{LoadFile, OutputFile, SourcePosition};

    fn ext() -> ExternalTable {
        ExternalTable {
            schema: "lake".into(),
            lake_prefix: "web_events".into(),
        }
    }

    fn file(day: &str) -> LoadFile {
        LoadFile {
            file: OutputFile {
                max_bytes: Default::default(),
                key: format!("web_events/event_date={day}/part-r-s00000-00000.parquet"),
                partition: vec![("event_date".into(), day.into())],
                rows: 1,
                bytes: 1,
            },
            shard_index: 0,
            position: SourcePosition {
                object: "raw/a".into(),
                offset: 0,
            },
        }
    }

    #[test]
    fn the_external_table_and_its_partitions_are_pinned() {
        let union = Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("amount", DataType::Decimal128(18, 2), true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("retries", DataType::Int32, true),
            Field::new("event_date", DataType::Utf8, false),
        ]);
        let partition = vec!["event_date".to_string()];
        let cols = columns(&union, &partition);
        let location = "s3://bucket/lake/web_events/";
        assert_eq!(
            create_sql(&ext(), "web_events", &cols, &partition, location),
            "CREATE EXTERNAL TABLE IF NOT EXISTS \"lake\".\"web_events\" (\"event_id\" VARCHAR(65535), \"amount\" DECIMAL(18,2), \"ts\" TIMESTAMP, \"retries\" INT) PARTITIONED BY (\"event_date\" VARCHAR(1024)) STORED AS PARQUET LOCATION 's3://bucket/lake/web_events/'"
        );
        assert_eq!(
            add_columns_sql(
                &ext(),
                "web_events",
                &cols,
                &["event_id".into(), "AMOUNT".into(), "ts".into()]
            ),
            vec!["ALTER TABLE \"lake\".\"web_events\" ADD COLUMN \"retries\" INT"]
        );
        let batch = LoadBatch {
            batch_id: "b".into(),
            run_id: "r".into(),
            table: "web_events".into(),
            merge_keys: vec![],
            shards: vec![],
            files: vec![file("2026-11-02"), file("2026-11-01"), file("2026-11-02")],
            masked_columns: vec![],
            layout: Default::default(),
            external: Some(ext()),
        };
        assert_eq!(
            add_partitions_sql(&ext(), "web_events", &batch, location).unwrap(),
            "ALTER TABLE \"lake\".\"web_events\" ADD IF NOT EXISTS PARTITION (\"event_date\"='2026-11-01') LOCATION 's3://bucket/lake/web_events/event_date=2026-11-01/' PARTITION (\"event_date\"='2026-11-02') LOCATION 's3://bucket/lake/web_events/event_date=2026-11-02/'"
        );
        assert_eq!(
            existing_columns_sql(&ext(), "Web_Events"),
            "SELECT columnname FROM svv_external_columns WHERE schemaname = 'lake' AND tablename = 'web_events'"
        );
        let unpartitioned = LoadBatch {
            files: vec![LoadFile {
                file: OutputFile {
                    partition: vec![],
                    ..file("x").file
                },
                ..file("x")
            }],
            ..batch
        };
        assert_eq!(
            add_partitions_sql(&ext(), "t", &unpartitioned, location),
            None
        );
    }
}
