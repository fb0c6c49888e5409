//! Retention: which snapshots `cairn forget` keeps, and the reason for each survivor.
//!
//! The bucket rules follow restic: within each (host, source) group, snapshots are walked
//! newest first; a `--keep-<period> N` rule keeps the newest snapshot of each of the N newest
//! periods that hold a snapshot (periods without one are skipped, not counted), and if the
//! group runs out before N periods are filled the oldest snapshot is kept as well, so the
//! history reaches as far back as the rule allows. Periods are computed in UTC, so a result
//! never depends on the machine's time zone or on daylight saving changes; weeks are ISO
//! weeks (Monday to Sunday). `--keep-within D` keeps snapshots strictly newer than D before
//! the group's newest snapshot (not before "now"): a source whose backups stopped keeps its
//! last D of history. Snapshots dated after `now` (clock skew) do not move that reference.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// What `forget` keeps. Counts of `None` or `Some(0)` disable a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours with a snapshot.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days with a snapshot.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO weeks with a snapshot.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months with a snapshot.
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years with a snapshot.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than this much before the group's newest snapshot.
    pub keep_within: Option<Duration>,
    /// Keep every snapshot carrying a tag set: each value is one tag or a comma-separated
    /// list of tags that must all be present (`--keep-tag a,b` keeps snapshots tagged both
    /// `a` and `b`; `--keep-tag a --keep-tag b` keeps those tagged either).
    pub keep_tags: Vec<String>,
}

impl RetentionPolicy {
    /// True when no rule could keep a snapshot: applying it would forget everything.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        counts.iter().all(|c| c.unwrap_or(0) == 0)
            && self.keep_within.is_none_or(|d| d.is_zero())
            && self.keep_tags.is_empty()
    }

    /// The `keep_tags` values split into tag sets; an error names a value with no tag.
    fn tag_sets(&self) -> Result<Vec<Vec<String>>, PolicyError> {
        self.keep_tags
            .iter()
            .map(|value| {
                let set: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect();
                if set.is_empty() {
                    Err(PolicyError::InvalidKeepTag {
                        value: value.clone(),
                        reason: "it names no tag".to_string(),
                    })
                } else {
                    Ok(set)
                }
            })
            .collect()
    }
}

/// What retention needs to know about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot id, returned as is in the decision.
    pub id: String,
    /// When the backup was taken.
    pub time: DateTime<Utc>,
    /// The host (or, in Kubernetes, cluster/namespace) that made it.
    pub host: String,
    /// What was backed up (path or PVC).
    pub source: String,
    /// The snapshot's tags.
    pub tags: Vec<String>,
}

/// A counted, period-based rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketRule {
    /// `--keep-last`: every snapshot is its own period.
    Last,
    /// `--keep-hourly`.
    Hourly,
    /// `--keep-daily`.
    Daily,
    /// `--keep-weekly` (ISO weeks).
    Weekly,
    /// `--keep-monthly`.
    Monthly,
    /// `--keep-yearly`.
    Yearly,
}

impl BucketRule {
    const ALL: [BucketRule; 6] = [
        BucketRule::Last,
        BucketRule::Hourly,
        BucketRule::Daily,
        BucketRule::Weekly,
        BucketRule::Monthly,
        BucketRule::Yearly,
    ];

    fn name(self) -> &'static str {
        match self {
            BucketRule::Last => "last",
            BucketRule::Hourly => "hourly",
            BucketRule::Daily => "daily",
            BucketRule::Weekly => "weekly",
            BucketRule::Monthly => "monthly",
            BucketRule::Yearly => "yearly",
        }
    }

    fn count(self, policy: &RetentionPolicy) -> u32 {
        let count = match self {
            BucketRule::Last => policy.keep_last,
            BucketRule::Hourly => policy.keep_hourly,
            BucketRule::Daily => policy.keep_daily,
            BucketRule::Weekly => policy.keep_weekly,
            BucketRule::Monthly => policy.keep_monthly,
            BucketRule::Yearly => policy.keep_yearly,
        };
        count.unwrap_or(0)
    }

    /// The period of `time` (UTC), as a number equal for two times of the same period.
    /// `position` makes every snapshot its own period for [`BucketRule::Last`].
    fn period(self, time: DateTime<Utc>, position: usize) -> i64 {
        let (year, month, day, hour) = (
            i64::from(time.year()),
            i64::from(time.month()),
            i64::from(time.day()),
            i64::from(time.hour()),
        );
        match self {
            BucketRule::Last => position as i64,
            BucketRule::Hourly => ((year * 100 + month) * 100 + day) * 100 + hour,
            BucketRule::Daily => (year * 100 + month) * 100 + day,
            BucketRule::Weekly => {
                let week = time.iso_week();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            BucketRule::Monthly => year * 100 + month,
            BucketRule::Yearly => year,
        }
    }
}

/// Why a snapshot survives. Serialized as its display text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    /// The newest snapshot of a period counted by the rule.
    Bucket(BucketRule),
    /// The group's oldest snapshot, kept because the rule still had periods left.
    Oldest(BucketRule),
    /// Newer than the `--keep-within` duration before the group's newest snapshot.
    Within(Duration),
    /// Carries all tags of this `--keep-tag` set.
    Tags(Vec<String>),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Bucket(rule) => write!(f, "{} snapshot", rule.name()),
            KeepReason::Oldest(rule) => write!(f, "oldest {} snapshot", rule.name()),
            KeepReason::Within(d) => write!(f, "within {}", humantime::format_duration(*d)),
            KeepReason::Tags(tags) => write!(f, "has tags {}", tags.join(",")),
        }
    }
}

impl Serialize for KeepReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A snapshot that survives, with every rule that keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptSnapshot {
    /// The snapshot id.
    pub id: String,
    /// Every rule that keeps it, in rule order (tags, within, last, hourly ... yearly).
    pub reasons: Vec<KeepReason>,
}

/// The decision for one (host, source) group. Both lists are ordered newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDecision {
    /// The group's host.
    pub host: String,
    /// The group's source.
    pub source: String,
    /// The survivors and why.
    pub keep: Vec<KeptSnapshot>,
    /// The ids to forget.
    pub remove: Vec<String>,
}

/// Applies `policy` to `snapshots`, one decision per (host, source) group, groups ordered by
/// host then source. `now` only bounds which snapshot counts as the newest of a group for
/// `keep_within` (snapshots dated in the future are ignored for that). Fails on an empty
/// policy, which would forget everything, and on an empty `--keep-tag` value.
pub fn apply(
    policy: &RetentionPolicy,
    snapshots: &[SnapshotInfo],
    now: DateTime<Utc>,
) -> Result<Vec<GroupDecision>, PolicyError> {
    if policy.is_empty() {
        return Err(PolicyError::EmptyRetentionPolicy);
    }
    let tag_sets = policy.tag_sets()?;

    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&SnapshotInfo>> =
        std::collections::BTreeMap::new();
    for snapshot in snapshots {
        groups
            .entry((snapshot.host.as_str(), snapshot.source.as_str()))
            .or_default()
            .push(snapshot);
    }
    Ok(groups
        .into_iter()
        .map(|((host, source), group)| {
            let (keep, remove) = apply_to_group(policy, &tag_sets, group, now);
            GroupDecision {
                host: host.to_string(),
                source: source.to_string(),
                keep,
                remove,
            }
        })
        .collect())
}

/// One group: walk newest first, every rule voting independently.
fn apply_to_group(
    policy: &RetentionPolicy,
    tag_sets: &[Vec<String>],
    mut group: Vec<&SnapshotInfo>,
    now: DateTime<Utc>,
) -> (Vec<KeptSnapshot>, Vec<String>) {
    // Newest first; equal times ordered by id so the result does not depend on input order.
    group.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));

    let within_cutoff = policy.keep_within.filter(|d| !d.is_zero()).map(|d| {
        let newest = group
            .iter()
            .map(|s| s.time)
            .find(|t| *t <= now)
            .unwrap_or(now);
        // A duration too large for chrono reaches before any representable time.
        let cutoff = chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| newest.checked_sub_signed(d));
        (d, cutoff)
    });

    /// A counted rule's state: periods still to fill and the period last kept.
    struct Bucket {
        rule: BucketRule,
        remaining: u32,
        last_period: Option<i64>,
    }
    let mut buckets: Vec<Bucket> = BucketRule::ALL
        .iter()
        .map(|&rule| Bucket {
            rule,
            remaining: rule.count(policy),
            last_period: None,
        })
        .filter(|b| b.remaining > 0)
        .collect();

    let oldest_position = group.len().saturating_sub(1);
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (position, snapshot) in group.iter().enumerate() {
        let mut reasons = Vec::new();
        for set in tag_sets {
            if set.iter().all(|tag| snapshot.tags.contains(tag)) {
                reasons.push(KeepReason::Tags(set.clone()));
            }
        }
        if let Some((duration, cutoff)) = within_cutoff {
            if cutoff.is_none_or(|cutoff| snapshot.time > cutoff) {
                reasons.push(KeepReason::Within(duration));
            }
        }
        for bucket in buckets.iter_mut().filter(|b| b.remaining > 0) {
            let period = bucket.rule.period(snapshot.time, position);
            let reason = if bucket.last_period != Some(period) {
                KeepReason::Bucket(bucket.rule)
            } else if position == oldest_position {
                KeepReason::Oldest(bucket.rule)
            } else {
                continue;
            };
            bucket.last_period = Some(period);
            bucket.remaining -= 1;
            reasons.push(reason);
        }
        if reasons.is_empty() {
            remove.push(snapshot.id.clone());
        } else {
            keep.push(KeptSnapshot {
                id: snapshot.id.clone(),
                reasons,
            });
        }
    }
    (keep, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    #[test]
    fn periods_are_utc_and_weeks_are_iso() {
        // 2021-01-03 is a Sunday in ISO week 2020-W53; 2021-01-04 starts 2021-W01.
        assert_eq!(BucketRule::Weekly.period(at(2021, 1, 3, 23), 0), 202053);
        assert_eq!(BucketRule::Weekly.period(at(2021, 1, 4, 0), 0), 202101);
        assert_eq!(BucketRule::Hourly.period(at(2024, 2, 29, 7), 0), 2024022907);
        assert_eq!(BucketRule::Daily.period(at(2024, 2, 29, 7), 0), 20240229);
        assert_eq!(BucketRule::Monthly.period(at(2024, 2, 29, 7), 0), 202402);
        assert_eq!(BucketRule::Last.period(at(2024, 2, 29, 7), 5), 5);
    }

    #[test]
    fn emptiness_counts_zero_as_unset() {
        assert!(RetentionPolicy::default().is_empty());
        let zeros = RetentionPolicy {
            keep_last: Some(0),
            keep_daily: Some(0),
            keep_within: Some(Duration::ZERO),
            ..RetentionPolicy::default()
        };
        assert!(zeros.is_empty());
        let tags = RetentionPolicy {
            keep_tags: vec!["x".into()],
            ..RetentionPolicy::default()
        };
        assert!(!tags.is_empty());
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            KeepReason::Bucket(BucketRule::Daily).to_string(),
            "daily snapshot"
        );
        assert_eq!(
            KeepReason::Oldest(BucketRule::Yearly).to_string(),
            "oldest yearly snapshot"
        );
        assert_eq!(
            KeepReason::Within(Duration::from_secs(7 * 86400)).to_string(),
            "within 7days"
        );
        assert_eq!(
            KeepReason::Tags(vec!["a".into(), "b".into()]).to_string(),
            "has tags a,b"
        );
    }
}
