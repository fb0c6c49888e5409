//! deploy/ against the code: the committed CRDs are what the code generates, every sample
//! CR validates against the generated schema, and the sample ConfigMap parses cleanly.

use cairn_kube::config::Config;
use cairn_kube::validate::validate;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Kind -> openAPIV3Schema of its only version, from the generated CRDs.
fn schemas() -> BTreeMap<String, Value> {
    cairn_kube::crd::crds()
        .into_iter()
        .map(|crd| {
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .clone()
                .unwrap();
            (crd.spec.names.kind, serde_json::to_value(schema).unwrap())
        })
        .collect()
}

#[test]
fn committed_crds_match_the_code() {
    let generated = cairn_kube::crds_yaml();
    for path in [
        deploy().join("crds.yaml"),
        deploy().join("helm/cairn/crds/crds.yaml"),
    ] {
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the generated CRDs; run `cargo run -p cairn-kube --example write_crds`",
            path.display()
        );
    }
}

#[test]
fn every_crd_has_status_subresource_and_printer_columns() {
    for crd in cairn_kube::crd::crds() {
        let version = &crd.spec.versions[0];
        assert_eq!(
            (crd.spec.group.as_str(), version.name.as_str()),
            ("cairn.io", "v1alpha1")
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}",
            crd.spec.names.kind
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{}",
            crd.spec.names.kind
        );
        let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
        assert!(
            schema["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
                .is_object(),
            "{}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn every_sample_validates_against_the_generated_schema() {
    let schemas = schemas();
    let mut seen = std::collections::BTreeSet::new();
    let mut entries: Vec<_> = std::fs::read_dir(deploy().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            assert_eq!(doc["apiVersion"], "cairn.io/v1alpha1", "{}", path.display());
            let schema = schemas
                .get(&kind)
                .unwrap_or_else(|| panic!("{}: unknown kind {kind}", path.display()));
            let problems = validate(schema, &doc);
            assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
            seen.insert(kind);
        }
    }
    let all: std::collections::BTreeSet<String> = schemas.keys().cloned().collect();
    assert_eq!(seen, all, "every kind has a sample");
}

#[test]
fn a_broken_sample_is_rejected() {
    let schemas = schemas();
    let bad: Value = serde_yaml::from_str(
        "apiVersion: cairn.io/v1alpha1\nkind: VolumeBackup\nmetadata: {name: x}\nspec:\n  source: {pvc: data}\n  repository: main\n  mode: Snapshots\n",
    )
    .unwrap();
    let problems = validate(&schemas["VolumeBackup"], &bad);
    assert!(
        problems.iter().any(|p| p.contains("$.spec.mode")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("$.spec.source.pvc: unknown field")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing required field \"persistentVolumeClaim\"")),
        "{problems:?}"
    );
}

#[test]
fn sample_configmap_parses_without_problems() {
    let doc = documents(&deploy().join("configmap.yaml")).remove(0);
    let data: BTreeMap<String, String> = serde_json::from_value(doc["data"].clone()).unwrap();
    let config = Config::from_data(&data);
    assert_eq!(config.problems, BTreeMap::new());
    assert_eq!(config.backup_pvc.len(), 3);
    for key in [
        "KDMP_EXCLUDE_FILE_LIST",
        "KDMP_BACKUP_JOB_LIMIT",
        "KDMP_RESTORE_JOB_LIMIT",
        "KDMP_MAINTENANCE_JOB_LIMIT",
        "KDMP_KOPIAEXECUTOR_REQUEST_CPU",
        "KDMP_KOPIAEXECUTOR_LIMIT_CPU",
        "KDMP_KOPIAEXECUTOR_REQUEST_MEMORY",
        "KDMP_KOPIAEXECUTOR_LIMIT_MEMORY",
        "SNAPSHOT_TIMEOUT",
        "backupPVC",
    ] {
        assert!(data.contains_key(key), "sample ConfigMap documents {key}");
    }
}

#[test]
fn every_manifest_is_well_formed_yaml_with_a_kind() {
    for name in [
        "rbac.yaml",
        "controller.yaml",
        "configmap.yaml",
        "namespace.yaml",
        "metrics-service.yaml",
        "velero.yaml",
        "monitoring/servicemonitor.yaml",
        "monitoring/prometheusrule.yaml",
    ] {
        for doc in documents(&deploy().join(name)) {
            assert!(
                doc["kind"].is_string() && doc["apiVersion"].is_string(),
                "{name}: {doc}"
            );
        }
    }
}

#[test]
fn plain_velero_rbac_grants_what_the_helm_template_grants() {
    // The template's lines with `{{ }}` are names, labels and conditions; the rules are
    // plain YAML and must match deploy/velero.yaml, rule for rule, in order.
    let template = std::fs::read_to_string(deploy().join("helm/cairn/templates/velero.yaml"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("{{"))
        .collect::<Vec<_>>()
        .join("\n");
    let rules = |docs: Vec<Value>| -> Vec<(Value, Value)> {
        docs.into_iter()
            .filter(|d| d.get("rules").is_some())
            .map(|d| (d["kind"].clone(), d["rules"].clone()))
            .collect()
    };
    let helm: Vec<Value> = serde_yaml::Deserializer::from_str(&template)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let plain = rules(documents(&deploy().join("velero.yaml")));
    assert_eq!(plain.len(), 4, "{plain:?}");
    assert_eq!(plain, rules(helm));
}
