//! `loadtest`: synthetic data at the field's scale, and the driver that runs it.
//!
//! * `loadtest gen --preset field|small --out DIR`: the field's 45 sources (250 attributes,
//!   70M rows in `field`; 1/2000 of it in `small`) with their pipeline files.
//! * `loadtest gen --sources N --rows M --out DIR`: N copies of the demo's three sources.
//! * `loadtest run --dir DIR`: every pipeline of DIR end to end on the embedded backends, and a
//!   `LOADTEST {json}` report; with `--processes --aws-endpoint URL --postgres CONN`, as a
//!   coordinator process and worker processes against moto (S3, SQS) and PostgreSQL.
//! * `loadtest plan --shards N`: planning and enqueueing a run of N shards, timed.
//! * `loadtest warehouse --lake DIR --table T`: a lake's files loaded into PostgreSQL (`COPY`)
//!   and/or the embedded warehouse, timed, in rows/s.

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// 45 sources, 250 attributes, 70 million rows.
    Field,
    /// The same sources with 35,000 rows in all (CI).
    Small,
}

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Synthetic data at the field's scale, and its driver"
)]
enum Cli {
    /// Write a preset's sources and pipeline files (or N copies of the demo's) under DIR.
    Gen {
        #[arg(long)]
        preset: Option<Preset>,
        #[arg(long, default_value_t = 15)]
        sources: usize,
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Run every pipeline under DIR/pipelines on the embedded backends and report.
    Run {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// State, warehouse and lake (default DIR/data).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Only the first N pipelines (in name order).
        #[arg(long)]
        only: Option<usize>,
        /// Run as processes: `coordinator serve` and `--workers` `worker` processes against the
        /// S3/SQS endpoint of `--aws-endpoint` (moto) and the warehouse `--postgres`.
        #[arg(long, requires_all = ["aws_endpoint", "postgres"])]
        processes: bool,
        /// The S3 and SQS endpoint for `--processes` (a moto server: http://127.0.0.1:PORT).
        #[arg(long)]
        aws_endpoint: Option<String>,
        /// The warehouse for `--processes`: a PostgreSQL connection string.
        #[arg(long)]
        postgres: Option<String>,
        /// Engine threads of each worker process.
        #[arg(long, default_value_t = 1)]
        worker_threads: usize,
        /// Where the `coordinator` and `worker` binaries are (default: beside this one).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// With `--processes`: give up when the runs have not ended after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// Plan and enqueue a run of N shards on the embedded backends; print the time per stage.
    Plan {
        #[arg(long, default_value_t = 100_000)]
        shards: usize,
    },
    /// Load a folder of (Hive-partitioned) Parquet files into each given warehouse twice — into
    /// an empty table, then again as a new batch that merges — and print rows/s.
    Warehouse {
        #[arg(long)]
        lake: std::path::PathBuf,
        #[arg(long)]
        table: String,
        /// Merge key column (repeat for several; none: append).
        #[arg(long = "merge-key")]
        merge_keys: Vec<String>,
        /// A PostgreSQL connection string (the table is dropped first).
        #[arg(long)]
        postgres: Option<String>,
        /// An embedded warehouse file (created; must not exist).
        #[arg(long)]
        sqlite: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Gen {
            preset: Some(p),
            out,
            ..
        } => {
            let (rows, per_file) = match p {
                Preset::Field => (loadtest::preset::FIELD_ROWS, 1_000_000),
                Preset::Small => (loadtest::preset::FIELD_ROWS / 2000, 5_000),
            };
            let specs = loadtest::preset::sources(rows);
            let files = loadtest::preset::write(&out, &specs, per_file)?;
            eprintln!(
                "{} pipeline files under {}; run them with `loadtest run --dir {}`",
                files.len(),
                out.join("pipelines").display(),
                out.display()
            );
        }
        Cli::Gen {
            preset: None,
            sources,
            rows,
            out,
        } => {
            for f in loadtest::generate(&out, sources, rows)? {
                println!("{}", f.display());
            }
        }
        Cli::Run {
            dir,
            data_dir,
            workers,
            only,
            processes,
            aws_endpoint,
            postgres,
            worker_threads,
            bin_dir,
            timeout_secs,
        } => {
            let data = data_dir.unwrap_or_else(|| dir.join("data"));
            let rt = tokio::runtime::Runtime::new()?;
            let r = match (processes, aws_endpoint, postgres) {
                (true, Some(endpoint), Some(postgres)) => {
                    let bin_dir = match bin_dir {
                        Some(d) => d,
                        None => beside_this_binary()?,
                    };
                    let o = loadtest::ProcessesOptions {
                        dir,
                        work: data.join("fleet"),
                        endpoint,
                        postgres,
                        bin_dir,
                        workers,
                        worker_threads,
                        only,
                        timeout: std::time::Duration::from_secs(timeout_secs),
                    };
                    rt.block_on(run_processes(&o))?
                }
                _ => rt.block_on(loadtest::drive::run(&dir, &data, workers, only))?,
            };
            println!("LOADTEST {}", serde_json::to_string(&r)?);
        }
        Cli::Plan { shards } => {
            let dir = tempfile::tempdir()?;
            let rt = tokio::runtime::Runtime::new()?;
            let b = rt.block_on(loadtest::plan_bench::run(shards, dir.path()))?;
            println!("PLAN_BENCH {}", serde_json::to_string(&b)?);
        }
        Cli::Warehouse {
            lake,
            table,
            merge_keys,
            postgres,
            sqlite,
        } => {
            anyhow::ensure!(
                postgres.is_some() || sqlite.is_some(),
                "name a warehouse: --postgres URL and/or --sqlite FILE"
            );
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(warehouses(lake, table, merge_keys, postgres, sqlite))?;
        }
    }
    Ok(())
}

/// The folder of this executable (where cargo puts `coordinator` and `worker` too).
fn beside_this_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default())
}

async fn warehouses(
    lake: std::path::PathBuf,
    table: String,
    merge_keys: Vec<String>,
    postgres: Option<String>,
    sqlite: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use backends::warehouse::Warehouse;
    let mut targets: Vec<std::sync::Arc<dyn Warehouse>> = Vec::new();
    if let Some(url) = postgres {
        let wh = backends::warehouse::PostgresWarehouse::connect(&url, false).await?;
        wh.query(&format!(
            "DROP TABLE IF EXISTS \"{}\"",
            table.replace('"', "\"\"")
        ))
        .await?;
        targets.push(std::sync::Arc::new(wh));
    }
    if let Some(file) = sqlite {
        anyhow::ensure!(!file.exists(), "{} exists: name a new file", file.display());
        targets.push(std::sync::Arc::new(
            backends::warehouse::SqliteWarehouse::open(&file)?,
        ));
    }
    for wh in targets {
        let b = loadtest::warehouse_bench::run(wh, &lake, &table, &merge_keys).await?;
        println!("WAREHOUSE_BENCH {}", serde_json::to_string(&b)?);
    }
    Ok(())
}

/// `loadtest run --processes`.
#[cfg(feature = "aws")]
async fn run_processes(o: &loadtest::ProcessesOptions) -> anyhow::Result<loadtest::drive::Report> {
    loadtest::processes::run(o).await
}

/// `loadtest run --processes` in a build without the AWS clients it drives moto with.
#[cfg(not(feature = "aws"))]
async fn run_processes(_: &loadtest::ProcessesOptions) -> anyhow::Result<loadtest::drive::Report> {
    anyhow::bail!(
        "--processes drives moto (S3, SQS) and needs the `aws` feature: \
         cargo run --release -p loadtest --features aws -- run …"
    )
}
