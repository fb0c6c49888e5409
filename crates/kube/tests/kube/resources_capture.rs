//! Capture on recorded API responses: which objects are skipped and the YAML written for
//! the others (insta snapshots under `snapshots/`; a change in the output fails the test).

use cairn_kube::resources::capture::{annotate_pvc, skip_object, strip};
use cairn_kube::resources::layout::{read_tree, write_object};
use cairn_kube::resources::{group_of, ResourceType};
use serde_json::Value;

fn recorded() -> Vec<Value> {
    let text = include_str!("fixtures/shop-objects.json");
    let doc: Value = serde_json::from_str(text).unwrap();
    doc["items"].as_array().unwrap().clone()
}

/// The type of a recorded object (the plural as discovery would report it).
fn type_of(o: &Value) -> ResourceType {
    let api_version = o["apiVersion"].as_str().unwrap();
    let kind = o["kind"].as_str().unwrap();
    let plural = match kind {
        "PersistentVolumeClaim" => "persistentvolumeclaims".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    ResourceType::new(
        group_of(api_version),
        api_version.rsplit('/').next().unwrap(),
        kind,
        &plural,
        true,
    )
}

#[test]
fn capture_skips_what_must_not_be_restored_and_strips_server_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut skipped = Vec::new();
    for o in recorded() {
        let t = type_of(&o);
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        if let Some(why) = skip_object(&t, &o) {
            skipped.push(format!("{}/{name}: {why}", t.kind));
            continue;
        }
        let mut clean = strip(&t, &o);
        if t.kind == "PersistentVolumeClaim" {
            annotate_pvc(
                &mut clean,
                "5f3a9c0011223344",
                Some("shop-nightly-data-db-0"),
            );
        }
        write_object(dir.path(), &clean).unwrap();
    }
    insta::assert_snapshot!("skipped", skipped.join("\n"));
    let tree = read_tree(dir.path()).unwrap();
    let paths: Vec<String> = tree.iter().map(|c| c.path.display().to_string()).collect();
    insta::assert_snapshot!("tree", paths.join("\n"));
    for c in &tree {
        let text = std::fs::read_to_string(dir.path().join(&c.path)).unwrap();
        let name = format!(
            "{}-{}",
            c.object["kind"].as_str().unwrap(),
            c.object["metadata"]["name"].as_str().unwrap()
        );
        insta::assert_snapshot!(name, text);
        // Nothing server-set survives anywhere in the file.
        for field in [
            "uid:",
            "resourceVersion:",
            "managedFields:",
            "creationTimestamp:",
            "ownerReferences:",
            "last-applied-configuration",
            "\nstatus:",
        ] {
            assert!(
                !text.contains(field),
                "{} still has {field}:\n{text}",
                c.path.display()
            );
        }
    }
}
