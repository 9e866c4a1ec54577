//! `[schema] on_new_column = "evolve"`: fields a JSON source sends that the pipeline does not
//! declare become output columns after the declared ones.
//!
//! Parsing hands each kept record's undeclared fields (column name, raw JSON text) to the
//! piece's [`Extras`], which infers each column's type from its values ([`Kind`]) and builds
//! Arrow columns when the piece is parsed. Pieces of one shard may meet different fields, or
//! infer different types for one field, so a partition writer keeps a schema that only grows
//! ([`union`]) and brings every batch to it ([`conform`]): a missing column is NULL, an integer
//! column meeting floats becomes `float64`, any other mix becomes a `string` of the values'
//! text. Evolved fields carry [`protocol::EVOLVED_FIELD_KEY`] so the loaders reconcile the same
//! way across shards and runs.

use std::collections::HashMap;

use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, new_null_array};
use backends::warehouse::evolve::{is_evolved, mark_evolved};
use pipeline::expr::types::{EXTENSION_NAME, JSON_EXTENSION};

use super::*;

/// The inferred kind of a JSON value (`null` has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Float,
    Bool,
    Str,
    Json,
}

impl Kind {
    /// The kind of a raw JSON value; `None` for `null`. An integer beyond `int64` is kept as
    /// text (`Str`), never rounded through a float.
    pub(crate) fn of(raw: &str) -> Option<Kind> {
        Some(match raw.as_bytes().first()? {
            b'n' => return None,
            b'"' => Kind::Str,
            b't' | b'f' => Kind::Bool,
            b'{' | b'[' => Kind::Json,
            _ if raw.contains(['.', 'e', 'E']) => Kind::Float,
            _ if raw.parse::<i64>().is_ok() => Kind::Int,
            _ => Kind::Str,
        })
    }

    /// The kind a column holding both takes.
    pub(crate) fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Str,
        }
    }
}

/// A top-level field keeps its name; a nested one is named by its path with `_`; characters
/// other than letters, digits, `_` and `-` become `_` (at most 128 bytes).
pub(crate) fn column_name(path: &str) -> String {
    let mut out: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out.truncate(128);
    out
}

/// One evolved column of a piece: its values by piece row.
struct ExtraCol {
    name: String,
    kind: Kind,
    /// (row, kind of the value, text: a string's content, any other value's JSON text).
    vals: Vec<(u32, Kind, String)>,
}

/// The evolved columns of one piece while it is parsed.
#[derive(Default)]
pub(crate) struct Extras {
    cols: Vec<ExtraCol>,
    index: HashMap<String, usize>,
}

impl Extras {
    /// Adds the undeclared fields of the piece's row `row` (a record that was kept).
    pub(crate) fn push_row(&mut self, row: u32, found: &[(String, &str)]) {
        for (name, raw) in found {
            let Some(kind) = Kind::of(raw) else { continue };
            let text = match kind {
                Kind::Str => {
                    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string())
                }
                _ => raw.to_string(),
            };
            let at = match self.index.get(name) {
                Some(at) => *at,
                None => {
                    self.cols.push(ExtraCol {
                        name: name.clone(),
                        kind,
                        vals: Vec::new(),
                    });
                    self.index.insert(name.clone(), self.cols.len() - 1);
                    self.cols.len() - 1
                }
            };
            let c = &mut self.cols[at];
            c.kind = c.kind.join(kind);
            c.vals.push((row, kind, text));
        }
    }

    /// The piece's evolved columns (by name) for its `rows` rows.
    pub(crate) fn finish(mut self, rows: usize) -> Vec<(Field, ArrayRef)> {
        self.cols.sort_by(|a, b| a.name.cmp(&b.name));
        self.cols.into_iter().map(|c| build(c, rows)).collect()
    }
}

/// The field an evolved column of this kind is written as.
pub(crate) fn evolved_field(name: &str, kind: Kind) -> Field {
    let dt = match kind {
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Str | Kind::Json => DataType::Utf8,
    };
    let f = Field::new(name, dt, true);
    let f = if kind == Kind::Json {
        f.with_metadata([(EXTENSION_NAME.to_string(), JSON_EXTENSION.to_string())].into())
    } else {
        f
    };
    mark_evolved(f)
}

fn build(c: ExtraCol, rows: usize) -> (Field, ArrayRef) {
    let mut texts: Vec<Option<String>> = vec![None; rows];
    for (row, vk, text) in c.vals {
        // A string inside a JSON column is written as JSON text.
        let text = if c.kind == Kind::Json && vk == Kind::Str {
            serde_json::to_string(&text).expect("a string serialises")
        } else {
            text
        };
        texts[row as usize] = Some(text);
    }
    let array: ArrayRef = match c.kind {
        Kind::Int => Arc::new(
            texts
                .iter()
                .map(|t| t.as_deref().and_then(|t| t.parse::<i64>().ok()))
                .collect::<Int64Array>(),
        ),
        Kind::Float => Arc::new(
            texts
                .iter()
                .map(|t| t.as_deref().and_then(|t| t.parse::<f64>().ok()))
                .collect::<Float64Array>(),
        ),
        Kind::Bool => Arc::new(
            texts
                .iter()
                .map(|t| t.as_deref().map(|t| t == "true"))
                .collect::<BooleanArray>(),
        ),
        Kind::Str | Kind::Json => Arc::new(StringArray::from(texts)),
    };
    (evolved_field(&c.name, c.kind), array)
}

/// The type of a column two batches give different types: `float64` for integers and floats,
/// otherwise a string of the values' text (no longer JSON-marked).
fn join_fields(a: &Field, b: &Field) -> Field {
    if a.data_type() == b.data_type() && a.metadata() == b.metadata() {
        return a.clone();
    }
    let float = matches!(
        (a.data_type(), b.data_type()),
        (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64)
    );
    evolved_field(a.name(), if float { Kind::Float } else { Kind::Str })
}

/// The schema that holds batches of schema `a` and of schema `b`: `a`'s columns (an evolved
/// one at the joined type where `b` differs), then `b`'s new ones.
pub(crate) fn union(a: &Schema, b: &Schema) -> Schema {
    let mut fields: Vec<Field> = a
        .fields()
        .iter()
        .map(|f| match b.field_with_name(f.name()) {
            Ok(g) if is_evolved(f) || is_evolved(g) => join_fields(f, g),
            _ => (**f).clone(),
        })
        .collect();
    for g in b.fields() {
        if a.field_with_name(g.name()).is_err() {
            fields.push((**g).clone());
        }
    }
    Schema::new(fields)
}

/// `batch` brought to `schema` (which holds it, see [`union`]): columns in its order, a missing
/// one NULL, a narrower one cast (integers to floats, anything to its text).
pub(crate) fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, WorkerError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let have = batch.schema();
    let cols = schema
        .fields()
        .iter()
        .map(|f| match have.index_of(f.name()) {
            Ok(i) if have.field(i).data_type() == f.data_type() => Ok(batch.column(i).clone()),
            Ok(i) => {
                arrow::compute::cast(batch.column(i), f.data_type()).map_err(WorkerError::arrow)
            }
            Err(_) => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), cols).map_err(WorkerError::arrow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found<'a>(pairs: &[(&str, &'a str)]) -> Vec<(String, &'a str)> {
        pairs.iter().map(|(n, r)| (n.to_string(), *r)).collect()
    }

    #[test]
    fn kinds_are_inferred_and_joined() {
        assert_eq!(Kind::of("12"), Some(Kind::Int));
        assert_eq!(Kind::of("-1.5e3"), Some(Kind::Float));
        assert_eq!(Kind::of("true"), Some(Kind::Bool));
        assert_eq!(Kind::of("\"x\""), Some(Kind::Str));
        assert_eq!(Kind::of("{\"a\":1}"), Some(Kind::Json));
        assert_eq!(Kind::of("[1]"), Some(Kind::Json));
        assert_eq!(Kind::of("null"), None);
        // Beyond int64: kept exactly, as text.
        assert_eq!(Kind::of("18446744073709551616"), Some(Kind::Str));
        assert_eq!(Kind::Int.join(Kind::Float), Kind::Float);
        assert_eq!(Kind::Int.join(Kind::Str), Kind::Str);
        assert_eq!(Kind::Json.join(Kind::Bool), Kind::Str);
    }

    #[test]
    fn names_come_from_paths() {
        assert_eq!(column_name("coupon"), "coupon");
        assert_eq!(column_name("device.os"), "device_os");
        assert_eq!(column_name("user agent/ä"), "user_agent__");
        assert_eq!(column_name(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn a_piece_builds_typed_nullable_columns_by_name() {
        let mut e = Extras::default();
        e.push_row(0, &found(&[("n", "1"), ("tag", "\"a\\\"b\"")]));
        e.push_row(
            2,
            &found(&[("n", "2.5"), ("meta", "{\"k\": [1]}"), ("tag", "null")]),
        );
        let cols = e.finish(3);
        let names: Vec<&str> = cols.iter().map(|(f, _)| f.name().as_str()).collect();
        assert_eq!(names, ["meta", "n", "tag"]);
        let (meta, m) = &cols[0];
        assert_eq!(
            meta.metadata().get(EXTENSION_NAME).map(String::as_str),
            Some(JSON_EXTENSION)
        );
        assert_eq!(m.as_string::<i32>().value(2), "{\"k\": [1]}");
        let (n, nv) = &cols[1];
        assert_eq!(n.data_type(), &DataType::Float64);
        let nv = nv.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!((nv.value(0), nv.is_null(1), nv.value(2)), (1.0, true, 2.5));
        let (_, t) = &cols[2];
        assert_eq!(t.as_string::<i32>().value(0), "a\"b");
        assert!(t.is_null(2));
        assert!(cols.iter().all(|(f, _)| f.is_nullable() && is_evolved(f)));
    }

    #[test]
    fn a_string_in_a_json_column_and_mixed_kinds() {
        let mut e = Extras::default();
        e.push_row(0, &found(&[("x", "{\"a\":1}"), ("y", "7")]));
        e.push_row(1, &found(&[("x", "[2]"), ("y", "true")]));
        let cols = e.finish(2);
        assert_eq!(cols[1].0.data_type(), &DataType::Utf8);
        let y = cols[1].1.as_string::<i32>();
        assert_eq!((y.value(0), y.value(1)), ("7", "true"));
    }

    fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn union_grows_and_conform_fills_and_casts() {
        let id = Field::new("id", DataType::Utf8, false);
        let a = schema(vec![id.clone(), evolved_field("n", Kind::Int)]);
        let b = schema(vec![
            id.clone(),
            evolved_field("n", Kind::Float),
            evolved_field("flag", Kind::Bool),
        ]);
        let u = Arc::new(union(&a, &b));
        let names: Vec<&str> = u.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "n", "flag"]);
        assert_eq!(u.field(1).data_type(), &DataType::Float64);
        assert_eq!(union(&u, &a).fields(), u.fields(), "a holds nothing new");
        let rb = RecordBatch::try_new(
            a,
            vec![
                Arc::new(StringArray::from(vec!["r"])),
                Arc::new(Int64Array::from(vec![3])),
            ],
        )
        .unwrap();
        let out = conform(rb, &u).unwrap();
        assert_eq!(out.schema(), u);
        let n = out
            .column(1)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(n.value(0), 3.0);
        assert!(out.column(2).is_null(0));
        // Any other mix: the values' text.
        let s = union(&u, &schema(vec![evolved_field("flag", Kind::Str)]));
        assert_eq!(s.field(2).data_type(), &DataType::Utf8);
    }
}
