//! Reading rules applied by the parsers around the typed builders of `pipeline::builder`.

pub use pipeline::builder::*;

/// Where a CSV row's text for a declared column is: a field of the row (`start..end` in its
/// field buffer), or the column's `default`.
#[derive(Clone, Copy)]
pub(crate) enum CsvText {
    Field(usize, usize),
    Default(usize),
}

/// A JSON value under its column's rules: a string listed in `null_values` (when set) is null,
/// and a null takes the `default` (parsed like a value, by `rule_cell`).
pub(crate) fn apply_text_rules(rules: &pipeline::values::TextRules, v: &mut Val<'_>) {
    if let Val::Str(s) = v
        && rules.is_null_json(s)
    {
        *v = Val::Null;
    }
    if let (Val::Null, Some(d)) = (&*v, &rules.default) {
        *v = Val::Str(std::borrow::Cow::Owned(d.clone()));
    }
}
