//! The simulated cluster's own suite, one test binary for the crate: its API semantics
//! through kube-rs (the client cairn uses) and kubectl, and its actors.

mod actors;
mod api;
mod kubectl;
