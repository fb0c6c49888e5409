//! Storage errors: what failed, on which object, and whether retrying can help.

/// Broad class of a storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object does not exist.
    NotFound,
    /// Credentials are missing or refused.
    PermissionDenied,
    /// A temporary failure (network, throttling, timeout): retrying can help.
    Temporary,
    /// The location or its options are malformed.
    InvalidConfig,
    /// The device or bucket is out of space or quota.
    NoSpace,
    /// The object is shorter than the range asked for: it was truncated or
    /// damaged (not a transfer cut short, which is `Temporary`).
    ShortObject,
    /// Anything else; not retried.
    Other,
}

/// A failed storage operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message}")]
pub struct StorageError {
    /// What kind of failure this is.
    pub kind: StorageErrorKind,
    /// The operation and object, e.g. `read packs/ab/ab12...`.
    pub op: String,
    /// Human-readable cause.
    pub message: String,
    /// The backend's own full text (operation, context, source chain),
    /// when `message` gives only its gist; shown with `-v`.
    pub detail: Option<String>,
}

impl StorageError {
    /// Builds an error.
    pub fn new(kind: StorageErrorKind, op: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            op: op.into(),
            message: message.into(),
            detail: None,
        }
    }

    /// The same error, keeping the backend's full text as its
    /// [`detail`](Self::detail).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An error of a local file operation `op` (the fs backend's streaming
    /// writer, see [`crate::Storage::writer`]), with the kind and hint the
    /// OpenDAL fs backend would give.
    pub fn from_io(op: impl Into<String>, e: &std::io::Error) -> Self {
        let (kind, hint) = match (e.kind(), e.raw_os_error()) {
            (std::io::ErrorKind::NotFound, _) => (StorageErrorKind::NotFound, ""),
            (std::io::ErrorKind::PermissionDenied, _) => (
                StorageErrorKind::PermissionDenied,
                "; check the permissions of the repository directory",
            ),
            // ENOSPC, EDQUOT
            (_, Some(28 | 122)) => (
                StorageErrorKind::NoSpace,
                "; free space on the device or raise the quota",
            ),
            // EROFS
            (_, Some(30)) => (
                StorageErrorKind::PermissionDenied,
                "; the repository is on a read-only file system",
            ),
            _ => (StorageErrorKind::Other, ""),
        };
        Self::new(kind, op, format!("{e}{hint}"))
    }

    /// Whether retrying the same operation can succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind == StorageErrorKind::Temporary
    }

    /// Whether the object was missing.
    pub fn is_not_found(&self) -> bool {
        self.kind == StorageErrorKind::NotFound
    }

    /// Whether the object is shorter than a range read asked for.
    pub fn is_short_object(&self) -> bool {
        self.kind == StorageErrorKind::ShortObject
    }
}
