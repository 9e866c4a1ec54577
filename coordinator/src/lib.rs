//! The Tributary coordinator: plans shards, runs workers (in-process in local mode), and loads the
//! finished Parquet into the warehouse in batched, exactly-once loads.
//!
//! * [`planner`]: source listing → shards (grouping small files, splitting large ones).
//! * [`engine`]: the pure state machine of a run and its load batches, which both modes drive.
//! * `loader`: performs the machine's load actions (record, load, judge) with the backends.
//! * [`run`]: a pipeline run in local mode, durable and resumable.
//! * [`sources`]: planning database sources from their watermark; watermarks advanced after
//!   a run completed.
//! * [`archive`]: raw-zone objects past their retention moved to `archive/`.
//! * [`backfill`]: a time range of a source run again window by window.
//! * [`commands`]: `cancel` and `retry` of a run in local mode.
//! * [`status`]: one run in detail, for `coordinator status RUN`.
//! * [`commit`]: a run's end in the lake: unlisted files removed, the commit record written.
//! * `local_source`: what a local run reads (a folder, an `s3://` location, or an extracted
//!   source) and the objects a new run takes.
//! * [`local_worker`]: the in-process worker loop on the embedded queue.
//! * [`incremental`]: incremental file runs take only object versions not loaded before.
//! * [`fleet`]: `coordinator serve`, the fleet coordinator on SQS, S3 and a SQL warehouse, with
//!   its HTTP API.
//! * [`remote`]: the CLI's commands against a serving coordinator (`--server URL`).
//! * [`quality`]: a run's data-quality verdict from its pipeline's `[[expect]]` entries.
//! * [`demo`]: the demo's sample sources and pipeline files.

pub mod archive;
pub mod backfill;
pub mod commands;
pub mod commit;
pub mod demo;
pub mod engine;
pub mod fleet;
pub mod incremental;
mod loader;
pub(crate) mod local_source;
pub mod local_worker;
mod memory;
pub mod metrics;
pub mod planner;
pub mod quality;
pub mod remote;
pub mod run;
pub mod sources;
pub mod status;
