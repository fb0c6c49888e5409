//! Damaged key files, headers and configs: each is blamed on itself, with
//! what to do; argon2 parameters are bounded before anything is derived;
//! key files written before key ids were content hashes still open.

use crate::support::*;
use bytes::Bytes;
use cairn_core::crypto::KDF_MAX_MEMORY_KIB;
use cairn_core::format::key::{KEY_ID_HEX_LEN, LEGACY_KEY_ID_HEX_LEN};
use cairn_core::{ErrorKind, Repository};
use cairn_golden::repos;
use cairn_storage::DynStorage;
use std::path::Path;
use std::time::{Duration, Instant};

fn key_paths(s: &DynStorage) -> Vec<String> {
    names(s, "keys/").into_iter().collect()
}

/// `path` with `f` applied to its bytes.
fn alter(s: &DynStorage, path: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = s.read(path).unwrap().to_vec();
    f(&mut bytes);
    s.write(path, Bytes::from(bytes)).unwrap();
}

fn open_err(s: DynStorage, password: &str) -> cairn_core::Error {
    Repository::open(s, password, &Default::default()).unwrap_err()
}

#[test]
fn a_damaged_key_file_is_named_damaged_not_a_wrong_password() {
    let t = test_repo("key-damaged");
    let s = t.storage().unwrap();
    let [key] = key_paths(&s).try_into().unwrap();
    let id = key.trim_start_matches("keys/");
    assert_eq!(id.len(), KEY_ID_HEX_LEN, "new key ids are content hashes");
    let original = s.read(&key).unwrap();
    // Offsets (docs/FORMAT.md): memory cost's top byte (a 16 GiB
    // derivation before the bounds), iterations, salt, label, the sealed
    // master key's tag; then a truncated file.
    let len = original.len();
    for offset in [15, 16, 30, 70, len - 1] {
        alter(&s, &key, |b| b[offset] ^= 0x40);
        let started = Instant::now();
        let e = open_err(s.clone(), PASSWORD);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no long derivation"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt, "offset {offset}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&key) && msg.contains("damaged") && msg.contains("BLAKE3"),
            "{msg}"
        );
        assert!(msg.contains("restore the key file from a copy"), "{msg}");
        s.write(&key, original.clone()).unwrap();
    }
    alter(&s, &key, |b| b.truncate(50));
    let e = open_err(s.clone(), PASSWORD);
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    s.write(&key, original).unwrap();
    // A wrong password is still a wrong password.
    let e = open_err(s.clone(), "not it");
    assert_eq!(e.kind(), ErrorKind::WrongPassword, "{e}");
    Repository::open(s, PASSWORD, &Default::default()).expect("intact again");
}

#[test]
fn a_damaged_key_does_not_block_another_password_and_can_be_removed() {
    let t = test_repo("key-damaged-other");
    let second = t.repo.add_key("second password", fast_kdf()).unwrap();
    let s = t.storage().unwrap();
    let first = key_paths(&s)
        .into_iter()
        .find(|p| !p.ends_with(&second))
        .unwrap();
    alter(&s, &first, |b| b[40] ^= 1);
    let repo = Repository::open(s.clone(), "second password", &Default::default()).unwrap();
    let keys = repo.list_keys().unwrap();
    let damaged: Vec<_> = keys.iter().filter(|k| k.damaged.is_some()).collect();
    assert_eq!(damaged.len(), 1);
    assert!(first.ends_with(&damaged[0].id));
    assert!(damaged[0].damaged.as_ref().unwrap().contains("BLAKE3"));
    // The first password's key is the damaged one: named, not "wrong".
    let e = open_err(s.clone(), PASSWORD);
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    repo.remove_key(&damaged[0].id[..12]).unwrap();
    assert_eq!(key_paths(&s).len(), 1);
    // With no damaged key left, the first password is simply wrong.
    assert_eq!(open_err(s, PASSWORD).kind(), ErrorKind::WrongPassword);
}

/// A private copy of the golden `v1` repository, whose key file has a
/// random (legacy) id.
fn golden_copy() -> (tempfile::TempDir, DynStorage) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/repos/v1");
    repos::copy_dir(&src, &dir.path().join("repo")).unwrap();
    let s = cairn_storage::open(dir.path().join("repo").to_str().unwrap()).unwrap();
    (dir, s)
}

#[test]
fn legacy_key_files_open_beside_content_named_ones() {
    let (_dir, s) = golden_copy();
    let [legacy] = key_paths(&s).try_into().unwrap();
    assert_eq!(
        legacy.trim_start_matches("keys/").len(),
        LEGACY_KEY_ID_HEX_LEN
    );
    let repo = Repository::open(s.clone(), repos::PASSWORD, &Default::default()).unwrap();
    let added = repo.add_key("added later", fast_kdf()).unwrap();
    assert_eq!(added.len(), KEY_ID_HEX_LEN);
    for pw in [repos::PASSWORD, "added later"] {
        Repository::open(s.clone(), pw, &Default::default()).expect("opens");
    }
    // A legacy key carries no checksum: a flipped byte in its seal reads
    // as a wrong password, and the message says it may be damage.
    alter(&s, &legacy, |b| *b.last_mut().unwrap() ^= 1);
    let e = open_err(s.clone(), repos::PASSWORD);
    assert_eq!(e.kind(), ErrorKind::WrongPassword);
    assert!(e.to_string().contains("carry no checksum"), "{e}");
}

#[test]
fn argon2_parameters_over_the_maximum_are_refused_before_deriving() {
    // The legacy key's name vouches for nothing: only the bounds stand
    // between a flipped memory-cost byte and a 4 TiB allocation.
    let (_dir, s) = golden_copy();
    let [legacy] = key_paths(&s).try_into().unwrap();
    for (offset, value) in [
        (12, u32::MAX),
        (12, KDF_MAX_MEMORY_KIB + 1),
        (16, 1 << 24),
        (20, 1 << 16),
    ] {
        let original = s.read(&legacy).unwrap();
        alter(&s, &legacy, |b| {
            b[offset..offset + 4].copy_from_slice(&value.to_le_bytes())
        });
        let started = Instant::now();
        let e = open_err(s.clone(), repos::PASSWORD);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("exceed cairn's maximum"), "{e}");
        s.write(&legacy, original).unwrap();
    }
}

#[test]
fn a_damaged_header_id_is_blamed_on_the_header_and_the_repository_opens() {
    let t = test_repo("header-id");
    let s = t.storage().unwrap();
    alter(&s, "cairn.repository", |b| b[20] ^= 0x01);
    let repo = Repository::open(s.clone(), PASSWORD, &Default::default()).unwrap();
    let damage = repo.header_damage().expect("header damage reported");
    assert!(
        damage.contains("cairn.repository is damaged")
            && damage.contains(&repo.id().to_hex())
            && damage.contains("Restore cairn.repository"),
        "{damage}"
    );
    assert!(!damage.contains("config is damaged"));
    assert!(repo.repair_header().unwrap());
    let again = Repository::open(s, PASSWORD, &Default::default()).unwrap();
    assert_eq!(again.header_damage(), None);
}

#[test]
fn a_missing_or_garbled_header_does_not_lose_the_repository() {
    let t = test_repo("header-gone");
    let (_d, src) = temp_sub("src");
    std::fs::write(src.join("f"), b"kept").unwrap();
    backup_dir(&t.repo, &src);
    let s = t.storage().unwrap();
    let header = s.read("cairn.repository").unwrap();
    s.write("cairn.repository", Bytes::from_static(b"CAIRNREQ garbage"))
        .unwrap();
    let repo = Repository::open(s.clone(), PASSWORD, &Default::default()).unwrap();
    assert!(repo
        .header_damage()
        .unwrap()
        .contains("damaged or not cairn's"));
    s.delete("cairn.repository").unwrap();
    let repo = Repository::open(s.clone(), PASSWORD, &Default::default()).unwrap();
    assert!(repo
        .header_damage()
        .unwrap()
        .contains("no cairn.repository"));
    assert_eq!(repo.list_snapshots().unwrap().len(), 1);
    // `cairn init` there would have deleted the key files as leftovers of
    // a killed init.
    let e = Repository::init(s.clone(), PASSWORD, &fast_init(), &Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotARepository, "{e}");
    assert!(e.to_string().contains("refusing to init"), "{e}");
    assert_eq!(key_paths(&s).len(), 1);
    assert!(repo.repair_header().unwrap());
    assert_eq!(s.read("cairn.repository").unwrap(), header);
}

#[test]
fn a_damaged_config_is_blamed_on_the_config_with_what_to_do() {
    let t = test_repo("config-damaged");
    let s = t.storage().unwrap();
    alter(&s, "config", |b| b[30] ^= 0x01);
    let e = open_err(s, PASSWORD);
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let msg = e.to_string();
    assert!(
        msg.contains("corrupt object config") && msg.contains("restore it from a copy"),
        "{msg}"
    );
}

/// The first backups of a namespace each create its repository when the location is empty:
/// of several inits racing on one location exactly one creates it, every other one reports
/// that it exists (and then opens it), and the repository has one key and one identity.
#[test]
fn of_inits_racing_on_an_empty_location_exactly_one_creates_the_repository() {
    for round in 0..3 {
        let loc = cairn_storage::testing::fresh_location(&format!("init-race-{round}")).unwrap();
        let contenders = 6;
        let barrier = std::sync::Barrier::new(contenders);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..contenders)
                .map(|_| {
                    let (loc, barrier) = (&loc, &barrier);
                    scope.spawn(move || {
                        let s = storage(loc);
                        barrier.wait();
                        Repository::init(s, PASSWORD, &fast_init(), &Default::default())
                            .map(|r| r.id())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(created.len(), 1, "round {round}: {results:?}");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.kind(), ErrorKind::NotARepository, "round {round}: {e}");
            assert!(e.to_string().contains("already"), "{e}");
        }
        let s = storage(&loc);
        assert_eq!(key_paths(&s).len(), 1, "round {round}: one key file");
        assert!(
            names(&s, "init/").is_empty(),
            "round {round}: no claim left"
        );
        let repo = Repository::open(s, PASSWORD, &Default::default()).unwrap();
        assert_eq!(
            &repo.id(),
            created[0],
            "round {round}: the winner's repository"
        );
    }
}
