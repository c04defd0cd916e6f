//! XDP programs.
//!
//! `pal_xdp_pre`, on the node's uplinks, runs before an skb exists and drops
//! what policy denies outright: sources in the node-level CIDR deny list
//! (`PAL_XDP_DENYHST` for single addresses, then `PAL_XDP_DENY` for
//! prefixes; address -> policy id), and connection attempts (TCP SYN) to
//! local pods that an explicit deny forbids (`PAL_XDP_PODDENY`, consulted
//! only for pod addresses `PAL_XDP_PODDST` lists). Everything else passes on
//! to the stack and the pods' programs; it has no opinion on packets it
//! cannot parse, save that the deny list covers every packet whose source
//! address it could read.
//!
//! `pal_xdp_from_pod` is the optional XDP hook for a pod's egress on its
//! host-side veth: the same datapath as `pal_tc_from_pod`. TC is the
//! default (see README: native XDP on a veth costs GRO/GSO).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use ebpf_common::{
    datapath::{ADDR_LEN, CounterKey, XdpPodDenyKey, identity, xdp_pod_gate},
    kernel::{
        count, count_detail,
        parse::{IPPROTO_TCP, Kind, Packet, frag, parse, tcp_flags},
        pod::{
            self,
            maps::{PAL_CNT_CELLS, PAL_COUNTERS},
            policy::identity_of,
            scratch,
        },
    },
    maps::size,
    reason,
    stats::{Counter, STATS_ENTRIES, direction},
};

#[map(name = "PAL_XDP_STATS")]
static PAL_XDP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "PAL_XDP_DENY")]
static PAL_XDP_DENY: LpmTrie<[u8; ADDR_LEN], u32> = LpmTrie::with_max_entries(size::XDP_DENY, 0);

#[map(name = "PAL_XDP_DENYHST")]
static PAL_XDP_DENYHST: HashMap<[u8; ADDR_LEN], u32> =
    HashMap::with_max_entries(size::XDP_DENY_HOST, 0);

#[map(name = "PAL_XDP_PODDENY")]
static PAL_XDP_PODDENY: HashMap<XdpPodDenyKey, u32> =
    HashMap::with_max_entries(size::XDP_POD_DENY, 0);

#[map(name = "PAL_XDP_PODDST")]
static PAL_XDP_PODDST: HashMap<[u8; ADDR_LEN], u32> =
    HashMap::with_max_entries(size::XDP_POD_DST, 0);

/// The deny of `peer` (an identity or ANY) to `dst`:`port`, the one-port
/// entry before the any-port one.
#[inline(always)]
fn pod_deny(dst: &[u8; ADDR_LEN], peer: u32, port: u16) -> Option<u32> {
    for port in [port, 0] {
        let key = XdpPodDenyKey {
            dst: *dst,
            peer,
            port,
            _pad: [0; 2],
        };
        // SAFETY: copied out at once.
        if let Some(policy) = unsafe { PAL_XDP_PODDENY.get(&key) } {
            return Some(*policy);
        }
    }
    None
}

/// The node deny list's policy for a source, if it denies it.
#[inline(always)]
fn denied_source(src: &[u8; ADDR_LEN]) -> Option<u32> {
    // SAFETY: copied out at once.
    if let Some(policy) = unsafe { PAL_XDP_DENYHST.get(src) } {
        return Some(*policy);
    }
    PAL_XDP_DENY.get(&Key::new(128, *src)).copied()
}

#[inline(always)]
fn prefilter(p: &Packet) -> (u32, u32) {
    if let Some(policy) = denied_source(&p.src) {
        return (reason::DROP_CIDR_DENY, policy);
    }
    if p.protocol != IPPROTO_TCP
        || p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN
    {
        return (reason::PASS_UNENFORCED, 0);
    }
    // SAFETY: copied out at once.
    let Some(gate) = (unsafe { PAL_XDP_PODDST.get(&p.dst) }).copied() else {
        return (reason::PASS_UNENFORCED, 0);
    };
    // The peer's own entries come before the any-peer ones.
    if gate & xdp_pod_gate::PEERS != 0 {
        let mut key = Key::new(128, p.src);
        let peer = identity_of(&p.src, &mut key);
        if let Some(policy) = pod_deny(&p.dst, peer, p.dport) {
            return (reason::DROP_XDP_POD_DENY, policy);
        }
    }
    if gate & xdp_pod_gate::ANY != 0
        && let Some(policy) = pod_deny(&p.dst, identity::ANY, p.dport)
    {
        return (reason::DROP_XDP_POD_DENY, policy);
    }
    (reason::PASS_UNENFORCED, 0)
}

#[xdp]
#[inline(always)]
pub fn pal_xdp_pre(ctx: XdpContext) -> u32 {
    let bytes = ctx.data_end().saturating_sub(ctx.data()) as u64;
    // Per-CPU working memory shared with the pod datapath (one program runs
    // at a time on a CPU): a stack Packet would be zeroed on every run.
    let Some(s) = scratch::get() else {
        count(
            &PAL_XDP_STATS,
            direction::INGRESS,
            reason::PASS_UNENFORCED,
            bytes,
        );
        return xdp_action::XDP_PASS;
    };
    let p = &mut s.pkt;
    p.frag = frag::UNREAD;
    let parsed = parse(ctx.data(), ctx.data_end(), p);
    // What the pods' programs would drop unjudged (cut short, contradictory)
    // is not ours to judge on an uplink: the stack and the pod's TC decide.
    let unjudged = match parsed.kind {
        Kind::Pass => parsed.reason,
        _ => reason::PASS_UNENFORCED,
    };
    let (why, policy) = if parsed.kind == Kind::Ip {
        p.map_addresses();
        prefilter(p)
    } else if p.frag != frag::UNREAD {
        // The IP header was read before the rest failed (or passed, as
        // neighbour discovery does): the node deny list covers every packet
        // from its sources all the same.
        p.map_addresses();
        match denied_source(&p.src) {
            Some(policy) => (reason::DROP_CIDR_DENY, policy),
            None => (unjudged, 0),
        }
    } else {
        (unjudged, 0)
    };
    count(&PAL_XDP_STATS, direction::INGRESS, why, bytes);
    if reason::is_drop(why) {
        let key = CounterKey {
            endpoint: 0,
            policy,
            reason: why as u16,
            direction: direction::INGRESS as u8,
            _pad: 0,
        };
        count_detail(&PAL_CNT_CELLS, &PAL_COUNTERS, &PAL_XDP_STATS, &key, bytes);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

/// XDP programs without the frags flag are given linear frames only.
struct Linear<'a>(&'a XdpContext);

impl pod::Frame for Linear<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }

    #[inline(always)]
    fn pull(&self) -> bool {
        false
    }
}

#[xdp]
#[inline(always)]
pub fn pal_xdp_from_pod(ctx: XdpContext) -> u32 {
    let bytes = ctx.data_end().saturating_sub(ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    if pod::enforce(&Linear(&ctx), ifindex, bytes, direction::EGRESS) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
