//! Finding a JSON object's key among the declared ones without scanning them: a table of 1,024
//! slots indexed by a hash of the key's length and three of its bytes, each slot naming the one
//! declared key that lands there (or that several do, which falls back to the scan). A record's
//! keys are looked up once each, declared or not, so this is on the parse's hot path.

const SLOTS: usize = 1024;
const EMPTY: u16 = 0;
const SHARED: u16 = u16::MAX;

/// Where to look for a key.
#[derive(Debug, PartialEq)]
pub(crate) enum Lookup {
    /// No declared key lands in its slot: not declared.
    Absent,
    /// Only the key at this position can be it (compare to be sure).
    At(usize),
    /// Compare with every declared key.
    Scan,
}

/// The slots of one object's declared keys; empty (every lookup a scan) until built.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    slots: Vec<u16>,
}

fn slot(key: &[u8]) -> usize {
    let n = key.len();
    if n == 0 {
        return 0;
    }
    let mix = n.wrapping_mul(31)
        ^ (key[0] as usize).wrapping_mul(7)
        ^ (key[n / 2] as usize).wrapping_mul(131)
        ^ (key[n - 1] as usize).wrapping_mul(1021);
    mix % SLOTS
}

impl KeyIndex {
    /// The index of `keys`, in their order.
    pub(crate) fn build<'a>(keys: impl Iterator<Item = &'a str>) -> KeyIndex {
        let mut slots = vec![EMPTY; SLOTS];
        for (i, k) in keys.enumerate() {
            let s = &mut slots[slot(k.as_bytes())];
            *s = match (*s, u16::try_from(i + 1)) {
                (EMPTY, Ok(at)) if at != SHARED => at,
                _ => SHARED,
            };
        }
        KeyIndex { slots }
    }

    pub(crate) fn lookup(&self, key: &str) -> Lookup {
        if self.slots.is_empty() {
            return Lookup::Scan;
        }
        match self.slots[slot(key.as_bytes())] {
            EMPTY => Lookup::Absent,
            SHARED => Lookup::Scan,
            at => Lookup::At(at as usize - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_key_is_found_and_others_are_not_mistaken_for_one() {
        let declared: Vec<String> = [
            "event_id", "ts", "user_id", "email", "ip", "device", "", "é",
        ]
        .into_iter()
        .map(String::from)
        .chain((0..600).map(|i| format!("field_{i}")))
        .collect();
        let index = KeyIndex::build(declared.iter().map(String::as_str));
        let find = |k: &str| match index.lookup(k) {
            Lookup::Absent => None,
            Lookup::At(i) => (declared[i] == k).then_some(i),
            Lookup::Scan => declared.iter().position(|d| d == k),
        };
        for (i, k) in declared.iter().enumerate() {
            assert_eq!(find(k), Some(i), "{k:?}");
        }
        for k in ["event_i", "Ts", "utm_source", "field_600", "field_-1", "ee"] {
            assert_eq!(find(k), None, "{k:?}");
        }
        // 608 keys in 1,024 slots: some share one, and those are still found by the scan.
        assert!(index.slots.contains(&SHARED));
        assert_eq!(KeyIndex::default().lookup("ts"), Lookup::Scan);
    }
}
