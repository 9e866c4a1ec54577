//! Object stores: where raw inputs are read from and where Parquet, quarantine files and manifests
//! are written.
//!
//! Keys are `/`-separated relative paths. Writes are atomic (a reader sees the old object or the new
//! one, never half of one), and a write of an existing key replaces it: that is what makes a redone
//! shard overwrite its own outputs.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use protocol::{ByteRange, ObjectRef};

use crate::{BackendError, Result};

#[cfg(feature = "aws")]
mod s3;
#[cfg(feature = "aws")]
pub use s3::{MULTIPART_PART_BYTES, S3Store, parse_s3_url};

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// A human-readable location (`file:///…`, `s3://bucket/prefix`) for messages.
    fn describe(&self) -> String;
    /// Writes `data` at `key`, replacing any existing object, atomically.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;
    /// Writes `data` at `key` only if no object is there; returns whether it wrote. Atomic: of
    /// two racing writers exactly one wins.
    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool>;
    /// Uploads a local file to `key` (the file may be consumed). Returns its size.
    async fn put_file(&self, key: &str, path: &Path) -> Result<u64>;
    async fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Size of the object, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectRef>>;
    /// [`ObjectStore::list`] with each object's version: what changes when the object is
    /// rewritten (S3: its ETag; a local file: its modification time to the nanosecond).
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .map(|object| ObjectVersion {
                object,
                version: String::new(),
            })
            .collect())
    }
    /// Deletes `key`; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// A blocking streaming reader over the object or a byte range of it (the range may run past
    /// the end of the object; the reader then stops at the end). Used from CPU threads.
    fn open_read(&self, key: &str, range: Option<ByteRange>) -> Result<Box<dyn Read + Send>>;
    /// A local path for the object if the store is a local folder (lets embedded tools read files
    /// in place).
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// The object's `s3://` URL, when the store is S3 (what Redshift's COPY reads).
    fn url(&self, _key: &str) -> Option<String> {
        None
    }
    /// Moves `from` to `to` for keeping: S3 copies it server-side into `storage_class` (e.g.
    /// `GLACIER_IR`) and deletes the original; other stores copy and delete. Moving an object
    /// that is gone (moved by an earlier, interrupted attempt) is not an error.
    async fn archive(&self, from: &str, to: &str, _storage_class: Option<&str>) -> Result<()> {
        match self.get(from).await {
            Ok(data) => self.put(to, data).await?,
            Err(BackendError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.delete(from).await
    }
    /// Checks at start-up that the store exists and answers (S3: `HeadBucket`), so a wrong
    /// bucket fails the process before any work is accepted.
    async fn check_access(&self) -> Result<()> {
        Ok(())
    }
}

/// A listed object and its version (see [`ObjectStore::list_versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub object: ObjectRef,
    pub version: String,
}

impl ObjectVersion {
    /// What identifies this version of the object: its size and version. An object rewritten
    /// with the same key has another identity, even in the same second.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.object.size, self.version)
    }
}

/// A folder on local disk.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| BackendError::io(root.display(), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| BackendError::io(root.display(), e))?;
        Ok(LocalStore { root })
    }

    /// Opens an existing folder without creating it (for sources).
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        let root = root
            .canonicalize()
            .map_err(|e| BackendError::io(root.display(), e))?;
        if !root.is_dir() {
            return Err(BackendError::io(
                root.display(),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        if key.is_empty() {
            return Err(BackendError::InvalidKey {
                key: key.into(),
                reason: "empty key".into(),
            });
        }
        for c in rel.components() {
            if !matches!(c, Component::Normal(_)) {
                return Err(BackendError::InvalidKey {
                    key: key.into(),
                    reason: "keys are relative paths without '.', '..' or a leading '/'".into(),
                });
            }
        }
        Ok(self.root.join(rel))
    }

    fn tmp_path(path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    }
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; best effort on filesystems that do not support it.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync of the folder.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| BackendError::io(dir.display(), e))?;
    let tmp = LocalStore::tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        BackendError::io(path.display(), e)
    })?;
    sync_dir(dir);
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        atomic_write(&self.path(key)?, &data)
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| BackendError::io(dir.display(), e))?;
        let tmp = Self::tmp_path(&path);
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()
        };
        write().map_err(|e| BackendError::io(tmp.display(), e))?;
        // link(2) fails if the target exists: the one atomic "create if absent" of POSIX.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(BackendError::io(path.display(), e)),
        }
    }

    async fn put_file(&self, key: &str, src: &Path) -> Result<u64> {
        let dst = self.path(key)?;
        let dir = dst.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| BackendError::io(dir.display(), e))?;
        let f = fs::File::open(src).map_err(|e| BackendError::io(src.display(), e))?;
        f.sync_all()
            .map_err(|e| BackendError::io(src.display(), e))?;
        let size = f
            .metadata()
            .map_err(|e| BackendError::io(src.display(), e))?
            .len();
        if fs::rename(src, &dst).is_err() {
            // Different filesystem: copy to a temp file beside the target, then rename.
            let tmp = Self::tmp_path(&dst);
            fs::copy(src, &tmp).map_err(|e| BackendError::io(tmp.display(), e))?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| BackendError::io(tmp.display(), e))?;
            fs::rename(&tmp, &dst).map_err(|e| BackendError::io(dst.display(), e))?;
            let _ = fs::remove_file(src);
        }
        sync_dir(dir);
        Ok(size)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path(key)?;
        fs::read(&p).map_err(|e| self.not_found_or_io(key, &p, e))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let p = self.path(key)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(p.display(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectRef>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackendError::io(dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| BackendError::io(dir.display(), e))?;
                let path = entry.path();
                let rel = path.strip_prefix(&self.root).expect("under root");
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue; // temp files of in-flight writes, hidden files
                }
                let ft = entry
                    .file_type()
                    .map_err(|e| BackendError::io(path.display(), e))?;
                if ft.is_dir() {
                    // Only descend where the prefix can still match.
                    let dir_key = format!("{key}/");
                    if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                        stack.push(path);
                    }
                } else if key.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| BackendError::io(path.display(), e))?
                        .len();
                    out.push(ObjectRef { key, size });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>> {
        let mut out = Vec::new();
        for object in self.list(prefix).await? {
            let path = self.path(&object.key)?;
            let meta = fs::metadata(&path).map_err(|e| BackendError::io(path.display(), e))?;
            let nanos = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            // The inode too: a file replaced by a rename (as writers of whole files do, and this
            // store's own `put`) is another version even within one tick of the file clock.
            use std::os::unix::fs::MetadataExt;
            out.push(ObjectVersion {
                object,
                version: format!("mtime:{nanos}:ino:{}", meta.ino()),
            });
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(p.display(), e)),
        }
    }

    fn open_read(&self, key: &str, range: Option<ByteRange>) -> Result<Box<dyn Read + Send>> {
        let p = self.path(key)?;
        let mut f = fs::File::open(&p).map_err(|e| self.not_found_or_io(key, &p, e))?;
        match range {
            None => Ok(Box::new(f)),
            Some(r) => {
                f.seek(SeekFrom::Start(r.start))
                    .map_err(|e| BackendError::io(p.display(), e))?;
                Ok(Box::new(f.take(r.len())))
            }
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }
}

impl LocalStore {
    fn not_found_or_io(&self, key: &str, p: &Path, e: std::io::Error) -> BackendError {
        if e.kind() == std::io::ErrorKind::NotFound {
            BackendError::NotFound {
                store: self.describe(),
                key: key.into(),
            }
        } else {
            BackendError::io(p.display(), e)
        }
    }
}

/// The shared test suite every [`ObjectStore`] implementation must pass.
pub mod suite {
    use super::*;

    pub async fn run_all(store: &dyn ObjectStore) {
        put_get_replace(store).await;
        ranged_reads(store).await;
        listing_is_sorted_and_prefixed(store).await;
        a_rewritten_object_lists_with_another_version(store).await;
        missing_objects(store).await;
        put_if_absent_claims_once(store).await;
        put_file_moves_content(store).await;
        bad_keys_are_refused(store).await;
        archive_moves_once(store).await;
    }

    pub async fn archive_moves_once(store: &dyn ObjectStore) {
        store
            .put("suite/raw/r1/s0.zst", b"rows".to_vec())
            .await
            .unwrap();
        store
            .archive(
                "suite/raw/r1/s0.zst",
                "suite/archive/raw/r1/s0.zst",
                Some("STANDARD_IA"),
            )
            .await
            .unwrap();
        assert_eq!(store.head("suite/raw/r1/s0.zst").await.unwrap(), None);
        assert_eq!(
            store.get("suite/archive/raw/r1/s0.zst").await.unwrap(),
            b"rows"
        );
        // A repeat after an interrupted attempt: the source is gone, nothing happens.
        store
            .archive("suite/raw/r1/s0.zst", "suite/archive/raw/r1/s0.zst", None)
            .await
            .unwrap();
        assert_eq!(
            store.get("suite/archive/raw/r1/s0.zst").await.unwrap(),
            b"rows"
        );
    }

    pub async fn put_get_replace(store: &dyn ObjectStore) {
        store
            .put("suite/a/one.txt", b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(store.get("suite/a/one.txt").await.unwrap(), b"hello");
        store
            .put("suite/a/one.txt", b"replaced".to_vec())
            .await
            .unwrap();
        assert_eq!(store.get("suite/a/one.txt").await.unwrap(), b"replaced");
        assert_eq!(store.head("suite/a/one.txt").await.unwrap(), Some(8));
    }

    /// Reads through the blocking reader (as worker CPU threads do). Needs a multi-threaded
    /// runtime: a remote store drives its requests on the runtime while this thread blocks.
    fn read_all(store: &dyn ObjectStore, key: &str, range: Option<ByteRange>) -> String {
        tokio::task::block_in_place(|| {
            let mut s = String::new();
            store
                .open_read(key, range)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        })
    }

    pub async fn ranged_reads(store: &dyn ObjectStore) {
        store
            .put("suite/r.bin", b"0123456789".to_vec())
            .await
            .unwrap();
        let r = |start, end| Some(ByteRange { start, end });
        assert_eq!(read_all(store, "suite/r.bin", r(2, 5)), "234");
        assert_eq!(read_all(store, "suite/r.bin", r(7, 100)), "789");
        assert_eq!(read_all(store, "suite/r.bin", r(10, 20)), "");
        assert_eq!(read_all(store, "suite/r.bin", None), "0123456789");
    }

    pub async fn listing_is_sorted_and_prefixed(store: &dyn ObjectStore) {
        for k in [
            "suite/l/b.txt",
            "suite/l/a.txt",
            "suite/l/sub/c.txt",
            "suite/lx.txt",
        ] {
            store.put(k, k.as_bytes().to_vec()).await.unwrap();
        }
        let keys: Vec<_> = store
            .list("suite/l/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            ["suite/l/a.txt", "suite/l/b.txt", "suite/l/sub/c.txt"]
        );
        let all = store.list("suite/l").await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].size, "suite/l/a.txt".len() as u64);
    }

    /// Incremental file runs tell a rewritten object from the one they loaded by its version,
    /// even when it keeps its size and is rewritten within the same second.
    pub async fn a_rewritten_object_lists_with_another_version(store: &dyn ObjectStore) {
        store.put("suite/v/a.txt", b"first".to_vec()).await.unwrap();
        let before = store.list_versions("suite/v/").await.unwrap();
        store.put("suite/v/a.txt", b"again".to_vec()).await.unwrap();
        let after = store.list_versions("suite/v/").await.unwrap();
        assert_eq!((before.len(), after.len()), (1, 1));
        assert_eq!(before[0].object, after[0].object, "same key and size");
        assert!(!before[0].version.is_empty(), "{before:?}");
        assert_ne!(
            before[0].identity(),
            after[0].identity(),
            "{before:?} {after:?}"
        );
    }

    pub async fn put_if_absent_claims_once(store: &dyn ObjectStore) {
        assert!(
            store
                .put_if_absent("suite/claim", b"first".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !store
                .put_if_absent("suite/claim", b"second".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(store.get("suite/claim").await.unwrap(), b"first");
    }

    pub async fn missing_objects(store: &dyn ObjectStore) {
        assert_eq!(store.head("suite/none").await.unwrap(), None);
        let err = store.get("suite/none").await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("suite/none"));
        store.delete("suite/none").await.unwrap();
        store.put("suite/d", vec![1]).await.unwrap();
        store.delete("suite/d").await.unwrap();
        assert_eq!(store.head("suite/d").await.unwrap(), None);
    }

    pub async fn put_file_moves_content(store: &dyn ObjectStore) {
        let dir = std::env::temp_dir().join(format!("tributary-suite-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("up.bin");
        fs::write(&f, vec![7u8; 1000]).unwrap();
        assert_eq!(store.put_file("suite/up/file.bin", &f).await.unwrap(), 1000);
        assert_eq!(
            store.get("suite/up/file.bin").await.unwrap(),
            vec![7u8; 1000]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    pub async fn bad_keys_are_refused(store: &dyn ObjectStore) {
        for k in ["", "../escape", "/abs/path", "a/../../b"] {
            assert!(store.put(k, vec![]).await.is_err(), "key {k:?} accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        suite::run_all(&store).await;
    }

    #[tokio::test]
    async fn temp_files_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        fs::write(dir.path().join(".x.tmp-1"), b"partial").unwrap();
        store.put("real", b"x".to_vec()).await.unwrap();
        let keys: Vec<_> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["real"]);
    }
}
