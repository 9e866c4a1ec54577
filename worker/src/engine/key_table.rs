//! The dedupe key set's table: open addressing with linear probing over `(hash, place)` slots.
//!
//! A shard's keys are mostly new and spread over a table far larger than the CPU's caches, so a
//! lookup's cost is its cache misses. Here a slot holds the key's whole 64-bit hash beside its
//! place in the arena: a probe reads one cache line and compares hashes, and the key's bytes in
//! the arena are read only when the hashes are equal (a duplicate, in practice). Because the
//! probe start is known from the hash alone, the slot of a row some rows ahead can be prefetched
//! while the current one is probed ([`KeyTable::prefetch`]). Growing moves slots by their stored
//! hashes, without reading a key.

/// A slot: the key's hash and its place in the arena plus one (0: the slot is empty).
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    hash: u64,
    place: u64,
}

/// Slots are at most three quarters full.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;
const MIN_SLOTS: usize = 1024;

pub(crate) struct KeyTable {
    slots: Vec<Slot>,
    len: usize,
    /// `64 - log2(slots.len())`: a hash's top bits are its first slot.
    shift: u32,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable::with_slots(MIN_SLOTS)
    }
}

impl KeyTable {
    fn with_slots(n: usize) -> KeyTable {
        debug_assert!(n.is_power_of_two());
        KeyTable {
            slots: vec![Slot::default(); n],
            len: 0,
            shift: 64 - n.trailing_zeros(),
        }
    }

    /// The keys held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The keys the table holds before it grows.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() / LOAD_DEN * LOAD_NUM
    }

    fn first_slot(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// Asks the CPU to bring the first slot of `hash` into its cache (a hint; nothing else).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let p: *const Slot = &self.slots[self.first_slot(hash)];
            // SAFETY: a prefetch is a hint that never faults; `p` points to a slot.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// Room for `additional` more keys without growing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional);
        if want > self.capacity() {
            let slots = (want.saturating_mul(LOAD_DEN) / LOAD_NUM + 1)
                .next_power_of_two()
                .max(MIN_SLOTS);
            self.resize(slots);
        }
    }

    /// Looks for a key of hash `hash` for which `same(place)` holds; when there is none,
    /// inserts `place` under `hash` and returns true.
    pub(crate) fn insert_new(&mut self, hash: u64, place: u64, same: impl Fn(u64) -> bool) -> bool {
        if self.len >= self.capacity() {
            self.resize(self.slots.len() * 2);
        }
        debug_assert!(place < u64::MAX);
        let mask = self.slots.len() - 1;
        let mut i = self.first_slot(hash);
        loop {
            let s = self.slots[i];
            if s.place == 0 {
                self.slots[i] = Slot {
                    hash,
                    place: place + 1,
                };
                self.len += 1;
                return true;
            }
            if s.hash == hash && same(s.place - 1) {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    /// Moves every slot into a table of `n` slots, by the hashes they hold.
    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(self, KeyTable::with_slots(n));
        let mask = n - 1;
        for s in old.slots.into_iter().filter(|s| s.place != 0) {
            let mut i = self.first_slot(s.hash);
            while self.slots[i].place != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
        self.len = old.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are their places; `hash` may map many keys to one hash (collisions).
    fn insert(t: &mut KeyTable, key: u64, hash: impl Fn(u64) -> u64) -> bool {
        t.insert_new(hash(key), key, |p| p == key)
    }

    #[test]
    fn keys_are_found_across_growth_and_colliding_hashes() {
        let mut t = KeyTable::default();
        let spread = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let clash = |k: u64| (k % 7) << 60;
        for k in 0..10_000 {
            assert!(insert(&mut t, k, spread), "{k} is new");
        }
        assert!(
            t.capacity() >= 10_000 && t.slots.len() > MIN_SLOTS,
            "it grew"
        );
        for k in (0..10_000).step_by(3) {
            assert!(!insert(&mut t, k, spread), "{k} was held");
        }
        let mut c = KeyTable::default();
        for k in 0..3_000 {
            assert!(insert(&mut c, k, clash));
        }
        for k in 0..3_000 {
            assert!(!insert(&mut c, k, clash), "{k} under a shared hash");
        }
        assert_eq!((t.len(), c.len()), (10_000, 3_000));
    }

    #[test]
    fn a_probe_wraps_past_the_last_slot() {
        let mut t = KeyTable::default();
        let last = |_: u64| u64::MAX;
        for k in 0..5 {
            assert!(insert(&mut t, k, last));
        }
        assert_eq!(t.slots[0].place, 2, "key 1 went round to slot 0");
        assert!(!insert(&mut t, 4, last));
    }

    #[test]
    fn reserve_makes_room_for_that_many_keys() {
        let mut t = KeyTable::default();
        t.reserve(100_000);
        let room = t.slots.len();
        assert!(t.capacity() >= 100_000);
        for k in 0..100_000 {
            assert!(insert(&mut t, k, |k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        assert_eq!(t.slots.len(), room, "the table grew");
        t.prefetch(12345);
    }
}
