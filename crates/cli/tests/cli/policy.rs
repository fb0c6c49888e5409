//! Issue 5 end to end through the `cairn` binary: exclusion (KDMP exclude config, `--exclude*`
//! flags, `.cairnignore`), backup hooks and `cairn forget`. Each test backs up a small tree
//! into a fresh local repository and checks what `ls -R`, `snapshots --json` and the exit
//! codes say. The repository is created through the library with a cheap KDF so every
//! command opens it quickly.

use cairn_core::crypto::KdfParams;
use cairn_core::{InitOptions, OpenOptions, Repository, Snapshot, SnapshotId};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSWORD: &str = "policy-test-password";
const CACHEDIR_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";

struct Fixture {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let cache = tmp.path().join("cache");
        Repository::init(
            cairn_storage::open_with(repo.to_str().unwrap(), &Default::default()).unwrap(),
            PASSWORD,
            &InitOptions {
                kdf: KdfParams {
                    m_cost: 1024,
                    t_cost: 1,
                    p_cost: 1,
                },
                ..InitOptions::default()
            },
            &OpenOptions {
                cache_dir: Some(cache.clone()),
                tolerate_damage: false,
            },
        )
        .unwrap();
        Fixture { tmp, repo, cache }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.tmp.path().join(relative)
    }

    fn open(&self) -> Repository {
        Repository::open(
            cairn_storage::open_with(self.repo.to_str().unwrap(), &Default::default()).unwrap(),
            PASSWORD,
            &OpenOptions {
                cache_dir: Some(self.cache.clone()),
                tolerate_damage: false,
            },
        )
        .unwrap()
    }

    fn cairn(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env("CAIRN_REPOSITORY", &self.repo)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", &self.cache)
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path())
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every path in the latest snapshot, from `ls -R` (test names hold no spaces).
    fn listed(&self) -> BTreeSet<String> {
        self.ok(&["ls", "-R", "latest"])
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(str::to_string)
            .collect()
    }

    fn snapshots(&self) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["snapshots", "--json"])).unwrap()
    }
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Creates `files` (relative paths) under `root`, each holding its own name.
fn tree(root: &Path, files: &[&str]) {
    for f in files {
        write(&root.join(f), f);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_absent(listed: &BTreeSet<String>, paths: &[&str]) {
    for p in paths {
        assert!(!listed.contains(*p), "{p} should be excluded: {listed:?}");
    }
}

fn assert_present(listed: &BTreeSet<String>, paths: &[&str]) {
    for p in paths {
        assert!(listed.contains(*p), "{p} should be backed up: {listed:?}");
    }
}

fn excludes(snapshot: &Value) -> Vec<String> {
    serde_json::from_value(snapshot["excludes"].clone()).unwrap_or_default()
}

// ---- exclusion ----------------------------------------------------------------------------

#[test]
fn kdmp_config_applies_the_volume_class_line_only() {
    let f = Fixture::new();
    let vol = f.path("vol");
    tree(
        &vol,
        &[
            "dir1/a",
            "dir1/sub/b",
            "file1",
            "data/x",
            "logs/a.log",
            "logs/keep.txt",
            "sub/file1",
            "sub/dir1/c",
            "sub/deep/x.tmp",
        ],
    );
    write(
        &f.path("kdmp.conf"),
        "# KDMP_EXCLUDE_FILE_LIST\npx-db=dir1, /file1,logs/*.log,**/*.tmp\nmysql=data,sub\n",
    );
    f.ok(&[
        "backup",
        vol.to_str().unwrap(),
        "--exclude-config",
        "kdmp.conf",
        "--storage-class",
        "px-db",
    ]);
    let listed = f.listed();
    // A directory takes its subtree; entries are anchored at the volume root; globs work.
    assert_absent(
        &listed,
        &[
            "/dir1",
            "/dir1/a",
            "/dir1/sub/b",
            "/file1",
            "/logs/a.log",
            "/sub/deep/x.tmp",
        ],
    );
    // The mysql line has no effect on a px-db volume.
    assert_present(
        &listed,
        &[
            "/data/x",
            "/logs/keep.txt",
            "/sub/file1",
            "/sub/dir1/c",
            "/sub/deep",
        ],
    );
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        excludes(&snaps[0]),
        [
            "class:px-db=dir1",
            "class:px-db=file1",
            "class:px-db=logs/*.log",
            "class:px-db=**/*.tmp",
            "ignore-file:.cairnignore",
        ]
    );
}

#[test]
fn a_storage_class_without_a_line_gets_no_class_excludes_and_says_so() {
    let f = Fixture::new();
    let vol = f.path("vol");
    tree(&vol, &["dir1/a", "file1"]);
    write(&f.path("kdmp.conf"), "px-db=dir1,file1\n");
    let out = f.cairn(&[
        "-v",
        "backup",
        vol.to_str().unwrap(),
        "--exclude-config",
        "kdmp.conf",
        "--storage-class",
        "gp2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no KDMP exclude entries for storage class"),
        "{}",
        stderr(&out)
    );
    assert_present(&f.listed(), &["/dir1/a", "/file1"]);
    assert_eq!(excludes(&f.snapshots()[0]), ["ignore-file:.cairnignore"]);
}

#[test]
fn a_malformed_exclude_config_names_the_line_and_backs_up_nothing() {
    let f = Fixture::new();
    let vol = f.path("vol");
    tree(&vol, &["a"]);
    let cases = [
        ("px-db=dir1\n\ngarbage\n", "line 3", "no '=' found"),
        ("px-db=dir1\npx-db=dir2\n", "line 2", "listed twice"),
        ("PX_DB=dir1\n", "line 1", "not a valid Kubernetes name"),
        ("px-db=../etc\n", "line 1", "'..'"),
    ];
    for (text, line, reason) in cases {
        write(&f.path("kdmp.conf"), text);
        let out = f.cairn(&[
            "backup",
            vol.to_str().unwrap(),
            "--exclude-config",
            "kdmp.conf",
            "--storage-class",
            "px-db",
        ]);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("kdmp.conf"), "{text:?}: {err}");
        assert!(
            err.contains(&format!("exclude config {line}:")),
            "{text:?}: {err}"
        );
        assert!(err.contains(reason), "{text:?}: {err}");
    }
    assert!(f.snapshots().is_empty());
}

#[test]
fn exclude_flags_and_ignore_files_leave_out_what_they_name() {
    let f = Fixture::new();
    let src = f.path("src");
    tree(
        &src,
        &[
            "a.log",
            "sub/b.log",
            "build/out",
            "code/build/out",
            "sub/secret.txt",
            "marked/.nobackup",
            "marked/data",
            "cache/blob",
            "fakecache/blob",
            "x.bak",
            "keep.bak",
            "scratch/tmp",
            "sub/scratch/tmp",
            "kept.txt",
        ],
    );
    write(&src.join("cache/CACHEDIR.TAG"), CACHEDIR_SIGNATURE);
    write(&src.join("fakecache/CACHEDIR.TAG"), "not a cache tag");
    write(&src.join(".cairnignore"), "*.bak\n!keep.bak\n/scratch/\n");
    std::fs::File::create(src.join("big.bin"))
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    std::fs::File::create(src.join("exact.bin"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    write(&f.path("patterns.txt"), "# secrets\n\nsecret.txt\n");

    f.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.log",
        "--exclude",
        "/build",
        "--exclude-file",
        "patterns.txt",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-caches",
        "--exclude-larger-than",
        "1MiB",
        "--one-file-system",
    ]);
    let listed = f.listed();
    assert_absent(
        &listed,
        &[
            "/a.log",
            "/sub/b.log",
            "/build",
            "/sub/secret.txt",
            "/marked",
            "/marked/data",
            "/cache",
            "/cache/blob",
            "/big.bin",
            "/x.bak",
            "/scratch",
        ],
    );
    assert_present(
        &listed,
        &[
            "/code/build/out",
            "/fakecache/blob",
            "/exact.bin",
            "/keep.bak",
            "/sub/scratch/tmp",
            "/.cairnignore",
            "/kept.txt",
        ],
    );
    assert_eq!(
        excludes(&f.snapshots()[0]),
        [
            "pattern:*.log",
            "pattern:/build",
            "pattern:secret.txt",
            "if-present:.nobackup",
            "caches",
            "larger-than:1048576",
            "one-file-system",
            "ignore-file:.cairnignore",
        ]
    );
}

#[test]
fn every_backup_path_is_its_own_exclusion_root() {
    let f = Fixture::new();
    tree(&f.path("a"), &["build/x", "src/build/y", "keep"]);
    tree(&f.path("b"), &["build/x", "other"]);
    write(&f.path("kdmp.conf"), "fast=other\n");
    f.ok(&[
        "backup",
        f.path("a").to_str().unwrap(),
        f.path("b").to_str().unwrap(),
        "--exclude",
        "/build",
        "--exclude-config",
        "kdmp.conf",
        "--storage-class",
        "fast",
    ]);
    let listed = f.listed();
    assert_absent(&listed, &["/a/build", "/b/build", "/b/other"]);
    assert_present(&listed, &["/a/src/build/y", "/a/keep"]);
}

#[test]
fn an_invalid_exclude_flag_is_a_usage_error() {
    let f = Fixture::new();
    tree(&f.path("src"), &["a"]);
    let out = f.cairn(&["backup", "src", "--exclude", "a/../../b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("'..'"), "{}", stderr(&out));
    let out = f.cairn(&["backup", "src", "--exclude-larger-than", "lots"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = f.cairn(&["backup", "src", "--storage-class", "px-db"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(f.snapshots().is_empty());
}

// ---- hooks --------------------------------------------------------------------------------

#[test]
fn a_failing_pre_hook_aborts_the_backup_and_the_post_hook_still_runs() {
    let f = Fixture::new();
    tree(&f.path("src"), &["a"]);
    let out = f.cairn(&[
        "backup",
        "src",
        "--pre-exec",
        "echo freezing; exit 7",
        "--post-exec",
        "echo \"$CAIRN_BACKUP_STATUS\" > post.marker",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("pre-exec hook failed (exit code 7)"), "{err}");
    assert!(err.contains("no snapshot written"), "{err}");
    assert!(
        err.contains("freezing"),
        "the hook's output is logged: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(f.path("post.marker")).unwrap(),
        "skipped\n"
    );
    assert!(f.snapshots().is_empty());
}

#[test]
fn a_failing_backup_still_runs_the_post_hook() {
    let f = Fixture::new();
    let out = f.cairn(&[
        "backup",
        "does-not-exist",
        "--pre-exec",
        "true",
        "--post-exec",
        "echo \"$CAIRN_BACKUP_STATUS\" > post.marker",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("backup failed; the post-exec hook ran"),
        "{err}"
    );
    assert!(err.contains("does-not-exist"), "{err}");
    assert_eq!(
        std::fs::read_to_string(f.path("post.marker")).unwrap(),
        "failure\n"
    );
    assert!(f.snapshots().is_empty());
}

#[test]
fn hook_outcomes_are_recorded_in_the_snapshot() {
    let f = Fixture::new();
    tree(&f.path("src"), &["a"]);
    f.ok(&[
        "backup",
        "src",
        "--pre-exec",
        "echo froze; echo to-stderr >&2",
        "--post-exec",
        "echo thawed; echo \"$CAIRN_BACKUP_STATUS\" > post.marker",
    ]);
    assert_eq!(
        std::fs::read_to_string(f.path("post.marker")).unwrap(),
        "success\n"
    );
    let snaps = f.snapshots();
    let hooks = snaps[0]["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["phase"], "pre");
    assert_eq!(hooks[0]["exit_code"], 0);
    assert_eq!(hooks[0]["success"], true);
    assert_eq!(hooks[0]["output"], "froze\nto-stderr\n");
    assert_eq!(hooks[1]["phase"], "post");
    assert_eq!(hooks[1]["output"], "thawed\n");
}

#[test]
fn a_failing_post_hook_keeps_the_snapshot_and_exits_3() {
    let f = Fixture::new();
    tree(&f.path("src"), &["a"]);
    let out = f.cairn(&["backup", "src", "--post-exec", "echo cannot thaw; exit 4"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("but the post-exec hook failed (exit code 4)"),
        "{}",
        stderr(&out)
    );
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 1);
    let post = &snaps[0]["hooks"][0];
    assert_eq!(post["phase"], "post");
    assert_eq!(post["exit_code"], 4);
    assert_eq!(post["success"], false);
    assert_eq!(post["output"], "cannot thaw\n");
}

// ---- forget -------------------------------------------------------------------------------

/// Saves a copy of `base` with the given time, host and tags; returns its id.
fn save_copy(repo: &Repository, base: &Snapshot, time: &str, host: &str, tags: &[&str]) -> String {
    let mut s = base.clone();
    s.time = time.parse().unwrap();
    s.host = host.to_string();
    s.source = "/data".to_string();
    s.tags = tags.iter().map(|t| t.to_string()).collect();
    repo.save_snapshot(&s).unwrap().to_hex()
}

/// Ten daily snapshots of h1 (the oldest tagged `archive`) and three of h2; the backup
/// that provided their tree is deleted. Returns (h1 ids oldest first, h2 ids oldest first).
fn timeline(f: &Fixture) -> (Vec<String>, Vec<String>) {
    tree(&f.path("src"), &["a"]);
    f.ok(&["backup", "src"]);
    let repo = f.open();
    let (base_id, base) = repo.list_snapshots().unwrap().remove(0);
    let h1 = (1..=10)
        .map(|day| {
            let tags: &[&str] = if day == 1 { &["archive"] } else { &[] };
            save_copy(
                &repo,
                &base,
                &format!("2024-03-{day:02}T02:00:00Z"),
                "h1",
                tags,
            )
        })
        .collect();
    let h2 = (1..=3)
        .map(|day| {
            save_copy(
                &repo,
                &base,
                &format!("2024-01-0{day}T12:00:00Z"),
                "h2",
                &[],
            )
        })
        .collect();
    repo.delete_snapshot(&base_id).unwrap();
    (h1, h2)
}

fn ids(f: &Fixture) -> BTreeSet<String> {
    f.snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_dry_run_lists_survivors_with_reasons_then_forget_removes_the_rest() {
    let f = Fixture::new();
    let (h1, h2) = timeline(&f);
    let policy = ["--keep-daily", "3", "--keep-tag", "archive"];
    let all: BTreeSet<String> = h1.iter().chain(&h2).cloned().collect();

    let mut args = vec!["forget", "--dry-run"];
    args.extend(policy);
    let text = f.ok(&args);
    assert!(
        text.contains("host h1, source /data: keep 4, would remove 6"),
        "{text}"
    );
    assert!(
        text.contains("host h2, source /data: keep 3, would remove 0"),
        "{text}"
    );
    let short = |id: &str| id[..8].to_string();
    let line_of = |id: &str| {
        text.lines()
            .find(|l| l.contains(&short(id)))
            .unwrap_or_else(|| panic!("{id} not listed: {text}"))
            .to_string()
    };
    assert!(line_of(&h1[9]).contains("keep") && line_of(&h1[9]).ends_with("daily snapshot"));
    assert!(line_of(&h1[0]).ends_with("has tags archive"), "{text}");
    assert!(line_of(&h1[4]).trim_start().starts_with("remove"), "{text}");
    assert!(text.contains("would remove 6 snapshot(s) (dry run: nothing removed)"));
    assert_eq!(ids(&f), all, "a dry run removes nothing");

    args.push("--json");
    let v: Value = serde_json::from_str(&f.ok(&args)).unwrap();
    assert_eq!(v["dry_run"], true);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["host"], "h1");
    assert_eq!(groups[0]["source"], "/data");
    let kept: Vec<&str> = groups[0]["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [&h1[9], &h1[8], &h1[7], &h1[0]]);
    assert_eq!(groups[0]["keep"][3]["reasons"][0], "has tags archive");
    let removed: Vec<String> = serde_json::from_value(groups[0]["remove"].clone()).unwrap();
    assert_eq!(removed, h1[1..7].iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(groups[1]["remove"].as_array().unwrap().len(), 0);

    let mut args = vec!["forget"];
    args.extend(policy);
    let text = f.ok(&args);
    assert!(text.contains("removed 6 snapshot(s)"), "{text}");
    let expected: BTreeSet<String> = [&h1[9], &h1[8], &h1[7], &h1[0]]
        .into_iter()
        .chain(&h2)
        .cloned()
        .collect();
    assert_eq!(ids(&f), expected);
}

#[test]
fn forget_filters_select_the_groups_it_touches() {
    let f = Fixture::new();
    let (h1, h2) = timeline(&f);
    f.ok(&["forget", "--host", "h2", "--keep-last", "1"]);
    let expected: BTreeSet<String> = h1.iter().chain(&h2[2..]).cloned().collect();
    assert_eq!(ids(&f), expected);
    // keep-within is measured from the group's newest snapshot: 36h keeps 03-09 and 03-10.
    f.ok(&["forget", "--host", "h1", "--keep-within", "1d 12h"]);
    let expected: BTreeSet<String> = h1[8..].iter().chain(&h2[2..]).cloned().collect();
    assert_eq!(ids(&f), expected);
}

#[test]
fn forget_refuses_an_empty_policy_and_bad_durations() {
    let f = Fixture::new();
    let (h1, h2) = timeline(&f);
    for args in [
        &["forget"][..],
        &["forget", "--keep-last", "0"],
        &["forget", "--keep-within", "soon"],
        &["forget", "--keep-tag", ","],
    ] {
        let out = f.cairn(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = f.cairn(&["forget"]);
    assert!(
        stderr(&out).contains("empty retention policy"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ids(&f).len(), h1.len() + h2.len());
}

#[test]
fn forget_with_prune_plans_the_data_only_forgotten_snapshots_used() {
    let f = Fixture::new();
    write(&f.path("src/a"), &"first version ".repeat(1000));
    f.ok(&["backup", "src"]);
    write(&f.path("src/a"), &"second version ".repeat(1000));
    f.ok(&["backup", "src"]);
    let before = f.open().list_snapshots().unwrap();
    let newest: SnapshotId = before[1].0;
    let v: Value =
        serde_json::from_str(&f.ok(&["forget", "--keep-last", "1", "--prune", "--json"])).unwrap();
    assert_eq!(v["removed"], 1);
    assert!(
        v["prune"]["bytes_planned"].as_u64().unwrap() > 0,
        "the first version's pack is planned for deletion: {v}"
    );
    assert_eq!(ids(&f), BTreeSet::from([newest.to_hex()]));
    // The kept snapshot still restores.
    f.ok(&["restore", "latest", "-t", "out"]);
    assert_eq!(
        std::fs::read_to_string(f.path("out/a")).unwrap(),
        "second version ".repeat(1000)
    );
}
