//! The XDP prefilter's share of a pod's policy: the TCP connection attempts
//! an explicit, enforcing deny refuses whatever else applies, which the
//! node's uplinks can then drop before an skb exists.
//!
//! The prefilter matches (pod address, peer identity or any, port or any)
//! and drops on the first entry it finds; it sees no state and no allows.
//! So an ingress deny is taken only where the datapath's own lookup (the
//! peer's entries before the any-peer ones, the most specific first) is
//! sure to end in a deny for everything the prefilter entry covers:
//! - (peer, port): a deny for exactly that TCP port (the most specific
//!   entry the peer can have);
//! - (peer, any port): every entry of the peer that can match TCP denies,
//!   and one of them covers every port;
//! - (any, port) and (any, any port): the same, and every peer-specific
//!   entry that can match those ports denies too (peer entries come first).
//!
//! Audit-mode denies pass traffic and are never taken; nor is the default
//! deny of an isolated pod (no explicit rule names it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ebpf_common::datapath::{action, direction, identity, policy_flags};

use super::{
    EndpointPolicy, PolicyEntry,
    desired::{Placed, PodDeny},
};
use crate::model::Snapshot;

const TCP: u8 = 6;

fn enforcing_deny(e: &PolicyEntry) -> bool {
    e.value.action == action::DENY && e.value.flags & policy_flags::AUDIT == 0
}

fn matches_tcp(e: &PolicyEntry) -> bool {
    e.direction == direction::INGRESS && e.protocol.is_none_or(|p| p == TCP)
}

fn covers_every_port(e: &PolicyEntry) -> bool {
    e.protocol.is_none() || e.ports == (0, u16::MAX)
}

fn covers_port(e: &PolicyEntry, port: u16) -> bool {
    e.protocol.is_none() || (e.ports.0..=e.ports.1).contains(&port)
}

/// The prefilter entries for a pod with addresses `ips` and policy `ep`.
pub fn pod_denies(ep: &EndpointPolicy, ips: &[IpAddr]) -> Vec<PodDeny> {
    let tcp: Vec<&PolicyEntry> = ep.entries.iter().filter(|e| matches_tcp(e)).collect();
    // Whether every peer-specific entry that can match `port` (any port
    // when None) denies: the any-peer entries only decide after them.
    let peers_deny = |port: Option<u16>| {
        tcp.iter()
            .filter(|e| e.peer != identity::ANY)
            .filter(|e| port.is_none_or(|p| covers_port(e, p)))
            .all(|e| enforcing_deny(e))
    };
    let mut peers: Vec<u32> = tcp.iter().map(|e| e.peer).collect();
    peers.sort_unstable();
    peers.dedup();

    let mut rules = Vec::new();
    for peer in peers {
        let own: Vec<&&PolicyEntry> = tcp.iter().filter(|e| e.peer == peer).collect();
        let everything =
            own.iter().all(|e| enforcing_deny(e)) && (peer != identity::ANY || peers_deny(None));
        if everything
            && let Some(all) = own
                .iter()
                .filter(|e| covers_every_port(e) && e.value.policy != 0)
                .min_by_key(|e| e.protocol.is_none())
        {
            rules.push((peer, None, all.value.policy));
            continue;
        }
        for e in &own {
            let exact = e.protocol == Some(TCP) && e.ports.0 == e.ports.1 && e.ports.0 != 0;
            if exact
                && enforcing_deny(e)
                && e.value.policy != 0
                && (peer != identity::ANY || peers_deny(Some(e.ports.0)))
            {
                rules.push((peer, Some(e.ports.0), e.value.policy));
            }
        }
    }
    ips.iter()
        .flat_map(|&dst| {
            rules.iter().map(move |&(peer, port, policy)| PodDeny {
                dst,
                peer,
                port,
                policy,
            })
        })
        .collect()
}

/// The prefilter entries for the pods among `endpoints` (the endpoints
/// placed on a node, by name), over all their addresses in `snapshot`.
pub fn placed_pod_denies(
    endpoints: &BTreeMap<String, Placed<'_>>,
    snapshot: &Snapshot,
) -> BTreeSet<PodDeny> {
    let mut out = BTreeSet::new();
    for pod in &snapshot.pods {
        if let Some(placed) = endpoints.get(&pod.key()) {
            out.extend(pod_denies(placed.policy, &pod.ips));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::evaluate;
    use ebpf_common::datapath::{PolicyValue, endpoint_flags};

    const A: u32 = 300;
    const B: u32 = 301;
    const POD: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn e(peer: u32, protocol: Option<u8>, ports: (u16, u16), act: u8, policy: u32) -> PolicyEntry {
        PolicyEntry {
            direction: direction::INGRESS,
            peer,
            protocol,
            ports,
            value: PolicyValue {
                action: act,
                policy,
                ..PolicyValue::default()
            },
        }
    }

    fn ep(entries: Vec<PolicyEntry>) -> EndpointPolicy {
        EndpointPolicy {
            flags: endpoint_flags::ISOLATED_INGRESS,
            entries: entries.into(),
        }
    }

    fn rules(p: &EndpointPolicy) -> Vec<(u32, Option<u16>, u32)> {
        pod_denies(p, &[POD])
            .into_iter()
            .map(|d| (d.peer, d.port, d.policy))
            .collect()
    }

    /// What the prefilter does with a SYN from `peer` to `port`.
    fn prefilter_drops(denies: &[PodDeny], peer: u32, port: u16) -> bool {
        [
            (peer, Some(port)),
            (peer, None),
            (identity::ANY, Some(port)),
            (identity::ANY, None),
        ]
        .iter()
        .any(|&(p, q)| denies.iter().any(|d| d.peer == p && d.port == q))
    }

    #[test]
    fn exact_denies_are_taken_and_overridable_ones_are_not() {
        let p = ep(vec![
            e(A, Some(TCP), (22, 22), action::DENY, 7),
            e(A, Some(TCP), (80, 80), action::ALLOW, 8),
            e(identity::ANY, Some(TCP), (23, 23), action::DENY, 9),
            // Any peer denied on 443, but B is allowed there: not taken.
            e(identity::ANY, Some(TCP), (443, 443), action::DENY, 10),
            e(B, Some(TCP), (400, 500), action::ALLOW, 11),
            // Audit mode passes traffic.
            e(B, Some(TCP), (25, 25), action::DENY, 12),
        ]);
        let mut entries = p.entries.to_vec();
        entries[5].value.flags = policy_flags::AUDIT;
        let p = EndpointPolicy {
            entries: entries.into(),
            ..p
        };
        assert_eq!(
            rules(&p),
            vec![(identity::ANY, Some(23), 9), (A, Some(22), 7)]
        );
    }

    #[test]
    fn a_peer_denied_everything_is_one_any_port_entry() {
        let p = ep(vec![
            e(A, None, (0, u16::MAX), action::DENY, 7),
            e(A, Some(TCP), (22, 22), action::DENY, 8),
            e(B, Some(TCP), (0, u16::MAX), action::DENY, 9),
            e(B, Some(TCP), (80, 80), action::ALLOW, 10),
        ]);
        // B's any-port deny has an allow under it: only exact denies of B
        // would be taken, and it has none.
        assert_eq!(rules(&p), vec![(A, None, 7)]);
    }

    #[test]
    fn default_denies_are_left_to_the_pod() {
        let p = ep(vec![e(identity::ANY, None, (0, u16::MAX), action::DENY, 0)]);
        assert!(rules(&p).is_empty());
    }

    /// Random entry sets straight into the derivation (the datapath takes
    /// any set; the compiler's output is a narrower case): wherever the
    /// prefilter would drop, the datapath's lookup denies.
    #[test]
    fn the_prefilter_never_drops_what_any_entry_set_allows() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let peers = [identity::ANY, A, B, B + 1];
        let ranges = [
            (22, 22),
            (80, 80),
            (443, 443),
            (0, u16::MAX),
            (1, 1023),
            (80, 90),
        ];
        let mut taken = 0;
        for _ in 0..3000 {
            let mut entries: Vec<PolicyEntry> = (0..1 + next(6))
                .map(|_| {
                    let protocol = [Some(TCP), Some(TCP), Some(17), None][next(4) as usize];
                    let ports = if protocol.is_none() {
                        (0, u16::MAX)
                    } else {
                        ranges[next(ranges.len() as u64) as usize]
                    };
                    let mut entry = e(
                        peers[next(4) as usize],
                        protocol,
                        ports,
                        [action::ALLOW, action::DENY, action::DENY][next(3) as usize],
                        next(4) as u32,
                    );
                    if next(5) == 0 {
                        entry.value.flags = policy_flags::AUDIT;
                    }
                    entry
                })
                .collect();
            // One value per key, as in the maps.
            let mut seen = std::collections::BTreeSet::new();
            entries.retain(|e| seen.insert((e.peer, e.protocol, e.ports)));
            let policy = ep(entries);
            let denies = pod_denies(&policy, &[POD]);
            taken += denies.len();
            for peer in [A, B, B + 1, B + 2] {
                for port in [1, 21, 22, 23, 79, 80, 85, 90, 91, 443, 1023, 1024, u16::MAX] {
                    if prefilter_drops(&denies, peer, port) {
                        assert!(
                            !evaluate::allows(&policy, direction::INGRESS, peer, TCP, port),
                            "prefilter drops peer {peer} port {port}, policy allows\n{:?}\n{denies:?}",
                            policy.entries
                        );
                    }
                }
            }
        }
        assert!(
            taken > 300,
            "only {taken} entries taken: the check has too little to check"
        );
    }

    /// Every entry the prefilter gets drops only what the datapath denies,
    /// checked against the compiler's model of the datapath lookup on
    /// random policies, for every peer they name and a stranger, at every
    /// port where an entry starts or ends and around it.
    #[test]
    fn the_prefilter_never_drops_what_the_policy_allows() {
        let taken = std::cell::Cell::new(0);
        crate::compile::property::check_policy_sets(200, |snapshot| {
            let compiled = crate::compile::compile(&snapshot);
            for pod in &snapshot.pods {
                let Some(policy) = compiled.endpoints.get(&pod.key()) else {
                    continue;
                };
                let denies = pod_denies(policy, &pod.ips[..pod.ips.len().min(1)]);
                taken.set(taken.get() + denies.len());
                let mut peers: Vec<u32> = policy.entries.iter().map(|e| e.peer).collect();
                peers.push(identity::FIRST_ALLOCATED + 9999);
                let mut ports = vec![1, 80, u16::MAX];
                for entry in policy.entries.iter() {
                    for p in [entry.ports.0, entry.ports.1] {
                        ports.extend([p.saturating_sub(1), p, p.saturating_add(1)]);
                    }
                }
                for &peer in peers.iter().filter(|&&p| p != identity::ANY) {
                    for &port in ports.iter().filter(|&&p| p != 0) {
                        if prefilter_drops(&denies, peer, port) {
                            proptest::prop_assert!(
                                !evaluate::allows(policy, direction::INGRESS, peer, TCP, port),
                                "{}: prefilter drops peer {} port {}, policy allows\n{:?}",
                                pod.key(),
                                peer,
                                port,
                                denies
                            );
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
        assert!(
            taken.get() > 0,
            "random policies gave the prefilter nothing to check"
        );
    }
}
