//! What a local run (`coordinator run`, a backfill's windows) reads, resolved before anything is
//! written: a local folder or file, an `s3://bucket/prefix` location, or a database or API that
//! the workers extract; and the objects a new run of a files source takes.
//!
//! An S3 location is read with the AWS chain's credentials and region; `AWS_ENDPOINT_URL` (or
//! `AWS_ENDPOINT_URL_S3`) points it at an S3-compatible server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use backends::object_store::{LocalStore, ObjectStore};
use pipeline::{Compression, Format, Pipeline};
use protocol::ObjectRef;

/// What a local run reads.
pub(crate) enum LocalSource {
    /// A folder (listed with the glob), or one file of it.
    Folder {
        dir: PathBuf,
        single: Option<String>,
    },
    /// An `s3://bucket/prefix` location, listed with the glob.
    S3 {
        url: String,
        store: Arc<dyn ObjectStore>,
    },
    /// A database or API that the workers extract into the raw zone.
    Extracted,
}

impl LocalSource {
    /// Resolves the pipeline's source (or `--source`): an unreadable folder, an unbuilt kind, an
    /// unset connection or credential variable is refused here, before anything is written.
    pub(crate) async fn resolve(p: &Pipeline, over: Option<&Path>) -> anyhow::Result<LocalSource> {
        if p.file.source.kind.extracts() {
            if over.is_some() {
                bail!(
                    "{}: --source applies to file sources; this pipeline reads {}",
                    p.path,
                    crate::sources::describe(p)
                );
            }
            crate::sources::check_source(p)?;
            return Ok(LocalSource::Extracted);
        }
        let location = &p.file.source.location;
        if over.is_none() && location.starts_with("s3://") {
            return Ok(LocalSource::S3 {
                url: location.clone(),
                store: s3_store(location).await?,
            });
        }
        let (dir, single) = resolve_folder(p, over)?;
        Ok(LocalSource::Folder {
            dir: dir.canonicalize()?,
            single,
        })
    }

    /// The source as run records name it (a resumed run must read the same).
    pub(crate) fn describe(&self, p: &Pipeline) -> String {
        match self {
            LocalSource::Folder { dir, .. } => dir.display().to_string(),
            LocalSource::S3 { url, .. } => url.clone(),
            LocalSource::Extracted => crate::sources::describe(p),
        }
    }

    /// The store the run's shards read: the folder, the S3 location, or (database and API
    /// shards) the raw zone in the data dir's `files`.
    pub(crate) fn store(
        &self,
        files: &Arc<dyn ObjectStore>,
    ) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(match self {
            LocalSource::Folder { dir, .. } => Arc::new(LocalStore::open_existing(dir)?),
            LocalSource::S3 { store, .. } => store.clone(),
            LocalSource::Extracted => files.clone(),
        })
    }

    /// The objects a new run takes (see [`source_objects`]); `keep` narrows them (a backfill
    /// window).
    pub(crate) async fn objects(
        &self,
        p: &Pipeline,
        compiled: &worker::plan::Plan,
        keep: &dyn Fn(&ObjectRef) -> bool,
    ) -> anyhow::Result<Vec<ObjectRef>> {
        match self {
            LocalSource::Folder { dir, single } => {
                let store = LocalStore::open_existing(dir)?;
                let shown = dir.display().to_string();
                source_objects(p, compiled, &store, &shown, single.as_deref(), keep).await
            }
            LocalSource::S3 { url, store } => {
                source_objects(p, compiled, &**store, url, None, keep).await
            }
            LocalSource::Extracted => {
                bail!("{}: a database or API source has no objects", p.path)
            }
        }
    }
}

/// The S3 store of an `s3://bucket/prefix` location, from the AWS chain.
async fn s3_store(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let aws = runtime::settings::AwsClients::load(&backends::aws::AwsSettings::default()).await;
    let store = runtime::settings::open_store(&aws, url, None)
        .with_context(|| format!("source.location {url:?}"))?;
    store
        .check_access()
        .await
        .with_context(|| format!("source.location {url:?} cannot be read"))?;
    Ok(store)
}

/// A folder (listed with the glob) or one file.
fn resolve_folder(p: &Pipeline, over: Option<&Path>) -> anyhow::Result<(PathBuf, Option<String>)> {
    let loc = match over {
        Some(o) => o.to_path_buf(),
        None => p.resolve(&p.file.source.location),
    };
    let meta = std::fs::metadata(&loc).with_context(|| {
        format!(
            "source {} (source.location in {}) cannot be read",
            loc.display(),
            p.path
        )
    })?;
    if !meta.is_file() {
        return Ok((loc, None));
    }
    let dir = loc
        .parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let name = loc
        .file_name()
        .context("source has no file name")?
        .to_string_lossy()
        .into_owned();
    Ok((dir, Some(name)))
}

/// Whether an object may be split into byte ranges: uncompressed NDJSON, or CSV the pipeline
/// says is splittable.
pub(crate) fn splittable(p: &Pipeline) -> impl Fn(&ObjectRef) -> bool + '_ {
    move |o: &ObjectRef| {
        let src = &p.file.source;
        let compressed_name = [".gz", ".zst", ".zstd", ".gzip"]
            .iter()
            .any(|e| o.key.ends_with(e));
        let format_ok = match src.format() {
            Format::Ndjson => true,
            Format::Csv => src.csv.splittable,
            _ => false,
        };
        format_ok
            && !compressed_name
            && matches!(src.compression, Compression::None | Compression::Auto)
    }
}

/// Which objects a run takes: all, or those whose key's time is in the backfill window.
pub(crate) fn window_filter(
    p: &Pipeline,
    window: Option<crate::backfill::Window>,
) -> anyhow::Result<impl Fn(&ObjectRef) -> bool> {
    let template = match (window, &p.file.source.time_template) {
        (None, _) => None,
        (Some(_), None) => bail!("{}: a window needs [source] time_template", p.path),
        (Some(_), Some(t)) => {
            Some(pipeline::template::TimeTemplate::new(t).map_err(anyhow::Error::msg)?)
        }
    };
    Ok(move |o: &ObjectRef| match (&template, window) {
        (Some(t), Some(w)) => t.time_of(&o.key).is_some_and(|at| w.contains(at)),
        _ => true,
    })
}

/// The objects a local run of `p` reads: its location listed with its glob.
pub(crate) async fn list_source(p: &Pipeline) -> anyhow::Result<Vec<ObjectRef>> {
    let compiled = worker::plan::Plan::build(p)?;
    LocalSource::resolve(p, None)
        .await?
        .objects(p, &compiled, &|_| true)
        .await
}

/// The source objects of a new run (one file, or what the glob matches and `keep` keeps),
/// refusing an empty source and — before anything runs — a CSV header that lacks a declared
/// column.
async fn source_objects(
    pipeline: &Pipeline,
    compiled: &worker::plan::Plan,
    store: &dyn ObjectStore,
    shown: &str,
    single: Option<&str>,
    keep: &dyn Fn(&ObjectRef) -> bool,
) -> anyhow::Result<Vec<ObjectRef>> {
    let glob = globset::Glob::new(&pipeline.file.source.glob)?.compile_matcher();
    let objects: Vec<ObjectRef> = match single {
        Some(n) => store
            .list(n)
            .await?
            .into_iter()
            .filter(|o| o.key == n)
            .collect(),
        None => store
            .list("")
            .await?
            .into_iter()
            .filter(|o| glob.is_match(&o.key) && keep(o))
            .collect(),
    };
    if objects.is_empty() {
        bail!(
            "no source objects: nothing under {shown} matches glob {:?}",
            pipeline.file.source.glob
        );
    }
    // A declared CSV column missing from a header fails the run here, naming both (the header
    // read blocks: off the async threads).
    tokio::task::block_in_place(|| {
        worker::engine::check_csv_headers(
            compiled,
            &pipeline.file.source,
            store,
            objects.iter().map(|o| o.key.as_str()),
        )
    })
    .with_context(|| format!("source {shown}"))?;
    Ok(objects)
}
