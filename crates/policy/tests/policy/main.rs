//! Integration tests of cairn-policy: every exclusion form on real directory trees,
//! retention over generated timelines, and hooks with real shell commands.

mod exclude;
mod hooks;
mod kdmp;
mod retention;
mod retention_props;
mod walk;
