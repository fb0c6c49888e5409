//! Turning OpenDAL errors into [`StorageError`]s a user can act on.
//!
//! Invariants: the kind decides retrying (only `Temporary` is retried), so
//! a missing bucket or missing credentials are never `Temporary`; and no
//! secret reaches a message: URL query strings (where Azure SAS tokens and
//! presigned signatures live) and userinfo are cut out of the text.

use crate::{StorageError, StorageErrorKind};
use opendal::ErrorKind;
use std::time::Duration;

/// What error messages may say about the service (never credentials).
#[derive(Debug, Default)]
pub(crate) struct ErrorContext {
    /// What to check when credentials are refused.
    pub credential_hint: String,
    /// The bucket or container, for object stores.
    pub bucket: Option<String>,
    /// The redacted location.
    pub location: String,
}

/// Why a request bounded by a deadline failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The backend answered with an error.
    Backend(opendal::Error),
    /// No answer within the deadline.
    TimedOut(Duration),
}

impl From<opendal::Error> for Failure {
    fn from(e: opendal::Error) -> Self {
        Failure::Backend(e)
    }
}

/// Error texts of S3, Azure and GCS for a bucket or container that does not
/// exist.
const MISSING_BUCKET_MARKERS: [&str; 3] = [
    "NoSuchBucket",
    "ContainerNotFound",
    "The specified bucket does not exist",
];

impl ErrorContext {
    /// Maps a failure of operation `op`.
    pub(crate) fn fail(&self, failure: Failure, op: &str) -> StorageError {
        match failure {
            Failure::Backend(e) => self.map(e, op),
            Failure::TimedOut(deadline) => StorageError::new(
                StorageErrorKind::Temporary,
                op,
                format!(
                    "timed out after {deadline:?} waiting for {}; is the endpoint reachable?",
                    self.location
                ),
            ),
        }
    }

    /// Maps an OpenDAL error for operation `op`, adding what the user can do.
    pub(crate) fn map(&self, e: opendal::Error, op: &str) -> StorageError {
        let full = redact_urls(&e.to_string());
        let error = self.map_text(&e, &full, gist(&full), op);
        if error.message.contains(&full) {
            error
        } else {
            error.with_detail(full)
        }
    }

    /// Maps an error whose full text is `full` and whose gist (what a user
    /// reads) is `text`: markers are looked for in the full text.
    fn map_text(&self, e: &opendal::Error, full: &str, text: &str, op: &str) -> StorageError {
        if let Some(bucket) = &self.bucket {
            if MISSING_BUCKET_MARKERS.iter().any(|m| full.contains(m)) {
                return StorageError::new(
                    StorageErrorKind::InvalidConfig,
                    op,
                    format!(
                        "bucket {bucket:?} does not exist at {}: create it, or fix the \
                         repository URL ({text})",
                        self.location
                    ),
                );
            }
        }
        if full.contains("LoadCredential") || full.contains("loading credential") {
            // Credentials that cannot be found will not appear on retry.
            return StorageError::new(
                StorageErrorKind::PermissionDenied,
                op,
                format!(
                    "cannot load credentials for {}: {text}; {} (outside EC2, set \
                     AWS_EC2_METADATA_DISABLED=true to skip the instance metadata service)",
                    self.location, self.credential_hint
                ),
            );
        }
        if let Some(cause) = certificate_failure(e) {
            // An untrusted or invalid certificate stays so on retry.
            return StorageError::new(
                StorageErrorKind::InvalidConfig,
                op,
                format!(
                    "the TLS certificate of {} is not trusted ({cause}): if the endpoint uses \
                     a private certificate authority, point {} at its CA certificate (PEM) or \
                     {} at a directory holding it; see docs/STORAGE.md",
                    self.location,
                    crate::SSL_CERT_FILE_ENV,
                    crate::SSL_CERT_DIR_ENV
                ),
            );
        }
        let (kind, hint) = match e.kind() {
            ErrorKind::NotFound => (StorageErrorKind::NotFound, None),
            ErrorKind::PermissionDenied => (
                StorageErrorKind::PermissionDenied,
                Some(self.credential_hint.clone()),
            ),
            ErrorKind::ConfigInvalid => (StorageErrorKind::InvalidConfig, None),
            // The fs service marks most I/O errors temporary; these are not.
            _ if full.contains("No space left") || full.contains("os error 28") => (
                StorageErrorKind::NoSpace,
                Some("free space on the device or raise the quota".to_string()),
            ),
            _ if full.contains("Read-only file system") || full.contains("os error 30") => (
                StorageErrorKind::PermissionDenied,
                Some("the repository is on a read-only file system".to_string()),
            ),
            ErrorKind::RateLimited => (StorageErrorKind::Temporary, None),
            _ if e.is_temporary() => {
                let hint = (full.contains("send http request") || full.contains("connect"))
                    .then(|| format!("is {} reachable?", self.location));
                (StorageErrorKind::Temporary, hint)
            }
            _ => (StorageErrorKind::Other, None),
        };
        let message = match hint {
            Some(hint) => format!("{text}; {hint}"),
            None => text.to_string(),
        };
        StorageError::new(kind, op, message)
    }
}

/// What a user needs of an OpenDAL error's text: its message and source
/// chain, after the `=>` that ends the operation and request context
/// (`Unexpected (permanent) at read, context: { ... } => message, source:
/// cause`). Text without that shape is returned whole.
pub(crate) fn gist(full: &str) -> &str {
    match full.split_once(" => ") {
        Some((_, rest)) if !rest.trim().is_empty() => rest,
        _ => full,
    }
}

/// The TLS library's reason, when `e` failed because the server's certificate was
/// refused (unknown issuer, wrong name, expired, malformed). The reason is deep in the
/// error's sources: the HTTP client's own message says only "error sending request".
fn certificate_failure(e: &opendal::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if text.contains("invalid peer certificate") || text.contains("InvalidCertificate") {
            return Some(redact_urls(&text));
        }
        source = cause.source();
    }
    None
}

/// Cuts the userinfo and the query string out of every http(s) URL in
/// `text`.
pub(crate) fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let next_url = |s: &str| {
        [s.find("http://"), s.find("https://")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(start) = next_url(rest) {
        out.push_str(&rest[..start]);
        let url_len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | ')' | '"' | '\'' | '>'))
            .unwrap_or(rest.len() - start);
        let url = &rest[start..start + url_len];
        let (scheme, after) = url.split_at(url.find("://").map_or(0, |i| i + 3));
        let after = match after.find('@') {
            Some(at) if !after[..at].contains('/') => &after[at + 1..],
            _ => after,
        };
        out.push_str(scheme);
        match after.split_once('?') {
            Some((base, _)) => {
                out.push_str(base);
                out.push_str("?<redacted>");
            }
            None => out.push_str(after),
        }
        rest = &rest[start + url_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_and_userinfo_are_cut_from_urls() {
        let text = "Unexpected at read, context: { uri: https://acct.blob.core.windows.net/c/p?sv=2021&sig=SECRET, \
                    other: http://user:pw@host:80/x } => error sending request for url (https://h/a?X-Amz-Signature=abc)";
        let red = redact_urls(text);
        assert!(
            !red.contains("SECRET") && !red.contains("pw@") && !red.contains("abc"),
            "{red}"
        );
        assert!(
            red.contains("uri: https://acct.blob.core.windows.net/c/p?<redacted>,"),
            "{red}"
        );
        assert!(red.contains("other: http://host:80/x }"), "{red}");
        assert!(red.contains("(https://h/a?<redacted>)"), "{red}");
    }

    #[test]
    fn text_without_urls_is_unchanged() {
        assert_eq!(redact_urls("no urls here"), "no urls here");
    }

    #[test]
    fn a_missing_bucket_is_a_configuration_error_naming_it() {
        let ctx = ErrorContext {
            credential_hint: "check".into(),
            bucket: Some("my-bucket".into()),
            location: "s3://my-bucket/p".into(),
        };
        let e = opendal::Error::new(ErrorKind::NotFound, "<Code>NoSuchBucket</Code>");
        let mapped = ctx.map(e, "list index/");
        assert_eq!(mapped.kind, StorageErrorKind::InvalidConfig);
        assert!(mapped
            .message
            .contains("bucket \"my-bucket\" does not exist"));
    }

    #[test]
    fn full_disks_are_not_temporary_even_when_opendal_says_so() {
        let ctx = ErrorContext::default();
        let e = opendal::Error::new(
            ErrorKind::Unexpected,
            "No space left on device (os error 28)",
        )
        .set_temporary();
        assert_eq!(ctx.map(e, "write x").kind, StorageErrorKind::NoSpace);
    }
}
