//! The damage suite of issue 26, through the `cairn` binary: each object kind
//! a repository holds (data pack, metadata pack, pack trailer, index segment,
//! snapshot, config, key, header) damaged three ways (one byte flipped,
//! truncated, deleted), with an empty and with a warm cache: 48 cases, one
//! repository each, one `#[test]` each so nextest runs them in parallel.
//!
//! After each damage the case asserts, collecting every failure before it
//! panics (the first line of the panic is the first failure):
//! 1. the damage is named: `check` (or, when the structure check passes,
//!    `check --read-data`) exits 12 and names the damaged object; a damaged
//!    config, key or header makes `check` fail (or, if it opens anyway,
//!    exit 12) with a message naming it, and a damaged key is not called a
//!    wrong password (exit 10). A
//!    deleted snapshot cannot be named (nothing references snapshots; it
//!    looks like a forgotten one): there `check` only has to run;
//! 2. no restore is silently wrong: a restore that exits 0 equals the source
//!    (contents, sizes, modes, mtimes, symlinks); exit 3 names every
//!    path that differs; any other exit is a refusal, allowed only
//!    where nothing can be read (config, key, header, snapshot): when a
//!    pack or the index is damaged, restore exits 0 or 3
//!    (issue 26, "contain damage");
//! 3. recovery works: `repair index`, `repair snapshots --forget-originals`
//!    (with `--read-data` after a byte flip), a restore of what repair left
//!    (rule 2 again, and every path that restored whole before the repair
//!    still does), one backup of the intact source, `maintenance run
//!    --full --now` twice (the first run's mark plans, the second sweeps),
//!    then `check --read-data` exits 0 and the new snapshot restores
//!    bit-exactly. For a damaged config, key or header docs/MAINTENANCE.md
//!    says to keep a copy of those objects: the case writes back the copy
//!    taken before the damage, then backs up, maintains and checks the same
//!    way.
//!
//! The `heal_*` cases follow docs/MAINTENANCE.md's *Recovering from
//! damage* instead, for pack and index damage with an empty cache: `check
//! --read-data`, `repair index`, one backup of the intact source, and no
//! `repair snapshots`: the backup stores the lost blobs again, so after
//! maintenance the repository checks clean and the *original* snapshot
//! restores bit-exactly, as well as the new one.
//!
//! The source tree (38 small files in nested directories, an empty file, a
//! symlink and 12 MiB of incompressible bytes) and a repository holding one
//! backup of it are built once per `cairn` binary under
//! `CARGO_TARGET_TMPDIR` and shared by every test process; each case copies
//! the repository to a fresh location on `CAIRN_TEST_BACKEND` and damages
//! it through the storage layer, so the suite runs on fs and on S3 alike.
//! Which pack is a data pack and which a metadata pack comes from the index
//! (each entry records its blob's kind, docs/FORMAT.md), where the flipped
//! byte of a pack lies from its blob entries, and where its trailer starts
//! from its footer.

use cairn_core::format::pack::FOOTER_LEN;
use cairn_core::{BlobKind, IndexId, InitOptions, OpenOptions, Repository};
use cairn_golden::testkit;
use cairn_golden::{compare_trees, CompareOptions};
use cairn_storage::testing::{fresh_location, TestLocation};
use cairn_storage::DynStorage;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common;

const PASSWORD: &str = "damage-suite";
/// Bumped when the source tree or the repository layout changes, so a
/// fixture left by an older suite is not reused.
const FIXTURE_VERSION: u32 = 1;
/// The large file: 12 MiB of noise spans about a dozen 1 MiB-average chunks.
const BIG_FILE_LEN: usize = 12 << 20;
/// Data packs of 4 MiB (default 16 MiB), so the 12 MiB file fills several
/// and losing one pack loses part of the source, not all of it. Every other
/// parameter is the default but the key derivation (see [`testkit::fast_kdf`]).
const DATA_PACK_SIZE: u32 = 4 << 20;
/// A command running longer is killed and reported (key parameters read
/// from damaged bytes have made key derivation hang).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a test process waits for another one building the fixture.
const FIXTURE_PATIENCE: Duration = Duration::from_secs(300);

/// The object kinds of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The data pack holding the most blobs (several small files' chunks).
    DataPack,
    /// The metadata pack holding the trees.
    MetaPack,
    /// The trailer and footer at the end of that data pack.
    Trailer,
    /// The largest index segment.
    Index,
    /// The snapshot.
    Snapshot,
    /// `config`.
    Config,
    /// The key file.
    Key,
    /// `cairn.repository`.
    Header,
}

/// How an object is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    /// One byte XOR 0xFF: in a pack, the middle byte of one stored blob
    /// (a non-root tree in the metadata pack) or of the sealed trailer;
    /// elsewhere the object's middle byte.
    Flip,
    /// Cut to half its length; a trailer is cut in its middle.
    Truncate,
    /// Removed; a trailer is removed with its footer (the pack ends after
    /// its last blob).
    Delete,
}

/// The cache every command after the damage uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheState {
    /// A fresh cache directory for every command.
    Empty,
    /// One cache directory, filled by `snapshots` and `check` before the
    /// damage.
    Warm,
}

/// One pack as the index describes it.
#[derive(Clone, Debug)]
struct PackInfo {
    path: String,
    short: String,
    len: u64,
    /// (kind, offset, stored length, blob id) of each blob, by offset.
    blobs: Vec<(BlobKind, u64, u64, cairn_core::BlobId)>,
}

/// The objects of the fixture repository the cases damage.
#[derive(Debug)]
struct Layout {
    data_pack: PackInfo,
    /// The largest data pack (the one `ls -S packs/*/* | head -1` finds).
    largest_data_pack: PackInfo,
    meta_pack: PackInfo,
    /// (offset, stored length) of the tree blob flipped in the metadata pack.
    meta_flip_blob: (u64, u64),
    /// Start of the data pack's sealed trailer.
    trailer_start: u64,
    index_path: String,
    index_short: String,
    index_len: u64,
    snapshot_path: String,
    snapshot_short: String,
    snapshot_hex: String,
    key_path: String,
    key_short: String,
}

/// The shared source tree and fixture repository.
struct Fixture {
    src: PathBuf,
    repo: PathBuf,
    layout: Layout,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = shared_fixture_dir();
        let repo = dir.join("repo");
        let layout = read_layout(&repo);
        Fixture {
            src: dir.join("src"),
            repo,
            layout,
        }
    })
}

/// The fixture directory for this `cairn` binary, built by the first test
/// process that claims it (by creating it) and waited for by the others.
fn shared_fixture_dir() -> PathBuf {
    let bin = std::fs::metadata(env!("CARGO_BIN_EXE_cairn")).expect("the cairn binary");
    let mtime = bin
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "damage-fixture-v{FIXTURE_VERSION}-{mtime}-{}",
        bin.len()
    ));
    let parent = dir.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("mkdir target tmp");
    remove_old_fixtures(parent, &dir);
    let start = Instant::now();
    loop {
        if dir.join("ready").exists() {
            return dir;
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::write(dir.join("owner"), std::process::id().to_string())
                    .expect("write owner");
                build_fixture(&dir);
                std::fs::write(dir.join("ready"), b"").expect("write ready");
                return dir;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process builds it; if that process died, start over.
                if let Ok(pid) = std::fs::read_to_string(dir.join("owner")) {
                    let pid = pid.trim();
                    if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(&dir);
                        continue;
                    }
                }
                assert!(
                    start.elapsed() < FIXTURE_PATIENCE,
                    "the damage fixture {} was not ready after {FIXTURE_PATIENCE:?}",
                    dir.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// Removes fixtures of earlier binaries (untouched for an hour) from `parent`.
fn remove_old_fixtures(parent: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        let ours = e
            .file_name()
            .to_string_lossy()
            .starts_with("damage-fixture-");
        if ours && old && path != keep {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Writes the source tree and a repository with one backup of it (made by
/// the binary).
fn build_fixture(dir: &Path) {
    let src = dir.join("src");
    write_source(&src);
    let repo = dir.join("repo");
    let opts = InitOptions {
        kdf: testkit::fast_kdf(),
        pack_sizes: (DATA_PACK_SIZE, InitOptions::default().pack_sizes.1),
        ..InitOptions::default()
    };
    testkit::init_at(repo.to_str().expect("utf-8"), PASSWORD, &opts).expect("init the fixture");
    let run = run_cairn(
        repo.to_str().expect("utf-8"),
        &dir.join("cache"),
        &["backup".into(), src.to_str().expect("utf-8").into()],
    );
    assert_eq!(run.code, Some(0), "fixture backup: {}", run.summary());
}

/// 4 directories of 2 subdirectories of 4 files (0 to 60 KB of noise, modes
/// 644/600/755), a text file per directory, an empty file, a symlink and the
/// big file.
fn write_source(src: &Path) {
    let modes = [0o644, 0o600, 0o755];
    let write = |rel: &str, data: &[u8], mode: u32| {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let mut n = 0u64;
    for d in 0..4 {
        for s in 0..2 {
            for f in 0..4 {
                n += 1;
                let len = ((d * 7 + s * 3 + f) % 13) as usize * 4_700;
                let data = common::xorshift_bytes(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, len);
                write(
                    &format!("dir{d}/sub{s}/file{f}.bin"),
                    &data,
                    modes[(f % 3) as usize],
                );
            }
        }
        let text = format!("directory {d}\n").repeat(50 + d as usize * 20);
        write(&format!("dir{d}/readme.txt"), text.as_bytes(), 0o644);
    }
    write("empty", b"", 0o644);
    write(
        "big/noise.bin",
        &common::xorshift_bytes(0x5EED_1234_ABCD_0001, BIG_FILE_LEN),
        0o640,
    );
    std::os::unix::fs::symlink("dir0/readme.txt", src.join("link")).expect("symlink");
    std::fs::set_permissions(src.join("dir1"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod dir1");
}

/// Finds the damaged objects' paths from the fixture's index and listing.
fn read_layout(repo_dir: &Path) -> Layout {
    let location = repo_dir.to_str().expect("utf-8");
    let storage = testkit::storage_at(location).expect("storage");
    let repo = Repository::open(storage.clone(), PASSWORD, &OpenOptions::default())
        .expect("open the fixture");
    let mut packs = Vec::new();
    let mut segments = Vec::new();
    for obj in storage.list("index/").expect("list index/") {
        let id = IndexId::from_hex(obj.path.trim_start_matches("index/")).expect("segment id");
        let seg = repo.load_segment(&id).expect("load segment");
        for p in seg.packs {
            let mut blobs: Vec<_> = p
                .blobs
                .iter()
                .map(|b| (b.kind, b.offset as u64, b.stored_len as u64, b.id))
                .collect();
            blobs.sort_by_key(|b| b.1);
            packs.push(PackInfo {
                path: p.id.path(),
                short: p.id.short(),
                len: p.len,
                blobs,
            });
        }
        segments.push((obj.size, id));
    }
    let is_data = |p: &&PackInfo| p.blobs.iter().all(|b| b.0 == BlobKind::Data);
    let is_meta = |p: &&PackInfo| p.blobs.iter().all(|b| b.0 != BlobKind::Data);
    let most_blobs = |p: &&PackInfo| (p.blobs.len(), p.len, p.path.clone());
    let data_pack = packs
        .iter()
        .filter(is_data)
        .max_by_key(most_blobs)
        .expect("a data pack")
        .clone();
    let largest_data_pack = packs
        .iter()
        .filter(is_data)
        .max_by_key(|p| (p.len, p.path.clone()))
        .expect("a data pack")
        .clone();
    let meta_pack = packs
        .iter()
        .filter(is_meta)
        .max_by_key(most_blobs)
        .expect("a metadata pack")
        .clone();
    let snapshots = repo.list_snapshots().expect("snapshots");
    assert_eq!(snapshots.len(), 1, "the fixture holds one snapshot");
    let (snap_id, snap) = &snapshots[0];
    // A tree other than the root, so the damage hits one directory.
    let tree = meta_pack
        .blobs
        .iter()
        .filter(|b| b.0 == BlobKind::Tree && b.3 != snap.tree)
        .max_by_key(|b| (b.2, b.1))
        .or_else(|| meta_pack.blobs.first())
        .expect("a blob in the metadata pack");
    let footer = storage
        .read_range(
            &data_pack.path,
            data_pack.len - FOOTER_LEN as u64..data_pack.len,
        )
        .expect("read the footer");
    let trailer_len = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) as u64;
    let (index_len, index_id) = segments
        .iter()
        .max_by_key(|(size, id)| (*size, id.to_hex()))
        .expect("an index segment");
    let key = storage
        .list("keys/")
        .expect("list keys/")
        .into_iter()
        .next()
        .expect("a key file");
    let key_id = key.path.trim_start_matches("keys/").to_string();
    Layout {
        meta_flip_blob: (tree.1, tree.2),
        trailer_start: data_pack.len - FOOTER_LEN as u64 - trailer_len,
        data_pack,
        largest_data_pack,
        meta_pack,
        index_path: index_id.path(),
        index_short: index_id.short(),
        index_len: *index_len,
        snapshot_path: snap_id.path(),
        snapshot_short: snap_id.short(),
        snapshot_hex: snap_id.to_hex(),
        key_short: key_id[..8.min(key_id.len())].to_string(),
        key_path: key.path,
    }
}

/// One run of the binary.
struct Run {
    args: Vec<String>,
    /// `None`: killed by a signal or after [`COMMAND_TIMEOUT`].
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// Stdout and stderr together, for looking for names.
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// "`cairn check` exit 12; stderr: ... ; stdout: ..." with the first lines.
    fn summary(&self) -> String {
        let first = |s: &str, n: usize| {
            let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).take(n).collect();
            lines.join(" | ")
        };
        let code = match (self.code, self.timed_out) {
            (_, true) => format!("timed out after {COMMAND_TIMEOUT:?}"),
            (Some(c), _) => format!("exit {c}"),
            (None, _) => "killed by a signal".to_string(),
        };
        format!(
            "`cairn {}` {code}; stderr: {}; stdout: {}",
            self.args.join(" "),
            first(&self.stderr, 3),
            // Check's summary, then its first damage lines.
            first(&self.stdout, 5)
        )
    }
}

/// Runs `cairn args` on the repository at `location` with the cache in
/// `cache`, killing it after [`COMMAND_TIMEOUT`].
fn run_cairn(location: &str, cache: &Path, args: &[String]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_REPOSITORY", location)
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .env_remove("CAIRN_PASSWORD_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        args: args.to_vec(),
        code: if timed_out { None } else { status.code() },
        timed_out,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// What restore comparisons check: everything [`compare_trees`] compares
/// but holes (chunk-granular, see engine_v1), xattrs (a repaired file
/// carries `user.cairn.damaged`; its content differs anyway) and, when not
/// root, owners.
fn compare_options() -> CompareOptions {
    CompareOptions {
        owners: cairn_golden::fixture::is_root(),
        xattrs: false,
        sparse: false,
    }
}

/// The paths (relative to the restore target) restore's stderr names as
/// not restored whole: `failed: PATH: reason` (not restored) and
/// `zero-filled: PATH: reason` (restored from a repaired snapshot with zeros
/// where data was lost).
fn failed_paths(stderr: &str, target: &Path) -> Vec<String> {
    let target = target.to_string_lossy();
    stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("failed: ")
                .or_else(|| l.strip_prefix("zero-filled: "))
        })
        .map(|l| {
            let path = l.split_once(": ").map_or(l, |(p, _)| p);
            let path = path.strip_prefix(target.as_ref()).unwrap_or(path);
            path.trim_matches('/').to_string()
        })
        .collect()
}

/// Whether `rel` is one of `named` or lies below one of them.
fn is_named(rel: &str, named: &[String]) -> bool {
    named
        .iter()
        .any(|n| n.is_empty() || rel == n || rel.starts_with(&format!("{n}/")))
}

/// One case: a copy of the fixture repository, its cache, and what went
/// wrong so far.
struct Case {
    name: String,
    fx: &'static Fixture,
    loc: TestLocation,
    storage: DynStorage,
    tmp: tempfile::TempDir,
    cache: CacheState,
    runs: usize,
    failures: Vec<String>,
    log: Vec<String>,
}

impl Case {
    fn new(name: &str, cache: CacheState) -> Case {
        let fx = fixture();
        let loc = fresh_location(&format!("damage-{name}")).expect("location");
        let storage = testkit::storage_at(loc.location()).expect("storage");
        let from = testkit::storage_at(fx.repo.to_str().expect("utf-8")).expect("storage");
        for obj in from.list("").expect("list the fixture") {
            let data = from.read(&obj.path).expect("read");
            storage.write(&obj.path, data).expect("copy");
        }
        Case {
            name: name.to_string(),
            fx,
            loc,
            storage,
            tmp: tempfile::tempdir().expect("tmp"),
            cache,
            runs: 0,
            failures: Vec::new(),
            log: Vec::new(),
        }
    }

    fn src(&self) -> &str {
        self.fx.src.to_str().expect("utf-8")
    }

    /// Runs `cairn args` with this case's cache; a timeout ends the case.
    fn cairn(&mut self, args: &[&str]) -> Run {
        self.runs += 1;
        let cache = match self.cache {
            CacheState::Warm => self.tmp.path().join("cache"),
            CacheState::Empty => self.tmp.path().join(format!("cache-{}", self.runs)),
        };
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let run = run_cairn(self.loc.location(), &cache, &args);
        self.log.push(format!(
            "[{:.1}s] {}",
            run.elapsed.as_secs_f64(),
            run.summary()
        ));
        if run.timed_out {
            self.fail(format!("{} (the case stops here)", run.summary()));
            self.finish();
        }
        run
    }

    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    /// Runs `cairn args`; a failure unless it exits `code`.
    fn expect(&mut self, step: &str, code: i32, args: &[&str]) -> Run {
        let run = self.cairn(args);
        if run.code != Some(code) {
            self.fail(format!("{step}: expected exit {code}: {}", run.summary()));
        }
        run
    }

    /// Restores `snapshot` and applies rule 2: exit 0 equals the source,
    /// exit 3 names every path that differs, other exits are refusals.
    /// With `must_succeed`, anything but an exact exit-0 restore fails.
    /// Returns the run and the paths the restore lost (differ or named),
    /// `None` when it refused.
    fn restore(
        &mut self,
        step: &str,
        snapshot: &str,
        must_succeed: bool,
    ) -> (Run, Option<Vec<String>>) {
        let target = self.tmp.path().join(format!("restore-{}", self.runs + 1));
        let run = self.cairn(&[
            "restore",
            snapshot,
            "--target",
            target.to_str().expect("utf-8"),
        ]);
        let fx = self.fx;
        let diffs = || compare_trees(&fx.src, &target, &compare_options());
        let show = |d: &[String]| {
            let mut s = d.iter().take(4).cloned().collect::<Vec<_>>().join("; ");
            if d.len() > 4 {
                s.push_str(&format!("; ... ({} in all)", d.len()));
            }
            s
        };
        let path_of = |d: &String| d.split_once(": ").map_or(d.clone(), |x| x.0.to_string());
        let lost = match run.code {
            Some(0) => {
                let d = diffs();
                if !d.is_empty() {
                    self.fail(format!(
                        "{step}: SILENTLY WRONG: {} but the restore differs from the source: {}",
                        run.summary(),
                        show(&d)
                    ));
                }
                Some(d.iter().map(path_of).collect())
            }
            _ if must_succeed => {
                self.fail(format!("{step}: expected exit 0: {}", run.summary()));
                None
            }
            Some(3) => {
                let named = failed_paths(&run.stderr, &target);
                let d = diffs();
                let unnamed: Vec<String> = d
                    .iter()
                    .filter(|d| !is_named(&path_of(d), &named))
                    .cloned()
                    .collect();
                if named.is_empty() {
                    self.fail(format!(
                        "{step}: exit 3 names no failed path: {}",
                        run.summary()
                    ));
                } else if !unnamed.is_empty() {
                    self.fail(format!(
                        "{step}: SILENTLY WRONG: exit 3 named {:?} but these differ too: {}",
                        named,
                        show(&unnamed)
                    ));
                }
                Some(named.into_iter().chain(d.iter().map(path_of)).collect())
            }
            Some(_) => None,
            None => {
                self.fail(format!("{step}: {}", run.summary()));
                None
            }
        };
        let _ = std::fs::remove_dir_all(&target);
        (run, lost)
    }

    /// The damaged object, and what a message naming it must contain (one
    /// of).
    fn target(&self, kind: Kind, damage: Damage) -> (String, Vec<String>) {
        let fx = self.fx;
        let l = &fx.layout;
        match kind {
            Kind::DataPack | Kind::Trailer => {
                (l.data_pack.path.clone(), vec![l.data_pack.short.clone()])
            }
            Kind::MetaPack => (l.meta_pack.path.clone(), vec![l.meta_pack.short.clone()]),
            Kind::Index => {
                let mut names = vec![l.index_short.clone()];
                if damage == Damage::Delete {
                    // Nothing references a segment: its loss shows as blobs
                    // not in the index.
                    names.push("not in the index".into());
                }
                (l.index_path.clone(), names)
            }
            Kind::Snapshot => (l.snapshot_path.clone(), vec![l.snapshot_short.clone()]),
            Kind::Config => ("config".into(), vec!["config".into()]),
            Kind::Key => {
                let mut names = vec![l.key_short.clone()];
                if damage == Damage::Delete {
                    names.extend(["keys/".into(), "no key".into()]);
                }
                (l.key_path.clone(), names)
            }
            // Not "header" alone: "config: repository id differs from the
            // header's" blames the config for a damaged header.
            Kind::Header => ("cairn.repository".into(), vec!["cairn.repository".into()]),
        }
    }

    /// Damages the object; returns a description.
    fn damage(&self, kind: Kind, damage: Damage, path: &str) -> String {
        let fx = self.fx;
        let l = &fx.layout;
        let data = self.storage.read(path).expect("read the object").to_vec();
        let len = data.len() as u64;
        let middle_of = |(offset, stored): (u64, u64)| offset + stored / 2;
        let (flip_at, cut_at) = match kind {
            Kind::DataPack => {
                let b = l.data_pack.blobs[l.data_pack.blobs.len() / 2];
                (middle_of((b.1, b.2)), len / 2)
            }
            Kind::MetaPack => (middle_of(l.meta_flip_blob), len / 2),
            Kind::Trailer => {
                let mid = middle_of((l.trailer_start, len - FOOTER_LEN as u64 - l.trailer_start));
                (mid, mid)
            }
            Kind::Index => {
                assert_eq!(len, l.index_len);
                (len / 2, len / 2)
            }
            _ => (len / 2, len / 2),
        };
        let write = |bytes: Vec<u8>| self.storage.write(path, bytes.into()).expect("write");
        match (damage, kind) {
            (Damage::Flip, _) => {
                let mut d = data;
                d[flip_at as usize] ^= 0xFF;
                write(d);
                format!("flipped byte {flip_at} of {path} ({len} bytes)")
            }
            (Damage::Truncate, _) => {
                write(data[..cut_at as usize].to_vec());
                format!("truncated {path} from {len} to {cut_at} bytes")
            }
            (Damage::Delete, Kind::Trailer) => {
                write(data[..l.trailer_start as usize].to_vec());
                format!(
                    "removed the trailer and footer of {path}: {len} -> {} bytes",
                    l.trailer_start
                )
            }
            (Damage::Delete, _) => {
                self.storage.delete(path).expect("delete");
                format!("deleted {path} ({len} bytes)")
            }
        }
    }

    /// Panics with every failure (the first on the first line) and the
    /// command log, unless there are none.
    fn finish(&mut self) {
        // Shown for passing cases with `--success-output immediate`.
        println!("{}: commands:\n  {}", self.name, self.log.join("\n  "));
        if self.failures.is_empty() {
            return;
        }
        let failures = std::mem::take(&mut self.failures);
        panic!(
            "{}: {}\n\nall failures ({}):\n  {}\n\ncommands:\n  {}\n",
            self.name,
            failures[0],
            failures.len(),
            failures.join("\n  "),
            self.log.join("\n  ")
        );
    }
}

/// One case of the matrix; see the module documentation.
fn damage_case(name: &str, kind: Kind, damage: Damage, cache: CacheState) {
    let mut c = Case::new(name, cache);
    if cache == CacheState::Warm {
        c.expect("warm the cache", 0, &["snapshots"]);
        c.expect("warm the cache", 0, &["check"]);
        assert!(c.failures.is_empty(), "{}", c.failures.join("\n"));
    }
    let (path, names) = c.target(kind, damage);
    let original = c.storage.read(&path).expect("read the object");
    let what = c.damage(kind, damage, &path);
    c.log.push(what);
    let names_it = |run: &Run| names.iter().any(|n| run.output().contains(n.as_str()));
    let opens_at_all = !matches!(kind, Kind::Config | Kind::Key | Kind::Header);

    // 1. The damage is named.
    let check = c.cairn(&["check"]);
    if !opens_at_all {
        // Either the open fails naming the object or it succeeds (the
        // header is redundant with the authenticated config) and check
        // reports the damage: not 0 ("no damage found"), not 10 (wrong
        // password: the password is right, the key file is damaged).
        if matches!(check.code, Some(0) | Some(10)) || !names_it(&check) {
            c.fail(format!(
                "named: expected a failed open or exit 12 (not 0 = clean, not 10 = wrong password) naming {names:?}: {}",
                check.summary()
            ));
        }
    } else if kind == Kind::Snapshot && damage == Damage::Delete {
        // Nothing references a snapshot: a deleted one looks exactly like
        // one removed by `forget`, so no damage can be named (the format
        // keeps no list of snapshots). Check must still run.
        if !matches!(check.code, Some(0) | Some(12)) {
            c.fail(format!("named: expected exit 0 or 12: {}", check.summary()));
        }
    } else {
        let found = match check.code {
            Some(12) => Some(check),
            Some(0) => {
                let deep = c.cairn(&["check", "--read-data"]);
                if deep.code == Some(12) {
                    Some(deep)
                } else {
                    c.fail(format!(
                        "named: `cairn check` exit 0, so expected exit 12: {}",
                        deep.summary()
                    ));
                    None
                }
            }
            _ => {
                c.fail(format!("named: expected exit 12: {}", check.summary()));
                None
            }
        };
        if let Some(run) = found.filter(|r| !names_it(r)) {
            c.fail(format!(
                "named: exit 12 without naming {names:?}: {}",
                run.summary()
            ));
        }
    }

    // 2. No restore is silently wrong.
    let (run, lost_before) = c.restore("restore after the damage", "latest", false);
    // Damage to data, metadata or the index is contained: restore restores
    // what it can read and names the rest (issue 26), it does not give up.
    let contained = matches!(
        kind,
        Kind::DataPack | Kind::MetaPack | Kind::Trailer | Kind::Index
    );
    if contained && !matches!(run.code, Some(0) | Some(3)) {
        c.fail(format!(
            "contained: restore after the damage: expected exit 0 or 3 (restore what can be read, name the rest): {}",
            run.summary()
        ));
    }

    // 3. Recovery.
    if opens_at_all {
        c.expect("recovery", 0, &["repair", "index"]);
        let mut args = vec!["repair", "snapshots"];
        if damage == Damage::Flip {
            args.push("--read-data");
        }
        args.push("--forget-originals");
        c.expect("recovery", 0, &args);
        let (run, lost_after) = c.restore("restore after repair", "latest", false);
        if contained && !matches!(run.code, Some(0) | Some(3)) {
            c.fail(format!(
                "contained: restore after repair: expected exit 0 or 3: {}",
                run.summary()
            ));
        }
        // Repair must not lose what restored whole before it.
        if let (Some(before), Some(after)) = (lost_before, lost_after) {
            let newly: std::collections::BTreeSet<&String> =
                after.iter().filter(|p| !is_named(p, &before)).collect();
            if !newly.is_empty() {
                c.fail(format!(
                    "repair lost data: {} path(s) restored whole before `repair` but not after: {:?}",
                    newly.len(),
                    newly.iter().take(4).collect::<Vec<_>>()
                ));
            }
        }
    } else {
        // docs/MAINTENANCE.md has no procedure: write back the copy taken
        // before the damage.
        c.storage
            .write(&path, original)
            .expect("write back the object");
        c.log.push(format!(
            "wrote back {path} from the copy taken before the damage"
        ));
    }
    let src = c.src().to_string();
    let backup = c.expect("recovery", 0, &["backup", "--json", &src]);
    let new_id = serde_json::from_str::<serde_json::Value>(&backup.stdout)
        .ok()
        .and_then(|v| v["snapshot_id"].as_str().map(str::to_string));
    for _ in 0..2 {
        c.expect("recovery", 0, &["maintenance", "run", "--full", "--now"]);
    }
    c.expect("recovery", 0, &["check", "--read-data"]);
    if let Some(id) = new_id {
        c.restore("restore of the new snapshot", &id, true);
    }
    c.finish();
}

macro_rules! damage_cases {
    ($($name:ident: $kind:ident $damage:ident $cache:ident;)*) => {
        $(
            #[test]
            fn $name() {
                damage_case(stringify!($name), Kind::$kind, Damage::$damage, CacheState::$cache);
            }
        )*
    };
}

damage_cases! {
    data_pack_flip_empty: DataPack Flip Empty;
    data_pack_flip_warm: DataPack Flip Warm;
    data_pack_truncate_empty: DataPack Truncate Empty;
    data_pack_truncate_warm: DataPack Truncate Warm;
    data_pack_delete_empty: DataPack Delete Empty;
    data_pack_delete_warm: DataPack Delete Warm;
    meta_pack_flip_empty: MetaPack Flip Empty;
    meta_pack_flip_warm: MetaPack Flip Warm;
    meta_pack_truncate_empty: MetaPack Truncate Empty;
    meta_pack_truncate_warm: MetaPack Truncate Warm;
    meta_pack_delete_empty: MetaPack Delete Empty;
    meta_pack_delete_warm: MetaPack Delete Warm;
    trailer_flip_empty: Trailer Flip Empty;
    trailer_flip_warm: Trailer Flip Warm;
    trailer_truncate_empty: Trailer Truncate Empty;
    trailer_truncate_warm: Trailer Truncate Warm;
    trailer_delete_empty: Trailer Delete Empty;
    trailer_delete_warm: Trailer Delete Warm;
    index_flip_empty: Index Flip Empty;
    index_flip_warm: Index Flip Warm;
    index_truncate_empty: Index Truncate Empty;
    index_truncate_warm: Index Truncate Warm;
    index_delete_empty: Index Delete Empty;
    index_delete_warm: Index Delete Warm;
    snapshot_flip_empty: Snapshot Flip Empty;
    snapshot_flip_warm: Snapshot Flip Warm;
    snapshot_truncate_empty: Snapshot Truncate Empty;
    snapshot_truncate_warm: Snapshot Truncate Warm;
    snapshot_delete_empty: Snapshot Delete Empty;
    snapshot_delete_warm: Snapshot Delete Warm;
    config_flip_empty: Config Flip Empty;
    config_flip_warm: Config Flip Warm;
    config_truncate_empty: Config Truncate Empty;
    config_truncate_warm: Config Truncate Warm;
    config_delete_empty: Config Delete Empty;
    config_delete_warm: Config Delete Warm;
    key_flip_empty: Key Flip Empty;
    key_flip_warm: Key Flip Warm;
    key_truncate_empty: Key Truncate Empty;
    key_truncate_warm: Key Truncate Warm;
    key_delete_empty: Key Delete Empty;
    key_delete_warm: Key Delete Warm;
    header_flip_empty: Header Flip Empty;
    header_flip_warm: Header Flip Warm;
    header_truncate_empty: Header Truncate Empty;
    header_truncate_warm: Header Truncate Warm;
    header_delete_empty: Header Delete Empty;
    header_delete_warm: Header Delete Warm;
}

/// Issue 26's reproduction: one data pack lost, `repair index`, `repair
/// snapshots --forget-originals`, a backup of the intact source: the new
/// snapshot must hold the source's real bytes, not the repaired parent's
/// zero-filled chunk lists, and restore bit-exactly.
#[test]
fn backup_after_repair_stores_real_bytes() {
    let mut c = Case::new("backup_after_repair_stores_real_bytes", CacheState::Warm);
    let pack = c.fx.layout.largest_data_pack.path.clone();
    c.storage.delete(&pack).expect("delete the pack");
    c.log
        .push(format!("deleted {pack} (the largest data pack)"));
    c.expect("repair", 0, &["repair", "index"]);
    c.expect("repair", 0, &["repair", "snapshots", "--forget-originals"]);
    let src = c.src().to_string();
    c.expect("backup", 0, &["backup", &src]);
    c.expect("check", 0, &["check", "--read-data"]);
    c.restore("restore latest", "latest", true);
    c.finish();
}

/// docs/MAINTENANCE.md's recovery without `repair snapshots`: the backup of
/// the intact source heals the original snapshot.
fn heal_case(name: &str, kind: Kind, damage: Damage) {
    let mut c = Case::new(name, CacheState::Empty);
    let (path, _) = c.target(kind, damage);
    let what = c.damage(kind, damage, &path);
    c.log.push(what);
    c.expect("heal", 12, &["check", "--read-data"]);
    c.expect("heal", 0, &["repair", "index"]);
    let src = c.src().to_string();
    let backup = c.expect("heal", 0, &["backup", "--json", &src]);
    let new_id = serde_json::from_str::<serde_json::Value>(&backup.stdout)
        .ok()
        .and_then(|v| v["snapshot_id"].as_str().map(str::to_string));
    c.expect("heal", 0, &["check", "--read-data"]);
    for _ in 0..2 {
        c.expect("heal", 0, &["maintenance", "run", "--full", "--now"]);
    }
    c.expect("heal", 0, &["check", "--read-data"]);
    let original = c.fx.layout.snapshot_hex.clone();
    c.restore("restore of the original snapshot", &original, true);
    if let Some(id) = new_id {
        c.restore("restore of the new snapshot", &id, true);
    }
    c.finish();
}

macro_rules! heal_cases {
    ($($name:ident: $kind:ident $damage:ident;)*) => {
        $(
            #[test]
            fn $name() {
                heal_case(stringify!($name), Kind::$kind, Damage::$damage);
            }
        )*
    };
}

heal_cases! {
    heal_data_pack_flip: DataPack Flip;
    heal_data_pack_truncate: DataPack Truncate;
    heal_data_pack_delete: DataPack Delete;
    heal_meta_pack_flip: MetaPack Flip;
    heal_meta_pack_truncate: MetaPack Truncate;
    heal_meta_pack_delete: MetaPack Delete;
    heal_trailer_flip: Trailer Flip;
    heal_trailer_truncate: Trailer Truncate;
    heal_trailer_delete: Trailer Delete;
    heal_index_flip: Index Flip;
    heal_index_truncate: Index Truncate;
    heal_index_delete: Index Delete;
}
