//! deploy/Dockerfile's build context: a context assembled exactly as the builder stage's
//! COPY lines would assemble it resolves `cairn` offline with the committed lock file
//! unchanged, every path dependency is inside it, and the .dockerignore keeps what they copy.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `(sources, destination)` of each COPY line of the first (builder) stage, and its WORKDIR.
fn builder_copies(dockerfile: &str) -> (String, Vec<(Vec<String>, String)>) {
    let mut workdir = "/".to_string();
    let mut copies = Vec::new();
    let mut stages = 0;
    for line in dockerfile.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("FROM") => stages += 1,
            Some("WORKDIR") if stages == 1 => workdir = words.next().unwrap().to_string(),
            Some("COPY") if stages == 1 => {
                let args: Vec<String> = words.map(str::to_string).collect();
                assert!(
                    !args.iter().any(|a| a.starts_with("--")),
                    "COPY flags are not modelled by this test: {line}"
                );
                let (dest, sources) = args.split_last().unwrap();
                copies.push((sources.to_vec(), dest.clone()));
            }
            _ => {}
        }
    }
    assert_eq!(stages, 2, "a builder stage and a runtime stage");
    (workdir, copies)
}

/// Copies `from` (file or directory) to `to` like COPY does, leaving out `target` dirs.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() == "target" {
                continue;
            }
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn the_dockerfile_context_holds_the_whole_workspace() {
    let root = root();
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let (workdir, copies) = builder_copies(&dockerfile);
    let context = tempfile::tempdir().unwrap();
    let src = context.path().join(workdir.trim_start_matches('/'));
    std::fs::create_dir_all(&src).unwrap();
    let ignore = std::fs::read_to_string(root.join("deploy/Dockerfile.dockerignore")).unwrap();
    for (sources, dest) in &copies {
        let dest = src.join(dest.trim_start_matches("./"));
        for source in sources {
            // The .dockerignore excludes everything and re-includes what COPY takes.
            assert!(
                ignore.lines().any(|l| l.trim() == format!("!{source}")),
                "deploy/Dockerfile.dockerignore does not re-include {source}"
            );
            let from = root.join(source);
            let to = if dest.to_string_lossy().ends_with('/') || sources.len() > 1 {
                dest.join(Path::new(source).file_name().unwrap())
            } else {
                dest.clone()
            };
            copy_tree(&from, &to);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // What `cargo build --release --locked -p cairn` resolves on the builder, without the
    // network: the workspace loads and the lock file needs no change.
    let tree = Command::new(&cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "cairn",
            "-e",
            "normal,build",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "cargo cannot resolve cairn in the Dockerfile's context:\n{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata in the Dockerfile's context failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let src = src.canonicalize().unwrap();
    let mut paths: Vec<&str> = packages
        .iter()
        .map(|p| p["manifest_path"].as_str().unwrap())
        .collect();
    paths.extend(
        packages
            .iter()
            .flat_map(|p| p["dependencies"].as_array().unwrap())
            .filter_map(|d| d["path"].as_str()),
    );
    assert!(paths.iter().any(|m| m.ends_with("crates/cli/Cargo.toml")));
    for path in &paths {
        assert!(
            Path::new(path).starts_with(&src),
            "{path} is outside the build context"
        );
    }
}

#[test]
fn the_image_binary_carries_no_debug_info() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_DEBUG=0"));
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=debuginfo"));
}

/// KDMP runs `/bin/sh -x -c "/kopiaexecutor ..."` and Stork `sleep 5` in the same image, as
/// a non-root user: the link, a shell and sleep must be in the final stage, before USER.
#[test]
fn the_image_answers_as_kdmps_kopiaexecutor() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap();
    assert!(
        final_stage.starts_with("debian:bookworm-slim"),
        "the shell and sleep come from debian's base image: {final_stage}"
    );
    let link = final_stage
        .find("RUN ln -s /usr/local/bin/cairn /kopiaexecutor")
        .expect("the /kopiaexecutor link in the final stage");
    let user = final_stage
        .find("\nUSER 65532:65532")
        .expect("a non-root user");
    assert!(link < user, "the link is made as root, before USER");
}
