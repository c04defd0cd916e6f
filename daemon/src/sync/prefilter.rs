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

use super::held_prefixes;
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

/// Makes the node-level deny list exactly `cidrs`, counted under
/// [`NODE_DENY_POLICY`], writing differences only.
pub fn set_deny_list(maps: &mut DatapathMaps, cidrs: &[IpNet]) -> Result<(), DatapathError> {
    use ebpf_common::maps::{XDP_DENY, XDP_DENY_HOST};
    let held = held_prefixes(
        (&maps.xdp_deny_host, XDP_DENY_HOST),
        (&maps.xdp_cidr_deny, XDP_DENY),
    )?;
    for net in held.keys().filter(|n| !cidrs.contains(n)) {
        maps.remove_cidr_deny(net.addr(), net.prefix_len())?;
    }
    for net in cidrs {
        if held.get(net) != Some(&NODE_DENY_POLICY) {
            maps.set_cidr_deny(net.addr(), net.prefix_len(), NODE_DENY_POLICY)?;
        }
    }
    Ok(())
}
