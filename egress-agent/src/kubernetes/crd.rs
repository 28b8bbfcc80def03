//! The EgressPolicy CustomResourceDefinition. Its `spec` schema is
//! [`crate::policy::spec_schema`], generated from the types that parse policy files, so the
//! CRD and the file format cannot drift; a test compares it with the committed
//! `deploy/kubernetes/crd.yaml`.

use serde_json::{Value, json};

use super::KubernetesError;
use crate::policy::spec_schema;

pub const GROUP: &str = "egress.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "EgressPolicy";
pub const PLURAL: &str = "egresspolicies";

/// The CRD object.
pub fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{PLURAL}.{GROUP}"),
            "labels": {"app.kubernetes.io/name": "egress"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": KIND,
                "listKind": format!("{KIND}List"),
                "plural": PLURAL,
                "singular": "egresspolicy",
                "shortNames": ["egp"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                    {"name": "Default", "type": "string", "jsonPath": ".spec.defaultAction"},
                    {"name": "Applied", "type": "integer", "jsonPath": ".status.appliedNodes"},
                    {"name": "Errors", "type": "integer", "jsonPath": ".status.errorNodes"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Egress policy for workloads; see docs/policy.md.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    })
}

/// What agents write back: counts, the names of the applied nodes (which keep the count exact
/// across agent restarts) and one error entry per rejecting node.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "observedGeneration": {"type": "integer"},
            "appliedNodes": {"type": "integer", "description": "nodes enforcing observedGeneration"},
            "errorNodes": {"type": "integer", "description": "nodes that rejected it"},
            "applied": {
                "type": "array",
                "description": "names of the nodes enforcing observedGeneration",
                "items": {"type": "string"},
            },
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["node", "message"],
                    "properties": {
                        "node": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    })
}

/// [`crd`] as the YAML committed under `deploy/kubernetes/crd.yaml`.
pub fn crd_yaml() -> Result<String, KubernetesError> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated from the policy parser's types by `egress_agent::kubernetes::crd`; do not edit.\n# Regenerate: EGRESS_BLESS=1 cargo test -p egress-agent --lib kubernetes::crd\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn committed_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/crd.yaml")
    }

    #[test]
    fn committed_crd_equals_the_generated_one() {
        let generated = crd_yaml().expect("renders");
        let path = committed_path();
        if std::env::var_os("EGRESS_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("write crd.yaml");
        }
        let committed = std::fs::read_to_string(&path).expect("deploy/kubernetes/crd.yaml");
        assert!(
            committed == generated,
            "deploy/kubernetes/crd.yaml is stale; regenerate with EGRESS_BLESS=1 cargo test -p egress-agent --lib kubernetes::crd"
        );
    }

    #[test]
    fn spec_schema_is_structural() {
        fn walk(v: &Value, at: &str) {
            let Value::Object(map) = v else { return };
            assert!(!map.contains_key("$ref"), "{at}: $ref");
            assert!(
                map.get("additionalProperties") != Some(&Value::Bool(false)),
                "{at}: additionalProperties: false"
            );
            let typed = map.contains_key("type") || map.contains_key("x-kubernetes-int-or-string");
            assert!(typed, "{at}: no type");
            if let Some(Value::Object(props)) = map.get("properties") {
                for (k, v) in props {
                    walk(v, &format!("{at}.{k}"));
                }
            }
            if let Some(items) = map.get("items") {
                walk(items, &format!("{at}[]"));
            }
            if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
                walk(extra, &format!("{at}{{}}"));
            }
        }
        walk(&spec_schema(), "spec");
    }
}
