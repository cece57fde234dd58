//! Benchmarks: `benches/` (criterion micro-benchmarks) and `relay_bench.py` (the
//! whole-system load harness). Results and the commands that made them are in
//! `RESULTS.md`.
