//! `PAL_NODE_LL`: the node's IPv6 link-local addresses. A pod may send
//! from, and announce, link-local addresses (its own is known only inside
//! the pod), but not these: the node's link-local address on a bridge is
//! every pod's router there, and a pod announcing it at its own MAC would
//! take the router's traffic (`ebpf_common::kernel::pod`, `own6`).

use std::{collections::BTreeSet, net::Ipv6Addr};

use ebpf_common::maps;

use super::maps::{DatapathError, DatapathMaps, removed};

impl DatapathMaps {
    /// The link-local addresses the map holds.
    pub fn node_link_locals(&self) -> Result<BTreeSet<Ipv6Addr>, DatapathError> {
        self.node_link_locals
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
    pub fn set_node_link_locals(&mut self, want: &BTreeSet<Ipv6Addr>) -> Vec<DatapathError> {
        let held = match self.node_link_locals() {
            Ok(held) => held,
            Err(e) => return vec![e],
        };
        let mut errors = Vec::new();
        for a in want.difference(&held) {
            if let Err(source) = self.node_link_locals.insert(&a.octets(), &1, 0) {
                errors.push(DatapathError::Write {
                    name: maps::NODE_LINK_LOCAL,
                    what: format!("the node's link-local address {a}"),
                    source,
                });
            }
        }
        for a in held.difference(want) {
            if let Err(e) = removed(
                self.node_link_locals.remove(&a.octets()),
                maps::NODE_LINK_LOCAL,
                || format!("removal of the link-local address {a}, no longer the node's"),
            ) {
                errors.push(e);
            }
        }
        errors
    }
}
