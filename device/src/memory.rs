//! Keeping the device's peak memory near its working set.
//!
//! glibc gives every thread that allocates a heap of its own (an arena), and memory freed in
//! one arena is not handed to another. The device loads the model on the main thread and runs
//! each request on its link's thread, so the model's load-time buffers and a request's
//! inference buffers would both stay resident, one in each arena. The device runs one
//! inference at a time, so a single arena costs no lock contention. Figures: BENCHMARKS.md.

/// Makes every thread allocate from one heap. Call before any other thread starts; a no-op
/// where the C library is not glibc.
pub fn one_allocator_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocator tuning and is called before other
        // threads allocate; an unknown parameter would return 0 and leave the defaults.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok == 0 {
            tracing::warn!("glibc refused M_ARENA_MAX = 1; each thread keeps its own heap");
        }
    }
}
