//! `networking.k8s.io/v1 NetworkPolicy`, as the API server stores it.
//!
//! Unknown fields are errors (serde `deny_unknown_fields`), except in the
//! server-managed parts of `metadata` and in `status`, which are accepted
//! and ignored.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{palisade::Action, selector::LabelSelector};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: NetworkPolicySpec,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // Server-managed fields: accepted, not used.
    #[serde(default)]
    pub generate_name: Option<serde_json::Value>,
    #[serde(default)]
    pub self_link: Option<serde_json::Value>,
    #[serde(default)]
    pub uid: Option<serde_json::Value>,
    #[serde(default)]
    pub resource_version: Option<serde_json::Value>,
    #[serde(default)]
    pub generation: Option<serde_json::Value>,
    #[serde(default)]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(default)]
    pub deletion_timestamp: Option<serde_json::Value>,
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<serde_json::Value>,
    #[serde(default)]
    pub owner_references: Option<serde_json::Value>,
    #[serde(default)]
    pub finalizers: Option<serde_json::Value>,
    #[serde(default)]
    pub managed_fields: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Option<Vec<PolicyType>>,
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PolicyType {
    Ingress,
    Egress,
}

// The rules of every kind: NetworkPolicy's, and Palisade's, which add an
// action (a NetworkPolicy that names one is refused by validation). Not a
// doc comment: it would become the CRD's description of a Palisade rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Allow (the default in a PalisadeNetworkPolicy) or Deny; a cluster
    /// policy's rules must name one, and may also Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A rule of either direction, read the same way whatever its peers field
/// is called.
#[derive(Clone, Copy, Debug)]
pub struct RuleRef<'a> {
    pub action: Option<Action>,
    pub peers: &'a [Peer],
    pub ports: &'a [PolicyPort],
}

/// Both directions' rules with their field paths and peers field names
/// (`spec.ingress[0]`, `from`), ingress first.
pub fn rules<'a>(
    ingress: &'a [IngressRule],
    egress: &'a [EgressRule],
) -> impl Iterator<Item = (String, &'static str, RuleRef<'a>)> {
    let ingress = ingress.iter().enumerate().map(|(i, r)| {
        let rule = RuleRef {
            action: r.action,
            peers: &r.from,
            ports: &r.ports,
        };
        (format!("spec.ingress[{i}]"), "from", rule)
    });
    let egress = egress.iter().enumerate().map(|(i, r)| {
        let rule = RuleRef {
            action: r.action,
            peers: &r.to,
            ports: &r.ports,
        };
        (format!("spec.egress[{i}]"), "to", rule)
    });
    ingress.chain(egress)
}

/// `policyTypes` as the API server defaults it: as listed, else Ingress,
/// plus Egress when the policy has egress rules.
pub fn directions(types: Option<&[PolicyType]>, has_egress: bool) -> (bool, bool) {
    match types {
        Some(t) => (
            t.contains(&PolicyType::Ingress),
            t.contains(&PolicyType::Egress),
        ),
        None => (true, has_egress),
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<PortRef>,
    #[serde(default)]
    pub end_port: Option<i64>,
}

#[derive(
    Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// A port number or the name of a container port (IANA service name).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

impl NetworkPolicy {
    /// `policyTypes` as the API server defaults it (see [`directions`]).
    pub fn policy_types(&self) -> (bool, bool) {
        directions(self.listed_types(), !self.spec.egress.is_empty())
    }

    /// `policyTypes` as listed, where it lists any: the API server defaults
    /// an empty list as an absent one. (Palisade's own kinds keep `[]`: a
    /// policy of process and file rules alone.)
    pub fn listed_types(&self) -> Option<&[PolicyType]> {
        self.spec.policy_types.as_deref().filter(|t| !t.is_empty())
    }
}

/// Kubernetes' own schema for a port number or name: structural schemas
/// allow no `anyOf` of types, only this marker.
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

/// An IANA service name: 1-15 lowercase alphanumerics or `-`, at least one
/// letter, no leading, trailing or doubled `-`.
pub fn valid_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
