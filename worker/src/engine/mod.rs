//! The shard engine: source bytes → records → Arrow → steps → partitioned Parquet + quarantine.
//!
//! ```text
//!  reader thread ──sync_channel(2)──▶ engine loop (on the rayon pool), two chunks at a time:
//!  (range-aligned read,                 rayon::join ┬ chunk N+1: pieces of 4,096 lines in parallel:
//!   gzip/zstd, line split,                          │            parse → steps before dedupe
//!   over-long lines skipped)                        └ chunk N:   in order: dedupe (one key set per shard)
//!                                                               pieces in parallel: steps after dedupe
//!                                                                 → project → partition
//!                                                               partition writers: Parquet row groups,
//!                                                                 their columns handed to the pool
//!                                                                 (encoded while the loop goes on,
//!                                                                 appended to files in order)
//! ```
//! Memory is bounded by the reader's two chunks and the engine's two, one row group per open
//! partition file (flushed early when the total passes a budget), the row groups encoding (at
//! most another budget's worth) and the dedupe key set (the keys only, in an arena).
//!
//! Every line lands in exactly one bucket: `lines_total = malformed + rejected + filtered +
//! duplicates + rows_out`; malformed and rejected lines go to the quarantine file with the reason
//! and the source location.
//!
//! | module | holds |
//! |---|---|
//! | `columns` | a column's reading rules around the typed builders (`pipeline::builder`) |
//! | `read` | decoding and splitting a byte range into chunks of records; CSV headers |
//! | `parse` | records → typed columns (the JSON path tree, CSV fields), in pieces of rows |
//! | `json_keys` | finding a JSON key among an object's declared ones (a slot index, no scan) |
//! | `cols` | a piece's column slots; rows dropped by steps leave them lazily, one copy per read |
//! | `steps` | a piece as the step kernels' `Rows`; the string limit; expectation counts |
//! | `dedupe` | the shard's exact keep-first key set |
//! | `key_table` | its table: `(hash, place)` slots probed linearly, prefetched rows ahead |
//! | `evolve` | columns from undeclared JSON fields (`on_new_column = "evolve"`), schemas that grow |
//! | `write` | partitioning and the Parquet writers |
//! | `encode` | row groups encoded on the pool while the loop goes on, appended in order |
//! | `quarantine` | the quarantine file |
//! | `parquet_in` | Parquet inputs: record batches projected and converted straight into columns |
//! | `shard` | the loop that drives a shard's chunks through all of the above |

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use protocol::{ByteRange, Counts, ShardInput};
use rayon::prelude::*;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::config::{Codec, Compression, Format};
use crate::{WorkerError, plan::Plan};
use pipeline::OnNewColumn;
use pipeline::steps::Failures;

pub const CHUNK_BYTES: usize = 4 << 20;
pub(crate) const PIECE_ROWS: usize = 4096;
/// Encoded-but-unflushed row group bytes across all open partition files before the largest is
/// flushed early.
pub(crate) const WRITER_BUDGET: usize = 32 << 20;
pub(crate) const DICTIONARY_PAGE_BYTES: usize = 128 << 10;
/// A data page's size limit (checked after each 1,024 values, see [`write::writer_props`]).
pub(crate) const DATA_PAGE_BYTES: usize = 64 << 10;
/// A partition folder, its column values, and its rows.
pub(crate) type PartBatch = (String, PartitionValues, RecordBatch);
pub(crate) type PartitionValues = Vec<(String, String)>;

pub const MALFORMED: &str = "malformed";
pub const INVALID_VALUE: &str = "invalid_value";

mod cols;
mod columns;
mod dedupe;
mod encode;
mod evolve;
mod json_fast;
mod json_keys;
mod key_table;
mod parquet_in;
mod parse;
mod quarantine;
mod read;
mod shard;
#[cfg(target_arch = "x86_64")]
mod sse2;
mod steps;
mod write;

pub use cols::Cols;
pub use columns::*;
pub use dedupe::*;
pub(crate) use evolve::{Extras, column_name as evolved_column_name, conform, union};
pub use parquet_in::*;
pub use parse::*;
pub use quarantine::*;
pub use read::*;
pub use shard::*;
pub(crate) use steps::*;
pub use write::*;
