//! The reading rules of a declared column (`null_values`, `default`, `decimal_separator`,
//! `thousands_separator`): checked against the column's type and turned into [`TextRules`].

use crate::time::{DateRule, TimestampRule};
use crate::values::{self, TextRules};
use crate::{ColumnDecl, ColumnType};

/// The rules of `decl`, or what is wrong: `(key, message)`.
pub fn text_rules(decl: &ColumnDecl) -> Result<TextRules, (&'static str, String)> {
    let numeric = is_numeric(decl.ty);
    let sep =
        |key: &'static str, v: &Option<String>| -> Result<Option<char>, (&'static str, String)> {
            let Some(v) = v else { return Ok(None) };
            let mut chars = v.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !c.is_ascii_digit() && c != '-' && c != '+' => {}
                _ => {
                    return Err((
                        key,
                        format!("{v:?} must be one character, not a digit or sign"),
                    ));
                }
            }
            if !numeric {
                return Err((
                    key,
                    format!("only numeric columns take it; this one is {}", decl.ty),
                ));
            }
            Ok(v.chars().next())
        };
    let decimal_separator = sep("decimal_separator", &decl.decimal_separator)?;
    let thousands_separator = sep("thousands_separator", &decl.thousands_separator)?;
    if thousands_separator.is_some()
        && thousands_separator == Some(decimal_separator.unwrap_or('.'))
    {
        return Err((
            "thousands_separator",
            "must differ from the decimal separator".into(),
        ));
    }
    let integer = matches!(
        decl.ty,
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64
    );
    if integer && decimal_separator.is_some_and(|c| c != '.') {
        return Err((
            "decimal_separator",
            format!("{} values have no fraction", decl.ty),
        ));
    }
    let (timestamp, date) = time_rules(decl)?;
    let mut rules = TextRules {
        null_values: decl
            .null_values
            .clone()
            .unwrap_or_else(|| vec![String::new()]),
        null_values_set: decl.null_values.is_some(),
        default: None,
        decimal_separator,
        thousands_separator,
        timestamp,
        date,
    };
    if let Some(v) = &decl.default {
        let text = literal_text(v).ok_or((
            "default",
            format!("{v} is not a string, number or boolean literal"),
        ))?;
        if !parses_with(decl.ty, &text, &rules) {
            return Err(("default", format!("{text:?} is not a {} value", decl.ty)));
        }
        rules.default = Some(text);
    }
    Ok(rules)
}

type TimeRules = (Option<TimestampRule>, Option<DateRule>);

/// `format`, `timezone`, `on_ambiguous` and `on_nonexistent`, checked against the type.
fn time_rules(decl: &ColumnDecl) -> Result<TimeRules, (&'static str, String)> {
    let only = |key: &'static str, what: &str| {
        Err((
            key,
            format!("only {what} columns take it; this one is {}", decl.ty),
        ))
    };
    let zoned = decl.timezone.is_some();
    match decl.ty {
        ColumnType::Timestamp => {
            if !zoned && decl.on_ambiguous.is_some() {
                return Err(("on_ambiguous", "needs a timezone".into()));
            }
            if !zoned && decl.on_nonexistent.is_some() {
                return Err(("on_nonexistent", "needs a timezone".into()));
            }
            if decl.format.is_none() && !zoned {
                return Ok((None, None));
            }
            let rule = TimestampRule::new(
                decl.format.as_deref(),
                decl.timezone.as_deref(),
                decl.on_ambiguous.unwrap_or_default(),
                decl.on_nonexistent.unwrap_or_default(),
            )?;
            Ok((Some(rule), None))
        }
        ColumnType::Date => {
            if zoned {
                return only("timezone", "timestamp");
            }
            if decl.on_ambiguous.is_some() || decl.on_nonexistent.is_some() {
                return only("on_ambiguous", "timestamp");
            }
            match &decl.format {
                None => Ok((None, None)),
                Some(f) => Ok((None, Some(DateRule::new(Some(f))?))),
            }
        }
        _ if decl.format.is_some() => only("format", "timestamp and date"),
        _ if zoned => only("timezone", "timestamp"),
        _ if decl.on_ambiguous.is_some() => only("on_ambiguous", "timestamp"),
        _ if decl.on_nonexistent.is_some() => only("on_nonexistent", "timestamp"),
        _ => Ok((None, None)),
    }
}

/// Whether `s` is a value of type `t` read under `rules` (formats, zones, locale).
pub fn parses_with(t: ColumnType, s: &str, rules: &TextRules) -> bool {
    match (t, &rules.timestamp, &rules.date) {
        (ColumnType::Timestamp, Some(r), _) => r.parse(s).is_ok(),
        (ColumnType::Date, _, Some(d)) => d.parse(s).is_ok(),
        _ => parses_as(t, &rules.number(s)),
    }
}

fn is_numeric(t: ColumnType) -> bool {
    matches!(
        t,
        ColumnType::Int16
            | ColumnType::Int32
            | ColumnType::Int64
            | ColumnType::Float32
            | ColumnType::Float64
            | ColumnType::Decimal { .. }
    )
}

/// A TOML literal as the text a source would hold.
fn literal_text(v: &toml::Value) -> Option<String> {
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => return None,
    })
}

/// Whether `s` is a valid value of type `t` (the parsers the readers use).
pub fn parses_as(t: ColumnType, s: &str) -> bool {
    match t {
        ColumnType::String => true,
        ColumnType::Int16 => s.parse::<i16>().is_ok(),
        ColumnType::Int32 => s.parse::<i32>().is_ok(),
        ColumnType::Int64 => s.parse::<i64>().is_ok(),
        ColumnType::Float32 => s.parse::<f32>().is_ok(),
        ColumnType::Float64 => s.parse::<f64>().is_ok(),
        ColumnType::Bool => values::parse_bool(s).is_some(),
        ColumnType::Decimal { precision, scale } => {
            values::parse_decimal(s, precision, scale).is_some()
        }
        ColumnType::Timestamp => values::parse_timestamp_text(s).is_some(),
        ColumnType::Date => values::parse_date(s).is_some(),
        ColumnType::Json => values::is_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(ty: &str, extra: &str) -> ColumnDecl {
        toml::from_str(&format!("name = \"c\"\ntype = \"{ty}\"\n{extra}")).unwrap()
    }

    #[test]
    fn german_decimals_are_read() {
        let r = text_rules(&decl(
            "decimal(10,2)",
            "decimal_separator = \",\"\nthousands_separator = \".\"\ndefault = \"0,00\"",
        ))
        .unwrap();
        assert_eq!(r.number("1.234,5"), "1234.5");
        assert_eq!(r.default.as_deref(), Some("0,00"));
        assert_eq!(r.null_values, [""]);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = |ty: &str, extra: &str| text_rules(&decl(ty, extra)).unwrap_err();
        assert_eq!(
            e("string", "decimal_separator = \",\"").0,
            "decimal_separator"
        );
        assert_eq!(
            e("float64", "decimal_separator = \",,\"").0,
            "decimal_separator"
        );
        assert_eq!(
            e(
                "float64",
                "decimal_separator = \",\"\nthousands_separator = \",\""
            )
            .0,
            "thousands_separator"
        );
        assert_eq!(
            e("int32", "decimal_separator = \",\"").0,
            "decimal_separator"
        );
        let (k, m) = e("int16", "default = 70000");
        assert_eq!(k, "default");
        assert!(m.contains("int16"), "{m}");
        assert_eq!(e("date", "default = [1]").0, "default");
    }

    #[test]
    fn time_keys_belong_to_time_columns() {
        let r = text_rules(&decl(
            "timestamp",
            "format = \"%d.%m.%Y %H:%M\"\ntimezone = \"Europe/Berlin\"\non_nonexistent = \"latest\"",
        ))
        .unwrap();
        assert!(r.timestamp.is_some());
        assert!(
            text_rules(&decl("date", "format = \"%d.%m.%Y\""))
                .unwrap()
                .date
                .is_some()
        );
        let e = |ty: &str, extra: &str| text_rules(&decl(ty, extra)).unwrap_err().0;
        assert_eq!(e("string", "format = \"%Y\""), "format");
        assert_eq!(e("date", "timezone = \"UTC\""), "timezone");
        assert_eq!(
            e("timestamp", "on_ambiguous = \"earliest\""),
            "on_ambiguous"
        );
        assert_eq!(e("timestamp", "timezone = \"Mars/Olympus\""), "timezone");
        assert_eq!(e("timestamp", "format = \"%Q\""), "format");
        assert_eq!(
            e(
                "timestamp",
                "timezone = \"Europe/Berlin\"\nformat = \"%d.%m.%Y %H:%M\"\ndefault = \"29.03.2026 02:30\""
            ),
            "default",
            "a default in the DST gap is refused"
        );
    }

    #[test]
    fn defaults_and_null_values() {
        let r = text_rules(&decl(
            "int32",
            "default = 0\nnull_values = [\"\", \"N/A\", \"-\"]",
        ))
        .unwrap();
        assert!(r.is_null("N/A") && r.is_null("-") && !r.is_null("0"));
        assert_eq!(r.default.as_deref(), Some("0"));
        assert!(text_rules(&decl("bool", "default = false")).is_ok());
        assert!(text_rules(&decl("int64", "thousands_separator = \"'\"")).is_ok());
    }
}
