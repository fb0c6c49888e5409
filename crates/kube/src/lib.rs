//! Kubernetes front end of cairn: the `cairn.io/v1alpha1` resources, the controller that
//! turns VolumeBackups, VolumeRestores and BackupRepositories into snapshots, PVCs and Jobs,
//! and job mode, which the same binary runs inside those Jobs.
//!
//! The storage engine is reached only through [`job::Engine`], implemented by the CLI.

pub mod crd;

pub use crd::crds_yaml;
pub mod adapter;
pub mod config;
pub mod controller;
pub mod job;
pub mod mount;
pub mod protocol;
pub mod runner;
pub mod validate;
