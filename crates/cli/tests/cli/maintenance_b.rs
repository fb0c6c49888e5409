//! `cairn prune`, `cairn maintenance run` and `cairn copy` through the binary.

use std::path::Path;
use std::process::{Command, Output};

fn cairn(repo: &Path, cache: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("-r")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("CAIRN_PASSWORD", "pw")
        .env("CAIRN_TO_PASSWORD", "pw2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_files(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..5 {
        let data: Vec<u8> = (0..200_000u32)
            .map(|x| (x.wrapping_mul(2654435761) >> (i + tag.len())) as u8)
            .collect();
        std::fs::write(dir.join(format!("{tag}{i}")), data).unwrap();
    }
}

fn pack_bytes(repo: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let m = e.metadata().unwrap();
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&repo.join("packs"))
}

#[test]
fn prune_reports_and_reclaims_and_maintenance_runs() {
    let t = tempfile::tempdir().unwrap();
    let (repo, cache, src) = (
        t.path().join("repo"),
        t.path().join("cache"),
        t.path().join("src"),
    );
    cairn(&repo, &cache, &["init"]);
    write_files(&src.join("a"), "a");
    let first = json(&cairn(
        &repo,
        &cache,
        &["backup", src.to_str().unwrap(), "--json"],
    ));
    std::fs::remove_dir_all(src.join("a")).unwrap();
    write_files(&src.join("b"), "bb");
    cairn(&repo, &cache, &["backup", src.to_str().unwrap()]);
    // Forget the first snapshot by deleting its manifest (forget is part A's).
    let id = first["id"]
        .as_str()
        .or(first["snapshot_id"].as_str())
        .map(str::to_string);
    let snaps = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    let victim = match id {
        Some(id) => repo.join("snapshots").join(id),
        None => snaps
            .iter()
            .min_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
            .unwrap()
            .clone(),
    };
    std::fs::remove_file(victim).unwrap();

    let before = pack_bytes(&repo);
    let dry = json(&cairn(
        &repo,
        &cache,
        &["prune", "--now", "--dry-run", "--json"],
    ));
    assert!(dry["bytes_planned"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(pack_bytes(&repo), before, "dry run deletes nothing");
    let waiting = json(&cairn(&repo, &cache, &["prune", "--json"]));
    assert_eq!(
        waiting["bytes_reclaimed"], 0,
        "the default window defers deletion"
    );
    let now = json(&cairn(&repo, &cache, &["prune", "--now", "--json"]));
    assert!(now["bytes_reclaimed"].as_u64().unwrap() > 0, "{now}");
    assert!(pack_bytes(&repo) < before);
    cairn(&repo, &cache, &["maintenance", "run", "--quick"]);
    cairn(
        &repo,
        &cache,
        &[
            "maintenance",
            "run",
            "--full",
            "--safety-window",
            "0s",
            "--no-backup-running",
        ],
    );
    let out = t.path().join("out");
    cairn(
        &repo,
        &cache,
        &["restore", "latest", "-t", out.to_str().unwrap()],
    );
    for i in 0..5 {
        let name = format!("bb{i}");
        assert_eq!(
            std::fs::read(src.join("b").join(&name)).unwrap(),
            std::fs::read(out.join("b").join(&name)).unwrap()
        );
    }
}

#[test]
fn copy_to_another_repository_twice_adds_nothing_the_second_time() {
    let t = tempfile::tempdir().unwrap();
    let (a, b, cache, src) = (
        t.path().join("a"),
        t.path().join("b"),
        t.path().join("cache"),
        t.path().join("src"),
    );
    cairn(&a, &cache, &["init"]);
    let init_b = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["-r", b.to_str().unwrap(), "init"])
        .env("CAIRN_PASSWORD", "pw2")
        .output()
        .unwrap();
    assert!(init_b.status.success());
    write_files(&src, "c");
    cairn(&a, &cache, &["backup", src.to_str().unwrap()]);
    let first = cairn(&a, &cache, &["copy", "--to", b.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&first.stdout).contains("copied snapshot"));
    let second = cairn(&a, &cache, &["copy", "--to", b.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(
        text.contains("already at the destination") && text.contains("added 0 blob(s)"),
        "{text}"
    );
    let out = t.path().join("out");
    let restore = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "-r",
            b.to_str().unwrap(),
            "restore",
            "latest",
            "-t",
            out.to_str().unwrap(),
        ])
        .env("CAIRN_PASSWORD", "pw2")
        .env("CAIRN_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    for i in 0..5 {
        let name = format!("c{i}");
        assert_eq!(
            std::fs::read(src.join(&name)).unwrap(),
            std::fs::read(out.join(&name)).unwrap()
        );
    }
}
