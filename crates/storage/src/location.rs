//! Repository locations: parsing the URL forms users type, and building the
//! OpenDAL operator each one names.
//!
//! Invariant: no credential ever reaches [`Location::redacted`], an error
//! message or a `Debug` output. Credentials come from a [`Credentials`]
//! (passed values over the process environment) or, for WebDAV only, from
//! the URL's userinfo, which is kept out of every message.
//!
//! [`Credentials`]: crate::Credentials

use crate::{Result, StorageError, StorageErrorKind};
use opendal::{services, Operator};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Environment variable holding the WebDAV user name when the URL has none.
pub const WEBDAV_USER_ENV: &str = "CAIRN_WEBDAV_USER";
/// Environment variable holding the WebDAV password when the URL has none.
pub const WEBDAV_PASSWORD_ENV: &str = "CAIRN_WEBDAV_PASSWORD";

/// A parsed repository location.
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    service: Service,
}

#[derive(Clone, PartialEq, Eq)]
enum Service {
    Fs {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        path_style: Option<bool>,
        anonymous: bool,
    },
    Azblob {
        container: String,
        prefix: String,
        account: Option<String>,
        endpoint: Option<String>,
    },
    Gcs {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        anonymous: bool,
    },
    Webdav {
        tls: bool,
        authority: String,
        root: String,
        user: Option<String>,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Location").field(&self.redacted()).finish()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

const FORMS: &str = "a path, file:///path, s3://bucket/prefix, azblob://container/prefix, \
                     gcs://bucket/prefix, webdav://host/path or webdavs://host/path";

/// The error for a local repository path that names something other than
/// a directory (a regular file, say).
pub(crate) fn not_a_directory(root: &std::path::Path, op: String) -> StorageError {
    StorageError::new(
        StorageErrorKind::InvalidConfig,
        op,
        format!(
            "{} is a file, not a directory: a local repository is a directory; give the path of \
             one (a new or empty one for `cairn init`)",
            root.display()
        ),
    )
}

/// An OpenDAL builder refused the location's settings: its gist, the full
/// text as detail.
fn unconfigurable(what: &str, e: &opendal::Error) -> StorageError {
    let full = e.to_string();
    invalid(
        what,
        format!(
            "cannot configure the backend: {}",
            crate::opendal_error::gist(&full)
        ),
    )
    .with_detail(full)
}

fn invalid(what: &str, message: impl Into<String>) -> StorageError {
    StorageError::new(
        StorageErrorKind::InvalidConfig,
        format!("open {what}"),
        message,
    )
}

fn percent_decode(s: &str, what: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| invalid(what, "the URL is not valid UTF-8 after percent-decoding"))
}

/// Splits a URL query into options, refusing unknown and repeated keys.
/// Values are never echoed back: a mistyped option may hold a secret.
fn options(url: &url::Url, allowed: &[&str], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        if !allowed.contains(&key.as_ref()) {
            let known = if allowed.is_empty() {
                "this scheme takes no options".to_string()
            } else {
                format!("known options: {}", allowed.join(", "))
            };
            return Err(invalid(
                what,
                format!("unknown option {key:?} in the repository URL; {known}"),
            ));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(invalid(
                what,
                format!("option {key:?} is given twice in the repository URL"),
            ));
        }
    }
    Ok(out)
}

fn bool_option(opts: &BTreeMap<String, String>, key: &str, what: &str) -> Result<Option<bool>> {
    match opts.get(key).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(_) => Err(invalid(
            what,
            format!("option {key:?} must be true or false"),
        )),
    }
}

fn endpoint_option(opts: &BTreeMap<String, String>, what: &str) -> Result<Option<String>> {
    let Some(endpoint) = opts.get("endpoint") else {
        return Ok(None);
    };
    match url::Url::parse(endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(Some(endpoint.trim_end_matches('/').to_string()))
        }
        _ => Err(invalid(
            what,
            "option \"endpoint\" must be an http:// or https:// URL, e.g. endpoint=http://127.0.0.1:9000",
        )),
    }
}

/// Environment lookup used while building an operator; injectable for tests.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads a non-empty variable from the process environment.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn first_env(env: Env<'_>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| env(n))
}

impl Location {
    /// Parses a repository location. Malformed input gives an
    /// `InvalidConfig` error saying what is wrong and the expected form.
    pub fn parse(location: &str) -> Result<Self> {
        let location = location.trim();
        if location.is_empty() {
            return Err(invalid(
                "\"\"",
                format!("the repository location is empty; use {FORMS}"),
            ));
        }
        let Some((scheme, _)) = location.split_once("://") else {
            return Ok(Self::fs(Path::new(location)));
        };
        let scheme = scheme.to_ascii_lowercase();
        // What we may show of the location in errors: scheme, host and path,
        // never userinfo or query values.
        let url = url::Url::parse(location).map_err(|e| {
            invalid(
                &format!("{scheme}://..."),
                format!("the repository URL is malformed ({e}); use {FORMS}"),
            )
        })?;
        let what = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.path()
        );
        if url.fragment().is_some() {
            return Err(invalid(&what, "the repository URL must not contain '#'"));
        }
        let has_userinfo = !url.username().is_empty() || url.password().is_some();
        if has_userinfo && !matches!(scheme.as_str(), "webdav" | "webdavs") {
            return Err(invalid(
                &what,
                "credentials do not belong in the repository URL; set them in the environment \
                 (see docs/STORAGE.md)",
            ));
        }
        match scheme.as_str() {
            "file" => Self::parse_file(&url, &what),
            "s3" => {
                let (bucket, prefix) = bucket_and_prefix(&url, &what, "s3://bucket/prefix")?;
                let opts = options(
                    &url,
                    &["endpoint", "region", "path_style", "anonymous"],
                    &what,
                )?;
                Ok(Self {
                    service: Service::S3 {
                        bucket,
                        prefix,
                        endpoint: endpoint_option(&opts, &what)?,
                        region: opts.get("region").cloned(),
                        path_style: bool_option(&opts, "path_style", &what)?,
                        anonymous: bool_option(&opts, "anonymous", &what)?.unwrap_or(false),
                    },
                })
            }
            "azblob" => {
                let (container, prefix) =
                    bucket_and_prefix(&url, &what, "azblob://container/prefix")?;
                let opts = options(&url, &["endpoint", "account"], &what)?;
                Ok(Self {
                    service: Service::Azblob {
                        container,
                        prefix,
                        account: opts.get("account").cloned(),
                        endpoint: endpoint_option(&opts, &what)?,
                    },
                })
            }
            "gcs" | "gs" => {
                let (bucket, prefix) = bucket_and_prefix(&url, &what, "gcs://bucket/prefix")?;
                let opts = options(&url, &["endpoint", "anonymous"], &what)?;
                Ok(Self {
                    service: Service::Gcs {
                        bucket,
                        prefix,
                        endpoint: endpoint_option(&opts, &what)?,
                        anonymous: bool_option(&opts, "anonymous", &what)?.unwrap_or(false),
                    },
                })
            }
            "webdav" | "webdavs" => Self::parse_webdav(&url, &what, scheme == "webdavs"),
            other => Err(invalid(
                &what,
                format!("unsupported repository URL scheme {other:?}; use {FORMS}"),
            )),
        }
    }

    fn fs(path: &Path) -> Self {
        // `absolute` fails only for an empty path, which parse rejects.
        let root = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self {
            service: Service::Fs { root },
        }
    }

    fn parse_file(url: &url::Url, what: &str) -> Result<Self> {
        if url.query().is_some() {
            return Err(invalid(what, "file:// URLs take no options"));
        }
        match url.host_str() {
            None | Some("") | Some("localhost") => {}
            Some(host) => {
                return Err(invalid(
                    what,
                    format!(
                        "file URLs need an absolute path: file:///path (three slashes); \
                         {host:?} was read as a host name"
                    ),
                ))
            }
        }
        let path = url
            .to_file_path()
            .map_err(|()| invalid(what, "file URLs need an absolute path: file:///path"))?;
        Ok(Self::fs(&path))
    }

    fn parse_webdav(url: &url::Url, what: &str, tls: bool) -> Result<Self> {
        let form = if tls {
            "webdavs://[user[:password]@]host[:port]/path"
        } else {
            "webdav://[user[:password]@]host[:port]/path"
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => {
                return Err(invalid(
                    what,
                    format!("the URL has no host; expected {form}"),
                ))
            }
        };
        options(url, &[], what)?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let user = match url.username() {
            "" => None,
            u => Some(percent_decode(u, what)?),
        };
        let password = url
            .password()
            .map(|p| percent_decode(p, what))
            .transpose()?;
        Ok(Self {
            service: Service::Webdav {
                tls,
                authority,
                root: percent_decode(url.path(), what)?,
                user,
                password,
            },
        })
    }

    /// The location without credentials, for messages and `Storage::location`.
    pub fn redacted(&self) -> String {
        match &self.service {
            Service::Fs { root } => root.display().to_string(),
            Service::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => with_endpoint(format!("s3://{bucket}/{prefix}"), endpoint),
            Service::Azblob {
                container,
                prefix,
                endpoint,
                ..
            } => with_endpoint(format!("azblob://{container}/{prefix}"), endpoint),
            Service::Gcs {
                bucket,
                prefix,
                endpoint,
                ..
            } => with_endpoint(format!("gcs://{bucket}/{prefix}"), endpoint),
            Service::Webdav {
                tls,
                authority,
                root,
                ..
            } => {
                let scheme = if *tls { "webdavs" } else { "webdav" };
                format!("{scheme}://{authority}{root}")
            }
        }
    }

    /// The OpenDAL scheme name: `fs`, `s3`, `azblob`, `gcs` or `webdav`.
    pub fn scheme(&self) -> &'static str {
        match self.service {
            Service::Fs { .. } => "fs",
            Service::S3 { .. } => "s3",
            Service::Azblob { .. } => "azblob",
            Service::Gcs { .. } => "gcs",
            Service::Webdav { .. } => "webdav",
        }
    }

    /// The local root directory, for a filesystem location.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.service {
            Service::Fs { root } => Some(root),
            _ => None,
        }
    }

    /// What to check when the service refuses our credentials.
    pub(crate) fn credential_hint(&self) -> &'static str {
        match self.service {
            Service::Fs { .. } => "check the permissions of the repository directory",
            Service::S3 { .. } => {
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the pod's \
                 web identity) and the bucket policy"
            }
            Service::Azblob { .. } => {
                "check AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY (or AZURE_STORAGE_SAS_TOKEN)"
            }
            Service::Gcs { .. } => {
                "check GOOGLE_APPLICATION_CREDENTIALS and the service account's bucket roles"
            }
            Service::Webdav { .. } => {
                "check the user and password (URL userinfo or CAIRN_WEBDAV_USER / CAIRN_WEBDAV_PASSWORD)"
            }
        }
    }

    /// The bucket or container, for object-store locations.
    pub(crate) fn bucket(&self) -> Option<&str> {
        match &self.service {
            Service::S3 { bucket, .. } | Service::Gcs { bucket, .. } => Some(bucket),
            Service::Azblob { container, .. } => Some(container),
            _ => None,
        }
    }

    /// For a filesystem location: an operator for reading an existing
    /// root, without the staging folder (building an OpenDAL fs operator
    /// creates its root and staging folder; this one finds both there or
    /// creates only what is missing of a root that exists, i.e. nothing).
    /// `None` for other services.
    pub(crate) fn fs_reader(&self) -> Option<Result<Operator>> {
        let Service::Fs { root } = &self.service else {
            return None;
        };
        let what = self.redacted();
        let builder = services::Fs::default().root(&root.to_string_lossy());
        Some(
            Operator::new(builder)
                .map(|b| b.finish())
                .map_err(|e| unconfigurable(&what, &e)),
        )
    }

    /// Builds the OpenDAL operator, reading credentials from `env`. For a
    /// filesystem location this creates the root and its staging folder:
    /// call it only to write.
    pub(crate) fn operator(&self, env: Env<'_>) -> Result<Operator> {
        let what = self.redacted();
        let map = |e: opendal::Error| unconfigurable(&what, &e);
        let op = match &self.service {
            Service::Fs { root } => {
                if root.exists() && !root.is_dir() {
                    return Err(not_a_directory(root, format!("open {what}")));
                }
                let tmp = crate::staging_dir(root);
                let builder = services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&tmp.to_string_lossy());
                Operator::new(builder).map_err(map)?.finish()
            }
            Service::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
                anonymous,
            } => {
                let endpoint = endpoint
                    .clone()
                    .or_else(|| first_env(env, &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]));
                let region = region
                    .clone()
                    .or_else(|| first_env(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]))
                    .or_else(|| endpoint.as_ref().map(|_| "us-east-1".to_string()))
                    .ok_or_else(|| {
                        invalid(
                            &what,
                            "no S3 region: add ?region=REGION to the URL or set AWS_REGION",
                        )
                    })?;
                let mut builder = services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"))
                    .region(&region);
                if let Some(endpoint) = &endpoint {
                    builder = builder.endpoint(endpoint);
                }
                // Custom endpoints (MinIO, Ceph, moto, ...) mostly want
                // path-style; AWS itself prefers virtual-host style.
                if !path_style.unwrap_or(endpoint.is_some()) {
                    builder = builder.enable_virtual_host_style();
                }
                if *anonymous {
                    // Unsigned requests: look for no credentials at all
                    // (no profile files, no EC2 metadata service).
                    builder = builder
                        .allow_anonymous()
                        .disable_config_load()
                        .disable_ec2_metadata();
                } else {
                    // Static keys from `env`, which may hold values a caller passed
                    // (over the process environment's); the rest of the AWS chain
                    // (profiles, web identity, instance metadata) still applies when
                    // these are absent.
                    if let Some(key) = env("AWS_ACCESS_KEY_ID") {
                        builder = builder.access_key_id(&key);
                    }
                    if let Some(secret) = env("AWS_SECRET_ACCESS_KEY") {
                        builder = builder.secret_access_key(&secret);
                    }
                    if let Some(token) = env("AWS_SESSION_TOKEN") {
                        builder = builder.session_token(&token);
                    }
                }
                Operator::new(builder).map_err(map)?.finish()
            }
            Service::Azblob {
                container,
                prefix,
                account,
                endpoint,
            } => {
                let account = account.clone().or_else(|| {
                    first_env(
                        env,
                        &["AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME"],
                    )
                });
                let endpoint = match (endpoint, &account) {
                    (Some(e), _) => e.clone(),
                    (None, Some(a)) => format!("https://{a}.blob.core.windows.net"),
                    (None, None) => {
                        return Err(invalid(
                            &what,
                            "no Azure storage account: add ?account=NAME to the URL or set \
                             AZURE_STORAGE_ACCOUNT",
                        ))
                    }
                };
                let mut builder = services::Azblob::default()
                    .container(container)
                    .root(&format!("/{prefix}"))
                    .endpoint(&endpoint);
                if let Some(a) = &account {
                    builder = builder.account_name(a);
                }
                if let Some(key) =
                    first_env(env, &["AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY"])
                {
                    builder = builder.account_key(&key);
                }
                if let Some(sas) = env("AZURE_STORAGE_SAS_TOKEN") {
                    builder = builder.sas_token(&sas);
                }
                Operator::new(builder).map_err(map)?.finish()
            }
            Service::Gcs {
                bucket,
                prefix,
                endpoint,
                anonymous,
            } => {
                let mut builder = services::Gcs::default()
                    .bucket(bucket)
                    .root(&format!("/{prefix}"));
                if let Some(e) = endpoint {
                    builder = builder.endpoint(e);
                }
                if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
                    builder = builder.credential_path(&path);
                }
                if *anonymous {
                    builder = builder.allow_anonymous();
                }
                Operator::new(builder).map_err(map)?.finish()
            }
            Service::Webdav {
                tls,
                authority,
                root,
                user,
                password,
            } => {
                let scheme = if *tls { "https" } else { "http" };
                let mut builder = services::Webdav::default()
                    .endpoint(&format!("{scheme}://{authority}"))
                    .root(root);
                if let Some(u) = user.clone().or_else(|| env(WEBDAV_USER_ENV)) {
                    builder = builder.username(&u);
                }
                if let Some(p) = password.clone().or_else(|| env(WEBDAV_PASSWORD_ENV)) {
                    builder = builder.password(&p);
                }
                Operator::new(builder).map_err(map)?.finish()
            }
        };
        Ok(op)
    }
}

fn with_endpoint(base: String, endpoint: &Option<String>) -> String {
    match endpoint {
        Some(e) => format!("{base}?endpoint={e}"),
        None => base,
    }
}

/// Splits `scheme://bucket/some/prefix` into the bucket and a prefix that
/// is empty or ends with `/`.
fn bucket_and_prefix(url: &url::Url, what: &str, form: &str) -> Result<(String, String)> {
    let bucket = match url.host_str() {
        Some(b) if !b.is_empty() => percent_decode(b, what)?,
        _ => {
            return Err(invalid(
                what,
                format!("the URL names no bucket or container; expected {form}"),
            ))
        }
    };
    if url.port().is_some() {
        return Err(invalid(
            what,
            format!(
                "a port after the bucket name is not allowed; put the server in \
                 ?endpoint=http://host:port (expected {form})"
            ),
        ));
    }
    // The URL parser has already resolved `.` and `..` segments.
    let path = percent_decode(url.path(), what)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let prefix = if segments.is_empty() {
        String::new()
    } else {
        format!("{}/", segments.join("/"))
    };
    Ok((bucket, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(location: &str) -> StorageError {
        match Location::parse(location) {
            Ok(l) => panic!("{location} parsed as {l:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_paths_and_file_urls_are_filesystem_roots() {
        let l = Location::parse("/srv/backups").unwrap();
        assert_eq!(l.local_root(), Some(Path::new("/srv/backups")));
        let l = Location::parse("file:///srv/my%20backups").unwrap();
        assert_eq!(l.local_root(), Some(Path::new("/srv/my backups")));
        assert_eq!(l.scheme(), "fs");
        let relative = Location::parse("repo").unwrap();
        assert!(relative.local_root().unwrap().is_absolute());
    }

    #[test]
    fn file_url_with_a_host_explains_the_three_slashes() {
        let e = err("file://srv/backups");
        assert_eq!(e.kind, StorageErrorKind::InvalidConfig);
        assert!(e.message.contains("file:///path"), "{e}");
    }

    #[test]
    fn s3_url_carries_bucket_prefix_and_options() {
        let l = Location::parse(
            "s3://my-bucket/team/repo/?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true",
        )
        .unwrap();
        assert!(
            l.service
                == Service::S3 {
                    bucket: "my-bucket".into(),
                    prefix: "team/repo/".into(),
                    endpoint: Some("http://127.0.0.1:9000".into()),
                    region: Some("eu-west-1".into()),
                    path_style: Some(true),
                    anonymous: false,
                }
        );
        assert_eq!(
            l.redacted(),
            "s3://my-bucket/team/repo/?endpoint=http://127.0.0.1:9000"
        );
        assert_eq!(l.bucket(), Some("my-bucket"));
    }

    #[test]
    fn s3_url_without_prefix_uses_the_bucket_root() {
        let l = Location::parse("s3://b").unwrap();
        assert!(matches!(l.service, Service::S3 { ref prefix, .. } if prefix.is_empty()));
        let l = Location::parse("s3://b/x/../y//z/").unwrap();
        assert_eq!(l.redacted(), "s3://b/y/z/");
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let cases = [
            ("s3:///prefix", "no bucket"),
            ("s3://b/p?endpont=http://x", "unknown option \"endpont\""),
            ("s3://b/p?region=a&region=b", "given twice"),
            ("s3://b/p?path_style=maybe", "true or false"),
            ("s3://b/p?endpoint=127.0.0.1:9000", "http:// or https://"),
            ("s3://b:9000/p", "?endpoint=http://host:port"),
            ("ftp://host/p", "unsupported repository URL scheme \"ftp\""),
            ("webdav:///path", "no host"),
            ("", "empty"),
        ];
        for (location, expected) in cases {
            let e = err(location);
            assert_eq!(e.kind, StorageErrorKind::InvalidConfig, "{location}");
            assert!(e.to_string().contains(expected), "{location}: {e}");
        }
    }

    #[test]
    fn credentials_in_object_store_urls_are_refused_without_echoing_them() {
        let e = err("s3://AKIAEXAMPLE:hunter2@bucket/prefix");
        assert!(e.message.contains("do not belong"), "{e}");
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("AKIAEXAMPLE"),
            "{text}"
        );
    }

    #[test]
    fn unknown_option_values_are_not_echoed() {
        let e = err("s3://b/p?secret_access_key=hunter2");
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }

    #[test]
    fn webdav_userinfo_is_used_but_never_shown() {
        let l = Location::parse("webdavs://alice:s%40cret@dav.example.com:8443/backups").unwrap();
        assert!(
            l.service
                == Service::Webdav {
                    tls: true,
                    authority: "dav.example.com:8443".into(),
                    root: "/backups".into(),
                    user: Some("alice".into()),
                    password: Some("s@cret".into()),
                }
        );
        let shown = format!("{l} {l:?}");
        assert!(
            !shown.contains("cret") && !shown.contains("alice"),
            "{shown}"
        );
        assert_eq!(l.redacted(), "webdavs://dav.example.com:8443/backups");
    }

    #[test]
    fn s3_region_comes_from_url_then_env_then_endpoint_default() {
        let no_env = |_: &str| None;
        let e = Location::parse("s3://b/p")
            .unwrap()
            .operator(&no_env)
            .unwrap_err();
        assert!(e.message.contains("AWS_REGION"), "{e}");
        let region_env = |n: &str| (n == "AWS_DEFAULT_REGION").then(|| "eu-north-1".to_string());
        let op = Location::parse("s3://b/p")
            .unwrap()
            .operator(&region_env)
            .unwrap();
        assert_eq!(op.info().name(), "b");
        let op = Location::parse("s3://b/p?endpoint=http://127.0.0.1:9")
            .unwrap()
            .operator(&no_env)
            .unwrap();
        assert_eq!(op.info().root(), "/p/");
    }

    #[test]
    fn azblob_needs_an_account_or_endpoint() {
        let no_env = |_: &str| None;
        let e = Location::parse("azblob://c/p")
            .unwrap()
            .operator(&no_env)
            .unwrap_err();
        assert!(e.message.contains("AZURE_STORAGE_ACCOUNT"), "{e}");
        let account = |n: &str| (n == "AZURE_STORAGE_ACCOUNT").then(|| "acct".to_string());
        let op = Location::parse("azblob://c/p")
            .unwrap()
            .operator(&account)
            .unwrap();
        assert_eq!(op.info().scheme(), opendal::Scheme::Azblob);
    }

    #[test]
    fn gcs_and_webdav_build_operators() {
        let no_env = |_: &str| None;
        let op = Location::parse("gcs://bkt/x/y")
            .unwrap()
            .operator(&no_env)
            .unwrap();
        assert_eq!(op.info().root(), "/x/y/");
        let op = Location::parse("webdav://127.0.0.1:8080/dav/repo")
            .unwrap()
            .operator(&no_env)
            .unwrap();
        assert_eq!(op.info().scheme(), opendal::Scheme::Webdav);
    }
}
