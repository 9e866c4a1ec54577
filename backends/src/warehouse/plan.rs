//! The load plan of the SQL warehouses (PostgreSQL, Redshift), apart from its transport.
//!
//! A [`LoadPlan`] is a list of SQL statements for one [`LoadBatch`], run in ONE transaction:
//!
//! ```text
//! LOCK ledger                                   -- loads of one warehouse are serialised
//! CREATE TABLE IF NOT EXISTS target (...)       -- + ALTER TABLE ADD COLUMN for new columns
//! DROP/CREATE TEMP TABLE staging (LIKE target)
//! <data step>                                   -- transport: per file group COPY FROM 's3://…'
//!                                               --   into a file-shaped table, then INSERT …
//!                                               --   SELECT into staging (Redshift Data API), or
//!                                               --   COPY FROM STDIN (PostgreSQL wire)
//! DELETE FROM staging WHERE batch in ledger     -- a batch already loaded changes nothing
//! CREATE TEMP TABLE batch AS first row per key  -- earliest source position wins
//! DELETE FROM batch USING target …              -- keys the target has at an earlier position
//! DELETE FROM target USING batch …              -- rows this batch replaces
//! INSERT INTO target SELECT … FROM batch
//! INSERT INTO ledger … WHERE NOT EXISTS …
//! ```
//!
//! Every statement is idempotent under the ledger: even if two coordinators raced (the lock
//! serialises them) or a retry re-ran a batch whose first attempt committed unseen, the second
//! run finds its batch id in the ledger, empties its staging table and inserts nothing. Merge is
//! delete+insert, which both PostgreSQL and Redshift run (Redshift's MERGE allows no extra
//! condition on `WHEN MATCHED`, which "keep the earliest position" needs).

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use protocol::{LoadBatch, LoadFile};

use super::{
    BATCH_COLUMN, LEDGER_TABLE, SOURCE_OBJECT_COLUMN, SOURCE_OFFSET_COLUMN, format_days,
    format_decimal, format_micros, quote_ident, quote_list,
};
use crate::{BackendError, Result};

pub const STAGING_TABLE: &str = "_tributary_staging";
pub const BATCH_TABLE: &str = "_tributary_batch";
pub const FILE_STAGE_TABLE: &str = "_tributary_file_stage";
/// Redshift's Data API takes at most 40 statements per `BatchExecuteStatement`.
pub const REDSHIFT_MAX_STATEMENTS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Redshift,
}

/// One column of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: String,
    /// Whether the column is inside the Parquet files (not a partition or lineage column).
    pub in_file: bool,
}

fn wh(detail: impl Into<String>) -> BackendError {
    BackendError::Warehouse(detail.into())
}

/// The SQL type of an Arrow type in a dialect.
pub fn sql_type(dt: &DataType, d: Dialect) -> Result<String> {
    let text = match d {
        Dialect::Postgres => "TEXT",
        // Redshift's TEXT is VARCHAR(256); strings from sources can be longer.
        Dialect::Redshift => "VARCHAR(65535)",
    };
    Ok(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => text.into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INTEGER".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE PRECISION".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        // Timestamps are UTC instants, stored without a zone (the convention of both engines'
        // COPY from Parquet).
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Date32 => "DATE".into(),
        other => return Err(wh(format!("column type {other} cannot be loaded into SQL"))),
    })
}

/// The target table's columns: the file's, then the partition columns, then lineage.
pub fn columns_for(schema: &Schema, partition: &[String], d: Dialect) -> Result<Vec<ColumnDef>> {
    let text = if d == Dialect::Redshift {
        "VARCHAR(1024)"
    } else {
        "TEXT"
    };
    let mut defs = Vec::new();
    for f in schema.fields() {
        defs.push(ColumnDef {
            name: f.name().clone(),
            sql_type: sql_type(f.data_type(), d)?,
            in_file: true,
        });
    }
    for p in partition {
        defs.push(ColumnDef {
            name: p.clone(),
            sql_type: text.into(),
            in_file: false,
        });
    }
    for (n, t) in [
        (SOURCE_OBJECT_COLUMN, text),
        (SOURCE_OFFSET_COLUMN, "BIGINT"),
        (BATCH_COLUMN, text),
    ] {
        defs.push(ColumnDef {
            name: n.into(),
            sql_type: t.into(),
            in_file: false,
        });
    }
    Ok(defs)
}

/// An SQL string literal. Redshift also treats `\` as an escape inside literals.
pub fn quote_literal(s: &str, d: Dialect) -> String {
    let mut v = s.replace('\'', "''");
    if d == Dialect::Redshift {
        v = v.replace('\\', "\\\\");
    }
    format!("'{v}'")
}

/// DDL of the load ledger (run once, outside the load transaction).
pub fn ledger_ddl(d: Dialect) -> String {
    let text = if d == Dialect::Redshift {
        "VARCHAR(1024)"
    } else {
        "TEXT"
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (batch_id {text} NOT NULL, table_name {text} NOT NULL, \
         run_id {text} NOT NULL, files BIGINT NOT NULL, rows_staged BIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL)"
    )
}

/// The query that lists a table's existing columns (for schema evolution).
pub fn existing_columns_sql(table: &str, d: Dialect) -> String {
    format!(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() \
         AND table_name = {} ORDER BY ordinal_position",
        quote_literal(table, d)
    )
}

pub fn is_loaded_sql(batch_id: &str, d: Dialect) -> String {
    format!(
        "SELECT count(*) FROM {LEDGER_TABLE} WHERE batch_id = {}",
        quote_literal(batch_id, d)
    )
}

/// The statements of one batch, around the transport's data step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    pub dialect: Dialect,
    pub columns: Vec<ColumnDef>,
    /// Lock, create/alter the target, create the staging table.
    pub before_data: Vec<String>,
    /// Ledger guard, dedupe, merge, ledger row.
    pub after_data: Vec<String>,
}

impl LoadPlan {
    /// `existing`: the target's current columns (empty if it does not exist yet).
    pub fn new(
        batch: &LoadBatch,
        columns: Vec<ColumnDef>,
        existing: &[String],
        d: Dialect,
    ) -> LoadPlan {
        let table = quote_ident(&batch.table);
        let lit = |s: &str| quote_literal(s, d);
        let mut before = vec![match d {
            Dialect::Postgres => format!("LOCK TABLE {LEDGER_TABLE} IN EXCLUSIVE MODE"),
            Dialect::Redshift => format!("LOCK {LEDGER_TABLE}"),
        }];
        let ddl = columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        before.push(format!("CREATE TABLE IF NOT EXISTS {table} ({ddl})"));
        if !existing.is_empty() {
            for c in columns.iter().filter(|c| !existing.contains(&c.name)) {
                before.push(format!(
                    "ALTER TABLE {table} ADD COLUMN {} {}",
                    quote_ident(&c.name),
                    c.sql_type
                ));
            }
        }
        before.push(format!("DROP TABLE IF EXISTS {STAGING_TABLE}"));
        before.push(format!("CREATE TEMP TABLE {STAGING_TABLE} (LIKE {table})"));

        let in_ledger = format!(
            "SELECT 1 FROM {LEDGER_TABLE} WHERE batch_id = {}",
            lit(&batch.batch_id)
        );
        let cols = quote_list(&columns.iter().map(|c| &c.name).collect::<Vec<_>>());
        let mut after = vec![format!(
            "DELETE FROM {STAGING_TABLE} WHERE EXISTS ({in_ledger})"
        )];
        if batch.merge_keys.is_empty() {
            after.push(format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM {STAGING_TABLE}"
            ));
        } else {
            let keys = quote_list(&batch.merge_keys);
            let (so, sf) = (
                quote_ident(SOURCE_OBJECT_COLUMN),
                quote_ident(SOURCE_OFFSET_COLUMN),
            );
            let join = |a: &str, b: &str| {
                batch
                    .merge_keys
                    .iter()
                    .map(|k| format!("{a}.{q} = {b}.{q}", q = quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            };
            after.push(format!("DROP TABLE IF EXISTS {BATCH_TABLE}"));
            after.push(format!(
                "CREATE TEMP TABLE {BATCH_TABLE} AS SELECT {cols} FROM (SELECT {cols}, \
                 ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {so}, {sf}) AS _tributary_rank \
                 FROM {STAGING_TABLE}) AS ranked WHERE _tributary_rank = 1"
            ));
            after.push(format!(
                "DELETE FROM {BATCH_TABLE} USING {table} WHERE {} AND ({table}.{so} < {BATCH_TABLE}.{so} \
                 OR ({table}.{so} = {BATCH_TABLE}.{so} AND {table}.{sf} <= {BATCH_TABLE}.{sf}))",
                join(&table, BATCH_TABLE)
            ));
            after.push(format!(
                "DELETE FROM {table} USING {BATCH_TABLE} WHERE {}",
                join(&table, BATCH_TABLE)
            ));
            after.push(format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM {BATCH_TABLE}"
            ));
        }
        let now = match d {
            Dialect::Postgres => "now()",
            Dialect::Redshift => "GETDATE()",
        };
        after.push(format!(
            "INSERT INTO {LEDGER_TABLE} (batch_id, table_name, run_id, files, rows_staged, loaded_at) \
             SELECT {}, {}, {}, {}, (SELECT count(*) FROM {STAGING_TABLE}), {now} \
             WHERE NOT EXISTS ({in_ledger})",
            lit(&batch.batch_id),
            lit(&batch.table),
            lit(&batch.run_id),
            batch.files.len()
        ));
        LoadPlan {
            dialect: d,
            columns,
            before_data: before,
            after_data: after,
        }
    }

    pub fn file_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| c.in_file)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Files of a batch that share their partition values and source position: Redshift copies
/// each group with one COPY and then fills the columns that are not in the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGroup<'a> {
    pub partition: Vec<(String, String)>,
    pub object: String,
    pub offset: u64,
    pub files: Vec<&'a LoadFile>,
}

pub fn file_groups(batch: &LoadBatch) -> Vec<FileGroup<'_>> {
    let mut groups: Vec<FileGroup<'_>> = Vec::new();
    for f in &batch.files {
        let found = groups.iter_mut().find(|g| {
            g.partition == f.file.partition
                && g.object == f.position.object
                && g.offset == f.position.offset
        });
        match found {
            Some(g) => g.files.push(f),
            None => groups.push(FileGroup {
                partition: f.file.partition.clone(),
                object: f.position.object.clone(),
                offset: f.position.offset,
                files: vec![f],
            }),
        }
    }
    groups
}

/// Redshift's COPY from Parquet maps columns by position and needs as many table columns as the
/// file has, so each group is copied into a file-shaped table first. Its DDL (appended to the
/// plan's `before_data` by the Redshift transport).
pub fn redshift_file_stage_ddl(plan: &LoadPlan) -> [String; 2] {
    let cols = plan
        .columns
        .iter()
        .filter(|c| c.in_file)
        .map(|c| format!("{} {}", quote_ident(&c.name), c.sql_type))
        .collect::<Vec<_>>()
        .join(", ");
    [
        format!("DROP TABLE IF EXISTS {FILE_STAGE_TABLE}"),
        format!("CREATE TEMP TABLE {FILE_STAGE_TABLE} ({cols})"),
    ]
}

/// Redshift's data step for one group: COPY the group's manifest into the file-shaped table,
/// move its rows into staging with the partition values and lineage of the group, empty it
/// (DELETE, not TRUNCATE: TRUNCATE would commit the transaction).
pub fn redshift_copy_group(
    plan: &LoadPlan,
    batch: &LoadBatch,
    group: &FileGroup<'_>,
    manifest_url: &str,
    iam_role: &str,
) -> [String; 3] {
    let d = Dialect::Redshift;
    let copy = format!(
        "COPY {FILE_STAGE_TABLE} FROM {} IAM_ROLE {} FORMAT AS PARQUET MANIFEST",
        quote_literal(manifest_url, d),
        quote_literal(iam_role, d)
    );
    let mut names: Vec<String> = plan.file_columns().iter().map(|c| quote_ident(c)).collect();
    let mut values: Vec<String> = names.clone();
    for (k, v) in &group.partition {
        names.push(quote_ident(k));
        values.push(quote_literal(v, d));
    }
    names.push(quote_ident(SOURCE_OBJECT_COLUMN));
    values.push(quote_literal(&group.object, d));
    names.push(quote_ident(SOURCE_OFFSET_COLUMN));
    values.push(group.offset.to_string());
    names.push(quote_ident(BATCH_COLUMN));
    values.push(quote_literal(&batch.batch_id, d));
    let insert = format!(
        "INSERT INTO {STAGING_TABLE} ({}) SELECT {} FROM {FILE_STAGE_TABLE}",
        names.join(", "),
        values.join(", ")
    );
    [copy, insert, format!("DELETE FROM {FILE_STAGE_TABLE}")]
}

/// Redshift's COPY manifest for a group (`content_length` is required for Parquet).
pub fn redshift_manifest(entries: &[(String, u64)]) -> String {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(url, len)| {
            serde_json::json!({"url": url, "mandatory": true, "meta": {"content_length": len}})
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "entries": entries }))
        .expect("manifest serialises")
}

/// PostgreSQL's data step: `COPY staging (all columns) FROM STDIN` in text format.
pub fn postgres_copy_sql(plan: &LoadPlan) -> String {
    format!(
        "COPY {STAGING_TABLE} ({}) FROM STDIN",
        quote_list(&plan.columns.iter().map(|c| &c.name).collect::<Vec<_>>())
    )
}

/// Appends one value in COPY text format (`\N` for NULL; backslash, tab, newline and carriage
/// return escaped).
pub fn push_copy_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            for b in s.bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
        }
    }
}

/// A value of an Arrow column rendered as SQL text input (`None` for NULL).
pub fn render_value(col: &dyn Array, i: usize) -> Result<Option<String>> {
    if col.is_null(i) {
        return Ok(None);
    }
    use arrow::datatypes as t;
    Ok(Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).to_string(),
        DataType::Utf8View => col.as_string_view().value(i).to_string(),
        DataType::Int8 => col.as_primitive::<t::Int8Type>().value(i).to_string(),
        DataType::Int16 => col.as_primitive::<t::Int16Type>().value(i).to_string(),
        DataType::Int32 => col.as_primitive::<t::Int32Type>().value(i).to_string(),
        DataType::Int64 => col.as_primitive::<t::Int64Type>().value(i).to_string(),
        DataType::UInt8 => col.as_primitive::<t::UInt8Type>().value(i).to_string(),
        DataType::UInt16 => col.as_primitive::<t::UInt16Type>().value(i).to_string(),
        DataType::UInt32 => col.as_primitive::<t::UInt32Type>().value(i).to_string(),
        DataType::UInt64 => col.as_primitive::<t::UInt64Type>().value(i).to_string(),
        DataType::Boolean => col.as_boolean().value(i).to_string(),
        DataType::Float32 => col.as_primitive::<t::Float32Type>().value(i).to_string(),
        DataType::Float64 => col.as_primitive::<t::Float64Type>().value(i).to_string(),
        DataType::Decimal128(_, s) => {
            format_decimal(col.as_primitive::<t::Decimal128Type>().value(i), *s)
        }
        DataType::Timestamp(unit, _) => {
            let raw = super::timestamp_micros(col, unit, i);
            format_micros(raw)
        }
        DataType::Date32 => format_days(col.as_primitive::<t::Date32Type>().value(i)),
        other => return Err(wh(format!("unsupported column type {other}"))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};
    use protocol::{OutputFile, SourcePosition};

    fn batch(merge_keys: &[&str]) -> LoadBatch {
        let file = |key: &str, day: &str, object: &str, offset| LoadFile {
            file: OutputFile {
                key: key.into(),
                partition: vec![("day".into(), day.into())],
                rows: 10,
                bytes: 1234,
            },
            shard_index: 0,
            position: SourcePosition {
                object: object.into(),
                offset,
            },
        };
        LoadBatch {
            batch_id: "run-1-events-b0003".into(),
            run_id: "run-1".into(),
            table: "web events".into(),
            merge_keys: merge_keys.iter().map(|s| s.to_string()).collect(),
            shards: vec!["s00000".into(), "s00001".into()],
            files: vec![
                file(
                    "t/day=2025-05-01/a.parquet",
                    "2025-05-01",
                    "raw/o'brien.ndjson",
                    0,
                ),
                file(
                    "t/day=2025-05-01/b.parquet",
                    "2025-05-01",
                    "raw/o'brien.ndjson",
                    0,
                ),
                file(
                    "t/day=2025-05-02/c.parquet",
                    "2025-05-02",
                    "raw/o'brien.ndjson",
                    4096,
                ),
            ],
            masked_columns: vec![],
        }
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("amount", DataType::Decimal128(18, 2), true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ])
    }

    /// The generated SQL, pinned: any change to it must be deliberate.
    #[test]
    fn redshift_plan_is_pinned() {
        let b = batch(&["event_id"]);
        let cols = columns_for(&schema(), &["day".into()], Dialect::Redshift).unwrap();
        let plan = LoadPlan::new(
            &b,
            cols,
            &["event_id".into(), "amount".into()],
            Dialect::Redshift,
        );
        let groups = file_groups(&b);
        assert_eq!(groups.len(), 2);
        let mut all = plan.before_data.clone();
        all.extend(redshift_file_stage_ddl(&plan));
        all.extend(redshift_copy_group(
            &plan,
            &b,
            &groups[0],
            "s3://lake/_manifests/run-1-events-b0003/g000.manifest",
            "arn:aws:iam::123456789012:role/tributary-copy",
        ));
        all.extend(plan.after_data.clone());
        let got = all.join(";\n");
        let want = r#"LOCK _tributary_load_ledger;
CREATE TABLE IF NOT EXISTS "web events" ("event_id" VARCHAR(65535), "amount" DECIMAL(18,2), "ts" TIMESTAMP, "day" VARCHAR(1024), "_tributary_source_object" VARCHAR(1024), "_tributary_source_offset" BIGINT, "_tributary_batch_id" VARCHAR(1024));
ALTER TABLE "web events" ADD COLUMN "ts" TIMESTAMP;
ALTER TABLE "web events" ADD COLUMN "day" VARCHAR(1024);
ALTER TABLE "web events" ADD COLUMN "_tributary_source_object" VARCHAR(1024);
ALTER TABLE "web events" ADD COLUMN "_tributary_source_offset" BIGINT;
ALTER TABLE "web events" ADD COLUMN "_tributary_batch_id" VARCHAR(1024);
DROP TABLE IF EXISTS _tributary_staging;
CREATE TEMP TABLE _tributary_staging (LIKE "web events");
DROP TABLE IF EXISTS _tributary_file_stage;
CREATE TEMP TABLE _tributary_file_stage ("event_id" VARCHAR(65535), "amount" DECIMAL(18,2), "ts" TIMESTAMP);
COPY _tributary_file_stage FROM 's3://lake/_manifests/run-1-events-b0003/g000.manifest' IAM_ROLE 'arn:aws:iam::123456789012:role/tributary-copy' FORMAT AS PARQUET MANIFEST;
INSERT INTO _tributary_staging ("event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id") SELECT "event_id", "amount", "ts", '2025-05-01', 'raw/o''brien.ndjson', 0, 'run-1-events-b0003' FROM _tributary_file_stage;
DELETE FROM _tributary_file_stage;
DELETE FROM _tributary_staging WHERE EXISTS (SELECT 1 FROM _tributary_load_ledger WHERE batch_id = 'run-1-events-b0003');
DROP TABLE IF EXISTS _tributary_batch;
CREATE TEMP TABLE _tributary_batch AS SELECT "event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id" FROM (SELECT "event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id", ROW_NUMBER() OVER (PARTITION BY "event_id" ORDER BY "_tributary_source_object", "_tributary_source_offset") AS _tributary_rank FROM _tributary_staging) AS ranked WHERE _tributary_rank = 1;
DELETE FROM _tributary_batch USING "web events" WHERE "web events"."event_id" = _tributary_batch."event_id" AND ("web events"."_tributary_source_object" < _tributary_batch."_tributary_source_object" OR ("web events"."_tributary_source_object" = _tributary_batch."_tributary_source_object" AND "web events"."_tributary_source_offset" <= _tributary_batch."_tributary_source_offset"));
DELETE FROM "web events" USING _tributary_batch WHERE "web events"."event_id" = _tributary_batch."event_id";
INSERT INTO "web events" ("event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id") SELECT "event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id" FROM _tributary_batch;
INSERT INTO _tributary_load_ledger (batch_id, table_name, run_id, files, rows_staged, loaded_at) SELECT 'run-1-events-b0003', 'web events', 'run-1', 3, (SELECT count(*) FROM _tributary_staging), GETDATE() WHERE NOT EXISTS (SELECT 1 FROM _tributary_load_ledger WHERE batch_id = 'run-1-events-b0003')"#;
        assert_eq!(got, want, "\n--- got ---\n{got}");
    }

    #[test]
    fn postgres_append_plan_is_pinned() {
        let b = batch(&[]);
        let cols = columns_for(&schema(), &["day".into()], Dialect::Postgres).unwrap();
        let plan = LoadPlan::new(&b, cols, &[], Dialect::Postgres);
        let mut all = plan.before_data.clone();
        all.push(postgres_copy_sql(&plan));
        all.extend(plan.after_data.clone());
        let got = all.join(";\n");
        let want = r#"LOCK TABLE _tributary_load_ledger IN EXCLUSIVE MODE;
CREATE TABLE IF NOT EXISTS "web events" ("event_id" TEXT, "amount" DECIMAL(18,2), "ts" TIMESTAMP, "day" TEXT, "_tributary_source_object" TEXT, "_tributary_source_offset" BIGINT, "_tributary_batch_id" TEXT);
DROP TABLE IF EXISTS _tributary_staging;
CREATE TEMP TABLE _tributary_staging (LIKE "web events");
COPY _tributary_staging ("event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id") FROM STDIN;
DELETE FROM _tributary_staging WHERE EXISTS (SELECT 1 FROM _tributary_load_ledger WHERE batch_id = 'run-1-events-b0003');
INSERT INTO "web events" ("event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id") SELECT "event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id" FROM _tributary_staging;
INSERT INTO _tributary_load_ledger (batch_id, table_name, run_id, files, rows_staged, loaded_at) SELECT 'run-1-events-b0003', 'web events', 'run-1', 3, (SELECT count(*) FROM _tributary_staging), now() WHERE NOT EXISTS (SELECT 1 FROM _tributary_load_ledger WHERE batch_id = 'run-1-events-b0003')"#;
        assert_eq!(got, want, "\n--- got ---\n{got}");
    }

    #[test]
    fn manifest_has_content_length_and_literals_are_escaped() {
        let m = redshift_manifest(&[("s3://b/k.parquet".into(), 1234)]);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["entries"][0]["meta"]["content_length"], 1234);
        assert_eq!(v["entries"][0]["mandatory"], true);
        assert_eq!(quote_literal("a'b\\c", Dialect::Redshift), "'a''b\\\\c'");
        assert_eq!(quote_literal("a'b\\c", Dialect::Postgres), "'a''b\\c'");
        assert_eq!(
            quote_ident("x\"; DROP TABLE y; --"),
            "\"x\"\"; DROP TABLE y; --\""
        );
        let mut out = Vec::new();
        push_copy_text(&mut out, Some("a\tb\\c\nd"));
        out.push(b'\t');
        push_copy_text(&mut out, None);
        assert_eq!(out, b"a\\tb\\\\c\\nd\t\\N");
    }
}
