//! Restoring one file of a snapshot (a disk image, a block device backed
//! up with `read_devices`) onto an existing block device, or into an
//! existing image file that stands in for one.
//!
//! The target is neither created, truncated nor grown: it must hold the
//! file already, or nothing is written. The range the file covers is
//! zeroed first (by the kernel: discard or write-zeroes where the device
//! has them), so the file's holes and zero blocks, which the writes skip,
//! read back as zeros whatever the device held. Metadata (mode, owner,
//! times) stays the device's own.

use super::plan::{self, Plan};
use super::{fetch, finalize, RestoreOptions, RestoreStats};
use crate::error::{Error, Result};
use crate::format::BlobId;
use crate::repo::Repository;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Writes the one file of `root` that `opts.includes` selects (or the only
/// file of the snapshot) onto `device`.
pub(super) fn restore(
    repo: &Repository,
    root: &BlobId,
    device: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let mut plan = Plan::new(repo, root, Path::new(""), &opts.includes)?;
    if let Some((path, why)) = plan.lost.first() {
        return Err(Error::corrupt(path.display().to_string(), why));
    }
    let entries = plan.files.len() + plan.dirs.len() + plan.specials.len() + plan.links.len();
    if plan.files.len() != 1 || entries != 1 {
        return Err(Error::Usage(format!(
            "--target-device writes one file of the snapshot onto a device, but {entries} \
             entries are selected{}: name the disk image with --include PATH (`cairn ls` lists them)",
            if plan.files.is_empty() {
                " and none is a regular file"
            } else {
                ""
            }
        )));
    }
    let size = plan.files[0].node.size;
    let name = plan.files[0].path.display().to_string();
    let target = open_target(device)?;
    let capacity = capacity(&target, device)?;
    if capacity < size {
        return Err(Error::Usage(format!(
            "{} holds {capacity} bytes, less than {name} in the snapshot ({size} bytes): \
             choose a device of at least {size} bytes (nothing was written)",
            device.display()
        )));
    }
    plan.files[0].path = device.to_path_buf();
    let progress = opts.progress.clone().unwrap_or_default();
    progress.files_total.store(1, Ordering::Relaxed);
    progress.bytes_total.store(size, Ordering::Relaxed);
    progress.scan_done.store(true, Ordering::Relaxed);
    let pool = super::pool(opts.workers)?;
    let reads = plan::reads(repo, &pool, &plan.files, &BTreeMap::new())?;
    let mut failed = reads.failed;
    let mut stats = RestoreStats::default();
    stats.timings.plan = started.elapsed();

    let started = Instant::now();
    zero_range(&target, size, capacity).map_err(|e| Error::io(device, e))?;
    fetch::fetch(
        repo,
        &pool,
        &plan,
        &reads.packs,
        &progress,
        &mut failed,
        None,
    )
    .record(&mut stats);
    target.sync_all().map_err(|e| Error::io(device, e))?;
    stats.timings.fetch = started.elapsed();

    let started = Instant::now();
    if let Some(why) = failed.remove(&0) {
        stats.failed.push((device.to_path_buf(), why));
    } else {
        progress.file_done();
        stats.files = 1;
        if opts.verify {
            match finalize::verify_content(repo, &plan.files[0]) {
                Ok(_) => stats.verified = 1,
                Err(e) => stats
                    .failed
                    .push((device.to_path_buf(), format!("verification failed: {e}"))),
            }
        }
    }
    repo.record_found_damage_or_warn();
    stats.timings.finalize = started.elapsed();
    Ok(stats)
}

/// Opens a block device or an existing regular file for writing in place.
fn open_target(device: &Path) -> Result<File> {
    let meta = std::fs::metadata(device).map_err(|e| Error::io(device, e))?;
    let kind = meta.file_type();
    if !kind.is_block_device() && !kind.is_file() {
        return Err(Error::Usage(format!(
            "{} is neither a block device nor an image file: --target-device writes onto an \
             existing device (or image file); to restore into a directory use --target",
            device.display()
        )));
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true);
    if kind.is_block_device() {
        // An exclusive open fails while the device is mounted or held
        // (by LVM, a RAID, another writer): never write under a file system.
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(nix::fcntl::OFlag::O_EXCL.bits());
    }
    open.open(device).map_err(|e| {
        if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
            Error::Usage(format!(
                "{} is in use (mounted, or held by another process or device mapper): \
                 unmount or release it before restoring onto it (nothing was written)",
                device.display()
            ))
        } else {
            Error::io(device, e)
        }
    })
}

/// The bytes the target holds: a device's size, an image file's length.
fn capacity(target: &File, device: &Path) -> Result<u64> {
    use std::io::Seek;
    let mut f = target;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|e| Error::io(device, e))
}

/// Makes `[0, size)` of the target read as zeros: the kernel's zeroing
/// (write-zeroes or discard on devices, unwritten extents or holes in
/// files) where it has one, else written zeros. The range is rounded up
/// to whole 4 KiB blocks within `capacity` (devices take aligned ranges).
fn zero_range(target: &File, size: u64, capacity: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let len = size.div_ceil(4096).saturating_mul(4096).min(capacity);
    if len == 0 {
        return Ok(());
    }
    let fd = target.as_raw_fd();
    let Ok(len_off) = i64::try_from(len) else {
        return Err(std::io::Error::other("device larger than 2^63 bytes"));
    };
    for mode in [
        FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
    ] {
        if fallocate(fd, mode, 0, len_off).is_ok() {
            return Ok(());
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        target.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
