//! Parsing records into columns: the JSON path tree, CSV fields, pieces of rows.

use super::json_keys::{KeyIndex, Lookup};
use super::*;

/// Where each declared column is found in a JSON record.
#[derive(Debug, Default)]
pub struct JsonTree {
    pub(crate) entries: Vec<(Box<str>, JsonNode)>,
    /// Finds a key among `entries` without scanning them (built once the tree is complete).
    index: KeyIndex,
}

#[derive(Debug)]
pub(crate) enum JsonNode {
    Leaf(usize),
    /// A `json` column: the value's JSON text, whatever it is.
    Raw(usize),
    Object(JsonTree),
}

impl JsonTree {
    /// The tree of `(path, column, raw)`: `raw` columns (type `json`) take a value's JSON text.
    pub fn build(paths: &[(String, usize, bool)]) -> JsonTree {
        let mut root = JsonTree::default();
        for (path, col, raw) in paths {
            let mut node = &mut root;
            let parts: Vec<&str> = path.split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let idx = match node.entries.iter().position(|(k, _)| &**k == *p) {
                    Some(i) => i,
                    None => {
                        let n = if last && *raw {
                            JsonNode::Raw(*col)
                        } else if last {
                            JsonNode::Leaf(*col)
                        } else {
                            JsonNode::Object(JsonTree::default())
                        };
                        node.entries.push(((*p).into(), n));
                        node.entries.len() - 1
                    }
                };
                match &mut node.entries[idx].1 {
                    JsonNode::Object(t) => node = t,
                    JsonNode::Leaf(_) | JsonNode::Raw(_) => break,
                }
            }
        }
        root.index_keys();
        root
    }

    /// Indexes the keys of this object and of every object under it.
    fn index_keys(&mut self) {
        self.index = KeyIndex::build(self.entries.iter().map(|(k, _)| &**k));
        for (_, n) in &mut self.entries {
            if let JsonNode::Object(t) = n {
                t.index_keys();
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&JsonNode> {
        let at = match self.index.lookup(key) {
            Lookup::Absent => return None,
            Lookup::At(i) => Some(i).filter(|i| same_key(&self.entries[*i].0, key)),
            Lookup::Scan => self
                .entries
                .iter()
                .position(|(k, _)| k.len() == key.len() && &**k == key),
        };
        at.map(|i| &self.entries[i].1)
    }
}

/// `a == b` for object keys, most of them under 17 bytes: compared as two words each (the
/// first and last eight bytes, overlapping) instead of through a call to `memcmp`.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

pub(crate) struct KeyStr<'de>(std::borrow::Cow<'de, str>);
impl<'de> serde::Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyStr(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

pub(crate) struct LeafSeed;
impl<'de> DeserializeSeed<'de> for LeafSeed {
    type Value = Val<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Val<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value")
            }
            fn visit_unit<E>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_none<E>(self) -> Result<Val<'de>, E> {
                Ok(Val::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
                Ok(Val::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
                Ok(Val::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
                Ok(Val::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
                Ok(Val::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
                Ok(Val::Str(std::borrow::Cow::Owned(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Val<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Val::Complex("object"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Val<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Val::Complex("array"))
            }
        }
        d.deserialize_any(V)
    }
}

pub(crate) struct ObjSeed<'t, 's, 'de> {
    pub(crate) tree: &'t JsonTree,
    pub(crate) slots: &'s mut Vec<Val<'de>>,
    pub(crate) root: bool,
    /// What becomes of fields the tree does not declare (`[schema] on_new_column`).
    pub(crate) undeclared: Undeclared<'s, 'de>,
    /// This object's dotted path (empty at the top).
    pub(crate) path: String,
}

/// Where undeclared fields go, by `[schema] on_new_column`.
pub(crate) enum Undeclared<'s, 'de> {
    /// `discard`: skipped.
    Skip,
    /// `freeze`: the dotted path of the first one.
    First(&'s mut Option<String>),
    /// `evolve`: every one, as (dotted path, raw JSON text).
    Collect(&'s mut Vec<(String, &'de str)>),
}

impl<'de> Undeclared<'_, 'de> {
    fn reborrow(&mut self) -> Undeclared<'_, 'de> {
        match self {
            Undeclared::Skip => Undeclared::Skip,
            Undeclared::First(f) => Undeclared::First(f),
            Undeclared::Collect(c) => Undeclared::Collect(c),
        }
    }
}

/// `prefix.key`, or `key` at the top.
fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'de> DeserializeSeed<'de> for ObjSeed<'_, '_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.root {
            d.deserialize_map(self)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for ObjSeed<'_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(()) // a null parent: every child is null
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> Result<(), A::Error> {
        while let Some(KeyStr(k)) = m.next_key::<KeyStr<'de>>()? {
            match self.tree.get(&k) {
                Some(JsonNode::Leaf(i)) => self.slots[*i] = m.next_value_seed(LeafSeed)?,
                Some(JsonNode::Raw(i)) => {
                    let v: &'de serde_json::value::RawValue = m.next_value()?;
                    self.slots[*i] = match v.get() {
                        "null" => Val::Null,
                        text => Val::Str(text.into()),
                    };
                }
                Some(JsonNode::Object(t)) => m.next_value_seed(ObjSeed {
                    tree: t,
                    slots: self.slots,
                    root: false,
                    path: match self.undeclared {
                        Undeclared::Skip => String::new(),
                        _ => dotted(&self.path, &k),
                    },
                    undeclared: self.undeclared.reborrow(),
                })?,
                None => match &mut self.undeclared {
                    Undeclared::Skip => {
                        m.next_value::<IgnoredAny>()?;
                    }
                    Undeclared::First(first) => {
                        if first.is_none() {
                            **first = Some(dotted(&self.path, &k));
                        }
                        m.next_value::<IgnoredAny>()?;
                    }
                    Undeclared::Collect(found) => {
                        let v: &'de serde_json::value::RawValue = m.next_value()?;
                        found.push((dotted(&self.path, &k), v.get()));
                    }
                },
            }
        }
        Ok(())
    }
    // A scalar where an object was expected: the children are absent.
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// A processing unit: up to [`PIECE_ROWS`] records of one chunk, as Arrow columns.
pub struct Piece {
    /// Column slots (declared columns, then step outputs), unset until set; dropped rows leave
    /// them lazily (see `cols`).
    pub cols: Cols,
    /// For each live row, its record index in the chunk.
    pub rows: Vec<u32>,
    pub quarantine: Vec<QItem>,
    pub counts: Counts,
    /// Each row's dedupe key hash, when worked out while parsing (`dedupe::hash_keys`).
    pub key_hashes: Vec<u64>,
    /// Columns added under `[schema] on_new_column = "evolve"` (after the output columns).
    pub extra: Vec<(Field, ArrayRef)>,
}

pub struct QItem {
    pub record: u32,
    pub bucket: String,
    pub reason: String,
}

impl Piece {
    /// An empty piece for `lines` records (all counted in `lines_total`).
    pub(crate) fn new(plan: &Plan, lines: usize) -> Piece {
        Piece {
            cols: Cols::new(plan.slot_types.len()),
            rows: Vec::with_capacity(lines),
            quarantine: Vec::new(),
            counts: Counts {
                lines_total: lines as u64,
                ..Counts::default()
            },
            key_hashes: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Keeps the rows `keep` is true for (one flag per current row).
    pub(crate) fn keep(&mut self, keep: Vec<bool>) -> Result<(), WorkerError> {
        if keep.iter().all(|k| *k) {
            return Ok(());
        }
        if !self.extra.is_empty() {
            let mask = BooleanArray::from(keep.clone());
            let filter = arrow::compute::FilterBuilder::new(&mask).optimize().build();
            for (_, c) in self.extra.iter_mut() {
                *c = filter.filter(c.as_ref()).map_err(WorkerError::arrow)?;
            }
        }
        let mut i = 0;
        self.rows.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.cols.keep(keep);
        Ok(())
    }

    /// Quarantines rows (index, reason) into `bucket` and drops them from the piece.
    pub(crate) fn quarantine_rows(
        &mut self,
        rows: Failures,
        bucket: &str,
    ) -> Result<(), WorkerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut mask = vec![true; self.rows.len()];
        for (i, reason) in rows {
            mask[i] = false;
            self.quarantine.push(QItem {
                record: self.rows[i],
                bucket: bucket.into(),
                reason,
            });
            *self.counts.rejected.entry(bucket.into()).or_default() += 1;
        }
        self.keep(mask)
    }
}

/// How one record parsed: `Ok` (its cells are ready to push), or whether it is malformed (not a
/// record at all) rather than holding an invalid value, and why.
type RecordOutcome = Result<(), (bool, String)>;

/// The reusable buffers of CSV parsing.
struct CsvState {
    reader: csv_core::Reader,
    scratch: Vec<u8>,
    /// The row's fields, concatenated, and where each one is (in the row itself when
    /// `in_row`: a row without quotes is its own fields).
    field_buf: Vec<u8>,
    in_row: bool,
    fields: Vec<(usize, usize)>,
    /// Where each declared column's text is.
    texts: Vec<CsvText>,
}

/// Parses records `range` of a chunk into a piece.
pub(crate) fn parse_piece(plan: &Plan, chunk: &Chunk, range: std::ops::Range<usize>) -> Piece {
    let declared = plan.declared.len();
    let mut builders: Vec<ColBuilder> = plan
        .declared
        .iter()
        .zip(&plan.value_bytes)
        .map(|((_, t, _), per_row)| {
            ColBuilder::with_text_bytes(*t, range.len(), text_room(per_row, range.len()))
        })
        .collect();
    let mut piece = Piece::new(plan, range.len());
    let mut cells: Vec<Cell> = Vec::with_capacity(declared);
    let mut texts: Vec<std::borrow::Cow<str>> = Vec::with_capacity(declared);
    let mut slots: Vec<Val> = vec![Val::Null; declared];
    let mut found: Vec<(String, &str)> = Vec::new();
    let mut extras = Extras::default();
    let mut csv = CsvState {
        reader: csv_core::ReaderBuilder::new()
            .delimiter(plan.csv_delimiter)
            .quote(plan.csv_quote)
            .build(),
        scratch: Vec::new(),
        field_buf: Vec::new(),
        in_row: false,
        fields: Vec::new(),
        texts: Vec::with_capacity(declared),
    };
    let csv_header = chunk.header.as_deref().map(Vec::as_slice).unwrap_or(&[]);
    let csv_map: Vec<Option<usize>> = (0..declared)
        .map(|c| plan.csv_index(csv_header, c))
        .collect();
    for i in range {
        let raw = &chunk.buf[chunk.spans[i].0..chunk.spans[i].1];
        cells.clear();
        texts.clear();
        let outcome = match plan.format {
            Format::Ndjson | Format::JsonArray | Format::Parquet => {
                found.clear();
                json_record(
                    plan, raw, &mut found, &mut slots, &builders, &mut cells, &mut texts,
                )
            }
            Format::Csv => csv_record(
                plan,
                raw,
                csv_header,
                &csv_map,
                &mut csv,
                &mut builders,
                &mut cells,
            ),
        };
        match outcome {
            Ok(()) if plan.format == Format::Csv => piece.rows.push(i as u32),
            Ok(()) => {
                for (c, cell) in cells.drain(..).enumerate() {
                    builders[c].push(cell, &texts[c]);
                }
                if !found.is_empty() {
                    extras.push_row(piece.rows.len() as u32, &plan.evolved_names(&found));
                }
                piece.rows.push(i as u32);
            }
            Err((malformed, reason)) => {
                let bucket = if malformed {
                    piece.counts.malformed += 1;
                    MALFORMED
                } else {
                    *piece
                        .counts
                        .rejected
                        .entry(INVALID_VALUE.into())
                        .or_default() += 1;
                    INVALID_VALUE
                };
                piece.quarantine.push(QItem {
                    record: i as u32,
                    bucket: bucket.into(),
                    reason,
                });
            }
        }
    }
    for (c, b) in builders.iter_mut().enumerate() {
        let col = b.finish();
        learn_text_bytes(&plan.value_bytes[c], &col);
        piece.cols.set(c, col);
    }
    piece.extra = extras.finish(piece.rows.len());
    piece
}

/// Room for the text of `rows` values of a column whose last piece held `per_row` bytes a row
/// (`None` until a piece has been parsed), with an eighth to spare.
fn text_room(per_row: &std::sync::atomic::AtomicUsize, rows: usize) -> Option<usize> {
    match per_row.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n * rows + n * rows / 8),
    }
}

/// Remembers a string column's text bytes per row (rounded up) for the next piece's builder.
fn learn_text_bytes(per_row: &std::sync::atomic::AtomicUsize, col: &ArrayRef) {
    if let Some(text) = col.as_string_opt::<i32>()
        && !text.is_empty()
    {
        let n = text.value_data().len().div_ceil(text.len());
        per_row.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

/// A record's bytes as text, or the malformed record's reason. Most records are ASCII, which
/// sixteen bytes a step check faster than `from_utf8` does; `from_utf8` checks the rest from
/// the first block that is not.
fn text_of(raw: &[u8]) -> Result<&str, (bool, String)> {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86-64 baseline.
    let ascii = unsafe { super::sse2::ascii_prefix(raw) };
    #[cfg(not(target_arch = "x86_64"))]
    let ascii = 0;
    match std::str::from_utf8(&raw[ascii..]) {
        // SAFETY: `raw[..ascii]` is ASCII and the rest UTF-8, so the whole is UTF-8.
        Ok(_) => Ok(unsafe { std::str::from_utf8_unchecked(raw) }),
        Err(e) => Err((
            true,
            format!("not valid UTF-8 at byte {}", ascii + e.valid_up_to()),
        )),
    }
}

fn json_record<'c>(
    plan: &Plan,
    raw: &'c [u8],
    found: &mut Vec<(String, &'c str)>,
    slots: &mut Vec<Val<'c>>,
    builders: &[ColBuilder],
    cells: &mut Vec<Cell>,
    texts: &mut Vec<std::borrow::Cow<'c, str>>,
) -> RecordOutcome {
    let text = text_of(raw)?;
    for s in slots.iter_mut() {
        *s = Val::Null;
    }
    // Undeclared fields are only skipped on the fast path; `freeze` and `evolve` look at them.
    let fast = plan.on_new_column == OnNewColumn::Discard
        && super::json_fast::scan_record(&plan.json_tree, text, slots).is_some();
    let mut first: Option<String> = None;
    if !fast {
        for s in slots.iter_mut() {
            *s = Val::Null;
        }
        let undeclared = match plan.on_new_column {
            OnNewColumn::Discard => Undeclared::Skip,
            OnNewColumn::Freeze => Undeclared::First(&mut first),
            OnNewColumn::Evolve => Undeclared::Collect(found),
        };
        serde_record(&plan.json_tree, text, slots, undeclared)
            .map_err(|e| (true, format!("not a JSON object: {e}")))?;
    }
    if let Some(field) = first {
        return Err((
            false,
            format!("field {field:?} is not declared (schema.on_new_column = \"freeze\")"),
        ));
    }
    for (c, (name, _, required)) in plan.declared.iter().enumerate() {
        apply_text_rules(&plan.text_rules[c], &mut slots[c]);
        if *required && matches!(slots[c], Val::Null) {
            return Err((true, format!("required field {name:?} is missing or null")));
        }
        let cell = match &slots[c] {
            Val::Str(s) => builders[c].rule_cell(s, &plan.text_rules[c]),
            v => builders[c].val_cell(v),
        };
        let cell = cell.map_err(|e| (false, format!("field {name:?}: {e}")))?;
        // Only a text cell reads its text: a number or boolean is rendered only for a string
        // column (no allocation per typed cell).
        texts.push(match (&slots[c], &cell) {
            (Val::Str(s), _) => s.clone(),
            (_, Cell::Str) => match &slots[c] {
                Val::I64(v) => v.to_string().into(),
                Val::U64(v) => v.to_string().into(),
                Val::F64(v) => v.to_string().into(),
                Val::Bool(v) => v.to_string().into(),
                _ => "".into(),
            },
            _ => "".into(),
        });
        cells.push(cell);
    }
    Ok(())
}

/// The serde path of a JSON record: `text`'s declared values into `slots` (all `Null` before),
/// its undeclared fields as `undeclared` says.
pub(crate) fn serde_record<'c>(
    tree: &JsonTree,
    text: &'c str,
    slots: &mut Vec<Val<'c>>,
    undeclared: Undeclared<'_, 'c>,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    ObjSeed {
        tree,
        slots,
        root: true,
        undeclared,
        path: String::new(),
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
}

/// One CSV row: split into fields, each declared column's field (or default) converted under
/// its rules, and the row's cells appended to `builders` once all of them converted.
fn csv_record(
    plan: &Plan,
    raw: &[u8],
    header: &[String],
    csv_map: &[Option<usize>],
    csv: &mut CsvState,
    builders: &mut [ColBuilder],
    cells: &mut Vec<Cell>,
) -> RecordOutcome {
    csv.fields.clear();
    csv.field_buf.clear();
    csv.in_row = false;
    csv.texts.clear();
    if !split_plain(raw, plan.csv_delimiter, plan.csv_quote, csv) {
        let (fields, field_buf) = (&mut csv.fields, &mut csv.field_buf);
        split_csv(raw, &mut csv.reader, &mut csv.scratch, &mut |f| {
            let s = field_buf.len();
            field_buf.extend_from_slice(f);
            fields.push((s, field_buf.len()));
        })
        .map_err(|e| (true, format!("CSV: {e}")))?;
    }
    if csv.fields.len() != header.len() {
        return Err((
            true,
            format!(
                "CSV row has {} fields, the header has {}",
                csv.fields.len(),
                header.len()
            ),
        ));
    }
    let bytes = if csv.in_row { raw } else { &csv.field_buf };
    let all = text_of(bytes)?;
    for (c, (name, _, required)) in plan.declared.iter().enumerate() {
        let rules = &plan.text_rules[c];
        let given = csv_map[c]
            .map(|j| csv.fields[j])
            .map(|(a, b)| (&all[a..b], CsvText::Field(a, b)))
            .filter(|(s, _)| !rules.is_null(s));
        let v = given.or_else(|| rules.default.as_deref().map(|d| (d, CsvText::Default(c))));
        match v {
            None if *required => {
                return Err((true, format!("required field {name:?} is empty")));
            }
            None => {
                cells.push(Cell::Null);
                csv.texts.push(CsvText::Field(0, 0));
            }
            Some((s, at)) => {
                let cell = builders[c]
                    .rule_cell(s, rules)
                    .map_err(|e| (false, format!("field {name:?}: {e}")))?;
                cells.push(cell);
                csv.texts.push(at);
            }
        }
    }
    for (c, cell) in cells.drain(..).enumerate() {
        let text = match csv.texts[c] {
            CsvText::Field(a, b) => &all[a..b],
            CsvText::Default(d) => plan.text_rules[d].default.as_deref().unwrap_or(""),
        };
        builders[c].push(cell, text);
    }
    Ok(())
}

/// The fast path of CSV splitting, exactly as `csv_core` reads the rows it takes: a non-empty
/// row without a carriage return whose fields are each plain (no quote in it) or wholly quoted
/// (a quote, text in which a quote is doubled, a closing quote, then the delimiter or the row's
/// end). The fields of a row without quotes are ranges of the row (`in_row`, nothing copied);
/// those of a row with quotes are copied, unquoted, into `field_buf`. False, with the buffers as
/// they were, for any other row (a quote inside a plain field, text after a closing quote, an
/// unclosed quote), which `split_csv` reads.
fn split_plain(raw: &[u8], delimiter: u8, quote: u8, csv: &mut CsvState) -> bool {
    if raw.is_empty() || !delimiter.is_ascii() || !quote.is_ascii() || delimiter == quote {
        return false;
    }
    let fields = csv.fields.len();
    if split_unquoted(raw, delimiter, quote, &mut csv.fields).is_some() {
        csv.in_row = true;
        return true;
    }
    csv.fields.truncate(fields);
    if memchr::memchr(b'\r', raw).is_some() {
        return false;
    }
    let (bytes, fields) = (csv.field_buf.len(), csv.fields.len());
    if split_quoted(raw, delimiter, quote, &mut csv.field_buf, &mut csv.fields).is_none() {
        csv.field_buf.truncate(bytes);
        csv.fields.truncate(fields);
        return false;
    }
    true
}

/// A row without a quote or a carriage return, split at its delimiters into `fields` (ranges
/// of the row); `None` at the first quote or carriage return (some fields pushed). One pass,
/// sixteen bytes at a time with SSE2 on x86-64 (part of its baseline), not a search per field.
fn split_unquoted(
    raw: &[u8],
    delimiter: u8,
    quote: u8,
    fields: &mut Vec<(usize, usize)>,
) -> Option<()> {
    let mut start = 0;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(block) = raw.get(i..i + 16) {
        // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
        let (mut delimiters, stops) =
            unsafe { csv_marks_16(block.try_into().expect("16 bytes"), delimiter, quote) };
        if stops != 0 {
            return None;
        }
        while delimiters != 0 {
            let d = i + delimiters.trailing_zeros() as usize;
            fields.push((start, d));
            start = d + 1;
            delimiters &= delimiters - 1;
        }
        i += 16;
    }
    for (d, &c) in raw.iter().enumerate().skip(i) {
        if c == quote || c == b'\r' {
            return None;
        }
        if c == delimiter {
            fields.push((start, d));
            start = d + 1;
        }
    }
    fields.push((start, raw.len()));
    Some(())
}

/// Of the 16 bytes of `block`, the delimiters and the quotes or carriage returns, as the bits
/// of two masks (SSE2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn csv_marks_16(block: &[u8; 16], delimiter: u8, quote: u8) -> (u32, u32) {
    use super::sse2::{bits, bits_of_either, equal, load};
    let v = load(block);
    (
        bits(equal(v, delimiter)),
        bits_of_either(equal(v, quote), equal(v, b'\r')),
    )
}

/// [`split_plain`] of a row with quotes: each field appended to `buf` (unquoted) and its range
/// to `fields`; `None` at the first field `csv_core` would read otherwise.
fn split_quoted(
    raw: &[u8],
    delimiter: u8,
    quote: u8,
    buf: &mut Vec<u8>,
    fields: &mut Vec<(usize, usize)>,
) -> Option<()> {
    let mut i = 0;
    loop {
        let start = buf.len();
        if raw.get(i) != Some(&quote) {
            let rest = &raw[i..];
            let Some(n) = memchr::memchr2(delimiter, quote, rest) else {
                buf.extend_from_slice(rest);
                fields.push((start, buf.len()));
                return Some(());
            };
            if rest[n] == quote {
                return None;
            }
            buf.extend_from_slice(&rest[..n]);
            fields.push((start, buf.len()));
            i += n + 1;
            continue;
        }
        i += 1;
        loop {
            let n = memchr::memchr(quote, &raw[i..])?;
            buf.extend_from_slice(&raw[i..i + n]);
            i += n + 1;
            if raw.get(i) != Some(&quote) {
                break;
            }
            buf.push(quote);
            i += 1;
        }
        fields.push((start, buf.len()));
        match raw.get(i) {
            None => return Some(()),
            Some(&c) if c == delimiter => i += 1,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> CsvState {
        CsvState {
            reader: csv_core::ReaderBuilder::new().build(),
            scratch: Vec::new(),
            field_buf: Vec::new(),
            in_row: false,
            fields: Vec::new(),
            texts: Vec::new(),
        }
    }

    #[test]
    fn keys_compare_equal_exactly_when_their_bytes_are_equal() {
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "ts",
            "ip",
            "email",
            "amount",
            "country",
            "event_id",
            "user_agent",
            "page_url",
            "session_id",
            "retry_count",
            "device_browser",
            "a_key_of_16bytes",
            "a key of 17 bytes",
            "é",
            "éé",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(same_key(a, b), a == b, "{a:?} {b:?}");
            }
            // Every single-byte change, at every place, is seen.
            for at in 0..a.len() {
                let mut changed = a.as_bytes().to_vec();
                changed[at] ^= 1;
                let changed = String::from_utf8_lossy(&changed).into_owned();
                assert_eq!(same_key(a, &changed), a == changed, "{a:?} at {at}");
            }
        }
    }

    #[test]
    fn a_record_is_text_when_it_is_utf8_and_its_first_bad_byte_is_named_when_not() {
        let ascii = "x".repeat(150);
        for at in [0, 1, 63, 64, 65, 130, 149] {
            let mut good = ascii.clone().into_bytes();
            good.splice(at..at + 1, "é".bytes());
            assert_eq!(text_of(&good).unwrap().as_bytes(), &good[..]);
            let mut bad = good.clone();
            bad[at + 1] = b'x'; // a lead byte without its continuation
            let (malformed, reason) = text_of(&bad).unwrap_err();
            assert!(malformed);
            assert_eq!(reason, format!("not valid UTF-8 at byte {at}"));
            // A bad byte after a good multi-byte one, further on.
            let mut later = good.clone();
            later.push(0xFF);
            let (_, reason) = text_of(&later).unwrap_err();
            assert_eq!(
                reason,
                format!("not valid UTF-8 at byte {}", later.len() - 1)
            );
        }
        assert_eq!(text_of(ascii.as_bytes()).unwrap(), ascii);
    }

    /// The fields `split_plain` found in `raw`.
    fn fields(csv: &CsvState, raw: &[u8]) -> Vec<Vec<u8>> {
        let bytes = if csv.in_row { raw } else { &csv.field_buf };
        csv.fields
            .iter()
            .map(|&(a, b)| bytes[a..b].to_vec())
            .collect()
    }

    /// What `csv_core` reads from a row.
    fn by_csv_core(raw: &[u8]) -> Vec<Vec<u8>> {
        let mut csv = state();
        let mut out = Vec::new();
        split_csv(raw, &mut csv.reader, &mut csv.scratch, &mut |f| {
            out.push(f.to_vec())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_piece_s_string_builders_start_as_large_as_the_last_piece_s_text() {
        use std::sync::atomic::AtomicUsize;
        let per_row = AtomicUsize::new(0);
        assert_eq!(text_room(&per_row, 100), None, "nothing learnt yet");
        let col: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            Some("abcd"),
            None,
            Some("efghij"),
        ]));
        learn_text_bytes(&per_row, &col);
        // 10 bytes over 3 rows: 4 a row, and an eighth to spare.
        assert_eq!(text_room(&per_row, 100), Some(450));
        // Columns of other types and empty ones teach nothing.
        learn_text_bytes(
            &per_row,
            &(Arc::new(arrow::array::Int64Array::from(vec![1])) as ArrayRef),
        );
        learn_text_bytes(
            &per_row,
            &(Arc::new(arrow::array::StringArray::from(Vec::<&str>::new())) as ArrayRef),
        );
        assert_eq!(text_room(&per_row, 100), Some(450));
    }

    #[test]
    fn an_unquoted_row_splits_at_every_delimiter_and_stops_at_a_quote_or_cr() {
        let reference = |raw: &[u8]| -> Option<Vec<(usize, usize)>> {
            if raw.iter().any(|&c| c == b'"' || c == b'\r') {
                return None;
            }
            let mut fields = Vec::new();
            let mut start = 0;
            for (d, _) in raw.iter().enumerate().filter(|(_, c)| **c == b',') {
                fields.push((start, d));
                start = d + 1;
            }
            fields.push((start, raw.len()));
            Some(fields)
        };
        // Every byte value at every place of rows of 0 to 40 bytes (two 16-byte blocks and the
        // bytes after them), with delimiters at other places too.
        for len in 0..41 {
            for special in 0..=255u8 {
                for place in 0..len {
                    let mut raw: Vec<u8> = (0..len)
                        .map(|i| if i % 7 == 3 { b',' } else { b'x' })
                        .collect();
                    raw[place] = special;
                    let mut fields = Vec::new();
                    let got = split_unquoted(&raw, b',', b'"', &mut fields).map(|()| fields);
                    assert_eq!(got, reference(&raw), "{special:#x} at {place} of {len}");
                }
            }
        }
    }

    #[test]
    fn plain_rows_split_like_csv_core_and_others_are_left_to_it() {
        let mut csv = state();
        assert!(split_plain(b"a,,b c,\xc3\xa9,", b',', b'"', &mut csv));
        assert_eq!(
            fields(&csv, b"a,,b c,\xc3\xa9,"),
            by_csv_core(b"a,,b c,\xc3\xa9,")
        );
        assert!(
            csv.in_row && csv.field_buf.is_empty(),
            "a plain row is read in place"
        );
        for other in [
            &b""[..],
            b"a\rb,c",
            b"a,b\"c",
            b"\"a\"b,c",
            b"\"a,b",
            b"a,\"b\"\"c",
            b"a,\"\"\"\"\",",
        ] {
            let mut csv = state();
            assert!(!split_plain(other, b',', b'"', &mut csv), "{other:?}");
            assert!(csv.fields.is_empty() && csv.field_buf.is_empty() && !csv.in_row);
        }
    }

    #[test]
    fn quoted_fields_split_like_csv_core() {
        for row in [
            &b"a,\"b,c\""[..],
            b"\"\"",
            b"\"\",\"\"",
            b"\"x \"\"y\"\" z\",,\"\xc3\xa9, \"",
            b"\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\",1",
            b"a,\"\"\"\"\"\",",
        ] {
            let mut csv = state();
            assert!(split_plain(row, b',', b'"', &mut csv), "{row:?}");
            assert_eq!(fields(&csv, row), by_csv_core(row), "{row:?}");
        }
    }

    /// A CSV field as written: plain, or quoted with its quotes doubled, sometimes followed by
    /// stray text (which the fast path leaves to `csv_core`).
    fn written_field() -> impl Strategy<Value = Vec<u8>> {
        let text = proptest::collection::vec(
            prop_oneof![
                Just(b','),
                Just(b'"'),
                Just(b'a'),
                Just(b' '),
                Just(0xc3u8),
                Just(0xa9u8)
            ],
            0..12,
        );
        (text, 0..4u8).prop_map(|(t, how)| match how {
            0 => t.into_iter().filter(|b| *b != b',' && *b != b'"').collect(),
            _ => {
                let mut f = vec![b'"'];
                for b in t {
                    f.push(b);
                    if b == b'"' {
                        f.push(b'"');
                    }
                }
                f.push(b'"');
                if how == 3 {
                    f.push(b'x');
                }
                f
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn written_rows_take_the_fast_path_and_agree_with_csv_core(
            row in proptest::collection::vec(written_field(), 1..8),
        ) {
            let raw = row.join(&b',');
            let stray = row.iter().any(|f| f.first() == Some(&b'"') && f.last() == Some(&b'x'));
            let mut csv = state();
            let fast = split_plain(&raw, b',', b'"', &mut csv);
            prop_assert_eq!(fast, !stray && !raw.is_empty());
            if fast {
                prop_assert_eq!(fields(&csv, &raw), by_csv_core(&raw));
            }
        }

        #[test]
        fn the_fast_path_agrees_with_csv_core(row in proptest::collection::vec(
            prop_oneof![Just(b','), Just(b'"'), Just(b'\r'), Just(b'a'), Just(b' '), Just(0xc3u8), Just(0xa9u8)],
            0..40,
        )) {
            let mut csv = state();
            if split_plain(&row, b',', b'"', &mut csv) {
                prop_assert_eq!(fields(&csv, &row), by_csv_core(&row));
            }
        }
    }
}
