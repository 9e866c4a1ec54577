//! `ipv4_truncate`: a dotted IPv4 address with its last octets zeroed (anonymisation).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4TruncateStep {
    pub column: String,
    #[serde(default)]
    pub output: Option<String>,
    /// Leading octets kept; the rest become 0.
    #[serde(default = "three")]
    pub keep_octets: u8,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default = "crate::file::rejected")]
    pub bucket: String,
}

fn three() -> u8 {
    3
}

impl StepKind for Ipv4TruncateStep {
    fn check(&self, cx: &CheckCx<'_>, cols: &mut Columns) -> Result<(), ConfigError> {
        cx.bucket(&self.bucket)?;
        if self.keep_octets > 3 {
            return Err(cx.err("keep_octets", "must be 0 to 3"));
        }
        cx.string_to(
            cols,
            &self.column,
            self.output.as_deref(),
            ColumnType::String,
        )
    }

    fn compile(&self, cx: &mut CompileCx<'_>) -> Result<Compiled, String> {
        cx.bucket(true, &self.bucket);
        let (slot, out) = cx
            .slots
            .derived(&self.column, &self.output, ColumnType::String);
        kernel(Ipv4Truncate {
            slot,
            out,
            keep: self.keep_octets,
            on_error: self.on_error,
            bucket: self.bucket.clone(),
            column: self.column.clone(),
        })
    }
}

#[derive(Debug)]
struct Ipv4Truncate {
    slot: usize,
    out: usize,
    keep: u8,
    on_error: OnError,
    bucket: String,
    column: String,
}

impl Kernel for Ipv4Truncate {
    fn run(&self, rows: &mut dyn Rows) -> Result<(), StepError> {
        let (a, f) = ipv4_truncate(rows.column(self.slot), self.keep);
        rows.set_column(self.out, a);
        fail(rows, f, self.on_error, &self.bucket, &self.column)
    }
}

/// Keeps the first `keep` octets of a dotted IPv4 address and zeroes the rest.
/// The four parts of a dotted IPv4 address (each 1–3 digits, at most 255): one pass over the
/// bytes, no allocation.
fn octets(s: &str) -> Option<[&str; 4]> {
    let b = s.as_bytes();
    let mut parts = [""; 4];
    let (mut n, mut start, mut value) = (0, 0, 0u32);
    // The end of the text closes the last part as a dot would.
    for i in 0..=b.len() {
        match b.get(i).copied().unwrap_or(b'.') {
            b'.' => {
                if i == start || value > 255 || n == 4 {
                    return None;
                }
                parts[n] = &s[start..i];
                (n, start, value) = (n + 1, i + 1, 0);
            }
            c @ b'0'..=b'9' if i - start < 3 => value = value * 10 + u32::from(c - b'0'),
            _ => return None,
        }
    }
    (n == 4).then_some(parts)
}

pub fn ipv4_truncate(col: &ArrayRef, keep: u8) -> (ArrayRef, Failures) {
    let a = col.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    let mut fails = Vec::new();
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        let Some(s) = v else {
            b.append_null();
            continue;
        };
        let Some(parts) = octets(s) else {
            fails.push((i, format!("{s:?} is not a dotted IPv4 address")));
            b.append_null();
            continue;
        };
        out.clear();
        for (j, p) in parts.iter().enumerate() {
            if j > 0 {
                out.push('.');
            }
            out.push_str(if j < keep as usize { p } else { "0" });
        }
        b.append_value(&out);
    }
    (Arc::new(b.finish()), fails)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// The check as it was written first: split, collect, test each part.
    fn octets_by_collecting(s: &str) -> Option<Vec<&str>> {
        let parts: Vec<&str> = s.split('.').collect();
        let ok = parts.len() == 4
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|c| c.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|n| n <= 255)
            });
        ok.then_some(parts)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        #[test]
        fn octets_are_found_as_by_collecting_the_parts(
            s in proptest::prop_oneof!["[0-9.+a]{0,18}", "([0-9]{1,4}\\.){2,4}[0-9+a.]{0,4}"],
        ) {
            proptest::prop_assert_eq!(octets(&s).map(|p| p.to_vec()), octets_by_collecting(&s));
        }
    }

    #[test]
    fn ipv4_truncation() {
        let col = string_array(vec![
            Some("178.234.215.76"),
            Some("10.0.0.1"),
            Some("nope"),
            Some("1.2.3.256"),
            None,
        ]);
        let (out, fails) = ipv4_truncate(&col, 3);
        assert_eq!(
            strs(&out)[..2],
            [Some("178.234.215.0".into()), Some("10.0.0.0".into())]
        );
        assert_eq!(fails.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 3]);
        let (out, _) = ipv4_truncate(&col, 2);
        assert_eq!(strs(&out)[0], Some("178.234.0.0".into()));
    }

    #[test]
    fn bad_addresses_go_to_the_steps_bucket() {
        let (c, _) = compile_step(
            "ipv4_truncate",
            "column = \"ip\"\nbucket = \"bad_ip\"",
            &["ip"],
            &NoResources,
        )
        .unwrap();
        let mut rows = TestRows::new(vec![string_array(vec![Some("1.2.3.4"), Some("x")])]);
        run(&c, &mut rows);
        assert_eq!(rows.strs(1), [Some("1.2.3.0".into())]);
        assert_eq!(rows.quarantined[0].0, "bad_ip");
        let e = check_step(
            "ipv4_truncate",
            "column = \"ip\"\nkeep_octets = 4",
            &[("ip", ColumnType::String)],
        )
        .unwrap_err();
        assert!(e.contains("keep_octets: must be 0 to 3"), "{e}");
    }
}
