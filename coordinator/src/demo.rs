//! `coordinator demo`: sample data for three differently shaped sources, their pipeline files, and
//! a run of each on the embedded backends.
//!
//! * web events — NDJSON, nested `device` object, mixed time zones, malformed lines, bad
//!   timestamps, crawlers, re-sent duplicates;
//! * POS sales — CSV with a header, quoted fields, a short row, a non-numeric quantity, a store
//!   lookup against a reference file;
//! * billing invoices — a gzip-compressed JSON array, HMAC-SHA256 of customer emails with a key
//!   read from a file, test invoices filtered out.
//!
//! The data is deterministic (a fixed-seed generator), so the demo's counts are the same on every
//! machine.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(1000) < percent * 10
    }
}

/// Local time text for `utc_secs` at `offset_min` minutes east of UTC.
fn local(utc_secs: i64, offset_min: i64, iso: bool) -> String {
    let t = utc_secs + offset_min * 60;
    let (y, m, d) = backends::civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    let sign = if offset_min < 0 { '-' } else { '+' };
    let (oh, om) = (offset_min.abs() / 60, offset_min.abs() % 60);
    if iso {
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}{sign}{oh:02}:{om:02}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            (utc_secs.rem_euclid(1000))
        )
    } else {
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} {sign}{oh:02}{om:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

const MAY_1: i64 = 1_746_057_600; // 2025-05-01T00:00:00Z

pub fn web_events(rows: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::new();
    let mut recent: Vec<String> = Vec::new();
    let types = [
        "page_view",
        "page_view",
        "page_view",
        "click",
        "scroll",
        "heartbeat",
        "search",
        "purchase",
    ];
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64)",
        "Mozilla/5.0 (iPhone)",
        "Mozilla/5.0 (Windows NT 10.0)",
        "Googlebot/2.1",
        "Mozilla/5.0 (Macintosh)",
    ];
    let countries = ["fr", " DE", "Us ", "gb", "es", "IT"];
    let offsets = [0i64, 60, 120, -240, 330, 540];
    for i in 0..rows {
        if !recent.is_empty() && r.chance(2) {
            let dup = recent[r.below(recent.len() as u64) as usize].clone();
            out.extend_from_slice(dup.as_bytes());
            out.push(b'\n');
            continue;
        }
        let t = MAY_1 + (i as i64 * 86_400 * 3 / rows.max(1) as i64) + r.below(600) as i64;
        let ts = if r.chance(1) {
            "\"N/A\"".to_string()
        } else {
            format!("\"{}\"", local(t, offsets[r.below(6) as usize], true))
        };
        let device = if r.chance(1) {
            "null".into()
        } else {
            format!(
                "{{\"os\":\"{}\",\"browser\":\"{}\"}}",
                r.pick(&["Linux", "iOS", "Windows", "macOS"]),
                r.pick(&["Firefox", "Safari", "Chrome"])
            )
        };
        let email = if r.chance(3) {
            "null".into()
        } else {
            format!("\" User{}@Example.com \"", r.below(5000))
        };
        let line = format!(
            "{{\"event_id\":\"ev-{seed}-{i:07}\",\"ts\":{ts},\"user_id\":{},\"email\":{email},\"ip\":\"{}.{}.{}.{}\",\"event_type\":\"{}\",\"user_agent\":\"{}\",\"country\":\"{}\",\"device\":{device},\"scr_w\":{}}}",
            r.below(100_000) + 1,
            r.below(223) + 1,
            r.below(256),
            r.below(256),
            r.below(256),
            r.pick(&types),
            r.pick(&agents),
            r.pick(&countries),
            1024 + r.below(1000)
        );
        if r.chance(1) {
            // A line cut short, as a crashed producer leaves it.
            out.extend_from_slice(&line.as_bytes()[..line.len() / 2]);
        } else {
            out.extend_from_slice(line.as_bytes());
            if recent.len() < 500 {
                recent.push(line);
            } else {
                let k = r.below(500) as usize;
                recent[k] = line;
            }
        }
        out.push(b'\n');
    }
    out
}

pub fn pos_sales(rows: usize, store: u32, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out =
        String::from("sale_id,store_id,sold_at,sku,description,quantity,unit_price,currency\n");
    let mut last = String::new();
    for i in 0..rows {
        if !last.is_empty() && r.chance(1) {
            out.push_str(&last); // re-sent
            continue;
        }
        let t = MAY_1 + (i as i64 * 86_400 * 3 / rows.max(1) as i64);
        let qty = if r.chance(1) {
            "two".to_string()
        } else {
            (r.below(5) + 1).to_string()
        };
        let sid = if r.chance(1) { 99 } else { store };
        let line = format!(
            "S{store}-{i:06},{sid},{},SKU-{:04},\"{}\",{qty},{}.{:02},{}\n",
            local(t, 120, false),
            r.below(500),
            r.pick(&["Coffee, large", "Croissant", "Tea \"Earl Grey\"", "Bagel"]),
            r.below(20) + 1,
            r.below(100),
            r.pick(&["eur", "EUR", "Eur"])
        );
        if r.chance(1) {
            out.push_str(&format!(
                "S{store}-{i:06},{store},{}\n",
                local(t, 120, false)
            ));
            continue;
        }
        out.push_str(&line);
        last = line;
    }
    out.into_bytes()
}

pub fn billing(rows: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = String::from("[\n");
    for i in 0..rows {
        let t = MAY_1 + (i as i64 * 86_400 * 30 / rows.max(1) as i64);
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str(&format!(
            "  {{\"invoice_id\": \"INV-{i:06}\", \"customer\": {{\"id\": {}, \"email\": \"customer{}@example.org\"}}, \"issued_at\": \"{}\", \"amount\": \"{}.{:02}\", \"currency\": \"{}\", \"status\": \"{}\"}}",
            r.below(2000),
            r.below(2000),
            local(t, 0, true).replace("+00:00", "Z"),
            r.below(900) + 10,
            r.below(100),
            r.pick(&["EUR", "USD"]),
            r.pick(&["paid", "paid", "open", "test"])
        ));
    }
    out.push_str("\n]\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(out.as_bytes()).expect("in-memory write");
    gz.finish().expect("in-memory write")
}

const WEB_TOML: &str = include_str!("../../examples/demo/web_events.toml");
const POS_TOML: &str = include_str!("../../examples/demo/pos_sales.toml");
const BILLING_TOML: &str = include_str!("../../examples/demo/billing.toml");
const STORES_CSV: &str = include_str!("../../examples/demo/stores.csv");

/// Writes the demo's sources and pipeline files under `root`; returns the pipeline files.
pub fn write_demo(root: &Path, rows: usize) -> anyhow::Result<Vec<PathBuf>> {
    let src = root.join("sources");
    let pip = root.join("pipelines");
    for d in ["web", "pos", "billing"] {
        std::fs::create_dir_all(src.join(d))?;
    }
    std::fs::create_dir_all(&pip)?;
    let write = |p: PathBuf, data: &[u8]| {
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
    };
    for day in 0..3u64 {
        write(
            src.join(format!("web/events-part{day}.ndjson")),
            &web_events(rows, 42 + day),
        )?;
    }
    for store in 1..=4u32 {
        write(
            src.join(format!("pos/sales-store{store}.csv")),
            &pos_sales(rows / 4, store, 7 + u64::from(store)),
        )?;
    }
    write(
        src.join("billing/invoices-2025-05.json.gz"),
        &billing(rows / 2, 99),
    )?;
    write(pip.join("web_events.toml"), WEB_TOML.as_bytes())?;
    write(pip.join("pos_sales.toml"), POS_TOML.as_bytes())?;
    write(pip.join("billing.toml"), BILLING_TOML.as_bytes())?;
    write(pip.join("stores.csv"), STORES_CSV.as_bytes())?;
    // The demo's keys are written as files, as a mounted secret would be; never inline.
    write(pip.join("pii.key"), b"demo-salt-change-me:")?;
    write(pip.join("billing-hmac.key"), b"demo-hmac-key-change-me")?;
    Ok(vec![
        pip.join("web_events.toml"),
        pip.join("pos_sales.toml"),
        pip.join("billing.toml"),
    ])
}
