//! The `Storage` contract, run against the backend `CAIRN_TEST_BACKEND`
//! chooses (`fs`, the default, or `s3` with `CAIRN_TEST_S3_ENDPOINT` and
//! `CAIRN_TEST_S3_BUCKET`; `.ci/s3.sh start` exports them). Every test gets
//! its own directory or prefix and goes through the production stack
//! (`open_with`).

mod behaviour {
    pub mod fs_atomicity;
    pub mod robustness;
    pub mod support;
    pub mod writer;
}

use behaviour::support::{open_fresh, pattern};
use bytes::Bytes;
use cairn_storage::{ObjectInfo, Storage, StorageErrorKind};
use std::collections::BTreeMap;
use std::sync::Arc;

fn sorted(mut v: Vec<ObjectInfo>) -> Vec<ObjectInfo> {
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

fn info(path: &str, size: u64) -> ObjectInfo {
    ObjectInfo {
        path: path.to_string(),
        size,
    }
}

#[test]
fn write_then_read_returns_the_same_bytes() {
    let (_loc, s) = open_fresh("roundtrip");
    let data = pattern(1, 100_000);
    s.write("packs/ab/ab01", data.clone()).unwrap();
    assert_eq!(s.read("packs/ab/ab01").unwrap(), data);
}

#[test]
fn range_reads_return_exactly_the_requested_bytes() {
    let (_loc, s) = open_fresh("range");
    let data = pattern(2, 4096);
    s.write("packs/00/p", data.clone()).unwrap();
    for range in [0..1, 0..4096, 100..200, 4095..4096, 1000..1000] {
        let got = s.read_range("packs/00/p", range.clone()).unwrap();
        assert_eq!(
            got,
            data.slice(range.start as usize..range.end as usize),
            "{range:?}"
        );
    }
}

#[test]
fn a_range_past_the_end_fails_without_retrying_forever() {
    let (_loc, s) = open_fresh("range-past-end");
    s.write("packs/00/p", pattern(3, 100)).unwrap();
    let e = s.read_range("packs/00/p", 50..150).unwrap_err();
    assert!(!e.is_temporary(), "{e}");
    assert!(!e.is_not_found(), "{e}");
}

#[test]
fn list_is_recursive_with_real_sizes_and_no_folders() {
    let (_loc, s) = open_fresh("list");
    let objects = [
        ("packs/ab/ab01", 10),
        ("packs/ab/ab02", 2000),
        ("packs/cd/cd01", 1),
        ("index/i1", 333),
        ("snapshots/s1", 44),
        ("config", 92),
    ];
    for (i, (path, len)) in objects.iter().enumerate() {
        s.write(path, pattern(i as u8, *len)).unwrap();
    }
    assert_eq!(
        sorted(s.list("packs/").unwrap()),
        vec![
            info("packs/ab/ab01", 10),
            info("packs/ab/ab02", 2000),
            info("packs/cd/cd01", 1)
        ]
    );
    assert_eq!(s.list("index/").unwrap(), vec![info("index/i1", 333)]);
    let all = sorted(s.list("").unwrap());
    let mut expected: Vec<ObjectInfo> = objects.iter().map(|(p, l)| info(p, *l as u64)).collect();
    expected.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(all, expected);
}

#[test]
fn a_listing_longer_than_one_page_returns_every_object() {
    // S3 pages listings by 1000 keys.
    let (_loc, s) = open_fresh("list-pages");
    let threads = 4;
    let per_thread = 260;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let s = Arc::clone(&s);
            scope.spawn(move || {
                for i in 0..per_thread {
                    s.write(&format!("index/{t}-{i:04}"), pattern(t as u8, 1 + i % 7))
                        .unwrap();
                }
            });
        }
    });
    let listed = s.list("index/").unwrap();
    assert_eq!(listed.len(), threads * per_thread);
    let total: u64 = listed.iter().map(|o| o.size).sum();
    let expected: u64 = (0..per_thread).map(|i| (1 + i % 7) as u64).sum::<u64>() * threads as u64;
    assert_eq!(total, expected);
}

#[test]
fn listing_a_folder_never_written_is_empty() {
    let (_loc, s) = open_fresh("list-empty");
    assert_eq!(s.list("locks/").unwrap(), Vec::new());
    s.write("keys/k1", pattern(0, 10)).unwrap();
    assert_eq!(s.list("locks/").unwrap(), Vec::new());
}

#[test]
fn stat_reports_size_and_missing_objects_are_not_found() {
    let (_loc, s) = open_fresh("stat");
    s.write("index/i", pattern(4, 1234)).unwrap();
    assert_eq!(s.stat("index/i").unwrap(), info("index/i", 1234));
    for e in [
        s.stat("index/missing").unwrap_err(),
        s.read("index/missing").unwrap_err(),
        s.read_range("index/missing", 0..10).unwrap_err(),
        s.stat("index").unwrap_err(),
    ] {
        assert_eq!(e.kind, StorageErrorKind::NotFound, "{e}");
        assert!(e.op.contains("index"), "the error names the object: {e}");
    }
}

#[test]
fn delete_removes_and_is_idempotent() {
    let (_loc, s) = open_fresh("delete");
    s.write("locks/l", pattern(5, 10)).unwrap();
    s.delete("locks/l").unwrap();
    assert!(s.read("locks/l").unwrap_err().is_not_found());
    s.delete("locks/l").unwrap();
    s.delete("locks/never-existed").unwrap();
    assert_eq!(s.list("locks/").unwrap(), Vec::new());
}

#[test]
fn overwrite_replaces_the_whole_object() {
    let (_loc, s) = open_fresh("overwrite");
    s.write("config", pattern(6, 5000)).unwrap();
    let shorter = pattern(7, 10);
    s.write("config", shorter.clone()).unwrap();
    assert_eq!(s.read("config").unwrap(), shorter);
    assert_eq!(s.stat("config").unwrap().size, 10);
}

#[test]
fn empty_objects_exist_with_size_zero() {
    let (_loc, s) = open_fresh("empty");
    s.write("gc/empty", Bytes::new()).unwrap();
    assert_eq!(s.read("gc/empty").unwrap(), Bytes::new());
    assert_eq!(s.stat("gc/empty").unwrap(), info("gc/empty", 0));
    assert_eq!(s.list("gc/").unwrap(), vec![info("gc/empty", 0)]);
}

#[test]
fn a_large_object_over_16_mib_round_trips() {
    let (_loc, s) = open_fresh("large");
    let len = 17 * 1024 * 1024 + 3;
    let data = pattern(8, len);
    s.write("packs/ff/big", data.clone()).unwrap();
    assert_eq!(s.stat("packs/ff/big").unwrap().size, len as u64);
    assert_eq!(
        s.list("packs/").unwrap(),
        vec![info("packs/ff/big", len as u64)]
    );
    let tail = (len as u64 - 1000)..(len as u64);
    assert_eq!(
        s.read_range("packs/ff/big", tail.clone()).unwrap(),
        data.slice(tail.start as usize..)
    );
    assert!(s.read("packs/ff/big").unwrap() == data);
}

#[test]
fn concurrent_writers_from_threads_all_land() {
    let (_loc, s) = open_fresh("concurrent");
    let threads = 8;
    let per_thread = 6;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let s = Arc::clone(&s);
            scope.spawn(move || {
                for i in 0..per_thread {
                    let path = format!("packs/{t:02}/obj{i}");
                    s.write(&path, pattern((t * 16 + i) as u8, 1000 + t * 10 + i))
                        .unwrap();
                }
                // Everyone also races on one shared name.
                s.write("snapshots/shared", pattern(t as u8, 5000)).unwrap();
            });
        }
    });
    let listed: BTreeMap<String, u64> = s
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|o| (o.path, o.size))
        .collect();
    assert_eq!(listed.len(), threads * per_thread);
    for t in 0..threads {
        for i in 0..per_thread {
            let path = format!("packs/{t:02}/obj{i}");
            assert_eq!(listed[&path], (1000 + t * 10 + i) as u64);
            assert_eq!(
                s.read(&path).unwrap(),
                pattern((t * 16 + i) as u8, 1000 + t * 10 + i)
            );
        }
    }
    // The raced object is one writer's whole object, never a mix.
    let shared = s.read("snapshots/shared").unwrap();
    assert!(
        (0..threads).any(|t| shared == pattern(t as u8, 5000)),
        "the shared object is not any single writer's data"
    );
}

#[test]
fn location_names_the_repository_without_credentials() {
    let (loc, s) = open_fresh("location");
    let shown = s.location();
    if let Some(root) = loc.local_root() {
        assert_eq!(shown, root.display().to_string());
    } else {
        assert!(shown.starts_with("s3://"), "{shown}");
    }
    assert!(!shown.contains('@'), "userinfo in {shown}");
    if let Some((_, query)) = shown.split_once('?') {
        for pair in query.split('&') {
            assert!(
                pair.starts_with("endpoint="),
                "unexpected option shown: {shown}"
            );
        }
    }
}

#[test]
fn each_call_costs_the_documented_requests_on_the_wire() {
    use cairn_storage::{HttpCounts, Location, OpendalStorage};
    let loc = cairn_storage::testing::fresh_location("wire").unwrap();
    let s = Arc::new(
        OpendalStorage::open(
            &Location::parse(loc.location()).unwrap(),
            &behaviour::support::test_options(),
        )
        .unwrap(),
    );
    let is_http = loc.local_root().is_none();
    let step = |f: &dyn Fn()| {
        let before = s.http_requests();
        f();
        let after = s.http_requests();
        HttpCounts {
            get: after.get - before.get,
            put: after.put - before.put,
            head: after.head - before.head,
            delete: after.delete - before.delete,
            list: after.list - before.list,
            multipart: after.multipart - before.multipart,
            other: after.other - before.other,
        }
    };
    let one = |field: fn(&mut HttpCounts) -> &mut u64| {
        let mut c = HttpCounts::default();
        if is_http {
            *field(&mut c) = 1;
        }
        c
    };
    let big = pattern(1, 17 * 1024 * 1024);
    // A 17 MiB pack is one PUT, not a multipart upload.
    assert_eq!(
        step(&|| s.write("packs/aa/big", big.clone()).unwrap()),
        one(|c| &mut c.put)
    );
    assert_eq!(
        step(&|| drop(s.read_range("packs/aa/big", 5..500).unwrap())),
        one(|c| &mut c.get)
    );
    assert_eq!(
        step(&|| drop(s.read("packs/aa/big").unwrap())),
        one(|c| &mut c.get)
    );
    assert_eq!(
        step(&|| drop(s.stat("packs/aa/big").unwrap())),
        one(|c| &mut c.head)
    );
    assert_eq!(
        step(&|| s.delete("packs/aa/big").unwrap()),
        one(|c| &mut c.delete)
    );
    // A listing costs one request per 1000 keys.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = Arc::clone(&s);
            scope.spawn(move || {
                for i in 0..251 {
                    s.write(&format!("index/{t}-{i:03}"), pattern(2, 10))
                        .unwrap();
                }
            });
        }
    });
    let listing = step(&|| assert_eq!(s.list("index/").unwrap().len(), 1004));
    let mut expected = HttpCounts::default();
    if is_http {
        expected.list = 2;
    }
    assert_eq!(listing, expected);
}
