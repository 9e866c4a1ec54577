//! Queue bodies, manifests, commit records and binary shard plans: decoding never panics, and
//! whatever decodes encodes back to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::{Message, RunCommit, ShardManifest, ShardPlan, decode_binary, encode_binary};

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = decode_binary::<ShardPlan>(data) {
        assert_eq!(decode_binary::<ShardPlan>(&encode_binary(&plan)).unwrap(), plan);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Message::from_body(text) {
        assert_eq!(Message::from_body(&m.to_body()).unwrap(), m);
    }
    if let Ok(m) = ShardManifest::from_json(text) {
        assert_eq!(ShardManifest::from_json(&m.to_json()).unwrap(), m);
    }
    let _ = RunCommit::from_json(text);
});
