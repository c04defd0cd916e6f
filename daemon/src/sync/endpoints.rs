//! The policy maps' share of a pass: identities one by one, and each
//! endpoint's policy by a whole-generation swap where its live generation
//! differs from the desired entries, or by an in-place patch where only
//! the entries of identities that moved differ (see [`bring_expanded`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use aya::maps::lpm_trie::Key;
use ebpf_common::datapath::{
    EndpointValue, PolicyKey, PolicyValue, action, endpoint_flags, policy_flags,
};
use ipnet::IpNet;

use super::{Report, prefilter};
use crate::{
    compile::{
        EndpointPolicy, PolicyEntry, Sources,
        desired::{Desired, Placed},
    },
    datapath::{
        DatapathError, DatapathMaps,
        maps::{HeldPolicy, lookup_flags, policy_keys, sourced},
    },
    model::FastSet,
};

/// What a pass that failed nothing left in the identity and policy maps,
/// for the next pass to trust instead of reading the maps (see
/// `Syncer::apply_trusting`).
#[derive(Clone, Default)]
pub struct Written {
    addresses: BTreeMap<IpNet, u32>,
    /// By name.
    endpoints: BTreeMap<String, Recorded>,
    /// By name: an endpoint's policy as map entries ([`expand`]) under the
    /// generation it was written to, where a pass had them at hand. The
    /// next change to that endpoint starts from them instead of expanding
    /// the old policy again: a relabel changes most endpoints, pass after
    /// pass.
    expanded: Expanded,
}

/// Endpoints' entries as [`expand`] gives them, by name, with their
/// generation.
pub(super) type Expanded = HashMap<String, (u8, Arc<Entries>)>;

/// An endpoint's policy as map entries, in [`slot`] order.
type Entries = Vec<(Key<PolicyKey>, PolicyValue)>;

impl std::fmt::Debug for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("addresses", &self.addresses)
            .field("endpoints", &self.endpoints)
            .field("expanded", &self.expanded.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One endpoint as a pass wrote it.
#[derive(Clone, Debug)]
struct Recorded {
    ifindex: u32,
    endpoint: u32,
    sources: Sources,
    policy: EndpointPolicy,
    /// The endpoint value's flags for `policy`, except the sources' flags:
    /// its own and those its entries call for ([`lookup_flags`], a walk of
    /// every entry, done once per policy rather than once per pass).
    flags: u32,
}

impl Written {
    /// What a pass that failed nothing wrote: `desired`, with the
    /// endpoints' entries the pass expanded or kept from its record;
    /// `before`, the record it started from, where it had one.
    pub(super) fn of(desired: &Desired<'_>, expanded: Expanded, before: Option<&Written>) -> Self {
        Self {
            addresses: desired.addresses.clone(),
            endpoints: desired
                .endpoints
                .iter()
                .map(|(name, p)| {
                    let policy = p.policy;
                    let flags = before
                        .and_then(|w| w.endpoints.get(name))
                        .filter(|r| {
                            r.policy.flags == policy.flags
                                && Arc::ptr_eq(&r.policy.entries, &policy.entries)
                        })
                        .map_or_else(|| policy.flags | lookup_flags(&policy.entries), |r| r.flags);
                    let entry = Recorded {
                        ifindex: p.ifindex,
                        endpoint: p.endpoint,
                        sources: p.sources,
                        policy: policy.clone(),
                        flags,
                    };
                    (name.clone(), entry)
                })
                .collect(),
            expanded,
        }
    }

    /// The live endpoint of every ifindex this record or `desired` names
    /// (one lookup each).
    fn live(
        &self,
        maps: &DatapathMaps,
        desired: &Desired<'_>,
    ) -> Result<BTreeMap<u32, EndpointValue>, DatapathError> {
        let ifindexes: BTreeSet<u32> = self
            .endpoints
            .values()
            .map(|r| r.ifindex)
            .chain(desired.endpoints.values().map(|p| p.ifindex))
            .collect();
        let mut live = BTreeMap::new();
        for ifindex in ifindexes {
            if let Some(value) = maps.endpoint(ifindex)? {
                live.insert(ifindex, value);
            }
        }
        Ok(live)
    }

    /// The policy entries the maps hold by this record: each endpoint's
    /// policy under the generation `live` says is in force, the other
    /// generation empty (a pass that failed nothing leaves it so); only for
    /// the endpoints `desired` changes or drops, as the others are not
    /// touched. `None` when `live` disagrees with the record about any
    /// endpoint.
    fn held(
        &self,
        live: &BTreeMap<u32, EndpointValue>,
        desired: &Desired<'_>,
    ) -> Option<HeldPolicy> {
        let mut held = HeldPolicy::new();
        for (name, r) in &self.endpoints {
            let Recorded {
                ifindex,
                endpoint,
                sources,
                policy,
                flags,
            } = r;
            let value = live.get(ifindex)?;
            if value.endpoint != *endpoint
                || value.flags & !endpoint_flags::SOURCES != *flags
                || sourced(*value, sources) != *value
            {
                return None;
            }
            if desired
                .endpoints
                .get(name)
                .is_some_and(|p| self.records(name, p))
            {
                continue;
            }
            let generation = value.generation();
            let entries = match self.expanded.get(name) {
                Some((g, entries)) if *g == generation => entries.clone(),
                _ => Arc::new(expand(*endpoint, generation, policy)),
            };
            held.insert((*endpoint, generation), entries);
        }
        Some(held)
    }

    /// The policy the last pass wrote to the endpoint `name`, with its
    /// entries, where they are what `live`'s generation holds: the same
    /// endpoint id and generation, and the very entries `held` has for it
    /// (taken from this record, not read from the maps).
    fn record_of(
        &self,
        name: &str,
        live: &EndpointValue,
        held: &HeldPolicy,
    ) -> Option<(&EndpointPolicy, &Arc<Entries>)> {
        let Recorded {
            endpoint, policy, ..
        } = self.endpoints.get(name)?;
        let (generation, entries) = self.expanded.get(name)?;
        let holds = held.get(&(*endpoint, *generation))?;
        (*endpoint == live.endpoint
            && *generation == live.generation()
            && Arc::ptr_eq(holds, entries))
        .then_some((policy, entries))
    }

    /// Whether `desired` has exactly these endpoints, as written (see
    /// [`Self::records`]).
    fn same_endpoints(&self, desired: &Desired<'_>) -> bool {
        self.endpoints.len() == desired.endpoints.len()
            && desired
                .endpoints
                .iter()
                .all(|(name, p)| self.records(name, p))
    }

    /// Whether the last pass wrote the endpoint `name` just as `placed`
    /// says: the same interface, id, sources and policy.
    fn records(&self, name: &str, placed: &Placed<'_>) -> bool {
        self.endpoints.get(name).is_some_and(|r| {
            r.ifindex == placed.ifindex
                && r.endpoint == placed.endpoint
                && r.sources == placed.sources
                && r.policy == *placed.policy
        })
    }
}

/// One step of a walk of two sequences sorted alike.
enum Merged<A, B> {
    /// Only in the left one.
    Left(A),
    /// Only in the right one.
    Right(B),
    /// In both, by `order`.
    Both(A, B),
}

/// Walks `left` and `right`, each sorted by what `order` compares, side by
/// side: every item is visited once, in sequence, rather than searched
/// for in the other.
fn merged<A, B>(
    left: impl IntoIterator<Item = A>,
    right: impl IntoIterator<Item = B>,
    order: impl Fn(&A, &B) -> std::cmp::Ordering,
) -> impl Iterator<Item = Merged<A, B>> {
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    std::iter::from_fn(move || {
        let order = match (left.peek(), right.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => order(a, b),
        };
        Some(match order {
            std::cmp::Ordering::Less => Merged::Left(left.next()?),
            std::cmp::Ordering::Greater => Merged::Right(right.next()?),
            std::cmp::Ordering::Equal => Merged::Both(left.next()?, right.next()?),
        })
    })
}

/// How the identity map must change: the entries to write (an address
/// new to the map or with another identity), in address order, and the
/// addresses to remove.
#[derive(Default)]
struct AddressDiff {
    write: Vec<(IpNet, u32)>,
    remove: Vec<IpNet>,
}

impl AddressDiff {
    /// One walk of both maps side by side in their shared key order (a
    /// relabel's pass did 2 x 10,000 tree searches for a handful of
    /// changes).
    fn of(held: &BTreeMap<IpNet, u32>, desired: &BTreeMap<IpNet, u32>) -> Self {
        let mut diff = Self::default();
        for step in merged(held, desired, |(h, _), (d, _)| h.cmp(d)) {
            match step {
                Merged::Left((h, _)) => diff.remove.push(*h),
                Merged::Right((d, &id)) => diff.write.push((*d, id)),
                Merged::Both((_, was), (d, &id)) if *was != id => diff.write.push((*d, id)),
                Merged::Both(..) => {}
            }
        }
        diff
    }

    fn is_empty(&self) -> bool {
        self.write.is_empty() && self.remove.is_empty()
    }
}

/// One pass over the maps, with what it read of them before writing.
pub(super) struct Pass<'p> {
    maps: &'p mut DatapathMaps,
    desired: &'p Desired<'p>,
    report: &'p mut Report,
    /// The identities the maps held when the pass began.
    held_identities: std::borrow::Cow<'p, BTreeMap<IpNet, u32>>,
    /// The addresses whose identity the pass writes (new or moved), and
    /// those it removes: the difference of the held and desired maps.
    identity_diff: AddressDiff,
    /// What the last pass wrote, where this pass trusts it.
    trusted: Option<&'p Written>,
    pod_denies: prefilter::PodDenies,
    /// The endpoints this pass found up to date or patched, as entries,
    /// and those it left as the record has them with the record's.
    expanded: Expanded,
}

impl<'p> Pass<'p> {
    /// Reads the maps, or, with `trusted`, takes them to hold what the last
    /// pass wrote.
    pub(super) fn read(
        maps: &'p mut DatapathMaps,
        desired: &'p Desired<'p>,
        report: &'p mut Report,
        trusted: Option<&'p Written>,
    ) -> Result<Self, DatapathError> {
        report.endpoint_ids = desired
            .endpoints
            .iter()
            .map(|(name, placed)| (name.clone(), placed.endpoint))
            .collect();
        let held_identities = match trusted {
            Some(w) => std::borrow::Cow::Borrowed(&w.addresses),
            None => std::borrow::Cow::Owned(maps.identities()?),
        };
        Ok(Self {
            held_identities,
            identity_diff: AddressDiff::default(),
            maps,
            desired,
            report,
            trusted,
            pod_denies: prefilter::PodDenies::default(),
            expanded: Expanded::new(),
        })
    }

    /// Identities first: new endpoints' entries name them. A full map
    /// fails every write after the first: one error and a count, not one
    /// line per address in the log and the status.
    fn identities_in(&mut self) {
        self.identity_diff = AddressDiff::of(&self.held_identities, self.desired.addresses);
        let errors = self.maps.set_identities(&self.identity_diff.write);
        let failed = errors.len();
        self.report.identities_written += self.identity_diff.write.len() - failed;
        if let Some(first) = errors.first() {
            self.report.errors.push(first.to_string());
        }
        if failed > 1 {
            self.report.errors.push(format!(
                "{} more addresses' identities not written (the first failure is above)",
                failed - 1
            ));
        }
    }

    /// The identities no address held when the pass began, and those no
    /// address holds when it ends: the peers of in-place patches.
    fn moved_identities(&self) -> HashSet<u32> {
        // Where no address changed, the two sets are the same.
        if self.identity_diff.is_empty() {
            return HashSet::new();
        }
        // A cluster's worth of numbers each: a fast hasher.
        let before: FastSet<u32> = self.held_identities.values().copied().collect();
        let after: FastSet<u32> = self.desired.addresses.values().copied().collect();
        before.symmetric_difference(&after).copied().collect()
    }

    /// Swaps every endpoint whose live state differs from the desired one,
    /// or patches it in place where that is as safe (see [`bring_expanded`]).
    /// `recorded`: the last pass's record, where `held` was taken from it.
    fn swap_endpoints(
        &mut self,
        live: &BTreeMap<u32, EndpointValue>,
        held: &HeldPolicy,
        recorded: Option<&Written>,
    ) {
        let moved = self.moved_identities();
        for (name, placed) in &self.desired.endpoints {
            let &Placed {
                ifindex,
                endpoint,
                policy,
                sources,
            } = placed;
            if let Some(w) = self.trusted.filter(|w| w.records(name, placed)) {
                // Written so by the last pass, which failed nothing.
                if let Some(entries) = w.expanded.get(name) {
                    self.expanded.insert(name.clone(), entries.clone());
                }
                continue;
            }
            if let Some(cur) = live.get(&ifindex) {
                let record = recorded.and_then(|w| w.record_of(name, cur, held));
                let (bring, wants) = if sourced(*cur, &sources) == *cur {
                    bring_expanded(cur, endpoint, policy, held, &moved, record)
                } else {
                    // New sources are a new endpoint value: a swap writes it.
                    (Bring::Swap, None)
                };
                if let (Some(wants), Bring::UpToDate | Bring::Patch(_)) = (wants, &bring) {
                    self.expanded
                        .insert(name.clone(), (cur.generation(), wants));
                }
                match bring {
                    Bring::UpToDate => {
                        // Its slot of the programs' index, repaired if need be.
                        if let Err(e) = self.maps.index_endpoint(ifindex, Some(*cur)) {
                            self.report.errors.push(format!("{name}: {e}"));
                        }
                        continue;
                    }
                    Bring::Patch(patch) => {
                        // Tracked flows and cached verdicts are judged again
                        // by the epoch the identity change brings at the end
                        // of the pass.
                        match self.maps.patch_policy(
                            endpoint,
                            cur.generation(),
                            &patch.add,
                            &patch.remove,
                        ) {
                            Ok(()) => self.report.endpoints_written.push(name.clone()),
                            Err(e) => self.report.errors.push(format!("{name}: {e}")),
                        }
                        continue;
                    }
                    Bring::Swap => {}
                }
            }
            match self.maps.replace_policy_held(
                ifindex,
                endpoint,
                policy.flags,
                &policy.entries,
                &sources,
                Some(held),
            ) {
                Ok(_) => self.report.endpoints_written.push(name.clone()),
                Err(e) => self.report.errors.push(format!("{name}: {e}")),
            }
        }
    }

    /// Removes the endpoints on ifindexes that nothing desired holds, with
    /// both their generations.
    fn remove_unheld(&mut self, live: &BTreeMap<u32, EndpointValue>, held: &HeldPolicy) {
        let placed: BTreeSet<u32> = self.desired.endpoints.values().map(|p| p.ifindex).collect();
        for (&ifindex, value) in live {
            if placed.contains(&ifindex) {
                continue;
            }
            match self.maps.remove_endpoint(ifindex) {
                Ok(()) => self.report.endpoints_removed.push(ifindex),
                Err(e) => self.report.errors.push(e.to_string()),
            }
            for generation in [0, 1] {
                if let Err(e) = self
                    .maps
                    .remove_generation(value.endpoint, generation, Some(held))
                {
                    self.report.errors.push(e.to_string());
                }
            }
        }
    }

    /// Identities last out: nothing refers to them any more.
    fn identities_out(&mut self) {
        let remove = std::mem::take(&mut self.identity_diff.remove);
        let errors = self.maps.remove_identities(&remove);
        self.report.identities_removed += remove.len() - errors.len();
        self.report
            .errors
            .extend(errors.into_iter().map(|e| e.to_string()));
    }
}

impl Pass<'_> {
    /// The endpoints' entries this pass expanded, for [`Written::of`].
    pub(super) fn into_expanded(self) -> Expanded {
        self.expanded
    }
}

impl prefilter::Steps for Pass<'_> {
    fn retire_stale_denies(&mut self) -> Result<(), DatapathError> {
        self.pod_denies = prefilter::retire(self.maps, self.desired.pod_denies.as_ref())?;
        Ok(())
    }

    fn swap_policies(&mut self) -> Result<(), DatapathError> {
        self.identities_in();
        // The policy maps are read (every entry of every endpoint) only
        // where an endpoint may need a swap or a removal.
        let unchanged = self.trusted.is_some_and(|w| w.same_endpoints(self.desired));
        let known = match self.trusted {
            Some(w) if !unchanged => {
                let live = w.live(self.maps, self.desired)?;
                w.held(&live, self.desired).map(|held| (live, held))
            }
            _ => None,
        };
        // Where the record agrees with the maps, it is what they hold.
        let recorded = known.as_ref().and(self.trusted);
        let read = match known {
            Some(known) => Some(known),
            None if unchanged => None,
            None => Some((self.maps.endpoints()?, self.maps.held_policy()?)),
        };
        if let Some((live, held)) = read {
            self.swap_endpoints(&live, &held, recorded);
            self.remove_unheld(&live, &held);
        } else if let Some(w) = self.trusted {
            // Every endpoint as the record has it.
            self.expanded = w.expanded.clone();
        }
        self.identities_out();
        // Flows with a peer whose identity changed are judged again.
        if self.report.identities_written + self.report.identities_removed > 0
            && let Err(e) = self.maps.next_epoch()
        {
            self.report.errors.push(e.to_string());
        }
        Ok(())
    }

    fn add_new_denies(&mut self) -> Result<(), DatapathError> {
        prefilter::add(self.maps, &self.pod_denies)
    }

    fn report(&mut self) -> &mut Report {
        self.report
    }
}

/// What an in-place patch writes and removes, in that order.
#[derive(Default)]
struct Patch {
    add: Vec<(Key<PolicyKey>, PolicyValue)>,
    remove: Vec<Key<PolicyKey>>,
}

impl Patch {
    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// How a live endpoint comes to hold a desired policy.
enum Bring {
    UpToDate,
    Patch(Patch),
    /// Every entry written again under the other generation, then the
    /// endpoint flipped to it: a packet sees the old policy or the new.
    Swap,
}

/// Whether the entry takes traffic away: written first, removed last.
fn restrictive(v: &PolicyValue) -> bool {
    v.action == action::DENY && v.flags & policy_flags::AUDIT == 0
}

/// Where an entry sorts: by what the maps key it by (the endpoint and
/// generation are the same for one endpoint's entries).
fn slot(k: &Key<PolicyKey>) -> (u32, u32, u8, u8, [u8; 2]) {
    let d = k.data();
    (k.prefix_len(), d.peer, d.direction, d.protocol, d.port)
}

/// The endpoint's entries under `generation` as the maps hold them, in
/// [`slot`] order: one value per key, the last written.
fn expand(
    endpoint: u32,
    generation: u8,
    policy: &EndpointPolicy,
) -> Vec<(Key<PolicyKey>, PolicyValue)> {
    expand_entries(endpoint, generation, &policy.entries)
}

/// [`expand`] of a list of entries.
fn expand_entries(
    endpoint: u32,
    generation: u8,
    list: &[PolicyEntry],
) -> Vec<(Key<PolicyKey>, PolicyValue)> {
    // Most entries are one key each: sized for that, the vector is not
    // grown (and copied) a dozen times over an endpoint's thousands.
    let mut entries: Vec<(Key<PolicyKey>, PolicyValue)> = Vec::with_capacity(list.len());
    entries.extend(
        list.iter()
            .flat_map(|e| policy_keys(endpoint, generation, e).map(move |k| (k, e.value))),
    );
    // Reversed, so that a stable sort puts the last written first of its run.
    entries.reverse();
    entries.sort_by_key(|(k, _)| slot(k));
    entries.dedup_by_key(|(k, _)| slot(k));
    entries
}

/// A policy's entries of one direction and peer: the keys they expand to
/// are theirs alone (a key names its direction and peer), so such a group
/// can be expanded, and compared, apart from the rest.
type Group<'a> = ((u32, u32), &'a [PolicyEntry]);

/// The groups of a compiled (sorted) list of entries, in order.
fn groups(entries: &[PolicyEntry]) -> impl Iterator<Item = Group<'_>> {
    entries
        .chunk_by(|a, b| (a.direction, a.peer) == (b.direction, b.peer))
        .map(|g| ((g[0].direction, g[0].peer), g))
}

/// How the endpoint's live generation comes to hold `want`.
///
/// In place, where the endpoint and its flags are unchanged and every entry
/// that differs has a `moved` peer, one that no address held before the
/// pass (a relabelled pod's new identity) or that none holds after it (its
/// old one). A packet sees its peer's entries only, or after a miss the
/// any-peer ones, so the endpoint's other peers never see the patch; a
/// moved peer's packets see, while it is written, its entries in part.
/// Denies come first when written and last when removed: so any part
/// gives the peer the old verdict, the new one, the any-peer one where the
/// new one allows, or a drop; never an allow the new entries deny. The
/// entries the compiler gives are final for what they cover (the longest
/// match wins), which is what makes a part safe to read.
///
/// A relabel changes the peer sets of most endpoints by one identity: a
/// patch writes those few entries instead of every endpoint's whole
/// policy twice.
///
/// `record`: the policy the last pass wrote to the live generation, with
/// its entries as the generation holds them (`held`'s, in [`slot`]
/// order). With it, only the groups of entries that differ from it are
/// expanded (a relabel's few peers of an endpoint's thousands of
/// entries); without it, `want` is expanded whole and compared with
/// `held`. Both give the same answer.
///
/// Also returns `want` as the entries of the live generation, where it
/// expanded it (the next pass starts from them, see [`Written`]).
fn bring_expanded(
    cur: &EndpointValue,
    endpoint: u32,
    want: &EndpointPolicy,
    held: &HeldPolicy,
    moved: &HashSet<u32>,
    record: Option<(&EndpointPolicy, &Arc<Entries>)>,
) -> (Bring, Option<Arc<Entries>>) {
    // The sources' flags are the caller's to compare.
    let flags = cur.flags & !endpoint_flags::SOURCES;
    if cur.endpoint != endpoint || flags != want.flags | lookup_flags(&want.entries) {
        return (Bring::Swap, None);
    }
    let generation = cur.generation();
    // The groups are runs of the compiler's order; a list in another
    // order (none the compiler gives) is expanded whole instead.
    let grouped = |p: &EndpointPolicy| p.entries.is_sorted_by_key(|e| (e.direction, e.peer));
    if let Some((was, holds)) = record
        && grouped(was)
        && grouped(want)
    {
        return bring_by_groups(endpoint, generation, was, holds, want, moved);
    }
    // A record's entries come sorted (`expand`), the maps' own do not.
    let holds: &[(Key<PolicyKey>, PolicyValue)] = held
        .get(&(endpoint, generation))
        .map_or(&[], |entries| entries.as_slice());
    let sorted;
    let holds = if holds.is_sorted_by_key(|(k, _)| slot(k)) {
        holds
    } else {
        sorted = {
            let mut v = holds.to_vec();
            v.sort_by_key(|(k, _)| slot(k));
            v
        };
        &sorted
    };
    let wants = Arc::new(expand(endpoint, generation, want));
    match patch_between(holds, &wants, moved) {
        Some(patch) if patch.is_empty() => (Bring::UpToDate, Some(wants)),
        Some(patch) => (Bring::Patch(patch), Some(wants)),
        None => (Bring::Swap, None),
    }
}

/// [`bring_expanded`] from the record: `holds` is `was` expanded under
/// `generation`, in [`slot`] order (as [`expand`] gives it, and as this
/// function keeps it).
fn bring_by_groups(
    endpoint: u32,
    generation: u8,
    was: &EndpointPolicy,
    holds: &Arc<Entries>,
    want: &EndpointPolicy,
    moved: &HashSet<u32>,
) -> (Bring, Option<Arc<Entries>>) {
    // A relabel's one or two groups, looked up for every entry held: a
    // sorted list searched by halves costs less than hashing each.
    let mut changed: Vec<(u32, u32)> = Vec::new();
    let (mut old_entries, mut new_entries) = (Vec::new(), Vec::new());
    let steps = merged(
        groups(&was.entries),
        groups(&want.entries),
        |(a, _), (b, _)| a.cmp(b),
    );
    for step in steps {
        match step {
            Merged::Left((at, old)) => {
                changed.push(at);
                old_entries.extend_from_slice(old);
            }
            Merged::Right((at, new)) => {
                changed.push(at);
                new_entries.extend_from_slice(new);
            }
            Merged::Both((at, old), (_, new)) if old != new => {
                changed.push(at);
                old_entries.extend_from_slice(old);
                new_entries.extend_from_slice(new);
            }
            Merged::Both(..) => {}
        }
    }
    if changed.is_empty() {
        return (Bring::UpToDate, Some(holds.clone()));
    }
    let old_keys = expand_entries(endpoint, generation, &old_entries);
    let new_keys = expand_entries(endpoint, generation, &new_entries);
    let Some(patch) = patch_between(&old_keys, &new_keys, moved) else {
        return (Bring::Swap, None);
    };
    // The generation's entries after: the record's less the changed
    // groups', then theirs now (no key is in two groups).
    let kept = holds.iter().filter(|(k, _)| {
        let d = k.data();
        changed
            .binary_search(&(u32::from(d.direction), d.peer))
            .is_err()
    });
    let wants: Entries = merged(kept, &new_keys, |(a, _), (b, _)| slot(a).cmp(&slot(b)))
        .map(|step| match step {
            Merged::Left(e) | Merged::Right(e) | Merged::Both(_, e) => *e,
        })
        .collect();
    let wants = Arc::new(wants);
    if patch.is_empty() {
        (Bring::UpToDate, Some(wants))
    } else {
        (Bring::Patch(patch), Some(wants))
    }
}

/// What turns `holds` into `wants` (both in [`slot`] order) in place,
/// ordered as [`bring_expanded`] says; empty where they are the same;
/// `None` where an entry that differs has a peer that did not move.
fn patch_between(
    holds: &[(Key<PolicyKey>, PolicyValue)],
    wants: &[(Key<PolicyKey>, PolicyValue)],
    moved: &HashSet<u32>,
) -> Option<Patch> {
    let mut patch = Patch::default();
    let mut restricting = Vec::new();
    for step in merged(holds, wants, |(h, _), (w, _)| slot(h).cmp(&slot(w))) {
        match step {
            Merged::Left((k, v)) => {
                patch.remove.push(*k);
                restricting.push(restrictive(v));
            }
            Merged::Right(w) => patch.add.push(*w),
            Merged::Both((_, held), w) if *held != w.1 => patch.add.push(*w),
            Merged::Both(..) => {}
        }
    }
    if patch.is_empty() {
        return Some(patch);
    }
    let peers_moved = patch
        .add
        .iter()
        .map(|(k, _)| k)
        .chain(&patch.remove)
        .all(|k| moved.contains(&k.data().peer));
    if !peers_moved {
        return None;
    }
    patch.add.sort_by_key(|(k, v)| (!restrictive(v), slot(k)));
    let mut removals: Vec<_> = restricting.into_iter().zip(patch.remove).collect();
    removals.sort_by_key(|(restricts, k)| (*restricts, slot(k)));
    patch.remove = removals.into_iter().map(|(_, k)| k).collect();
    Some(patch)
}

#[cfg(test)]
mod tests {
    use ebpf_common::datapath::{direction, endpoint_flags};

    use super::*;
    use crate::compile::PolicyEntry;

    const EP: u32 = 7;

    fn entry(peer: u32, port: u16, act: u8) -> PolicyEntry {
        PolicyEntry {
            direction: direction::INGRESS,
            peer,
            protocol: Some(6),
            ports: (port, port),
            value: PolicyValue {
                action: act,
                policy: 1,
                ..PolicyValue::default()
            },
        }
    }

    fn policy(entries: Vec<PolicyEntry>) -> EndpointPolicy {
        EndpointPolicy {
            flags: endpoint_flags::ISOLATED_INGRESS,
            entries: entries.into(),
        }
    }

    /// The live endpoint holding `p` under generation 1, as the maps would.
    fn live(p: &EndpointPolicy) -> (EndpointValue, HeldPolicy) {
        let cur = EndpointValue {
            endpoint: EP,
            revision: 3,
            flags: p.flags | lookup_flags(&p.entries),
            ..EndpointValue::default()
        };
        let entries = p
            .entries
            .iter()
            .flat_map(|e| policy_keys(EP, 1, e).map(|k| (k, e.value)))
            .collect();
        (cur, [((EP, 1), Arc::new(entries))].into())
    }

    fn bring(
        cur: &EndpointValue,
        endpoint: u32,
        want: &EndpointPolicy,
        held: &HeldPolicy,
        moved: &HashSet<u32>,
    ) -> Bring {
        bring_expanded(cur, endpoint, want, held, moved, None).0
    }

    fn in_place(
        cur: &EndpointValue,
        endpoint: u32,
        want: &EndpointPolicy,
        held: &HeldPolicy,
        moved: &HashSet<u32>,
    ) -> Option<Patch> {
        match bring(cur, endpoint, want, held, moved) {
            Bring::Patch(p) => Some(p),
            Bring::UpToDate | Bring::Swap => None,
        }
    }

    #[test]
    fn the_same_entries_are_up_to_date() {
        let p = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(20, 81, action::DENY),
        ]);
        let (cur, held) = live(&p);
        assert!(matches!(
            bring(&cur, EP, &p, &held, &[20].into()),
            Bring::UpToDate
        ));
        // A value changed for a peer that did not move: a swap.
        let q = policy(vec![
            entry(10, 80, action::DENY),
            entry(20, 81, action::DENY),
        ]);
        assert!(matches!(
            bring(&cur, EP, &q, &held, &[20].into()),
            Bring::Swap
        ));
    }

    fn peers(keys: impl IntoIterator<Item = Key<PolicyKey>>) -> Vec<u32> {
        keys.into_iter().map(|k| k.data().peer).collect()
    }

    #[test]
    fn a_relabel_patches_the_moved_peers_in_place_denies_first_and_last() {
        let old = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(20, 80, action::DENY),
        ]);
        let (cur, held) = live(&old);
        // Peer 20 retired, 30 and 31 new: an allow and a deny for them.
        let new = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(30, 80, action::ALLOW),
            entry(31, 81, action::DENY),
        ]);
        let moved: HashSet<u32> = [20, 30, 31].into();
        let patch = in_place(&cur, EP, &new, &held, &moved).expect("in place");
        assert_eq!(
            patch
                .add
                .iter()
                .map(|(k, _)| k.data().peer)
                .collect::<Vec<_>>(),
            vec![31, 30],
            "the deny is written before the allow"
        );
        assert!(
            patch.add.iter().all(|(k, _)| k.data().generation == 1),
            "into the live generation"
        );
        assert_eq!(peers(patch.remove), vec![20]);
    }

    #[test]
    fn removals_take_allows_away_before_denies() {
        let old = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(20, 80, action::DENY),
            entry(20, 81, action::ALLOW),
        ]);
        let (cur, held) = live(&old);
        let new = policy(vec![entry(10, 80, action::ALLOW)]);
        let patch = in_place(&cur, EP, &new, &held, &[20].into()).expect("in place");
        assert!(patch.add.is_empty());
        let ports: Vec<u16> = patch
            .remove
            .iter()
            .map(|k| u16::from_be_bytes(k.data().port))
            .collect();
        assert_eq!(ports, vec![81, 80], "the allow goes first, the deny last");
    }

    #[test]
    fn a_change_for_a_peer_that_kept_its_addresses_is_a_swap() {
        let old = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(20, 80, action::DENY),
        ]);
        let (cur, held) = live(&old);
        // Peer 10's verdict changes: its packets could see a mix.
        let new = policy(vec![
            entry(10, 81, action::ALLOW),
            entry(30, 80, action::ALLOW),
        ]);
        assert!(in_place(&cur, EP, &new, &held, &[20, 30].into()).is_none());
        // No identity moved at all: every change is a swap.
        let new = policy(vec![entry(10, 80, action::ALLOW)]);
        assert!(in_place(&cur, EP, &new, &held, &HashSet::new()).is_none());
    }

    #[test]
    fn new_flags_or_another_endpoint_are_a_swap() {
        let old = policy(vec![entry(10, 80, action::ALLOW)]);
        let (cur, held) = live(&old);
        // A range needs the trie flag the live endpoint lacks.
        let mut ranged = entry(30, 80, action::ALLOW);
        ranged.ports = (80, 90);
        let new = policy(vec![entry(10, 80, action::ALLOW), ranged]);
        assert!(in_place(&cur, EP, &new, &held, &[30].into()).is_none());
        let same = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(30, 80, action::ALLOW),
        ]);
        assert!(in_place(&cur, EP + 1, &same, &held, &[30].into()).is_none());
        assert!(in_place(&cur, EP, &same, &held, &[30].into()).is_some());
    }

    /// A compiled list of entries (sorted and deduplicated as the
    /// compiler gives them) from `(direction, peer, protocol, first port,
    /// span, action)`.
    fn compiled(raw: Vec<Raw>) -> EndpointPolicy {
        let entries: Vec<PolicyEntry> = raw
            .into_iter()
            .map(|(direction, peer, protocol, port, span, act)| PolicyEntry {
                direction,
                peer,
                protocol,
                ports: (port, port.saturating_add(span)),
                value: PolicyValue {
                    action: act,
                    policy: 1,
                    ..PolicyValue::default()
                },
            })
            .collect();
        EndpointPolicy::of(endpoint_flags::ISOLATED_INGRESS, entries)
    }

    /// A key as what can be compared and printed.
    fn plain(k: &Key<PolicyKey>) -> (u32, PolicyKey) {
        (k.prefix_len(), k.data())
    }

    type Entry = ((u32, PolicyKey), PolicyValue);
    /// A patch's entries written and keys removed.
    type Plain = (Vec<Entry>, Vec<(u32, PolicyKey)>);

    /// What a bring comes to, for comparing two: `None` for a swap.
    fn outcome(bring: &Bring) -> Option<Plain> {
        match bring {
            Bring::UpToDate => Some((Vec::new(), Vec::new())),
            Bring::Patch(p) => Some((
                p.add.iter().map(|(k, v)| (plain(k), *v)).collect(),
                p.remove.iter().map(plain).collect(),
            )),
            Bring::Swap => None,
        }
    }

    fn entries(wants: Option<Arc<Entries>>) -> Option<Vec<Entry>> {
        wants.map(|w| w.iter().map(|(k, v)| (plain(k), *v)).collect())
    }

    /// Brings `now` onto an endpoint holding `was` both ways, whole and by
    /// groups from the record, and fails where they differ; returns the
    /// outcome.
    fn both_ways(
        was: &EndpointPolicy,
        now: &EndpointPolicy,
        moved: &HashSet<u32>,
    ) -> Result<Option<Plain>, proptest::test_runner::TestCaseError> {
        let (cur, _) = live(was);
        let holds = Arc::new(expand(EP, cur.generation(), was));
        let held: HeldPolicy = [((EP, cur.generation()), holds.clone())].into();
        let (whole, whole_wants) = bring_expanded(&cur, EP, now, &held, moved, None);
        let (by_groups, group_wants) =
            bring_expanded(&cur, EP, now, &held, moved, Some((was, &holds)));
        proptest::prop_assert_eq!(outcome(&whole), outcome(&by_groups));
        proptest::prop_assert_eq!(entries(whole_wants), entries(group_wants));
        Ok(outcome(&by_groups))
    }

    type Raw = (u32, u32, Option<u8>, u16, u16, u8);

    /// Entries over two directions and peers 0 (any peer) to 5.
    fn raw_entries() -> impl proptest::strategy::Strategy<Value = Vec<Raw>> {
        use proptest::{collection::vec, option::of, sample::select};
        vec(
            (
                0u32..2,
                0u32..6,
                of(select(vec![6u8, 17])),
                75u16..90,
                0u16..12,
                select(vec![action::ALLOW, action::DENY]),
            ),
            0..24,
        )
    }

    proptest::proptest! {
        /// From the record, expanding only the groups that differ, the
        /// answer is the one the whole expansion gives: the same patch in
        /// the same order (or the same swap), and the same entries after.
        /// The new policy is the old one with a few groups (a direction
        /// and peer) dropped, replaced or added, so most groups are kept
        /// from the record, and their peers mostly moved, so most answers
        /// are patches.
        #[test]
        fn the_record_gives_what_the_whole_expansion_gives(
            was in raw_entries(),
            edits in raw_entries(),
            touched in proptest::collection::hash_set((0u32..2, 0u32..6), 0..3),
            touched_moved in proptest::bool::weighted(0.8),
            also_moved in proptest::collection::hash_set(0u32..6, 0..2),
        ) {
            let in_touched = |r: &Raw| touched.contains(&(r.0, r.1));
            let now: Vec<Raw> = was
                .iter()
                .filter(|r| !in_touched(r))
                .chain(edits.iter().filter(|r| in_touched(r)))
                .copied()
                .collect();
            let mut moved = also_moved;
            if touched_moved {
                moved.extend(touched.iter().map(|(_, peer)| *peer));
            }
            both_ways(&compiled(was), &compiled(now), &moved)?;
        }
    }

    #[test]
    fn a_patch_from_the_record_keeps_the_groups_that_did_not_change() {
        // Peer 20 (ingress) goes, 30 comes; ingress 10 and egress 20 stay.
        let egress = PolicyEntry {
            direction: direction::EGRESS,
            ..entry(20, 443, action::ALLOW)
        };
        let was = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(20, 80, action::DENY),
            egress,
        ]);
        let now = policy(vec![
            entry(10, 80, action::ALLOW),
            entry(30, 81, action::ALLOW),
            egress,
        ]);
        let (add, remove) = both_ways(&was, &now, &[20, 30].into())
            .expect("both ways agree")
            .expect("a patch, not a swap");
        assert_eq!(
            add.iter().map(|((_, k), _)| k.peer).collect::<Vec<_>>(),
            vec![30]
        );
        assert_eq!(
            remove.iter().map(|(_, k)| k.peer).collect::<Vec<_>>(),
            vec![20]
        );
    }

    #[test]
    fn the_identity_diff_is_what_a_search_per_address_finds() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let held: BTreeMap<IpNet, u32> = [
            ("10.0.0.1/32", 1),
            ("10.0.0.2/32", 2),
            ("10.0.0.3/32", 3),
            ("10.1.0.0/16", 9),
            ("fd00::1/128", 4),
        ]
        .into_iter()
        .map(|(n, i)| (net(n), i))
        .collect();
        let desired: BTreeMap<IpNet, u32> = [
            ("10.0.0.0/32", 7),
            ("10.0.0.2/32", 2),
            ("10.0.0.3/32", 5),
            ("10.1.0.0/16", 9),
            ("fd00::2/128", 4),
        ]
        .into_iter()
        .map(|(n, i)| (net(n), i))
        .collect();
        let diff = AddressDiff::of(&held, &desired);
        let write: Vec<(IpNet, u32)> = desired
            .iter()
            .filter(|(n, i)| held.get(*n) != Some(*i))
            .map(|(n, i)| (*n, *i))
            .collect();
        let remove: Vec<IpNet> = held
            .keys()
            .filter(|n| !desired.contains_key(*n))
            .copied()
            .collect();
        assert_eq!(diff.write, write);
        assert_eq!(diff.remove, remove);
        assert_eq!(write.len(), 3, "a new address, a moved one, a new v6");
        assert_eq!(remove.len(), 2);
        assert!(AddressDiff::of(&held, &held).is_empty());
        let empty = BTreeMap::new();
        assert_eq!(AddressDiff::of(&empty, &held).write.len(), held.len());
        assert_eq!(AddressDiff::of(&held, &empty).remove.len(), held.len());
    }
}
