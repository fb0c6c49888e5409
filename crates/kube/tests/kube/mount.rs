//! `resolve_mount` (behind `cairn kube mount`) against a tower-test mock API: the requests it
//! makes (method, path), what it returns, and the message for every way it can fail.

use crate::common;

use cairn_kube::mount::{resolve_mount, MountError};
use common::{mock_client, not_found, Recorded};
use serde_json::{json, Value};

/// The objects the mock API holds, by request path; everything else is a 404.
fn cluster(
    vb_status: Value,
    repo_spec: Value,
    pw_data: Value,
) -> impl Fn(&Recorded) -> (u16, Value) {
    move |r: &Recorded| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-nightly") => (
            200,
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
                   "metadata": {"name": "db-nightly", "namespace": "shop"},
                   "spec": {"source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main"},
                   "status": vb_status}),
        ),
        ("GET", "/apis/cairn.io/v1alpha1/namespaces/shop/backuprepositories/main") => (
            200,
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
                   "metadata": {"name": "main", "namespace": "shop"}, "spec": repo_spec}),
        ),
        ("GET", "/api/v1/namespaces/shop/secrets/repo-password") => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "repo-password", "namespace": "shop"}, "data": pw_data}),
        ),
        ("GET", "/api/v1/namespaces/shop/secrets/s3-credentials") => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "s3-credentials", "namespace": "shop"},
                   // "AKIA\n" and "wJal": a --from-file value keeps its newline.
                   "data": {"AWS_ACCESS_KEY_ID": "QUtJQQo=", "AWS_SECRET_ACCESS_KEY": "d0phbA=="}}),
        ),
        _ => not_found(),
    }
}

fn completed() -> Value {
    json!({"phase": "Completed", "snapshotId": "5f3a9c01"})
}

fn s3_repo() -> Value {
    json!({"location": "s3://backups/shop", "credentialsSecret": {"name": "s3-credentials"},
           "passwordSecret": {"name": "repo-password", "key": "password"}})
}

/// A local repository: a password Secret and no credentials.
fn local_repo() -> Value {
    json!({"location": "file:///srv/backups",
           "passwordSecret": {"name": "repo-password", "key": "password"}})
}

/// What `resolve_mount` fails with for VolumeBackup shop/db-nightly.
async fn nightly_error(client: &kube::Client) -> MountError {
    resolve_mount(client, "shop", "db-nightly")
        .await
        .unwrap_err()
}

/// "s3cret\n", as `kubectl create secret generic --from-file=password` stores it.
fn password() -> Value {
    json!({"password": "czNjcmV0Cg=="})
}

fn calls(log: &common::Log) -> Vec<(String, String)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect()
}

fn gets(paths: &[&str]) -> Vec<(String, String)> {
    paths
        .iter()
        .map(|p| ("GET".to_string(), p.to_string()))
        .collect()
}

const VB: &str = "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-nightly";
const REPO: &str = "/apis/cairn.io/v1alpha1/namespaces/shop/backuprepositories/main";
const PW: &str = "/api/v1/namespaces/shop/secrets/repo-password";
const CREDS: &str = "/api/v1/namespaces/shop/secrets/s3-credentials";

#[tokio::test]
async fn a_completed_backup_resolves_to_its_repository_secrets_and_snapshot() {
    let (client, log) = mock_client(cluster(completed(), s3_repo(), password()));
    let target = resolve_mount(&client, "shop", "db-nightly").await.unwrap();
    assert_eq!(target.snapshot_id, "5f3a9c01");
    let access = &target.repository;
    assert_eq!(access.location, "s3://backups/shop");
    assert_eq!(
        access.password, "s3cret",
        "one trailing newline dropped, as in Jobs"
    );
    assert_eq!(
        access.credentials,
        [
            ("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "wJal".to_string()),
        ]
        .into(),
    );
    assert_eq!(access.cache_dir, None);
    assert_eq!(
        calls(&log),
        gets(&[VB, REPO, PW, CREDS]),
        "reads only, in order"
    );
}

#[tokio::test]
async fn a_repository_without_credentials_reads_no_second_secret() {
    let (client, log) = mock_client(cluster(completed(), local_repo(), json!({})));
    let err = nightly_error(&client).await;
    assert!(matches!(err, MountError::MissingKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Secret shop/repo-password has no key \"password\"; fix passwordSecret in \
         BackupRepository shop/main"
    );
    assert_eq!(calls(&log), gets(&[VB, REPO, PW]));

    let (client, log) = mock_client(cluster(
        completed(),
        local_repo(),
        json!({"password": "aHVudGVyMg=="}),
    ));
    let target = resolve_mount(&client, "shop", "db-nightly").await.unwrap();
    assert_eq!(target.repository.password, "hunter2");
    assert!(target.repository.credentials.is_empty());
    assert_eq!(calls(&log), gets(&[VB, REPO, PW]));
}

#[tokio::test]
async fn a_backup_that_is_not_completed_has_nothing_to_mount() {
    for (status, message) in [
        (
            json!({"phase": "Uploading", "progress": {"bytesDone": 10, "totalBytes": 100}}),
            "VolumeBackup shop/db-nightly is Uploading: only a Completed VolumeBackup has a \
             snapshot to mount",
        ),
        (
            json!({"phase": "Failed", "failureReason": "PVC data-db-0 not found"}),
            "VolumeBackup shop/db-nightly is Failed: PVC data-db-0 not found: only a Completed \
             VolumeBackup has a snapshot to mount",
        ),
        (
            Value::Null,
            "VolumeBackup shop/db-nightly is New: only a Completed VolumeBackup has a snapshot \
             to mount",
        ),
        (
            json!({"phase": "Completed"}),
            "VolumeBackup shop/db-nightly is Completed: only a Completed VolumeBackup has a \
             snapshot to mount",
        ),
    ] {
        let (client, log) = mock_client(cluster(status.clone(), s3_repo(), password()));
        let err = nightly_error(&client).await;
        assert!(
            matches!(err, MountError::NotCompleted { .. }),
            "{status}: {err:?}"
        );
        assert_eq!(err.to_string(), message, "{status}");
        assert_eq!(calls(&log), gets(&[VB]), "nothing else is read");
    }
}

#[tokio::test]
async fn missing_objects_are_named_with_where_the_name_came_from() {
    let (client, log) = mock_client(cluster(completed(), s3_repo(), password()));
    let err = resolve_mount(&client, "shop", "db-weekly")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "VolumeBackup shop/db-weekly not found; check the name and the namespace \
         (-n NAMESPACE or NAMESPACE/NAME)"
    );
    assert_eq!(
        calls(&log),
        gets(&["/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-weekly"])
    );

    for (repo, secret, message) in [
        (
            json!({"location": "file:///x", "passwordSecret": {"name": "gone", "key": "k"}}),
            "/api/v1/namespaces/shop/secrets/gone",
            "Secret shop/gone not found; BackupRepository shop/main names it in \
             spec.passwordSecret",
        ),
        (
            json!({"location": "s3://b/p", "credentialsSecret": {"name": "gone"},
                   "passwordSecret": {"name": "repo-password", "key": "password"}}),
            "/api/v1/namespaces/shop/secrets/gone",
            "Secret shop/gone not found; BackupRepository shop/main names it in \
             spec.credentialsSecret",
        ),
    ] {
        let (client, log) = mock_client(cluster(completed(), repo, password()));
        let err = nightly_error(&client).await;
        assert_eq!(err.to_string(), message);
        assert_eq!(calls(&log).last().unwrap().1, secret);
    }

    // The repository itself.
    let (client, _) = mock_client(|r: &Recorded| {
        if r.path == VB {
            (
                200,
                json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
                         "metadata": {"name": "db-nightly", "namespace": "shop"},
                         "spec": {"source": {"persistentVolumeClaim": "x"}, "repository": "lost"},
                         "status": completed()}),
            )
        } else {
            not_found()
        }
    });
    let err = nightly_error(&client).await;
    assert_eq!(
        err.to_string(),
        "BackupRepository shop/lost not found; VolumeBackup shop/db-nightly names it in \
         spec.repository"
    );
}

#[tokio::test]
async fn a_refusal_says_what_was_being_read() {
    let (client, _) = mock_client(|_: &Recorded| {
        (
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                   "code": 403, "message": "volumebackups.cairn.io \"db-nightly\" is forbidden"}),
        )
    });
    let err = nightly_error(&client).await;
    assert!(matches!(err, MountError::Api { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "reading VolumeBackup shop/db-nightly: volumebackups.cairn.io \"db-nightly\" is \
         forbidden (Forbidden)"
    );
}
