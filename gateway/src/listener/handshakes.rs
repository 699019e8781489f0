//! Admission before the TLS handshake: connections still handshaking have a
//! budget of their own, overall and per source address, so a flood of
//! connections that never finish (or never start) their handshake cannot take
//! the slots of verified peers (`max_connections`).
//!
//! Past `max_handshakes` a new connection is still admitted: the oldest
//! handshake in progress is abandoned for it. A real handshake takes
//! milliseconds, so the oldest are the stalled ones; a new peer is never
//! locked out by connections that hold their slot until the handshake
//! timeout. Past `max_handshakes_per_source` a new connection from that
//! address is closed at once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A new connection from a source address at its cap (closed at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused;

#[derive(Debug, Default)]
struct Counts {
    per_source: HashMap<IpAddr, usize>,
    /// Handshakes in progress, oldest first, with how to abandon each.
    order: BTreeMap<u64, Arc<Notify>>,
    next: u64,
}

/// Connections in their handshake, by source address.
#[derive(Debug)]
pub struct Handshakes {
    max: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

impl Handshakes {
    /// Budgets from `limits.max_handshakes` and `limits.max_handshakes_per_source`.
    pub fn new(max: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            max,
            max_per_source,
            counts: Mutex::default(),
        })
    }

    /// A slot for one handshake from `source`, held until dropped, and
    /// whether an older handshake was abandoned for it.
    pub(super) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
    ) -> Result<(HandshakeSlot, bool), Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.per_source.entry(source).or_default();
        if *n >= self.max_per_source {
            return Err(Refused);
        }
        *n += 1;
        let evicted = if c.order.len() >= self.max {
            c.order
                .pop_first()
                .map(|(_, cancel)| cancel.notify_one())
                .is_some()
        } else {
            false
        };
        let seq = c.next;
        c.next += 1;
        let cancel = Arc::new(Notify::new());
        c.order.insert(seq, cancel.clone());
        let slot = HandshakeSlot {
            handshakes: self.clone(),
            source,
            seq,
            cancel,
        };
        Ok((slot, evicted))
    }
}

/// One connection's place in the handshake budget.
#[derive(Debug)]
pub(super) struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    source: IpAddr,
    seq: u64,
    cancel: Arc<Notify>,
}

impl HandshakeSlot {
    /// Completes when this handshake is abandoned for a newer connection.
    pub(super) async fn abandoned(&self) {
        self.cancel.notified().await
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut c = self
            .handshakes
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.order.remove(&self.seq);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn per_source_caps_and_the_oldest_handshake_gives_way() {
        let h = Handshakes::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let c: IpAddr = "10.0.0.3".parse().expect("ip");
        let (a1, _) = h.admit(a).expect("first");
        let (_a2, _) = h.admit(a).expect("second");
        assert_eq!(h.admit(a).map(|_| ()), Err(Refused));
        let (_b1, evicted) = h.admit(b).expect("other source");
        assert!(!evicted);
        // Full: the oldest (a1) is told to give way.
        let (_c1, evicted) = h.admit(c).expect("admitted");
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.abandoned())
            .await
            .expect("the oldest handshake is abandoned");
        drop(a1);
        let (_a3, _) = h.admit(a).expect("a's slot freed");
    }
}
