//! What the controller and job mode agree on: where things are mounted in job pods and the
//! JSON a Job leaves in its termination message.

use serde::{Deserialize, Serialize};

/// Where the volume being backed up (read-only) or restored into is mounted.
pub const DATA_DIR: &str = "/data";
/// Where a `volumeMode: Block` volume being backed up or restored onto appears in job
/// pods (through `volumeDevices`, instead of [`DATA_DIR`]).
pub const DATA_DEVICE: &str = "/dev/cairn-data";
/// Where the repository password Secret is mounted.
pub const PASSWORD_DIR: &str = "/etc/cairn/password";
/// Where the storage credentials Secret is mounted, one file per key.
pub const CREDENTIALS_DIR: &str = "/etc/cairn/credentials";
/// The job's local cache (an emptyDir).
pub const CACHE_DIR: &str = "/var/cache/cairn";
/// Scratch space (an emptyDir, and the job's `TMPDIR`): the root filesystem of job pods is
/// read-only.
pub const SCRATCH_DIR: &str = "/var/lib/cairn/scratch";
/// Environment variable carrying the raw KDMP_EXCLUDE_FILE_LIST to backup Jobs.
pub const ENV_EXCLUDE_FILE_LIST: &str = "CAIRN_KDMP_EXCLUDE_FILE_LIST";
/// Kubernetes' default termination message path.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// The result a Job writes to its termination message, and the controller reads back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobOutcome {
    /// Whether the job did what it was asked.
    pub succeeded: bool,
    /// The snapshot written (backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes processed.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to process.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes a backup added to the repository (after deduplication and compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Bytes of packs a maintenance run deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    /// Bytes of the packs indexed after a maintenance run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_bytes: Option<u64>,
    /// Distinct blobs indexed after a maintenance run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_count: Option<u64>,
    /// Damage records a maintenance run left (damage still in indexed packs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage_records: Option<u64>,
    /// A one-line summary, or the error and what to do about it.
    #[serde(default)]
    pub message: String,
    /// Whether running the job again can help (transient storage or network errors).
    #[serde(default)]
    pub retryable: bool,
    /// Kubernetes resources captured (`capture-resources`) or handled
    /// (`restore-resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_count: Option<u32>,
}

impl JobOutcome {
    /// Parses a termination message; None when it is not a cairn outcome (for example the
    /// log tail Kubernetes substitutes when the container crashed before writing one).
    pub fn parse(message: &str) -> Option<JobOutcome> {
        serde_json::from_str(message.trim()).ok()
    }

    /// Serializes to at most [`TERMINATION_MESSAGE_MAX`] bytes, shortening the message
    /// (never the ids) when needed.
    pub fn to_message(&self) -> String {
        let mut outcome = self.clone();
        loop {
            let text = serde_json::to_string(&outcome).unwrap_or_default();
            if text.len() <= TERMINATION_MESSAGE_MAX || outcome.message.is_empty() {
                return text;
            }
            let keep = outcome
                .message
                .len()
                .saturating_sub(text.len() - TERMINATION_MESSAGE_MAX + 3);
            let mut cut = keep.min(outcome.message.len());
            while !outcome.message.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 {
                outcome.message.clear();
                continue;
            }
            outcome.message.truncate(cut);
            outcome.message.push_str("...");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_the_kubernetes_limit_and_still_parse() {
        let outcome = JobOutcome {
            message: "é".repeat(5000),
            snapshot_id: Some("abc".into()),
            ..Default::default()
        };
        let text = outcome.to_message();
        assert!(text.len() <= TERMINATION_MESSAGE_MAX, "{}", text.len());
        let back = JobOutcome::parse(&text).unwrap();
        assert_eq!(back.snapshot_id.as_deref(), Some("abc"));
        assert!(back.message.ends_with("..."));
        assert_eq!(JobOutcome::parse("panicked at main.rs"), None);
    }
}
