//! `parse_timestamp`: a string column parsed with a format that carries an offset, to UTC.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMicrosecondBuilder};

use super::*;
use crate::values::TimestampFormat;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParseTimestampStep {
    pub column: String,
    /// A chrono format with an offset (`%Y-%m-%dT%H:%M:%S%.3f%:z`), or `rfc3339`. The result is UTC.
    pub format: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
}

impl StepKind for ParseTimestampStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        TimestampFormat::new(&self.format).map_err(|m| cx.err("format", m))?;
        cx.string_to(
            cols,
            &self.column,
            self.output.as_deref(),
            ColumnType::Timestamp,
        )
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(true, &self.bucket);
        let format = TimestampFormat::new(&self.format)?;
        let (slot, out) = cx
            .slots
            .derived(&self.column, &self.output, ColumnType::Timestamp);
        kernel(ParseTimestamp {
            slot,
            out,
            format,
            on_error: self.on_error,
            bucket: self.bucket.clone(),
            column: self.column.clone(),
        })
    }
}

#[derive(Debug)]
struct ParseTimestamp {
    slot: usize,
    out: usize,
    format: TimestampFormat,
    on_error: OnError,
    bucket: String,
    column: String,
}

impl Kernel for ParseTimestamp {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let (a, f) = parse_timestamps(rows.column(self.slot), &self.format);
        rows.set_column(self.out, a);
        fail(rows, f, self.on_error, &self.bucket, &self.column)
    }
}

/// Parses each value; a null or a value that does not match is a failure.
pub fn parse_timestamps(col: &ArrayRef, fmt: &TimestampFormat) -> (ArrayRef, Failures) {
    let a = col.as_string::<i32>();
    let mut b = TimestampMicrosecondBuilder::with_capacity(a.len());
    let mut fails = Vec::new();
    for (i, v) in a.iter().enumerate() {
        match v.map(|s| (s, fmt.parse(s))) {
            Some((_, Some(t))) => b.append_value(t),
            Some((s, None)) => {
                fails.push((i, format!("{s:?} is not a valid timestamp")));
                b.append_null();
            }
            None => {
                fails.push((i, "timestamp is null".to_string()));
                b.append_null();
            }
        }
    }
    (Arc::new(b.finish().with_timezone("UTC")), fails)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn timestamp_formats() {
        assert!(
            TimestampFormat::new("%Y-%m-%d")
                .unwrap_err()
                .contains("offset")
        );
        let f = TimestampFormat::new("%d/%m/%Y %H:%M:%S %z").unwrap();
        assert_eq!(
            f.parse("01/05/2025 12:00:00 +0200"),
            Some(1_746_093_600_000_000)
        );
        let r = TimestampFormat::new("rfc3339").unwrap();
        assert_eq!(r.parse("2025-05-01T10:00:00Z"), Some(1_746_093_600_000_000));
        let col = string_array(vec![
            Some("2025-05-01T12:00:00.123+02:00"),
            Some("N/A"),
            None,
        ]);
        let (_, fails) = parse_timestamps(&col, &TimestampFormat::IsoMillisOffset);
        assert_eq!(fails.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2]);
        assert!(fails[0].1.contains("N/A"));
    }

    #[test]
    fn unparsable_rows_are_quarantined_naming_the_column() {
        let (c, _) = compile_step(
            "parse_timestamp",
            "column = \"t\"\nformat = \"rfc3339\"",
            &["t"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![
            Some("2025-05-01T10:00:00Z"),
            Some("soon"),
        ])]);
        run(&c, &mut rows);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows.quarantined,
            [(
                "rejected".to_string(),
                "t: \"soon\" is not a valid timestamp".to_string()
            )]
        );
    }

    #[test]
    fn a_format_without_an_offset_is_refused() {
        let e = check_step(
            "parse_timestamp",
            "column = \"t\"\nformat = \"%Y\"",
            &[("t", ColumnType::String)],
        )
        .unwrap_err();
        assert!(e.contains("steps[0] (parse_timestamp).format"), "{e}");
    }
}
