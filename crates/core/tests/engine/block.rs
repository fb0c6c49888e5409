//! Block volumes and streams: sparse disk images and block devices read
//! as files (`read_devices`), restored byte for byte into files or onto
//! devices (`target_device`), and streams stored as one file.

use crate::support::*;
use cairn_core::backup::stream::{backup_command_unsaved, backup_stream_unsaved, StreamOptions};
use cairn_core::backup::{backup, save_backup, BackupOptions, ParentChoice};
use cairn_core::browse::{dump, resolve, Resolved};
use cairn_core::format::tree::{Node, NodeType};
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{ErrorKind, InitOptions, Repository};
use rand::{RngCore, SeedableRng};
use std::ffi::OsString;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Chunks of 16 KiB on average (4 KiB to 64 KiB): a 64 MiB disk is a few
/// thousand chunks, one list blob.
fn disk_init() -> InitOptions {
    InitOptions {
        chunk_sizes: (4 << 10, 16 << 10, 64 << 10),
        ..fast_init()
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A sparse image of `size` bytes with random data islands `(offset, len)`.
fn sparse_image(path: &Path, size: u64, islands: &[(u64, usize)]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, (at, len)) in islands.iter().enumerate() {
        f.write_all_at(&random(*len, i as u64 + 1), *at).unwrap();
    }
    f.sync_all().unwrap();
}

fn opts(paths: Vec<PathBuf>) -> BackupOptions {
    BackupOptions {
        paths,
        host: Some("block-test".into()),
        source: Some("disk".into()),
        read_devices: true,
        ..Default::default()
    }
}

fn node(repo: &Repository, root: &cairn_core::BlobId, path: &str) -> Node {
    match resolve(repo, root, Path::new(path)).unwrap() {
        Resolved::Node(n) => n,
        Resolved::Root(_) => panic!("{path} is the root"),
    }
}

fn same_bytes(a: &Path, b: &Path, len: u64) {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let mut off = 0u64;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        assert!(
            ba[..n] == bb[..n],
            "{} and {} differ in the MiB at {off}",
            a.display(),
            b.display()
        );
        off += n as u64;
    }
}

/// A thin image round-trips byte for byte, stays sparse when restored, and
/// costs the repository its data, not its size.
#[test]
fn a_sparse_image_round_trips_byte_exact_and_stores_only_its_data() {
    let t = test_repo_with("sparse-image", &disk_init());
    let (_s, src) = temp_sub("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = src.join("disk.img");
    let size = 96u64 << 20;
    let islands = [
        (0, 300_000),
        (10 << 20, 2 << 20),
        (50 << 20, 777_777),
        (size - 65_536, 65_536),
    ];
    sparse_image(&img, size, &islands);
    let data: u64 = islands.iter().map(|(_, l)| *l as u64).sum();
    let first = backup(&t.repo, &opts(vec![img.clone()])).unwrap();
    let s = &first.snapshot.summary;
    assert_eq!(s.bytes_read, size, "{s:?}");
    assert!(
        s.bytes_added < data + (1 << 20),
        "stored {} for {data} bytes of data",
        s.bytes_added
    );
    assert_eq!(s.files_changed_while_read, 0, "{s:?}");

    let (_d, dst) = temp_sub("dst");
    let stats = restore(
        &t.repo,
        &first.snapshot.tree,
        &RestoreOptions {
            verify: true,
            ..restore_opts(&dst)
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!(stats.verified, 1);
    let out = dst.join("disk.img");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    same_bytes(&img, &out, size);
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < size / 4,
        "restored image allocates {allocated} of {size} bytes"
    );

    // Restored onto a larger image standing in for a device: the file's
    // range is exactly the snapshot's (old bytes in its holes zeroed), the
    // rest of the device untouched.
    let dev = dst.join("device.img");
    std::fs::write(&dev, vec![0xA5u8; (size + 8192) as usize]).unwrap();
    let stats = restore(
        &t.repo,
        &first.snapshot.tree,
        &RestoreOptions {
            target_device: Some(dev.clone()),
            includes: vec![PathBuf::from("disk.img")],
            verify: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!((stats.files, stats.verified), (1, 1));
    same_bytes(&img, &dev, size);
    let mut tail = vec![0u8; 8192];
    std::fs::File::open(&dev)
        .unwrap()
        .read_exact_at(&mut tail, size)
        .unwrap();
    assert!(
        tail.iter().all(|&b| b == 0xA5),
        "bytes past the file changed"
    );
}

/// A device smaller than the file is refused before anything is written.
#[test]
fn restore_onto_a_smaller_device_is_refused_and_writes_nothing() {
    let t = test_repo_with("small-device", &disk_init());
    let (_s, src) = temp_sub("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = src.join("disk.img");
    std::fs::write(&img, random(1 << 20, 9)).unwrap();
    let first = backup(&t.repo, &opts(vec![img])).unwrap();
    let dev = src.join("small.img");
    std::fs::write(&dev, vec![7u8; 512 << 10]).unwrap();
    let err = restore(
        &t.repo,
        &first.snapshot.tree,
        &RestoreOptions {
            target_device: Some(dev.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("524288 bytes") && text.contains("1048576 bytes"),
        "{text}"
    );
    assert!(text.contains("nothing was written"), "{text}");
    assert!(std::fs::read(&dev).unwrap().iter().all(|&b| b == 7));

    // A directory is no device.
    let err = restore(
        &t.repo,
        &first.snapshot.tree,
        &RestoreOptions {
            target_device: Some(src.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
    assert!(err.to_string().contains("neither a block device"), "{err}");
}

/// Rewriting 1% of a disk's blocks (in a few runs, as a file system
/// writes) grows the repository by about 1% of the disk.
#[test]
fn rewriting_one_percent_of_a_disk_stores_about_one_percent() {
    let t = test_repo_with("one-percent", &disk_init());
    let (_s, src) = temp_sub("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = src.join("disk.img");
    let size = 64usize << 20;
    std::fs::write(&img, random(size, 3)).unwrap();
    backup(&t.repo, &opts(vec![img.clone()])).unwrap();
    // Read again in full, as a device always is (an image file's times
    // would let it be skipped).
    let reread = BackupOptions {
        parent: ParentChoice::None,
        ..opts(vec![img.clone()])
    };
    let again = backup(&t.repo, &reread).unwrap();
    assert_eq!(again.snapshot.summary.bytes_read, size as u64);
    let unchanged = again.snapshot.summary.bytes_added;
    assert!(
        unchanged < 4096,
        "an unchanged disk added {unchanged} bytes"
    );

    // 1% of the 4 KiB blocks: 4 runs of 41 blocks.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let blocks = size / 4096 / 100;
    for (i, at) in [3u64 << 20, 17 << 20, 40 << 20, 60 << 20]
        .iter()
        .enumerate()
    {
        f.write_all_at(&random(blocks / 4 * 4096, 100 + i as u64), *at)
            .unwrap();
    }
    drop(f);
    let changed = backup(&t.repo, &opts(vec![img])).unwrap();
    let added = changed.snapshot.summary.bytes_added as f64;
    let share = added / size as f64;
    eprintln!(
        "rewriting 1% of the blocks added {added} bytes ({:.2}% of the disk)",
        share * 100.0
    );
    assert!(
        share > 0.009 && share < 0.025,
        "added {:.2}% of the disk",
        share * 100.0
    );
}

/// A loop device made by the test round-trips: backed up with
/// `read_devices` (a file of the device's size in the snapshot), restored
/// onto a second loop device and verified. Skipped, saying why, where
/// loop devices cannot be made.
#[test]
fn a_loop_device_round_trips_onto_another_loop_device() {
    let Some(dir) = loop_capable() else { return };
    let size = 48u64 << 20;
    let img_a = dir.path().join("a.img");
    let img_b = dir.path().join("b.img");
    sparse_image(&img_a, size, &[(4096, 1 << 20), (30 << 20, 3 << 20)]);
    std::fs::write(&img_b, vec![0x5Au8; size as usize]).unwrap();
    let Some(a) = LoopDev::attach(&img_a) else {
        return;
    };
    let Some(b) = LoopDev::attach(&img_b) else {
        return;
    };

    let t = test_repo_with("loop", &disk_init());
    let first = backup(&t.repo, &opts(vec![a.path.clone()])).unwrap();
    let name = a.path.file_name().unwrap().to_string_lossy().into_owned();
    let n = node(&t.repo, &first.snapshot.tree, &name);
    assert_eq!(
        n.kind,
        NodeType::File,
        "the device is stored as a file of its content"
    );
    assert_eq!(n.size, size);
    {
        // Held exclusively (as a mount holds it): refused, nothing written.
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
            .open(&b.path)
            .unwrap();
        let err = restore(
            &t.repo,
            &first.snapshot.tree,
            &RestoreOptions {
                target_device: Some(b.path.clone()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
        assert!(err.to_string().contains("is in use"), "{err}");
    }
    let stats = restore(
        &t.repo,
        &first.snapshot.tree,
        &RestoreOptions {
            target_device: Some(b.path.clone()),
            verify: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!(stats.verified, 1);
    same_bytes(&a.path, &b.path, size);
    drop((a, b));
    same_bytes(&img_a, &img_b, size);
}

/// A temporary directory when loop devices can be made here, else `None`
/// after printing why the test is skipped.
fn loop_capable() -> Option<tempfile::TempDir> {
    let skip = |why: &str| {
        eprintln!("skipped: loop devices unavailable: {why}");
        None
    };
    if !cairn_golden::fixture::is_root() {
        return skip("not root (losetup needs CAP_SYS_ADMIN)");
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("no /dev/loop-control");
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        return skip("no losetup");
    }
    Some(tempfile::tempdir().unwrap())
}

/// A loop device on an image file, detached when dropped.
struct LoopDev {
    path: PathBuf,
}

impl LoopDev {
    fn attach(img: &Path) -> Option<Self> {
        let out = Command::new("losetup")
            .arg("-f")
            .arg("--show")
            .arg(img)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: losetup could not attach {}: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(Self { path })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

fn stream_opts() -> BackupOptions {
    BackupOptions {
        host: Some("block-test".into()),
        ..Default::default()
    }
}

/// A stream round-trips through `dump`, and a second dump of mostly the
/// same bytes stores little.
#[test]
fn a_stream_round_trips_and_a_similar_stream_deduplicates() {
    let t = test_repo_with("stream", &disk_init());
    let mut data = random(24 << 20, 5);
    let stream = StreamOptions {
        name: "db.sql".into(),
        mode: 0o640,
    };
    let snap = backup_stream_unsaved(&t.repo, &stream_opts(), &stream, &mut &data[..]).unwrap();
    save_backup(&t.repo, &snap).unwrap();
    assert_eq!(snap.source, "stdin:db.sql");
    assert_eq!(snap.summary.bytes_read, data.len() as u64);
    let n = node(&t.repo, &snap.tree, "db.sql");
    assert_eq!(
        (n.kind, n.mode, n.size),
        (NodeType::File, 0o640, data.len() as u64)
    );
    let mut out = Vec::new();
    assert_eq!(dump(&t.repo, &n, &mut out).unwrap(), data.len() as u64);
    assert!(out == data, "dumped bytes differ");

    data[7 << 20..(7 << 20) + 100_000].fill(1);
    let snap2 = backup_stream_unsaved(&t.repo, &stream_opts(), &stream, &mut &data[..]).unwrap();
    let id2 = save_backup(&t.repo, &snap2).unwrap();
    assert!(
        snap2.parent.is_some(),
        "the earlier dump of the same name is the parent"
    );
    assert!(
        snap2.summary.bytes_added < 400_000,
        "a 100 kB change stored {} bytes",
        snap2.summary.bytes_added
    );
    let (_, again) = t
        .repo
        .find_snapshot(&id2.to_hex(), &Default::default())
        .unwrap();
    assert!(again.complete);

    let err = backup_stream_unsaved(
        &t.repo,
        &stream_opts(),
        &StreamOptions {
            name: "a/b".into(),
            mode: 0o600,
        },
        &mut &data[..10],
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
}

/// A producer that fails, or is killed, fails the backup, and no snapshot
/// (complete or not) claims its output.
#[test]
fn a_failing_or_killed_command_fails_the_backup_and_saves_no_snapshot() {
    let t = test_repo_with("command", &disk_init());
    let stream = StreamOptions {
        name: "dump.sql".into(),
        mode: 0o600,
    };
    let sh = |script: &str| -> Vec<OsString> {
        ["sh", "-c", script].iter().map(OsString::from).collect()
    };
    let ok = backup_command_unsaved(
        &t.repo,
        &stream_opts(),
        &stream,
        &sh("head -c 3000000 /dev/urandom"),
    )
    .unwrap();
    assert_eq!(ok.summary.bytes_read, 3_000_000);
    save_backup(&t.repo, &ok).unwrap();

    for (script, says) in [
        (
            "head -c 2000000 /dev/urandom; exit 3",
            "exited with status 3",
        ),
        (
            "head -c 2000000 /dev/urandom; kill -9 $$",
            "killed by signal 9",
        ),
    ] {
        let err =
            backup_command_unsaved(&t.repo, &stream_opts(), &stream, &sh(script)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(says) && text.contains("no snapshot was saved"),
            "{text}"
        );
        let snaps = t.repo.list_snapshots().unwrap();
        assert_eq!(snaps.len(), 1, "only the good dump's snapshot exists");
    }
    let err = backup_command_unsaved(
        &t.repo,
        &stream_opts(),
        &stream,
        &[OsString::from("/no/such/cmd")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot run the command"), "{err}");
}

/// A stream that yields `first` bytes, then (after a pause longer than the
/// checkpoint interval) `second` bytes, then looks for the checkpoint the
/// backup must have written meanwhile and ends.
struct PausingStream {
    data: Vec<u8>,
    pos: usize,
    first: usize,
    paused: bool,
    repo: Repository,
    /// The prefix the checkpoint's partial entry held, once seen.
    seen: Option<u64>,
}

impl std::io::Read for PausingStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.first && !self.paused {
            self.paused = true;
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        if self.pos == self.data.len() && self.seen.is_none() {
            self.seen = self
                .repo
                .list_snapshots()
                .unwrap()
                .into_iter()
                .filter(|(_, s)| !s.complete)
                .find_map(|(_, s)| {
                    let root = self.repo.load_tree(&s.tree).ok()?;
                    let n = root.nodes.first()?;
                    n.xattrs
                        .iter()
                        .any(|(k, _)| k == cairn_core::backup::PARTIAL_XATTR)
                        .then_some(n.size)
                });
            return Ok(0);
        }
        let end = if self.pos < self.first {
            self.first
        } else {
            self.data.len()
        };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A stream that outlives the checkpoint interval is checkpointed like a
/// large file: an incomplete snapshot whose root holds the stream so far as
/// a partial entry, so maintenance keeps what it stored; the saved snapshot
/// supersedes it.
#[test]
fn a_long_stream_is_checkpointed_as_a_partial_file() {
    let t = test_repo_with("stream-checkpoint", &disk_init());
    let mut data = vec![0u8; 12 << 20];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data);
    let mut src = PausingStream {
        data: data.clone(),
        pos: 0,
        first: 8 << 20,
        paused: false,
        repo: t.repo.clone(),
        seen: None,
    };
    let mut opts = stream_opts();
    opts.checkpoint.every = std::time::Duration::from_millis(200);
    let stream = StreamOptions {
        name: "long.sql".into(),
        mode: 0o600,
    };
    let snap = backup_stream_unsaved(&t.repo, &opts, &stream, &mut src).unwrap();
    let prefix = src.seen.expect("no checkpoint held the stream so far");
    assert!(
        prefix > 0 && prefix < data.len() as u64,
        "the checkpoint held {prefix} of {} bytes",
        data.len()
    );
    save_backup(&t.repo, &snap).unwrap();
    let left: Vec<bool> = t
        .repo
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.complete)
        .collect();
    assert_eq!(left, vec![true], "the checkpoint is gone with the snapshot");
    let mut out = Vec::new();
    let Resolved::Node(n) = resolve(&t.repo, &snap.tree, Path::new("long.sql")).unwrap() else {
        panic!("long.sql is not in the snapshot");
    };
    dump(&t.repo, &n, &mut out).unwrap();
    assert!(out == data, "dumped bytes differ");
}
