//! Deduplication and unchanged-file skipping: a second backup of the same
//! tree reads nothing and stores no data; one changed byte costs about one
//! chunk.

use crate::support::*;
use cairn_core::browse::{resolve, Resolved};
use cairn_core::format::tree::{Node, Payload};
use cairn_core::BlobId;
use cairn_golden::fixture::{large_file, rich_tree, RichOptions};
use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn small_rich() -> RichOptions {
    RichOptions {
        small_files: 50,
        depth: 5,
        ..Default::default()
    }
}

fn chunk_ids(repo: &cairn_core::Repository, n: &Node) -> HashSet<BlobId> {
    let Payload::File(content) = &n.payload else {
        panic!("not a file")
    };
    repo.chunk_list(content)
        .unwrap()
        .into_iter()
        .filter(|c| !c.is_hole())
        .map(|c| c.id)
        .collect()
}

fn file_node(repo: &cairn_core::Repository, root: &BlobId, path: &Path) -> Node {
    match resolve(repo, root, path).unwrap() {
        Resolved::Node(n) => n,
        Resolved::Root(_) => panic!("root"),
    }
}

#[test]
fn second_backup_of_unchanged_tree_reads_nothing_and_adds_no_packs() {
    let t = test_repo("unchanged");
    let (_s, src) = temp_sub("src");
    rich_tree(&src, &small_rich()).unwrap();
    let first = backup_dir(&t.repo, &src);
    let storage = t.storage().unwrap();
    let packs = names(&storage, "packs/");
    let snapshots = count(&storage, "snapshots/");
    assert!(!packs.is_empty());

    // A fresh handle: the skipping must not depend on in-process state.
    let repo = t.reopen().expect("reopen");
    let second = backup_dir(&repo, &src);
    let s = &second.snapshot.summary;
    assert_eq!(second.snapshot.parent, Some(first.id));
    assert_eq!(s.bytes_read, 0, "{s:?}");
    assert_eq!(s.files_unchanged, file_count(&src), "{s:?}");
    assert_eq!((s.files_new, s.files_changed), (0, 0), "{s:?}");
    assert_eq!(s.bytes_total, first.snapshot.summary.bytes_total);
    assert_eq!(s.blobs_added, 0, "{s:?}");
    assert_eq!(
        second.snapshot.tree, first.snapshot.tree,
        "same tree, same root id"
    );
    assert_eq!(names(&storage, "packs/"), packs, "no pack was added");
    assert_eq!(count(&storage, "snapshots/"), snapshots + 1);
}

#[test]
fn forced_rereading_stores_no_new_data() {
    // Without a parent every file is read again, but dedup stores nothing.
    let t = test_repo("reread");
    let (_s, src) = temp_sub("src");
    rich_tree(&src, &small_rich()).unwrap();
    let first = backup_dir(&t.repo, &src);
    let storage = t.storage().unwrap();
    let packs = names(&storage, "packs/");
    let second = cairn_core::backup::backup(
        &t.repo,
        &cairn_core::backup::BackupOptions {
            paths: vec![src.clone()],
            parent: cairn_core::backup::ParentChoice::None,
            ..Default::default()
        },
    )
    .unwrap();
    let s = &second.snapshot.summary;
    assert_eq!(s.bytes_read, first.snapshot.summary.bytes_read);
    assert_eq!(s.blobs_added, 0, "{s:?}");
    assert_eq!(names(&storage, "packs/"), packs);
}

#[test]
fn one_changed_byte_costs_about_one_chunk() {
    let t = test_repo("one-byte");
    let (_s, src) = temp_sub("src");
    rich_tree(&src, &small_rich()).unwrap();
    let first = backup_dir(&t.repo, &src);
    let big = large_file(1);
    let path = src.join(&big);
    let size = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, size / 2).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], size / 2).unwrap();
    drop(f);

    let second = backup_dir(&t.repo, &src);
    let s = &second.snapshot.summary;
    assert_eq!(s.bytes_read, size, "only the changed file is read: {s:?}");
    assert_eq!(s.files_changed, 1, "{s:?}");
    assert_eq!(s.files_unchanged, file_count(&src) - 1, "{s:?}");
    let old = chunk_ids(&t.repo, &file_node(&t.repo, &first.snapshot.tree, &big));
    let new = chunk_ids(&t.repo, &file_node(&t.repo, &second.snapshot.tree, &big));
    let added = new.difference(&old).count();
    assert!((1..=2).contains(&added), "{added} new data chunks");
    // New blobs: those chunks, the file's list blob, and the trees on the
    // path (large/ and the root).
    assert!(
        s.blobs_added >= added as u64 + 3 && s.blobs_added <= added as u64 + 4,
        "{s:?}"
    );
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &second, &dst);
    cairn_golden::assert_same_tree(&src, &dst, &compare_opts(&src));
}

#[test]
fn duplicate_content_is_stored_once() {
    let t = test_repo("dup");
    let (_s, src) = temp_sub("src");
    let data = cairn_golden::fixture::Rng::new(9).bytes(100 << 10);
    for name in ["a", "b", "c"] {
        std::fs::write(src.join(name), &data).unwrap();
    }
    let r = backup_dir(&t.repo, &src);
    let one = {
        let (_s2, src2) = temp_sub("one");
        std::fs::write(src2.join("a"), &data).unwrap();
        let t2 = test_repo("dup-one");
        backup_dir(&t2.repo, &src2).snapshot.summary.bytes_added
    };
    // Three copies cost one copy plus a slightly bigger tree.
    assert!(
        r.snapshot.summary.bytes_added < one + 1024,
        "{} vs {one}",
        r.snapshot.summary.bytes_added
    );
}
