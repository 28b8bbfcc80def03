//! The YAML shape of `selector.pods`, checked while deserializing like the rest of `raw`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::pods::{LabelOperator, LabelRequirement, PodSelector};
use super::raw::{Checked, NonEmpty, Valid};
use super::scalar::{LabelKey, LabelValue, NamespaceName};

/// A label selector as Kubernetes writes it, plus the namespaces the pods must be in.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPods {
    namespaces: Option<NonEmpty<NamespaceName>>,
    match_labels: Option<BTreeMap<LabelKey, LabelValue>>,
    match_expressions: Option<NonEmpty<Valid<RawRequirement>>>,
}

impl Checked for RawPods {
    type Out = PodSelector;

    fn check(self) -> Result<PodSelector, String> {
        let mut namespaces: Vec<String> = self
            .namespaces
            .map_or_else(Vec::new, |n| n.0.into_iter().map(|n| n.0).collect());
        // Sorted so that equal selectors compare (and resolve) equal.
        namespaces.sort();
        namespaces.dedup();
        Ok(PodSelector {
            namespaces,
            match_labels: self
                .match_labels
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.0, v.0))
                .collect(),
            match_expressions: self
                .match_expressions
                .map_or_else(Vec::new, |e| e.0.into_iter().map(|e| e.0).collect()),
        })
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: LabelKey,
    operator: LabelOperator,
    values: Option<Vec<LabelValue>>,
}

impl Checked for RawRequirement {
    type Out = LabelRequirement;

    fn check(self) -> Result<LabelRequirement, String> {
        let mut values: Vec<String> = self
            .values
            .map_or_else(Vec::new, |v| v.into_iter().map(|v| v.0).collect());
        values.sort();
        values.dedup();
        match (self.operator, values.is_empty()) {
            (LabelOperator::In | LabelOperator::NotIn, true) => Err(format!(
                "matchExpressions `{}`: {:?} needs at least one value",
                self.key.0, self.operator
            )),
            (LabelOperator::Exists | LabelOperator::DoesNotExist, false) => Err(format!(
                "matchExpressions `{}`: {:?} takes no values",
                self.key.0, self.operator
            )),
            _ => Ok(LabelRequirement {
                key: self.key.0,
                operator: self.operator,
                values,
            }),
        }
    }
}
