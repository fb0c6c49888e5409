//! `cairn mount`: browse the repository (or one snapshot) as a read-only
//! file system, in the foreground or detached with `--daemon`.

use super::FilterOpts;
use crate::common::{parse_size, GlobalOpts};
use anyhow::{bail, Context, Result};
use cairn_fuse::{check_mountpoint, mount_notify, MountOptions, MALLOC_ENV};
use clap::Args;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// Line the detached child prints on stdout once the mount is ready.
const READY: &str = "cairn-mount-ready";

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Empty directory to mount on.
    pub dir: PathBuf,
    /// Mount only this snapshot (id prefix or `latest`) at the root.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Memory for decrypted chunks (e.g. 256MiB); bounds the mount's memory.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Bytes fetched ahead of a sequential reader (0 turns readahead off).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub readahead: u64,
    /// Threads answering file system requests.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Let other users read the mount (allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Detach once the mount is ready; unmount with `fusermount3 -u DIR`.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: write the mount's log here (default: discarded once mounted).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Internal: the detached process started by --daemon.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
    #[command(flatten)]
    pub filter: FilterOpts,
}

pub fn run(g: &GlobalOpts, a: MountArgs) -> Result<ExitCode> {
    crate::malloc::restart_with_malloc_setting();
    // Check before asking for a password or opening anything.
    check_mountpoint(&a.dir)?;
    if a.daemon {
        return detach(g, &a);
    }
    let repo = g.open()?;
    let snapshot = match &a.snapshot {
        Some(spec) => Some(repo.find_snapshot(spec, &a.filter.filter())?.0),
        None => None,
    };
    let opts = MountOptions {
        snapshot,
        cache_size: a.cache_size,
        readahead: a.readahead,
        threads: a.threads,
        fsname: Some(format!("cairn:{}", repo.location())),
        allow_other: a.allow_other,
        ..MountOptions::default()
    };
    let quiet = g.quiet;
    let daemon_child = a.daemon_child;
    mount_notify(repo, &a.dir, &opts, |dir| {
        if daemon_child {
            outln!("{READY}");
        } else if !quiet {
            eprintln!(
                "mounted at {}; press Ctrl-C or run `fusermount3 -u {}` to unmount",
                dir.display(),
                dir.display()
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts this command again as a detached child and returns once its
/// mount is ready (or reports why it failed).
fn detach(g: &GlobalOpts, a: &MountArgs) -> Result<ExitCode> {
    // Ask for the password here, where a terminal may be; the child gets it
    // in its environment.
    let password = g.password()?;
    let exe = std::env::current_exe().context("locating the cairn executable")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|arg| arg != "--daemon")
        .collect();
    args.push("--daemon-child".into());
    let mut log = match &a.log_file {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(p)
            .with_context(|| format!("opening log file {}", p.display()))?,
        None => tempfile_in_tmp()?,
    };
    let start = log.stream_position().unwrap_or(0);
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .args(&args)
            .env("CAIRN_PASSWORD", password)
            .env(
                MALLOC_ENV.0,
                std::env::var_os(MALLOC_ENV.0).unwrap_or(MALLOC_ENV.1.into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            // Its own process group: Ctrl-C in this terminal does not reach it.
            .process_group(0)
            .spawn()
            .context("starting the detached mount process")?
    };
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() == READY {
        if !g.quiet {
            eprintln!(
                "mounted at {} (pid {}); run `fusermount3 -u {}` to unmount",
                a.dir.display(),
                child.id(),
                a.dir.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    let mut text = String::new();
    log.seek(std::io::SeekFrom::Start(start))?;
    log.read_to_string(&mut text)?;
    let text = text.trim().trim_start_matches("error: ");
    if text.is_empty() {
        bail!("the mount process exited ({status}) before the mount was ready");
    }
    bail!("{text}")
}

/// An unlinked temporary file: the child's log until the mount is ready.
fn tempfile_in_tmp() -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("cairn-mount-{}.log", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}
