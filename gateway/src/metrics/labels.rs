//! Bounds on the two label values that do not come from a fixed enum: peer
//! identities (capped, the rest share `other`) and route names (the series of
//! a route leave with the route).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Metrics;

/// The `peer` label value of identities past the cap.
pub const OTHER_PEER: &str = "other";

/// Every `status_class` value (see `proxy::request::status_class`).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The identities that have a `peer` label value of their own.
#[derive(Debug)]
pub(super) struct PeerLabels {
    max: AtomicUsize,
    seen: Mutex<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl Default for PeerLabels {
    fn default() -> Self {
        PeerLabels {
            max: AtomicUsize::new(1000),
            seen: Mutex::default(),
            other: OTHER_PEER.into(),
        }
    }
}

impl Metrics {
    /// Sets `metrics.max_peer_labels`: distinct identities labelled by name.
    pub fn limit_peer_labels(&self, max: usize) {
        self.peer_labels.max.store(max, Ordering::Relaxed);
    }

    /// The `peer` label value for `identity`: itself while fewer than
    /// `max_peer_labels` identities have one (first come), else `other`.
    /// Call once per connection, not per request.
    pub fn peer_label(&self, identity: &Arc<str>) -> Arc<str> {
        let labels = &self.peer_labels;
        let mut seen = labels.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(identity) {
            return identity.clone();
        }
        if seen.len() < labels.max.load(Ordering::Relaxed) {
            seen.insert(identity.clone());
            return identity.clone();
        }
        labels.other.clone()
    }

    /// Drops the series of routes that are no longer in the table.
    pub fn forget_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        let peers: Vec<Arc<str>> = {
            let seen = self
                .peer_labels
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            seen.iter().cloned().collect()
        };
        for route in routes {
            let _ = self.request_duration.remove_label_values(&[route]);
            let all = peers.iter().map(|p| &**p).chain([OTHER_PEER, "-"]);
            for peer in all {
                for class in STATUS_CLASSES {
                    let _ = self.requests.remove_label_values(&[route, peer, class]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_past_the_cap_share_other_and_routes_are_forgotten() {
        let m = Metrics::new();
        m.limit_peer_labels(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(&*m.peer_label(&a), "a");
        assert_eq!(&*m.peer_label(&b), "b");
        assert_eq!(&*m.peer_label(&c), OTHER_PEER);
        assert_eq!(&*m.peer_label(&a), "a", "a keeps its label");
        m.requests.with_label_values(&["r1", "a", "2xx"]).inc();
        m.requests
            .with_label_values(&["r1", OTHER_PEER, "5xx"])
            .inc();
        m.requests.with_label_values(&["r2", "b", "2xx"]).inc();
        m.request_duration.with_label_values(&["r1"]).observe(0.1);
        m.forget_routes(["r1"]);
        let text = m.render();
        assert!(!text.contains("\"r1\""), "{text}");
        assert!(text.contains("\"r2\""), "{text}");
    }
}
