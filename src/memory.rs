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
//!
//! [`release`] frees such large values on a thread of its own, so that the
//! core never spends tens of milliseconds handing a gigabyte back.

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

/// Values holding at least this many bytes are freed by [`release`]'s
/// thread rather than by the caller.
pub const RELEASE_APART_BYTES: usize = 16 << 20;

/// Frees `value`, which holds about `bytes` bytes of data.
///
/// Giving memory back to the kernel costs the thread that frees it a
/// moment per page: 10-17 ms for 256 MiB and 82-91 ms for a gigabyte on a
/// quiet 2-core machine (50-70 and 90-100 ms under load), which on the
/// core every room would wait for. A value of [`RELEASE_APART_BYTES`] or more is therefore handed to a
/// thread kept for this (started at the first such value); a smaller one
/// is freed at once, as a hand-over would cost more than it saves. If the
/// thread cannot be started, everything is freed at once.
pub fn release<T: Send + 'static>(value: T, bytes: usize) {
    if bytes < RELEASE_APART_BYTES {
        return;
    }
    if let Some(releaser) = releaser() {
        // A send fails only if the thread is gone; the value comes back
        // and is freed here.
        let _ = releaser.send(Box::new(value));
    }
}

type Releaser = std::sync::mpsc::Sender<Box<dyn Send>>;

fn releaser() -> Option<&'static Releaser> {
    static RELEASER: std::sync::OnceLock<Option<Releaser>> = std::sync::OnceLock::new();
    RELEASER
        .get_or_init(|| {
            let (sender, values) = std::sync::mpsc::channel::<Box<dyn Send>>();
            let started = std::thread::Builder::new()
                .name("release".into())
                .spawn(move || values.into_iter().for_each(drop));
            match started {
                Ok(_) => Some(sender),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the thread that frees large data ({e}); it is freed in place"
                    );
                    None
                }
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tells, when dropped, on which thread it was.
    struct Tell(std::sync::mpsc::Sender<std::thread::ThreadId>);

    impl Drop for Tell {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    #[test]
    fn large_values_are_freed_on_another_thread_and_small_ones_here() {
        let (told, dropped_on) = std::sync::mpsc::channel();
        let here = std::thread::current().id();
        release(Tell(told.clone()), RELEASE_APART_BYTES - 1);
        assert_eq!(dropped_on.recv().unwrap(), here, "small: at once");
        release(Tell(told), RELEASE_APART_BYTES);
        let elsewhere = dropped_on
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("freed");
        assert_ne!(elsewhere, here, "large: by the releasing thread");
    }
}
