//! Unreachable or silent servers, missing buckets, refused or missing
//! credentials, and injected faults on the real backend: every failure is
//! a clear error within the timeout, and no failure leaves a partial object.

use super::support::{pattern, test_options, Blackhole, CannedHttp};
use bytes::Bytes;
use cairn_storage::testing::{fresh_location, TestBackend};
use cairn_storage::{
    open_backend, open_with, open_with_credentials, wrap, Credentials, FaultPlan, FaultRates,
    FaultStorage, OpKind, Storage, StorageErrorKind, StorageOptions,
};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn an_unreachable_endpoint_gives_a_temporary_error_naming_it() {
    let opts = StorageOptions {
        retries: 2,
        ..test_options()
    };
    let s = open_with(
        "s3://cairn/p?endpoint=http://127.0.0.1:1&region=us-east-1&anonymous=true",
        &opts,
    )
    .unwrap();
    let e = s.read("cairn.repository").unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::Temporary, "{e}");
    assert!(e.op.contains("cairn.repository"), "{e}");
    assert!(e.message.contains("127.0.0.1:1"), "{e}");
    assert!(e.message.contains("reachable"), "{e}");
    assert!(e.message.contains("gave up after 3 attempts"), "{e}");
}

#[test]
fn a_server_that_never_answers_times_out_instead_of_hanging() {
    let hole = Blackhole::start();
    let opts = StorageOptions {
        retries: 1,
        timeout: Duration::from_millis(300),
        io_timeout: Duration::from_millis(300),
        ..test_options()
    };
    let s = open_with(
        &format!(
            "s3://cairn/p?endpoint=http://{}&region=us-east-1&anonymous=true",
            hole.addr
        ),
        &opts,
    )
    .unwrap();
    for e in [
        s.read("config").unwrap_err(),
        s.list("index/").unwrap_err(),
        s.write("index/x", Bytes::from_static(b"x")).unwrap_err(),
    ] {
        assert_eq!(e.kind, StorageErrorKind::Temporary, "{e}");
        assert!(e.message.contains("timed out after 300ms"), "{e}");
        assert!(e.message.contains("gave up after 2 attempts"), "{e}");
    }
}

const NO_SUCH_BUCKET: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket\
    </Code><Message>The specified bucket does not exist</Message></Error>";

#[test]
fn a_missing_bucket_is_named_in_the_error_for_every_operation() {
    // On the S3 backend the real server answers; otherwise a canned one
    // answers as S3 does.
    let canned;
    let (endpoint, bucket) = match TestBackend::from_env().unwrap() {
        TestBackend::S3 { endpoint, .. } => {
            (endpoint, format!("cairn-missing-{}", std::process::id()))
        }
        TestBackend::Fs => {
            canned = CannedHttp::start("404 Not Found", NO_SUCH_BUCKET);
            (canned.endpoint(), "cairn-missing".to_string())
        }
    };
    let s = open_with(
        &format!("s3://{bucket}/repo?endpoint={endpoint}&region=us-east-1&anonymous=true"),
        &test_options(),
    )
    .unwrap();
    // Stats and deletes cannot tell: a HEAD answer has no body to name the
    // bucket, and a delete of anything missing succeeds. Opening a
    // repository reads its header first, which does tell.
    for e in [
        s.read("cairn.repository").unwrap_err(),
        s.list("index/").unwrap_err(),
        s.write("keys/k", Bytes::from_static(b"k")).unwrap_err(),
    ] {
        assert_eq!(e.kind, StorageErrorKind::InvalidConfig, "{e}");
        assert!(
            e.message
                .contains(&format!("bucket \"{bucket}\" does not exist")),
            "{e}"
        );
    }
}

#[test]
fn refused_credentials_say_what_to_check() {
    let server = CannedHttp::start(
        "403 Forbidden",
        "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided \
         does not exist in our records.</Message></Error>",
    );
    let s = open_with(
        &format!(
            "s3://cairn/repo?endpoint={}&region=us-east-1&anonymous=true",
            server.endpoint()
        ),
        &test_options(),
    )
    .unwrap();
    let e = s.read("cairn.repository").unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("AWS_ACCESS_KEY_ID"), "{e}");
    assert!(e.message.contains("InvalidAccessKeyId"), "{e}");
}

const CHILD_ENDPOINT_ENV: &str = "CAIRN_TEST_CHILD_ENDPOINT";

/// Runs in a child process with an empty environment (see below).
#[test]
#[ignore = "helper: run by missing_credentials_give_a_clear_error in a clean environment"]
fn child_reads_without_credentials() {
    let endpoint = std::env::var(CHILD_ENDPOINT_ENV).expect("endpoint from the parent test");
    let s = open_with(
        &format!("s3://cairn/repo?endpoint={endpoint}&region=us-east-1"),
        &test_options(),
    )
    .unwrap();
    let e = s.read("cairn.repository").unwrap_err();
    println!("CHILD-RESULT kind={:?} message={}", e.kind, e);
}

#[test]
fn missing_credentials_give_a_clear_error() {
    // Credentials are read from the process environment, so the check runs
    // in a child process whose environment holds none.
    let server = CannedHttp::start("200 OK", "");
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "behaviour::robustness::child_reads_without_credentials",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(CHILD_ENDPOINT_ENV, server.endpoint())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-RESULT").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(line.contains("kind=PermissionDenied"), "{line}");
    assert!(line.contains("no valid credential"), "{line}");
    assert!(line.contains("AWS_ACCESS_KEY_ID"), "{line}");
}

const CHILD_WRONG_KEY: &str = "AKIDFROMTHEENVIRONMENT";
const PASSED_KEY: &str = "AKIDPASSEDBYTHECALLER";

/// Runs in a child process whose environment holds no credentials or wrong ones (see
/// below): reads with credentials passed to `open_with_credentials`.
#[test]
#[ignore = "helper: run by passed_credentials_are_used_over_the_environment"]
fn child_reads_with_passed_credentials() {
    let endpoint = std::env::var(CHILD_ENDPOINT_ENV).expect("endpoint from the parent test");
    let credentials = Credentials::new(
        [
            ("AWS_ACCESS_KEY_ID", PASSED_KEY),
            ("AWS_SECRET_ACCESS_KEY", "passed-secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let s = open_with_credentials(
        &format!("s3://cairn/repo?endpoint={endpoint}&region=us-east-1"),
        &test_options(),
        &credentials,
    )
    .unwrap();
    let result = s.read("cairn.repository");
    println!("CHILD-RESULT ok={}", result.is_ok());
}

#[test]
fn passed_credentials_are_used_over_the_environment() {
    // What the process environment holds is the point, so each case runs in a child
    // process with an environment of its own.
    for wrong in [false, true] {
        let server = CannedHttp::start("200 OK", "");
        let home = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "behaviour::robustness::child_reads_with_passed_credentials",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("HOME", home.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(CHILD_ENDPOINT_ENV, server.endpoint());
        if wrong {
            child
                .env("AWS_ACCESS_KEY_ID", CHILD_WRONG_KEY)
                .env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("CHILD-RESULT ok=true"),
            "environment with wrong keys: {wrong}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let heads = server.heads();
        assert!(!heads.is_empty(), "the child sent no request");
        for head in heads {
            assert!(
                head.contains(&format!("Credential={PASSED_KEY}/")),
                "not signed with the passed key: {head}"
            );
            assert!(!head.contains(CHILD_WRONG_KEY), "{head}");
        }
    }
}

/// The real backend under a fault injector, under the production wrappers.
fn faulty(
    name: &str,
    plan: FaultPlan,
    retries: u32,
) -> (
    cairn_storage::testing::TestLocation,
    Arc<FaultStorage>,
    cairn_storage::DynStorage,
    cairn_storage::DynStorage,
) {
    let loc = fresh_location(name).unwrap();
    let opts = StorageOptions {
        retries,
        ..test_options()
    };
    let fault = Arc::new(FaultStorage::new(
        open_backend(loc.location(), &opts).unwrap(),
        plan,
    ));
    let stack = wrap(fault.clone(), &opts);
    let clean = open_with(loc.location(), &opts).unwrap();
    (loc, fault, stack, clean)
}

#[test]
fn injected_faults_are_retried_and_every_object_arrives_whole() {
    let rates = FaultRates {
        error: 0.2,
        timeout: 0.1,
        short_read: 0.2,
    };
    let (_loc, fault, s, clean) = faulty("faults-retried", FaultPlan::new(7).with_rates(rates), 10);
    let objects: Vec<(String, Bytes)> = (0..30)
        .map(|i| {
            (
                format!("packs/{:02x}/p{i}", i % 4),
                pattern(i as u8, 3000 + i * 7),
            )
        })
        .collect();
    for (path, data) in &objects {
        s.write(path, data.clone()).unwrap();
    }
    for (path, data) in &objects {
        assert_eq!(&s.read(path).unwrap(), data);
        assert_eq!(
            s.read_range(path, 100..1100).unwrap(),
            data.slice(100..1100)
        );
        assert_eq!(s.stat(path).unwrap().size, data.len() as u64);
    }
    assert_eq!(s.list("packs/").unwrap().len(), objects.len());
    for (path, _) in &objects[..10] {
        s.delete(path).unwrap();
    }
    let stats = fault.stats();
    assert!(
        stats.errors > 0 && stats.timeouts > 0 && stats.short_reads > 0,
        "{stats:?}"
    );
    // What a clean client sees: exactly the surviving objects, whole.
    let mut listed = clean.list("packs/").unwrap();
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    let mut expected: Vec<_> = objects[10..]
        .iter()
        .map(|(p, d)| (p.clone(), d.len() as u64))
        .collect();
    expected.sort();
    assert_eq!(
        listed
            .into_iter()
            .map(|o| (o.path, o.size))
            .collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn exhausted_retries_fail_clearly_and_leave_no_partial_object() {
    let plan = FaultPlan::new(1)
        .with_op(
            OpKind::Write,
            FaultRates {
                error: 1.0,
                ..FaultRates::default()
            },
        )
        .with_op(
            OpKind::ReadRange,
            FaultRates {
                short_read: 1.0,
                ..FaultRates::default()
            },
        );
    let (_loc, fault, s, clean) = faulty("faults-exhausted", plan, 2);
    let e = s.write("snapshots/s1", pattern(1, 500)).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::Temporary);
    assert!(e.op.contains("snapshots/s1"), "{e}");
    assert!(e.message.contains("gave up after 3 attempts"), "{e}");
    assert!(clean.read("snapshots/s1").unwrap_err().is_not_found());
    assert_eq!(clean.list("snapshots/").unwrap(), Vec::new());

    clean.write("packs/00/p", pattern(2, 1000)).unwrap();
    let e = s.read_range("packs/00/p", 0..1000).unwrap_err();
    assert!(
        e.message.contains("short read: got 500 of 1000 bytes"),
        "{e}"
    );
    assert!(e.message.contains("gave up after 3 attempts"), "{e}");

    // The next run, without faults, succeeds.
    fault.disarm();
    s.write("snapshots/s1", pattern(1, 500)).unwrap();
    assert_eq!(clean.read("snapshots/s1").unwrap(), pattern(1, 500));
    assert_eq!(
        s.read_range("packs/00/p", 0..1000).unwrap(),
        pattern(2, 1000)
    );
}

#[test]
fn a_crash_countdown_stops_at_once_and_keeps_what_was_written() {
    let (_loc, fault, s, clean) = faulty("faults-crash", FaultPlan::new(3).fail_after(5), 6);
    let mut written = Vec::new();
    let mut failure = None;
    for i in 0..10 {
        let path = format!("index/seg{i}");
        match s.write(&path, pattern(i, 2000)) {
            Ok(()) => written.push(path),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("the countdown stops the writes");
    assert_eq!(e.kind, StorageErrorKind::Other, "not retried: {e}");
    assert_eq!(fault.stats().crashed, 1, "a crash is not retried");
    assert_eq!(written.len(), 5);
    let listed = clean.list("index/").unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|o| o.size == 2000));

    fault.disarm();
    s.write("index/seg5", pattern(5, 2000)).unwrap();
    assert_eq!(clean.list("index/").unwrap().len(), 6);
}
