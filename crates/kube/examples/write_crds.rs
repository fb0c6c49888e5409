//! Writes deploy/crds.yaml and the Helm chart's copy from the code: `cargo run -p cairn-kube --example write_crds`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let yaml = cairn_kube::crds_yaml();
    std::fs::write(root.join("crds.yaml"), &yaml)?;
    std::fs::create_dir_all(root.join("helm/cairn/crds"))?;
    std::fs::write(root.join("helm/cairn/crds/crds.yaml"), &yaml)?;
    Ok(())
}
