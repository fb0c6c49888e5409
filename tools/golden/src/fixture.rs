//! Deterministic source trees: the golden tree the golden repository holds,
//! its second generation, and the rich tree the round-trip suites back up.
//!
//! Everything here is a pure function of its arguments (content from a
//! seeded generator, fixed modes and nanosecond mtimes), so a test can
//! regenerate the tree a repository was made from and compare.

use filetime::FileTime;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A small deterministic generator (xorshift64*): fixtures must not depend
/// on a random crate's version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The fixed mtime of fixture entry number `i`: distinct seconds and
/// nanoseconds, in 2020.
pub fn fixture_mtime(i: u64) -> FileTime {
    FileTime::from_unix_time(
        1_600_000_000 + i as i64 * 3_607,
        ((i * 7_919_113) % 1_000_000_000) as u32,
    )
}

fn write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes a file of `len` bytes that holds `data` at each `(offset, len)`
/// and holes elsewhere (only the data regions are written).
pub fn write_sparse(path: &Path, len: u64, regions: &[(u64, Vec<u8>)]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::File::create(path)?;
    f.set_len(len)?;
    for (offset, data) in regions {
        f.write_all_at(data, *offset)?;
    }
    f.sync_all()
}

/// Sets the mtime (and atime) of `path` without following a symlink.
pub fn set_mtime(path: &Path, t: FileTime) -> io::Result<()> {
    filetime::set_symlink_file_times(path, t, t)
}

/// Gives every entry below `root` (not `root` itself) a fixed mtime, in
/// sorted order, children before their directory so directory times stick.
pub fn fix_mtimes(root: &Path) -> io::Result<()> {
    fn walk(dir: &Path, counter: &mut u64) -> io::Result<()> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        for p in names {
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                walk(&p, counter)?;
            }
            *counter += 1;
            set_mtime(&p, fixture_mtime(*counter))?;
        }
        Ok(())
    }
    let mut counter = 0;
    walk(root, &mut counter)
}

/// Whether the file system of `dir` keeps `user.*` extended attributes.
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".cairn-xattr-probe");
    let ok = std::fs::write(&probe, b"").is_ok()
        && xattr::set(&probe, "user.cairn-probe", b"1").is_ok()
        && xattr::get(&probe, "user.cairn-probe")
            .ok()
            .flatten()
            .as_deref()
            == Some(&b"1"[..]);
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Whether this process runs as root (owners can be set and restored).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    nix::unistd::fchownat(
        None,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// The name of the golden tree's file whose name is not UTF-8 (`café.txt`
/// in Latin-1).
pub const NON_UTF8_NAME: &[u8] = b"caf\xe9.txt";

/// Writes the golden tree into `dir` (which must exist and be empty): a
/// few text files, a 200 KiB pseudo-random file (more than 64 chunks with
/// the golden chunk sizes), a 1 MiB sparse file, a symlink, a hard link,
/// nested and empty directories, a Unicode and a non-UTF-8 name.
pub fn golden_tree(dir: &Path) -> io::Result<()> {
    let mut rng = Rng::new(0x601d);
    write(&dir.join("hello.txt"), b"hello, cairn\n", 0o644)?;
    write(
        &dir.join("docs/readme.md"),
        b"# golden\n\nThis tree is generated by tools/golden.\n",
        0o644,
    )?;
    std::fs::hard_link(dir.join("docs/readme.md"), dir.join("docs/readme-link.md"))?;
    write(
        &dir.join("docs/nested/deeper/leaf.txt"),
        b"a leaf three levels down\n",
        0o600,
    )?;
    write(&dir.join("data/random.bin"), &rng.bytes(200 * 1024), 0o640)?;
    write(&dir.join("data/empty"), b"", 0o644)?;
    write_sparse(
        &dir.join("data/sparse.img"),
        1 << 20,
        &[
            (256 << 10, rng.bytes(4096)),
            ((1 << 20) - 100, rng.bytes(100)),
        ],
    )?;
    std::fs::set_permissions(
        dir.join("data/sparse.img"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    write(&dir.join("bin/run.sh"), b"#!/bin/sh\necho golden\n", 0o755)?;
    std::os::unix::fs::symlink("hello.txt", dir.join("link-to-hello"))?;
    std::os::unix::fs::symlink("../nowhere", dir.join("bin/dangling"))?;
    write(
        &dir.join("names").join("日本語.txt"),
        "unicode name\n".as_bytes(),
        0o644,
    )?;
    write(
        &dir.join("names").join(OsStr::from_bytes(NON_UTF8_NAME)),
        b"latin-1 name\n",
        0o644,
    )?;
    std::fs::create_dir_all(dir.join("empty"))?;
    fix_mtimes(dir)
}

/// Turns a golden tree into its second generation: one file changed, one
/// added, one removed. The golden repository's second snapshot holds it.
pub fn golden_update(dir: &Path) -> io::Result<()> {
    write(&dir.join("hello.txt"), b"hello again, cairn\n", 0o644)?;
    write(
        &dir.join("docs/added-later.txt"),
        b"written by the second backup\n",
        0o644,
    )?;
    std::fs::remove_file(dir.join("bin/run.sh"))?;
    fix_mtimes(dir)
}

/// What [`rich_tree`] generates besides the fixed parts.
#[derive(Debug, Clone)]
pub struct RichOptions {
    /// Seed of the content.
    pub seed: u64,
    /// Number of small files (0..3000 bytes each).
    pub small_files: usize,
    /// Directory nesting depth of `deep/`.
    pub depth: usize,
    /// Sizes of the pseudo-random files under `large/`.
    pub large_sizes: Vec<u64>,
    /// Set `user.*` xattrs (when the file system keeps them).
    pub xattrs: bool,
    /// Give some entries non-root owners (only as root).
    pub owners: bool,
}

impl Default for RichOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            small_files: 200,
            depth: 100,
            large_sizes: vec![40 << 10, 300 << 10],
            xattrs: true,
            owners: true,
        }
    }
}

/// Relative paths of the files under `large/`.
pub fn large_file(i: usize) -> PathBuf {
    PathBuf::from(format!("large/file-{i}.bin"))
}

/// Writes a tree exercising everything the format records into `dir`:
/// many small files with assorted modes (set-id bits included), empty
/// files, large files, a duplicate, a `depth`-deep directory chain,
/// symlinks (relative, absolute, dangling, to a directory, to itself), a
/// file with three hard links, sparse files, a fifo, Unicode and non-UTF-8
/// names, xattrs on files and directories, empty directories, non-root
/// owners, and nanosecond mtimes on everything.
pub fn rich_tree(dir: &Path, o: &RichOptions) -> io::Result<()> {
    let mut rng = Rng::new(o.seed);
    const MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o640, 0o444, 0o4755, 0o2750, 0o1777];
    for i in 0..o.small_files {
        let len = rng.below(3000) as usize;
        let len = if i % 17 == 0 { 0 } else { len };
        let data = rng.bytes(len);
        write(
            &dir.join(format!("small/{:02}/f{i:04}", i % 10)),
            &data,
            MODES[i % MODES.len()],
        )?;
    }
    write(&dir.join("empty-file"), b"", 0o644)?;
    for (i, size) in o.large_sizes.iter().enumerate() {
        write(&dir.join(large_file(i)), &rng.bytes(*size as usize), 0o644)?;
    }
    if !o.large_sizes.is_empty() {
        std::fs::copy(dir.join(large_file(0)), dir.join("large/copy-of-0.bin"))?;
    }
    let mut deep = dir.join("deep");
    for level in 0..o.depth {
        deep.push(format!("d{level}"));
    }
    write(&deep.join("bottom.txt"), b"at the bottom\n", 0o644)?;

    std::fs::create_dir_all(dir.join("links"))?;
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, dir.join("links").join(name));
    link("../empty-file", "relative")?;
    link("/etc/hostname", "absolute")?;
    link("does/not/exist", "dangling")?;
    link("../deep", "to-dir")?;
    link("self", "self")?;

    write(&dir.join("hard/a.txt"), b"one inode, three names\n", 0o640)?;
    std::fs::create_dir_all(dir.join("hard/sub"))?;
    std::fs::hard_link(dir.join("hard/a.txt"), dir.join("hard/b.txt"))?;
    std::fs::hard_link(dir.join("hard/a.txt"), dir.join("hard/sub/c.txt"))?;

    write_sparse(
        &dir.join("sparse/hole-first.img"),
        3 << 20,
        &[((3 << 20) - 5000, rng.bytes(5000))],
    )?;
    write_sparse(
        &dir.join("sparse/hole-middle.img"),
        3 << 20,
        &[(0, rng.bytes(8192)), ((3 << 20) - 10, rng.bytes(10))],
    )?;
    write_sparse(
        &dir.join("sparse/hole-last.img"),
        3 << 20,
        &[(0, rng.bytes(12345))],
    )?;
    write_sparse(&dir.join("sparse/all-hole.img"), 2 << 20, &[])?;

    std::fs::create_dir_all(dir.join("special"))?;
    nix::unistd::mkfifo(
        &dir.join("special/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .map_err(io::Error::from)?;

    let names = dir.join("names");
    std::fs::create_dir_all(&names)?;
    for name in [
        "日本語.txt",
        "émoji-🎉",
        "with space",
        "new\nline",
        ".hidden",
        "-dash",
        "a\\b",
    ] {
        write(&names.join(name), name.as_bytes(), 0o644)?;
    }
    write(
        &names.join(OsStr::from_bytes(b"latin1-\xe9\xff")),
        b"not utf-8\n",
        0o644,
    )?;
    std::fs::create_dir_all(names.join(OsStr::from_bytes(b"dir-\x80")))?;

    std::fs::create_dir_all(dir.join("empty-dir/nested-empty"))?;
    let locked = dir.join("locked-dir");
    write(
        &locked.join("inside.txt"),
        b"in a read-only directory\n",
        0o644,
    )?;

    if o.xattrs && xattrs_supported(dir) {
        xattr::set(dir.join("hard/a.txt"), "user.comment", b"hard-linked")?;
        let f = dir.join("small/01/f0001");
        xattr::set(&f, "user.comment", "héllo".as_bytes())?;
        xattr::set(&f, "user.binary", &[0, 255, 1, 254, 0])?;
        xattr::set(&f, "user.empty", b"")?;
        xattr::set(dir.join("names"), "user.dir", b"directory attribute")?;
        xattr::set(dir.join("empty-dir"), "user.big", &rng.bytes(2000))?;
    }
    if o.owners && is_root() {
        chown(&dir.join("small/02/f0002"), 1234, 5678)?;
        chown(&dir.join("links/relative"), 4321, 8765)?;
        chown(&dir.join("names"), 1000, 1000)?;
        chown(&dir.join("special/pipe"), 65534, 65534)?;
        // chown clears set-id bits; put them back.
        let f = dir.join("small/05/f0005");
        chown(&f, 2000, 2000)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(MODES[5]))?;
    }
    fix_mtimes(dir)?;
    // Last, so the walk above could still write in it.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555))?;
    set_mtime(&locked, fixture_mtime(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a = Rng::new(7).bytes(1000);
        assert_eq!(a, Rng::new(7).bytes(1000));
        assert_ne!(a, Rng::new(8).bytes(1000));
        assert!(a.iter().filter(|&&b| b == 0).count() < 50);
    }

    #[test]
    fn golden_tree_is_reproducible() {
        let a = tempfile_dir("a");
        let b = tempfile_dir("b");
        golden_tree(&a).unwrap();
        golden_tree(&b).unwrap();
        let diffs =
            crate::compare::compare_trees(&a, &b, &crate::compare::CompareOptions::default());
        assert!(diffs.is_empty(), "{diffs:#?}");
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("cairn-golden-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
