//! Value-level parsing and the vectorised column transforms.
//!
//! Every function here is pure: an Arrow array in, an Arrow array out (plus, for fallible
//! transforms, the rows that failed and why). The engine decides what a failure means for the row
//! (quarantine or null) according to the step's `on_error`.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::TimestampMicrosecondType;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

pub use pipeline::values::TimestampFormat;

/// Rows a transform could not handle: (row index, reason).
pub type Failures = Vec<(usize, String)>;

fn map_strings(col: &ArrayRef, mut f: impl FnMut(&str, &mut String)) -> ArrayRef {
    let a = col.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    let mut buf = String::new();
    for v in a.iter() {
        match v {
            None => b.append_null(),
            Some(s) => {
                buf.clear();
                f(s, &mut buf);
                b.append_value(&buf);
            }
        }
    }
    Arc::new(b.finish())
}

pub fn trim(col: &ArrayRef, chars: Option<&str>) -> ArrayRef {
    match chars {
        None => map_strings(col, |s, out| out.push_str(s.trim())),
        Some(cs) => map_strings(col, |s, out| {
            out.push_str(s.trim_matches(|c| cs.contains(c)))
        }),
    }
}

pub fn upper(col: &ArrayRef) -> ArrayRef {
    map_strings(col, |s, out| {
        if s.is_ascii() {
            out.push_str(s);
            out.make_ascii_uppercase();
        } else {
            out.push_str(&s.to_uppercase());
        }
    })
}

pub fn lower(col: &ArrayRef) -> ArrayRef {
    map_strings(col, |s, out| {
        if s.is_ascii() {
            out.push_str(s);
            out.make_ascii_lowercase();
        } else {
            out.push_str(&s.to_lowercase());
        }
    })
}

pub fn regex_replace(col: &ArrayRef, re: &regex::Regex, replacement: &str) -> ArrayRef {
    map_strings(col, |s, out| out.push_str(&re.replace_all(s, replacement)))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// Keyed SHA-256 of each value, lowercase hex. Nulls stay null.
pub fn hash(col: &ArrayRef, algorithm: crate::config::HashAlgorithm, key: &[u8]) -> ArrayRef {
    use crate::config::HashAlgorithm::*;
    match algorithm {
        SaltedSha256 => {
            let mut base = Sha256::new();
            base.update(key);
            map_strings(col, |s, out| {
                let mut h = base.clone();
                h.update(s.as_bytes());
                push_hex(&h.finalize(), out);
            })
        }
        HmacSha256 => {
            let base = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            map_strings(col, |s, out| {
                let mut m = base.clone();
                m.update(s.as_bytes());
                push_hex(&m.finalize().into_bytes(), out);
            })
        }
    }
}

/// Keeps the first `keep` octets of a dotted IPv4 address and zeroes the rest.
pub fn ipv4_truncate(col: &ArrayRef, keep: u8) -> (ArrayRef, Failures) {
    let a = col.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    let mut fails = Vec::new();
    for (i, v) in a.iter().enumerate() {
        let Some(s) = v else {
            b.append_null();
            continue;
        };
        let parts: Vec<&str> = s.split('.').collect();
        let ok = parts.len() == 4
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|c| c.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|n| n <= 255)
            });
        if !ok {
            fails.push((i, format!("{s:?} is not a dotted IPv4 address")));
            b.append_null();
            continue;
        }
        let mut out = String::with_capacity(s.len());
        for (j, p) in parts.iter().enumerate() {
            if j > 0 {
                out.push('.');
            }
            out.push_str(if j < keep as usize { p } else { "0" });
        }
        b.append_value(out);
    }
    (Arc::new(b.finish()), fails)
}

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

/// The UTC calendar date of each timestamp.
pub fn date_of(col: &ArrayRef) -> ArrayRef {
    let a: &TimestampMicrosecondArray = col.as_primitive::<TimestampMicrosecondType>();
    let mut b = Date32Builder::with_capacity(a.len());
    for v in a.iter() {
        match v {
            Some(us) => b.append_value(us.div_euclid(86_400_000_000) as i32),
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

pub fn lookup(
    col: &ArrayRef,
    table: &std::collections::HashMap<String, String>,
    on_missing: crate::config::OnMissing,
) -> (ArrayRef, Failures) {
    use crate::config::OnMissing;
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

/// Casts a string column to `to`; values that do not parse are failures.
pub fn cast_strings(col: &ArrayRef, to: crate::config::ColumnType) -> (ArrayRef, Failures) {
    use crate::engine::ColBuilder;
    let a = col.as_string::<i32>();
    let mut b = ColBuilder::new(to, a.len());
    let mut fails = Vec::new();
    for (i, v) in a.iter().enumerate() {
        match v {
            None => b.append_null(),
            Some(s) => {
                if let Err(e) = b.append_text(s) {
                    fails.push((i, e));
                    b.append_null();
                }
            }
        }
    }
    (b.finish(), fails)
}

/// Casts a non-string column with Arrow's cast; values that become null are failures.
pub fn cast_other(
    col: &ArrayRef,
    to: crate::config::ColumnType,
) -> Result<(ArrayRef, Failures), String> {
    let target = crate::engine::arrow_type(to);
    let out = arrow::compute::cast(col, &target).map_err(|e| e.to_string())?;
    let fails = (0..col.len())
        .filter(|&i| col.is_valid(i) && out.is_null(i))
        .map(|i| (i, format!("value does not fit {to}")))
        .collect();
    Ok((out, fails))
}

pub fn string_array(values: Vec<Option<&str>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ColumnType, HashAlgorithm, OnMissing};

    fn strs(a: &ArrayRef) -> Vec<Option<String>> {
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(String::from))
            .collect()
    }

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
        let (out, fails) = parse_timestamps(&col, &TimestampFormat::IsoMillisOffset);
        assert_eq!(fails.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2]);
        assert!(fails[0].1.contains("N/A"));
        let dates = date_of(&out);
        assert_eq!(
            dates
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0),
            20_209
        );
    }

    #[test]
    fn string_transforms() {
        let col = string_array(vec![Some("  Fr "), Some("de"), None, Some(" \tUS\t ")]);
        assert_eq!(
            strs(&upper(&trim(&col, Some(" ")))),
            [
                Some("FR".into()),
                Some("DE".into()),
                None,
                Some("\tUS\t".into())
            ]
        );
        assert_eq!(strs(&trim(&col, None))[3], Some("US".into()));
        assert_eq!(
            strs(&lower(&string_array(vec![Some("ÄB")])))[0],
            Some("äb".into())
        );
        let re = regex::Regex::new(r"\.[0-9]+$").unwrap();
        assert_eq!(
            strs(&regex_replace(
                &string_array(vec![Some("178.234.215.76")]),
                &re,
                ".0"
            ))[0],
            Some("178.234.215.0".into())
        );
    }

    #[test]
    fn salted_sha256_matches_the_workload_definition() {
        // sha256("tributary-pii-v1:" + "alice@example.com"), computed independently with sha256sum
        let col = string_array(vec![Some("alice@example.com"), None]);
        let out = hash(&col, HashAlgorithm::SaltedSha256, b"tributary-pii-v1:");
        let mut h = Sha256::new();
        h.update(b"tributary-pii-v1:alice@example.com");
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(strs(&out), [Some(want), None]);
        // HMAC-SHA256 test vector from RFC 4231 (test case 2)
        let out = hash(
            &string_array(vec![Some("what do ya want for nothing?")]),
            HashAlgorithm::HmacSha256,
            b"Jefe",
        );
        assert_eq!(
            strs(&out)[0].as_deref(),
            Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
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
    fn lookups_and_casts() {
        let table = std::collections::HashMap::from([("FR".to_string(), "France".to_string())]);
        let col = string_array(vec![Some("FR"), Some("XX"), None]);
        let (out, f) = lookup(&col, &table, OnMissing::Reject);
        assert_eq!(strs(&out)[0], Some("France".into()));
        assert_eq!(f.len(), 1);
        let (out, _) = lookup(&col, &table, OnMissing::Keep);
        assert_eq!(strs(&out)[1], Some("XX".into()));
        let (out, f) = cast_strings(
            &string_array(vec![Some("12"), Some("x1"), None]),
            ColumnType::Int64,
        );
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int64Type>().value(0),
            12
        );
        assert_eq!(f.len(), 1);
        assert!(f[0].1.contains("x1"));
        assert_eq!(pipeline::values::parse_date("2025-02-29"), None);
        assert_eq!(pipeline::values::parse_date("2024-02-29"), Some(19_782));
    }
}
