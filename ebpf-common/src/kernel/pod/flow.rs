//! The verdict for one parsed IP packet at one endpoint and direction.
//!
//! Order: non-first fragments borrow the ports their first fragment
//! recorded; ICMP errors about a tracked flow pass as related; a packet of a
//! tracked flow (either way round) passes without a policy lookup unless the
//! endpoint's policy revision moved on since, in which case the flow is
//! checked again and cut if now denied; anything else is a new flow and is
//! looked up, and recorded if allowed.

use crate::{
    datapath::{CtKey, CtValue, EndpointValue, FragValue, direction},
    kernel::parse::frag,
    reason,
};
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

use super::{
    conntrack::{advance, expired},
    maps::{PAL_CT, PAL_FRAGS, PAL_TC_STATS},
    policy::{Verdict, evaluate},
    scratch::{Lookup, Scratch},
};

/// Re-checks a tracked flow whose endpoint revision moved on.
#[inline(always)]
fn revalidate(
    ep: &EndpointValue,
    key: &CtKey,
    value: &mut CtValue,
    l: &mut Lookup,
) -> Option<Verdict> {
    if value.revision == ep.revision {
        return None;
    }
    let dir = u32::from(key.direction);
    let peer = if dir == direction::EGRESS {
        &key.dst
    } else {
        &key.src
    };
    let v = evaluate(ep, dir, peer, key.protocol, key.dport, l);
    if v.pass {
        value.revision = ep.revision;
        value.policy = v.policy;
        None
    } else {
        Some(Verdict::drop(reason::DROP_REVALIDATED, v.policy))
    }
}

#[inline(always)]
fn fill(key: &mut CtKey, endpoint: u32, dir: u32) {
    key.endpoint = endpoint;
    key.direction = dir as u8;
    key._pad = [0; 2];
}

#[inline(always)]
pub fn decide(ep: &EndpointValue, dir: u32, s: &mut Scratch) -> Verdict {
    // Timeouts are seconds long: the coarse clock (jiffy resolution) is
    // enough and, unlike a clocksource read, cheap in a VM.
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let later_fragment = s.pkt.frag == frag::LATER;
    if s.pkt.frag != frag::NONE {
        s.frag.src = s.pkt.src;
        s.frag.dst = s.pkt.dst;
        s.frag.id = s.pkt.frag_id;
        s.frag.protocol = s.pkt.protocol;
        s.frag._pad = [0; 3];
    }
    if later_fragment {
        // SAFETY: the value is copied out before any other map operation.
        match unsafe { PAL_FRAGS.get(&s.frag) } {
            Some(ports) => {
                s.pkt.sport = ports.sport;
                s.pkt.dport = ports.dport;
            }
            None => return Verdict::drop(reason::DROP_FRAGMENT_UNKNOWN, 0),
        }
    }

    if s.pkt.is_related {
        s.key.src = s.pkt.inner.src;
        s.key.dst = s.pkt.inner.dst;
        s.key.sport = s.pkt.inner.sport;
        s.key.dport = s.pkt.inner.dport;
        s.key.protocol = s.pkt.inner.protocol;
        fill(&mut s.key, ep.endpoint, direction::opposite(dir));
        if let Some(v) = PAL_CT.get_ptr(&s.key) {
            // SAFETY: valid map value pointer for this run; only read here.
            let v = unsafe { &*v };
            if !expired(&s.key, v, now) && v.revision == ep.revision {
                return Verdict::pass(reason::ALLOW_RELATED, v.policy);
            }
        }
    }

    s.key.src = s.pkt.src;
    s.key.dst = s.pkt.dst;
    s.key.sport = s.pkt.sport;
    s.key.dport = s.pkt.dport;
    s.key.protocol = s.pkt.protocol;
    fill(&mut s.key, ep.endpoint, dir);
    s.back.src = s.pkt.dst;
    s.back.dst = s.pkt.src;
    s.back.sport = s.pkt.dport;
    s.back.dport = s.pkt.sport;
    s.back.protocol = s.pkt.protocol;
    fill(&mut s.back, ep.endpoint, direction::opposite(dir));

    let (tracked, is_reply) = match PAL_CT.get_ptr_mut(&s.key) {
        Some(v) => (Some(v), false),
        None => (PAL_CT.get_ptr_mut(&s.back), true),
    };
    if let Some(value) = tracked {
        // SAFETY: valid map value pointer for this run; a concurrent update
        // of the same flow on another CPU only races on idempotent bits.
        let value = unsafe { &mut *value };
        let key = if is_reply { &s.back } else { &s.key };
        if !expired(key, value, now) {
            if let Some(cut) = revalidate(ep, key, value, &mut s.lookup) {
                let _ = PAL_CT.remove(key);
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
        let mut value = CtValue {
            revision: ep.revision,
            policy: verdict.policy,
            ..CtValue::default()
        };
        advance(&mut value, s.pkt.protocol, s.pkt.tcp_flags, false, now);
        if PAL_CT.insert(&s.key, &value, 0).is_err() {
            crate::kernel::count(&PAL_TC_STATS, dir, reason::CT_MAP_FULL, 0);
        }
        if s.pkt.frag == frag::FIRST {
            record_fragment(s);
        }
        if later_fragment && verdict.reason == reason::ALLOW_POLICY {
            verdict.reason = reason::ALLOW_FRAGMENT;
        }
    }
    verdict
}

/// Remembers the ports of an allowed first fragment for the ones after it.
#[inline(always)]
fn record_fragment(s: &Scratch) {
    let ports = FragValue {
        sport: s.pkt.sport,
        dport: s.pkt.dport,
    };
    let _ = PAL_FRAGS.insert(&s.frag, &ports, 0);
}
