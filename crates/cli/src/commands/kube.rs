//! `cairn kube crds|controller|mount`: the Kubernetes front end. `crds` prints the
//! CustomResourceDefinitions; `controller` runs the controller that turns VolumeBackups,
//! VolumeRestores and BackupRepositories into Jobs running `cairn job ...`; `mount`
//! FUSE-mounts the snapshot of a VolumeBackup on this machine.

use crate::engine::export_credentials;
use anyhow::{anyhow, Context, Result};
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
    /// The VolumeBackup: NAME, or NAMESPACE/NAME.
    pub volume_backup: String,
    /// Empty directory to mount on.
    pub dir: PathBuf,
    /// Namespace of the VolumeBackup (default: the one in NAMESPACE/NAME, else the
    /// kubeconfig context's).
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
            out!("{}", crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        KubeCommand::Controller(a) => controller(a),
        KubeCommand::Mount(a) => {
            crate::malloc::restart_with_malloc_setting();
            mount(a)
        }
    }
}

/// Splits `NAMESPACE/NAME` (or `NAME`) and reconciles it with `-n`.
fn volume_backup_name(arg: &str, flag: Option<&str>) -> Result<(Option<String>, String)> {
    let usage = |m: String| anyhow!(cairn_core::Error::Usage(m));
    let (namespace, name) = match arg.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, arg),
    };
    if name.is_empty() || name.contains('/') || namespace == Some("") {
        return Err(usage(format!(
            "{arg:?} is not a VolumeBackup name: use NAME or NAMESPACE/NAME"
        )));
    }
    match (namespace, flag) {
        (Some(a), Some(b)) if a != b => Err(usage(format!(
            "{arg:?} is in namespace {a:?} but -n says {b:?}; give one of them"
        ))),
        (ns, flag) => Ok((ns.or(flag).map(str::to_string), name.to_string())),
    }
}

fn mount(a: MountArgs) -> Result<ExitCode> {
    let (namespace, name) = volume_backup_name(&a.volume_backup, a.namespace.as_deref())?;
    // Check before talking to the cluster.
    check_mountpoint(&a.dir)?;
    let (namespace, target) = {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            let client = ::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (KUBECONFIG)")?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            // The errors name what was read and why it failed.
            let target = resolve_mount(&client, &namespace, &name).await?;
            anyhow::Ok((namespace, target))
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
    let repo = Repository::open(storage, &access.password, &open).with_context(|| {
        format!(
            "opening {} for VolumeBackup {namespace}/{name}",
            access.location
        )
    })?;
    let (snapshot, _) = repo
        .find_snapshot(&target.snapshot_id, &SnapshotFilter::default())
        .with_context(|| {
            format!(
                "finding snapshot {} of VolumeBackup {namespace}/{name} in {}",
                target.snapshot_id, access.location
            )
        })?;
    let opts = MountOptions {
        snapshot: Some(snapshot),
        fsname: Some(format!("cairn:{namespace}/{name}")),
        allow_other: a.allow_other,
        ..MountOptions::default()
    };
    let handle = spawn_mount(repo, &a.dir, &opts)?;
    eprintln!(
        "snapshot {} of VolumeBackup {namespace}/{name} mounted at {}; press Ctrl-C or run \
         `fusermount3 -u {}` to unmount",
        snapshot.short(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_backup_names_take_the_namespace_from_the_name_or_the_flag() {
        let ok = |arg, flag| volume_backup_name(arg, flag).unwrap();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(ok("db", None), (None, "db".into()));
        assert_eq!(ok("db", Some("shop")), (some("shop"), "db".into()));
        assert_eq!(ok("shop/db", None), (some("shop"), "db".into()));
        assert_eq!(ok("shop/db", Some("shop")), (some("shop"), "db".into()));
        for (arg, flag) in [("a/b/c", None), ("/db", None), ("shop/", None), ("", None)] {
            let e = volume_backup_name(arg, flag).unwrap_err();
            assert_eq!(crate::output::exit_code(&e), 2, "{arg:?}: {e}");
        }
        let e = volume_backup_name("shop/db", Some("prod")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"shop/db\" is in namespace \"shop\" but -n says \"prod\"; give one of them"
        );
    }
}
