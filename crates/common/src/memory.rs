//! How the two programs' allocator keeps and returns memory (glibc only;
//! with other C libraries, such as musl, these calls do nothing).
//!
//! glibc keeps what the process freed for reuse and returns it only from the
//! top of a heap, so RSS rises in steps to each arena's high-water mark and
//! stays there. Both programs run [`trim_periodically`]: `malloc_trim(0)`
//! walks every arena and hands its free pages back with `madvise`, so RSS
//! follows what is in use without changing how the hot path allocates.
//!
//! The control plane also calls [`keep_freed_pages`] at start. It receives a
//! batch as one WebSocket frame of up to [`FRAME_POOL_BYTES`], in memory
//! taken fresh for each frame; with glibc's default, moving thresholds a
//! freed frame is unmapped or trimmed away at once, and the next one pays
//! for page faults and zeroing again (14% of its CPU in a JSONL drain,
//! docs/PERFORMANCE.md). The agent does not: fixed thresholds cost it
//! 15–25% of its drain rate, and its RSS stays flat with the trim alone.

use std::time::{Duration, Instant};

/// Blocks up to this size come from the heap, where freed ones are reused:
/// twice the largest WebSocket message either side accepts (16 MiB).
pub const FRAME_POOL_BYTES: usize = 32 * 1024 * 1024;

/// Free memory at the top of a heap is kept up to this much between trims.
pub const KEEP_FREE_BYTES: usize = 64 * 1024 * 1024;

/// How often the control plane trims: between two trims, freed frames
/// stay mapped for reuse (up to [`KEEP_FREE_BYTES`] at each heap's top).
/// The agent's period is its `agent_MEMORY_TRIM_SECONDS`.
pub const CONTROL_PLANE_TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trim the allocator every `every`, until the task is aborted.
pub async fn trim_periodically(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // The trim locks each arena in turn; on a blocking thread it never
        // holds up a runtime thread that relays batches.
        let Ok((released, took)) = tokio::task::spawn_blocking(|| {
            let start = Instant::now();
            (release(), start.elapsed())
        })
        .await
        else {
            return;
        };
        tracing::trace!(released, ?took, "allocator trimmed");
    }
}

/// Return the allocator's free pages to the system; whether any came back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and glibc serialises it with
    // every other allocator call, so it is safe to call from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Return the allocator's free pages to the system; whether any came back.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

/// Serve blocks up to [`FRAME_POOL_BYTES`] from the heap and keep up to
/// [`KEEP_FREE_BYTES`] free at a heap's top, so freed frames are reused
/// instead of mapped and zeroed anew; whether glibc took both settings.
/// Process-wide: a program calls it once at start, a library never.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_pages() -> bool {
    let set = |option, bytes: usize| {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` takes no pointers and glibc serialises it with
        // every other allocator call.
        unsafe { libc::mallopt(option, bytes) == 1 }
    };
    set(libc::M_MMAP_THRESHOLD, FRAME_POOL_BYTES) & set(libc::M_TRIM_THRESHOLD, KEEP_FREE_BYTES)
}

/// Serve blocks up to [`FRAME_POOL_BYTES`] from the heap; whether the C
/// library took it (only glibc has the setting).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_pages() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn release_returns_freed_pages() {
        // 64 blocks of 64 KiB (below glibc's mmap threshold, so they come
        // from the heap), touched, then freed but one at the top that keeps
        // the heap from shrinking by itself: only a trim returns the rest.
        let mut blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        let keep = blocks.pop();
        drop(blocks);
        assert!(
            release(),
            "malloc_trim gave nothing back after freeing 4 MiB"
        );
        drop(keep);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_frame_pool_thresholds() {
        // Runs in the test process too: both values are within glibc's
        // limits (mmap threshold at most 32 MiB on 64-bit), or it refuses.
        assert!(keep_freed_pages());
    }
}
