//! Shared pieces of the benchmarks (see `src/bin/`).
