//! The monitoring manifests: the alerting rules shipped for kustomize, for the Prometheus
//! Operator and in the Helm chart are one set, which `promtool` (Debian's prometheus
//! package, installed by scripts/test.sh) checks and unit-tests.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `name` on PATH, or a failure saying how to install it (never a silent skip).
fn installed(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: run scripts/test.sh, which installs Debian's prometheus package")
        })
}

/// The rules shipped for kustomize, for the Prometheus Operator and in the Helm chart are
/// one set; promtool accepts it, and its unit tests (the overdue alerts fire after the
/// allowed interval and stay quiet before it) pass.
#[test]
fn the_shipped_alerting_rules_are_one_set_that_promtool_checks_and_tests() {
    let monitoring = deploy().join("monitoring");
    let read =
        |p: &Path| -> Value { serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let rules = read(&monitoring.join("rules.yaml"));
    assert_eq!(read(&monitoring.join("prometheusrule.yaml"))["spec"], rules);
    assert_eq!(read(&deploy().join("helm/cairn/files/rules.yaml")), rules);
    assert_eq!(
        std::fs::read(monitoring.join("grafana-dashboard.json")).unwrap(),
        std::fs::read(deploy().join("helm/cairn/files/grafana-dashboard.json")).unwrap(),
        "the Helm chart's dashboard is a copy of deploy/monitoring/grafana-dashboard.json"
    );
    let promtool = installed("promtool");
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&monitoring)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
