//! The garbage collector (ownerReferences: background, foreground and orphan deletion)
//! and the namespace controller (a deleted namespace's contents go first).

use super::{name, namespace, owned_by, terminating, uid};
use crate::store::{remove_finalizer, DeleteOptions, Propagation, State, WriteOptions};
use crate::Shared;
use serde_json::{json, Value};
use std::collections::HashSet;

/// One pass over every object.
pub fn tick(shared: &Shared) {
    shared.with_state(pass);
}

fn delete(s: &mut State, o: &Value, propagation: Propagation) {
    let Some(t) = s.type_of(o) else {
        return;
    };
    let opts = DeleteOptions {
        propagation: Some(propagation),
        ..DeleteOptions::default()
    };
    let _ = s.delete(&t, namespace(o).as_deref(), &name(o), &opts);
}

fn update(s: &mut State, key: &crate::store::Key, new: Value) {
    let Some(t) = s.registry.by_id(&key.0).cloned() else {
        return;
    };
    let mut new = new;
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let ns = (!key.1.is_empty()).then_some(key.1.as_str());
    let _ = s.update(&t, ns, &key.2, None, new, &WriteOptions::default());
}

fn pass(s: &mut State) {
    let uids: HashSet<String> = s.objects.values().map(uid).collect();
    let keys: Vec<crate::store::Key> = s.objects.keys().cloned().collect();
    for key in keys {
        let Some(mut o) = s.objects.get(&key).cloned() else {
            continue;
        };
        if let Some(t) = s.registry.by_id(&key.0) {
            o["apiVersion"] = json!(t.api_version());
            o["kind"] = json!(t.kind);
        }
        let refs = o["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !refs.is_empty() && !terminating(&o) {
            let alive: Vec<Value> = refs
                .iter()
                .filter(|r| r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                .cloned()
                .collect();
            if alive.is_empty() {
                delete(s, &o, Propagation::Background);
                continue;
            }
            if alive.len() < refs.len() {
                let mut new = o.clone();
                new["metadata"]["ownerReferences"] = json!(alive);
                update(s, &key, new);
                continue;
            }
        }
        if !terminating(&o) {
            continue;
        }
        let finalizers: Vec<String> = o["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let me = uid(&o);
        if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let dependents: Vec<Value> = s
                .objects
                .values()
                .filter(|d| owned_by(d, &me))
                .cloned()
                .collect();
            if dependents.is_empty() {
                let mut new = o.clone();
                remove_finalizer(&mut new, "foregroundDeletion");
                update(s, &key, new);
            } else {
                for d in dependents.iter().filter(|d| !terminating(d)) {
                    delete(s, d, Propagation::Foreground);
                }
            }
        } else if finalizers.iter().any(|f| f == "orphan") {
            let dependents: Vec<crate::store::Key> = s
                .objects
                .iter()
                .filter(|(_, d)| owned_by(d, &me))
                .map(|(k, _)| k.clone())
                .collect();
            for dk in dependents {
                let Some(mut d) = s.objects.get(&dk).cloned() else {
                    continue;
                };
                if let Some(refs) = d["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != me.as_str());
                }
                update(s, &dk, d);
            }
            let mut new = o.clone();
            remove_finalizer(&mut new, "orphan");
            update(s, &key, new);
        } else if key.0 == "core/namespaces" {
            let ns = key.2.clone();
            let contents: Vec<(crate::store::Key, Value)> = s
                .objects
                .iter()
                .filter(|(k, _)| k.1 == ns)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if contents.is_empty() {
                s.remove(key.clone(), o.clone());
                continue;
            }
            for (k, mut v) in contents {
                if terminating(&v) {
                    continue;
                }
                if let Some(t) = s.registry.by_id(&k.0) {
                    v["apiVersion"] = json!(t.api_version());
                    v["kind"] = json!(t.kind);
                }
                delete(s, &v, Propagation::Background);
            }
        }
    }
}
