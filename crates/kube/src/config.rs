//! The controller's ConfigMap: the KDMP keys users already have, plus the `backupPVC`
//! section, parsed and checked key by key.
//!
//! Invariant: parsing never fails as a whole. A bad key keeps its default in [`Config`] and
//! is recorded in [`Config::problems`]; the controller refuses to act on the resources that
//! key affects (and says so in a condition) while everything else keeps running.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Per-storage-class exclude lists, raw; parsed by the job (cairn-policy).
pub const KEY_EXCLUDE_FILE_LIST: &str = "KDMP_EXCLUDE_FILE_LIST";
/// Maximum concurrent backup Jobs.
pub const KEY_BACKUP_JOB_LIMIT: &str = "KDMP_BACKUP_JOB_LIMIT";
/// Maximum concurrent restore Jobs.
pub const KEY_RESTORE_JOB_LIMIT: &str = "KDMP_RESTORE_JOB_LIMIT";
/// Maximum concurrent maintenance (and catalog) Jobs.
pub const KEY_MAINTENANCE_JOB_LIMIT: &str = "KDMP_MAINTENANCE_JOB_LIMIT";
/// Job container CPU request.
pub const KEY_REQUEST_CPU: &str = "KDMP_KOPIAEXECUTOR_REQUEST_CPU";
/// Job container CPU limit.
pub const KEY_LIMIT_CPU: &str = "KDMP_KOPIAEXECUTOR_LIMIT_CPU";
/// Job container memory request.
pub const KEY_REQUEST_MEMORY: &str = "KDMP_KOPIAEXECUTOR_REQUEST_MEMORY";
/// Job container memory limit.
pub const KEY_LIMIT_MEMORY: &str = "KDMP_KOPIAEXECUTOR_LIMIT_MEMORY";
/// How long a VolumeSnapshot may take to become ready.
pub const KEY_SNAPSHOT_TIMEOUT: &str = "SNAPSHOT_TIMEOUT";
/// How long a Job's pod may take to start running before the attempt counts as failed.
pub const KEY_JOB_START_TIMEOUT: &str = "JOB_START_TIMEOUT";
/// `Generic` forces direct mode for `mode: Auto` backups.
pub const KEY_BACKUP_TYPE: &str = "BACKUP_TYPE";
/// Image pull Secret for the job image.
pub const KEY_IMAGE_SECRET: &str = "KDMP_KOPIAEXECUTOR_IMAGE_SECRET";
/// JSON: per source storage class, the backupPVC's storage class and access mode.
pub const KEY_BACKUP_PVC: &str = "backupPVC";

/// Keys whose problems block backups.
pub const BACKUP_KEYS: &[&str] = &[
    KEY_BACKUP_JOB_LIMIT,
    KEY_REQUEST_CPU,
    KEY_LIMIT_CPU,
    KEY_REQUEST_MEMORY,
    KEY_LIMIT_MEMORY,
    KEY_SNAPSHOT_TIMEOUT,
    KEY_JOB_START_TIMEOUT,
    KEY_BACKUP_TYPE,
    KEY_BACKUP_PVC,
];
/// Keys whose problems block restores.
pub const RESTORE_KEYS: &[&str] = &[
    KEY_RESTORE_JOB_LIMIT,
    KEY_REQUEST_CPU,
    KEY_LIMIT_CPU,
    KEY_REQUEST_MEMORY,
    KEY_LIMIT_MEMORY,
];
/// Keys whose problems block maintenance and catalog refreshes.
pub const MAINTENANCE_KEYS: &[&str] = &[
    KEY_MAINTENANCE_JOB_LIMIT,
    KEY_REQUEST_CPU,
    KEY_LIMIT_CPU,
    KEY_REQUEST_MEMORY,
    KEY_LIMIT_MEMORY,
];

/// Default concurrent Jobs of each type.
pub const DEFAULT_JOB_LIMIT: u32 = 5;
/// Default SNAPSHOT_TIMEOUT.
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default JOB_START_TIMEOUT: long enough for an image pull and a volume attach.
pub const DEFAULT_JOB_START_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The backupPVC settings for one source storage class.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupPvcConfig {
    /// Storage class of the backupPVC; the source PVC's class when absent or empty.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// `true`: the backupPVC is ReadOnlyMany; otherwise ReadWriteOnce.
    #[serde(default)]
    pub read_only: Option<bool>,
}

/// CPU and memory of job containers, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JobResources {
    /// CPU request.
    pub request_cpu: Option<String>,
    /// CPU limit.
    pub limit_cpu: Option<String>,
    /// Memory request.
    pub request_memory: Option<String>,
    /// Memory limit.
    pub limit_memory: Option<String>,
}

/// The parsed ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Raw KDMP_EXCLUDE_FILE_LIST, handed to backup Jobs unparsed.
    pub exclude_file_list: Option<String>,
    /// Concurrent backup Jobs allowed.
    pub backup_job_limit: u32,
    /// Concurrent restore Jobs allowed.
    pub restore_job_limit: u32,
    /// Concurrent maintenance and catalog Jobs allowed.
    pub maintenance_job_limit: u32,
    /// Job container resources.
    pub resources: JobResources,
    /// How long a VolumeSnapshot may take to become ready to use.
    pub snapshot_timeout: Duration,
    /// How long a Job's pod may wait to run (unschedulable, image pull, volume attach).
    pub job_start_timeout: Duration,
    /// BACKUP_TYPE=Generic: `mode: Auto` means direct.
    pub force_direct: bool,
    /// Image pull Secret for Jobs.
    pub image_pull_secret: Option<String>,
    /// backupPVC settings keyed by source storage class.
    pub backup_pvc: BTreeMap<String, BackupPvcConfig>,
    /// Key -> what is wrong with its value. Empty when the ConfigMap is valid.
    pub problems: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            exclude_file_list: None,
            backup_job_limit: DEFAULT_JOB_LIMIT,
            restore_job_limit: DEFAULT_JOB_LIMIT,
            maintenance_job_limit: DEFAULT_JOB_LIMIT,
            resources: JobResources {
                request_cpu: Some("100m".into()),
                limit_cpu: None,
                request_memory: Some("700Mi".into()),
                limit_memory: Some("1Gi".into()),
            },
            snapshot_timeout: DEFAULT_SNAPSHOT_TIMEOUT,
            job_start_timeout: DEFAULT_JOB_START_TIMEOUT,
            force_direct: false,
            image_pull_secret: None,
            backup_pvc: BTreeMap::new(),
            problems: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Parses the ConfigMap's `data`. Unknown keys (such as KDMP_KOPIAEXECUTOR_IMAGE, which
    /// cairn replaces with its own image) are ignored.
    pub fn from_data(data: &BTreeMap<String, String>) -> Config {
        let mut config = Config::default();
        let mut problems = BTreeMap::new();
        let mut note = |key: &str, message: String| {
            problems.insert(key.to_string(), message);
        };
        let get = |key: &str| data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());

        config.exclude_file_list = data
            .get(KEY_EXCLUDE_FILE_LIST)
            .filter(|v| !v.trim().is_empty())
            .cloned();
        for (key, slot) in [
            (KEY_BACKUP_JOB_LIMIT, &mut config.backup_job_limit),
            (KEY_RESTORE_JOB_LIMIT, &mut config.restore_job_limit),
            (KEY_MAINTENANCE_JOB_LIMIT, &mut config.maintenance_job_limit),
        ] {
            if let Some(value) = get(key) {
                match value.parse::<u32>() {
                    Ok(n) if n > 0 => *slot = n,
                    _ => note(
                        key,
                        format!(
                            "{key}: {value:?} is not a positive integer; use for example \"5\""
                        ),
                    ),
                }
            }
        }
        for (key, slot) in [
            (KEY_REQUEST_CPU, &mut config.resources.request_cpu),
            (KEY_LIMIT_CPU, &mut config.resources.limit_cpu),
            (KEY_REQUEST_MEMORY, &mut config.resources.request_memory),
            (KEY_LIMIT_MEMORY, &mut config.resources.limit_memory),
        ] {
            if let Some(value) = get(key) {
                match parse_quantity(value) {
                    Ok(_) => *slot = Some(value.to_string()),
                    Err(why) => note(key, format!("{key}: {value:?} is not a Kubernetes quantity ({why}); use for example \"0.5\", \"500m\" or \"2Gi\"")),
                }
            }
        }
        for (request, limit) in [
            (KEY_REQUEST_CPU, KEY_LIMIT_CPU),
            (KEY_REQUEST_MEMORY, KEY_LIMIT_MEMORY),
        ] {
            let pair = (
                get(request).map(parse_quantity),
                get(limit).map(parse_quantity),
            );
            if let (Some(Ok(r)), Some(Ok(l))) = pair {
                if r > l {
                    note(
                        limit,
                        format!("{limit} is smaller than {request}; Kubernetes rejects such a pod"),
                    );
                }
            }
        }
        if let Some(value) = get(KEY_SNAPSHOT_TIMEOUT) {
            match parse_duration(value) {
                Ok(d) if !d.is_zero() => config.snapshot_timeout = d,
                _ => note(KEY_SNAPSHOT_TIMEOUT, format!("{KEY_SNAPSHOT_TIMEOUT}: {value:?} is not a duration; use for example \"30m\" or \"1h30m\"")),
            }
        }
        if let Some(value) = get(KEY_JOB_START_TIMEOUT) {
            match parse_duration(value) {
                Ok(d) if !d.is_zero() => config.job_start_timeout = d,
                _ => note(KEY_JOB_START_TIMEOUT, format!("{KEY_JOB_START_TIMEOUT}: {value:?} is not a duration; use for example \"10m\"")),
            }
        }
        if let Some(value) = get(KEY_BACKUP_TYPE) {
            match value {
                "Generic" => config.force_direct = true,
                "CSI" | "Native" => config.force_direct = false,
                _ => note(
                    KEY_BACKUP_TYPE,
                    format!("{KEY_BACKUP_TYPE}: {value:?} is not one of Generic, CSI"),
                ),
            }
        }
        config.image_pull_secret = get(KEY_IMAGE_SECRET).map(str::to_string);
        if let Some(value) = get(KEY_BACKUP_PVC) {
            match parse_backup_pvc(value) {
                Ok(map) => config.backup_pvc = map,
                Err(why) => note(KEY_BACKUP_PVC, format!("{KEY_BACKUP_PVC}: {why}")),
            }
        }
        config.problems = problems;
        config
    }

    /// The problems among `keys`, joined into one message, or None when they are all valid.
    pub fn problems_with(&self, keys: &[&str]) -> Option<String> {
        let found: Vec<&str> = keys
            .iter()
            .filter_map(|k| self.problems.get(*k))
            .map(String::as_str)
            .collect();
        (!found.is_empty()).then(|| found.join("; "))
    }
}

/// Parses the backupPVC JSON: either the per-class map itself or Velero's
/// `{"backupPVC": {...}}` wrapper around it.
fn parse_backup_pvc(text: &str) -> Result<BTreeMap<String, BackupPvcConfig>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let inner = match value.get("backupPVC") {
        Some(inner) if value.as_object().is_some_and(|o| o.len() == 1) => inner.clone(),
        _ => value,
    };
    let map: BTreeMap<String, BackupPvcConfig> = serde_json::from_value(inner).map_err(|e| {
        format!("expected {{\"<storage class>\": {{\"storageClass\": \"...\", \"readOnly\": true}}}} ({e})")
    })?;
    Ok(map
        .into_iter()
        .map(|(class, mut c)| {
            // An empty override means "the source's class", as in Velero.
            c.storage_class = c.storage_class.filter(|s| !s.is_empty());
            (class, c)
        })
        .collect())
}

/// Parses a Kubernetes quantity (`0.2`, `100m`, `700Mi`, `1Gi`, `1e3`) into its value in
/// base units, for comparing a request with its limit.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let base: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    if base < 0.0 {
        return Err("negative".into());
    }
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| format!("bad exponent {s:?}"))?;
            10f64.powi(exp)
        }
        s => return Err(format!("unknown suffix {s:?}")),
    };
    Ok(base * factor)
}

/// Parses a Go-style duration (`5m`, `5m0s`, `1h30m`, `90s`, `250ms`), the format of
/// SNAPSHOT_TIMEOUT, and of the intervals in BackupRepository specs.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n]
            .parse()
            .map_err(|_| format!("expected a number in {text:?}"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "unknown unit {unit:?} in {text:?} (use h, m, s, ms)"
                ))
            }
        };
        rest = &rest[u..];
        total += value * seconds;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_documented_kdmp_config_parses_without_problems() {
        let config = Config::from_data(&data(&[
            ("KDMP_BACKUP_JOB_LIMIT", "5"),
            ("KDMP_DELETE_JOB_LIMIT", "5"),
            (
                "KDMP_EXCLUDE_FILE_LIST",
                "px-db=dir1,file1,dir2\nmysql=dir1,file1,dir2\n",
            ),
            ("KDMP_KOPIAEXECUTOR_IMAGE", "kopiaexecutor:1.2.10"),
            ("KDMP_KOPIAEXECUTOR_IMAGE_SECRET", ""),
            ("KDMP_KOPIAEXECUTOR_LIMIT_CPU", "0.2"),
            ("KDMP_KOPIAEXECUTOR_LIMIT_MEMORY", "1Gi"),
            ("KDMP_KOPIAEXECUTOR_REQUEST_CPU", "0.1"),
            ("KDMP_KOPIAEXECUTOR_REQUEST_MEMORY", "700Mi"),
            ("KDMP_MAINTENANCE_JOB_LIMIT", "3"),
            ("KDMP_RESTORE_JOB_LIMIT", "4"),
            ("SNAPSHOT_TIMEOUT", ""),
        ]));
        assert_eq!(config.problems, BTreeMap::new());
        assert_eq!(
            (
                config.backup_job_limit,
                config.restore_job_limit,
                config.maintenance_job_limit
            ),
            (5, 4, 3)
        );
        assert_eq!(config.snapshot_timeout, DEFAULT_SNAPSHOT_TIMEOUT);
        assert_eq!(config.resources.limit_cpu.as_deref(), Some("0.2"));
        assert_eq!(config.image_pull_secret, None);
        assert!(config.exclude_file_list.unwrap().contains("mysql=dir1"));
    }

    #[test]
    fn bad_values_are_reported_per_key_and_keep_defaults() {
        let config = Config::from_data(&data(&[
            ("KDMP_BACKUP_JOB_LIMIT", "five"),
            ("KDMP_RESTORE_JOB_LIMIT", "0"),
            ("KDMP_KOPIAEXECUTOR_LIMIT_MEMORY", "1GB"),
            ("SNAPSHOT_TIMEOUT", "30 minutes"),
            ("backupPVC", "{\"gp3\": {\"storageClass\": 1}}"),
        ]));
        assert_eq!(config.backup_job_limit, DEFAULT_JOB_LIMIT);
        let keys: Vec<&str> = config.problems.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "KDMP_BACKUP_JOB_LIMIT",
                "KDMP_KOPIAEXECUTOR_LIMIT_MEMORY",
                "KDMP_RESTORE_JOB_LIMIT",
                "SNAPSHOT_TIMEOUT",
                "backupPVC"
            ]
        );
        assert!(config
            .problems_with(MAINTENANCE_KEYS)
            .unwrap()
            .contains("1GB"));
        assert!(config.problems_with(&[KEY_MAINTENANCE_JOB_LIMIT]).is_none());
    }

    #[test]
    fn a_limit_below_its_request_is_a_problem() {
        let config = Config::from_data(&data(&[
            ("KDMP_KOPIAEXECUTOR_REQUEST_MEMORY", "2Gi"),
            ("KDMP_KOPIAEXECUTOR_LIMIT_MEMORY", "1Gi"),
        ]));
        assert!(config.problems[KEY_LIMIT_MEMORY].contains("smaller"));
    }

    #[test]
    fn backup_pvc_accepts_the_velero_wrapper_and_the_bare_map() {
        let velero = r#"{"backupPVC": {"storage-class-1": {"storageClass": "backupPVC-storage-class", "readOnly": true},
            "storage-class-2": {"storageClass": "backupPVC-storage-class"}, "storage-class-3": {"readOnly": true}}}"#;
        let config = Config::from_data(&data(&[("backupPVC", velero)]));
        assert_eq!(config.problems, BTreeMap::new());
        assert_eq!(config.backup_pvc.len(), 3);
        assert_eq!(
            config.backup_pvc["storage-class-3"],
            BackupPvcConfig {
                storage_class: None,
                read_only: Some(true)
            }
        );
        let bare = Config::from_data(&data(&[("backupPVC", r#"{"gp3": {"storageClass": ""}}"#)]));
        assert_eq!(bare.backup_pvc["gp3"], BackupPvcConfig::default());
        let typo = Config::from_data(&data(&[("backupPVC", r#"{"gp3": {"readonly": true}}"#)]));
        assert!(typo.problems.contains_key("backupPVC"));
    }

    #[test]
    fn go_durations_and_quantities() {
        assert_eq!(parse_duration("5m0s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(parse_quantity("100m"), Ok(0.1));
        assert_eq!(parse_quantity("1Gi"), Ok(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert!(parse_quantity("1GB").is_err());
        assert!(parse_quantity("Gi").is_err());
    }
}
