//! Backup then restore is bit-exact, metadata included, for trees holding
//! every kind of entry the format records.

use crate::support::*;
use cairn_core::browse::{resolve, Resolved};
use cairn_core::format::tree::{Content, NodeType, Payload};
use cairn_core::restore::{restore, RestoreOptions};
use cairn_golden::fixture::{large_file, rich_tree, RichOptions};
use cairn_golden::{assert_same_tree, compare_trees};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn node(
    repo: &cairn_core::Repository,
    root: &cairn_core::BlobId,
    path: &str,
) -> cairn_core::format::tree::Node {
    match resolve(repo, root, Path::new(path)).expect("resolve") {
        Resolved::Node(n) => n,
        Resolved::Root(_) => panic!("{path} is the root"),
    }
}

#[test]
fn rich_tree_round_trips_bit_exact() {
    let t = test_repo("rich-tree");
    let (_src_dir, src) = temp_sub("src");
    rich_tree(&src, &RichOptions::default()).unwrap();
    let result = backup_dir(&t.repo, &src);
    assert_eq!(result.snapshot.summary.errors, 0);
    assert_eq!(
        result.snapshot.summary.files_new + result.snapshot.summary.files_unchanged,
        file_count(&src)
    );

    // The format holds what the tree has: list blobs for the 300 KiB file,
    // inline chunks for the 40 KiB one, holes for the sparse files.
    let root = result.snapshot.tree;
    let big = node(&t.repo, &root, large_file(1).to_str().unwrap());
    let Payload::File(Content::Lists(lists)) = &big.payload else {
        panic!(
            "a 300 KiB file with 1 KiB chunks must use list blobs: {:?}",
            big.payload
        );
    };
    assert_eq!(lists.iter().map(|l| l.bytes).sum::<u64>(), 300 << 10);
    let small = node(&t.repo, &root, large_file(0).to_str().unwrap());
    assert!(matches!(small.payload, Payload::File(Content::Inline(ref c)) if c.len() > 1));
    let sparse = node(&t.repo, &root, "sparse/all-hole.img");
    let Payload::File(content) = &sparse.payload else {
        panic!("not a file")
    };
    assert!(t
        .repo
        .chunk_list(content)
        .unwrap()
        .iter()
        .all(|c| c.is_hole()));
    assert_eq!(node(&t.repo, &root, "special/pipe").kind, NodeType::Fifo);

    // Restore through a handle opened from scratch, and verify.
    let repo = t.reopen().expect("reopen");
    let (_dst_dir, dst) = temp_sub("dst");
    let stats = restore(
        &repo,
        &root,
        &RestoreOptions {
            verify: true,
            ..restore_opts(&dst)
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!(stats.verified, stats.files);
    assert_same_tree(&src, &dst, &compare_opts(&src));

    // Hard links are one inode again.
    let a = std::fs::metadata(dst.join("hard/a.txt")).unwrap();
    let c = std::fs::metadata(dst.join("hard/sub/c.txt")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (c.ino(), 3));
}

#[test]
fn owners_round_trip_as_root() {
    if !cairn_golden::fixture::is_root() {
        eprintln!("skipped: owners are restored only as root");
        return;
    }
    let t = test_repo("owners");
    let (_s, src) = temp_sub("src");
    rich_tree(
        &src,
        &RichOptions {
            small_files: 10,
            depth: 2,
            large_sizes: vec![],
            ..Default::default()
        },
    )
    .unwrap();
    let result = backup_dir(&t.repo, &src);
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &result, &dst);
    for (path, owner) in [
        ("small/02/f0002", (1234, 5678)),
        ("links/relative", (4321, 8765)),
        ("names", (1000, 1000)),
        ("special/pipe", (65534, 65534)),
    ] {
        let m = std::fs::symlink_metadata(dst.join(path)).unwrap();
        assert_eq!((m.uid(), m.gid()), owner, "{path}");
    }
    // Set-uid survives the chown restore does before it sets the mode.
    let m = std::fs::metadata(dst.join("small/05/f0005")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

#[test]
fn file_with_several_list_blobs_round_trips() {
    // 64-byte minimum chunks: 1.5 MiB is about 6000 chunks, two list blobs.
    let init = cairn_core::InitOptions {
        chunk_sizes: (64, 256, 1024),
        ..fast_init()
    };
    let t = test_repo_with("several-lists", &init);
    let (_s, src) = temp_sub("src");
    let data = cairn_golden::fixture::Rng::new(42).bytes(1536 << 10);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    let result = backup_dir(&t.repo, &src);
    let n = node(&t.repo, &result.snapshot.tree, "big.bin");
    let Payload::File(Content::Lists(lists)) = &n.payload else {
        panic!("no list blobs")
    };
    assert!(lists.len() >= 2, "{} list blobs", lists.len());
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &result, &dst);
    assert_eq!(std::fs::read(dst.join("big.bin")).unwrap(), data);
}

#[test]
fn single_file_and_several_paths_round_trip() {
    let t = test_repo("paths");
    let (_s, src) = temp_sub("src");
    std::fs::create_dir_all(src.join("a/inner")).unwrap();
    std::fs::write(src.join("a/inner/x"), b"x").unwrap();
    std::fs::write(src.join("b.txt"), b"bee").unwrap();
    let result = cairn_core::backup::backup(
        &t.repo,
        &cairn_core::backup::BackupOptions {
            paths: vec![src.join("a"), src.join("b.txt")],
            ..Default::default()
        },
    )
    .unwrap();
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &result, &dst);
    assert_eq!(std::fs::read(dst.join("a/inner/x")).unwrap(), b"x");
    assert_eq!(std::fs::read(dst.join("b.txt")).unwrap(), b"bee");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 2);
}

#[test]
fn restore_include_takes_only_that_subtree() {
    let t = test_repo("include");
    let (_s, src) = temp_sub("src");
    rich_tree(
        &src,
        &RichOptions {
            small_files: 30,
            depth: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let result = backup_dir(&t.repo, &src);
    let (_d, dst) = temp_sub("dst");
    let stats = restore(
        &t.repo,
        &result.snapshot.tree,
        &RestoreOptions {
            includes: vec!["names".into(), "/hard/sub".into()],
            ..restore_opts(&dst)
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    let mut top: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["hard", "names"]);
    assert!(dst.join("hard/sub/c.txt").exists());
    assert!(!dst.join("hard/a.txt").exists());
    assert_same_tree(&src.join("names"), &dst.join("names"), &compare_opts(&src));
}

#[test]
fn compare_catches_a_broken_hard_link_in_a_restore() {
    // The suite's oracle must fail on a real restore that lost a hard link
    // even when content, mode and mtime all match.
    let t = test_repo("oracle");
    let (_s, src) = temp_sub("src");
    rich_tree(
        &src,
        &RichOptions {
            small_files: 20,
            depth: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let result = backup_dir(&t.repo, &src);
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &result, &dst);
    let b = dst.join("hard/b.txt");
    let meta = std::fs::metadata(&b).unwrap();
    let dir_meta = std::fs::metadata(dst.join("hard")).unwrap();
    std::fs::remove_file(&b).unwrap();
    std::fs::copy(dst.join("hard/a.txt"), &b).unwrap();
    let _ = xattr::set(&b, "user.comment", b"hard-linked");
    let mtime = filetime::FileTime::from_last_modification_time(&meta);
    filetime::set_file_mtime(&b, mtime).unwrap();
    let dir_mtime = filetime::FileTime::from_last_modification_time(&dir_meta);
    filetime::set_file_mtime(dst.join("hard"), dir_mtime).unwrap();
    let diffs = compare_trees(&src, &dst, &compare_opts(&src));
    assert!(!diffs.is_empty());
    assert!(diffs.iter().all(|d| d.contains("hard links")), "{diffs:#?}");
}

/// Small files reach the readers in batches, while the walk runs up to a
/// bounded number of entries ahead of the assembler. A file followed by
/// more entries than that bound that need no reading (symlinks here) must
/// not leave the assembler waiting for a batch that was never handed over;
/// nor must thousands of small files in one directory, nested directories
/// and a large file among them: the backup finishes and restores exactly.
#[test]
fn thousands_of_small_files_and_links_in_one_directory_round_trip() {
    let t = test_repo("many-small");
    let (_src_dir, src) = temp_sub("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/0-first"), "read before the links\n").unwrap();
    for i in 0..1500 {
        std::os::unix::fs::symlink("0-first", src.join(format!("a/1-link{i:05}"))).unwrap();
    }
    std::fs::write(src.join("a/2-big.bin"), vec![7u8; 3 << 20]).unwrap();
    for i in 0..3000 {
        std::fs::write(src.join(format!("a/3-f{i:05}")), format!("file {i}\n")).unwrap();
    }
    for i in 0..200 {
        std::fs::write(src.join(format!("a/b/g{i:03}")), format!("{i}")).unwrap();
    }
    let result = backup_dir(&t.repo, &src);
    assert_eq!(result.snapshot.summary.errors, 0);
    assert_eq!(result.snapshot.summary.files_new, 3202);
    let (_dst_dir, dst) = temp_sub("dst");
    let stats = restore_all(&t.repo, &result, &dst);
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

/// An unchanged entry keeps its parent's xattrs without reading them again;
/// setting an xattr changes the entry's change time, so the next backup
/// reads them, though the file's content and modification time are the
/// same.
#[test]
fn an_xattr_set_after_a_backup_is_in_the_next_one() {
    let t = test_repo("xattr-next");
    let (_src_dir, src) = temp_sub("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), "content\n").unwrap();
    if !cairn_golden::fixture::xattrs_supported(&src) {
        eprintln!("skipped: the file system keeps no user xattrs");
        return;
    }
    xattr::set(src.join("d/f"), "user.a", b"one").unwrap();
    xattr::set(src.join("d"), "user.dir", b"one").unwrap();
    let first = backup_dir(&t.repo, &src);
    let unchanged = backup_dir(&t.repo, &src);
    assert_eq!(unchanged.snapshot.summary.files_unchanged, 1);
    let f = node(&t.repo, &unchanged.snapshot.tree, "d/f");
    assert_eq!(f.xattrs, vec![(b"user.a".to_vec(), b"one".to_vec())]);
    assert_eq!(
        node(&t.repo, &unchanged.snapshot.tree, "d").xattrs,
        vec![(b"user.dir".to_vec(), b"one".to_vec())]
    );
    assert_eq!(unchanged.snapshot.tree, first.snapshot.tree);

    let mtime = filetime::FileTime::from_last_modification_time(
        &std::fs::metadata(src.join("d/f")).unwrap(),
    );
    xattr::set(src.join("d/f"), "user.a", b"two").unwrap();
    xattr::set(src.join("d/f"), "user.b", b"new").unwrap();
    xattr::remove(src.join("d"), "user.dir").unwrap();
    filetime::set_file_mtime(src.join("d/f"), mtime).unwrap();
    let changed = backup_dir(&t.repo, &src);
    assert_eq!(
        node(&t.repo, &changed.snapshot.tree, "d/f").xattrs,
        vec![
            (b"user.a".to_vec(), b"two".to_vec()),
            (b"user.b".to_vec(), b"new".to_vec())
        ]
    );
    assert!(node(&t.repo, &changed.snapshot.tree, "d").xattrs.is_empty());
    let (_dst_dir, dst) = temp_sub("dst");
    restore_all(&t.repo, &changed, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

/// A file whose content is read has its xattrs read from the very file
/// the reader opened; a hard-linked one, read by the walk, by its path.
/// Either way they are the file's, new or changed with its content.
#[test]
fn a_file_read_again_carries_its_current_xattrs() {
    let t = test_repo("xattr-read");
    let (_src_dir, src) = temp_sub("src");
    std::fs::write(src.join("f"), "one\n").unwrap();
    std::fs::write(src.join("plain"), "no xattrs\n").unwrap();
    if !cairn_golden::fixture::xattrs_supported(&src) {
        eprintln!("skipped: the file system keeps no user xattrs");
        return;
    }
    std::fs::write(src.join("linked"), "linked\n").unwrap();
    std::fs::hard_link(src.join("linked"), src.join("link2")).unwrap();
    xattr::set(src.join("f"), "user.a", b"one").unwrap();
    xattr::set(src.join("linked"), "user.l", b"x").unwrap();
    let first = backup_dir(&t.repo, &src);
    let tree = &first.snapshot.tree;
    assert_eq!(
        node(&t.repo, tree, "f").xattrs,
        vec![(b"user.a".to_vec(), b"one".to_vec())]
    );
    assert!(node(&t.repo, tree, "plain").xattrs.is_empty());
    for name in ["linked", "link2"] {
        assert_eq!(
            node(&t.repo, tree, name).xattrs,
            vec![(b"user.l".to_vec(), b"x".to_vec())],
            "{name}"
        );
    }

    std::fs::write(src.join("f"), "two, longer\n").unwrap();
    xattr::set(src.join("f"), "user.b", b"two").unwrap();
    let second = backup_dir(&t.repo, &src);
    assert_eq!(second.snapshot.summary.files_changed, 1);
    assert_eq!(
        node(&t.repo, &second.snapshot.tree, "f").xattrs,
        vec![
            (b"user.a".to_vec(), b"one".to_vec()),
            (b"user.b".to_vec(), b"two".to_vec())
        ]
    );
    let (_dst_dir, dst) = temp_sub("dst");
    restore_all(&t.repo, &second, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

/// Excludes entries named `skipped`.
struct SkipNamed;

impl cairn_core::backup::Exclude for SkipNamed {
    fn is_excluded(&self, path: &Path, _meta: &std::fs::Metadata) -> bool {
        path.file_name().is_some_and(|n| n == "skipped")
    }
}

/// A listing started before the backup (while the repository opens) is
/// used only by a backup of the same paths with the very same rules: one
/// started for other paths, or without the backup's excludes, is dropped
/// and the backup lists on its own.
#[test]
fn a_listing_started_early_serves_only_its_own_paths_and_rules() {
    use cairn_core::backup::{backup, BackupOptions, Exclude, Prelisted};
    use std::sync::Arc;
    let t = test_repo("prelisted");
    let (_src_dir, src) = temp_sub("src");
    for d in ["a/b", "skipped/inner", "c"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        std::fs::write(src.join(d).join("f"), d).unwrap();
    }
    let (_other_dir, other) = temp_sub("other");
    std::fs::write(other.join("x"), "x").unwrap();
    let rules: Arc<dyn Exclude> = Arc::new(SkipNamed);
    let run = |prelisted: Prelisted| {
        let opts = BackupOptions {
            paths: vec![src.clone()],
            exclude: Some(rules.clone()),
            prelisted,
            ..Default::default()
        };
        backup(&t.repo, &opts).expect("backup")
    };
    let has = |r: &cairn_core::backup::BackupResult, p: &str| {
        resolve(&t.repo, &r.snapshot.tree, Path::new(p)).is_ok()
    };

    let alone = run(Prelisted::default());
    assert!(has(&alone, "a/b/f") && has(&alone, "c/f") && !has(&alone, "skipped"));
    let others = run(Prelisted::start(
        std::slice::from_ref(&other),
        Some(rules.clone()),
    ));
    assert_eq!(others.snapshot.tree, alone.snapshot.tree);
    let without_rules = run(Prelisted::start(std::slice::from_ref(&src), None));
    assert_eq!(without_rules.snapshot.tree, alone.snapshot.tree);
    let same = run(Prelisted::start(
        std::slice::from_ref(&src),
        Some(rules.clone()),
    ));
    assert_eq!(same.snapshot.tree, alone.snapshot.tree);
    let (_dst_dir, dst) = temp_sub("dst");
    restore_all(&t.repo, &same, &dst);
    assert_eq!(std::fs::read(dst.join("a/b/f")).unwrap(), b"a/b");
    assert!(!dst.join("skipped").exists());
}
