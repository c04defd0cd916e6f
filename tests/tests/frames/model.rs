//! A model of the datapath, written from its documentation (README
//! "Datapath", docs/DESIGN.md, the reason codes) and independent of its
//! code: a frame classifier that parses Ethernet, VLAN tags, IPv4/IPv6 and
//! the transport header as documented, and the state a run builds
//! (conntrack, fragments), with the compiler's own model of the policy
//! lookup (`palisade::compile::evaluate`) for every verdict that needs one.
//!
//! What the documents leave open is read the way the kernel's own stack
//! would judge the packet:
//! - a header is cut short when any byte of its fixed part (TCP 20 bytes,
//!   UDP 8, SCTP 12, ICMP 8, IPv4 IHL*4, each IPv6 extension header's
//!   announced length) lies past the frame: `drop_truncated`;
//! - ICMP is protocol 1 in IPv4 and 58 in IPv6; the other number in the
//!   other family is just another IP protocol;
//! - an ICMP error quotes a flow only when the quoted header is one
//!   (version, IHL);
//! - an IPv6 address that is IPv4-mapped is contradictory (the kernel drops
//!   such a source; the compiler's model gives it no IPv4 identity);
//! - the prefilter's node deny list drops every packet whose source it can
//!   read, whatever else is wrong with the packet.
//!
//! A later fragment follows its first fragment by (source, destination,
//! identification, and the protocol in IPv4 or, in IPv6, the fragment
//! header's next header, which every fragment carries alike), and takes the
//! first fragment's ports and transport protocol: in IPv6 more headers
//! (destination options) may stand between the fragment header and the
//! transport header, in the first fragment only.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    rc::Rc,
};

use ebpf_common::{
    datapath::{action, direction, endpoint_flags, identity, policy_flags},
    reason,
};
use ipnet::IpNet;
use palisade::compile::{Compiled, EndpointPolicy, desired::PodDeny, evaluate};
use palisade_tests::datapath_harness::Hook;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// VLAN tags parsed through; one more is `drop_vlan_limit`.
const VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked; one more is `drop_ipv6_ext_limit`.
const IPV6_EXT: usize = 6;
/// The node's link-local address, which the test writes as the node's
/// (`PAL_NODE_LL`): no pod may send from it or announce it.
pub const NODE_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Neighbour discovery options read for the link-layer addresses they
/// announce; more is announcing what could not be read.
const ND_OPTIONS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    /// Offset 0, more fragments: carries the transport header.
    First,
    /// Offset > 0: no transport header.
    Later,
}

/// A flow's five-tuple as one packet carries it (an ICMP error's quoted
/// packet, as it was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
}

/// An IP packet for policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub v6: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// For ICMP echo the identifier stands in: as the source port of a
    /// request, the destination port of a reply.
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub frag: Frag,
    pub frag_id: u32,
    /// The protocol fragments of this datagram are recorded under.
    pub frag_protocol: u8,
    pub quoted: Option<Flow>,
}

/// A fragmented datagram: source, destination, identification, and the
/// protocol it is recorded under (see the module's documentation).
type FragKey = (IpAddr, IpAddr, u32, u8);

/// What its later fragments take from the first: ports, then protocol.
type FirstFragment = (u16, u16, u8);

/// What a frame that passes without policy claims on the link, which a
/// pod may claim only of itself (README, "Special packets"). The `bool`:
/// whether it announces a link-layer address other than the frame's
/// Ethernet source, or options that could not all be read, which a
/// bridged pod may not ([`lladdr_foreign`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    Nothing,
    /// ARP for IPv4 over Ethernet: its sender protocol address; foreign
    /// where its sender hardware address is not the frame's source.
    Arp(Ipv4Addr, bool),
    /// Neighbour discovery, MLD, router solicitations: their source.
    Discovery(bool),
    /// A neighbour advertisement: its source and its target.
    Advert(IpAddr, bool),
    /// A router advertisement or redirect.
    Router,
}

/// What the datapath makes of a frame before any state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Passes without policy (non-IP, neighbour discovery); the source
    /// when an IP header was read; what it claims.
    Pass(u32, Option<IpAddr>, Claim),
    /// Dropped before policy (cut short, contradictory, too many tags or
    /// extension headers); the source when the IP header was read.
    Drop(u32, Option<IpAddr>),
    Ip(Pkt),
}

fn at<const N: usize>(f: &[u8], off: usize) -> Option<[u8; N]> {
    f.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn v6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Whether BPF_PROG_TEST_RUN refuses to run `hook` on `f`: a frame shorter
/// than Ethernet, and for TC (an skb) an IPv4 or IPv6 frame shorter than
/// its fixed IP header, going by the outer ethertype.
pub fn refused(hook: Hook, f: &[u8]) -> bool {
    if f.len() < ETH_HLEN {
        return true;
    }
    if matches!(hook, Hook::XdpEgress | Hook::Prefilter) {
        return false;
    }
    match be16([f[12], f[13]]) {
        ETH_P_IP => f.len() < ETH_HLEN + 20,
        ETH_P_IPV6 => f.len() < ETH_HLEN + 40,
        _ => false,
    }
}

/// The frame as the datapath is documented to read it.
pub fn classify(f: &[u8]) -> Class {
    let Some(mut ethertype) = at::<2>(f, 12).map(be16) else {
        return Class::Drop(reason::DROP_TRUNCATED, None);
    };
    let mut off = ETH_HLEN;
    for _ in 0..VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = at::<2>(f, off + 2).map(be16) else {
            return Class::Drop(reason::DROP_TRUNCATED, None);
        };
        ethertype = inner;
        off += 4;
    }
    match ethertype {
        ETH_P_IP => ipv4(f, off),
        ETH_P_IPV6 => ipv6(f, off),
        ETH_P_8021Q | ETH_P_8021AD => Class::Drop(reason::DROP_VLAN_LIMIT, None),
        ETH_P_ARP => arp(f, off),
        _ => Class::Pass(reason::PASS_NON_IP, None, Claim::Nothing),
    }
}

/// ARP claims its sender's address only as IPv4 over Ethernet (hardware
/// type 1 or 6, protocol 0x0800, lengths 6 and 4), the kind a Linux
/// receiver on Ethernet acts on; that kind cut short before its 28 bytes
/// is `drop_truncated`.
fn arp(f: &[u8], off: usize) -> Class {
    let nothing = Class::Pass(reason::PASS_NON_IP, None, Claim::Nothing);
    match at::<8>(f, off) {
        Some([0, 1 | 6, 8, 0, 6, 4, ..]) => match at::<28>(f, off) {
            Some(a) => Class::Pass(
                reason::PASS_NON_IP,
                None,
                Claim::Arp(
                    Ipv4Addr::new(a[14], a[15], a[16], a[17]),
                    a[8..14] != f[6..12],
                ),
            ),
            None => Class::Drop(reason::DROP_TRUNCATED, None),
        },
        _ => nothing,
    }
}

fn ipv4(f: &[u8], off: usize) -> Class {
    let Some(h) = at::<20>(f, off) else {
        return Class::Drop(reason::DROP_TRUNCATED, None);
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Class::Drop(reason::DROP_MALFORMED, None);
    }
    let (src, dst) = (v4(&h[12..16]), v4(&h[16..20]));
    if off + ihl > f.len() {
        return Class::Drop(reason::DROP_TRUNCATED, Some(src));
    }
    let protocol = h[9];
    let field = be16([h[6], h[7]]);
    let mut p = Pkt {
        v6: false,
        src,
        dst,
        protocol,
        sport: 0,
        dport: 0,
        flags: 0,
        frag: Frag::None,
        frag_id: u32::from(be16([h[4], h[5]])),
        frag_protocol: protocol,
        quoted: None,
    };
    if field & 0x1fff != 0 {
        p.frag = Frag::Later;
        return Class::Ip(p);
    }
    if field & 0x2000 != 0 {
        p.frag = Frag::First;
    }
    transport(f, off + ihl, p, 0)
}

fn ipv6(f: &[u8], off: usize) -> Class {
    let Some(h) = at::<40>(f, off) else {
        return Class::Drop(reason::DROP_TRUNCATED, None);
    };
    let mapped = |a: &[u8]| a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
    if h[0] >> 4 != 6 || mapped(&h[8..24]) || mapped(&h[24..40]) {
        return Class::Drop(reason::DROP_MALFORMED, None);
    }
    let (src, dst) = (v6(&h[8..24]), v6(&h[24..40]));
    let mut p = Pkt {
        v6: true,
        src,
        dst,
        protocol: 0,
        sport: 0,
        dport: 0,
        flags: 0,
        frag: Frag::None,
        frag_id: 0,
        frag_protocol: 0,
        quoted: None,
    };
    let truncated = Class::Drop(reason::DROP_TRUNCATED, Some(src));
    let payload_end = off + 40 + usize::from(be16([h[4], h[5]]));
    let mut next = h[6];
    let mut off = off + 40;
    let mut fragmented = false;
    for _ in 0..IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: 8-byte units past the first 8.
            0 | 43 | 60 => {
                let Some(e) = at::<2>(f, off) else {
                    return truncated;
                };
                next = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            // Authentication header: 4-byte units, minus two.
            51 => {
                let Some(e) = at::<2>(f, off) else {
                    return truncated;
                };
                next = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            // One fragment header at most (RFC 8200).
            44 if fragmented => return Class::Drop(reason::DROP_MALFORMED, Some(src)),
            44 => {
                fragmented = true;
                let Some(e) = at::<8>(f, off) else {
                    return truncated;
                };
                next = e[0];
                p.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                p.frag_protocol = next;
                off += 8;
                let field = be16([e[2], e[3]]);
                if field >> 3 != 0 {
                    p.protocol = next;
                    p.frag = Frag::Later;
                    return Class::Ip(p);
                }
                if field & 1 != 0 {
                    p.frag = Frag::First;
                }
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        return Class::Drop(reason::DROP_IPV6_EXT_LIMIT, Some(src));
    }
    if off > f.len() {
        return truncated;
    }
    p.protocol = next;
    transport(f, off, p, payload_end)
}

/// Whether neighbour discovery options in `[opt, end)` announce a
/// link-layer address (types 1 and 2) other than the frame's source, or
/// cannot be vouched for: one of length 0, one cut short by the frame,
/// more than [`ND_OPTIONS`], a payload ending before they start. `None`
/// where `end`, by the IPv6 header, lies past the frame: the options are
/// cut short.
fn lladdr_foreign(f: &[u8], opt: usize, end: usize) -> Option<bool> {
    if end > f.len() {
        return None;
    }
    if opt > end {
        return Some(true);
    }
    let mut opt = opt;
    for _ in 0..ND_OPTIONS {
        if opt >= end {
            return Some(false);
        }
        let Some(o) = at::<8>(f, opt) else {
            return Some(true);
        };
        if o[1] == 0 || matches!(o[0], 1 | 2) && o[2..8] != f[6..12] {
            return Some(true);
        }
        opt += usize::from(o[1]) * 8;
    }
    Some(opt < end)
}

/// `payload_end`: where an IPv6 payload ends by its header (0 in IPv4).
fn transport(f: &[u8], off: usize, mut p: Pkt, payload_end: usize) -> Class {
    let truncated = Class::Drop(reason::DROP_TRUNCATED, Some(p.src));
    let icmp = if p.v6 { ICMPV6 } else { ICMP };
    match p.protocol {
        TCP => {
            let Some(t) = at::<20>(f, off) else {
                return truncated;
            };
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
            p.flags = t[13];
        }
        UDP | SCTP => {
            let Some(t) = at::<4>(f, off) else {
                return truncated;
            };
            let len = if p.protocol == UDP { 8 } else { 12 };
            if at::<1>(f, off + len - 1).is_none() {
                return truncated;
            }
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
        }
        proto if proto == icmp => {
            let Some(t) = at::<8>(f, off) else {
                return truncated;
            };
            let id = be16([t[4], t[5]]);
            match (p.v6, t[0]) {
                (false, 8) | (true, 128) => p.sport = id,
                (false, 0) | (true, 129) => p.dport = id,
                (true, 130..=137 | 143) => {
                    // Solicitations carry their sender's link-layer address,
                    // advertisements their target's; MLD none.
                    let options = match t[0] {
                        133 => Some(off + 8),
                        135 | 136 => Some(off + 24),
                        _ => None,
                    };
                    // A fragment's options may go on in the next, unread.
                    let fragment = p.frag != Frag::None;
                    let foreign = |opt| lladdr_foreign(f, opt, payload_end).map(|f| f || fragment);
                    let claim = match (t[0], at::<16>(f, off + 8), options.map(foreign)) {
                        (134 | 137, ..) => Claim::Router,
                        (136, None, _) | (_, _, Some(None)) => return truncated,
                        (136, Some(target), Some(Some(foreign))) => {
                            Claim::Advert(v6(&target), foreign)
                        }
                        (.., foreign) => Claim::Discovery(foreign.flatten() == Some(true)),
                    };
                    return Class::Pass(reason::PASS_NEIGHBOUR_DISCOVERY, Some(p.src), claim);
                }
                (false, 3 | 11 | 12) | (true, 1..=4) => p.quoted = quoted(f, off + 8, p.v6),
                _ => {}
            }
        }
        _ => {}
    }
    Class::Ip(p)
}

fn quoted(f: &[u8], off: usize, v6_outer: bool) -> Option<Flow> {
    let (src, dst, protocol, l4) = if v6_outer {
        let h = at::<40>(f, off)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        (v6(&h[8..24]), v6(&h[24..40]), h[6], off + 40)
    } else {
        let h = at::<20>(f, off)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        (v4(&h[12..16]), v4(&h[16..20]), h[9], off + ihl)
    };
    let ports = at::<4>(f, l4)?;
    Some(Flow {
        src,
        dst,
        protocol,
        sport: be16([ports[0], ports[1]]),
        dport: be16([ports[2], ports[3]]),
    })
}

/// A verdict: whether the frame passes, and the reason it is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    pub reason: u32,
}

impl Verdict {
    fn pass(reason: u32) -> Self {
        Self { pass: true, reason }
    }
    fn drop(reason: u32) -> Self {
        Self {
            pass: false,
            reason,
        }
    }
}

/// Whether a pod with `addresses` may send from `src`: where it has
/// addresses of that family, only from one of them; where it has none in
/// that family but some in the other, only from the unspecified address;
/// in IPv6 also from a link-local address (but the node's) or the
/// unspecified one. Where it has none at all, from any.
fn may_send_from(addresses: &[IpAddr], src: IpAddr) -> bool {
    if addresses.is_empty() {
        return true;
    }
    if let IpAddr::V6(a) = src
        && (a.is_unspecified() || a.is_unicast_link_local() && a != NODE_LINK_LOCAL)
    {
        return true;
    }
    let mut same_family = addresses
        .iter()
        .filter(|a| a.is_ipv4() == src.is_ipv4())
        .peekable();
    if same_family.peek().is_none() {
        return src == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    }
    same_family.any(|&a| a == src)
}

/// Why a pod with `addresses` may not send a frame that passes without
/// policy, claiming `claim` from IPv6 source `src`: it may announce only
/// what it may send from (and `0.0.0.0`, in an ARP probe), no router
/// message at all, and, where its MAC is checked (`mac_checked`), no
/// link-layer address but its own.
fn claim_refused(
    addresses: &[IpAddr],
    mac_checked: bool,
    src: Option<IpAddr>,
    claim: Claim,
) -> Option<u32> {
    let own = |a: IpAddr| may_send_from(addresses, a);
    let foreign = match claim {
        Claim::Arp(_, foreign) | Claim::Discovery(foreign) | Claim::Advert(_, foreign) => foreign,
        Claim::Nothing | Claim::Router => false,
    };
    if claim == Claim::Router {
        return Some(reason::DROP_ROUTER_MESSAGE);
    }
    if mac_checked && foreign {
        return Some(reason::DROP_SPOOFED_MAC);
    }
    let refused = match claim {
        Claim::Nothing | Claim::Router => false,
        Claim::Arp(spa, _) => !spa.is_unspecified() && !own(IpAddr::V4(spa)),
        Claim::Discovery(_) => !src.is_none_or(own),
        Claim::Advert(target, _) => !src.is_none_or(own) || !own(target),
    };
    refused.then_some(reason::DROP_SPOOFED_SOURCE)
}

/// A flow as conntrack knows it at one end: its two (address, port) ends
/// in a fixed order, the protocol, and which end the endpoint is (so the
/// two ends of a pod-to-pod flow, each an endpoint, are two flows here,
/// as they are two halves of one entry in the datapath).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    lo: (IpAddr, u16),
    hi: (IpAddr, u16),
    protocol: u8,
    local_is_lo: bool,
}

/// A flow seen at `dir` from `src` to `dst`: its key, and whether the
/// packet's source is the key's first end.
fn flow_key(
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    protocol: u8,
    dir: u32,
) -> (FlowKey, bool) {
    let src_is_lo = (src, sport) <= (dst, dport);
    let (lo, hi) = if src_is_lo {
        ((src, sport), (dst, dport))
    } else {
        ((dst, dport), (src, sport))
    };
    let local_is_src = dir == direction::EGRESS;
    let key = FlowKey {
        lo,
        hi,
        protocol,
        local_is_lo: local_is_src == src_is_lo,
    };
    (key, src_is_lo)
}

#[derive(Clone, Copy, Debug)]
pub struct Tracked {
    pub endpoint: u32,
    epoch: u32,
    /// Whether the first end of the key opened the flow.
    opener_lo: bool,
    /// Where the opening packet travelled, at the endpoint.
    pub dir: u32,
}

/// An endpoint placed on this node: its interface, id and policy.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ifindex: u32,
    pub id: u32,
    pub policy: EndpointPolicy,
    /// The pod's addresses, for the generator.
    pub addresses: Vec<IpAddr>,
    /// The only source MAC its frames may have, where it is checked.
    pub mac: Option<[u8; 6]>,
}

/// The policy in force, as the compiler produced it.
pub struct Policy {
    pub compiled: Compiled,
    /// Shared, so that judging a frame borrows no more than it needs.
    pub endpoints: Vec<Rc<Endpoint>>,
    pub pod_denies: BTreeSet<PodDeny>,
    pub node_denies: Vec<IpNet>,
}

/// Everything the model holds: the policy in force, the epoch, and what a
/// run of frames has left in conntrack and the fragment table.
pub struct Model {
    pub policy: Policy,
    pub epoch: u32,
    pub flows: HashMap<FlowKey, Tracked>,
    /// Every key tracked since conntrack was last emptied, in the order
    /// first seen (some since cut): a deterministic way to pick one.
    log: Vec<FlowKey>,
    pub frags: HashMap<FragKey, FirstFragment>,
    identities: HashMap<IpAddr, u32>,
}

/// How the compiler's model judges a new flow: allowed by an entry,
/// audited, denied by an entry or by default, or not enforced.
pub fn judge(ep: &EndpointPolicy, dir: u32, peer: u32, protocol: u8, port: u16) -> Verdict {
    let isolated = if dir == direction::INGRESS {
        endpoint_flags::ISOLATED_INGRESS
    } else {
        endpoint_flags::ISOLATED_EGRESS
    };
    let verdict = match evaluate::matching(ep, dir, peer, protocol, port) {
        Some(e) if e.value.action == action::ALLOW => Verdict::pass(reason::ALLOW_POLICY),
        Some(e) if e.value.flags & policy_flags::AUDIT != 0 => {
            Verdict::pass(reason::AUDIT_WOULD_DROP)
        }
        Some(e) if e.value.policy == 0 => Verdict::drop(reason::DROP_DEFAULT_DENY),
        Some(_) => Verdict::drop(reason::DROP_POLICY_DENY),
        None if ep.flags & isolated != 0 => Verdict::drop(reason::DROP_DEFAULT_DENY),
        None => Verdict::pass(reason::PASS_UNENFORCED),
    };
    debug_assert_eq!(
        verdict.pass,
        evaluate::allows(ep, dir, peer, protocol, port),
        "the reasons read from the compiler's model contradict its own verdict"
    );
    verdict
}

pub fn opposite(dir: u32) -> u32 {
    if dir == direction::INGRESS {
        direction::EGRESS
    } else {
        direction::INGRESS
    }
}

impl Model {
    pub fn new(policy: Policy, epoch: u32) -> Self {
        Self {
            policy,
            epoch,
            flows: HashMap::new(),
            log: Vec::new(),
            frags: HashMap::new(),
            identities: HashMap::new(),
        }
    }

    /// A new policy in force from `epoch` on; tracked flows stay, to be
    /// judged again.
    pub fn replace_policy(&mut self, policy: Policy, epoch: u32) {
        self.policy = policy;
        self.epoch = epoch;
        self.identities.clear();
    }

    /// Conntrack and the fragment table emptied.
    pub fn forget_flows(&mut self) {
        self.flows.clear();
        self.log.clear();
        self.frags.clear();
    }

    pub fn identity(&mut self, ip: IpAddr) -> u32 {
        let compiled = &self.policy.compiled;
        *self
            .identities
            .entry(ip)
            .or_insert_with(|| evaluate::identity_of(compiled, ip))
    }

    pub fn endpoint(&self, ifindex: u32) -> Option<&Rc<Endpoint>> {
        self.policy.endpoints.iter().find(|e| e.ifindex == ifindex)
    }

    /// The interface of the endpoint with id `endpoint`.
    pub fn ifindex_of(&self, endpoint: u32) -> Option<u32> {
        self.policy
            .endpoints
            .iter()
            .find(|e| e.id == endpoint)
            .map(|e| e.ifindex)
    }

    /// The verdict of the prefilter on an uplink.
    pub fn prefilter(&mut self, class: &Class) -> Verdict {
        let source = match class {
            Class::Pass(_, src, _) | Class::Drop(_, src) => *src,
            Class::Ip(p) => Some(p.src),
        };
        if source.is_some_and(|s| self.policy.node_denies.iter().any(|n| n.contains(&s))) {
            return Verdict::drop(reason::DROP_CIDR_DENY);
        }
        let p = match class {
            Class::Pass(why, ..) => return Verdict::pass(*why),
            // Not the prefilter's to judge: the pods' programs and the stack do.
            Class::Drop(..) => return Verdict::pass(reason::PASS_UNENFORCED),
            Class::Ip(p) => *p,
        };
        if p.protocol != TCP || p.flags & (SYN | ACK) != SYN {
            return Verdict::pass(reason::PASS_UNENFORCED);
        }
        let peer = self.identity(p.src);
        let denied = |who: u32| {
            self.policy.pod_denies.iter().any(|d| {
                d.dst == p.dst && d.peer == who && d.port.is_none_or(|port| port == p.dport)
            })
        };
        if denied(peer) || denied(identity::ANY) {
            // The compiler takes only what the pod's own policy is sure to
            // deny: hold it to that.
            if let Some(ep) = self
                .policy
                .endpoints
                .iter()
                .find(|e| e.addresses.contains(&p.dst))
            {
                let own = judge(&ep.policy, direction::INGRESS, peer, TCP, p.dport);
                assert!(
                    !own.pass && own.reason == reason::DROP_POLICY_DENY,
                    "the prefilter drops {p:?}, which the pod's own policy judges {own:?}"
                );
            }
            return Verdict::drop(reason::DROP_XDP_POD_DENY);
        }
        Verdict::pass(reason::PASS_UNENFORCED)
    }

    /// The verdict of a pod's program at `ifindex` in `dir`, with the
    /// conntrack and fragment state it leaves.
    pub fn pod(&mut self, ifindex: u32, dir: u32, class: &Class, mac: Option<[u8; 6]>) -> Verdict {
        if dir == direction::EGRESS
            && let Some(ep) = self.endpoint(ifindex)
            && let (Some(own), Some(mac)) = (ep.mac, mac)
            && own != mac
        {
            return Verdict::drop(reason::DROP_SPOOFED_MAC);
        }
        if let Class::Ip(p) = class
            && dir == direction::EGRESS
            && let Some(ep) = self.endpoint(ifindex)
            && !may_send_from(&ep.addresses, p.src)
        {
            return Verdict::drop(reason::DROP_SPOOFED_SOURCE);
        }
        if let Class::Pass(_, src, claim) = class
            && dir == direction::EGRESS
            && let Some(ep) = self.endpoint(ifindex)
            && let Some(why) = claim_refused(&ep.addresses, ep.mac.is_some(), *src, *claim)
        {
            return Verdict::drop(why);
        }
        let mut untracked = false;
        if let Class::Ip(p) = class
            && p.frag == Frag::None
            && p.quoted.is_none()
        {
            // A flow tracked under the current epoch passes on its entry
            // alone at the endpoint it was judged at; anywhere else the
            // packet is judged by the policy of where it came through.
            let (key, src_is_lo) = flow_key((p.src, p.sport), (p.dst, p.dport), p.protocol, dir);
            let here = self.endpoint(ifindex).map(|e| e.id);
            match self.flows.get(&key) {
                None => untracked = true,
                Some(t) if t.epoch == self.epoch && Some(t.endpoint) == here => {
                    return Verdict::pass(if src_is_lo == t.opener_lo {
                        reason::ALLOW_ESTABLISHED
                    } else {
                        reason::ALLOW_REPLY
                    });
                }
                Some(_) => {}
            }
        }
        let Some(ep) = self.endpoint(ifindex).map(Rc::clone) else {
            return Verdict::pass(reason::PASS_NO_ENDPOINT);
        };
        match class {
            Class::Pass(why, ..) => Verdict::pass(*why),
            Class::Drop(why, _) => Verdict::drop(*why),
            Class::Ip(p) => self.decide(&ep, dir, *p, untracked),
        }
    }

    /// A tracked flow judged again if the epoch moved on: by the policy for
    /// its opening packet, whose peer is the remote end and whose port is
    /// the opener's destination port.
    fn rejudge(&mut self, ep: &Endpoint, key: FlowKey, p: &Flow, dir: u32, is_reply: bool) -> bool {
        let Some(t) = self.flows.get(&key).copied() else {
            return false;
        };
        if t.epoch == self.epoch {
            return true;
        }
        let peer = if dir == direction::EGRESS {
            p.dst
        } else {
            p.src
        };
        let (opener_dir, port) = if is_reply {
            (opposite(dir), p.sport)
        } else {
            (dir, p.dport)
        };
        let peer = self.identity(peer);
        if judge(&ep.policy, opener_dir, peer, p.protocol, port).pass {
            if let Some(t) = self.flows.get_mut(&key) {
                t.epoch = self.epoch;
            }
            true
        } else {
            false
        }
    }

    fn decide(&mut self, ep: &Endpoint, dir: u32, mut p: Pkt, untracked: bool) -> Verdict {
        let frag_key = (p.src, p.dst, p.frag_id, p.frag_protocol);
        if p.frag == Frag::Later {
            match self.frags.get(&frag_key) {
                Some(&(sport, dport, protocol)) => {
                    (p.sport, p.dport, p.protocol) = (sport, dport, protocol);
                }
                None => return Verdict::drop(reason::DROP_FRAGMENT_UNKNOWN),
            }
        }
        if let Some(q) = p.quoted {
            // The quoted packet travelled the other way at this endpoint.
            let inner_dir = opposite(dir);
            let (key, src_is_lo) =
                flow_key((q.src, q.sport), (q.dst, q.dport), q.protocol, inner_dir);
            if let Some(t) = self.flows.get(&key).copied()
                && t.endpoint == ep.id
                && self.rejudge(ep, key, &q, inner_dir, src_is_lo != t.opener_lo)
            {
                return Verdict::pass(reason::ALLOW_RELATED);
            }
        }
        let sides = Flow {
            src: p.src,
            dst: p.dst,
            protocol: p.protocol,
            sport: p.sport,
            dport: p.dport,
        };
        let (key, src_is_lo) = flow_key((p.src, p.sport), (p.dst, p.dport), p.protocol, dir);
        let tracked = if untracked {
            None
        } else {
            self.flows.get(&key).copied()
        };
        if let Some(t) = tracked
            && t.endpoint == ep.id
        {
            let is_reply = src_is_lo != t.opener_lo;
            if !self.rejudge(ep, key, &sides, dir, is_reply) {
                self.flows.remove(&key);
                return Verdict::drop(reason::DROP_REVALIDATED);
            }
            if p.frag == Frag::First {
                self.frags.insert(frag_key, (p.sport, p.dport, p.protocol));
            }
            return Verdict::pass(if p.frag == Frag::Later {
                reason::ALLOW_FRAGMENT
            } else if is_reply {
                reason::ALLOW_REPLY
            } else {
                reason::ALLOW_ESTABLISHED
            });
        }
        let peer = if dir == direction::EGRESS {
            p.dst
        } else {
            p.src
        };
        let peer = self.identity(peer);
        let mut verdict = judge(&ep.policy, dir, peer, p.protocol, p.dport);
        if verdict.pass {
            let fresh = Tracked {
                endpoint: ep.id,
                epoch: self.epoch,
                opener_lo: src_is_lo,
                dir,
            };
            if self.flows.insert(key, fresh).is_none() {
                self.log.push(key);
            }
            if p.frag == Frag::First {
                self.frags.insert(frag_key, (p.sport, p.dport, p.protocol));
            }
            if p.frag == Frag::Later && verdict.reason == reason::ALLOW_POLICY {
                verdict.reason = reason::ALLOW_FRAGMENT;
            }
        }
        verdict
    }

    /// The verdict of `hook` at `ifindex` on frame `f`; `None` when the
    /// kernel refuses to run the program on it.
    pub fn run(&mut self, hook: Hook, ifindex: u32, f: &[u8]) -> Option<(Class, Verdict)> {
        if refused(hook, f) {
            return None;
        }
        let class = classify(f);
        // A frame too short to hold a source MAC is parsing's to drop.
        let mac = at::<6>(f, 6);
        let verdict = match hook {
            Hook::Prefilter => self.prefilter(&class),
            Hook::TcIngress => self.pod(ifindex, direction::INGRESS, &class, mac),
            Hook::TcEgress | Hook::XdpEgress => self.pod(ifindex, direction::EGRESS, &class, mac),
        };
        Some((class, verdict))
    }

    /// A tracked flow, for frames that continue it: as its opening packet
    /// carried it, with its entry. `n` picks one of those tracked since
    /// conntrack was last emptied; `None` when that one was cut since.
    pub fn tracked(&self, n: usize) -> Option<(Flow, Tracked)> {
        let key = self.log.get(n.checked_rem(self.log.len())?)?;
        let t = self.flows.get(key)?;
        let (opener, other) = if t.opener_lo {
            (key.lo, key.hi)
        } else {
            (key.hi, key.lo)
        };
        Some((
            Flow {
                src: opener.0,
                dst: other.0,
                protocol: key.protocol,
                sport: opener.1,
                dport: other.1,
            },
            *t,
        ))
    }
}
