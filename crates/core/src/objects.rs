//! Listing, loading and saving repository objects by kind
//! ([`crate::format::kinds`]), with the one policy for an object that
//! vanishes between a listing and its read.
//!
//! The policy: objects are immutable and only ever deleted whole (a
//! backup replacing its checkpoint, maintenance superseding segments,
//! `forget`), so one listed and then not found was deleted meanwhile. It is
//! skipped and reported in [`Loaded::vanished`], never an error. One that
//! reads but does not open (content not matching its name, a seal that
//! does not open, a body that does not decode) is damaged: it is reported
//! in [`Loaded::damaged`] and each caller says what damage means to it
//! (check reports it, listings warn and go on, gc refuses to act). Every
//! other failure (storage unreachable, permissions) fails the operation.

use crate::crypto::{OpenedEnvelope, SealKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::kinds::{ObjectKind, SealedKind};
use crate::format::Id;
use bytes::Bytes;
use cairn_storage::{DynStorage, StorageError};
use rayon::prelude::*;

/// Objects larger than this are read in ranges of this size by
/// [`Objects::read_opened`].
pub const RANGED_READ: u64 = 8 << 20;

/// One listed object of kind `K`.
#[derive(Debug, Clone)]
pub struct Listed<K: ObjectKind> {
    /// Its id.
    pub id: K::Id,
    /// Its path.
    pub path: String,
    /// Its stored size in bytes.
    pub size: u64,
}

/// What loading a listing found, by the policy in the module docs.
#[derive(Debug)]
pub struct Loaded<K: SealedKind> {
    /// Objects read and opened, in listing order.
    pub objects: Vec<(K::Id, K::Body)>,
    /// Objects deleted between the listing and the read: skipped.
    pub vanished: Vec<K::Id>,
    /// Objects that read but did not open, with why.
    pub damaged: Vec<(K::Id, Error)>,
}

impl<K: SealedKind> Loaded<K> {
    fn empty() -> Self {
        Self {
            objects: Vec::new(),
            vanished: Vec::new(),
            damaged: Vec::new(),
        }
    }

    /// Files the outcome of loading `id`: the body when it loaded, `None`
    /// when it vanished or is damaged (recorded here), an error otherwise.
    fn sort<T>(&mut self, id: K::Id, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(body) => Ok(Some(body)),
            Err(e) if is_vanished(&e) => {
                tracing::debug!("{} {id:?} was deleted since the listing", K::WHAT);
                self.vanished.push(id);
                Ok(None)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                self.damaged.push((id, e));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether `e` says an object is not there (any more).
pub fn is_vanished(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. } if source.is_not_found())
}

fn storage_err(location: &str) -> impl Fn(StorageError) -> Error + '_ {
    move |source| Error::Storage {
        location: location.to_string(),
        source,
    }
}

/// Every object of kind `K` on `storage` (at `location`), in listing
/// order. Paths under `K`'s prefix that do not name one (stray files, a
/// pack outside its canonical folder) are skipped with a warning.
pub fn list_on<K: ObjectKind>(storage: &DynStorage, location: &str) -> Result<Vec<Listed<K>>> {
    let listed = storage.list(K::PREFIX).map_err(storage_err(location))?;
    Ok(listed
        .into_iter()
        .filter_map(|obj| match K::parse(&obj.path) {
            Some(id) => Some(Listed {
                id,
                path: obj.path,
                size: obj.size,
            }),
            None => {
                tracing::warn!("ignoring unexpected object {}", obj.path);
                None
            }
        })
        .collect())
}

/// Whether `storage` holds anything under `K`'s prefix, whatever its name.
pub fn any_on<K: ObjectKind>(storage: &DynStorage, location: &str) -> Result<bool> {
    Ok(!storage
        .list(K::PREFIX)
        .map_err(storage_err(location))?
        .is_empty())
}

/// The objects of one repository: its storage, where it is (for
/// messages) and the key sealing its metadata.
#[derive(Clone, Copy)]
pub struct Objects<'a> {
    storage: &'a DynStorage,
    location: &'a str,
    key: &'a SealKey,
}

impl<'a> Objects<'a> {
    /// Objects on `storage` (at `location`), sealed under `key`.
    pub fn new(storage: &'a DynStorage, location: &'a str, key: &'a SealKey) -> Self {
        Self {
            storage,
            location,
            key,
        }
    }

    fn serr(&self) -> impl Fn(StorageError) -> Error + '_ {
        storage_err(self.location)
    }

    /// Every object of kind `K` (see [`list_on`]).
    pub fn list<K: ObjectKind>(&self) -> Result<Vec<Listed<K>>> {
        list_on::<K>(self.storage, self.location)
    }

    /// The ids of every object of kind `K`, sorted.
    pub fn list_ids<K: ObjectKind>(&self) -> Result<Vec<K::Id>> {
        let mut ids: Vec<K::Id> = self.list::<K>()?.into_iter().map(|l| l.id).collect();
        ids.sort();
        Ok(ids)
    }

    /// Reads object `id` and checks that its content matches its name.
    pub fn read<K: SealedKind>(&self, id: &K::Id) -> Result<Bytes> {
        let path = K::path(id);
        let stored = self.storage.read(&path).map_err(self.serr())?;
        if Id::hash(&stored) != K::raw(id) {
            return Err(Error::corrupt(
                path,
                "content does not match its name (BLAKE3 mismatch)",
            ));
        }
        Ok(stored)
    }

    /// Opens and decodes the stored bytes of object `id` (already checked
    /// against its name).
    pub fn open<K: SealedKind>(&self, id: &K::Id, stored: &[u8]) -> Result<K::Body> {
        let body = self
            .key
            .open_envelope(K::AAD, stored)
            .map_err(|e| Error::corrupt(K::path(id), e))?;
        K::decode(&body).map_err(|e| Error::corrupt(K::path(id), e))
    }

    /// Reads and checks object `id` (of `size` stored bytes, as listed:
    /// 0 if not known) and opens its seal in the buffer it was read into,
    /// leaving the body to be decoded as a stream (large index segments):
    /// memory is the stored size, once. An object larger than
    /// [`RANGED_READ`] is read in ranges of that size into one buffer,
    /// instead of whole into the storage's buffers and copied.
    pub fn read_opened<K: SealedKind>(&self, id: &K::Id, size: u64) -> Result<OpenedEnvelope> {
        let stored = if size > RANGED_READ {
            let path = K::path(id);
            let mut stored = Vec::with_capacity(size as usize);
            let mut at = 0;
            while at < size {
                let end = (at + RANGED_READ).min(size);
                let part = self
                    .storage
                    .read_range(&path, at..end)
                    .map_err(self.serr())?;
                stored.extend_from_slice(&part);
                at = end;
            }
            if Id::hash(&stored) != K::raw(id) {
                return Err(Error::corrupt(
                    path,
                    "content does not match its name (BLAKE3 mismatch)",
                ));
            }
            stored
        } else {
            Vec::from(self.read::<K>(id)?)
        };
        self.key
            .open_envelope_in_place(K::AAD, stored)
            .map_err(|e| Error::corrupt(K::path(id), e))
    }

    /// Reads, checks, opens and decodes object `id`.
    pub fn load<K: SealedKind>(&self, id: &K::Id) -> Result<K::Body> {
        let stored = self.read::<K>(id)?;
        self.open::<K>(id, &stored)
    }

    /// Loads the objects `ids` (in parallel) with `load`, sorting the
    /// outcomes by the policy in the module docs.
    pub fn load_each<K: SealedKind>(
        ids: Vec<K::Id>,
        load: impl Fn(&K::Id) -> Result<K::Body> + Sync,
    ) -> Result<Loaded<K>> {
        let results: Vec<(K::Id, Result<K::Body>)> = ids
            .into_par_iter()
            .map(|id| {
                let r = load(&id);
                (id, r)
            })
            .collect();
        let mut out = Loaded::empty();
        for (id, r) in results {
            if let Some(body) = out.sort(id.clone(), r)? {
                out.objects.push((id, body));
            }
        }
        Ok(out)
    }

    /// Loads the objects `ids` one at a time with `load` and hands each
    /// to `f`, by the same policy as [`Objects::load_each`]; the result
    /// holds what vanished and what was damaged. Only one object is in
    /// memory at a time.
    pub fn visit_each<K: SealedKind>(
        ids: Vec<K::Id>,
        load: impl Fn(&K::Id) -> Result<K::Body>,
        mut f: impl FnMut(K::Id, K::Body) -> Result<()>,
    ) -> Result<Loaded<K>> {
        let mut out = Loaded::empty();
        for id in ids {
            let r = load(&id);
            if let Some(body) = out.sort(id.clone(), r)? {
                f(id, body)?;
            }
        }
        Ok(out)
    }

    /// Loads the objects `ids` on `in_flight` threads and hands each to
    /// `f` on the calling thread as it arrives (in no set order), by the
    /// same policy as [`Objects::load_each`]; `load` may return the body
    /// or any other form of the object (an opened envelope to decode as a
    /// stream). At most `in_flight` objects are loading or waiting for `f`
    /// besides the one `f` holds, so memory follows `in_flight`, not the
    /// number of objects. An error from `f` or from a load stops the
    /// loaders and is returned.
    pub fn stream_each<K: SealedKind, T: Send>(
        ids: Vec<K::Id>,
        in_flight: usize,
        load: impl Fn(&K::Id) -> Result<T> + Sync,
        mut f: impl FnMut(K::Id, T) -> Result<()>,
    ) -> Result<Loaded<K>> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let in_flight = in_flight.clamp(1, ids.len().max(1));
        let queue = std::sync::Mutex::new(ids.into_iter());
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(K::Id, Result<T>)>(in_flight - 1);
        std::thread::scope(|s| {
            let mut out = Loaded::empty();
            let mut spawned = Ok(());
            for n in 0..in_flight {
                let (tx, queue, stop, load) = (tx.clone(), &queue, &stop, &load);
                let worker = std::thread::Builder::new()
                    .name(format!("load-{}-{n}", K::WHAT))
                    .spawn_scoped(s, move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Some(id) = crate::sync::lock(queue).next() else {
                                break;
                            };
                            let r = load(&id);
                            if tx.send((id, r)).is_err() {
                                break;
                            }
                        }
                    });
                if let Err(e) = worker {
                    spawned = Err(Error::spawn("an object loader")(e));
                    break;
                }
            }
            drop(tx);
            let result = spawned.and_then(|()| {
                for (id, r) in rx.iter() {
                    if let Some(body) = out.sort(id.clone(), r)? {
                        f(id, body)?;
                    }
                }
                Ok(())
            });
            // On an error the loaders stop at their next object, and none
            // blocks on a full channel once the receiver is gone.
            stop.store(true, Ordering::Relaxed);
            drop(rx);
            result.map(|()| out)
        })
    }

    /// Lists and loads every object of kind `K`.
    pub fn load_all<K: SealedKind>(&self) -> Result<Loaded<K>> {
        let ids = self.list::<K>()?.into_iter().map(|l| l.id).collect();
        Self::load_each::<K>(ids, |id| self.load::<K>(id))
    }

    /// Seals and writes `body`; returns its id and stored bytes.
    pub fn save<K: SealedKind>(&self, body: &K::Body) -> Result<(K::Id, Bytes)> {
        let stored = Bytes::from(
            self.key
                .seal_envelope(K::AAD, &K::encode(body), K::ZSTD_LEVEL),
        );
        let id = K::from_hash(Id::hash(&stored));
        self.storage
            .write(&K::path(&id), stored.clone())
            .map_err(self.serr())?;
        Ok((id, stored))
    }

    /// Deletes object `id` (deleting a missing one succeeds).
    pub fn delete<K: ObjectKind>(&self, id: &K::Id) -> Result<()> {
        self.storage.delete(&K::path(id)).map_err(self.serr())
    }
}
