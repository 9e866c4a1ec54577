//! Amazon S3 behind the [`ObjectStore`] trait.
//!
//! * Reads stream in ranged windows (`Range: bytes=a-b`), one window ahead, so a worker never
//!   holds more than two windows of an object in memory however large the object is.
//! * Files over the multipart threshold are uploaded in parts (`CreateMultipartUpload`,
//!   `UploadPart`, `CompleteMultipartUpload`; aborted on failure so no parts are left behind).
//! * Listing follows continuation tokens.
//! * With a KMS key configured every write asks for SSE-KMS with that key.
//! * Every error goes through [`crate::aws::classify`]: throttling (`SlowDown`, 503) and
//!   unreachable endpoints are retryable (the SDK already retried them with backoff), access
//!   denied or a missing bucket are not.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use protocol::{ByteRange, ObjectRef};
use tokio::io::AsyncReadExt;

use super::ObjectStore;
use crate::aws::{classify, error_code, http_status};
use crate::{BackendError, Result};

/// Size of one ranged read.
const READ_WINDOW: u64 = 8 << 20;
/// Files larger than this are uploaded in parts of this size.
pub const MULTIPART_PART_BYTES: u64 = 16 << 20;

/// A bucket and key prefix (`s3://bucket/prefix/`).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    kms_key_id: Option<String>,
    part_bytes: u64,
    runtime: tokio::runtime::Handle,
}

/// Splits `s3://bucket/prefix` into its parts.
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| BackendError::InvalidKey {
            key: url.into(),
            reason: "not an s3:// URL".into(),
        })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(BackendError::InvalidKey {
            key: url.into(),
            reason: "no bucket name".into(),
        });
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl S3Store {
    /// A store over `s3://bucket/prefix`. Must be called inside a tokio runtime (blocking reads
    /// are driven on it).
    pub fn new(client: Client, url: &str, kms_key_id: Option<String>) -> Result<Self> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        Ok(S3Store {
            client,
            bucket,
            prefix,
            kms_key_id,
            part_bytes: MULTIPART_PART_BYTES,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Sets the multipart part size (tests use small parts; S3 needs at least 5 MiB).
    pub fn with_part_bytes(mut self, bytes: u64) -> Self {
        self.part_bytes = bytes.max(5 << 20);
        self
    }

    /// Fails with a clear error if the bucket does not exist or cannot be reached.
    pub async fn check(&self) -> Result<()> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| {
                let missing = http_status(&e) == Some(404);
                let mut err = classify("S3", "HeadBucket", &self.describe(), e);
                if missing && let BackendError::Aws { detail, .. } = &mut err {
                    detail.push_str(" (the bucket does not exist)");
                }
                err
            })?;
        Ok(())
    }

    fn full_key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == "..") {
            return Err(BackendError::InvalidKey {
                key: key.into(),
                reason: "keys are relative paths without '..' or a leading '/'".into(),
            });
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn url_of(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    async fn put_bytes(&self, full: &str, data: Vec<u8>) -> Result<()> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .body(ByteStream::from(data));
        if let Some(k) = &self.kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        req.send()
            .await
            .map_err(|e| classify("S3", "PutObject", &self.url_of(full), e))?;
        Ok(())
    }

    async fn multipart(&self, full: &str, path: &Path, size: u64) -> Result<()> {
        let url = self.url_of(full);
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full);
        if let Some(k) = &self.kms_key_id {
            create = create
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| classify("S3", "CreateMultipartUpload", &url, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut f = tokio::fs::File::open(path)
                .await
                .map_err(|e| BackendError::io(path.display(), e))?;
            let mut parts = Vec::new();
            let mut sent = 0u64;
            let mut number = 1;
            while sent < size {
                let len = self.part_bytes.min(size - sent) as usize;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf)
                    .await
                    .map_err(|e| BackendError::io(path.display(), e))?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| classify("S3", "UploadPart", &url, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
                sent += len as u64;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("S3", "CompleteMultipartUpload", &url, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn get_range(&self, full: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(full);
        if let Some((a, b)) = range {
            req = req.range(format!("bytes={a}-{}", b - 1));
        }
        let out = match req.send().await {
            Ok(o) => o,
            Err(e) if error_code(&e).as_deref() == Some("NoSuchKey") => {
                return Err(BackendError::NotFound {
                    store: format!("s3://{}", self.bucket),
                    key: full.into(),
                });
            }
            // A range that starts at or past the end: nothing to read.
            Err(e) if http_status(&e) == Some(416) => return Ok(Vec::new()),
            Err(e) => return Err(classify("S3", "GetObject", &self.url_of(full), e)),
        };
        let body = out.body.collect().await.map_err(|e| BackendError::Aws {
            service: "S3".into(),
            op: "GetObject".into(),
            what: self.url_of(full),
            detail: format!("reading the body: {e}"),
            retryable: true,
            status: None,
        })?;
        Ok(body.into_bytes().to_vec())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn check_access(&self) -> Result<()> {
        self.check().await
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let full = self.full_key(key)?;
        self.put_bytes(&full, data).await
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let full = self.full_key(key)?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .body(ByteStream::from(data));
        if let Some(k) = &self.kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if http_status(&e) == Some(412) => Ok(false),
            Err(e) => Err(classify(
                "S3",
                "PutObject (If-None-Match)",
                &self.url_of(&full),
                e,
            )),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<u64> {
        let full = self.full_key(key)?;
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| BackendError::io(path.display(), e))?
            .len();
        if size > self.part_bytes {
            self.multipart(&full, path, size).await?;
        } else {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| BackendError::io(path.display(), e))?;
            self.put_bytes(&full, data).await?;
        }
        let _ = tokio::fs::remove_file(path).await;
        Ok(size)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let full = self.full_key(key)?;
        self.get_range(&full, None).await.map_err(|e| match e {
            BackendError::NotFound { store, .. } => BackendError::NotFound {
                store,
                key: key.into(),
            },
            other => other,
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify("S3", "HeadObject", &self.url_of(&full), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectRef>> {
        Ok(self
            .list_versions(prefix)
            .await?
            .into_iter()
            .map(|v| v.object)
            .collect())
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<super::ObjectVersion>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| classify("S3", "ListObjectsV2", &self.describe(), e))?;
            for o in resp.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                if rel.is_empty() || rel.ends_with('/') {
                    continue; // folder markers
                }
                out.push(super::ObjectVersion {
                    object: ObjectRef {
                        key: rel.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    },
                    version: format!("etag:{}", o.e_tag().unwrap_or_default()),
                });
            }
            match (resp.is_truncated(), resp.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(out)
    }

    async fn archive(&self, from: &str, to: &str, storage_class: Option<&str>) -> Result<()> {
        let (src, dst) = (self.full_key(from)?, self.full_key(to)?);
        if self.head(from).await?.is_none() {
            return Ok(());
        }
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&dst)
            .copy_source(format!("{}/{src}", self.bucket));
        if let Some(class) = storage_class {
            req = req.storage_class(aws_sdk_s3::types::StorageClass::from(class));
        }
        if let Some(k) = &self.kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(k);
        }
        req.send()
            .await
            .map_err(|e| classify("S3", "CopyObject", &self.url_of(&dst), e))?;
        self.delete(from).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify("S3", "DeleteObject", &self.url_of(&full), e))?;
        Ok(())
    }

    fn open_read(&self, key: &str, range: Option<ByteRange>) -> Result<Box<dyn Read + Send>> {
        let full = self.full_key(key)?;
        let (start, end) = match range {
            Some(r) => (r.start, Some(r.end)),
            None => (0, None),
        };
        // The object's size bounds the windows (a range may run past the end).
        let store = self.clone();
        let size = self
            .runtime
            .block_on(async { store.head(key).await })?
            .ok_or_else(|| BackendError::NotFound {
                store: self.describe(),
                key: key.into(),
            })?;
        let end = end.map_or(size, |e| e.min(size));
        Ok(Box::new(RangedReader {
            store: self.clone(),
            full,
            next: start,
            end,
            current: std::io::Cursor::new(Vec::new()),
            ahead: None,
        }))
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    fn url(&self, key: &str) -> Option<String> {
        self.full_key(key).ok().map(|k| self.url_of(&k))
    }
}

type Window = tokio::task::JoinHandle<Result<Vec<u8>>>;

/// A blocking reader over ranged GETs, with the next window already in flight.
struct RangedReader {
    store: S3Store,
    full: String,
    next: u64,
    end: u64,
    current: std::io::Cursor<Vec<u8>>,
    ahead: Option<Window>,
}

impl RangedReader {
    fn spawn_next(&mut self) -> Option<Window> {
        if self.next >= self.end {
            return None;
        }
        let a = self.next;
        let b = (a + READ_WINDOW).min(self.end);
        self.next = b;
        let store = self.store.clone();
        let full = self.full.clone();
        Some(
            self.store
                .runtime
                .spawn(async move { store.get_range(&full, Some((a, b))).await }),
        )
    }
}

impl Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = std::io::Read::read(&mut self.current, buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let window = match self.ahead.take() {
                Some(w) => w,
                None => match self.spawn_next() {
                    Some(w) => w,
                    None => return Ok(0),
                },
            };
            let data = self
                .store
                .runtime
                .block_on(window)
                .map_err(std::io::Error::other)?
                .map_err(|e| {
                    let kind = if e.is_retryable() {
                        std::io::ErrorKind::TimedOut
                    } else {
                        std::io::ErrorKind::Other
                    };
                    std::io::Error::new(kind, e.to_string())
                })?;
            if data.is_empty() {
                return Ok(0);
            }
            self.current = std::io::Cursor::new(data);
            self.ahead = self.spawn_next();
        }
    }
}
