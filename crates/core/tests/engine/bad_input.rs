//! Bad input: wrong passwords, locations that are not repositories, init
//! over a repository, empty passwords, restore into a non-empty directory,
//! and the key operations.

use crate::support::*;
use bytes::Bytes;
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{ErrorKind, Repository, SnapshotFilter};
use cairn_storage::testing::fresh_location;

#[test]
fn wrong_password_is_said() {
    let t = test_repo("wrong-password");
    let e = Repository::open(
        t.storage().unwrap(),
        "not the password",
        &open_opts(t.cache.path()),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassword);
    assert!(e.to_string().contains("wrong password"), "{e}");
}

#[test]
fn empty_location_is_not_a_repository() {
    let loc = fresh_location("not-a-repo").unwrap();
    let e = Repository::open(storage(&loc), PASSWORD, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotARepository);
    let msg = e.to_string();
    assert!(
        msg.contains("is not a cairn repository") && msg.contains("cairn init"),
        "{msg}"
    );
}

#[test]
fn foreign_or_future_header_is_not_a_repository() {
    let loc = fresh_location("foreign-header").unwrap();
    let s = storage(&loc);
    s.write("cairn.repository", Bytes::from_static(b"restic says hello"))
        .unwrap();
    let e = Repository::open(s.clone(), PASSWORD, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotARepository);
    assert!(e.to_string().contains("cairn.repository"), "{e}");

    let mut header = b"CAIRNREP".to_vec();
    header.extend_from_slice(&99u32.to_le_bytes());
    header.extend_from_slice(&[7; 32]);
    s.write("cairn.repository", Bytes::from(header)).unwrap();
    let e = Repository::open(s, PASSWORD, &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotARepository);
    assert!(
        e.to_string().contains("99"),
        "the version found is named: {e}"
    );
}

#[test]
fn init_on_an_existing_repository_is_refused() {
    let t = test_repo("init-twice");
    let e = Repository::init(
        t.storage().unwrap(),
        "other",
        &fast_init(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, cairn_core::Error::AlreadyExists { .. }), "{e}");
    assert!(
        e.to_string().contains("already holds a cairn repository"),
        "{e}"
    );
    // The first repository is untouched.
    let repo = t.reopen().expect("reopen");
    assert_eq!(repo.id(), t.repo.id());
    assert_eq!(repo.list_keys().unwrap().len(), 1);
}

#[test]
fn empty_passwords_are_refused() {
    let loc = fresh_location("empty-password").unwrap();
    let e = Repository::init(storage(&loc), "", &fast_init(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("password"), "{e}");
    assert!(
        storage(&loc).list("").unwrap().is_empty(),
        "nothing written"
    );
    let t = test_repo("empty-new-password");
    assert_eq!(
        t.repo.add_key("", fast_kdf()).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        t.repo.change_password("", fast_kdf()).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(t.repo.list_keys().unwrap().len(), 1);
}

#[test]
fn restore_into_a_non_empty_directory_needs_overwrite() {
    let t = test_repo("overwrite");
    let (_s, src) = temp_sub("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("dir/file"), b"from the snapshot").unwrap();
    std::fs::write(src.join("plain"), b"plain").unwrap();
    let r = backup_dir(&t.repo, &src);
    let (_d, dst) = temp_sub("dst");
    std::fs::write(dst.join("dir"), b"a file where a directory goes").unwrap();
    std::fs::write(dst.join("plain"), b"old content, longer than the new").unwrap();
    std::fs::write(dst.join("unrelated"), b"stays").unwrap();

    let e = restore(&t.repo, &r.snapshot.tree, &restore_opts(&dst)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(
        e.to_string().contains("not empty") && e.to_string().contains("--overwrite"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dst.join("plain")).unwrap(),
        b"old content, longer than the new"
    );

    let stats = restore(
        &t.repo,
        &r.snapshot.tree,
        &RestoreOptions {
            overwrite: true,
            ..restore_opts(&dst)
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!(
        std::fs::read(dst.join("dir/file")).unwrap(),
        b"from the snapshot"
    );
    assert_eq!(std::fs::read(dst.join("plain")).unwrap(), b"plain");
    assert_eq!(std::fs::read(dst.join("unrelated")).unwrap(), b"stays");
}

#[test]
fn keys_add_list_remove_and_change_password() {
    let t = test_repo("keys");
    let second = t.repo.add_key("second password", fast_kdf()).unwrap();
    let cache = t.cache.path();
    let by_second =
        Repository::open(t.storage().unwrap(), "second password", &open_opts(cache)).unwrap();
    let keys = by_second.list_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.id == second && k.current));
    assert!(keys.iter().any(|k| k.id != second && !k.current));

    // The key a handle opened with cannot be removed through it.
    assert_eq!(
        by_second.remove_key(&second).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        by_second
            .remove_key("ffffffffffffffff-none")
            .unwrap_err()
            .kind(),
        ErrorKind::Usage
    );
    // Removing the first key locks its password out.
    let first = keys.iter().find(|k| !k.current).unwrap().id.clone();
    assert_eq!(by_second.remove_key(&first[..8]).unwrap(), first);
    let e = Repository::open(t.storage().unwrap(), PASSWORD, &open_opts(cache)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassword);

    // passwd replaces the key it opened with.
    let third = by_second
        .change_password("third password", fast_kdf())
        .unwrap();
    let e =
        Repository::open(t.storage().unwrap(), "second password", &open_opts(cache)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongPassword);
    let by_third =
        Repository::open(t.storage().unwrap(), "third password", &open_opts(cache)).unwrap();
    let keys = by_third.list_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, third);
    assert_eq!(
        by_third.id(),
        t.repo.id(),
        "same master key, same repository"
    );
}

#[test]
fn snapshot_specs_are_checked() {
    let t = test_repo("specs");
    let none = SnapshotFilter::default();
    assert_eq!(
        t.repo.find_snapshot("latest", &none).unwrap_err().kind(),
        ErrorKind::Usage
    );
    let (_s, src) = temp_sub("src");
    std::fs::write(src.join("f"), b"f").unwrap();
    let r = backup_dir(&t.repo, &src);
    assert_eq!(t.repo.find_snapshot("latest", &none).unwrap().0, r.id);
    assert_eq!(
        t.repo.find_snapshot(&r.id.to_hex()[..6], &none).unwrap().0,
        r.id
    );
    assert_eq!(
        t.repo.find_snapshot("abc", &none).unwrap_err().kind(),
        ErrorKind::Usage
    );
    assert_eq!(
        t.repo.find_snapshot("zzzzzz", &none).unwrap_err().kind(),
        ErrorKind::Usage
    );
    let other_source = SnapshotFilter {
        source: Some("elsewhere".into()),
        ..Default::default()
    };
    assert!(t.repo.find_snapshot("latest", &other_source).is_err());
}

#[test]
fn backup_of_a_missing_path_is_an_io_error() {
    let t = test_repo("missing-path");
    let e = cairn_core::backup::backup(
        &t.repo,
        &cairn_core::backup::BackupOptions {
            paths: vec!["/nonexistent/cairn/path".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("/nonexistent/cairn/path"), "{e}");
}
