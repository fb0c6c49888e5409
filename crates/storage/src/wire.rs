//! The HTTP client of the object-store backends: which certificate authorities it trusts
//! (the webpki roots plus the private ones `SSL_CERT_FILE` / `SSL_CERT_DIR` name), and
//! counting the requests an OpenDAL operator actually sends, so tests can hold what
//! docs/STORAGE.md promises per `Storage` call (one PUT per write, one ranged GET per range
//! read, one LIST per 1000 keys).

use crate::{Credentials, Result, StorageError, StorageErrorKind};
use opendal::raw::{HttpBody, HttpClient, HttpFetch};
use opendal::Buffer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// HTTP requests sent, by what they do. Zero for the filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    /// Object reads (GET without a listing query).
    pub get: u64,
    /// Whole-object uploads (PUT without a part number).
    pub put: u64,
    /// Metadata reads (HEAD).
    pub head: u64,
    /// Deletes (DELETE).
    pub delete: u64,
    /// Listing pages (GET with a listing query, PROPFIND).
    pub list: u64,
    /// Multipart upload steps (initiate, part, complete, abort).
    pub multipart: u64,
    /// Anything else (batch deletes, MKCOL, ...).
    pub other: u64,
}

impl HttpCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.delete + self.list + self.multipart + self.other
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    multipart: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> HttpCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpCounts {
            get: get(&self.get),
            put: get(&self.put),
            head: get(&self.head),
            delete: get(&self.delete),
            list: get(&self.list),
            multipart: get(&self.multipart),
            other: get(&self.other),
        }
    }

    fn record(&self, method: &str, query: &str) {
        let has = |key: &str| {
            query
                .split('&')
                .any(|pair| pair == key || pair.starts_with(&format!("{key}=")))
        };
        let slot = match method {
            _ if has("uploadId") || has("uploads") => &self.multipart,
            "GET" if has("list-type") || has("delimiter") || has("prefix") || has("comp") => {
                &self.list
            }
            "PROPFIND" => &self.list,
            "GET" => &self.get,
            "PUT" => &self.put,
            "HEAD" => &self.head,
            "DELETE" => &self.delete,
            _ => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// An HTTP client that counts each request, then sends it with OpenDAL's
/// default client.
pub(crate) struct CountingFetch {
    inner: HttpClient,
    counters: Arc<Counters>,
}

impl CountingFetch {
    /// A client that counts into `counters` and trusts the webpki roots plus the
    /// certificates `credentials` name (see [`private_roots`]).
    pub(crate) fn client(counters: Arc<Counters>, credentials: &Credentials) -> Result<HttpClient> {
        let roots = private_roots(credentials)?;
        let inner = if roots.is_empty() {
            HttpClient::default()
        } else {
            HttpClient::with(client_trusting(&roots, true).map_err(|e| {
                // The TLS library parses a certificate only now: find the file at fault.
                let culprit = roots
                    .iter()
                    .find(|r| client_trusting(std::slice::from_ref(r), false).is_err());
                match culprit {
                    Some(r) => tls_error(format!(
                        "{}: {} holds a certificate the TLS library refuses ({e}); replace it \
                         with the CA certificate in PEM form",
                        r.var,
                        r.file.display()
                    )),
                    None => tls_error(format!(
                        "cannot build the HTTP client with the CA certificates of {SSL_CERT_FILE_ENV} / \
                         {SSL_CERT_DIR_ENV}: {e}"
                    )),
                }
            })?)
        };
        Ok(HttpClient::with(CountingFetch { inner, counters }))
    }
}

/// Variable naming a PEM file of CA certificates to trust beside the built-in roots
/// (OpenSSL's name, which users already set).
pub const SSL_CERT_FILE_ENV: &str = "SSL_CERT_FILE";
/// Variable naming directories (`:`-separated) whose `*.pem` and `*.crt` files hold CA
/// certificates to trust beside the built-in roots (OpenSSL's name; KDMP sets it to
/// `/etc/tls-s3-cert` when the user gives a CA).
pub const SSL_CERT_DIR_ENV: &str = "SSL_CERT_DIR";

/// One certificate to trust, the file it came from and the variable that named it.
pub(crate) struct PrivateRoot {
    pub(crate) var: &'static str,
    pub(crate) file: PathBuf,
    pub(crate) certificate: reqwest::Certificate,
}

/// A client trusting `roots`, and the webpki roots when `webpki`.
fn client_trusting(roots: &[PrivateRoot], webpki: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tls_built_in_root_certs(webpki);
    for root in roots {
        builder = builder.add_root_certificate(root.certificate.clone());
    }
    builder.build()
}

fn tls_error(message: String) -> StorageError {
    StorageError::new(
        StorageErrorKind::InvalidConfig,
        "load CA certificates",
        message,
    )
}

/// Every certificate in the file [`SSL_CERT_FILE_ENV`] names and in the `*.pem` / `*.crt`
/// files of the directories [`SSL_CERT_DIR_ENV`] names, each checked on its own: a file
/// that cannot be read, holds no PEM certificate or a malformed one fails with its name.
/// Other files of the directories (OpenSSL's hash links `ab12cd34.0`, a Secret volume's
/// `..data`) are skipped.
pub(crate) fn private_roots(credentials: &Credentials) -> Result<Vec<PrivateRoot>> {
    let mut files = Vec::new();
    if let Some(file) = credentials.get(SSL_CERT_FILE_ENV) {
        files.push((SSL_CERT_FILE_ENV, PathBuf::from(file)));
    }
    if let Some(dirs) = credentials.get(SSL_CERT_DIR_ENV) {
        for dir in dirs.split(':').filter(|d| !d.is_empty()) {
            for file in cert_files(Path::new(dir))? {
                files.push((SSL_CERT_DIR_ENV, file));
            }
        }
    }
    let mut roots = Vec::new();
    for (var, file) in files {
        for certificate in read_certificates(var, &file)? {
            roots.push(PrivateRoot {
                var,
                file: file.clone(),
                certificate,
            });
        }
    }
    Ok(roots)
}

/// The `*.pem` and `*.crt` files of `dir`, sorted.
fn cert_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        tls_error(format!(
            "{SSL_CERT_DIR_ENV}: cannot read the directory {}: {e}; point it at a directory \
             of PEM CA certificates, or unset it",
            dir.display()
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            tls_error(format!(
                "{SSL_CERT_DIR_ENV}: listing {}: {e}",
                dir.display()
            ))
        })?;
        let path = entry.path();
        let wanted = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("pem") || x.eq_ignore_ascii_case("crt"));
        // `is_file` follows links, as a Secret volume's files are.
        if wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The certificates of one PEM file (parsed by the TLS library only when a client is built).
fn read_certificates(var: &'static str, file: &Path) -> Result<Vec<reqwest::Certificate>> {
    let shown = file.display();
    let pem = std::fs::read(file).map_err(|e| {
        tls_error(format!(
            "{var}: cannot read the CA certificate file {shown}: {e}"
        ))
    })?;
    let not_pem = |why: String| {
        tls_error(format!(
            "{var}: {shown} is not a PEM CA certificate file ({why}); it must hold one or \
             more -----BEGIN CERTIFICATE----- blocks"
        ))
    };
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| not_pem(e.to_string()))?;
    if certificates.is_empty() {
        return Err(not_pem("no certificate in it".into()));
    }
    Ok(certificates)
}

impl HttpFetch for CountingFetch {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        self.counters
            .record(req.method().as_str(), req.uri().query().unwrap_or(""));
        self.inner.fetch(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn given(vars: &[(&str, &Path)]) -> Credentials {
        Credentials::new(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
                .collect(),
        )
    }

    fn client_error(credentials: &Credentials) -> StorageError {
        match CountingFetch::client(Arc::default(), credentials) {
            Ok(_) => panic!("the client was built"),
            Err(e) => e,
        }
    }

    #[test]
    fn ca_files_and_directories_are_trusted_beside_the_builtin_roots() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("a.pem"), ca_pem()).unwrap();
        std::fs::write(certs.join("b.CRT"), ca_pem() + &ca_pem()).unwrap();
        // Skipped: not *.pem / *.crt (a hash link, a Secret volume's bookkeeping).
        std::fs::write(certs.join("ab12cd34.0"), "not read").unwrap();
        std::fs::create_dir(certs.join("..data")).unwrap();
        let file = dir.path().join("bundle.pem");
        std::fs::write(&file, ca_pem()).unwrap();
        let credentials = given(&[(SSL_CERT_DIR_ENV, &certs), (SSL_CERT_FILE_ENV, &file)]);
        let roots = private_roots(&credentials).unwrap();
        let from: Vec<_> = roots
            .iter()
            .map(|r| {
                (
                    r.var,
                    r.file.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            from,
            [
                (SSL_CERT_FILE_ENV, "bundle.pem".to_string()),
                (SSL_CERT_DIR_ENV, "a.pem".to_string()),
                (SSL_CERT_DIR_ENV, "b.CRT".to_string()),
                (SSL_CERT_DIR_ENV, "b.CRT".to_string()),
            ]
        );
        assert!(CountingFetch::client(Arc::default(), &credentials).is_ok());
    }

    #[test]
    fn unusable_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = private_roots(&given(&[(SSL_CERT_FILE_ENV, &missing)]))
            .err()
            .unwrap();
        assert_eq!(e.kind, StorageErrorKind::InvalidConfig);
        assert!(e.message.contains("SSL_CERT_FILE: cannot read"), "{e}");
        assert!(e.message.contains(&missing.display().to_string()), "{e}");

        let text = dir.path().join("text.crt");
        std::fs::write(&text, "hello\n").unwrap();
        let e = private_roots(&given(&[(SSL_CERT_DIR_ENV, dir.path())]))
            .err()
            .unwrap();
        assert!(e.message.contains("SSL_CERT_DIR"), "{e}");
        assert!(
            e.message
                .contains("text.crt is not a PEM CA certificate file"),
            "{e}"
        );

        let no_dir = dir.path().join("no-such-dir");
        let e = private_roots(&given(&[(SSL_CERT_DIR_ENV, &no_dir)]))
            .err()
            .unwrap();
        assert!(e.message.contains("cannot read the directory"), "{e}");

        // PEM armour around bytes that are no certificate: refused by the TLS library
        // when the client is built, and still named.
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_error(&given(&[(SSL_CERT_FILE_ENV, &garbage)]));
        assert_eq!(e.kind, StorageErrorKind::InvalidConfig);
        assert!(e.message.contains("SSL_CERT_FILE"), "{e}");
        assert!(e.message.contains("garbage.pem"), "{e}");
    }

    #[test]
    fn requests_are_classified_by_method_and_query() {
        let c = Counters::default();
        c.record("GET", "");
        c.record("GET", "list-type=2&prefix=index%2F");
        c.record("PUT", "");
        c.record("PUT", "partNumber=1&uploadId=x");
        c.record("POST", "uploads");
        c.record("HEAD", "");
        c.record("DELETE", "");
        c.record("PROPFIND", "");
        c.record("POST", "delete");
        assert_eq!(
            c.snapshot(),
            HttpCounts {
                get: 1,
                put: 1,
                head: 1,
                delete: 1,
                list: 2,
                multipart: 2,
                other: 1,
            }
        );
    }
}
