//! A repository behind an S3 endpoint whose TLS certificate a private CA issued (issue 24,
//! what KDMP's `SSL_CERT_DIR=/etc/tls-s3-cert` is for). The test makes a CA and a server
//! certificate (rcgen), puts a TLS front (tokio-rustls) before the test's S3 server (moto,
//! `.ci/s3.sh`), and shows: without the CA, a clear "not trusted" error that is not retried;
//! with `SSL_CERT_DIR` naming a directory holding the CA, init, backup and restore work;
//! a CA file that is not PEM is named. Runs in CI's S3 pass (`CAIRN_TEST_BACKEND=s3`).

use cairn_storage::testing::TestBackend;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::rustls;

const PASSWORD: &str = "private-ca";

/// A CA certificate (PEM) and the TLS server configuration of a certificate it issued
/// for 127.0.0.1 and localhost.
fn private_ca() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cairn test private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "cairn test S3 endpoint");
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .expect("TLS server configuration");
    (ca_cert.pem(), config)
}

/// A TLS endpoint on a loopback port that forwards every connection to `upstream`
/// (`host:port`), stopped with its runtime on drop.
struct TlsFront {
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(config: rustls::ServerConfig, upstream: String) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // A client that refuses our certificate ends the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            port,
            _runtime: runtime,
        }
    }
}

/// `host:port` of an `http://host:port` endpoint.
fn authority(endpoint: &str) -> String {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

struct Fixture {
    tmp: tempfile::TempDir,
    location: String,
}

impl Fixture {
    /// Runs `cairn args` with the CA variables `ca` sets (none of the process's own: the
    /// test machine's SSL_CERT_FILE must not decide the outcome).
    fn cairn(&self, args: &[&str], ca: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args)
            .env("CAIRN_REPOSITORY", &self.location)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.tmp.path().join("cache"))
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path());
        for (name, value) in ca {
            cmd.env(name, value);
        }
        cmd.output().expect("run cairn")
    }

    fn ok(&self, args: &[&str], ca: &[(&str, &Path)]) -> String {
        let out = self.cairn(args, ca);
        assert!(
            out.status.success(),
            "cairn {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str], ca: &[(&str, &Path)]) -> String {
        let out = self.cairn(args, ca);
        assert!(!out.status.success(), "cairn {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn s3_endpoint_with_a_private_ca() {
    let TestBackend::S3 { endpoint, bucket } = TestBackend::from_env().expect("test backend")
    else {
        eprintln!("skipping: needs the S3 test server (CAIRN_TEST_BACKEND=s3, .ci/s3.sh)");
        return;
    };
    let (ca_pem, config) = private_ca();
    let front = TlsFront::start(config, authority(&endpoint));
    let tmp = tempfile::tempdir().expect("tmp");
    let unique = format!(
        "tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let f = Fixture {
        location: format!(
            "s3://{bucket}/cairn-test/{unique}/?endpoint=https://127.0.0.1:{}&region=us-east-1",
            front.port
        ),
        tmp,
    };
    // As KDMP mounts it: the CA among other files of a Secret volume.
    let certs = f.tmp.path().join("tls-s3-cert");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("ca.crt"), &ca_pem).expect("write CA");
    std::fs::write(certs.join("README"), "not a certificate, not read").expect("write");
    let with_ca: &[(&str, &Path)] = &[("SSL_CERT_DIR", &certs)];

    // Without the CA: refused at once (no retries), saying what to set.
    let started = Instant::now();
    let err = f.fails(&["init"], &[]);
    assert!(err.contains("not trusted"), "{err}");
    assert!(err.contains("SSL_CERT_DIR"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "an untrusted certificate was retried: {:?}",
        started.elapsed()
    );

    // A CA file that is not PEM is named.
    let bad = f.tmp.path().join("bad-ca.pem");
    std::fs::write(&bad, "this is no certificate\n").expect("write");
    let err = f.fails(&["init"], &[("SSL_CERT_FILE", &bad)]);
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("not a PEM"), "{err}");

    // With the CA: the whole round trip.
    f.ok(&["init"], with_ca);
    let src = f.tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).expect("mkdir");
    let data = crate::common::xorshift_bytes(7, 300_000);
    std::fs::write(src.join("dir/data.bin"), &data).expect("write");
    std::fs::write(src.join("hello.txt"), b"through a private CA\n").expect("write");
    f.ok(&["backup", &src.to_string_lossy()], with_ca);
    let target: PathBuf = f.tmp.path().join("restored");
    f.ok(
        &["restore", "latest", "--target", &target.to_string_lossy()],
        with_ca,
    );
    let restored = |rel: &str| -> Vec<u8> {
        let direct = target.join(rel);
        let nested = target.join(src.strip_prefix("/").unwrap_or(&src)).join(rel);
        std::fs::read(&direct)
            .or_else(|_| std::fs::read(&nested))
            .unwrap_or_else(|e| panic!("{rel} not restored under {}: {e}", target.display()))
    };
    assert_eq!(restored("dir/data.bin"), data);
    assert_eq!(restored("hello.txt"), b"through a private CA\n");
}
