//! Giving the engine's freed memory back to the OS when a local run's shards have all ended.
//!
//! The coordinator allocates with mimalloc (`main.rs`). mimalloc keeps the pages a thread freed
//! and returns them to the OS only later, on that thread's own next calls into the allocator. In
//! a local run the engine's threads (rayon's pool) go idle when the last shard ends, still
//! holding the pages of its chunks, columns and row groups, while the warehouse load that
//! follows allocates its own on other threads: the two added up in the run's peak RSS.

/// Has every thread of rayon's global pool (where the engine runs) return the pages it freed
/// to the OS. Costs a few milliseconds; for a moment when the pool has no more work for a while
/// (between shards the engine would only fault them in again).
pub(crate) fn release_engine_memory() {
    // SAFETY: `mi_collect` only releases mimalloc's free pages of the calling thread's heap (and
    // the abandoned ones it takes over); it has no arguments to get wrong.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The process's resident memory in bytes (`VmRSS`).
    fn resident() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .expect("VmRSS");
        kb << 10
    }

    #[test]
    fn memory_the_pool_freed_is_given_back_when_asked() {
        // 64 MiB in 64 KiB blocks on each pool thread, written and freed: mimalloc keeps the
        // pages resident. (The test binary's own allocator is the system's; these blocks are
        // mimalloc's, as every allocation of the coordinator's binary is.)
        rayon::broadcast(|_| {
            let blocks: Vec<*mut std::ffi::c_void> = (0..1024)
                // SAFETY: a plain allocation, freed below.
                .map(|_| unsafe { libmimalloc_sys::mi_malloc(64 << 10) })
                .collect();
            for &b in &blocks {
                // SAFETY: each block was allocated above with 64 KiB; writing it makes it resident.
                unsafe { std::ptr::write_bytes(b.cast::<u8>(), 1, 64 << 10) };
            }
            // SAFETY: each block was allocated by mi_malloc above and is freed once.
            blocks
                .iter()
                .for_each(|&b| unsafe { libmimalloc_sys::mi_free(b) });
        });
        let held = resident();
        release_engine_memory();
        let after = resident();
        assert!(
            after + (48 << 20) < held,
            "resident {held} bytes before the release, {after} after"
        );
    }
}
