//! `cairn job backup|restore|maintenance|catalog|forget|capture-resources|restore-resources
//! [--flag value ...]`: job mode, what the
//! binary runs inside the Jobs `cairn kube controller` creates. Flags, their `CAIRN_<FLAG>`
//! fallbacks and the mounted Secret files are cairn-kube's [`JobParams`]; the engine is
//! cairn-core ([`CoreEngine`]).
//!
//! Exit status: 0 when the job succeeded, 1 when it failed (the outcome, with the reason,
//! is in the termination message), 2 for bad arguments.

use anyhow::{Context, Result};
use cairn_engine::CoreEngine;
use cairn_kube::job::{run_job, JobCommand, JobParams};
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct JobArgs {
    /// What the job does.
    #[arg(value_enum)]
    pub kind: JobKind,
    /// Job flags: --location URL --password-file FILE [--credentials-dir DIR]
    /// [--cache-dir DIR] [--namespace NS --repository NAME] [--termination-log FILE],
    /// then per kind: backup --source DIR [--source-name NS/PVC] [--volume-backup NAME]
    /// [--storage-class C] [--exclude-config FILE] [--tag K=V]... [--checkpoint-interval D]; restore --snapshot ID
    /// --target DIR [--volume-restore NAME] [--include PATH]...; maintenance [--kind
    /// quick|full]; capture-resources --application-backup NAME; restore-resources
    /// --application-restore NAME --stage configuration|workloads (both also
    /// [--staging-dir DIR], TMPDIR by default); forget --tag K=V [--keep-last N]
    /// [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N]
    /// [--keep-yearly N]. Every flag falls back to CAIRN_<FLAG> (docs/KUBERNETES.md).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub flags: Vec<String>,
}

/// The kinds of job.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum JobKind {
    /// Back up a mounted volume.
    Backup,
    /// Restore a snapshot into a mounted volume.
    Restore,
    /// Maintain the repository.
    Maintenance,
    /// Refresh the RepositorySnapshot mirror.
    Catalog,
    /// Capture an ApplicationBackup's Kubernetes resources into one snapshot.
    CaptureResources,
    /// Restore one stage of an ApplicationRestore's Kubernetes resources.
    RestoreResources,
    /// Forget a BackupSchedule's snapshots its retention does not keep.
    Forget,
}

impl From<JobKind> for JobCommand {
    fn from(kind: JobKind) -> JobCommand {
        match kind {
            JobKind::Backup => JobCommand::Backup,
            JobKind::Restore => JobCommand::Restore,
            JobKind::Maintenance => JobCommand::Maintenance,
            JobKind::Catalog => JobCommand::Catalog,
            JobKind::CaptureResources => JobCommand::CaptureResources,
            JobKind::RestoreResources => JobCommand::RestoreResources,
            JobKind::Forget => JobCommand::Forget,
        }
    }
}

pub fn run(a: JobArgs) -> Result<ExitCode> {
    if matches!(a.kind, JobKind::Backup) {
        crate::malloc::restart_with_malloc_setting();
    }
    let env = |name: &str| std::env::var(name).ok();
    let params = match JobParams::parse(a.kind.into(), &a.flags, &env) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        let client = api_client(&params).await;
        run_job(params, Arc::new(CoreEngine), client).await
    })?;
    outln!("{}", outcome.to_message());
    if outcome.succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: {}", outcome.message);
        Ok(ExitCode::FAILURE)
    }
}

/// The cluster API, when the job serves a cairn resource (it has a namespace): in a pod the
/// service account, elsewhere the kubeconfig. Without one the job still runs; only the
/// progress patches and the snapshot mirror are skipped, and the outcome says what happened.
async fn api_client(params: &JobParams) -> Option<kube::Client> {
    params.namespace.as_ref()?;
    match kube::Client::try_default().await {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no Kubernetes API access: progress and RepositorySnapshots will not be written"
            );
            None
        }
    }
}
