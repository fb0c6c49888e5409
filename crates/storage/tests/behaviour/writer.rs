//! Objects streamed through `Storage::writer`: invisible until closed, then
//! whole; nothing left by a writer dropped unclosed; and every layer of the
//! stack (counting, fault injection, retry) sees them, on the backend
//! `CAIRN_TEST_BACKEND` names, fs included.

use super::support::{open_fresh, pattern, test_options};
use cairn_storage::testing::fresh_location;
use cairn_storage::{
    open_backend, wrap, CountingStorage, FaultPlan, FaultRates, FaultStorage, OpKind, Storage,
    StorageErrorKind,
};
use std::sync::Arc;

/// Writes `data` through a writer in uneven pieces.
fn stream(w: &mut dyn cairn_storage::ObjectWriter, data: &[u8]) {
    for piece in data.chunks(300_007) {
        w.write(piece).unwrap();
    }
}

/// Files in the fs staging folder, when there is one.
fn staged(loc: &cairn_storage::testing::TestLocation) -> usize {
    loc.local_root()
        .and_then(|root| std::fs::read_dir(cairn_storage::staging_dir(root)).ok())
        .map_or(0, |rd| rd.count())
}

#[test]
fn a_streamed_object_is_invisible_until_closed_and_then_whole() {
    let (loc, s) = open_fresh("writer-roundtrip");
    let data = pattern(11, 5 * 1024 * 1024 + 333);
    let mut w = s.clone().writer(data.len()).unwrap();
    stream(&mut *w, &data);
    assert_eq!(w.len(), data.len() as u64);
    assert!(
        s.list("").unwrap().is_empty(),
        "nothing visible before close"
    );
    w.close("packs/ab/streamed").unwrap();
    assert_eq!(s.read("packs/ab/streamed").unwrap(), data);
    assert_eq!(s.stat("packs/ab/streamed").unwrap().size, data.len() as u64);
    // A close repeated after success (a retry whose answer was lost) is harmless.
    w.close("packs/ab/streamed").unwrap();
    assert_eq!(s.read("packs/ab/streamed").unwrap(), data);
    drop(w);

    let mut abandoned = s.clone().writer(1 << 20).unwrap();
    stream(&mut *abandoned, &pattern(12, 3 * 1024 * 1024));
    drop(abandoned);
    let listed: Vec<String> = s.list("").unwrap().into_iter().map(|o| o.path).collect();
    assert_eq!(listed, vec!["packs/ab/streamed".to_string()]);
    assert_eq!(staged(&loc), 0, "no staging file left behind");

    let mut empty = s.clone().writer(0).unwrap();
    empty.close("gc/empty").unwrap();
    assert_eq!(s.stat("gc/empty").unwrap().size, 0);
}

#[test]
fn counting_and_fault_layers_see_streamed_objects() {
    let loc = fresh_location("writer-layers").unwrap();
    let opts = test_options();
    let backend = open_backend(loc.location(), &opts).unwrap();
    let counting = Arc::new(CountingStorage::new(backend));
    let fault = Arc::new(FaultStorage::new(counting.clone(), FaultPlan::new(1)));
    let data = pattern(13, 2 * 1024 * 1024 + 5);

    // Counted: one write of the object's bytes, under its folder.
    let mut w = fault.clone().writer(data.len()).unwrap();
    stream(&mut *w, &data);
    w.close("packs/cd/counted").unwrap();
    let counts = counting.snapshot();
    assert_eq!(counts.prefix("packs").write, 1);
    assert_eq!(counts.bytes_up, data.len() as u64);
    assert_eq!(counts.all.total(), 1, "appends are not requests");

    // A faulted close fails, leaves nothing, and a retried one lands whole.
    fault.set_plan(FaultPlan::new(2).with_op(
        OpKind::Write,
        FaultRates {
            error: 1.0,
            ..FaultRates::default()
        },
    ));
    let mut w = fault.clone().writer(data.len()).unwrap();
    stream(&mut *w, &data);
    let e = w.close("packs/cd/faulted").unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::Temporary, "{e}");
    assert!(e.op.contains("packs/cd/faulted"), "{e}");
    assert!(fault.read("packs/cd/faulted").unwrap_err().is_not_found());
    fault.disarm();
    w.close("packs/cd/faulted").unwrap();
    assert_eq!(fault.read("packs/cd/faulted").unwrap(), data);

    // Under the production retry layer, faulted closes are retried.
    fault.set_plan(FaultPlan::new(3).with_op(
        OpKind::Write,
        FaultRates {
            error: 0.2,
            timeout: 0.1,
            short_read: 0.0,
        },
    ));
    let stack = wrap(fault.clone(), &opts);
    for i in 0..6 {
        let mut w = stack.clone().writer(data.len()).unwrap();
        stream(&mut *w, &data);
        w.close(&format!("packs/ef/retried-{i}")).unwrap();
    }
    assert!(fault.stats().injected() > 0, "{:?}", fault.stats());
    fault.disarm();
    for i in 0..6 {
        assert_eq!(stack.read(&format!("packs/ef/retried-{i}")).unwrap(), data);
    }
    assert_eq!(staged(&loc), 0, "no staging file left behind");
}

#[test]
fn sweep_abandoned_removes_what_a_killed_writer_left_only_after_the_cutoff() {
    use std::time::{Duration, SystemTime};
    let (loc, s) = open_fresh("writer-sweep");
    s.write("config", pattern(1, 10)).unwrap();
    let Some(root) = loc.local_root() else {
        // Object stores leave nothing to sweep.
        let swept = s.sweep_abandoned(SystemTime::now(), false).unwrap();
        assert_eq!((swept.files, swept.bytes), (0, 0));
        return;
    };
    let leftover = cairn_storage::staging_dir(root).join("obj-dead.tmp");
    std::fs::write(&leftover, vec![5u8; 777]).unwrap();
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(s.sweep_abandoned(past, false).unwrap().files, 0);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let dry = s.sweep_abandoned(future, true).unwrap();
    assert_eq!((dry.files, dry.bytes), (1, 777));
    assert!(leftover.exists());
    assert_eq!(s.sweep_abandoned(future, false).unwrap(), dry);
    assert!(!leftover.exists());
    assert_eq!(
        s.read("config").unwrap(),
        pattern(1, 10),
        "objects untouched"
    );
}
