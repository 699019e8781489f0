//! Polling shared by the file discovery source and TLS rotation: a ticker that
//! ends on shutdown, and the stamp that says whether a file changed.

use std::fs::Metadata;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Ticks every period until the shutdown signal flips.
pub struct Ticker {
    interval: Interval,
    shutdown: watch::Receiver<bool>,
}

impl Ticker {
    /// A ticker whose first tick is immediate; missed ticks are delayed, not bunched.
    pub fn new(period: Duration, shutdown: watch::Receiver<bool>) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Waits for the next tick; `false` once shutdown was signalled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.shutdown.changed() => false,
        }
    }
}

/// What identifies a version of a file: modification time and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    /// The stamp of already-read metadata.
    pub fn of(meta: &Metadata) -> Self {
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }

    /// Whether the file was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stamp of a file, following symlinks (Kubernetes ConfigMap and Secret
    /// volumes swap a `..data` link); `None` when it cannot be read.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }
}
