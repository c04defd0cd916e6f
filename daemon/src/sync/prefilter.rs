//! The XDP prefilter's maps, kept in line with the policy: the node-level
//! deny list (set once, from the daemon's options) and the stateless denies
//! of connection attempts to this node's pods (every pass).
//!
//! Order within a pass: pod denies the new policy no longer has go first,
//! then the pods' policies are swapped, then the new pod denies come in. A
//! pod deny only repeats a deny of the pod's own policy, so at no moment
//! does the prefilter drop what the policy in force allows.

use std::collections::BTreeMap;

use ebpf_common::datapath::{NODE_DENY_POLICY, XdpPodDenyKey};
use ipnet::IpNet;

use super::net_of;
use crate::{
    compile::{Compiled, prefilter},
    datapath::{DatapathError, DatapathMaps, prefilter::pod_deny_key},
    model::Snapshot,
};

/// The pod denies for the pods placed on this node (`namespace/pod` ->
/// veth), over all their addresses.
pub fn pod_denies(
    compiled: &Compiled,
    snapshot: &Snapshot,
    placed: &BTreeMap<String, u32>,
) -> Result<BTreeMap<XdpPodDenyKey, u32>, DatapathError> {
    let mut out = BTreeMap::new();
    for pod in &snapshot.pods {
        let key = pod.key();
        let (true, Some(policy)) = (placed.contains_key(&key), compiled.endpoints.get(&key)) else {
            continue;
        };
        for d in prefilter::pod_denies(policy, &pod.ips) {
            out.insert(pod_deny_key(d.dst, d.peer, d.port)?, d.policy);
        }
    }
    Ok(out)
}

/// Takes out the pod denies that `want` does not have (before the pods'
/// policies change).
pub fn retire_pod_denies(
    maps: &mut DatapathMaps,
    want: &BTreeMap<XdpPodDenyKey, u32>,
) -> Result<(), DatapathError> {
    let keep: BTreeMap<XdpPodDenyKey, u32> = maps
        .pod_denies()?
        .into_iter()
        .filter(|(k, v)| want.get(k) == Some(v))
        .collect();
    maps.apply_pod_denies(&keep)
}

/// Makes the node-level deny list exactly `cidrs`, counted under
/// [`NODE_DENY_POLICY`].
pub fn set_deny_list(maps: &mut DatapathMaps, cidrs: &[IpNet]) -> Result<(), DatapathError> {
    let mut held = Vec::new();
    for key in maps.xdp_cidr_deny.keys() {
        let key = key.map_err(|source| DatapathError::Read {
            name: ebpf_common::maps::XDP_DENY,
            source,
        })?;
        held.extend(net_of(&key));
    }
    for addr in maps.xdp_deny_host.keys() {
        let addr = addr.map_err(|source| DatapathError::Read {
            name: ebpf_common::maps::XDP_DENY_HOST,
            source,
        })?;
        held.extend(net_of(&aya::maps::lpm_trie::Key::new(128, addr)));
    }
    for net in held.iter().filter(|n| !cidrs.contains(n)) {
        maps.remove_cidr_deny(net.addr(), net.prefix_len())?;
    }
    for net in cidrs {
        maps.set_cidr_deny(net.addr(), net.prefix_len(), NODE_DENY_POLICY)?;
    }
    Ok(())
}
