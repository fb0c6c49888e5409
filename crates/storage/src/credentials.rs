//! [`Credentials`]: what a backend reads to sign its requests and to trust its endpoint,
//! looked up by the environment variable names docs/STORAGE.md lists
//! (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_KEY`, `SSL_CERT_DIR`, ...).
//!
//! Invariant: a value never reaches a `Debug` output or an error message; only names do.

use std::collections::BTreeMap;

/// Storage credentials and TLS trust settings, by variable name.
///
/// [`Credentials::from_env`] reads the process environment, as the `cairn` commands do.
/// [`Credentials::new`] takes the values a caller was given (a mounted Secret, say): a
/// name it holds wins over the process environment, a name it lacks is still read from the
/// environment (so a pod's `SSL_CERT_DIR` or `AWS_REGION` keeps working beside a Secret's
/// keys). Nothing is written to the process environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    given: BTreeMap<String, String>,
}

impl Credentials {
    /// Everything from the process environment.
    pub fn from_env() -> Self {
        Self::default()
    }

    /// `given` first, then the process environment. Empty values count as absent.
    pub fn new(given: BTreeMap<String, String>) -> Self {
        Self { given }
    }

    /// The value of `name`: the given one, else the process environment's; `None` when
    /// neither holds a non-empty value.
    pub fn get(&self, name: &str) -> Option<String> {
        match self.given.get(name).filter(|v| !v.is_empty()) {
            Some(v) => Some(v.clone()),
            None => crate::location::process_env(name),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("given", &self.given.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_win_and_are_never_shown() {
        let c = Credentials::new([("CAIRN_TEST_GIVEN".to_string(), "s3cr3t".to_string())].into());
        assert_eq!(c.get("CAIRN_TEST_GIVEN").as_deref(), Some("s3cr3t"));
        // A name not given falls back to the process environment.
        assert_eq!(
            c.get("PATH"),
            std::env::var("PATH").ok().filter(|v| !v.is_empty())
        );
        let shown = format!("{c:?}");
        assert!(shown.contains("CAIRN_TEST_GIVEN"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn empty_given_values_count_as_absent() {
        let c = Credentials::new([("CAIRN_TEST_EMPTY".to_string(), String::new())].into());
        assert_eq!(c.get("CAIRN_TEST_EMPTY"), None);
    }
}
