//! NDJSON records through the whole engine: counts reconcile or the shard fails cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use worker::harness::{InputFormat, RecordHarness};

static H: OnceLock<RecordHarness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = H.get_or_init(|| RecordHarness::new(InputFormat::Ndjson));
    // The first byte picks where the shard starts (a byte-range shard skips its partial line).
    let (start, body) = match data.split_first() {
        Some((s, rest)) => (u64::from(*s % 8), rest),
        None => (0, data),
    };
    let _ = h.run(body, start);
});
