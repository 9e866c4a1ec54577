//! Pipeline files: what a pipeline reads, how it curates and transforms rows, and where they go.
//!
//! Two phases, as in ripgrep's arguments: [`PipelineFile`] is the raw TOML (serde, unknown keys
//! refused), and [`parse`] checks every cross-reference in a pure function and returns
//! a [`Pipeline`] or a [`ConfigError`] naming the file, the line and the field
//! (`steps[2] (hash).key_env`). Nothing touches the network or the source here; key files and
//! reference files are read when a worker builds its plan.
//!
//! | module | holds |
//! |---|---|
//! | [`file`] | the serde model of a pipeline file (every key, its default) |
//! | [`http`] | `[source.http]`: an HTTP API source's keys, checks and pure helpers |
//! | [`steps`] | one module per step kind: its spec, check, compilation and kernel |
//! | [`builder`] | the typed Arrow builders a column type reads into |
//! | [`columns`] | a declared column's reading rules (nulls, default, number locale) |
//! | [`expr`] | SQL expressions (the `sqlexpr` crate): parsing, type checking, compiled vectorised kernels |
//! | [`entries`] | where each `[[columns]]` / `[[steps]]` / `[[expect]]` entry starts, for errors at their own line |
//! | [`expect`] | data-quality expectations: the `[[expect]]` checks and the default rejected ratio |
//! | [`validate`] | the pure checks, section by section and step by step |
//! | [`validated`] | [`Pipeline`], the validated type the worker compiles into a plan |
//! | [`values`] | text → typed value parsing shared by readers and steps |
//!
//! `examples/pipeline.example.toml` documents every key.

pub mod builder;
pub mod columns;
pub mod entries;
pub mod error;
pub mod expect;
/// SQL expressions (the `sqlexpr` crate, built on its own so that DataFusion's generic planning
/// code is compiled there, at its own optimisation level).
pub use sqlexpr as expr;
pub mod file;
pub mod http;
pub mod steps;
pub mod template;
pub mod time;
pub mod validate;
pub mod validated;
pub mod values;

pub use error::ConfigError;
pub use file::*;
pub use validated::{Pipeline, parse};
