//! Reads what the decision functions look at. Reads go to the API server directly (not a
//! cache) so that job counts include Jobs created a moment ago.

use super::exec::selector_string;
use super::{api_err, snapshot_class_resource, volume_snapshot_resource, AdapterError};
use crate::config::Config;
use crate::controller::{
    label_value, ApplicationBackupObserved, ApplicationRestoreObserved, BackupObserved, JobInfo,
    JobKind, JobWaiting, RepositoryObserved, RestoreObserved, RuleTarget, SnapshotClassInfo,
    SnapshotInfo, LABEL_APP_BACKUP, LABEL_APP_RESTORE, LABEL_JOB_KIND,
};
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase, ApplicationRestore, BackupRepository, BackupRule,
    VolumeBackup, VolumeBackupPhase, VolumeRestore,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;

/// Reads and parses the ConfigMap; a missing ConfigMap means all defaults.
pub async fn read_config(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Config, AdapterError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading ConfigMap {namespace}/{name}")))?;
    Ok(Config::from_data(
        &cm.and_then(|c| c.data).unwrap_or_default(),
    ))
}

/// Why a pending pod has not started: a container's waiting reason, or the scheduler's.
fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.clone());
    if let Some(w) = waiting {
        let reason = w.reason.unwrap_or_else(|| "Waiting".into());
        return Some(match w.message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason,
        });
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    Some(match unscheduled {
        Some(c) => format!(
            "{}: {}",
            c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
            c.message.clone().unwrap_or_default()
        ),
        None => "the pod is Pending".into(),
    })
}

pub(super) async fn job_info(
    client: &kube::Client,
    ns: &str,
    name: Option<&str>,
) -> Result<Option<JobInfo>, AdapterError> {
    let Some(name) = name else { return Ok(None) };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let Some(job) = jobs
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading Job {ns}/{name}")))?
    else {
        return Ok(None);
    };
    let status = job.status.unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let failed = condition("Failed");
    let mut info = JobInfo {
        name: name.to_string(),
        succeeded: condition("Complete").is_some() || status.succeeded.unwrap_or(0) > 0,
        failed: failed.is_some(),
        failure_message: failed.map(|c| {
            format!(
                "{}: {}",
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default()
            )
        }),
        termination_message: None,
        waiting: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(api_err(format!("listing pods of Job {ns}/{name}")))?;
    if info.is_running() {
        let started = list.items.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, None | Some("Pending"))
        });
        if !started {
            if let Some(created) = job.metadata.creation_timestamp.as_ref() {
                info.waiting = Some(JobWaiting {
                    since: created.0,
                    reason: list
                        .items
                        .iter()
                        .find_map(pending_reason)
                        .unwrap_or_else(|| "no pod was created".into()),
                });
            }
        }
    } else {
        info.termination_message = list
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
            .next_back();
    }
    Ok(Some(info))
}

pub(super) async fn running_jobs(
    client: &kube::Client,
    kind: JobKind,
) -> Result<u32, AdapterError> {
    let jobs: Api<Job> = Api::all(client.clone());
    let list = jobs
        .list(&ListParams::default().labels(&format!("{LABEL_JOB_KIND}={}", kind.as_str())))
        .await
        .map_err(api_err(format!("counting {} Jobs", kind.as_str())))?;
    let running = list.items.iter().filter(|j| job_running(j));
    Ok(u32::try_from(running.count()).unwrap_or(u32::MAX))
}

/// Whether a Job has neither completed nor failed.
pub(super) fn job_running(job: &Job) -> bool {
    let s = job.status.clone().unwrap_or_default();
    !s.conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Node of a running pod that mounts `claim`.
async fn claim_node(
    client: &kube::Client,
    ns: &str,
    claim: &str,
) -> Result<Option<String>, AdapterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing pods in {ns}")))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .find(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
        })
        .and_then(|p| p.spec?.node_name))
}

pub(super) fn snapshot_info(object: DynamicObject) -> SnapshotInfo {
    let status = object.data.get("status").cloned().unwrap_or_default();
    SnapshotInfo {
        name: object.name_any(),
        ready: status
            .get("readyToUse")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        error: status
            .pointer("/error/message")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        restore_size: status
            .get("restoreSize")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        created: object.metadata.creation_timestamp.map(|t| t.0),
        cut: status.get("creationTime").is_some_and(|t| !t.is_null()),
    }
}

/// Observes everything [`crate::controller::decide_backup`] needs.
pub async fn observe_backup(
    client: &kube::Client,
    vb: &VolumeBackup,
) -> Result<BackupObserved, AdapterError> {
    let ns = vb.namespace().unwrap_or_default();
    let status = vb.status.clone().unwrap_or_default();
    let repo_ns = vb
        .spec
        .repository_namespace
        .clone()
        .unwrap_or_else(|| ns.clone());
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &repo_ns);
    let repository = repos
        .get_opt(&vb.spec.repository)
        .await
        .map_err(api_err("reading the BackupRepository"))?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let claim = &vb.spec.source.persistent_volume_claim;
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(api_err(format!("reading PVC {ns}/{claim}")))?;
    let class_name = pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.storage_class_name.clone());
    let provisioner = match class_name {
        Some(name) => {
            let classes: Api<StorageClass> = Api::all(client.clone());
            classes
                .get_opt(&name)
                .await
                .map_err(api_err(format!("reading StorageClass {name}")))?
                .map(|c| c.provisioner)
        }
        None => None,
    };
    // Needed to resolve the mode, and again to name the class of the VolumeSnapshot, which
    // a BackupRule's pre commands put off to a later reconcile than the mode.
    let snapshot_classes = if status.mode.is_none() || status.phase == VolumeBackupPhase::New {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &snapshot_class_resource());
        snapshot_classes_of(
            api.list(&ListParams::default())
                .await
                .map_err(api_err("listing VolumeSnapshotClasses"))?
                .items,
        )
    } else {
        Vec::new()
    };
    let rule = match &vb.spec.rule {
        Some(r) => Api::<BackupRule>::namespaced(client.clone(), &ns)
            .get_opt(&r.name)
            .await
            .map_err(api_err("reading the BackupRule"))?,
        None => None,
    };
    let volume_snapshot = match &status.volume_snapshot_name {
        Some(name) => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
            api.get_opt(name)
                .await
                .map_err(api_err(format!("reading VolumeSnapshot {ns}/{name}")))?
                .map(snapshot_info)
        }
        None => None,
    };
    let backup_pvc_exists = match &status.backup_pvc_name {
        Some(name) => pvcs
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading PVC {ns}/{name}")))?
            .is_some(),
        None => false,
    };
    let terminal = status.phase.is_terminal();
    Ok(BackupObserved {
        backup: vb.clone(),
        repository,
        pvc,
        provisioner,
        snapshot_classes,
        rule,
        volume_snapshot,
        backup_pvc_exists,
        job: job_info(client, &ns, status.job_name.as_deref()).await?,
        pvc_node: if terminal {
            None
        } else {
            claim_node(client, &ns, claim).await?
        },
        running_backup_jobs: if terminal {
            0
        } else {
            running_jobs(client, JobKind::Backup).await?
        },
    })
}

/// Observes everything [`crate::controller::decide_restore`] needs.
pub async fn observe_restore(
    client: &kube::Client,
    vr: &VolumeRestore,
) -> Result<RestoreObserved, AdapterError> {
    let ns = vr.namespace().unwrap_or_default();
    let status = vr.status.clone().unwrap_or_default();
    let source_backup = match &vr.spec.source.volume_backup {
        Some(name) => Api::<VolumeBackup>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .map_err(api_err("reading the source VolumeBackup"))?,
        None => None,
    };
    let repo_name = source_backup
        .as_ref()
        .map(|b| b.spec.repository.clone())
        .or_else(|| vr.spec.source.repository.clone());
    let repo_ns = match &source_backup {
        Some(b) => b.spec.repository_namespace.clone(),
        None => vr.spec.source.repository_namespace.clone(),
    }
    .unwrap_or_else(|| ns.clone());
    let repository = match repo_name {
        Some(name) => Api::<BackupRepository>::namespaced(client.clone(), &repo_ns)
            .get_opt(&name)
            .await
            .map_err(api_err("reading the BackupRepository"))?,
        None => None,
    };
    let target = &vr.spec.target.persistent_volume_claim;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let target_pvc = pvcs
        .get_opt(target)
        .await
        .map_err(api_err(format!("reading PVC {ns}/{target}")))?;
    let rwo = target_pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.access_modes.clone())
        .unwrap_or_default()
        == ["ReadWriteOnce"];
    let terminal = status.phase.is_terminal();
    Ok(RestoreObserved {
        restore: vr.clone(),
        source_backup,
        repository,
        target_exists: target_pvc.is_some(),
        target_block: target_pvc.as_ref().is_some_and(crate::controller::is_block),
        target_node: if rwo && !terminal {
            claim_node(client, &ns, target).await?
        } else {
            None
        },
        job: job_info(client, &ns, status.job_name.as_deref()).await?,
        running_restore_jobs: if terminal {
            0
        } else {
            running_jobs(client, JobKind::Restore).await?
        },
    })
}

/// Observes everything [`crate::controller::decide_repository`] needs.
pub async fn observe_repository(
    client: &kube::Client,
    repo: &BackupRepository,
) -> Result<RepositoryObserved, AdapterError> {
    let ns = repo.namespace().unwrap_or_default();
    let status = repo.status.clone().unwrap_or_default();
    let running = [
        &status.maintenance.last_quick,
        &status.maintenance.last_full,
    ]
    .into_iter()
    .flatten()
    .find(|r| r.result == "Running")
    .map(|r| r.job_name.clone());
    Ok(RepositoryObserved {
        repository: repo.clone(),
        maintenance_job: job_info(client, &ns, running.as_deref()).await?,
        catalog_job: job_info(client, &ns, status.catalog_job.as_deref()).await?,
        running_maintenance_jobs: running_jobs(client, JobKind::Maintenance).await?,
    })
}

fn snapshot_classes_of(list: Vec<DynamicObject>) -> Vec<SnapshotClassInfo> {
    list.into_iter()
        .map(|c| SnapshotClassInfo {
            is_default: c
                .annotations()
                .get("snapshot.storage.kubernetes.io/is-default-class")
                .is_some_and(|v| v == "true"),
            driver: c
                .data
                .get("driver")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_string(),
            name: c.name_any(),
        })
        .collect()
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The namespaces an ApplicationBackup may touch before its status records them: the
/// named ones, the selected ones, or its own.
fn candidate_namespaces(ab: &ApplicationBackup, selected: &[String]) -> Vec<String> {
    let mut out: Vec<String> = ab.spec.included_namespaces.clone();
    out.extend(selected.iter().cloned());
    if ab.spec.included_namespaces.is_empty() && ab.spec.namespace_selector.is_none() {
        out.push(ab.namespace().unwrap_or_default());
    }
    out.retain(|n| !ab.spec.excluded_namespaces.contains(n));
    out.sort();
    out.dedup();
    out
}

/// Observes everything [`crate::controller::decide_application_backup`] needs, reading
/// only what the current phase looks at.
pub async fn observe_application_backup(
    client: &kube::Client,
    ab: &ApplicationBackup,
) -> Result<ApplicationBackupObserved, AdapterError> {
    let ns = ab.namespace().unwrap_or_default();
    let status = ab.status.clone().unwrap_or_default();
    let phase = status.phase;
    let deleting = ab.metadata.deletion_timestamp.is_some();
    let repository = Api::<BackupRepository>::namespaced(client.clone(), &ns)
        .get_opt(&ab.spec.repository)
        .await
        .map_err(api_err("reading the BackupRepository"))?;
    let mut obs = ApplicationBackupObserved {
        backup: ab.clone(),
        repository,
        selected_namespaces: Vec::new(),
        pvcs: Vec::new(),
        pods: Vec::new(),
        pv_drivers: BTreeMap::new(),
        snapshot_classes: Vec::new(),
        rules: Vec::new(),
        snapshots: BTreeMap::new(),
        children: Vec::new(),
        job: None,
    };
    if phase == ApplicationBackupPhase::New && !deleting {
        if let Some(selector) = &ab.spec.namespace_selector {
            let api: Api<Namespace> = Api::all(client.clone());
            obs.selected_namespaces = api
                .list(&ListParams::default().labels(&selector_string(selector)))
                .await
                .map_err(api_err("listing namespaces by spec.namespaceSelector"))?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
        }
        let pvc_params = match &ab.spec.label_selector {
            Some(s) => ListParams::default().labels(&selector_string(s)),
            None => ListParams::default(),
        };
        for n in candidate_namespaces(ab, &obs.selected_namespaces) {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &n);
            obs.pvcs.extend(
                pvcs.list(&pvc_params)
                    .await
                    .map_err(api_err(format!("listing PVCs in {n}")))?
                    .items,
            );
            if let Some(selector) = &ab.spec.pod_selector {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &n);
                obs.pods.extend(
                    pods.list(&ListParams::default().labels(&selector_string(selector)))
                        .await
                        .map_err(api_err(format!("listing pods in {n}")))?
                        .items,
                );
            }
        }
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        obs.pv_drivers = pvs
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing PersistentVolumes"))?
            .items
            .into_iter()
            .filter_map(|pv| {
                let driver = pv.spec.as_ref()?.csi.as_ref()?.driver.clone();
                Some((pv.name_any(), driver))
            })
            .collect();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &snapshot_class_resource());
        obs.snapshot_classes = snapshot_classes_of(
            api.list(&ListParams::default())
                .await
                .map_err(api_err("listing VolumeSnapshotClasses"))?
                .items,
        );
    }
    let hooks_pending = matches!(
        phase,
        ApplicationBackupPhase::New
            | ApplicationBackupPhase::RunningPreRules
            | ApplicationBackupPhase::Snapshotting
            | ApplicationBackupPhase::RunningPostRules
    );
    if hooks_pending && !deleting {
        for r in &ab.spec.rules {
            let rule_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
            let rule = Api::<BackupRule>::namespaced(client.clone(), &rule_ns)
                .get_opt(&r.name)
                .await
                .map_err(api_err(format!("reading BackupRule {rule_ns}/{}", r.name)))?;
            let selector = r
                .pod_selector
                .as_ref()
                .or(rule.as_ref().map(|x| &x.spec.pod_selector));
            let pods = match selector {
                Some(selector) => Api::<Pod>::namespaced(client.clone(), &rule_ns)
                    .list(&ListParams::default().labels(&selector_string(selector)))
                    .await
                    .map_err(api_err(format!(
                        "listing pods for BackupRule {rule_ns}/{}",
                        r.name
                    )))?
                    .items
                    .iter()
                    .filter(|p| is_running(p))
                    .map(ResourceExt::name_any)
                    .collect(),
                None => Vec::new(),
            };
            obs.rules.push(RuleTarget {
                namespace: rule_ns,
                name: r.name.clone(),
                rule,
                pods,
            });
        }
    }
    let label = format!(
        "{LABEL_APP_BACKUP}={}",
        label_value(&format!("{ns}.{}", ab.name_any()))
    );
    if !phase.is_terminal() || deleting {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &volume_snapshot_resource());
        obs.snapshots = api
            .list(&ListParams::default().labels(&label))
            .await
            .map_err(api_err("listing the backup's VolumeSnapshots"))?
            .items
            .into_iter()
            .map(|o| {
                (
                    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                    snapshot_info(o),
                )
            })
            .collect();
    }
    if phase == ApplicationBackupPhase::Uploading || deleting {
        obs.children = Api::<VolumeBackup>::all(client.clone())
            .list(&ListParams::default().labels(&label))
            .await
            .map_err(api_err("listing the backup's VolumeBackups"))?
            .items;
    }
    obs.job = job_info(client, &ns, status.job_name.as_deref()).await?;
    Ok(obs)
}

/// Observes everything [`crate::controller::decide_application_restore`] needs.
pub async fn observe_application_restore(
    client: &kube::Client,
    ar: &ApplicationRestore,
) -> Result<ApplicationRestoreObserved, AdapterError> {
    let ns = ar.namespace().unwrap_or_default();
    let status = ar.status.clone().unwrap_or_default();
    let source_backup = match &ar.spec.source.application_backup {
        Some(name) => Api::<ApplicationBackup>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await
            .map_err(api_err("reading the source ApplicationBackup"))?,
        None => None,
    };
    let repo_name = status
        .repository
        .clone()
        .or_else(|| source_backup.as_ref().map(|b| b.spec.repository.clone()))
        .or_else(|| ar.spec.source.repository.clone());
    let repository = match repo_name {
        Some(name) => Api::<BackupRepository>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(api_err("reading the BackupRepository"))?,
        None => None,
    };
    let children = if status.phase.is_terminal() {
        Vec::new()
    } else {
        let label = format!(
            "{LABEL_APP_RESTORE}={}",
            label_value(&format!("{ns}.{}", ar.name_any()))
        );
        Api::<VolumeRestore>::all(client.clone())
            .list(&ListParams::default().labels(&label))
            .await
            .map_err(api_err("listing the restore's VolumeRestores"))?
            .items
    };
    Ok(ApplicationRestoreObserved {
        restore: ar.clone(),
        source_backup,
        repository,
        children,
        job: job_info(client, &ns, status.job_name.as_deref()).await?,
    })
}
