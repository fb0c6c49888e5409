//! `kubectl apply` of deploy/ and the samples against the simulator, as a user installs
//! cairn: discovery, CRD registration, client-side apply (create, then patch), `get`.

use cairn_kube_sim::{Sim, SimOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubectl_available() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "skipping: kubectl is not installed (scripts/test.sh installs kubernetes-client)"
        );
    }
    ok
}

fn kubectl(sim_config: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", sim_config)
        .env("HOME", sim_config.parent().unwrap())
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?} failed:\n{text}");
    text
}

#[test]
fn kubectl_applies_deploy_and_the_samples() {
    if !kubectl_available() {
        return;
    }
    let sim = Sim::start(SimOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&config, "default");
    // deploy/rbac.yaml binds the job ServiceAccount in the backup namespace `shop`, which
    // holds the application and exists before cairn is installed.
    // (`kubectl create namespace` sends protobuf, which the simulator does not decode.)
    let ns = dir.path().join("shop.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
    )
    .unwrap();
    kubectl(&config, &["create", "-f", ns.to_str().unwrap()]);
    let first = kubectl(&config, &["apply", "-k", "deploy/"]);
    assert!(
        first.contains(
            "customresourcedefinition.apiextensions.k8s.io/volumebackups.cairn.io created"
        ),
        "{first}"
    );
    assert!(
        first.contains("deployment.apps/cairn-controller created") || first.contains("created"),
        "{first}"
    );
    let again = kubectl(&config, &["apply", "-k", "deploy/"]);
    assert!(
        !again.contains("created") && !again.contains("configured"),
        "a second apply changes nothing:\n{again}"
    );
    let samples = kubectl(&config, &["apply", "-f", "deploy/samples/"]);
    assert!(samples.contains("volumebackup.cairn.io/"), "{samples}");
    let listed = kubectl(&config, &["get", "vb", "-n", "shop"]);
    assert!(listed.contains("NAME"), "{listed}");
    let samples_again = kubectl(&config, &["apply", "-f", "deploy/samples/"]);
    assert!(samples_again.contains("unchanged"), "{samples_again}");
    assert_eq!(
        sim.warnings(),
        Vec::<String>::new(),
        "fields the API server dropped"
    );
}
