//! The objects a `podSelector` reaches in one namespace: the selected pods, their owners
//! up the ownerReference chain (ReplicaSet -> Deployment, StatefulSet, DaemonSet,
//! Job -> CronJob, or any custom controller), the ConfigMaps, Secrets, PVCs and
//! ServiceAccount their specs name, and the Services whose selector matches them.

use super::{group_of, labels_of, map_selects, name_of, selector_matches, ResourceType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// An object of one namespace, identified by group, kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// API group, empty for core.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(group: &str, kind: &str, name: &str) -> Self {
        ObjectKey {
            group: group.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    /// The key of a listed object of type `t`.
    pub fn of(t: &ResourceType, object: &Value) -> Self {
        ObjectKey::new(&t.group, &t.kind, name_of(object))
    }
}

/// The keys of every object reached from the pods `selector` selects among `objects` (all
/// listed objects of one namespace, with their types).
pub fn pod_closure(
    selector: &LabelSelector,
    objects: &[(ResourceType, Value)],
) -> BTreeSet<ObjectKey> {
    let by_key: BTreeMap<ObjectKey, &Value> = objects
        .iter()
        .map(|(t, o)| (ObjectKey::of(t, o), o))
        .collect();
    let pods: Vec<&Value> = objects
        .iter()
        .filter(|(t, o)| {
            t.group.is_empty() && t.kind == "Pod" && selector_matches(selector, &labels_of(o))
        })
        .map(|(_, o)| o)
        .collect();
    let mut keep = BTreeSet::new();
    for pod in &pods {
        keep.insert(ObjectKey::new("", "Pod", name_of(pod)));
        // Owners, up the chain; `keep` also stops cycles.
        let mut frontier = vec![*pod];
        while let Some(object) = frontier.pop() {
            for owner in object["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let key = ObjectKey::new(
                    group_of(owner["apiVersion"].as_str().unwrap_or_default()),
                    owner["kind"].as_str().unwrap_or_default(),
                    owner["name"].as_str().unwrap_or_default(),
                );
                if let Some(found) = by_key.get(&key) {
                    if keep.insert(key) {
                        frontier.push(found);
                    }
                }
            }
        }
        keep.extend(pod_references(&pod["spec"]));
    }
    let pod_labels: Vec<BTreeMap<String, String>> = pods.iter().map(|p| labels_of(p)).collect();
    for (t, o) in objects {
        if t.group.is_empty() && t.kind == "Service" {
            let selector: BTreeMap<String, String> = o["spec"]["selector"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            if pod_labels.iter().any(|l| map_selects(&selector, l)) {
                keep.insert(ObjectKey::of(t, o));
            }
        }
    }
    keep
}

/// The core objects a pod spec names: ConfigMaps and Secrets in volumes (also projected),
/// `env` and `envFrom`, `imagePullSecrets`, PVCs of its volumes, and its ServiceAccount
/// (`default` when unset).
pub fn pod_references(spec: &Value) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    let mut add = |kind: &str, name: Option<&str>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.insert(ObjectKey::new("", kind, name));
        }
    };
    let sa = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .unwrap_or("default");
    add("ServiceAccount", Some(sa));
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add("Secret", s["name"].as_str());
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add("ConfigMap", v["configMap"]["name"].as_str());
        add("Secret", v["secret"]["secretName"].as_str());
        add(
            "PersistentVolumeClaim",
            v["persistentVolumeClaim"]["claimName"].as_str(),
        );
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            add("ConfigMap", source["configMap"]["name"].as_str());
            add("Secret", source["secret"]["name"].as_str());
        }
    }
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten());
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            add(
                "ConfigMap",
                e["valueFrom"]["configMapKeyRef"]["name"].as_str(),
            );
            add("Secret", e["valueFrom"]["secretKeyRef"]["name"].as_str());
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            add("ConfigMap", e["configMapRef"]["name"].as_str());
            add("Secret", e["secretRef"]["name"].as_str());
        }
    }
    out
}
