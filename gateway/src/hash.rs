//! Hash maps for the discovery index and the host index.
//!
//! At 100,000 Services the index hashes an [`ObjectKey`](crate::discovery::index::ObjectKey)
//! or a host name millions of times per sync; SipHash, the standard
//! library's default, was 9 % of the initial sync's CPU (perf, `benches/src/bin/convergence.rs`).
//! foldhash is several times cheaper on short strings. Its seed is random per
//! process, and the keys come from the cluster's own API server (written by
//! those allowed to create Services) or are only looked up (request hosts),
//! never inserted from the network.

/// A `HashMap` with foldhash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash.
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
