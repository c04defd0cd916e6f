//! `PAL_NODE_LL`: the node's addresses no pod may claim, its IPv6
//! link-local ones and its bridges' IPv4 ones (IPv4-mapped). A pod may send
//! from, and announce, link-local addresses (its own is known only inside
//! the pod), but not these: the node's link-local address on a bridge is
//! every pod's router there, and a pod announcing it at its own MAC would
//! take the router's traffic (`ebpf_common::kernel::pod`, `own6`). A
//! bridge's IPv4 address is its pods' gateway: no pod's own, but one a
//! pod's listed source prefixes might cover.

use std::{collections::BTreeSet, net::Ipv6Addr};

use ebpf_common::maps;

use super::maps::{DatapathError, DatapathMaps, removed};

impl DatapathMaps {
    /// The addresses the map holds (IPv4 ones IPv4-mapped).
    pub fn node_addresses(&self) -> Result<BTreeSet<Ipv6Addr>, DatapathError> {
        self.node_addresses
            .keys()
            .map(|key| {
                key.map(Ipv6Addr::from)
                    .map_err(|source| DatapathError::Read {
                        name: maps::NODE_LINK_LOCAL,
                        source,
                    })
            })
            .collect()
    }

    /// Makes the map hold exactly `want`: new addresses in first, so that
    /// none is unguarded while the set changes, then the stale ones out.
    /// Returns each write that failed; the rest is done.
    pub fn set_node_addresses(&mut self, want: &BTreeSet<Ipv6Addr>) -> Vec<DatapathError> {
        let held = match self.node_addresses() {
            Ok(held) => held,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for a in want.difference(&held) {
            if let Err(source) = self.node_addresses.insert(&a.octets(), &1, 0) {
                errors.push(DatapathError::Write {
                    name: maps::NODE_LINK_LOCAL,
                    what: format!("the node's address {}", shown(a)),
                    source,
                });
            }
        }
        for a in held.difference(want) {
            if let Err(e) = removed(
                self.node_addresses.remove(&a.octets()),
                maps::NODE_LINK_LOCAL,
                || format!("removal of the address {}, no longer the node's", shown(a)),
            ) {
                errors.push(e);
            }
        }
        errors
    }
}

/// An address as its family writes it.
fn shown(a: &Ipv6Addr) -> String {
    a.to_ipv4_mapped()
        .map_or_else(|| a.to_string(), |v4| v4.to_string())
}
