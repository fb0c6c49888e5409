//! The engine's integration suite: round trips of generated trees,
//! deduplication and unchanged-file skipping, the cache, damaged
//! repositories and bad input, and the golden repositories.
//!
//! Every repository comes from `cairn_storage::testing::fresh_location`, so
//! the suite runs against S3 with `CAIRN_TEST_BACKEND=s3`.

mod bad_input;
mod cache;
mod compare;
mod damage;
mod dedup;
mod golden;
mod roundtrip;
mod support;
