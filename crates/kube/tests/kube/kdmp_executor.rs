//! The KDMP executor's rules outside the API calls: KDMP's compression names, the exclude
//! list, the VolumeBackup status as KDMP reads it, the executor's environment. The calls
//! themselves run end to end in crates/cli/tests/cli/kube_kdmp.rs.

use cairn_kube::kdmp::executor::{compression_level, exclude_config, kopia_refusal};
use cairn_kube::kdmp::objects::{
    last_known_error, maintenance_status_field, progress_percentage, volume_backup, KdmpKind,
    VolumeBackupStatus, LAST_KNOWN_ERROR_MAX,
};
use cairn_kube::kdmp::{ExecutorEnv, ExecutorError};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn kopia_compression_names_map_onto_zstd_levels() {
    let cases = [
        (None, None),
        (Some("none"), Some(0)),
        (Some("s2-parallel-8"), Some(1)), // KDMP's default
        (Some("s2-default"), Some(1)),
        (Some("lz4"), Some(1)),
        (Some("zstd-fastest"), Some(1)),
        (Some("gzip-best-speed"), Some(1)),
        (Some("zstd"), Some(3)),
        (Some("pgzip"), Some(3)),
        (Some("deflate-default"), Some(3)),
        (Some("zstd-better-compression"), Some(6)),
        (Some("zstd-best-compression"), Some(9)),
        (Some("gzip-best-compression"), Some(9)),
    ];
    for (name, level) in cases {
        assert_eq!(compression_level(name).unwrap(), level, "{name:?}");
    }
    let err = compression_level(Some("brotli")).unwrap_err();
    assert!(matches!(err, ExecutorError::Refused(_)));
    assert!(
        err.to_string().contains("--compression \"brotli\""),
        "{err}"
    );
}

#[test]
fn the_exclude_file_list_uses_the_configmap_syntax_and_its_checks() {
    assert_eq!(exclude_config(&[]).unwrap(), None);
    let text = exclude_config(&["cache".into(), "logs/app.log".into()])
        .unwrap()
        .unwrap();
    assert_eq!(text, "kdmp-executor=cache,logs/app.log");
    let err = exclude_config(&["..".into()]).unwrap_err().to_string();
    assert!(err.starts_with("--exclude-file-list: "), "{err}");
}

#[test]
fn the_volume_backup_status_carries_kdmp_json_names_and_omits_empty_fields() {
    let status = VolumeBackupStatus {
        progress_percentage: 100.0,
        total_bytes: 10,
        total_bytes_processed: 10,
        snapshot_id: "ab".into(),
        last_known_error: String::new(),
    };
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({"progressPercentage": 100.0, "totalBytes": 10, "totalBytesProcessed": 10,
               "snapshotID": "ab"})
    );
    assert_eq!(
        serde_json::to_value(VolumeBackupStatus::default()).unwrap(),
        json!({})
    );
}

#[test]
fn progress_stays_below_100_until_the_end() {
    assert_eq!(progress_percentage(0, 0), 0.0);
    assert_eq!(progress_percentage(5, 0), 0.0);
    assert_eq!(progress_percentage(1, 3), 33.33);
    assert_eq!(progress_percentage(3, 3), 99.0);
    assert_eq!(progress_percentage(9, 3), 99.0);
}

#[test]
fn last_known_error_is_cut_at_kdmps_limit() {
    assert_eq!(last_known_error("short"), "short");
    let exact = "e".repeat(LAST_KNOWN_ERROR_MAX);
    assert_eq!(last_known_error(&exact), exact);
    let long = "é".repeat(3000);
    let cut = last_known_error(&long);
    assert_eq!(cut.chars().count(), LAST_KNOWN_ERROR_MAX);
    assert!(
        cut.ends_with("the job pod's log has the whole error)"),
        "{cut}"
    );
}

#[test]
fn the_volume_backup_is_created_as_kdmps_executor_creates_it() {
    let object = volume_backup(
        "vb",
        "shop",
        "generic-backup/shop-data/",
        "bl",
        "kube-system",
    );
    let value = serde_json::to_value(&object).unwrap();
    assert_eq!(value["apiVersion"], "kdmp.portworx.com/v1alpha1");
    assert_eq!(value["kind"], "VolumeBackup");
    assert_eq!(value["metadata"]["namespace"], "shop");
    assert_eq!(
        value["metadata"]["annotations"]["stork.libopenstorage.org/skip-resource"],
        "true"
    );
    assert_eq!(
        value["spec"],
        json!({"repository": "generic-backup/shop-data/",
               "backupLocation": {"name": "bl", "namespace": "kube-system"}})
    );
    assert_eq!(
        KdmpKind::VolumeBackupDelete.resource().plural,
        "volumebackupdeletes"
    );
    assert_eq!(
        KdmpKind::BackupLocationMaintenance.resource().plural,
        "backuplocationmaintenances"
    );
}

#[test]
fn maintenance_runs_are_recorded_under_kdmps_go_field_names() {
    use cairn_kube::crd::MaintenanceKind;
    assert_eq!(
        maintenance_status_field(MaintenanceKind::Full),
        "FullMaintenanceRepoStatus"
    );
    assert_eq!(
        maintenance_status_field(MaintenanceKind::Quick),
        "QuickMaintenanceRepoStatus"
    );
}

#[test]
fn a_kopia_repository_is_refused_with_what_to_do() {
    let message = kopia_refusal("file:///mnt/nfs-target/bl/generic-backup/shop-data");
    assert!(message.contains("kopia repository"), "{message}");
    assert!(message.contains("restore or delete it with the kopia executor image"));
    assert!(message.chars().count() <= LAST_KNOWN_ERROR_MAX);
}

#[test]
fn the_executor_environment_defaults_to_kdmps_paths_and_tmp() {
    let none = |_: &str| None;
    let env = ExecutorEnv::from_env(&none).unwrap();
    assert_eq!(
        env,
        ExecutorEnv {
            cred_secret_dir: PathBuf::from("/etc/cred-secret"),
            nfs_target_dir: PathBuf::from("/mnt/nfs-target"),
            cache_dir: PathBuf::from("/tmp/cairn-cache"),
            progress_interval: Duration::from_secs(5),
        }
    );
    let vars: BTreeMap<&str, &str> = [
        ("TMPDIR", "/scratch"),
        ("CAIRN_KDMP_CRED_SECRET_DIR", "/x/cred"),
        ("CAIRN_KDMP_NFS_TARGET_DIR", "/x/nfs"),
        ("CAIRN_KDMP_PROGRESS_INTERVAL", "0.5"),
    ]
    .into();
    let get = |k: &str| vars.get(k).map(|v| v.to_string());
    let env = ExecutorEnv::from_env(&get).unwrap();
    assert_eq!(env.cred_secret_dir, PathBuf::from("/x/cred"));
    assert_eq!(env.nfs_target_dir, PathBuf::from("/x/nfs"));
    assert_eq!(env.cache_dir, PathBuf::from("/scratch/cairn-cache"));
    assert_eq!(env.progress_interval, Duration::from_millis(500));
    let bad = |k: &str| (k == "CAIRN_KDMP_PROGRESS_INTERVAL").then(|| "soon".to_string());
    let err = ExecutorEnv::from_env(&bad).unwrap_err();
    assert!(err.contains("CAIRN_KDMP_PROGRESS_INTERVAL"), "{err}");
}
