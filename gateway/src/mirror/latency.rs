//! The probe-latency window: the last [`WINDOW`] successful probes of one
//! Link's gateway, summarised as p50/p95/p99 for the Link status (which
//! `isthmus gateways` reads, so the CLI needs only the API server).

use std::collections::VecDeque;
use std::time::Duration;

use super::link::LatencyPercentiles;

/// Successful probes remembered per Link.
pub const WINDOW: usize = 100;

/// The most recent successful probe latencies, oldest first.
#[derive(Clone, Debug, Default)]
pub struct LatencyWindow {
    samples: VecDeque<Duration>,
}

impl LatencyWindow {
    /// Records one successful probe, forgetting the oldest past [`WINDOW`].
    pub fn record(&mut self, latency: Duration) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(latency);
    }

    /// p50/p95/p99 (nearest rank) in microseconds; `None` before the first success.
    pub fn percentiles(&self) -> Option<LatencyPercentiles> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let at = |p: usize| {
            // Nearest rank: the smallest sample with at least p% at or below it.
            let rank = (p * sorted.len()).div_ceil(100).max(1);
            let d = sorted[rank.min(sorted.len()) - 1];
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
        };
        Some(LatencyPercentiles {
            p50_micros: at(50),
            p95_micros: at(95),
            p99_micros: at(99),
            samples: u32::try_from(sorted.len()).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_window_has_no_percentiles() {
        assert_eq!(LatencyWindow::default().percentiles(), None);
    }

    #[test]
    fn nearest_rank_over_the_last_hundred() {
        let mut w = LatencyWindow::default();
        // 1..=150 ms: the window keeps 51..=150.
        for ms in 1..=150u64 {
            w.record(Duration::from_millis(ms));
        }
        let p = w.percentiles().expect("percentiles");
        assert_eq!(p.samples, 100);
        assert_eq!(p.p50_micros, 100_000);
        assert_eq!(p.p95_micros, 145_000);
        assert_eq!(p.p99_micros, 149_000);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let mut w = LatencyWindow::default();
        w.record(Duration::from_micros(250));
        let p = w.percentiles().expect("percentiles");
        assert_eq!((p.p50_micros, p.p95_micros, p.p99_micros), (250, 250, 250));
    }
}
