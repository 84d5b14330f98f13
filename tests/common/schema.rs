//! A small JSON Schema validator: the subset docs/stats-schema.json uses
//! (type, enum, required, properties, additionalProperties, items, oneOf,
//! local $ref).

use std::fs;
use std::path::Path;

use serde_json::Value;

pub fn load_schema() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stats-schema.json");
    serde_json::from_str(&fs::read_to_string(p).unwrap()).expect("schema parses")
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        _ => false,
    }
}

/// Supports type, enum, required, properties, additionalProperties,
/// items, oneOf and local $ref.
pub fn validate(root: &Value, s: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let mut target = root;
        for part in r.trim_start_matches("#/").split('/') {
            target = &target[part];
        }
        return validate(root, target, v, at);
    }
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
        let ok = alts
            .iter()
            .filter(|a| validate(root, a, v, at).is_empty())
            .count();
        if ok != 1 {
            errs.push(format!("{at}: matches {ok} of oneOf"));
        }
        return errs;
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| type_ok(t, v)) {
            errs.push(format!("{at}: {v} is not {types:?}"));
            return errs;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} not in {e:?}"));
        }
    }
    if let Some(o) = v.as_object() {
        for k in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let k = k.as_str().unwrap();
            if !o.contains_key(k) {
                errs.push(format!("{at}: missing required `{k}`"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            let sub = format!("{at}.{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(ps), _) => errs.extend(validate(root, ps, x, &sub)),
                (None, Some(ap)) if ap.is_object() => errs.extend(validate(root, ap, x, &sub)),
                _ => {}
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in a.iter().enumerate() {
            errs.extend(validate(root, items, x, &format!("{at}[{i}]")));
        }
    }
    errs
}

/// Validate a whole report; returns the violations.
pub fn check_report(report: &Value) -> Vec<String> {
    let schema = load_schema();
    validate(&schema, &schema, report, "$")
}
