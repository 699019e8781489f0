//! The admin page's "Peers seen": verified peer identities with their
//! request and error counts and when they were last seen.
//!
//! Derived from the metrics registry's `isthmus_requests_total{peer}`
//! series, so the request path does nothing extra. The series carry no time,
//! so "last seen" is the time of the first sample that saw a peer's count
//! grow: samples are taken on every `/status.json` request and every
//! [`SAMPLE_PERIOD`] on the admin thread, so it is exact to within that
//! period. The table is capped at [`MAX_PEERS`] identities; peers beyond
//! that are summed into one `other` row.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::core::Collector;

use crate::metrics::Metrics;

/// Most identities listed one by one.
pub const MAX_PEERS: usize = 1000;

/// How often the admin thread samples the counters without being asked.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);

/// The row that sums peers beyond [`MAX_PEERS`].
pub const OTHER: &str = "other";

/// One peer's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    /// The verified identity (URI SAN or DNS SAN), or [`OTHER`].
    pub identity: String,
    /// Requests answered, any status.
    pub requests: u64,
    /// Requests answered 4xx or 5xx (by the gateway or the upstream).
    pub errors: u64,
    /// The first sample that saw `requests` grow.
    pub last_seen: Option<SystemTime>,
}

/// The sampled table (see the module docs).
#[derive(Debug, Default)]
pub struct PeersSeen {
    rows: Mutex<HashMap<String, PeerRow>>,
}

/// Per-peer `(requests, errors)` summed over routes and status classes.
pub fn totals(metrics: &Metrics) -> HashMap<String, (u64, u64)> {
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for family in metrics.requests.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value())
            };
            let Some(peer) = label("peer").filter(|p| *p != "-") else {
                continue;
            };
            let n = m.get_counter().get_value() as u64;
            let error = matches!(label("status_class"), Some("4xx" | "5xx"));
            let row = out.entry(peer.to_string()).or_default();
            row.0 += n;
            if error {
                row.1 += n;
            }
        }
    }
    out
}

impl PeersSeen {
    /// Takes a sample of the registry now.
    pub fn sample(&self, metrics: &Metrics) {
        self.sample_totals(totals(metrics), SystemTime::now());
    }

    /// Applies per-peer totals observed at `now`.
    pub fn sample_totals(&self, totals: HashMap<String, (u64, u64)>, now: SystemTime) {
        let mut rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut other = (0u64, 0u64);
        let mut newcomers: Vec<(String, (u64, u64))> = Vec::new();
        for (peer, (requests, errors)) in totals {
            match rows.get_mut(&peer) {
                Some(row) => {
                    if requests > row.requests {
                        row.last_seen = Some(now);
                    }
                    row.requests = requests;
                    row.errors = errors;
                }
                None => newcomers.push((peer, (requests, errors))),
            }
        }
        // Deterministic admission when the cap is near: busiest first.
        newcomers.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        for (peer, (requests, errors)) in newcomers {
            if peer != OTHER && rows.len() < MAX_PEERS + usize::from(rows.contains_key(OTHER)) {
                rows.insert(
                    peer.clone(),
                    PeerRow {
                        identity: peer,
                        requests,
                        errors,
                        last_seen: (requests > 0).then_some(now),
                    },
                );
            } else {
                other.0 += requests;
                other.1 += errors;
            }
        }
        if other.0 > 0 || rows.contains_key(OTHER) {
            let row = rows.entry(OTHER.to_string()).or_insert_with(|| PeerRow {
                identity: OTHER.to_string(),
                requests: 0,
                errors: 0,
                last_seen: None,
            });
            if other.0 > row.requests {
                row.last_seen = Some(now);
            }
            row.requests = other.0;
            row.errors = other.1;
        }
    }

    /// The rows, most recently seen first, then by requests.
    pub fn snapshot(&self) -> Vec<PeerRow> {
        let rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<PeerRow> = rows.values().cloned().collect();
        out.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then_with(|| b.requests.cmp(&a.requests))
                .then_with(|| a.identity.cmp(&b.identity))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_moves_only_when_the_count_grows() {
        let p = PeersSeen::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let t1 = t0 + Duration::from_secs(5);
        p.sample_totals([("a".to_string(), (3, 1))].into(), t0);
        p.sample_totals([("a".to_string(), (3, 1))].into(), t1);
        assert_eq!(p.snapshot()[0].last_seen, Some(t0));
        p.sample_totals([("a".to_string(), (4, 1))].into(), t1);
        let row = &p.snapshot()[0];
        assert_eq!((row.requests, row.errors, row.last_seen), (4, 1, Some(t1)));
    }

    #[test]
    fn peers_beyond_the_cap_go_to_other() {
        let p = PeersSeen::default();
        let now = SystemTime::now();
        let many: HashMap<String, (u64, u64)> = (0..MAX_PEERS + 10)
            .map(|i| (format!("spiffe://x/{i:05}"), (1, 0)))
            .collect();
        p.sample_totals(many, now);
        let rows = p.snapshot();
        assert_eq!(rows.len(), MAX_PEERS + 1);
        let other = rows.iter().find(|r| r.identity == OTHER).expect("other");
        assert_eq!(other.requests, 10);
    }

    #[test]
    fn totals_read_the_requests_series() {
        let m = Metrics::new();
        m.requests.with_label_values(&["r1", "a", "2xx"]).inc_by(3);
        m.requests.with_label_values(&["r2", "a", "4xx"]).inc_by(2);
        m.requests.with_label_values(&["r1", "-", "4xx"]).inc();
        let t = totals(&m);
        assert_eq!(t.get("a"), Some(&(5, 2)));
        assert!(!t.contains_key("-"));
    }
}
