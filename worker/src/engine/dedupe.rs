//! Dedupe: exact, keep-first, over the whole shard.

use super::key_table::KeyTable;
use super::*;

/// The keys seen so far, stored once in an arena of 16 MiB blocks (no copy-on-grow spikes).
pub struct KeySet {
    pub(crate) blocks: Vec<Vec<u8>>,
    /// Each key's hash beside its place in `blocks`, packed: block (20 bits) | position (24
    /// bits) | length (20 bits).
    pub(crate) table: KeyTable,
    pub(crate) hasher: hashbrown::DefaultHashBuilder,
}

pub(crate) const BLOCK: usize = 16 << 20;
/// Keys of this length or more are replaced by a SHA-256 digest of them (1 MiB keys do not occur
/// in practice; the digest keeps the set small if one does).
pub(crate) const MAX_KEY: usize = 1 << 20;

impl Default for KeySet {
    fn default() -> Self {
        KeySet {
            blocks: vec![Vec::with_capacity(BLOCK)],
            table: KeyTable::default(),
            hasher: Default::default(),
        }
    }
}

pub(crate) fn key_at(blocks: &[Vec<u8>], e: u64) -> &[u8] {
    let (b, p, l) = (
        (e >> 44) as usize,
        ((e >> 20) & 0xFF_FFFF) as usize,
        (e & 0xF_FFFF) as usize,
    );
    &blocks[b][p..p + l]
}

/// The bytes a key is stored and hashed as: itself, or a digest of it when it is very long.
fn stored(key: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use sha2::Digest;
    if key.len() < MAX_KEY {
        return key.into();
    }
    let mut d = vec![0xFE];
    d.extend_from_slice(&sha2::Sha256::digest(key));
    d.into()
}

impl KeySet {
    /// The hash [`KeySet::insert_hashed`] wants for `key` (any thread can work it out).
    pub fn hash_of(hasher: &hashbrown::DefaultHashBuilder, key: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        hasher.hash_one(&*stored(key))
    }

    /// Inserts `key`; returns false if it was already there.
    pub fn insert(&mut self, key: &[u8]) -> bool {
        let h = Self::hash_of(&self.hasher, key);
        self.insert_hashed(key, h)
    }

    /// Inserts `key`, whose [`KeySet::hash_of`] with this set's hasher is `h`; returns false if
    /// it was already there.
    pub fn insert_hashed(&mut self, key: &[u8], h: u64) -> bool {
        let key = &*stored(key);
        if self
            .blocks
            .last()
            .is_some_and(|b| b.len() + key.len() > BLOCK)
        {
            self.blocks.push(Vec::with_capacity(BLOCK));
        }
        let block = self.blocks.len() - 1;
        let pos = self.blocks[block].len();
        let place = ((block as u64) << 44) | ((pos as u64) << 20) | key.len() as u64;
        let blocks = &self.blocks;
        let new = self
            .table
            .insert_new(h, place, |e| key_at(blocks, e) == key);
        if new {
            self.blocks[block].extend_from_slice(key);
        }
        new
    }

    /// A hint that the key of hash `h` is looked up soon (see [`KeyTable::prefetch`]).
    pub fn prefetch(&self, h: u64) {
        self.table.prefetch(h);
    }

    /// Room for `additional` more keys without growing the table (a growth moves every slot,
    /// on the shard's ordered path).
    pub fn reserve(&mut self, additional: usize) {
        self.table.reserve(additional);
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }
}

/// The bytes of row `row`'s key over `cols`: one string key's own bytes, read in place (null
/// as 0xFF, which no UTF-8 string holds); any other key built into `out` by [`key_bytes`].
pub(crate) fn key_of<'a>(cols: &[&'a ArrayRef], row: usize, out: &'a mut Vec<u8>) -> &'a [u8] {
    if let [c] = cols
        && c.data_type() == &DataType::Utf8
        && !c.is_null(row)
    {
        return c.as_string::<i32>().value(row).as_bytes();
    }
    key_bytes(cols, row, out);
    out
}

/// Builds row `row`'s key over `cols` into `out` (see [`key_of`]): each column's null flag,
/// then its length and bytes; a single string column's bytes alone.
pub(crate) fn key_bytes(cols: &[&ArrayRef], row: usize, out: &mut Vec<u8>) {
    out.clear();
    if let [c] = cols
        && c.data_type() == &DataType::Utf8
    {
        if c.is_null(row) {
            out.push(0xFF);
        } else {
            out.extend_from_slice(c.as_string::<i32>().value(row).as_bytes());
        }
        return;
    }
    for c in cols {
        if c.is_null(row) {
            out.push(0);
            continue;
        }
        out.push(1);
        match c.data_type() {
            DataType::Utf8 => {
                let s = c.as_string::<i32>().value(row).as_bytes();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
            _ => {
                let v = arrow::util::display::array_value_to_string(c, row).unwrap_or_default();
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
}

/// How many rows ahead of the one being deduped its key's slot is prefetched: enough to cover a
/// cache miss with the work of the rows in between.
const PREFETCH_ROWS: usize = 8;

pub(crate) fn dedupe(
    piece: &mut Piece,
    slots: &[usize],
    seen: &mut KeySet,
) -> Result<(), WorkerError> {
    // A piece left with no rows (all malformed, rejected or filtered) never had its later
    // columns built: nothing to dedupe.
    if piece.rows.is_empty() {
        return Ok(());
    }
    let cols: Vec<&ArrayRef> = slots
        .iter()
        .map(|s| piece.cols.get(*s).expect("set"))
        .collect();
    let mut buf = Vec::new();
    let mut keep = Vec::with_capacity(piece.rows.len());
    // Hashed while the piece was parsed, in parallel, when it was (see `hash_keys`).
    let hashed = std::mem::take(&mut piece.key_hashes);
    let ahead = (hashed.len() == piece.rows.len()).then_some(&hashed[..]);
    for i in 0..piece.rows.len() {
        let key = key_of(&cols, i, &mut buf);
        keep.push(match ahead {
            Some(h) => {
                if let Some(&later) = h.get(i + PREFETCH_ROWS) {
                    seen.prefetch(later);
                }
                seen.insert_hashed(key, h[i])
            }
            None => seen.insert(key),
        });
    }
    let dups = keep.iter().filter(|k| !**k).count() as u64;
    piece.counts.duplicates += dups;
    if dups > 0 {
        piece.keep(keep)?;
    }
    Ok(())
}

/// Works out the hash of each row's dedupe key into `piece.key_hashes`, so the ordered dedupe
/// only looks them up: run where pieces are parsed in parallel, it takes the hashing (~4 % of a
/// shard) off the one path that runs in order.
pub(crate) fn hash_keys(
    piece: &mut Piece,
    slots: &[usize],
    hasher: &hashbrown::DefaultHashBuilder,
) {
    if piece.rows.is_empty() {
        return;
    }
    let cols: Vec<&ArrayRef> = slots
        .iter()
        .map(|s| piece.cols.get(*s).expect("set"))
        .collect();
    let mut buf = Vec::new();
    let hashes = (0..piece.rows.len())
        .map(|i| KeySet::hash_of(hasher, key_of(&cols, i, &mut buf)))
        .collect();
    piece.key_hashes = hashes;
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn a_key_read_in_place_has_the_bytes_of_the_key_built() {
        let s: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
            Some("e1"),
            None,
            Some(""),
        ]));
        let n: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![Some(7), None, Some(0)]));
        let (mut built, mut out) = (Vec::new(), Vec::new());
        for cols in [vec![&s], vec![&s, &n], vec![&n]] {
            for row in 0..3 {
                key_bytes(&cols, row, &mut built);
                assert_eq!(
                    key_of(&cols, row, &mut out),
                    &built[..],
                    "{cols:?} row {row}"
                );
            }
        }
        key_bytes(&[&s], 1, &mut built);
        assert_eq!(built, [0xFF], "a null string key is 0xFF");
    }
}

#[cfg(test)]
mod keyset_tests {
    use super::KeySet;

    #[test]
    fn a_key_set_with_room_reserved_takes_that_many_keys_without_growing() {
        let mut k = KeySet::default();
        assert!(k.insert(b"first"));
        k.reserve(50_000);
        let room = k.table.capacity();
        assert!(room > 50_000);
        for i in 0..50_000u32 {
            assert!(k.insert(format!("key-{i}").as_bytes()));
        }
        assert_eq!(k.table.capacity(), room, "the table grew");
        assert!(
            !k.insert(b"first"),
            "keys held before the reserve are still found"
        );
        assert!(!k.insert(b"key-49999"));
    }

    #[test]
    fn keyset_is_exact_across_blocks_and_long_keys() {
        let mut k = KeySet::default();
        for i in 0..200_000u32 {
            assert!(k.insert(format!("key-{i}-{}", "x".repeat((i % 200) as usize)).as_bytes()));
        }
        for i in (0..200_000u32).step_by(7) {
            assert!(!k.insert(format!("key-{i}-{}", "x".repeat((i % 200) as usize)).as_bytes()));
        }
        assert!(k.insert(b""));
        assert!(!k.insert(b""));
        let long = vec![b'a'; 2 << 20];
        assert!(k.insert(&long));
        assert!(!k.insert(&long));
        let mut other = long.clone();
        other[5] = b'b';
        assert!(k.insert(&other));
        assert!(k.blocks.len() > 1, "spans several 16 MiB blocks");
    }

    #[test]
    fn keys_hashed_ahead_are_deduplicated_as_keys_hashed_in_place() {
        let (mut ahead, mut in_place) = (KeySet::default(), KeySet::default());
        let long = vec![b'k'; super::MAX_KEY + 1];
        let keys: Vec<&[u8]> = vec![b"a", b"b", b"a", &long, b"", &long, b""];
        for k in keys {
            let h = KeySet::hash_of(&ahead.hasher, k);
            assert_eq!(ahead.insert_hashed(k, h), in_place.insert(k));
        }
        assert_eq!((ahead.len(), in_place.len()), (4, 4));
    }
}
