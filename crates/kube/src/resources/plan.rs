//! A restore plan from a captured tree: which objects are restored (`includedResources` /
//! `excludedResources`), how they are rewritten (`namespaceMapping`,
//! `storageClassMapping`), in which order, and which PVCs are filled from the repository.
//!
//! Rewritten: `metadata.namespace` of every object; a mapped Namespace's name (and its
//! `kubernetes.io/metadata.name` label); the `namespace` of RoleBinding subjects; PVC
//! `spec.storageClassName` and StatefulSet `volumeClaimTemplates[].spec.storageClassName`.
//! Nothing else: names inside free text (DNS names in env values, a Service's
//! `externalName`) keep the old namespace.

use super::capture::ANNOTATION_SNAPSHOT_ID;
use super::layout::CapturedObject;
use super::{group_of, name_of, namespace_of, KindFilter, ResourceType};
use crate::crd::{ResourceOutcome, RestoreVolume};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The two resource stages of an ApplicationRestore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Namespaces, then ServiceAccounts, ConfigMaps, Secrets, RBAC and policies, then PVCs
    /// (those with repository data become volumes to fill instead).
    Configuration,
    /// Everything after PVCs, workloads last.
    Workloads,
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "configuration" => Ok(Stage::Configuration),
            "workloads" => Ok(Stage::Workloads),
            other => Err(format!(
                "unknown stage {other:?}; expected configuration or workloads"
            )),
        }
    }
}

impl Stage {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Configuration => "configuration",
            Stage::Workloads => "workloads",
        }
    }

    /// Whether objects of `rank` are restored in this stage.
    pub fn includes(self, rank: Rank) -> bool {
        match self {
            Stage::Configuration => rank <= Rank::Volume,
            Stage::Workloads => rank > Rank::Volume,
        }
    }
}

/// Restore order; objects of a lower rank are created first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// Namespaces.
    Namespace,
    /// What pods read: ServiceAccounts, ConfigMaps, Secrets, RBAC, limits, policies.
    Configuration,
    /// PersistentVolumeClaims.
    Volume,
    /// Everything else (Services, custom resources, ...).
    Other,
    /// Workloads: Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, Pods.
    Workload,
}

const CONFIGURATION: [(&str, &str); 8] = [
    ("", "ServiceAccount"),
    ("", "ConfigMap"),
    ("", "Secret"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("", "LimitRange"),
    ("", "ResourceQuota"),
    ("networking.k8s.io", "NetworkPolicy"),
];

const WORKLOADS: [(&str, &str); 7] = [
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("", "Pod"),
];

/// The rank of a type and its position inside the rank.
pub fn rank_of(group: &str, kind: &str) -> (Rank, usize) {
    let at = |list: &[(&str, &str)]| list.iter().position(|&(g, k)| g == group && k == kind);
    if group.is_empty() && kind == "Namespace" {
        return (Rank::Namespace, 0);
    }
    if group.is_empty() && kind == "PersistentVolumeClaim" {
        return (Rank::Volume, 0);
    }
    if let Some(i) = at(&CONFIGURATION) {
        return (Rank::Configuration, i);
    }
    if let Some(i) = at(&WORKLOADS) {
        return (Rank::Workload, i);
    }
    (Rank::Other, 0)
}

/// What the ApplicationRestore asks for.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Old namespace -> new one.
    pub namespace_mapping: BTreeMap<String, String>,
    /// Old StorageClass -> new one.
    pub storage_class_mapping: BTreeMap<String, String>,
    /// `includedResources` / `excludedResources`.
    pub filter: KindFilter,
}

impl RestoreOptions {
    fn namespace(&self, ns: &str) -> String {
        self.namespace_mapping
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_string())
    }
}

/// One object to restore.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedObject {
    /// Order.
    pub rank: Rank,
    /// Its type in the target cluster (version as captured).
    pub resource: ResourceType,
    /// Namespace after mapping; None for a Namespace.
    pub namespace: Option<String>,
    /// Name (after mapping for a Namespace).
    pub name: String,
    /// The object to create.
    pub object: Value,
    /// For a PVC whose data is in the repository: the volume to fill instead of creating it.
    pub volume: Option<RestoreVolume>,
}

impl PlannedObject {
    /// How the restore status names it.
    pub fn outcome(&self, outcome: &str, message: String) -> ResourceOutcome {
        ResourceOutcome {
            kind: self.resource.group_kind(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            outcome: outcome.into(),
            message,
        }
    }
}

/// The ordered objects, and the captured ones that cannot be restored at all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// In restore order.
    pub objects: Vec<PlannedObject>,
    /// Objects that cannot be restored (kind not served here, PVC without a size).
    pub failures: Vec<ResourceOutcome>,
}

impl Plan {
    /// The objects of one stage, in order.
    pub fn stage(&self, stage: Stage) -> impl Iterator<Item = &PlannedObject> {
        self.objects.iter().filter(move |o| stage.includes(o.rank))
    }
}

/// Plans the restore of `captured` into a cluster serving `types`.
///
/// Every namespace an object is restored into gets a Namespace first, the captured one
/// (renamed when mapped) or a bare one when it was not captured or is filtered out.
pub fn plan(captured: &[CapturedObject], types: &[ResourceType], opts: &RestoreOptions) -> Plan {
    let mut out = Plan::default();
    let mut namespaces_needed = BTreeSet::new();
    for c in captured {
        let o = &c.object;
        let api_version = o["apiVersion"].as_str().unwrap_or_default();
        let group = group_of(api_version);
        let kind = o["kind"].as_str().unwrap_or_default();
        let version = api_version.rsplit('/').next().unwrap_or_default();
        let Some(served) = types.iter().find(|t| t.group == group && t.kind == kind) else {
            out.failures.push(ResourceOutcome {
                kind: format!("{}/{kind}", super::group_dir(group)),
                namespace: namespace_of(o).map(|ns| opts.namespace(ns)),
                name: name_of(o).into(),
                outcome: "Failed".into(),
                message: format!(
                    "{api_version} {kind} is not served by this cluster: install its CRD (or API) and restore again"
                ),
            });
            continue;
        };
        let resource = ResourceType {
            version: version.to_string(),
            ..served.clone()
        };
        let is_namespace = group.is_empty() && kind == "Namespace";
        if !is_namespace && !opts.filter.allows(&resource) {
            continue;
        }
        if is_namespace && opts.filter.excludes(&resource) {
            continue;
        }
        let (rank, _) = rank_of(group, kind);
        let mut object = o.clone();
        let namespace = namespace_of(o).map(|ns| opts.namespace(ns));
        let mut name = name_of(o).to_string();
        if let Some(ns) = &namespace {
            object["metadata"]["namespace"] = json!(ns);
            namespaces_needed.insert(ns.clone());
        }
        if is_namespace {
            name = opts.namespace(&name);
            rename_namespace(&mut object, &name);
        }
        rewrite_references(&resource, &mut object, opts);
        let planned = PlannedObject {
            rank,
            resource,
            namespace,
            name,
            object,
            volume: None,
        };
        match volume_of(&planned) {
            Ok(volume) => out.objects.push(PlannedObject { volume, ..planned }),
            Err(message) => out.failures.push(planned.outcome("Failed", message)),
        }
    }
    let present: BTreeSet<String> = out
        .objects
        .iter()
        .filter(|o| o.rank == Rank::Namespace)
        .map(|o| o.name.clone())
        .collect();
    if let Some(ns_type) = types
        .iter()
        .find(|t| t.group.is_empty() && t.kind == "Namespace")
    {
        for ns in namespaces_needed.difference(&present) {
            out.objects.push(PlannedObject {
                rank: Rank::Namespace,
                resource: ns_type.clone(),
                namespace: None,
                name: ns.clone(),
                object: json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
                volume: None,
            });
        }
    }
    out.objects.sort_by(|a, b| {
        let key = |o: &PlannedObject| {
            let (rank, pos) = rank_of(&o.resource.group, &o.resource.kind);
            (
                rank,
                pos,
                o.resource.group.clone(),
                o.resource.kind.clone(),
                o.namespace.clone(),
                o.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

fn rename_namespace(object: &mut Value, name: &str) {
    object["metadata"]["name"] = json!(name);
    if let Some(labels) = object["metadata"]["labels"].as_object_mut() {
        if labels.contains_key("kubernetes.io/metadata.name") {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
}

fn rewrite_references(t: &ResourceType, object: &mut Value, opts: &RestoreOptions) {
    let class = |c: &mut Value| {
        if let Some(old) = c.as_str() {
            if let Some(new) = opts.storage_class_mapping.get(old) {
                *c = json!(new);
            }
        }
    };
    match (t.group.as_str(), t.kind.as_str()) {
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            for s in object["subjects"].as_array_mut().into_iter().flatten() {
                if let Some(ns) = s["namespace"].as_str() {
                    s["namespace"] = json!(opts.namespace(ns));
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(c) = object.pointer_mut("/spec/storageClassName") {
                class(c);
            }
        }
        ("apps", "StatefulSet") => {
            if let Some(templates) = object
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                for tpl in templates {
                    if let Some(c) = tpl.pointer_mut("/spec/storageClassName") {
                        class(c);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The volume to fill for a PVC carrying [`ANNOTATION_SNAPSHOT_ID`]; Err when it has no
/// size to create it with.
fn volume_of(p: &PlannedObject) -> Result<Option<RestoreVolume>, String> {
    if !(p.resource.group.is_empty() && p.resource.kind == "PersistentVolumeClaim") {
        return Ok(None);
    }
    let o = &p.object;
    let Some(snapshot_id) = o["metadata"]["annotations"][ANNOTATION_SNAPSHOT_ID].as_str() else {
        return Ok(None);
    };
    let size = o
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .ok_or("the captured PVC has no spec.resources.requests.storage to create it with")?;
    Ok(Some(RestoreVolume {
        namespace: p.namespace.clone().unwrap_or_default(),
        persistent_volume_claim: p.name.clone(),
        snapshot_id: snapshot_id.to_string(),
        storage_class_name: o["spec"]["storageClassName"].as_str().map(str::to_string),
        size: size.to_string(),
        access_modes: o["spec"]["accessModes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect(),
        volume_mode: (o["spec"]["volumeMode"] == "Block").then_some(crate::crd::VolumeMode::Block),
        ..Default::default()
    }))
}
