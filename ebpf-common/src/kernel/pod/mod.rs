//! The per-pod datapath, shared by the TC programs and the optional XDP
//! program on a pod's host-side veth: one implementation of parsing,
//! identities, policy, conntrack, counters and events, whatever the hook.
//! Compiled only with the `pod-datapath` feature, so objects that do not
//! enforce pod policy (the LSM one) carry none of its maps.

pub mod conntrack;
pub mod events;
pub mod flow;
pub mod maps;
pub mod policy;
pub mod scratch;
pub mod verdicts;

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use maps::{PAL_CNT_CELLS, PAL_COUNTERS, PAL_TC_STATS};
use policy::Verdict;

use crate::{
    datapath::{CounterKey, direction},
    kernel::{
        count, count_detail, count_detail_at,
        parse::{Kind, Neighbour, Packet, frag, from_mac, parse},
    },
    reason,
};

/// A frame as a hook sees it.
pub trait Frame {
    /// The bytes in direct reach, `[data, data_end)`.
    fn bounds(&self) -> (usize, usize);
    /// Brings the headers of a frame whose bytes lie partly in page
    /// fragments (an AF_PACKET sender, some drivers' receive path) into
    /// direct reach; false where nothing more can be had. Asked only when
    /// parsing what is in reach ran short, so linear frames never pay it.
    fn pull(&self) -> bool;
}

/// Judges one frame at the endpoint on `ifindex`, in `dir` (the pod's
/// ingress or egress), counts it, reports drops and audits, and returns
/// whether it may pass. Interfaces that are not endpoints pass.
///
/// A packet of a flow already tracked and judged under the current epoch
/// at the endpoint that tracks it takes the fast path (`flow::established`):
/// its conntrack entry names the endpoint and policy, so only the
/// endpoint's slot is read, to check that it is the same endpoint.
#[inline(always)]
pub fn enforce(frame: &impl Frame, ifindex: u32, bytes: u64, dir: u32) -> bool {
    let Some(s) = scratch::get() else {
        // Cannot happen (a one-slot array always has slot 0); fail open
        // with a count rather than drop traffic Palisade cannot judge.
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let (data, data_end) = frame.bounds();
    let mut parsed = parse(data, data_end, &mut s.pkt);
    if parsed.kind == Kind::Drop && parsed.reason == reason::DROP_TRUNCATED && frame.pull() {
        // The pull moved the packet: only bounds read after it are valid.
        let (data, data_end) = frame.bounds();
        parsed = parse(data, data_end, &mut s.pkt);
    }
    let parsed_ip = parsed.kind == Kind::Ip;
    // Only IP packets meet conntrack: ARP and the like read no epoch.
    let epoch = if parsed_ip { maps::epoch() } else { 0 };
    let mut here = Here::at(ifindex);
    // A bridged pod's frames, whatever they carry, come from its own MAC:
    // a bridge learns where a MAC lives from the frames' sources, so one
    // sent from a neighbour's would take the neighbour's traffic.
    if dir == crate::datapath::direction::EGRESS
        && let Some(ep) = here.endpoint()
        && ep.flags & crate::datapath::endpoint_flags::SOURCE_MAC != 0
        && !frame_from_mac(frame, &ep.mac)
    {
        // Its event carries the addresses only of what parsing read whole.
        let addressed = parsed_ip || parsed.neighbour == Neighbour::ARP;
        if addressed {
            s.pkt.map_addresses();
        }
        let verdict = Verdict::drop(reason::DROP_SPOOFED_MAC, 0);
        return conclude(s, ep.endpoint, dir, &verdict, addressed, 0, bytes);
    }
    // A pod's packet may only carry its own source (the address its
    // endpoint holds, or one in the prefix map: a further address of its,
    // an extra prefix its node lets it list): checked before anything can
    // pass it, conntrack's fast path and the cached drop included. ARP and
    // neighbour discovery are checked below, by what they claim.
    if parsed_ip
        && dir == crate::datapath::direction::EGRESS
        && let Some(ep) = here.endpoint()
        && !source_is_own(&s.pkt, ep)
        && (ep.flags & crate::datapath::endpoint_flags::SOURCE_PREFIXES == 0
            || !maps::source_prefix_allows(ep.endpoint, &s.pkt))
    {
        // An IPv4 packet's event needs the 16-byte forms.
        s.pkt.map_addresses();
        let verdict = Verdict::drop(reason::DROP_SPOOFED_SOURCE, 0);
        return conclude(s, ep.endpoint, dir, &verdict, true, 0, bytes);
    }
    if parsed.neighbour != Neighbour::NONE
        && dir == crate::datapath::direction::EGRESS
        && let Some(ep) = here.endpoint()
        && let Some(why) = neighbour_refused(&s.pkt, parsed.neighbour, ep)
    {
        // ARP's addresses in the event as an IP packet's would be.
        s.pkt.map_addresses();
        let verdict = Verdict::drop(why, 0);
        return conclude(s, ep.endpoint, dir, &verdict, true, 0, bytes);
    }
    // A denied flood: right after a packet at this interface and in this
    // direction was dropped by its new flow's cached verdict, the next one
    // tries that cache before conntrack (`cached_drop`). A packet it does
    // not settle clears the hint, so allowed traffic pays for the try at
    // most once after each such drop.
    if parsed_ip && s.deny_hint == hint(ifindex, dir) {
        if let Some((verdict, endpoint)) = cached_drop(s, ifindex, dir, epoch) {
            return conclude(s, endpoint, dir, &verdict, true, 0, bytes);
        }
        s.deny_hint = 0;
    }
    // Read where a packet needs the time: a tracked flow's entry, a new
    // one's, an event. A drop needs none but its event's, and that only
    // when the rate limit may have refilled (`events`).
    let mut clock = Clock::UNREAD;
    let mut untracked = None;
    if parsed_ip {
        match flow::established(s, &mut here, dir, epoch, &mut clock) {
            flow::Fast::Pass(verdict, endpoint, cell) => {
                count(&PAL_TC_STATS, dir, verdict.reason, bytes);
                let key = counter_key(endpoint, dir, &verdict);
                count_detail_at(
                    &PAL_CNT_CELLS,
                    &PAL_COUNTERS,
                    &PAL_TC_STATS,
                    &key,
                    cell,
                    bytes,
                );
                return true;
            }
            flow::Fast::Untracked(src_is_lo) => untracked = Some(src_is_lo),
            flow::Fast::Slow => {}
        }
    }
    // A new flow whose verdict an earlier one left under this epoch needs
    // neither the endpoint nor the policy. Its cache key and slot are kept
    // as plain values, not as an `Option`: a `None`'s payload is
    // undefined, the compiler spilled it on paths that never set it, and
    // the verifier refuses a spill of an unset register (`R4 !read_ok`,
    // met when the IPv6 walk gained one check).
    let (mut cache_key, mut cache_slot) = (verdicts::VerdictKey::default(), 0);
    if let Some(src_is_lo) = untracked {
        s.pkt.map_addresses();
        let (key, slot) = verdicts::slot(s, ifindex, dir);
        if let Some(slot_ref) = s.verdicts.get(slot)
            && let Some((verdict, endpoint)) = verdicts::cached(slot_ref, &key, epoch)
        {
            if verdict.pass {
                flow::track(s, endpoint, dir, &verdict, epoch, clock.now(), src_is_lo);
            } else {
                s.deny_hint = hint(ifindex, dir);
            }
            return conclude(s, endpoint, dir, &verdict, true, clock.0, bytes);
        }
        (cache_key, cache_slot) = (key, slot);
    }
    let Some(ep) = here.endpoint() else {
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let verdict = match parsed.kind {
        Kind::Ip => flow::decide(ep, dir, s, epoch, &mut clock, untracked.is_some()),
        Kind::Pass => Verdict::pass(parsed.reason, 0),
        Kind::Drop => Verdict::drop(parsed.reason, 0),
    };
    // An untracked packet's verdict is its new flow's, by policy alone.
    if untracked.is_some()
        && let Some(slot) = s.verdicts.get_mut(cache_slot)
    {
        verdicts::store(slot, cache_key, epoch, ep.endpoint, &verdict);
    }
    conclude(s, ep.endpoint, dir, &verdict, parsed_ip, clock.0, bytes)
}

/// [`scratch::Scratch::deny_hint`]'s value for an interface and direction
/// (never 0: the direction is stored plus one).
#[inline(always)]
fn hint(ifindex: u32, dir: u32) -> u64 {
    u64::from(ifindex) << 32 | u64::from(dir + 1)
}

/// The cached drop for the packet's new flow, where the packet cannot be
/// part of a tracked flow that conntrack would pass:
/// - a flow opened in this direction was judged by the same policy under
///   the same epoch, which the cache says drops it (under an older epoch
///   its next packet would be judged again, and dropped);
/// - a flow opened in the other direction needs this endpoint to have
///   tracked one (`maps::opened`), which it never did.
///
/// Fragments and ICMP errors are left to the slow path, as ever.
#[inline(always)]
fn cached_drop(
    s: &mut scratch::Scratch,
    ifindex: u32,
    dir: u32,
    epoch: u32,
) -> Option<(Verdict, u32)> {
    if s.pkt.frag != frag::NONE || s.pkt.is_related {
        return None;
    }
    s.pkt.map_addresses();
    let (key, slot) = verdicts::slot(s, ifindex, dir);
    let (verdict, endpoint) = verdicts::cached(s.verdicts.get(slot)?, &key, epoch)?;
    if verdict.pass || maps::opened(endpoint, direction::opposite(dir)) {
        return None;
    }
    Some((verdict, endpoint))
}

/// Reports a drop or audit verdict, counts the verdict, and returns
/// whether the packet passes. `now`: the clock, if the packet has read it
/// already, or 0 ([`Clock`]).
#[inline(always)]
fn conclude(
    s: &mut scratch::Scratch,
    endpoint: u32,
    dir: u32,
    verdict: &Verdict,
    parsed_ip: bool,
    now: u64,
    bytes: u64,
) -> bool {
    if !verdict.pass || verdict.reason == reason::AUDIT_WOULD_DROP {
        events::report(s, endpoint, dir, verdict, parsed_ip, now);
    }
    account(endpoint, dir, verdict, bytes);
    verdict.pass
}

/// The endpoint on an interface, read at most once per packet and only if
/// asked.
pub struct Here {
    ifindex: u32,
    read: Option<Option<&'static crate::datapath::EndpointValue>>,
}

impl Here {
    #[inline(always)]
    const fn at(ifindex: u32) -> Self {
        Self {
            ifindex,
            read: None,
        }
    }

    #[inline(always)]
    pub fn endpoint(&mut self) -> Option<&'static crate::datapath::EndpointValue> {
        match self.read {
            Some(read) => read,
            None => {
                let read = maps::endpoint(self.ifindex);
                self.read = Some(read);
                read
            }
        }
    }
}

/// Whether the packet's source is one the endpoint's pod may send from:
/// its address, where the syncer wrote one for the family; in IPv6 also a
/// link-local address or the unspecified one, which every interface uses
/// before and beside its own.
#[inline(always)]
fn source_is_own(p: &Packet, ep: &crate::datapath::EndpointValue) -> bool {
    use crate::datapath::endpoint_flags::{SOURCE4, SOURCE6};
    if !p.v6 {
        return ep.flags & SOURCE4 == 0 || p.src4 == ep.source4;
    }
    ep.flags & SOURCE6 == 0 || own6(&p.src, ep)
}

/// Whether `frame`'s Ethernet source may be `mac` ([`from_mac`]), by the
/// bounds it has now (a pull while parsing moves them).
#[inline(always)]
fn frame_from_mac(frame: &impl Frame, mac: &[u8; 6]) -> bool {
    let (data, data_end) = frame.bounds();
    from_mac(data, data_end, mac)
}

/// Whether the IPv6 address `addr` is the endpoint's, unspecified, or
/// link-local but not the node's. A pod's own link-local address is known
/// only inside the pod; the node's is its neighbours' router, which a pod
/// announcing it would take the place of.
#[inline(always)]
fn own6(addr: &[u8; crate::datapath::ADDR_LEN], ep: &crate::datapath::EndpointValue) -> bool {
    let (a, b) = (word(addr, 0), word(addr, 8));
    let (x, y) = (word(&ep.source6, 0), word(&ep.source6, 8));
    if (a ^ x) | (b ^ y) == 0 || a | b == 0 {
        return true;
    }
    a >> 54 == 0xfe80 >> 6 && !maps::node_address(addr)
}

/// Why a pod's ARP or neighbour discovery frame is dropped, if it is
/// ([`Neighbour`]): it announces as its sender's an address the pod may not
/// send from, by the same rules as an IP packet's source (`0.0.0.0` too,
/// in an ARP probe), which would teach its receivers to send that
/// address's traffic to the pod; from a bridged pod, it announces a
/// link-layer address other than the pod's (`drop_spoofed_mac`); or it
/// claims to be a router, which would make every IPv6 pod on the link
/// route through it (CVE-2020-10749).
#[inline(always)]
fn neighbour_refused(p: &Packet, claim: u8, ep: &crate::datapath::EndpointValue) -> Option<u32> {
    use crate::datapath::endpoint_flags::{SOURCE_MAC, SOURCE_PREFIXES, SOURCE4, SOURCE6};
    if claim == Neighbour::ROUTER {
        return Some(reason::DROP_ROUTER_MESSAGE);
    }
    // The frame's own source is the pod's MAC (checked before): what it
    // announces must be too, or receivers would send the claimed address's
    // traffic to another pod's port, and the node would place the pod there.
    if ep.flags & SOURCE_MAC != 0 && p.lladdr_foreign {
        return Some(reason::DROP_SPOOFED_MAC);
    }
    let prefixes = ep.flags & SOURCE_PREFIXES != 0;
    let spoofed = Some(reason::DROP_SPOOFED_SOURCE);
    if claim == Neighbour::ARP {
        let own = ep.flags & SOURCE4 == 0
            || p.src4 == ep.source4
            || u32::from_ne_bytes(p.src4) == 0
            || prefixes && maps::source_prefix_allows(ep.endpoint, p);
        return if own { None } else { spoofed };
    }
    if !source_is_own(p, ep) && !(prefixes && maps::source_prefix_allows(ep.endpoint, p)) {
        return spoofed;
    }
    if claim == Neighbour::ADVERT
        && ep.flags & SOURCE6 != 0
        && !own6(&p.target, ep)
        && !(prefixes && maps::source_prefix_holds6(ep.endpoint, &p.target))
    {
        return spoofed;
    }
    None
}

/// Eight bytes of an address from `at`, most significant first. Built
/// from bytes: the endpoint's copy is only 4-byte aligned, and comparing
/// the arrays whole would be a call to `memcmp`.
#[inline(always)]
fn word(a: &[u8; crate::datapath::ADDR_LEN], at: usize) -> u64 {
    let mut w = 0;
    let mut i = 0;
    while i < 8 {
        w = w << 8 | u64::from(a[at + i]);
        i += 1;
    }
    w
}

/// The coarse clock, read at most once per packet and only if asked.
///
/// Unread is 0, not an `Option`'s `None`: a `None`'s payload is undefined,
/// and a register the compiler spills with nothing written to it is one
/// the verifier refuses (`R4 !read_ok`, met once with the verdict cache's
/// key). The clock itself reads 0 only before the first tick of boot,
/// before any program can run.
pub struct Clock(u64);

impl Clock {
    const UNREAD: Self = Self(0);

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = clock();
        }
        self.0
    }
}

/// Timeouts are seconds long: the coarse clock (jiffy resolution) is
/// enough and, unlike a clocksource read, cheap in a VM.
#[inline(always)]
fn clock() -> u64 {
    // SAFETY: a helper without side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Counts a verdict per (direction, reason) and per (endpoint, policy,
/// reason, direction).
#[inline(always)]
fn account(endpoint: u32, dir: u32, verdict: &Verdict, bytes: u64) {
    count(&PAL_TC_STATS, dir, verdict.reason, bytes);
    let key = counter_key(endpoint, dir, verdict);
    count_detail(&PAL_CNT_CELLS, &PAL_COUNTERS, &PAL_TC_STATS, &key, bytes);
}

#[inline(always)]
fn counter_key(endpoint: u32, dir: u32, verdict: &Verdict) -> CounterKey {
    CounterKey {
        endpoint,
        policy: verdict.policy,
        reason: verdict.reason as u16,
        direction: dir as u8,
        _pad: 0,
    }
}
