//! Bringing the compiled state to a new snapshot without compiling the
//! cluster again, and only for the pods this node enforces.
//!
//! A node enforces its own pods' endpoints, but must know every address's
//! identity. So the state keeps the identities of the whole cluster and
//! the endpoints of a scope (the placed pods), and a change costs what it
//! touches:
//! - a pod added, removed, relabelled or renumbered (its named ports), or a
//!   namespace relabelled (its pods' identity keys change): the holder counts of the identity keys
//!   move; keys that lost their last holder retire, new ones take their
//!   natural number; where that would renumber another key (a hash
//!   collision), everything is compiled again, so that numbers are always
//!   those a full compile gives;
//! - the rules that name a changed pod (before or after), and those of a
//!   changed policy, forget their peer sets;
//! - the endpoints in scope whose policies hold such a rule, that a changed
//!   policy selects (before or after), or that changed themselves, are
//!   compiled again, alone.
//!
//! A change of the ipBlock prefixes reshapes every identity key: it is a
//! full compile. The result is always `compile` of the new snapshot,
//! restricted to the scope; the tests check exactly that.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use ebpf_common::datapath::direction;

use super::{
    Compiled,
    tables::{Context, Tables, address_key, block_test, host},
};
use crate::{
    identity::{IdentityKey, natural, probe_next},
    model::{
        FastMap, FastSet, Pod, Policy, Snapshot, networkpolicy::PortRef, pod_object, policy::Kind,
    },
};

pub struct Incremental {
    snapshot: Arc<Snapshot>,
    tables: Tables,
    compiled: Compiled,
    /// How many pod addresses hold each label identity.
    holders: FastMap<IdentityKey, usize>,
    /// The pods whose endpoints are kept; `None`: every pod.
    scope: Option<BTreeSet<String>>,
    /// Where the kept pods sit in the snapshot's list: a change walks
    /// these, not the cluster. Found again when the scope moves or pods
    /// come or go.
    kept: Vec<usize>,
    /// Whether no two pods of the snapshot share a key (a full compile
    /// sorts duplicates out): a change that keeps every pod where it was
    /// keeps that.
    unique: bool,
    /// Every pod's key, where `unique`: a pod that comes is checked
    /// against it instead of indexing the cluster's pods again.
    keys: FastSet<String>,
    /// Per kept pod: the indexes of the policies that select it.
    selecting: HashMap<String, Vec<usize>>,
    /// The keys a collision pushed past their natural number, with theirs:
    /// few, and only a full compile makes them (a change gives a key its
    /// natural number or compiles everything), so they are found once
    /// rather than by hashing every key on every change that retires one.
    displaced: Vec<(IdentityKey, u32)>,
}

/// Where in `pods` the pods that `keep` holds sit.
fn positions(pods: &[Arc<Pod>], keep: impl Fn(&Arc<Pod>) -> bool) -> Vec<usize> {
    pods.iter()
        .enumerate()
        .filter(|(_, p)| keep(p))
        .map(|(i, _)| i)
        .collect()
}

/// What a change touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Endpoints whose policy differs now (or that are gone).
    pub endpoints: Vec<String>,
    /// Everything was compiled again.
    pub full: bool,
}

/// A pod before and after a change (`None`: absent).
type PodChange<'a> = (Option<&'a Pod>, Option<&'a Pod>);

/// What [`Incremental::by_object`] found.
enum Objects<'a> {
    /// The pods that differ, and every pod object of the new snapshot
    /// that the old one did not have (changed or not).
    Changed {
        changes: Vec<PodChange<'a>>,
        came: FastSet<usize>,
    },
    /// A key that came is held already: a full compile sorts it out.
    Duplicate,
}

/// What a change did to the identities.
#[derive(Default)]
struct Renumbered {
    /// Identities that lost their last holder.
    gone: BTreeSet<u32>,
    /// Identities that gained their first, each with one holder: the
    /// index of its change and the address.
    fresh: BTreeMap<u32, (usize, IpAddr)>,
}

impl Incremental {
    /// Every pod's endpoint.
    pub fn new(snapshot: impl Into<Arc<Snapshot>>) -> Self {
        Self::build(snapshot.into(), None)
    }

    /// The endpoints of the pods in `scope` only.
    pub fn scoped(snapshot: Arc<Snapshot>, scope: BTreeSet<String>) -> Self {
        Self::build(snapshot, Some(scope))
    }

    fn build(snapshot: Arc<Snapshot>, scope: Option<BTreeSet<String>>) -> Self {
        let tables = Tables::new(&snapshot);
        let mut holders: FastMap<IdentityKey, usize> = FastMap::default();
        for pod in &snapshot.pods {
            for ip in &pod.ips {
                *holders
                    .entry(address_key(&snapshot, &tables.prefixes, pod, *ip))
                    .or_default() += 1;
            }
        }
        let compiled = Compiled {
            identities: tables.identities.clone(),
            addresses: tables.addresses(),
            ..Compiled::default()
        };
        let keys: FastSet<String> = snapshot.pods.iter().map(|p| p.key()).collect();
        let unique = keys.len() == snapshot.pods.len();
        let mut me = Self {
            snapshot,
            tables,
            compiled,
            holders,
            scope,
            kept: Vec::new(),
            unique,
            keys: if unique { keys } else { FastSet::default() },
            selecting: HashMap::new(),
            displaced: Vec::new(),
        };
        me.displaced = me
            .tables
            .identities
            .iter()
            .filter(|(k, id)| **id != natural(k))
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        me.find_kept();
        let all: BTreeSet<String> = me.in_scope().map(Pod::key).collect();
        me.recompile(&all);
        me
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    fn kept(&self, key: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(key))
    }

    /// Finds the kept pods in the snapshot (one pass over the cluster,
    /// without building a key per pod).
    fn find_kept(&mut self) {
        let Some(scope) = &self.scope else {
            self.kept = (0..self.snapshot.pods.len()).collect();
            return;
        };
        // A fast hasher: every pod of the cluster is looked up.
        let mut by_namespace: FastMap<&str, FastSet<&str>> = FastMap::default();
        for key in scope {
            if let Some((ns, name)) = key.split_once('/') {
                by_namespace.entry(ns).or_default().insert(name);
            }
        }
        self.kept = positions(&self.snapshot.pods, |p| {
            by_namespace
                .get(p.namespace.as_str())
                .is_some_and(|names| names.contains(p.name.as_str()))
        });
    }

    /// [`Self::find_kept`] after pods came or went, from where the kept
    /// pods were in `old`: a pod that is the same object is kept as it
    /// was, and only the new objects (`came`) are looked up in the scope,
    /// so the cluster's pods are not read.
    fn find_kept_by_object(&mut self, old: &Snapshot, came: &FastSet<usize>) {
        let Some(scope) = &self.scope else {
            self.kept = (0..self.snapshot.pods.len()).collect();
            return;
        };
        let was_kept: FastSet<usize> = self
            .kept
            .iter()
            .map(|&i| pod_object(&old.pods[i]))
            .collect();
        self.kept = positions(&self.snapshot.pods, |p| {
            was_kept.contains(&pod_object(p))
                || (came.contains(&pod_object(p)) && scope.contains(&p.key()))
        });
    }

    /// The pods that differ between `old` and `new` when pods came or went,
    /// found by object: the pods of each that are not an object of the
    /// other, paired by key. `None` where this cannot tell (a namespace
    /// relabelled changes pods that are the same objects; an object listed
    /// twice; keys not known unique).
    fn by_object<'a>(&mut self, old: &'a Snapshot, new: &'a Snapshot) -> Option<Objects<'a>> {
        if !self.unique || old.pods.len() == new.pods.len() || old.namespaces != new.namespaces {
            return None;
        }
        let old_objects: FastSet<usize> = old.pods.iter().map(pod_object).collect();
        let new_objects: FastSet<usize> = new.pods.iter().map(pod_object).collect();
        if old_objects.len() != old.pods.len() || new_objects.len() != new.pods.len() {
            return None;
        }
        let mut gone: HashMap<String, &Pod> = old
            .pods
            .iter()
            .filter(|p| !new_objects.contains(&pod_object(p)))
            .map(|p| (p.key(), &**p))
            .collect();
        let mut changes = Vec::new();
        let mut added = Vec::new();
        let mut came = FastSet::default();
        for b in new
            .pods
            .iter()
            .filter(|p| !old_objects.contains(&pod_object(p)))
        {
            came.insert(pod_object(b));
            let key = b.key();
            match gone.remove(&key) {
                Some(a) => {
                    if a != &**b {
                        changes.push((Some(a), Some(&**b)));
                    }
                }
                None => {
                    changes.push((None, Some(&**b)));
                    added.push(key);
                }
            }
        }
        for key in gone.keys() {
            self.keys.remove(key);
        }
        changes.extend(gone.into_values().map(|a| (Some(a), None)));
        for key in added {
            // Held by a pod that stayed, or by another that came.
            if !self.keys.insert(key) {
                return Some(Objects::Duplicate);
            }
        }
        Some(Objects::Changed { changes, came })
    }

    fn in_scope(&self) -> impl Iterator<Item = &Pod> {
        self.kept.iter().map(|&i| &*self.snapshot.pods[i])
    }

    /// Keeps the endpoints of `scope` (and of no other pod) from now on.
    pub fn set_scope(&mut self, scope: BTreeSet<String>) -> Change {
        if self.scope.as_ref() == Some(&scope) {
            return Change::default();
        }
        let before = self.scope.replace(scope);
        self.find_kept();
        let fresh: BTreeSet<String> = self
            .in_scope()
            .map(Pod::key)
            .filter(|k| before.as_ref().is_some_and(|b| !b.contains(k)))
            .collect();
        self.settle(&fresh)
    }

    /// Drops the endpoints no longer kept, compiles those of `keys` again,
    /// and names every endpoint that changed.
    fn settle(&mut self, keys: &BTreeSet<String>) -> Change {
        let mut endpoints = self.drop_out_of_scope();
        endpoints.extend(self.recompile(keys));
        endpoints.sort();
        endpoints.dedup();
        Change {
            endpoints,
            full: false,
        }
    }

    /// Drops the endpoints of pods no longer kept or no longer there.
    fn drop_out_of_scope(&mut self) -> Vec<String> {
        let present: HashSet<String> = self.in_scope().map(Pod::key).collect();
        let gone: Vec<String> = self
            .compiled
            .endpoints
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for k in &gone {
            self.compiled.endpoints.remove(k);
            self.selecting.remove(k);
        }
        if !gone.is_empty() {
            self.refresh_policies();
        }
        gone
    }

    /// Brings the state to `snapshot`.
    pub fn update(&mut self, snapshot: Arc<Snapshot>) -> Change {
        if Arc::ptr_eq(&snapshot, &self.snapshot) {
            return Change::default();
        }
        let old = std::mem::replace(&mut self.snapshot, snapshot);
        let new = self.snapshot.clone();
        let Some(policies) = policy_changes(&old.policies, &new.policies) else {
            return self.full();
        };
        // The prefixes are every policy's blocks: where no changed policy
        // has one, before or after, they are what they were.
        if policies.blocks(&old.policies, &new.policies)
            && Tables::prefixes_of(&new) != self.tables.prefixes
        {
            return self.full();
        }
        let (pods, same_places, came) = match self.by_object(&old, &new) {
            Some(Objects::Changed { changes, came }) => (changes, false, Some(came)),
            Some(Objects::Duplicate) => return self.full(),
            None => {
                let Some((pods, same_places)) = pod_changes(&old, &new, self.unique) else {
                    return self.full();
                };
                if !same_places || !self.unique {
                    self.keys = new.pods.iter().map(|p| p.key()).collect();
                }
                (pods, same_places, None)
            }
        };
        self.unique = true;
        match came {
            Some(came) => self.find_kept_by_object(&old, &came),
            None if !same_places => self.find_kept(),
            None => {}
        }
        let namespaces_changed = old.namespaces != new.namespaces;
        if pods.is_empty() && policies.is_empty() && !namespaces_changed {
            return Change::default();
        }
        let Some(renumbered) = self.renumber(&old, &new, &pods) else {
            return self.full();
        };
        if namespaces_changed {
            self.tables.ns_labels = Tables::namespace_labels(&new);
        }
        if !policies.is_empty() {
            self.reindex_policies(&old.policies, &new);
        }
        let dirty = self.dirty(&old, &pods, &policies, &renumbered);
        self.settle(&dirty)
    }

    fn full(&mut self) -> Change {
        let before = std::mem::take(&mut self.compiled.endpoints);
        *self = Self::build(self.snapshot.clone(), self.scope.take());
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

    /// Moves the changed pods' addresses between identity keys (keys of
    /// the old snapshot's namespaces before, the new one's after); `None`
    /// when that would renumber a key a full compile would keep, or the
    /// counts are corrupt.
    fn renumber(
        &mut self,
        old: &Snapshot,
        new: &Snapshot,
        pods: &[PodChange<'_>],
    ) -> Option<Renumbered> {
        let prefixes = &self.tables.prefixes;
        let keys = |s: &Snapshot, pod: Option<&Pod>| -> Vec<(IpAddr, IdentityKey)> {
            pod.map(|p| {
                p.ips
                    .iter()
                    .map(|ip| (*ip, address_key(s, prefixes, p, *ip)))
                    .collect()
            })
            .unwrap_or_default()
        };
        let moves: Vec<_> = pods
            .iter()
            .map(|&(before, after)| (before, keys(old, before), after, keys(new, after)))
            .collect();
        // Each touched key's count before the change.
        let mut counted: FastMap<IdentityKey, usize> = FastMap::default();
        for (_, before, _, after) in &moves {
            for (_, k) in before.iter().chain(after) {
                counted
                    .entry(k.clone())
                    .or_insert_with(|| self.holders.get(k).copied().unwrap_or(0));
            }
        }
        for (_, before, _, after) in &moves {
            for (_, k) in before {
                match self.holders.get_mut(k) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => return None,
                }
            }
            for (_, k) in after {
                *self.holders.entry(k.clone()).or_default() += 1;
            }
        }
        let mut vanished = Vec::new();
        let mut appeared = Vec::new();
        for (k, was) in counted {
            let now = self.holders.get(&k).copied().unwrap_or(0);
            if now == 0 {
                self.holders.remove(&k);
            }
            match (was, now) {
                (0, 0) => {}
                (_, 0) => vanished.push(k),
                (0, _) => appeared.push(k),
                _ => {}
            }
        }
        if !self.numbering_holds(&vanished, &appeared) {
            return None;
        }
        let mut out = Renumbered::default();
        self.displaced.retain(|(k, _)| !vanished.contains(k));
        for k in &vanished {
            if let Some(id) = self.tables.identities.remove(k) {
                out.gone.insert(id);
            }
            self.compiled.identities.remove(k);
        }
        for k in &appeared {
            self.tables.identities.insert(k.clone(), natural(k));
            self.compiled.identities.insert(k.clone(), natural(k));
        }
        for (before, keys, _, _) in &moves {
            if let Some(p) = before {
                self.tables.pod_identity.remove(&p.key());
                for (ip, _) in keys {
                    // An ipBlock prefix of exactly this address is still there.
                    let net = host(*ip);
                    match self.tables.identities.get(&IdentityKey::Cidr(net)) {
                        Some(&id) if self.tables.prefixes.contains(&net) => {
                            self.compiled.addresses.insert(net, id);
                        }
                        _ => {
                            self.compiled.addresses.remove(&net);
                        }
                    }
                }
            }
        }
        let fresh_keys: HashSet<&IdentityKey> = appeared.iter().collect();
        for (i, (_, _, after, keys)) in moves.iter().enumerate() {
            if let Some(p) = after {
                let ids: Vec<(IpAddr, u32)> = keys
                    .iter()
                    .map(|(ip, k)| (*ip, self.tables.identities[k]))
                    .collect();
                for ((ip, id), (_, k)) in ids.iter().zip(keys) {
                    self.compiled.addresses.insert(host(*ip), *id);
                    if fresh_keys.contains(k) {
                        out.fresh.entry(*id).or_insert((i, *ip));
                    }
                }
                self.tables.pod_identity.insert(p.key(), ids);
            }
        }
        Some(out)
    }

    /// Whether removing `vanished` and adding `appeared` leaves every other
    /// key where a fresh allocation would put it.
    fn numbering_holds(&self, vanished: &[IdentityKey], appeared: &[IdentityKey]) -> bool {
        let ids = &self.tables.identities;
        let mut freed = BTreeSet::new();
        for v in vanished {
            let Some(&slot) = ids.get(v) else { continue };
            // A later key that probed past this slot would move into it.
            let moved = self.displaced.iter().any(|&(ref k, id)| {
                k > v && {
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
        if appeared.is_empty() {
            return true;
        }
        // Each new key's natural number, free of the others' and of every
        // key that stays: one walk of the numbers, without a set of them.
        let mut wanted = FastSet::default();
        if !appeared.iter().all(|k| wanted.insert(natural(k))) {
            return false;
        }
        !ids.values()
            .any(|id| wanted.contains(id) && !freed.contains(id))
    }

    /// The policies' index tables after policies changed; peer sets and
    /// keys of unchanged policies keep, by their new index.
    fn reindex_policies(&mut self, old: &[Arc<Policy>], new: &Snapshot) {
        let by_key: FastMap<_, usize> = new
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key_parts(), i))
            .collect();
        let moved: Vec<Option<usize>> = old
            .iter()
            .map(|p| {
                by_key
                    .get(&p.key_parts())
                    .copied()
                    .filter(|&j| same(&new.policies[j], p))
            })
            .collect();
        let mut kept: Vec<Option<(String, u32)>> = vec![None; new.policies.len()];
        for (i, j) in moved.iter().enumerate() {
            if let Some(j) = *j {
                kept[j] = Some(std::mem::take(&mut self.tables.policy_keys[i]));
            }
        }
        self.tables.reindex_policies_keeping(new, kept);
        let cache = std::mem::take(self.tables.peer_cache.get_mut());
        *self.tables.peer_cache.get_mut() = cache
            .into_iter()
            .filter_map(|((i, dir, r), ids)| Some(((moved[i]?, dir, r), ids)))
            .collect();
        for list in self.selecting.values_mut() {
            *list = list.iter().filter_map(|&i| moved[i]).collect();
        }
    }

    /// The endpoints in scope a change may have changed; brings the peer
    /// sets it changed up to date.
    ///
    /// Whether a rule names an address depends on the address's identity
    /// key only (namespace labels, pod labels, the longest ipBlock prefix
    /// holding it, the pod's named ports), so a rule's peer set changes only where an identity
    /// gains its first holder or loses its last: the set gains the fresh
    /// identities the rule names and drops the gone ones.
    fn dirty(
        &mut self,
        old: &Snapshot,
        pods: &[PodChange<'_>],
        policies: &PolicyChanges,
        renumbered: &Renumbered,
    ) -> BTreeSet<String> {
        let new = self.snapshot.clone();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let namespaces = changed_namespaces(old, &new);
        for (_, after) in pods {
            if let Some(p) = after.filter(|p| self.kept(&p.key())) {
                dirty.insert(p.key());
            }
        }
        // Which policies select a pod may change with its namespace's labels.
        for pod in self.in_scope() {
            if namespaces.contains(pod.namespace.as_str()) {
                dirty.insert(pod.key());
            }
        }
        // Pods a changed policy selects, before or now.
        let no_labels = crate::model::Labels::new();
        let changed: Vec<&Policy> = policies
            .new
            .iter()
            .map(|&j| &*new.policies[j])
            .chain(policies.old.iter().map(|&i| &*old.policies[i]))
            .collect();
        if !changed.is_empty() {
            for pod in self.in_scope() {
                let ns = self
                    .tables
                    .ns_labels
                    .get(&pod.namespace)
                    .unwrap_or(&no_labels);
                if changed
                    .iter()
                    .any(|p| p.selects(&pod.namespace, ns, &pod.labels))
                {
                    dirty.insert(pod.key());
                }
            }
        }
        // A Namespace object that came or went may leave its pods' keys as
        // they were (no labels of its own), but a namespace selector names
        // only namespaces that exist.
        let came_or_went = !old.namespaces.keys().eq(new.namespaces.keys());
        let touched = self.patch_peer_sets(pods, renumbered, came_or_went);
        for (key, list) in &self.selecting {
            if list.iter().any(|i| touched.contains(i)) {
                dirty.insert(key.clone());
            }
        }
        dirty
    }

    /// Brings the cached peer sets of the kept pods' policies up to date
    /// (see [`Self::dirty`]); rules with named egress ports, which resolve
    /// on each destination pod, are compiled afresh where they name a
    /// changed pod, and rules with a namespace selector where a Namespace
    /// object came or went. Returns the policies whose rules changed.
    fn patch_peer_sets(
        &mut self,
        pods: &[PodChange<'_>],
        renumbered: &Renumbered,
        namespaces_came_or_went: bool,
    ) -> BTreeSet<usize> {
        let snapshot = self.snapshot.clone();
        let cx = Context {
            snapshot: &snapshot,
            t: &self.tables,
        };
        let used: BTreeSet<usize> = self.selecting.values().flatten().copied().collect();
        let mut touched = BTreeSet::new();
        let mut patches: Vec<((usize, u32, usize), Vec<u32>)> = Vec::new();
        let mut forget = Vec::new();
        for &index in &used {
            let policy = &snapshot.policies[index];
            let ns = policy.namespace.as_deref();
            for dir in [direction::INGRESS, direction::EGRESS] {
                let egress = dir == direction::EGRESS;
                for (r, rule) in policy.rules(egress).into_iter().flatten().enumerate() {
                    let named = egress
                        && rule
                            .ports
                            .iter()
                            .any(|p| matches!(p.port, Some(PortRef::Name(_))));
                    let names = |pod: &Pod, ip: Option<&IpAddr>| {
                        rule.peers.is_empty()
                            || rule.peers.iter().any(|peer| match &peer.ip_block {
                                Some(block) => {
                                    let inside = block_test(block);
                                    match ip {
                                        Some(ip) => inside(ip),
                                        None => pod.ips.iter().any(inside),
                                    }
                                }
                                None => cx.peer_admits(ns, peer, pod),
                            })
                    };
                    let by_namespaces = namespaces_came_or_went
                        && rule
                            .peers
                            .iter()
                            .any(|p| p.ip_block.is_none() && p.namespace_selector.is_some());
                    if by_namespaces
                        || named
                            && pods.iter().any(|(a, b)| {
                                a.is_some_and(|p| names(p, None))
                                    || b.is_some_and(|p| names(p, None))
                            })
                    {
                        forget.push((index, dir, r));
                        touched.insert(index);
                        continue;
                    }
                    if rule.peers.is_empty() {
                        continue;
                    }
                    let gained: Vec<u32> = renumbered
                        .fresh
                        .iter()
                        .filter(|(_, (i, ip))| pods[*i].1.is_some_and(|p| names(p, Some(ip))))
                        .map(|(id, _)| *id)
                        .collect();
                    let cached = cx.t.peer_cache.borrow();
                    let lost = cached
                        .get(&(index, dir, r))
                        .is_some_and(|ids| ids.iter().any(|id| renumbered.gone.contains(id)));
                    if lost || !gained.is_empty() {
                        patches.push(((index, dir, r), gained));
                        touched.insert(index);
                    }
                }
            }
        }
        let cache = self.tables.peer_cache.get_mut();
        for at in forget {
            cache.remove(&at);
        }
        // Only the rules of policies a kept pod uses are patched: the rest
        // go, or a scope that took such a policy up again would find them
        // as they were before this change.
        cache.retain(|(index, _, _), _| used.contains(index));
        for (at, gained) in patches {
            if let Some(ids) = cache.get_mut(&at) {
                ids.retain(|id| !renumbered.gone.contains(id));
                ids.extend(gained);
                ids.sort_unstable();
                ids.dedup();
            }
        }
        touched
    }

    /// Compiles the endpoints of `keys` (those in scope and present) again;
    /// returns those that changed.
    fn recompile(&mut self, keys: &BTreeSet<String>) -> Vec<String> {
        if keys.is_empty() {
            return Vec::new();
        }
        let snapshot = self.snapshot.clone();
        let cx = Context {
            snapshot: &snapshot,
            t: &self.tables,
        };
        let mut changed = Vec::new();
        for &i in &self.kept.clone() {
            let pod = &snapshot.pods[i];
            let key = pod.key();
            if !keys.contains(&key) {
                continue;
            }
            let (ep, selecting, _) = cx.endpoint(pod);
            self.selecting.insert(key.clone(), selecting);
            if self.compiled.endpoints.get(&key) != Some(&ep) {
                self.compiled.endpoints.insert(key.clone(), ep);
                changed.push(key);
            }
        }
        self.refresh_policies();
        changed
    }

    /// The ids of the policies that select a kept pod.
    fn refresh_policies(&mut self) {
        let used: BTreeSet<usize> = self.selecting.values().flatten().copied().collect();
        self.compiled.policies = used
            .into_iter()
            .map(|i| self.tables.policy_keys[i].clone())
            .collect();
    }
}

/// The namespaces added, removed or relabelled.
fn changed_namespaces<'a>(old: &'a Snapshot, new: &'a Snapshot) -> FastSet<&'a str> {
    old.namespaces
        .keys()
        .chain(new.namespaces.keys())
        .filter(|n| old.namespaces.get(*n) != new.namespaces.get(*n))
        .map(String::as_str)
        .collect()
}

/// Whether two shared objects are equal, by pointer first: a source
/// hands over the same object while it did not change.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The snapshot's pods by key; `None` when a key repeats.
fn pod_index(s: &Snapshot) -> Option<FastMap<(&str, &str), &Pod>> {
    let mut m = FastMap::with_capacity_and_hasher(s.pods.len(), Default::default());
    for p in &s.pods {
        if m.insert((p.namespace.as_str(), p.name.as_str()), &**p)
            .is_some()
        {
            return None;
        }
    }
    Some(m)
}

/// The pods that differ between `old` and `new`, each before and after
/// (a namespace whose labels changed changes all of its pods' identity
/// keys), and whether every pod kept its place in the list; `None` when a
/// key repeats, which a full compile sorts out. `unique`: `old` has no
/// repeated key.
fn pod_changes<'a>(
    old: &'a Snapshot,
    new: &'a Snapshot,
    unique: bool,
) -> Option<(Vec<PodChange<'a>>, bool)> {
    let relabelled = changed_namespaces(old, new);
    // Asked of every pod of the cluster: a few names are compared as they
    // are rather than hashed 10,000 times.
    const FEW: usize = 4;
    let few: Option<Vec<&str>> =
        (relabelled.len() <= FEW).then(|| relabelled.iter().copied().collect());
    let relabelled_ns = |ns: &str| match &few {
        Some(few) => few.contains(&ns),
        None => relabelled.contains(ns),
    };
    // The usual case: the same pods in the same places, a few changed.
    // Their keys are then as unique as the old ones.
    let same_places =
        old.pods.len() == new.pods.len()
            && old.pods.iter().zip(&new.pods).all(|(a, b)| {
                Arc::ptr_eq(a, b) || (a.namespace == b.namespace && a.name == b.name)
            });
    if same_places && (unique || pod_index(new).is_some()) {
        let changes = old
            .pods
            .iter()
            .zip(&new.pods)
            .filter(|(a, b)| !same(a, b) || relabelled_ns(&a.namespace))
            .map(|(a, b)| (Some(&**a), Some(&**b)))
            .collect();
        return Some((changes, true));
    }
    let (before, after) = (pod_index(old)?, pod_index(new)?);
    let mut out = Vec::new();
    for (k, a) in &before {
        match after.get(k) {
            Some(b) if (std::ptr::eq(*a, *b) || a == b) && !relabelled_ns(k.0) => {}
            b => out.push((Some(*a), b.copied())),
        }
    }
    for (k, b) in &after {
        if !before.contains_key(k) {
            out.push((None, Some(*b)));
        }
    }
    Some((out, false))
}

/// The policies that differ between two snapshots, by their places in
/// each: those removed or changed in the old list, those added or changed
/// in the new one.
#[derive(Debug, Default, PartialEq, Eq)]
struct PolicyChanges {
    old: Vec<usize>,
    new: Vec<usize>,
}

impl PolicyChanges {
    fn is_empty(&self) -> bool {
        self.old.is_empty() && self.new.is_empty()
    }

    /// Whether a changed policy, as it was or as it is, has an ipBlock.
    fn blocks(&self, old: &[Arc<Policy>], new: &[Arc<Policy>]) -> bool {
        let has = |p: &Policy| super::tables::blocks(p).next().is_some();
        self.old.iter().any(|&i| has(&old[i])) || self.new.iter().any(|&j| has(&new[j]))
    }
}

/// The policies that differ between `old` and `new` (added, removed or
/// changed); `None` when a key repeats.
fn policy_changes(old: &[Arc<Policy>], new: &[Arc<Policy>]) -> Option<PolicyChanges> {
    // The usual case: a change of pods or namespaces only.
    if old.len() == new.len() && old.iter().zip(new).all(|(a, b)| Arc::ptr_eq(a, b)) {
        return Some(PolicyChanges::default());
    }
    fn index(list: &[Arc<Policy>]) -> Option<FastMap<(Kind, &str, &str), usize>> {
        let mut m = FastMap::with_capacity_and_hasher(list.len(), Default::default());
        for (i, p) in list.iter().enumerate() {
            if m.insert(p.key_parts(), i).is_some() {
                return None;
            }
        }
        Some(m)
    }
    let (before, after) = (index(old)?, index(new)?);
    let mut out = PolicyChanges::default();
    for (k, &i) in &before {
        match after.get(k) {
            Some(&j) if same(&old[i], &new[j]) => {}
            Some(&j) => {
                out.old.push(i);
                out.new.push(j);
            }
            None => out.old.push(i),
        }
    }
    out.new.extend(
        after
            .iter()
            .filter(|(k, _)| !before.contains_key(*k))
            .map(|(_, &j)| j),
    );
    out.old.sort_unstable();
    out.new.sort_unstable();
    Some(out)
}

#[cfg(test)]
mod tests;
