//! The field's shape as data (`loadtest gen --preset field|small`): 45 sources of seven families
//! (web analytics, trackers, POS, billing, CRM, telemetry, external providers), 250 attributes
//! in all, in NDJSON, CSV, JSON arrays and Parquet, plain or gzip/zstd compressed, with dirty
//! rows at each source's rate, and a pipeline file for every source. `field` is 70 million rows;
//! `small` (for CI) the same sources at 1/2000 of it.
//!
//! Deterministic: the same preset writes the same bytes on every machine.

use std::io::Write;
use std::path::{Path, PathBuf};

use coordinator::demo::Rng;

/// Sources of the field.
pub const SOURCES: usize = 45;
/// Attributes of all sources together.
pub const ATTRIBUTES: usize = 250;
/// Rows of the `field` preset.
pub const FIELD_ROWS: u64 = 70_000_000;

/// A column of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    Text,
    Int,
    Float,
    Bool,
    Money,
    Time,
    Day,
}

impl AttrType {
    fn pipeline(self) -> &'static str {
        match self {
            AttrType::Text => "string",
            AttrType::Int => "int64",
            AttrType::Float => "float64",
            AttrType::Bool => "bool",
            AttrType::Money => "decimal(12,2)",
            AttrType::Time => "timestamp",
            AttrType::Day => "date",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
    JsonArray,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Plain,
    Gzip,
    Zstd,
}

/// One source of a preset.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub family: &'static str,
    pub format: Format,
    pub codec: Codec,
    pub rows: u64,
    /// `id`, `event_time`, then the family's attributes.
    pub attrs: Vec<(String, AttrType)>,
    /// Rows in a thousand that are dirty (malformed, or a value the column cannot read).
    pub dirty_per_mille: u64,
    pub seed: u64,
}

const FAMILIES: [(&str, u64); 7] = [
    ("web_analytics", 30),
    ("tracker", 20),
    ("pos", 15),
    ("billing", 10),
    ("crm", 5),
    ("telemetry", 15),
    ("provider", 5),
];

const EXTRA: [(&str, AttrType); 12] = [
    ("channel", AttrType::Text),
    ("amount", AttrType::Money),
    ("count", AttrType::Int),
    ("score", AttrType::Float),
    ("active", AttrType::Bool),
    ("region", AttrType::Text),
    ("day", AttrType::Day),
    ("label", AttrType::Text),
    ("units", AttrType::Int),
    ("ratio", AttrType::Float),
    ("price", AttrType::Money),
    ("flag", AttrType::Bool),
];

/// The 45 sources of a preset with `total_rows` rows: 250 attributes in all (two shared, the
/// rest cycling through twelve kinds), rows spread by family weight.
pub fn sources(total_rows: u64) -> Vec<SourceSpec> {
    let weights: u64 = (0..SOURCES).map(|i| FAMILIES[i % 7].1).sum();
    // 250 attributes over 45 sources: each has `id` and `event_time`, the rest spread evenly.
    let extra_total = ATTRIBUTES - 2 * SOURCES;
    (0..SOURCES)
        .map(|i| {
            let (family, w) = FAMILIES[i % 7];
            let extras = extra_total / SOURCES + usize::from(i < extra_total % SOURCES);
            let mut attrs = vec![
                ("id".to_string(), AttrType::Text),
                ("event_time".to_string(), AttrType::Time),
            ];
            for k in 0..extras {
                let (n, t) = EXTRA[(i + k) % EXTRA.len()];
                attrs.push((format!("{n}_{k}"), t));
            }
            SourceSpec {
                name: format!("{family}_{i:02}"),
                family,
                format: [
                    Format::Ndjson,
                    Format::Csv,
                    Format::JsonArray,
                    Format::Parquet,
                ][i % 4],
                codec: [Codec::Plain, Codec::Gzip, Codec::Zstd][(i / 4) % 3],
                rows: (total_rows * w / weights).max(1),
                attrs,
                dirty_per_mille: [2, 5, 10, 20][i % 4],
                seed: 1000 + i as u64,
            }
        })
        .collect()
}

/// One value of an attribute, as JSON, for row `n`.
fn value(rng: &mut Rng, t: AttrType, n: u64) -> serde_json::Value {
    use serde_json::json;
    match t {
        AttrType::Text => json!(format!("v{}", rng.below(5000))),
        AttrType::Int => json!(rng.below(100_000) as i64 - 100),
        AttrType::Float => json!((rng.below(1_000_000) as f64) / 1000.0),
        AttrType::Bool => json!(rng.chance(50)),
        AttrType::Money => json!(format!("{}.{:02}", rng.below(10_000), rng.below(100))),
        AttrType::Time => json!(format!(
            "2026-11-{:02}T{:02}:{:02}:{:02}Z",
            1 + (n / 86_400) % 28,
            (n / 3600) % 24,
            (n / 60) % 60,
            n % 60
        )),
        AttrType::Day => json!(format!("2026-11-{:02}", 1 + rng.below(28))),
    }
}

/// Row `n` of a source (its `id` unique; a dirty row has a value its column cannot read).
pub fn row(spec: &SourceSpec, rng: &mut Rng, n: u64) -> serde_json::Map<String, serde_json::Value> {
    let dirty = rng.below(1000) < spec.dirty_per_mille;
    let mut m = serde_json::Map::new();
    for (i, (name, t)) in spec.attrs.iter().enumerate() {
        let v = if i == 0 {
            serde_json::json!(format!("{}-{n:09}", spec.name))
        } else if dirty && i == 1 {
            serde_json::json!("not a time")
        } else {
            value(rng, *t, n)
        };
        m.insert(name.clone(), v);
    }
    m
}

/// The pipeline file of a source whose files are under `location` (relative to the file).
pub fn pipeline_toml(spec: &SourceSpec, location: &str) -> String {
    let format = match spec.format {
        Format::Ndjson => "ndjson",
        Format::Csv => "csv",
        Format::JsonArray => "json_array",
        Format::Parquet => "parquet",
    };
    let mut t = format!(
        "# {} ({}): generated by `loadtest gen`.\n[pipeline]\nname = \"{}\"\n\n[source]\nlocation = \"{location}\"\nformat = \"{format}\"\nshard_bytes = 67108864\n\n",
        spec.name, spec.family, spec.name
    );
    for (i, (name, ty)) in spec.attrs.iter().enumerate() {
        t.push_str(&format!(
            "[[columns]]\nname = \"{name}\"\ntype = \"{}\"\n{}\n",
            ty.pipeline(),
            if i < 2 { "required = true\n" } else { "" }
        ));
    }
    t.push_str(
        "[[steps]]\nop = \"derive\"\ncolumn = \"event_day\"\nexpr = \"CAST(event_time AS DATE)\"\n\n",
    );
    t.push_str("[output]\npartition_by = [\"event_day\"]\n\n[load]\nmerge_keys = [\"id\"]\n");
    t
}

/// Writes the preset's sources (files of at most `rows_per_file` rows) and pipeline files under
/// `out`; returns the pipeline files.
pub fn write(out: &Path, specs: &[SourceSpec], rows_per_file: u64) -> anyhow::Result<Vec<PathBuf>> {
    let mut pipelines = Vec::new();
    std::fs::create_dir_all(out.join("pipelines"))?;
    for spec in specs {
        let dir = out.join("sources").join(&spec.name);
        std::fs::create_dir_all(&dir)?;
        let mut rng = Rng::new(spec.seed);
        let mut n = 0;
        let mut part = 0;
        while n < spec.rows {
            let upto = (n + rows_per_file).min(spec.rows);
            let rows: Vec<_> = (n..upto).map(|i| row(spec, &mut rng, i)).collect();
            crate::files::write_part(&dir, part, spec, &rows)?;
            n = upto;
            part += 1;
        }
        let p = out.join("pipelines").join(format!("{}.toml", spec.name));
        let mut f = std::fs::File::create(&p)?;
        f.write_all(pipeline_toml(spec, &format!("../sources/{}", spec.name)).as_bytes())?;
        pipelines.push(p);
    }
    Ok(pipelines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_preset_has_45_sources_250_attributes_and_70_million_rows() {
        let s = sources(FIELD_ROWS);
        assert_eq!(s.len(), 45);
        assert_eq!(s.iter().map(|x| x.attrs.len()).sum::<usize>(), 250);
        let rows: u64 = s.iter().map(|x| x.rows).sum();
        assert!((69_900_000..=70_000_000).contains(&rows), "{rows}");
        for f in [
            Format::Ndjson,
            Format::Csv,
            Format::JsonArray,
            Format::Parquet,
        ] {
            assert!(s.iter().any(|x| x.format == f), "{f:?}");
        }
        for c in [Codec::Plain, Codec::Gzip, Codec::Zstd] {
            assert!(s.iter().any(|x| x.codec == c), "{c:?}");
        }
        let names: std::collections::BTreeSet<_> = s.iter().map(|x| x.name.clone()).collect();
        assert_eq!(names.len(), 45);
    }

    #[test]
    fn every_generated_pipeline_is_valid() {
        for spec in sources(45_000) {
            let text = pipeline_toml(&spec, "in");
            pipeline::parse(&text, &spec.name, PathBuf::from("."))
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", spec.name));
        }
    }
}
