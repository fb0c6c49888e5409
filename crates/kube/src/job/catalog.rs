//! The RepositorySnapshot mirror: one object per repository snapshot, written with
//! server-side apply, and stale ones deleted after a full listing.

use super::{JobParams, Mirror, SnapshotSummary};
use crate::controller::{short_hash, LABEL_REPOSITORY};
use crate::crd::{RepositorySnapshot, RepositorySnapshotSpec, SnapshotSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use std::collections::BTreeSet;

/// Field manager of job-mode writes.
const MANAGER: &str = "cairn-job";

/// Name of the RepositorySnapshot mirroring `id` in `repository`: stable and unique.
pub fn snapshot_object_name(repository: &str, id: &str) -> String {
    let short: String = id.chars().take(16).collect::<String>().to_lowercase();
    let base = format!("{repository}-{short}");
    if base.len() <= 253
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        base
    } else {
        format!("snapshot-{}", short_hash(&format!("{repository}/{id}")))
    }
}

/// The RepositorySnapshot for one snapshot of `repository` in `namespace`.
pub fn snapshot_object(
    namespace: &str,
    repository: &str,
    s: &SnapshotSummary,
) -> RepositorySnapshot {
    let (pvc_ns, pvc) = match s.source.split_once('/') {
        // `resources:<ns>/<name>` (an application's configuration) names no PVC.
        Some((ns, pvc))
            if !ns.is_empty() && !ns.contains(':') && !pvc.is_empty() && !pvc.contains('/') =>
        {
            (Some(ns.to_string()), Some(pvc.to_string()))
        }
        _ => (None, None),
    };
    let spec = RepositorySnapshotSpec {
        repository: repository.to_string(),
        snapshot_id: s.id.clone(),
        source: SnapshotSource {
            namespace: pvc_ns,
            persistent_volume_claim: pvc,
            path: s.source.clone(),
        },
        time: Time(s.time),
        size_bytes: s.size_bytes,
        tags: s.tags.clone(),
    };
    let mut object = RepositorySnapshot::new(&snapshot_object_name(repository, &s.id), spec);
    object.metadata.namespace = Some(namespace.to_string());
    object.metadata.labels = Some([(LABEL_REPOSITORY.to_string(), repository.to_string())].into());
    object
}

pub(super) async fn mirror(
    params: &JobParams,
    client: kube::Client,
    mirror: Mirror,
) -> Result<(), kube::Error> {
    let (Some(ns), Some(repo)) = (
        params.namespace.as_deref(),
        params.repository_name.as_deref(),
    ) else {
        return Ok(());
    };
    let api: Api<RepositorySnapshot> = Api::namespaced(client, ns);
    let pp = PatchParams::apply(MANAGER).force();
    // Only a full listing may delete mirrors of snapshots it did not see.
    let full = matches!(mirror, Mirror::All(_));
    let list = match mirror {
        Mirror::Nothing => return Ok(()),
        Mirror::One(s) => vec![s],
        Mirror::All(list) => list,
    };
    let mut keep = BTreeSet::new();
    for s in &list {
        let object = snapshot_object(ns, repo, s);
        let name = object.name_any();
        api.patch(&name, &pp, &Patch::Apply(&object)).await?;
        keep.insert(name);
    }
    if full {
        let existing = api
            .list(&ListParams::default().labels(&format!("{LABEL_REPOSITORY}={repo}")))
            .await?;
        for object in existing
            .items
            .iter()
            .filter(|o| !keep.contains(&o.name_any()))
        {
            api.delete(&object.name_any(), &DeleteParams::default())
                .await?;
        }
    }
    Ok(())
}
