//! Pure validation of a pipeline file: names, references between steps and columns, option
//! ranges. Section by section; each step kind has its own check. Errors carry the field path and,
//! inside `[[columns]]` and `[[steps]]`, the line (from [`Entries`]).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::entries::Entries;
use crate::steps::{CheckCx, Columns};
use crate::validated::Pipeline;
use crate::*;

/// Letters, digits, `_` and `-`, 1 to 128 of them: pipeline, column, table and bucket names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Makes errors for one file, with the line of every field that is inside an entry.
struct Ctx<'a> {
    file: &'a str,
    entries: &'a Entries,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, field, message).at_line(self.entries.line_of_field(field))
    }
}

impl PipelineFile {
    /// Pure validation: names, references between steps and columns, option ranges.
    pub fn validate(
        mut self,
        file: &str,
        base_dir: PathBuf,
        text: &str,
        entries: &Entries,
    ) -> Result<Pipeline, ConfigError> {
        let cx = Ctx { file, entries };
        if !valid_name(&self.pipeline.name) {
            return Err(cx.err(
                "pipeline.name",
                format!(
                    "{:?} must be 1-128 letters, digits, '_' or '-'",
                    self.pipeline.name
                ),
            ));
        }
        check_source(&cx, &self.source)?;
        let on_new = self.schema.on_new_column;
        if on_new != OnNewColumn::Discard
            && !matches!(self.source.format(), Format::Ndjson | Format::JsonArray)
        {
            return Err(cx.err(
                "schema.on_new_column",
                format!(
                    "{:?} applies to JSON sources (ndjson, json_array); a CSV header names its columns at the start",
                    on_new.name()
                ),
            ));
        }
        let mut cols = check_columns(&cx, &self.source, &self.columns)?;
        let mut dedupes = 0;
        for (i, step) in self.steps.iter().enumerate() {
            dedupes += usize::from(matches!(step, Step::Dedupe(_)));
            let err = |f: &str, m: String| cx.err(f, m);
            let s = CheckCx {
                entry: format!("steps[{i}] ({})", step.op()),
                op: step.op(),
                err: &err,
            };
            step.check(&s, &mut cols)?;
        }
        if dedupes > 1 {
            return Err(cx.err("steps", "at most one dedupe step"));
        }
        if self.output.columns.is_empty() {
            let partition = &self.output.partition_by;
            let mut all: Vec<String> = Vec::new();
            for (name, _) in &cols.0 {
                if !partition.contains(name) && !all.contains(name) {
                    all.push(name.clone());
                }
            }
            self.output.columns = all;
        }
        check_output(&cx, &self.output, &cols)?;
        default_merge_keys(&mut self.load, &self.source, &self.output);
        check_load(&cx, &self.load, &self.output)?;
        let output: Vec<(String, ColumnType)> = self
            .output
            .columns
            .iter()
            .chain(&self.output.partition_by)
            .filter_map(|c| Some((c.clone(), cols.ty(c)?)))
            .collect();
        let expectations = crate::expect::validate(&self.expect, &output, &|f, m| cx.err(f, m))?;
        Ok(Pipeline {
            file: self,
            path: file.into(),
            base_dir,
            text: text.into(),
            columns: cols.0,
            expectations,
        })
    }
}

fn check_source(cx: &Ctx, s: &SourceSection) -> Result<(), ConfigError> {
    match s.kind {
        SourceKind::Files => check_files_source(cx, s)?,
        SourceKind::Postgres | SourceKind::Mysql => check_sql_source(cx, s)?,
        SourceKind::Http => check_http_source(cx, s)?,
    }
    for (f, v) in [
        ("source.csv.delimiter", &s.csv.delimiter),
        ("source.csv.quote", &s.csv.quote),
    ] {
        if v.len() != 1 || !v.is_ascii() {
            return Err(cx.err(f, format!("{v:?} must be exactly one ASCII character")));
        }
    }
    Ok(())
}

fn check_files_source(cx: &Ctx, s: &SourceSection) -> Result<(), ConfigError> {
    if s.location.trim().is_empty() {
        return Err(cx.err("source.location", "must not be empty"));
    }
    if s.format.is_none() {
        return Err(cx.err(
            "source.format",
            "required for a files source: ndjson, csv, json_array or parquet",
        ));
    }
    if s.sql.is_some() {
        return Err(cx.err(
            "source.sql",
            "applies to kind = \"postgres\" or \"mysql\"; this source is files",
        ));
    }
    if s.http.is_some() {
        return Err(cx.err(
            "source.http",
            "applies to kind = \"http\"; this source is files",
        ));
    }
    if s.raw_retention_days.is_some() {
        return Err(cx.err(
            "source.raw_retention_days",
            "applies to database sources: a file source is read where it is, never copied into the raw zone",
        ));
    }
    if let Err(e) = globset::Glob::new(&s.glob) {
        return Err(cx.err("source.glob", format!("invalid glob: {e}")));
    }
    if let Some(t) = &s.time_template
        && let Err(e) = crate::template::TimeTemplate::new(t)
    {
        return Err(cx.err("source.time_template", e));
    }
    Ok(())
}

/// File keys given to a source that is not files.
fn refuse_file_keys(cx: &Ctx, s: &SourceSection) -> Result<(), ConfigError> {
    let kind = s.kind.name();
    for (key, given) in [
        ("source.location", !s.location.is_empty()),
        ("source.format", s.format.is_some()),
        ("source.time_template", s.time_template.is_some()),
        ("source.incremental", s.incremental),
    ] {
        if given {
            return Err(cx.err(
                key,
                format!("applies to files sources, not kind = {kind:?}"),
            ));
        }
    }
    Ok(())
}

/// An `http` source: `[source.http]` names the API and how it pages and windows.
fn check_http_source(cx: &Ctx, s: &SourceSection) -> Result<(), ConfigError> {
    let Some(http) = &s.http else {
        return Err(cx.err(
            "source.http",
            "kind = \"http\" reads [source.http]: url, records_path, pagination, …",
        ));
    };
    if s.sql.is_some() {
        return Err(cx.err(
            "source.sql",
            "applies to kind = \"postgres\" or \"mysql\", not \"http\"",
        ));
    }
    refuse_file_keys(cx, s)?;
    http.check()
        .map_err(|(field, message)| cx.err(&field, message))
}

/// A `postgres` or `mysql` source: `[source.sql]` names one table or query, and its optional
/// cursor, key and lookback fit together. File keys do not apply.
fn check_sql_source(cx: &Ctx, s: &SourceSection) -> Result<(), ConfigError> {
    let kind = s.kind.name();
    let Some(sql) = &s.sql else {
        return Err(cx.err(
            "source.sql",
            format!("kind = {kind:?} reads [source.sql]: connection_env and table or query"),
        ));
    };
    if s.http.is_some() {
        return Err(cx.err(
            "source.http",
            format!("applies to kind = \"http\", not {kind:?}"),
        ));
    }
    refuse_file_keys(cx, s)?;
    let env_ok = !sql.connection_env.is_empty()
        && sql
            .connection_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !env_ok {
        return Err(cx.err(
            "source.sql.connection_env",
            format!(
                "{:?} must name an environment variable (letters, digits, '_'); the connection string is never written in the file",
                sql.connection_env
            ),
        ));
    }
    match (&sql.table, &sql.query) {
        (Some(_), Some(_)) => {
            return Err(cx.err("source.sql", "give table or query, not both"));
        }
        (None, None) => return Err(cx.err("source.sql", "give table or query")),
        (Some(t), None) => {
            let parts: Vec<&str> = t.split('.').collect();
            if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
                return Err(cx.err(
                    "source.sql.table",
                    format!("{t:?} must be \"table\" or \"schema.table\""),
                ));
            }
        }
        (None, Some(q)) if q.trim().is_empty() => {
            return Err(cx.err("source.sql.query", "must not be empty"));
        }
        (None, Some(_)) => {}
    }
    if sql.shard_rows.is_some() && sql.key_column.is_none() {
        return Err(cx.err(
            "source.sql.shard_rows",
            "needs key_column: shards are ranges of the key",
        ));
    }
    if let Some(l) = &sql.lookback {
        if sql.cursor_column.is_none() {
            return Err(cx.err(
                "source.sql.lookback",
                "needs cursor_column: it re-reads behind the cursor's watermark",
            ));
        }
        if let Err(e) = humantime::parse_duration(l) {
            return Err(cx.err(
                "source.sql.lookback",
                format!("{l:?} is not a duration (\"2h\", \"1d\", \"30m\"): {e}"),
            ));
        }
    }
    Ok(())
}

fn check_columns(
    cx: &Ctx,
    source: &SourceSection,
    decls: &[ColumnDecl],
) -> Result<Columns, ConfigError> {
    if decls.is_empty() {
        return Err(cx.err(
            "columns",
            if source.kind.is_sql() {
                "declare at least one column (coordinator run and serve read a database source's columns from its table when this is left out)"
            } else {
                "declare at least one column"
            },
        ));
    }
    let mut cols = Columns::default();
    let mut paths = BTreeSet::new();
    for (i, c) in decls.iter().enumerate() {
        let f = format!("columns[{i}]");
        if !valid_name(&c.name) {
            return Err(cx.err(
                &format!("{f}.name"),
                format!("{:?} must be letters, digits, '_' or '-'", c.name),
            ));
        }
        if cols.ty(&c.name).is_some() {
            return Err(cx.err(
                &format!("{f}.name"),
                format!("column {:?} is declared twice", c.name),
            ));
        }
        if c.path().split('.').any(str::is_empty) {
            return Err(cx.err(
                &format!("{f}.path"),
                format!("{:?} is not a valid dotted path", c.path()),
            ));
        }
        if !paths.insert(c.path().to_string()) {
            return Err(cx.err(
                &format!("{f}.path"),
                format!("path {:?} is read by two columns", c.path()),
            ));
        }
        if source.format() == Format::Csv && c.path().contains('.') {
            return Err(cx.err(
                &format!("{f}.path"),
                "CSV columns are flat: use the header name",
            ));
        }
        crate::columns::text_rules(c).map_err(|(key, m)| cx.err(&format!("{f}.{key}"), m))?;
        cols.0.push((c.name.clone(), c.ty));
    }
    // Paths must not be both a leaf and a parent (`device` and `device.os`).
    for p in &paths {
        if paths.iter().any(|q| q.starts_with(&format!("{p}."))) {
            return Err(cx.err(
                "columns",
                format!("path {p:?} is both a value and an object of other paths"),
            ));
        }
    }
    Ok(cols)
}

fn check_output(cx: &Ctx, o: &OutputSection, cols: &Columns) -> Result<(), ConfigError> {
    if o.columns.is_empty() {
        return Err(cx.err("output.columns", "list at least one output column"));
    }
    let mut seen = BTreeSet::new();
    for c in o.columns.iter().chain(o.partition_by.iter()) {
        if cols.ty(c).is_none() {
            return Err(cx.err("output.columns", format!("unknown column {c:?}")));
        }
        if !seen.insert(c) {
            return Err(cx.err(
                "output.columns",
                format!("column {c:?} is listed twice (partition columns are not stored in files)"),
            ));
        }
    }
    for c in &o.partition_by {
        if matches!(
            cols.ty(c),
            Some(
                ColumnType::Float32
                    | ColumnType::Float64
                    | ColumnType::Timestamp
                    | ColumnType::Json
            )
        ) {
            return Err(cx.err(
                "output.partition_by",
                format!("column {c:?}: partition by a string, integer, bool or date"),
            ));
        }
    }
    if o.codec == Codec::Zstd && !(1..=22).contains(&o.level) {
        return Err(cx.err("output.level", "zstd level must be 1 to 22"));
    }
    if o.row_group_rows.get() > 1 << 24 {
        return Err(cx.err("output.row_group_rows", "at most 16,777,216"));
    }
    Ok(())
}

/// A database source's `key_column` is its merge key when `[load]` names none: a row read
/// again (updated) replaces the one loaded before instead of being appended beside it.
fn default_merge_keys(l: &mut LoadSection, s: &SourceSection, o: &OutputSection) {
    if l.merge_keys_given {
        return;
    }
    if let Some(k) = s.sql.as_ref().and_then(|q| q.key_column.as_ref())
        && (o.columns.contains(k) || o.partition_by.contains(k))
    {
        l.merge_keys = vec![k.clone()];
    }
}

fn check_load(cx: &Ctx, l: &LoadSection, o: &OutputSection) -> Result<(), ConfigError> {
    if let Some(t) = &l.table
        && !valid_name(t)
    {
        return Err(cx.err(
            "load.table",
            format!("{t:?} must be letters, digits, '_' or '-'"),
        ));
    }
    if let Some(s) = &l.external_schema
        && (s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(cx.err(
            "load.external_schema",
            format!("{s:?} must name a Redshift external schema: letters, digits and '_'"),
        ));
    }
    let is_output = |k: &String| o.columns.contains(k) || o.partition_by.contains(k);
    for (field, keys) in [
        ("load.merge_keys", &l.merge_keys),
        ("load.sort_keys", &l.sort_keys),
    ] {
        if let Some(k) = keys.iter().find(|k| !is_output(k)) {
            return Err(cx.err(field, format!("{k:?} is not an output column")));
        }
    }
    if let Some(k) = l.dist_key.as_ref().filter(|k| !is_output(k)) {
        return Err(cx.err("load.dist_key", format!("{k:?} is not an output column")));
    }
    match (l.dist_style, &l.dist_key) {
        (Some(DistStyle::Key), None) => {
            return Err(cx.err("load.dist_style", "dist_style = \"key\" needs a dist_key"));
        }
        (Some(s), Some(_)) if s != DistStyle::Key => {
            return Err(cx.err(
                "load.dist_key",
                format!(
                    "a dist_key distributes by key; dist_style is {:?}",
                    s.as_str()
                ),
            ));
        }
        _ => {}
    }
    if !(0.0..=1.0).contains(&l.analyze_share) {
        return Err(cx.err(
            "load.analyze_share",
            format!("{} is not between 0 and 1", l.analyze_share),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pipeline]
name = "t"
[source]
location = "in"
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "os"
path = "device.os"
type = "string"
[[columns]]
name = "amount"
type = "decimal(18,2)"
[[steps]]
op = "upper"
columns = ["os"]
[output]
columns = ["id", "os", "amount"]
[load]
merge_keys = ["id"]
"#;

    fn check(text: &str) -> Result<Pipeline, ConfigError> {
        crate::parse(text, "p.toml", PathBuf::from("."))
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for f in [
            "pipeline.example.toml",
            "workload.toml",
            "workload_csv.toml",
            "demo/web_events.toml",
            "demo/pos_sales.toml",
            "demo/billing.toml",
            "pos/kasse.toml",
            "postgres/orders.toml",
            "http/tickets.toml",
            "mysql/orders.toml",
        ] {
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
            if let Err(e) = crate::parse(&text, f, dir.clone()) {
                panic!("{e}");
            }
        }
    }

    fn with_steps(steps: &str) -> String {
        MINIMAL.replace("[output]", &format!("{steps}\n[output]"))
    }

    #[test]
    fn expressions_are_typed_and_their_errors_name_entry_line_and_position() {
        let p = check(&with_steps(
            "[[steps]]\nop = \"derive\"\ncolumn = \"doubled\"\nexpr = \"amount * 2\"\n\
             [[steps]]\nop = \"filter\"\ndrop_where = \"doubled > 100\"\n\
             [[steps]]\nop = \"reject\"\nwhere = \"os IS NULL\"\nreason = \"no os\"",
        ))
        .unwrap();
        assert!(matches!(
            p.column_type("doubled"),
            Some(ColumnType::Decimal { scale: 2, .. })
        ));
        let text =
            with_steps("[[steps]]\nop = \"derive\"\ncolumn = \"x\"\nexpr = \"amount * nope\"");
        let e = check(&text).unwrap_err();
        assert_eq!(e.field, "steps[1] (derive).expr", "{e}");
        let line = text.lines().position(|l| l.starts_with("expr =")).unwrap() + 1;
        assert_eq!(e.line, Some(line), "{e}");
        assert!(
            e.message.starts_with("at column 10 of the expression: "),
            "{e}"
        );
        expect_err(
            &with_steps("[[steps]]\nop = \"filter\"\ndrop_where = \"amount + 1\""),
            "steps[1] (filter).drop_where",
            "true or false",
        );
        expect_err(
            &with_steps("[[steps]]\nop = \"reject\"\nwhere = \"os = \""),
            "steps[1] (reject).where",
            "Expected",
        );
    }

    #[test]
    fn minimal_pipeline_is_valid() {
        let p = check(MINIMAL).unwrap();
        assert_eq!(p.table(), "t");
        assert_eq!(
            p.column_type("amount"),
            Some(ColumnType::Decimal {
                precision: 18,
                scale: 2
            })
        );
        assert_eq!(p.file.output.row_group_rows.get(), 122_880);
    }

    fn expect_err(text: &str, field: &str, needle: &str) {
        let e = check(text).unwrap_err();
        assert!(
            e.line.is_some() || !field.starts_with("steps"),
            "{e} has no line"
        );
        assert_eq!(e.file, "p.toml");
        assert!(
            e.field.contains(field),
            "field {:?} does not contain {field:?} ({e})",
            e.field
        );
        assert!(
            e.to_string().contains(needle),
            "{e} does not contain {needle:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        expect_err(
            &MINIMAL.replace("format = \"ndjson\"", "format = \"ndjson\"\nfromat = 1"),
            "source",
            "fromat",
        );
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"os\"]\nlocale = \"tr\""),
            "steps[0] (upper)",
            "locale",
        );
        expect_err(
            &MINIMAL.replace("type = \"decimal(18,2)\"", "type = \"money\""),
            "columns[2]",
            "unknown type",
        );
        expect_err(
            &MINIMAL.replace("op = \"upper\"", "op = \"uppercase\""),
            "steps[0]",
            "uppercase",
        );
    }

    #[test]
    fn references_are_checked() {
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"nope\"]"),
            "steps[0] (upper).columns",
            "unknown column \"nope\"",
        );
        expect_err(
            &MINIMAL.replace("columns = [\"os\"]", "columns = [\"amount\"]"),
            "steps[0]",
            "needs a string",
        );
        expect_err(
            &MINIMAL.replace("[\"id\", \"os\", \"amount\"]", "[\"id\", \"gone\"]"),
            "output.columns",
            "gone",
        );
        expect_err(
            &MINIMAL.replace("merge_keys = [\"id\"]", "merge_keys = [\"x\"]"),
            "load.merge_keys",
            "\"x\"",
        );
        expect_err(
            &MINIMAL.replace("name = \"t\"", "name = \"bad name\""),
            "pipeline.name",
            "bad name",
        );
        expect_err(
            &MINIMAL.replace("path = \"device.os\"", "path = \"device..os\""),
            "columns[1].path",
            "dotted",
        );
    }

    #[test]
    fn secrets_are_never_inline() {
        let t = MINIMAL.replace(
            "[output]",
            "[[steps]]\nop = \"hash\"\ncolumn = \"id\"\nalgorithm = \"hmac_sha256\"\n[output]",
        );
        expect_err(&t, "steps[1] (hash).key_env", "never inline");
        let t = MINIMAL.replace(
            "[output]",
            "[[steps]]\nop = \"hash\"\ncolumn = \"id\"\nalgorithm = \"hmac_sha256\"\nkey = \"s3cr3t\"\n[output]",
        );
        expect_err(&t, "steps[1] (hash)", "unknown field `key`");
    }

    #[test]
    fn the_string_encoding_is_plain_unless_delta_length_is_asked_and_nothing_else_is_taken() {
        assert_eq!(
            check(MINIMAL).unwrap().file.output.string_encoding,
            crate::StringEncoding::Plain
        );
        let delta = MINIMAL.replace("[output]", "[output]\nstring_encoding = \"delta_length\"");
        assert_eq!(
            check(&delta).unwrap().file.output.string_encoding,
            crate::StringEncoding::DeltaLength
        );
        expect_err(
            &MINIMAL.replace("[output]", "[output]\nstring_encoding = \"delta\""),
            "output",
            "unknown variant `delta`",
        );
    }

    #[test]
    fn bad_options_are_named() {
        expect_err(&MINIMAL.replace("[output]", "[[steps]]\nop = \"regex_replace\"\ncolumn = \"id\"\npattern = \"(\"\nreplacement = \"\"\n[output]"), "steps[1] (regex_replace).pattern", "invalid regex");
        expect_err(&MINIMAL.replace("[output]", "[[steps]]\nop = \"parse_timestamp\"\ncolumn = \"id\"\nformat = \"%Y-%m-%d\"\n[output]"), "format", "offset");
        expect_err(
            &MINIMAL.replace("[output]", "[output]\nlevel = 99"),
            "output.level",
            "1 to 22",
        );
        expect_err(
            &MINIMAL.replace(
                "format = \"ndjson\"",
                "format = \"csv\"\n[source.csv]\ndelimiter = \";;\"",
            ),
            "source.csv.delimiter",
            "one ASCII",
        );
        expect_err(
            &MINIMAL.replace(
                "format = \"ndjson\"",
                "format = \"ndjson\"\nshard_bytes = 0",
            ),
            "source",
            "zero",
        );
    }

    #[test]
    fn freeze_and_evolve_are_for_json_sources() {
        for mode in ["freeze", "evolve"] {
            let csv = MINIMAL.replace("format = \"ndjson\"", "format = \"csv\"")
                + &format!("[schema]\non_new_column = \"{mode}\"\n");
            expect_err(&csv, "schema.on_new_column", "JSON sources");
        }
        let bad = MINIMAL.to_string() + "[schema]\non_new_column = \"grow\"\n";
        assert!(check(&bad).unwrap_err().to_string().contains("grow"));
        let ok = check(&(MINIMAL.to_string() + "[schema]\non_new_column = \"freeze\"\n")).unwrap();
        assert_eq!(ok.file.schema.on_new_column, OnNewColumn::Freeze);
        let ok = check(&(MINIMAL.to_string() + "[schema]\non_new_column = \"evolve\"\n")).unwrap();
        assert_eq!(ok.file.schema.on_new_column, OnNewColumn::Evolve);
    }

    #[test]
    fn table_layout_keys_are_checked() {
        let with = |keys: &str| MINIMAL.replace("[load]", &format!("[load]\n{keys}"));
        expect_err(
            &with("sort_keys = [\"nope\"]"),
            "load.sort_keys",
            "\"nope\" is not an output column",
        );
        expect_err(
            &with("dist_key = \"nope\""),
            "load.dist_key",
            "not an output column",
        );
        expect_err(
            &with("dist_style = \"key\""),
            "load.dist_style",
            "needs a dist_key",
        );
        expect_err(
            &with("dist_style = \"even\"\ndist_key = \"id\""),
            "load.dist_key",
            "\"even\"",
        );
        expect_err(
            &with("analyze_share = 2.0"),
            "load.analyze_share",
            "between 0 and 1",
        );
        let ok = check(&with(
            "sort_keys = [\"id\", \"amount\"]\ndist_key = \"id\"\nanalyze_share = 0.25",
        ))
        .unwrap();
        assert_eq!(ok.file.load.sort_keys, ["id", "amount"]);
        assert_eq!(ok.file.load.dist_style, None);
    }

    fn sql_source(sql: &str) -> String {
        MINIMAL.replace(
            "[source]\nlocation = \"in\"\nformat = \"ndjson\"\n",
            &format!("[source]\nkind = \"postgres\"\n[source.sql]\n{sql}\n"),
        )
    }

    #[test]
    fn a_postgres_source_reads_a_table_incrementally_in_key_ranges() {
        let p = check(&sql_source(
            "connection_env = \"ORDERS_DB\"\ntable = \"shop.orders\"\ncursor_column = \"updated_at\"\n\
             key_column = \"id\"\nshard_rows = 5000\nlookback = \"2h\"",
        ))
        .unwrap();
        let src = &p.file.source;
        assert_eq!(src.kind, SourceKind::Postgres);
        assert_eq!(src.format(), Format::Ndjson, "extracts land as NDJSON");
        let sql = src.sql.as_ref().unwrap();
        assert_eq!(sql.table.as_deref(), Some("shop.orders"));
        assert_eq!(sql.shard_rows.map(|n| n.get()), Some(5000));
        assert_eq!(sql.lookback(), std::time::Duration::from_secs(7200));
        assert_eq!(sql.fetch_rows.get(), 10_000);
    }

    #[test]
    fn a_database_source_merges_by_its_key_column_unless_load_says_otherwise() {
        let text = sql_source("connection_env = \"DB\"\ntable = \"t\"\nkey_column = \"id\"");
        let without = text.replace("[load]\nmerge_keys = [\"id\"]\n", "");
        assert_eq!(check(&without).unwrap().file.load.merge_keys, ["id"]);
        let append = text.replace("merge_keys = [\"id\"]", "merge_keys = []");
        assert!(
            check(&append).unwrap().file.load.merge_keys.is_empty(),
            "explicit append"
        );
        let other = text.replace("merge_keys = [\"id\"]", "merge_keys = [\"os\"]");
        assert_eq!(check(&other).unwrap().file.load.merge_keys, ["os"]);
    }

    #[test]
    fn sql_source_keys_are_checked_before_anything_runs() {
        for (sql, field, needle) in [
            ("table = \"t\"", "source", "missing field `connection_env`"),
            (
                "connection_env = \"postgres://u@h/db\"\ntable = \"t\"",
                "source.sql.connection_env",
                "never written in the file",
            ),
            (
                "connection_env = \"DB\"",
                "source.sql",
                "give table or query",
            ),
            (
                "connection_env = \"DB\"\ntable = \"t\"\nquery = \"SELECT 1\"",
                "source.sql",
                "not both",
            ),
            (
                "connection_env = \"DB\"\ntable = \"a.b.c\"",
                "source.sql.table",
                "schema.table",
            ),
            (
                "connection_env = \"DB\"\ntable = \"t\"\nshard_rows = 10",
                "source.sql.shard_rows",
                "needs key_column",
            ),
            (
                "connection_env = \"DB\"\ntable = \"t\"\nlookback = \"1h\"",
                "source.sql.lookback",
                "needs cursor_column",
            ),
            (
                "connection_env = \"DB\"\ntable = \"t\"\ncursor_column = \"u\"\nlookback = \"soon\"",
                "source.sql.lookback",
                "not a duration",
            ),
            (
                "connection_env = \"DB\"\ntable = \"t\"\ncursr_column = \"u\"",
                "source",
                "cursr_column",
            ),
        ] {
            expect_err(&sql_source(sql), field, needle);
        }
        let no_sql = MINIMAL.replace(
            "location = \"in\"\nformat = \"ndjson\"\n",
            "kind = \"mysql\"\n",
        );
        expect_err(&no_sql, "source.sql", "reads [source.sql]");
        let with_location = sql_source("connection_env = \"DB\"\ntable = \"t\"").replace(
            "kind = \"postgres\"\n",
            "kind = \"postgres\"\nlocation = \"in\"\n",
        );
        expect_err(
            &with_location,
            "source.location",
            "applies to files sources",
        );
        let no_format = MINIMAL.replace("format = \"ndjson\"\n", "");
        expect_err(&no_format, "source.format", "required for a files source");
        let bad_template = MINIMAL.replace(
            "format = \"ndjson\"\n",
            "format = \"ndjson\"\ntime_template = \"%d/%m/\"\n",
        );
        expect_err(&bad_template, "source.time_template", "no year");
        let retention = MINIMAL.replace(
            "format = \"ndjson\"\n",
            "format = \"ndjson\"\nraw_retention_days = 30\n",
        );
        expect_err(&retention, "source.raw_retention_days", "never copied");
        let http = MINIMAL.replace(
            "location = \"in\"\nformat = \"ndjson\"\n",
            "kind = \"http\"\n",
        );
        expect_err(&http, "source.http", "reads [source.http]");
    }

    #[test]
    fn an_http_source_reads_its_api_section_and_refuses_file_keys() {
        let api = "[source.http]\nurl = \"https://api.example.test/v1/orders\"\nrecords_path = \"data\"\n\
                   window_from_param = \"updated_since\"\nwindow = \"1d\"\nstart = \"2026-11-01\"\n\
                   [source.http.pagination]\nkind = \"next_link\"\nnext_path = \"links.next\"\n";
        let text = MINIMAL.replace(
            "location = \"in\"\nformat = \"ndjson\"\n",
            &format!("kind = \"http\"\n{api}"),
        );
        let p = check(&text).unwrap();
        let http = p.file.source.http.as_ref().unwrap();
        assert_eq!(
            p.file.source.format(),
            Format::Ndjson,
            "extracts land as NDJSON"
        );
        assert!(http.windowed());
        assert_eq!(http.window(), Some(std::time::Duration::from_secs(86_400)));
        let files_key = text.replace("kind = \"http\"\n", "kind = \"http\"\nformat = \"csv\"\n");
        expect_err(&files_key, "source.format", "applies to files sources");
        let bad = text.replace("window = \"1d\"", "window = \"daily\"");
        expect_err(&bad, "source.http.window", "not a duration");
        let on_files = MINIMAL.replace(
            "format = \"ndjson\"\n",
            &format!("format = \"ndjson\"\n{api}"),
        );
        expect_err(&on_files, "source.http", "applies to kind = \"http\"");
    }

    #[test]
    fn output_columns_default_to_every_column_but_the_partitions() {
        let text = MINIMAL.replace(
            "[output]\ncolumns = [\"id\", \"os\", \"amount\"]\n",
            "[output]\npartition_by = [\"os\"]\n",
        );
        let p = check(&text).unwrap();
        assert_eq!(p.file.output.columns, ["id", "amount"]);
        let none = MINIMAL.replace("[output]\ncolumns = [\"id\", \"os\", \"amount\"]\n", "");
        assert_eq!(
            check(&none).unwrap().file.output.columns,
            ["id", "os", "amount"]
        );
    }

    #[test]
    fn a_database_source_without_columns_is_told_where_they_come_from() {
        let text = sql_source("connection_env = \"DB\"\ntable = \"t\"");
        let start = text.find("[[columns]]").unwrap();
        let end = text.find("[[steps]]").unwrap();
        let mut bare = text.clone();
        bare.replace_range(start..end, "");
        let bare = bare.replace("[[steps]]\nop = \"upper\"\ncolumns = [\"os\"]\n", "");
        expect_err(
            &bare,
            "columns",
            "read a database source's columns from its table",
        );
    }
}
