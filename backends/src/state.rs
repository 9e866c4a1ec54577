//! Durable coordinator state: a small key-value store of documents (runs, shard plans, task
//! completions, load batches).
//!
//! Writes are atomic and durable before they return, so a coordinator killed at any point restarts
//! from exactly what it had recorded. `put_if_absent` is the one conditional write, used to claim
//! something once (a batch id) even if two coordinators race.

use std::fs;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::object_store::atomic_write;
use crate::{BackendError, Result};

#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    fn describe(&self) -> String;
    async fn put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Writes only if the key does not exist; returns whether it wrote.
    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    async fn delete(&self, key: &str) -> Result<()>;
}

/// State as files under a folder (one file per key).
#[derive(Debug)]
pub struct FileStateStore {
    root: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileStateStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| BackendError::io(root.display(), e))?;
        Ok(FileStateStore {
            root,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && key
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && !p.starts_with('.'));
        if !ok {
            return Err(BackendError::InvalidKey {
                key: key.into(),
                reason: "not a valid state key".into(),
            });
        }
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let p = self.path(key)?;
        let _g = self.lock.lock().await;
        atomic_write(&p, value)
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        let p = self.path(key)?;
        let _g = self.lock.lock().await;
        if p.exists() {
            return Ok(false);
        }
        atomic_write(&p, value)?;
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(key)?;
        match fs::read(&p) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io(p.display(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BackendError::io(dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| BackendError::io(dir.display(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let dk = format!("{key}/");
                    if dk.starts_with(prefix) || prefix.starts_with(&dk) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        let _g = self.lock.lock().await;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io(p.display(), e)),
        }
    }
}

/// State as objects in an [`ObjectStore`] (S3 in the fleet): survives the loss of the
/// coordinator's pod, needs no volume, and `put_if_absent` is S3's conditional write
/// (`If-None-Match: *`), so a claim is atomic even between two coordinators.
#[derive(Debug, Clone)]
pub struct ObjectStateStore {
    store: std::sync::Arc<dyn crate::object_store::ObjectStore>,
}

impl ObjectStateStore {
    pub fn new(store: std::sync::Arc<dyn crate::object_store::ObjectStore>) -> Self {
        ObjectStateStore { store }
    }

    fn check(key: &str) -> Result<()> {
        let ok = !key.is_empty()
            && key
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && !p.starts_with('.'));
        if ok {
            Ok(())
        } else {
            Err(BackendError::InvalidKey {
                key: key.into(),
                reason: "not a valid state key".into(),
            })
        }
    }
}

#[async_trait]
impl StateStore for ObjectStateStore {
    fn describe(&self) -> String {
        self.store.describe()
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        Self::check(key)?;
        self.store.put(key, value.to_vec()).await
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
        Self::check(key)?;
        self.store.put_if_absent(key, value.to_vec()).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Self::check(key)?;
        match self.store.get(key).await {
            Ok(v) => Ok(Some(v)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .store
            .list(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        Self::check(key)?;
        self.store.delete(key).await
    }
}

/// The shared test suite every [`StateStore`] implementation must pass. `reopen` must give a new
/// handle on the same durable state (what a restarted coordinator sees).
pub mod suite {
    use super::*;

    pub async fn run_all(store: &dyn StateStore, reopen: &dyn Fn() -> Box<dyn StateStore>) {
        store.put("runs/r1/run.json", b"{\"a\":1}").await.unwrap();
        store.put("runs/r1/tasks/s00001", b"done").await.unwrap();
        store.put("runs/r1/tasks/s00000", b"done").await.unwrap();
        store.put("runs/r2/run.json", b"{}").await.unwrap();
        assert_eq!(
            store.get("runs/r1/run.json").await.unwrap().unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(store.get("runs/none").await.unwrap(), None);
        assert_eq!(
            store.list("runs/r1/tasks/").await.unwrap(),
            ["runs/r1/tasks/s00000", "runs/r1/tasks/s00001"]
        );
        assert_eq!(store.list("runs/").await.unwrap().len(), 4);

        store.put("runs/r1/run.json", b"{\"a\":2}").await.unwrap();
        assert!(store.put_if_absent("claims/b1", b"one").await.unwrap());
        assert!(!store.put_if_absent("claims/b1", b"two").await.unwrap());

        let again = reopen();
        assert_eq!(
            again.get("runs/r1/run.json").await.unwrap().unwrap(),
            b"{\"a\":2}"
        );
        assert_eq!(again.get("claims/b1").await.unwrap().unwrap(), b"one");
        again.delete("runs/r2/run.json").await.unwrap();
        again.delete("runs/r2/run.json").await.unwrap();
        assert_eq!(store.get("runs/r2/run.json").await.unwrap(), None);
        assert!(store.put("../x", b"").await.is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_state_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store = FileStateStore::new(&root).unwrap();
        suite::run_all(&store, &|| Box::new(FileStateStore::new(&root).unwrap())).await;
    }

    #[tokio::test]
    async fn object_state_store_on_a_folder_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let open = move || {
            ObjectStateStore::new(std::sync::Arc::new(
                crate::object_store::LocalStore::new(&root).unwrap(),
            ))
        };
        let store = open();
        suite::run_all(&store, &|| Box::new(open())).await;
    }
}
