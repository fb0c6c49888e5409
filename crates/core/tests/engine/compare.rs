//! The tree comparison the round trips rely on fails when it should: each
//! kind of difference, made on purpose, is reported.

use crate::support::temp_sub;
use cairn_golden::fixture::{fixture_mtime, rich_tree, set_mtime, RichOptions};
use cairn_golden::{compare_trees, CompareOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn opts() -> RichOptions {
    RichOptions {
        small_files: 12,
        depth: 3,
        large_sizes: vec![20_000],
        ..Default::default()
    }
}

/// Builds two equal trees, mutates the second, returns the differences.
fn diffs_after(mutate: impl FnOnce(&Path)) -> Vec<String> {
    let (_a, a) = temp_sub("a");
    let (_b, b) = temp_sub("b");
    rich_tree(&a, &opts()).unwrap();
    rich_tree(&b, &opts()).unwrap();
    let o = CompareOptions {
        owners: true,
        xattrs: cairn_golden::fixture::xattrs_supported(&a),
        sparse: true,
    };
    assert_eq!(
        compare_trees(&a, &b, &o),
        Vec::<String>::new(),
        "equal trees compare equal"
    );
    mutate(&b);
    compare_trees(&a, &b, &o)
}

fn assert_reported(diffs: &[String], path: &str, what: &str) {
    assert!(
        diffs
            .iter()
            .any(|d| d.starts_with(path) && d.contains(what)),
        "expected {path}: {what} among {diffs:#?}"
    );
}

/// Rewrites an entry keeping its and its directory's mtimes, so only the
/// property the test changes differs.
fn keep_mtime(p: &Path, f: impl FnOnce(&Path)) {
    let parent = p.parent().unwrap();
    let m = std::fs::symlink_metadata(p).unwrap();
    let pm = std::fs::symlink_metadata(parent).unwrap();
    f(p);
    set_mtime(p, filetime::FileTime::from_last_modification_time(&m)).unwrap();
    set_mtime(parent, filetime::FileTime::from_last_modification_time(&pm)).unwrap();
}

#[test]
fn one_changed_byte() {
    let d = diffs_after(|b| {
        keep_mtime(&b.join("large/file-0.bin"), |p| {
            let mut data = std::fs::read(p).unwrap();
            data[12_345] ^= 1;
            std::fs::write(p, data).unwrap();
        })
    });
    assert_reported(&d, "large/file-0.bin", "content differs at byte 12345");
    assert_eq!(d.len(), 1, "{d:#?}");
}

#[test]
fn size_mode_mtime_and_owner() {
    let d = diffs_after(|b| {
        keep_mtime(&b.join("empty-file"), |p| std::fs::write(p, b"x").unwrap());
        std::fs::set_permissions(
            b.join("small/00/f0000"),
            std::fs::Permissions::from_mode(0o601),
        )
        .unwrap();
        set_mtime(&b.join("deep/d0"), fixture_mtime(999)).unwrap();
        let m = std::fs::metadata(b.join("deep")).unwrap();
        let t = filetime::FileTime::from_last_modification_time(&m);
        set_mtime(
            &b.join("deep"),
            filetime::FileTime::from_unix_time(t.unix_seconds(), t.nanoseconds() + 1),
        )
        .unwrap();
    });
    assert_reported(&d, "empty-file", "size 0 became 1");
    assert_reported(&d, "small/00/f0000", "mode");
    assert_reported(&d, "deep/d0", "mtime");
    assert_reported(&d, "deep", "mtime");
}

#[test]
fn owner_change_is_reported_as_root() {
    if !cairn_golden::fixture::is_root() {
        return;
    }
    let d = diffs_after(|b| {
        std::os::unix::fs::lchown(b.join("links/dangling"), Some(7), Some(8)).unwrap();
    });
    assert_reported(&d, "links/dangling", "owner 0:0 became 7:8");
}

#[test]
fn missing_extra_and_retyped_entries() {
    let d = diffs_after(|b| {
        std::fs::remove_file(b.join("names/with space")).unwrap();
        std::fs::write(b.join("names/extra"), b"").unwrap();
        std::fs::remove_file(b.join("special/pipe")).unwrap();
        std::fs::write(b.join("special/pipe"), b"").unwrap();
        std::fs::remove_dir_all(b.join("empty-dir/nested-empty")).unwrap();
    });
    assert_reported(&d, "names/with space", "missing");
    assert_reported(&d, "names/extra", "unexpected");
    assert_reported(&d, "special/pipe", "fifo became file");
    assert_reported(&d, "empty-dir/nested-empty", "missing");
}

#[test]
fn symlink_target() {
    let d = diffs_after(|b| {
        let p = b.join("links/dangling");
        keep_mtime(&p, |p| {
            std::fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink("does/not/exist/either", p).unwrap();
        });
    });
    assert_reported(&d, "links/dangling", "symlink target");
}

#[test]
fn xattr_value() {
    let d = diffs_after(|b| {
        if cairn_golden::fixture::xattrs_supported(b) {
            xattr::set(b.join("names"), "user.dir", b"changed").unwrap();
        }
    });
    if d.is_empty() {
        eprintln!("skipped: the file system keeps no user xattrs");
        return;
    }
    assert_reported(&d, "names", "xattrs");
}

#[test]
fn broken_hard_link() {
    let d = diffs_after(|b| {
        let p = b.join("hard/sub/c.txt");
        keep_mtime(&p, |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::copy(b.join("hard/a.txt"), p).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
            if let Ok(Some(v)) = xattr::get(b.join("hard/a.txt"), "user.comment") {
                xattr::set(p, "user.comment", &v).unwrap();
            }
        });
    });
    assert_reported(&d, "hard/sub/c.txt", "hard links");
    assert!(d.iter().all(|x| x.contains("hard links")), "{d:#?}");
}

#[test]
fn filled_hole() {
    let d = diffs_after(|b| {
        keep_mtime(&b.join("sparse/all-hole.img"), |p| {
            std::fs::write(p, vec![0u8; 2 << 20]).unwrap();
        })
    });
    assert_reported(&d, "sparse/all-hole.img", "holes");
    assert_eq!(d.len(), 1, "{d:#?}");
}
