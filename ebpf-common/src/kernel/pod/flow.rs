//! The verdict for one parsed IP packet at one endpoint and direction.
//!
//! Fast path ([`established`]): a packet of a tracked flow, judged under the
//! current epoch at the endpoint that tracks it, passes on the strength of
//! its conntrack entry: one lookup, either way round, and the endpoint's
//! slot to check it is that endpoint's; the policy is not looked up. A
//! packet that names another endpoint's flow (an address and ports a pod
//! wrote but does not own) is judged like a new flow. Everything else takes the slow path ([`decide`]), in this
//! order: non-first fragments borrow the ports (and protocol) their first fragment
//! recorded; ICMP errors about a tracked flow pass as related; a tracked
//! flow whose epoch is old (policy or identities changed since) is judged
//! again, and cut if now denied; anything else is a new flow, looked up and
//! tracked if allowed.

use crate::{
    datapath::{ADDR_LEN, CtEnd, EndpointValue, FragValue, direction, flow_cells},
    kernel::parse::{Packet, frag},
    kernel::put,
    reason,
};

use super::{
    Clock, Here,
    conntrack::{self, Sides, advance, end_of, expired},
    maps::{PAL_FRAGS, PAL_TC_STATS, set_opened},
    policy::{Verdict, evaluate},
    scratch::{Lookup, Scratch},
};

#[inline(always)]
fn sides_of(p: &Packet, dir: u32) -> Sides<'_> {
    Sides {
        v6: p.v6,
        src: &p.src,
        dst: &p.dst,
        src4: p.src4,
        dst4: p.dst4,
        sport: p.sport,
        dport: p.dport,
        protocol: p.protocol,
        dir,
    }
}

/// The IPv4 address in an IPv4-mapped one.
#[inline(always)]
fn ipv4_of(a: &[u8; ADDR_LEN]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// A packet of a flow tracked and judged under `epoch`, at the endpoint on
/// `here` that tracks it, passes on its entry alone; anything else goes
/// down the slow path.
///
/// The endpoint is compared because the key names the flow, not who may
/// send it: a pod that writes a neighbour's address and ports into its
/// packets builds the neighbour's key, and must not ride on that flow's
/// entry past its own policy. The slow path judges such a packet by the
/// policy of the endpoint it came through. (The endpoint's slot is an
/// inlined array read.)
#[inline(always)]
pub fn established(
    s: &mut Scratch,
    here: &mut Here,
    dir: u32,
    epoch: u32,
    clock: &mut Clock,
) -> Fast {
    if s.pkt.frag != frag::NONE || s.pkt.is_related {
        return Fast::Slow;
    }
    let sides = sides_of(&s.pkt, dir);
    let src_is_lo = conntrack::build(&sides, &mut s.ct4, &mut s.ct6);
    let Some(entry) = conntrack::lookup(s.pkt.v6, &s.ct4, &s.ct6) else {
        put(&mut s.ct_seen, 0);
        return Fast::Untracked(src_is_lo);
    };
    // SAFETY: valid map value pointer for this run; a concurrent update of
    // the same flow on another CPU only races on idempotent bits.
    let value = unsafe { &mut *conntrack::end(entry, end_of(dir, src_is_lo)) };
    // Only the flow's other end tracks it: new here.
    if value.endpoint == 0 {
        put(&mut s.ct_seen, 1);
        return Fast::Untracked(src_is_lo);
    }
    if value.epoch != epoch
        || here
            .endpoint()
            .is_none_or(|ep| ep.endpoint != value.endpoint)
    {
        return Fast::Slow;
    }
    let now = clock.now();
    if expired(s.pkt.protocol, value, now) {
        return Fast::Slow;
    }
    let is_reply = src_is_lo != (value.opener_lo != 0);
    advance(value, s.pkt.protocol, s.pkt.tcp_flags, is_reply, now);
    let (why, cell) = if is_reply {
        (reason::ALLOW_REPLY, value.cells >> 16)
    } else {
        (reason::ALLOW_ESTABLISHED, value.cells & 0xffff)
    };
    Fast::Pass(Verdict::pass(why, value.policy), value.endpoint, cell)
}

/// What the fast path made of a packet.
pub enum Fast {
    /// Passes, with the endpoint that tracks the flow and the counter cell.
    Pass(Verdict, u32, u32),
    /// Not tracked at this end: a new flow (its key is built, and
    /// `Scratch::ct_seen` says whether its entry exists), not a fragment
    /// nor an ICMP error; whether its source is the key's `lo` side.
    Untracked(bool),
    /// For the slow path to look at from the start.
    Slow,
}

/// A tracked flow, seen in `dir` (`is_reply` if against its opening
/// direction), judged again if the epoch moved on since it last was: by the
/// policy for its opening packet, whose peer is the remote side either way
/// round and whose port is the destination port of the opener.
#[inline(always)]
fn rejudge(
    ep: &EndpointValue,
    value: &mut CtEnd,
    p: &Sides,
    is_reply: bool,
    epoch: u32,
    l: &mut Lookup,
) -> Result<(), Verdict> {
    if value.epoch == epoch {
        return Ok(());
    }
    let peer: &[u8; ADDR_LEN] = if p.dir == direction::EGRESS {
        p.dst
    } else {
        p.src
    };
    let (opener_dir, port) = if is_reply {
        (direction::opposite(p.dir), p.sport)
    } else {
        (p.dir, p.dport)
    };
    let v = evaluate(ep, opener_dir, peer, p.protocol, port, l);
    if v.pass {
        value.epoch = epoch;
        value.policy = v.policy;
        value.cells = flow_cells(value.endpoint, v.policy, u32::from(value.direction));
        Ok(())
    } else {
        Err(Verdict::drop(reason::DROP_REVALIDATED, v.policy))
    }
}

/// The slow path: every IP packet [`established`] did not answer.
/// `untracked`: the fast path found the flow untracked at this end, so it
/// is not looked up again ([`Fast::Untracked`]).
#[inline(always)]
pub fn decide(
    ep: &EndpointValue,
    dir: u32,
    s: &mut Scratch,
    epoch: u32,
    clock: &mut Clock,
    untracked: bool,
) -> Verdict {
    s.pkt.map_addresses();
    let later_fragment = s.pkt.frag == frag::LATER;
    if s.pkt.frag != frag::NONE {
        s.frag.src = s.pkt.src;
        s.frag.dst = s.pkt.dst;
        s.frag.id = s.pkt.frag_id;
        s.frag.protocol = s.pkt.frag_next;
        for byte in &mut s.frag._pad {
            // One by one: see `put`.
            crate::kernel::put(byte, 0);
        }
    }
    if later_fragment {
        // SAFETY: the value is copied out before any other map operation.
        match unsafe { PAL_FRAGS.get(&s.frag) } {
            Some(first) => {
                s.pkt.sport = first.sport;
                s.pkt.dport = first.dport;
                s.pkt.protocol = first.protocol;
            }
            None => return Verdict::drop(reason::DROP_FRAGMENT_UNKNOWN, 0),
        }
    }

    if s.pkt.is_related {
        // The quoted packet travelled the other way at this endpoint.
        let inner = Sides {
            v6: s.pkt.v6,
            src: &s.pkt.inner.src,
            dst: &s.pkt.inner.dst,
            src4: ipv4_of(&s.pkt.inner.src),
            dst4: ipv4_of(&s.pkt.inner.dst),
            sport: s.pkt.inner.sport,
            dport: s.pkt.inner.dport,
            protocol: s.pkt.inner.protocol,
            dir: direction::opposite(dir),
        };
        let src_is_lo = conntrack::build(&inner, &mut s.ct4, &mut s.ct6);
        if let Some(entry) = conntrack::lookup(s.pkt.v6, &s.ct4, &s.ct6) {
            // SAFETY: as in `established`.
            let value = unsafe { &mut *conntrack::end(entry, end_of(inner.dir, src_is_lo)) };
            if value.endpoint == ep.endpoint && !expired(inner.protocol, value, clock.now()) {
                let is_reply = src_is_lo != (value.opener_lo != 0);
                if rejudge(ep, value, &inner, is_reply, epoch, &mut s.lookup).is_ok() {
                    return Verdict::pass(reason::ALLOW_RELATED, value.policy);
                }
            }
        }
    }

    let sides = sides_of(&s.pkt, dir);
    let src_is_lo = conntrack::build(&sides, &mut s.ct4, &mut s.ct6);
    let tracked = if untracked {
        None
    } else {
        let found = conntrack::lookup(s.pkt.v6, &s.ct4, &s.ct6);
        put(&mut s.ct_seen, u32::from(found.is_some()));
        found
    };
    if let Some(entry) = tracked {
        // SAFETY: as in `established`.
        let value = unsafe { &mut *conntrack::end(entry, end_of(dir, src_is_lo)) };
        // An end of another endpoint (a reused address) or an expired one
        // is replaced below, like none.
        let now = clock.now();
        if value.endpoint == ep.endpoint && !expired(s.pkt.protocol, value, now) {
            let is_reply = src_is_lo != (value.opener_lo != 0);
            if let Err(cut) = rejudge(ep, value, &sides, is_reply, epoch, &mut s.lookup) {
                let key = (s.pkt.v6, &s.ct4, &s.ct6);
                conntrack::forget(key, end_of(dir, src_is_lo), ep.endpoint);
                return cut;
            }
            advance(value, s.pkt.protocol, s.pkt.tcp_flags, is_reply, now);
            let why = if later_fragment {
                reason::ALLOW_FRAGMENT
            } else if is_reply {
                reason::ALLOW_REPLY
            } else {
                reason::ALLOW_ESTABLISHED
            };
            if s.pkt.frag == frag::FIRST {
                record_fragment(s);
            }
            return Verdict::pass(why, value.policy);
        }
    }

    let peer = if dir == direction::EGRESS {
        &s.pkt.dst
    } else {
        &s.pkt.src
    };
    let mut verdict = evaluate(ep, dir, peer, s.pkt.protocol, s.pkt.dport, &mut s.lookup);
    if verdict.pass {
        track(s, ep.endpoint, dir, &verdict, epoch, clock.now(), src_is_lo);
        if s.pkt.frag == frag::FIRST {
            record_fragment(s);
        }
        if later_fragment && verdict.reason == reason::ALLOW_POLICY {
            verdict.reason = reason::ALLOW_FRAGMENT;
        }
    }
    verdict
}

/// Tracks the new flow of the packet in `s` (its conntrack key built),
/// allowed by `verdict` at `endpoint`.
#[inline(always)]
pub fn track(
    s: &mut Scratch,
    endpoint: u32,
    dir: u32,
    verdict: &Verdict,
    epoch: u32,
    now: u64,
    src_is_lo: bool,
) {
    let mut value = CtEnd {
        endpoint,
        policy: verdict.policy,
        epoch,
        direction: dir as u8,
        opener_lo: u8::from(src_is_lo),
        cells: flow_cells(endpoint, verdict.policy, dir),
        ..CtEnd::default()
    };
    advance(&mut value, s.pkt.protocol, s.pkt.tcp_flags, false, now);
    // Before the entry: a reply can only follow an entry that exists, and
    // must then find the mark set (`maps::opened`).
    set_opened(endpoint, dir);
    let at = end_of(dir, src_is_lo);
    // SAFETY: a field of the scratch, read as the verifier sees it: any
    // value.
    let seen = unsafe { core::ptr::read_volatile(&s.ct_seen) } != 0;
    let key = (s.pkt.v6, &s.ct4, &s.ct6);
    if !conntrack::track(key, seen, at, &value, &mut s.ct_new) {
        crate::kernel::count(&PAL_TC_STATS, dir, reason::CT_MAP_FULL, 0);
    }
}

/// Remembers the ports and protocol of an allowed first fragment for the
/// ones after it.
#[inline(always)]
fn record_fragment(s: &Scratch) {
    let first = FragValue {
        sport: s.pkt.sport,
        dport: s.pkt.dport,
        protocol: s.pkt.protocol,
        _pad0: 0,
        _pad1: 0,
    };
    let _ = PAL_FRAGS.insert(&s.frag, &first, 0);
}
