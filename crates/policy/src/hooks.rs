//! Application-consistent backup hooks: `--pre-exec` / `--post-exec` shell commands run
//! around a backup (a database checkpoint, Cassandra's `nodetool flush`, a freeze/thaw).
//!
//! Contract ([`Hooks::run`]): the pre hook runs first; if it fails the backup body is not
//! run (no snapshot is made); the post hook runs in every case, after a successful body, a
//! failed body, a panicking body or a failed pre hook, so that whatever the pre hook did
//! (freeze, lock, pause) is undone. The post hook sees why it runs in
//! `CAIRN_BACKUP_STATUS` (`success`, `failure` or `skipped`). Every outcome (exit code,
//! output, duration) is logged and returned for the snapshot summary, so the integrator
//! writes the snapshot record after the post hook.
//!
//! Each hook runs in its own process group, so a timeout kills everything it started; a
//! process it leaves running in the background is not killed when the hook exits (output
//! capture just stops after a short grace period).

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes of hook output kept: the first and last halves, with a marker between them.
pub const MAX_HOOK_OUTPUT: usize = 64 * 1024;

/// How long output is still read after the shell exits while a process it started in the
/// background keeps the output pipe open. Capture then stops; the process is left running.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    /// Before the backup (`--pre-exec`).
    Pre,
    /// After the backup (`--post-exec`).
    Post,
}

impl HookPhase {
    fn as_str(self) -> &'static str {
        match self {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        }
    }
}

/// What a hook did; recorded in the snapshot summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// Pre or post.
    pub phase: HookPhase,
    /// The command as given, run with `sh -c`.
    pub command: String,
    /// The exit code; `None` when the hook could not start or was killed by a signal.
    pub exit_code: Option<i32>,
    /// True when the command exited with code 0 within its timeout.
    pub success: bool,
    /// True when the hook was killed because it outlived its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// stdout and stderr interleaved, at most [`MAX_HOOK_OUTPUT`] bytes plus a marker
    /// where output was cut, with notes from cairn (start failure, signal, timeout).
    pub output: String,
    /// Wall-clock run time.
    pub duration_ms: u64,
}

/// Runs `command` with `sh -c`, stdin closed, stdout and stderr captured together, `env`
/// added to cairn's environment. With a `timeout`, the hook's whole process group is killed
/// when it is exceeded. Never fails: a hook that cannot start is an unsuccessful outcome.
pub fn run_hook(
    phase: HookPhase,
    command: &str,
    env: &[(String, String)],
    timeout: Option<Duration>,
) -> HookOutcome {
    let started = Instant::now();
    let run = execute(command, env, timeout);
    let outcome = HookOutcome {
        phase,
        command: command.to_string(),
        exit_code: run.status.and_then(|s| s.code()),
        success: !run.timed_out && run.status.is_some_and(|s| s.success()),
        timed_out: run.timed_out,
        output: run.output,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    log_outcome(&outcome);
    outcome
}

struct Execution {
    status: Option<ExitStatus>,
    timed_out: bool,
    output: String,
}

fn execute(command: &str, env: &[(String, String)], timeout: Option<Duration>) -> Execution {
    let failed = |note: String| Execution {
        status: None,
        timed_out: false,
        output: note,
    };
    // One pipe for both streams keeps their lines in the order the hook wrote them.
    let (reader, writer) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(e) => return failed(format!("[cairn: cannot create output pipe: {e}]")),
    };
    let writer_for_stderr = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("[cairn: cannot create output pipe: {e}]")),
    };
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_for_stderr)
        // Its own process group, so a timeout kills the commands the shell started too.
        .process_group(0);
    let spawned = shell.spawn();
    // The Command holds the parent's copies of the pipe's write end: close them, or the
    // reader would never see end of file.
    drop(shell);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return failed(format!("[cairn: cannot start sh: {e}]")),
    };

    let (output_tx, output_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = output_tx.send(capture(reader));
    });

    let pid = child.id();
    let (status_tx, status_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });

    let mut timed_out = false;
    let waited = match timeout {
        None => status_rx.recv().ok(),
        Some(limit) => match status_rx.recv_timeout(limit) {
            Ok(status) => Some(status),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_group(pid);
                status_rx.recv().ok()
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        },
    };

    let mut output = match output_rx.recv_timeout(OUTPUT_GRACE) {
        Ok(captured) => captured,
        Err(_) => "[cairn: output capture stopped: a process started by the hook in the \
                   background still holds its output open]"
            .to_string(),
    };
    let mut note = |text: String| {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&text);
    };
    let status = match waited {
        Some(Ok(status)) => Some(status),
        Some(Err(e)) => {
            note(format!("[cairn: cannot wait for the hook: {e}]"));
            None
        }
        None => {
            note("[cairn: lost track of the hook process]".to_string());
            None
        }
    };
    if timed_out {
        let limit = timeout.map(humantime::format_duration);
        note(format!(
            "[cairn: killed after the timeout of {}]",
            limit.map(|l| l.to_string()).unwrap_or_default()
        ));
    } else if let Some(signal) = status.and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.signal()
    }) {
        note(format!("[cairn: killed by signal {signal}]"));
    }
    Execution {
        status,
        timed_out,
        output,
    }
}

/// Kills the hook's process group (the shell and everything it started).
fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    let group = nix::unistd::Pid::from_raw(pid);
    if let Err(e) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        // ESRCH: everything already exited between the timeout and the kill.
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, error = %e, "cannot kill timed-out hook");
        }
    }
}

/// Reads the pipe to end of file, keeping the first and last [`MAX_HOOK_OUTPUT`]/2 bytes.
fn capture(mut reader: impl Read) -> String {
    let half = MAX_HOOK_OUTPUT / 2;
    let mut head: Vec<u8> = Vec::new();
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut total: usize = 0;
    let mut buffer = [0u8; 8192];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        total += read;
        let mut bytes = &buffer[..read];
        if head.len() < half {
            let take = bytes.len().min(half - head.len());
            head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        tail.extend(bytes);
        if tail.len() > half {
            tail.drain(..tail.len() - half);
        }
    }
    let mut output = String::from_utf8_lossy(&head).into_owned();
    let omitted = total - head.len() - tail.len();
    if omitted > 0 {
        output.push_str(&format!("\n[cairn: {omitted} bytes of output omitted]\n"));
    }
    output.push_str(&String::from_utf8_lossy(tail.make_contiguous()));
    output
}

fn log_outcome(outcome: &HookOutcome) {
    let phase = outcome.phase.as_str();
    if outcome.success {
        tracing::info!(
            phase,
            command = %outcome.command,
            exit_code = ?outcome.exit_code,
            duration_ms = outcome.duration_ms,
            output = %outcome.output,
            "backup hook succeeded"
        );
    } else {
        tracing::warn!(
            phase,
            command = %outcome.command,
            exit_code = ?outcome.exit_code,
            timed_out = outcome.timed_out,
            duration_ms = outcome.duration_ms,
            output = %outcome.output,
            "backup hook failed"
        );
    }
}

/// The hooks of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `--pre-exec`.
    pub pre_exec: Option<String>,
    /// `--post-exec`.
    pub post_exec: Option<String>,
    /// Extra environment for both hooks (e.g. the volume's path and storage class).
    pub env: Vec<(String, String)>,
    /// Per-hook time limit; `None` waits as long as the hook runs.
    pub timeout: Option<Duration>,
}

/// Whether the backup body ran.
#[derive(Debug)]
pub enum BodyOutcome<T, E> {
    /// The pre hook failed: the body was not run and no snapshot must be written.
    Skipped,
    /// The body ran and returned this.
    Finished(Result<T, E>),
}

/// Everything that happened in [`Hooks::run`].
#[derive(Debug)]
#[must_use = "a skipped body means no snapshot may be written, and the outcomes belong in the snapshot"]
pub struct HooksRun<T, E> {
    /// The pre hook, if one was given.
    pub pre: Option<HookOutcome>,
    /// The backup body's result, or why it did not run.
    pub body: BodyOutcome<T, E>,
    /// The post hook, if one was given; it always ran.
    pub post: Option<HookOutcome>,
}

impl<T, E> HooksRun<T, E> {
    /// True when the pre hook failed and the backup was therefore skipped.
    pub fn pre_failed(&self) -> bool {
        matches!(self.body, BodyOutcome::Skipped)
    }

    /// True when a post hook ran and failed.
    pub fn post_failed(&self) -> bool {
        self.post.as_ref().is_some_and(|p| !p.success)
    }

    /// The hook outcomes in run order, for the snapshot summary.
    pub fn outcomes(&self) -> Vec<HookOutcome> {
        self.pre.iter().chain(self.post.iter()).cloned().collect()
    }
}

impl Hooks {
    /// Runs pre hook, `body`, post hook, with the contract in the module docs. Hooks get
    /// `CAIRN_HOOK_PHASE` (`pre`/`post`); the post hook also gets `CAIRN_BACKUP_STATUS`
    /// (`success`, `failure` or `skipped`). A panic in `body` still runs the post hook, then
    /// resumes unwinding.
    pub fn run<T, E>(&self, body: impl FnOnce() -> Result<T, E>) -> HooksRun<T, E> {
        let pre = self.pre_exec.as_deref().map(|command| {
            run_hook(
                HookPhase::Pre,
                command,
                &self.env_for(HookPhase::Pre, None),
                self.timeout,
            )
        });
        let body_result = if pre.as_ref().is_some_and(|p| !p.success) {
            tracing::warn!("pre-exec hook failed: skipping the backup; no snapshot is made");
            None
        } else {
            Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)))
        };
        let status = match &body_result {
            None => "skipped",
            Some(Ok(Ok(_))) => "success",
            Some(_) => "failure",
        };
        let post = self.post_exec.as_deref().map(|command| {
            run_hook(
                HookPhase::Post,
                command,
                &self.env_for(HookPhase::Post, Some(status)),
                self.timeout,
            )
        });
        let body = match body_result {
            None => BodyOutcome::Skipped,
            Some(Ok(result)) => BodyOutcome::Finished(result),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        };
        HooksRun { pre, body, post }
    }

    fn env_for(&self, phase: HookPhase, status: Option<&str>) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("CAIRN_HOOK_PHASE".to_string(), phase.as_str().to_string()));
        if let Some(status) = status {
            env.push(("CAIRN_BACKUP_STATUS".to_string(), status.to_string()));
        }
        env
    }
}

/// [`Hooks::run`] with just the two commands: no extra environment, no timeout.
pub fn with_hooks<T, E>(
    pre: Option<&str>,
    post: Option<&str>,
    body: impl FnOnce() -> Result<T, E>,
) -> HooksRun<T, E> {
    Hooks {
        pre_exec: pre.map(str::to_string),
        post_exec: post.map(str::to_string),
        ..Hooks::default()
    }
    .run(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_everything_up_to_the_limit() {
        let data = vec![b'x'; MAX_HOOK_OUTPUT];
        let out = capture(&data[..]);
        assert_eq!(out.len(), MAX_HOOK_OUTPUT);
        assert!(!out.contains("omitted"));
    }

    #[test]
    fn capture_keeps_head_and_tail_and_marks_the_cut() {
        let mut data = vec![b'h'; MAX_HOOK_OUTPUT / 2];
        data.extend(vec![b'#'; 1000]);
        data.extend(vec![b't'; MAX_HOOK_OUTPUT / 2]);
        let out = capture(&data[..]);
        assert!(out.starts_with('h'));
        assert!(out.ends_with('t'));
        assert!(!out.contains('#'));
        assert!(out.contains("[cairn: 1000 bytes of output omitted]"));
    }
}
