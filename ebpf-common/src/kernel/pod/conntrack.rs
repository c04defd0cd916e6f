//! Connection tracking: the key of a flow, its state, idle timeouts.

use crate::{
    datapath::{ADDR_LEN, Ct4Key, Ct6Key, CtValue, ct_state, ct_timeout, direction},
    kernel::parse::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, tcp_flags,
    },
};

use super::maps::{PAL_CT4, PAL_CT6};

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
    // The endpoint's own side: the source of what it sends, the
    // destination of what it receives.
    let local_is_src = p.dir == direction::EGRESS;
    let side = u8::from(local_is_src != src_is_lo);
    if p.v6 {
        *k6 = Ct6Key {
            lo: *lo,
            hi: *hi,
            lo_port,
            hi_port,
            protocol: p.protocol,
            side,
            _pad: [0; 2],
        };
    } else {
        *k4 = Ct4Key {
            lo: lo4,
            hi: hi4,
            lo_port,
            hi_port,
            protocol: p.protocol,
            side,
            _pad: [0; 2],
        };
    }
    src_is_lo
}

#[inline(always)]
pub fn lookup(v6: bool, k4: &Ct4Key, k6: &Ct6Key) -> Option<*mut CtValue> {
    if v6 {
        PAL_CT6.get_ptr_mut(k6)
    } else {
        PAL_CT4.get_ptr_mut(k4)
    }
}

/// False when the map refused the entry.
#[inline(always)]
pub fn insert(v6: bool, k4: &Ct4Key, k6: &Ct6Key, value: &CtValue) -> bool {
    if v6 {
        PAL_CT6.insert(k6, value, 0).is_ok()
    } else {
        PAL_CT4.insert(k4, value, 0).is_ok()
    }
}

#[inline(always)]
pub fn remove(v6: bool, k4: &Ct4Key, k6: &Ct6Key) {
    let _ = if v6 {
        PAL_CT6.remove(k6)
    } else {
        PAL_CT4.remove(k4)
    };
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
pub fn expired(protocol: u8, value: &CtValue, now: u64) -> bool {
    now.saturating_sub(value.last_seen_ns) > timeout(protocol, value.state)
}

/// How stale `last_seen_ns` may get: far below the shortest timeout (10 s).
const REFRESH_NS: u64 = 1_000_000_000;

/// Folds a packet into the entry: its time, and its TCP flags into the
/// state. Writes only what changed: a busy flow's entry, read by every CPU
/// its packets pass through, then stays in their caches instead of moving
/// between them on every packet.
#[inline(always)]
pub fn advance(value: &mut CtValue, protocol: u8, flags: u8, is_reply: bool, now: u64) {
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
