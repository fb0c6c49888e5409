//! [`ObjectWriter`]: an object written in pieces and committed whole, and
//! [`BufferedWriter`], the writer of backends without a streaming path.
//!
//! Invariants every writer keeps: nothing is visible under any name until
//! [`ObjectWriter::close`] succeeds, and then the whole object is; a writer
//! dropped before that leaves nothing visible (its staging file, if any, is
//! removed); a `close` that failed with a `Temporary` error may be called
//! again (the retry layer does), and a `close` repeated after success with
//! the same name succeeds without writing again.

use crate::{Result, Storage, StorageError, StorageErrorKind};
use bytes::Bytes;
use std::sync::Arc;

/// An object being written: bytes appended in order, then committed under
/// a name chosen at the end (a pack is named by the hash of its bytes).
///
/// Appends are not requests: they fill a buffer (object stores) or a
/// staging file (fs); `close` is the request that commits them. Layers
/// (retry, throttle, concurrency bound, fault injection, counting) wrap the
/// writer of the layer below, so they see every object written this way.
pub trait ObjectWriter: Send {
    /// Appends `bytes` to the object.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Bytes appended so far.
    fn len(&self) -> u64;
    /// Whether nothing has been appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Commits what was appended as the object `path`, atomically,
    /// replacing any previous object of that name.
    fn close(&mut self, path: &str) -> Result<()>;
}

/// What a writer has done with its bytes.
#[derive(Debug)]
enum Buffered {
    /// Collecting bytes.
    Open(Vec<u8>),
    /// Handed to `write`, kept until it succeeds (a retried `close` sends
    /// the same bytes again).
    Sending(Bytes),
    /// Committed under this name.
    Done(String),
}

/// Collects an object in memory and stores it with one
/// [`Storage::write`] at `close`: the writer of object stores (one PUT per
/// object) and the default of [`Storage::writer`].
#[derive(Debug)]
pub struct BufferedWriter<S: Storage + ?Sized> {
    storage: Arc<S>,
    state: Buffered,
    len: u64,
}

impl<S: Storage + ?Sized> BufferedWriter<S> {
    /// A writer that stores through `storage`, with room reserved for
    /// `size_hint` bytes.
    pub fn new(storage: Arc<S>, size_hint: usize) -> Self {
        Self {
            storage,
            state: Buffered::Open(Vec::with_capacity(size_hint)),
            len: 0,
        }
    }
}

/// The error of using a writer that already committed its object.
pub(crate) fn already_closed(op: String, committed: &str) -> StorageError {
    StorageError::new(
        StorageErrorKind::Other,
        op,
        format!("the writer already committed its object as {committed}; open a new writer"),
    )
}

impl<S: Storage + ?Sized> ObjectWriter for BufferedWriter<S> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.state {
            Buffered::Open(buf) => {
                buf.extend_from_slice(bytes);
                self.len += bytes.len() as u64;
                Ok(())
            }
            Buffered::Sending(_) => Err(StorageError::new(
                StorageErrorKind::Other,
                "append to an object being stored",
                "a writer takes no more bytes once close was called",
            )),
            Buffered::Done(path) => Err(already_closed("append".into(), path)),
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn close(&mut self, path: &str) -> Result<()> {
        let data = match &mut self.state {
            Buffered::Open(buf) => Bytes::from(std::mem::take(buf)),
            Buffered::Sending(data) => data.clone(),
            Buffered::Done(done) if done == path => return Ok(()),
            Buffered::Done(done) => return Err(already_closed(format!("write {path}"), done)),
        };
        self.state = Buffered::Sending(data.clone());
        self.storage.write(path, data)?;
        self.state = Buffered::Done(path.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    #[test]
    fn nothing_is_visible_before_close_and_a_repeated_close_writes_nothing_new() {
        let mem = Arc::new(MemStorage::new());
        let mut w = BufferedWriter::new(mem.clone(), 4);
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        assert_eq!(w.len(), 11);
        assert!(mem.list("").unwrap().is_empty());
        w.close("o/1").unwrap();
        assert_eq!(&mem.read("o/1").unwrap()[..], b"hello world");
        mem.delete("o/1").unwrap();
        w.close("o/1").unwrap();
        assert!(mem.list("").unwrap().is_empty(), "no second write");
        assert!(w.close("o/2").is_err());
        assert!(w.write(b"x").is_err());
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let mem = Arc::new(MemStorage::new());
        let mut w = BufferedWriter::new(mem.clone(), 0);
        w.write(b"abc").unwrap();
        drop(w);
        assert!(mem.list("").unwrap().is_empty());
    }
}
