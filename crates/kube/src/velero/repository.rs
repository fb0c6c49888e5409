//! The cairn repository a BackupStorageLocation stands for, and the storage credentials
//! of Velero's AWS-style credentials file.
//!
//! Layout: one cairn repository per source namespace, at `<prefix>/cairn/<namespace>` in
//! the location's bucket (as Velero keeps one repository per namespace under
//! `<prefix>/kopia/<namespace>`), so Velero's own data beside it is never touched.

use super::{BackupStorageLocation, DEFAULT_CREDENTIALS};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// cairn-specific BackupStorageLocation `config` key: a cairn repository URL used as the
/// base instead of the one derived from the provider and bucket (any storage cairn
/// supports, including `file:///path` for tests).
pub const CONFIG_CAIRN_LOCATION: &str = "cairnLocation";

/// Where the repository of one namespace is, and which Secret key opens its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VeleroRepository {
    /// Repository URL.
    pub location: String,
    /// The Secret (in Velero's namespace) and key holding the AWS-style credentials file;
    /// None when the location needs none.
    pub credentials: Option<(String, String)>,
}

/// The repository for `namespace` in `bsl`, or what is wrong with the location.
pub fn repository_for(
    bsl: &BackupStorageLocation,
    namespace: &str,
) -> Result<VeleroRepository, String> {
    let name = bsl.name_any();
    let spec = &bsl.spec;
    let credentials = || {
        Some(match &spec.credential {
            Some(c) => (c.name.clone(), c.key.clone()),
            None => (
                DEFAULT_CREDENTIALS.0.to_string(),
                DEFAULT_CREDENTIALS.1.to_string(),
            ),
        })
    };
    if let Some(base) = spec.config.get(CONFIG_CAIRN_LOCATION) {
        let (path, query) = match base.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (base.as_str(), String::new()),
        };
        let location = format!("{}/cairn/{namespace}{query}", path.trim_end_matches('/'));
        let credentials = if location.starts_with("s3://") {
            credentials()
        } else {
            None
        };
        return Ok(VeleroRepository {
            location,
            credentials,
        });
    }
    let provider = spec.provider.trim_start_matches("velero.io/");
    if provider != "aws" {
        return Err(format!(
            "BackupStorageLocation {name:?} has provider {:?}; cairn maps only \"aws\" (S3 and \
             S3-compatible stores) itself: set config.{CONFIG_CAIRN_LOCATION} to a cairn \
             repository URL for other storage",
            spec.provider
        ));
    }
    let Some(storage) = spec
        .object_storage
        .as_ref()
        .filter(|o| !o.bucket.is_empty())
    else {
        return Err(format!(
            "BackupStorageLocation {name:?} names no objectStorage.bucket"
        ));
    };
    if spec.config.get("insecureSkipTLSVerify").map(String::as_str) == Some("true") {
        return Err(format!(
            "BackupStorageLocation {name:?} sets insecureSkipTLSVerify: cairn never skips TLS \
             verification; give the store a certificate the job image trusts, or use an http:// s3Url"
        ));
    }
    let prefix = storage
        .prefix
        .as_deref()
        .unwrap_or_default()
        .trim_matches('/');
    let path = if prefix.is_empty() {
        format!("cairn/{namespace}")
    } else {
        format!("{prefix}/cairn/{namespace}")
    };
    let mut options = Vec::new();
    if let Some(region) = spec.config.get("region").filter(|r| !r.is_empty()) {
        options.push(format!("region={region}"));
    }
    if let Some(url) = spec.config.get("s3Url").filter(|u| !u.is_empty()) {
        options.push(format!("endpoint={url}"));
    }
    if let Some(style) = spec.config.get("s3ForcePathStyle") {
        let on = style.eq_ignore_ascii_case("true");
        options.push(format!("path_style={on}"));
    }
    let query = if options.is_empty() {
        String::new()
    } else {
        format!("?{}", options.join("&"))
    };
    Ok(VeleroRepository {
        location: format!("s3://{}/{path}{query}", storage.bucket),
        credentials: credentials(),
    })
}

/// The environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
/// `AWS_SESSION_TOKEN`) of `profile` in an AWS-style credentials file, as Velero's aws
/// plugin reads it; an error names what is missing.
pub fn aws_credentials(text: &str, profile: &str) -> Result<BTreeMap<String, String>, String> {
    let mut section = String::new();
    let mut found = false;
    let mut env = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").to_string();
            found |= section == profile;
            continue;
        }
        if section != profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let var = match key.trim() {
            "aws_access_key_id" => "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key" => "AWS_SECRET_ACCESS_KEY",
            "aws_session_token" => "AWS_SESSION_TOKEN",
            _ => continue,
        };
        env.insert(var.to_string(), value.trim().to_string());
    }
    if !found {
        return Err(format!(
            "the credentials file has no [{profile}] section (expected an AWS-style file: \
             [{profile}] aws_access_key_id=... aws_secret_access_key=...)"
        ));
    }
    for needed in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if !env.contains_key(needed) {
            return Err(format!(
                "the [{profile}] section of the credentials file has no {}",
                needed.to_lowercase()
            ));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bsl(spec: serde_json::Value) -> BackupStorageLocation {
        serde_json::from_value(json!({
            "apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
            "metadata": {"name": "default", "namespace": "velero"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn locations_map_to_one_repository_per_namespace() {
        let cases = [
            (
                json!({"provider": "aws", "objectStorage": {"bucket": "b", "prefix": "/velero/"},
                       "config": {"region": "eu-west-1"}}),
                "s3://b/velero/cairn/shop?region=eu-west-1",
                Some(("cloud-credentials", "cloud")),
            ),
            (
                json!({"provider": "velero.io/aws", "objectStorage": {"bucket": "b"},
                       "config": {"region": "minio", "s3Url": "http://minio:9000", "s3ForcePathStyle": "true"},
                       "credential": {"name": "mine", "key": "creds"}}),
                "s3://b/cairn/shop?region=minio&endpoint=http://minio:9000&path_style=true",
                Some(("mine", "creds")),
            ),
            (
                json!({"provider": "aws", "objectStorage": {"bucket": "b"},
                       "config": {"cairnLocation": "file:///srv/repos/"}}),
                "file:///srv/repos/cairn/shop",
                None,
            ),
            (
                json!({"provider": "gcp", "objectStorage": {"bucket": "b"},
                       "config": {"cairnLocation": "s3://x/p?region=r"}}),
                "s3://x/p/cairn/shop?region=r",
                Some(("cloud-credentials", "cloud")),
            ),
        ];
        for (spec, location, credentials) in cases {
            let repo = repository_for(&bsl(spec.clone()), "shop").unwrap();
            assert_eq!(repo.location, location, "{spec}");
            assert_eq!(
                repo.credentials,
                credentials.map(|(a, b)| (a.to_string(), b.to_string())),
                "{spec}"
            );
        }
    }

    #[test]
    fn unusable_locations_say_what_to_change() {
        let cases = [
            (
                json!({"provider": "gcp", "objectStorage": {"bucket": "b"}}),
                "cairnLocation",
            ),
            (json!({"provider": "aws"}), "objectStorage.bucket"),
            (
                json!({"provider": "aws", "objectStorage": {"bucket": "b"},
                       "config": {"insecureSkipTLSVerify": "true"}}),
                "insecureSkipTLSVerify",
            ),
        ];
        for (spec, needle) in cases {
            let err = repository_for(&bsl(spec.clone()), "shop").unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn credentials_files_yield_the_profile_s_keys() {
        let text = "[other]\naws_access_key_id = X\n\n[default]\naws_access_key_id=AKIA\n\
                    aws_secret_access_key = s3cr=t\n# comment\n";
        let env = aws_credentials(text, "default").unwrap();
        assert_eq!(env["AWS_ACCESS_KEY_ID"], "AKIA");
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "s3cr=t");
        assert!(aws_credentials(text, "prod")
            .unwrap_err()
            .contains("[prod]"));
        let partial = "[default]\naws_access_key_id=AKIA\n";
        assert!(aws_credentials(partial, "default")
            .unwrap_err()
            .contains("aws_secret_access_key"));
    }
}
