//! Typed 32-byte ids: blobs (keyed BLAKE3), packs, index segments and snapshots (plain BLAKE3).

use super::kinds::ObjectKind;
use std::fmt;

/// A raw 32-byte id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Lowercase hex of all 32 bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
    /// The first 8 hex characters, for display.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    /// Plain BLAKE3 of `data`.
    pub fn hash(data: &[u8]) -> Self {
        Id(*blake3::hash(data).as_bytes())
    }
    /// Whether every byte is zero (the hole marker in chunk refs).
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

/// Serialized as its 64 hex characters (reports; the stored formats
/// encode ids themselves).
impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Id);

        impl $name {
            /// Lowercase hex of the id.
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                Id::from_hex(s).map($name)
            }
            /// The first 8 hex characters, for display.
            pub fn short(&self) -> String {
                self.0.short()
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0 .0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&self.0, s)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

typed_id!(
    /// Keyed BLAKE3 of a blob's plaintext.
    BlobId
);
typed_id!(
    /// BLAKE3 of a pack's bytes; names `packs/<2 hex>/<hex>`.
    PackId
);
typed_id!(
    /// BLAKE3 of an index segment's stored bytes; names `index/<hex>`.
    IndexId
);
typed_id!(
    /// BLAKE3 of a snapshot's stored bytes; names `snapshots/<hex>`.
    SnapshotId
);

impl PackId {
    /// Object path of this pack.
    pub fn path(&self) -> String {
        <super::kinds::Packs as ObjectKind>::path(self)
    }
}

impl IndexId {
    /// Object path of this index segment.
    pub fn path(&self) -> String {
        <super::kinds::IndexSegments as ObjectKind>::path(self)
    }
}

impl SnapshotId {
    /// Object path of this snapshot.
    pub fn path(&self) -> String {
        <super::kinds::Snapshots as ObjectKind>::path(self)
    }
}

/// What a blob holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// One directory.
    Tree,
    /// Part of a large file's chunk list.
    List,
}

impl BlobKind {
    /// The byte stored for this kind.
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::List => 2,
        }
    }
    /// Decodes a stored kind byte.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::List),
            _ => None,
        }
    }
    /// Whether blobs of this kind go to metadata packs.
    pub fn is_metadata(self) -> bool {
        !matches!(self, BlobKind::Data)
    }
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
            BlobKind::List => "list",
        })
    }
}
