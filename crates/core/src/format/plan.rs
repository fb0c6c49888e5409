//! `gc/<id>` plans: the packs a garbage-collection mark found unused, and
//! when it found them (docs/FORMAT.md `gc/`, docs/MAINTENANCE.md).

use super::codec::{DecodeError, Reader, Writer};
use super::PackId;

/// Associated data of a sealed plan.
pub const PLAN_AAD: &[u8] = b"cairn.gc-plan";
/// Plan body version.
pub const PLAN_VERSION: u32 = 1;

/// A `gc/<id>` object: packs a mark found unused (or emptied by a repack,
/// or not indexed at all), and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPlan {
    /// When the mark wrote it, seconds since the epoch.
    pub created: i64,
    /// Packs to delete once the plan is a safety window old, sorted.
    pub packs: Vec<PackId>,
}

impl GcPlan {
    /// Encodes the plan body (see docs/FORMAT.md `gc/`).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + 32 * self.packs.len());
        w.u32(PLAN_VERSION);
        w.i64(self.created);
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.id(&p.0);
        }
        w.finish()
    }

    /// Decodes a plan body.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "gc plan");
        let version = r.u32()?;
        if version != PLAN_VERSION {
            return Err(DecodeError::new(
                "gc plan",
                format!("unsupported version {version}"),
            ));
        }
        let created = r.i64()?;
        let n = r.count(32)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            packs.push(PackId(r.id()?));
        }
        r.finish()?;
        Ok(Self { created, packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plan_round_trip(created in any::<i64>(), packs in proptest::collection::vec(any::<[u8; 32]>(), 0..20)) {
            let plan = GcPlan { created, packs: packs.into_iter().map(|p| PackId(Id(p))).collect() };
            prop_assert_eq!(GcPlan::decode(&plan.encode()).unwrap(), plan);
        }

        #[test]
        fn plan_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = GcPlan::decode(&data);
        }
    }
}
