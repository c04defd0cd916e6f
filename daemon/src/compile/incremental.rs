//! Recompiling after one pod's label change without recompiling the node.
//!
//! What a relabel can change: the pod's own endpoint (which policies select
//! it); its identity (label sets are identities); and, only where that
//! identity is new or the old one lost its last holder, the peer sets of
//! the rules whose peers name the pod, hence the endpoints those rules'
//! policies select. Endpoints whose entries are a plain union of allows
//! are patched (entries for a vanished identity dropped, entries for a new
//! one added); any other endpoint is recompiled alone. Identities keep the
//! numbers a full compile would give: where a change would renumber another
//! key (a hash collision), everything is recompiled. The result is always
//! what `compile` gives for the new snapshot; the tests check exactly that.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ebpf_common::datapath::direction;

use super::{
    Compiled, EVERYTHING, entry, spans,
    tables::{Context, Tables, address_key, block_test, host},
};
use crate::{
    identity::{IdentityKey, natural, probe_next},
    model::{Labels, Pod, Snapshot, networkpolicy::PortRef},
};

pub struct Incremental {
    snapshot: Snapshot,
    tables: Tables,
    compiled: Compiled,
    /// How many pod addresses hold each label identity.
    holders: HashMap<IdentityKey, usize>,
    /// Per pod: the policies (indexes) selecting it, and per direction
    /// whether its entries are a plain union.
    pods: HashMap<String, (Vec<usize>, [bool; 2])>,
    /// Per policy: the pods it selects.
    selected: Vec<BTreeSet<String>>,
    /// Each pod's position in the snapshot.
    position: HashMap<String, usize>,
}

/// A rule (policy index, direction, rule index) whose peer set changed,
/// with the identities it gained.
type RulePatch = (usize, u32, usize, Vec<u32>);

/// What a relabel did to the identities.
struct Renumbered {
    /// Identities that lost their last holder.
    gone: BTreeSet<u32>,
    /// Identities that gained their first.
    fresh: BTreeSet<u32>,
    /// The relabelled pod's addresses with their identities now.
    new_ids: Vec<(IpAddr, u32)>,
}

/// What a change touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Endpoints whose policy differs now.
    pub endpoints: Vec<String>,
    /// Everything was recompiled (an identity would have been renumbered).
    pub full: bool,
}

impl Incremental {
    pub fn new(snapshot: Snapshot) -> Self {
        let tables = Tables::new(&snapshot);
        let mut holders: HashMap<IdentityKey, usize> = HashMap::new();
        for pod in &snapshot.pods {
            for ip in &pod.ips {
                *holders
                    .entry(address_key(&snapshot, &tables.prefixes, pod, *ip))
                    .or_default() += 1;
            }
        }
        let mut pods = HashMap::new();
        let mut selected = vec![BTreeSet::new(); snapshot.policies.len()];
        let mut endpoints = BTreeMap::new();
        let mut policies = BTreeMap::new();
        {
            let cx = Context {
                snapshot: &snapshot,
                t: &tables,
            };
            for pod in &snapshot.pods {
                let (ep, selecting, plain) = cx.endpoint(pod);
                for &index in &selecting {
                    selected[index].insert(pod.key());
                    let (key, id) = &tables.policy_keys[index];
                    policies.insert(key.clone(), *id);
                }
                pods.insert(pod.key(), (selecting, plain));
                endpoints.insert(pod.key(), ep);
            }
        }
        let compiled = Compiled {
            identities: tables.identities.clone(),
            addresses: tables.addresses(),
            endpoints,
            policies,
        };
        let position = snapshot
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key(), i))
            .collect();
        Self {
            snapshot,
            tables,
            compiled,
            holders,
            pods,
            selected,
            position,
        }
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Brings the state to `snapshot`: by relabels when only pod labels
    /// changed, else by a full compile.
    pub fn update(&mut self, snapshot: &Snapshot) -> Change {
        match relabels(&self.snapshot, snapshot) {
            Some(changes) => {
                let mut out = Change::default();
                for (key, labels) in changes {
                    let c = self.relabel_pod(&key, labels);
                    out.full |= c.full;
                    out.endpoints.extend(c.endpoints);
                }
                out.endpoints.sort();
                out.endpoints.dedup();
                out
            }
            None => {
                self.snapshot = snapshot.clone();
                self.full()
            }
        }
    }

    fn full(&mut self) -> Change {
        let before = std::mem::take(&mut self.compiled.endpoints);
        *self = Self::new(std::mem::take(&mut self.snapshot));
        let endpoints = self
            .compiled
            .endpoints
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(
                before
                    .keys()
                    .filter(|k| !self.compiled.endpoints.contains_key(*k))
                    .cloned(),
            )
            .collect();
        Change {
            endpoints,
            full: true,
        }
    }

    /// Whether removing `vanished` and adding `appeared` leaves every other
    /// key where a fresh allocation would put it.
    fn numbering_holds(&self, vanished: &[IdentityKey], appeared: &[IdentityKey]) -> bool {
        let ids = &self.tables.identities;
        let mut freed = BTreeSet::new();
        for v in vanished {
            let Some(&slot) = ids.get(v) else { continue };
            // A later key that probed past this slot would move into it.
            let moved = ids.iter().any(|(k, &id)| {
                k > v && id != natural(k) && {
                    let mut at = natural(k);
                    while at != id && at != slot {
                        at = probe_next(at);
                    }
                    at == slot
                }
            });
            if moved {
                return false;
            }
            freed.insert(slot);
        }
        let taken: BTreeSet<u32> = ids
            .values()
            .copied()
            .filter(|id| !freed.contains(id))
            .collect();
        let mut wanted = BTreeSet::new();
        appeared
            .iter()
            .all(|k| !taken.contains(&natural(k)) && wanted.insert(natural(k)))
    }

    /// Gives pod `key` the label set `labels`; the compiled state is then
    /// what `compile` gives for the new snapshot.
    pub fn relabel_pod(&mut self, key: &str, labels: Labels) -> Change {
        let Some(&at) = self.position.get(key) else {
            return Change::default();
        };
        if self.snapshot.pods[at].labels == labels {
            return Change::default();
        }
        let old_pod = self.snapshot.pods[at].clone();
        self.snapshot.pods[at].labels = labels;
        let new_pod = self.snapshot.pods[at].clone();
        let old_keys = self.keys_of(&old_pod);
        let new_keys = self.keys_of(&new_pod);
        let Some((vanished, appeared)) = self.count_holders(&old_keys, &new_keys) else {
            return self.full();
        };
        if !self.numbering_holds(&vanished, &appeared) {
            return self.full();
        }
        let old_ids = self.ids_of(&old_pod, &old_keys);
        let renumbered = self.renumber(key, &new_pod, &new_keys, &vanished, &appeared);
        let (patches, mut recompile) = self.rule_patches(&old_pod, &old_ids, &new_pod, &renumbered);
        recompile.insert(key.to_owned());
        self.patch_peer_cache(&patches, &renumbered.gone);
        let mut changed = self.patch_plain_endpoints(&patches, &renumbered.gone, &mut recompile);
        changed.extend(self.recompile_endpoints(key, &recompile));
        changed.sort();
        changed.dedup();
        Change {
            endpoints: changed,
            full: false,
        }
    }

    /// The identity key of each of `pod`'s addresses.
    fn keys_of(&self, pod: &Pod) -> Vec<IdentityKey> {
        pod.ips
            .iter()
            .map(|ip| address_key(&self.snapshot, &self.tables.prefixes, pod, *ip))
            .collect()
    }

    /// Each of `pod`'s addresses with the identity its key holds now.
    fn ids_of(&self, pod: &Pod, keys: &[IdentityKey]) -> Vec<(IpAddr, u32)> {
        pod.ips
            .iter()
            .zip(keys)
            .map(|(ip, k)| {
                (
                    *ip,
                    self.tables.identities.get(k).copied().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Moves the pod's addresses from `old_keys` to `new_keys` in the
    /// holder counts, and returns the keys that lost their last holder and
    /// those that gained their first; `None` when the counts are corrupt
    /// (every address's key is held), which a full compile repairs.
    fn count_holders(
        &mut self,
        old_keys: &[IdentityKey],
        new_keys: &[IdentityKey],
    ) -> Option<(Vec<IdentityKey>, Vec<IdentityKey>)> {
        let mut vanished = Vec::new();
        for k in old_keys {
            let n = self.holders.get_mut(k)?;
            *n -= 1;
            if *n == 0 && !new_keys.contains(k) {
                vanished.push(k.clone());
            }
        }
        let mut appeared = Vec::new();
        for k in new_keys {
            let n = self.holders.entry(k.clone()).or_default();
            if *n == 0 && !old_keys.contains(k) && !appeared.contains(k) {
                appeared.push(k.clone());
            }
            *n += 1;
        }
        self.holders.retain(|_, n| *n > 0);
        Some((vanished, appeared))
    }

    /// Retires the identities of `vanished` keys, numbers the `appeared`
    /// ones (where a fresh allocation would: `numbering_holds` checked it),
    /// and points the relabelled pod's addresses at their new identities.
    fn renumber(
        &mut self,
        key: &str,
        new_pod: &Pod,
        new_keys: &[IdentityKey],
        vanished: &[IdentityKey],
        appeared: &[IdentityKey],
    ) -> Renumbered {
        let mut gone = BTreeSet::new();
        for k in vanished {
            if let Some(id) = self.tables.identities.remove(k) {
                self.compiled.identities.remove(k);
                gone.insert(id);
            }
        }
        for k in appeared {
            self.tables.identities.insert(k.clone(), natural(k));
            self.compiled.identities.insert(k.clone(), natural(k));
        }
        let new_ids = self.ids_of(new_pod, new_keys);
        for (ip, id) in &new_ids {
            self.compiled.addresses.insert(host(*ip), *id);
        }
        self.tables
            .pod_identity
            .insert(key.to_owned(), new_ids.clone());
        Renumbered {
            gone,
            fresh: appeared.iter().map(natural).collect(),
            new_ids,
        }
    }

    /// The rules whose peer sets change with the relabel, each with the
    /// identities it gains, and the endpoints that need a recompile instead
    /// of a patch (their rules resolve named ports per destination).
    fn rule_patches(
        &self,
        old_pod: &Pod,
        old_ids: &[(IpAddr, u32)],
        new_pod: &Pod,
        renumbered: &Renumbered,
    ) -> (Vec<RulePatch>, BTreeSet<String>) {
        let cx = Context {
            snapshot: &self.snapshot,
            t: &self.tables,
        };
        let mut patches: Vec<RulePatch> = Vec::new();
        let mut recompile: BTreeSet<String> = BTreeSet::new();
        for (index, policy) in self.snapshot.policies.iter().enumerate() {
            for dir in [direction::INGRESS, direction::EGRESS] {
                let egress = dir == direction::EGRESS;
                let Some(rules) = policy.rules(egress) else {
                    continue;
                };
                for (r, rule) in rules.iter().enumerate() {
                    let ns = policy.namespace.as_deref();
                    // Identities this rule admits of the pod, before and now.
                    let admitted = |pod: &Pod, ids: &[(IpAddr, u32)]| {
                        let mut out = Vec::new();
                        for peer in &rule.peers {
                            match &peer.ip_block {
                                Some(block) => {
                                    let inside = block_test(block);
                                    out.extend(
                                        ids.iter().filter(|(ip, _)| inside(ip)).map(|(_, id)| *id),
                                    );
                                }
                                None if cx.peer_admits(ns, peer, pod) => {
                                    out.extend(ids.iter().map(|(_, id)| *id));
                                }
                                None => {}
                            }
                        }
                        out
                    };
                    let before = admitted(old_pod, old_ids);
                    let now = admitted(new_pod, &renumbered.new_ids);
                    let named = rule
                        .ports
                        .iter()
                        .any(|p| matches!(p.port, Some(PortRef::Name(_))));
                    if rule.peers.is_empty() {
                        // Any peer: no identity to add or drop, but
                        // named ports resolve on every destination.
                        if egress && named {
                            recompile.extend(self.selected[index].iter().cloned());
                        }
                        continue;
                    }
                    if egress && named && (!before.is_empty() || !now.is_empty()) {
                        // Ports per destination: recompile its endpoints
                        // (its numbered ports still use the peer cache).
                        recompile.extend(self.selected[index].iter().cloned());
                    }
                    let lost = before.iter().any(|id| renumbered.gone.contains(id));
                    let gained: Vec<u32> = now
                        .into_iter()
                        .filter(|id| renumbered.fresh.contains(id))
                        .collect();
                    if lost || !gained.is_empty() {
                        patches.push((index, dir, r, gained));
                    }
                }
            }
        }
        (patches, recompile)
    }

    /// The peer cache follows the new peer sets.
    fn patch_peer_cache(&self, patches: &[RulePatch], gone: &BTreeSet<u32>) {
        let mut cache = self.tables.peer_cache.borrow_mut();
        for (index, dir, r, gained) in patches {
            if let Some(ids) = cache.get_mut(&(*index, *dir, *r)) {
                ids.retain(|id| !gone.contains(id));
                ids.extend(gained);
                ids.sort_unstable();
                ids.dedup();
            }
        }
    }

    /// Patches the endpoints the changed rules select where their entries
    /// are a plain union of allows (drop the gone identities, add the
    /// gained ones); others join `recompile`. Returns those that changed.
    fn patch_plain_endpoints(
        &mut self,
        patches: &[RulePatch],
        gone: &BTreeSet<u32>,
        recompile: &mut BTreeSet<String>,
    ) -> Vec<String> {
        let mut touched: BTreeMap<String, Vec<&RulePatch>> = BTreeMap::new();
        for patch in patches {
            for pod in &self.selected[patch.0] {
                touched.entry(pod.clone()).or_default().push(patch);
            }
        }
        let mut changed = Vec::new();
        for (pod_key, rule_patches) in touched {
            if recompile.contains(&pod_key) {
                continue;
            }
            let plain = self.pods.get(&pod_key).map_or([false; 2], |p| p.1);
            if rule_patches
                .iter()
                .any(|(_, dir, ..)| !plain[*dir as usize])
            {
                recompile.insert(pod_key);
                continue;
            }
            let Some(pod) = self.position.get(&pod_key).map(|&i| &self.snapshot.pods[i]) else {
                continue;
            };
            let Some(ep) = self.compiled.endpoints.get_mut(&pod_key) else {
                continue;
            };
            let before = ep.clone();
            ep.entries.retain(|e| !gone.contains(&e.peer));
            for &&(index, dir, r, ref gained) in &rule_patches {
                let policy = &self.snapshot.policies[index];
                let rule = &policy.rules(dir == direction::EGRESS).unwrap_or_default()[r];
                let id = self.tables.policy_keys[index].1;
                let own = (dir == direction::INGRESS).then_some(pod);
                for span in spans(&rule.ports, own).unwrap_or_else(|| vec![EVERYTHING]) {
                    for &peer in gained {
                        ep.entries.push(entry(dir, peer, span, id));
                    }
                }
            }
            ep.entries
                .sort_by_key(|e| (e.direction, e.peer, e.protocol, e.ports, e.value.policy));
            ep.entries
                .dedup_by_key(|e| (e.direction, e.peer, e.protocol, e.ports));
            if *ep != before {
                changed.push(pod_key);
            }
        }
        changed
    }

    /// Compiles the endpoints in `recompile` afresh; for the relabelled pod
    /// `key` itself, also which policies select it now. Returns those that
    /// changed.
    fn recompile_endpoints(&mut self, key: &str, recompile: &BTreeSet<String>) -> Vec<String> {
        let cx = Context {
            snapshot: &self.snapshot,
            t: &self.tables,
        };
        let mut changed = Vec::new();
        for pod_key in recompile {
            let Some(pod) = self.position.get(pod_key).map(|&i| &self.snapshot.pods[i]) else {
                continue;
            };
            let (ep, selecting, plain) = cx.endpoint(pod);
            if pod_key == key {
                let (old_selecting, _) = self.pods.get(key).cloned().unwrap_or_default();
                for index in &old_selecting {
                    self.selected[*index].remove(key);
                }
                for index in &selecting {
                    self.selected[*index].insert(key.to_owned());
                }
                for index in old_selecting.iter().chain(&selecting) {
                    let (name, id) = &self.tables.policy_keys[*index];
                    if self.selected[*index].is_empty() {
                        self.compiled.policies.remove(name);
                    } else {
                        self.compiled.policies.insert(name.clone(), *id);
                    }
                }
            }
            self.pods.insert(pod_key.clone(), (selecting, plain));
            if self.compiled.endpoints.get(pod_key) != Some(&ep) {
                self.compiled.endpoints.insert(pod_key.clone(), ep);
                changed.push(pod_key.clone());
            }
        }
        changed
    }
}

/// The label changes that turn `old` into `new`, when nothing else differs
/// (same namespaces, policies, pods, addresses and ports).
fn relabels(old: &Snapshot, new: &Snapshot) -> Option<Vec<(String, Labels)>> {
    if old.namespaces != new.namespaces
        || old.policies != new.policies
        || old.pods.len() != new.pods.len()
    {
        return None;
    }
    let mut out = Vec::new();
    for (a, b) in old.pods.iter().zip(&new.pods) {
        if a.namespace != b.namespace || a.name != b.name || a.ips != b.ips || a.ports != b.ports {
            return None;
        }
        if a.labels != b.labels {
            out.push((b.key(), b.labels.clone()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{
        compile,
        tests_common::{standard, with},
    };

    fn relabel_agrees(mut inc: Incremental, pod: &str, labels: Labels) -> Change {
        let before = inc.compiled().clone();
        let change = inc.relabel_pod(pod, labels);
        let want = compile(inc.snapshot());
        assert_eq!(inc.compiled().identities, want.identities, "identities");
        assert_eq!(inc.compiled().addresses, want.addresses, "addresses");
        assert_eq!(inc.compiled().policies, want.policies, "policies");
        for (k, v) in &want.endpoints {
            assert_eq!(inc.compiled().endpoints.get(k), Some(v), "endpoint {k}");
        }
        assert_eq!(inc.compiled().endpoints.len(), want.endpoints.len());
        let differ: Vec<String> = want
            .endpoints
            .iter()
            .filter(|(k, v)| before.endpoints.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(change.endpoints, differ, "reported as touched");
        change
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_relabel_patches_exactly_what_a_full_compile_changes() {
        let s = with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {role: web}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}], ports: [{port: 80}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        );
        // x/b becomes a web server: its own endpoint changes.
        let change = relabel_agrees(
            Incremental::new(s.clone()),
            "x/b",
            labels(&[("pod", "b"), ("role", "web")]),
        );
        assert!(!change.full);
        // Its own endpoint, and x/a's, whose peer pod b has a new identity.
        assert_eq!(change.endpoints, ["x/a", "x/b"]);
        // y/c becomes a client (a new identity): the web pods gain a peer.
        let mut s2 = s.clone();
        s2.pods
            .iter_mut()
            .find(|p| p.key() == "x/c")
            .unwrap()
            .labels = labels(&[("pod", "c"), ("role", "web")]);
        let change = relabel_agrees(
            Incremental::new(s2.clone()),
            "y/c",
            labels(&[("pod", "c"), ("role", "client")]),
        );
        assert_eq!(change.endpoints, ["x/c"]);
        // x/b stops being pod b (its identity vanishes): x/a loses the peer.
        relabel_agrees(Incremental::new(s2), "x/b", labels(&[("pod", "q")]));
        // No policy at all.
        relabel_agrees(
            Incremental::new(standard()),
            "z/a",
            labels(&[("pod", "zz")]),
        );
    }

    #[test]
    fn a_relabel_onto_a_taken_identity_recompiles_everything_and_still_agrees() {
        // Two label sets of x whose identities collide (a birthday search).
        let s = standard();
        let ns = s.namespaces["x"].effective_labels();
        let key = |v: &str| IdentityKey::Labels {
            namespace: ns.clone(),
            pod: labels(&[("pod", v)]),
            cidr: None,
        };
        let mut seen = HashMap::new();
        let (first, second) = (0..200_000)
            .map(|i| format!("v{i}"))
            .find_map(|v| {
                let id = natural(&key(&v));
                seen.insert(id, v.clone()).map(|other| (other, v))
            })
            .expect("a collision within 200k label sets");
        let mut s = with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n",
        );
        s.pods.iter_mut().find(|p| p.key() == "x/a").unwrap().labels = labels(&[("pod", &first)]);
        let change = relabel_agrees(Incremental::new(s), "x/b", labels(&[("pod", &second)]));
        assert!(change.full, "the collision forces a full compile");
    }

    #[test]
    fn updates_take_relabels_incrementally_and_anything_else_in_full() {
        let s = with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-in, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        );
        let mut inc = Incremental::new(s.clone());
        let mut relabelled = s.clone();
        relabelled.pods[1].labels = labels(&[("pod", "b"), ("new", "1")]);
        let change = inc.update(&relabelled);
        assert!(!change.full);
        assert_eq!(inc.compiled(), &compile(&relabelled));
        let mut fewer = relabelled.clone();
        fewer.pods.pop();
        assert!(inc.update(&fewer).full);
        assert_eq!(inc.compiled(), &compile(&fewer));
        assert_eq!(inc.update(&fewer), Change::default());
    }

    #[test]
    fn random_relabels_under_random_policies_agree_with_a_full_compile() {
        use proptest::{collection::vec, prelude::*};
        // Four relabels, each of a pod (index into the standard model's
        // nine) to one of four label sets.
        let relabels = vec((0..9usize, 0..4u8), 4);
        let cases = (crate::compile::property::policy_sets(), relabels);
        crate::compile::property::check(120, cases, |(policies, relabels)| {
            let s = crate::compile::property::snapshot_with(policies);
            let mut inc = Incremental::new(s.clone());
            for (pod, set) in relabels {
                let pod = s.pods[pod].key();
                let new = match set {
                    0 => labels(&[("pod", "a")]),
                    1 => labels(&[("pod", "b"), ("extra", "1")]),
                    2 => labels(&[("pod", "fresh")]),
                    _ => labels(&[]),
                };
                inc.relabel_pod(&pod, new);
                let want = compile(inc.snapshot());
                for (k, v) in &want.endpoints {
                    prop_assert_eq!(
                        inc.compiled().endpoints.get(k),
                        Some(v),
                        "relabel {}: endpoint {}",
                        pod,
                        k
                    );
                }
                prop_assert!(inc.compiled() == &want, "relabel {}", pod);
            }
            Ok(())
        })
        .unwrap();
    }
}
