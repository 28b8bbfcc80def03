//! `selector.pods`: Kubernetes pods by namespace and labels, with the API server's label
//! selector semantics (`matchLabels` and `matchExpressions` all hold).

use std::collections::BTreeMap;

/// A pod selector. It names pods, not cgroups: the agent resolves the pods it matches on its
/// node to their cgroup paths (see `crate::kubernetes`), and the policy applies to those paths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodSelector {
    /// Namespaces the pod must be in; empty means every namespace.
    pub namespaces: Vec<String>,
    /// Labels the pod must carry with exactly these values.
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    /// Non-empty for `In` and `NotIn`, empty for `Exists` and `DoesNotExist` (the loader checks).
    pub values: Vec<String>,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelRequirement {
    /// The Kubernetes semantics: `NotIn` and `DoesNotExist` hold for pods without the label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOperator::Exists => value.is_some(),
            LabelOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl PodSelector {
    /// Whether a pod in `namespace` with `labels` is selected.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let Self {
            namespaces,
            match_labels,
            match_expressions,
        } = self;
        (namespaces.is_empty() || namespaces.iter().any(|n| n == namespace))
            && match_labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            && match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters
/// of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub(crate) fn label_key(s: &str) -> Result<String, String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    if prefix_ok && !name.is_empty() && label_name_ok(name) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid label key `{s}`: expected `name` or `prefix/name`, e.g. `app` or `app.kubernetes.io/name`"
        ))
    }
}

/// A label value: empty, or a name as in [`label_key`].
pub(crate) fn label_value(s: &str) -> Result<String, String> {
    if s.is_empty() || label_name_ok(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid label value `{s}`: at most 63 of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit"
        ))
    }
}

fn label_name_ok(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: LabelOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_selects_every_pod() {
        let all = PodSelector::default();
        assert!(all.matches("default", &labels(&[])));
        assert!(all.matches("kube-system", &labels(&[("app", "x")])));
    }

    #[test]
    fn namespaces_restrict() {
        let s = PodSelector {
            namespaces: vec!["ml".into(), "batch".into()],
            ..PodSelector::default()
        };
        assert!(s.matches("batch", &labels(&[])));
        assert!(!s.matches("default", &labels(&[])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = PodSelector {
            match_labels: labels(&[("app", "trainer"), ("tier", "gpu")]),
            ..PodSelector::default()
        };
        assert!(s.matches(
            "x",
            &labels(&[("app", "trainer"), ("tier", "gpu"), ("z", "")])
        ));
        assert!(!s.matches("x", &labels(&[("app", "trainer")])));
        assert!(!s.matches("x", &labels(&[("app", "trainer"), ("tier", "cpu")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let with = labels(&[("env", "prod")]);
        let other = labels(&[("env", "dev")]);
        let without = labels(&[]);
        let cases = [
            (LabelOperator::In, [true, false, false]),
            (LabelOperator::NotIn, [false, true, true]),
            (LabelOperator::Exists, [true, true, false]),
            (LabelOperator::DoesNotExist, [false, false, true]),
        ];
        for (op, want) in cases {
            let values: &[&str] = match op {
                LabelOperator::In | LabelOperator::NotIn => &["prod", "staging"],
                LabelOperator::Exists | LabelOperator::DoesNotExist => &[],
            };
            let r = req("env", op, values);
            let got = [r.matches(&with), r.matches(&other), r.matches(&without)];
            assert_eq!(got, want, "{op:?}");
        }
    }

    #[test]
    fn labels_and_expressions_all_hold() {
        let s = PodSelector {
            namespaces: Vec::new(),
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![req("canary", LabelOperator::DoesNotExist, &[])],
        };
        assert!(s.matches("x", &labels(&[("app", "web")])));
        assert!(!s.matches("x", &labels(&[("app", "web"), ("canary", "1")])));
        assert!(!s.matches("x", &labels(&[("canary", "1")])));
    }

    #[test]
    fn label_syntax() {
        for ok in ["app", "app.kubernetes.io/name", "a_b-c.d", "x/y"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "-a", "a-", "Ex.com/x", "a/b/c", &"k".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("a b").is_err());
        assert!(label_value("-x").is_err());
    }
}
