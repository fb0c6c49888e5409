//! BackupSchedule end to end on the simulated cluster of `kube_e2e`: runs created on an
//! interval complete, retention keeps the last two VolumeBackups, and the forget Job leaves
//! exactly their snapshots of the schedule in the repository.

use crate::common::text;
use crate::kube_e2e::{config, small_files, Cluster, NS, PASSWORD, PATIENCE};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;

impl Cluster {
    /// The VolumeBackups labelled with schedule `name`.
    fn runs_of(&self, name: &str) -> Vec<Value> {
        self.sim
            .list("cairn.io/v1alpha1", "VolumeBackup", Some(NS))
            .into_iter()
            .filter(|vb| vb["metadata"]["labels"]["cairn.io/schedule"] == name)
            .collect()
    }

    /// Ids of the repository's snapshots carrying every tag in `tags`, read with the CLI.
    fn snapshot_ids(&self, tags: &[&str]) -> BTreeSet<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["snapshots", "--json", "-r", self.location.location()])
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("HOME", self.location_home())
            .output()
            .unwrap();
        assert!(out.status.success(), "snapshots: {}", text(&out));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .filter(|s| {
                tags.iter().all(|t| {
                    s["tags"]
                        .as_array()
                        .is_some_and(|have| have.iter().any(|h| h == t))
                })
            })
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn location_home(&self) -> std::path::PathBuf {
        let home = std::env::temp_dir().join("cairn-kube-schedule-home");
        std::fs::create_dir_all(&home).unwrap();
        home
    }
}

#[test]
fn a_schedule_runs_on_its_interval_and_keeps_the_last_two_runs_and_snapshots() {
    let c = Cluster::start("e2e-schedule", config(&[]));
    c.volume("data", &small_files());
    // A backup outside the schedule shares the repository; retention must not touch it.
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": "by-hand", "namespace": NS},
        "spec": {"source": {"persistentVolumeClaim": "data"}, "repository": "main",
                 "mode": "Direct"}}),
    );
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "often", "namespace": NS},
        "spec": {"every": "5s", "retention": {"keepLast": 2},
                 "template": {"volumeBackup": {
                     "source": {"persistentVolumeClaim": "data"}, "repository": "main",
                     "mode": "Direct", "tags": {"team": "shop"}}}}}),
    );
    // Three successes: retention has had a run to delete.
    let status = |c: &Cluster| {
        c.get("BackupSchedule", "often")
            .map(|s| s["status"].clone())
    };
    c.sim.wait_for("three successful runs", PATIENCE, |_| {
        let s = status(&c)?;
        (s["succeeded"].as_u64()? >= 3 && s["pruned"].as_u64()? >= 1).then_some(())
    });
    c.sim
        .merge_patch(
            "cairn.io/v1alpha1",
            "BackupSchedule",
            Some(NS),
            "often",
            None,
            json!({"spec": {"suspend": true}}),
        )
        .unwrap();
    // Settled: no run going, the forget owed for the last success done.
    let settled = c.sim.wait_for("the schedule to settle", PATIENCE, |_| {
        let s = status(&c)?;
        let idle = s["active"].is_null()
            && s["forgetJob"].is_null()
            && s["forgetPending"] != true
            && s["suspendedAt"].is_string();
        let runs = c.runs_of("often");
        let finished = runs.iter().all(|r| r["status"]["phase"] == "Completed");
        (idle && finished && runs.len() == 2).then_some(s)
    });
    let retention = settled["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RetentionApplied")
        .cloned()
        .unwrap_or_default();
    assert_eq!(retention["status"], "True", "{settled}");
    let runs = c.runs_of("often");
    let kept: BTreeSet<String> = runs
        .iter()
        .map(|r| r["status"]["snapshotId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        c.snapshot_ids(&["cairn.io/schedule=often"]),
        kept,
        "{settled}"
    );
    // The schedule's other tags are on its snapshots; the hand-made backup's survives.
    assert_eq!(
        c.snapshot_ids(&["cairn.io/schedule=often", "team=shop"]),
        kept
    );
    let by_hand_id = c.sim.wait_for("by-hand completed", PATIENCE, |_| {
        let vb = c.get("VolumeBackup", "by-hand")?;
        vb["status"]["snapshotId"].as_str().map(str::to_string)
    });
    assert!(c.snapshot_ids(&[]).contains(&by_hand_id));
    // Counts agree with the objects.
    let n = |k: &str| settled[k].as_u64().unwrap();
    assert_eq!(n("succeeded") + n("failed"), n("runs"), "{settled}");
    assert_eq!(n("runs") - n("pruned"), 2, "{settled}");
    assert_eq!(n("failed"), 0, "{settled}");
    assert!(settled["lastSuccessfulBackup"].is_string(), "{settled}");
    c.assert_no_pruned_fields();
}
