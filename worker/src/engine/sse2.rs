//! Sixteen bytes at a time with SSE2, which is part of the x86-64 baseline: every CPU this code
//! runs on has it, so there is no detection, and callers of these functions (safe functions that
//! need the feature) say so at their `unsafe` block. Other architectures use the callers' word or
//! byte loops.

use std::arch::x86_64::*;

/// `block` in a 128-bit register.
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn load(block: &[u8; 16]) -> __m128i {
    let lo = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
    _mm_set_epi64x(hi as i64, lo as i64)
}

/// The bytes of `v` equal to `b` (all ones where equal).
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn equal(v: __m128i, b: u8) -> __m128i {
    _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8))
}

/// The bytes of `v` at most `max`, unsigned (all ones where so).
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn at_most(v: __m128i, max: u8) -> __m128i {
    // v <= max exactly when max(v, max) is max.
    let limit = _mm_set1_epi8(max as i8);
    _mm_cmpeq_epi8(_mm_max_epu8(v, limit), limit)
}

/// The bytes set in `a` or `b`, as the bits of a mask (bit i for byte i).
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn bits_of_either(a: __m128i, b: __m128i) -> u32 {
    _mm_movemask_epi8(_mm_or_si128(a, b)) as u32
}

/// The bytes set in `v`, as the bits of a mask.
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn bits(v: __m128i) -> u32 {
    _mm_movemask_epi8(v) as u32
}

/// How many of the first bytes of `bytes` are surely ASCII: all of them, or up to the block of
/// sixty-four bytes (their high bits OR-ed) that holds the first byte that is not.
#[inline]
#[target_feature(enable = "sse2")]
pub(crate) fn ascii_prefix(bytes: &[u8]) -> usize {
    let mut blocks = bytes.chunks_exact(64);
    for (i, b) in (&mut blocks).enumerate() {
        let at = |i: usize| load(b[i..i + 16].try_into().expect("16 bytes"));
        let any = _mm_or_si128(_mm_or_si128(at(0), at(16)), _mm_or_si128(at(32), at(48)));
        if bits(any) != 0 {
            return i * 64;
        }
    }
    let tail = blocks.remainder();
    match tail.is_ascii() {
        true => bytes.len(),
        false => bytes.len() - tail.len(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ascii_prefix_ends_at_or_before_the_first_byte_that_is_not() {
        let mut bytes = [b'a'; 150];
        for len in [0, 1, 63, 64, 65, 127, 128, 150] {
            // SAFETY: SSE2 is part of the x86-64 baseline.
            assert_eq!(unsafe { super::ascii_prefix(&bytes[..len]) }, len);
            for at in 0..len {
                for high in [0x80, 0xC3, 0xFF] {
                    bytes[at] = high;
                    let n = unsafe { super::ascii_prefix(&bytes[..len]) };
                    assert!(n <= at && bytes[..n].is_ascii(), "{len} {at}: {n}");
                    assert!(at - n < 64, "{len} {at}: {n}, within a block");
                    bytes[at] = b'a';
                }
            }
        }
    }
}
