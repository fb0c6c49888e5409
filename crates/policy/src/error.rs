//! The one error type of cairn-policy: what went wrong, where, and what to fix.

use std::path::PathBuf;

/// Every failure cairn-policy reports. Messages name the input at fault (file, line,
/// pattern) so users can fix it without reading code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A line of a KDMP exclude list (`KDMP_EXCLUDE_FILE_LIST`) is malformed.
    #[error("exclude config line {line}: {reason}")]
    ExcludeConfig {
        /// 1-based line number in the ConfigMap value or file.
        line: usize,
        /// What is wrong with the line and what is expected instead.
        reason: String,
    },

    /// An error found while reading a file named on the command line.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file that was being read.
        path: PathBuf,
        /// The error found in it.
        #[source]
        source: Box<PolicyError>,
    },

    /// A file (exclude config, exclude file) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An exclude pattern is not a valid glob or cannot be used.
    #[error("invalid exclude pattern '{pattern}': {reason}")]
    InvalidPattern {
        /// The pattern as the user wrote it.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A line of an `--exclude-file` is not a usable pattern.
    #[error("exclude file line {line}: invalid pattern '{pattern}': {reason}")]
    InvalidPatternLine {
        /// 1-based line number in the exclude file.
        line: usize,
        /// The pattern as written on that line.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },

    /// An `--exclude-if-present` name that is not a plain file name.
    #[error("invalid --exclude-if-present name '{name}': {reason}")]
    InvalidMarkerName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The backup root could not be inspected (needed for `--one-file-system`).
    #[error("cannot stat backup root {}: {source}", root.display())]
    RootMetadata {
        /// The backup root.
        root: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A retention policy that would keep nothing was given to `forget`.
    #[error(
        "refusing to forget with an empty retention policy: it would remove every snapshot; \
         give at least one --keep-* option with a non-zero value"
    )]
    EmptyRetentionPolicy,

    /// A `--keep-tag` value names no tag.
    #[error("invalid --keep-tag '{value}': {reason}")]
    InvalidKeepTag {
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}
