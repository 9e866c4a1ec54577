use super::*;
use crate::engine::parse::{Undeclared, serde_record};
use proptest::prelude::*;
use serde_json::Value;

const COLS: usize = 6;

/// event_id, user_id, device.os, device.browser, amount, tags.
fn tree() -> JsonTree {
    let paths: Vec<(String, usize, bool)> = ["event_id", "user_id", "device.os", "device.browser"]
        .iter()
        .chain(&["amount", "tags"])
        .enumerate()
        .map(|(i, p)| (p.to_string(), i, false))
        .collect();
    JsonTree::build(&paths)
}

/// The fast path's slots (`None`: left to serde) and the serde path's (or its error).
fn both(text: &str) -> (Option<String>, Result<String, String>) {
    let t = tree();
    let mut fast = vec![Val::Null; COLS];
    let f = scan_record(&t, text, &mut fast).map(|()| format!("{fast:?}"));
    let mut slow = vec![Val::Null; COLS];
    let s = serde_record(&t, text, &mut slow, Undeclared::Skip)
        .map(|()| format!("{slow:?}"))
        .map_err(|e| e.to_string());
    (f, s)
}

/// Whatever the fast path decides, the serde path decides the same.
fn agrees(text: &str) {
    if let (Some(f), s) = both(text) {
        assert_eq!(Ok(f), s, "{text:?}");
    }
}

fn fast_and_equal(text: &str) {
    let (f, s) = both(text);
    assert!(f.is_some(), "left to serde: {text:?}");
    assert_eq!(Ok(f.unwrap()), s, "{text:?}");
}

fn left_to_serde(text: &str) {
    assert_eq!(both(text).0, None, "{text:?}");
}

#[test]
fn records_like_the_workload_s_take_the_fast_path_with_serde_s_values() {
    for text in [
        r#"{"event_id":"06ce14c8","ts":"2025-04-30T20:00:57.880-04:00","user_id":1666419,"device":{"os":"iOS","browser":"Safari"},"referrer":"https://www.bücher.de/angebote","scr_w":987,"logged_in":true,"consent":false,"retry_count":0,"q":"size \"XL\" jacket \\ 5"}"#,
        r#"{"event_id":"a","user_id":-12,"device":null,"amount":"446.04","currency":"EUR"}"#,
        r#"{"event_id":"a","amount":null,"tags":["x",{"y":[1,2.5e-3,-0,true]}],"utm":{}}"#,
        " {\t\"event_id\" : \"a\\/b\\n\" ,\r\n \"user_id\" : 0 } \n",
        r#"{"user_id":-0,"amount":true,"tags":{"k":[]}}"#,
        r#"{}"#,
        // Duplicates: the last value wins; a second device object sets only what it holds.
        r#"{"event_id":"a","event_id":"b","device":{"os":"x","browser":"y"},"device":{"os":"z"}}"#,
        // A declared object given a scalar or an array: its columns stay as they were.
        r#"{"device":{"os":"x"},"device":"flat","device":7,"device":[{"os":"no"}],"device":null}"#,
        r#"{"user_id":18446744073709551615,"amount":-9223372036854775808}"#,
        // Below i64: a float, as serde_json makes it.
        r#"{"user_id":-9223372036854775809}"#,
    ] {
        fast_and_equal(text);
    }
}

#[test]
fn regression_a_declared_object_given_a_float_is_left_to_serde() {
    // serde reads the value of a declared object as a value: 4262e305 overflows a double there
    // ("number out of range"), where a skipped field's number is only checked for its grammar.
    for text in [
        r#"{"device":-4262e305}"#,
        r#"{"device":1.5}"#,
        r#"{"device":18446744073709551616}"#,
    ] {
        left_to_serde(text);
        agrees(text);
    }
    fast_and_equal(r#"{"device":-42626305,"x":4262e305}"#);
}

#[test]
fn what_the_fast_path_does_not_decide_is_left_to_serde() {
    for text in [
        r#"{"event_id":"caf\u00e9"}"#,          // a \u escape in a value
        r#"{"q":"\ud83d\ude00"}"#,              // ... in a skipped one
        r#"{"ev\"ent_id":"a"}"#,                // an escaped key
        r#"{"user_id":1.5}"#,                   // a declared float
        r#"{"user_id":1e3}"#,                   // a declared exponent
        r#"{"user_id":18446744073709551616}"#,  // beyond 64 bits
        "{\"event_id\":\"a\tb\"}",              // a control character in a string
        r#"{"event_id":"a",}"#,                 // a trailing comma
        r#"{"event_id":"a"} x"#,                // text after the object
        r#"{"event_id":"a""#,                   // cut short
        r#"{"event_id":"a","device":{"os":"i"#, // cut short inside an object
        r#"{"user_id":01}"#,                    // a leading zero
        r#"{"x":01}"#,
        r#"{"x":-}"#,
        r#"{"x":1.}"#,
        r#"{"x":1e}"#,
        r#"{"x":tru}"#,
        r#"{"x":"\q"}"#,         // not an escape
        r#"[{"event_id":"a"}]"#, // not an object
        "\u{feff}{}",            // a byte order mark
        r#"{event_id:"a"}"#,
    ] {
        left_to_serde(text);
        agrees(text);
    }
    // Nesting deeper than MAX_DEPTH.
    let deep = format!(
        "{{\"x\":{}1{}}}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    left_to_serde(&deep);
    let shallow = format!("{{\"x\":{}1{}}}", "[".repeat(10), "]".repeat(10));
    fast_and_equal(&shallow);
}

/// Any JSON value, with keys that hit the declared tree often.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        "(\\PC|[\"\\\\/\u{8}\u{c}\n\r\t\u{1}])*".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event_id".to_string()),
        Just("user_id".to_string()),
        Just("device".to_string()),
        Just("os".to_string()),
        Just("browser".to_string()),
        Just("amount".to_string()),
        Just("tags".to_string()),
        "[a-z_]{1,8}",
    ]
}

/// A top-level object as text, compact or spread over lines.
fn record() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((key(), value()), 0..10),
        any::<bool>(),
    )
        .prop_map(|(kv, pretty)| {
            let v = Value::Object(kv.into_iter().collect());
            if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_fast_path_agrees_with_serde(text in record()) {
        agrees(&text);
        // Objects of strings without control characters, integers, booleans and nulls are
        // always decided on the fast path.
        let v: Value = serde_json::from_str(&text).unwrap();
        if !text.contains("\\u") && !has_float(&v) {
            fast_and_equal(&text);
        }
    }

    #[test]
    fn the_fast_path_agrees_with_serde_on_damaged_records(
        text in record(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"{}[]\":,\\ 0-.eEtfn\x01a".to_vec()),
    ) {
        let b = text.as_bytes();
        let cut = cut.index(b.len() + 1);
        if let Ok(t) = std::str::from_utf8(&b[..cut]) {
            agrees(t);
        }
        if !b.is_empty() {
            let mut changed = b.to_vec();
            changed[at.index(b.len())] = byte;
            if let Ok(t) = std::str::from_utf8(&changed) {
                agrees(t);
            }
        }
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

#[test]
fn a_string_ends_at_its_first_quote_or_backslash_and_stops_at_a_control_character() {
    let reference = |b: &[u8], from: usize| {
        let at = from
            + b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        (b[at] >= 0x20).then_some(at)
    };
    // Every byte value at every place of 43 bytes (two 16-byte blocks, an 8-byte word and
    // single bytes), read from each of the first places (`string_end` reads only the bytes).
    for special in 0..=255u8 {
        for place in 0..43 {
            let mut b = vec![b'a'; 43];
            b[3] = 0xC3; // non-ASCII bytes are plain text
            b[20] = 0x80;
            b[place] = special;
            b[41] = b'"';
            for from in 0..4 {
                let s = Scan {
                    text: "",
                    b: &b,
                    i: from,
                };
                assert_eq!(
                    s.string_end(),
                    reference(&b, from),
                    "{special:#x} at {place}"
                );
            }
        }
    }
}
