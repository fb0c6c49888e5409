//! The `cairn` binary on block volumes and streams: `backup --stdin`
//! through a pipe and `dump` back, `--stdin-from-command` that fails,
//! `--read-devices` on a disk image and `restore --target-device`. Local
//! filesystem repositories only (pipes, images).

use crate::common::{text, xorshift_bytes};
use cairn_golden::testkit;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "block";

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            tmp: tempfile::tempdir().expect("tmp"),
        };
        testkit::init_at(
            f.repo().to_str().expect("utf-8"),
            PASSWORD,
            // Chunks of 256 KiB on average: streams of hundreds of MiB
            // stay a few thousand chunks.
            &cairn_core::InitOptions {
                chunk_sizes: (64 << 10, 256 << 10, 1 << 20),
                ..testkit::init_options((8 << 20, 1 << 20))
            },
        )
        .expect("init");
        f
    }

    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.tmp.path().join(sub)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_REPOSITORY", self.repo())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path());
        c
    }

    fn run(&self, code: i32, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("run cairn");
        check(&out, code, args);
        out
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.run(0, &["snapshots", "--json"]);
        serde_json::from_slice(&out.stdout).expect("snapshots --json")
    }
}

fn check(out: &Output, code: i32, args: &[&str]) {
    let stderr = text(out);
    assert!(
        !stderr.contains("panicked"),
        "cairn {args:?} panicked: {stderr}"
    );
    assert_eq!(out.status.code(), Some(code), "cairn {args:?}: {stderr}");
}

/// Feeds `len` bytes of a deterministic stream to `cairn backup --stdin`
/// through a pipe, 1 MiB at a time, and returns its output.
fn backup_stdin(f: &Fixture, len: u64, args: &[&str]) -> Output {
    let mut all = vec!["backup", "--stdin"];
    all.extend_from_slice(args);
    let mut child = f
        .cmd(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut i = 0;
        while sent < len {
            let n = (len - sent).min(1 << 20) as usize;
            stdin
                .write_all(&xorshift_bytes(i + 1, n))
                .expect("write to cairn");
            sent += n as u64;
            i += 1;
        }
    });
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder");
    out
}

/// BLAKE3 of what `cairn dump` streams, read through a pipe, and its length.
fn dump_hash(f: &Fixture, args: &[&str]) -> (blake3::Hash, u64) {
    let mut child = f
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = stdout.read(&mut buf).expect("read dump");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let out = child.wait_with_output().expect("wait");
    check(&out, 0, args);
    (hasher.finalize(), len)
}

fn stream_hash(len: u64) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0u64;
    let mut i = 0;
    while sent < len {
        let n = (len - sent).min(1 << 20) as usize;
        hasher.update(&xorshift_bytes(i + 1, n));
        sent += n as u64;
        i += 1;
    }
    hasher.finalize()
}

fn stdin_round_trip(len: u64) {
    let f = Fixture::new();
    let args = [
        "--stdin-filename",
        "db.dump",
        "--stdin-mode",
        "0640",
        "--json",
    ];
    let out = backup_stdin(&f, len, &args);
    check(&out, 0, &args);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["source"], "stdin:db.dump");
    assert_eq!(summary["summary"]["bytes_read"], len);
    let (hash, dumped) = dump_hash(&f, &["dump", "latest", "db.dump"]);
    assert_eq!(dumped, len);
    assert_eq!(
        hash,
        stream_hash(len),
        "dumped bytes differ from the stream"
    );
    let ls = text_out(&f.run(0, &["ls", "--json", "latest"]));
    assert!(
        ls.contains("db.dump") && ls.contains(&format!("{}", 0o640)),
        "{ls}"
    );
}

fn text_out(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_stream_through_a_pipe_round_trips_through_dump() {
    stdin_round_trip(96 << 20);
}

/// The 2 GiB stream of issue 18 (minutes on a busy machine): run with
/// `--run-ignored only -E 'test(two_gib)'`. Peak memory is measured by
/// benches/block.sh, not here.
#[test]
#[ignore = "2 GiB through a pipe: opt-in"]
fn a_two_gib_stream_round_trips() {
    stdin_round_trip(2 << 30);
}

#[test]
fn a_failing_producer_fails_the_backup_and_leaves_no_snapshot() {
    let f = Fixture::new();
    let args = [
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "sh",
        "-c",
        "head -c 5000000 /dev/urandom; echo 'pg_dump: connection lost' >&2; exit 4",
    ];
    let out = f.run(1, &args);
    let stderr = text(&out);
    assert!(
        stderr.contains("exited with status 4") && stderr.contains("no snapshot was saved"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pg_dump: connection lost"),
        "the command's stderr is shown: {stderr}"
    );
    assert!(
        f.snapshots().is_empty(),
        "no snapshot may claim a partial dump"
    );

    let ok = [
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "db.sql",
        "--",
        "sh",
        "-c",
        "printf 'create table t;\\n'",
    ];
    f.run(0, &ok);
    let out = f.run(0, &["dump", "latest", "db.sql"]);
    assert_eq!(text_out(&out), "create table t;\n");
    assert_eq!(f.snapshots().len(), 1);
    let out = f.run(2, &["dump", "latest", "/"]);
    assert!(
        text(&out).contains("dump prints regular files"),
        "{}",
        text(&out)
    );
    let out = f.run(2, &["dump", "latest", "nope.sql"]);
    assert!(text(&out).contains("nope.sql"), "{}", text(&out));
    // --stdin takes no paths.
    f.run(2, &["backup", "--stdin", "somewhere"]);
}

/// A disk image read with --read-devices, restored onto an image standing
/// in for a device, and refused on one too small.
#[test]
fn a_disk_image_restores_onto_a_device_and_a_small_one_is_refused() {
    let f = Fixture::new();
    let img = f.path("disk.img");
    let size = 24u64 << 20;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&img).expect("image");
        file.set_len(size).expect("size");
        file.write_all_at(&xorshift_bytes(5, 1 << 20), 2 << 20)
            .expect("island");
        file.write_all_at(&xorshift_bytes(6, 300_000), size - 300_000)
            .expect("island");
    }
    let img_s = img.to_str().expect("utf-8");
    f.run(0, &["backup", "--read-devices", img_s]);
    let dev = f.path("dev.img");
    std::fs::write(&dev, vec![0xEEu8; size as usize]).expect("device image");
    let dev_s = dev.to_str().expect("utf-8");
    let out = f.run(
        0,
        &["restore", "latest", "--target-device", dev_s, "--verify"],
    );
    assert!(
        text_out(&out).contains("verified 1 files"),
        "{}",
        text_out(&out)
    );
    assert!(std::fs::read(&dev).expect("read") == std::fs::read(&img).expect("read"));

    let small = f.path("small.img");
    std::fs::write(&small, vec![1u8; 1 << 20]).expect("small image");
    let out = f.run(
        2,
        &[
            "restore",
            "latest",
            "--target-device",
            small.to_str().expect("utf-8"),
        ],
    );
    let stderr = text(&out);
    assert!(
        stderr.contains("less than") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert!(std::fs::read(&small).expect("read").iter().all(|&b| b == 1));
    // --target and --target-device exclude each other.
    f.run(
        2,
        &[
            "restore",
            "latest",
            "--target",
            "x",
            "--target-device",
            dev_s,
        ],
    );
}

/// A disk image backed up with --read-devices is a plain file in the FUSE
/// mount, and a file system inside it can be loop-mounted read-only from
/// there (docs/MOUNT.md). Skipped, saying why, without FUSE, root, loop
/// devices or mkfs.ext4.
#[test]
fn a_disk_image_in_the_mount_loop_mounts_read_only() {
    use crate::common::{fuse_available, Mounted};
    if !fuse_available() {
        return;
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let tools = ["mkfs.ext4", "losetup"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if !root || !tools || !std::path::Path::new("/dev/loop-control").exists() {
        eprintln!("skipped: needs root, /dev/loop-control, losetup and mkfs.ext4");
        return;
    }
    let f = Fixture::new();
    let img = f.path("vda");
    std::fs::File::create(&img)
        .and_then(|file| file.set_len(32 << 20))
        .expect("image");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{script}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (img_s, fs_dir) = (img.to_str().expect("utf-8"), f.path("fs"));
    std::fs::create_dir(&fs_dir).expect("dir");
    let fs_s = fs_dir.to_str().expect("utf-8");
    sh(&format!("mkfs.ext4 -q -F {img_s}"));
    sh(&format!(
        "mount -o loop {img_s} {fs_s} && echo 'hello from the vm' > {fs_s}/greeting && umount {fs_s}"
    ));
    f.run(0, &["backup", "--read-devices", img_s]);
    let mnt = f.path("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    let mounted = Mounted::spawn(
        f.cmd(&[
            "mount",
            mnt.to_str().expect("utf-8"),
            "--snapshot",
            "latest",
        ]),
        &mnt.canonicalize().expect("canonical"),
    );
    let inside = mnt.join("vda");
    assert_eq!(std::fs::metadata(&inside).expect("vda").len(), 32 << 20);
    let dev = sh(&format!("losetup -f --show -r {}", inside.display()));
    let read = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mount -o ro,noload {dev} {fs_s} && cat {fs_s}/greeting; s=$?; umount {fs_s}; exit $s"
        ))
        .output()
        .expect("sh");
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    drop(mounted);
    assert!(read.status.success(), "{}", text(&read));
    assert_eq!(String::from_utf8_lossy(&read.stdout), "hello from the vm\n");
}
