//! The policy maps' share of a pass: identities one by one, and each
//! endpoint's policy by a whole-generation swap where its live generation
//! differs from the desired entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ebpf_common::datapath::{EndpointValue, PolicyKey, PolicyValue};
use ipnet::IpNet;

use super::{Report, prefilter};
use crate::{
    compile::{
        EndpointPolicy,
        desired::{Desired, Placed},
    },
    datapath::{
        DatapathError, DatapathMaps,
        maps::{HeldPolicy, lookup_flags, policy_keys},
    },
};

/// What a pass that failed nothing left in the identity and policy maps,
/// for the next pass to trust instead of reading the maps (see
/// `Syncer::apply_trusting`).
#[derive(Clone, Debug, Default)]
pub struct Written {
    addresses: BTreeMap<IpNet, u32>,
    /// By name: ifindex, endpoint id, policy.
    endpoints: BTreeMap<String, (u32, u32, EndpointPolicy)>,
}

impl Written {
    pub(super) fn of(desired: &Desired<'_>) -> Self {
        Self {
            addresses: desired.addresses.clone(),
            endpoints: desired
                .endpoints
                .iter()
                .map(|(name, p)| (name.clone(), (p.ifindex, p.endpoint, p.policy.clone())))
                .collect(),
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
            .map(|(ifindex, ..)| *ifindex)
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
    /// generation empty (a pass that failed nothing leaves it so). `None`
    /// when `live` disagrees with the record about an endpoint.
    fn held(&self, live: &BTreeMap<u32, EndpointValue>) -> Option<HeldPolicy> {
        let mut held = HeldPolicy::new();
        for (ifindex, endpoint, policy) in self.endpoints.values() {
            let value = live.get(ifindex)?;
            if value.endpoint != *endpoint
                || value.flags != policy.flags | lookup_flags(&policy.entries)
            {
                return None;
            }
            let generation = value.generation();
            // As the maps hold them: one value per key, the last written.
            let mut at: HashMap<(u32, PolicyKey), usize> = HashMap::new();
            let mut entries = Vec::new();
            for e in &policy.entries {
                for key in policy_keys(*endpoint, generation, e) {
                    match at.entry((key.prefix_len(), key.data())) {
                        std::collections::hash_map::Entry::Occupied(i) => {
                            entries[*i.get()] = (key, e.value);
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(entries.len());
                            entries.push((key, e.value));
                        }
                    }
                }
            }
            held.insert((*endpoint, generation), entries);
        }
        Some(held)
    }

    /// Whether `desired` has exactly these endpoints and policies.
    fn same_endpoints(&self, desired: &Desired<'_>) -> bool {
        self.endpoints.len() == desired.endpoints.len()
            && desired.endpoints.iter().all(|(name, p)| {
                self.endpoints
                    .get(name)
                    .is_some_and(|(ifindex, endpoint, policy)| {
                        *ifindex == p.ifindex && *endpoint == p.endpoint && policy == p.policy
                    })
            })
    }
}

/// One pass over the maps, with what it read of them before writing.
pub(super) struct Pass<'p> {
    maps: &'p mut DatapathMaps,
    desired: &'p Desired<'p>,
    report: &'p mut Report,
    /// The identities the maps held when the pass began.
    held_identities: std::borrow::Cow<'p, BTreeMap<IpNet, u32>>,
    /// What the last pass wrote, where this pass trusts it.
    trusted: Option<&'p Written>,
    pod_denies: prefilter::PodDenies,
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
            maps,
            desired,
            report,
            trusted,
            pod_denies: prefilter::PodDenies::default(),
        })
    }

    /// Identities first: new endpoints' entries name them. A full map
    /// fails every write after the first: one error and a count, not one
    /// line per address in the log and the status.
    fn identities_in(&mut self) {
        let mut failed = 0usize;
        for (net, id) in self.desired.addresses {
            if self.held_identities.get(net) == Some(id) {
                continue;
            }
            match self.maps.set_identity(net.addr(), net.prefix_len(), *id) {
                Ok(()) => self.report.identities_written += 1,
                Err(e) => {
                    if failed == 0 {
                        self.report.errors.push(e.to_string());
                    }
                    failed += 1;
                }
            }
        }
        if failed > 1 {
            self.report.errors.push(format!(
                "{} more addresses' identities not written (the first failure is above)",
                failed - 1
            ));
        }
    }

    /// Swaps every endpoint whose live state differs from the desired one.
    fn swap_endpoints(&mut self, live: &BTreeMap<u32, EndpointValue>, held: &HeldPolicy) {
        for (
            name,
            &Placed {
                ifindex,
                endpoint,
                policy,
            },
        ) in &self.desired.endpoints
        {
            if self.trusted.is_some_and(|w| {
                w.endpoints
                    .get(name)
                    .is_some_and(|(i, e, p)| *i == ifindex && *e == endpoint && p == policy)
            }) {
                // Written so by the last pass, which failed nothing.
                continue;
            }
            if let Some(cur) = live
                .get(&ifindex)
                .filter(|cur| up_to_date(cur, endpoint, policy, held))
            {
                // Its slot of the programs' index, repaired if need be.
                if let Err(e) = self.maps.index_endpoint(ifindex, Some(*cur)) {
                    self.report.errors.push(format!("{name}: {e}"));
                }
                continue;
            }
            match self.maps.replace_policy_held(
                ifindex,
                endpoint,
                policy.flags,
                &policy.entries,
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
        for net in self.held_identities.keys() {
            if self.desired.addresses.contains_key(net) {
                continue;
            }
            match self.maps.remove_identity(net.addr(), net.prefix_len()) {
                Ok(()) => self.report.identities_removed += 1,
                Err(e) => self.report.errors.push(e.to_string()),
            }
        }
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
                w.held(&live).map(|held| (live, held))
            }
            _ => None,
        };
        let read = match known {
            Some(known) => Some(known),
            None if unchanged => None,
            None => Some((self.maps.endpoints()?, self.maps.held_policy()?)),
        };
        if let Some((live, held)) = read {
            self.swap_endpoints(&live, &held);
            self.remove_unheld(&live, &held);
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

/// A policy map entry in comparable form: (prefix length, key, value).
type Entry = (u32, PolicyKey, PolicyValue);

/// Whether the endpoint's live generation holds exactly `want`'s entries
/// under the flags `want` needs.
fn up_to_date(
    cur: &EndpointValue,
    endpoint: u32,
    want: &EndpointPolicy,
    held: &HeldPolicy,
) -> bool {
    if cur.endpoint != endpoint || cur.flags != want.flags | lookup_flags(&want.entries) {
        return false;
    }
    let generation = cur.generation();
    let holds: HashSet<Entry> = held
        .get(&(endpoint, generation))
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.prefix_len(), k.data(), *v))
        .collect();
    let wants: HashSet<Entry> = want
        .entries
        .iter()
        .flat_map(|e| {
            policy_keys(endpoint, generation, e)
                .into_iter()
                .map(|k| (k.prefix_len(), k.data(), e.value))
        })
        .collect();
    holds == wants
}
