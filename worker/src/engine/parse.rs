//! Parsing records into columns: the JSON path tree, CSV fields, pieces of rows.

use super::*;

/// Where each declared column is found in a JSON record.
#[derive(Debug, Default)]
pub struct JsonTree {
    pub(crate) entries: Vec<(Box<str>, JsonNode)>,
}

#[derive(Debug)]
pub(crate) enum JsonNode {
    Leaf(usize),
    Object(JsonTree),
}

impl JsonTree {
    pub fn build(paths: &[(String, usize)]) -> JsonTree {
        let mut root = JsonTree::default();
        for (path, col) in paths {
            let mut node = &mut root;
            let parts: Vec<&str> = path.split('.').collect();
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let idx = match node.entries.iter().position(|(k, _)| &**k == *p) {
                    Some(i) => i,
                    None => {
                        let n = if last {
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
                    JsonNode::Leaf(_) => break,
                }
            }
        }
        root
    }

    pub(crate) fn get(&self, key: &str) -> Option<&JsonNode> {
        self.entries
            .iter()
            .find(|(k, _)| k.len() == key.len() && &**k == key)
            .map(|(_, n)| n)
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
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(KeyStr(k)) = m.next_key::<KeyStr<'de>>()? {
            match self.tree.get(&k) {
                Some(JsonNode::Leaf(i)) => self.slots[*i] = m.next_value_seed(LeafSeed)?,
                Some(JsonNode::Object(t)) => m.next_value_seed(ObjSeed {
                    tree: t,
                    slots: self.slots,
                    root: false,
                })?,
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
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
    /// Column slots (declared columns, then step outputs); `None` until set.
    pub cols: Vec<Option<ArrayRef>>,
    /// For each live row, its record index in the chunk.
    pub rows: Vec<u32>,
    pub quarantine: Vec<QItem>,
    pub counts: Counts,
}

pub struct QItem {
    pub record: u32,
    pub bucket: String,
    pub reason: String,
}

impl Piece {
    pub(crate) fn keep(&mut self, mask: &BooleanArray) -> Result<(), WorkerError> {
        if mask.true_count() == mask.len() {
            return Ok(());
        }
        for c in self.cols.iter_mut().flatten() {
            *c = arrow::compute::filter(c, mask).map_err(WorkerError::arrow)?;
        }
        let mut i = 0;
        self.rows.retain(|_| {
            let k = mask.value(i);
            i += 1;
            k
        });
        Ok(())
    }

    /// Applies a transform's failures: quarantine (and drop) or leave null.
    pub(crate) fn fail(
        &mut self,
        fails: transform::Failures,
        on_error: OnError,
        bucket: &str,
        column: &str,
    ) -> Result<(), WorkerError> {
        if fails.is_empty() || on_error == OnError::Null {
            return Ok(());
        }
        let fails = fails
            .into_iter()
            .map(|(i, reason)| (i, format!("{column}: {reason}")))
            .collect();
        self.quarantine_rows(fails, bucket)
    }

    /// Quarantines rows (index, reason) into `bucket` and drops them from the piece.
    pub(crate) fn quarantine_rows(
        &mut self,
        rows: transform::Failures,
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
        self.keep(&BooleanArray::from(mask))
    }
}

/// Parses records `range` of a chunk into a piece.
pub(crate) fn parse_piece(plan: &Plan, chunk: &Chunk, range: std::ops::Range<usize>) -> Piece {
    let ncols = plan.slot_types.len();
    let declared = plan.declared.len();
    let mut builders: Vec<ColBuilder> = plan
        .declared
        .iter()
        .map(|(_, t, _)| ColBuilder::new(*t, range.len()))
        .collect();
    let mut piece = Piece {
        cols: vec![None; ncols],
        rows: Vec::with_capacity(range.len()),
        quarantine: Vec::new(),
        counts: Counts::default(),
    };
    piece.counts.lines_total = range.len() as u64;
    let mut cells: Vec<Cell> = Vec::with_capacity(declared);
    let mut texts: Vec<std::borrow::Cow<str>> = Vec::with_capacity(declared);
    let mut slots: Vec<Val> = vec![Val::Null; declared];
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut field_buf: Vec<u8> = Vec::new();
    let mut csv_scratch: Vec<u8> = Vec::new();
    let mut csv_reader = csv_core::ReaderBuilder::new()
        .delimiter(plan.csv_delimiter)
        .quote(plan.csv_quote)
        .build();
    // For CSV: where each declared column's text is.
    let mut csv_texts: Vec<CsvText> = Vec::with_capacity(declared);
    let csv_header = chunk.header.as_deref().map(Vec::as_slice).unwrap_or(&[]);
    let csv_map: Vec<Option<usize>> = (0..declared)
        .map(|c| plan.csv_index(csv_header, c))
        .collect();
    let malformed = |piece: &mut Piece, i: usize, reason: String| {
        piece.counts.malformed += 1;
        piece.quarantine.push(QItem {
            record: i as u32,
            bucket: MALFORMED.into(),
            reason,
        });
    };
    for i in range {
        let raw = &chunk.buf[chunk.spans[i].0..chunk.spans[i].1];
        cells.clear();
        texts.clear();
        let outcome: Result<(), (bool, String)> = match plan.format {
            Format::Ndjson | Format::JsonArray | Format::Parquet => {
                let text = match std::str::from_utf8(raw) {
                    Ok(t) => t,
                    Err(e) => {
                        malformed(
                            &mut piece,
                            i,
                            format!("not valid UTF-8 at byte {}", e.valid_up_to()),
                        );
                        continue;
                    }
                };
                for s in slots.iter_mut() {
                    *s = Val::Null;
                }
                let mut de = serde_json::Deserializer::from_str(text);
                let parsed = ObjSeed {
                    tree: &plan.json_tree,
                    slots: &mut slots,
                    root: true,
                }
                .deserialize(&mut de)
                .and_then(|()| de.end());
                match parsed {
                    Err(e) => Err((true, format!("not a JSON object: {e}"))),
                    Ok(()) => {
                        let mut r = Ok(());
                        for (c, (name, _, required)) in plan.declared.iter().enumerate() {
                            apply_text_rules(&plan.text_rules[c], &mut slots[c]);
                            if *required && matches!(slots[c], Val::Null) {
                                r = Err((
                                    true,
                                    format!("required field {name:?} is missing or null"),
                                ));
                                break;
                            }
                            let cell = match &slots[c] {
                                Val::Str(s) => builders[c].rule_cell(s, &plan.text_rules[c]),
                                v => builders[c].val_cell(v),
                            };
                            match cell {
                                Ok(cell) => {
                                    texts.push(match &slots[c] {
                                        Val::Str(s) => s.clone(),
                                        Val::I64(v) => v.to_string().into(),
                                        Val::U64(v) => v.to_string().into(),
                                        Val::F64(v) => v.to_string().into(),
                                        Val::Bool(v) => v.to_string().into(),
                                        _ => "".into(),
                                    });
                                    cells.push(cell);
                                }
                                Err(e) => {
                                    r = Err((false, format!("field {name:?}: {e}")));
                                    break;
                                }
                            }
                        }
                        r
                    }
                }
            }
            Format::Csv => {
                let header = csv_header;
                fields.clear();
                field_buf.clear();
                csv_texts.clear();
                let split = split_csv(raw, &mut csv_reader, &mut csv_scratch, &mut |f| {
                    let s = field_buf.len();
                    field_buf.extend_from_slice(f);
                    fields.push((s, field_buf.len()));
                });
                if let Err(e) = split {
                    Err((true, format!("CSV: {e}")))
                } else if fields.len() != header.len() {
                    Err((
                        true,
                        format!(
                            "CSV row has {} fields, the header has {}",
                            fields.len(),
                            header.len()
                        ),
                    ))
                } else {
                    match std::str::from_utf8(&field_buf) {
                        Err(e) => {
                            Err((true, format!("not valid UTF-8 at byte {}", e.valid_up_to())))
                        }
                        Ok(all) => {
                            let mut r = Ok(());
                            for (c, (name, _, required)) in plan.declared.iter().enumerate() {
                                let rules = &plan.text_rules[c];
                                let span = csv_map[c].map(|j| fields[j]);
                                let given = span
                                    .map(|(a, b)| (&all[a..b], CsvText::Field(a, b)))
                                    .filter(|(s, _)| !rules.is_null(s));
                                let v = given.or_else(|| {
                                    rules.default.as_deref().map(|d| (d, CsvText::Default(c)))
                                });
                                match v {
                                    None if *required => {
                                        r = Err((
                                            true,
                                            format!("required field {name:?} is empty"),
                                        ));
                                        break;
                                    }
                                    None => {
                                        cells.push(Cell::Null);
                                        csv_texts.push(CsvText::Field(0, 0));
                                    }
                                    Some((s, at)) => match builders[c].rule_cell(s, rules) {
                                        Ok(cell) => {
                                            cells.push(cell);
                                            csv_texts.push(at);
                                        }
                                        Err(e) => {
                                            r = Err((false, format!("field {name:?}: {e}")));
                                            break;
                                        }
                                    },
                                }
                            }
                            r
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(()) if plan.format == Format::Csv => {
                // Validated as UTF-8 above.
                let all = std::str::from_utf8(&field_buf).unwrap_or_default();
                for (c, cell) in cells.drain(..).enumerate() {
                    let text = match csv_texts[c] {
                        CsvText::Field(a, b) => &all[a..b],
                        CsvText::Default(d) => plan.text_rules[d].default.as_deref().unwrap_or(""),
                    };
                    builders[c].push(cell, text);
                }
                piece.rows.push(i as u32);
            }
            Ok(()) => {
                for (c, cell) in cells.drain(..).enumerate() {
                    builders[c].push(cell, &texts[c]);
                }
                piece.rows.push(i as u32);
            }
            Err((true, reason)) => malformed(&mut piece, i, reason),
            Err((false, reason)) => {
                *piece
                    .counts
                    .rejected
                    .entry(INVALID_VALUE.into())
                    .or_default() += 1;
                piece.quarantine.push(QItem {
                    record: i as u32,
                    bucket: INVALID_VALUE.into(),
                    reason,
                });
            }
        }
    }
    for (c, b) in builders.iter_mut().enumerate() {
        piece.cols[c] = Some(b.finish());
    }
    piece
}
