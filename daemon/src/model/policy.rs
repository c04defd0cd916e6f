//! One shape for every policy kind, as the compiler and `explain` see it:
//! who it applies to, in which tier and order, and its rules per direction
//! with their actions. Each kind converts into it; nothing downstream looks
//! at the kinds themselves.

use super::{
    Labels, NetworkPolicy,
    kubearmor::KUBEARMOR_API_VERSION,
    networkpolicy::{
        EgressRule, IngressRule, Peer, PolicyPort, PolicyType, RuleRef, directions, rules,
    },
    palisade::API_VERSION,
    palisade::{
        Action, ClusterTier, DEFAULT_PRIORITY, Mode, PalisadeClusterNetworkPolicySpec,
        PalisadeNetworkPolicySpec,
    },
    process_file::{FileSection, ProcessSection},
    selector::LabelSelector,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    NetworkPolicy,
    PalisadeNetworkPolicy,
    PalisadeClusterNetworkPolicy,
    /// KubeArmor's `security.kubearmor.com/v1` kind, its process and file
    /// parts (`kubearmor.rs`).
    KubeArmorPolicy,
}

impl Kind {
    pub const ALL: [Self; 4] = [
        Self::NetworkPolicy,
        Self::PalisadeNetworkPolicy,
        Self::PalisadeClusterNetworkPolicy,
        Self::KubeArmorPolicy,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::PalisadeNetworkPolicy => "PalisadeNetworkPolicy",
            Self::PalisadeClusterNetworkPolicy => "PalisadeClusterNetworkPolicy",
            Self::KubeArmorPolicy => "KubeArmorPolicy",
        }
    }

    pub const fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "networking.k8s.io/v1",
            Self::PalisadeNetworkPolicy | Self::PalisadeClusterNetworkPolicy => API_VERSION,
            Self::KubeArmorPolicy => KUBEARMOR_API_VERSION,
        }
    }

    /// The kind a document's `apiVersion` and `kind` name, if Palisade
    /// knows it.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// An object's name in counters, metrics and `explain` (see
    /// [`Policy::key`]); `namespace` is ignored for cluster kinds.
    pub fn key(self, namespace: &str, name: &str) -> String {
        match self {
            Self::NetworkPolicy => format!("{namespace}/{name}"),
            Self::PalisadeNetworkPolicy => format!("palisade:{namespace}/{name}"),
            Self::PalisadeClusterNetworkPolicy => format!("cluster:{name}"),
            Self::KubeArmorPolicy => format!("kubearmor:{namespace}/{name}"),
        }
    }
}

/// Evaluation order of the tiers (see `palisade.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Namespace,
    Baseline,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub action: Action,
    /// Empty: any peer.
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol.
    pub ports: Vec<PolicyPort>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub kind: Kind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    pub tier: Tier,
    pub priority: u32,
    pub audit: bool,
    /// Cluster kinds: the namespaces of the subjects (`None`: all).
    pub namespace_selector: Option<LabelSelector>,
    pub pod_selector: LabelSelector,
    /// `None`: the policy does not apply to that direction. In the
    /// namespace tier, `Some` isolates the selected pods for it.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    pub process: Option<ProcessSection>,
    pub file: Option<FileSection>,
    /// What events of the process and file rules carry.
    pub lsm_meta: LsmMeta,
}

/// KubeArmor's `severity`, `message` and `tags`, for the events of a
/// policy's process and file rules; empty for Palisade's kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LsmMeta {
    /// 1 to 10.
    pub severity: Option<u8>,
    pub message: Option<String>,
    pub tags: Vec<String>,
}

impl Policy {
    /// The policy's name in counters, metrics and `explain`: `ns/name` for
    /// NetworkPolicy, with a kind prefix for the other kinds so that
    /// objects of different kinds never share a name.
    pub fn key(&self) -> String {
        self.kind
            .key(self.namespace.as_deref().unwrap_or(""), &self.name)
    }

    /// What [`Self::key`] is made of, borrowed: equal parts make equal
    /// keys (and, for names without `/`, as the API's are, the other way
    /// round), and comparing them allocates nothing, where a change
    /// compares a cluster's worth.
    pub fn key_parts(&self) -> (Kind, &str, &str) {
        let namespace = match self.kind {
            Kind::PalisadeClusterNetworkPolicy => "",
            _ => self.namespace.as_deref().unwrap_or(""),
        };
        (self.kind, namespace, &self.name)
    }

    pub fn rules(&self, egress: bool) -> Option<&[Rule]> {
        if egress {
            self.egress.as_deref()
        } else {
            self.ingress.as_deref()
        }
    }

    /// Whether the policy applies to a pod with these labels in a namespace
    /// with these (effective) labels.
    pub fn selects(&self, namespace: &str, ns_labels: &Labels, pod_labels: &Labels) -> bool {
        let ns_ok = match (&self.namespace, &self.namespace_selector) {
            (Some(own), _) => own == namespace,
            (None, Some(sel)) => sel.matches(ns_labels),
            (None, None) => true,
        };
        ns_ok && self.pod_selector.matches(pod_labels)
    }

    /// Whether the policy isolates the pods it selects for a direction.
    pub fn isolates(&self, egress: bool) -> bool {
        self.tier == Tier::Namespace && self.rules(egress).is_some()
    }
}

/// The rules of one direction, with `Allow` where a rule names no action.
fn owned<'a>(rules: impl Iterator<Item = (String, &'static str, RuleRef<'a>)>) -> Vec<Rule> {
    rules
        .map(|(_, _, r)| Rule {
            action: r.action.unwrap_or_default(),
            peers: r.peers.to_vec(),
            ports: r.ports.to_vec(),
        })
        .collect()
}

/// What a namespaced policy of either kind says about its two directions.
fn namespaced_rules(
    types: Option<&[PolicyType]>,
    ingress: &[IngressRule],
    egress: &[EgressRule],
) -> (Option<Vec<Rule>>, Option<Vec<Rule>>) {
    let (has_ingress, has_egress) = directions(types, !egress.is_empty());
    (
        has_ingress.then(|| owned(rules(ingress, &[]))),
        has_egress.then(|| owned(rules(&[], egress))),
    )
}

impl From<&NetworkPolicy> for Policy {
    fn from(p: &NetworkPolicy) -> Self {
        let (ingress, egress) = namespaced_rules(p.listed_types(), &p.spec.ingress, &p.spec.egress);
        Self {
            kind: Kind::NetworkPolicy,
            namespace: p.metadata.namespace.clone(),
            name: p.metadata.name.clone(),
            tier: Tier::Namespace,
            priority: DEFAULT_PRIORITY,
            audit: false,
            namespace_selector: None,
            pod_selector: p.spec.pod_selector.clone(),
            ingress,
            egress,
            process: None,
            file: None,
            lsm_meta: LsmMeta::default(),
        }
    }
}

impl Policy {
    pub fn from_namespaced(namespace: &str, name: &str, spec: &PalisadeNetworkPolicySpec) -> Self {
        let (ingress, egress) =
            namespaced_rules(spec.policy_types.as_deref(), &spec.ingress, &spec.egress);
        Self {
            kind: Kind::PalisadeNetworkPolicy,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
            tier: Tier::Namespace,
            priority: spec.priority.unwrap_or(DEFAULT_PRIORITY),
            audit: spec.mode == Some(Mode::Audit),
            namespace_selector: None,
            pod_selector: spec.pod_selector.clone(),
            ingress,
            egress,
            process: spec.process.clone(),
            file: spec.file.clone(),
            lsm_meta: LsmMeta::default(),
        }
    }

    pub fn from_cluster(name: &str, spec: &PalisadeClusterNetworkPolicySpec) -> Self {
        Self {
            kind: Kind::PalisadeClusterNetworkPolicy,
            namespace: None,
            name: name.to_owned(),
            tier: match spec.tier.unwrap_or_default() {
                ClusterTier::Admin => Tier::Admin,
                ClusterTier::Baseline => Tier::Baseline,
            },
            priority: spec.priority.unwrap_or(DEFAULT_PRIORITY),
            audit: spec.mode == Some(Mode::Audit),
            namespace_selector: spec.subject.namespace_selector.clone(),
            pod_selector: spec.subject.pod_selector.clone().unwrap_or_default(),
            ingress: (!spec.ingress.is_empty()).then(|| owned(rules(&spec.ingress, &[]))),
            egress: (!spec.egress.is_empty()).then(|| owned(rules(&[], &spec.egress))),
            process: spec.process.clone(),
            file: spec.file.clone(),
            lsm_meta: LsmMeta::default(),
        }
    }
}
