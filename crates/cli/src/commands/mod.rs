//! The command tree; each command lives in its own file.

mod backup;
mod check;
mod copy;
mod diff;
mod dump;
mod find;
mod forget;
mod init;
mod job;
mod key;
mod kopiaexecutor;
mod kube;
mod ls;
mod maintenance;
mod mount;
mod prune;
mod repair;
mod restore;
mod snapshots;
mod stats;
mod unlock;
mod upgrade;

use crate::common::GlobalOpts;
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

pub use kopiaexecutor::{invoked_as_executor, main_as_executor};

/// cairn: deduplicated, compressed, encrypted backups of directories and volumes.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Selects snapshots for `latest`.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterOpts {
    /// Only snapshots of this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only snapshots of this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

impl FilterOpts {
    /// The snapshots named by `specs` (id prefixes or `latest`), or every
    /// snapshot the filter accepts when `specs` is empty.
    pub fn select(
        &self,
        repo: &cairn_core::Repository,
        specs: &[String],
    ) -> Result<Vec<(cairn_core::SnapshotId, cairn_core::Snapshot)>> {
        use anyhow::Context;
        let filter = self.filter();
        if specs.is_empty() {
            return Ok(repo
                .list_snapshots()?
                .into_iter()
                .filter(|(_, s)| filter.matches(s))
                .collect());
        }
        specs
            .iter()
            .map(|s| {
                repo.find_snapshot(s, &filter)
                    .with_context(|| format!("snapshot {s}"))
            })
            .collect()
    }

    pub fn filter(&self) -> cairn_core::SnapshotFilter {
        cairn_core::SnapshotFilter {
            source: self.source.clone(),
            host: self.host.clone(),
            tags: self.tags.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository.
    Init(init::InitArgs),
    /// Back up files and directories into a new snapshot.
    Backup(backup::BackupArgs),
    /// List snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// List the files of a snapshot.
    Ls(ls::LsArgs),
    /// Write one file of a snapshot to standard output.
    Dump(dump::DumpArgs),
    /// Restore a snapshot into a directory.
    Restore(restore::RestoreArgs),
    /// Manage the repository's passwords.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Verify the repository (structure; with --read-data also the data) and
    /// name the snapshots and files any damage affects.
    Check(check::CheckArgs),
    /// Repair a damaged repository: rebuild the index, rewrite damaged snapshots.
    #[command(subcommand)]
    Repair(repair::RepairCommand),
    /// Sizes before and after deduplication and compression.
    Stats(stats::StatsArgs),
    /// Paths added, removed and modified between two snapshots.
    Diff(diff::DiffArgs),
    /// Find paths matching glob patterns in snapshots.
    Find(find::FindArgs),
    /// Remove stale exclusive locks.
    Unlock(unlock::UnlockArgs),
    /// Move a repository to the current format (version 2: small files in
    /// bundles); a cairn older than that format can no longer open it.
    Upgrade(upgrade::UpgradeArgs),
    /// Browse the repository's snapshots as a read-only file system.
    Mount(mount::MountArgs),
    /// Kubernetes: print the CRDs, run the controller, mount a VolumeBackup.
    #[command(subcommand)]
    Kube(kube::KubeCommand),
    /// Job mode: what the Jobs the controller creates run (backup, restore, maintenance,
    /// catalog).
    Job(job::JobArgs),
    /// KDMP's job image contract: back up, restore, delete or maintain as KDMP's
    /// `kopiaexecutor` does (also answered as `/kopiaexecutor` through a link).
    Kopiaexecutor(kopiaexecutor::KopiaExecutorArgs),
    /// Remove the snapshots a retention policy does not keep (per host and source).
    Forget(forget::ForgetArgs),
    /// Copy snapshots to another repository (deduplicated there).
    Copy(copy::CopyArgs),
    /// Garbage collection: plan unused packs, delete those planned more than
    /// a safety window ago. Safe while backups run.
    Prune(prune::PruneArgs),
    /// Repository maintenance (GC, repack, orphan packs, index compaction).
    #[command(subcommand)]
    Maintenance(maintenance::MaintenanceCommand),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Dump(a) => dump::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Key(k) => key::run(g, k),
        Command::Check(a) => check::run(g, a),
        Command::Repair(c) => repair::run(g, c),
        Command::Stats(a) => stats::run(g, a),
        Command::Diff(a) => diff::run(g, a),
        Command::Find(a) => find::run(g, a),
        Command::Unlock(a) => unlock::run(g, a),
        Command::Upgrade(a) => upgrade::run(g, a),
        Command::Mount(a) => mount::run(g, a),
        Command::Kube(k) => kube::run(g, k),
        Command::Job(a) => job::run(a),
        Command::Kopiaexecutor(a) => kopiaexecutor::run(a),
        Command::Forget(a) => forget::run(g, a),
        Command::Copy(a) => copy::run(g, a),
        Command::Prune(a) => prune::run(g, a),
        Command::Maintenance(c) => maintenance::run(g, c),
    }
}
