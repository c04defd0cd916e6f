//! The compiler: a snapshot of namespaces, pods and policies in, the desired
//! contents of the datapath maps out. A pure function: no I/O, no aya, the
//! same output for the same input.
//!
//! NetworkPolicy v1 semantics: a pod is isolated for a direction only by
//! policies that select it for that direction; what those policies allow is
//! the union of their rules; a connection needs the source's egress and the
//! destination's ingress to allow it (each endpoint enforces its own side).
//!
//! Palisade's own kinds add tiers, priorities, Deny and Pass, and audit
//! (`model::palisade`). The datapath only knows "most specific entry wins",
//! so the compiler resolves the order itself (`resolve`): it writes, for
//! every peer and port range that some rule names, the verdict of the first
//! rule in evaluation order. Endpoints with only NetworkPolicy-style allows
//! skip that step: a union of allows needs no ordering.

pub mod evaluate;
pub mod incremental;
pub mod prefilter;
#[cfg(test)]
pub(crate) mod property;
mod resolve;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_common;
#[cfg(test)]
mod tiers;

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use ebpf_common::datapath::{PolicyValue, action, direction, endpoint_flags, identity};
use ipnet::IpNet;
use resolve::Raw;

use crate::{
    datapath::PolicyEntry,
    identity::{IdentityKey, allocate, stable_id},
    model::{
        Pod, Policy, Protocol, Snapshot,
        networkpolicy::{IpBlock, Peer, PolicyPort, PortRef},
        palisade::Action,
        policy::Tier,
    },
};

/// The policy of one endpoint (one pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub flags: u32,
    /// Sorted and without duplicates.
    pub entries: Vec<PolicyEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub identities: BTreeMap<IdentityKey, u32>,
    /// Address prefixes and their identity: each pod address as a host
    /// prefix, each ipBlock prefix as itself.
    pub addresses: BTreeMap<IpNet, u32>,
    /// By `namespace/pod`.
    pub endpoints: BTreeMap<String, EndpointPolicy>,
    /// Policy ids (as counted by the datapath) by `namespace/name`.
    pub policies: BTreeMap<String, u32>,
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn address_key(
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
    }
}

/// Whether an address is in the block's `cidr` and in none of its excepts.
fn block_test(block: &IpBlock) -> impl Fn(&IpAddr) -> bool {
    let cidr = block.cidr.parse::<IpNet>().ok();
    let excepts: Vec<IpNet> = block.except.iter().filter_map(|e| e.parse().ok()).collect();
    move |ip| cidr.is_some_and(|c| c.contains(ip)) && !excepts.iter().any(|e| e.contains(ip))
}

fn blocks(p: &Policy) -> impl Iterator<Item = &IpBlock> {
    p.rules(false)
        .into_iter()
        .chain(p.rules(true))
        .flatten()
        .flat_map(|rule| &rule.peers)
        .filter_map(|peer| peer.ip_block.as_ref())
}

/// What the compiler derives once per snapshot and reuses for every pod;
/// `Incremental` keeps it between changes.
struct Tables {
    /// Every ipBlock `cidr` and `except`, truncated.
    prefixes: BTreeSet<IpNet>,
    identities: BTreeMap<IdentityKey, u32>,
    /// Each namespace's labels with the implicit name label.
    ns_labels: HashMap<String, crate::model::Labels>,
    /// Each pod's addresses with their identities, by `namespace/name`.
    /// Without ipBlocks every address of a pod has the same.
    pod_identity: HashMap<String, Vec<(IpAddr, u32)>>,
    /// The peer identities of each (policy, direction, rule), computed once
    /// for all the pods the policy selects.
    peer_cache: RefCell<HashMap<(usize, u32, usize), Vec<u32>>>,
    /// Each policy's key and datapath id, by index in the snapshot.
    policy_keys: Vec<(String, u32)>,
    /// Namespaced policies by namespace, cluster policies: indexes.
    by_namespace: HashMap<String, Vec<usize>>,
    cluster: Vec<usize>,
}

struct Context<'a> {
    snapshot: &'a Snapshot,
    t: &'a Tables,
}

impl Context<'_> {
    /// The identities of all of a pod's addresses.
    fn identities_of(&self, pod: &Pod) -> Vec<u32> {
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
    fn identities_in(&self, pod: &Pod, block: &IpBlock) -> Vec<u32> {
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

    /// The pods a (selector) peer of a policy in `namespace` names; a
    /// cluster policy's (no namespace) podSelector looks in every namespace.
    fn peer_pods(&self, namespace: Option<&str>, peer: &Peer) -> Vec<&Pod> {
        // Selectors are matched once per namespace, not once per pod.
        // `None`: any namespace.
        let namespaces: Option<HashSet<&str>> = match &peer.namespace_selector {
            Some(sel) => Some(
                self.t
                    .ns_labels
                    .iter()
                    .filter(|(_, labels)| sel.matches(labels))
                    .map(|(name, _)| name.as_str())
                    .collect(),
            ),
            None => namespace.map(|ns| [ns].into()),
        };
        self.snapshot
            .pods
            .iter()
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

    /// Whether a (selector) peer names `pod`: [`Self::peer_pods`] for one pod.
    fn peer_admits(&self, namespace: Option<&str>, peer: &Peer, pod: &Pod) -> bool {
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
    fn block_pods(&self, block: &IpBlock) -> Vec<&Pod> {
        let inside = block_test(block);
        self.snapshot
            .pods
            .iter()
            .filter(|pod| pod.ips.iter().any(&inside))
            .collect()
    }

    /// The identities an address must have to be in the block's `cidr` but
    /// in none of its excepts. An address's identity is its longest
    /// containing prefix, or its pod's identity, whose key carries that
    /// prefix: either lies in `cidr` and outside every except exactly when
    /// the address does. So ipBlocks match pod addresses too.
    fn block_identities(&self, block: &IpBlock) -> Vec<u32> {
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

/// (protocol, first port, last port); `None` protocol is every protocol.
type PortSpan = (Option<u8>, u16, u16);

/// A rule's ports for a destination pod (named ports resolve on it);
/// `None` when the rule has no ports (everything).
fn spans(ports: &[PolicyPort], dest: Option<&Pod>) -> Option<Vec<PortSpan>> {
    if ports.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for p in ports {
        let protocol = p.protocol.unwrap_or(Protocol::Tcp);
        match &p.port {
            None => out.push((Some(protocol.number()), 0, 65535)),
            Some(PortRef::Number(n)) => {
                let first = u16::try_from(*n).unwrap_or(0);
                let last = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .unwrap_or(first);
                out.push((Some(protocol.number()), first, last));
            }
            Some(PortRef::Name(name)) => {
                if let Some(port) = dest.and_then(|d| {
                    d.ports
                        .iter()
                        .find(|np| &np.name == name && np.protocol == protocol)
                }) {
                    out.push((Some(protocol.number()), port.port, port.port));
                }
            }
        }
    }
    Some(out)
}

fn entry(dir: u32, peer: u32, span: PortSpan, policy: u32) -> PolicyEntry {
    PolicyEntry {
        direction: dir,
        peer,
        protocol: span.0,
        ports: (span.1, span.2),
        value: PolicyValue {
            action: action::ALLOW,
            policy,
            ..PolicyValue::default()
        },
    }
}

const EVERYTHING: PortSpan = (None, 0, 65535);

/// One rule of one policy, in one direction; `peers` empty means any peer.
#[derive(Clone, Copy)]
struct Rule<'a> {
    /// (policy index, direction, rule index): the peer cache's key.
    at: (usize, u32, usize),
    dir: u32,
    namespace: Option<&'a str>,
    peers: &'a [Peer],
    ports: &'a [PolicyPort],
    policy: u32,
}

/// Entries one rule contributes for `pod`.
fn rule_entries(cx: &Context<'_>, pod: &Pod, rule: Rule<'_>, out: &mut Vec<PolicyEntry>) {
    let Rule {
        at,
        dir,
        namespace,
        peers,
        ports,
        policy,
    } = rule;
    let named = ports
        .iter()
        .any(|p| matches!(p.port, Some(PortRef::Name(_))));
    if dir == direction::EGRESS && named {
        // Named ports resolve on each destination pod, which may number
        // the same name differently.
        let dests: Vec<(&Pod, Vec<u32>)> = if peers.is_empty() {
            cx.snapshot
                .pods
                .iter()
                .map(|d| (d, cx.identities_of(d)))
                .collect()
        } else {
            peers
                .iter()
                .flat_map(|p| match &p.ip_block {
                    // A block names the pods whose addresses fall in it,
                    // by those addresses only.
                    Some(block) => cx
                        .block_pods(block)
                        .into_iter()
                        .map(|d| (d, cx.identities_in(d, block)))
                        .collect::<Vec<_>>(),
                    None => cx
                        .peer_pods(namespace, p)
                        .into_iter()
                        .map(|d| (d, cx.identities_of(d)))
                        .collect(),
                })
                .collect()
        };
        for (dest, ids) in dests {
            for span in spans(ports, Some(dest)).unwrap_or_else(|| vec![EVERYTHING]) {
                for &id in &ids {
                    out.push(entry(dir, id, span, policy));
                }
            }
        }
        // Numbered ports of the same rule still apply to every peer.
        let numbered: Vec<PolicyPort> = ports
            .iter()
            .filter(|p| !matches!(p.port, Some(PortRef::Name(_))))
            .cloned()
            .collect();
        if !numbered.is_empty() {
            rule_entries(
                cx,
                pod,
                Rule {
                    ports: &numbered,
                    ..rule
                },
                out,
            );
        }
        return;
    }
    let spans = spans(ports, (dir == direction::INGRESS).then_some(pod))
        .unwrap_or_else(|| vec![EVERYTHING]);
    let cached = cx.t.peer_cache.borrow().get(&at).cloned();
    let identities = match cached {
        Some(ids) => ids,
        None => {
            let mut ids: Vec<u32> = if peers.is_empty() {
                vec![identity::ANY]
            } else {
                peers
                    .iter()
                    .flat_map(|peer| match &peer.ip_block {
                        Some(block) => cx.block_identities(block),
                        None => cx
                            .peer_pods(namespace, peer)
                            .into_iter()
                            .flat_map(|p| cx.identities_of(p))
                            .collect(),
                    })
                    .collect()
            };
            ids.sort_unstable();
            ids.dedup();
            cx.t.peer_cache.borrow_mut().insert(at, ids.clone());
            ids
        }
    };
    for id in identities {
        for &span in &spans {
            out.push(entry(dir, id, span, policy));
        }
    }
}

impl Tables {
    fn new(snapshot: &Snapshot) -> Self {
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
        let address_keys: Vec<(&Pod, Vec<(IpAddr, IdentityKey)>)> = snapshot
            .pods
            .iter()
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
        let ns_labels = snapshot
            .namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), ns.effective_labels()))
            .collect();
        // A namespaced policy only selects pods of its own namespace; cluster
        // policies are candidates everywhere.
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        let mut cluster = Vec::new();
        for (index, policy) in snapshot.policies.iter().enumerate() {
            match &policy.namespace {
                Some(ns) => by_namespace.entry(ns.clone()).or_default().push(index),
                None => cluster.push(index),
            }
        }
        let policy_keys = snapshot
            .policies
            .iter()
            .map(|p| {
                let key = p.key();
                // Non-zero: 0 means the default deny.
                let id = stable_id(&key);
                (key, id)
            })
            .collect();
        Self {
            prefixes,
            identities,
            ns_labels,
            pod_identity,
            peer_cache: RefCell::new(HashMap::new()),
            policy_keys,
            by_namespace,
            cluster,
        }
    }

    /// Every pod address and ipBlock prefix with its identity.
    fn addresses(&self) -> BTreeMap<IpNet, u32> {
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

impl Context<'_> {
    /// One pod's policy, the indexes of the policies that select it, and
    /// per direction (ingress, egress) whether every rule that applies is a
    /// NetworkPolicy-style allow, so its entries stay a plain union whatever
    /// the peer sets hold (which `Incremental` then patches).
    fn endpoint(&self, pod: &Pod) -> (EndpointPolicy, Vec<usize>, [bool; 2]) {
        let no_labels = crate::model::Labels::new();
        let namespace = pod.namespace.as_str();
        let ns_labels = self.t.ns_labels.get(namespace).unwrap_or(&no_labels);
        let candidates = self
            .t
            .by_namespace
            .get(namespace)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .chain(&self.t.cluster);
        let mut selecting = Vec::new();
        let mut plain_dirs = [true; 2];
        let mut ep = EndpointPolicy::default();
        for dir in [direction::INGRESS, direction::EGRESS] {
            let egress = dir == direction::EGRESS;
            let mut raws = Vec::new();
            let mut isolated = false;
            let mut audit_isolators = Vec::new();
            for &index in candidates.clone() {
                let policy = &self.snapshot.policies[index];
                let Some(rules) = policy.rules(egress) else {
                    continue;
                };
                if !policy.selects(namespace, ns_labels, &pod.labels) {
                    continue;
                }
                let (key, id) = &self.t.policy_keys[index];
                selecting.push(index);
                if policy.tier != Tier::Namespace
                    || policy.audit
                    || rules.iter().any(|r| r.action != Action::Allow)
                {
                    plain_dirs[usize::from(egress)] = false;
                }
                if policy.isolates(egress) {
                    if policy.audit {
                        audit_isolators.push((key.as_str(), *id));
                    } else {
                        isolated = true;
                    }
                }
                for (r, rule) in rules.iter().enumerate() {
                    let mut entries = Vec::new();
                    let at = Rule {
                        at: (index, dir, r),
                        dir,
                        namespace: policy.namespace.as_deref(),
                        peers: &rule.peers,
                        ports: &rule.ports,
                        policy: *id,
                    };
                    rule_entries(self, pod, at, &mut entries);
                    raws.extend(
                        entries
                            .into_iter()
                            .map(|e| Raw::new(policy, rule.action, e)),
                    );
                }
            }
            if isolated {
                ep.flags |= if egress {
                    endpoint_flags::ISOLATED_EGRESS
                } else {
                    endpoint_flags::ISOLATED_INGRESS
                };
            }
            // The audit policy named for a would-be default deny: the first by key.
            let audit_isolator = audit_isolators.iter().min().map(|(_, id)| *id);
            let plain = audit_isolator.is_none()
                && raws
                    .iter()
                    .all(|r| r.tier == Tier::Namespace && r.action == Action::Allow && !r.audit);
            if plain {
                ep.entries.extend(raws.into_iter().map(|r| r.entry));
            } else {
                resolve::resolve(dir, raws, isolated, audit_isolator, &mut ep.entries);
            }
        }
        // One entry per (direction, peer, protocol, ports): the first policy
        // (lowest id) is the one counters name. Resolved entries never
        // repeat a key, so this only merges NetworkPolicy-style allows.
        ep.entries
            .sort_by_key(|e| (e.direction, e.peer, e.protocol, e.ports, e.value.policy));
        ep.entries
            .dedup_by_key(|e| (e.direction, e.peer, e.protocol, e.ports));
        selecting.sort_unstable();
        selecting.dedup();
        (ep, selecting, plain_dirs)
    }
}

pub fn compile(snapshot: &Snapshot) -> Compiled {
    let t = Tables::new(snapshot);
    let cx = Context { snapshot, t: &t };
    let mut policies = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    for pod in &snapshot.pods {
        let (ep, selecting, _) = cx.endpoint(pod);
        for index in selecting {
            let (key, id) = &t.policy_keys[index];
            policies.insert(key.clone(), *id);
        }
        endpoints.insert(pod.key(), ep);
    }
    let addresses = t.addresses();
    Compiled {
        identities: t.identities,
        addresses,
        endpoints,
        policies,
    }
}
