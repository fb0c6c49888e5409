//! Hooks with real shell commands: exit codes, output, environment, timeouts, and the
//! pre/body/post contract.

use std::cell::Cell;
use std::fs;
use std::time::Duration;

use cairn_policy::hooks::MAX_HOOK_OUTPUT;
use cairn_policy::{run_hook, with_hooks, BodyOutcome, HookOutcome, HookPhase, Hooks};

fn run(command: &str) -> HookOutcome {
    run_hook(HookPhase::Pre, command, &[], None)
}

#[test]
fn successful_command() {
    let outcome = run("true");
    assert!(outcome.success);
    assert_eq!(outcome.exit_code, Some(0));
    assert!(!outcome.timed_out);
    assert_eq!(outcome.output, "");
    assert_eq!(outcome.command, "true");
    assert_eq!(outcome.phase, HookPhase::Pre);
}

#[test]
fn failing_commands_keep_their_exit_code() {
    let outcome = run("false");
    assert!(!outcome.success);
    assert_eq!(outcome.exit_code, Some(1));
    let outcome = run("echo checkpoint failed >&2; exit 3");
    assert!(!outcome.success);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.output, "checkpoint failed\n");
}

#[test]
fn stdout_and_stderr_are_captured_in_order() {
    let outcome = run("echo one; echo two >&2; echo three");
    assert!(outcome.success);
    assert_eq!(outcome.output, "one\ntwo\nthree\n");
}

#[test]
fn environment_is_passed() {
    let env = vec![("CAIRN_VOLUME".to_string(), "pvc-1".to_string())];
    let outcome = run_hook(HookPhase::Post, "echo \"$CAIRN_VOLUME\"", &env, None);
    assert_eq!(outcome.output, "pvc-1\n");
    assert_eq!(outcome.phase, HookPhase::Post);
}

#[test]
fn timeout_kills_the_hook_and_what_it_started() {
    // A background child holding the output pipe: only killing the group ends the capture.
    let outcome = run_hook(
        HookPhase::Pre,
        "echo started; sleep 60 & sleep 60",
        &[],
        Some(Duration::from_millis(200)),
    );
    assert!(outcome.timed_out);
    assert!(!outcome.success);
    assert_eq!(outcome.exit_code, None);
    assert!(
        outcome.output.starts_with("started\n"),
        "{}",
        outcome.output
    );
    assert!(
        outcome
            .output
            .contains("[cairn: killed after the timeout of 200ms]"),
        "{}",
        outcome.output
    );
    assert!(
        !outcome.output.contains("capture stopped"),
        "{}",
        outcome.output
    );
}

#[test]
fn a_background_process_holding_the_output_does_not_hang_the_hook() {
    let outcome = run("echo daemon starting; sleep 4 & echo done");
    assert!(outcome.success);
    assert_eq!(outcome.exit_code, Some(0));
    assert!(
        outcome.output.contains("output capture stopped"),
        "{}",
        outcome.output
    );
}

#[test]
fn a_hook_within_its_timeout_succeeds() {
    let outcome = run_hook(
        HookPhase::Pre,
        "echo fast",
        &[],
        Some(Duration::from_secs(60)),
    );
    assert!(outcome.success);
    assert!(!outcome.timed_out);
    assert_eq!(outcome.output, "fast\n");
}

#[test]
fn killed_by_a_signal_has_no_exit_code() {
    let outcome = run("kill -TERM $$");
    assert!(!outcome.success);
    assert_eq!(outcome.exit_code, None);
    assert!(
        outcome.output.contains("[cairn: killed by signal 15]"),
        "{}",
        outcome.output
    );
}

#[test]
fn a_hook_that_cannot_start_is_a_failure() {
    // The child's PATH is used to find `sh`.
    let env = vec![("PATH".to_string(), "/nonexistent".to_string())];
    let outcome = run_hook(HookPhase::Pre, "true", &env, None);
    assert!(!outcome.success);
    assert_eq!(outcome.exit_code, None);
    assert!(
        outcome.output.contains("cannot start sh"),
        "{}",
        outcome.output
    );
}

#[test]
fn long_output_is_truncated_with_a_marker() {
    let outcome = run("yes 0123456789 | head -c 200000; echo; echo the-end");
    assert!(outcome.success);
    assert!(
        outcome.output.len() < MAX_HOOK_OUTPUT + 100,
        "{}",
        outcome.output.len()
    );
    assert!(outcome.output.contains("bytes of output omitted]"));
    assert!(outcome.output.starts_with("0123456789\n"));
    assert!(outcome.output.ends_with("the-end\n"));
}

#[test]
fn outcome_round_trips_through_json() {
    let outcome = run("echo hi; exit 2");
    let json = serde_json::to_value(&outcome).unwrap();
    assert_eq!(json["phase"], "pre");
    assert_eq!(json["exit_code"], 2);
    assert_eq!(json["success"], false);
    assert_eq!(json["output"], "hi\n");
    let back: HookOutcome = serde_json::from_value(json).unwrap();
    assert_eq!(back, outcome);
}

#[test]
fn failing_pre_skips_the_backup_and_post_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("post-ran");
    let post = format!(
        "echo \"status=$CAIRN_BACKUP_STATUS\" | tee {}",
        marker.display()
    );
    let body_ran = Cell::new(false);
    let run = with_hooks(Some("echo flush failed; exit 7"), Some(&post), || {
        body_ran.set(true);
        Ok::<_, String>("snapshot")
    });
    assert!(!body_ran.get());
    assert!(run.pre_failed());
    assert!(matches!(run.body, BodyOutcome::Skipped));
    let pre = run.pre.as_ref().unwrap();
    assert_eq!(pre.exit_code, Some(7));
    assert_eq!(pre.output, "flush failed\n");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "status=skipped\n");
    let post = run.post.as_ref().unwrap();
    assert!(post.success);
    assert_eq!(post.output, "status=skipped\n");
    assert_eq!(run.outcomes().len(), 2);
}

#[test]
fn failing_backup_still_runs_post_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("post-ran");
    let post = format!(
        "echo \"$CAIRN_HOOK_PHASE $CAIRN_BACKUP_STATUS\" > {}",
        marker.display()
    );
    let run = with_hooks(Some("echo frozen"), Some(&post), || {
        Err::<(), _>("repository unreachable".to_string())
    });
    assert!(!run.pre_failed());
    match &run.body {
        BodyOutcome::Finished(Err(e)) => assert_eq!(e, "repository unreachable"),
        other => panic!("expected the body's error, got {other:?}"),
    }
    assert_eq!(fs::read_to_string(&marker).unwrap(), "post failure\n");
    let outcomes = run.outcomes();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].phase, HookPhase::Pre);
    assert_eq!(outcomes[0].output, "frozen\n");
    assert_eq!(outcomes[1].phase, HookPhase::Post);
    assert!(outcomes[1].success);
}

#[test]
fn successful_backup_runs_both_hooks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let pre = format!("echo pre >> {}", log.display());
    let post = format!("echo \"post $CAIRN_BACKUP_STATUS\" >> {}", log.display());
    let log_for_body = log.clone();
    let run = with_hooks(Some(&pre), Some(&post), move || {
        let mut text = fs::read_to_string(&log_for_body).map_err(|e| e.to_string())?;
        text.push_str("body\n");
        fs::write(&log_for_body, text).map_err(|e| e.to_string())?;
        Ok::<_, String>(42)
    });
    assert!(matches!(run.body, BodyOutcome::Finished(Ok(42))));
    assert!(!run.post_failed());
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "pre\nbody\npost success\n"
    );
}

#[test]
fn failing_post_is_reported_without_touching_the_backup_result() {
    let run = with_hooks(None, Some("echo thaw failed; false"), || Ok::<_, String>(1));
    assert!(run.pre.is_none());
    assert!(matches!(run.body, BodyOutcome::Finished(Ok(1))));
    assert!(run.post_failed());
    assert_eq!(run.post.as_ref().unwrap().output, "thaw failed\n");
}

#[test]
fn panicking_backup_still_runs_post() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("post-ran");
    let post = format!("echo \"$CAIRN_BACKUP_STATUS\" > {}", marker.display());
    let result = std::panic::catch_unwind(|| {
        with_hooks(None, Some(&post), || -> Result<(), String> {
            panic!("walker bug")
        })
    });
    assert!(result.is_err(), "the panic must propagate after post ran");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "failure\n");
}

#[test]
fn no_hooks_just_runs_the_body() {
    let run = Hooks::default().run(|| Ok::<_, ()>("done"));
    assert!(run.pre.is_none() && run.post.is_none());
    assert!(run.outcomes().is_empty());
    assert!(matches!(run.body, BodyOutcome::Finished(Ok("done"))));
}

#[test]
fn hooks_get_the_configured_environment_and_timeout() {
    let hooks = Hooks {
        pre_exec: Some("echo \"$CAIRN_HOOK_PHASE $PVC\"; sleep 60".into()),
        post_exec: Some("echo \"$CAIRN_HOOK_PHASE $PVC $CAIRN_BACKUP_STATUS\"".into()),
        env: vec![("PVC".into(), "data-0".into())],
        timeout: Some(Duration::from_millis(200)),
    };
    let run = hooks.run(|| Ok::<_, ()>(()));
    let pre = run.pre.as_ref().unwrap();
    assert!(pre.timed_out);
    assert!(pre.output.starts_with("pre data-0\n"), "{}", pre.output);
    assert!(run.pre_failed());
    assert_eq!(run.post.as_ref().unwrap().output, "post data-0 skipped\n");
}
