//! The admin page's "Recent errors": a bounded ring of the last
//! [`RECENT_ERRORS`] error answers and discovery errors.
//!
//! Recording is lock-free: one atomic increment picks a slot and one
//! `ArcSwap` store fills it (plus the event's allocation), and only error
//! answers record, so the success path costs nothing and a flood of errors
//! never waits on a lock. Reading (admin thread) copies the slots and sorts
//! them by sequence number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

/// How many events the ring keeps.
pub const RECENT_ERRORS: usize = 50;

/// Longest detail kept per event, in bytes (request targets can be long).
const MAX_DETAIL: usize = 300;

/// One recorded error.
#[derive(Clone, Debug)]
pub struct ErrorEvent {
    /// Order of recording (higher is newer).
    pub seq: u64,
    /// When it happened.
    pub at: SystemTime,
    /// `request` or `discovery`.
    pub source: &'static str,
    /// The metric label of the reason (`no_route`, `forbidden`, `watch`, ...).
    pub reason: &'static str,
    /// The HTTP status answered (0 for discovery errors).
    pub status: u16,
    /// The route, when one matched.
    pub route: Option<Arc<str>>,
    /// The peer identity, when known.
    pub peer: Option<Arc<str>>,
    /// What the error was about: `GET host/path`, or the discovery message.
    pub detail: String,
}

/// The ring (see the module docs).
#[derive(Debug)]
pub struct RecentErrors {
    slots: Box<[ArcSwapOption<ErrorEvent>]>,
    next: AtomicU64,
}

impl Default for RecentErrors {
    fn default() -> Self {
        RecentErrors {
            slots: (0..RECENT_ERRORS).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicU64::new(0),
        }
    }
}

impl RecentErrors {
    /// Records `event` (its `seq` is assigned here), replacing the oldest.
    pub fn record(&self, mut event: ErrorEvent) {
        if event.detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !event.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            event.detail.truncate(cut);
            event.detail.push('…');
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        event.seq = seq;
        let slot = (seq % RECENT_ERRORS as u64) as usize;
        if let Some(s) = self.slots.get(slot) {
            s.store(Some(Arc::new(event)));
        }
    }

    /// A discovery error now.
    pub fn discovery(&self, reason: &'static str, detail: String) {
        self.record(ErrorEvent {
            seq: 0,
            at: SystemTime::now(),
            source: "discovery",
            reason,
            status: 0,
            route: None,
            peer: None,
            detail,
        });
    }

    /// The kept events, newest first.
    pub fn snapshot(&self) -> Vec<Arc<ErrorEvent>> {
        let mut events: Vec<Arc<ErrorEvent>> =
            self.slots.iter().filter_map(|s| s.load_full()).collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.seq));
        events
    }

    /// Events recorded since start (including those no longer kept).
    pub fn total(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_fifty_newest_first() {
        let r = RecentErrors::default();
        for i in 0..120 {
            r.discovery("watch", format!("error {i}"));
        }
        let got = r.snapshot();
        assert_eq!(got.len(), RECENT_ERRORS);
        assert_eq!(got[0].detail, "error 119");
        assert_eq!(got[RECENT_ERRORS - 1].detail, "error 70");
        assert_eq!(r.total(), 120);
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary() {
        let r = RecentErrors::default();
        r.discovery("file", "é".repeat(400));
        let got = r.snapshot();
        assert!(got[0].detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(got[0].detail.ends_with('…'));
    }
}
