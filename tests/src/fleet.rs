//! A whole fleet on one machine, for the cross-process tests: a moto server (SQS, S3), the real
//! PostgreSQL as warehouse, one `coordinator serve` process and `worker --config` processes,
//! each test with its own bucket, queues, schema and ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backends::testkit;

use crate::{coordinator_bin, ok};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The `worker` binary of this build, built if needed.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = coordinator_bin()
            .parent()
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The same command as scripts/lib/build.sh: one feature resolution for the whole
        // workspace, so this neither rebuilds the tree nor replaces the binary the tests and
        // the image share with a differently featured one.
        cmd.args(["build", "-q", "--workspace", "--all-targets"]);
        if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build runs").success());
        dir.join("worker")
    })
    .clone()
}

/// Python with numpy and pyarrow (for the reference workload's generator), or `None` outside CI.
pub fn python() -> Option<String> {
    match std::env::var("TRIBUTARY_PYTHON") {
        Ok(p) => Some(p),
        Err(_)
            if std::env::var("TRIBUTARY_REQUIRE_SERVICES").is_ok()
                || std::env::var("CI").is_ok() =>
        {
            panic!("TRIBUTARY_PYTHON is not set (scripts/test sets it)")
        }
        Err(_) => {
            eprintln!("SKIPPED: set TRIBUTARY_PYTHON (scripts/test does)");
            None
        }
    }
}

/// One reference-workload file of `rows` rows, generated once per test process.
pub fn workload_file(python: &str, rows: usize) -> PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = generate_workload(python, rows, 42, &dir.path().join("events.ndjson"));
        (dir, f)
    })
    .1
    .clone()
}

/// Writes the reference workload's `rows` rows of `seed` to `out` (`gen_events.py`): the same
/// (rows, seed) always gives the same bytes, and different seeds give different event ids.
pub fn generate_workload(python: &str, rows: usize, seed: u64, out: &Path) -> PathBuf {
    let bench = std::env::var("TRIBUTARY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared/bench"));
    let done = Command::new(python)
        .arg(bench.join("gen_events.py"))
        .args([
            "--rows",
            &rows.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(out)
        .output()
        .expect("python runs");
    assert!(
        done.status.success(),
        "gen_events.py: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    out.to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running child whose stderr is kept (and echoed into a log file).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn sigterm(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.log.lock().expect("log").contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

pub struct Fleet {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub bucket: String,
    pub tasks_url: String,
    pub tasks_dlq: String,
    pub results_url: String,
    pub pg: String,
    pub api: String,
    pub config: PathBuf,
    pub procs: Vec<Proc>,
    rt: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    workers: usize,
    /// Names of the worker containers started (removed on drop).
    containers: Vec<String>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Fleet {
    /// Creates the bucket, queues and schema, uploads `input` as the pipeline's source and writes
    /// the fleet configuration. `None` when the services are not available (test skipped).
    pub fn new(name: &str, input: &Path, shard_bytes: u64) -> Option<Fleet> {
        let endpoint = testkit::aws_endpoint()?;
        let pg = testkit::postgres()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let unique = testkit::unique(name);
        let bucket = unique.replace('_', "-").to_ascii_lowercase();
        let (tasks_url, tasks_dlq, results_url, pg, s3) = rt.block_on(async {
            let sdk = testkit::sdk_config(&endpoint).await;
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            let s3 = testkit::s3_client(&sdk);
            testkit::create_bucket(&s3, &bucket).await;
            let body =
                aws_sdk_s3::primitives::ByteStream::from(std::fs::read(input).expect("input file"));
            s3.put_object()
                .bucket(&bucket)
                .key(format!(
                    "raw/{}",
                    input.file_name().expect("name").to_string_lossy()
                ))
                .body(body)
                .send()
                .await
                .expect("upload the source");
            let (t, tdlq) =
                testkit::create_queue_with_dlq(&sqs, &format!("{bucket}-tasks"), 4, 3).await;
            let (r, _) =
                testkit::create_queue_with_dlq(&sqs, &format!("{bucket}-results"), 10, 5).await;
            let pg = testkit::postgres_schema(&pg, &bucket).await;
            (t, tdlq, r, pg, s3)
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let pipeline = std::fs::read_to_string(repo().join("examples/workload.toml"))
            .expect("workload.toml")
            .lines()
            .map(|l| {
                if l.starts_with("location = ") {
                    format!("location = \"s3://{bucket}/raw/\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("workload.toml"), pipeline).expect("pipeline");
        std::fs::copy(
            repo().join("examples/workload.key"),
            dir.path().join("workload.key"),
        )
        .expect("key file");
        let port = free_port();
        let config = dir.path().join("fleet.toml");
        std::fs::write(
            &config,
            format!(
                r#"[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[queues]
tasks_url = "{tasks_url}"
results_url = "{results_url}"
visibility_timeout_secs = 4

[storage]
files = "s3://{bucket}/tributary"
lake = "s3://{bucket}/lake"

[worker]
concurrency = 1
health_addr = "127.0.0.1:0"
shutdown_grace_secs = 5

[coordinator]
listen = "127.0.0.1:{port}"
batch_rows = 6000
batch_window_secs = 1
shard_bytes = {shard_bytes}
pipelines = [{{ file = "workload.toml" }}]

[warehouse]
kind = "postgres"
postgres = "{pg}"
"#
            ),
        )
        .expect("fleet.toml");
        Some(Fleet {
            name: name.into(),
            dir,
            endpoint,
            bucket,
            tasks_url,
            tasks_dlq,
            results_url,
            pg,
            api: format!("http://127.0.0.1:{port}"),
            config,
            procs: Vec::new(),
            s3,
            rt,
            workers: 0,
            containers: Vec::new(),
        })
    }

    /// Makes `file` (written into the fleet's folder) its one pipeline, instead of the workload
    /// (before the coordinator starts).
    pub fn use_pipeline(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join(file), text).expect("pipeline");
        let config = std::fs::read_to_string(&self.config).expect("config");
        let config = config.replace(r#"file = "workload.toml""#, &format!(r#"file = "{file}""#));
        std::fs::write(&self.config, config).expect("config");
    }

    /// Gives the pipeline a cron schedule (before the coordinator starts).
    pub fn set_cron(&self, expr: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replace(
            r#"pipelines = [{ file = "workload.toml" }]"#,
            &format!(r#"pipelines = [{{ file = "workload.toml", cron = "{expr}" }}]"#),
        );
        std::fs::write(&self.config, text).expect("config");
    }

    /// The coordinator's `/metrics` text.
    pub fn coordinator_metrics(&self) -> String {
        self.api_get("/metrics").expect("coordinator /metrics")
    }

    /// The health address a worker logged at start-up.
    pub fn worker_addr(&self, i: usize) -> String {
        let log = self.procs[i].log.lock().expect("log").clone();
        log.split("addr=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the worker logs its health address")
            .to_string()
    }

    /// `GET` on the coordinator's API.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        self.api_get(path)
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    fn spawn(&mut self, name: String, mut cmd: Command) -> usize {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TRIBUTARY_LOG", "info")
            .env_remove("TRIBUTARY_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("process starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let (l2, path) = (log.clone(), self.dir.path().join(format!("{name}.log")));
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                let mut l = l2.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        self.procs.push(Proc { name, child, log });
        self.procs.len() - 1
    }

    /// Starts `coordinator serve`; returns its index in `procs`.
    pub fn start_coordinator(&mut self, fault: Option<&str>) -> usize {
        match fault {
            Some(f) => self.start_coordinator_with_env(&[("TRIBUTARY_FAULT", f)]),
            None => self.start_coordinator_with_env(&[]),
        }
    }

    /// Starts `coordinator serve` with extra environment variables.
    pub fn start_coordinator_with_env(&mut self, env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(coordinator_bin());
        cmd.arg("serve").arg("--config").arg(&self.config);
        cmd.env_remove("TRIBUTARY_FAULT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let n = self
            .procs
            .iter()
            .filter(|p| p.name.starts_with("coordinator"))
            .count();
        let i = self.spawn(format!("coordinator{n}"), cmd);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if self.api_get("/readyz").is_some() {
                return i;
            }
            if let Ok(Some(st)) = self.procs[i].child.try_wait() {
                panic!("coordinator exited with {st}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("coordinator not ready after 30 s:\n{}", self.logs());
    }

    /// Starts a `worker --config` process; returns its index in `procs`.
    pub fn start_worker(&mut self, fault: Option<&str>) -> usize {
        match fault {
            Some(f) => self.start_worker_with_env(&[("TRIBUTARY_FAULT", f)]),
            None => self.start_worker_with_env(&[]),
        }
    }

    /// Starts a worker as a container of `image` (`podman run --network host`, non-root, read-only
    /// root filesystem, no capabilities), reading this fleet's config and pipeline folder mounted
    /// read-only at the same path; its scratch is a tmpfs. Returns its index in `procs` (the
    /// podman client, whose stderr is the container's).
    pub fn start_worker_container(&mut self, image: &str) -> usize {
        let name = format!("{}-w{}", self.bucket, self.workers);
        let dir = self.dir.path().display().to_string();
        let mut cmd = Command::new("podman");
        cmd.args(["run", "--rm", "--name", &name, "--network", "host"])
            .args(["--read-only", "--cap-drop", "ALL"])
            .args(["--security-opt", "no-new-privileges", "--tmpfs", "/tmp"])
            .args(["-v", &format!("{dir}:{dir}:ro")])
            .args([
                "-e",
                "AWS_ACCESS_KEY_ID=testing",
                "-e",
                "AWS_SECRET_ACCESS_KEY=testing",
            ])
            .args([
                "-e",
                "AWS_EC2_METADATA_DISABLED=true",
                "-e",
                "TRIBUTARY_LOG=info",
            ])
            .args(["-e", "TRIBUTARY_WORKER_SCRATCH_DIR=/tmp/scratch"])
            .args(["-e", "TRIBUTARY_WORKER_THREADS=1"])
            .arg(image)
            .arg("--config")
            .arg(&self.config);
        self.containers.push(name.clone());
        self.workers += 1;
        self.spawn(format!("container-{name}"), cmd)
    }

    /// Starts a worker with extra environment variables (settings overrides).
    pub fn start_worker_with_env(&mut self, env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(worker_bin());
        cmd.arg("--config").arg(&self.config);
        cmd.env(
            "TRIBUTARY_WORKER_SCRATCH_DIR",
            self.dir.path().join(format!("scratch{}", self.workers)),
        );
        cmd.env("TRIBUTARY_WORKER_THREADS", "1");
        cmd.env_remove("TRIBUTARY_FAULT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.workers += 1;
        self.spawn(format!("worker{}", self.workers - 1), cmd)
    }

    /// Runs `coordinator serve` or `worker` with this fleet's config and extra environment until
    /// it exits (a process that should refuse to start); kills it after `timeout`.
    pub fn run_to_exit(
        &self,
        bin: &str,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> std::process::Output {
        let mut cmd = match bin {
            "coordinator" => {
                let mut c = Command::new(coordinator_bin());
                c.arg("serve");
                c
            }
            _ => Command::new(worker_bin()),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "TRIBUTARY_WORKER_SCRATCH_DIR",
                self.dir.path().join("scratch-refused"),
            )
            .env_remove("TRIBUTARY_FAULT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("process starts");
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait_with_output().expect("output")
    }

    fn api_get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("{}{path}", self.api)])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Starts a run of the workload through the CLI (`coordinator trigger --server`); returns
    /// its id.
    pub fn trigger(&self) -> String {
        self.trigger_pipeline("workload")
    }

    /// Starts a run of `pipeline` through the CLI; returns its id.
    pub fn trigger_pipeline(&self, pipeline: &str) -> String {
        let out = Command::new(coordinator_bin())
            .args(["trigger", pipeline, "--server", &self.api])
            .output()
            .expect("trigger runs");
        let text = ok(&out);
        text.trim()
            .strip_prefix("started run ")
            .unwrap_or_else(|| panic!("unexpected trigger output {text:?}"))
            .to_string()
    }

    /// The run as the API reports it (`coordinator status --server URL RUN`).
    pub fn status(&self, run: &str) -> Option<serde_json::Value> {
        let out = Command::new(coordinator_bin())
            .args(["status", run, "--server", &self.api, "--json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the run is no longer running; returns its record.
    pub fn wait_run(&self, run: &str, timeout: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(v) = self.status(run)
                && v["status"] != "running"
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "run {run} did not finish in {timeout:?}; last status {:?}\n{}",
            self.status(run),
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            let l = p.log.lock().expect("log");
            let tail: Vec<&str> = l.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last lines) ---\n", p.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Rows of a query on the warehouse, as text.
    pub fn pg_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let conn = self.pg.clone();
        let sql = sql.to_string();
        self.rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            let mut rows = Vec::new();
            for m in client.simple_query(&sql).await.expect("query") {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
            }
            rows
        })
    }

    pub fn pg_exec(&self, sql: &str) {
        let conn = self.pg.clone();
        let sql = sql.to_string();
        self.rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client.batch_execute(&sql).await.expect("statement");
        });
    }

    /// Every key under `prefix` in the test bucket.
    pub fn s3_keys(&self, prefix: &str) -> Vec<String> {
        let (s3, bucket, prefix) = (self.s3.clone(), self.bucket.clone(), prefix.to_string());
        self.rt.block_on(async move {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let r = s3
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list");
                keys.extend(
                    r.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
                match r.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            keys.sort();
            keys
        })
    }

    pub fn s3_get(&self, key: &str) -> Vec<u8> {
        let (s3, bucket, key) = (self.s3.clone(), self.bucket.clone(), key.to_string());
        self.rt.block_on(async move {
            s3.get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec()
        })
    }

    pub fn s3_put(&self, key: &str, data: Vec<u8>) {
        let (s3, bucket, key) = (self.s3.clone(), self.bucket.clone(), key.to_string());
        self.rt.block_on(async move {
            s3.put_object()
                .bucket(&bucket)
                .key(&key)
                .body(aws_sdk_s3::primitives::ByteStream::from(data))
                .send()
                .await
                .expect("put");
        });
    }

    pub fn s3_delete(&self, key: &str) {
        let (s3, bucket, key) = (self.s3.clone(), self.bucket.clone(), key.to_string());
        self.rt.block_on(async move {
            s3.delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .expect("delete");
        });
    }

    /// Sends raw bodies to the tasks queue.
    pub fn send_tasks(&self, bodies: &[String]) {
        self.send_to(&self.tasks_url.clone(), bodies);
    }

    /// Sends raw bodies to a queue.
    pub fn send_to(&self, url: &str, bodies: &[String]) {
        let (ep, url, bodies) = (self.endpoint.clone(), url.to_string(), bodies.to_vec());
        self.rt.block_on(async move {
            let sdk = testkit::sdk_config(&ep).await;
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            for b in bodies {
                sqs.send_message()
                    .queue_url(&url)
                    .message_body(b)
                    .send()
                    .await
                    .expect("send");
            }
        });
    }

    /// The tasks dead-letter queue, with reasons.
    pub fn dead_letters(&self) -> Vec<backends::queue::DeadLetter> {
        let (ep, url, dlq) = (
            self.endpoint.clone(),
            self.tasks_url.clone(),
            self.tasks_dlq.clone(),
        );
        self.rt.block_on(async move {
            use backends::queue::Queue;
            let sdk = testkit::sdk_config(&ep).await;
            let q = backends::queue::SqsQueue::connect(
                aws_sdk_sqs::Client::new(&sdk),
                &url,
                Some(dlq),
                Duration::from_secs(4),
            )
            .await
            .expect("queue");
            q.dead_letters().await.expect("dead letters")
        })
    }
}

/// Rows of a table, every value as text.
pub type Table = Vec<Vec<Option<String>>>;

/// The columns compared between warehouses, rendered the same way on both.
const COMPARE_PG: &str = "SELECT event_id, to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), user_id::text, session_id, event_type, page_url, referrer, country, email_sha256, ip_masked, amount::text, currency, device_os, device_browser, CASE WHEN logged_in THEN '1' WHEN NOT logged_in THEN '0' END, retry_count::text, event_date, _tributary_source_object, _tributary_source_offset::text FROM web_events ORDER BY event_id";
/// The embedded warehouse's table of the reference workload, key first; it ends in its `ORDER
/// BY`, which a caller may extend.
pub const COMPARE_SQLITE: &str = "SELECT event_id, ts, CAST(user_id AS TEXT), session_id, event_type, page_url, referrer, country, email_sha256, ip_masked, amount, currency, device_os, device_browser, CAST(logged_in AS TEXT), CAST(retry_count AS TEXT), event_date, _tributary_source_object, CAST(_tributary_source_offset AS TEXT) FROM web_events ORDER BY event_id";

fn normalize(mut rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    for r in &mut rows {
        // amount: decimals as two-digit text on both sides.
        if let Some(Some(a)) = r.get_mut(10) {
            *a = format!("{:.2}", a.parse::<f64>().unwrap_or(f64::NAN));
        }
    }
    rows
}

/// The warehouse table of the fleet run, normalised for comparison.
pub fn fleet_table(f: &Fleet) -> Vec<Vec<Option<String>>> {
    normalize(f.pg_rows(COMPARE_PG))
}

/// The same pipeline on the embedded backends (`coordinator run`), as the reference.
pub fn embedded_table(input: &Path, shard_bytes: u64) -> Vec<Vec<Option<String>>> {
    static CACHE: OnceLock<Mutex<Vec<(PathBuf, u64, Table)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, _, t)) = cache
        .lock()
        .expect("cache")
        .iter()
        .find(|(p, s, _)| p == input && *s == shard_bytes)
    {
        return t.clone();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = crate::coordinator(
        &[
            "run",
            repo()
                .join("examples/workload.toml")
                .to_str()
                .expect("utf-8"),
            "--source",
            input.to_str().expect("utf-8"),
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
            "--shard-size",
            &shard_bytes.to_string(),
            "--no-progress",
        ],
        None,
    );
    ok(&out);
    let rows = sqlite_rows(&dir.path().join("warehouse.db"), COMPARE_SQLITE);
    let rows = normalize(rows);
    cache
        .lock()
        .expect("cache")
        .push((input.to_path_buf(), shard_bytes, rows.clone()));
    rows
}

/// The rows `sql` reads from the SQLite file `db`, every value as text (`None` for NULL).
pub fn sqlite_rows(db: &Path, sql: &str) -> Table {
    let conn = rusqlite::Connection::open(db).expect("sqlite");
    let mut st = conn.prepare(sql).expect("query");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                    rusqlite::types::Value::Null => None,
                    rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                    rusqlite::types::Value::Real(f) => Some(f.to_string()),
                    rusqlite::types::Value::Text(t) => Some(t),
                    rusqlite::types::Value::Blob(_) => Some("<blob>".into()),
                })
            })
            .collect()
    })
    .expect("rows")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// A tool from the environment (set by scripts/test), or `None` outside CI.
pub fn tool(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("TRIBUTARY_REQUIRE_SERVICES").is_ok() || std::env::var("CI").is_ok() => {
            panic!("{var} is not set (scripts/test sets it)")
        }
        _ => {
            eprintln!("SKIPPED: set {var} (scripts/test does)");
            None
        }
    }
}

/// `promtool check metrics` on a scrape: panics with promtool's complaints.
pub fn promtool_check_metrics(promtool: &str, scrape: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write scrape");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one sample line (`name{labels} value`) of a scrape, matching all `parts`.
pub fn sample(scrape: &str, name: &str, parts: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && parts.iter().all(|p| l.contains(p))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
