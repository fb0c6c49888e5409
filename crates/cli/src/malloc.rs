//! glibc's malloc setting for backups and mounts.
//!
//! Backups and mounts keep chunk-sized buffers (0.5-8 MiB) alive while
//! passing them between threads. With glibc's default dynamic mmap
//! threshold those buffers come from per-thread arenas once the first one
//! is freed, and the freed memory stays in the arenas: peak RSS grew with
//! the thread count (a 4 GiB backup peaked at 146 MB; a mount at twice its
//! cache). A fixed threshold of 256 KiB gives every such buffer its own
//! mapping, returned to the system when freed (the same backup: 89 MB, no
//! slower). Restore is left alone: its buffers live for one chunk each, and
//! fresh mappings cost it page faults (4 GiB restore: 9.3 s with the
//! setting, 5.8 s without, at 45-51 MB either way).

use std::process::Command;

/// Replaces this process by the same command with [`cairn_fuse::MALLOC_ENV`]
/// set, unless it is set already (glibc reads it only at startup). Same
/// pid, arguments, environment and open files. Returns only if the restart
/// failed; the command then runs with glibc's defaults.
pub fn restart_with_malloc_setting() {
    let (name, value) = cairn_fuse::MALLOC_ENV;
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(name).is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let err = match std::env::current_exe() {
        Ok(exe) => {
            let mut cmd = Command::new(exe);
            if let Some(arg0) = args.next() {
                cmd.arg0(arg0);
            }
            cmd.args(args).env(name, value).exec()
        }
        Err(e) => e,
    };
    tracing::debug!("cannot restart with {name}={value} ({err}); using glibc's malloc defaults");
}
