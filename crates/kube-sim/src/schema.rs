//! Admission of custom resources against their structural OpenAPI v3 schema, the way the
//! API server does it: unknown fields pruned (with a warning) or, with
//! `fieldValidation=Strict`, rejected; nulls dropped where the schema is not `nullable`;
//! `default`s applied; then types, enums, `required`, bounds and lengths checked.
//! Not covered: `pattern`, `format`, CEL rules (`x-kubernetes-validations`).

use serde_json::{Map, Value};

/// How unknown fields are treated (`fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop silently.
    Ignore,
    /// Drop and warn (the server's default).
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    /// From the query parameter; the default is Warn.
    pub fn parse(text: Option<&str>) -> FieldValidation {
        match text {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

/// The outcome of admitting an object.
#[derive(Debug, Default)]
pub struct Admission {
    /// Unknown fields that were pruned (`.spec.foo`).
    pub pruned: Vec<String>,
    /// Schema violations (`spec.mode: Unsupported value: ...`).
    pub errors: Vec<String>,
}

/// Prunes, defaults and validates `object` (a whole custom resource) in place.
pub fn admit(schema: &Value, object: &mut Value) -> Admission {
    let mut a = Admission::default();
    // apiVersion, kind and metadata are the server's, not the schema's.
    if let Some(map) = object.as_object_mut() {
        let props = schema.get("properties").and_then(Value::as_object);
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&key)) {
                Some(s) => {
                    let path = key.clone();
                    let v = map.get_mut(&key).unwrap();
                    if v.is_null() && !nullable(s) {
                        map.remove(&key);
                        continue;
                    }
                    walk(s, v, &path, &mut a);
                }
                None if preserves(schema) => {}
                None => {
                    map.remove(&key);
                    a.pruned.push(format!(".{key}"));
                }
            }
        }
        defaults(schema, map);
        required(schema, map, "", &mut a);
    }
    a
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn defaults(schema: &Value, map: &mut Map<String, Value>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            if let (None, Some(d)) = (map.get(k), s.get("default")) {
                map.insert(k.clone(), d.clone());
            }
        }
    }
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, a: &mut Admission) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(r) {
            let p = if path.is_empty() {
                r.to_string()
            } else {
                format!("{path}.{r}")
            };
            a.errors.push(format!("{p}: Required value"));
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, value: &mut Value, path: &str, a: &mut Admission) {
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            a.errors.push(format!(
                "{path}: Invalid value: \"{}\": {path} in body must be of type int-or-string",
                type_name(value)
            ));
        }
        return;
    }
    let ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(_) => true,
    };
    if !ok {
        a.errors.push(format!(
            "{path}: Invalid value: \"{}\": {path} in body must be of type {}: \"{}\"",
            type_name(value),
            schema["type"].as_str().unwrap_or_default(),
            type_name(value)
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            a.errors.push(format!(
                "{path}: Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ));
        }
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let (Some(min), Some(v)) = (num("minimum"), value.as_f64()) {
        if v < min {
            a.errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body should be greater than or equal to {min}"
            ));
        }
    }
    if let (Some(max), Some(v)) = (num("maximum"), value.as_f64()) {
        if v > max {
            a.errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body should be less than or equal to {max}"
            ));
        }
    }
    if let (Some(max), Some(s)) = (num("maxLength"), value.as_str()) {
        if s.chars().count() as f64 > max {
            a.errors.push(format!(
                "{path}: Too long: may not be more than {max} bytes"
            ));
        }
    }
    if let (Some(min), Some(s)) = (num("minLength"), value.as_str()) {
        if (s.chars().count() as f64) < min {
            a.errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body should be at least {min} chars long"
            ));
        }
    }
    match value {
        Value::Array(items) => {
            if let (Some(min), true) = (num("minItems"), true) {
                if (items.len() as f64) < min {
                    a.errors.push(format!(
                        "{path}: Invalid value: {path} in body should have at least {min} items"
                    ));
                }
            }
            if let Some(s) = schema.get("items") {
                items.retain(|v| !v.is_null() || nullable(s));
                for (i, item) in items.iter_mut().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), a);
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = props.and_then(|p| p.get(&key)).or(additional);
                let p = format!("{path}.{key}");
                match child {
                    Some(s) => {
                        let v = map.get_mut(&key).unwrap();
                        if v.is_null() && !nullable(s) {
                            map.remove(&key);
                            continue;
                        }
                        walk(s, v, &p, a);
                    }
                    None if preserves(schema)
                        || (props.is_none()
                            && schema.get("additionalProperties") == Some(&Value::Bool(true))) =>
                    {
                        // Kept as sent.
                    }
                    None if props.is_none()
                        && additional.is_none()
                        && schema.get("type").is_none() => {}
                    None => {
                        map.remove(&key);
                        a.pruned.push(format!(".{p}"));
                    }
                }
            }
            defaults(schema, map);
            required(schema, map, path, a);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"},
                "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                "count": {"type": "integer", "minimum": 1.0, "nullable": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            }},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        }})
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"name": "n", "typo": 1, "free": {"any": {"thing": 1}}, "tags": {"a": "b"}},
            "extra": true});
        let a = admit(&schema(), &mut o);
        assert_eq!(a.pruned, vec![".extra", ".spec.typo"]);
        assert!(a.errors.is_empty(), "{:?}", a.errors);
        assert_eq!(o["spec"]["mode"], "A");
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
    }

    #[test]
    fn violations_are_reported_with_their_path() {
        let mut o = json!({"spec": {"mode": "C", "count": 0, "tags": {"a": 1}}});
        let a = admit(&schema(), &mut o);
        assert_eq!(a.errors.len(), 4, "{:?}", a.errors);
        assert!(a
            .errors
            .iter()
            .any(|e| e.starts_with("spec.mode: Unsupported value")));
        assert!(a.errors.iter().any(|e| e == "spec.name: Required value"));
    }
}
