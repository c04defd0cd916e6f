//! Kubernetes label selectors: `matchLabels` and `matchExpressions`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("matchExpressions key {key:?}: operator {operator:?} needs at least one value")]
    MissingValues { key: String, operator: Operator },
    #[error("matchExpressions key {key:?}: operator {operator:?} takes no values")]
    UnexpectedValues { key: String, operator: Operator },
    #[error("label key {0:?} is not a valid label key")]
    BadKey(String),
}

impl LabelSelector {
    /// The empty selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn validate(&self) -> Result<(), SelectorError> {
        for key in self.match_labels.keys() {
            valid_key(key)?;
        }
        for r in &self.match_expressions {
            valid_key(&r.key)?;
            match r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err(SelectorError::MissingValues {
                        key: r.key.clone(),
                        operator: r.operator,
                    });
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        key: r.key.clone(),
                        operator: r.operator,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// `[prefix/]name`: name up to 63 characters of alphanumerics, `-`, `_`,
/// `.`, starting and ending alphanumeric; prefix a DNS subdomain.
fn valid_key(key: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && alnum_ends(part)
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(SelectorError::BadKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(yaml: &str) -> LabelSelector {
        crate::model::yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn empty_selects_all_and_match_labels_all_must_hold() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        let s = sel("matchLabels: {pod: a, ns: x}");
        assert!(s.matches(&labels(&[("pod", "a"), ("ns", "x"), ("extra", "1")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        assert!(sel("matchExpressions: [{key: pod, operator: In, values: [a, b]}]").matches(&l));
        assert!(!sel("matchExpressions: [{key: pod, operator: In, values: [b]}]").matches(&l));
        assert!(sel("matchExpressions: [{key: pod, operator: NotIn, values: [b]}]").matches(&l));
        // NotIn matches objects without the key at all.
        assert!(sel("matchExpressions: [{key: gone, operator: NotIn, values: [b]}]").matches(&l));
        assert!(sel("matchExpressions: [{key: tier, operator: Exists}]").matches(&l));
        assert!(!sel("matchExpressions: [{key: tier, operator: DoesNotExist}]").matches(&l));
        let both = sel(
            "{matchLabels: {pod: a}, matchExpressions: [{key: tier, operator: In, values: [db]}]}",
        );
        assert!(
            !both.matches(&l),
            "matchLabels and matchExpressions are ANDed"
        );
    }

    #[test]
    fn malformed_selectors_are_refused() {
        let missing = sel("matchExpressions: [{key: pod, operator: In}]");
        assert!(matches!(
            missing.validate(),
            Err(SelectorError::MissingValues { .. })
        ));
        let extra = sel("matchExpressions: [{key: pod, operator: Exists, values: [a]}]");
        assert!(matches!(
            extra.validate(),
            Err(SelectorError::UnexpectedValues { .. })
        ));
        assert!(sel("matchLabels: {\"bad key!\": x}").validate().is_err());
        assert!(
            sel("matchLabels: {kubernetes.io/metadata.name: x}")
                .validate()
                .is_ok()
        );
        assert!(crate::model::yaml::from_str::<LabelSelector>("matchLabel: {a: b}").is_err());
        assert!(
            crate::model::yaml::from_str::<LabelSelector>(
                "matchExpressions: [{key: a, operator: Maybe}]"
            )
            .is_err()
        );
    }
}
