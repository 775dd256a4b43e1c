//! Process-wide tuning a program may opt into (the CLI does at start-up).

/// Keeps freed tensor buffers in the heap instead of returning them to the OS.
///
/// A forward pass allocates and frees many buffers of a few MiB; glibc serves those with
/// `mmap`/`munmap`, so every op pays page faults and page zeroing (about 20% of a GPT-2 forward
/// here). Raising the mmap and trim thresholds lets the heap recycle them. No-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator parameters; both values are in range
        // (glibc caps the mmap threshold at 32 MiB on 64-bit).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// The machine's physical memory in bytes, where the OS tells (Linux: `/proc/meminfo`).
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
