//! `cairn kube crds|controller|mount`: the Kubernetes front end. `crds` prints the
//! CustomResourceDefinitions; `controller` runs the controller that turns VolumeBackups,
//! VolumeRestores and BackupRepositories into Jobs running `cairn job ...`; `mount`
//! FUSE-mounts the snapshot of a VolumeBackup on this machine.

use crate::engine::export_credentials;
use anyhow::{Context, Result};
use cairn_core::{OpenOptions, Repository, SnapshotFilter};
use cairn_fuse::{check_mountpoint, spawn_mount, MountOptions};
use cairn_kube::controller::JobSettings;
use cairn_kube::{crds_yaml, resolve_mount, run_controller, ControllerOptions};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum KubeCommand {
    /// Print the cairn.io CustomResourceDefinitions as YAML (for kubectl apply).
    Crds,
    /// Run the controller (in the cluster, as the cairn Deployment).
    Controller(ControllerArgs),
    /// Mount the snapshot of a completed VolumeBackup read-only on DIR (needs `get` on the
    /// VolumeBackup, its BackupRepository and their Secrets).
    Mount(MountArgs),
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The VolumeBackup.
    pub volume_backup: String,
    /// Empty directory to mount on.
    pub dir: PathBuf,
    /// Namespace of the VolumeBackup (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Let other users read the mount (allow_other).
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Namespace of the controller and its ConfigMap.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the ConfigMap holding the KDMP-compatible settings.
    #[arg(long, default_value = "cairn-config")]
    pub config_map: String,
    /// Image the backup, restore and maintenance Jobs run (normally this image).
    #[arg(long, default_value_t = JobSettings::default().image)]
    pub job_image: String,
    /// ServiceAccount the Jobs run as, in each namespace that has backups.
    #[arg(long, default_value_t = JobSettings::default().service_account)]
    pub job_service_account: String,
    /// Jobs created per backup or restore before it is marked Failed (1 = no retry).
    #[arg(long, default_value_t = JobSettings::default().max_attempts,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

pub fn run(command: KubeCommand) -> Result<ExitCode> {
    match command {
        KubeCommand::Crds => {
            print!("{}", crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        KubeCommand::Controller(a) => controller(a),
        KubeCommand::Mount(a) => mount(a),
    }
}

fn mount(a: MountArgs) -> Result<ExitCode> {
    // Check before talking to the cluster.
    check_mountpoint(&a.dir)?;
    let target = {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            let client = ::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (KUBECONFIG)")?;
            let namespace = a
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            resolve_mount(&client, &namespace, &a.volume_backup)
                .await
                .with_context(|| format!("resolving VolumeBackup {namespace}/{}", a.volume_backup))
        })?
        // The runtime's threads end here, before the environment changes.
    };
    let access = &target.repository;
    export_credentials(&access.credentials);
    let storage = cairn_storage::open_with(&access.location, &Default::default())?;
    let open = OpenOptions {
        cache_dir: OpenOptions::default_cache_dir(),
        tolerate_damage: false,
    };
    let repo = Repository::open(storage, &access.password, &open)?;
    let (snapshot, _) = repo.find_snapshot(&target.snapshot_id, &SnapshotFilter::default())?;
    let opts = MountOptions {
        snapshot: Some(snapshot),
        fsname: Some(format!("cairn:{}", a.volume_backup)),
        allow_other: a.allow_other,
        ..MountOptions::default()
    };
    let handle = spawn_mount(repo, &a.dir, &opts)?;
    eprintln!(
        "snapshot {} of VolumeBackup {} mounted at {}; press Ctrl-C or run `fusermount3 -u {}` \
         to unmount",
        snapshot.short(),
        a.volume_backup,
        a.dir.display(),
        a.dir.display()
    );
    handle.serve_until_signal()?;
    Ok(ExitCode::SUCCESS)
}

fn controller(a: ControllerArgs) -> Result<ExitCode> {
    let options = ControllerOptions {
        namespace: a.namespace,
        config_map: a.config_map,
        jobs: JobSettings {
            image: a.job_image,
            service_account: a.job_service_account,
            max_attempts: a.max_attempts,
            ..JobSettings::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = ::kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
        )?;
        tracing::info!(namespace = %options.namespace, config_map = %options.config_map, "controller starting");
        run_controller(client, options)
            .await
            .context("running the controller")
    })?;
    Ok(ExitCode::SUCCESS)
}
