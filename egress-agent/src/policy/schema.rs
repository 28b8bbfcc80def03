//! The JSON schema of a policy's `spec`, derived from the very types that parse it, in the
//! structural form a Kubernetes CustomResourceDefinition requires.

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

use super::raw::RawSpec;

/// The `spec` schema as an OpenAPI v3 structural schema: every subschema inlined, no `$ref`,
/// no `null` types (absent keys are simply not required), no `additionalProperties: false`
/// (Kubernetes forbids it; the API server prunes or, under strict field validation, rejects
/// unknown fields instead, and the agent's parser rejects them again).
pub fn spec_schema() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<RawSpec>();
    let mut value = schema.to_value();
    structural(&mut value);
    value
}

/// Rewrites schemars' JSON Schema into what the apiextensions v1 validator accepts.
fn structural(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in ["$schema", "title", "format", "default"] {
                map.remove(key);
            }
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            drop_null_type(map);
            map.values_mut().for_each(structural);
        }
        Value::Array(items) => items.iter_mut().for_each(structural),
        _ => {}
    }
}

/// `"type": ["string", "null"]` (an `Option`) becomes `"type": "string"`, and an optional
/// enum's `null` member goes.
fn drop_null_type(map: &mut Map<String, Value>) {
    if let Some(Value::Array(members)) = map.get_mut("enum") {
        members.retain(|m| !m.is_null());
    }
    let Some(Value::Array(types)) = map.get_mut("type") else {
        return;
    };
    types.retain(|t| t != "null");
    if let [only] = types.as_slice() {
        let only = only.clone();
        map.insert("type".into(), only);
    }
}
