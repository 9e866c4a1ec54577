//! One shard of arbitrary bytes through the whole engine, for the fuzz targets (`fuzz/`, cargo
//! fuzz on nightly) and the property tests on stable: parse, curate, every kind of step,
//! dedupe, partition and encode. Whatever the bytes, a run must end in counts that reconcile or
//! in an error — never a panic — and every row must be accounted for.

use std::path::PathBuf;
use std::sync::Arc;

use backends::object_store::{LocalStore, ObjectStore};
use protocol::{Counts, ObjectRef, ShardDescriptor, ShardInput};

use crate::config::{self, Pipeline};
use crate::plan::Plan;
use crate::{OutputNaming, WorkerError, run_shard_blocking};

/// The input format of a harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Ndjson,
    Csv,
}

const COLUMNS_AND_STEPS: &str = r#"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "n"
type = "int64"
[[columns]]
name = "x"
type = "float64"
[[columns]]
name = "ok"
type = "bool"
[[columns]]
name = "amount"
type = "decimal(12,2)"
[[columns]]
name = "ts"
type = "string"
[[columns]]
name = "day"
type = "date"
[[columns]]
name = "ip"
type = "string"
[[columns]]
name = "email"
type = "string"
[[steps]]
op = "filter"
bucket = "unwanted"
drop_if_any = [{ column = "email", contains = "@test.", ignore_case = true }, { column = "id", equals = "13" }]
[[steps]]
op = "trim"
columns = ["email", "id"]
[[steps]]
op = "lower"
columns = ["email"]
[[steps]]
op = "regex_replace"
column = "id"
pattern = "[^A-Za-z0-9-]"
replacement = ""
[[steps]]
op = "parse_timestamp"
column = "ts"
format = "rfc3339"
output = "at"
on_error = "reject"
bucket = "bad_ts"
[[steps]]
op = "date"
column = "at"
output = "at_date"
[[steps]]
op = "hash"
column = "email"
output = "email_hash"
algorithm = "hmac_sha256"
key_env = "TRIBUTARY_HARNESS_KEY"
[[steps]]
op = "ipv4_truncate"
column = "ip"
output = "ip_masked"
keep_octets = 3
on_error = "null"
[[steps]]
op = "cast"
column = "x"
to = "int64"
output = "x_int"
on_error = "null"
[[steps]]
op = "dedupe"
keys = ["id"]
[output]
columns = ["id", "n", "x", "x_int", "ok", "amount", "at", "day", "ip_masked", "email_hash"]
partition_by = ["at_date"]
row_group_rows = 64
target_file_bytes = 65536
"#;

/// A pipeline and a folder to run shards of arbitrary bytes in.
pub struct RecordHarness {
    dir: tempfile::TempDir,
    pipeline: Pipeline,
    plan: Plan,
    store: Arc<dyn ObjectStore>,
    format: InputFormat,
}

impl RecordHarness {
    pub fn new(format: InputFormat) -> RecordHarness {
        // SAFETY: set before any thread of the harness reads the environment; the variable
        // only feeds the hash step's key.
        unsafe { std::env::set_var("TRIBUTARY_HARNESS_KEY", "fuzz-key") };
        let source = match format {
            InputFormat::Ndjson => "format = \"ndjson\"\nmax_line_bytes = 4096".to_string(),
            InputFormat::Csv => {
                "format = \"csv\"\nmax_line_bytes = 4096\n[source.csv]\nheader = true".to_string()
            }
        };
        let text = format!(
            "[pipeline]\nname = \"harness\"\n[source]\nlocation = \".\"\n{source}\n{COLUMNS_AND_STEPS}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let pipeline = config::parse(&text, "harness.toml", dir.path().to_path_buf())
            .expect("the harness pipeline is valid");
        let plan = Plan::build(&pipeline).expect("the harness plan builds");
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalStore::new(dir.path().join("in")).expect("input folder"));
        RecordHarness {
            dir,
            pipeline,
            plan,
            store,
            format,
        }
    }

    /// Runs `data` as one shard (whole, or from byte `start`); returns its counts, which are
    /// checked to reconcile. Panics only when the engine breaks its contract.
    pub fn run(&self, data: &[u8], start: u64) -> Result<Counts, WorkerError> {
        let name = match self.format {
            InputFormat::Ndjson => "in.ndjson",
            InputFormat::Csv => "in.csv",
        };
        let path: PathBuf = self.dir.path().join("in").join(name);
        std::fs::write(&path, data).expect("write the input");
        let size = data.len() as u64;
        let start = start.min(size);
        let shard = ShardDescriptor {
            shard_id: "s00000".into(),
            index: 0,
            extract: None,
            inputs: vec![ShardInput {
                object: ObjectRef {
                    key: name.into(),
                    size,
                },
                range: (start > 0).then_some(protocol::ByteRange { start, end: size }),
            }],
        };
        let naming = OutputNaming {
            prefix: String::new(),
            file_tag: "fuzz".into(),
        };
        let scratch = crate::ScratchDir::new(self.dir.path().join("scratch"));
        let out = run_shard_blocking(
            &self.plan,
            &self.pipeline,
            self.store.clone(),
            &shard,
            &naming,
            scratch.path(),
        )?;
        assert!(
            out.counts.reconciles(),
            "every line is in exactly one bucket: {:?}",
            out.counts
        );
        let written: u64 = out.files.iter().map(|f| f.rows).sum();
        assert_eq!(written, out.counts.rows_out, "rows written = rows out");
        let quarantined = out.quarantine.as_ref().map_or(0, |(_, n)| *n);
        assert_eq!(
            quarantined,
            out.counts.malformed + out.counts.rejected_total(),
            "every malformed and rejected row is quarantined"
        );
        Ok(out.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_harness_runs_a_known_input() {
        let h = RecordHarness::new(InputFormat::Ndjson);
        let data = b"{\"id\":\"a\",\"n\":1,\"ts\":\"2026-12-01T10:00:00Z\",\"email\":\" A@x.org \",\"ip\":\"1.2.3.4\",\"amount\":\"1.25\",\"ok\":true}\nnope\n{\"id\":\"a\"}\n";
        let c = h.run(data, 0).unwrap();
        assert_eq!((c.lines_total, c.malformed, c.rows_out), (3, 1, 1));
        let h = RecordHarness::new(InputFormat::Csv);
        let data = b"id,n,x,ok,amount,ts,day,ip,email\nb,2,,,,2026-12-01T10:00:00Z,,,\nc,x,,,,,,,\n\"d\"\"\",3,,,,2026-01-01T00:00:00Z,,,\n";
        let c = h.run(data, 0).unwrap();
        assert_eq!(c.lines_total, 3);
        // A header without a declared column fails the shard, naming it.
        let e = h.run(b"id,n,ts\nb,2,\n", 0).unwrap_err().to_string();
        assert!(e.contains("in.csv") && e.contains("\"amount\""), "{e}");
    }

    /// Found by the property test below: a piece whose rows were all dropped before the dedupe
    /// step panicked on its unset columns ("set") and aborted the shard.
    #[test]
    fn regression_dedupe_after_every_row_of_a_piece_was_dropped() {
        let h = RecordHarness::new(InputFormat::Ndjson);
        let c = h.run(b"not json\n{\"n\":1}\n", 0).unwrap();
        assert_eq!((c.lines_total, c.malformed, c.rows_out), (2, 2, 0));
        let data = b"{\"id\":\"a\",\"ts\":\"N/A\"}\n{\"id\":\"b\",\"email\":\"x@test.org\"}\n";
        let c = h.run(data, 0).unwrap();
        assert_eq!(c.rows_out, 0);
        assert!(c.reconciles());
    }

    /// Lines that look like records, with the odd field broken.
    fn ndjson_line() -> impl Strategy<Value = String> {
        (
            "[a-c]{0,2}",
            prop_oneof![Just("1".to_string()), Just("\"x\"".into()), Just("13".into()), Just("null".into())],
            prop_oneof![Just("\"2026-12-01T10:00:00Z\"".to_string()), Just("\"N/A\"".into()), Just("7".into())],
            prop_oneof![Just("\"1.005\"".to_string()), Just("1e400".into()), Just("\"-0.5\"".into())],
            ".{0,12}",
        )
            .prop_map(|(id, n, ts, amount, junk)| {
                format!(
                    "{{\"id\":\"{id}\",\"n\":{n},\"ts\":{ts},\"amount\":{amount},\"email\":\"{}\"}}",
                    junk.replace(['"', '\\'], "")
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_ndjson_bytes_reconcile_or_fail_cleanly(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            start in 0u64..700,
        ) {
            let h = RecordHarness::new(InputFormat::Ndjson);
            let _ = h.run(&data, start);
        }

        #[test]
        fn arbitrary_csv_bytes_reconcile_or_fail_cleanly(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            start in 0u64..700,
        ) {
            let h = RecordHarness::new(InputFormat::Csv);
            let mut input = b"id,n,x,ok,amount,ts,day,ip,email\n".to_vec();
            input.extend_from_slice(&data);
            let _ = h.run(&input, start);
        }

        #[test]
        fn record_like_ndjson_reconciles(lines in proptest::collection::vec(ndjson_line(), 0..40)) {
            let h = RecordHarness::new(InputFormat::Ndjson);
            let data = lines.join("\n");
            let c = h.run(data.as_bytes(), 0).unwrap();
            prop_assert_eq!(c.lines_total, lines.len() as u64);
        }
    }
}
