//! Parser of the KDMP ConfigMap value `KDMP_EXCLUDE_FILE_LIST`: one line per storage class,
//! `<storageClassName>=<entry>,<entry>,...`, entries relative to the volume root.
//!
//! Invariants of a parsed [`ExcludeList`]: every class name is a valid Kubernetes object name
//! and appears once; every class has at least one entry; every entry is normalized (no
//! leading `/` or `./`, no `.`/empty components, no `..`, a trailing `/` only to mean
//! "directories only") and is a valid glob.

use std::path::Path;

use crate::PolicyError;

/// The parsed `KDMP_EXCLUDE_FILE_LIST`: exclude entries per storage class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExcludeList {
    /// In the order of the input; class names unique.
    classes: Vec<ClassEntries>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ClassEntries {
    class: String,
    entries: Vec<String>,
    line: usize,
}

impl ExcludeList {
    /// The normalized entries for `storage_class`, or `None` when the list has no line for
    /// that class (the caller logs this at info: the volume gets no class excludes).
    pub fn entries_for(&self, storage_class: &str) -> Option<&[String]> {
        self.classes
            .iter()
            .find(|c| c.class == storage_class)
            .map(|c| c.entries.as_slice())
    }

    /// The entries for a volume of `storage_class`, empty when the class is not listed; that
    /// case is logged at info, as users expect to see why nothing was excluded.
    pub fn entries_for_volume(&self, storage_class: &str) -> &[String] {
        match self.entries_for(storage_class) {
            Some(entries) => entries,
            None => {
                tracing::info!(
                    storage_class,
                    listed = ?self.storage_classes().collect::<Vec<_>>(),
                    "no KDMP exclude entries for storage class; no class excludes apply"
                );
                &[]
            }
        }
    }

    /// The storage classes listed, in input order.
    pub fn storage_classes(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.class.as_str())
    }

    /// True when the list names no storage class (an empty or all-comment value).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// Parses a `KDMP_EXCLUDE_FILE_LIST` value.
///
/// Tolerated, because people write ConfigMaps by hand: blank lines, lines starting with `#`,
/// whitespace around class names and entries, CRLF line ends, a UTF-8 BOM, empty items from
/// a trailing or doubled comma, a leading `/` or `./` on entries, and the same entry twice.
/// Rejected, with the 1-based line and the reason: a line without `=`, an empty or invalid
/// class name, a class listed twice, a line with no entries, an entry containing `=` (two
/// lines folded into one, e.g. by a YAML `>` block), an entry that is the volume root or
/// leaves it (`..`), and an entry that is not a valid glob.
pub fn parse_exclude_list(text: &str) -> Result<ExcludeList, PolicyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut classes: Vec<ClassEntries> = Vec::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = raw_line.strip_suffix('\r').unwrap_or(raw_line).trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let error = |reason: String| PolicyError::ExcludeConfig { line, reason };
        let Some((class, list)) = content.split_once('=') else {
            return Err(error(format!(
                "expected <storageClass>=<entry>,...: no '=' found in '{content}'"
            )));
        };
        let class = class.trim();
        if class.is_empty() {
            return Err(error(
                "expected <storageClass>=<entry>,...: the storage class name before '=' is empty"
                    .to_string(),
            ));
        }
        if let Err(why) = check_class_name(class) {
            return Err(error(format!(
                "storage class name '{class}' is not a valid Kubernetes name: {why}"
            )));
        }
        if let Some(first) = classes.iter().find(|c| c.class == class) {
            return Err(error(format!(
                "storage class '{class}' is listed twice (first on line {}); merge the entries \
                 into one line",
                first.line
            )));
        }
        let mut entries: Vec<String> = Vec::new();
        for raw_entry in list.split(',') {
            let raw_entry = raw_entry.trim();
            if raw_entry.is_empty() {
                continue;
            }
            let entry = normalize_entry(raw_entry).map_err(error)?;
            if !entries.contains(&entry) {
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            return Err(error(format!(
                "storage class '{class}' has no entries after '='; list at least one file or \
                 directory, or remove the line"
            )));
        }
        classes.push(ClassEntries {
            class: class.to_string(),
            entries,
            line,
        });
    }
    Ok(ExcludeList { classes })
}

/// Reads and parses an exclude config file (`cairn backup --exclude-config FILE`, or the
/// ConfigMap key mounted as a file in job mode). Errors name the file.
pub fn load_exclude_list(path: &Path) -> Result<ExcludeList, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_exclude_list(&text).map_err(|e| PolicyError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Checks a Kubernetes DNS-1123 subdomain name (what StorageClass names are): at most 253
/// characters of lowercase letters, digits, '-' and '.', starting and ending alphanumeric.
fn check_class_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// Normalizes one entry (already trimmed, non-empty) to a root-relative glob, keeping a
/// trailing `/` as the "directories only" marker. The error is the reason, for the line error.
pub(crate) fn normalize_entry(raw: &str) -> Result<String, String> {
    if raw.contains('=') {
        return Err(format!(
            "entry '{raw}' contains '='; each storage class must be on its own line (in the \
             ConfigMap use a '|' block, not '>', which folds lines together)"
        ));
    }
    let dir_only = raw.ends_with('/');
    let mut components: Vec<&str> = Vec::new();
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "entry '{raw}' contains '..'; entries are relative to the volume root and \
                     cannot leave it"
                ))
            }
            c => components.push(c),
        }
    }
    if components.is_empty() {
        return Err(format!(
            "entry '{raw}' names the volume root itself; excluding it would back up nothing"
        ));
    }
    let mut entry = components.join("/");
    if let Err(e) = globset::Glob::new(&entry) {
        return Err(format!("entry '{raw}' is not a valid glob: {}", e.kind()));
    }
    if dir_only {
        entry.push('/');
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_root_markers_and_keeps_dir_marker() {
        assert_eq!(normalize_entry("/dir1").unwrap(), "dir1");
        assert_eq!(normalize_entry("./a//b/./c").unwrap(), "a/b/c");
        assert_eq!(normalize_entry("/.snapshot/").unwrap(), ".snapshot/");
        assert_eq!(normalize_entry("logs/*.log").unwrap(), "logs/*.log");
    }

    #[test]
    fn normalize_rejects_root_parent_and_bad_globs() {
        assert!(normalize_entry("/")
            .unwrap_err()
            .contains("volume root itself"));
        assert!(normalize_entry("./")
            .unwrap_err()
            .contains("volume root itself"));
        assert!(normalize_entry("a/../../b").unwrap_err().contains("'..'"));
        assert!(normalize_entry("a[b")
            .unwrap_err()
            .contains("not a valid glob"));
    }

    #[test]
    fn class_names_follow_kubernetes_rules() {
        assert!(check_class_name("px-db").is_ok());
        assert!(check_class_name("ebs.csi.aws.com").is_ok());
        assert!(check_class_name("PX-DB").is_err());
        assert!(check_class_name("px db").is_err());
        assert!(check_class_name("-px").is_err());
        assert!(check_class_name(&"a".repeat(254)).is_err());
    }
}
