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
//!                                               --   (at the same one, the later load wins: the
//!                                               --   source sent that place again, rewritten)
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

use super::evolve::{Change, ColType, REDSHIFT_MAX_VARCHAR, reconcile};
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
    pub ty: ColType,
    pub sql_type: String,
    /// Whether the column is inside the Parquet files (not a partition or lineage column).
    pub in_file: bool,
    /// A column evolved from undeclared JSON fields (`evolve::is_evolved`): a type conflict keeps
    /// its text instead of refusing the batch.
    pub evolved: bool,
}

/// A column the target table already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingColumn {
    pub name: String,
    pub ty: ColType,
}

fn wh(detail: impl Into<String>) -> BackendError {
    BackendError::Warehouse(detail.into())
}

/// The SQL type of an Arrow type in a dialect.
pub fn sql_type(dt: &DataType, d: Dialect) -> Result<String> {
    Ok(col_type(dt)?.sql(d))
}

fn field_type(f: &arrow::datatypes::Field) -> Result<ColType> {
    ColType::of_field(f).ok_or_else(|| {
        wh(format!(
            "column {:?} of type {} cannot be loaded into SQL",
            f.name(),
            f.data_type()
        ))
    })
}

fn col_type(dt: &DataType) -> Result<ColType> {
    ColType::from_arrow(dt).ok_or_else(|| wh(format!("column type {dt} cannot be loaded into SQL")))
}

/// The target table's columns: the file's, then the partition columns, then lineage.
pub fn columns_for(schema: &Schema, partition: &[String], d: Dialect) -> Result<Vec<ColumnDef>> {
    let text = ColType::Text {
        max_bytes: (d == Dialect::Redshift).then_some(1024),
    };
    let def = |name: &str, ty: ColType, in_file| ColumnDef {
        name: name.into(),
        sql_type: ty.sql(d),
        ty,
        in_file,
        evolved: false,
    };
    let mut defs = Vec::new();
    for f in schema.fields() {
        let ty = match field_type(f)? {
            ColType::Text { max_bytes: None } if d == Dialect::Redshift => ColType::Text {
                max_bytes: Some(REDSHIFT_MAX_VARCHAR),
            },
            ty => ty,
        };
        defs.push(ColumnDef {
            evolved: super::evolve::is_evolved(f),
            ..def(f.name(), ty, true)
        });
    }
    for p in partition {
        defs.push(def(p, text.clone(), false));
    }
    defs.push(def(SOURCE_OBJECT_COLUMN, text.clone(), false));
    defs.push(def(SOURCE_OFFSET_COLUMN, ColType::Int64, false));
    defs.push(def(BATCH_COLUMN, text, false));
    Ok(defs)
}

/// Redshift VARCHAR lengths from what the batch's files hold: each string column in the files
/// gets the longest value's byte length rounded up to a power of two (at least 256, at most
/// 65,535), so a table starts narrow and is widened by a later batch that needs more. Files
/// without lengths (older workers) keep the longest VARCHAR.
pub fn size_varchars(columns: &mut [ColumnDef], files: &[LoadFile]) {
    if files
        .iter()
        .any(|f| f.file.max_bytes.is_empty() && f.file.rows > 0)
    {
        return;
    }
    for c in columns.iter_mut().filter(|c| c.in_file) {
        if !matches!(c.ty, ColType::Text { .. }) {
            continue;
        }
        let longest = files
            .iter()
            .filter_map(|f| f.file.max_bytes.get(&c.name))
            .max()
            .copied()
            .unwrap_or(0);
        let n = longest
            .max(256)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .min(u64::from(REDSHIFT_MAX_VARCHAR)) as u32;
        c.ty = ColType::Text { max_bytes: Some(n) };
        c.sql_type = c.ty.sql(Dialect::Redshift);
    }
}

/// The DDL that brings an existing table to `columns` inside the load transaction: new columns
/// added, widened columns altered; a narrowing or incompatible change refuses the batch. An
/// evolved column the table keeps as text takes the table's type in `columns` (the data step
/// then moves the values' text into it).
pub fn evolve_table(
    table: &str,
    columns: &mut [ColumnDef],
    existing: &[ExistingColumn],
    d: Dialect,
) -> Result<Vec<String>> {
    let q = quote_ident(table);
    let mut ddl = Vec::new();
    for c in columns.iter_mut() {
        let Some(have) = existing.iter().find(|e| e.name == c.name) else {
            ddl.push(format!(
                "ALTER TABLE {q} ADD COLUMN {} {}",
                quote_ident(&c.name),
                c.sql_type
            ));
            continue;
        };
        match reconcile(table, &c.name, &have.ty, &c.ty, c.evolved)? {
            Change::Widen(to) => {
                ddl.extend(widen_column(&q, &c.name, &have.ty, &to, d));
                if c.evolved && matches!(to, ColType::Text { .. }) {
                    c.sql_type = to.sql(d);
                    c.ty = to;
                }
            }
            Change::Keep if c.evolved && matches!(have.ty, ColType::Text { .. }) => {
                c.ty = have.ty.clone();
                c.sql_type = have.ty.sql(d);
            }
            Change::Keep => {}
        }
    }
    Ok(ddl)
}

/// Redshift's table attributes from the pipeline's `[load]`: ` DISTSTYLE KEY DISTKEY("c")
/// COMPOUND SORTKEY("a", "b")` (empty on PostgreSQL, which has neither).
pub fn table_attributes(l: &protocol::TableLayout, d: Dialect) -> String {
    if d != Dialect::Redshift {
        return String::new();
    }
    let mut out = String::new();
    if let Some(style) = &l.dist_style {
        out.push_str(&format!(" DISTSTYLE {}", style.to_ascii_uppercase()));
    }
    if let Some(k) = &l.dist_key {
        out.push_str(&format!(" DISTKEY({})", quote_ident(k)));
    }
    if !l.sort_keys.is_empty() {
        out.push_str(&format!(" COMPOUND SORTKEY({})", quote_list(&l.sort_keys)));
    }
    out
}

/// One column widened in place. Redshift alters only a VARCHAR's length; any other change
/// (also a column that becomes a VARCHAR) is rebuilt as a new column that takes the old one's
/// values and name. PostgreSQL alters in place (`USING … ::text` for a column becoming text).
fn widen_column(
    table: &str,
    column: &str,
    from: &ColType,
    to: &ColType,
    d: Dialect,
) -> Vec<String> {
    let col = quote_ident(column);
    let sql = to.sql(d);
    let to_text = matches!(to, ColType::Text { .. });
    let from_text = matches!(from, ColType::Text { .. });
    if d == Dialect::Postgres {
        let using = if to_text && !from_text {
            format!(" USING {col}::text")
        } else {
            String::new()
        };
        return vec![format!(
            "ALTER TABLE {table} ALTER COLUMN {col} TYPE {sql}{using}"
        )];
    }
    if to_text && from_text {
        return vec![format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE {sql}")];
    }
    let tmp = quote_ident(&format!("{column}__tributary_widen"));
    let value = if to_text {
        redshift_text_of(&col, from)
    } else {
        col.clone()
    };
    vec![
        format!("ALTER TABLE {table} ADD COLUMN {tmp} {sql}"),
        format!("UPDATE {table} SET {tmp} = {value}"),
        format!("ALTER TABLE {table} DROP COLUMN {col}"),
        format!("ALTER TABLE {table} RENAME COLUMN {tmp} TO {col}"),
    ]
}

/// A Redshift expression giving the text of column `col` of type `ty` (Redshift casts no
/// BOOLEAN to a string, and a SUPER by JSON_SERIALIZE).
fn redshift_text_of(col: &str, ty: &ColType) -> String {
    match ty {
        ColType::Text { .. } => col.to_string(),
        ColType::Bool => format!("CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END"),
        ColType::Json => format!("JSON_SERIALIZE({col})"),
        _ => format!("CAST({col} AS VARCHAR({REDSHIFT_MAX_VARCHAR}))"),
    }
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

/// The query that lists a table's existing columns and their types (for schema evolution):
/// name, data_type, character_maximum_length, numeric_precision, numeric_scale, all as text.
pub fn existing_columns_sql(table: &str, d: Dialect) -> String {
    format!(
        "SELECT CAST(column_name AS VARCHAR), CAST(data_type AS VARCHAR), \
         CAST(character_maximum_length AS VARCHAR), CAST(numeric_precision AS VARCHAR), \
         CAST(numeric_scale AS VARCHAR) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = {} ORDER BY ordinal_position",
        quote_literal(table, d)
    )
}

/// A row of [`existing_columns_sql`], as text.
pub fn existing_column(row: &[Option<String>]) -> Option<ExistingColumn> {
    let num = |i: usize| row.get(i)?.as_deref()?.trim().parse::<i64>().ok();
    Some(ExistingColumn {
        name: row.first()?.clone()?,
        ty: ColType::from_catalog(row.get(1)?.as_deref()?, num(2), num(3), num(4)),
    })
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
    /// `existing`: the target's current columns (empty if it does not exist yet). A column the
    /// table cannot take (narrowed or changed type) refuses the batch before any statement runs.
    pub fn new(
        batch: &LoadBatch,
        mut columns: Vec<ColumnDef>,
        existing: &[ExistingColumn],
        d: Dialect,
    ) -> Result<LoadPlan> {
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
        before.push(format!(
            "CREATE TABLE IF NOT EXISTS {table} ({ddl}){}",
            table_attributes(&batch.layout, d)
        ));
        if !existing.is_empty() {
            before.extend(evolve_table(&batch.table, &mut columns, existing, d)?);
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
                 OR ({table}.{so} = {BATCH_TABLE}.{so} AND {table}.{sf} < {BATCH_TABLE}.{sf}))",
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
        Ok(LoadPlan {
            dialect: d,
            columns,
            before_data: before,
            after_data: after,
        })
    }

    pub fn file_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| c.in_file)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// Files of a batch that share their partition values, source position and schema: Redshift
/// copies each group with one COPY and then fills the columns that are not in the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGroup<'a> {
    pub partition: Vec<(String, String)>,
    pub object: String,
    pub offset: u64,
    /// The files' schema: an index into the batch's distinct shapes (`shapes::Shapes`).
    pub shape: usize,
    pub files: Vec<&'a LoadFile>,
}

/// `shape_of[i]`: the shape of the batch's i-th file.
pub fn file_groups<'a>(batch: &'a LoadBatch, shape_of: &[usize]) -> Vec<FileGroup<'a>> {
    let mut groups: Vec<FileGroup<'_>> = Vec::new();
    for (i, f) in batch.files.iter().enumerate() {
        let shape = shape_of.get(i).copied().unwrap_or(0);
        let found = groups.iter_mut().find(|g| {
            g.partition == f.file.partition
                && g.object == f.position.object
                && g.offset == f.position.offset
                && g.shape == shape
        });
        match found {
            Some(g) => g.files.push(f),
            None => groups.push(FileGroup {
                partition: f.file.partition.clone(),
                object: f.position.object.clone(),
                offset: f.position.offset,
                shape,
                files: vec![f],
            }),
        }
    }
    groups
}

/// Redshift's COPY from Parquet maps columns by position and needs as many table columns as the
/// file has, so each group is copied into a table shaped like its files first: one such table
/// per distinct file schema of the batch, with the file's own types (an int16 file's column is
/// SMALLINT there; the move into staging widens it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStage {
    pub table: String,
    /// (column, type in the file-shaped table, the value moved into staging).
    columns: Vec<(String, String, String)>,
}

impl FileStage {
    /// The `n`-th distinct shape of the batch (`_tributary_file_stage`, then `…_1`, `…_2`).
    pub fn new(plan: &LoadPlan, shape: &Schema, n: usize) -> Result<FileStage> {
        let mut columns = Vec::new();
        for f in shape.fields() {
            let c = plan
                .columns
                .iter()
                .find(|c| c.in_file && c.name == *f.name())
                .ok_or_else(|| {
                    wh(format!(
                        "column {:?} is missing from the load plan",
                        f.name()
                    ))
                })?;
            let q = quote_ident(f.name());
            let target_text = matches!(c.ty, ColType::Text { .. });
            let (sql, value) = match field_type(f)? {
                // COPY reads the Parquet string; the move into staging parses it (or keeps the
                // text, for an evolved column the table holds as text).
                ColType::Json if target_text => {
                    (format!("VARCHAR({REDSHIFT_MAX_VARCHAR})"), q.clone())
                }
                ColType::Json => (
                    format!("VARCHAR({REDSHIFT_MAX_VARCHAR})"),
                    format!("JSON_PARSE({q})"),
                ),
                ColType::Text { .. } => (c.sql_type.clone(), q.clone()),
                t if t == c.ty => (c.sql_type.clone(), q.clone()),
                // An evolved column held as text: the value's text.
                t if target_text => (t.sql(Dialect::Redshift), redshift_text_of(&q, &t)),
                t => (t.sql(Dialect::Redshift), q.clone()),
            };
            columns.push((q, sql, value));
        }
        let table = match n {
            0 => FILE_STAGE_TABLE.to_string(),
            n => format!("{FILE_STAGE_TABLE}_{n}"),
        };
        Ok(FileStage { table, columns })
    }

    /// Its DDL (appended to the plan's `before_data` by the Redshift transport).
    pub fn ddl(&self) -> [String; 2] {
        let cols = self
            .columns
            .iter()
            .map(|(q, sql, _)| format!("{q} {sql}"))
            .collect::<Vec<_>>()
            .join(", ");
        [
            format!("DROP TABLE IF EXISTS {}", self.table),
            format!("CREATE TEMP TABLE {} ({cols})", self.table),
        ]
    }
}

/// Redshift's data step for one group: COPY the group's manifest into its file-shaped table,
/// move its rows into staging with the partition values and lineage of the group (columns the
/// files lack stay NULL), empty it (DELETE, not TRUNCATE: TRUNCATE would commit the
/// transaction).
pub fn redshift_copy_group(
    stage: &FileStage,
    batch: &LoadBatch,
    group: &FileGroup<'_>,
    manifest_url: &str,
    iam_role: &str,
) -> [String; 3] {
    let d = Dialect::Redshift;
    let copy = format!(
        "COPY {} FROM {} IAM_ROLE {} FORMAT AS PARQUET MANIFEST",
        stage.table,
        quote_literal(manifest_url, d),
        quote_literal(iam_role, d)
    );
    let mut names: Vec<String> = stage.columns.iter().map(|c| c.0.clone()).collect();
    let mut values: Vec<String> = stage.columns.iter().map(|c| c.2.clone()).collect();
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
        "INSERT INTO {STAGING_TABLE} ({}) SELECT {} FROM {}",
        names.join(", "),
        values.join(", "),
        stage.table
    );
    [copy, insert, format!("DELETE FROM {}", stage.table)]
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
                max_bytes: Default::default(),
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
            layout: Default::default(),
            external: None,
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

    fn existing_col(name: &str, ty: ColType) -> ExistingColumn {
        ExistingColumn {
            name: name.into(),
            ty,
        }
    }

    fn dec(precision: u8, scale: i8) -> ColType {
        ColType::Decimal { precision, scale }
    }

    /// The table as an earlier run left it: shorter strings, narrower decimals, int32 counts.
    fn earlier_table(d: Dialect) -> Vec<ExistingColumn> {
        let text = |n| ColType::Text {
            max_bytes: (d == Dialect::Redshift).then_some(n),
        };
        vec![
            existing_col("event_id", text(256)),
            existing_col("amount", dec(10, 2)),
            existing_col("qty", ColType::Int32),
            existing_col("ts", ColType::Timestamp),
            existing_col("day", text(1024)),
            existing_col(SOURCE_OBJECT_COLUMN, text(1024)),
            existing_col(SOURCE_OFFSET_COLUMN, ColType::Int64),
            existing_col(BATCH_COLUMN, text(1024)),
        ]
    }

    fn widened_schema() -> Schema {
        let mut fields: Vec<Field> = schema().fields().iter().map(|f| (**f).clone()).collect();
        fields.push(Field::new("qty", DataType::Int64, true));
        Schema::new(fields)
    }

    /// The ALTER plans of a widening, pinned per dialect (golden): PostgreSQL alters in place;
    /// Redshift alters a VARCHAR's length and rebuilds any other widened column.
    #[test]
    fn widening_plans_are_pinned() {
        let want_pg = r#"ALTER TABLE "web events" ALTER COLUMN "amount" TYPE DECIMAL(18,2);
ALTER TABLE "web events" ALTER COLUMN "qty" TYPE BIGINT"#;
        let want_rs = r#"ALTER TABLE "web events" ALTER COLUMN "event_id" TYPE VARCHAR(65535);
ALTER TABLE "web events" ADD COLUMN "amount__tributary_widen" DECIMAL(18,2);
UPDATE "web events" SET "amount__tributary_widen" = "amount";
ALTER TABLE "web events" DROP COLUMN "amount";
ALTER TABLE "web events" RENAME COLUMN "amount__tributary_widen" TO "amount";
ALTER TABLE "web events" ADD COLUMN "qty__tributary_widen" BIGINT;
UPDATE "web events" SET "qty__tributary_widen" = "qty";
ALTER TABLE "web events" DROP COLUMN "qty";
ALTER TABLE "web events" RENAME COLUMN "qty__tributary_widen" TO "qty""#;
        for (d, want) in [(Dialect::Postgres, want_pg), (Dialect::Redshift, want_rs)] {
            let mut cols = columns_for(&widened_schema(), &["day".into()], d).unwrap();
            let ddl = evolve_table("web events", &mut cols, &earlier_table(d), d).unwrap();
            assert_eq!(ddl.join(";\n"), want, "{d:?}");
        }
    }

    #[test]
    fn redshift_varchars_are_sized_from_the_longest_values_and_widened_later() {
        let mut b = batch(&[]);
        b.files[0].file.max_bytes = [("event_id".to_string(), 40)].into();
        b.files[1].file.max_bytes = [("event_id".to_string(), 300)].into();
        b.files[2].file.max_bytes = [("event_id".to_string(), 12)].into();
        let mut cols = columns_for(&schema(), &["day".into()], Dialect::Redshift).unwrap();
        size_varchars(&mut cols, &b.files);
        assert_eq!(cols[0].sql_type, "VARCHAR(512)");
        assert_eq!(
            cols[3].sql_type, "VARCHAR(1024)",
            "partition columns keep theirs"
        );
        // The table holds VARCHAR(512); a batch with a 70,000-byte maximum widens it to the most
        // Redshift has (the workers quarantine anything longer).
        let table = [existing_col(
            "event_id",
            ColType::Text {
                max_bytes: Some(512),
            },
        )];
        b.files[1].file.max_bytes = [("event_id".to_string(), 70_000)].into();
        let mut cols = columns_for(&schema(), &["day".into()], Dialect::Redshift).unwrap();
        size_varchars(&mut cols, &b.files);
        let ddl = evolve_table("web events", &mut cols[..1], &table, Dialect::Redshift).unwrap();
        assert_eq!(
            ddl,
            [r#"ALTER TABLE "web events" ALTER COLUMN "event_id" TYPE VARCHAR(65535)"#]
        );
        // A narrower batch keeps the table as it is.
        b.files[1].file.max_bytes = [("event_id".to_string(), 5)].into();
        let mut cols = columns_for(&schema(), &[], Dialect::Redshift).unwrap();
        size_varchars(&mut cols, &b.files);
        assert!(
            evolve_table("web events", &mut cols[..1], &table, Dialect::Redshift)
                .unwrap()
                .is_empty()
        );
        // Files without lengths keep the longest VARCHAR.
        let mut cols = columns_for(&schema(), &[], Dialect::Redshift).unwrap();
        size_varchars(&mut cols, &batch(&[]).files);
        assert_eq!(cols[0].sql_type, "VARCHAR(65535)");
    }

    /// A string field marked `arrow.json` loads as JSONB / SUPER; Redshift copies it as a VARCHAR
    /// and parses it on the way into staging.
    #[test]
    fn json_columns_load_as_jsonb_and_super() {
        let json = Field::new("attrs", DataType::Utf8, true)
            .with_metadata([("ARROW:extension:name".to_string(), "arrow.json".to_string())].into());
        let s = Schema::new(vec![Field::new("event_id", DataType::Utf8, false), json]);
        let mut pg = columns_for(&s, &[], Dialect::Postgres).unwrap();
        assert_eq!(pg[1].sql_type, "JSONB");
        let b = batch(&[]);
        let cols = columns_for(&s, &[], Dialect::Redshift).unwrap();
        assert_eq!(cols[1].sql_type, "SUPER");
        let plan = LoadPlan::new(&b, cols, &[], Dialect::Redshift).unwrap();
        let stage = FileStage::new(&plan, &s, 0).unwrap();
        let [_, ddl] = stage.ddl();
        assert_eq!(
            ddl,
            r#"CREATE TEMP TABLE _tributary_file_stage ("event_id" VARCHAR(65535), "attrs" VARCHAR(65535))"#
        );
        let groups = file_groups(&b, &[]);
        let [_, insert, _] = redshift_copy_group(&stage, &b, &groups[0], "s3://m", "arn:r");
        assert!(
            insert.contains(r#"SELECT "event_id", JSON_PARSE("attrs"), '2025-05-01'"#),
            "{insert}"
        );
        let existing = [existing_col(
            "attrs",
            ColType::from_catalog("jsonb", None, None, None),
        )];
        assert!(
            evolve_table("t", &mut pg[1..2], &existing, Dialect::Postgres)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn redshift_creates_the_table_with_its_layout() {
        let mut b = batch(&["event_id"]);
        b.layout = protocol::TableLayout {
            sort_keys: vec!["ts".into(), "event_id".into()],
            dist_key: Some("event_id".into()),
            dist_style: Some("key".into()),
            analyze_share_bp: Some(1000),
        };
        let cols = columns_for(&schema(), &[], Dialect::Redshift).unwrap();
        let plan = LoadPlan::new(&b, cols.clone(), &[], Dialect::Redshift).unwrap();
        assert_eq!(
            plan.before_data[1],
            "CREATE TABLE IF NOT EXISTS \"web events\" (\"event_id\" VARCHAR(65535), \"amount\" DECIMAL(18,2), \
             \"ts\" TIMESTAMP, \"_tributary_source_object\" VARCHAR(1024), \"_tributary_source_offset\" BIGINT, \
             \"_tributary_batch_id\" VARCHAR(1024)) DISTSTYLE KEY DISTKEY(\"event_id\") COMPOUND SORTKEY(\"ts\", \"event_id\")"
        );
        let pg = LoadPlan::new(&b, cols, &[], Dialect::Postgres).unwrap();
        assert!(
            pg.before_data[1].ends_with("VARCHAR(1024))"),
            "{}",
            pg.before_data[1]
        );
    }

    #[test]
    fn a_narrowing_refuses_the_batch_before_any_statement() {
        let mut table = earlier_table(Dialect::Postgres);
        table[2].ty = ColType::Int64;
        let mut fields: Vec<Field> = schema().fields().iter().map(|f| (**f).clone()).collect();
        fields.push(Field::new("qty", DataType::Int16, true));
        let cols = columns_for(&Schema::new(fields), &["day".into()], Dialect::Postgres).unwrap();
        let err = LoadPlan::new(&batch(&[]), cols, &table, Dialect::Postgres).unwrap_err();
        assert!(matches!(err, BackendError::Schema(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "warehouse: table \"web events\", column \"qty\": the table has BIGINT (int64) and the \
             new data has SMALLINT (int16); narrowing a column is refused (nothing was loaded)"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn catalog_rows_read_as_existing_columns() {
        let row = |v: [Option<&str>; 5]| v.map(|x| x.map(String::from)).to_vec();
        assert_eq!(
            existing_column(&row([
                Some("qty"),
                Some("integer"),
                None,
                Some("32"),
                Some("0")
            ])),
            Some(existing_col("qty", ColType::Int32))
        );
        assert_eq!(
            existing_column(&row([
                Some("amount"),
                Some("numeric"),
                None,
                Some("18"),
                Some("2")
            ])),
            Some(existing_col("amount", dec(18, 2)))
        );
        assert_eq!(existing_column(&row([None, None, None, None, None])), None);
    }

    /// Issue 9: a batch whose files differ in schema gets one file-shaped table per shape, with
    /// the file's own types, and each group's move into staging names only its file's columns.
    #[test]
    fn redshift_mixed_shapes_copy_each_shape_into_its_own_table() {
        use super::super::shapes::Shapes;
        use std::sync::Arc;
        let narrow = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("qty", DataType::Int16, true),
        ]));
        let wide = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("qty", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        let b = batch(&[]);
        let shapes = Shapes::new(
            "web events",
            &[
                ("a".into(), narrow.clone()),
                ("b".into(), narrow),
                ("c".into(), wide),
            ],
        )
        .unwrap();
        let cols = columns_for(&shapes.union, &["day".into()], Dialect::Redshift).unwrap();
        let plan = LoadPlan::new(&b, cols, &[], Dialect::Redshift).unwrap();
        let groups = file_groups(&b, &shapes.of_file);
        assert_eq!(groups.iter().map(|g| g.shape).collect::<Vec<_>>(), [0, 1]);
        let stages: Vec<FileStage> = (0..2)
            .map(|n| FileStage::new(&plan, &shapes.distinct[n], n).unwrap())
            .collect();
        assert_eq!(
            stages[0].ddl()[1],
            r#"CREATE TEMP TABLE _tributary_file_stage ("event_id" VARCHAR(65535), "qty" SMALLINT)"#
        );
        assert_eq!(
            stages[1].ddl()[1],
            r#"CREATE TEMP TABLE _tributary_file_stage_1 ("event_id" VARCHAR(65535), "qty" BIGINT, "note" VARCHAR(65535))"#
        );
        let [copy, insert, delete] = redshift_copy_group(&stages[0], &b, &groups[0], "s3://m", "r");
        assert!(
            copy.starts_with("COPY _tributary_file_stage FROM"),
            "{copy}"
        );
        assert!(
            insert.starts_with(r#"INSERT INTO _tributary_staging ("event_id", "qty", "day","#),
            "{insert}"
        );
        assert_eq!(delete, "DELETE FROM _tributary_file_stage");
        let [copy, insert, _] = redshift_copy_group(&stages[1], &b, &groups[1], "s3://m", "r");
        assert!(
            copy.starts_with("COPY _tributary_file_stage_1 FROM"),
            "{copy}"
        );
        assert!(insert.contains(r#""qty", "note", "day""#), "{insert}");
        assert!(insert.ends_with("FROM _tributary_file_stage_1"), "{insert}");
    }

    /// The generated SQL, pinned: any change to it must be deliberate.
    #[test]
    fn redshift_plan_is_pinned() {
        let b = batch(&["event_id"]);
        let cols = columns_for(&schema(), &["day".into()], Dialect::Redshift).unwrap();
        let existing = [
            existing_col(
                "event_id",
                ColType::Text {
                    max_bytes: Some(65535),
                },
            ),
            existing_col("amount", dec(18, 2)),
        ];
        let plan = LoadPlan::new(&b, cols, &existing, Dialect::Redshift).unwrap();
        let groups = file_groups(&b, &[0, 0, 0]);
        assert_eq!(groups.len(), 2);
        let mut all = plan.before_data.clone();
        let stage = FileStage::new(&plan, &schema(), 0).unwrap();
        all.extend(stage.ddl());
        all.extend(redshift_copy_group(
            &stage,
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
DELETE FROM _tributary_batch USING "web events" WHERE "web events"."event_id" = _tributary_batch."event_id" AND ("web events"."_tributary_source_object" < _tributary_batch."_tributary_source_object" OR ("web events"."_tributary_source_object" = _tributary_batch."_tributary_source_object" AND "web events"."_tributary_source_offset" < _tributary_batch."_tributary_source_offset"));
DELETE FROM "web events" USING _tributary_batch WHERE "web events"."event_id" = _tributary_batch."event_id";
INSERT INTO "web events" ("event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id") SELECT "event_id", "amount", "ts", "day", "_tributary_source_object", "_tributary_source_offset", "_tributary_batch_id" FROM _tributary_batch;
INSERT INTO _tributary_load_ledger (batch_id, table_name, run_id, files, rows_staged, loaded_at) SELECT 'run-1-events-b0003', 'web events', 'run-1', 3, (SELECT count(*) FROM _tributary_staging), GETDATE() WHERE NOT EXISTS (SELECT 1 FROM _tributary_load_ledger WHERE batch_id = 'run-1-events-b0003')"#;
        assert_eq!(got, want, "\n--- got ---\n{got}");
    }

    #[test]
    fn postgres_append_plan_is_pinned() {
        let b = batch(&[]);
        let cols = columns_for(&schema(), &["day".into()], Dialect::Postgres).unwrap();
        let plan = LoadPlan::new(&b, cols, &[], Dialect::Postgres).unwrap();
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
