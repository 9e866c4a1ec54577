//! The shape most string steps share: one string column in, one out, nulls kept.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};

/// Maps every non-null value of a string column through `f` (which writes into a reused buffer).
pub(crate) fn map_strings(col: &ArrayRef, mut f: impl FnMut(&str, &mut String)) -> ArrayRef {
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
