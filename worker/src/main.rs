//! `worker`: the Tributary worker binary.
//!
//! `worker process PIPELINE.toml --input FILE --output DIR` runs one file through a pipeline as a
//! single shard (no queue, no warehouse) and prints the counts as a `STATS {json}` line: the
//! building block the benchmarks measure.
//!
//! `worker --config FILE` is the fleet daemon: it pulls shard tasks from SQS, reads sources from
//! S3, writes Parquet to S3 and reports to the coordinator, until SIGTERM (then it drains). Every
//! setting can also come from `TRIBUTARY_*` environment variables (README, "Running on AWS").

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use backends::object_store::{LocalStore, ObjectStore};
use clap::{Parser, Subcommand};
use protocol::{ObjectRef, ShardDescriptor, ShardInput};

// mimalloc: many small allocations on several threads (Arrow builders, serde); glibc malloc
// fragments across thread arenas and costs RSS and time here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "worker", version, about = "Tributary worker")]
struct Cli {
    /// Fleet configuration (TOML): run as the queue daemon.
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run one input file through a pipeline as one shard and write Parquet partitions to DIR.
    Process {
        pipeline: PathBuf,
        /// The input file (overrides the pipeline's source).
        #[arg(long)]
        input: PathBuf,
        /// Output folder (must be new or empty): `COLUMN=VALUE/` partition folders only.
        #[arg(long)]
        output: PathBuf,
        /// Where quarantined rows go (default: OUTPUT.quarantine.ndjson beside the output folder).
        #[arg(long)]
        quarantine: Option<PathBuf>,
        /// Rayon threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn daemon(config: Option<PathBuf>) -> anyhow::Result<()> {
    runtime::logging::init_logging("info");
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let (settings, _) = worker::settings::FleetSettings::load(config.as_deref(), &env)?;
    if let Some(n) = settings.worker.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring threads")?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(worker::daemon::run_daemon(
        settings,
        runtime::shutdown::shutdown_signal(),
    ))
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return daemon(cli.config);
    };
    match command {
        Command::Process {
            pipeline,
            input,
            output,
            quarantine,
            threads,
        } => {
            if let Some(n) = threads {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build_global()
                    .context("configuring threads")?;
            }
            let p = worker::config::load_file(&pipeline)?;
            let plan = worker::plan::Plan::build(&p)?;
            let meta =
                std::fs::metadata(&input).with_context(|| format!("source {}", input.display()))?;
            if !meta.is_file() {
                bail!("source {} is not a file", input.display());
            }
            if output.exists() && std::fs::read_dir(&output)?.next().is_some() {
                bail!("output folder {} exists and is not empty", output.display());
            }
            let dir = input_dir(&input);
            let name = input
                .file_name()
                .context("input has no file name")?
                .to_string_lossy()
                .into_owned();
            let source: Arc<dyn ObjectStore> = Arc::new(LocalStore::open_existing(&dir)?);
            let shard = ShardDescriptor {
                shard_id: "s00000".into(),
                index: 0,
                extract: None,
                inputs: vec![ShardInput {
                    object: ObjectRef {
                        key: name,
                        size: meta.len(),
                    },
                    range: None,
                }],
            };
            std::fs::create_dir_all(&output)?;
            let scratch = output.join(".tributary-scratch");
            let started = std::time::Instant::now();
            let naming = worker::OutputNaming {
                prefix: String::new(),
                file_tag: shard.shard_id.clone(),
            };
            // On the pool, as the daemon runs a shard: the row groups it hands to the pool are
            // then waited for by a pool thread that helps encode them.
            let out = {
                let scratch = scratch.clone();
                runtime::cpu::run_cpu_blocking(move || {
                    worker::run_shard_blocking(&plan, &p, source, &shard, &naming, &scratch)
                })??
            };
            for f in &out.files {
                let dst = output.join(&f.key);
                std::fs::create_dir_all(dst.parent().expect("partition folder"))?;
                std::fs::rename(&f.local, &dst)?;
            }
            if let Some((q, _)) = &out.quarantine {
                let dst = quarantine.unwrap_or_else(|| output.with_extension("quarantine.ndjson"));
                std::fs::copy(q, &dst)
                    .with_context(|| format!("writing quarantine {}", dst.display()))?;
            }
            std::fs::remove_dir_all(&scratch).ok();
            let mut stats = out.counts.to_flat_json();
            stats.insert("peer".into(), "tributary".into());
            stats.insert("files".into(), out.files.len().into());
            stats.insert(
                "total_s".into(),
                serde_json::json!(started.elapsed().as_secs_f64()),
            );
            println!("STATS {}", serde_json::Value::Object(stats));
        }
    }
    Ok(())
}

/// The folder of an input file: `.` for a bare file name (whose parent is the empty path).
fn input_dir(input: &std::path::Path) -> PathBuf {
    match input.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn process_reads_a_bare_input_file_name_from_the_current_folder() {
        use std::path::{Path, PathBuf};
        assert_eq!(super::input_dir(Path::new("ev.ndjson")), PathBuf::from("."));
        assert_eq!(
            super::input_dir(Path::new("/d/ev.ndjson")),
            PathBuf::from("/d")
        );
        assert_eq!(
            super::input_dir(Path::new("d/ev.ndjson")),
            PathBuf::from("d")
        );
    }
}
