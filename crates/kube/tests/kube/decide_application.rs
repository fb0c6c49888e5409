//! Table tests of the ApplicationBackup and ApplicationRestore decisions: every phase
//! change and failure, from observed objects to actions.

use cairn_kube::adapter::status_diff_patch;
use cairn_kube::config::Config;
use cairn_kube::controller::{
    decide_application_backup, decide_application_restore, Action, ApplicationBackupObserved,
    ApplicationRestoreObserved, DecideContext, HookPod, HookSide, JobInfo, JobSettings, RuleTarget,
    SnapshotClassInfo, SnapshotInfo,
};
use cairn_kube::crd::{
    ApplicationBackup, ApplicationBackupPhase as Phase, ApplicationBackupStatus,
    ApplicationRestore, ApplicationRestorePhase as RPhase, ApplicationRestoreStatus,
    BackupRepository, BackupRule, VolumeBackup, VolumeRestore,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn ctx() -> DecideContext {
    DecideContext {
        config: Config::from_data(&BTreeMap::new()),
        jobs: JobSettings::default(),
        now: now(),
    }
}

fn abk(spec: Value, status: Value) -> ApplicationBackup {
    let mut full = json!({"repository": "main", "offload": false});
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationBackup",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "uid-abk",
                     "finalizers": ["cairn.io/children"]},
        "spec": full, "status": status,
    }))
    .unwrap()
}

fn repository(allowed: &[&str]) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "main", "namespace": "shop", "uid": "uid-repo"},
        "spec": {"location": "s3://backups/shop", "passwordSecret": {"name": "repo-pass", "key": "password"},
                 "allowedNamespaces": allowed},
    }))
    .unwrap()
}

fn pvc(ns: &str, name: &str, pv: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"volumeName": pv, "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap()
}

fn rule(pre: bool, post: bool) -> BackupRule {
    let cmd = json!([{"command": ["fsfreeze", "--freeze", "/data"]}]);
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRule",
        "metadata": {"name": "freeze", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "shop"}}, "container": "app",
                 "pre": if pre { cmd.clone() } else { json!([]) },
                 "post": if post { cmd } else { json!([]) }},
    }))
    .unwrap()
}

const PODS: [&str; 3] = ["web-0", "db-0", "cache-0"];
const PVCS: [&str; 3] = ["cache", "db", "web"];

/// Three PVCs in `shop` on the EBS driver, which has a default snapshot class.
fn observed(ab: ApplicationBackup) -> ApplicationBackupObserved {
    ApplicationBackupObserved {
        backup: ab,
        repository: Some(repository(&[])),
        selected_namespaces: Vec::new(),
        pvcs: PVCS
            .iter()
            .map(|n| pvc("shop", n, &format!("pv-{n}")))
            .collect(),
        pods: Vec::new(),
        pv_drivers: PVCS
            .iter()
            .map(|n| (format!("pv-{n}"), "ebs.csi.aws.com".to_string()))
            .collect(),
        snapshot_classes: vec![
            SnapshotClassInfo {
                name: "ebs-default".into(),
                driver: "ebs.csi.aws.com".into(),
                is_default: true,
            },
            SnapshotClassInfo {
                name: "ebs-fast".into(),
                driver: "ebs.csi.aws.com".into(),
                is_default: false,
            },
        ],
        rules: Vec::new(),
        snapshots: BTreeMap::new(),
        children: Vec::new(),
        job: None,
    }
}

fn with_rule(
    mut obs: ApplicationBackupObserved,
    pre: bool,
    post: bool,
) -> ApplicationBackupObserved {
    obs.rules = vec![RuleTarget {
        namespace: "shop".into(),
        name: "freeze".into(),
        rule: Some(rule(pre, post)),
        pods: PODS.iter().map(|p| p.to_string()).collect(),
    }];
    obs
}

fn status_of(actions: &[Action]) -> ApplicationBackupStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::PatchApplicationBackupStatus(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a status patch")
}

fn hooks(actions: &[Action]) -> Option<(HookSide, Vec<String>)> {
    actions.iter().find_map(|a| match a {
        Action::RunGroupHooks { side, pods } => {
            Some((*side, pods.iter().map(HookPod::key).collect()))
        }
        _ => None,
    })
}

fn snapshots_created(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateVolumeSnapshot(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn children_created(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateVolumeBackup(v) => Some(serde_json::to_value(v).unwrap()),
            _ => None,
        })
        .collect()
}

fn jobs(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(j) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .collect()
}

fn job_args(job: &Value) -> Vec<String> {
    job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn volume(ns: &str, pvc: &str, extra: Value) -> Value {
    let mut v = json!({"namespace": ns, "persistentVolumeClaim": pvc, "driver": "ebs.csi.aws.com",
                       "volumeSnapshotClassName": "ebs-default"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// A status in `phase` with the three volumes resolved (and snapshot names when cut).
fn status_in(phase: &str, cut: bool, extra: Value) -> Value {
    let volumes: Vec<Value> = PVCS
        .iter()
        .map(|p| {
            let snap = if cut {
                json!(format!("nightly-{p}-snapshot"))
            } else {
                Value::Null
            };
            volume("shop", p, json!({"volumeSnapshotName": snap}))
        })
        .collect();
    let mut s = json!({"phase": phase, "startTime": "2025-06-01T11:59:00Z", "namespaces": ["shop"],
                       "volumes": volumes, "volumesTotal": 3});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn outcomes(ok: &[&str], failed: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for p in ok {
        m.insert(
            format!("shop/{p}"),
            json!({"succeeded": true, "message": "1 commands ran"}),
        );
    }
    for p in failed {
        m.insert(
            format!("shop/{p}"),
            json!({"succeeded": false, "message": "exit code 1"}),
        );
    }
    Value::Object(m)
}

fn cut_snapshot(pvc: &str, second: u32) -> (String, SnapshotInfo) {
    let name = format!("nightly-{pvc}-snapshot");
    (
        format!("shop/{name}"),
        SnapshotInfo {
            name,
            cut: true,
            created: Some(format!("2025-06-01T11:59:{second:02}Z").parse().unwrap()),
            ..Default::default()
        },
    )
}

fn keys(pods: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = pods.iter().map(|p| format!("shop/{p}")).collect();
    k.sort();
    k
}

#[test]
fn new_resolves_namespaces_volumes_drivers_and_classes() {
    let mut obs = observed(abk(
        json!({"includedNamespaces": ["shop", "web"], "excludedNamespaces": ["web"],
               "namespaceSelector": {"matchLabels": {"team": "ops"}}}),
        json!(null),
    ));
    obs.selected_namespaces = vec!["ops".into()];
    obs.repository = Some(repository(&["ops"]));
    obs.pvcs.push(pvc("ops", "nfs-data", "pv-nfs"));
    obs.pvcs.push(pvc("web", "excluded", "pv-web"));
    obs.pv_drivers
        .insert("pv-nfs".into(), "nfs.csi.k8s.io".into());
    obs.pv_drivers
        .insert("pv-web".into(), "ebs.csi.aws.com".into());
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.namespaces, vec!["ops", "shop"]);
    assert_eq!(status.volumes_total, 4);
    let v: Vec<(&str, &str, Option<&str>, Option<&str>)> = status
        .volumes
        .iter()
        .map(|v| {
            (
                v.namespace.as_str(),
                v.persistent_volume_claim.as_str(),
                v.driver.as_deref(),
                v.volume_snapshot_class_name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        v,
        vec![
            // A driver with no snapshot class: that volume is backed up directly.
            ("ops", "nfs-data", Some("nfs.csi.k8s.io"), None),
            (
                "shop",
                "cache",
                Some("ebs.csi.aws.com"),
                Some("ebs-default")
            ),
            ("shop", "db", Some("ebs.csi.aws.com"), Some("ebs-default")),
            ("shop", "web", Some("ebs.csi.aws.com"), Some("ebs-default")),
        ]
    );
    // No rule: every snapshot is cut at once, none for the direct volume.
    assert_eq!(status.phase, Phase::Snapshotting);
    let cut = snapshots_created(&actions);
    assert_eq!(cut.len(), 3);
    for s in &cut {
        assert_eq!(s["metadata"]["namespace"], "shop");
        assert_eq!(
            s["metadata"]["labels"]["cairn.io/application-backup"],
            "shop.nightly"
        );
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "uid-abk");
        assert_eq!(s["spec"]["volumeSnapshotClassName"], "ebs-default");
    }
    assert!(status.volumes[0].volume_snapshot_name.is_none());
    assert_eq!(
        status.volumes[1].volume_snapshot_name.as_deref(),
        Some("nightly-cache-snapshot")
    );
}

#[test]
fn classes_follow_the_spec_mapping_and_the_mode() {
    // A class named for the driver wins over its default.
    let obs = observed(abk(
        json!({"volumeSnapshotClasses": {"ebs.csi.aws.com": "ebs-fast"}}),
        json!(null),
    ));
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    assert!(status
        .volumes
        .iter()
        .all(|v| v.volume_snapshot_class_name.as_deref() == Some("ebs-fast")));
    // Direct: nothing is snapshotted; the children are created right away.
    let obs = observed(abk(json!({"mode": "Direct"}), json!(null)));
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Uploading);
    assert!(snapshots_created(&actions).is_empty());
    let children = children_created(&actions);
    assert_eq!(children.len(), 3);
    assert!(children
        .iter()
        .all(|c| c["spec"]["mode"] == "Direct" && c["spec"]["source"]["volumeSnapshot"].is_null()));
    // Snapshot: a volume whose driver has no class fails, the others go on.
    let mut obs = observed(abk(json!({"mode": "Snapshot"}), json!(null)));
    obs.pv_drivers
        .insert("pv-db".into(), "nfs.csi.k8s.io".into());
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    let db = status
        .volumes
        .iter()
        .find(|v| v.persistent_volume_claim == "db")
        .unwrap();
    assert_eq!(db.phase.as_deref(), Some("Failed"));
    assert!(db
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("spec.volumeSnapshotClasses"));
    assert_eq!(status.phase, Phase::Snapshotting);
}

#[test]
fn a_pod_selector_keeps_only_the_volumes_its_pods_mount() {
    let mut obs = observed(abk(
        json!({"podSelector": {"matchLabels": {"app": "db"}}}),
        json!(null),
    ));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-0", "namespace": "shop"},
        "spec": {"containers": [{"name": "db"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "db"}}]},
    }))
    .unwrap();
    obs.pods = vec![pod];
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    let names: Vec<&str> = status
        .volumes
        .iter()
        .map(|v| v.persistent_volume_claim.as_str())
        .collect();
    assert_eq!(names, vec!["db"]);
}

#[test]
fn a_missing_repository_rule_or_refused_namespace_fails_the_backup() {
    let mut obs = observed(abk(json!({}), json!(null)));
    obs.repository = None;
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("BackupRepository \"main\""));

    let mut obs = observed(abk(json!({"rules": [{"name": "freeze"}]}), json!(null)));
    obs.rules = vec![RuleTarget {
        namespace: "shop".into(),
        name: "freeze".into(),
        rule: None,
        pods: Vec::new(),
    }];
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("BackupRule \"freeze\" not found"));

    let mut obs = with_rule(
        observed(abk(json!({"rules": [{"name": "freeze"}]}), json!(null))),
        true,
        true,
    );
    obs.rules[0].pods.clear();
    let status = status_of(&decide_application_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("matches no running pod"));

    // A PVC in a namespace the repository does not allow.
    let mut obs = observed(abk(
        json!({"includedNamespaces": ["shop", "web"]}),
        json!(null),
    ));
    obs.pvcs.push(pvc("web", "web-data", "pv-cache"));
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Failed);
    let why = status.failure_reason.unwrap();
    assert!(
        why.contains("spec.allowedNamespaces") && why.contains("\"web\""),
        "{why}"
    );
    assert!(snapshots_created(&actions).is_empty());
}

#[test]
fn pre_commands_run_in_every_pod_of_every_rule_before_any_snapshot() {
    let obs = with_rule(
        observed(abk(json!({"rules": [{"name": "freeze"}]}), json!(null))),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::RunningPreRules);
    assert_eq!(hooks(&actions), Some((HookSide::Pre, keys(&PODS))));
    assert!(snapshots_created(&actions).is_empty());
    let Some(Action::RunGroupHooks { pods, .. }) = actions
        .iter()
        .find(|a| matches!(a, Action::RunGroupHooks { .. }))
    else {
        unreachable!()
    };
    assert_eq!(pods[0].runs[0].container.as_deref(), Some("app"));
    assert_eq!(pods[0].runs[0].commands[0].command[0], "fsfreeze");
}

#[test]
fn all_pre_commands_succeeding_cuts_every_snapshot_then_post_runs_once_they_are_cut() {
    let obs = with_rule(
        observed(abk(
            json!({"rules": [{"name": "freeze"}]}),
            status_in(
                "RunningPreRules",
                false,
                json!({"hooks": {"pre": outcomes(&PODS, &[])}}),
            ),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Snapshotting);
    assert_eq!(snapshots_created(&actions).len(), 3);
    assert_eq!(
        hooks(&actions),
        None,
        "post waits for the snapshots to be cut"
    );

    // Two cut, one not yet: wait, the application stays quiesced.
    let status = status_in(
        "Snapshotting",
        true,
        json!({"hooks": {"pre": outcomes(&PODS, &[])}}),
    );
    let mut obs = with_rule(
        observed(abk(json!({"rules": [{"name": "freeze"}]}), status.clone())),
        true,
        true,
    );
    obs.snapshots = [cut_snapshot("cache", 10), cut_snapshot("db", 11)].into();
    let (key, mut pending) = cut_snapshot("web", 12);
    pending.cut = false;
    obs.snapshots.insert(key.clone(), pending);
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(hooks(&actions), None);
    assert!(
        actions.contains(&Action::RequeueAfter(Duration::from_secs(5))),
        "{actions:?}"
    );

    // All cut: post commands in the three pods; the spread is recorded.
    obs.snapshots.insert(key, cut_snapshot("web", 12).1);
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(st.phase, Phase::RunningPostRules);
    assert_eq!(st.snapshot_spread_seconds, Some(2.0));
    assert_eq!(hooks(&actions), Some((HookSide::Post, keys(&PODS))));
    assert!(children_created(&actions).is_empty());
}

#[test]
fn one_pod_failing_its_pre_command_fails_the_backup_after_post_runs_where_pre_ran() {
    let pre = outcomes(&["web-0", "cache-0"], &["db-0"]);
    let obs = with_rule(
        observed(abk(
            json!({"rules": [{"name": "freeze"}]}),
            status_in(
                "RunningPreRules",
                false,
                json!({"hooks": {"pre": pre.clone()}}),
            ),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::RunningPostRules);
    // Exactly the pods whose pre commands ran, not the one that failed.
    assert_eq!(
        hooks(&actions),
        Some((HookSide::Post, keys(&["web-0", "cache-0"])))
    );
    assert!(
        snapshots_created(&actions).is_empty(),
        "no snapshot after a failed pre"
    );

    let post = outcomes(&["web-0", "cache-0"], &[]);
    let obs = with_rule(
        observed(abk(
            json!({"rules": [{"name": "freeze"}]}),
            status_in(
                "RunningPostRules",
                false,
                json!({"hooks": {"pre": pre, "post": post}}),
            ),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Failed);
    let why = status.failure_reason.unwrap();
    assert!(
        why.contains("shop/db-0") && why.contains("exit code 1"),
        "{why}"
    );
    assert_eq!(hooks(&actions), None, "post runs once");
    assert!(children_created(&actions).is_empty());
}

#[test]
fn a_failed_snapshot_fails_its_volume_only_and_post_still_runs() {
    let pre = outcomes(&PODS, &[]);
    let mut obs = with_rule(
        observed(abk(
            json!({"rules": [{"name": "freeze"}]}),
            status_in("Snapshotting", true, json!({"hooks": {"pre": pre.clone()}})),
        )),
        true,
        true,
    );
    obs.snapshots = [cut_snapshot("cache", 1), cut_snapshot("web", 1)].into();
    let (key, mut broken) = cut_snapshot("db", 1);
    broken.cut = false;
    broken.error = Some("disk on fire".into());
    obs.snapshots.insert(key, broken);
    let actions = decide_application_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(hooks(&actions), Some((HookSide::Post, keys(&PODS))));
    let db = status
        .volumes
        .iter()
        .find(|v| v.persistent_volume_claim == "db")
        .unwrap();
    assert_eq!(db.phase.as_deref(), Some("Failed"));
    assert!(db
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("disk on fire"));

    // After post: children for the two good volumes; the failed snapshot is deleted.
    let mut st = serde_json::to_value(&status).unwrap();
    st["hooks"]["post"] = outcomes(&PODS, &[]);
    let obs = with_rule(
        observed(abk(json!({"rules": [{"name": "freeze"}]}), st)),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Uploading);
    let names: Vec<String> = children_created(&actions)
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["nightly-cache", "nightly-web"]);
    assert!(actions.contains(&Action::DeleteVolumeSnapshot {
        namespace: "shop".into(),
        name: "nightly-db-snapshot".into()
    }));
}

#[test]
fn children_carry_the_snapshot_the_repository_labels_and_tags() {
    let mut status = status_in("RunningPostRules", true, json!({}));
    // One volume in another namespace, backed up directly.
    status["volumes"][2] = json!({"namespace": "web", "persistentVolumeClaim": "web"});
    let mut obs = observed(abk(json!({"tags": {"env": "prod"}}), status));
    obs.repository = Some(repository(&["web"]));
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(st.phase, Phase::Uploading);
    assert_eq!(
        st.volumes[0].volume_backup.as_deref(),
        Some("nightly-cache")
    );
    let children = children_created(&actions);
    let cache = &children[0];
    assert_eq!(cache["metadata"]["namespace"], "shop");
    assert_eq!(
        cache["metadata"]["labels"]["cairn.io/application-backup"],
        "shop.nightly"
    );
    assert_eq!(
        cache["metadata"]["annotations"]["cairn.io/parent"],
        "shop/nightly"
    );
    assert_eq!(cache["metadata"]["ownerReferences"][0]["uid"], "uid-abk");
    assert_eq!(
        cache["spec"]["source"]["volumeSnapshot"],
        "nightly-cache-snapshot"
    );
    assert_eq!(cache["spec"]["source"]["persistentVolumeClaim"], "cache");
    assert_eq!(cache["spec"]["repository"], "main");
    assert!(cache["spec"]["repositoryNamespace"].is_null());
    assert_eq!(cache["spec"]["offload"], false);
    assert_eq!(cache["spec"]["mode"], "Snapshot");
    assert_eq!(
        cache["spec"]["tags"],
        json!({"env": "prod", "cairn.io/application-backup": "nightly",
               "cairn.io/namespace": "shop", "cairn.io/pvc": "cache"})
    );
    let web = &children[2];
    assert_eq!(web["metadata"]["namespace"], "web");
    assert_eq!(web["metadata"]["ownerReferences"], json!([]));
    assert_eq!(web["spec"]["repositoryNamespace"], "shop");
    assert_eq!(web["spec"]["mode"], "Direct");
}

fn child(pvc: &str, phase: &str, extra: Value) -> VolumeBackup {
    let mut status = json!({"phase": phase});
    for (k, v) in extra.as_object().unwrap() {
        status[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": format!("nightly-{pvc}"), "namespace": "shop"},
        "spec": {"source": {"persistentVolumeClaim": pvc}, "repository": "main"},
        "status": status,
    }))
    .unwrap()
}

fn completed(pvc: &str) -> VolumeBackup {
    child(
        pvc,
        "Completed",
        json!({"snapshotId": format!("id-{pvc}"), "progress": {"bytesDone": 100, "totalBytes": 100},
               "bytesAdded": 30}),
    )
}

fn uploading_status(extra: Value) -> Value {
    let mut s = status_in("Uploading", true, extra);
    for v in s["volumes"].as_array_mut().unwrap() {
        let pvc = v["persistentVolumeClaim"].as_str().unwrap().to_string();
        v["volumeBackup"] = json!(format!("nightly-{pvc}"));
        v["phase"] = json!("New");
    }
    s
}

fn capture_done(resources: u32) -> Option<JobInfo> {
    Some(JobInfo {
        name: "nightly-capture-1".into(),
        succeeded: true,
        termination_message: Some(format!(
            r#"{{"succeeded":true,"snapshotId":"res-1","resourceCount":{resources}}}"#
        )),
        ..Default::default()
    })
}

#[test]
fn children_are_mirrored_and_the_capture_job_starts_once_all_are_terminal() {
    let mut obs = observed(abk(json!({}), uploading_status(json!({}))));
    obs.children = vec![
        completed("cache"),
        child(
            "db",
            "Uploading",
            json!({"progress": {"bytesDone": 40, "totalBytes": 100}}),
        ),
        completed("web"),
    ];
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(
        (st.volumes_done, st.bytes_done, st.total_bytes),
        (2, 240, 300)
    );
    // What the completed volumes added; the one still uploading has not reported yet.
    assert_eq!(st.bytes_added, Some(60));
    assert_eq!(st.volumes[1].bytes_added, None);
    assert_eq!(st.volumes[0].snapshot_id.as_deref(), Some("id-cache"));
    assert_eq!(st.volumes[1].phase.as_deref(), Some("Uploading"));
    assert!(jobs(&actions).is_empty(), "capture waits for every volume");

    obs.children[1] = completed("db");
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    let job = &jobs(&actions)[0];
    assert_eq!(job["metadata"]["name"], "nightly-capture-1");
    assert_eq!(job["metadata"]["namespace"], "shop");
    assert_eq!(job["metadata"]["labels"]["cairn.io/job-kind"], "backup");
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-abk");
    let args = job_args(job);
    assert_eq!(
        args[..4],
        [
            "job",
            "capture-resources",
            "--application-backup",
            "nightly"
        ]
    );
    assert!(args.contains(&"--repository".to_string()));
    assert!(job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"] != "data"));
    assert_eq!(
        (st.attempts, st.job_name.as_deref()),
        (1, Some("nightly-capture-1"))
    );

    // Capture done: Completed with the configuration's snapshot.
    let mut obs = observed(abk(
        json!({}),
        uploading_status(json!({"jobName": "nightly-capture-1", "attempts": 1})),
    ));
    obs.children = vec![completed("cache"), completed("db"), completed("web")];
    obs.job = capture_done(42);
    let st = status_of(&decide_application_backup(&obs, &ctx()));
    assert_eq!(st.phase, Phase::Completed);
    assert_eq!(st.resource_snapshot_id.as_deref(), Some("res-1"));
    assert_eq!(st.resource_count, Some(42));
    assert_eq!(st.volumes_done, 3);
}

#[test]
fn one_of_three_volumes_failing_is_a_partial_failure_that_keeps_the_others() {
    let mut obs = observed(abk(
        json!({}),
        uploading_status(json!({"jobName": "nightly-capture-1", "attempts": 1})),
    ));
    obs.children = vec![
        completed("cache"),
        child(
            "db",
            "Failed",
            json!({"failureReason": "Job crashed: out of memory"}),
        ),
        completed("web"),
    ];
    obs.job = capture_done(7);
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(st.phase, Phase::PartiallyFailed);
    assert_eq!(st.volumes_done, 2);
    let why = st.failure_reason.unwrap();
    assert!(why.contains("shop/db: Job crashed: out of memory"), "{why}");
    assert_eq!(st.volumes[0].snapshot_id.as_deref(), Some("id-cache"));
    assert_eq!(st.volumes[2].snapshot_id.as_deref(), Some("id-web"));
    assert!(!actions.iter().any(|a| matches!(
        a,
        Action::DeleteVolumeBackup { .. } | Action::CancelVolumeBackup { .. }
    )));
}

#[test]
fn every_volume_failing_or_the_capture_failing_for_good_fails_the_backup() {
    let mut obs = observed(abk(json!({}), uploading_status(json!({}))));
    obs.children = PVCS.iter().map(|p| child(p, "Failed", json!({}))).collect();
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(st.phase, Phase::Failed);
    assert!(st
        .failure_reason
        .unwrap()
        .starts_with("every volume failed"));
    assert!(jobs(&actions).is_empty());

    let failed_capture = |attempt: u32| JobInfo {
        name: format!("nightly-capture-{attempt}"),
        failed: true,
        termination_message: Some(
            r#"{"succeeded":false,"message":"API server unreachable"}"#.into(),
        ),
        ..Default::default()
    };
    for (attempt, retried) in [(1, true), (2, true), (3, false)] {
        let mut obs = observed(abk(
            json!({}),
            uploading_status(
                json!({"jobName": format!("nightly-capture-{attempt}"), "attempts": attempt}),
            ),
        ));
        obs.children = vec![completed("cache"), completed("db"), completed("web")];
        obs.job = Some(failed_capture(attempt));
        let actions = decide_application_backup(&obs, &ctx());
        let st = status_of(&actions);
        assert!(actions.contains(&Action::DeleteJob {
            namespace: "shop".into(),
            name: format!("nightly-capture-{attempt}")
        }));
        if retried {
            assert_eq!(st.phase, Phase::Uploading);
            assert_eq!(
                jobs(&actions)[0]["metadata"]["name"],
                json!(format!("nightly-capture-{}", attempt + 1))
            );
        } else {
            assert_eq!(st.phase, Phase::Failed);
            let why = st.failure_reason.unwrap();
            assert!(
                why.contains("API server unreachable") && why.contains("after 3 attempts"),
                "{why}"
            );
        }
    }
}

#[test]
fn cancel_in_each_phase_stops_what_is_in_flight_and_releases_the_pods() {
    let cancel = json!({"cancel": true, "rules": [{"name": "freeze"}]});
    // New: nothing ran.
    let obs = with_rule(observed(abk(cancel.clone(), json!(null))), true, true);
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Canceled);
    assert_eq!(hooks(&actions), None);

    // RunningPreRules (pre done): post runs first.
    let pre = outcomes(&PODS, &[]);
    let obs = with_rule(
        observed(abk(
            cancel.clone(),
            status_in(
                "RunningPreRules",
                false,
                json!({"hooks": {"pre": pre.clone()}}),
            ),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::RunningPostRules);
    assert_eq!(hooks(&actions), Some((HookSide::Post, keys(&PODS))));

    // Snapshotting: post runs, the snapshots go once it has.
    let obs = with_rule(
        observed(abk(
            cancel.clone(),
            status_in("Snapshotting", true, json!({"hooks": {"pre": pre.clone()}})),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(hooks(&actions), Some((HookSide::Post, keys(&PODS))));
    let obs = with_rule(
        observed(abk(
            cancel.clone(),
            status_in(
                "RunningPostRules",
                true,
                json!({"hooks": {"pre": pre, "post": outcomes(&PODS, &[])}}),
            ),
        )),
        true,
        true,
    );
    let actions = decide_application_backup(&obs, &ctx());
    let st = status_of(&actions);
    assert_eq!(st.phase, Phase::Canceled);
    let deleted: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::DeleteVolumeSnapshot { .. }))
        .collect();
    assert_eq!(
        deleted.len(),
        3,
        "snapshots not handed to a child are deleted"
    );
    assert!(children_created(&actions).is_empty());

    // Uploading: running children get cancel, the capture Job is deleted.
    let mut obs = observed(abk(
        json!({"cancel": true}),
        uploading_status(json!({"jobName": "nightly-capture-1", "attempts": 1})),
    ));
    obs.children = vec![
        completed("cache"),
        child("db", "Uploading", json!({})),
        completed("web"),
    ];
    obs.job = Some(JobInfo {
        name: "nightly-capture-1".into(),
        ..Default::default()
    });
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Canceled);
    let cancels: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::CancelVolumeBackup { .. }))
        .collect();
    assert_eq!(
        cancels,
        vec![&Action::CancelVolumeBackup {
            namespace: "shop".into(),
            name: "nightly-db".into()
        }]
    );
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "nightly-capture-1".into()
    }));
}

#[test]
fn the_finalizer_is_added_and_on_deletion_removes_children_in_other_namespaces() {
    let mut ab = abk(json!({}), json!(null));
    ab.metadata.finalizers = None;
    let actions = decide_application_backup(&observed(ab), &ctx());
    assert!(actions.contains(&Action::SetApplicationBackupFinalizer(true)));

    let mut ab = abk(json!({}), uploading_status(json!({})));
    ab.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let mut obs = observed(ab);
    let mut far = completed("web");
    far.metadata.namespace = Some("web".into());
    obs.children = vec![completed("cache"), far];
    obs.snapshots = [
        cut_snapshot("cache", 1),
        ("web/nightly-web-snapshot".into(), cut_snapshot("web", 1).1),
    ]
    .into();
    let actions = decide_application_backup(&obs, &ctx());
    assert_eq!(
        actions,
        vec![
            Action::DeleteVolumeBackup {
                namespace: "web".into(),
                name: "nightly-web".into()
            },
            Action::DeleteVolumeSnapshot {
                namespace: "web".into(),
                name: "nightly-web-snapshot".into()
            },
            Action::SetApplicationBackupFinalizer(false),
        ]
    );
}

// ---- ApplicationRestore ----

fn ares(spec: Value, status: Value) -> ApplicationRestore {
    let mut full = json!({"source": {"applicationBackup": "nightly"}});
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationRestore",
        "metadata": {"name": "back", "namespace": "shop", "uid": "uid-ares"},
        "spec": full, "status": status,
    }))
    .unwrap()
}

fn source(phase: &str, resource_snapshot: Option<&str>) -> ApplicationBackup {
    abk(
        json!({}),
        json!({"phase": phase, "resourceSnapshotId": resource_snapshot}),
    )
}

fn restore_obs(ar: ApplicationRestore) -> ApplicationRestoreObserved {
    ApplicationRestoreObserved {
        restore: ar,
        source_backup: Some(source("Completed", Some("res-1"))),
        repository: Some(repository(&[])),
        children: Vec::new(),
        job: None,
    }
}

fn rstatus(actions: &[Action]) -> ApplicationRestoreStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::PatchApplicationRestoreStatus(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a status patch")
}

fn stage_done(name: &str) -> Option<JobInfo> {
    Some(JobInfo {
        name: name.into(),
        succeeded: true,
        termination_message: Some(r#"{"succeeded":true,"resourceCount":12}"#.into()),
        ..Default::default()
    })
}

fn rvolume(ns: &str, pvc: &str, extra: Value) -> Value {
    let mut v = json!({"namespace": ns, "persistentVolumeClaim": pvc, "snapshotId": format!("id-{pvc}"),
                       "storageClassName": "fast", "size": "1Gi", "accessModes": ["ReadWriteOnce"]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[test]
fn restore_resolves_its_source_and_runs_the_configuration_stage() {
    let actions = decide_application_restore(&restore_obs(ares(json!({}), json!(null))), &ctx());
    let st = rstatus(&actions);
    assert_eq!(st.phase, RPhase::RestoringConfiguration);
    assert_eq!(
        (st.repository.as_deref(), st.snapshot_id.as_deref()),
        (Some("main"), Some("res-1"))
    );
    let job = &jobs(&actions)[0];
    assert_eq!(job["metadata"]["name"], "back-configuration-1");
    assert_eq!(job["metadata"]["labels"]["cairn.io/job-kind"], "restore");
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-ares");
    assert_eq!(
        job_args(job)[..6],
        [
            "job",
            "restore-resources",
            "--application-restore",
            "back",
            "--stage",
            "configuration"
        ]
    );

    // By repository and snapshot id (another cluster).
    let mut obs = restore_obs(ares(
        json!({"source": {"repository": "main", "snapshotId": "abc"}}),
        json!(null),
    ));
    obs.source_backup = None;
    let st = rstatus(&decide_application_restore(&obs, &ctx()));
    assert_eq!(st.snapshot_id.as_deref(), Some("abc"));
    assert_eq!(st.phase, RPhase::RestoringConfiguration);

    let table = [
        (source("Uploading", None), RPhase::New, "waiting"),
        (
            source("PartiallyFailed", Some("res-1")),
            RPhase::RestoringConfiguration,
            "",
        ),
        (source("Failed", None), RPhase::Failed, "ended Failed"),
        (
            source("Completed", None),
            RPhase::Failed,
            "without a configuration snapshot",
        ),
    ];
    for (backup, phase, text) in table {
        let mut obs = restore_obs(ares(json!({}), json!(null)));
        obs.source_backup = Some(backup);
        let st = rstatus(&decide_application_restore(&obs, &ctx()));
        assert_eq!(st.phase, phase, "{text}");
        let said = format!("{:?} {:?}", st.failure_reason, st.conditions);
        assert!(said.contains(text), "{said}");
    }
    let mut obs = restore_obs(ares(json!({"source": {"snapshotId": "abc"}}), json!(null)));
    obs.source_backup = None;
    let st = rstatus(&decide_application_restore(&obs, &ctx()));
    assert_eq!(st.phase, RPhase::Failed);
}

#[test]
fn after_the_configuration_stage_each_listed_volume_gets_a_volume_restore() {
    let status = json!({"phase": "RestoringConfiguration", "repository": "main", "snapshotId": "res-1",
        "jobName": "back-configuration-1", "attempts": 1, "stageAttempts": 1, "created": 5,
        "volumes": [rvolume("shop", "db", json!({})), rvolume("shop-copy", "web", json!({"volumeMode": "Block"})),
                    rvolume("locked", "cache", json!({}))]});
    let mut obs = restore_obs(ares(json!({}), status));
    obs.repository = Some(repository(&["shop-copy"]));
    obs.job = stage_done("back-configuration-1");
    let actions = decide_application_restore(&obs, &ctx());
    let st = rstatus(&actions);
    assert_eq!(st.phase, RPhase::RestoringVolumes);
    assert_eq!(st.created, 5, "counts are the Jobs'");
    let created: Vec<Value> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateVolumeRestore(v) => Some(serde_json::to_value(v).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2);
    let db = &created[0];
    assert_eq!(db["metadata"]["name"], "back-db");
    assert_eq!(
        db["metadata"]["labels"]["cairn.io/application-restore"],
        "shop.back"
    );
    assert_eq!(db["metadata"]["ownerReferences"][0]["uid"], "uid-ares");
    assert_eq!(
        db["spec"]["source"],
        json!({"snapshotId": "id-db", "repository": "main"})
    );
    assert_eq!(
        db["spec"]["target"],
        json!({"persistentVolumeClaim": "db", "create": {"storageClassName": "fast", "size": "1Gi",
               "accessModes": ["ReadWriteOnce"]}})
    );
    let web = &created[1];
    assert_eq!(web["metadata"]["namespace"], "shop-copy");
    assert_eq!(web["spec"]["source"]["repositoryNamespace"], "shop");
    assert_eq!(web["metadata"]["ownerReferences"], json!([]));
    assert_eq!(
        web["spec"]["target"]["create"]["volumeMode"], "Block",
        "a Block PVC is recreated Block"
    );
    // A namespace the repository does not allow: that volume fails, with the field to set.
    let locked = &st.volumes[2];
    assert_eq!(locked.phase.as_deref(), Some("Failed"));
    assert!(locked
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("spec.allowedNamespaces"));
    assert!(jobs(&actions).is_empty(), "workloads wait for the volumes");
}

fn vrestore(ns: &str, name: &str, phase: &str) -> VolumeRestore {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"snapshotId": "x", "repository": "main"},
                 "target": {"persistentVolumeClaim": "p"}},
        "status": {"phase": phase, "failureReason": if phase == "Failed" { json!("Job crashed") } else { json!(null) }},
    }))
    .unwrap()
}

fn volumes_status() -> Value {
    json!({"phase": "RestoringVolumes", "repository": "main", "snapshotId": "res-1",
        "jobName": "back-configuration-1", "attempts": 1, "stageAttempts": 0,
        "volumes": [rvolume("shop", "db", json!({"volumeRestore": "back-db", "phase": "New"})),
                    rvolume("shop", "web", json!({"volumeRestore": "back-web", "phase": "New"}))]})
}

#[test]
fn workloads_start_once_every_volume_is_terminal_and_a_failed_volume_is_a_partial_failure() {
    let mut obs = restore_obs(ares(json!({}), volumes_status()));
    obs.children = vec![
        vrestore("shop", "back-db", "Completed"),
        vrestore("shop", "back-web", "Restoring"),
    ];
    let actions = decide_application_restore(&obs, &ctx());
    assert!(jobs(&actions).is_empty());
    obs.children[1] = vrestore("shop", "back-web", "Failed");
    let actions = decide_application_restore(&obs, &ctx());
    let st = rstatus(&actions);
    assert_eq!(st.phase, RPhase::RestoringWorkloads);
    assert_eq!(st.volumes[1].failure_reason.as_deref(), Some("Job crashed"));
    let job = &jobs(&actions)[0];
    assert_eq!(job["metadata"]["name"], "back-workloads-1");
    assert!(job_args(job).contains(&"workloads".to_string()));
    assert_eq!((st.attempts, st.stage_attempts), (2, 1));

    let mut st = serde_json::to_value(&st).unwrap();
    st["failed"] = json!(0);
    let mut obs = restore_obs(ares(json!({}), st.clone()));
    obs.children = vec![
        vrestore("shop", "back-db", "Completed"),
        vrestore("shop", "back-web", "Failed"),
    ];
    obs.job = stage_done("back-workloads-1");
    let final_status = rstatus(&decide_application_restore(&obs, &ctx()));
    assert_eq!(final_status.phase, RPhase::PartiallyFailed);
    assert!(final_status
        .failure_reason
        .unwrap()
        .contains("volume shop/web: Job crashed"));

    // Every volume restored and no resource failed: Completed.
    let mut ok = st.clone();
    ok["volumes"][1]["phase"] = json!("Completed");
    ok["volumes"][1]["failureReason"] = Value::Null;
    let mut obs = restore_obs(ares(json!({}), ok.clone()));
    obs.children = vec![
        vrestore("shop", "back-db", "Completed"),
        vrestore("shop", "back-web", "Completed"),
    ];
    obs.job = stage_done("back-workloads-1");
    assert_eq!(
        rstatus(&decide_application_restore(&obs, &ctx())).phase,
        RPhase::Completed
    );
    // A resource the Job could not create: PartiallyFailed.
    ok["failed"] = json!(2);
    let mut obs = restore_obs(ares(json!({}), ok));
    obs.children = vec![
        vrestore("shop", "back-db", "Completed"),
        vrestore("shop", "back-web", "Completed"),
    ];
    obs.job = stage_done("back-workloads-1");
    let st = rstatus(&decide_application_restore(&obs, &ctx()));
    assert_eq!(st.phase, RPhase::PartiallyFailed);
    assert!(st.failure_reason.unwrap().contains("2 resources"));
}

#[test]
fn a_configuration_stage_failing_for_good_fails_the_restore() {
    for (attempt, retried) in [(1, true), (3, false)] {
        let status = json!({"phase": "RestoringConfiguration", "repository": "main", "snapshotId": "res-1",
            "jobName": format!("back-configuration-{attempt}"), "attempts": attempt, "stageAttempts": attempt});
        let mut obs = restore_obs(ares(json!({}), status));
        obs.job = Some(JobInfo {
            name: format!("back-configuration-{attempt}"),
            failed: true,
            termination_message: Some(
                r#"{"succeeded":false,"message":"forbidden: namespaces"}"#.into(),
            ),
            ..Default::default()
        });
        let actions = decide_application_restore(&obs, &ctx());
        let st = rstatus(&actions);
        if retried {
            assert_eq!(st.phase, RPhase::RestoringConfiguration);
            assert_eq!(
                jobs(&actions)[0]["metadata"]["name"],
                "back-configuration-2"
            );
        } else {
            assert_eq!(st.phase, RPhase::Failed);
            assert!(st.failure_reason.unwrap().contains("forbidden: namespaces"));
        }
    }
}

#[test]
fn restore_cancel_deletes_the_job_and_cancels_running_volume_restores() {
    let mut status = volumes_status();
    status["jobName"] = json!("back-configuration-1");
    let mut obs = restore_obs(ares(json!({"cancel": true}), status));
    obs.children = vec![
        vrestore("shop", "back-db", "Completed"),
        vrestore("shop", "back-web", "Restoring"),
    ];
    obs.job = Some(JobInfo {
        name: "back-configuration-1".into(),
        ..Default::default()
    });
    let actions = decide_application_restore(&obs, &ctx());
    assert_eq!(rstatus(&actions).phase, RPhase::Canceled);
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "back-configuration-1".into()
    }));
    let cancels: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::CancelVolumeRestore { .. }))
        .collect();
    assert_eq!(
        cancels,
        vec![&Action::CancelVolumeRestore {
            namespace: "shop".into(),
            name: "back-web".into()
        }]
    );
}

#[test]
fn status_patches_leave_the_fields_the_jobs_write_alone() {
    let old =
        json!({"phase": "RestoringConfiguration", "created": 3, "failures": [], "jobName": "a"});
    let new = json!({"phase": "RestoringVolumes", "created": 3, "jobName": "a"});
    assert_eq!(
        status_diff_patch(&old, &new),
        json!({"status": {"phase": "RestoringVolumes", "failures": null}})
    );
}
