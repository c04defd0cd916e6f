//! The syncer: the only writer of kernel state. It reads what the pinned
//! maps hold, compares it with the compiler's desired state, and writes only
//! the differences: identities one by one, endpoints by a whole-policy swap
//! (atomic per endpoint, see `datapath`). Run on every change and
//! periodically, the same comparison repairs drift (an entry deleted or
//! changed behind the daemon's back).
//!
//! A failed write is reported and leaves that endpoint on its last good
//! policy; the other endpoints are still applied.

pub mod prefilter;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use aya::maps::{HashMap as ExactMap, LpmTrie, MapData, lpm_trie::Key};
use ebpf_common::datapath::{ADDR_LEN, EndpointValue, PolicyKey, PolicyValue, endpoint_flags};
use ipnet::IpNet;

use crate::{
    compile::Compiled,
    datapath::{
        DatapathError, DatapathMaps,
        maps::{lookup_flags, policy_keys},
    },
};

/// A stable, non-zero endpoint id for a pod (`namespace/name`), so counters
/// keep naming the same pod across daemon restarts. Collisions among the
/// current pods are resolved by probing in name order.
pub fn endpoint_ids<'a>(pods: impl Iterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let mut names: Vec<&str> = pods.collect();
    names.sort_unstable();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let mut id = crate::identity::stable_id(name);
        while !used.insert(id) {
            id = id.wrapping_add(1).max(1);
        }
        out.insert(name.to_owned(), id);
    }
    out
}

/// The name a quarantined veth is enforced under (`:quarantine/IFINDEX`;
/// no namespace name can start with a colon).
pub const QUARANTINE: &str = ":quarantine";

/// What one pass changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The endpoint id of every endpoint written or checked, by name.
    pub endpoint_ids: BTreeMap<String, u32>,
    pub identities_written: usize,
    pub identities_removed: usize,
    /// Pods whose policy was (re)written.
    pub endpoints_written: Vec<String>,
    /// ifindexes no pod holds any more.
    pub endpoints_removed: Vec<u32>,
    /// Writes that failed; the objects they concern keep their last state.
    pub errors: Vec<String>,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.identities_written + self.identities_removed > 0
            || !self.endpoints_written.is_empty()
            || !self.endpoints_removed.is_empty()
    }
}

/// A policy map entry in comparable form: (prefix length, key, value bytes).
type Held = BTreeSet<(u32, [u8; 16], [u8; 8])>;

fn bytes_of_key(k: &PolicyKey) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&k.endpoint.to_ne_bytes());
    out[4..8].copy_from_slice(&k.peer.to_ne_bytes());
    out[8] = k.direction;
    out[9] = k.generation;
    out[11] = k.protocol;
    out[12..14].copy_from_slice(&k.port);
    out
}

fn bytes_of_value(v: &PolicyValue) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0] = v.action;
    out[1] = v.flags;
    out[4..].copy_from_slice(&v.policy.to_ne_bytes());
    out
}

fn read_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Read { name, source }
}

/// The identity entries the maps hold, as prefixes.
fn held_identities(maps: &DatapathMaps) -> Result<BTreeMap<IpNet, u32>, DatapathError> {
    use ebpf_common::maps::{IDENTITY, IDENTITY_HOST};
    let held = held_prefixes(
        (&maps.identity_host, IDENTITY_HOST),
        (&maps.identity, IDENTITY),
    )?;
    Ok(held.into_iter().map(|(net, v)| (net, v.identity)).collect())
}

/// The prefixes an address map pair holds (single addresses in the exact
/// map, the rest in the trie: every address map is split so), with their
/// values.
fn held_prefixes<V: aya::Pod>(
    (host, host_name): (&ExactMap<MapData, [u8; ADDR_LEN], V>, &'static str),
    (trie, trie_name): (&LpmTrie<MapData, [u8; ADDR_LEN], V>, &'static str),
) -> Result<BTreeMap<IpNet, V>, DatapathError> {
    let mut out = BTreeMap::new();
    for item in host.iter() {
        let (addr, v) = item.map_err(read_err(host_name))?;
        out.extend(net_of(&Key::new(128, addr)).map(|net| (net, v)));
    }
    for item in trie.iter() {
        let (key, v) = item.map_err(read_err(trie_name))?;
        out.extend(net_of(&key).map(|net| (net, v)));
    }
    Ok(out)
}

/// The prefix a 16-byte identity key stands for (IPv4 as `::ffff:a.b.c.d`).
fn net_of(key: &Key<[u8; ADDR_LEN]>) -> Option<IpNet> {
    let data = key.data();
    let len = key.prefix_len();
    let v6 = std::net::Ipv6Addr::from(data);
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => IpNet::new(IpAddr::V4(v4), (len - 96) as u8).ok(),
        _ => IpNet::new(IpAddr::V6(v6), len as u8).ok(),
    }
}

/// Brings the maps to `compiled`, for the pods placed on `placed`
/// (`namespace/name` -> host-side veth ifindex), and isolates the
/// `quarantined` veths both ways with no entries (pod-like veths whose pod
/// is not known yet). Pods not placed are not enforced on this node;
/// ifindexes in the endpoint map that nothing holds are removed.
pub fn apply(
    maps: &mut DatapathMaps,
    compiled: &Compiled,
    placed: &BTreeMap<String, u32>,
    quarantined: &[u32],
) -> Result<Report, DatapathError> {
    let mut report = Report::default();

    // Identities first: new endpoints' entries name them.
    let held = held_identities(maps)?;
    for (net, id) in &compiled.addresses {
        if held.get(net) != Some(id) {
            match maps.set_identity(net.addr(), net.prefix_len(), *id) {
                Ok(()) => report.identities_written += 1,
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }

    let quarantine = crate::compile::EndpointPolicy {
        flags: endpoint_flags::ISOLATED_INGRESS | endpoint_flags::ISOLATED_EGRESS,
        entries: Vec::new(),
    };
    let none = crate::compile::EndpointPolicy::default();
    let mut targets: BTreeMap<String, (u32, &crate::compile::EndpointPolicy)> = placed
        .iter()
        .map(|(pod, &ifindex)| {
            (
                pod.clone(),
                (ifindex, compiled.endpoints.get(pod).unwrap_or(&none)),
            )
        })
        .collect();
    for &ifindex in quarantined {
        targets.insert(format!("{QUARANTINE}/{ifindex}"), (ifindex, &quarantine));
    }
    let ids = endpoint_ids(targets.keys().map(String::as_str));
    let held_policy = maps.held_policy()?;
    let policies: HashMap<(u32, u8), Held> = held_policy
        .iter()
        .map(|(at, entries)| {
            let held = entries
                .iter()
                .map(|(k, v)| (k.prefix_len(), bytes_of_key(&k.data()), bytes_of_value(v)))
                .collect();
            (*at, held)
        })
        .collect();
    let mut live: BTreeMap<u32, EndpointValue> = BTreeMap::new();
    for item in maps.endpoints.iter() {
        let (ifindex, value) = item.map_err(read_err(ebpf_common::maps::ENDPOINTS))?;
        live.insert(ifindex, value);
    }
    for (pod, &(ifindex, want)) in &targets {
        let Some(&endpoint) = ids.get(pod) else {
            continue;
        };
        let current = live.get(&ifindex);
        let up_to_date = current.is_some_and(|cur| {
            let generation = cur.generation();
            let desired: Held = want
                .entries
                .iter()
                .flat_map(|e| {
                    policy_keys(endpoint, generation, e).into_iter().map(|k| {
                        (
                            k.prefix_len(),
                            bytes_of_key(&k.data()),
                            bytes_of_value(&e.value),
                        )
                    })
                })
                .collect();
            cur.endpoint == endpoint
                && cur.flags == want.flags | lookup_flags(&want.entries)
                && policies
                    .get(&(endpoint, generation))
                    .unwrap_or(&Held::new())
                    == &desired
        });
        if up_to_date {
            continue;
        }
        match maps.replace_policy_held(
            ifindex,
            endpoint,
            want.flags,
            &want.entries,
            Some(&held_policy),
        ) {
            Ok(_) => report.endpoints_written.push(pod.clone()),
            Err(e) => report.errors.push(format!("{pod}: {e}")),
        }
    }
    let placed_ifindexes: BTreeSet<u32> = targets.values().map(|(i, _)| *i).collect();
    for (&ifindex, value) in &live {
        if placed_ifindexes.contains(&ifindex) {
            continue;
        }
        match maps.remove_endpoint(ifindex) {
            Ok(()) => report.endpoints_removed.push(ifindex),
            Err(e) => report.errors.push(e.to_string()),
        }
        for generation in [0, 1] {
            if let Err(e) = maps.remove_generation(value.endpoint, generation, Some(&held_policy)) {
                report.errors.push(e.to_string());
            }
        }
    }

    // Identities last out: nothing refers to them any more.
    for net in held.keys() {
        if !compiled.addresses.contains_key(net) {
            match maps.remove_identity(net.addr(), net.prefix_len()) {
                Ok(()) => report.identities_removed += 1,
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    // Flows with a peer whose identity changed are judged again.
    if report.identities_written + report.identities_removed > 0
        && let Err(e) = maps.next_epoch()
    {
        report.errors.push(e.to_string());
    }
    report.endpoint_ids = ids;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_stable_distinct_and_nonzero() {
        let a = endpoint_ids(["x/a", "x/b", "y/a"].into_iter());
        let b = endpoint_ids(["y/a", "x/b", "x/a", "z/c"].into_iter());
        assert_eq!(a["x/a"], b["x/a"]);
        assert_eq!(a["y/a"], b["y/a"]);
        let distinct: BTreeSet<u32> = b.values().copied().collect();
        assert_eq!(distinct.len(), 4);
        assert!(!distinct.contains(&0));
    }

    #[test]
    fn identity_keys_round_trip_to_prefixes() {
        for net in ["10.244.0.5/32", "192.0.2.0/24", "fd00::/64", "fd00::1/128"] {
            let net: IpNet = net.parse().unwrap();
            let key = crate::datapath::maps::addr_key(net.addr(), net.prefix_len()).unwrap();
            assert_eq!(net_of(&key), Some(net));
        }
    }
}
