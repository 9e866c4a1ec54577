//! Pipeline files: parsing and validation never panic; a valid file compiles to a plan or fails
//! with an error (key or reference files are missing here).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir();
    if let Ok(p) = worker::config::parse(text, "fuzz.toml", base) {
        let _ = worker::plan::Plan::build(&p);
        let _ = p.masked_columns();
    }
});
