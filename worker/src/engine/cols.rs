//! A piece's column slots, with rows dropped lazily: a step that drops rows (a filter, dedupe,
//! a quarantine) records its keep-mask, and each column is compacted only when it is next read,
//! through all the masks since it was last compacted at once. A column no later step reads or
//! writes out (the raw `user_agent` after the bot filter, `email` after its hash) is never
//! copied; one read after three drops is one copy, not three.

use std::cell::OnceCell;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::compute::{FilterBuilder, FilterPredicate};

/// The slots of a piece (declared columns, then step outputs).
#[derive(Debug, Default)]
pub struct Cols {
    slots: Vec<Slot>,
    /// The keep-masks of the drops so far, in order; each is over the rows the ones before it
    /// kept.
    masks: Vec<Vec<bool>>,
    /// `filters[d]`: the masks from the `d`-th on, composed into one filter, once a column
    /// compacted after `d` drops is read (most columns share one; reset by each drop).
    filters: Vec<OnceCell<FilterPredicate>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The column as set or last compacted, over the rows left after `masks[..drops]`.
    col: Option<ArrayRef>,
    drops: usize,
    /// The column over the current rows, once read since the last drop.
    current: OnceCell<ArrayRef>,
}

impl Cols {
    /// `n` empty slots.
    pub fn new(n: usize) -> Cols {
        Cols {
            slots: (0..n).map(|_| Slot::default()).collect(),
            masks: Vec::new(),
            filters: Vec::new(),
        }
    }

    /// The slot's column over the current rows (`None` until set).
    pub fn get(&self, slot: usize) -> Option<&ArrayRef> {
        let s = &self.slots[slot];
        let col = s.col.as_ref()?;
        if s.drops == self.masks.len() {
            return Some(col);
        }
        Some(s.current.get_or_init(|| {
            let filter = self.filters[s.drops].get_or_init(|| {
                let keep = BooleanArray::from(compose(&self.masks[s.drops..]));
                FilterBuilder::new(&keep).optimize().build()
            });
            filter
                .filter(col.as_ref())
                .expect("a keep-mask is as long as the column it filters")
        }))
    }

    /// Sets the slot to `col`, over the current rows.
    pub fn set(&mut self, slot: usize, col: ArrayRef) {
        self.slots[slot] = Slot {
            col: Some(col),
            drops: self.masks.len(),
            current: OnceCell::new(),
        };
    }

    /// Drops the rows `keep` is false for (over the current rows) from every slot, lazily.
    pub fn keep(&mut self, keep: Vec<bool>) {
        let drops = self.masks.len();
        for s in &mut self.slots {
            if let Some(c) = s.current.take() {
                s.col = Some(c);
                s.drops = drops;
            }
        }
        self.masks.push(keep);
        self.filters = (0..self.masks.len()).map(|_| OnceCell::new()).collect();
    }
}

/// `masks` (each over the rows the ones before it kept) as one mask over the first one's rows.
fn compose(masks: &[Vec<bool>]) -> Vec<bool> {
    let mut keep = masks[0].clone();
    for m in &masks[1..] {
        let mut next = m.iter();
        for k in keep.iter_mut().filter(|k| **k) {
            *k = *next.next().expect("a mask over the rows kept before it");
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    use std::sync::Arc;

    fn values(c: &ArrayRef) -> Vec<i64> {
        c.as_primitive::<Int64Type>().values().to_vec()
    }

    fn ints(v: Vec<i64>) -> ArrayRef {
        Arc::new(Int64Array::from(v))
    }

    #[test]
    fn masks_compose_over_the_rows_each_one_kept() {
        let m = compose(&[
            vec![true, false, true, true, true],
            vec![true, false, true, true],
            vec![false, true, true],
        ]);
        assert_eq!(m, [false, false, false, true, true]);
    }

    #[test]
    fn a_column_is_compacted_when_read_through_every_drop_since_it_was_set() {
        let mut cols = Cols::new(3);
        cols.set(0, ints(vec![0, 1, 2, 3, 4, 5]));
        cols.set(1, ints(vec![10, 11, 12, 13, 14, 15]));
        cols.keep(vec![true, false, true, true, true, true]);
        // Slot 0 read between the drops: compacted then, and again by the later drop only.
        assert_eq!(values(cols.get(0).unwrap()), [0, 2, 3, 4, 5]);
        // A column set after the first drop is over the rows left then.
        cols.set(2, ints(vec![20, 22, 23, 24, 25]));
        cols.keep(vec![true, true, false, true, false]);
        assert_eq!(values(cols.get(0).unwrap()), [0, 2, 4]);
        assert_eq!(values(cols.get(1).unwrap()), [10, 12, 14]);
        assert_eq!(values(cols.get(2).unwrap()), [20, 22, 24]);
        cols.keep(vec![false, true, true]);
        assert_eq!(values(cols.get(1).unwrap()), [12, 14]);
        assert_eq!(values(cols.get(0).unwrap()), [2, 4]);
    }

    #[test]
    fn a_column_never_read_after_a_drop_is_never_copied() {
        let mut cols = Cols::new(1);
        let raw = ints(vec![1, 2, 3]);
        cols.set(0, raw.clone());
        cols.keep(vec![true, false, true]);
        cols.keep(vec![false, true]);
        // Still the column as set: the drops are only recorded.
        assert!(Arc::ptr_eq(cols.slots[0].col.as_ref().unwrap(), &raw));
        assert!(cols.slots[0].current.get().is_none());
        assert_eq!(values(cols.get(0).unwrap()), [3]);
        assert_eq!(cols.get(0).unwrap().len(), 1);
        assert!(Cols::new(1).get(0).is_none());
    }
}
