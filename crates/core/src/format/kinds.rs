//! Object kinds: for each kind of object stored under a prefix of the
//! repository root, the one definition of its prefix, the id naming one
//! object, how a listed name is checked, and, for the sealed kinds, their
//! associated data, compression level and body encoding.
//!
//! Every other module names objects through these definitions; a prefix
//! string appears nowhere else.

use super::codec::DecodeError;
use super::damage::{DamageRecord, DAMAGE_AAD};
use super::index::{IndexSegment, INDEX_AAD};
use super::plan::{GcPlan, PLAN_AAD};
use super::snapshot::{Snapshot, SNAPSHOT_AAD};
use super::{Id, IndexId, PackId, SnapshotId};
use std::fmt::Debug;
use std::hash::Hash;

/// zstd level of every sealed metadata object (index segments, snapshots,
/// plans, damage records): small bodies that compress well at level 1.
pub const METADATA_ZSTD_LEVEL: i32 = 1;

/// A kind of object living under one prefix of the repository root.
pub trait ObjectKind {
    /// The folder the objects live in, with its trailing `/`.
    const PREFIX: &'static str;
    /// What one object is called in messages.
    const WHAT: &'static str;
    /// The id naming one object.
    type Id: Clone + Eq + Hash + Ord + Debug + Send + Sync;
    /// Object path of `id`.
    fn path(id: &Self::Id) -> String;
    /// The id a listed path names, when it is the canonical path of an
    /// object of this kind (anything else is not one of ours).
    fn parse(path: &str) -> Option<Self::Id>;
}

/// A kind whose objects are content-named (the id is the plain BLAKE3 of
/// the stored bytes) and sealed under the master key with
/// [`SealedKind::AAD`].
pub trait SealedKind: ObjectKind {
    /// Associated data of the seal.
    const AAD: &'static [u8];
    /// zstd level the body is sealed at.
    const ZSTD_LEVEL: i32;
    /// The decoded body.
    type Body: Send;
    /// The id of stored bytes `hash` hashes to.
    fn from_hash(hash: Id) -> Self::Id;
    /// The raw id, to compare with the stored bytes' hash.
    fn raw(id: &Self::Id) -> Id;
    /// Encodes a body.
    fn encode(body: &Self::Body) -> Vec<u8>;
    /// Decodes a body; the error says what is wrong.
    fn decode(body: &[u8]) -> Result<Self::Body, String>;
}

/// Parses `<prefix><64 hex>`.
fn parse_flat(prefix: &str, path: &str) -> Option<Id> {
    Id::from_hex(path.strip_prefix(prefix)?)
}

fn decode_err(e: DecodeError) -> String {
    e.to_string()
}

/// `snapshots/<id>`: sealed snapshot manifests.
#[derive(Debug, Clone, Copy)]
pub enum Snapshots {}

impl ObjectKind for Snapshots {
    const PREFIX: &'static str = "snapshots/";
    const WHAT: &'static str = "snapshot";
    type Id = SnapshotId;
    fn path(id: &SnapshotId) -> String {
        format!("{}{}", Self::PREFIX, id.to_hex())
    }
    fn parse(path: &str) -> Option<SnapshotId> {
        parse_flat(Self::PREFIX, path).map(SnapshotId)
    }
}

impl SealedKind for Snapshots {
    const AAD: &'static [u8] = SNAPSHOT_AAD;
    const ZSTD_LEVEL: i32 = METADATA_ZSTD_LEVEL;
    type Body = Snapshot;
    fn from_hash(hash: Id) -> SnapshotId {
        SnapshotId(hash)
    }
    fn raw(id: &SnapshotId) -> Id {
        id.0
    }
    fn encode(body: &Snapshot) -> Vec<u8> {
        body.to_json()
    }
    fn decode(body: &[u8]) -> Result<Snapshot, String> {
        Snapshot::from_json(body).map_err(|e| e.to_string())
    }
}

/// `index/<id>`: sealed index segments.
#[derive(Debug, Clone, Copy)]
pub enum IndexSegments {}

impl ObjectKind for IndexSegments {
    const PREFIX: &'static str = "index/";
    const WHAT: &'static str = "index segment";
    type Id = IndexId;
    fn path(id: &IndexId) -> String {
        format!("{}{}", Self::PREFIX, id.to_hex())
    }
    fn parse(path: &str) -> Option<IndexId> {
        parse_flat(Self::PREFIX, path).map(IndexId)
    }
}

impl SealedKind for IndexSegments {
    const AAD: &'static [u8] = INDEX_AAD;
    const ZSTD_LEVEL: i32 = METADATA_ZSTD_LEVEL;
    type Body = IndexSegment;
    fn from_hash(hash: Id) -> IndexId {
        IndexId(hash)
    }
    fn raw(id: &IndexId) -> Id {
        id.0
    }
    fn encode(body: &IndexSegment) -> Vec<u8> {
        body.encode()
    }
    fn decode(body: &[u8]) -> Result<IndexSegment, String> {
        IndexSegment::decode(body).map_err(decode_err)
    }
}

/// `gc/<id>`: sealed garbage-collection plans.
#[derive(Debug, Clone, Copy)]
pub enum GcPlans {}

impl ObjectKind for GcPlans {
    const PREFIX: &'static str = "gc/";
    const WHAT: &'static str = "gc plan";
    type Id = Id;
    fn path(id: &Id) -> String {
        format!("{}{}", Self::PREFIX, id.to_hex())
    }
    fn parse(path: &str) -> Option<Id> {
        parse_flat(Self::PREFIX, path)
    }
}

impl SealedKind for GcPlans {
    const AAD: &'static [u8] = PLAN_AAD;
    const ZSTD_LEVEL: i32 = METADATA_ZSTD_LEVEL;
    type Body = GcPlan;
    fn from_hash(hash: Id) -> Id {
        hash
    }
    fn raw(id: &Id) -> Id {
        *id
    }
    fn encode(body: &GcPlan) -> Vec<u8> {
        body.encode()
    }
    fn decode(body: &[u8]) -> Result<GcPlan, String> {
        GcPlan::decode(body).map_err(decode_err)
    }
}

/// `damage/<id>`: sealed records of damaged copies.
#[derive(Debug, Clone, Copy)]
pub enum DamageRecords {}

impl ObjectKind for DamageRecords {
    const PREFIX: &'static str = super::damage::DAMAGE_PREFIX;
    const WHAT: &'static str = "damage record";
    type Id = Id;
    fn path(id: &Id) -> String {
        format!("{}{}", Self::PREFIX, id.to_hex())
    }
    fn parse(path: &str) -> Option<Id> {
        parse_flat(Self::PREFIX, path)
    }
}

impl SealedKind for DamageRecords {
    const AAD: &'static [u8] = DAMAGE_AAD;
    const ZSTD_LEVEL: i32 = METADATA_ZSTD_LEVEL;
    type Body = DamageRecord;
    fn from_hash(hash: Id) -> Id {
        hash
    }
    fn raw(id: &Id) -> Id {
        *id
    }
    fn encode(body: &DamageRecord) -> Vec<u8> {
        body.encode()
    }
    fn decode(body: &[u8]) -> Result<DamageRecord, String> {
        DamageRecord::decode(body).map_err(decode_err)
    }
}

/// `packs/<2 hex>/<id>`: pack files, named by the plain BLAKE3 of their
/// bytes and not sealed as a whole (see [`super::pack`]). Only the
/// canonical path names a pack: a copy elsewhere is not one.
#[derive(Debug, Clone, Copy)]
pub enum Packs {}

impl ObjectKind for Packs {
    const PREFIX: &'static str = "packs/";
    const WHAT: &'static str = "pack";
    type Id = PackId;
    fn path(id: &PackId) -> String {
        let h = id.to_hex();
        format!("{}{}/{}", Self::PREFIX, &h[..2], h)
    }
    fn parse(path: &str) -> Option<PackId> {
        let name = path.strip_prefix(Self::PREFIX)?.rsplit('/').next()?;
        let id = PackId::from_hex(name)?;
        (Self::path(&id) == path).then_some(id)
    }
}

/// `keys/<id>`: key files, each sealing the master key under one password
/// (see [`super::key`]; [`super::key::check_key_name`] checks content
/// against a content-derived name). Older key files carry names that are
/// not content-derived, so any name is accepted here.
#[derive(Debug, Clone, Copy)]
pub enum KeyFiles {}

impl ObjectKind for KeyFiles {
    const PREFIX: &'static str = "keys/";
    const WHAT: &'static str = "key file";
    type Id = String;
    fn path(id: &String) -> String {
        format!("{}{id}", Self::PREFIX)
    }
    fn parse(path: &str) -> Option<String> {
        path.strip_prefix(Self::PREFIX)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_string)
    }
}

/// Claims to initialise the location (`init/<nonce>-<unix seconds>`):
/// empty objects that exist only while an init runs, so that of several
/// processes initialising one empty location at once exactly one does
/// (`Repository::init`).
#[derive(Debug, Clone, Copy)]
pub enum InitClaims {}

impl ObjectKind for InitClaims {
    const PREFIX: &'static str = "init/";
    const WHAT: &'static str = "init claim";
    type Id = String;
    fn path(id: &String) -> String {
        format!("{}{id}", Self::PREFIX)
    }
    fn parse(path: &str) -> Option<String> {
        path.strip_prefix(Self::PREFIX)
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_is_named_only_by_its_canonical_path() {
        let id = PackId(Id([0xab; 32]));
        let path = Packs::path(&id);
        assert!(path.starts_with("packs/ab/abab"));
        assert_eq!(Packs::parse(&path), Some(id));
        let elsewhere = format!("packs/cd/{}", id.to_hex());
        assert_eq!(Packs::parse(&elsewhere), None);
        assert_eq!(Packs::parse(&format!("packs/{}", id.to_hex())), None);
    }

    #[test]
    fn flat_kinds_parse_what_they_print_and_nothing_else() {
        let id = SnapshotId(Id([7; 32]));
        assert_eq!(Snapshots::parse(&Snapshots::path(&id)), Some(id));
        assert_eq!(Snapshots::parse("snapshots/xyz"), None);
        assert_eq!(Snapshots::parse(&IndexSegments::path(&IndexId(id.0))), None);
        let plan = Id([3; 32]);
        assert_eq!(GcPlans::parse(&GcPlans::path(&plan)), Some(plan));
        assert_eq!(KeyFiles::parse("keys/abc"), Some("abc".to_string()));
        assert_eq!(KeyFiles::parse("keys/"), None);
    }
}
