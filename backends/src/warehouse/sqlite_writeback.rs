//! The warehouse file's new pages sent to the disk while a load still inserts, so that its
//! commit's sync waits for the last of them only.
//!
//! A bulk load writes the whole new table into the file as SQLite's page cache spills: the
//! kernel keeps those pages dirty in memory (nothing forces them out before its background
//! threshold, a tenth of free memory), and the commit's `fsync` then writes all of them while the
//! load waits, the disk busy and both cores idle. On the reference workload's 868,395 rows that
//! was 326 MB and ~0.76 s of a ~3 s load (`strace -T`, BENCHMARKS.md, stop 34). [`Writeback`]
//! asks the kernel every [`INTERVAL`] to start writing the file's dirty pages
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: it starts the writes and does not wait for them),
//! on a thread of its own, through a descriptor of its own on the same file: the writes overlap
//! the inserts instead of following them.
//!
//! The descriptor is never closed ([`open_for_writeback`] keeps one per file for the process's
//! life): closing any descriptor of a file drops every POSIX lock the process holds on it,
//! SQLite's included (SQLite's "how to corrupt" page, 2.2), so one closed while a connection of
//! this process is in a load would let another process read or write the file under it.
//!
//! Durability is unchanged: the pages are those SQLite has already written into the file (after
//! syncing its journal, which is what lets it spill them), which the kernel may write back at
//! any moment anyway; the commit still syncs the file and the journal before the load is
//! recorded. Where the call is not available (not Linux, a file system without it), nothing is
//! done and the commit writes everything, as before.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// How often the file's dirty pages are handed to the disk while a load runs.
pub(super) const INTERVAL: Duration = Duration::from_millis(50);

/// Writes a file's dirty pages back in the background until dropped (see the module's comment).
pub(super) struct Writeback {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writeback {
    /// Starts handing `file`'s dirty pages to the disk every `every`. If the thread cannot be
    /// started, the load goes on without it (said at debug level).
    pub(super) fn start(file: &Arc<File>, every: Duration) -> Writeback {
        let (stop, stopped) = mpsc::channel::<()>();
        let file = Arc::clone(file);
        let thread = std::thread::Builder::new()
            .name("warehouse-writeback".into())
            .spawn(move || write_back_until(&file, every, &stopped));
        match thread {
            Ok(t) => Writeback {
                stop: Some(stop),
                thread: Some(t),
            },
            Err(e) => {
                tracing::debug!(error = %e, "no early writeback of the warehouse file");
                Writeback {
                    stop: None,
                    thread: None,
                }
            }
        }
    }

    /// Stops the thread and waits for it; the times it handed the file's pages to the disk.
    pub(super) fn finish(mut self) -> u64 {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> u64 {
        drop(self.stop.take());
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The warehouse file at `path` opened for [`Writeback`]: one descriptor per file (device and
/// inode) for the life of the process, never closed (see the module's comment); `None` (said at
/// debug level) if it cannot be opened, as for an in-memory database, or off Linux.
pub(super) fn open_for_writeback(path: &Path) -> Option<Arc<File>> {
    match kept_open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e,
                "no early writeback of the warehouse file");
            None
        }
    }
}

#[cfg(target_os = "linux")]
fn kept_open(path: &Path) -> std::io::Result<Arc<File>> {
    use std::collections::BTreeMap;
    use std::collections::btree_map::Entry;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    static OPEN: Mutex<BTreeMap<(u64, u64), Arc<File>>> = Mutex::new(BTreeMap::new());
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = open.get(&id(std::fs::metadata(path)?)) {
        return Ok(Arc::clone(kept));
    }
    let file = File::open(path)?;
    // A descriptor once opened is never closed, not even on these unlikely paths (the file
    // replaced between the two looks): its close would drop the process's locks on the file.
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            std::mem::forget(file);
            return Err(e);
        }
    };
    Ok(match open.entry(id(meta)) {
        Entry::Occupied(kept) => {
            std::mem::forget(file);
            Arc::clone(kept.get())
        }
        Entry::Vacant(room) => Arc::clone(room.insert(Arc::new(file))),
    })
}

#[cfg(not(target_os = "linux"))]
fn kept_open(_: &Path) -> std::io::Result<Arc<File>> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Starts the write-back of `file`'s dirty pages every `every` until `stopped` says stop (its
/// sender dropped) or a call fails; the number of calls that succeeded.
fn write_back_until(file: &File, every: Duration, stopped: &mpsc::Receiver<()>) -> u64 {
    let mut done = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        if let Err(e) = start_writing(file) {
            tracing::debug!(error = %e, "early writeback of the warehouse file stopped");
            return done;
        }
        done += 1;
    }
    done
}

/// Asks the kernel to start writing every dirty page of `file` (without waiting for them).
#[cfg(target_os = "linux")]
fn start_writing(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call (`file` is borrowed); offset 0 and length 0
    // mean the whole file; the call reads and writes no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writing(_: &File) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_being_written_is_handed_to_the_disk_until_the_writeback_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut f = File::create(&path).unwrap();
        let pages = open_for_writeback(&path).unwrap();
        let wb = Writeback::start(&pages, Duration::from_millis(5));
        for _ in 0..20 {
            f.write_all(&[7u8; 64 << 10]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let calls = wb.finish();
        assert!(calls >= 3, "{calls} calls in ~100 ms at one per 5 ms");
        assert_eq!(
            Arc::strong_count(&pages),
            2,
            "the thread's copy is gone, the kept one not"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20 * (64 << 10));
    }

    #[test]
    fn a_file_that_cannot_be_opened_gives_no_writeback() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_for_writeback(&dir.path().join("missing.db")).is_none());
        assert!(open_for_writeback(Path::new("")).is_none());
    }

    /// Whether another process can start writing the SQLite file at `path` right now.
    fn another_process_can_write(path: &Path) -> bool {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n\
                 try:\n    c.execute('BEGIN IMMEDIATE'); print('wrote')\n\
                 except sqlite3.OperationalError as e:\n    print(e)",
            ])
            .arg(path)
            .output()
            .expect("python3 runs");
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(said == "wrote" || said.contains("locked"), "{said:?}");
        said == "wrote"
    }

    #[test]
    fn the_writeback_descriptor_is_never_closed_so_the_loads_lock_holds_for_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .unwrap();
        let pages = open_for_writeback(&path).unwrap();
        Writeback::start(&pages, Duration::from_millis(1)).finish();
        drop(pages);
        let again = open_for_writeback(&path).unwrap();
        drop(again);
        assert!(!another_process_can_write(&path), "the load's lock held");
        // What keeping the descriptor avoids: closing any descriptor of the file drops
        // SQLite's lock in the middle of its transaction.
        drop(File::open(&path).unwrap());
        assert!(
            another_process_can_write(&path),
            "a closed descriptor took the lock"
        );
        conn.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn one_descriptor_is_kept_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        File::create(&a).unwrap();
        File::create(&b).unwrap();
        let first = open_for_writeback(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &open_for_writeback(&a).unwrap()));
        assert!(!Arc::ptr_eq(&first, &open_for_writeback(&b).unwrap()));
    }

    #[test]
    fn a_descriptor_the_call_refuses_ends_the_loop_at_its_first_failure() {
        // A pipe: sync_file_range answers ESPIPE.
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just opened by pipe() and are owned here.
        let (r, _w) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        let (stop, stopped) = mpsc::channel::<()>();
        // The loop ends at the refusal, long before it is told to stop: were it to go on, the
        // call would keep failing until the stop two seconds later.
        let looping = std::thread::spawn(move || {
            let at = std::time::Instant::now();
            let calls = write_back_until(&r, Duration::from_millis(1), &stopped);
            (calls, at.elapsed())
        });
        std::thread::sleep(Duration::from_secs(2));
        drop(stop);
        let (calls, took) = looping.join().unwrap();
        assert_eq!(calls, 0);
        assert!(
            took < Duration::from_secs(2),
            "the loop went on for {took:?}"
        );
    }
}
