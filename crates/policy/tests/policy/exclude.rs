//! Every exclusion form on real directory trees, walked the way the backup walks.

use std::fs;
use std::path::Path;

use cairn_policy::{ExcludeOptions, Excluder, PolicyError};

use crate::walk::{included, make_tree, set};

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

fn excluder(root: &Path, opts: ExcludeOptions) -> Excluder {
    Excluder::new(&opts, root).unwrap()
}

fn rule_for(excluder: &Excluder, path: &Path) -> Option<String> {
    excluder.excluded_by(path, &fs::symlink_metadata(path).unwrap())
}

#[test]
fn nothing_configured_includes_everything() {
    let root = tempfile::tempdir().unwrap();
    make_tree(root.path(), &["a/b/c", "d", "e/"]);
    let ex = excluder(root.path(), ExcludeOptions::default());
    assert_eq!(
        included(&ex, root.path()),
        set(&["a/", "a/b/", "a/b/c", "d", "e/"])
    );
}

#[test]
fn unanchored_patterns_match_names_at_any_depth() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &[
            "a.log",
            "x/b.log",
            "x/y/c.log",
            "x/keep.txt",
            "node_modules/m/i.js",
            "src/node_modules/j.js",
        ],
    );
    let opts = ExcludeOptions {
        patterns: vec!["*.log".into(), "node_modules".into()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(
        included(&ex, root.path()),
        set(&["src/", "x/", "x/keep.txt", "x/y/"])
    );
    assert_eq!(
        rule_for(&ex, &root.path().join("x/y/c.log")).as_deref(),
        Some("pattern:*.log")
    );
}

#[test]
fn leading_slash_anchors_at_the_backup_root() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &[
            "build/out",
            "src/build/keep",
            "cache/tmp/t",
            "x/cache/tmp/u",
            "x/tmp/v",
        ],
    );
    let opts = ExcludeOptions {
        // "cache/tmp" has a slash but no leading one: restic matches it at any depth.
        patterns: vec!["/build".into(), "cache/tmp".into()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(
        included(&ex, root.path()),
        set(&[
            "cache/",
            "src/",
            "src/build/",
            "src/build/keep",
            "x/",
            "x/cache/",
            "x/tmp/",
            "x/tmp/v"
        ])
    );
}

#[test]
fn trailing_slash_matches_directories_only() {
    let root = tempfile::tempdir().unwrap();
    make_tree(root.path(), &["tmp/a", "x/tmp"]);
    let opts = ExcludeOptions {
        patterns: vec!["tmp/".into()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(included(&ex, root.path()), set(&["x/", "x/tmp"]));
}

#[test]
fn exclude_file_patterns_with_comments() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &["a.iso", "d/b.iso", "secrets/k", "d/secrets/k2", "ok"],
    );
    let list = tempfile::NamedTempFile::new().unwrap();
    fs::write(list.path(), "# big images\n*.iso\r\n\n   \n  /secrets  \n").unwrap();
    let opts = ExcludeOptions {
        pattern_files: vec![list.path().to_path_buf()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(
        included(&ex, root.path()),
        set(&["d/", "d/secrets/", "d/secrets/k2", "ok"])
    );
    assert_eq!(
        ex.rules(),
        [
            "pattern:*.iso",
            "pattern:/secrets",
            "ignore-file:.cairnignore"
        ]
    );
}

#[test]
fn bad_exclude_file_line_names_file_and_line() {
    let list = tempfile::NamedTempFile::new().unwrap();
    fs::write(list.path(), "*.iso\n# fine\nbad[\n").unwrap();
    let opts = ExcludeOptions {
        pattern_files: vec![list.path().to_path_buf()],
        ..ExcludeOptions::default()
    };
    let message = Excluder::new(&opts, Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&list.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("exclude file line 3: invalid pattern 'bad['"),
        "{message}"
    );

    let opts = ExcludeOptions {
        pattern_files: vec!["/nonexistent/excludes".into()],
        ..ExcludeOptions::default()
    };
    assert!(matches!(
        Excluder::new(&opts, Path::new("/")),
        Err(PolicyError::ReadFile { .. })
    ));
}

#[test]
fn bad_exclude_pattern_is_an_error() {
    for bad in ["", "a[", "../up"] {
        let opts = ExcludeOptions {
            patterns: vec![bad.into()],
            ..ExcludeOptions::default()
        };
        let err = Excluder::new(&opts, Path::new("/")).unwrap_err();
        assert!(
            matches!(err, PolicyError::InvalidPattern { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn if_present_excludes_the_marked_directory_and_its_marker() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &[
            "a/.nobackup",
            "a/data",
            "b/c/.nobackup",
            "b/keep",
            ".nobackup-not",
        ],
    );
    let opts = ExcludeOptions {
        if_present: vec![".nobackup".into()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(
        included(&ex, root.path()),
        set(&[".nobackup-not", "b/", "b/keep"])
    );
    assert_eq!(
        rule_for(&ex, &root.path().join("a")).as_deref(),
        Some("if-present:.nobackup")
    );
}

#[test]
fn caches_need_a_valid_cachedir_tag() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &["cache/blob", "fake/blob", "short/blob", "plain/blob"],
    );
    fs::write(root.path().join("cache/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    fs::write(
        root.path().join("fake/CACHEDIR.TAG"),
        "Signature: not the right one\n",
    )
    .unwrap();
    fs::write(root.path().join("short/CACHEDIR.TAG"), "Signature: 8a47").unwrap();
    let opts = ExcludeOptions {
        exclude_caches: true,
        ..ExcludeOptions::default()
    };
    let ex = excluder(root.path(), opts);
    assert_eq!(
        included(&ex, root.path()),
        set(&[
            "fake/",
            "fake/CACHEDIR.TAG",
            "fake/blob",
            "plain/",
            "plain/blob",
            "short/",
            "short/CACHEDIR.TAG",
            "short/blob",
        ])
    );
    // Without the flag the tagged directory is backed up.
    let ex = excluder(root.path(), ExcludeOptions::default());
    assert!(included(&ex, root.path()).contains("cache/blob"));
}

#[test]
fn larger_than_applies_to_regular_files_only() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::write(r.join("small"), vec![0u8; 100]).unwrap();
    fs::write(r.join("exact"), vec![0u8; 1000]).unwrap();
    fs::write(r.join("big"), vec![0u8; 1001]).unwrap();
    fs::create_dir(r.join("dir")).unwrap();
    std::os::unix::fs::symlink("big", r.join("link-to-big")).unwrap();
    let opts = ExcludeOptions {
        larger_than: Some(1000),
        ..ExcludeOptions::default()
    };
    let ex = excluder(r, opts);
    assert_eq!(
        included(&ex, r),
        set(&["dir/", "exact", "link-to-big", "small"])
    );
    assert_eq!(
        rule_for(&ex, &r.join("big")).as_deref(),
        Some("larger-than:1000")
    );
}

#[test]
fn cairnignore_applies_gitignore_syntax_to_its_subtree() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_tree(
        r,
        &[
            "a.bak",
            "keep.bak",
            "top.txt",
            "sub/b.bak",
            "sub/data/d",
            "sub/notes.txt",
            "sub/deep/x.bak",
            "sub/deep/y.bak",
            "other/data/e",
        ],
    );
    fs::write(r.join(".cairnignore"), "# root rules\n*.bak\n!keep.bak\n").unwrap();
    fs::write(r.join("sub/.cairnignore"), "data/\n/notes.txt\n").unwrap();
    fs::write(r.join("sub/deep/.cairnignore"), "!x.bak\n").unwrap();
    let ex = excluder(r, ExcludeOptions::default());
    assert_eq!(
        included(&ex, r),
        set(&[
            ".cairnignore",
            "keep.bak",
            "top.txt",
            "other/",
            "other/data/",
            "other/data/e",
            "sub/",
            "sub/.cairnignore",
            "sub/deep/",
            "sub/deep/.cairnignore",
            "sub/deep/x.bak",
        ])
    );
    let rule = rule_for(&ex, &r.join("sub/data")).unwrap();
    assert!(rule.ends_with("sub/.cairnignore:data/"), "{rule}");
}

#[test]
fn ignore_files_can_be_renamed_or_disabled() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_tree(r, &["a.bak", "b.tmp"]);
    fs::write(r.join(".cairnignore"), "*.bak\n").unwrap();
    fs::write(r.join(".backupignore"), "*.tmp\n").unwrap();

    let disabled = excluder(
        r,
        ExcludeOptions {
            ignore_file_name: None,
            ..ExcludeOptions::default()
        },
    );
    assert_eq!(
        included(&disabled, r),
        set(&[".backupignore", ".cairnignore", "a.bak", "b.tmp"])
    );
    assert!(!disabled
        .rules()
        .iter()
        .any(|r| r.starts_with("ignore-file")));

    let renamed = excluder(
        r,
        ExcludeOptions {
            ignore_file_name: Some(".backupignore".into()),
            ..ExcludeOptions::default()
        },
    );
    assert_eq!(
        included(&renamed, r),
        set(&[".backupignore", ".cairnignore", "a.bak"])
    );
}

#[test]
fn one_file_system_excludes_mount_points() {
    // /proc is always another file system than the one holding /.
    let root = Path::new("/");
    let opts = ExcludeOptions {
        one_file_system: true,
        ignore_file_name: None,
        ..ExcludeOptions::default()
    };
    let ex = excluder(root, opts);
    assert_eq!(
        rule_for(&ex, Path::new("/proc")).as_deref(),
        Some("one-file-system")
    );

    // Entries on the root's own file system stay.
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path(), &["a/b", "c"]);
    let opts = ExcludeOptions {
        one_file_system: true,
        ..ExcludeOptions::default()
    };
    let ex = excluder(tmp.path(), opts);
    assert_eq!(included(&ex, tmp.path()), set(&["a/", "a/b", "c"]));

    let err = Excluder::new(&opts_one_fs(), Path::new("/nonexistent/root")).unwrap_err();
    assert!(matches!(err, PolicyError::RootMetadata { .. }), "{err}");
}

fn opts_one_fs() -> ExcludeOptions {
    ExcludeOptions {
        one_file_system: true,
        ..ExcludeOptions::default()
    }
}

#[test]
fn paths_outside_or_at_the_root_are_never_excluded() {
    let root = tempfile::tempdir().unwrap();
    make_tree(root.path(), &["x.log"]);
    let opts = ExcludeOptions {
        patterns: vec!["*".into()],
        ..ExcludeOptions::default()
    };
    let ex = excluder(&root.path().join("sub"), opts);
    let meta = fs::symlink_metadata(root.path().join("x.log")).unwrap();
    assert!(!ex.is_excluded(&root.path().join("x.log"), &meta));
    let ex = excluder(
        root.path(),
        ExcludeOptions {
            patterns: vec!["*".into()],
            ..ExcludeOptions::default()
        },
    );
    assert!(!ex.is_excluded(root.path(), &fs::symlink_metadata(root.path()).unwrap()));
    assert!(ex.is_excluded(&root.path().join("x.log"), &meta));
}

#[test]
fn forms_combine_and_all_are_recorded() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_tree(
        r,
        &[
            "dir1/a",
            "app/x.log",
            "app/cache/c",
            "app/keep",
            "home/.nobackup",
            "home/h",
            "big/",
        ],
    );
    fs::write(r.join("app/cache/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    fs::write(r.join("big/huge"), vec![1u8; 5000]).unwrap();
    fs::write(r.join("app/.cairnignore"), "keep\n").unwrap();
    let opts = ExcludeOptions {
        patterns: vec!["*.log".into()],
        storage_class: Some("px-db".into()),
        class_entries: vec!["dir1".into()],
        if_present: vec![".nobackup".into()],
        exclude_caches: true,
        larger_than: Some(4096),
        one_file_system: true,
        ..ExcludeOptions::default()
    };
    let ex = excluder(r, opts);
    assert_eq!(included(&ex, r), set(&["app/", "app/.cairnignore", "big/"]));
    assert_eq!(
        ex.rules(),
        [
            "class:px-db=dir1",
            "pattern:*.log",
            "if-present:.nobackup",
            "caches",
            "larger-than:4096",
            "one-file-system",
            "ignore-file:.cairnignore",
        ]
    );
}

/// The example of docs/EXCLUDES.md.
#[test]
fn documented_cairnignore_example() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    make_tree(
        r,
        &[
            "a.bak",
            "keep.bak",
            "src/b.bak",
            "src/keep.bak",
            "db/schema.bak",
            "db/old.bak",
            "scratch/s",
            "src/scratch/t",
        ],
    );
    fs::write(r.join(".cairnignore"), "*.bak\n!keep.bak\n/scratch/\n").unwrap();
    fs::write(r.join("db/.cairnignore"), "!schema.bak\n").unwrap();
    let ex = excluder(r, ExcludeOptions::default());
    assert_eq!(
        included(&ex, r),
        set(&[
            ".cairnignore",
            "db/",
            "db/.cairnignore",
            "db/schema.bak",
            "keep.bak",
            "src/",
            "src/keep.bak",
            "src/scratch/",
            "src/scratch/t",
        ])
    );
}
