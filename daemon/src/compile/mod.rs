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

pub mod desired;
pub mod evaluate;
pub mod incremental;
pub mod lsm;
pub mod lsm_decide;
mod lsm_guard;
pub mod patterns;
pub mod prefilter;
#[cfg(test)]
pub(crate) mod property;
mod resolve;
mod tables;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_common;
#[cfg(test)]
mod tiers;

use std::collections::BTreeMap;

use ebpf_common::datapath::{PolicyValue, action, direction, endpoint_flags, identity};
use resolve::Raw;
use tables::{Context, Tables};

pub use desired::{Compiled, EndpointPolicy, PolicyEntry, Sources};

use crate::model::{
    NamedPort, Pod, Protocol, Snapshot,
    networkpolicy::{Peer, PolicyPort, PortRef},
    palisade::Action,
    policy::Tier,
};

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
                if let Some(port) = dest.and_then(|d| NamedPort::resolve(&d.ports, name, protocol))
                {
                    out.push((Some(protocol.number()), port, port));
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
    let named = rule
        .ports
        .iter()
        .any(|p| matches!(p.port, Some(PortRef::Name(_))));
    if rule.dir == direction::EGRESS && named {
        named_egress_entries(cx, pod, rule, out);
        return;
    }
    let spans = spans(rule.ports, (rule.dir == direction::INGRESS).then_some(pod))
        .unwrap_or_else(|| vec![EVERYTHING]);
    for id in peer_identities(cx, rule) {
        for &span in &spans {
            out.push(entry(rule.dir, id, span, rule.policy));
        }
    }
}

/// An egress rule with named ports: they resolve on each destination pod,
/// which may number the same name differently.
fn named_egress_entries(cx: &Context<'_>, pod: &Pod, rule: Rule<'_>, out: &mut Vec<PolicyEntry>) {
    for (dest, ids) in destinations(cx, rule) {
        for span in spans(rule.ports, Some(dest)).unwrap_or_else(|| vec![EVERYTHING]) {
            for &id in &ids {
                out.push(entry(rule.dir, id, span, rule.policy));
            }
        }
    }
    // Numbered ports of the same rule still apply to every peer.
    let numbered: Vec<PolicyPort> = rule
        .ports
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
}

/// The pods a rule's peers name, each with the identities it is named by.
fn destinations<'a>(cx: &'a Context<'a>, rule: Rule<'_>) -> Vec<(&'a Pod, Vec<u32>)> {
    if rule.peers.is_empty() {
        return cx
            .snapshot
            .pods
            .iter()
            .map(|d| (&**d, cx.identities_of(d)))
            .collect();
    }
    rule.peers
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
                .peer_pods(rule.namespace, p)
                .into_iter()
                .map(|d| (d, cx.identities_of(d)))
                .collect(),
        })
        .collect()
}

/// The identities a rule's peers name (any peer: [`identity::ANY`]),
/// computed once per rule for all the pods its policy selects.
fn peer_identities(cx: &Context<'_>, rule: Rule<'_>) -> Vec<u32> {
    if let Some(ids) = cx.t.peer_cache.borrow().get(&rule.at) {
        return ids.clone();
    }
    let mut ids: Vec<u32> = if rule.peers.is_empty() {
        vec![identity::ANY]
    } else {
        rule.peers
            .iter()
            .flat_map(|peer| match &peer.ip_block {
                Some(block) => cx.block_identities(block),
                None => cx.peer_identities(rule.namespace, peer),
            })
            .collect()
    };
    ids.sort_unstable();
    ids.dedup();
    cx.t.peer_cache.borrow_mut().insert(rule.at, ids.clone());
    ids
}

/// What the policies that select a pod say for one direction.
struct Side<'a> {
    /// The indexes of the policies that select the pod for it.
    selecting: Vec<usize>,
    /// Whether every rule that applies is a NetworkPolicy-style allow.
    plain_rules: bool,
    /// Whether an enforced policy isolates the pod.
    isolated: bool,
    /// The audit policies that would isolate it: (key, id).
    audit_isolators: Vec<(&'a str, u32)>,
    raws: Vec<Raw>,
}

impl Side<'_> {
    /// Appends the direction's entries to `out`: the rules' own entries
    /// when they are a plain union of allows, else the resolved ones.
    fn entries(self, dir: u32, out: &mut Vec<PolicyEntry>) {
        // The audit policy named for a would-be default deny: the first by key.
        let audit_isolator = self.audit_isolators.iter().min().map(|(_, id)| *id);
        let plain = audit_isolator.is_none()
            && self
                .raws
                .iter()
                .all(|r| r.tier == Tier::Namespace && r.action == Action::Allow && !r.audit);
        if plain {
            out.extend(self.raws.into_iter().map(|r| r.entry));
        } else {
            resolve::resolve(dir, self.raws, self.isolated, audit_isolator, out);
        }
    }
}

impl<'a> Context<'a> {
    /// One pod's policy, the indexes of the policies that select it, and
    /// per direction (ingress, egress) whether every rule that applies is a
    /// NetworkPolicy-style allow, so its entries stay a plain union whatever
    /// the peer sets hold (which `Incremental` then patches).
    fn endpoint(&self, pod: &Pod) -> (EndpointPolicy, Vec<usize>, [bool; 2]) {
        let mut selecting = Vec::new();
        let mut plain_dirs = [true; 2];
        let mut flags = 0;
        let mut entries = Vec::new();
        for dir in [direction::INGRESS, direction::EGRESS] {
            let egress = dir == direction::EGRESS;
            let side = self.side(pod, dir);
            selecting.extend(&side.selecting);
            plain_dirs[usize::from(egress)] = side.plain_rules;
            if side.isolated {
                flags |= if egress {
                    endpoint_flags::ISOLATED_EGRESS
                } else {
                    endpoint_flags::ISOLATED_INGRESS
                };
            }
            side.entries(dir, &mut entries);
        }
        let ep = EndpointPolicy::of(flags, entries);
        selecting.sort_unstable();
        selecting.dedup();
        (ep, selecting, plain_dirs)
    }

    /// The policies that select `pod` for `dir`, and their rules' entries.
    fn side(&self, pod: &Pod, dir: u32) -> Side<'a> {
        let egress = dir == direction::EGRESS;
        let no_labels = crate::model::Labels::new();
        let namespace = pod.namespace.as_str();
        let ns_labels = self.t.ns_labels.get(namespace).unwrap_or(&no_labels);
        // A namespaced policy only selects pods of its own namespace.
        let candidates = self
            .t
            .by_namespace
            .get(namespace)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .chain(&self.t.cluster);
        let mut side = Side {
            selecting: Vec::new(),
            plain_rules: true,
            isolated: false,
            audit_isolators: Vec::new(),
            raws: Vec::new(),
        };
        for &index in candidates {
            let policy = &self.snapshot.policies[index];
            let Some(rules) = policy.rules(egress) else {
                continue;
            };
            if !policy.selects(namespace, ns_labels, &pod.labels) {
                continue;
            }
            let (key, id) = &self.t.policy_keys[index];
            side.selecting.push(index);
            if policy.tier != Tier::Namespace
                || policy.audit
                || rules.iter().any(|r| r.action != Action::Allow)
            {
                side.plain_rules = false;
            }
            if policy.isolates(egress) {
                if policy.audit {
                    side.audit_isolators.push((key.as_str(), *id));
                } else {
                    side.isolated = true;
                }
            }
            side.raws.extend(self.policy_raws(pod, index, dir));
        }
        side
    }

    /// The entries each rule of one policy contributes for `pod` in `dir`,
    /// with their place in the evaluation order.
    fn policy_raws(&self, pod: &Pod, index: usize, dir: u32) -> Vec<Raw> {
        let policy = &self.snapshot.policies[index];
        let (_, id) = self.t.policy_keys[index];
        let mut raws = Vec::new();
        for (r, rule) in policy
            .rules(dir == direction::EGRESS)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mut entries = Vec::new();
            let at = Rule {
                at: (index, dir, r),
                dir,
                namespace: policy.namespace.as_deref(),
                peers: &rule.peers,
                ports: &rule.ports,
                policy: id,
            };
            rule_entries(self, pod, at, &mut entries);
            raws.extend(
                entries
                    .into_iter()
                    .map(|e| Raw::new(policy, rule.action, e)),
            );
        }
        raws
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
