//! What the admin page's "Discovery" section shows: the source kind, the
//! object counts and time of the last publish, and the last error. Written
//! by the discovery thread (per publish and per error, never per request),
//! read by the admin thread.

use std::sync::Mutex;
use std::time::SystemTime;

/// Discovery's state, shared with the admin port.
#[derive(Debug)]
pub struct DiscoveryStatus {
    source: &'static str,
    inner: Mutex<Inner>,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    counts: ObjectCounts,
    publishes: u64,
    last_change: Option<SystemTime>,
    errors: u64,
    last_error: Option<(SystemTime, String)>,
}

/// Objects discovery holds, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Services (exported or not).
    pub services: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// Mappings (accepted or not).
    pub mappings: usize,
}

/// A copy of the state at one moment.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    /// `files` or `kubernetes`.
    pub source: &'static str,
    /// Objects at the last publish.
    pub counts: ObjectCounts,
    /// Tables published so far.
    pub publishes: u64,
    /// When the last table was published.
    pub last_change: Option<SystemTime>,
    /// Errors reported so far (refused objects and files, failed watches).
    pub errors: u64,
    /// The last error and when.
    pub last_error: Option<(SystemTime, String)>,
}

impl DiscoveryStatus {
    /// A status for the source named `source` (`files`, `kubernetes`).
    pub fn new(source: &'static str) -> Self {
        DiscoveryStatus {
            source,
            inner: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Records a publish holding `counts`.
    pub fn published(&self, counts: ObjectCounts) {
        self.with(|i| {
            i.counts = counts;
            i.publishes += 1;
            i.last_change = Some(SystemTime::now());
        });
    }

    /// Records an error; returns false when it repeats the last error (the
    /// time is updated; callers need not record it again elsewhere).
    pub fn error(&self, message: &str) -> bool {
        self.with(|i| {
            i.errors += 1;
            let repeat = i.last_error.as_ref().is_some_and(|(_, m)| m == message);
            i.last_error = Some((SystemTime::now(), message.to_string()));
            !repeat
        })
    }

    /// The current state.
    pub fn snapshot(&self) -> StatusSnapshot {
        let i = self.with(|i| i.clone());
        StatusSnapshot {
            source: self.source,
            counts: i.counts,
            publishes: i.publishes,
            last_change: i.last_change,
            errors: i.errors,
            last_error: i.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_publishes_and_dedupes_repeated_errors() {
        let s = DiscoveryStatus::new("files");
        assert!(s.snapshot().last_change.is_none());
        s.published(ObjectCounts {
            services: 2,
            endpoint_slices: 1,
            mappings: 0,
        });
        assert!(s.error("a"));
        assert!(!s.error("a"));
        assert!(s.error("b"));
        let snap = s.snapshot();
        assert_eq!(snap.source, "files");
        assert_eq!(snap.counts.services, 2);
        assert_eq!(snap.publishes, 1);
        assert_eq!(snap.errors, 3);
        assert_eq!(snap.last_error.map(|(_, m)| m).as_deref(), Some("b"));
    }
}
