//! Properties of retention over random timelines: what any correct policy engine must do,
//! whatever the hand-computed tables cover.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use cairn_policy::{apply, GroupDecision, RetentionPolicy, SnapshotInfo};

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

prop_compose! {
    /// Up to 60 snapshots over three years, two hosts, tags from {a, b}; some share a time.
    fn timeline()(entries in prop::collection::vec(
        (0i64..3 * 365 * 24, 0u32..60, prop::bool::ANY, prop::bool::ANY, prop::bool::ANY), 0..60)
    ) -> Vec<SnapshotInfo> {
        entries
            .into_iter()
            .enumerate()
            .map(|(i, (hours, minute, second_host, a, b))| SnapshotInfo {
                id: format!("s{i:03}"),
                time: base() + chrono::Duration::hours(hours) + chrono::Duration::minutes(i64::from(minute)),
                host: if second_host { "h2".into() } else { "h1".into() },
                source: "/data".into(),
                tags: [(a, "a"), (b, "b")].iter().filter(|(on, _)| *on).map(|(_, t)| t.to_string()).collect(),
            })
            .collect()
    }
}

fn count() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(0u32..6)
}

prop_compose! {
    fn policy()(
        counts in prop::array::uniform6(count()),
        within_days in prop::option::of(0u64..400),
        tags in prop::sample::subsequence(vec!["a".to_string(), "a,b".to_string()], 0..=2),
    ) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: counts[0],
            keep_hourly: counts[1],
            keep_daily: counts[2],
            keep_weekly: counts[3],
            keep_monthly: counts[4],
            keep_yearly: counts[5],
            keep_within: within_days.map(|d| Duration::from_secs(d * 86400)),
            keep_tags: tags,
        }
    }
}

fn kept(groups: &[GroupDecision]) -> Vec<String> {
    let mut ids: Vec<String> = groups
        .iter()
        .flat_map(|g| g.keep.iter().map(|k| k.id.clone()))
        .collect();
    ids.sort();
    ids
}

proptest! {
    #[test]
    fn decisions_partition_every_group(snapshots in timeline(), policy in policy()) {
        let Ok(groups) = apply(&policy, &snapshots, now()) else {
            prop_assert!(policy.is_empty());
            return Ok(());
        };
        let mut all: Vec<String> = groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|k| k.id.clone()).chain(g.remove.iter().cloned()))
            .collect();
        all.sort();
        let mut expected: Vec<String> = snapshots.iter().map(|s| s.id.clone()).collect();
        expected.sort();
        prop_assert_eq!(all, expected);
        for group in &groups {
            prop_assert!(group.keep.iter().all(|k| !k.reasons.is_empty()));
            // A non-empty group always keeps something: its newest snapshot starts a period
            // for every counted rule, and is within any duration of itself.
            let bucket_or_within = policy.keep_within.is_some_and(|d| !d.is_zero())
                || [policy.keep_last, policy.keep_hourly, policy.keep_daily, policy.keep_weekly,
                    policy.keep_monthly, policy.keep_yearly].iter().any(|c| c.unwrap_or(0) > 0);
            if bucket_or_within {
                prop_assert!(!group.keep.is_empty());
            }
        }
    }

    #[test]
    fn keep_last_keeps_the_newest(snapshots in timeline(), n in 1u32..10) {
        let policy = RetentionPolicy { keep_last: Some(n), ..RetentionPolicy::default() };
        for group in apply(&policy, &snapshots, now()).unwrap() {
            let mut members: Vec<&SnapshotInfo> = snapshots
                .iter()
                .filter(|s| s.host == group.host)
                .collect();
            members.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
            let newest: Vec<String> = members.iter().take(n as usize).map(|s| s.id.clone()).collect();
            let kept: Vec<String> = group.keep.iter().map(|k| k.id.clone()).collect();
            prop_assert_eq!(kept, newest);
        }
    }

    #[test]
    fn input_order_does_not_matter(snapshots in timeline(), policy in policy()) {
        let reversed: Vec<SnapshotInfo> = snapshots.iter().rev().cloned().collect();
        let forward = apply(&policy, &snapshots, now()).ok();
        let backward = apply(&policy, &reversed, now()).ok();
        prop_assert_eq!(forward, backward);
    }

    #[test]
    fn forgetting_again_removes_nothing(snapshots in timeline(), policy in policy()) {
        let Ok(groups) = apply(&policy, &snapshots, now()) else { return Ok(()); };
        let survivors: Vec<SnapshotInfo> = {
            let kept = kept(&groups);
            snapshots.iter().filter(|s| kept.contains(&s.id)).cloned().collect()
        };
        let again = apply(&policy, &survivors, now()).unwrap();
        prop_assert!(again.iter().all(|g| g.remove.is_empty()), "{:?}", again);
    }

    #[test]
    fn larger_counts_never_keep_less(snapshots in timeline(), policy in policy(), rule in 0usize..6) {
        let Ok(before) = apply(&policy, &snapshots, now()) else { return Ok(()); };
        let mut bigger = policy.clone();
        let field = match rule {
            0 => &mut bigger.keep_last,
            1 => &mut bigger.keep_hourly,
            2 => &mut bigger.keep_daily,
            3 => &mut bigger.keep_weekly,
            4 => &mut bigger.keep_monthly,
            _ => &mut bigger.keep_yearly,
        };
        *field = Some(field.unwrap_or(0) + 1);
        let after = kept(&apply(&bigger, &snapshots, now()).unwrap());
        for id in kept(&before) {
            prop_assert!(after.contains(&id), "{} was kept before", id);
        }
    }
}
