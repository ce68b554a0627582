//! Gives the memory the allocator keeps back to the system, so the agent's
//! RSS follows what it uses rather than the highest it ever used.
//!
//! glibc keeps what the process freed for reuse and returns it only from the
//! top of a heap, so RSS rises in steps to each arena's high-water mark and
//! stays there (measured in docs/PERFORMANCE.md, "Where the agent's memory
//! is"). `malloc_trim(0)` walks every arena and hands its free pages back
//! with `madvise`; run every second (`agent_MEMORY_TRIM_SECONDS`), it keeps
//! RSS flat without changing how the hot path allocates (fixed glibc
//! thresholds did, and cost 15–25% of the drain rate). Other C libraries
//! (musl) have no such call; there this does nothing.

use std::time::{Duration, Instant};

/// Trim the allocator every `every`, until the task is aborted.
pub async fn trim_periodically(every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // The trim locks each arena in turn; on a blocking thread it never
        // holds up the runtime thread that relays batches.
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
}
