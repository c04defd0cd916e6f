//! Frames for the datapath from a seeded generator: random bytes,
//! well-formed frames from the policy's own space (its pods, CIDR peers,
//! ports and protocols, so that allows are hit as often as drops), frames
//! that continue or answer the flows the run has opened, and mutations of
//! all of them (cut short at every layer, bad header and total lengths,
//! every ethertype, nested VLAN tags, IPv6 extension chains, fragments in
//! every order, TCP flag combinations, ICMP errors quoting inner packets).
//!
//! The generator never decides what a frame should do: the model does.

use std::{collections::VecDeque, net::IpAddr};

use ebpf_common::datapath::direction;
use ipnet::IpNet;
use palisade_tests::{datapath_harness::Hook, packet};

use super::model::{
    ACK, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, Flow, ICMP, ICMPV6, Model,
    NODE_LINK_LOCAL, SCTP, SYN, TCP, UDP, opposite,
};

/// splitmix64: small, fast and the same everywhere, so a seed replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Which generator made a frame (for the summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Random,
    RandomTyped,
    Flow,
    Entry,
    Continued,
    Mutated,
    Fragment,
    IcmpError,
    Special,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Random,
        Kind::RandomTyped,
        Kind::Flow,
        Kind::Entry,
        Kind::Continued,
        Kind::Mutated,
        Kind::Fragment,
        Kind::IcmpError,
        Kind::Special,
    ];
}

/// One frame for one program on one interface.
#[derive(Clone, Debug)]
pub struct Case {
    pub hook: Hook,
    pub ifindex: u32,
    pub frame: Vec<u8>,
    pub kind: Kind,
}

/// What frames are made of: the interfaces the pod hooks run on, the local
/// pods' addresses by interface, and the peers' addresses.
pub struct Universe {
    /// `(ifindex, addresses)` of each endpoint.
    pub endpoints: Vec<(u32, Vec<IpAddr>)>,
    /// An interface that is no endpoint.
    pub stranger: u32,
    /// Other pods, CIDR peers inside and outside their exceptions, denied
    /// sources, the world, and IPv4-mapped IPv6 forms of some of them.
    pub peers: Vec<IpAddr>,
    /// The first and last port of every policy entry's range and their
    /// neighbours outside it.
    pub ports: Vec<u16>,
}

/// Ports that policies name, their neighbours, and the extremes.
const PORTS: [u16; 24] = [
    0, 1, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 1500, 2047, 2048, 5432, 7999, 8000, 8050, 8079,
    8080, 8089, 8099, 8100, 65535,
];

const ETHERTYPES: [u16; 16] = [
    ETH_P_IP,
    ETH_P_IPV6,
    0x0806,
    ETH_P_8021Q,
    ETH_P_8021AD,
    0x9100,
    0x8847,
    0x88cc,
    0x8864,
    0x8035,
    0x88e5,
    0x0000,
    0x05dc,
    0x0600,
    0xffff,
    0x86de,
];

/// A frame as built, with where its layers start, for mutations.
struct Built {
    frame: Vec<u8>,
    l3: usize,
    l4: Option<usize>,
    v6: bool,
    protocol: u8,
}

/// An IPv6 extension header: its type and its bytes after the first two
/// (next header and length), which the builder fills in.
#[derive(Clone)]
struct Ext {
    kind: u8,
    body: Vec<u8>,
}

impl Ext {
    /// A well-formed hop-by-hop, routing or destination-options header of
    /// `units` 8-byte units past the first.
    fn options(kind: u8, units: u8) -> Self {
        Self {
            kind,
            body: vec![0; 6 + 8 * usize::from(units)],
        }
    }

    fn fragment(offset: u16, more: bool, id: u32) -> Self {
        let field = (offset << 3) | u16::from(more);
        let mut body = field.to_be_bytes().to_vec();
        body.extend_from_slice(&id.to_be_bytes());
        Self { kind: 44, body }
    }

    /// The header's length field for its body (AH counts 4-byte units).
    fn length_field(&self) -> u8 {
        let total = self.body.len() + 2;
        if self.kind == 51 {
            (total / 4).saturating_sub(2) as u8
        } else if self.kind == 44 {
            0
        } else {
            (total / 8).saturating_sub(1) as u8
        }
    }
}

/// An IPv6 packet whose extension headers are `exts`, then `proto`.
fn ipv6_packet(src: IpAddr, dst: IpAddr, exts: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |n| n.kind);
        body.push(next);
        body.push(e.length_field());
        body.extend_from_slice(&e.body);
    }
    body.extend_from_slice(payload);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.push(exts.first().map_or(proto, |e| e.kind));
    p.push(64);
    p.extend_from_slice(&octets(src));
    p.extend_from_slice(&octets(dst));
    p.extend_from_slice(&body);
    p
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn octets4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    }
}

/// Ethernet with `tags` VLAN tags (their TPIDs) before `ethertype`.
fn ethernet(tags: &[u16], ethertype: u16, payload: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut f = rng.bytes(12);
    for &tpid in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(rng.u16() & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn is_v6(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(_))
}

/// One of `addrs` in `v6`'s family, any of them (a pod may have several:
/// the endpoint holds one, the prefix map the others).
fn one_of(addrs: &[IpAddr], v6: bool, rng: &mut Rng) -> Option<IpAddr> {
    let family: Vec<IpAddr> = addrs.iter().copied().filter(|a| is_v6(*a) == v6).collect();
    (!family.is_empty()).then(|| family[rng.below(family.len())])
}

/// An address inside `net`.
fn within(net: IpNet, rng: &mut Rng) -> IpAddr {
    let random = u128::from(rng.next()) << 64 | u128::from(rng.next());
    match net {
        IpNet::V4(n) => {
            let host = u32::from(n.hostmask()) & random as u32;
            IpAddr::V4((u32::from(n.network()) | host).into())
        }
        IpNet::V6(n) => {
            let host = u128::from(n.hostmask()) & random;
            IpAddr::V6((u128::from(n.network()) | host).into())
        }
    }
}

fn case(hook: Hook, ifindex: u32, frame: Vec<u8>, kind: Kind) -> Case {
    Case {
        hook,
        ifindex,
        frame,
        kind,
    }
}

pub struct Generator {
    rng: Rng,
    u: Universe,
    /// Fragments of datagrams already begun, to come in their order.
    pending: VecDeque<Case>,
}

impl Generator {
    pub fn new(seed: u64, u: Universe) -> Self {
        Self {
            rng: Rng::new(seed),
            u,
            pending: VecDeque::new(),
        }
    }

    /// The next frame. A bridged pod's frames mostly come from its MAC,
    /// as a pod's do: from any other, every frame it sent would be dropped
    /// before what it carries were judged (random frames keep theirs).
    pub fn next(&mut self, model: &Model) -> Case {
        let mut case = self.next_from_anywhere(model);
        if matches!(case.hook, Hook::TcEgress | Hook::XdpEgress)
            && case.kind != Kind::Random
            && let Some(mac) = model.endpoint(case.ifindex).and_then(|e| e.mac)
            && let Some(from) = case.frame.get_mut(6..12)
            && self.rng.chance(90)
        {
            from.copy_from_slice(&mac);
        }
        case
    }

    fn next_from_anywhere(&mut self, model: &Model) -> Case {
        if !self.pending.is_empty()
            && self.rng.chance(50)
            && let Some(c) = self.pending.pop_front()
        {
            return c;
        }
        match self.rng.below(100) {
            0..8 => self.random(),
            8..13 => self.random_typed(),
            13..33 => {
                let (hook, ifindex) = self.place();
                let b = self.flow_frame(hook, ifindex);
                case(hook, ifindex, b.frame, Kind::Flow)
            }
            33..45 => self.entry_flow(model),
            45..62 => self.continued(model),
            62..80 => self.mutated(),
            80..86 => self.fragments(),
            88..95 => self.icmp_error(model),
            _ => self.special(model),
        }
    }

    /// A program and an interface: mostly an endpoint's, sometimes one that
    /// is none (the prefilter does not read it).
    fn place(&mut self) -> (Hook, u32) {
        let hook = match self.rng.below(100) {
            0..30 => Hook::TcIngress,
            30..55 => Hook::TcEgress,
            55..75 => Hook::XdpEgress,
            _ => Hook::Prefilter,
        };
        let ifindex = if self.rng.chance(8) {
            self.u.stranger
        } else {
            self.u.endpoints[self.rng.below(self.u.endpoints.len())].0
        };
        (hook, ifindex)
    }

    fn random(&mut self) -> Case {
        let (hook, ifindex) = self.place();
        let len = if self.rng.chance(10) {
            self.rng.below(14)
        } else {
            self.rng.below(160)
        };
        let frame = self.rng.bytes(len);
        case(hook, ifindex, frame, Kind::Random)
    }

    /// Random bytes behind a chosen ethertype, the IP version nibble
    /// sometimes right.
    fn random_typed(&mut self) -> Case {
        let (hook, ifindex) = self.place();
        let ethertype = self.rng.pick(&ETHERTYPES);
        let len = self.rng.below(120);
        let mut payload = self.rng.bytes(len);
        if let Some(first) = payload.first_mut()
            && self.rng.chance(60)
        {
            let version = if ethertype == ETH_P_IPV6 { 6 } else { 4 };
            *first = (version << 4) | (*first & 0x0f);
        }
        let tags = self.tags();
        let frame = ethernet(&tags, ethertype, &payload, &mut self.rng);
        case(hook, ifindex, frame, Kind::RandomTyped)
    }

    /// Usually none; up to two (parsed through); sometimes more.
    fn tags(&mut self) -> Vec<u16> {
        let n = match self.rng.below(100) {
            0..80 => 0,
            80..90 => 1,
            90..96 => 2,
            96..99 => 3,
            _ => 4,
        };
        (0..n)
            .map(|_| {
                self.rng
                    .pick(&[ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021AD, 0x9100])
            })
            .collect()
    }

    fn port(&mut self) -> u16 {
        match self.rng.below(10) {
            0..4 => self.rng.pick(&PORTS),
            4..8 => self.u.ports[self.rng.below(self.u.ports.len())],
            _ => self.rng.u16(),
        }
    }

    fn protocol(&mut self, v6: bool) -> u8 {
        let icmp = if v6 { ICMPV6 } else { ICMP };
        match self.rng.below(100) {
            0..42 => TCP,
            42..66 => UDP,
            66..76 => icmp,
            76..84 => SCTP,
            // The other family's ICMP, tunnels, IPsec, the reserved ends.
            84..88 => {
                if v6 {
                    ICMP
                } else {
                    ICMPV6
                }
            }
            _ => self.rng.pick(&[47, 50, 4, 41, 0, 255, 136, 33]),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.below(100) {
            0..40 => SYN,
            40..55 => ACK,
            55..65 => SYN | ACK,
            65..70 => 0x11,     // FIN|ACK
            70..74 => 0x04,     // RST
            74..77 => 0x14,     // RST|ACK
            77..80 => 0x03,     // SYN|FIN
            80..82 => 0,        // none
            _ => self.rng.u8(), // anything
        }
    }

    /// An address of `v6`'s family for the far end: usually one of the
    /// universe's peers, sometimes any address at all.
    fn peer(&mut self, v6: bool) -> IpAddr {
        if self.rng.chance(85) {
            for _ in 0..8 {
                let p = self.rng.pick(&self.u.peers);
                if is_v6(p) == v6 {
                    return p;
                }
            }
        }
        if v6 {
            IpAddr::from(
                (u128::from(self.rng.next()) << 64 | u128::from(self.rng.next())).to_be_bytes(),
            )
        } else {
            IpAddr::from((self.rng.next() as u32).to_be_bytes())
        }
    }

    /// The local pod's address on `ifindex` in `v6`'s family, or (at an
    /// interface that is no endpoint) any peer.
    fn local(&mut self, ifindex: u32, v6: bool) -> IpAddr {
        let own = self
            .u
            .endpoints
            .iter()
            .find(|(i, _)| *i == ifindex)
            .map(|(_, addrs)| addrs.clone())
            .and_then(|addrs| one_of(&addrs, v6, &mut self.rng));
        match own {
            Some(a) if self.rng.chance(95) => a,
            _ => self.peer(v6),
        }
    }

    /// An address a frame from the pod at `ifindex` announces as its own:
    /// mostly one of its addresses, else the unspecified one, a
    /// link-local one (IPv6) or a peer's.
    fn claimed(&mut self, ifindex: u32, v6: bool) -> IpAddr {
        match self.rng.below(10) {
            0 if v6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            0 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            1 if v6 && self.rng.chance(30) => IpAddr::V6(NODE_LINK_LOCAL),
            1 if v6 => IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7)),
            1 | 2 => self.peer(v6),
            _ => self.local(ifindex, v6),
        }
    }

    /// A local pod's address, for the prefilter's destination.
    fn any_local(&mut self, v6: bool) -> IpAddr {
        let ifindex = self.u.endpoints[self.rng.below(self.u.endpoints.len())].0;
        self.local(ifindex, v6)
    }

    /// Source and destination of a new flow through `hook` at `ifindex`.
    fn ends(&mut self, hook: Hook, ifindex: u32, v6: bool) -> (IpAddr, IpAddr) {
        match hook {
            Hook::Prefilter => {
                let dst = if self.rng.chance(75) {
                    self.any_local(v6)
                } else {
                    self.peer(v6)
                };
                (self.peer(v6), dst)
            }
            _ => {
                let local = self.local(ifindex, v6);
                let far = if self.rng.chance(4) {
                    local
                } else {
                    self.peer(v6)
                };
                if hook.direction() == direction::INGRESS {
                    (far, local)
                } else {
                    (local, far)
                }
            }
        }
    }

    /// The transport header (and a little payload) that carries `ports`
    /// for `protocol`: for ICMP echo the identifier (request: source port,
    /// reply: destination port).
    fn transport(
        &mut self,
        v6: bool,
        protocol: u8,
        (sport, dport): (u16, u16),
        flags: u8,
    ) -> Vec<u8> {
        let extra = self.rng.below(24);
        let mut t = match protocol {
            TCP => packet::tcp(sport, dport, flags),
            UDP => packet::udp(sport, dport),
            SCTP => {
                let mut s = sport.to_be_bytes().to_vec();
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&[0; 8]);
                s
            }
            p if p == ICMP && !v6 || p == ICMPV6 && v6 => {
                let (kind, id) = match (sport, dport) {
                    (0, 0) => (self.rng.pick(&[13, 14, 5, 9, 200]), 0),
                    (id, 0) => (if v6 { 128 } else { 8 }, id),
                    (_, id) => (if v6 { 129 } else { 0 }, id),
                };
                let mut rest = [0u8; 4];
                rest[..2].copy_from_slice(&id.to_be_bytes());
                packet::icmp(kind, rest, &[])
            }
            _ => Vec::new(),
        };
        t.extend(self.rng.bytes(extra));
        t
    }

    /// The ports a new flow of `protocol` carries.
    fn ports(&mut self, v6: bool, protocol: u8) -> (u16, u16) {
        match protocol {
            TCP | UDP | SCTP => (self.port(), self.port()),
            p if p == ICMP && !v6 || p == ICMPV6 && v6 => match self.rng.below(10) {
                0..6 => (self.rng.u16().max(1), 0),
                6..8 => (0, self.rng.u16().max(1)),
                _ => (0, 0),
            },
            _ => (0, 0),
        }
    }

    /// An IP packet in Ethernet: `exts` for IPv6, VLAN tags sometimes.
    fn frame(
        &mut self,
        (src, dst): (IpAddr, IpAddr),
        protocol: u8,
        l4: &[u8],
        exts: &[Ext],
    ) -> Built {
        let v6 = is_v6(src);
        let tags = if self.rng.chance(88) {
            Vec::new()
        } else {
            self.tags()
        };
        let (ethertype, ip, l4_at) = if v6 {
            let ext_len: usize = exts.iter().map(|e| e.body.len() + 2).sum();
            let ip = ipv6_packet(src, dst, exts, protocol, l4);
            (ETH_P_IPV6, ip, 40 + ext_len)
        } else {
            let id = self.rng.u16();
            let ip = packet::ipv4(octets4(src), octets4(dst), protocol, (id, 0, false), l4);
            (ETH_P_IP, ip, 20)
        };
        let frame = ethernet(&tags, ethertype, &ip, &mut self.rng);
        let l3 = 14 + 4 * tags.len();
        Built {
            frame,
            l3,
            l4: Some(l3 + l4_at),
            v6,
            protocol,
        }
    }

    /// A short, well-formed chain of IPv6 extension headers, usually none.
    fn exts(&mut self) -> Vec<Ext> {
        if self.rng.chance(80) {
            return Vec::new();
        }
        let n = 1 + self.rng.below(3);
        (0..n)
            .map(|_| match self.rng.below(5) {
                0 => Ext::options(0, self.rng.pick(&[0, 1])),
                1 => Ext::options(43, self.rng.pick(&[0, 2])),
                2 => Ext {
                    kind: 51,
                    body: vec![0; 10],
                },
                3 => Ext::fragment(0, false, self.rng.next() as u32),
                _ => Ext::options(60, self.rng.pick(&[0, 1])),
            })
            .collect()
    }

    /// A well-formed frame of a new flow from the policy's space.
    fn flow_frame(&mut self, hook: Hook, ifindex: u32) -> Built {
        let v6 = self.rng.chance(45);
        let ends = self.ends(hook, ifindex, v6);
        let protocol = self.protocol(v6);
        let ports = self.ports(v6, protocol);
        let flags = self.tcp_flags();
        let l4 = self.transport(v6, protocol, ports, flags);
        let exts = if v6 { self.exts() } else { Vec::new() };
        self.frame(ends, protocol, &l4, &exts)
    }

    /// A new flow that one of an endpoint's policy entries covers: a peer
    /// of the entry's identity (an address of one of its prefixes), its
    /// protocol, a port in its range.
    fn entry_flow(&mut self, model: &Model) -> Case {
        let endpoints = &model.policy.endpoints;
        let ep = &endpoints[self.rng.below(endpoints.len())];
        let (hook, ifindex) = (Hook::TcIngress, ep.ifindex);
        if ep.policy.entries.is_empty() {
            let b = self.flow_frame(hook, ifindex);
            return case(hook, ifindex, b.frame, Kind::Flow);
        }
        let e = ep.policy.entries[self.rng.below(ep.policy.entries.len())];
        let nets: Vec<IpNet> = model
            .policy
            .compiled
            .addresses
            .iter()
            .filter(|(_, id)| **id == e.peer)
            .map(|(net, _)| *net)
            .collect();
        let far = if nets.is_empty() {
            let v6 = self.rng.chance(45);
            self.peer(v6)
        } else {
            let net = nets[self.rng.below(nets.len())];
            within(net, &mut self.rng)
        };
        let v6 = is_v6(far);
        let Some(local) = one_of(&ep.addresses, v6, &mut self.rng) else {
            let b = self.flow_frame(hook, ifindex);
            return case(hook, ifindex, b.frame, Kind::Flow);
        };
        let hook = if e.direction == direction::INGRESS {
            Hook::TcIngress
        } else if self.rng.chance(35) {
            Hook::XdpEgress
        } else {
            Hook::TcEgress
        };
        let ends = if e.direction == direction::INGRESS {
            (far, local)
        } else {
            (local, far)
        };
        let protocol = e.protocol.unwrap_or_else(|| self.protocol(v6));
        let span = usize::from(e.ports.1 - e.ports.0) + 1;
        let port = e.ports.0 + self.rng.below(span) as u16;
        let ports = match protocol {
            TCP | UDP | SCTP => (self.port(), port),
            _ => self.ports(v6, protocol),
        };
        let flags = if self.rng.chance(70) {
            SYN
        } else {
            self.tcp_flags()
        };
        let l4 = self.transport(v6, protocol, ports, flags);
        let b = self.frame(ends, protocol, &l4, &[]);
        case(hook, ep.ifindex, b.frame, Kind::Entry)
    }

    /// A packet of a flow the run has opened: more of it, or its reply,
    /// where the flow's endpoint sees them, now and then somewhere else.
    fn continued(&mut self, model: &Model) -> Case {
        let pick = self.rng.next() as usize;
        let Some((f, t)) = model.tracked(pick) else {
            let (hook, ifindex) = self.place();
            let b = self.flow_frame(hook, ifindex);
            return case(hook, ifindex, b.frame, Kind::Flow);
        };
        let ifindex = model.ifindex_of(t.endpoint).unwrap_or(self.u.stranger);
        let reply = self.rng.chance(45);
        let dir = if reply { opposite(t.dir) } else { t.dir };
        let mut hook = if dir == direction::INGRESS {
            Hook::TcIngress
        } else if self.rng.chance(30) {
            Hook::XdpEgress
        } else {
            Hook::TcEgress
        };
        let mut ifindex = ifindex;
        if self.rng.chance(8) {
            (hook, ifindex) = self.place();
        }
        let (ends, ports) = if reply {
            ((f.dst, f.src), (f.dport, f.sport))
        } else {
            ((f.src, f.dst), (f.sport, f.dport))
        };
        let flags = match self.rng.below(10) {
            0..5 => ACK,
            5..7 => {
                if reply {
                    SYN | ACK
                } else {
                    0x18
                }
            }
            7 => 0x11,
            8 => 0x04,
            _ => self.rng.u8(),
        };
        let v6 = is_v6(f.src);
        let l4 = self.transport(v6, f.protocol, ports, flags);
        let b = self.frame(ends, f.protocol, &l4, &[]);
        case(hook, ifindex, b.frame, Kind::Continued)
    }

    /// A well-formed frame with one to three things wrong with it.
    fn mutated(&mut self) -> Case {
        let (hook, ifindex) = self.place();
        // Now and then an IPv6 frame with a random extension chain, its
        // lengths wild.
        let mut b = if self.rng.chance(15) {
            self.wild_chain(hook, ifindex)
        } else {
            self.flow_frame(hook, ifindex)
        };
        for _ in 0..1 + self.rng.below(3) {
            self.mutate(&mut b);
        }
        case(hook, ifindex, b.frame, Kind::Mutated)
    }

    fn wild_chain(&mut self, hook: Hook, ifindex: u32) -> Built {
        let ends = self.ends(hook, ifindex, true);
        let protocol = self.protocol(true);
        let ports = self.ports(true, protocol);
        let flags = self.tcp_flags();
        let l4 = self.transport(true, protocol, ports, flags);
        // Sometimes more headers than the datapath walks, all walkable.
        let (n, kinds): (usize, &[u8]) = if self.rng.chance(25) {
            (5 + self.rng.below(4), &[0, 43, 60, 51, 44])
        } else {
            (self.rng.below(9), &[0, 43, 60, 60, 51, 44, 59, 135, 253])
        };
        let exts: Vec<Ext> = (0..n)
            .map(|_| {
                let kind = self.rng.pick(kinds);
                let len = match self.rng.below(10) {
                    0..7 => 6 + 8 * self.rng.below(3),
                    7..9 => 6,
                    _ => 6 + 8 * self.rng.below(40),
                };
                let mut body = self.rng.bytes(len);
                if kind == 44 && self.rng.chance(60) {
                    // Mostly offset 0; the id as it comes.
                    body[0] = 0;
                    body[1] &= 0x01;
                }
                Ext { kind, body }
            })
            .collect();
        let mut b = self.frame(ends, protocol, &l4, &exts);
        // Lengths that promise more (or less) than there is.
        if !exts.is_empty() && self.rng.chance(30) {
            let mut off = b.l3 + 40;
            let which = self.rng.below(exts.len());
            for (i, e) in exts.iter().enumerate() {
                if i == which {
                    if let Some(len) = b.frame.get_mut(off + 1) {
                        *len = self.rng.u8();
                    }
                    break;
                }
                off += e.body.len() + 2;
            }
        }
        b
    }

    fn mutate(&mut self, b: &mut Built) {
        let f = &mut b.frame;
        match self.rng.below(12) {
            // Cut short: anywhere, or just around a layer's start.
            0 | 1 => {
                let cut = match self.rng.below(3) {
                    0 => self.rng.below(f.len() + 1),
                    1 => (b.l3 + self.rng.below(44)).saturating_sub(2),
                    _ => {
                        b.l4.map_or(f.len(), |l4| (l4 + self.rng.below(24)).saturating_sub(2))
                    }
                };
                f.truncate(cut);
            }
            // The IPv4 IHL or the version nibble.
            2 => {
                if let Some(v) = f.get_mut(b.l3) {
                    *v = if self.rng.chance(50) {
                        (*v & 0xf0) | (self.rng.u8() & 0x0f)
                    } else {
                        (self.rng.u8() << 4) | (*v & 0x0f)
                    };
                }
            }
            // The total length (IPv4) or payload length (IPv6).
            3 => {
                let at = b.l3 + if b.v6 { 4 } else { 2 };
                let len = self.rng.u16();
                if let Some(field) = f.get_mut(at..at + 2) {
                    field.copy_from_slice(&len.to_be_bytes());
                }
            }
            // Another ethertype in the last one's place.
            4 => {
                let at = b.l3 - 2;
                let ethertype = self.rng.pick(&ETHERTYPES);
                if let Some(field) = f.get_mut(at..at + 2) {
                    field.copy_from_slice(&ethertype.to_be_bytes());
                }
            }
            // More VLAN tags in front.
            5 if f.len() >= 12 => {
                let n = 1 + self.rng.below(3);
                for _ in 0..n {
                    let tpid = self.rng.pick(&[ETH_P_8021Q, ETH_P_8021AD, 0x9100]);
                    let mut tag = tpid.to_be_bytes().to_vec();
                    tag.extend_from_slice(&self.rng.u16().to_be_bytes());
                    f.splice(12..12, tag);
                }
                b.l3 += 4 * n;
                b.l4 = b.l4.map(|l4| l4 + 4 * n);
            }
            // TCP flags.
            6 => {
                if b.protocol == TCP
                    && let Some(flags) = b.l4.and_then(|l4| f.get_mut(l4 + 13))
                {
                    *flags = self.rng.u8();
                }
            }
            // IPv4 options: a longer header, its options real or not.
            7 => {
                if !b.v6 && f.len() >= b.l3 + 20 && f[b.l3] == 0x45 {
                    let words = 1 + self.rng.below(10);
                    let options = if self.rng.chance(50) {
                        vec![1; 4 * words]
                    } else {
                        self.rng.bytes(4 * words)
                    };
                    f.splice(b.l3 + 20..b.l3 + 20, options);
                    f[b.l3] = 0x40 | (5 + words as u8);
                    b.l4 = b.l4.map(|l4| l4 + 4 * words);
                }
            }
            // The IP protocol (IPv4) or first next header (IPv6).
            8 => {
                let at = b.l3 + if b.v6 { 6 } else { 9 };
                let protocol = self
                    .rng
                    .pick(&[TCP, UDP, ICMP, ICMPV6, SCTP, 0, 43, 44, 60, 59]);
                if let Some(p) = f.get_mut(at) {
                    *p = protocol;
                }
            }
            // IPv4 fragment fields.
            9 => {
                if !b.v6
                    && let Some(field) = f.get_mut(b.l3 + 6..b.l3 + 8)
                {
                    let v = self
                        .rng
                        .pick(&[0x2000, 0x0001, 0x2001, 0x4000, 0x8000, 0x1fff]);
                    field.copy_from_slice(&u16::to_be_bytes(v));
                }
            }
            // Another source MAC.
            10 => {
                if let Some(mac) = f.get_mut(6..12) {
                    mac.copy_from_slice(&self.rng.bytes(6));
                }
            }
            // A few bytes flipped anywhere.
            _ => {
                for _ in 0..1 + self.rng.below(3) {
                    if !f.is_empty() {
                        let at = self.rng.below(f.len());
                        f[at] ^= 1 << self.rng.below(8);
                    }
                }
            }
        }
    }

    /// A fragmented datagram: its first fragment now, the others (first,
    /// middle and last, in order, reversed or shuffled, one sometimes lost
    /// or sent twice) over the next frames.
    fn fragments(&mut self) -> Case {
        let (hook, ifindex) = self.place();
        let v6 = self.rng.chance(45);
        let ends = self.ends(hook, ifindex, v6);
        let protocol = match self.rng.below(10) {
            0..5 => UDP,
            5..7 => TCP,
            7..9 => {
                if v6 {
                    ICMPV6
                } else {
                    ICMP
                }
            }
            _ => self.protocol(v6),
        };
        let ports = self.ports(v6, protocol);
        let flags = self.tcp_flags();
        let mut datagram = self.transport(v6, protocol, ports, flags);
        let extra = 16 + self.rng.below(160);
        datagram.extend(self.rng.bytes(extra));
        // IPv6: destination options may lead the fragmentable part.
        let (first_header, unfragmentable) = if v6 {
            let before = if self.rng.chance(20) {
                vec![Ext::options(0, 0)]
            } else {
                Vec::new()
            };
            if self.rng.chance(25) {
                let mut opts = vec![protocol, 0];
                opts.extend_from_slice(&[0; 6]);
                opts.extend(datagram);
                datagram = opts;
                (60, before)
            } else {
                (protocol, before)
            }
        } else {
            (protocol, Vec::new())
        };
        // Cut at 8-byte boundaries; the first piece sometimes shorter than
        // the transport header.
        let mut cuts = vec![0];
        let mut at = 0;
        while at < datagram.len() {
            let step = if at == 0 && self.rng.chance(10) {
                8
            } else {
                8 * (1 + self.rng.below(8))
            };
            at = (at + step).min(datagram.len());
            cuts.push(at);
        }
        let id = self.rng.next() as u32;
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        for w in cuts.windows(2) {
            let (from, to) = (w[0], w[1]);
            let more = to < datagram.len();
            let payload = &datagram[from..to];
            let offset = (from / 8) as u16;
            let tags = if self.rng.chance(95) {
                Vec::new()
            } else {
                self.tags()
            };
            let frame = if v6 {
                let mut exts = unfragmentable.clone();
                exts.push(Ext::fragment(offset, more, id));
                let ip = ipv6_packet(ends.0, ends.1, &exts, first_header, payload);
                ethernet(&tags, ETH_P_IPV6, &ip, &mut self.rng)
            } else {
                let ip = packet::ipv4(
                    octets4(ends.0),
                    octets4(ends.1),
                    protocol,
                    (id as u16, offset, more),
                    payload,
                );
                ethernet(&tags, ETH_P_IP, &ip, &mut self.rng)
            };
            pieces.push(frame);
        }
        match self.rng.below(10) {
            0..4 => {}
            4..6 => pieces.reverse(),
            _ => {
                for i in (1..pieces.len()).rev() {
                    let j = self.rng.below(i + 1);
                    pieces.swap(i, j);
                }
            }
        }
        if pieces.len() > 1 && self.rng.chance(15) {
            let lost = self.rng.below(pieces.len());
            pieces.remove(lost);
        }
        if self.rng.chance(10) {
            let twice = pieces[self.rng.below(pieces.len())].clone();
            pieces.push(twice);
        }
        let mut pieces = pieces.into_iter();
        let first = pieces.next().unwrap_or_default();
        for frame in pieces {
            self.pending
                .push_back(case(hook, ifindex, frame, Kind::Fragment));
        }
        case(hook, ifindex, first, Kind::Fragment)
    }

    /// An ICMP or ICMPv6 error quoting a packet of a tracked flow (sent by
    /// either end) or of any flow, where the quoted packet's sender receives
    /// it; the quote sometimes damaged.
    fn icmp_error(&mut self, model: &Model) -> Case {
        let pick = self.rng.next() as usize;
        let tracked = if self.rng.chance(65) {
            model.tracked(pick)
        } else {
            None
        };
        let (hook, ifindex, quoted) = match tracked {
            Some((f, t)) => {
                let ifindex = model.ifindex_of(t.endpoint).unwrap_or(self.u.stranger);
                // The opener's packet went out in `t.dir`; its error comes
                // back the other way. A reply's went the other way.
                let (quoted, sent) = if self.rng.chance(60) {
                    (f, t.dir)
                } else {
                    (
                        Flow {
                            src: f.dst,
                            dst: f.src,
                            sport: f.dport,
                            dport: f.sport,
                            ..f
                        },
                        opposite(t.dir),
                    )
                };
                let hook = if sent == direction::EGRESS {
                    Hook::TcIngress
                } else if self.rng.chance(30) {
                    Hook::XdpEgress
                } else {
                    Hook::TcEgress
                };
                (hook, ifindex, quoted)
            }
            None => {
                let (hook, ifindex) = self.place();
                let v6 = self.rng.chance(45);
                let (src, dst) = self.ends(hook, ifindex, v6);
                let protocol = self.protocol(v6);
                let (sport, dport) = self.ports(v6, protocol);
                // The error goes to the quoted packet's sender.
                let quoted = Flow {
                    src: dst,
                    dst: src,
                    protocol,
                    sport,
                    dport,
                };
                (hook, ifindex, quoted)
            }
        };
        let v6 = is_v6(quoted.src);
        let inner_l4 = self.transport(v6, quoted.protocol, (quoted.sport, quoted.dport), SYN);
        let mut inner = if v6 {
            ipv6_packet(quoted.src, quoted.dst, &[], quoted.protocol, &inner_l4)
        } else {
            let id = self.rng.u16();
            packet::ipv4(
                octets4(quoted.src),
                octets4(quoted.dst),
                quoted.protocol,
                (id, 0, false),
                &inner_l4,
            )
        };
        match self.rng.below(10) {
            0 => {
                let cut = self.rng.below(inner.len() + 1);
                inner.truncate(cut);
            }
            1 => inner[0] = (inner[0] & 0xf0) | (self.rng.u8() & 0x0f),
            2 => inner[0] = (self.rng.u8() << 4) | (inner[0] & 0x0f),
            _ => {}
        }
        let kind = if v6 {
            self.rng.pick(&[1, 1, 2, 3, 4])
        } else {
            self.rng.pick(&[3, 3, 11, 12])
        };
        let icmp = packet::icmp(kind, [0; 4], &inner);
        // From the far end of the quoted packet, or a router on the way.
        let from = if self.rng.chance(60) {
            quoted.dst
        } else {
            self.peer(v6)
        };
        let protocol = if v6 { ICMPV6 } else { ICMP };
        let b = self.frame((from, quoted.src), protocol, &icmp, &[]);
        case(hook, ifindex, b.frame, Kind::IcmpError)
    }

    /// Neighbour discovery and other ICMPv6 the link needs, ARP, and other
    /// ethertypes that carry no IP. What ARP and neighbour advertisements
    /// announce is mostly the sender's own address, else a link-local, the
    /// unspecified or a peer's one; the link-layer address they announce
    /// is mostly a bridged pod's own MAC, which `next` mostly sends them
    /// from.
    fn special(&mut self, model: &Model) -> Case {
        let (hook, ifindex) = self.place();
        let own = model
            .endpoint(ifindex)
            .and_then(|e| e.mac)
            .unwrap_or([2, 0, 0, 0, 0, 1]);
        let frame = match self.rng.below(5) {
            0 | 1 => {
                let (mut src, dst) = self.ends(hook, ifindex, true);
                if self.rng.chance(15) {
                    src = self.claimed(ifindex, true);
                }
                let kind = self
                    .rng
                    .pick(&[130, 131, 132, 133, 134, 135, 136, 137, 143, 138, 139]);
                let body = match self.rng.below(3) {
                    0 => Vec::new(),
                    1 => self.rng.bytes(16),
                    _ => match self.claimed(ifindex, true) {
                        IpAddr::V6(a) => a.octets().to_vec(),
                        IpAddr::V4(_) => unreachable!("asked for IPv6"),
                    },
                };
                let mut body = body;
                if self.rng.chance(60) {
                    body.extend(self.nd_options(own));
                }
                let icmp = packet::icmp(kind, [0; 4], &body);
                let exts = if self.rng.chance(30) {
                    vec![Ext::options(0, 0)]
                } else {
                    Vec::new()
                };
                self.frame((src, dst), ICMPV6, &icmp, &exts).frame
            }
            2 => {
                let mut arp = self.rng.bytes(28);
                if self.rng.chance(80) {
                    let IpAddr::V4(spa) = self.claimed(ifindex, false) else {
                        unreachable!("asked for IPv4")
                    };
                    let tpa = self.rng.bytes(4);
                    let op = 1 + self.rng.below(2) as u16;
                    let sha = if self.rng.chance(80) { own } else { self.mac() };
                    arp = packet::arp(
                        op,
                        (sha, spa.octets()),
                        ([0; 6], [tpa[0], tpa[1], tpa[2], tpa[3]]),
                    );
                    // IEEE 802's hardware type, which Linux takes as Ethernet's.
                    if self.rng.chance(20) {
                        arp[1] = 6;
                    }
                }
                if self.rng.chance(10) {
                    let keep = self.rng.below(arp.len());
                    arp.truncate(keep);
                }
                ethernet(&[], 0x0806, &arp, &mut self.rng)
            }
            _ => {
                let ethertype = self.rng.pick(&ETHERTYPES);
                let len = self.rng.below(64);
                let payload = self.rng.bytes(len);
                ethernet(&[], ethertype, &payload, &mut self.rng)
            }
        };
        case(hook, ifindex, frame, Kind::Special)
    }

    /// Neighbour discovery options: mostly link-layer addresses (`own`,
    /// else another), some nonces, now and then one of length 0 or of
    /// another length, and sometimes more than the datapath reads.
    fn nd_options(&mut self, own: [u8; 6]) -> Vec<u8> {
        let mut options = Vec::new();
        for _ in 0..self.rng.below(7) {
            match self.rng.below(20) {
                0..14 => {
                    let mac = if self.rng.chance(80) { own } else { self.mac() };
                    options.extend([self.rng.pick(&[1, 2]), 1]);
                    options.extend(mac);
                }
                14..18 => options.extend([14, 1, 1, 2, 3, 4, 5, 6]),
                18 => options.extend([self.rng.pick(&[1, 2, 14]), 0, 0, 0, 0, 0, 0, 0]),
                _ => {
                    options.extend([self.rng.pick(&[1, 2, 5]), 2]);
                    options.extend(self.rng.bytes(14));
                }
            }
        }
        options
    }

    fn mac(&mut self) -> [u8; 6] {
        let b = self.rng.bytes(6);
        [b[0] & 0xfe, b[1], b[2], b[3], b[4], b[5]]
    }
}
