//! `coordinator`: the Tributary command line.
//!
//! `demo`, `run`, `backfill`, `runs`, `cancel`, `retry`, `validate`, `status` and `sql` on the
//! embedded backends; `serve` (the fleet
//! coordinator), and `status --server` / `trigger --server` against its HTTP API. Errors go to
//! stderr with a non-zero exit.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use coordinator::run::{DataDir, RunOptions, RunReport, run_local};

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Tributary coordinator: raw sources → curated Parquet → warehouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The same allocator as the worker binary: the in-process workers allocate on several threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_DATA_DIR: &str = "tributary-data";

#[derive(Subcommand)]
enum Command {
    /// Generate sample data for three sources, write their pipeline files and run them end to end.
    Demo {
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// Records per generated file.
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Run (or resume) a pipeline on the embedded backends.
    Run {
        pipeline: PathBuf,
        /// In-process workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// State, warehouse, manifests, quarantine and (without --output) the Parquet lake.
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// A file or folder that replaces the pipeline's source.location.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Write the Parquet partitions directly under DIR (`COLUMN=VALUE/` folders only).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Split inputs larger than BYTES into byte ranges of BYTES (overrides source.shard_bytes).
        #[arg(long)]
        shard_size: Option<u64>,
        /// Rows per warehouse load batch.
        #[arg(long, default_value_t = 2_000_000)]
        batch_rows: u64,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Run a time range of a pipeline's source again, window by window (PIPELINE: a pipeline
    /// file, or with --server a pipeline's name). A rerun of the same command resumes it.
    Backfill {
        pipeline: PathBuf,
        /// First date (2026-11-02) or timestamp (2026-11-02T06:00:00) of the range.
        #[arg(long)]
        from: String,
        /// Last date (inclusive) or end timestamp (exclusive) of the range.
        #[arg(long)]
        to: String,
        /// Width of a window (1d, 6h, 1h).
        #[arg(long, default_value = "1d")]
        window: String,
        /// Print the plan and a `PLAN {json}` line; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Shards in flight at most (in local mode: the in-process workers).
        #[arg(long, default_value_t = 2)]
        max_in_flight: usize,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// Rows per warehouse load batch.
        #[arg(long, default_value_t = 2_000_000)]
        batch_rows: u64,
        /// A coordinator's API (`http://coordinator:8080`): backfill on its fleet.
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: Option<String>,
    },
    /// List the runs of a data dir (or of a serving coordinator with --server), of one pipeline
    /// (a pipeline file or its name) or all.
    Runs {
        pipeline: Option<String>,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// A coordinator's API (`http://coordinator:8080`).
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask an unfinished run to stop: nothing more of it is enqueued or loaded.
    Cancel {
        run: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// A coordinator's API (`http://coordinator:8080`).
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: Option<String>,
    },
    /// Run the failed shards of a failed run again, in the same run (exactly-once kept).
    Retry {
        run: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// In-process workers.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// A coordinator's API (`http://coordinator:8080`).
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: Option<String>,
    },
    /// Check a pipeline file (and its key and reference files) without running anything.
    Validate { pipeline: PathBuf },
    /// List runs and their progress (of a data dir, or of a serving coordinator with --server).
    Status {
        /// One run only.
        run: Option<String>,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// A coordinator's API (`http://coordinator:8080`): ask it instead of reading a data dir.
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the fleet coordinator: schedules, plans and enqueues shards on SQS, consumes
    /// completions, and loads the warehouse; serves the HTTP API.
    Serve {
        /// Fleet configuration (TOML); every setting can also come from TRIBUTARY_* variables.
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start a run of a pipeline now on a serving coordinator.
    Trigger {
        pipeline: String,
        #[arg(long, env = "TRIBUTARY_SERVER")]
        server: String,
    },
    /// Run a SQL query against the embedded warehouse (read-only unless --write).
    Sql {
        query: String,
        #[arg(long, default_value = DEFAULT_DATA_DIR, env = "TRIBUTARY_DATA_DIR")]
        data_dir: PathBuf,
        /// Allow statements that change the warehouse (DELETE, UPDATE, DROP, …).
        #[arg(long)]
        write: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    runtime::logging::init_logging(if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn print_report(r: &RunReport) {
    let rec = &r.record;
    let c = &rec.counts;
    println!(
        "{}: run {} {}{} — {} shard(s), {} lines: {} rows out, {} malformed, {} rejected {:?}, {} filtered {:?}, {} duplicates",
        rec.pipeline,
        rec.run_id,
        rec.status,
        if r.resumed { " (resumed)" } else { "" },
        rec.shards,
        c.lines_total,
        c.rows_out,
        c.malformed,
        c.rejected_total(),
        c.rejected,
        c.filtered_total(),
        c.filtered,
        c.duplicates
    );
    println!("  parquet:    {}", r.parquet_location.display());
    if let Some(w) = &r.warehouse {
        println!(
            "  warehouse:  {w} table {} ({} rows after merge, {} batch(es) loaded)",
            rec.table,
            r.rows_in_table.map_or("?".into(), |n| n.to_string()),
            rec.batches_loaded
        );
    }
    if !r.quarantine_files.is_empty() {
        println!(
            "  quarantine: {} file(s), e.g. {}",
            r.quarantine_files.len(),
            r.quarantine_files[0].display()
        );
    }
    for (shard, why) in &rec.failed_shards {
        println!("  FAILED {shard}: {why}");
    }
    for q in rec.quality.iter().flat_map(|q| &q.results) {
        if q.status != "pass" {
            println!(
                "  QUALITY {} {}: {} observed {}, limit {}",
                q.status.to_uppercase(),
                q.name,
                q.check,
                q.observed,
                q.limit
            );
        }
    }
}

/// A finished run as `coordinator run` prints it: the report, the `STATS` line and the
/// `QUALITY` line.
fn print_outcome(r: &RunReport) {
    print_report(r);
    println!("{}", stats_line(r));
    if let Some(q) = &r.record.quality {
        println!("{}", q.line(&r.record.run_id));
    }
}

fn stats_line(r: &RunReport) -> String {
    let mut m = r.record.counts.to_flat_json();
    m.insert("run_id".into(), r.record.run_id.clone().into());
    m.insert("shards".into(), r.record.shards.into());
    if let Some(n) = r.rows_in_table {
        m.insert("rows_in_table".into(), n.into());
    }
    format!("STATS {}", serde_json::Value::Object(m))
}

fn shell_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `coordinator demo`: writes the sample sources and pipelines, runs them, and prints how to
/// query the results.
async fn demo(
    data_dir: &Path,
    rows: usize,
    workers: usize,
    interactive: bool,
) -> anyhow::Result<()> {
    let root = std::fs::create_dir_all(data_dir)
        .and_then(|_| data_dir.canonicalize())
        .with_context(|| format!("data dir {}", data_dir.display()))?;
    let demo = root.join("demo");
    let pipelines = coordinator::demo::write_demo(&demo, rows)?;
    println!(
        "demo: sample sources in {}, pipeline files in {}",
        demo.join("sources").display(),
        demo.join("pipelines").display()
    );
    let mut failed = 0;
    for p in &pipelines {
        let opts = RunOptions {
            pipeline: p.clone(),
            data_dir: root.clone(),
            workers,
            source: None,
            output: None,
            shard_size: None,
            progress: interactive,
            batch_rows: 2_000_000,
            window: None,
        };
        let report = run_local(&opts).await?;
        print_report(&report);
        failed += report.record.failed_shards.len();
    }
    let bin = "cargo run --release -p coordinator --";
    let dd = shell_quote(&root);
    println!();
    println!(
        "Query the warehouse ({}):",
        root.join("warehouse.db").display()
    );
    println!(
        "  {bin} sql --data-dir {dd} \"SELECT country, count(*) AS events FROM web_events GROUP BY country ORDER BY events DESC\""
    );
    println!(
        "  {bin} sql --data-dir {dd} \"SELECT region, sum(quantity * unit_price) AS revenue FROM pos_sales GROUP BY region\""
    );
    println!(
        "  {bin} sql --data-dir {dd} \"SELECT currency, status, count(*), sum(amount) FROM billing_invoices GROUP BY 1, 2\""
    );
    println!("Runs and their progress:  {bin} status --data-dir {dd}");
    println!(
        "Write your own pipeline: copy {} and run  {bin} run YOUR.toml --data-dir {dd}",
        demo.join("pipelines/web_events.toml").display()
    );
    if failed > 0 {
        anyhow::bail!("{failed} shard(s) failed");
    }
    Ok(())
}

/// `coordinator backfill`: prints each window's plan; then the `PLAN` line (a dry run) or the
/// runs made.
async fn backfill(opts: coordinator::backfill::BackfillOptions) -> anyhow::Result<()> {
    use coordinator::backfill::{BackfillOutcome, backfill_local, plan_line};
    let name = coordinator::sources::load_pipeline(&opts.pipeline)
        .await?
        .name()
        .to_string();
    let outcome = backfill_local(&opts).await?;
    let plans = match &outcome {
        BackfillOutcome::Planned(p) => p,
        BackfillOutcome::Ran { plans, .. } => plans,
    };
    for p in plans {
        println!(
            "window {} .. {}: {} object(s), {} shard(s), {}",
            p.window.from,
            p.window.to,
            p.objects.len(),
            p.shards,
            p.bytes_text()
        );
    }
    match outcome {
        BackfillOutcome::Planned(plans) => {
            println!("{}", plan_line(&name, &opts.window, &plans));
            println!("dry run: nothing was written");
        }
        BackfillOutcome::Ran {
            record, reports, ..
        } => {
            for r in &reports {
                print_report(r);
            }
            let skipped = record
                .runs
                .iter()
                .filter(|r| r.as_deref() == Some(""))
                .count();
            println!(
                "backfill {}: {} window(s) done ({} run now, {} with nothing to read)",
                record.backfill_id,
                record.runs.iter().filter(|r| r.is_some()).count(),
                reports.len(),
                skipped
            );
        }
    }
    Ok(())
}

/// `coordinator status [RUN]` on a data dir: one run in detail, or the runs a line each (or
/// JSON).
async fn status_local(data_dir: &Path, run: Option<&str>, json: bool) -> anyhow::Result<()> {
    let dd = DataDir::open_existing(data_dir)?;
    match (run, json) {
        (Some(id), false) => run_detail(&dd, id).await,
        (Some(id), true) => print_local_runs(&dd, vec![dd.run(id).await?], true).await,
        (None, _) => print_local_runs(&dd, dd.runs().await?, json).await,
    }
}

/// `coordinator status RUN` on a data dir: the run in detail, its counts live from state.
async fn run_detail(dd: &DataDir, run_id: &str) -> anyhow::Result<()> {
    let r = dd.run(run_id).await?;
    let mut counts = protocol::Counts::default();
    let done_keys = dd.state.list(&format!("runs/{run_id}/done/")).await?;
    for key in &done_keys {
        let d: coordinator::engine::DoneRecord =
            serde_json::from_slice(&dd.state.get(key).await?.unwrap_or_default())?;
        counts.add(&d.counts);
    }
    let cancel = dd
        .state
        .get(&coordinator::run::cancel_key(run_id))
        .await?
        .is_some();
    print!(
        "{}",
        coordinator::status::run_detail(&r, done_keys.len(), &counts, cancel)
    );
    Ok(())
}

/// `coordinator runs [PIPELINE]`: a data dir's runs, oldest first.
async fn list_runs(pipeline: Option<String>, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let dd = DataDir::open_existing(data_dir)?;
    let name = match pipeline {
        Some(p) if Path::new(&p).is_file() => Some(
            coordinator::sources::load_pipeline(Path::new(&p))
                .await?
                .name()
                .to_string(),
        ),
        other => other,
    };
    let mut runs = dd.runs().await?;
    runs.retain(|r| name.as_ref().is_none_or(|n| &r.pipeline == n));
    print_local_runs(&dd, runs, json).await
}

/// A data dir's runs, oldest first: a line each (shards done counted from state), or JSON.
async fn print_local_runs(
    dd: &DataDir,
    mut runs: Vec<coordinator::run::RunRecord>,
    json: bool,
) -> anyhow::Result<()> {
    runs.sort_by(|a, b| {
        a.started_at
            .cmp(&b.started_at)
            .then(a.run_id.cmp(&b.run_id))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs in {}", dd.root.display());
    }
    for r in runs {
        let done = dd
            .state
            .list(&format!("runs/{}/done/", r.run_id))
            .await?
            .len();
        println!("{}", coordinator::remote::run_line(&r, done));
    }
    Ok(())
}

/// `coordinator retry RUN`: the run's report and its lines, as `coordinator run` prints them.
async fn retry(run_id: &str, data_dir: &Path, workers: usize) -> anyhow::Result<()> {
    let report = coordinator::commands::retry_local(data_dir, run_id, workers).await?;
    print_outcome(&report);
    if !report.record.failed_shards.is_empty() {
        anyhow::bail!(
            "{} shard(s) failed again; `coordinator retry {run_id}` tries them once more",
            report.record.failed_shards.len()
        );
    }
    Ok(())
}

/// `coordinator validate`: the pipeline file with its key and reference files, compiled.
async fn validate(pipeline: &Path) -> anyhow::Result<()> {
    let p = coordinator::sources::load_pipeline(pipeline).await?;
    let plan = worker::plan::Plan::build(&p)?;
    println!(
        "ok: {} — pipeline {:?}: {} columns, {} steps → table {:?}, {} output columns, partitioned by {:?}",
        pipeline.display(),
        p.name(),
        p.file.columns.len(),
        p.file.steps.len(),
        p.table(),
        plan.output_schema.fields().len(),
        plan.partition_names
    );
    Ok(())
}

/// `coordinator run`: the run's report and lines; an error when expectations stopped its load
/// or shards failed.
async fn run_pipeline(opts: RunOptions) -> anyhow::Result<()> {
    let report = run_local(&opts).await?;
    print_outcome(&report);
    if let Some(q) = report.record.quality.as_ref().filter(|q| !q.passed) {
        anyhow::bail!(
            "run {} was not loaded: expectation(s) failed: {} (its Parquet and quarantine are kept)",
            report.record.run_id,
            q.failures().join("; ")
        );
    }
    if !report.record.failed_shards.is_empty() {
        anyhow::bail!(
            "{} shard(s) failed; rerun the same command to retry them",
            report.record.failed_shards.len()
        );
    }
    Ok(())
}

/// A command against a serving coordinator (`--server`), as the text to print; `None` for a
/// command on a data dir.
fn remote_command(c: &Command) -> Option<anyhow::Result<String>> {
    use coordinator::remote;
    let call = |f: &dyn Fn() -> anyhow::Result<String>| Some(tokio::task::block_in_place(f));
    match c {
        Command::Runs {
            pipeline,
            server: Some(s),
            json,
            ..
        } => call(&|| remote::runs(s, pipeline.as_deref(), *json)),
        Command::Cancel {
            run,
            server: Some(s),
            ..
        } => call(&|| remote::cancel(s, run)),
        Command::Retry {
            run,
            server: Some(s),
            ..
        } => call(&|| remote::retry(s, run)),
        Command::Status {
            run: Some(id),
            server: Some(s),
            json,
            ..
        } => call(&|| remote::status(s, id, *json)),
        Command::Status {
            server: Some(s),
            json,
            ..
        } => call(&|| remote::runs(s, None, *json)),
        Command::Backfill {
            pipeline,
            from,
            to,
            window,
            dry_run,
            max_in_flight,
            server: Some(s),
            ..
        } => {
            let request = serde_json::json!({
                "pipeline": pipeline.display().to_string(),
                "from": from, "to": to, "window": window, "dry_run": dry_run,
                "max_in_flight": max_in_flight,
            });
            call(&|| remote::backfill(s, &request))
        }
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let interactive = std::io::stderr().is_terminal();
    if let Some(out) = remote_command(&cli.command) {
        println!("{}", out?);
        return Ok(());
    }
    match cli.command {
        Command::Runs {
            pipeline,
            data_dir,
            json,
            server: _,
        } => list_runs(pipeline, &data_dir, json).await?,
        Command::Cancel {
            run,
            data_dir,
            server: _,
        } => {
            let dd = DataDir::open_existing(&data_dir)?;
            println!("{}", coordinator::commands::cancel_local(&dd, &run).await?);
        }
        Command::Retry {
            run,
            data_dir,
            workers,
            server: _,
        } => retry(&run, &data_dir, workers).await?,
        Command::Backfill {
            pipeline,
            from,
            to,
            window,
            dry_run,
            max_in_flight,
            data_dir,
            batch_rows,
            server: _,
        } => {
            backfill(coordinator::backfill::BackfillOptions {
                pipeline,
                data_dir,
                from,
                to,
                window,
                dry_run,
                max_in_flight,
                workers: 2,
                batch_rows,
            })
            .await?
        }
        Command::Validate { pipeline } => validate(&pipeline).await?,
        Command::Run {
            pipeline,
            workers,
            data_dir,
            source,
            output,
            shard_size,
            batch_rows,
            no_progress,
        } => {
            run_pipeline(RunOptions {
                pipeline,
                data_dir,
                workers,
                source,
                output,
                shard_size,
                progress: interactive && !no_progress,
                batch_rows,
                window: None,
            })
            .await?
        }
        Command::Demo {
            data_dir,
            rows,
            workers,
        } => demo(&data_dir, rows, workers, interactive).await?,
        Command::Serve { config } => {
            let (settings, base) = coordinator::fleet::load_settings(config.as_deref())?;
            let c = coordinator::fleet::Coordinator::open(settings, &base).await?;
            c.serve(runtime::shutdown::shutdown_signal()).await?;
        }
        Command::Trigger { pipeline, server } => {
            let body = serde_json::json!({ "pipeline": pipeline });
            let url = format!("{}/api/runs", server.trim_end_matches('/'));
            let v = tokio::task::block_in_place(|| coordinator::remote::call(&url, Some(&body)))?;
            println!("started run {}", v["run_id"].as_str().unwrap_or("?"));
        }
        Command::Status {
            data_dir,
            json,
            run,
            server: _,
        } => status_local(&data_dir, run.as_deref(), json).await?,
        Command::Sql {
            query,
            data_dir,
            write,
        } => {
            let root = DataDir::existing_root(&data_dir)?;
            let result =
                tokio::task::block_in_place(|| coordinator::run::sql_query(&root, &query, write))?;
            println!("{}", result.to_table());
        }
    }
    Ok(())
}
