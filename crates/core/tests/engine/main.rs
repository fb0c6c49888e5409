//! The engine's integration suite, one test binary for the crate: round
//! trips of generated trees, deduplication and unchanged-file skipping, the
//! cache, damaged repositories and bad input, the golden repositories,
//! check and repair, crashes and injected faults, garbage collection, local
//! pack spooling and request counts.
//!
//! Every repository comes from `cairn_storage::testing::fresh_location`, so
//! the suite runs against S3 with `CAIRN_TEST_BACKEND=s3`.

mod bad_input;
mod block;
mod bundles;
mod cache;
mod check_repair;
mod cold;
mod compare;
mod crash;
mod damage;
mod dedup;
mod faults;
mod gc;
mod golden;
mod heal;
mod keys_headers;
mod local_packs;
mod requests;
mod roundtrip;
mod support;
mod vanish;
