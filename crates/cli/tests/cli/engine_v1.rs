//! The `cairn` binary end to end for engine v1: init, backup, snapshots,
//! ls, dump, restore and key, their JSON output and exit codes, and what
//! users see on bad input and damaged repositories.
//!
//! Repositories come from `cairn_storage::testing::fresh_location`, so the
//! suite runs against S3 with `CAIRN_TEST_BACKEND=s3`. Keys use the default
//! (slow) argon2 parameters, so the tests are few and each does a lot.

use cairn_core::browse::{resolve, Resolved};
use cairn_core::format::tree::Payload;
use cairn_core::{OpenOptions, Repository, SnapshotFilter};
use cairn_golden::fixture::{golden_tree, golden_update};
use cairn_golden::{assert_same_tree, CompareOptions};
use cairn_storage::testing::{fresh_location, TestLocation};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSWORD: &str = "cli test password";

struct Env {
    loc: TestLocation,
    cache: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Self {
        Self {
            loc: fresh_location(name).unwrap(),
            cache: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.work.path().join(sub)
    }

    /// `cairn` with a clean environment: the repository in
    /// CAIRN_REPOSITORY, the password in CAIRN_PASSWORD, a private cache.
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        for var in [
            "CAIRN_REPOSITORY",
            "CAIRN_PASSWORD",
            "CAIRN_PASSWORD_FILE",
            "CAIRN_NEW_PASSWORD",
            "CAIRN_CACHE_DIR",
            "RUST_LOG",
        ] {
            c.env_remove(var);
        }
        c.env("CAIRN_REPOSITORY", self.loc.location())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.cache.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("cairn {args:?}: {e}: {stdout}"))
    }

    /// Runs and expects exit `code` with `needle` in stderr.
    fn fails(&self, args: &[&str], code: i32, needle: &str) -> String {
        expect_failure(&self.run(args), code, needle, args)
    }

    fn storage(&self) -> cairn_storage::DynStorage {
        cairn_storage::open(self.loc.location()).unwrap()
    }
}

fn run(c: &mut Command) -> Output {
    let out = c.output().expect("run cairn");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "cairn panicked: {stderr}");
    out
}

fn expect_failure(out: &Output, code: i32, needle: &str, what: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "cairn {what:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "cairn {what:?}: expected {needle:?} in {stderr}"
    );
    stderr
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            n += count_files(&e.path());
        } else if ft.is_file() {
            n += 1;
        }
    }
    n
}

fn compare() -> CompareOptions {
    CompareOptions {
        owners: true,
        xattrs: false,
        // Known gap: with the default 1 MiB average chunks a hole smaller
        // than a chunk is stored as zeros and restored allocated (holes
        // are chunk-granular); the engine suite checks holes with small
        // chunks.
        sparse: false,
    }
}

#[test]
fn init_backup_snapshots_ls_dump_restore() {
    let env = Env::new("cli-workflow");
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    golden_tree(&src).unwrap();
    let src_s = src.to_str().unwrap();

    let out = env.ok(&["init"]);
    assert!(out.contains("created cairn repository"), "{out}");

    let first = env.json(&["backup", "--json", "--tag", "one", src_s]);
    let files = count_files(&src);
    // A second name of a hard link counts as unchanged: it is not read again.
    let s = &first["summary"];
    assert_eq!(
        s["files_new"].as_u64().unwrap() + s["files_unchanged"].as_u64().unwrap(),
        files
    );
    assert_eq!(s["files_unchanged"], 1);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();

    // Unchanged tree: nothing read, every file reused.
    let second = env.json(&["backup", "--json", src_s]);
    assert_eq!(second["summary"]["bytes_read"], 0);
    assert_eq!(second["summary"]["files_unchanged"], files);
    assert_eq!(second["parent"].as_str(), Some(first_id.as_str()));

    golden_update(&src).unwrap();
    let third = env.json(&["backup", "--json", src_s]);
    // golden_update resets every mtime (new ctimes), so files are re-read;
    // only docs/added-later.txt is new.
    assert_eq!(third["summary"]["files_new"], 1);

    let snaps = env.json(&["snapshots", "--json"]);
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 3);
    assert_eq!(snaps[0]["id"].as_str(), Some(first_id.as_str()));
    assert_eq!(snaps[0]["tags"], serde_json::json!(["one"]));
    let table = env.ok(&["snapshots"]);
    assert!(
        table.contains(&first_id[..8]) && table.contains("3 snapshots"),
        "{table}"
    );

    let ls = env.ok(&["ls", "latest", "-R"]);
    for needle in [
        "/data/random.bin",
        "/docs/added-later.txt",
        "/link-to-hello -> hello.txt",
        "/names/日本語.txt",
        // Not UTF-8 (Latin-1 é): escaped as `ls -b` does, not replaced.
        "/names/caf\\351.txt",
    ] {
        assert!(ls.contains(needle), "{needle} not in ls:\n{ls}");
    }
    assert!(!ls.contains("run.sh"), "removed by the update:\n{ls}");
    let ls_first = env.ok(&["ls", &first_id[..8], "/bin"]);
    assert!(
        ls_first.contains("/bin/run.sh") && ls_first.contains("rwxr-xr-x"),
        "{ls_first}"
    );

    let dumped = env
        .cmd()
        .args(["dump", "latest", "data/random.bin"])
        .output()
        .unwrap();
    assert!(dumped.status.success());
    assert_eq!(
        dumped.stdout,
        std::fs::read(src.join("data/random.bin")).unwrap()
    );
    env.fails(&["dump", "latest", "docs"], 2, "dump prints regular files");
    env.fails(&["dump", "latest", "no/such/file"], 2, "no such file");

    let dst = env.path("dst");
    let dst_s = dst.to_str().unwrap();
    let out = env.ok(&["restore", "latest", "-t", dst_s, "--verify"]);
    assert!(out.contains("verified"), "{out}");
    assert_same_tree(&src, &dst, &compare());

    // A non-empty target needs --overwrite.
    env.fails(&["restore", "latest", "-t", dst_s], 2, "--overwrite");
    std::fs::write(dst.join("hello.txt"), b"scribbled over").unwrap();
    env.ok(&["restore", "latest", "-t", dst_s, "--overwrite"]);
    assert_same_tree(&src, &dst, &compare());

    // --include restores one subtree; --json reports it.
    let part = env.path("part");
    let report = env.json(&[
        "restore",
        &first_id[..8],
        "-t",
        part.to_str().unwrap(),
        "--include",
        "docs",
        "--json",
    ]);
    assert_eq!(report["failed"], serde_json::json!([]));
    let top: Vec<_> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["docs"]);
    assert!(
        !part.join("docs/added-later.txt").exists(),
        "first snapshot predates it"
    );
    env.fails(
        &[
            "restore",
            "latest",
            "-t",
            env.path("none").to_str().unwrap(),
            "--include",
            "nothing-here",
        ],
        2,
        "nothing-here",
    );
}

#[test]
fn keys_and_password_sources() {
    let env = Env::new("cli-keys");
    let pw_file = env.path("pw");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    // --password-file and --repo instead of the environment.
    let out = run(env
        .cmd()
        .env_remove("CAIRN_PASSWORD")
        .env_remove("CAIRN_REPOSITORY")
        .args([
            "--repo",
            env.loc.location(),
            "--password-file",
            pw_file.to_str().unwrap(),
            "init",
        ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.fails(&["init"], 11, "already holds a cairn repository");

    let added = run(env
        .cmd()
        .env("CAIRN_NEW_PASSWORD", "second")
        .args(["key", "add"]));
    assert!(added.status.success(), "{}", text(&added.stderr));
    let keys = env.json(&["key", "list", "--json"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let first = keys.iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let table = env.ok(&["key", "list"]);
    assert!(table.contains(&format!("*{first}")), "{table}");

    // Through the second password, remove the first.
    let by_second = |args: &[&str]| run(env.cmd().env("CAIRN_PASSWORD", "second").args(args));
    let out = by_second(&["key", "remove", &first[..10]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.fails(&["snapshots"], 10, "wrong password");
    let out = by_second(&["key", "remove", "0000000000"]);
    expect_failure(&out, 2, "no key", &["key", "remove"]);

    // passwd with a new-password file replaces the key it opened with.
    let new_file = env.path("new-pw");
    std::fs::write(&new_file, "third\n").unwrap();
    let out = by_second(&[
        "key",
        "passwd",
        "--new-password-file",
        new_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = by_second(&["snapshots"]);
    expect_failure(&out, 10, "wrong password", &["snapshots"]);
    let out = run(env
        .cmd()
        .env("CAIRN_PASSWORD", "third")
        .args(["key", "list", "--json"]));
    assert!(out.status.success());
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);

    // Empty new passwords are refused.
    let out = run(env
        .cmd()
        .env("CAIRN_PASSWORD", "third")
        .env("CAIRN_NEW_PASSWORD", "")
        .args(["key", "add"]));
    expect_failure(&out, 2, "must not be empty", &["key", "add"]);
}

#[test]
fn bad_input_exit_codes() {
    let env = Env::new("cli-bad-input");
    // Not a repository (nothing there yet).
    env.fails(&["snapshots"], 11, "is not a cairn repository");
    // Empty password at init: refused, nothing created.
    let out = run(env.cmd().env("CAIRN_PASSWORD", "").arg("init"));
    expect_failure(&out, 2, "must not be empty", &["init"]);
    env.fails(&["snapshots"], 11, "is not a cairn repository");
    // No repository at all.
    let out = run(env.cmd().env_remove("CAIRN_REPOSITORY").arg("snapshots"));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no repository given"),
        "{}",
        text(&out.stderr)
    );

    env.ok(&["init"]);
    let out = run(env.cmd().env("CAIRN_PASSWORD", "wrong").arg("snapshots"));
    expect_failure(&out, 10, "wrong password", &["snapshots"]);
    env.fails(
        &["restore", "latest", "-t", env.path("x").to_str().unwrap()],
        2,
        "no complete snapshot",
    );
    env.fails(&["ls", "abc"], 2, "not a snapshot id");
}

/// The pack holding the first stored chunk of `file` in the latest snapshot.
fn pack_of(env: &Env, file: &str) -> (String, u64) {
    let cache = tempfile::tempdir().unwrap();
    let repo = Repository::open(
        env.storage(),
        PASSWORD,
        &OpenOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            tolerate_damage: false,
        },
    )
    .unwrap();
    let (_, snap) = repo
        .find_snapshot("latest", &SnapshotFilter::default())
        .unwrap();
    let Resolved::Node(node) = resolve(&repo, &snap.tree, Path::new(file)).unwrap() else {
        panic!("root")
    };
    let Payload::File(content) = &node.payload else {
        panic!("not a file")
    };
    let chunk = repo
        .chunk_list(content)
        .unwrap()
        .into_iter()
        .find(|c| !c.is_hole())
        .unwrap();
    let loc = repo.lookup(&chunk.id).unwrap().unwrap();
    (loc.pack.path(), loc.offset as u64)
}

#[test]
fn damaged_repository_errors_name_the_object() {
    let env = Env::new("cli-damage");
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    golden_tree(&src).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let storage = env.storage();

    // A flipped byte inside a data blob: restore is partial (exit 3) and
    // names the pack; dump fails (exit 12) and names it.
    let (pack, offset) = pack_of(&env, "data/random.bin");
    let original = storage.read(&pack).unwrap();
    let mut bytes = original.to_vec();
    bytes[offset as usize + 20] ^= 1;
    storage.write(&pack, bytes.into()).unwrap();
    let err = env.fails(
        &["restore", "latest", "-t", env.path("r1").to_str().unwrap()],
        3,
        &pack,
    );
    assert!(err.contains("data/random.bin"), "{err}");
    env.fails(&["dump", "latest", "data/random.bin"], 12, &pack);

    // The pack missing altogether.
    storage.delete(&pack).unwrap();
    env.fails(
        &["restore", "latest", "-t", env.path("r2").to_str().unwrap()],
        3,
        &pack,
    );
    env.fails(&["dump", "latest", "data/random.bin"], 12, &pack);
    storage.write(&pack, original).unwrap();
    env.ok(&[
        "restore",
        "latest",
        "-t",
        env.path("r3").to_str().unwrap(),
        "--verify",
    ]);

    // A garbled index segment: commands that use the index warn naming it
    // (it costs only the blobs it describes: here the root tree, so `ls`
    // fails as damaged); check fails and names it. A fresh cache makes the segment be read again. (`snapshots`
    // reads no index at all.)
    let seg = storage.list("index/").unwrap().remove(0).path;
    let mut bytes = storage.read(&seg).unwrap().to_vec();
    bytes[30] ^= 1;
    storage.write(&seg, bytes.into()).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = run(env
        .cmd()
        .env("CAIRN_CACHE_DIR", fresh.path())
        .arg("snapshots"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(env
        .cmd()
        .env("CAIRN_CACHE_DIR", fresh.path())
        .args(["ls", "latest"]));
    expect_failure(&out, 12, &seg, &["ls"]);
    let out = run(env.cmd().env("CAIRN_CACHE_DIR", fresh.path()).arg("check"));
    expect_failure(&out, 12, &seg, &["check"]);
}

/// `cairn upgrade` moves the golden version 1 repository to version 2:
/// later backups bundle small files, what was stored reads as before, and
/// a second upgrade has nothing to do.
#[test]
fn upgrade_moves_a_version_1_repository_to_bundles() {
    let env = Env::new("upgrade");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/repos/v1");
    let s = env.storage();
    let mut stack = vec![golden.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(&golden)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                s.write(&rel, std::fs::read(&p).unwrap().into()).unwrap();
            }
        }
    }
    let golden_run = |args: &[&str]| {
        let out = run(env.cmd().env("CAIRN_PASSWORD", "cairn-golden").args(args));
        assert!(
            out.status.success(),
            "cairn {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let version = || s.read("cairn.repository").unwrap()[8];
    let packs_v2 = || {
        s.list("packs/")
            .unwrap()
            .iter()
            .filter(|o| &s.read_range(&o.path, 0..8).unwrap()[..] == b"CAIRNPK2")
            .count()
    };
    assert!(golden_run(&["upgrade", "--dry-run"])
        .contains("would upgrade the repository from format version 1 to 2"));
    assert_eq!(version(), 1);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(
            src.join(format!("f{i}.txt")),
            format!("line {i} of a small text file\n").repeat(20),
        )
        .unwrap();
    }
    // Before the upgrade a backup keeps the repository version 1.
    golden_run(&["backup", src.to_str().unwrap()]);
    assert_eq!(packs_v2(), 0);
    assert!(golden_run(&["upgrade"]).contains("upgraded the repository from format version 1 to 2"));
    assert_eq!(version(), 2);
    assert!(golden_run(&["upgrade"]).contains("nothing to upgrade"));
    for i in 0..40 {
        std::fs::write(
            src.join(format!("g{i}.txt")),
            format!("another line {i}\n").repeat(30),
        )
        .unwrap();
    }
    golden_run(&["backup", src.to_str().unwrap()]);
    assert!(packs_v2() > 0);
    golden_run(&["check", "--read-data"]);
    let out = env.path("restored");
    golden_run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    // A snapshot of one directory holds its entries: restored into the target.
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", text(&diff.stdout));
}
