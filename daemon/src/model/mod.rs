//! The policy model: plain Rust types for namespaces, pods and policies,
//! parsed and validated, with no I/O beyond the text they are given.

pub mod crd;
#[cfg(test)]
mod fuzz;
pub mod glob;
pub mod kubearmor;
pub mod limits;
// Hostile and broken input for the fuzz tests, here and in the lab: test
// data, like the standard model.
#[cfg(any(test, feature = "standard-model"))]
pub mod mutate;
pub mod networkpolicy;
pub mod palisade;
pub mod parse;
pub mod policy;
pub mod posture;
pub mod process_file;
pub mod selector;
// The lab's standard model: for the lab, the tests and the bench, not the
// node agent.
#[cfg(any(test, feature = "standard-model"))]
pub mod standard;
pub mod yaml;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

pub use networkpolicy::{NetworkPolicy, Protocol};
pub use policy::Policy;
pub use selector::{LabelSelector, Labels};

/// The label every namespace carries implicitly.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// Only the posture annotations (`kubearmor-file-posture`,
    /// `kubearmor-process-posture`, see `posture.rs`) are read; the rest is
    /// kept as given.
    pub annotations: BTreeMap<String, String>,
}

impl Namespace {
    /// Labels with the implicit `kubernetes.io/metadata.name`.
    pub fn effective_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), self.name.clone());
        labels
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl NamedPort {
    /// The port `name` stands for in `protocol` among a pod's `ports`: the
    /// first so named (Kubernetes lets two containers use one name). The
    /// one rule the compiler, the identities and `explain` resolve by.
    pub fn resolve(ports: &[Self], name: &str, protocol: Protocol) -> Option<u16> {
        ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
    /// The pod's cgroup v2 directory on this node (absolute), where its
    /// processes run: process and file rules are keyed by its id. `None`
    /// for pods on other nodes and where the source does not know it.
    pub cgroup: Option<String>,
    /// What the Pod asks of the datapath's source check (its packets may
    /// only leave it from its own addresses), by its
    /// `palisade.dev/source-check` annotation.
    pub source_check: SourceCheck,
    /// The prefixes it asks to send from besides its own addresses, by its
    /// `palisade.dev/source-prefixes` annotation.
    pub source_prefixes: SourcePrefixes,
}

/// A Pod's `palisade.dev/source-check` annotation. Whether an opt-out is
/// honoured is the node's to say (a tenant who may write a Pod may not
/// thereby take its neighbours' addresses): see `Sources::of_pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SourceCheck {
    /// No annotation, or `"on"`.
    #[default]
    On,
    /// `"off"`: a gateway or VPN pod that forwards others' packets.
    Off,
    /// A value that does not read, kept for the error; checked.
    Unreadable(String),
}

/// A Pod's `palisade.dev/source-prefixes` annotation. Honoured, like an
/// opt-out, only where the node says so: see `Sources::prefixes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SourcePrefixes {
    /// No annotation.
    #[default]
    None,
    /// The prefixes, in the order written, without repeats.
    List(Vec<ipnet::IpNet>),
    /// A value that does not read, with why; none is honoured.
    Unreadable(String),
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod object's address in memory: as a source hands out the same object
/// for a pod it did not touch, it tells an unchanged pod without reading
/// it. It names the object only while the object is alive: whoever keeps
/// addresses keeps the objects (their snapshot) alive with them.
pub fn pod_object(pod: &Arc<Pod>) -> usize {
    Arc::as_ptr(pod) as usize
}

/// A set for the daemon's per-change walks of the cluster's pods and
/// addresses: a fast hasher (seeded per process) where std's SipHash cost
/// a measurable share of a pass.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
/// A map, as [`FastSet`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Everything the compiler needs, from any source.
///
/// Pods and policies are shared: a source builds each snapshot from the
/// objects of the last where they did not change, so a change costs a
/// copy of pointers, and telling what changed starts with a pointer
/// comparison.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: Vec<Arc<Pod>>,
    /// Every kind, in one form.
    pub policies: Vec<Arc<Policy>>,
}
