//! `lookup`: a string column mapped through a two-column CSV reference file.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};

use super::*;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    #[default]
    Null,
    Keep,
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LookupStep {
    pub column: String,
    /// A CSV file with a header (relative to the pipeline file).
    pub file: String,
    pub key_field: String,
    pub value_field: String,
    pub output: String,
    #[serde(default)]
    pub on_missing: OnMissing,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
}

impl StepKind for LookupStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        cx.string_to(cols, &self.column, Some(&self.output), ColumnType::String)
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        if self.on_missing == OnMissing::Reject {
            cx.bucket(true, &self.bucket);
        }
        let path = cx.resolve(&self.file);
        let text = cx
            .resources
            .read(&path)
            .map_err(|e| format!("reference file {}: {e}", path.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("reference file {}: not UTF-8", path.display()))?;
        let table = parse_reference(&text, &self.key_field, &self.value_field)
            .map_err(|e| format!("{}{e}", path.display()))?;
        let slot = cx.slots.get(&self.column);
        let out = cx.slots.add(&self.output, ColumnType::String);
        kernel(Lookup {
            slot,
            out,
            table,
            on_missing: self.on_missing,
            bucket: self.bucket.clone(),
            column: self.column.clone(),
        })
    }
}

/// A two-column mapping from a CSV reference text with a header; errors start with `: ` or
/// ` line N: ` (after the file's name).
pub fn parse_reference(
    text: &str,
    key: &str,
    value: &str,
) -> Result<HashMap<String, String>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!(": no column {name:?} in the header"))
    };
    let (ki, vi) = (find(key)?, find(value)?);
    let mut map = HashMap::new();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(format!(
                " line {}: {} fields, the header has {}",
                n + 2,
                fields.len(),
                header.len()
            ));
        }
        map.insert(fields[ki].trim().to_string(), fields[vi].trim().to_string());
    }
    Ok(map)
}

#[derive(Debug)]
struct Lookup {
    slot: usize,
    out: usize,
    table: HashMap<String, String>,
    on_missing: OnMissing,
    bucket: String,
    column: String,
}

impl Kernel for Lookup {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let (a, f) = lookup(rows.column(self.slot), &self.table, self.on_missing);
        rows.set_column(self.out, a);
        if self.on_missing == OnMissing::Reject {
            fail(rows, f, OnError::Reject, &self.bucket, &self.column)?;
        }
        Ok(())
    }
}

pub fn lookup(
    col: &ArrayRef,
    table: &HashMap<String, String>,
    on_missing: OnMissing,
) -> (ArrayRef, Failures) {
    let a = col.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(a.len(), a.len() * 8);
    let mut fails = Vec::new();
    for (i, v) in a.iter().enumerate() {
        match v {
            None => b.append_null(),
            Some(s) => match table.get(s) {
                Some(hit) => b.append_value(hit),
                None => match on_missing {
                    OnMissing::Null => b.append_null(),
                    OnMissing::Keep => b.append_value(s),
                    OnMissing::Reject => {
                        fails.push((i, format!("{s:?} is not in the reference table")));
                        b.append_null();
                    }
                },
            },
        }
    }
    (Arc::new(b.finish()), fails)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn lookups() {
        let table = HashMap::from([("FR".to_string(), "France".to_string())]);
        let col = string_array(vec![Some("FR"), Some("XX"), None]);
        let (out, f) = lookup(&col, &table, OnMissing::Reject);
        assert_eq!(strs(&out)[0], Some("France".into()));
        assert_eq!(f.len(), 1);
        let (out, _) = lookup(&col, &table, OnMissing::Keep);
        assert_eq!(strs(&out)[1], Some("XX".into()));
    }

    #[test]
    fn reference_files_are_checked_by_line() {
        let m =
            parse_reference("code, name\nFR, France\n\nDE,Deutschland\n", "code", "name").unwrap();
        assert_eq!(m["DE"], "Deutschland");
        assert_eq!(
            parse_reference("a,b\n1,2,3\n", "a", "b").unwrap_err(),
            " line 2: 3 fields, the header has 2"
        );
        assert!(
            parse_reference("a,b\n", "a", "c")
                .unwrap_err()
                .contains("no column \"c\"")
        );
    }

    struct Countries;
    impl Resources for Countries {
        fn env(&self, _: &str) -> Option<String> {
            None
        }
        fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
            assert_eq!(p, Path::new("/fixtures/ref/countries.csv"));
            Ok(b"code,name\nFR,France\n".to_vec())
        }
    }

    #[test]
    fn a_missing_key_is_rejected_when_asked() {
        let body = "column = \"c\"\nfile = \"ref/countries.csv\"\nkey_field = \"code\"\nvalue_field = \"name\"\noutput = \"country\"\non_missing = \"reject\"";
        let (c, slots) = compile_step("lookup", body, &["c"], &Countries).unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("FR"), Some("ZZ")])]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(slots.get("country")), [Some("France".into())]);
        assert_eq!(
            rows.quarantined[0].1,
            "c: \"ZZ\" is not in the reference table"
        );
        let e = compile_step("lookup", body, &["c"], &NoResources).unwrap_err();
        assert!(
            e.starts_with("reference file /fixtures/ref/countries.csv"),
            "{e}"
        );
    }
}
