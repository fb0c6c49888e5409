//! Human-readable sizes, times and errors, exit codes, and standard output.
//!
//! Everything the CLI prints to standard output goes through [`outln!`] and
//! [`out!`]: a reader that goes away (`cairn check | head -1`) ends the
//! process quietly with exit code 0, as ripgrep does, instead of the panic
//! `println!` gives on a closed pipe.

use cairn_core::ErrorKind;
use std::io::Write;

/// Prints a line to standard output; see [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints to standard output without a newline; see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// Writes to standard output. A closed pipe ends the process quietly
/// (exit 0: whoever read the output has all it wanted); any other write
/// error ends it with a message on stderr and exit 1.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        stdout_failed(&e);
    }
}

/// Ends the process after a failed write to standard output (see
/// [`write_stdout`]).
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

/// Whether the command failed because its reader went away: a closed
/// pipe in `e`'s chain (commands that stream to stdout, like `dump` and
/// `ls`, return it as an error). Such a command ends quietly with exit 0.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Exit code for an error; README.md lists them for users. (3, "finished
/// but some entries failed", is a result, not an error.)
///
/// | code | failure |
/// |---|---|
/// | 1 | anything not below |
/// | 2 | bad usage or configuration |
/// | 10 | wrong password |
/// | 11 | not a repository |
/// | 12 | damaged repository |
/// | 13 | locked by another process |
/// | 14 | internal error (a bug) |
/// | 15 | storage unreachable or failing |
/// | 16 | permission denied (storage or local files) |
/// | 17 | no space left (storage or local disk) |
/// | 18 | a source to back up does not exist |
/// | 19 | a backup's new objects were removed under it (concurrent maintenance) |
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let Some(core) = e.downcast_ref::<cairn_core::Error>() else {
        // Errors of the CLI itself: classed by the first I/O or storage cause.
        return e.chain().find_map(cause_code).unwrap_or(1);
    };
    match core.kind() {
        ErrorKind::WrongPassword => 10,
        ErrorKind::NotARepository => 11,
        ErrorKind::Corrupt => 12,
        ErrorKind::Locked => 13,
        ErrorKind::Usage => 2,
        ErrorKind::Internal => 14,
        ErrorKind::SourceMissing => 18,
        ErrorKind::Interference => 19,
        ErrorKind::Storage | ErrorKind::Io | ErrorKind::Cache => {
            e.chain().skip(1).find_map(cause_code).unwrap_or(1)
        }
    }
}

/// The exit code a storage or local I/O cause stands for, if it is one.
fn cause_code(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    use cairn_storage::{StorageError, StorageErrorKind as S};
    if let Some(s) = cause.downcast_ref::<StorageError>() {
        return Some(match s.kind {
            S::PermissionDenied => 16,
            S::NoSpace => 17,
            S::InvalidConfig => 2,
            S::NotFound | S::ShortObject => 12,
            S::Temporary | S::Other => 15,
        });
    }
    // A local file: classed as the fs backend classes the same errno.
    let io = cause.downcast_ref::<std::io::Error>()?;
    match StorageError::from_io("", io).kind {
        S::PermissionDenied => Some(16),
        S::NoSpace => Some(17),
        _ => None,
    }
}

/// The error with its causes on one line, outermost first, each said once:
/// a cause whose text an outer message already carries is left out (errors
/// that print their source, and contexts that repeat it, would otherwise
/// say everything twice). With `-v`, the storage backend's own full text of
/// each storage failure follows on its own line.
pub fn describe_error(e: &anyhow::Error, verbose: u8) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    if verbose > 0 {
        for detail in e
            .chain()
            .filter_map(|c| c.downcast_ref::<cairn_storage::StorageError>())
            .filter_map(|s| s.detail.as_deref())
        {
            line.push_str("\n  backend: ");
            line.push_str(detail);
        }
    }
    line
}

/// Bytes as `1.2 MiB`.
pub fn size(n: u64) -> String {
    cairn_engine::report::size(n)
}

/// A timestamp in local time, to the second.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A terminal progress bar fed by engine counters.
pub struct ProgressBar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl ProgressBar {
    /// Starts drawing `progress` on stderr every 100 ms.
    pub fn start(
        progress: std::sync::Arc<cairn_core::progress::Progress>,
        verb: &'static str,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            while !stop2.load(Ordering::Relaxed) {
                let p = progress.snapshot();
                bar.set_length(p.bytes_total.max(p.bytes_done));
                bar.set_position(p.bytes_done);
                bar.set_message(format!("{verb} {}/{} files", p.files_done, p.files_total));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Self { stop, handle }
    }

    /// Stops and clears the bar.
    pub fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::{describe_error, exit_code};
    use cairn_storage::{StorageError, StorageErrorKind};

    fn storage(kind: StorageErrorKind) -> anyhow::Error {
        let source = StorageError::new(kind, "write packs/ab/ab12", "it failed").with_detail(
            "Unexpected (permanent) at write, context: { path: packs/ab/ab12 } => it failed",
        );
        anyhow::Error::new(cairn_core::Error::Storage {
            location: "/repo".into(),
            source,
        })
        .context("backup failed")
    }

    #[test]
    fn storage_failures_exit_with_the_code_of_their_class() {
        assert_eq!(exit_code(&storage(StorageErrorKind::Temporary)), 15);
        assert_eq!(exit_code(&storage(StorageErrorKind::Other)), 15);
        assert_eq!(exit_code(&storage(StorageErrorKind::PermissionDenied)), 16);
        assert_eq!(exit_code(&storage(StorageErrorKind::NoSpace)), 17);
        assert_eq!(exit_code(&storage(StorageErrorKind::InvalidConfig)), 2);
        assert_eq!(exit_code(&storage(StorageErrorKind::NotFound)), 12);
        let enospc = anyhow::Error::new(cairn_core::Error::io(
            "/restore/target/file",
            std::io::Error::from_raw_os_error(28),
        ));
        assert_eq!(exit_code(&enospc), 17);
        let missing = anyhow::Error::new(cairn_core::Error::SourceMissing {
            path: "/nonexistent".into(),
        });
        assert_eq!(exit_code(&missing), 18);
        let gone = anyhow::Error::new(cairn_core::Error::Interference {
            location: "/repo".into(),
            object: "write packs/ab/ab12".into(),
            cause: "No such file or directory (os error 2)".into(),
        });
        assert_eq!(exit_code(&gone), 19);
        assert!(gone
            .to_string()
            .contains("resumes from its last checkpoint"));
    }

    /// `Error::Storage` prints its source and anyhow's chain prints it again;
    /// so did a context repeating its cause.
    #[test]
    fn each_cause_is_said_once_and_backend_detail_only_with_v() {
        let e = storage(StorageErrorKind::Temporary);
        let line = describe_error(&e, 0);
        assert_eq!(
            line,
            "backup failed: storage error at /repo: write packs/ab/ab12: it failed"
        );
        assert!(!line.contains("context:"), "{line}");
        let verbose = describe_error(&e, 1);
        assert!(verbose.starts_with(&line), "{verbose}");
        assert!(
            verbose.contains("\n  backend: Unexpected (permanent)"),
            "{verbose}"
        );
        let io = anyhow::Error::new(cairn_core::Error::io(
            "/src/file",
            std::io::Error::from_raw_os_error(2),
        ));
        assert_eq!(
            describe_error(&io, 0)
                .matches("No such file or directory")
                .count(),
            1
        );
    }

    /// Internal failures (a broken invariant) used to travel as usage errors and exit 2, as
    /// if the user had typed something wrong.
    #[test]
    fn internal_errors_and_thread_limits_do_not_exit_as_usage_errors() {
        let internal = anyhow::Error::new(cairn_core::Error::Internal("the walk ended".into()));
        assert_eq!(exit_code(&internal), 14);
        assert!(
            internal.to_string().contains("a bug in cairn"),
            "{internal}"
        );
        let spawn = anyhow::Error::new((cairn_core::Error::spawn("reader"))(std::io::Error::from(
            std::io::ErrorKind::WouldBlock,
        )));
        assert_eq!(exit_code(&spawn), 1);
        assert!(spawn.to_string().contains("thread limit"), "{spawn}");
    }
}
