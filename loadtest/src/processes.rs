//! `loadtest run --processes`: a generated preset driven as the fleet runs in production — one
//! `coordinator serve` process and N `worker --config` processes, with SQS and S3 served by a
//! moto server and PostgreSQL as the warehouse (all on 127.0.0.1).
//!
//! The sources are uploaded to a fresh bucket, every pipeline file is rewritten to read them
//! from there, every pipeline is triggered through the coordinator's API at once, and the
//! report is the embedded mode's ([`crate::drive::Report`]) with each process measured: stage
//! times from the workers' and the coordinator's `/metrics`, CPU seconds and peak RSS from
//! `/proc/PID`, the Parquet files from the lake bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backends::testkit;
use coordinator::engine::RunStatus;
use coordinator::run::RunRecord;

use crate::drive::{self, Measured, PipelineResult, Report};
use crate::scrape::Stages;

pub use crate::ProcessesOptions as Options;

/// The child processes of a run; killed when dropped.
struct Fleet {
    procs: Vec<(String, Child)>,
    /// The health (and metrics) address given to each worker.
    worker_addrs: Vec<String>,
    work: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    fn spawn(&mut self, name: &str, mut cmd: Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.work.join(format!("{name}.log")))?;
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TRIBUTARY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    /// An error when a process has exited, with the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.procs {
            if let Some(st) = c.try_wait()? {
                let log = std::fs::read_to_string(self.work.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "{name} exited with {st}; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    fn pid(&self, name: &str) -> Option<String> {
        self.procs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id().to_string())
    }

    /// SIGTERM to every process, then up to 10 s for them to drain and exit.
    fn stop(&mut self) {
        for (_, c) in &self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10)
            && self
                .procs
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn get_text(url: &str) -> anyhow::Result<String> {
    let agent = worker::extract::http::agent(Duration::from_secs(10));
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    Ok(resp.body_mut().read_to_string()?)
}

/// The bucket, queues and warehouse schema of one run (made with the test helpers of
/// `backends::testkit`, the same as the fleet tests').
struct Services {
    bucket: String,
    tasks_url: String,
    results_url: String,
    postgres: String,
    s3: aws_sdk_s3::Client,
}

/// Creates them, after checking that both services answer (a clear error instead of the test
/// helpers' panics when one does not).
async fn services(o: &Options) -> anyhow::Result<Services> {
    backends::warehouse::PostgresWarehouse::connect(&o.postgres, false)
        .await
        .with_context(|| format!("--postgres {:?}: cannot connect", o.postgres))?;
    let bucket = testkit::unique("loadtest").to_ascii_lowercase();
    let sdk = testkit::sdk_config(&o.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let s3 = testkit::s3_client(&sdk);
    s3.list_buckets().send().await.with_context(|| {
        format!(
            "--aws-endpoint {}: no S3 answers there (start moto_server)",
            o.endpoint
        )
    })?;
    testkit::create_bucket(&s3, &bucket).await;
    let (tasks_url, _) =
        testkit::create_queue_with_dlq(&sqs, &format!("{bucket}-tasks"), 60, 3).await;
    let (results_url, _) =
        testkit::create_queue_with_dlq(&sqs, &format!("{bucket}-results"), 30, 5).await;
    let postgres = testkit::postgres_schema(&o.postgres, &bucket).await;
    Ok(Services {
        bucket,
        tasks_url,
        results_url,
        postgres,
        s3,
    })
}

/// Uploads a pipeline's source files to `s3://BUCKET/sources/NAME/` and writes its pipeline file,
/// reading from there, into `work`; returns (name, pipeline file, input bytes).
async fn stage_pipeline(
    sv: &Services,
    o: &Options,
    pipeline: &Path,
) -> anyhow::Result<(String, PathBuf, u64)> {
    let name = pipeline
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: no file name", pipeline.display()))?
        .to_string();
    let mut bytes = 0;
    for f in drive::files_under(&o.dir.join("sources").join(&name)) {
        let body = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        bytes += body.len() as u64;
        let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("part");
        sv.s3
            .put_object()
            .bucket(&sv.bucket)
            .key(format!("sources/{name}/{file}"))
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
            .send()
            .await
            .with_context(|| format!("uploading {}", f.display()))?;
    }
    let text = std::fs::read_to_string(pipeline)
        .with_context(|| format!("reading {}", pipeline.display()))?;
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with("location = ") {
            true => format!("location = \"s3://{}/sources/{name}/\"", sv.bucket),
            false => l.to_string(),
        })
        .collect();
    let out = o.work.join(format!("{name}.toml"));
    std::fs::write(&out, text.join("\n"))?;
    Ok((name, out, bytes))
}

fn fleet_toml(
    o: &Options,
    sv: &Services,
    pipelines: &[(String, PathBuf, u64)],
    port: u16,
) -> String {
    let files: Vec<String> = pipelines
        .iter()
        .map(|(n, _, _)| format!("{{ file = \"{n}.toml\" }}"))
        .collect();
    format!(
        r#"[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[queues]
tasks_url = "{tasks}"
results_url = "{results}"
visibility_timeout_secs = 60

[storage]
files = "s3://{bucket}/tributary"
lake = "s3://{bucket}/lake"

[worker]
concurrency = 1

[coordinator]
listen = "127.0.0.1:{port}"
batch_rows = 2000000
batch_window_secs = 2
pipelines = [{files}]

[warehouse]
kind = "postgres"
postgres = "{pg}"
"#,
        endpoint = o.endpoint,
        tasks = sv.tasks_url,
        results = sv.results_url,
        bucket = sv.bucket,
        files = files.join(", "),
        pg = sv.postgres.replace('\\', "\\\\").replace('"', "\\\""),
    )
}

/// Starts the coordinator and waits until it is ready; then the workers.
fn start(o: &Options, config: &Path, api: &str) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet {
        procs: Vec::new(),
        worker_addrs: Vec::new(),
        work: o.work.clone(),
    };
    let mut cmd = Command::new(o.bin_dir.join("coordinator"));
    cmd.arg("serve").arg("--config").arg(config);
    fleet.spawn("coordinator", cmd)?;
    let t0 = Instant::now();
    while get_text(&format!("{api}/readyz")).is_err() {
        fleet.check_alive()?;
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "the coordinator was not ready after 60 s (see {}/coordinator.log)",
                o.work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..o.workers {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(o.bin_dir.join("worker"));
        cmd.arg("--config")
            .arg(config)
            .env("TRIBUTARY_WORKER_HEALTH_ADDR", &addr)
            .env("TRIBUTARY_WORKER_THREADS", o.worker_threads.to_string())
            .env(
                "TRIBUTARY_WORKER_SCRATCH_DIR",
                o.work.join(format!("scratch{i}")),
            );
        fleet.spawn(&format!("worker{i}"), cmd)?;
        fleet.worker_addrs.push(addr);
    }
    Ok(fleet)
}

/// Triggers every pipeline and waits for every run to end; (record, seconds) per pipeline.
/// Triggers every pipeline at once, as schedules firing together would (one request each, all
/// in flight together): the run ids, in `names` order.
fn trigger_all(api: &str, names: &[String]) -> anyhow::Result<Vec<String>> {
    std::thread::scope(|s| {
        let calls: Vec<_> = names
            .iter()
            .map(|name| {
                s.spawn(move || -> anyhow::Result<String> {
                    let v = coordinator::remote::call(
                        &format!("{api}/api/runs"),
                        Some(&serde_json::json!({ "pipeline": name })),
                    )?;
                    let id = v["run_id"].as_str().context("the API answered no run_id")?;
                    Ok(id.to_string())
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("a trigger thread panicked"))
            .collect()
    })
}

fn drive_runs(
    fleet: &mut Fleet,
    api: &str,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<(RunRecord, f64)>> {
    let started = Instant::now();
    let mut runs = Vec::new();
    for id in trigger_all(api, names)? {
        runs.push((id, None::<(RunRecord, f64)>));
    }
    while runs.iter().any(|(_, done)| done.is_none()) {
        fleet.check_alive()?;
        if started.elapsed() > timeout {
            bail!(
                "the runs did not finish in {timeout:?} (logs in {})",
                fleet.work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        for (id, done) in runs.iter_mut().filter(|(_, d)| d.is_none()) {
            let v = coordinator::remote::call(&format!("{api}/api/runs/{id}"), None)?;
            let r: RunRecord = serde_json::from_value(v)?;
            if r.status != RunStatus::Running {
                eprintln!(
                    "{:<24} {:>10} rows in {:>10} out {:>7.1} s  {}",
                    r.pipeline,
                    r.counts.lines_total,
                    r.counts.rows_out,
                    started.elapsed().as_secs_f64(),
                    r.status
                );
                *done = Some((r, started.elapsed().as_secs_f64()));
            }
        }
    }
    Ok(runs.into_iter().filter_map(|(_, d)| d).collect())
}

/// Sizes of the lake's Parquet files, per run id.
async fn lake_sizes(sv: &Services, runs: &[String]) -> anyhow::Result<Vec<Vec<u64>>> {
    let mut sizes = vec![Vec::new(); runs.len()];
    let mut token = None;
    loop {
        let page = sv
            .s3
            .list_objects_v2()
            .bucket(&sv.bucket)
            .prefix("lake/")
            .set_continuation_token(token)
            .send()
            .await
            .context("listing the lake")?;
        for o in page.contents() {
            let key = o.key().unwrap_or_default();
            if let Some(i) = runs
                .iter()
                .position(|r| protocol::is_part_file_of_run(key, r))
            {
                sizes[i].push(o.size().unwrap_or(0).max(0) as u64);
            }
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(sizes),
        }
    }
}

/// Stage times, CPU seconds and the workers' peak RSS, read while the processes still run.
fn measure(fleet: &Fleet, api: &str) -> anyhow::Result<(Stages, f64, Vec<f64>)> {
    let mut stages = Stages::default();
    stages.add_text(&get_text(&format!("{api}/metrics"))?);
    let mut rss = Vec::new();
    for (i, addr) in fleet.worker_addrs.iter().enumerate() {
        stages.add_text(&get_text(&format!("http://{addr}/metrics"))?);
        rss.push(drive::process_peak_rss_mb(
            &fleet.pid(&format!("worker{i}")).unwrap_or_default(),
        ));
    }
    let cpu = fleet
        .procs
        .iter()
        .map(|(_, c)| drive::process_cpu_seconds(&c.id().to_string()))
        .sum();
    Ok((stages, cpu, rss))
}

/// Runs every pipeline of the preset in `o.dir` on a fleet of processes and reports.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    let pipelines = drive::pipeline_files(&o.dir, o.only)?;
    std::fs::create_dir_all(&o.work)?;
    for bin in ["coordinator", "worker"] {
        let p = o.bin_dir.join(bin);
        anyhow::ensure!(
            p.is_file(),
            "{} not found: build it, or name its folder with --bin-dir",
            p.display()
        );
    }
    let sv = services(o).await?;
    let mut staged = Vec::new();
    for p in &pipelines {
        staged.push(stage_pipeline(&sv, o, p).await?);
    }
    let port = free_port()?;
    let config = o.work.join("fleet.toml");
    std::fs::write(&config, fleet_toml(o, &sv, &staged, port))?;
    let api = format!("http://127.0.0.1:{port}");
    let names: Vec<String> = staged.iter().map(|(n, _, _)| n.clone()).collect();
    let (o2, api2) = (o.clone(), api.clone());
    let (mut fleet, runs, started) = tokio::task::spawn_blocking(move || {
        let mut fleet = start(&o2, &config, &api2)?;
        let started = Instant::now();
        let runs = drive_runs(&mut fleet, &api2, &names, o2.timeout)?;
        anyhow::Ok((fleet, runs, started))
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    let (stages, cpu, rss) = tokio::task::block_in_place(|| measure(&fleet, &api))?;
    tokio::task::block_in_place(|| fleet.stop());
    let ids: Vec<String> = runs.iter().map(|(r, _)| r.run_id.clone()).collect();
    let sizes = lake_sizes(&sv, &ids).await?;
    let results = runs
        .iter()
        .zip(&sizes)
        .zip(&staged)
        .map(|(((r, secs), s), (_, _, bytes))| PipelineResult::of(r, *bytes, s, *secs))
        .collect();
    let measured = Measured {
        mode: "processes",
        seconds,
        cpu_seconds: cpu,
        stages,
        peak_rss_mb: rss,
    };
    Ok(drive::report(measured, results, sizes.concat()))
}
