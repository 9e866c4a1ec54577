//! A fast path for JSON records: one pass over the record's bytes that fills the declared
//! columns' slots, without serde's visitor calls per key and per value.
//!
//! It takes only what it can decide exactly as `serde_json` does and gives up on the rest,
//! leaving the record to the serde path ([`super::parse`]), which then decides it and words any
//! error: a record that is not a well-formed JSON object, a `\u` escape, a declared number with a
//! fraction or an exponent or beyond 64 bits, a key with an escape, a `json` (raw) column,
//! nesting deeper than [`MAX_DEPTH`]. So a record this path accepts is one the serde path
//! accepts, with the same values in the same slots (duplicate keys: the last wins; a declared
//! object given as a scalar or an array leaves its columns unset; a leaf given an object or an
//! array is `Complex`); the tests hold the two paths to that.

use std::borrow::Cow;

use pipeline::builder::Val;

use super::parse::{JsonNode, JsonTree};

/// Objects and arrays nested deeper than this are left to the serde path (which allows 128).
const MAX_DEPTH: usize = 64;

/// Fills `slots` from the JSON object `text` (undeclared fields skipped). `None`: not decided
/// here; the slots are then in any state and the record goes to the serde path.
pub(crate) fn scan_record<'c>(tree: &JsonTree, text: &'c str, slots: &mut [Val<'c>]) -> Option<()> {
    let mut s = Scan {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    s.object(tree, slots, 1)?;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

struct Scan<'c> {
    text: &'c str,
    b: &'c [u8],
    i: usize,
}

impl<'c> Scan<'c> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// After a member or an element: `Some(true)` at the `close` that ends its object or array,
    /// `Some(false)` past a comma and the whitespace after it, `None` at anything else.
    fn closed_after_item(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(false)
            }
            c if c == close => {
                self.i += 1;
                Some(true)
            }
            _ => None,
        }
    }

    /// The members of an object whose `{` was read, into `slots` by `tree`.
    fn object(&mut self, tree: &JsonTree, slots: &mut [Val<'c>], depth: usize) -> Option<()> {
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let key = self.plain_string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            match tree.get(key) {
                Some(JsonNode::Leaf(c)) => slots[*c] = self.leaf(depth)?,
                Some(JsonNode::Raw(_)) => return None,
                Some(JsonNode::Object(t)) if self.peek() == Some(b'{') => {
                    if depth >= MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    self.object(t, slots, depth + 1)?;
                }
                // A scalar, null or array where an object was declared: its columns stay unset.
                Some(JsonNode::Object(_)) => self.not_an_object(depth)?,
                None => self.skip(depth)?,
            }
            if self.closed_after_item(b'}')? {
                return Some(());
            }
        }
    }

    /// A value other than an object where an object was declared. serde reads it as a value
    /// (not skipped): a number must be one it can hold, so only an integer of 64 bits is taken
    /// here (a float that overflows, `1e400`, is an error there).
    fn not_an_object(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            _ => self.skip(depth),
        }
    }

    /// A declared leaf's value.
    fn leaf(&mut self, depth: usize) -> Option<Val<'c>> {
        Some(match self.peek()? {
            b'"' => {
                self.i += 1;
                Val::Str(self.string()?)
            }
            b'n' => self.literal(b"null").map(|()| Val::Null)?,
            b't' => self.literal(b"true").map(|()| Val::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Val::Bool(false))?,
            b'{' => self.skip(depth).map(|()| Val::Complex("object"))?,
            b'[' => self.skip(depth).map(|()| Val::Complex("array"))?,
            _ => self.integer()?,
        })
    }

    /// An integer as `serde_json` gives it: `U64` when not negative, `I64` when negative, and
    /// `-0` as the float `-0.0`. A fraction, an exponent or more than 64 bits: `None`.
    fn integer(&mut self) -> Option<Val<'c>> {
        let negative = self.eat(b'-').is_some();
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        Some(if !negative {
            Val::U64(n)
        } else {
            let neg = (n as i64).wrapping_neg();
            if neg >= 0 {
                Val::F64(-(n as f64))
            } else {
                Val::I64(neg)
            }
        })
    }

    /// The rest of a string whose `"` was read: borrowed when it has no escape, decoded when
    /// its escapes are the two-character ones.
    fn string(&mut self) -> Option<Cow<'c, str>> {
        let start = self.i;
        let end = self.string_end()?;
        if self.b[end] == b'"' {
            self.i = end + 1;
            return Some(Cow::Borrowed(&self.text[start..end]));
        }
        let mut out = String::with_capacity(end - start + 16);
        let mut from = start;
        let mut at = end;
        loop {
            out.push_str(&self.text[from..at]);
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(Cow::Owned(out));
            }
            out.push(unescape(*self.b.get(at + 1)?)?);
            from = at + 2;
            self.i = from;
            at = self.string_end()?;
        }
    }

    /// The rest of a string whose `"` was read, with no escape in it (a key).
    fn plain_string(&mut self) -> Option<&'c str> {
        let start = self.i;
        let end = self.string_end()?;
        (self.b[end] == b'"').then(|| {
            self.i = end + 1;
            &self.text[start..end]
        })
    }

    /// From `self.i`, the place of the first `"` or `\`; `None` at a control character (not
    /// allowed in a JSON string) or the end of the text. Sixteen bytes at a time with SSE2 (every
    /// x86-64 has it), then eight at a time.
    fn string_end(&self) -> Option<usize> {
        let b = self.b;
        let mut i = self.i;
        #[cfg(target_arch = "x86_64")]
        while let Some(block) = b.get(i..i + 16) {
            // SAFETY: SSE2 is part of the x86-64 baseline: every CPU this code runs on has it.
            let found = unsafe { specials_16(block.try_into().expect("16 bytes")) };
            if found != 0 {
                i += found.trailing_zeros() as usize;
                return (b[i] >= 0x20).then_some(i);
            }
            i += 16;
        }
        while let Some(word) = b.get(i..i + 8) {
            let found = specials(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            if found != 0 {
                i += (found.trailing_zeros() / 8) as usize;
                return (b[i] >= 0x20).then_some(i);
            }
            i += 8;
        }
        while let Some(&c) = b.get(i) {
            match c {
                b'"' | b'\\' => return Some(i),
                0..0x20 => return None,
                _ => i += 1,
            }
        }
        None
    }

    /// Skips any value, checking it is well formed.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_string()
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => {
                self.i += 1;
                self.skip_members(depth + 1)
            }
            b'[' => {
                self.i += 1;
                self.skip_elements(depth + 1)
            }
            _ => self.skip_number(),
        }
    }

    /// The rest of a string whose `"` was read; a `\u` escape is left to the serde path.
    fn skip_string(&mut self) -> Option<()> {
        loop {
            let at = self.string_end()?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(());
            }
            unescape(*self.b.get(at + 1)?)?;
            self.i = at + 2;
        }
    }

    fn skip_members(&mut self, depth: usize) -> Option<()> {
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            self.skip_string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            self.skip(depth)?;
            if self.closed_after_item(b'}')? {
                return Some(());
            }
        }
    }

    fn skip_elements(&mut self, depth: usize) -> Option<()> {
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.skip(depth)?;
            if self.closed_after_item(b']')? {
                return Some(());
            }
        }
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// The character a two-character escape `\c` stands for; `None` for `\u` (left to serde) and
/// for what is not an escape.
fn unescape(c: u8) -> Option<char> {
    Some(match c {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// The bytes of `w` that are `"`, `\` or below 0x20, as their high bits: the lowest one set is
/// exact (a borrow only marks bytes above a byte that is marked anyway).
#[inline]
fn specials(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// The bytes of `block` that are `"`, `\` or below 0x20, as the bits of a mask (SSE2).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse2")]
fn specials_16(block: &[u8; 16]) -> u32 {
    use super::sse2::{at_most, bits_of_either, equal, load};
    let v = load(block);
    let ends = std::arch::x86_64::_mm_or_si128(equal(v, b'"'), equal(v, b'\\'));
    bits_of_either(ends, at_most(v, 0x1F))
}

#[cfg(test)]
mod tests;
