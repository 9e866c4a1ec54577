//! The fleet configuration file shared by `worker --config FILE` and
//! `coordinator serve --config FILE`, and the backends it opens.
//!
//! Every setting can also come from the environment as `TRIBUTARY_<SECTION>_<KEY>` (for example
//! `TRIBUTARY_QUEUES_TASKS_URL`, `TRIBUTARY_WORKER_CONCURRENCY`,
//! `TRIBUTARY_WAREHOUSE_REDSHIFT_IAM_ROLE`); the environment wins over the file. Unknown keys, in
//! the file or the environment, are refused with their name before anything starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backends::aws::AwsSettings;
#[cfg(feature = "aws")]
use backends::object_store::S3Store;
use backends::object_store::{LocalStore, ObjectStore};
use backends::queue::Queue;
#[cfg(feature = "aws")]
use backends::queue::SqsQueue;
use backends::warehouse::RedshiftSettings;
use serde::{Deserialize, Serialize};

/// Sections that may be set from the environment, and their nested tables.
const SECTIONS: &[&str] = &[
    "aws",
    "queues",
    "storage",
    "worker",
    "coordinator",
    "warehouse",
];
const NESTED: &[(&str, &str)] = &[("warehouse", "redshift")];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    #[serde(default)]
    pub aws: AwsSettings,
    pub queues: QueueSettings,
    pub storage: StorageSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub coordinator: CoordinatorSettings,
    #[serde(default)]
    pub warehouse: WarehouseSettings,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Coordinator → workers.
    pub tasks_url: String,
    /// Workers → coordinator.
    pub results_url: String,
    /// Dead-letter queues; default: the queue's redrive policy target.
    #[serde(default)]
    pub tasks_dead_letter_url: Option<String>,
    #[serde(default)]
    pub results_dead_letter_url: Option<String>,
    /// How long a received task stays invisible; the worker's heartbeat extends it every third.
    #[serde(default = "default_visibility")]
    pub visibility_timeout_secs: u64,
    /// Bodies larger than this go to the object store (`payloads/`), the message carries a pointer.
    #[serde(default = "default_inline")]
    pub max_inline_bytes: usize,
}

fn default_visibility() -> u64 {
    60
}
fn default_inline() -> usize {
    backends::queue::SQS_DEFAULT_MAX_BYTES
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Manifests, quarantine files, large queue payloads, load manifests (and the coordinator's
    /// state unless `coordinator.state` says otherwise): `s3://bucket/prefix` or a local folder.
    pub files: String,
    /// Root of the Parquet lake: tables are written under `<lake>/<table>/`.
    pub lake: String,
    /// KMS key for SSE-KMS on every object written to S3.
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Tasks processed at once by one worker process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Memory the process may use; `concurrency` × 512 MiB must fit (a shard's engine stays under
    /// 512 MiB, see BENCHMARKS.md).
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
    /// Threads of the CPU pool (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default = "default_scratch")]
    pub scratch_dir: PathBuf,
    /// Address of `/healthz` and `/readyz`.
    #[serde(default = "default_worker_health")]
    pub health_addr: String,
    /// After SIGTERM: how long in-flight tasks may run before they are released to the queue.
    /// Keep it below the pod's terminationGracePeriodSeconds.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

fn default_concurrency() -> usize {
    1
}
fn default_scratch() -> PathBuf {
    std::env::temp_dir().join("tributary-worker")
}
fn default_worker_health() -> String {
    "0.0.0.0:8081".into()
}
fn default_grace() -> u64 {
    90
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: default_concurrency(),
            max_memory_mb: None,
            threads: None,
            scratch_dir: default_scratch(),
            health_addr: default_worker_health(),
            shutdown_grace_secs: default_grace(),
        }
    }
}

/// A pipeline the coordinator runs, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduledPipeline {
    /// The pipeline file (relative to the configuration file).
    pub file: PathBuf,
    /// A cron expression (5 or 6 fields, UTC); none: runs only when triggered.
    #[serde(default)]
    pub cron: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSettings {
    #[serde(default)]
    pub pipelines: Vec<ScheduledPipeline>,
    /// Where run state lives: `s3://…` or a local folder. Default: `<storage.files>/state/`.
    #[serde(default)]
    pub state: Option<String>,
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A load batch closes when it holds this many rows…
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u64,
    /// …or when its oldest shard finished this long ago.
    #[serde(default = "default_batch_window")]
    pub batch_window_secs: u64,
    /// Attempts of one load batch before the run is marked failed (it can be resumed).
    #[serde(default = "default_load_attempts")]
    pub load_attempts: u32,
    /// Split inputs into byte ranges of this size (default: each pipeline's source.shard_bytes).
    #[serde(default)]
    pub shard_bytes: Option<u64>,
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_batch_rows() -> u64 {
    5_000_000
}
fn default_batch_window() -> u64 {
    120
}
fn default_load_attempts() -> u32 {
    5
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        CoordinatorSettings {
            pipelines: Vec::new(),
            state: None,
            listen: default_listen(),
            batch_rows: default_batch_rows(),
            batch_window_secs: default_batch_window(),
            load_attempts: default_load_attempts(),
            shard_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum WarehouseKind {
    /// Parquet only.
    #[default]
    None,
    /// PostgreSQL wire protocol (PostgreSQL, or Redshift's Postgres-compatible endpoint).
    Postgres,
    /// Redshift through the Data API.
    RedshiftData,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSettings {
    #[serde(default)]
    pub kind: WarehouseKind,
    /// For `postgres`: a connection string (`host=… user=… dbname=…` or `postgresql://…`).
    /// The password is best given as `PGPASSWORD`-style secret through the environment.
    #[serde(default)]
    pub postgres: Option<String>,
    /// For `postgres`: speak Redshift's SQL dialect over the wire.
    #[serde(default)]
    pub postgres_is_redshift: bool,
    /// For `postgres`: connections the coordinator loads over, so that batches of different
    /// tables load side by side (a table's loads still take its lock one at a time). Default 4.
    #[serde(default = "default_postgres_connections")]
    pub postgres_connections: usize,
    #[serde(default)]
    pub redshift: Option<RedshiftSettings>,
}

fn default_postgres_connections() -> usize {
    4
}

impl Default for WarehouseSettings {
    fn default() -> Self {
        WarehouseSettings {
            kind: WarehouseKind::None,
            postgres: None,
            postgres_is_redshift: false,
            postgres_connections: default_postgres_connections(),
            redshift: None,
        }
    }
}

/// A configuration error, naming the file or variable and the field.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SettingsError {
    pub source_name: String,
    pub message: String,
}

fn err(source_name: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError {
        source_name: source_name.into(),
        message: message.into(),
    }
}

fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    toml::Value::String(raw.to_string())
}

fn deserialize(root: &toml::Table) -> Result<FleetSettings, toml::de::Error> {
    toml::Value::Table(root.clone()).try_into()
}

/// Which environment variable makes the settings fail to decode: the first one without which
/// the error goes away or changes. `None` when the file alone is at fault.
fn culprit_variable<'a>(
    root: &toml::Table,
    from_env: &'a [(String, String)],
    error: &toml::de::Error,
) -> Option<&'a (String, String)> {
    let text = error.to_string();
    from_env.iter().find(|(dotted, _)| {
        let mut without = root.clone();
        remove_dotted(&mut without, dotted);
        match deserialize(&without) {
            Ok(_) => true,
            Err(e) => e.to_string() != text,
        }
    })
}

fn remove_dotted(root: &mut toml::Table, dotted: &str) {
    let parts: Vec<&str> = dotted.split('.').collect();
    let (last, path) = parts.split_last().expect("a dotted key has a part");
    let mut table = root;
    for p in path {
        match table.get_mut(*p).and_then(toml::Value::as_table_mut) {
            Some(t) => table = t,
            None => return,
        }
    }
    table.remove(*last);
}

impl FleetSettings {
    /// Reads the file (if any), overlays `TRIBUTARY_*` variables from `env`, and validates.
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<(FleetSettings, PathBuf), SettingsError> {
        let (mut root, base, name) = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| err(f.display().to_string(), format!("cannot read: {e}")))?;
                let v: toml::Table = toml::from_str(&text)
                    .map_err(|e| err(f.display().to_string(), e.to_string()))?;
                let base = f
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (v, base, f.display().to_string())
            }
            None => (
                toml::Table::new(),
                PathBuf::from("."),
                "environment".to_string(),
            ),
        };
        let mut keys: Vec<&String> = env.keys().collect();
        keys.sort();
        // (section.key, variable) of every setting the environment gave.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for var in keys {
            let Some(rest) = var.strip_prefix("TRIBUTARY_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS
                .iter()
                .find(|s| lower.starts_with(&format!("{s}_")))
            else {
                continue;
            };
            let mut key = lower[section.len() + 1..].to_string();
            let mut table = root
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| err(var, format!("[{section}] is not a table")))?;
            let mut dotted = section.to_string();
            for (s, nested) in NESTED {
                if s == section && key.starts_with(&format!("{nested}_")) {
                    dotted = format!("{section}.{nested}");
                    key = key[nested.len() + 1..].to_string();
                    table = table
                        .entry(nested.to_string())
                        .or_insert_with(|| toml::Value::Table(Default::default()))
                        .as_table_mut()
                        .ok_or_else(|| err(var, format!("[{section}.{nested}] is not a table")))?;
                }
            }
            let raw = &env[var];
            // Strings that look like numbers stay strings where the field is a string.
            let value = if *section == "coordinator" && key == "pipelines" {
                // `file[=cron];file[=cron]…`
                toml::Value::Array(
                    raw.split(';')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(|e| {
                            let mut t = toml::Table::new();
                            let (file, cron) = match e.split_once('=') {
                                Some((f, c)) => (f.trim(), Some(c.trim())),
                                None => (e, None),
                            };
                            t.insert("file".into(), toml::Value::String(file.into()));
                            if let Some(c) = cron {
                                t.insert("cron".into(), toml::Value::String(c.into()));
                            }
                            toml::Value::Table(t)
                        })
                        .collect(),
                )
            } else if key.ends_with("_url") || key.ends_with("_arn") || key == "postgres" {
                toml::Value::String(raw.clone())
            } else {
                env_value(raw)
            };
            from_env.push((format!("{dotted}.{key}"), var.clone()));
            table.insert(key, value);
        }
        let s = deserialize(&root).map_err(|e| match culprit_variable(&root, &from_env, &e) {
            Some((dotted, var)) => err(var, format!("{dotted}: {e}")),
            None => err(&name, e.to_string()),
        })?;
        s.validate().map_err(|m| {
            // A message names its field; if the environment set that field, name the variable.
            match from_env
                .iter()
                .find(|(dotted, _)| m.contains(dotted.as_str()))
            {
                Some((_, var)) => err(var, m),
                None => err(&name, m),
            }
        })?;
        Ok((s, base))
    }

    pub fn validate(&self) -> Result<(), String> {
        for (field, url) in [
            ("queues.tasks_url", &self.queues.tasks_url),
            ("queues.results_url", &self.queues.results_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{field} {url:?} is not a queue URL (https://sqs.…)"
                ));
            }
        }
        if self.queues.visibility_timeout_secs < 3 || self.queues.visibility_timeout_secs > 43_200 {
            return Err("queues.visibility_timeout_secs must be between 3 and 43200".into());
        }
        if self.storage.files.is_empty() || self.storage.lake.is_empty() {
            return Err("storage.files and storage.lake are required".into());
        }
        let w = &self.worker;
        if w.concurrency == 0 {
            return Err("worker.concurrency must be at least 1".into());
        }
        if let Some(mb) = w.max_memory_mb
            && (w.concurrency as u64) * 512 > mb
        {
            return Err(format!(
                "worker.concurrency {} needs {} MiB but worker.max_memory_mb is {mb}: lower the concurrency",
                w.concurrency,
                w.concurrency * 512
            ));
        }
        let c = &self.coordinator;
        for p in &c.pipelines {
            if let Some(expr) = &p.cron {
                expr.parse::<croner::Cron>().map_err(|e| {
                    format!(
                        "coordinator.pipelines: cron {expr:?} of {}: {e}",
                        p.file.display()
                    )
                })?;
            }
        }
        if c.batch_rows == 0 || c.load_attempts == 0 {
            return Err(
                "coordinator.batch_rows and coordinator.load_attempts must be positive".into(),
            );
        }
        match self.warehouse.kind {
            WarehouseKind::None => {}
            WarehouseKind::Postgres => {
                if self.warehouse.postgres.is_none() {
                    return Err("warehouse.kind = \"postgres\" needs warehouse.postgres (a connection string)".into());
                }
                if !(1..=64).contains(&self.warehouse.postgres_connections) {
                    return Err(format!(
                        "warehouse.postgres_connections = {}: must be 1 to 64",
                        self.warehouse.postgres_connections
                    ));
                }
            }
            WarehouseKind::RedshiftData => match &self.warehouse.redshift {
                None => {
                    return Err(
                        "warehouse.kind = \"redshift-data\" needs [warehouse.redshift]".into(),
                    );
                }
                Some(r) => r.validate()?,
            },
        }
        Ok(())
    }
}

/// The AWS SDK's shared configuration, loaded once per process; in a build without the `aws`
/// feature there is none, and whatever needs it answers [`backends::BackendError::NotBuilt`].
#[derive(Debug, Clone)]
pub struct AwsClients {
    #[cfg(feature = "aws")]
    pub sdk: aws_config::SdkConfig,
}

impl AwsClients {
    /// Loads the SDK configuration of `settings` (the standard chain where they say nothing).
    pub async fn load(settings: &AwsSettings) -> AwsClients {
        #[cfg(not(feature = "aws"))]
        let _ = settings;
        AwsClients {
            #[cfg(feature = "aws")]
            sdk: settings.sdk_config().await,
        }
    }
}

/// The opened backends of a fleet process.
#[derive(Debug, Clone)]
pub struct FleetBackends {
    pub aws: AwsClients,
    pub files: Arc<dyn ObjectStore>,
    /// `storage.files`, as configured (tasks carry it to the workers).
    pub files_url: String,
    pub lake_url: String,
    pub tasks: Arc<dyn Queue>,
    pub results: Arc<dyn Queue>,
    pub kms_key_id: Option<String>,
}

/// Opens `s3://…` as S3 and anything else as a local folder.
pub fn open_store(
    aws: &AwsClients,
    url: &str,
    kms: Option<String>,
) -> Result<Arc<dyn ObjectStore>, backends::BackendError> {
    if url.starts_with("s3://") {
        open_s3(aws, url, kms)
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        Ok(Arc::new(LocalStore::new(path)?))
    }
}

#[cfg(feature = "aws")]
fn open_s3(
    aws: &AwsClients,
    url: &str,
    kms: Option<String>,
) -> Result<Arc<dyn ObjectStore>, backends::BackendError> {
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws.sdk)
            .force_path_style(true)
            .build(),
    );
    Ok(Arc::new(S3Store::new(client, url, kms)?))
}

#[cfg(not(feature = "aws"))]
fn open_s3(
    _: &AwsClients,
    url: &str,
    _: Option<String>,
) -> Result<Arc<dyn ObjectStore>, backends::BackendError> {
    Err(backends::BackendError::NotBuilt {
        what: format!("{url:?} (S3)"),
    })
}

impl FleetBackends {
    /// Without the `aws` feature there is no fleet: refused by name before anything runs.
    #[cfg(not(feature = "aws"))]
    pub async fn open(_: &FleetSettings) -> Result<FleetBackends, backends::BackendError> {
        Err(backends::BackendError::NotBuilt {
            what: "the fleet (SQS queues, S3 storage)".into(),
        })
    }

    /// Opens the queues and stores of the settings and checks each before anything runs
    /// (`GetQueueAttributes` on both queues, `HeadBucket` on `storage.files` and `storage.lake`);
    /// a failure names its setting (and, for an unreachable endpoint, the address dialled).
    #[cfg(feature = "aws")]
    pub async fn open(s: &FleetSettings) -> Result<FleetBackends, backends::BackendError> {
        let aws = AwsClients::load(&s.aws).await;
        let sdk = &aws.sdk;
        let endpoint = s.aws.endpoint_url.as_deref();
        let named = |setting: &str, value: &str| {
            let (setting, value) = (setting.to_string(), value.to_string());
            move |e: backends::BackendError| e.at_setting(&setting, &value, endpoint)
        };
        let files = open_store(&aws, &s.storage.files, s.storage.kms_key_id.clone())
            .map_err(named("storage.files", &s.storage.files))?;
        files
            .check_access()
            .await
            .map_err(named("storage.files", &s.storage.files))?;
        open_store(&aws, &s.storage.lake, None)
            .map_err(named("storage.lake", &s.storage.lake))?
            .check_access()
            .await
            .map_err(named("storage.lake", &s.storage.lake))?;
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let vis = std::time::Duration::from_secs(s.queues.visibility_timeout_secs);
        let tasks = SqsQueue::connect(
            sqs.clone(),
            &s.queues.tasks_url,
            s.queues.tasks_dead_letter_url.clone(),
            vis,
        )
        .await
        .map_err(named("queues.tasks_url", &s.queues.tasks_url))?
        .with_payload_store(files.clone(), s.queues.max_inline_bytes);
        let results = SqsQueue::connect(
            sqs,
            &s.queues.results_url,
            s.queues.results_dead_letter_url.clone(),
            vis,
        )
        .await
        .map_err(named("queues.results_url", &s.queues.results_url))?
        .with_payload_store(files.clone(), s.queues.max_inline_bytes);
        Ok(FleetBackends {
            aws,
            files,
            files_url: s.storage.files.clone(),
            lake_url: s.storage.lake.clone(),
            tasks: Arc::new(tasks),
            results: Arc::new(results),
            kms_key_id: s.storage.kms_key_id.clone(),
        })
    }

    /// The store of a task's source (`s3://…` or a local folder).
    pub fn store(&self, url: &str) -> Result<Arc<dyn ObjectStore>, backends::BackendError> {
        open_store(&self.aws, url, self.kms_key_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_loads_use_four_connections_unless_told_and_zero_is_refused() {
        let pg = format!("{BASE}[warehouse]\nkind = \"postgres\"\npostgres = \"host=db\"\n");
        assert_eq!(load(&pg, &[]).unwrap().warehouse.postgres_connections, 4);
        let two = load(&pg, &[("TRIBUTARY_WAREHOUSE_POSTGRES_CONNECTIONS", "2")]).unwrap();
        assert_eq!(two.warehouse.postgres_connections, 2);
        let e = load(&pg, &[("TRIBUTARY_WAREHOUSE_POSTGRES_CONNECTIONS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("warehouse.postgres_connections = 0: must be 1 to 64"),
            "{e}"
        );
    }

    /// The README's first command builds without the `aws` feature: a fleet configuration or an
    /// `s3://` location is refused by name, saying how to build with it (`.ci/run` runs this
    /// crate's tests in that feature set).
    #[cfg(not(feature = "aws"))]
    #[tokio::test]
    async fn a_build_without_aws_refuses_the_fleet_and_s3_by_name() {
        let aws = AwsClients::load(&AwsSettings::default()).await;
        let e = open_store(&aws, "s3://bucket/lake", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("\"s3://bucket/lake\" (S3) needs the AWS services"),
            "{e}"
        );
        assert!(e.contains("--features coordinator/aws,worker/aws"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert!(open_store(&aws, dir.path().to_str().unwrap(), None).is_ok());
        let s = load(BASE, &[]).unwrap();
        let e = FleetBackends::open(&s).await.unwrap_err().to_string();
        assert!(
            e.starts_with("the fleet (SQS queues, S3 storage) needs"),
            "{e}"
        );
    }

    const BASE: &str = r#"
[queues]
tasks_url = "http://127.0.0.1:5000/000000000000/tasks"
results_url = "http://127.0.0.1:5000/000000000000/results"
[storage]
files = "s3://bucket/tributary"
lake = "s3://bucket/lake"
[worker]
concurrency = 2
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<FleetSettings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fleet.toml");
        std::fs::write(&f, text).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FleetSettings::load(Some(&f), &env).map(|(s, _)| s)
    }

    #[test]
    fn the_example_fleet_file_is_valid() {
        let f = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet.toml");
        let (s, _) = FleetSettings::load(Some(&f), &HashMap::new()).unwrap();
        assert_eq!(s.warehouse.kind, WarehouseKind::RedshiftData);
        assert_eq!(s.coordinator.pipelines.len(), 2);
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = load(
            BASE,
            &[
                ("TRIBUTARY_WORKER_CONCURRENCY", "3"),
                ("TRIBUTARY_QUEUES_VISIBILITY_TIMEOUT_SECS", "30"),
                ("TRIBUTARY_WAREHOUSE_KIND", "redshift-data"),
                ("TRIBUTARY_WAREHOUSE_REDSHIFT_WORKGROUP_NAME", "wg"),
                ("TRIBUTARY_WAREHOUSE_REDSHIFT_DATABASE", "dev"),
                (
                    "TRIBUTARY_WAREHOUSE_REDSHIFT_IAM_ROLE",
                    "arn:aws:iam::1:role/r",
                ),
                ("TRIBUTARY_FAULT", "ignored: not a settings section"),
                (
                    "TRIBUTARY_COORDINATOR_PIPELINES",
                    "web.toml=0 */15 * * * *; pos.toml",
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.coordinator.pipelines.len(), 2);
        assert_eq!(
            s.coordinator.pipelines[0].cron.as_deref(),
            Some("0 */15 * * * *")
        );
        assert_eq!(s.coordinator.pipelines[1].file, PathBuf::from("pos.toml"));
        assert_eq!(s.coordinator.pipelines[1].cron, None);
        assert_eq!(s.worker.concurrency, 3);
        assert_eq!(s.queues.visibility_timeout_secs, 30);
        assert_eq!(s.warehouse.kind, WarehouseKind::RedshiftData);
        assert_eq!(
            s.warehouse.redshift.unwrap().workgroup_name.as_deref(),
            Some("wg")
        );
    }

    #[test]
    fn a_bad_value_from_the_environment_names_the_variable() {
        let e = load(BASE, &[("TRIBUTARY_WORKER_CONCURRENCY", "two")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TRIBUTARY_WORKER_CONCURRENCY: worker.concurrency"),
            "{e}"
        );
        assert!(!e.contains("fleet.toml"), "{e}");
        let e = load(BASE, &[("TRIBUTARY_WORKER_CONCURRENCY", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("TRIBUTARY_WORKER_CONCURRENCY: "), "{e}");
        let e = load(BASE, &[("TRIBUTARY_QUEUES_TASKS_URL", "tasks")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("TRIBUTARY_QUEUES_TASKS_URL: "), "{e}");
        let e = load(
            BASE,
            &[("TRIBUTARY_WAREHOUSE_REDSHIFT_POLL_MAX_MS", "soon")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "TRIBUTARY_WAREHOUSE_REDSHIFT_POLL_MAX_MS: warehouse.redshift.poll_max_ms"
            ),
            "{e}"
        );
        // A bad value in the file is still reported against the file.
        let e = load(
            &BASE.replace("concurrency = 2", "concurrency = \"two\""),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fleet.toml"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let e = load(BASE, &[("TRIBUTARY_WORKER_CONCURENCY", "3")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");
        let e = load(
            &BASE.replace("http://127.0.0.1:5000/000000000000/tasks", "tasks"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("fleet.toml") && e.contains("queues.tasks_url"),
            "{e}"
        );
        let e = load(BASE, &[("TRIBUTARY_WORKER_MAX_MEMORY_MB", "600")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_memory_mb"), "{e}");
        let e = load(
            &format!("{BASE}\n[coordinator]\npipelines = [{{ file = \"p.toml\", cron = \"61 * * * *\" }}]\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cron") && e.contains("p.toml"), "{e}");
        let e = load(BASE, &[("TRIBUTARY_WAREHOUSE_KIND", "postgres")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("warehouse.postgres"), "{e}");
    }
}
