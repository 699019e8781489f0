//! Returning freed memory to the operating system.
//!
//! The binary allocates with mimalloc, which keeps freed pages for reuse and
//! purges them only lazily, on later allocator activity of the thread that
//! owns them. A route-table rebuild frees a whole table at once and the
//! discovery task then goes quiet, so without help those pages stay resident.

/// Frees the calling thread's empty pages and purges every arena's free
/// space now. Takes a few milliseconds with 10,000 Services, so it runs on
/// the discovery thread after each publish, never on a proxy worker; a no-op
/// when built without mimalloc.
pub fn release_freed() {
    collect(true);
}

/// Called when a proxy worker thread runs out of work: at most once a second
/// per thread, frees that thread's empty pages (connection buffers of a burst
/// that is over) so an idle gateway does not keep its peak. A normal, not a
/// forced, collection: it skips full pages and is cheap on a worker's heap.
pub fn release_freed_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < Duration::from_secs(1) => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect(false);
    }
}

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn collect(force: bool) {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; it only walks mimalloc's own bookkeeping.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

#[cfg(not(feature = "mimalloc"))]
fn collect(_force: bool) {}
