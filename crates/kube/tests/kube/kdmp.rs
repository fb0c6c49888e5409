//! The KDMP executor contract: the credential Secret as KDMP mounts it, and the
//! `kopiaexecutor` command lines KDMP builds.

use cairn_kube::crd::MaintenanceKind;
use cairn_kube::kdmp::{
    BackupArgs, CredentialError, DeleteArgs, KdmpCommand, KdmpLocation, LocationKind,
    MaintenanceArgs, RestoreArgs,
};
use std::collections::BTreeMap;
use std::path::Path;

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn location(pairs: &[(&str, &str)]) -> Result<KdmpLocation, CredentialError> {
    KdmpLocation::from_files(
        &files(pairs),
        Path::new("/etc/cred-secret"),
        Path::new("/mnt/nfs-target"),
    )
}

const S3: &[(&str, &str)] = &[
    ("type", "s3"),
    ("password", "pw\n"),
    ("path", "bucket"),
    ("accessKey", "AK"),
    ("secretAccessKey", "SK"),
    ("endpoint", "minio.example:9000"),
    ("region", "us-east-1"),
    ("disablessl", "true"),
];

/// Keys set (`Some`) or removed (`None`) from a base Secret.
type Changes<'a> = &'a [(&'a str, Option<&'a str>)];

fn with(base: &[(&str, &str)], changes: Changes) -> Vec<(String, String)> {
    let mut map: BTreeMap<String, String> = files(base);
    for (k, v) in changes {
        match v {
            Some(v) => map.insert(k.to_string(), v.to_string()),
            None => map.remove(*k),
        };
    }
    map.into_iter().collect()
}

fn location_of(pairs: &[(String, String)]) -> Result<KdmpLocation, CredentialError> {
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    location(&refs)
}

#[test]
fn s3_locations_become_s3_urls_with_the_credentials_in_the_environment() {
    let cases: &[(Changes, &str)] = &[
        (
            &[],
            "s3://bucket/generic-backup/ns-pvc?endpoint=http://minio.example:9000&region=us-east-1",
        ),
        (
            &[("disablessl", Some("false"))],
            "s3://bucket/generic-backup/ns-pvc?endpoint=https://minio.example:9000&region=us-east-1",
        ),
        (
            &[("disablessl", None), ("region", Some(""))],
            "s3://bucket/generic-backup/ns-pvc?endpoint=https://minio.example:9000",
        ),
        (
            &[("endpoint", Some("https://minio.example:9000/"))],
            "s3://bucket/generic-backup/ns-pvc?endpoint=https://minio.example:9000&region=us-east-1",
        ),
        (
            &[("endpoint", Some("s3.amazonaws.com")), ("region", Some("eu-west-1"))],
            "s3://bucket/generic-backup/ns-pvc?region=eu-west-1",
        ),
        (
            &[("path", Some("/bucket/team-a/"))],
            "s3://bucket/team-a/generic-backup/ns-pvc?endpoint=http://minio.example:9000&region=us-east-1",
        ),
    ];
    for (changes, want) in cases {
        let loc = location_of(&with(S3, changes)).unwrap();
        assert_eq!(loc.kind, LocationKind::S3);
        assert_eq!(
            loc.repository_url("generic-backup/ns-pvc/"),
            *want,
            "{changes:?}"
        );
        assert_eq!(loc.password, "pw", "one trailing newline dropped");
        assert_eq!(loc.credentials["AWS_ACCESS_KEY_ID"], "AK");
        assert_eq!(loc.credentials["AWS_SECRET_ACCESS_KEY"], "SK");
    }
}

#[test]
fn a_missing_or_malformed_key_is_named() {
    let cases: &[(Changes, &str)] = &[
        (&[("type", None)], "\"type\""),
        (&[("type", Some("ftp"))], "\"type\""),
        (&[("password", None)], "\"password\""),
        (&[("password", Some("\n"))], "\"password\""),
        (&[("path", None)], "\"path\""),
        (&[("path", Some("bucket/../x"))], "\"path\""),
        (&[("accessKey", None)], "\"accessKey\""),
        (&[("secretAccessKey", Some(" "))], "\"secretAccessKey\""),
        (&[("endpoint", None)], "\"endpoint\""),
        (&[("endpoint", Some("ftp://host"))], "\"endpoint\""),
        (&[("endpoint", Some("host/path?x"))], "\"endpoint\""),
        (&[("disablessl", Some("yes"))], "\"disablessl\""),
        (&[("region", Some("us east"))], "\"region\""),
        (
            &[("endpoint", Some("s3.amazonaws.com")), ("region", None)],
            "\"region\"",
        ),
        (&[("sse", Some("AES256"))], "\"sse\""),
    ];
    for (changes, key) in cases {
        let err = location_of(&with(S3, changes)).unwrap_err().to_string();
        assert!(err.contains(key), "{changes:?}: {err}");
        assert!(!err.contains("SK"), "no secret in {err}");
    }
}

#[test]
fn azure_google_and_nfs_locations() {
    let azure = location(&[
        ("type", "azure"),
        ("password", "pw"),
        ("path", "container"),
        ("storageaccountname", "acct"),
        ("storageaccountkey", "KEY"),
        ("environment", "AzureChinaCloud"),
    ])
    .unwrap();
    assert_eq!(
        azure.repository_url("generic-backup/ns-pvc"),
        "azblob://container/generic-backup/ns-pvc?account=acct&endpoint=https://acct.blob.core.chinacloudapi.cn"
    );
    assert_eq!(azure.credentials["AZURE_STORAGE_KEY"], "KEY");

    let google = location(&[
        ("type", "google"),
        ("password", "pw"),
        ("path", "bkt"),
        ("projectid", "proj"),
        ("accountkey", "{\"type\": \"service_account\"}"),
    ])
    .unwrap();
    assert_eq!(
        google.repository_url("generic-backup/ns-pvc"),
        "gcs://bkt/generic-backup/ns-pvc"
    );
    assert_eq!(
        google.credentials["GOOGLE_APPLICATION_CREDENTIALS"],
        "/etc/cred-secret/accountkey"
    );

    let nfs = location(&[
        ("type", "nfs"),
        ("password", "pw"),
        ("path", "/backups/"),
        ("serverAddr", "10.0.0.1"),
        ("subPath", "/export"),
    ])
    .unwrap();
    assert_eq!(
        nfs.repository_url("generic-backup/ns-pvc/"),
        "file:///mnt/nfs-target/backups/generic-backup/ns-pvc"
    );
    assert!(nfs.credentials.is_empty());

    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[
                ("type", "azure"),
                ("password", "p"),
                ("path", "c"),
                ("storageaccountkey", "k"),
            ],
            "\"storageaccountname\"",
        ),
        (
            &[
                ("type", "azure"),
                ("password", "p"),
                ("path", "c"),
                ("storageaccountname", "a"),
                ("storageaccountkey", "k"),
                ("environment", "Mars"),
            ],
            "\"environment\"",
        ),
        (
            &[
                ("type", "google"),
                ("password", "p"),
                ("path", "b"),
                ("accountkey", "{}"),
            ],
            "\"projectid\"",
        ),
        (
            &[
                ("type", "google"),
                ("password", "p"),
                ("path", "b"),
                ("projectid", "x"),
                ("accountkey", "not json"),
            ],
            "\"accountkey\"",
        ),
        (&[("type", "nfs"), ("password", "p")], "\"serverAddr\""),
        (
            &[
                ("type", "nfs"),
                ("password", "p"),
                ("serverAddr", "h"),
                ("path", "../etc"),
            ],
            "\"path\"",
        ),
    ];
    for (pairs, key) in cases {
        let err = location(pairs).unwrap_err().to_string();
        assert!(err.contains(key), "{pairs:?}: {err}");
    }
}

#[test]
fn the_mounted_secret_is_read_skipping_the_secret_volume_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in S3 {
        std::fs::write(dir.path().join(k), v).unwrap();
    }
    std::fs::create_dir(dir.path().join("..2026_12_07")).unwrap();
    std::fs::write(dir.path().join("..data"), "x").unwrap();
    let loc = KdmpLocation::read_dir(dir.path(), Path::new("/mnt/nfs-target")).unwrap();
    let access = loc.access("generic-backup/ns-pvc", None);
    assert_eq!(
        access.location,
        "s3://bucket/generic-backup/ns-pvc?endpoint=http://minio.example:9000&region=us-east-1"
    );
    assert_eq!(access.password, "pw");
    assert!(
        !format!("{loc:?}").contains("pw\""),
        "password redacted from Debug"
    );

    let missing = KdmpLocation::read_dir(&dir.path().join("absent"), Path::new("/nfs"));
    assert!(matches!(missing, Err(CredentialError::Read { .. })));
}

fn args(line: &str) -> Vec<String> {
    line.split(' ').map(String::from).collect()
}

#[test]
fn kdmp_command_lines_parse() {
    let backup = KdmpCommand::parse(&args(
        "backup --volume-backup-name vb-1 --repository shop-data --credentials cred \
         --backup-location loc --backup-location-namespace px --backup-namespace shop \
         --source-path /data --source-path-glob /data/* --compression=zstd \
         --exclude-file-list dir1,file1,,dir2",
    ))
    .unwrap();
    assert_eq!(
        backup,
        KdmpCommand::Backup(BackupArgs {
            volume_backup_name: "vb-1".into(),
            repository_dir: "generic-backup/shop-data".into(),
            backup_location: "loc".into(),
            backup_location_namespace: "px".into(),
            backup_namespace: "shop".into(),
            source_path: "/data".into(),
            source_path_glob: Some("/data/*".into()),
            compression: Some("zstd".into()),
            exclude_file_list: vec!["dir1".into(), "file1".into(), "dir2".into()],
        })
    );

    let restore = KdmpCommand::parse(&args(
        "restore --volume-backup-name vb-1 --backup-location loc --backup-location-namespace px \
         --repository generic-backup/shop-data/ --restore-namespace shop2 --credentials cred \
         --target-path /data --snapshot-id abc123 --app-restore-cr ar-1",
    ))
    .unwrap();
    assert_eq!(
        cairn_kube::kdmp::repository_dir("generic-backup").unwrap(),
        "generic-backup/generic-backup",
        "a backup's <ns>-<pvc> may itself read generic-backup"
    );
    assert_eq!(
        restore,
        KdmpCommand::Restore(RestoreArgs {
            volume_backup_name: "vb-1".into(),
            backup_location: "loc".into(),
            backup_location_namespace: "px".into(),
            repository_dir: "generic-backup/shop-data".into(),
            restore_namespace: "shop2".into(),
            target_path: "/data".into(),
            snapshot_id: "abc123".into(),
        })
    );

    let delete = KdmpCommand::parse(&args(
        "delete --repository generic-backup/shop-data/ --cred-secret-name cred \
         --cred-secret-namespace px --snapshot-id abc123 --volume-backup-delete-name vbd \
         --volume-backup-delete-namespace px",
    ))
    .unwrap();
    assert_eq!(
        delete,
        KdmpCommand::Delete(DeleteArgs {
            repository_dir: "generic-backup/shop-data".into(),
            cred_secret_name: "cred".into(),
            cred_secret_namespace: "px".into(),
            snapshot_id: "abc123".into(),
            volume_backup_delete_name: "vbd".into(),
            volume_backup_delete_namespace: "px".into(),
        })
    );

    let maintenance = KdmpCommand::parse(&args(
        "maintenance --cred-secret-name cred --cred-secret-namespace px \
         --maintenance-status-name m --maintenance-status-namespace px --maintenance-type full",
    ))
    .unwrap();
    assert_eq!(
        maintenance,
        KdmpCommand::Maintenance(MaintenanceArgs {
            cred_secret_name: "cred".into(),
            cred_secret_namespace: "px".into(),
            maintenance_status_name: "m".into(),
            maintenance_status_namespace: "px".into(),
            kind: MaintenanceKind::Full,
        })
    );
}

#[test]
fn kdmp_command_lines_kdmp_would_not_build_are_refused() {
    let cases = [
        ("", "no operation"),
        ("snapshot --x y", "unknown operation"),
        ("delete --repository r --bogus 1", "unknown flag --bogus"),
        ("delete --repository", "--repository needs a value"),
        ("delete positional", "unexpected argument"),
        (
            "backup --volume-backup-name vb --repository r --backup-location l \
             --backup-location-namespace px --backup-namespace ns",
            "backup needs --source-path",
        ),
        (
            "maintenance --cred-secret-name c --cred-secret-namespace n \
             --maintenance-status-name m --maintenance-status-namespace n \
             --maintenance-type weekly",
            "expected full or quick",
        ),
        (
            "delete --repository generic-backup/a/b --cred-secret-name c \
             --cred-secret-namespace n --snapshot-id s --volume-backup-delete-name d \
             --volume-backup-delete-namespace n",
            "--repository",
        ),
        (
            "delete --repository generic-backup/ --cred-secret-name c \
             --cred-secret-namespace n --snapshot-id s --volume-backup-delete-name d \
             --volume-backup-delete-namespace n",
            "--repository",
        ),
    ];
    for (line, want) in cases {
        let argv: Vec<String> = if line.is_empty() {
            Vec::new()
        } else {
            args(line)
        };
        let err = KdmpCommand::parse(&argv).unwrap_err().to_string();
        assert!(err.contains(want), "{line}: {err}");
    }
}
