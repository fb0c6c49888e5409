//! The KDMP `KDMP_EXCLUDE_FILE_LIST` format: several classes, tolerated variations,
//! malformed lines, and the entries driving a real exclusion.

use cairn_policy::kdmp::load_exclude_list;
use cairn_policy::{parse_exclude_list, ExcludeOptions, Excluder, PolicyError};

use crate::walk::{included, make_tree, set};

fn line_error(text: &str) -> (usize, String) {
    match parse_exclude_list(text) {
        Err(PolicyError::ExcludeConfig { line, reason }) => (line, reason),
        other => panic!("expected a line error for {text:?}, got {other:?}"),
    }
}

#[test]
fn documented_example_with_two_classes() {
    let list = parse_exclude_list("px-db=dir1,file1,dir2\nmysql=dir1,file1,dir2\n").unwrap();
    assert_eq!(
        list.entries_for("px-db").unwrap(),
        ["dir1", "file1", "dir2"]
    );
    assert_eq!(
        list.entries_for("mysql").unwrap(),
        ["dir1", "file1", "dir2"]
    );
    assert_eq!(
        list.storage_classes().collect::<Vec<_>>(),
        ["px-db", "mysql"]
    );
}

#[test]
fn several_classes_keep_their_own_entries() {
    let text = "px-db=data/tmp,*.log\nmysql=binlogs/\nebs.csi.aws.com=/lost+found,.snapshot/\n";
    let list = parse_exclude_list(text).unwrap();
    assert_eq!(list.entries_for("px-db").unwrap(), ["data/tmp", "*.log"]);
    assert_eq!(list.entries_for("mysql").unwrap(), ["binlogs/"]);
    assert_eq!(
        list.entries_for("ebs.csi.aws.com").unwrap(),
        ["lost+found", ".snapshot/"]
    );
}

#[test]
fn class_not_listed_gets_nothing() {
    let list = parse_exclude_list("px-db=dir1\n").unwrap();
    assert_eq!(list.entries_for("mysql"), None);
    assert_eq!(list.entries_for("px-db-2"), None);
    assert_eq!(list.entries_for("PX-DB"), None);
    assert!(parse_exclude_list("").unwrap().is_empty());
}

#[test]
fn hand_written_variations_are_tolerated() {
    let text = "\u{feff}# exclude lists for kdmp\r\n\r\n  px-db = dir1 , file1,dir2, \r\n\
                # mysql is next\r\nmysql=./dir1,/file1,,dir2/,dir1\r\n   \r\n";
    let list = parse_exclude_list(text).unwrap();
    assert_eq!(
        list.entries_for("px-db").unwrap(),
        ["dir1", "file1", "dir2"]
    );
    // Leading ./ and / are the volume root; the duplicate dir1 is dropped.
    assert_eq!(
        list.entries_for("mysql").unwrap(),
        ["dir1", "file1", "dir2/"]
    );
}

#[test]
fn entries_may_contain_spaces_and_globs() {
    let list = parse_exclude_list("px-db=my dir/old file.txt,logs/**/*.gz,tmp-[0-9]*\n").unwrap();
    assert_eq!(
        list.entries_for("px-db").unwrap(),
        ["my dir/old file.txt", "logs/**/*.gz", "tmp-[0-9]*"]
    );
}

#[test]
fn line_without_equals_names_the_line() {
    let (line, reason) = line_error("px-db=dir1\n\ngarbage\n");
    assert_eq!(line, 3);
    assert_eq!(
        reason,
        "expected <storageClass>=<entry>,...: no '=' found in 'garbage'"
    );
    let message = parse_exclude_list("px-db=dir1\n\ngarbage\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "exclude config line 3: expected <storageClass>=<entry>,...: no '=' found in 'garbage'"
    );
}

#[test]
fn pasted_configmap_key_is_a_line_error() {
    let (line, reason) = line_error("KDMP_EXCLUDE_FILE_LIST: |\n  px-db=dir1\n");
    assert_eq!(line, 1);
    assert!(reason.contains("no '=' found"), "{reason}");
}

#[test]
fn empty_class_name_is_an_error() {
    let (line, reason) = line_error("# header\n=dir1,dir2\n");
    assert_eq!(line, 2);
    assert!(
        reason.contains("storage class name before '=' is empty"),
        "{reason}"
    );
}

#[test]
fn invalid_class_name_is_an_error() {
    let (line, reason) = line_error("px-db=a\nPX_DB=dir1\n");
    assert_eq!(line, 2);
    assert!(
        reason.contains("'PX_DB' is not a valid Kubernetes name"),
        "{reason}"
    );
}

#[test]
fn duplicate_class_names_both_lines() {
    let (line, reason) = line_error("px-db=dir1\nmysql=a\npx-db=dir2\n");
    assert_eq!(line, 3);
    assert!(
        reason.contains("'px-db' is listed twice (first on line 1)"),
        "{reason}"
    );
}

#[test]
fn empty_entry_list_is_an_error() {
    for text in ["px-db=\n", "px-db=  \n", "px-db= , ,\n"] {
        let (line, reason) = line_error(text);
        assert_eq!(line, 1, "{text:?}");
        assert!(reason.contains("has no entries"), "{text:?}: {reason}");
    }
}

#[test]
fn folded_lines_are_detected() {
    // What a YAML `>` block makes of two lines.
    let (line, reason) = line_error("px-db=dir1,file1 mysql=dir2\n");
    assert_eq!(line, 1);
    assert!(reason.contains("contains '='"), "{reason}");
}

#[test]
fn entries_that_leave_or_are_the_root_are_errors() {
    let (line, reason) = line_error("px-db=dir1\nmysql=../etc\n");
    assert_eq!(line, 2);
    assert!(reason.contains("'..'"), "{reason}");
    let (line, reason) = line_error("px-db=/\n");
    assert_eq!(line, 1);
    assert!(reason.contains("volume root itself"), "{reason}");
}

#[test]
fn invalid_glob_is_an_error() {
    let (line, reason) = line_error("px-db=dir1\n\nmysql=data[1\n");
    assert_eq!(line, 3);
    assert!(reason.contains("'data[1' is not a valid glob"), "{reason}");
}

#[test]
fn loading_a_file_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("excludes");
    std::fs::write(&path, "px-db=dir1\nbad line\n").unwrap();
    let message = load_exclude_list(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("exclude config line 2"), "{message}");

    std::fs::write(&path, "px-db=dir1\n").unwrap();
    let list = load_exclude_list(&path).unwrap();
    assert_eq!(list.entries_for("px-db").unwrap(), ["dir1"]);

    let missing = load_exclude_list(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, PolicyError::ReadFile { .. }), "{missing}");
}

/// The whole path: ConfigMap text -> this volume's class entries -> what is backed up.
#[test]
fn class_entries_exclude_subtrees_files_and_globs_at_the_volume_root() {
    let root = tempfile::tempdir().unwrap();
    make_tree(
        root.path(),
        &[
            "dir1/a",
            "dir1/sub/b",
            "file1",
            "keep/file1",
            "keep/dir1/c",
            "data/x.tmp",
            "data/sub/y.tmp",
            "data/z.db",
            "snap/",
            "other/snap",
        ],
    );
    let text = "mysql=keep\npx-db=dir1,file1,data/*.tmp,snap/\n";
    let list = parse_exclude_list(text).unwrap();
    let opts = ExcludeOptions {
        storage_class: Some("px-db".into()),
        class_entries: list.entries_for("px-db").unwrap().to_vec(),
        ..ExcludeOptions::default()
    };
    let excluder = Excluder::new(&opts, root.path()).unwrap();
    assert_eq!(
        included(&excluder, root.path()),
        set(&[
            "data/",
            "data/sub/",
            "data/sub/y.tmp",
            "data/z.db",
            "keep/",
            "keep/dir1/",
            "keep/dir1/c",
            "keep/file1",
            "other/",
            "other/snap",
        ])
    );
    assert_eq!(
        excluder.rules(),
        [
            "class:px-db=dir1",
            "class:px-db=file1",
            "class:px-db=data/*.tmp",
            "class:px-db=snap/",
            "ignore-file:.cairnignore",
        ]
    );
}

#[test]
fn class_not_listed_excludes_nothing() {
    let root = tempfile::tempdir().unwrap();
    make_tree(root.path(), &["dir1/a", "file1"]);
    let list = parse_exclude_list("px-db=dir1,file1\n").unwrap();
    let opts = ExcludeOptions {
        storage_class: Some("mysql".into()),
        class_entries: list.entries_for_volume("mysql").to_vec(),
        ..ExcludeOptions::default()
    };
    let excluder = Excluder::new(&opts, root.path()).unwrap();
    assert_eq!(
        included(&excluder, root.path()),
        set(&["dir1/", "dir1/a", "file1"])
    );
}

#[test]
fn class_entries_may_reach_any_depth_with_double_star() {
    let root = tempfile::tempdir().unwrap();
    make_tree(root.path(), &["a.log", "x/b.log", "x/y/c.log", "x/keep"]);
    let list = parse_exclude_list("px-db=**/*.log\n").unwrap();
    let opts = ExcludeOptions {
        class_entries: list.entries_for_volume("px-db").to_vec(),
        ..ExcludeOptions::default()
    };
    let excluder = Excluder::new(&opts, root.path()).unwrap();
    assert_eq!(
        included(&excluder, root.path()),
        set(&["x/", "x/keep", "x/y/"])
    );
    assert_eq!(excluder.rules()[0], "class:**/*.log");
}
