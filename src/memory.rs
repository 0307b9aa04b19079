//! How the process's allocator hands memory back to the kernel.
//!
//! glibc's allocator returns the free top of its heap to the kernel once
//! 128 KiB of it is free, and maps every block of 128 KiB or more on its
//! own. It raises both thresholds only after a large mapped block is freed,
//! which a steady stream of small updates never does. So each busy turn of
//! the core, which frees together what it allocated for its messages, gave
//! its memory back, and the next turn faulted it in again: 21,579 page
//! faults (in libzmq's I/O thread) and 480 `brk` calls (the core's heap)
//! over 200,000 forwarded updates (docs/benchmarks.md).
//!
//! [`keep_freed_memory`] fixes the thresholds instead: up to
//! [`TRIM_THRESHOLD`] of free memory stays at the top of each heap, and
//! blocks smaller than [`MMAP_THRESHOLD`] (a snapshot batch, a batch of
//! updates, a libzmq read buffer) come from the heap. Larger ones, such as a 10 MB datablock, are still
//! mapped on their own and go back to the kernel when freed.

/// Free memory kept at the top of a heap rather than returned.
pub const TRIM_THRESHOLD: usize = 4 << 20;
/// Blocks at least this large are mapped on their own.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Sets the allocator's thresholds (glibc only; elsewhere nothing). A
/// setting the user gave in `GLIBC_TUNABLES` is left as given. Call it
/// once logging is set up (a refusal is logged), before the server starts.
pub fn keep_freed_memory() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if !tunables.contains("trim_threshold") {
        set(Param::Trim, TRIM_THRESHOLD);
    }
    if !tunables.contains("mmap_threshold") {
        set(Param::Mmap, MMAP_THRESHOLD);
    }
}

enum Param {
    Trim,
    Mmap,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(param: Param, value: usize) {
    let (param, name) = match param {
        Param::Trim => (libc::M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD"),
        Param::Mmap => (libc::M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD"),
    };
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes the allocator's parameters, under its
    // own lock, and takes plain integers.
    if unsafe { libc::mallopt(param, value) } != 1 {
        tracing::warn!("the allocator refused {name} = {value}; memory use is unchanged");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_param: Param, _value: usize) {}
