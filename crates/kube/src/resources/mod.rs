//! An application's Kubernetes configuration, without API calls: which objects an
//! ApplicationBackup captures and how they are cleaned ([`capture`]), which objects a
//! `podSelector` reaches ([`closure`]), where they are written in the resource snapshot
//! ([`layout`]), and how a captured tree is filtered, rewritten and ordered for a restore
//! ([`plan`]). Job mode (`capture-resources`, `restore-resources`) does the I/O around it.

pub mod capture;
pub mod closure;
pub mod layout;
pub mod plan;
mod selector;

pub use selector::{map_selects, selector_matches};

use serde_json::Value;

/// One resource type as the API server's discovery reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version served (the group's preferred one).
    pub version: String,
    /// Kind (`Deployment`).
    pub kind: String,
    /// Plural, the URL segment (`deployments`).
    pub plural: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

impl ResourceType {
    /// A type from its parts.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group as the tree and the restore status write it: `core` for the core group.
    pub fn group_dir(&self) -> &str {
        group_dir(&self.group)
    }

    /// `group/Kind` (`apps/Deployment`, `core/Secret`).
    pub fn group_kind(&self) -> String {
        format!("{}/{}", self.group_dir(), self.kind)
    }
}

/// `core` for the core group, the group otherwise.
pub fn group_dir(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group
    }
}

/// The group of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> ``).
pub fn group_of(api_version: &str) -> &str {
    api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default()
}

/// `includedResources` / `excludedResources` of an ApplicationBackup or ApplicationRestore.
///
/// A pattern names a type as `plural.group` (`deployments.apps`), `Kind.group`, `plural` or
/// `Kind` (any group: `deployments` is `deployments.apps`), case-insensitively; `*` is
/// every type. An empty include list includes every type; excludes win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindFilter {
    included: Vec<String>,
    excluded: Vec<String>,
}

impl KindFilter {
    /// A filter from the spec's lists.
    pub fn new(included: &[String], excluded: &[String]) -> Self {
        let norm = |v: &[String]| v.iter().map(|s| s.trim().to_lowercase()).collect();
        KindFilter {
            included: norm(included),
            excluded: norm(excluded),
        }
    }

    /// Whether objects of `t` pass.
    pub fn allows(&self, t: &ResourceType) -> bool {
        let hit = |p: &String| pattern_matches(p, t);
        (self.included.is_empty() || self.included.iter().any(hit))
            && !self.excluded.iter().any(hit)
    }

    /// Whether `t` is named in the exclude list (the only list a Namespace obeys).
    pub fn excludes(&self, t: &ResourceType) -> bool {
        self.excluded.iter().any(|p| pattern_matches(p, t))
    }
}

fn pattern_matches(pattern: &str, t: &ResourceType) -> bool {
    if pattern == "*" {
        return true;
    }
    let kind = t.kind.to_lowercase();
    let name_matches = |n: &str| n == t.plural || n == kind;
    match pattern.split_once('.') {
        Some((name, group)) => name_matches(name) && group == t.group,
        None => name_matches(pattern),
    }
}

/// `metadata.name` of an object, empty when absent.
pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// `metadata.namespace` of an object.
pub fn namespace_of(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

/// `metadata.labels` of an object as a map (non-string values ignored).
pub fn labels_of(object: &Value) -> std::collections::BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_patterns_name_plural_group_or_kind() {
        let deploy = ResourceType::new("apps", "v1", "Deployment", "deployments", true);
        let secret = ResourceType::new("", "v1", "Secret", "secrets", true);
        let cases: &[(&[&str], &[&str], bool, bool)] = &[
            (&[], &[], true, true),
            (&["deployments.apps"], &[], true, false),
            (&["Deployment"], &[], true, false),
            (&["deployments"], &[], true, false),
            (&["deployments.batch"], &[], false, false),
            (&["secrets"], &[], false, true),
            (&["Secret.core"], &[], false, false),
            (&["*"], &["secrets"], true, false),
            (&[], &["DEPLOYMENTS.APPS"], false, true),
        ];
        for (inc, exc, want_deploy, want_secret) in cases {
            let f = KindFilter::new(
                &inc.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &exc.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
            assert_eq!(
                f.allows(&deploy),
                *want_deploy,
                "{inc:?} {exc:?} deployments"
            );
            assert_eq!(f.allows(&secret), *want_secret, "{inc:?} {exc:?} secrets");
        }
    }
}
