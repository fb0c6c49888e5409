//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), an approximation of
//! strategic merge patch, and the merge step of server-side apply.
//!
//! Strategic merge patch is JSON merge patch plus: lists of objects with a known merge key
//! (containers, volumes, env, ... by `name`; volumeMounts by `mountPath`; conditions by
//! `type`; ownerReferences by `uid`) are merged element by element, `$patch: delete`
//! removes an element, `$patch: replace` replaces, `finalizers` merge as a set,
//! `$deleteFromPrimitiveList/<field>` removes values, and `$setElementOrder/...` and
//! `$retainKeys` are ignored. The merge keys come from this table, not from the Go
//! struct tags or OpenAPI extensions the real server uses.

use serde_json::{Map, Value};

/// The merge key of list field `field` whose items look like `sample`, if it is a keyed list.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "volumeClaimTemplates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Fields whose primitive lists merge as sets.
fn set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `target`.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = Value::Object(strip(patch_map));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().unwrap();
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) = (map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Array(items) => {
                let key_field = merge_key(key, items.first());
                match (map.get_mut(key), key_field) {
                    (Some(Value::Array(existing)), Some(k)) => merge_list(existing, items, k),
                    (Some(Value::Array(existing)), None) if set_list(key) => {
                        for v in items {
                            if !existing.contains(v) {
                                existing.push(v.clone());
                            }
                        }
                    }
                    _ => {
                        let items: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(|i| i.as_object().map_or(i.clone(), |m| Value::Object(strip(m))))
                            .collect();
                        map.insert(key.clone(), Value::Array(items));
                    }
                }
            }
            Value::Object(_) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                if value.get("$patch").and_then(Value::as_str) == Some("delete") {
                    map.remove(key);
                } else {
                    strategic(slot, value);
                }
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn strip(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge_list(existing: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let id = item.get(key).cloned();
        let pos = existing
            .iter()
            .position(|e| id.is_some() && e.get(key) == id.as_ref());
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic(&mut existing[i], item),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item);
                existing.push(fresh);
            }
        }
    }
}

/// Server-side apply's merge: `config` (a manager's applied configuration) onto `target`,
/// after removing the fields `previous` (the same manager's last configuration) set and
/// `config` no longer does. Keyed lists merge by key; other lists are atomic.
pub fn apply(target: &mut Value, previous: Option<&Value>, config: &Value) {
    if let Some(prev) = previous {
        remove_dropped(target, prev, config);
    }
    merge_apply(target, config, "");
}

fn remove_dropped(target: &mut Value, prev: &Value, config: &Value) {
    let (Some(t), Some(p)) = (target.as_object_mut(), prev.as_object()) else {
        return;
    };
    for (k, pv) in p {
        match config.get(k) {
            None => {
                if !matches!(k.as_str(), "apiVersion" | "kind" | "name" | "namespace") {
                    t.remove(k);
                }
            }
            Some(cv) if pv.is_object() && cv.is_object() => {
                if let Some(tv) = t.get_mut(k) {
                    remove_dropped(tv, pv, cv);
                }
            }
            Some(_) => {}
        }
    }
}

fn merge_apply(target: &mut Value, config: &Value, field: &str) {
    match config {
        Value::Object(cmap) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in cmap {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_apply(slot, v, k);
            }
        }
        Value::Array(items) => match (target.as_array_mut(), merge_key(field, items.first())) {
            (Some(existing), Some(key)) => {
                for item in items {
                    let id = item.get(key);
                    match existing
                        .iter_mut()
                        .find(|e| id.is_some() && e.get(key) == id)
                    {
                        Some(e) => merge_apply(e, item, ""),
                        None => existing.push(item.clone()),
                    }
                }
            }
            _ => *target = config.clone(),
        },
        other => *target = other.clone(),
    }
}

/// Leaf paths set in `config` (for apply conflict detection), with their values.
pub fn leaves(config: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match config.as_object() {
        Some(map) => {
            for (k, v) in map {
                if prefix.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if prefix == ".metadata" && matches!(k.as_str(), "name" | "namespace") {
                    continue;
                }
                leaves(v, &format!("{prefix}.{k}"), out);
            }
        }
        None => out.push((prefix.to_string(), config.clone())),
    }
}

/// The value at a leaf path from [`leaves`].
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        v = v.get(part)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_keyed_lists_and_honours_directives() {
        let mut pod = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [
            {"name": "app", "image": "x:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "y:1"}]}});
        strategic(
            &mut pod,
            &json!({
            "metadata": {"finalizers": ["b"]},
            "spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [
                {"name": "app", "image": "x:2", "env": [{"name": "B", "value": "2"}]},
                {"name": "side", "$patch": "delete"}]}}),
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        let c = &pod["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["image"], "x:2");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn apply_removes_what_the_manager_stopped_setting() {
        let mut o = json!({"spec": {"a": 1, "b": 2, "c": 3}});
        let prev = json!({"spec": {"a": 1, "b": 2}});
        apply(&mut o, Some(&prev), &json!({"spec": {"a": 5}}));
        assert_eq!(o, json!({"spec": {"a": 5, "c": 3}}));
    }
}
