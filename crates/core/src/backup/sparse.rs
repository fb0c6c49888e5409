//! Reading a sparse file without reading its holes: a [`Read`] over a file
//! that asks the file system where the data is (`SEEK_DATA`/`SEEK_HOLE`)
//! and yields zeros for the holes without touching the disk.
//!
//! The bytes it yields are the file's bytes exactly, so chunk cuts and ids
//! are those of a plain read: a thin disk image costs reads only for its
//! data, and its all-zero chunks are recorded as holes as ever.
//!
//! Invariant: [`DataReader`] yields every byte once, in order, from offset
//! 0 to the end of the file as it is while read; where the file system
//! cannot tell data from holes it reads everything.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;

/// Whether `meta` describes a file with fewer blocks allocated than its
/// size needs: only those are worth asking where their data is (it costs
/// two `lseek` calls per region).
pub(super) fn looks_sparse(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.blocks().saturating_mul(512) < meta.size()
}

/// What the reader is in at its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Data up to this offset (exclusive): read from the file.
    Data(u64),
    /// A hole up to this offset (exclusive): zeros, not read.
    Hole(u64),
    /// Not known yet: ask the file system.
    Unknown,
    /// The file system cannot tell (or the end was passed): plain reads
    /// until the end of the file.
    Plain,
}

/// A sequential reader of `file` that skips its holes.
pub(super) struct DataReader<'f> {
    file: &'f File,
    pos: u64,
    region: Region,
    /// Bytes read from the file (not zeros made up for holes).
    from_disk: u64,
}

impl<'f> DataReader<'f> {
    /// A reader from the start of `file`.
    #[cfg(test)]
    pub fn new(file: &'f File) -> Self {
        Self::at(file, 0)
    }

    /// A reader from offset `pos` of `file`.
    pub fn at(file: &'f File, pos: u64) -> Self {
        Self {
            file,
            pos,
            region: Region::Unknown,
            from_disk: 0,
        }
    }

    /// Bytes actually read from the file so far.
    #[cfg(test)]
    pub fn bytes_from_disk(&self) -> u64 {
        self.from_disk
    }

    /// Where the data or hole at `self.pos` ends.
    fn locate(&self) -> Region {
        use nix::errno::Errno;
        use nix::unistd::{lseek, Whence};
        let fd = self.file.as_raw_fd();
        let Ok(pos) = i64::try_from(self.pos) else {
            return Region::Plain;
        };
        match lseek(fd, pos, Whence::SeekData) {
            Ok(data) if data > pos => Region::Hole(data as u64),
            Ok(_) => match lseek(fd, pos, Whence::SeekHole) {
                Ok(hole) if hole > pos => Region::Data(hole as u64),
                _ => Region::Plain,
            },
            // No data at or after `pos`: a hole up to the end of the file.
            Err(Errno::ENXIO) => match self.file.metadata() {
                Ok(m) if m.size() > self.pos => Region::Hole(m.size()),
                _ => Region::Plain,
            },
            Err(_) => Region::Plain,
        }
    }
}

impl Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.region {
                Region::Unknown => self.region = self.locate(),
                Region::Data(end) | Region::Hole(end) if self.pos >= end => {
                    self.region = Region::Unknown;
                }
                Region::Hole(end) => {
                    let n = buf.len().min((end - self.pos) as usize);
                    buf[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Region::Data(end) => {
                    let want = buf.len().min((end - self.pos) as usize);
                    let n = self.file.read_at(&mut buf[..want], self.pos)?;
                    if n == 0 {
                        // Truncated while read: the file ends here.
                        return Ok(0);
                    }
                    self.pos += n as u64;
                    self.from_disk += n as u64;
                    return Ok(n);
                }
                Region::Plain => {
                    let n = self.file.read_at(buf, self.pos)?;
                    self.pos += n as u64;
                    self.from_disk += n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{looks_sparse, DataReader};
    use std::io::Read;
    use std::os::unix::fs::FileExt;

    /// A thin image: islands of data in a large hole, one at the very end.
    /// Reading it must give the same bytes as a plain read while reading
    /// from the disk little more than the islands.
    #[test]
    fn a_sparse_file_reads_as_its_bytes_while_reading_only_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = std::fs::File::create(&path).unwrap();
        let size = 256u64 << 20;
        file.set_len(size).unwrap();
        let islands = [
            (0u64, 100_000usize),
            (64 << 20, 1 << 20),
            (size - 4096, 4096),
        ];
        for (i, (at, len)) in islands.iter().enumerate() {
            let data: Vec<u8> = (0..*len).map(|j| (j % 251) as u8 + i as u8 + 1).collect();
            file.write_all_at(&data, *at).unwrap();
        }
        file.sync_all().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        if !looks_sparse(&meta) {
            eprintln!("skipped: {} does not keep holes", dir.path().display());
            return;
        }
        let mut reader = DataReader::new(&file);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        let plain = std::fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, size);
        assert!(got == plain, "the bytes differ from a plain read");
        let data: u64 = islands.iter().map(|(_, l)| *l as u64).sum();
        // File systems allocate whole blocks (up to 64 KiB on some) around
        // each island.
        assert!(
            reader.bytes_from_disk() < data + (1 << 20),
            "read {} bytes from the disk for {data} bytes of data",
            reader.bytes_from_disk()
        );
    }

    /// A file without holes reads whole, through the same path.
    #[test]
    fn a_dense_file_reads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut reader = DataReader::new(&file);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert!(got == data);
        assert_eq!(reader.bytes_from_disk(), data.len() as u64);
    }
}
