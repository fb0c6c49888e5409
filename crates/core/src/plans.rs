//! The set of `gc/` plans a handle knows: the packs writers must treat as
//! absent (see docs/MAINTENANCE.md).

use crate::error::Result;
use crate::format::kinds::GcPlans;
use crate::format::plan::GcPlan;
use crate::format::{Id, PackId};
use crate::objects::Objects;
use std::collections::{BTreeMap, HashSet};

/// The plans present in `gc/` and the union of their packs.
#[derive(Debug, Clone, Default)]
pub struct PlanSet {
    plans: BTreeMap<Id, GcPlan>,
    packs: HashSet<PackId>,
}

impl PlanSet {
    /// Whether no plan lists any pack.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }
    /// Whether some plan lists `pack`.
    pub fn contains(&self, pack: &PackId) -> bool {
        self.packs.contains(pack)
    }
    /// Ids of the plans.
    pub fn plan_ids(&self) -> Vec<Id> {
        self.plans.keys().copied().collect()
    }
    /// Every plan with its id.
    pub fn plans(&self) -> impl Iterator<Item = (&Id, &GcPlan)> {
        self.plans.iter()
    }
    /// Every planned pack.
    pub fn packs(&self) -> &HashSet<PackId> {
        &self.packs
    }
}

/// Lists `gc/` and returns its plans, reusing the already-decoded ones of
/// `known` (plans are immutable). A plan swept by a concurrent maintenance
/// run since the listing is skipped; a damaged plan fails: which packs it
/// protects from writers cannot be known.
pub fn load(objects: &Objects<'_>, known: &PlanSet) -> Result<PlanSet> {
    load_listed(objects, known, objects.list_ids::<GcPlans>()?)
}

/// [`load`] from a listing of `gc/` already made (`listed`).
pub fn load_listed(objects: &Objects<'_>, known: &PlanSet, listed: Vec<Id>) -> Result<PlanSet> {
    let mut plans = BTreeMap::new();
    let mut new = Vec::new();
    for id in listed {
        match known.plans.get(&id) {
            Some(p) => {
                plans.insert(id, p.clone());
            }
            None => new.push(id),
        }
    }
    let loaded = Objects::load_each::<GcPlans>(new, |id| objects.load::<GcPlans>(id))?;
    if let Some((_, e)) = loaded.damaged.into_iter().next() {
        return Err(e);
    }
    plans.extend(loaded.objects);
    let packs = plans
        .values()
        .flat_map(|p| p.packs.iter().copied())
        .collect();
    Ok(PlanSet { plans, packs })
}
