//! Evaluates compiled state the way the datapath does, for `explain` and
//! for tests: identity by longest prefix, then the endpoint's entries with
//! the peer's own identity before the any-peer ones.

use std::net::IpAddr;

use ebpf_common::datapath::{action, direction, endpoint_flags, identity, policy_flags};

use super::{Compiled, EndpointPolicy, PolicyEntry};
use crate::model::Pod;

/// The identity the datapath would find for `ip`.
pub fn identity_of(c: &Compiled, ip: IpAddr) -> u32 {
    c.addresses
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(identity::WORLD, |(_, id)| *id)
}

fn covers(e: &PolicyEntry, dir: u32, peer: u32, protocol: u8, port: u16) -> bool {
    e.direction == dir
        && e.peer == peer
        && e.protocol.is_none_or(|p| p == protocol)
        && (e.protocol.is_none() || (e.ports.0..=e.ports.1).contains(&port))
}

/// The entry that decides a new flow, if any.
pub fn matching(
    ep: &EndpointPolicy,
    dir: u32,
    peer: u32,
    protocol: u8,
    port: u16,
) -> Option<&PolicyEntry> {
    let best = |who: u32| {
        ep.entries
            .iter()
            .filter(|e| covers(e, dir, who, protocol, port))
            // Most specific first: a protocol beats any protocol, a narrower range a wider one.
            .min_by_key(|e| (e.protocol.is_none(), u32::from(e.ports.1 - e.ports.0)))
    };
    best(peer).or_else(|| best(identity::ANY))
}

/// Whether `ep` lets a new flow through in `dir`: an allow entry, an audit
/// entry (which passes), or no entry and no isolation.
pub fn allows(ep: &EndpointPolicy, dir: u32, peer: u32, protocol: u8, port: u16) -> bool {
    let isolated = if dir == direction::INGRESS {
        endpoint_flags::ISOLATED_INGRESS
    } else {
        endpoint_flags::ISOLATED_EGRESS
    };
    match matching(ep, dir, peer, protocol, port) {
        Some(e) => e.value.action == action::ALLOW || e.value.flags & policy_flags::AUDIT != 0,
        None => ep.flags & isolated == 0,
    }
}

/// Whether a connection from pod `from` to pod `to` is allowed: the
/// source's egress and the destination's ingress must both allow it.
pub fn connection(c: &Compiled, from: &Pod, to: &Pod, protocol: u8, port: u16) -> bool {
    let (Some(src), Some(dst)) = (from.ips.first(), to.ips.first()) else {
        return false;
    };
    connection_between(c, (from, *src), (to, *dst), protocol, port)
}

/// [`connection`] between given addresses of the two pods (dual stack).
pub fn connection_between(
    c: &Compiled,
    (from, src): (&Pod, IpAddr),
    (to, dst): (&Pod, IpAddr),
    protocol: u8,
    port: u16,
) -> bool {
    let none = EndpointPolicy::default();
    let egress = c.endpoints.get(&from.key()).unwrap_or(&none);
    let ingress = c.endpoints.get(&to.key()).unwrap_or(&none);
    allows(
        egress,
        direction::EGRESS,
        identity_of(c, dst),
        protocol,
        port,
    ) && allows(
        ingress,
        direction::INGRESS,
        identity_of(c, src),
        protocol,
        port,
    )
}

/// Whether pod `from` may open a connection to an address outside the pods.
pub fn to_address(c: &Compiled, from: &Pod, to: IpAddr, protocol: u8, port: u16) -> bool {
    let none = EndpointPolicy::default();
    let egress = c.endpoints.get(&from.key()).unwrap_or(&none);
    allows(
        egress,
        direction::EGRESS,
        identity_of(c, to),
        protocol,
        port,
    )
}
