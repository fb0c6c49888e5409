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

/// Exit code for an error: 1 in general, 2 usage, 10 wrong password,
/// 11 not a repository, 12 damaged repository, 13 locked by another
/// process, 14 internal error (a bug). (3, "finished but some entries failed", is a result, not an
/// error.) README.md lists them for users.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<cairn_core::Error>().map(|e| e.kind()) {
        Some(ErrorKind::WrongPassword) => 10,
        Some(ErrorKind::NotARepository) => 11,
        Some(ErrorKind::Corrupt) => 12,
        Some(ErrorKind::Locked) => 13,
        Some(ErrorKind::Usage) => 2,
        Some(ErrorKind::Internal) => 14,
        _ => 1,
    }
}

/// The error with its causes, one line.
pub fn describe_error(e: &anyhow::Error) -> String {
    format!("{e:#}")
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
    use super::exit_code;

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
