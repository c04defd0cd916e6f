//! Connection tracking: the key of a flow, its state, idle timeouts.

use crate::{
    datapath::{ADDR_LEN, Ct4Key, Ct6Key, CtEnd, CtValue, ct_state, ct_timeout, direction},
    kernel::parse::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, tcp_flags,
    },
};

use super::maps::{PAL_CT4, PAL_CT6};

use core::ptr::write_volatile as put;

/// One packet's view of a flow, as the conntrack key needs it.
pub struct Sides<'a> {
    pub v6: bool,
    /// IPv6: the addresses. IPv4: the mapped forms, where the slow path
    /// needs them; the key reads `src4` and `dst4`.
    pub src: &'a [u8; ADDR_LEN],
    pub dst: &'a [u8; ADDR_LEN],
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// Where the packet travels, at the endpoint.
    pub dir: u32,
}

#[inline(always)]
fn be64(a: &[u8; ADDR_LEN], at: usize) -> u64 {
    u64::from_be_bytes([
        a[at],
        a[at + 1],
        a[at + 2],
        a[at + 3],
        a[at + 4],
        a[at + 5],
        a[at + 6],
        a[at + 7],
    ])
}

/// Writes the flow's key (into `k4` or `k6`, by family) and returns
/// whether the packet's source is the key's `lo` side.
#[inline(always)]
pub fn build(p: &Sides, k4: &mut Ct4Key, k6: &mut Ct6Key) -> bool {
    let src_is_lo = if p.v6 {
        let (a, b) = (
            (be64(p.src, 0), be64(p.src, 8)),
            (be64(p.dst, 0), be64(p.dst, 8)),
        );
        a < b || (a == b && p.sport <= p.dport)
    } else {
        // Any total order will do, as long as both directions use it.
        let (a, b) = (u32::from_ne_bytes(p.src4), u32::from_ne_bytes(p.dst4));
        a < b || (a == b && p.sport <= p.dport)
    };
    let (lo, hi, lo4, hi4, lo_port, hi_port) = if src_is_lo {
        (p.src, p.dst, p.src4, p.dst4, p.sport, p.dport)
    } else {
        (p.dst, p.src, p.dst4, p.src4, p.dport, p.sport)
    };
    // Field by field, the pad's bytes each by a store of its own: written
    // as a struct, its three zero bytes were a call to `memset`.
    if p.v6 {
        k6.lo = *lo;
        k6.hi = *hi;
        k6.lo_port = lo_port;
        k6.hi_port = hi_port;
        k6.protocol = p.protocol;
        zero_pad(&mut k6._pad);
    } else {
        k4.lo = lo4;
        k4.hi = hi4;
        k4.lo_port = lo_port;
        k4.hi_port = hi_port;
        k4.protocol = p.protocol;
        zero_pad(&mut k4._pad);
    }
    src_is_lo
}

#[inline(always)]
fn zero_pad(pad: &mut [u8; 3]) {
    for byte in pad {
        crate::kernel::put(byte, 0);
    }
}

/// Which of an entry's ends is the endpoint's own ([`CtValue::ends`]): the
/// side of the source of what it sends, of the destination of what it
/// receives.
#[inline(always)]
pub fn end_of(dir: u32, src_is_lo: bool) -> usize {
    usize::from((dir == direction::EGRESS) != src_is_lo)
}

#[inline(always)]
pub fn lookup(v6: bool, k4: &Ct4Key, k6: &Ct6Key) -> Option<*mut CtValue> {
    if v6 {
        PAL_CT6.get_ptr_mut(k6)
    } else {
        PAL_CT4.get_ptr_mut(k4)
    }
}

/// The end `end` ([`end_of`]) of the entry at `entry`.
#[inline(always)]
pub fn end(entry: *mut CtValue, end: usize) -> *mut CtEnd {
    // 0 or 1: the pointer stays in the value.
    entry.cast::<CtEnd>().wrapping_add(end & 1)
}

/// Tracks the flow whose key is built at end `at` ([`end_of`]): written
/// into the flow's entry where there is one (the other end's, or an older
/// one of this end's), else into a new entry that holds only this end,
/// built in `new` (per-CPU scratch: the verifier does not follow what a
/// map value holds, where a value on the stack, written at an end known
/// only at run time, cost it more states). `seen`: whether the packet
/// found an entry. Where it found none, the entry is made without a
/// lookup first; another CPU may have made it meanwhile (the flow's other
/// end, or another packet of it), and the end is then written into that
/// one. The entry is looked up afresh rather than through a pointer the
/// packet found earlier: an LRU map may hand an evicted element to
/// another flow at once. False when the map refused the entry.
#[inline(always)]
pub fn track(
    (v6, k4, k6): (bool, &Ct4Key, &Ct6Key),
    seen: bool,
    at: usize,
    value: &CtEnd,
    new: &mut CtValue,
) -> bool {
    // One site each for making the entry and for writing into it: the
    // verifier walks the inlined code once per site.
    let mut entry = if seen { lookup(v6, k4, k6) } else { None };
    if entry.is_none() {
        if make((v6, k4, k6), at, value, new) {
            return true;
        }
        entry = lookup(v6, k4, k6);
    }
    let Some(entry) = entry else {
        return false;
    };
    // SAFETY: a map value pointer, valid for this run.
    unsafe { write_end(end(entry, at), value) };
    true
}

/// A new entry holding end `at` alone, built in `new`; false if the flow
/// has one already or the map refused it. An LRU map takes a free element
/// before it looks for the key, so a full map evicts a flow even when the
/// insert then fails because another CPU made this flow's entry first:
/// the price of not looking up before every new flow.
#[inline(always)]
fn make(
    (v6, k4, k6): (bool, &Ct4Key, &Ct6Key),
    at: usize,
    value: &CtEnd,
    new: &mut CtValue,
) -> bool {
    const NO_EXIST: u64 = 1;
    // Field by field (`write_end`), the padding too, as the map copies
    // all 64 bytes: zeros written as a struct, whichever way, are merged
    // into a call to `memset`.
    let entry: *mut CtValue = new;
    // SAFETY: both ends of `new`, valid for writes.
    unsafe {
        write_end(end(entry, at), value);
        clear_end(end(entry, at ^ 1));
        clear_pad(end(entry, 0));
        clear_pad(end(entry, 1));
    }
    if v6 {
        PAL_CT6.insert(k6, new, NO_EXIST).is_ok()
    } else {
        PAL_CT4.insert(k4, new, NO_EXIST).is_ok()
    }
}

/// Writes an end in place. Its endpoint is cleared first and written last,
/// every field by a volatile store so that the compiler keeps that order
/// (as x86 keeps it for other CPUs): another CPU's packet that reads the
/// end's endpoint while it is written finds none of its own and takes the
/// slow path. Not a sequence lock: a packet that read the endpoint just
/// before the clear may read some of the new fields with it (its counter
/// cell, its policy's label), and a CPU that reorders stores could show
/// more; the verdict, the endpoint's, is the same either way.
///
/// # Safety
/// `to` is valid for writes.
#[inline(always)]
unsafe fn write_end(to: *mut CtEnd, value: &CtEnd) {
    // SAFETY: as the caller promises.
    unsafe {
        put(&raw mut (*to).endpoint, 0);
        put(&raw mut (*to).last_seen_ns, value.last_seen_ns);
        put(&raw mut (*to).policy, value.policy);
        put(&raw mut (*to).epoch, value.epoch);
        put(&raw mut (*to).state, value.state);
        put(&raw mut (*to).direction, value.direction);
        put(&raw mut (*to).opener_lo, value.opener_lo);
        put(&raw mut (*to).cells, value.cells);
        put(&raw mut (*to).endpoint, value.endpoint);
    }
}

/// # Safety
/// `to` is valid for writes.
#[inline(always)]
unsafe fn clear_end(to: *mut CtEnd) {
    // SAFETY: as the caller promises.
    unsafe {
        put(&raw mut (*to).last_seen_ns, 0);
        put(&raw mut (*to).endpoint, 0);
        put(&raw mut (*to).policy, 0);
        put(&raw mut (*to).epoch, 0);
        put(&raw mut (*to).state, 0);
        put(&raw mut (*to).direction, 0);
        put(&raw mut (*to).opener_lo, 0);
        put(&raw mut (*to).cells, 0);
    }
}

/// # Safety
/// `to` is valid for writes.
#[inline(always)]
unsafe fn clear_pad(to: *mut CtEnd) {
    let mut i = 0;
    while i < 5 {
        // SAFETY: as the caller promises.
        unsafe { put(&raw mut (*to)._pad[i], 0) };
        i += 1;
    }
}

/// Forgets end `at` of the flow whose key is built, if `endpoint` still
/// holds it: the other end's half, if it tracks the flow too, stays. Looked
/// up afresh, as in [`track`]: the element the packet found earlier may
/// hold another flow by now.
#[inline(always)]
pub fn forget((v6, k4, k6): (bool, &Ct4Key, &Ct6Key), at: usize, endpoint: u32) {
    if let Some(entry) = lookup(v6, k4, k6) {
        let end = end(entry, at);
        // SAFETY: a map value pointer, valid for this run.
        unsafe {
            if core::ptr::read_volatile(&raw const (*end).endpoint) == endpoint {
                put(&raw mut (*end).endpoint, 0);
            }
        }
    }
}

/// How long an idle entry in this state stays valid.
#[inline(always)]
fn timeout(protocol: u8, state: u8) -> u64 {
    match protocol {
        IPPROTO_TCP => {
            if state & ct_state::RST != 0
                || state & (ct_state::FIN_ORIGINAL | ct_state::FIN_REPLY)
                    == (ct_state::FIN_ORIGINAL | ct_state::FIN_REPLY)
            {
                ct_timeout::TCP_CLOSING
            } else if state & ct_state::REPLY_SEEN != 0 {
                ct_timeout::TCP_ESTABLISHED
            } else {
                ct_timeout::TCP_SYN
            }
        }
        IPPROTO_UDP => ct_timeout::UDP,
        IPPROTO_SCTP => ct_timeout::SCTP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ct_timeout::ICMP,
        _ => ct_timeout::OTHER,
    }
}

#[inline(always)]
pub fn expired(protocol: u8, value: &CtEnd, now: u64) -> bool {
    now.saturating_sub(value.last_seen_ns) > timeout(protocol, value.state)
}

/// How stale `last_seen_ns` may get: far below the shortest timeout (10 s).
const REFRESH_NS: u64 = 1_000_000_000;

/// Folds a packet into the entry: its time, and its TCP flags into the
/// state. Writes only what changed: a busy flow's entry, read by every CPU
/// its packets pass through, then stays in their caches instead of moving
/// between them on every packet.
#[inline(always)]
pub fn advance(value: &mut CtEnd, protocol: u8, flags: u8, is_reply: bool, now: u64) {
    if now.saturating_sub(value.last_seen_ns) >= REFRESH_NS {
        value.last_seen_ns = now;
    }
    let state = next_state(value.state, protocol, flags, is_reply);
    if state != value.state {
        value.state = state;
    }
}

#[inline(always)]
fn next_state(mut state: u8, protocol: u8, flags: u8, is_reply: bool) -> u8 {
    if is_reply {
        state |= ct_state::REPLY_SEEN;
    }
    if protocol != IPPROTO_TCP {
        return state;
    }
    if flags & tcp_flags::SYN != 0 && !is_reply {
        state |= ct_state::SYN_SEEN;
    }
    if flags & tcp_flags::FIN != 0 {
        state |= if is_reply {
            ct_state::FIN_REPLY
        } else {
            ct_state::FIN_ORIGINAL
        };
    }
    if flags & tcp_flags::RST != 0 {
        state |= ct_state::RST;
    }
    state
}
