//! `cairn kube crds|controller|mount`: the Kubernetes front end. `crds` prints the
//! CustomResourceDefinitions; `controller` runs the controller that turns VolumeBackups,
//! VolumeRestores and BackupRepositories into Jobs running `cairn job ...`; `mount`
//! FUSE-mounts the snapshot of a VolumeBackup, or the snapshots of an ApplicationBackup, on
//! this machine.

use crate::common::{GlobalOpts, LogFormat};
use anyhow::{anyhow, Context, Result};
use cairn_core::{OpenOptions, Repository, SnapshotFilter};
use cairn_engine::open_storage;
use cairn_fuse::{check_mountpoint, spawn_mount, spawn_named_mount, MountOptions, NamedSnapshot};
use cairn_kube::controller::JobSettings;
use cairn_kube::{
    crds_yaml, resolve_application_mount, resolve_mount, run_controller, ControllerOptions,
    VeleroOptions,
};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum KubeCommand {
    /// Print the cairn.io CustomResourceDefinitions as YAML (for kubectl apply).
    Crds,
    /// Run the controller (in the cluster, as the cairn Deployment).
    Controller(ControllerArgs),
    /// Mount the snapshot of a completed VolumeBackup, or the snapshots of an
    /// ApplicationBackup (`volumes/<namespace>/<pvc>/`, `resources/`), read-only on DIR
    /// (needs `get` on the backup, its BackupRepository and their Secrets).
    Mount(MountArgs),
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The backup: a VolumeBackup as NAME, NAMESPACE/NAME or volumebackup/NAME; an
    /// ApplicationBackup as applicationbackup/NAME or abk/NAME (namespace from -n).
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
    /// Address serving Prometheus metrics on /metrics (host:port); `0` or empty disables it.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// Velero's namespace: serve as Velero's data mover for DataUploads and DataDownloads
    /// there whose `spec.datamover` is `cairn`. Off when absent.
    #[arg(long)]
    pub velero_namespace: Option<String>,
    /// Velero's node agent ConfigMap (its `--node-agent-configmap`), whose `backupPVC`
    /// section chooses the backupPVC's storage class and access mode.
    #[arg(long, requires = "velero_namespace")]
    pub velero_node_agent_configmap: Option<String>,
    /// A Secret in the controller's namespace whose key `repository-password` is the
    /// password of cairn's Velero repositories, instead of Velero's
    /// `velero-repo-credentials`.
    #[arg(long, requires = "velero_namespace")]
    pub velero_password_secret: Option<String>,
}

pub fn run(g: &GlobalOpts, command: KubeCommand) -> Result<ExitCode> {
    match command {
        KubeCommand::Crds => {
            out!("{}", crds_yaml());
            Ok(ExitCode::SUCCESS)
        }
        KubeCommand::Controller(a) => controller(a, g.log_format),
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

/// What `cairn kube mount` was asked to mount.
#[derive(Debug, PartialEq, Eq)]
enum BackupKind {
    Volume,
    Application,
}

/// Reads `KIND/NAME` (kubectl's spelling: `applicationbackup/NAME`, `abk/NAME`,
/// `volumebackup/NAME`, `vb/NAME`), else a VolumeBackup's `NAME` or `NAMESPACE/NAME`.
fn backup_ref(arg: &str, flag: Option<&str>) -> Result<(BackupKind, Option<String>, String)> {
    if let Some((kind, rest)) = arg.split_once('/') {
        match kind.to_ascii_lowercase().as_str() {
            "applicationbackup" | "applicationbackups" | "applicationbackup.cairn.io" | "abk" => {
                if rest.is_empty() || rest.contains('/') {
                    return Err(anyhow!(cairn_core::Error::Usage(format!(
                        "{arg:?} is not an ApplicationBackup: use applicationbackup/NAME, with \
                         -n NAMESPACE for another namespace"
                    ))));
                }
                return Ok((
                    BackupKind::Application,
                    flag.map(str::to_string),
                    rest.to_string(),
                ));
            }
            "volumebackup" | "volumebackups" | "volumebackup.cairn.io" | "vb" => {
                let (ns, name) = volume_backup_name(rest, flag)?;
                return Ok((BackupKind::Volume, ns, name));
            }
            _ => {}
        }
    }
    let (ns, name) = volume_backup_name(arg, flag)?;
    Ok((BackupKind::Volume, ns, name))
}

fn mount(a: MountArgs) -> Result<ExitCode> {
    let (kind, namespace, name) = backup_ref(&a.volume_backup, a.namespace.as_deref())?;
    if kind == BackupKind::Application {
        return mount_application(&a, namespace, &name);
    }
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
    };
    let access = &target.repository;
    let storage = open_storage(access)?;
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

/// Connects to the cluster and runs `f` with the client and the namespace to use.
fn with_cluster<T>(
    namespace: Option<String>,
    f: impl AsyncFnOnce(::kube::Client, String) -> Result<T>,
) -> Result<T> {
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
        f(client, namespace).await
    })
}

/// Mounts an ApplicationBackup: each volume's snapshot at `volumes/<namespace>/<pvc>/`, the
/// resource snapshot's `resources/` directory at `resources/`.
fn mount_application(a: &MountArgs, namespace: Option<String>, name: &str) -> Result<ExitCode> {
    check_mountpoint(&a.dir)?;
    let (namespace, target) = with_cluster(namespace, async |client, namespace| {
        let target = resolve_application_mount(&client, &namespace, name).await?;
        Ok((namespace, target))
    })?;
    let access = &target.repository;
    let storage = open_storage(access)?;
    let open = OpenOptions {
        cache_dir: OpenOptions::default_cache_dir(),
        tolerate_damage: false,
    };
    let what = format!("ApplicationBackup {namespace}/{name}");
    let repo = Repository::open(storage, &access.password, &open)
        .with_context(|| format!("opening {} for {what}", access.location))?;
    let find = |id: &str| {
        repo.find_snapshot(id, &SnapshotFilter::default())
            .map(|(sid, _)| sid)
            .with_context(|| format!("finding snapshot {id} of {what} in {}", access.location))
    };
    let mut named = Vec::new();
    for v in &target.volumes {
        named.push(NamedSnapshot {
            path: vec![
                "volumes".into(),
                v.namespace.clone(),
                v.persistent_volume_claim.clone(),
            ],
            snapshot: find(&v.snapshot_id)?,
            subdir: None,
        });
    }
    if let Some(id) = &target.resource_snapshot_id {
        named.push(NamedSnapshot {
            path: vec!["resources".into()],
            snapshot: find(id)?,
            subdir: Some("resources".into()),
        });
    }
    let opts = MountOptions {
        fsname: Some(format!("cairn:{namespace}/{name}")),
        allow_other: a.allow_other,
        ..MountOptions::default()
    };
    let handle = spawn_named_mount(repo, &a.dir, &named, &opts)?;
    eprintln!(
        "{what} ({} volume(s){}) mounted at {}; press Ctrl-C or run `fusermount3 -u {}` to \
         unmount",
        target.volumes.len(),
        if target.resource_snapshot_id.is_some() {
            " and its resources"
        } else {
            ""
        },
        a.dir.display(),
        a.dir.display()
    );
    handle.serve_until_signal()?;
    Ok(ExitCode::SUCCESS)
}

fn controller(a: ControllerArgs, log_format: LogFormat) -> Result<ExitCode> {
    let metrics_address =
        cairn_kube::metrics::parse_address(&a.metrics_address).map_err(anyhow::Error::msg)?;
    let options = ControllerOptions {
        namespace: a.namespace,
        config_map: a.config_map,
        jobs: JobSettings {
            image: a.job_image,
            service_account: a.job_service_account,
            max_attempts: a.max_attempts,
            log_format: log_format.as_str().into(),
            ..JobSettings::default()
        },
        velero: a.velero_namespace.map(|namespace| VeleroOptions {
            namespace,
            node_agent_config: a.velero_node_agent_configmap,
            password_secret: a.velero_password_secret,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = ::kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
        )?;
        if let Some(address) = metrics_address {
            let server = cairn_kube::metrics::MetricsServer::bind(address).await?;
            tokio::spawn(server.run(
                client.clone(),
                options.namespace.clone(),
                options.config_map.clone(),
            ));
        }
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
