//! The `cairn` binary's integration suite, one test binary for the crate:
//! each module drives the built binary (`CARGO_BIN_EXE_cairn`) through one
//! area, against the backend `CAIRN_TEST_BACKEND` names where the area has
//! a repository.

mod block;
mod common;
mod damage;
mod edges;
mod engine_v1;
mod job;
mod kube_app;
mod kube_block;
mod kube_e2e;
mod kube_kdmp;
mod kube_metrics;
mod kube_mount;
mod kube_schedule;
mod kube_velero;
mod maintenance_a;
mod maintenance_b;
mod mount;
mod policy;
mod tls;
