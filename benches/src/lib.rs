//! Shared pieces of cairn's benchmarks: deterministic test data that
//! compresses like real files, and the single-core rate measurements the
//! limit report and the criterion benches both use, and the latency line of
//! `cairn-delay-proxy`.

pub mod data;
pub mod delay;
pub mod limits;
