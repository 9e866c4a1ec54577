//! A [`Rows`] for the kernels' unit tests, and step fixtures.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};

use super::*;

/// Columns in slots, with what was dropped and quarantined.
#[derive(Debug, Default)]
pub struct TestRows {
    pub cols: Vec<Option<ArrayRef>>,
    pub filtered: BTreeMap<String, u64>,
    pub quarantined: Vec<(String, String)>,
}

impl TestRows {
    pub fn new(cols: Vec<ArrayRef>) -> Self {
        TestRows {
            cols: cols.into_iter().map(Some).collect(),
            ..Default::default()
        }
    }

    /// Slot `slot` as strings.
    pub fn strs(&self, slot: usize) -> Vec<Option<String>> {
        strs(self.column(slot))
    }

    fn keep(&mut self, keep: &[bool]) {
        let mask = BooleanArray::from(keep.to_vec());
        for c in self.cols.iter_mut().flatten() {
            *c = arrow::compute::filter(c, &mask).expect("same length");
        }
    }
}

impl Rows for TestRows {
    fn len(&self) -> usize {
        self.cols.iter().flatten().next().map_or(0, |c| c.len())
    }
    fn column(&self, slot: usize) -> &ArrayRef {
        self.cols[slot].as_ref().expect("set")
    }
    fn set_column(&mut self, slot: usize, column: ArrayRef) {
        if self.cols.len() <= slot {
            self.cols.resize(slot + 1, None);
        }
        self.cols[slot] = Some(column);
    }
    fn drop_rows(&mut self, drop: &[bool], bucket: &str) -> Result<(), StepError> {
        *self.filtered.entry(bucket.into()).or_default() +=
            drop.iter().filter(|d| **d).count() as u64;
        self.keep(&drop.iter().map(|d| !d).collect::<Vec<_>>());
        Ok(())
    }
    fn quarantine(&mut self, rows: Failures, bucket: &str) -> Result<(), StepError> {
        let mut keep = vec![true; self.len()];
        for (i, reason) in rows {
            keep[i] = false;
            self.quarantined.push((bucket.into(), reason));
        }
        self.keep(&keep);
        Ok(())
    }
}

pub fn string_array(values: Vec<Option<&str>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

pub fn strs(a: &ArrayRef) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(String::from))
        .collect()
}

/// Reads nothing: for steps that need no resources.
pub struct NoResources;

impl Resources for NoResources {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} (no files in this test)", p.display()),
        ))
    }
}

/// Compiles one step (given as the TOML of its entry, without `op`) over string columns
/// `names`, with `resources`; returns the kernel and the slots after it.
pub fn compile_step(
    op: &str,
    toml_body: &str,
    names: &[&str],
    resources: &dyn Resources,
) -> Result<(Compiled, Slots), String> {
    let step: Step =
        toml::from_str(&format!("op = {op:?}\n{toml_body}")).map_err(|e| e.to_string())?;
    let mut slots = Slots::default();
    for n in names {
        slots.add(n, ColumnType::String);
    }
    let mut cx = CompileCx {
        index: 0,
        op: step.op(),
        slots,
        buckets: Vec::new(),
        resources,
        base_dir: PathBuf::from("/fixtures"),
    };
    let c = step.compile(&mut cx)?;
    Ok((c, cx.slots))
}

/// Runs a compiled kernel over `rows`.
pub fn run(c: &Compiled, rows: &mut TestRows) {
    match c {
        Compiled::Kernel(k) => k.run(rows).expect("runs"),
        Compiled::Dedupe(_) => panic!("dedupe has no batch kernel"),
    }
}

/// Checks one step over columns `cols`; the error's text.
pub fn check_step(
    op: &str,
    toml_body: &str,
    cols: &[(&str, ColumnType)],
) -> Result<Columns, String> {
    let step: Step =
        toml::from_str(&format!("op = {op:?}\n{toml_body}")).map_err(|e| e.to_string())?;
    let mut columns = Columns(cols.iter().map(|(n, t)| (n.to_string(), *t)).collect());
    let err = |f: &str, m: String| ConfigError::new("p.toml", f, m);
    let cx = CheckCx {
        entry: format!("steps[0] ({})", step.op()),
        op: step.op(),
        err: &err,
    };
    step.check(&cx, &mut columns).map_err(|e| e.to_string())?;
    Ok(columns)
}
