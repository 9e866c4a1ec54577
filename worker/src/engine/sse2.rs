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
