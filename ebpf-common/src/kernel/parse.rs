//! Packet parsing for the XDP and TC programs.
//!
//! Every packet byte is read through [`load`], the one bounds-checked access.
//! Loops (VLAN tags, IPv6 extension headers) are bounded by constants. Each
//! way a packet can fail to parse has its own reason code:
//! - cut short (`drop_truncated`): a byte of a header's fixed part past the
//!   end of the frame: IPv4's IHL*4, each IPv6 extension header's announced
//!   length, TCP's 20 bytes, UDP's 8, SCTP's 12, ICMP's 8; a router or
//!   neighbour solicitation's or a neighbour advertisement's options, by
//!   the IPv6 payload length;
//! - contradictory (`drop_malformed`): an IP version that is not the
//!   ethertype's, an IPv4 IHL below 5, an IPv6 address that is IPv4-mapped
//!   (no such address belongs on the wire, the kernel drops it as a source,
//!   and it would take the identity of the IPv4 address it maps: the maps
//!   key IPv4 addresses in that form), a second IPv6 fragment header.
//!
//! ICMP is protocol 1 in IPv4 and 58 in IPv6 only; the other number in the
//! other family is just another protocol. The total length and payload
//! length fields are not read otherwise (the stack drops a packet they
//! contradict, and GSO packets carry 0 there): only neighbour discovery's
//! options are bounded by the payload length, which no GSO packet is.

use core::mem::size_of;

use crate::{
    datapath::{ADDR_LEN, MAX_ND_OPTIONS},
    kernel::put,
    reason,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Q-in-Q is the most a pod veth should ever carry.
const MAX_VLAN_TAGS: usize = 2;
/// Extension headers walked before giving up with a counted drop.
pub const MAX_IPV6_EXT: usize = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

pub mod frag {
    pub const NONE: u8 = 0;
    /// Offset 0 with more fragments: carries the ports.
    pub const FIRST: u8 = 1;
    /// Offset > 0: no transport header.
    pub const LATER: u8 = 2;
    /// `Packet::frag`, set by a caller before [`super::parse`] that needs
    /// to know whether the IP addresses were read (the prefilter's node
    /// deny list): parsing replaces it as it reads them.
    pub const UNREAD: u8 = 0xff;
    /// `Packet::frag_next` (not `frag`) of an IPv6 packet whose walk has
    /// met no fragment header (255, a reserved protocol number); it stays
    /// so in an unfragmented packet.
    pub const NO_HEADER: u8 = 0xff;
}

/// The flow an ICMP error is about, as the packet that caused it was sent
/// (by the receiver of the error).
///
/// `repr(C)` with the addresses first: their offsets are then known to be
/// 8-byte aligned, so the compiler writes them in words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct Inner {
    pub src: [u8; ADDR_LEN],
    pub dst: [u8; ADDR_LEN],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
}

/// A parsed packet. Parsing writes every field a verdict reads and leaves
/// `inner` alone unless `is_related`: zeroing the whole struct per packet
/// costs more than the rest of the parse. Layout as for [`Inner`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct Packet {
    /// The 16-byte forms; for IPv4 only once [`Packet::map_addresses`] ran
    /// (the fast path of a tracked flow needs only `src4` and `dst4`).
    pub src: [u8; ADDR_LEN],
    pub dst: [u8; ADDR_LEN],
    pub inner: Inner,
    /// The address a neighbour advertisement announces (its target),
    /// written only where parsing returns [`Neighbour::ADVERT`].
    pub target: [u8; ADDR_LEN],
    /// IPv4 addresses as on the wire (an ARP frame's sender and target
    /// protocol addresses where parsing returns [`Neighbour::ARP`]).
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub frag_id: u32,
    /// Host order; see `Ct4Key` for ICMP echo.
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub frag: u8,
    /// What a fragment is recorded and looked up under (`FragKey`): the
    /// protocol in IPv4; in IPv6 the fragment header's next header, which
    /// every fragment of a datagram carries, where the transport protocol
    /// may lie behind more headers that only the first fragment has.
    /// Read only where `frag` says the packet is a fragment; in IPv6
    /// [`frag::NO_HEADER`] until a fragment header is met.
    pub frag_next: u8,
    /// IPv6 (addresses as they are) rather than IPv4 (IPv4-mapped).
    pub v6: bool,
    /// Set for ICMP/ICMPv6 errors whose quoted packet could be read.
    pub is_related: bool,
    /// Where parsing returns a [`Neighbour`] claim: whether the frame
    /// announces a link-layer address other than its Ethernet source (an
    /// ARP sender's hardware address, a neighbour discovery option), or
    /// options that could not all be read ([`nd_options_foreign`]).
    /// Receivers learn the announced address for the claimed one, so a
    /// pod could send its own traffic's replies, and the node's placement
    /// of it, to another pod's port.
    pub lladdr_foreign: bool,
}

impl Packet {
    /// Everything but the addresses and `inner`, for a new packet.
    #[inline(always)]
    fn reset(&mut self, v6: bool, protocol: u8, frag_id: u32) {
        // Stored one by one: IPv6's zeros in a row became a call to
        // `memset`, a byte loop the verifier walks on every way in.
        put(&mut self.frag_id, frag_id);
        put(&mut self.sport, 0);
        put(&mut self.dport, 0);
        put(&mut self.protocol, protocol);
        put(&mut self.tcp_flags, 0);
        put(&mut self.frag, frag::NONE);
        put(&mut self.frag_next, protocol);
        self.v6 = v6;
        self.is_related = false;
    }

    /// Fills in the 16-byte forms of IPv4 addresses (IPv6 has them).
    #[inline(always)]
    pub fn map_addresses(&mut self) {
        if !self.v6 {
            mapped_into(&mut self.src, self.src4);
            mapped_into(&mut self.dst, self.dst4);
        }
    }
}

/// What parsing found. The packet's fields are written into the caller's
/// [`Packet`] (a per-CPU scratch slot: the eBPF stack is only 512 bytes).
///
/// A struct, not an enum with payloads: a payload-less variant leaves its
/// payload undefined, and the BPF backend may then copy an uninitialised
/// register, which the verifier refuses.
#[derive(Clone, Copy)]
pub struct Parsed {
    pub kind: Kind,
    /// The reason of a `Pass` or `Drop`; 0 for `Ip`.
    pub reason: u32,
    /// For a `Pass`, the address it claims for its sender on the link
    /// ([`Neighbour`]); [`Neighbour::NONE`] for anything else.
    pub neighbour: u8,
}

/// What a frame that passes without policy claims on the link, which a
/// pod's sender may only claim of itself: the addresses ARP and neighbour
/// discovery teach their receivers' neighbour caches, and the routers IPv6
/// hosts learn from router advertisements and redirects.
pub struct Neighbour;

impl Neighbour {
    /// Claims nothing (other ethertypes, ARP that is not Ethernet/IPv4).
    pub const NONE: u8 = 0;
    /// ARP for IPv4 over Ethernet: its sender protocol address is in
    /// `Packet::src4` (`0.0.0.0` in an address probe), its target's in
    /// `Packet::dst4`.
    pub const ARP: u8 = 1;
    /// Neighbour discovery, MLD and router solicitations: they claim their
    /// IPv6 source.
    pub const DISCOVERY: u8 = 2;
    /// A neighbour advertisement: its source, and the address it announces
    /// (`Packet::target`).
    pub const ADVERT: u8 = 3;
    /// A router advertisement or a redirect: it claims to be a router.
    pub const ROUTER: u8 = 4;
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An IP packet for policy.
    Ip,
    /// Passes without policy (ARP, neighbour discovery).
    Pass,
    /// Dropped before policy (truncated, malformed).
    Drop,
}

impl Parsed {
    pub const IP: Self = Self {
        kind: Kind::Ip,
        reason: 0,
        neighbour: Neighbour::NONE,
    };

    pub const fn pass(reason: u32) -> Self {
        Self {
            kind: Kind::Pass,
            reason,
            neighbour: Neighbour::NONE,
        }
    }

    /// A pass that claims `neighbour` ([`Neighbour`]).
    pub const fn neighbour(reason: u32, neighbour: u8) -> Self {
        Self {
            kind: Kind::Pass,
            reason,
            neighbour,
        }
    }

    pub const fn drop(reason: u32) -> Self {
        Self {
            kind: Kind::Drop,
            reason,
            neighbour: Neighbour::NONE,
        }
    }
}

/// The single bounds-checked read of packet memory.
#[inline(always)]
pub fn load<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: [start, start + size_of::<T>()) lies within the packet, as
    // checked above (and by the verifier); T is plain bytes.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// `N` bytes of the packet in place, bounds-checked like [`load`]: for
/// headers of which only some bytes are read, so that each is loaded where
/// it is used instead of all copied out first.
#[inline(always)]
pub fn bytes<'a, const N: usize>(
    data: usize,
    data_end: usize,
    offset: usize,
) -> Option<&'a [u8; N]> {
    let start = data + offset;
    if start + N > data_end {
        return None;
    }
    // SAFETY: [start, start + N) lies within the packet, which outlives
    // the program run; a byte array has no alignment requirement.
    Some(unsafe { &*(start as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Whether the frame's Ethernet source may be `mac`: it is, or the frame
/// is too short to hold one (parsing drops that as truncated).
#[inline(always)]
pub fn from_mac(data: usize, data_end: usize, mac: &[u8; 6]) -> bool {
    // Compared as a word and a half-word: an array compare is a `memcmp`.
    let (Some(hi), Some(lo)) = (
        load::<[u8; 4]>(data, data_end, 6),
        load::<[u8; 2]>(data, data_end, 10),
    ) else {
        return true;
    };
    u32::from_ne_bytes(hi) == u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]])
        && u16::from_ne_bytes(lo) == u16::from_ne_bytes([mac[4], mac[5]])
}

/// Whether the neighbour discovery options in `[opt, end)` announce a
/// link-layer address (source or target, types 1 and 2) other than the
/// frame's Ethernet source, or cannot be vouched for: an option of length
/// 0 or cut short (the receiver drops those frames), more than
/// [`MAX_ND_OPTIONS`], a payload that ends before the options start (a
/// jumbogram's length is 0). `None` where `end` lies past what is in
/// reach, so that a frame in page fragments is pulled and read again.
#[inline(always)]
fn nd_options_foreign(data: usize, data_end: usize, opt: usize, end: usize) -> Option<bool> {
    // Compared as lengths: `end` comes through a byte swap, whose result
    // older verifiers (6.1) leave unbounded, and they refuse adding an
    // unbounded value to a packet pointer.
    if end > data_end - data {
        return None;
    }
    if opt > end {
        return Some(true);
    }
    let mut opt = opt;
    for _ in 0..MAX_ND_OPTIONS {
        if opt >= end {
            return Some(false);
        }
        let Some(o) = load::<[u8; 8]>(data, data_end, opt) else {
            return Some(true);
        };
        if o[1] == 0
            || (o[0] == 1 || o[0] == 2)
                && !from_mac(data, data_end, &[o[2], o[3], o[4], o[5], o[6], o[7]])
        {
            return Some(true);
        }
        opt += usize::from(o[1]) * 8;
    }
    Some(opt < end)
}

#[inline(always)]
pub fn parse(data: usize, data_end: usize, p: &mut Packet) -> Parsed {
    let Some(mut ethertype) = load::<[u8; 2]>(data, data_end, 12).map(be16) else {
        return Parsed::drop(reason::DROP_TRUNCATED);
    };
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = load::<[u8; 2]>(data, data_end, off + 2).map(be16) else {
            return Parsed::drop(reason::DROP_TRUNCATED);
        };
        ethertype = inner;
        off += 4;
    }
    match ethertype {
        ETH_P_IP => ipv4(data, data_end, off, p),
        ETH_P_IPV6 => ipv6(data, data_end, off, p),
        ETH_P_ARP => arp(data, data_end, off, p),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::drop(reason::DROP_VLAN_LIMIT),
        _ => Parsed::pass(reason::PASS_NON_IP),
    }
}

/// ARP for IPv4 over Ethernet (hardware type 1, or 6, IEEE 802, which a
/// Linux Ethernet receiver takes alike; protocol type 0x0800, lengths 6
/// and 4), the only kind a Linux receiver on Ethernet acts on for IPv4:
/// its addresses, or cut short when the frame ends before them (the
/// receiver drops that too). Anything else passes as non-IP, claiming nothing. The
/// addresses go to `src4` and `dst4` only: `frag` stays as the caller set
/// it, so the prefilter, which reads it to know whether an IP header was
/// read, never applies its node deny list to ARP.
#[inline(always)]
fn arp(data: usize, data_end: usize, off: usize, p: &mut Packet) -> Parsed {
    let Some(h) = bytes::<8>(data, data_end, off) else {
        return Parsed::pass(reason::PASS_NON_IP);
    };
    // Compared as words and bytes: an array compare is a `memcmp`.
    let hardware = u16::from_be_bytes([h[0], h[1]]);
    if hardware != 1 && hardware != 6
        || u16::from_be_bytes([h[2], h[3]]) != 0x0800
        || h[4] != 6
        || h[5] != 4
    {
        return Parsed::pass(reason::PASS_NON_IP);
    }
    // Sender hardware (6) and protocol (4) addresses, then the target's.
    let Some(a) = bytes::<20>(data, data_end, off + 8) else {
        return Parsed::drop(reason::DROP_TRUNCATED);
    };
    p.src4 = [a[6], a[7], a[8], a[9]];
    p.dst4 = [a[16], a[17], a[18], a[19]];
    p.lladdr_foreign = !from_mac(data, data_end, &[a[0], a[1], a[2], a[3], a[4], a[5]]);
    p.v6 = false;
    p.protocol = 0;
    p.sport = crate::datapath::ARP_EVENT_SPORT;
    p.dport = 0;
    Parsed::neighbour(reason::PASS_NON_IP, Neighbour::ARP)
}

#[inline(always)]
fn ipv4(data: usize, data_end: usize, off: usize, p: &mut Packet) -> Parsed {
    let Some(h) = bytes::<20>(data, data_end, off) else {
        return Parsed::drop(reason::DROP_TRUNCATED);
    };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::drop(reason::DROP_MALFORMED);
    }
    p.src4 = [h[12], h[13], h[14], h[15]];
    p.dst4 = [h[16], h[17], h[18], h[19]];
    p.reset(false, h[9], u32::from(be16([h[4], h[5]])));
    // Options announced past the end (transport parsing would catch it for
    // the protocols it reads, not for the others).
    if data + off + ihl > data_end {
        return Parsed::drop(reason::DROP_TRUNCATED);
    }
    let frag_field = be16([h[6], h[7]]);
    if frag_field & 0x1fff != 0 {
        p.frag = frag::LATER;
        return Parsed::IP;
    }
    if frag_field & 0x2000 != 0 {
        p.frag = frag::FIRST;
    }
    transport(data, data_end, off + ihl, 0, p)
}

#[inline(always)]
fn ipv6(data: usize, data_end: usize, off: usize, p: &mut Packet) -> Parsed {
    let Some(h) = bytes::<40>(data, data_end, off) else {
        return Parsed::drop(reason::DROP_TRUNCATED);
    };
    if h[0] >> 4 != 6 || ipv4_mapped_at(h, 8) || ipv4_mapped_at(h, 24) {
        return Parsed::drop(reason::DROP_MALFORMED);
    }
    p.reset(true, 0, 0);
    let (src, dst) = v6_addresses(h);
    copy_addr(&mut p.src, src);
    copy_addr(&mut p.dst, dst);
    p.frag_next = frag::NO_HEADER;
    let payload_end = off + 40 + usize::from(be16([h[4], h[5]]));
    let mut next = h[6];
    let mut off = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let Some(e) = load::<[u8; 2]>(data, data_end, off) else {
                    return Parsed::drop(reason::DROP_TRUNCATED);
                };
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let Some(e) = load::<[u8; 2]>(data, data_end, off) else {
                    return Parsed::drop(reason::DROP_TRUNCATED);
                };
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            44 => {
                // RFC 8200 allows one fragment header: with two, which
                // one's id keys the datagram would be a guess.
                if p.frag_next != frag::NO_HEADER {
                    return Parsed::drop(reason::DROP_MALFORMED);
                }
                let Some(f) = load::<[u8; 8]>(data, data_end, off) else {
                    return Parsed::drop(reason::DROP_TRUNCATED);
                };
                next = f[0];
                p.frag_next = next;
                let offset_field = be16([f[2], f[3]]);
                p.frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                off += 8;
                if offset_field >> 3 != 0 {
                    p.protocol = next;
                    p.frag = frag::LATER;
                    return Parsed::IP;
                }
                if offset_field & 1 != 0 {
                    p.frag = frag::FIRST;
                }
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        return Parsed::drop(reason::DROP_IPV6_EXT_LIMIT);
    }
    // The last header walked announced more than the frame holds (for the
    // protocols transport parsing does not read).
    if data + off > data_end {
        return Parsed::drop(reason::DROP_TRUNCATED);
    }
    p.protocol = next;
    transport(data, data_end, off, payload_end, p)
}

/// [`crate::datapath::ipv4_mapped`]`(v4)` as two words. Built as a byte
/// array, the ten zero bytes became a call to `memset` (a BPF-to-BPF call,
/// twice per new or denied flow's packet).
#[inline(always)]
pub fn mapped_words(v4: [u8; 4]) -> [u64; 2] {
    [
        0,
        u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]),
    ]
}

/// Copies the 16-byte address at `from` (in the packet or a copy of a
/// header, unaligned) into `to` as two words: a copy of the array became
/// a call to `memmove`, a byte loop the verifier walks on every way in.
/// `to` is an address field of a `Packet` or an `Inner` (word-aligned:
/// checked below).
#[inline(always)]
fn copy_addr(to: &mut [u8; ADDR_LEN], from: &[u8; ADDR_LEN]) {
    // SAFETY: `from` is 16 readable bytes; `to` is 8-byte aligned, being
    // one of the fields whose offsets are checked below in structures
    // aligned to 8.
    unsafe {
        let words = [
            core::ptr::read_unaligned(from.as_ptr().cast::<u64>()),
            core::ptr::read_unaligned(from.as_ptr().add(8).cast::<u64>()),
        ];
        core::ptr::write(to.as_mut_ptr().cast::<[u64; 2]>(), words);
    }
}

// What `copy_addr` and `mapped_into` rely on: every address field they
// write starts on a word.
const _: () = {
    assert!(align_of::<Packet>() == 8 && align_of::<Inner>() == 8);
    assert!(core::mem::offset_of!(Packet, src) % 8 == 0);
    assert!(core::mem::offset_of!(Packet, dst) % 8 == 0);
    assert!(core::mem::offset_of!(Packet, inner) % 8 == 0);
    assert!(core::mem::offset_of!(Packet, target) % 8 == 0);
    assert!(core::mem::offset_of!(Inner, src) % 8 == 0);
    assert!(core::mem::offset_of!(Inner, dst) % 8 == 0);
};

/// The source and destination addresses of an IPv6 header.
#[inline(always)]
fn v6_addresses(h: &[u8; 40]) -> (&[u8; ADDR_LEN], &[u8; ADDR_LEN]) {
    // SAFETY: bytes 8..24 and 24..40 of the 40-byte header; byte arrays
    // have no alignment requirement.
    unsafe {
        (
            &*h.as_ptr().add(8).cast::<[u8; ADDR_LEN]>(),
            &*h.as_ptr().add(24).cast::<[u8; ADDR_LEN]>(),
        )
    }
}

/// Writes [`mapped_words`]`(v4)` into `to`.
#[inline(always)]
fn mapped_into(to: &mut [u8; ADDR_LEN], v4: [u8; 4]) {
    // SAFETY: `to` is the `src` or `dst` of a `Packet` or an `Inner`, at
    // offsets 0 and 16 of a `repr(C, align(8))` struct, so 8-byte aligned
    // (an `Inner` sits at offset 32 of its `Packet`); 16 bytes long.
    unsafe { core::ptr::write(to.as_mut_ptr().cast::<[u64; 2]>(), mapped_words(v4)) }
}

/// Whether the 16-byte address at `at` of an IPv6 header is IPv4-mapped
/// (`::ffff:0:0/96`). Most addresses differ in the first 8 bytes, so that
/// is one comparison.
#[inline(always)]
fn ipv4_mapped_at(h: &[u8; 40], at: usize) -> bool {
    h[at..at + 8] == [0; 8] && h[at + 8..at + 12] == [0, 0, 0xff, 0xff]
}

/// The transport header at `off`; `payload_end`, where an IPv6 payload
/// ends by its header, bounds neighbour discovery's options (0 for IPv4).
#[inline(always)]
fn transport(
    data: usize,
    data_end: usize,
    off: usize,
    payload_end: usize,
    p: &mut Packet,
) -> Parsed {
    match p.protocol {
        IPPROTO_TCP => {
            let Some(t) = bytes::<20>(data, data_end, off) else {
                return Parsed::drop(reason::DROP_TRUNCATED);
            };
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
            p.tcp_flags = t[13];
        }
        IPPROTO_UDP => {
            let Some(t) = bytes::<8>(data, data_end, off) else {
                return Parsed::drop(reason::DROP_TRUNCATED);
            };
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
        }
        IPPROTO_SCTP => {
            let Some(t) = bytes::<12>(data, data_end, off) else {
                return Parsed::drop(reason::DROP_TRUNCATED);
            };
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if (p.protocol == IPPROTO_ICMPV6) == p.v6 => {
            let Some(t) = load::<[u8; 8]>(data, data_end, off) else {
                return Parsed::drop(reason::DROP_TRUNCATED);
            };
            let v6 = p.v6;
            let id = be16([t[4], t[5]]);
            match (v6, t[0]) {
                (false, 8) | (true, 128) => p.sport = id,
                (false, 0) | (true, 129) => p.dport = id,
                // Router and neighbour discovery, multicast listeners:
                // the link does not work without them.
                (true, 134 | 137) => {
                    return Parsed::neighbour(reason::PASS_NEIGHBOUR_DISCOVERY, Neighbour::ROUTER);
                }
                (true, 136) => {
                    // The target follows the header's first 8 bytes; an
                    // advertisement without one is dropped by its receiver.
                    let Some(target) = bytes::<ADDR_LEN>(data, data_end, off + 8) else {
                        return Parsed::drop(reason::DROP_TRUNCATED);
                    };
                    copy_addr(&mut p.target, target);
                    let Some(foreign) = nd_options_foreign(data, data_end, off + 24, payload_end)
                    else {
                        return Parsed::drop(reason::DROP_TRUNCATED);
                    };
                    // A fragment's options may go on in the next one,
                    // unread (receivers drop fragmented neighbour
                    // discovery, RFC 6980, unless told not to).
                    p.lladdr_foreign = foreign || p.frag != frag::NONE;
                    return Parsed::neighbour(reason::PASS_NEIGHBOUR_DISCOVERY, Neighbour::ADVERT);
                }
                (true, 130..=135 | 143) => {
                    // Router and neighbour solicitations carry their
                    // sender's link-layer address; MLD carries none.
                    p.lladdr_foreign = false;
                    if t[0] == 133 || t[0] == 135 {
                        let options = off + if t[0] == 133 { 8 } else { 24 };
                        let Some(foreign) =
                            nd_options_foreign(data, data_end, options, payload_end)
                        else {
                            return Parsed::drop(reason::DROP_TRUNCATED);
                        };
                        p.lladdr_foreign = foreign || p.frag != frag::NONE;
                    }
                    return Parsed::neighbour(
                        reason::PASS_NEIGHBOUR_DISCOVERY,
                        Neighbour::DISCOVERY,
                    );
                }
                // Destination unreachable, time exceeded, parameter problem
                // (and IPv6's packet too big) quote the packet they are about.
                (false, 3 | 11 | 12) | (true, 1..=4) => {
                    p.is_related = quoted(data, data_end, off + 8, v6, &mut p.inner).is_some();
                }
                _ => {}
            }
        }
        _ => {}
    }
    Parsed::IP
}

/// The addresses and ports of the packet quoted in an ICMP error.
#[inline(always)]
fn quoted(data: usize, data_end: usize, off: usize, v6: bool, inner: &mut Inner) -> Option<()> {
    // Only a header that is one quotes a flow.
    let l4 = if v6 {
        let h = load::<[u8; 40]>(data, data_end, off)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let (src, dst) = v6_addresses(&h);
        copy_addr(&mut inner.src, src);
        copy_addr(&mut inner.dst, dst);
        inner.protocol = h[6];
        off + 40
    } else {
        let h = load::<[u8; 20]>(data, data_end, off)?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        mapped_into(&mut inner.src, [h[12], h[13], h[14], h[15]]);
        mapped_into(&mut inner.dst, [h[16], h[17], h[18], h[19]]);
        inner.protocol = h[9];
        off + ihl
    };
    let ports = load::<[u8; 4]>(data, data_end, l4)?;
    inner.sport = be16([ports[0], ports[1]]);
    inner.dport = be16([ports[2], ports[3]]);
    Some(())
}
