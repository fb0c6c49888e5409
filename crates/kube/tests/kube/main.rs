//! cairn-kube's integration suite, one test binary for the crate: the
//! controller's decisions as table tests, the kube adapter, job mode and
//! mount resolution against mock API servers, BackupRule exec on the wire,
//! and deploy/ against the schemas the code generates.

mod adapter;
mod common;
mod decide_application;
mod decide_backup;
mod decide_restore_repository;
mod decide_schedule;
mod decide_velero;
mod image;
mod job_init;
mod job_mode;
mod kdmp;
mod kdmp_executor;
mod manifests;
mod monitoring;
mod mount;
mod resources_capture;
mod resources_plan;
mod resources_sim;
mod rule_exec;
mod schedule;
