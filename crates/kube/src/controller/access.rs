//! Repositories used from other namespaces: who may, and the Secret copies a Job in
//! another namespace mounts.
//!
//! Invariant: a Job only ever mounts Secrets of its own namespace (Kubernetes allows
//! nothing else), so for a repository in another namespace the controller copies the
//! password and credentials Secrets next to the Job, owned by the VolumeBackup or
//! VolumeRestore the Job works for, so they are deleted with it.

use super::objects::{job_name, short_hash};
use super::Action;
use crate::crd::BackupRepository;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

/// Why `repo` may not be used from namespace `from`, or None when it may: its own
/// namespace always may, others only when listed in `spec.allowedNamespaces` (or `"*"`).
pub fn repository_refusal(repo: &BackupRepository, from: &str) -> Option<String> {
    let repo_ns = repo.namespace().unwrap_or_default();
    let allowed = &repo.spec.allowed_namespaces;
    if repo_ns == from || allowed.iter().any(|n| n == "*" || n == from) {
        return None;
    }
    Some(format!(
        "BackupRepository {repo_ns}/{} may not be used from namespace {from:?}: add {from:?} \
         (or \"*\") to its spec.allowedNamespaces",
        repo.name_any()
    ))
}

/// The name of the copy, in namespace `job_ns`, of Secret `secret` of `repo` for the
/// child `child`: `cairn-repo-<repo>-<hash>`, distinct per source Secret and per child.
pub fn secret_copy_name(repo: &BackupRepository, secret: &str, child: &str) -> String {
    let repo_ns = repo.namespace().unwrap_or_default();
    let hash = short_hash(&format!("{repo_ns}/{secret}/{child}"));
    job_name(&format!("cairn-repo-{}", repo.name_any()), &hash)
}

/// The repository as a Job in `job_ns` working for `owner` sees it: unchanged in the
/// repository's own namespace; elsewhere with its Secrets renamed to copies, and the
/// [`Action::CopySecret`]s that make them (to run before the Job is created).
pub fn repository_for_job(
    repo: &BackupRepository,
    job_ns: &str,
    owner: &OwnerReference,
) -> (BackupRepository, Vec<Action>) {
    let repo_ns = repo.namespace().unwrap_or_default();
    if repo_ns == job_ns {
        return (repo.clone(), Vec::new());
    }
    let mut copy = repo.clone();
    let mut actions = Vec::new();
    let mut rename = |name: &mut String| {
        let new = secret_copy_name(repo, name, &owner.name);
        actions.push(Action::CopySecret {
            from_namespace: repo_ns.clone(),
            from_name: name.clone(),
            namespace: job_ns.to_string(),
            name: new.clone(),
            owner: owner.clone(),
        });
        *name = new;
    };
    rename(&mut copy.spec.password_secret.name);
    if let Some(credentials) = copy.spec.credentials_secret.as_mut() {
        rename(&mut credentials.name);
    }
    (copy, actions)
}
