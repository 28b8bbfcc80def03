//! The CRD's `spec` schema accepts what the policy parser accepts: every example policy, every
//! selector form, and it rejects unknown fields and mistyped values as the parser does. The
//! validator below implements the structural-schema subset the CRD uses, with the API server's
//! strict field validation (unknown fields are errors).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::policy::{parse_str, spec_schema};

fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            Value::String(_) => Ok(()),
            _ => Err(format!("{at}: not an integer or string")),
        };
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    match (schema.get("type").and_then(Value::as_str), value) {
        (Some("object"), Value::Object(map)) => {
            let required = schema.get("required").and_then(Value::as_array);
            for key in required.into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    return Err(format!("{at}: missing `{key}`"));
                }
            }
            for (key, v) in map {
                let sub = schema
                    .get("properties")
                    .and_then(|p| p.get(key))
                    .or_else(|| schema.get("additionalProperties"))
                    .ok_or_else(|| format!("{at}: unknown field `{key}`"))?;
                validate(sub, v, &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Some("array"), Value::Array(items)) => {
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            if (items.len() as u64) < min {
                return Err(format!("{at}: fewer than {min} items"));
            }
            let item = schema
                .get("items")
                .ok_or_else(|| format!("{at}: no items"))?;
            for (i, v) in items.iter().enumerate() {
                validate(item, v, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Some("string"), Value::String(_)) => Ok(()),
        (Some("integer"), Value::Number(n)) => {
            let n = n.as_i64().ok_or_else(|| format!("{at}: not an integer"))?;
            let min = schema.get("minimum").and_then(Value::as_i64);
            let max = schema.get("maximum").and_then(Value::as_i64);
            if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                return Err(format!("{at}: {n} out of range"));
            }
            Ok(())
        }
        (ty, _) => Err(format!("{at}: {value} is not of type {ty:?}")),
    }
}

const HEAD: &str = "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\n";

/// Both judges on one document: (schema accepts, parser accepts).
fn judge(document: &str) -> (Result<(), String>, bool) {
    let doc: Value = serde_yaml::from_str(document).expect("test input is YAML");
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    let schema = validate(&spec_schema(), &spec, "spec");
    let parser = parse_str(Path::new("t.yaml"), document).is_ok();
    (schema, parser)
}

#[test]
fn every_example_policy_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut seen = 0;
    for file in crate::policy::source_files(&[dir]).expect("policies/") {
        let text = std::fs::read_to_string(&file).expect("readable");
        for document in text.split("\n---").filter(|d| d.contains("kind:")) {
            let (schema, parser) = judge(document);
            assert!(parser, "{}: parser rejects", file.display());
            schema.unwrap_or_else(|e| panic!("{}: schema rejects: {e}", file.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "found {seen} example policies");
}

#[test]
fn schema_and_parser_agree() {
    let accept = [
        "spec: {}\n",
        "spec:\n  selector: {cgroups: [/a], units: [a.service], uids: [0, 4294967294]}\n",
        "spec:\n  selector:\n    pods:\n      namespaces: [ml]\n      matchLabels: {app: x, example.com/tier: ''}\n      matchExpressions: [{key: env, operator: In, values: [prod]}, {key: c, operator: Exists}]\n",
        "spec:\n  mode: audit\n  defaultAction: deny\n  log: deny\n  egress:\n    - {name: a, action: allow, to: [{entity: any}], protocol: udp, ports: [53, \"8000-8100\"]}\n    - {name: b, action: deny, to: [{cidr: 203.0.113.0/24, except: [203.0.113.0/25]}, {host: x.example.com}]}\n",
    ];
    for spec in accept {
        let (schema, parser) = judge(&format!("{HEAD}{spec}"));
        assert!(parser, "parser rejects {spec}");
        schema.unwrap_or_else(|e| panic!("schema rejects {spec}: {e}"));
    }
    let reject = [
        "spec: {bogus: 1}\n",
        "spec: {selector: {bogus: 1}}\n",
        "spec: {selector: {pods: {bogus: 1}}}\n",
        "spec: {selector: {pods: {matchExpressions: [{key: a, operator: Exists, bogus: 1}]}}}\n",
        "spec: {selector: {pods: {matchExpressions: [{key: a, operator: Like}]}}}\n",
        "spec: {selector: {pods: {namespaces: []}}}\n",
        "spec: {selector: {uids: [-1]}}\n",
        "spec: {selector: {uids: [4294967295]}}\n",
        "spec: {selector: {cgroups: []}}\n",
        "spec: {mode: enforcing}\n",
        "spec: {egress: [{name: a, action: allow, to: []}]}\n",
        "spec: {egress: [{name: a, action: allow, to: [{entity: any, bogus: 1}]}]}\n",
        "spec: {egress: [{name: a, action: allow, to: [{entity: moon}]}]}\n",
        "spec: {egress: [{name: a, action: allow}]}\n",
        "spec: {egress: [{name: a, action: allow, to: [{entity: any}], ports: [true]}]}\n",
    ];
    for spec in reject {
        let (schema, parser) = judge(&format!("{HEAD}{spec}"));
        assert!(!parser, "parser accepts {spec}");
        assert!(schema.is_err(), "schema accepts {spec}");
    }
}
