//! Palisade's own policy kinds, `palisade.dev/v1alpha1`: NetworkPolicy-shaped,
//! adding explicit deny, a priority, an audit mode, and the process and file
//! sections. These types are the single definition: the parser reads files
//! into them and `manifests/crds/` is generated from them (`palisade crds`).
//!
//! Precedence between the kinds (README, "Policy precedence"):
//! 1. `PalisadeClusterNetworkPolicy` with `tier: Admin`, by priority;
//! 2. `NetworkPolicy` (priority 1000) and `PalisadeNetworkPolicy`, by priority;
//!    a pod selected by any of them for a direction and matched by no rule is
//!    denied;
//! 3. `PalisadeClusterNetworkPolicy` with `tier: Baseline`, for pods step 2
//!    left unisolated; 4. nothing matched: allowed.
//!
//! Within a tier, lower priority numbers come first, and at equal priority
//! Deny beats Pass, which beats Allow.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::networkpolicy::{EgressRule, IngressRule};
use super::{
    networkpolicy::PolicyType,
    process_file::{FileSection, ProcessSection},
    selector::LabelSelector,
};

pub const GROUP: &str = "palisade.dev";
pub const API_VERSION: &str = "palisade.dev/v1alpha1";
/// Where `NetworkPolicy` sits among priorities, and the default.
pub const DEFAULT_PRIORITY: u32 = 1000;
pub const MAX_PRIORITY: u32 = 10_000;

/// `Audit` evaluates the policy as if enforced and counts and reports what
/// it would drop, but drops nothing.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// A rule's verdict. `Pass` (cluster admin tier only) hands the decision
/// down to the namespace tier, as AdminNetworkPolicy's Pass does.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Pass,
}

impl Action {
    /// Order among rules of equal tier and priority: Deny, then Pass, then
    /// Allow (so that NetworkPolicy's allows stay a union under any deny).
    pub const fn rank(self) -> u8 {
        match self {
            Self::Deny => 0,
            Self::Pass => 1,
            Self::Allow => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ClusterTier {
    /// Above NetworkPolicy: evaluated before it.
    #[default]
    Admin,
    /// Below NetworkPolicy: applies to pods no namespace policy isolates.
    Baseline,
}

/// A namespaced policy: a NetworkPolicy with rule actions, a priority among
/// the namespace's policies and a mode.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PalisadeNetworkPolicy",
    plural = "palisadenetworkpolicies",
    shortname = "pnp",
    namespaced,
    doc = "Palisade's namespaced network policy: NetworkPolicy plus Deny, priority and Audit"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PalisadeNetworkPolicySpec {
    /// The pods of this namespace the policy applies to.
    pub pod_selector: LabelSelector,
    /// Lower first; NetworkPolicy sits at 1000, the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Defaulted as NetworkPolicy's: Ingress, plus Egress when egress rules exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSection>,
}

/// A cluster-wide policy in the admin tier (above NetworkPolicy) or the
/// baseline tier (below it). It never isolates a pod by itself: only its
/// rules decide, and traffic none of them matches goes on to the next tier.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "PalisadeClusterNetworkPolicy",
    plural = "palisadeclusternetworkpolicies",
    shortname = "pcnp",
    doc = "Palisade's cluster network policy, in the admin tier (above NetworkPolicy) or the baseline tier (below it)"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PalisadeClusterNetworkPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<ClusterTier>,
    /// Lower first within the tier; default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The pods the policy applies to: every pod when empty.
    #[serde(default)]
    pub subject: Subject,
    /// Rules need an explicit action. A peer's podSelector without a
    /// namespaceSelector means pods of every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSection>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Namespaces whose pods are subjects; all namespaces when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods (in those namespaces) that are subjects; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}
