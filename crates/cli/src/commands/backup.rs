//! `cairn backup`: back up paths into a new snapshot, leaving out what the exclusion rules
//! name (docs/EXCLUDES.md) and running the `--pre-exec` / `--post-exec` hooks around it
//! (docs/HOOKS.md).

use crate::common::{parse_size, GlobalOpts};
use crate::output::size;
use anyhow::{anyhow, Context, Result};
use cairn_core::backup::stream::{backup_command_unsaved, backup_stream_unsaved, StreamOptions};
use cairn_core::backup::{backup_unsaved, BackupOptions, ParentChoice, Prelisted};
use cairn_core::exclude::RootExcluders;
use cairn_core::progress::Progress;
use cairn_core::{Snapshot, SnapshotId};
use cairn_policy::exclude::ExcludeOptions;
use cairn_policy::hooks::{BodyOutcome, HookOutcome, HookPhase, Hooks};
use clap::Args;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up; with --stdin-from-command, the
    /// command and its arguments (after `--`).
    #[arg(required_unless_present = "stdin", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Read block devices (given as paths, links to them, or met in the
    /// walk) as files of their size, instead of recording device nodes.
    /// A device is read whole at every backup; unchanged blocks add nothing.
    #[arg(long)]
    pub read_devices: bool,
    /// Store standard input as one file of the snapshot (see --stdin-filename).
    #[arg(long, conflicts_with_all = ["paths", "read_devices", "stdin_from_command"])]
    pub stdin: bool,
    /// Run the command given after `--` and store its standard output as one
    /// file; no snapshot is saved when it exits non-zero or is killed.
    #[arg(long, requires = "paths", conflicts_with = "read_devices")]
    pub stdin_from_command: bool,
    /// Name of the file a stream becomes in the snapshot.
    #[arg(long, value_name = "NAME", default_value = "stdin")]
    pub stdin_filename: String,
    /// Permission bits of the file a stream becomes (octal).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub stdin_mode: u32,
    /// A file that changes while it is read (size, mtime or ctime differ
    /// before and after) is stored as neither version: `warn` names it and
    /// exits 3, `fail` saves no snapshot, `ignore` says nothing.
    #[arg(long, value_enum, default_value = "warn")]
    pub on_change: OnChange,
    /// Make what was stored so far durable and resumable this often (an
    /// index segment and an incomplete snapshot, which also covers a file
    /// still being read). Must stay well under the safety window of any
    /// maintenance that runs meanwhile (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Option<Duration>,
    /// Read the source at most this many bytes per second (e.g. 50MiB), to
    /// spare the disk of an application that runs during the backup.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_read: Option<u64>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Source name to record (default: the absolute paths).
    #[arg(long)]
    pub source: Option<String>,
    /// Compare against this snapshot instead of the latest of the same source.
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, even unchanged ones.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub exclude: ExcludeArgs,
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// What to leave out (docs/EXCLUDES.md).
#[derive(Args, Debug, Clone, Default)]
pub struct ExcludeArgs {
    /// Leave out entries matching PATTERN (glob; a leading / anchors it at the backup root,
    /// a trailing / matches directories only). Repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Read exclude patterns from FILE, one per line, # comments. Repeatable.
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub pattern_files: Vec<PathBuf>,
    /// Leave out directories containing an entry named NAME. Repeatable.
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub if_present: Vec<String>,
    /// Leave out directories holding a valid CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out regular files larger than SIZE (e.g. 10MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Leave out entries on another file system than the backup path.
    #[arg(long)]
    pub one_file_system: bool,
    /// KDMP exclude list (the KDMP_EXCLUDE_FILE_LIST format: one
    /// `<storageClass>=<entry>,<entry>,...` line per storage class).
    #[arg(long, value_name = "FILE", requires = "storage_class")]
    pub exclude_config: Option<PathBuf>,
    /// The storage class whose line of --exclude-config applies; entries are relative to
    /// each backup path.
    #[arg(long, value_name = "NAME", requires = "exclude_config")]
    pub storage_class: Option<String>,
}

impl ExcludeArgs {
    /// The exclusion options, reading the KDMP list when one is given. A storage class with
    /// no line gets no class excludes (logged at info by cairn-policy).
    fn options(&self) -> Result<ExcludeOptions> {
        let mut opts = ExcludeOptions {
            patterns: self.patterns.clone(),
            pattern_files: self.pattern_files.clone(),
            if_present: self.if_present.clone(),
            exclude_caches: self.exclude_caches,
            larger_than: self.exclude_larger_than,
            one_file_system: self.one_file_system,
            ..ExcludeOptions::default()
        };
        if let (Some(file), Some(class)) = (&self.exclude_config, &self.storage_class) {
            let list = cairn_policy::kdmp::load_exclude_list(file).map_err(|e| {
                anyhow!(cairn_core::Error::Usage(format!(
                    "invalid --exclude-config: {e}"
                )))
            })?;
            opts.class_entries = list.entries_for_volume(class).to_vec();
            opts.storage_class = Some(class.clone());
        }
        Ok(opts)
    }
}

/// Application-consistent hooks (docs/HOOKS.md).
#[derive(Args, Debug, Clone, Default)]
pub struct HookArgs {
    /// Run CMD (with `sh -c`) before the backup; if it fails, no backup is made.
    #[arg(long, value_name = "CMD")]
    pub pre_exec: Option<String>,
    /// Run CMD (with `sh -c`) after the backup, whether it succeeded, failed or was skipped.
    #[arg(long, value_name = "CMD")]
    pub post_exec: Option<String>,
    /// Kill a hook (and everything it started) after this long (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hook_timeout: Option<Duration>,
}

/// What a backup does about files that changed while they were read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnChange {
    /// Name each, save the snapshot, exit 3.
    Warn,
    /// Name each, save no snapshot, fail.
    Fail,
    /// Save the snapshot, say nothing.
    Ignore,
}

/// Names the files that changed while they were read.
fn warn_changed(s: &cairn_core::format::snapshot::Summary) {
    for c in &s.changed_while_read {
        eprintln!(
            "warning: {}: changed while it was read ({}); the stored copy may mix old and new content",
            c.path.0.display(),
            c.what
        );
    }
    let unlisted = s.files_changed_while_read - s.changed_while_read.len() as u64;
    if unlisted > 0 {
        eprintln!("warning: and {unlisted} more files changed while they were read");
    }
}

/// Octal permission bits: `0640`, `640`.
fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "{s:?} is not a file mode: give octal permission bits, e.g. 0640"
        )),
    }
}

/// Every path given exists (a dangling symlink counts: it is backed up as a link).
fn sources_exist(paths: &[PathBuf]) -> cairn_core::Result<()> {
    for path in paths {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(cairn_core::Error::SourceMissing { path: path.clone() })
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn run(g: &GlobalOpts, a: BackupArgs) -> Result<ExitCode> {
    crate::malloc::restart_with_malloc_setting();
    let streamed = a.stdin || a.stdin_from_command;
    // Rules are compiled before any hook runs: a typo in them never freezes an application.
    let excluders = if streamed {
        None
    } else {
        Some(
            RootExcluders::new(&a.exclude.options()?, &a.paths)
                .map_err(|e| anyhow!(cairn_core::Error::Usage(e.to_string())))?,
        )
    };
    let exclude_rules = excluders.as_ref().map(|x| x.rules()).unwrap_or_default();
    let excluders = excluders.map(|x| Arc::new(x) as Arc<dyn cairn_core::backup::Exclude>);
    // With no hook to run first, the source is listed while the repository
    // opens (the key derivation takes one core for ~80 ms).
    let prelisted = if a.hooks.pre_exec.is_none() && !streamed {
        Prelisted::start(&a.paths, excluders.clone())
    } else {
        Prelisted::default()
    };
    let repo = g.open()?;
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Given(repo.find_snapshot(p, &Default::default())?.0)
    } else {
        ParentChoice::Auto
    };
    if a.stdin && std::io::stdin().is_terminal() {
        return Err(anyhow!(cairn_core::Error::Usage(
            "--stdin reads standard input, which is a terminal here: pipe the data in \
             (`pg_dump db | cairn backup --stdin --stdin-filename db.sql`), or use \
             --stdin-from-command -- CMD ARGS"
                .into()
        )));
    }
    let progress = Arc::new(Progress::default());
    let show_bar = !a.json && !g.quiet && std::io::stderr().is_terminal();
    let opts = BackupOptions {
        paths: a.paths.clone(),
        host: a.host.clone(),
        source: a.source.clone(),
        tags: a.tags.clone(),
        parent,
        exclude_rules,
        exclude: excluders,
        prelisted,
        read_devices: a.read_devices,
        // Without a bar nobody reads the counters, and the core skips the
        // second pass that counts totals.
        progress: show_bar.then(|| progress.clone()),
        checkpoint: match a.checkpoint_interval {
            Some(every) if every.is_zero() => {
                return Err(anyhow!(cairn_core::Error::Usage(
                    "--checkpoint-interval 0 would never make a long backup resumable; give a \
                     duration such as 1m"
                        .into(),
                )))
            }
            Some(every) => cairn_core::checkpoint::CheckpointOptions {
                every,
                every_blobs: 0,
            },
            None => Default::default(),
        },
        limit_read: a.limit_read,
        ..Default::default()
    };
    let hooks = Hooks {
        pre_exec: a.hooks.pre_exec.clone(),
        post_exec: a.hooks.post_exec.clone(),
        env: Vec::new(),
        timeout: a.hooks.hook_timeout,
    };
    let run = hooks.run(|| {
        let bar =
            show_bar.then(|| crate::output::ProgressBar::start(progress.clone(), "backing up"));
        let stream = StreamOptions {
            name: a.stdin_filename.clone(),
            mode: a.stdin_mode,
        };
        let result = if a.stdin {
            backup_stream_unsaved(&repo, &opts, &stream, &mut std::io::stdin().lock())
        } else if a.stdin_from_command {
            let argv: Vec<OsString> = a.paths.iter().map(|p| p.clone().into_os_string()).collect();
            backup_command_unsaved(&repo, &opts, &stream, &argv)
        } else {
            // Checked after the pre-exec hook, which may be what creates the source (a dump, a mount).
            sources_exist(&opts.paths).and_then(|()| backup_unsaved(&repo, &opts))
        };
        if let Some(bar) = bar {
            bar.finish();
        }
        result
    });
    let outcomes = run.outcomes();
    let post_note = post_note(run.post.as_ref());
    let mut snapshot = match run.body {
        BodyOutcome::Skipped => {
            let pre = run.pre.as_ref().map(describe).unwrap_or_default();
            return Err(anyhow!(
                "pre-exec hook failed ({pre}): backup aborted, no snapshot written{post_note}"
            ));
        }
        BodyOutcome::Finished(Err(e)) => {
            return Err(anyhow::Error::from(e).context(format!("backup failed{post_note}")));
        }
        BodyOutcome::Finished(Ok(snapshot)) => snapshot,
    };
    let changed = snapshot.summary.files_changed_while_read;
    if changed > 0 && a.on_change != OnChange::Ignore {
        warn_changed(&snapshot.summary);
        if a.on_change == OnChange::Fail {
            return Err(anyhow!(
                "{changed} file(s) changed while they were read (--on-change fail): no snapshot \
                 saved. Back up a snapshot of the volume (or quiesce the application with \
                 --pre-exec), or accept the change with --on-change warn{post_note}"
            ));
        }
    }
    snapshot.hooks = outcomes
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .context("recording the hook outcomes")?;
    let id = cairn_core::backup::save_backup(&repo, &snapshot)?;
    print_summary(&id, &snapshot, a.json)?;
    if let Some(post) = run.post.as_ref().filter(|p| !p.success) {
        eprintln!(
            "warning: snapshot {} saved, but the post-exec hook failed ({})",
            id.short(),
            describe(post)
        );
        return Ok(ExitCode::from(3));
    }
    let changed_counts = changed > 0 && a.on_change == OnChange::Warn;
    Ok(if snapshot.summary.errors > 0 || changed_counts {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// `exit code 3`, `timed out`, `could not run`.
fn describe(outcome: &HookOutcome) -> String {
    match outcome.exit_code {
        _ if outcome.timed_out => "timed out".to_string(),
        Some(code) => format!("exit code {code}"),
        None => "killed or could not start".to_string(),
    }
}

/// What the error message says about the post hook, which ran in any case.
fn post_note(post: Option<&HookOutcome>) -> String {
    match post {
        None => String::new(),
        Some(p) if p.success => "; the post-exec hook ran".to_string(),
        Some(p) => format!("; the post-exec hook failed too ({})", describe(p)),
    }
}

fn print_summary(id: &SnapshotId, snap: &Snapshot, json: bool) -> Result<()> {
    let s = &snap.summary;
    if json {
        let v = serde_json::json!({
            "snapshot_id": id.to_hex(),
            "time": snap.time,
            "host": snap.host,
            "source": snap.source,
            "tags": snap.tags,
            "parent": snap.parent.map(|p| p.to_hex()),
            "summary": s,
            "excludes": snap.excludes,
            "hooks": snap.hooks,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!("snapshot {} saved", id.short());
    outln!(
        "files:    {} new, {} changed, {} unchanged",
        s.files_new,
        s.files_changed,
        s.files_unchanged
    );
    outln!("dirs:     {}", s.dirs);
    if s.files_changed_while_read > 0 {
        outln!(
            "changed while read: {} (see the warnings)",
            s.files_changed_while_read
        );
    }
    outln!(
        "read:     {} of {}",
        size(s.bytes_read),
        size(s.bytes_total)
    );
    outln!(
        "added:    {} in {} blobs (after dedup and compression)",
        size(s.bytes_added),
        s.blobs_added
    );
    outln!("duration: {:.2}s", s.duration_ms as f64 / 1000.0);
    if !snap.excludes.is_empty() {
        outln!("excludes: {}", snap.excludes.join(" "));
    }
    for hook in &snap.hooks {
        if let Ok(h) = serde_json::from_value::<HookOutcome>(hook.clone()) {
            let state = if h.success { "ok" } else { "failed" };
            let phase = match h.phase {
                HookPhase::Pre => "pre-exec",
                HookPhase::Post => "post-exec",
            };
            outln!(
                "hook:     {phase} {state} ({}, {} ms)",
                describe(&h),
                h.duration_ms
            );
        }
    }
    if s.errors > 0 {
        outln!(
            "warning:  {} entries could not be read (see the log above)",
            s.errors
        );
    }
    Ok(())
}
