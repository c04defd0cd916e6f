//! What the compiler derives once per snapshot (address identities,
//! namespace labels, policy ids) and how a rule's peers resolve against it
//! to pods and identities.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ebpf_common::datapath::identity;
use ipnet::IpNet;

use crate::{
    identity::{IdentityKey, allocate, stable_id},
    model::{
        FastSet, Pod, Policy, Snapshot,
        networkpolicy::{IpBlock, Peer},
    },
};

pub(super) fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

pub(super) fn address_key(
    snapshot: &Snapshot,
    prefixes: &BTreeSet<IpNet>,
    pod: &Pod,
    ip: IpAddr,
) -> IdentityKey {
    let namespace = snapshot
        .namespaces
        .get(&pod.namespace)
        .map(|n| n.effective_labels())
        .unwrap_or_else(|| {
            [(
                crate::model::NAMESPACE_NAME_LABEL.to_owned(),
                pod.namespace.clone(),
            )]
            .into()
        });
    let cidr = prefixes
        .iter()
        .filter(|p| p.contains(&ip))
        .max_by_key(|p| p.prefix_len())
        .copied();
    IdentityKey::Labels {
        namespace,
        pod: pod.labels.clone(),
        cidr,
        ports: crate::identity::named_ports(&pod.ports),
    }
}

/// Whether an address is in the block's `cidr` and in none of its excepts.
pub(super) fn block_test(block: &IpBlock) -> impl Fn(&IpAddr) -> bool {
    let cidr = block.cidr.parse::<IpNet>().ok();
    let excepts: Vec<IpNet> = block.except.iter().filter_map(|e| e.parse().ok()).collect();
    move |ip| cidr.is_some_and(|c| c.contains(ip)) && !excepts.iter().any(|e| e.contains(ip))
}

pub(super) fn blocks(p: &Policy) -> impl Iterator<Item = &IpBlock> {
    p.rules(false)
        .into_iter()
        .chain(p.rules(true))
        .flatten()
        .flat_map(|rule| &rule.peers)
        .filter_map(|peer| peer.ip_block.as_ref())
}

/// What the compiler derives once per snapshot and reuses for every pod;
/// `Incremental` keeps it between changes.
pub(super) struct Tables {
    /// Every ipBlock `cidr` and `except`, truncated.
    pub(super) prefixes: BTreeSet<IpNet>,
    pub(super) identities: BTreeMap<IdentityKey, u32>,
    /// Each namespace's labels with the implicit name label.
    pub(super) ns_labels: HashMap<String, crate::model::Labels>,
    /// Each pod's addresses with their identities, by `namespace/name`.
    /// Without ipBlocks every address of a pod has the same.
    pub(super) pod_identity: HashMap<String, Vec<(IpAddr, u32)>>,
    /// The peer identities of each (policy, direction, rule), computed once
    /// for all the pods the policy selects.
    pub(super) peer_cache: RefCell<HashMap<(usize, u32, usize), Vec<u32>>>,
    /// Each policy's key and datapath id, by index in the snapshot.
    pub(super) policy_keys: Vec<(String, u32)>,
    /// Namespaced policies by namespace, cluster policies: indexes.
    pub(super) by_namespace: HashMap<String, Vec<usize>>,
    pub(super) cluster: Vec<usize>,
}

pub(super) struct Context<'a> {
    pub(super) snapshot: &'a Snapshot,
    pub(super) t: &'a Tables,
}

impl Context<'_> {
    /// The identities of all of a pod's addresses.
    pub(super) fn identities_of(&self, pod: &Pod) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .t
            .pod_identity
            .get(&pod.key())
            .map(|a| a.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The identities of a pod's addresses that lie in an ipBlock.
    pub(super) fn identities_in(&self, pod: &Pod, block: &IpBlock) -> Vec<u32> {
        let inside = block_test(block);
        self.t
            .pod_identity
            .get(&pod.key())
            .map(|a| {
                a.iter()
                    .filter(|(ip, _)| inside(ip))
                    .map(|(_, id)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The namespaces a (selector) peer of a policy in `namespace` names:
    /// a namespace selector's are those that exist, each matched once
    /// rather than once per pod; `None`: any namespace.
    fn peer_namespaces<'n>(
        &'n self,
        namespace: Option<&'n str>,
        peer: &Peer,
    ) -> Option<FastSet<&'n str>> {
        match &peer.namespace_selector {
            Some(sel) => Some(
                self.t
                    .ns_labels
                    .iter()
                    .filter(|(_, labels)| sel.matches(labels))
                    .map(|(name, _)| name.as_str())
                    .collect(),
            ),
            None => namespace.map(|ns| [ns].into_iter().collect()),
        }
    }

    /// The pods a (selector) peer of a policy in `namespace` names; a
    /// cluster policy's (no namespace) podSelector looks in every namespace.
    pub(super) fn peer_pods(&self, namespace: Option<&str>, peer: &Peer) -> Vec<&Pod> {
        let namespaces = self.peer_namespaces(namespace, peer);
        self.snapshot
            .pods
            .iter()
            .map(|p| &**p)
            .filter(|pod| {
                let ns_ok = namespaces
                    .as_ref()
                    .is_none_or(|n| n.contains(pod.namespace.as_str()));
                ns_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| sel.matches(&pod.labels))
            })
            .collect()
    }

    /// The identities of the pods a (selector) peer of a policy in
    /// `namespace` names: those of [`Self::peer_pods`]' pods (where pods'
    /// keys are unique, as the sources hand them out), found from the
    /// identity keys rather than the pods. A pod address's key holds
    /// its namespace's labels (its name among them) and its pod's labels,
    /// all that a selector looks at; the cluster has no more keys than
    /// pod addresses, and a key is matched without its pod's name being
    /// formatted and looked up.
    pub(super) fn peer_identities(&self, namespace: Option<&str>, peer: &Peer) -> Vec<u32> {
        let namespaces = self.peer_namespaces(namespace, peer);
        self.t
            .identities
            .iter()
            .filter_map(|(key, &id)| {
                let IdentityKey::Labels {
                    namespace: ns_labels,
                    pod,
                    ..
                } = key
                else {
                    return None;
                };
                let name = ns_labels.get(crate::model::NAMESPACE_NAME_LABEL)?;
                let ns_ok = namespaces
                    .as_ref()
                    .is_none_or(|n| n.contains(name.as_str()));
                (ns_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| sel.matches(pod)))
                .then_some(id)
            })
            .collect()
    }

    /// Whether a (selector) peer names `pod`: [`Self::peer_pods`] for one pod.
    pub(super) fn peer_admits(&self, namespace: Option<&str>, peer: &Peer, pod: &Pod) -> bool {
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => self
                .t
                .ns_labels
                .get(&pod.namespace)
                .is_some_and(|labels| sel.matches(labels)),
            None => namespace.is_none_or(|ns| ns == pod.namespace),
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|sel| sel.matches(&pod.labels))
    }

    /// The pods with an address in the block's `cidr` and in none of its excepts.
    pub(super) fn block_pods(&self, block: &IpBlock) -> Vec<&Pod> {
        let inside = block_test(block);
        self.snapshot
            .pods
            .iter()
            .map(|p| &**p)
            .filter(|pod| pod.ips.iter().any(&inside))
            .collect()
    }

    /// The identities an address must have to be in the block's `cidr` but
    /// in none of its excepts. An address's identity is its longest
    /// containing prefix, or its pod's identity, whose key carries that
    /// prefix: either lies in `cidr` and outside every except exactly when
    /// the address does. So ipBlocks match pod addresses too.
    pub(super) fn block_identities(&self, block: &IpBlock) -> Vec<u32> {
        let Ok(cidr) = block.cidr.parse::<IpNet>() else {
            return Vec::new();
        };
        let excepts: Vec<IpNet> = block.except.iter().filter_map(|e| e.parse().ok()).collect();
        let inside = |p: &IpNet| cidr.contains(p) && !excepts.iter().any(|e| e.contains(p));
        let mut ids: Vec<u32> = self
            .t
            .identities
            .iter()
            .filter(|(key, _)| match key {
                IdentityKey::Cidr(p) => inside(p),
                IdentityKey::Labels { cidr, .. } => cidr.as_ref().is_some_and(inside),
            })
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl Tables {
    /// Every ipBlock `cidr` and `except` of the snapshot's policies, truncated.
    pub(super) fn prefixes_of(snapshot: &Snapshot) -> BTreeSet<IpNet> {
        let mut prefixes = BTreeSet::new();
        for policy in &snapshot.policies {
            for block in blocks(policy) {
                for text in std::iter::once(&block.cidr).chain(&block.except) {
                    if let Ok(net) = text.parse::<IpNet>() {
                        prefixes.insert(net.trunc());
                    }
                }
            }
        }
        prefixes
    }

    pub(super) fn namespace_labels(snapshot: &Snapshot) -> HashMap<String, crate::model::Labels> {
        snapshot
            .namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), ns.effective_labels()))
            .collect()
    }

    pub(super) fn new(snapshot: &Snapshot) -> Self {
        let prefixes = Self::prefixes_of(snapshot);
        let address_keys: Vec<(&Pod, Vec<(IpAddr, IdentityKey)>)> = snapshot
            .pods
            .iter()
            .map(|p| &**p)
            .map(|p| {
                let keys = p
                    .ips
                    .iter()
                    .map(|ip| (*ip, address_key(snapshot, &prefixes, p, *ip)))
                    .collect();
                (p, keys)
            })
            .collect();
        let mut keys: BTreeSet<IdentityKey> = address_keys
            .iter()
            .flat_map(|(_, k)| k.iter().map(|(_, key)| key.clone()))
            .collect();
        keys.extend(prefixes.iter().map(|p| IdentityKey::Cidr(*p)));
        let identities = allocate(&keys);
        let pod_identity = address_keys
            .into_iter()
            .map(|(p, keys)| {
                let ids = keys
                    .into_iter()
                    .map(|(ip, key)| (ip, identities.get(&key).copied().unwrap_or(identity::WORLD)))
                    .collect();
                (p.key(), ids)
            })
            .collect();
        let mut t = Self {
            prefixes,
            identities,
            ns_labels: Self::namespace_labels(snapshot),
            pod_identity,
            peer_cache: RefCell::new(HashMap::new()),
            policy_keys: Vec::new(),
            by_namespace: HashMap::new(),
            cluster: Vec::new(),
        };
        t.reindex_policies(snapshot);
        t
    }

    /// The policies' keys, ids and candidates by namespace, by index.
    pub(super) fn reindex_policies(&mut self, snapshot: &Snapshot) {
        self.reindex_policies_keeping(snapshot, Vec::new());
    }

    /// [`Self::reindex_policies`], taking each policy's key and id from
    /// `kept` where it has them (by the policy's index): an unchanged
    /// policy's are what they were, and a change need not format and
    /// hash a cluster's worth of keys again.
    pub(super) fn reindex_policies_keeping(
        &mut self,
        snapshot: &Snapshot,
        mut kept: Vec<Option<(String, u32)>>,
    ) {
        // A namespaced policy only selects pods of its own namespace; cluster
        // policies are candidates everywhere.
        self.by_namespace.clear();
        self.cluster.clear();
        for (index, policy) in snapshot.policies.iter().enumerate() {
            match &policy.namespace {
                Some(ns) => self.by_namespace.entry(ns.clone()).or_default().push(index),
                None => self.cluster.push(index),
            }
        }
        self.policy_keys = snapshot
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                kept.get_mut(i).and_then(Option::take).unwrap_or_else(|| {
                    let key = p.key();
                    // Non-zero: 0 means the default deny.
                    let id = stable_id(&key);
                    (key, id)
                })
            })
            .collect();
    }

    /// Every pod address and ipBlock prefix with its identity.
    pub(super) fn addresses(&self) -> BTreeMap<IpNet, u32> {
        let mut addresses = BTreeMap::new();
        for p in &self.prefixes {
            if let Some(&id) = self.identities.get(&IdentityKey::Cidr(*p)) {
                addresses.insert(*p, id);
            }
        }
        for addresses_of in self.pod_identity.values() {
            for (ip, id) in addresses_of {
                addresses.insert(host(*ip), *id);
            }
        }
        addresses
    }
}
