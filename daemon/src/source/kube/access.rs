//! What the Kubernetes source asks of the API server, in one table: the
//! watchers are built from it, and the install's ClusterRole is checked
//! against it (a verb the code uses that the role lacks fails a test, and
//! so does a verb the role grants that the code never uses).

/// One resource the source touches: API group ("" for core), resource
/// (plural), and the verbs it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
}

// Reflectors list and watch; nothing gets one object by name.
const READ: &[&str] = &["list", "watch"];

pub const NAMESPACES: Access = Access {
    group: "",
    version: "v1",
    resource: "namespaces",
    kind: "Namespace",
    namespaced: false,
    verbs: READ,
};
pub const PODS: Access = Access {
    group: "",
    version: "v1",
    resource: "pods",
    kind: "Pod",
    namespaced: true,
    verbs: READ,
};
pub const NETWORK_POLICIES: Access = Access {
    group: "networking.k8s.io",
    version: "v1",
    resource: "networkpolicies",
    kind: "NetworkPolicy",
    namespaced: true,
    verbs: READ,
};
pub const PALISADE_POLICIES: Access = Access {
    group: "palisade.dev",
    version: "v1alpha1",
    resource: "palisadenetworkpolicies",
    kind: "PalisadeNetworkPolicy",
    namespaced: true,
    verbs: READ,
};
pub const PALISADE_CLUSTER_POLICIES: Access = Access {
    group: "palisade.dev",
    version: "v1alpha1",
    resource: "palisadeclusternetworkpolicies",
    kind: "PalisadeClusterNetworkPolicy",
    namespaced: false,
    verbs: READ,
};
pub const KUBEARMOR_POLICIES: Access = Access {
    group: "security.kubearmor.com",
    version: "v1",
    resource: "kubearmorpolicies",
    kind: "KubeArmorPolicy",
    namespaced: true,
    verbs: READ,
};
/// A refused policy is reported as an Event on it.
pub const EVENTS: Access = Access {
    group: "",
    version: "v1",
    resource: "events",
    kind: "Event",
    namespaced: true,
    verbs: &["create"],
};

/// The node settings (see `settings.rs`): one ConfigMap in the agent's own
/// namespace, granted by a Role there, not cluster-wide.
pub const NODE_SETTINGS: Access = Access {
    group: "",
    version: "v1",
    resource: "configmaps",
    kind: "ConfigMap",
    namespaced: true,
    verbs: READ,
};

/// What a Role in the agent's own namespace grants.
pub const IN_OWN_NAMESPACE: [Access; 1] = [NODE_SETTINGS];

/// The policy kinds, each watched cluster-wide.
pub const POLICY_KINDS: [Access; 4] = [
    NETWORK_POLICIES,
    PALISADE_POLICIES,
    PALISADE_CLUSTER_POLICIES,
    KUBEARMOR_POLICIES,
];

/// Everything the ClusterRole grants, for its check.
pub const ALL: [Access; 7] = [
    NAMESPACES,
    PODS,
    NETWORK_POLICIES,
    PALISADE_POLICIES,
    PALISADE_CLUSTER_POLICIES,
    KUBEARMOR_POLICIES,
    EVENTS,
];

impl Access {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}
