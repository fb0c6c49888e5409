//! Compiles exclude patterns (KDMP class entries, `--exclude`, `--exclude-file`) into glob
//! sets matched against paths relative to the backup root.
//!
//! Invariant: every compiled glob is matched against a root-relative, `/`-separated path
//! with no leading `/`; `*` and `?` never match `/` (`**` does), so an anchored glob only
//! matches at the depth it names.

use std::path::Path;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::kdmp::normalize_entry;
use crate::PolicyError;

/// One pattern ready to compile: the glob, whether it only matches directories, and the
/// rule text recorded in the snapshot.
#[derive(Debug, Clone)]
pub(crate) struct PatternRule {
    pub(crate) glob: String,
    pub(crate) dir_only: bool,
    pub(crate) rule: String,
}

/// A class entry: relative to the volume root, anchored there whatever it contains.
pub(crate) fn class_rule(
    storage_class: Option<&str>,
    entry: &str,
) -> Result<PatternRule, PolicyError> {
    let normalized =
        normalize_entry(entry.trim()).map_err(|reason| PolicyError::InvalidPattern {
            pattern: entry.to_string(),
            reason,
        })?;
    let (glob, dir_only) = match normalized.strip_suffix('/') {
        Some(glob) => (glob.to_string(), true),
        None => (normalized.clone(), false),
    };
    let rule = match storage_class {
        Some(class) => format!("class:{class}={normalized}"),
        None => format!("class:{normalized}"),
    };
    Ok(PatternRule {
        glob,
        dir_only,
        rule,
    })
}

/// An `--exclude` pattern, restic style: without a leading `/` it matches at any depth
/// (`*.log` is any `.log` file, `cache/tmp` is any `tmp` inside any `cache`); a leading `/`
/// (or `./`) anchors it at the backup root. A trailing `/` restricts it to directories.
/// The error is the reason, for the caller to attach the pattern's origin.
pub(crate) fn exclude_rule(pattern: &str) -> Result<PatternRule, String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".to_string());
    }
    let anchored = pattern.starts_with('/') || pattern.starts_with("./");
    let dir_only = pattern.ends_with('/');
    let mut components: Vec<&str> = Vec::new();
    for component in pattern.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("'..' cannot be used: patterns match inside the backup root".into()),
            c => components.push(c),
        }
    }
    if components.is_empty() {
        return Err("the pattern matches the backup root itself".to_string());
    }
    let body = components.join("/");
    let glob = if anchored || body == "**" || body.starts_with("**/") {
        body
    } else {
        format!("**/{body}")
    };
    compile_one(&glob)?;
    Ok(PatternRule {
        glob,
        dir_only,
        rule: format!("pattern:{pattern}"),
    })
}

/// Reads an `--exclude-file`: one `--exclude` pattern per line; blank lines and lines
/// starting with `#` are skipped; surrounding whitespace and CR are trimmed.
pub(crate) fn exclude_file_rules(path: &Path) -> Result<Vec<PatternRule>, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let pattern = line.trim();
        if pattern.is_empty() || pattern.starts_with('#') {
            continue;
        }
        let rule = exclude_rule(pattern).map_err(|reason| PolicyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(PolicyError::InvalidPatternLine {
                line: index + 1,
                pattern: pattern.to_string(),
                reason,
            }),
        })?;
        rules.push(rule);
    }
    Ok(rules)
}

fn compile_one(glob: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("not a valid glob: {}", e.kind()))
}

/// The compiled form of a list of [`PatternRule`]s: two sets, one for rules matching any
/// entry and one for directory-only rules, each index mapping back to its rule text.
#[derive(Debug)]
pub(crate) struct PatternMatcher {
    any: GlobSet,
    any_rules: Vec<String>,
    dirs: GlobSet,
    dir_rules: Vec<String>,
}

impl PatternMatcher {
    pub(crate) fn new(rules: &[PatternRule]) -> Result<Self, PolicyError> {
        let mut any = GlobSetBuilder::new();
        let mut dirs = GlobSetBuilder::new();
        let mut any_rules = Vec::new();
        let mut dir_rules = Vec::new();
        for rule in rules {
            let glob = compile_one(&rule.glob).map_err(|reason| PolicyError::InvalidPattern {
                pattern: rule.rule.clone(),
                reason,
            })?;
            if rule.dir_only {
                dirs.add(glob);
                dir_rules.push(rule.rule.clone());
            } else {
                any.add(glob);
                any_rules.push(rule.rule.clone());
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build().map_err(|e| PolicyError::InvalidPattern {
                pattern: e.glob().unwrap_or_default().to_string(),
                reason: e.kind().to_string(),
            })
        };
        Ok(Self {
            any: build(any)?,
            any_rules,
            dirs: build(dirs)?,
            dir_rules,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.any.is_empty() && self.dirs.is_empty()
    }

    /// The rule text of the first rule matching `candidate` (a root-relative path).
    pub(crate) fn matched(&self, candidate: &Candidate<'_>, is_dir: bool) -> Option<&str> {
        if self.any.is_match_candidate(candidate) {
            let index = *self.any.matches_candidate(candidate).first()?;
            return self.any_rules.get(index).map(String::as_str);
        }
        if is_dir && self.dirs.is_match_candidate(candidate) {
            let index = *self.dirs.matches_candidate(candidate).first()?;
            return self.dir_rules.get(index).map(String::as_str);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(rules: &[PatternRule], path: &str, is_dir: bool) -> Option<String> {
        let matcher = PatternMatcher::new(rules).unwrap();
        matcher
            .matched(&Candidate::new(path), is_dir)
            .map(str::to_string)
    }

    #[test]
    fn unanchored_pattern_matches_at_any_depth() {
        let rule = exclude_rule("*.log").unwrap();
        assert_eq!(rule.glob, "**/*.log");
        let rules = [rule];
        assert!(matches(&rules, "a.log", false).is_some());
        assert!(matches(&rules, "x/y/a.log", false).is_some());
        assert!(matches(&rules, "x/a.logs", false).is_none());
    }

    #[test]
    fn leading_slash_anchors_at_root() {
        let rules = [exclude_rule("/tmp").unwrap()];
        assert!(matches(&rules, "tmp", true).is_some());
        assert!(matches(&rules, "a/tmp", true).is_none());
        let rules = [exclude_rule("./tmp").unwrap()];
        assert!(matches(&rules, "tmp", true).is_some());
        assert!(matches(&rules, "a/tmp", true).is_none());
    }

    #[test]
    fn star_does_not_cross_directories_in_anchored_globs() {
        let rules = [class_rule(None, "data/*.tmp").unwrap()];
        assert!(matches(&rules, "data/x.tmp", false).is_some());
        assert!(matches(&rules, "data/sub/x.tmp", false).is_none());
        assert!(matches(&rules, "other/data/x.tmp", false).is_none());
    }

    #[test]
    fn trailing_slash_means_directories_only() {
        let rules = [exclude_rule("cache/").unwrap()];
        assert_eq!(
            matches(&rules, "a/cache", true).as_deref(),
            Some("pattern:cache/")
        );
        assert_eq!(matches(&rules, "a/cache", false), None);
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        assert!(exclude_rule("").unwrap_err().contains("empty"));
        assert!(exclude_rule("/").unwrap_err().contains("root itself"));
        assert!(exclude_rule("../x").unwrap_err().contains("'..'"));
        assert!(exclude_rule("a[").unwrap_err().contains("not a valid glob"));
    }
}
