//! Keys and values of the network datapath maps.
//!
//! Addresses are 16 bytes everywhere: IPv6 as is, IPv4 as an IPv4-mapped
//! IPv6 address (`::ffff:a.b.c.d`), so one trie and one conntrack table serve
//! both families. Multi-byte fields the kernel compares as a prefix (LPM trie
//! keys) are big-endian byte arrays; everything else is host order.

/// Reserved identities. Identities from labels and CIDRs start at
/// [`identity::FIRST_ALLOCATED`].
pub mod identity {
    /// The wildcard peer of a policy entry; never assigned to an address.
    pub const ANY: u32 = 0;
    /// The node itself (its addresses, kubelet probes).
    pub const HOST: u32 = 1;
    /// An address no identity entry covers: outside the cluster.
    pub const WORLD: u32 = 2;
    pub const FIRST_ALLOCATED: u32 = 256;
}

/// Policy direction from the endpoint's point of view.
pub mod direction {
    pub use crate::stats::direction::{EGRESS, INGRESS};

    pub const fn opposite(d: u32) -> u32 {
        if d == INGRESS { EGRESS } else { INGRESS }
    }
}

pub const ADDR_LEN: usize = 16;

/// `::ffff:a.b.c.d`, the 16-byte form of an IPv4 address.
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; ADDR_LEN] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Prefix length in the 16-byte form of an IPv4 prefix of `len` bits.
pub const fn ipv4_prefix_len(len: u32) -> u32 {
    96 + len
}

/// Value of the identity trie (`PAL_IDENTITY`): address prefix -> identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityValue {
    pub identity: u32,
}

/// Value of the endpoint map (`PAL_ENDPOINTS`), keyed by the host-side veth's
/// ifindex (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    pub endpoint: u32,
    /// Bumped by every policy swap of this endpoint. Its low bit is the
    /// live policy generation: the syncer writes the other generation's
    /// entries, then flips this value in one update, so a packet sees the
    /// old policy or the new, never a mix. (A patch of the entries of
    /// identities that moved keeps it: the daemon's `sync::endpoints`.)
    /// Conntrack entries record it too.
    pub revision: u32,
    /// [`endpoint_flags`].
    pub flags: u32,
    /// The pod's (lowest) IPv4 address, the only source its IPv4 packets
    /// may have besides those `PAL_SRC_PREFIX` holds for it, where
    /// [`endpoint_flags::SOURCE4`] is set; `0.0.0.0` where the pod
    /// has no IPv4 address (so it may send none but a DHCP client's).
    pub source4: [u8; 4],
    /// The pod's (lowest) IPv6 address, where [`endpoint_flags::SOURCE6`]
    /// is set: the only source its IPv6 packets may have but link-local
    /// ones, those `PAL_SRC_PREFIX` holds for it and
    /// the unspecified address (duplicate address detection); `::` where
    /// the pod has no IPv6 address (so it may send only those).
    pub source6: [u8; ADDR_LEN],
    /// The pod's MAC, the only Ethernet source its frames may have, where
    /// [`endpoint_flags::SOURCE_MAC`] is set (a bridged pod's).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl EndpointValue {
    pub const fn generation(&self) -> u8 {
        (self.revision & 1) as u8
    }
}

/// Slots of `PAL_EP_OPENED`, a power of two, fixed: an endpoint's id
/// picks one, and each slot has an entry per direction.
pub const OPENED_SLOTS: u32 = 4096;

/// The entry of `PAL_EP_OPENED` that is non-zero once a flow opened in
/// `dir` at `endpoint` has been tracked (by any CPU, since any daemon of
/// this ABI, or carried over from an older one). Endpoints whose ids share
/// a slot share their entries: that only ever sets more of them.
///
/// What it buys: at an endpoint that never tracked a flow opened in the
/// other direction, no packet can be the reply of one, so a packet whose
/// new flow's verdict is a cached drop is dropped without the conntrack
/// lookup (`kernel::pod`, "a denied flood").
pub const fn opened_index(endpoint: u32, dir: u32) -> u32 {
    (endpoint & (OPENED_SLOTS - 1)) * 2 + (dir & 1)
}

/// Slots of the endpoint index (`PAL_EP_SLOTS`): a power of two, fixed.
pub const ENDPOINT_SLOTS: u32 = 4096;

/// The endpoint index's slot of an interface.
pub const fn endpoint_slot(ifindex: u32) -> u32 {
    ifindex & (ENDPOINT_SLOTS - 1)
}

/// One endpoint as the index holds it: the interface it is for (0: none)
/// and its [`EndpointValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotEndpoint {
    pub ifindex: u32,
    pub value: EndpointValue,
}

/// A slot of the endpoint index (`PAL_EP_SLOTS`), an array the programs
/// read by [`endpoint_slot`] instead of a hash lookup in `PAL_ENDPOINTS`.
/// `PAL_ENDPOINTS` stays the whole truth: a slot holds at most one of the
/// endpoints whose interfaces share it, and a program whose interface is
/// not the live copy's looks in `PAL_ENDPOINTS`.
///
/// An array element is overwritten in place, so a program could read one
/// half-written. The syncer therefore writes the copy that is not live
/// and then flips `live`: every write leaves the bytes a program may be
/// reading as they were, but for `live`, whose low byte alone changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlot {
    /// Which of `copies` is live: 0 or 1.
    pub live: u32,
    pub copies: [SlotEndpoint; 2],
}

impl EndpointSlot {
    pub const fn current(&self) -> &SlotEndpoint {
        &self.copies[(self.live & 1) as usize]
    }
}

pub mod endpoint_flags {
    /// Some policy selects the endpoint for ingress: no entry means drop.
    pub const ISOLATED_INGRESS: u32 = 1 << 0;
    /// Some policy selects the endpoint for egress: no entry means drop.
    pub const ISOLATED_EGRESS: u32 = 1 << 1;
    /// Some ingress entry is not for one port (a range, any port, any
    /// protocol): lookups go on to the trie after a miss in the hash.
    /// Without it an ingress lookup is the hash alone.
    pub const TRIE_INGRESS: u32 = 1 << 2;
    pub const TRIE_EGRESS: u32 = 1 << 3;
    /// Some ingress entry is for any peer: the any-peer lookups run after
    /// the peer's own found nothing.
    pub const ANY_PEER_INGRESS: u32 = 1 << 4;
    pub const ANY_PEER_EGRESS: u32 = 1 << 5;
    /// The pod's packets are dropped unless their source is the address
    /// the endpoint holds (`EndpointValue::source4`, `source6`) or one
    /// `PAL_SRC_PREFIX` holds for it, one flag per family.
    pub const SOURCE4: u32 = 1 << 6;
    pub const SOURCE6: u32 = 1 << 7;
    /// The pod may also send from the prefixes `PAL_SRC_PREFIX` holds for
    /// it: looked up only where this is set, so that a pod without them
    /// pays no lookup for a packet it sends as someone else.
    pub const SOURCE_PREFIXES: u32 = 1 << 8;
    /// The pod's frames are dropped unless their Ethernet source is
    /// `EndpointValue::mac`.
    pub const SOURCE_MAC: u32 = 1 << 9;
    /// Every flag a pod's sources set, none of them the policy's.
    pub const SOURCES: u32 = SOURCE4 | SOURCE6 | SOURCE_PREFIXES | SOURCE_MAC;
}

/// The data part of a policy trie key (`PAL_POLICY`).
///
/// Fields are ordered so that wildcards are prefixes: the fixed part
/// (endpoint, peer, direction, generation) is always matched, then the
/// protocol (a prefix that stops before it matches any protocol), then the
/// destination port bit by bit (a prefix that stops inside it matches a
/// power-of-two aligned port range; any range is a few such prefixes).
/// Wildcard peers use [`identity::ANY`] and a second lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    pub endpoint: u32,
    pub peer: u32,
    pub direction: u8,
    pub generation: u8,
    pub _pad0: u8,
    pub protocol: u8,
    /// Destination port, big-endian so its high bits come first.
    pub port: [u8; 2],
    pub _pad1: [u8; 2],
}

/// Bits of [`PolicyKey`] that are always matched.
pub const POLICY_PREFIX_FIXED: u32 = 8 * 11;
/// A prefix that also matches the protocol, with any port.
pub const POLICY_PREFIX_PROTO: u32 = 8 * 12;
/// A prefix that matches protocol and the whole port.
pub const POLICY_PREFIX_FULL: u32 = 8 * 14;

/// Value of a policy entry: the final verdict for everything the prefix
/// covers. The compiler resolves precedence and overlaps before writing, so
/// the datapath takes the longest match as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// [`action`].
    pub action: u8,
    /// [`policy_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Which policy decided: labels counters and events. 0 = default deny.
    pub policy: u32,
}

pub mod action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

pub mod policy_flags {
    /// An audit-mode deny: count and report, then pass.
    pub const AUDIT: u8 = 1 << 0;
}

/// Conntrack key for IPv4 (`PAL_CT4`); [`Ct6Key`] is the same for IPv6.
///
/// One entry per flow, whichever way a packet travels and however many of
/// its ends are local: the two (address, port) sides are stored in a
/// canonical order, lower first, so a reply finds its flow in the same
/// single lookup as the original direction, and a flow between two pods
/// of the node finds, at each pod, the entry the other end's packet just
/// brought into the CPU's cache. Each local end keeps its own half of the
/// value ([`CtValue::ends`]). Addresses are as on the wire.
// Aligned so that keys are built in words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub lo: [u8; 4],
    pub hi: [u8; 4],
    /// Host order. ICMP echo: the identifier is the requester's port and
    /// the responder's is 0, so a reply is the reversed request.
    pub lo_port: u16,
    pub hi_port: u16,
    pub protocol: u8,
    /// Zero. ABIs before `CT_LAYOUT_SINCE` kept each end's entry apart and
    /// said which in the first byte (`CT_PER_END_SINCE`).
    pub _pad: [u8; 3],
}

/// [`Ct4Key`] for IPv6 (`PAL_CT6`).
// Aligned so that keys are built in words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct6Key {
    pub lo: [u8; ADDR_LEN],
    pub hi: [u8; ADDR_LEN],
    pub lo_port: u16,
    pub hi_port: u16,
    pub protocol: u8,
    /// As in [`Ct4Key`].
    pub _pad: [u8; 3],
}

/// Value of the conntrack maps: the flow as each of its local ends tracks
/// it. `ends[0]` is the end on the key's `lo` side, `ends[1]` the one on
/// its `hi` side ([`CtEnd::endpoint`] 0 where that end tracks nothing:
/// endpoint ids are never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub ends: [CtEnd; 2],
}

/// One local end of a tracked flow. ABIs from `CT_PER_END_SINCE` to
/// `CT_LAYOUT_SINCE` held it as a whole map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEnd {
    pub last_seen_ns: u64,
    /// The endpoint that tracks the flow (and labels its counters); 0 for
    /// none.
    pub endpoint: u32,
    /// The policy that allowed it.
    pub policy: u32,
    /// `PAL_EPOCH` when the flow was last judged: any later change of
    /// policy or identities has it judged again at its next packet.
    pub epoch: u32,
    /// [`ct_state`] bits.
    pub state: u8,
    /// The direction, at the endpoint, of the packet that opened the flow.
    pub direction: u8,
    /// 1 if the opening packet's source is the key's `lo` side.
    pub opener_lo: u8,
    pub _pad: [u8; 5],
    /// The counter cells of its packets ([`flow_cells`]), so that the fast
    /// path does not hash their keys per packet.
    pub cells: u32,
}

/// The counter cells of a flow's packets: (endpoint, policy,
/// `ALLOW_ESTABLISHED`, its opening direction) in the low half, (endpoint,
/// policy, `ALLOW_REPLY`, the other direction) in the high half.
pub const fn flow_cells(endpoint: u32, policy: u32, opener_dir: u32) -> u32 {
    const fn cell(endpoint: u32, policy: u32, reason: u32, dir: u32) -> u32 {
        counter_cell(&CounterKey {
            endpoint,
            policy,
            reason: reason as u16,
            direction: dir as u8,
            _pad: 0,
        })
    }
    let established = cell(
        endpoint,
        policy,
        crate::reason::ALLOW_ESTABLISHED,
        opener_dir,
    );
    let reply = cell(
        endpoint,
        policy,
        crate::reason::ALLOW_REPLY,
        direction::opposite(opener_dir),
    );
    established | (reply << 16)
}

pub mod ct_state {
    pub const SYN_SEEN: u8 = 1 << 0;
    pub const REPLY_SEEN: u8 = 1 << 1;
    pub const FIN_ORIGINAL: u8 = 1 << 2;
    pub const FIN_REPLY: u8 = 1 << 3;
    pub const RST: u8 = 1 << 4;
}

/// Idle timeouts, in nanoseconds, after which an entry counts as gone.
pub mod ct_timeout {
    const S: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 60 * S;
    pub const TCP_ESTABLISHED: u64 = 6 * 3600 * S;
    pub const TCP_CLOSING: u64 = 10 * S;
    pub const UDP: u64 = 60 * S;
    pub const SCTP: u64 = 300 * S;
    pub const ICMP: u64 = 30 * S;
    pub const OTHER: u64 = 60 * S;
}

/// Fragment tracking key (`PAL_FRAGS`): a fragmented datagram whose first
/// fragment was allowed. Non-first fragments carry no ports, and in IPv6
/// not always the transport protocol; they take both from here and then
/// follow their flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; ADDR_LEN],
    pub dst: [u8; ADDR_LEN],
    /// IPv4's 16-bit or IPv6's 32-bit identification.
    pub id: u32,
    /// IPv4's protocol; IPv6's fragment header's next header (the first
    /// header after it, in every fragment alike).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport: u16,
    pub dport: u16,
    /// The transport protocol, read from the first fragment.
    pub protocol: u8,
    // Scalars, not a byte array: zeroing one would be a call to `memset`.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Detailed per-CPU counter key (`PAL_COUNTERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub endpoint: u32,
    pub policy: u32,
    pub reason: u16,
    pub direction: u8,
    pub _pad: u8,
}

/// A per-CPU counter cell (`PAL_CNT_CELLS`) for one [`CounterKey`]: the
/// programs count in the cell [`counter_cell`] names (an inlined array
/// lookup) and use `PAL_COUNTERS` (a hash lookup) only when another key
/// took that cell first on that CPU. Readers add both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterCell {
    pub key: CounterKey,
    /// Written last when a cell is taken: readers skip cells without it.
    pub claimed: u32,
    pub counter: crate::stats::Counter,
}

/// Cells in `PAL_CNT_CELLS`: a power of two, fixed.
pub const COUNTER_CELLS: u32 = 4096;

/// The cell of a counter key: a multiplicative hash.
pub const fn counter_cell(k: &CounterKey) -> u32 {
    let h = k.endpoint.wrapping_mul(0x9e37_79b1)
        ^ k.policy.wrapping_mul(0x85eb_ca77)
        ^ (k.reason as u32).wrapping_mul(0xc2b2_ae3d)
        ^ (k.direction as u32).wrapping_mul(0x27d4_eb2f);
    (h ^ (h >> 16)) & (COUNTER_CELLS - 1)
}

/// Key of the XDP prefilter's stateless pod denies (`PAL_XDP_PODDENY`):
/// connection attempts (TCP SYN without ACK) from `peer` (or
/// [`identity::ANY`]) to the local pod address `dst` on `port` (or 0 for any
/// port). Only explicit, enforcing denies go here: they refuse new
/// connections whatever the state, so the prefilter needs none. Replies and
/// other protocols are left to the pod's TC programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XdpPodDenyKey {
    pub dst: [u8; ADDR_LEN],
    pub peer: u32,
    pub port: u16,
    pub _pad: [u8; 2],
}

/// The data part of a `PAL_SRC_PREFIX` key: a prefix an endpoint's pod
/// may send from besides the address its endpoint holds (a further
/// address of its own, or a Pod's `palisade.dev/source-prefixes`, on a
/// node that honours it). The
/// endpoint and the family are always matched whole, so a key's prefix
/// length is 64 plus the prefix's; an IPv4 address fills the first 4
/// bytes of `addr`. (The family keeps `::/0` from covering IPv4 sources,
/// as it would with IPv4-mapped addresses.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePrefixKey {
    pub endpoint: u32,
    /// 4 or 6.
    pub family: u32,
    pub addr: [u8; ADDR_LEN],
}

/// The bits of a `PAL_SRC_PREFIX` key always matched whole: the endpoint
/// and the family.
pub const SOURCE_PREFIX_FIXED: u32 = 64;

/// The prefix length of a `PAL_SRC_PREFIX` key for one whole IPv6
/// address: what a lookup asks with.
pub const SOURCE_PREFIX_FULL: u32 = SOURCE_PREFIX_FIXED + 8 * ADDR_LEN as u32;

/// The policy id the node-level deny list's drops are counted under.
pub const NODE_DENY_POLICY: u32 = u32::MAX;

/// Which kinds of entries `PAL_XDP_PODDENY` holds for a pod address: the
/// value of `PAL_XDP_PODDST`, which the prefilter reads first, so that a
/// connection attempt to a pod without denies costs one lookup.
pub mod xdp_pod_gate {
    /// Entries naming a peer identity: the source's identity is looked up.
    pub const PEERS: u32 = 1 << 0;
    /// Entries for any peer.
    pub const ANY: u32 = 1 << 1;
}

/// A drop or audit event in the ring buffer (`PAL_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    pub endpoint: u32,
    pub policy: u32,
    pub reason: u16,
    pub direction: u8,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// Zero when the packet was dropped before its addresses were parsed.
    /// An ARP frame's are its sender and target protocol addresses
    /// (IPv4-mapped), with `protocol` 0 and `sport` [`ARP_EVENT_SPORT`].
    pub src: [u8; ADDR_LEN],
    pub dst: [u8; ADDR_LEN],
}

/// `DropEvent::sport` of an ARP frame's event (its ethertype): no IP
/// packet of protocol 0 has a port.
pub const ARP_EVENT_SPORT: u16 = 0x0806;

/// Neighbour discovery options the datapath reads for the link-layer
/// addresses they announce. A host's own solicitations and advertisements
/// carry one or two (its address, a nonce); a bridged pod's with more are
/// dropped as announcing what the datapath could not read.
pub const MAX_ND_OPTIONS: usize = 4;

/// The kernel's event rate limit, per CPU: a token bucket.
pub mod event_rate {
    pub const PER_SECOND: u64 = 1_000;
    pub const BURST: u64 = 1_000;
    /// Nanoseconds of credit one event costs.
    pub const COST_NS: u64 = 1_000_000_000 / PER_SECOND;
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<DropEvent>() == 56);
    assert!(size_of::<XdpPodDenyKey>() == 24);
    assert!(size_of::<IdentityValue>() == 4);
    assert!(size_of::<EndpointValue>() == 40);
    assert!(size_of::<EndpointSlot>() == 92);
    assert!(ENDPOINT_SLOTS.is_power_of_two());
    assert!(OPENED_SLOTS.is_power_of_two());
    assert!(size_of::<PolicyKey>() == 16);
    assert!(size_of::<PolicyValue>() == 8);
    assert!(size_of::<Ct4Key>() == 16);
    assert!(size_of::<Ct6Key>() == 40);
    assert!(size_of::<CtValue>() == 64);
    assert!(size_of::<CtEnd>() == 32);
    assert!(size_of::<CounterCell>() == 32);
    assert!(COUNTER_CELLS.is_power_of_two() && COUNTER_CELLS <= 1 << 16);
    assert!(size_of::<FragKey>() == 40);
    assert!(size_of::<FragValue>() == 8);
    assert!(size_of::<CounterKey>() == 12);
    assert!(POLICY_PREFIX_FULL as usize <= 8 * size_of::<PolicyKey>());
    assert!(size_of::<SourcePrefixKey>() == 24);
    assert!(SOURCE_PREFIX_FULL as usize == 8 * size_of::<SourcePrefixKey>());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], integer-only, with explicit
    // padding fields, so every byte pattern is a valid value.
    unsafe impl aya::Pod for IdentityValue {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for EndpointSlot {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for Ct4Key {}
    unsafe impl aya::Pod for Ct6Key {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtEnd {}
    unsafe impl aya::Pod for CounterCell {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for CounterKey {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for XdpPodDenyKey {}
    unsafe impl aya::Pod for SourcePrefixKey {}
}

#[cfg(test)]
mod conntrack_layout {
    use core::mem::{offset_of, size_of};

    use super::*;

    /// A daemon of this ABI copies the conntrack entries of every ABI from
    /// `CT_LAYOUT_SINCE` on, and converts those of every ABI from
    /// `CT_PER_END_SINCE` on (`daemon::sync::conntrack`). If this test
    /// fails, the layout changed: set `CT_LAYOUT_SINCE` to `ABI_VERSION`
    /// (bumped), teach the daemon to convert the layout this test pinned,
    /// and write the new layout here.
    #[test]
    fn the_conntrack_layout_is_the_one_ct_layout_since_names() {
        assert_eq!((crate::CT_PER_END_SINCE, crate::CT_LAYOUT_SINCE), (4, 16));
        assert_eq!(size_of::<Ct4Key>(), 16);
        assert_eq!(size_of::<Ct6Key>(), 40);
        // The old layouts' side byte is the first of `_pad`.
        assert_eq!(
            (
                offset_of!(Ct4Key, lo_port),
                offset_of!(Ct4Key, protocol),
                offset_of!(Ct4Key, _pad)
            ),
            (8, 12, 13)
        );
        assert_eq!(
            (
                offset_of!(Ct6Key, lo_port),
                offset_of!(Ct6Key, protocol),
                offset_of!(Ct6Key, _pad)
            ),
            (32, 36, 37)
        );
        assert_eq!(size_of::<CtValue>(), 64);
        assert_eq!(size_of::<CtEnd>(), 32);
        assert_eq!(
            [
                offset_of!(CtEnd, last_seen_ns),
                offset_of!(CtEnd, endpoint),
                offset_of!(CtEnd, policy),
                offset_of!(CtEnd, epoch),
                offset_of!(CtEnd, state),
                offset_of!(CtEnd, direction),
                offset_of!(CtEnd, opener_lo),
                offset_of!(CtEnd, cells),
            ],
            [0, 8, 12, 16, 20, 21, 22, 28]
        );
    }

    /// The same for the fragment table and `FRAG_LAYOUT_SINCE`.
    #[test]
    fn the_fragment_layout_is_the_one_frag_layout_since_names() {
        assert_eq!(crate::FRAG_LAYOUT_SINCE, 10);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(
            [
                offset_of!(FragKey, src),
                offset_of!(FragKey, dst),
                offset_of!(FragKey, id),
                offset_of!(FragKey, protocol),
            ],
            [0, 16, 32, 36]
        );
        assert_eq!(size_of::<FragValue>(), 8);
        assert_eq!(
            [
                offset_of!(FragValue, sport),
                offset_of!(FragValue, dport),
                offset_of!(FragValue, protocol),
            ],
            [0, 2, 4]
        );
    }
}
