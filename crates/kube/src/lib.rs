//! Kubernetes front end of cairn: the `cairn.io/v1alpha1` resources, the controller that
//! turns VolumeBackups, VolumeRestores and BackupRepositories into snapshots, PVCs and Jobs,
//! and job mode, which the same binary runs inside those Jobs.
//!
//! The storage engine is reached only through [`job::Engine`], implemented by the CLI.
//! Entry points for the CLI: [`crds_yaml`] (`cairn kube crds`), [`run_controller`]
//! (`cairn kube controller`), [`run_job`] (`cairn job ...`) and [`resolve_mount`]
//! (`cairn kube mount`).

#![deny(missing_docs)]

pub mod adapter;
pub mod config;
pub mod controller;
pub mod crd;
pub mod job;
pub mod kdmp;
pub mod metrics;
pub mod mount;
pub mod protocol;
pub mod resources;
pub mod runner;
mod runner_velero;
pub mod schedule;
pub mod validate;
pub mod velero;

pub use crd::crds_yaml;
pub use job::{run_job, Engine, JobCommand, JobParams};
pub use mount::{
    resolve_application_mount, resolve_mount, ApplicationMountTarget, MountTarget,
    VolumeSnapshotRef,
};
pub use runner::{run_controller, ControllerOptions, VeleroOptions};
