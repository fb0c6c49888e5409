//! Decides which directory entries a backup leaves out: KDMP class entries, `--exclude`
//! patterns and files, `--exclude-if-present`, `--exclude-caches`, `--exclude-larger-than`,
//! `--one-file-system` and per-directory `.cairnignore` files.
//!
//! Contract with the walker: [`Excluder::is_excluded`] judges one entry whose parent was not
//! excluded; an excluded directory is not descended into, so its whole subtree is left out
//! without matching each descendant. Paths are absolute and below the root given to
//! [`Excluder::new`], spelled the same way (no canonicalization happens here).

mod ignore_files;
mod patterns;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::Candidate;

use crate::PolicyError;
use ignore_files::IgnoreFiles;
use patterns::{class_rule, exclude_file_rules, exclude_rule, PatternMatcher};

/// The name of the per-directory ignore file read by default.
pub const DEFAULT_IGNORE_FILE: &str = ".cairnignore";

/// The first bytes of a valid `CACHEDIR.TAG` (<https://bford.info/cachedir/>).
const CACHEDIR_TAG_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What to leave out of a backup. Built by the CLI from its flags and, in job mode, from the
/// KDMP ConfigMap entries of the volume's storage class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludeOptions {
    /// `--exclude PATTERN`: restic-style globs; without a leading `/` they match a name (or
    /// a trailing run of path components) at any depth, with one they are anchored at the
    /// root; a trailing `/` matches directories only.
    pub patterns: Vec<String>,
    /// `--exclude-file FILE`: files of such patterns, one per line, `#` comments.
    pub pattern_files: Vec<PathBuf>,
    /// The storage class the class entries came from, only to label the recorded rules.
    pub storage_class: Option<String>,
    /// KDMP entries of the volume's storage class: always relative to the root (the volume
    /// root), globs allowed, a trailing `/` matches directories only.
    pub class_entries: Vec<String>,
    /// `--exclude-if-present NAME`: leave out a directory containing an entry named NAME.
    pub if_present: Vec<String>,
    /// `--exclude-caches`: leave out a directory containing a valid `CACHEDIR.TAG`.
    pub exclude_caches: bool,
    /// `--exclude-larger-than SIZE`: leave out regular files larger than this many bytes.
    pub larger_than: Option<u64>,
    /// `--one-file-system`: leave out entries on another file system than the root
    /// (mount points below the root, and so everything mounted there).
    pub one_file_system: bool,
    /// Per-directory ignore file in gitignore syntax; `None` disables ignore files.
    pub ignore_file_name: Option<String>,
}

impl Default for ExcludeOptions {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            pattern_files: Vec::new(),
            storage_class: None,
            class_entries: Vec::new(),
            if_present: Vec::new(),
            exclude_caches: false,
            larger_than: None,
            one_file_system: false,
            ignore_file_name: Some(DEFAULT_IGNORE_FILE.to_string()),
        }
    }
}

/// The compiled exclusion rules of one backup. Send + Sync: share it between walker threads.
#[derive(Debug)]
pub struct Excluder {
    root: PathBuf,
    /// KDMP class entries, `--exclude` and `--exclude-file` patterns.
    patterns: PatternMatcher,
    if_present: Vec<String>,
    exclude_caches: bool,
    larger_than: Option<u64>,
    /// The root's device when `--one-file-system` is on.
    root_dev: Option<u64>,
    ignore_files: Option<IgnoreFiles>,
    /// What the snapshot records, in a stable order.
    rules: Vec<String>,
}

impl Excluder {
    /// Compiles `opts` for a backup of `root`. Fails on an invalid pattern, an unreadable
    /// exclude file, an invalid marker or ignore file name, or (with `one_file_system`) an
    /// unreadable root.
    pub fn new(opts: &ExcludeOptions, root: &Path) -> Result<Excluder, PolicyError> {
        let mut pattern_rules = Vec::new();
        for entry in &opts.class_entries {
            pattern_rules.push(class_rule(opts.storage_class.as_deref(), entry)?);
        }
        for pattern in &opts.patterns {
            let rule = exclude_rule(pattern).map_err(|reason| PolicyError::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            })?;
            pattern_rules.push(rule);
        }
        for file in &opts.pattern_files {
            pattern_rules.extend(exclude_file_rules(file)?);
        }
        let patterns = PatternMatcher::new(&pattern_rules)?;

        for name in opts.if_present.iter().chain(&opts.ignore_file_name) {
            check_file_name(name)?;
        }
        let root_dev = if opts.one_file_system {
            let meta = std::fs::metadata(root).map_err(|source| PolicyError::RootMetadata {
                root: root.to_path_buf(),
                source,
            })?;
            Some(meta.dev())
        } else {
            None
        };

        let mut rules: Vec<String> = pattern_rules.into_iter().map(|r| r.rule).collect();
        rules.extend(opts.if_present.iter().map(|n| format!("if-present:{n}")));
        if opts.exclude_caches {
            rules.push("caches".to_string());
        }
        if let Some(size) = opts.larger_than {
            rules.push(format!("larger-than:{size}"));
        }
        if opts.one_file_system {
            rules.push("one-file-system".to_string());
        }
        if let Some(name) = &opts.ignore_file_name {
            rules.push(format!("ignore-file:{name}"));
        }

        Ok(Excluder {
            root: root.to_path_buf(),
            patterns,
            if_present: opts.if_present.clone(),
            exclude_caches: opts.exclude_caches,
            larger_than: opts.larger_than,
            root_dev,
            ignore_files: opts
                .ignore_file_name
                .as_deref()
                .map(|name| IgnoreFiles::new(root, name)),
            rules,
        })
    }

    /// Told the names directory `dir` holds (`has(name)`) before its entries are judged: a
    /// directory listed without the ignore file is not probed for one.
    pub fn listed(&self, dir: &Path, has: &dyn Fn(&std::ffi::OsStr) -> bool) {
        if let Some(ignore_files) = &self.ignore_files {
            ignore_files.listed(dir, has);
        }
    }

    /// True when the walker must leave `path` out (and, for a directory, not descend).
    /// `meta` is the entry's `lstat`. Paths not strictly below the root are never excluded.
    pub fn is_excluded(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        self.excluded_by(path, meta).is_some()
    }

    /// The rule that excludes `path` (same text as in [`Excluder::rules`], or
    /// `<ignore file>:<pattern>` for ignore files), for verbose output and tests.
    pub fn excluded_by(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?;
        if relative.as_os_str().is_empty() {
            return None;
        }
        let is_dir = meta.is_dir();
        // Cheapest first: metadata only, then glob matching, then file system reads.
        if let Some(root_dev) = self.root_dev {
            if meta.dev() != root_dev {
                return Some("one-file-system".to_string());
            }
        }
        if let Some(limit) = self.larger_than {
            if meta.is_file() && meta.len() > limit {
                return Some(format!("larger-than:{limit}"));
            }
        }
        if !self.patterns.is_empty() {
            if let Some(rule) = self.patterns.matched(&Candidate::new(relative), is_dir) {
                return Some(rule.to_string());
            }
        }
        if let Some(ignore_files) = &self.ignore_files {
            if let Some(rule) = ignore_files.matched(path, is_dir) {
                return Some(rule);
            }
        }
        if is_dir {
            for name in &self.if_present {
                if std::fs::symlink_metadata(path.join(name)).is_ok() {
                    return Some(format!("if-present:{name}"));
                }
            }
            if self.exclude_caches && has_cachedir_tag(path) {
                return Some("caches".to_string());
            }
        }
        None
    }

    /// The rules applied, human-readable, for the snapshot record: `class:<class>=<entry>`,
    /// `pattern:<pattern>`, `if-present:<name>`, `caches`, `larger-than:<bytes>`,
    /// `one-file-system`, `ignore-file:<name>`.
    pub fn rules(&self) -> Vec<String> {
        self.rules.clone()
    }
}

/// True when `dir` holds a `CACHEDIR.TAG` starting with the standard signature.
fn has_cachedir_tag(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(dir.join("CACHEDIR.TAG")) else {
        return false;
    };
    let mut head = Vec::with_capacity(CACHEDIR_TAG_SIGNATURE.len());
    match file
        .take(CACHEDIR_TAG_SIGNATURE.len() as u64)
        .read_to_end(&mut head)
    {
        Ok(_) => head == CACHEDIR_TAG_SIGNATURE,
        Err(_) => false,
    }
}

/// Marker and ignore file names are single path components.
fn check_file_name(name: &str) -> Result<(), PolicyError> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.contains('/') {
        Some("a file name, not a path, is expected")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not file names")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PolicyError::InvalidMarkerName {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excluder_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Excluder>();
    }

    #[test]
    fn rules_are_recorded_in_a_stable_order() {
        let opts = ExcludeOptions {
            patterns: vec!["*.log".into()],
            storage_class: Some("px-db".into()),
            class_entries: vec!["dir1".into(), "/dir2/".into()],
            if_present: vec![".nobackup".into()],
            exclude_caches: true,
            larger_than: Some(1_048_576),
            one_file_system: true,
            ..ExcludeOptions::default()
        };
        let excluder = Excluder::new(&opts, Path::new("/")).unwrap();
        assert_eq!(
            excluder.rules(),
            [
                "class:px-db=dir1",
                "class:px-db=dir2/",
                "pattern:*.log",
                "if-present:.nobackup",
                "caches",
                "larger-than:1048576",
                "one-file-system",
                "ignore-file:.cairnignore",
            ]
        );
    }

    #[test]
    fn marker_names_must_be_file_names() {
        for bad in ["", "a/b", ".."] {
            let opts = ExcludeOptions {
                if_present: vec![bad.into()],
                ..ExcludeOptions::default()
            };
            assert!(matches!(
                Excluder::new(&opts, Path::new("/")),
                Err(PolicyError::InvalidMarkerName { .. })
            ));
        }
    }
}
