//! Job mode end to end with a fake engine and a mock API server: parameters from args, env
//! and mounted files; progress patches; the RepositorySnapshot mirror; the termination message.

use crate::common;

use cairn_kube::crd::MaintenanceKind;
use cairn_kube::job::{
    run_job, BackupJobRequest, BackupJobResult, Engine, EngineError, EngineProgress,
    ForgetJobRequest, JobCommand, JobParams, MaintenanceJobRequest, MaintenanceJobResult,
    RepositoryAccess, RestoreJobRequest, RestoreJobResult, SnapshotSummary,
};
use cairn_kube::protocol::JobOutcome;
use common::{mock_client, Recorded};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// Records the requests it gets; backs up in four progress steps.
#[derive(Default)]
struct FakeEngine {
    seen: Mutex<Vec<String>>,
    fail: Option<EngineError>,
}

impl Engine for FakeEngine {
    fn backup(
        &self,
        req: &BackupJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError> {
        self.seen.lock().unwrap().push(format!("{req:?}"));
        for done in [0, 250, 500, 1000] {
            progress(EngineProgress {
                bytes_done: done,
                total_bytes: 1000,
            });
        }
        match &self.fail {
            Some(e) => Err(e.clone()),
            None => Ok(BackupJobResult {
                snapshot_id: "5f3a9c0011223344aabb".into(),
                time: "2025-06-01T02:00:00Z".parse().unwrap(),
                bytes_done: 1000,
                total_bytes: 1000,
                bytes_added: None,
                summary: "1 file, 1000 B".into(),
            }),
        }
    }
    fn restore(
        &self,
        req: &RestoreJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError> {
        self.seen.lock().unwrap().push(format!("{req:?}"));
        progress(EngineProgress {
            bytes_done: 10,
            total_bytes: 10,
        });
        Ok(RestoreJobResult {
            bytes_done: 10,
            total_bytes: 10,
            summary: "restored".into(),
        })
    }
    fn maintenance(
        &self,
        req: &MaintenanceJobRequest,
    ) -> Result<MaintenanceJobResult, EngineError> {
        self.seen.lock().unwrap().push(format!("{:?}", req.kind));
        Ok(MaintenanceJobResult {
            summary: "quick maintenance: 3 index segments merged".into(),
            bytes_reclaimed: 300,
            repository_bytes: Some(5000),
            blob_count: Some(42),
            damage_records: Some(1),
        })
    }
    fn forget(&self, req: &ForgetJobRequest) -> Result<String, EngineError> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("forget {:?} {:?}", req.tags, req.policy));
        Ok("forgot 2 snapshot(s)".into())
    }
    fn list_snapshots(&self, _: &RepositoryAccess) -> Result<Vec<SnapshotSummary>, EngineError> {
        Ok(vec![SnapshotSummary {
            id: "aabbccddeeff00112233".into(),
            time: "2025-06-01T12:00:00Z".parse().unwrap(),
            source: "shop/data-db-0".into(),
            size_bytes: 42,
            tags: [("app".to_string(), "shop".to_string())].into(),
        }])
    }
}

struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new() -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("password")).unwrap();
        std::fs::write(dir.path().join("password/password"), "s3cret\n").unwrap();
        std::fs::create_dir_all(dir.path().join("creds/..2025_06_01")).unwrap();
        std::fs::write(dir.path().join("creds/AWS_ACCESS_KEY_ID"), "AKIA").unwrap();
        Mounted { dir }
    }
    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn respond(r: &Recorded) -> (u16, Value) {
    // Echo a plausible object: the status patch returns the VolumeBackup, apply returns the body.
    if r.path.ends_with("/status") {
        (
            200,
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup", "metadata": {"name": "db-nightly", "namespace": "shop"},
                      "spec": {"source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main"}}),
        )
    } else if r.method == "GET" {
        (
            200,
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "RepositorySnapshotList", "metadata": {}, "items": [
            {"apiVersion": "cairn.io/v1alpha1", "kind": "RepositorySnapshot", "metadata": {"name": "main-gone", "namespace": "shop"},
             "spec": {"repository": "main", "snapshotId": "gone", "source": {"path": "x"}, "time": "2025-01-01T00:00:00Z", "sizeBytes": 1}}]}),
        )
    } else if r.method == "DELETE" {
        (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        )
    } else {
        (200, r.body.clone())
    }
}

#[tokio::test]
async fn backup_job_patches_progress_mirrors_the_snapshot_and_writes_its_outcome() {
    let m = Mounted::new();
    let termination = m.path("termination-log");
    let env = |name: &str| match name {
        "CAIRN_LOCATION" => Some("s3://backups/shop".to_string()),
        "CAIRN_KDMP_EXCLUDE_FILE_LIST" => Some("gp3=lost+found\n".to_string()),
        _ => None,
    };
    let params = JobParams::parse(
        JobCommand::Backup,
        &args(&[
            "--namespace",
            "shop",
            "--repository",
            "main",
            "--volume-backup",
            "db-nightly",
            "--password-file",
            &m.path("password/password"),
            "--credentials-dir",
            &m.path("creds"),
            "--source",
            "/data",
            "--source-name",
            "shop/data-db-0",
            "--storage-class=gp3",
            "--tag",
            "app=shop",
            "--termination-log",
            &termination,
            "--progress-interval",
            "0s",
        ]),
        &env,
    )
    .unwrap();
    assert_eq!(params.repository.password, "s3cret");
    assert_eq!(
        params.repository.credentials.keys().collect::<Vec<_>>(),
        ["AWS_ACCESS_KEY_ID"]
    );
    assert!(
        !format!("{params:?}").contains("s3cret"),
        "secrets are redacted from Debug"
    );

    let engine = Arc::new(FakeEngine::default());
    let (client, log) = mock_client(respond);
    let outcome = run_job(params, engine.clone(), Some(client)).await.unwrap();
    assert!(outcome.succeeded);
    assert_eq!(outcome.snapshot_id.as_deref(), Some("5f3a9c0011223344aabb"));
    let written = JobOutcome::parse(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(written, outcome);
    let request = engine.seen.lock().unwrap()[0].clone();
    assert!(
        request.contains("storage_class: Some(\"gp3\")") && request.contains("gp3=lost+found"),
        "{request}"
    );

    let log = log.lock().unwrap().clone();
    let patches: Vec<&Recorded> = log.iter().filter(|r| r.path.ends_with("/status")).collect();
    assert!(!patches.is_empty());
    let mut last_done = 0;
    for p in &patches {
        assert_eq!(p.method, "PATCH");
        assert_eq!(
            p.path,
            "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-nightly/status"
        );
        assert_eq!(p.content_type, "application/merge-patch+json");
        let done = p.body["status"]["progress"]["bytesDone"].as_u64().unwrap();
        assert!(done >= last_done, "progress never goes back");
        last_done = done;
        assert_eq!(p.body["status"]["progress"]["totalBytes"], 1000);
        assert_eq!(
            p.body["status"].as_object().unwrap().len(),
            1,
            "the job only touches progress"
        );
    }
    assert_eq!(last_done, 1000, "the last patch carries the final numbers");

    let apply = log
        .iter()
        .find(|r| r.path.contains("repositorysnapshots"))
        .expect("the snapshot is mirrored");
    assert_eq!(apply.method, "PATCH");
    assert_eq!(
        apply.path,
        "/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots/main-5f3a9c0011223344"
    );
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(apply.query.contains("fieldManager=cairn-job") && apply.query.contains("force=true"));
    assert_eq!(
        apply.body["spec"]["source"]["persistentVolumeClaim"],
        "data-db-0"
    );
    // The mirror records the snapshot's own time, as the catalog does, not the job's end.
    assert_eq!(apply.body["spec"]["time"], "2025-06-01T02:00:00Z");
    assert_eq!(
        apply.body["metadata"]["labels"]["cairn.io/repository"],
        "main"
    );
    assert!(
        !log.iter().any(|r| r.method == "DELETE"),
        "a backup never deletes mirror objects"
    );
}

#[tokio::test]
async fn failed_backup_writes_a_retryable_outcome_and_no_mirror() {
    let m = Mounted::new();
    let termination = m.path("t");
    let engine = Arc::new(FakeEngine {
        fail: Some(EngineError {
            message: "s3: 503 slow down".into(),
            retryable: true,
        }),
        ..Default::default()
    });
    let params = JobParams::parse(
        JobCommand::Backup,
        &args(&[
            "--location",
            "fs:///repo",
            "--source",
            "/data",
            "--termination-log",
            &termination,
            "--namespace",
            "shop",
            "--volume-backup",
            "vb",
            "--progress-interval",
            "0s",
        ]),
        &|name: &str| (name == "CAIRN_PASSWORD").then(|| "pw".to_string()),
    )
    .unwrap();
    let (client, log) = mock_client(respond);
    let outcome = run_job(params, engine, Some(client)).await.unwrap();
    assert!(!outcome.succeeded && outcome.retryable);
    assert_eq!(
        JobOutcome::parse(&std::fs::read_to_string(&termination).unwrap())
            .unwrap()
            .message,
        "s3: 503 slow down"
    );
    assert!(!log
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.path.contains("repositorysnapshots")));
}

#[tokio::test]
async fn catalog_job_applies_every_snapshot_and_deletes_vanished_ones() {
    let m = Mounted::new();
    let params = JobParams::parse(
        JobCommand::Catalog,
        &args(&[
            "--location",
            "fs:///repo",
            "--password-file",
            &m.path("password/password"),
            "--namespace",
            "shop",
            "--repository",
            "main",
            "--termination-log",
            &m.path("t"),
        ]),
        &|_: &str| None,
    )
    .unwrap();
    let (client, log) = mock_client(respond);
    let outcome = run_job(params, Arc::new(FakeEngine::default()), Some(client))
        .await
        .unwrap();
    assert!(outcome.succeeded, "{outcome:?}");
    let log = log.lock().unwrap().clone();
    let methods: Vec<(String, String)> = log
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        methods,
        [
            (
                "PATCH".into(),
                "/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots/main-aabbccddeeff0011"
                    .into()
            ),
            (
                "GET".into(),
                "/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots".into()
            ),
            (
                "DELETE".into(),
                "/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots/main-gone".into()
            ),
        ]
    );
    assert_eq!(log[1].query, "&labelSelector=cairn.io%2Frepository%3Dmain");
}

#[tokio::test]
async fn maintenance_and_restore_run_without_an_api_server() {
    let m = Mounted::new();
    let engine = Arc::new(FakeEngine::default());
    let base = [
        "--location",
        "fs:///repo",
        "--password-file",
        &m.path("password/password"),
        "--termination-log",
        &m.path("t"),
    ];
    let mut maintenance = args(&base);
    maintenance.extend(args(&["--kind", "full"]));
    let params = JobParams::parse(JobCommand::Maintenance, &maintenance, &|_: &str| None).unwrap();
    assert_eq!(params.maintenance_kind, MaintenanceKind::Full);
    let outcome = run_job(params, engine.clone(), None).await.unwrap();
    assert!(outcome.succeeded);
    // The figures reach the controller through the termination message.
    let written = JobOutcome::parse(&std::fs::read_to_string(m.path("t")).unwrap()).unwrap();
    assert_eq!(
        (
            written.bytes_reclaimed,
            written.repository_bytes,
            written.blob_count,
            written.damage_records
        ),
        (Some(300), Some(5000), Some(42), Some(1))
    );
    let mut restore = args(&base);
    restore.extend(args(&[
        "--snapshot",
        "5f3a",
        "--target",
        "/data",
        "--include",
        "etc",
        "--include",
        "var/lib",
    ]));
    let params = JobParams::parse(JobCommand::Restore, &restore, &|_: &str| None).unwrap();
    assert_eq!(params.include_paths, ["etc", "var/lib"]);
    let outcome = run_job(params, engine.clone(), None).await.unwrap();
    assert_eq!((outcome.succeeded, outcome.bytes_done), (true, 10));
    assert_eq!(engine.seen.lock().unwrap()[0], "Full");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let env = |_: &str| None;
    for bad in [
        &["--location"][..],
        &["--locaton", "x"],
        &["stray"],
        &["--location", "x", "--password-file", "/nonexistent/pw"],
    ] {
        assert!(
            JobParams::parse(JobCommand::Maintenance, &args(bad), &env).is_err(),
            "{bad:?}"
        );
    }
    let missing_source = JobParams::parse(
        JobCommand::Backup,
        &args(&["--location", "x"]),
        &|n: &str| (n == "CAIRN_PASSWORD").then(|| "p".into()),
    );
    assert!(missing_source.unwrap_err().to_string().contains("--source"));
}

#[tokio::test]
async fn forget_job_passes_the_tag_and_keep_rules_and_refuses_to_forget_everything() {
    let m = Mounted::new();
    let engine = Arc::new(FakeEngine::default());
    let base = [
        "--location",
        "fs:///repo",
        "--password-file",
        &m.path("password/password"),
        "--termination-log",
        &m.path("t"),
    ];
    let mut forget = args(&base);
    forget.extend(args(&[
        "--tag",
        "cairn.io/schedule=nightly",
        "--keep-last",
        "2",
        "--keep-weekly=4",
    ]));
    let params = JobParams::parse(JobCommand::Forget, &forget, &|_: &str| None).unwrap();
    let outcome = run_job(params, engine.clone(), None).await.unwrap();
    assert!(outcome.succeeded, "{outcome:?}");
    assert_eq!(outcome.message, "forgot 2 snapshot(s)");
    let seen = engine.seen.lock().unwrap()[0].clone();
    assert!(
        seen.contains(r#"{"cairn.io/schedule": "nightly"}"#),
        "{seen}"
    );
    assert!(seen.contains("keep_last: Some(2)"), "{seen}");
    assert!(seen.contains("keep_weekly: Some(4)"), "{seen}");
    assert!(seen.contains("keep_daily: None"), "{seen}");

    for (extra, why) in [
        (&["--keep-last", "2"][..], "forget needs --tag"),
        (&["--tag", "a=b"][..], "at least one --keep-* rule"),
        (
            &["--tag", "a=b", "--keep-last", "two"][..],
            "--keep-last \"two\": expected a count",
        ),
    ] {
        let mut a = args(&base);
        a.extend(args(extra));
        let err = JobParams::parse(JobCommand::Forget, &a, &|_: &str| None).unwrap_err();
        assert!(err.to_string().contains(why), "{extra:?}: {err}");
    }
}

#[tokio::test]
async fn device_jobs_back_up_and_restore_a_block_device() {
    let m = Mounted::new();
    let engine = Arc::new(FakeEngine::default());
    let password = m.path("password/password");
    let termination = m.path("t");
    let base = [
        "--location",
        "fs:///repo",
        "--password-file",
        &password,
        "--termination-log",
        &termination,
    ];
    let mut backup = args(&base);
    backup.extend(args(&["--device", "/dev/cairn-data"]));
    let params = JobParams::parse(JobCommand::Backup, &backup, &|_: &str| None).unwrap();
    assert_eq!(
        (params.source.as_deref(), params.device),
        (Some(std::path::Path::new("/dev/cairn-data")), true)
    );
    let outcome = run_job(params, engine.clone(), None).await.unwrap();
    assert!(outcome.succeeded, "{outcome:?}");
    let mut restore = args(&base);
    restore.extend(args(&["--snapshot", "5f3a", "--device", "/dev/cairn-data"]));
    let params = JobParams::parse(JobCommand::Restore, &restore, &|_: &str| None).unwrap();
    assert_eq!(
        (params.target.as_deref(), params.device),
        (Some(std::path::Path::new("/dev/cairn-data")), true)
    );
    run_job(params, engine.clone(), None).await.unwrap();
    let seen = engine.seen.lock().unwrap().clone();
    assert!(
        seen[0].contains("source: \"/dev/cairn-data\", device: true"),
        "{seen:?}"
    );
    assert!(
        seen[1].contains("target: \"/dev/cairn-data\", device: true"),
        "{seen:?}"
    );

    // A directory and a device at once is a usage error, whichever the job.
    let env = |n: &str| (n == "CAIRN_PASSWORD").then(|| "p".to_string());
    for (command, flag) in [
        (JobCommand::Backup, "--source"),
        (JobCommand::Restore, "--target"),
    ] {
        let both = args(&[
            "--location",
            "x",
            "--snapshot",
            "5f3a",
            flag,
            "/data",
            "--device",
            "/dev/cairn-data",
        ]);
        let e = JobParams::parse(command, &both, &env).unwrap_err();
        assert!(e.to_string().contains("give one"), "{e}");
    }
}
