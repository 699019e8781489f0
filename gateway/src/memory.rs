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

/// Makes the allocator hand freed pages back to the OS at once instead of
/// after its default delay (1 s in mimalloc v3, and only on later
/// allocator activity of the owning thread). For processes whose memory is
/// mostly long-lived state and whose allocations are not on a request path:
/// the mirror controller, where the delay kept a relist's and each write's
/// transient buffers resident. A no-op without mimalloc.
pub fn purge_eagerly() {
    set_purge_delay(0);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h;
/// the `libmimalloc-sys` crate exports no constant for it). The unit test
/// checks the index against the option's documented default.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn set_purge_delay(ms: i64) {
    // SAFETY: options are plain integers in mimalloc's option table; setting
    // one is allowed at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
}

#[cfg(not(feature = "mimalloc"))]
fn set_purge_delay(_ms: i64) {}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_index_names_the_purge_delay_option() {
        // SAFETY: reading an option has no preconditions.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // Unset, the option holds its default, 1000 ms in v3's options.c
        // (the header's "(=10)" is v2's; the test process never sets it and
        // MIMALLOC_PURGE_DELAY would override it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(v, 1000, "option 15 is not purge_delay in this mimalloc");
        }
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
