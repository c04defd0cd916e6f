//! The XDP prefilter's maps: the node-level CIDR deny list, and the
//! stateless denies of connection attempts to local pods with the
//! per-address gate the program reads first (`xdp_pod_gate`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ebpf_common::{
    datapath::{ADDR_LEN, XdpPodDenyKey, identity, xdp_pod_gate},
    maps,
};
use ipnet::IpNet;

use super::{
    address_map::addr_key,
    maps::{DatapathError, DatapathMaps, removed},
};
use crate::compile::desired::PodDeny;

/// A stateless deny of TCP connection attempts from `peer` (an identity, or
/// `identity::ANY`) to the local pod address `dst` on `port` (`None`: any).
pub fn pod_deny_key(
    dst: IpAddr,
    peer: u32,
    port: Option<u16>,
) -> Result<XdpPodDenyKey, DatapathError> {
    let full = if dst.is_ipv4() { 32 } else { 128 };
    Ok(XdpPodDenyKey {
        dst: addr_key(dst, full)?.data(),
        peer,
        port: port.unwrap_or(0),
        _pad: [0; 2],
    })
}

/// The map entries of the compiler's pod denies: key -> policy.
pub fn pod_deny_entries(
    denies: &BTreeSet<PodDeny>,
) -> Result<BTreeMap<XdpPodDenyKey, u32>, DatapathError> {
    denies
        .iter()
        .map(|d| Ok((pod_deny_key(d.dst, d.peer, d.port)?, d.policy)))
        .collect()
}

/// The gate bits of every pod address among `keys`.
fn gates<'a>(keys: impl Iterator<Item = &'a XdpPodDenyKey>) -> BTreeMap<[u8; ADDR_LEN], u32> {
    let mut out = BTreeMap::new();
    for k in keys {
        let bit = if k.peer == identity::ANY {
            xdp_pod_gate::ANY
        } else {
            xdp_pod_gate::PEERS
        };
        *out.entry(k.dst).or_insert(0) |= bit;
    }
    out
}

/// Every entry of a hash map.
fn read_all<K: aya::Pod + Ord, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, DatapathError> {
    map.iter()
        .map(|item| item.map_err(|source| DatapathError::Read { name, source }))
        .collect()
}

fn write_err(
    name: &'static str,
    what: String,
) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Write { name, what, source }
}

impl DatapathMaps {
    /// Drops every packet from `addr/len` at the XDP prefilter, counted
    /// under `policy`.
    pub fn set_cidr_deny(
        &mut self,
        addr: IpAddr,
        len: u8,
        policy: u32,
    ) -> Result<(), DatapathError> {
        self.node_denies.set(addr, len, policy)
    }

    pub fn remove_cidr_deny(&mut self, addr: IpAddr, len: u8) -> Result<(), DatapathError> {
        self.node_denies.remove(addr, len)
    }

    /// The node-level deny list in force, with the policy each is counted
    /// under.
    pub fn cidr_denies(&self) -> Result<BTreeMap<IpNet, u32>, DatapathError> {
        self.node_denies.held()
    }

    /// Adds one stateless pod deny (see [`pod_deny_key`]). Only for
    /// explicit, enforcing denies that no other entry can override.
    pub fn set_pod_deny(
        &mut self,
        dst: IpAddr,
        peer: u32,
        port: Option<u16>,
        policy: u32,
    ) -> Result<(), DatapathError> {
        let key = pod_deny_key(dst, peer, port)?;
        let held = self.pod_denies()?;
        let mut want = held.clone();
        want.insert(key, policy);
        self.write_pod_denies(&held, &want)
    }

    pub fn remove_pod_deny(
        &mut self,
        dst: IpAddr,
        peer: u32,
        port: Option<u16>,
    ) -> Result<(), DatapathError> {
        let key = pod_deny_key(dst, peer, port)?;
        let held = self.pod_denies()?;
        let mut want = held.clone();
        want.remove(&key);
        self.write_pod_denies(&held, &want)
    }

    /// The stateless pod denies in force.
    pub fn pod_denies(&self) -> Result<BTreeMap<XdpPodDenyKey, u32>, DatapathError> {
        read_all(&self.xdp_pod_deny, maps::XDP_POD_DENY)
    }

    /// The pod addresses with a gate open, and its bits.
    pub fn pod_deny_gates(&self) -> Result<BTreeMap<[u8; ADDR_LEN], u32>, DatapathError> {
        read_all(&self.xdp_pod_dst, maps::XDP_POD_DST)
    }

    /// Makes the stateless pod denies exactly `want`, writing differences
    /// only.
    /// Takes out the pod denies that `want` does not have, adding none:
    /// the step before the pods' policies change. Returns what the map
    /// holds then, for [`Self::add_pod_denies`].
    pub fn retire_pod_denies(
        &mut self,
        want: &BTreeMap<XdpPodDenyKey, u32>,
    ) -> Result<BTreeMap<XdpPodDenyKey, u32>, DatapathError> {
        let held = self.pod_denies()?;
        let keep: BTreeMap<XdpPodDenyKey, u32> = held
            .iter()
            .filter(|(k, v)| want.get(k) == Some(v))
            .map(|(k, v)| (*k, *v))
            .collect();
        self.write_pod_denies(&held, &keep)?;
        Ok(keep)
    }

    /// Makes the stateless pod denies exactly `want`, from `held`, what
    /// [`Self::retire_pod_denies`] left (the map is not read again).
    pub fn add_pod_denies(
        &mut self,
        held: &BTreeMap<XdpPodDenyKey, u32>,
        want: &BTreeMap<XdpPodDenyKey, u32>,
    ) -> Result<(), DatapathError> {
        self.write_pod_denies(held, want)
    }

    /// From `held` (what the map holds) to `want`: stale entries out
    /// first, then the gates, then new entries in. A gate without entries
    /// or entries without a gate only cost lookups or skip a drop the pod's
    /// TC program makes anyway, so no order of these writes drops what the
    /// policy allows.
    fn write_pod_denies(
        &mut self,
        held: &BTreeMap<XdpPodDenyKey, u32>,
        want: &BTreeMap<XdpPodDenyKey, u32>,
    ) -> Result<(), DatapathError> {
        for key in held.keys().filter(|k| !want.contains_key(k)) {
            removed(self.xdp_pod_deny.remove(key), maps::XDP_POD_DENY, || {
                format!("removal of a pod deny for peer {}", key.peer)
            })?;
        }
        let want_gates = gates(want.keys());
        let held_gates = self.pod_deny_gates()?;
        for dst in held_gates.keys().filter(|d| !want_gates.contains_key(*d)) {
            removed(self.xdp_pod_dst.remove(dst), maps::XDP_POD_DST, || {
                "removal of a pod deny gate".to_owned()
            })?;
        }
        for (dst, bits) in &want_gates {
            if held_gates.get(dst) != Some(bits) {
                self.xdp_pod_dst
                    .insert(dst, bits, 0)
                    .map_err(write_err(maps::XDP_POD_DST, "a pod deny gate".to_owned()))?;
            }
        }
        for (key, policy) in want {
            if held.get(key) != Some(policy) {
                self.xdp_pod_deny.insert(key, policy, 0).map_err(write_err(
                    maps::XDP_POD_DENY,
                    format!("a pod deny for peer {} port {}", key.peer, key.port),
                ))?;
            }
        }
        Ok(())
    }
}
