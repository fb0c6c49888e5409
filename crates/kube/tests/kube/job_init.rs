//! `--init-if-missing`: a Velero backup job creates its namespace's repository when the
//! location is empty, uses the repository another job created first, and refuses a kopia
//! location or foreign objects before writing anything.

use cairn_kube::job::{
    ensure_repository, run_job, BackupJobRequest, BackupJobResult, Engine, EngineError,
    EngineProgress, ForgetJobRequest, JobCommand, JobParams, LocationContent,
    MaintenanceJobRequest, MaintenanceJobResult, RepositoryAccess, RestoreJobRequest,
    RestoreJobResult, SnapshotSummary,
};
use cairn_kube::protocol::JobOutcome;
use std::sync::Mutex;

/// A location: what it holds, and what `init_repository` does to it.
struct Location {
    content: Mutex<LocationContent>,
    /// Another job writes the header between our inspection and our init.
    loses_race: bool,
    calls: Mutex<Vec<String>>,
}

impl Location {
    fn new(content: LocationContent) -> Location {
        Location {
            content: Mutex::new(content),
            loses_race: false,
            calls: Mutex::new(Vec::new()),
        }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for Location {
    fn backup(
        &self,
        _: &BackupJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError> {
        self.calls.lock().unwrap().push("backup".into());
        if *self.content.lock().unwrap() != LocationContent::Cairn {
            return Err(EngineError {
                message: "not a repository".into(),
                retryable: false,
            });
        }
        Ok(BackupJobResult {
            snapshot_id: "5f3a9c00".into(),
            time: "2025-06-01T02:00:00Z".parse().unwrap(),
            bytes_done: 1,
            total_bytes: 1,
            bytes_added: Some(1),
            summary: "1 file".into(),
        })
    }
    fn restore(
        &self,
        _: &RestoreJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError> {
        unreachable!("a backup test restores nothing")
    }
    fn maintenance(&self, _: &MaintenanceJobRequest) -> Result<MaintenanceJobResult, EngineError> {
        unreachable!("a backup test runs no maintenance")
    }
    fn forget(&self, _: &ForgetJobRequest) -> Result<String, EngineError> {
        unreachable!("a backup test forgets nothing")
    }
    fn list_snapshots(&self, _: &RepositoryAccess) -> Result<Vec<SnapshotSummary>, EngineError> {
        Ok(Vec::new())
    }
    fn inspect_location(&self, _: &RepositoryAccess) -> Result<LocationContent, EngineError> {
        self.calls.lock().unwrap().push("inspect".into());
        Ok(self.content.lock().unwrap().clone())
    }
    fn init_repository(&self, _: &RepositoryAccess, level: Option<i32>) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(format!("init {level:?}"));
        *self.content.lock().unwrap() = LocationContent::Cairn;
        if self.loses_race {
            return Err(EngineError {
                message: "creating the repository: a repository already exists".into(),
                retryable: false,
            });
        }
        Ok(())
    }
}

fn access() -> RepositoryAccess {
    RepositoryAccess {
        location: "s3://velero/cluster-1/cairn/shop".into(),
        password: "pw".into(),
        credentials: Default::default(),
        cache_dir: None,
    }
}

#[test]
fn an_empty_location_gets_a_repository_and_an_existing_one_is_used() {
    let empty = Location::new(LocationContent::Empty);
    ensure_repository(&empty, &access()).unwrap();
    assert_eq!(empty.calls(), ["inspect", "init None"]);
    let existing = Location::new(LocationContent::Cairn);
    ensure_repository(&existing, &access()).unwrap();
    assert_eq!(existing.calls(), ["inspect"]);
}

#[test]
fn the_job_that_loses_the_init_race_uses_the_winners_repository() {
    let racing = Location {
        loses_race: true,
        ..Location::new(LocationContent::Empty)
    };
    ensure_repository(&racing, &access()).unwrap();
    assert_eq!(racing.calls(), ["inspect", "init None", "inspect"]);
}

#[test]
fn a_failed_init_on_a_still_empty_location_is_reported() {
    struct Denied;
    impl Engine for Denied {
        fn backup(
            &self,
            _: &BackupJobRequest,
            _: &dyn Fn(EngineProgress),
        ) -> Result<BackupJobResult, EngineError> {
            unreachable!()
        }
        fn restore(
            &self,
            _: &RestoreJobRequest,
            _: &dyn Fn(EngineProgress),
        ) -> Result<RestoreJobResult, EngineError> {
            unreachable!()
        }
        fn maintenance(
            &self,
            _: &MaintenanceJobRequest,
        ) -> Result<MaintenanceJobResult, EngineError> {
            unreachable!()
        }
        fn forget(&self, _: &ForgetJobRequest) -> Result<String, EngineError> {
            unreachable!()
        }
        fn list_snapshots(
            &self,
            _: &RepositoryAccess,
        ) -> Result<Vec<SnapshotSummary>, EngineError> {
            unreachable!()
        }
        fn inspect_location(&self, _: &RepositoryAccess) -> Result<LocationContent, EngineError> {
            Ok(LocationContent::Empty)
        }
        fn init_repository(&self, _: &RepositoryAccess, _: Option<i32>) -> Result<(), EngineError> {
            Err(EngineError {
                message: "creating the repository: 403 access denied".into(),
                retryable: false,
            })
        }
    }
    let e = ensure_repository(&Denied, &access()).unwrap_err();
    assert_eq!(e.message, "creating the repository: 403 access denied");
}

#[test]
fn a_kopia_location_or_foreign_objects_are_refused_without_writing() {
    let kopia = Location::new(LocationContent::Kopia);
    let e = ensure_repository(&kopia, &access()).unwrap_err();
    assert!(
        e.message.contains("kopia repository") && !e.retryable,
        "{}",
        e.message
    );
    assert_eq!(kopia.calls(), ["inspect"]);
    let foreign = Location::new(LocationContent::Unknown("notes.txt".into()));
    let e = ensure_repository(&foreign, &access()).unwrap_err();
    assert!(e.message.contains("\"notes.txt\""), "{}", e.message);
    assert_eq!(foreign.calls(), ["inspect"]);
}

fn backup_params(dir: &tempfile::TempDir, extra: &[&str]) -> JobParams {
    let termination = dir.path().join("termination-log").display().to_string();
    let mut list = vec![
        "--location",
        "s3://velero/cluster-1/cairn/shop",
        "--source",
        "/data",
        "--termination-log",
        &termination,
    ];
    list.extend(extra);
    let args: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    JobParams::parse(JobCommand::Backup, &args, &|name: &str| {
        (name == "CAIRN_PASSWORD").then(|| "pw".to_string())
    })
    .unwrap()
}

#[tokio::test]
async fn init_if_missing_creates_the_repository_before_the_backup_and_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(Location::new(LocationContent::Empty));
    let outcome = run_job(
        backup_params(&dir, &["--init-if-missing"]),
        engine.clone(),
        None,
    )
    .await
    .unwrap();
    assert!(outcome.succeeded, "{}", outcome.message);
    assert_eq!(engine.calls(), ["inspect", "init None", "backup"]);

    // Without the flag (cairn's own VolumeBackups) an empty location is not initialised.
    let engine = std::sync::Arc::new(Location::new(LocationContent::Empty));
    let outcome = run_job(backup_params(&dir, &[]), engine.clone(), None)
        .await
        .unwrap();
    assert!(!outcome.succeeded);
    assert_eq!(engine.calls(), ["backup"]);

    // A kopia location fails the job with the clear message in the termination log.
    let engine = std::sync::Arc::new(Location::new(LocationContent::Kopia));
    let outcome = run_job(
        backup_params(&dir, &["--init-if-missing=true"]),
        engine.clone(),
        None,
    )
    .await
    .unwrap();
    assert!(!outcome.succeeded);
    let written =
        JobOutcome::parse(&std::fs::read_to_string(dir.path().join("termination-log")).unwrap())
            .unwrap();
    assert!(
        written.message.contains("kopia repository"),
        "{}",
        written.message
    );
    assert_eq!(engine.calls(), ["inspect"]);
}

#[test]
fn init_if_missing_takes_no_value_or_true_or_false() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!backup_params(&dir, &["--init-if-missing=false"]).init_if_missing);
    assert!(backup_params(&dir, &["--init-if-missing", "--tag", "a=b"]).init_if_missing);
    let args: Vec<String> = ["--location", "x", "--source", "/d", "--init-if-missing=yes"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let e = JobParams::parse(JobCommand::Backup, &args, &|name: &str| {
        (name == "CAIRN_PASSWORD").then(|| "pw".to_string())
    })
    .unwrap_err();
    assert!(e.to_string().contains("expected true or false"), "{e}");
}

/// A repository holding snapshot `5f3a`, counting forgets.
struct Holding {
    content: LocationContent,
    forgotten: Mutex<Vec<String>>,
}

impl Engine for Holding {
    fn backup(
        &self,
        _: &BackupJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError> {
        unreachable!("a forget job backs up nothing")
    }
    fn restore(
        &self,
        _: &RestoreJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError> {
        unreachable!("a forget job restores nothing")
    }
    fn maintenance(&self, _: &MaintenanceJobRequest) -> Result<MaintenanceJobResult, EngineError> {
        unreachable!("a forget job runs no maintenance")
    }
    fn forget(&self, _: &ForgetJobRequest) -> Result<String, EngineError> {
        unreachable!("forget --snapshot never applies retention")
    }
    fn list_snapshots(&self, _: &RepositoryAccess) -> Result<Vec<SnapshotSummary>, EngineError> {
        Ok(Vec::new())
    }
    fn inspect_location(&self, _: &RepositoryAccess) -> Result<LocationContent, EngineError> {
        Ok(self.content.clone())
    }
    fn forget_snapshot(&self, _: &RepositoryAccess, id: &str) -> Result<bool, EngineError> {
        let mut forgotten = self.forgotten.lock().unwrap();
        let found = id == "5f3a" && !forgotten.contains(&id.to_string());
        forgotten.push(id.to_string());
        Ok(found)
    }
}

fn forget_params(dir: &tempfile::TempDir, extra: &[&str]) -> Result<JobParams, String> {
    let termination = dir.path().join("termination-log").display().to_string();
    let mut list = vec![
        "--location",
        "s3://velero/cluster-1/cairn/shop",
        "--termination-log",
        &termination,
    ];
    list.extend(extra);
    let args: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    JobParams::parse(JobCommand::Forget, &args, &|name: &str| {
        (name == "CAIRN_PASSWORD").then(|| "pw".to_string())
    })
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn forget_by_id_succeeds_when_forgotten_and_when_already_gone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(Holding {
        content: LocationContent::Cairn,
        forgotten: Mutex::new(Vec::new()),
    });
    let params = forget_params(&dir, &["--snapshot", "5f3a"]).unwrap();
    let outcome = run_job(params.clone(), engine.clone(), None).await.unwrap();
    assert!(outcome.succeeded, "{}", outcome.message);
    assert!(
        outcome.message.contains("forgot snapshot 5f3a"),
        "{}",
        outcome.message
    );
    let again = run_job(params, engine.clone(), None).await.unwrap();
    assert!(again.succeeded);
    assert!(again.message.contains("already gone"), "{}", again.message);
    assert_eq!(*engine.forgotten.lock().unwrap(), ["5f3a", "5f3a"]);

    // No repository at all: nothing to forget, nothing opened.
    let empty = std::sync::Arc::new(Holding {
        content: LocationContent::Empty,
        forgotten: Mutex::new(Vec::new()),
    });
    let outcome = run_job(
        forget_params(&dir, &["--snapshot", "5f3a"]).unwrap(),
        empty.clone(),
        None,
    )
    .await
    .unwrap();
    assert!(outcome.succeeded && outcome.message.contains("already gone"));
    assert!(empty.forgotten.lock().unwrap().is_empty());
}

#[test]
fn forget_takes_one_snapshot_or_retention_rules_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let e = forget_params(
        &dir,
        &["--snapshot", "5f3a", "--tag", "a=b", "--keep-last", "1"],
    )
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = forget_params(&dir, &[]).unwrap_err();
    assert!(e.contains("never forgets every snapshot"), "{e}");
}
