//! Checks an object against the structural OpenAPI v3 schema of a CRD, the way the API
//! server would reject it: types, required fields, enums, and unknown fields.
//!
//! Stricter than the API server in one place on purpose: unknown fields are errors (the
//! server silently prunes them), because in a sample or a user's manifest they are typos.

use serde_json::Value;

/// Validates `value` against `schema` (a CRD version's `openAPIV3Schema`). Returns one
/// message per problem, each with the JSON path it is at; empty when valid.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(schema, value, "$", &mut problems);
    problems
}

fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && path != "$" {
            out.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{path}: expected an integer or a string"));
        }
        return;
    }
    if let Some(any_of) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        let matches = any_of
            .iter()
            .filter(|s| validate_at(s, value, path).is_empty())
            .count();
        if matches == 0 {
            out.push(format!("{path}: matches none of the allowed shapes"));
        }
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => {
            out.push(format!("{path}: schema has unknown type {other:?}"));
            return;
        }
    };
    if !type_ok {
        out.push(format!(
            "{path}: expected {}, found {value}",
            schema["type"]
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            out.push(format!(
                "{path}: {value} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if value.as_f64().is_some_and(|v| v < min) {
            out.push(format!("{path}: {value} is below the minimum {min}"));
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(items, item, &format!("{path}[{i}]"), out);
        }
    }
    let Some(object) = value.as_object() else {
        return;
    };
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = name.as_str() {
            if !object.contains_key(name) {
                out.push(format!("{path}: missing required field {name:?}"));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    for (key, field) in object {
        let child = format!("{path}.{key}");
        match (properties.and_then(|p| p.get(key)), additional) {
            (Some(sub), _) => check(sub, field, &child, out),
            (None, Some(sub)) if sub.is_object() => check(sub, field, &child, out),
            (None, Some(Value::Bool(true))) => {}
            // apiVersion, kind and metadata are checked by the API server, not by the CRD schema.
            (None, _)
                if preserve
                    || (path == "$"
                        && ["apiVersion", "kind", "metadata"].contains(&key.as_str())) => {}
            (None, _) if properties.is_none() && schema.get("type").is_none() => {}
            (None, _) => out.push(format!("{child}: unknown field")),
        }
    }
}

fn validate_at(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, value, path, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_each_problem_with_its_path() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer"}, "mode": {"type": "string", "enum": ["A", "B"]},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}}}}}});
        assert!(validate(
            &schema,
            &json!({"spec": {"size": 1, "mode": "A", "tags": {"x": "y"}}})
        )
        .is_empty());
        let problems = validate(
            &schema,
            &json!({"spec": {"mode": "C", "tpyo": 1, "tags": {"x": 1}}}),
        );
        assert_eq!(
            problems,
            [
                "$.spec: missing required field \"size\"",
                "$.spec.mode: \"C\" is not one of [\"A\",\"B\"]",
                "$.spec.tags.x: expected \"string\", found 1",
                "$.spec.tpyo: unknown field",
            ]
        );
    }
}
