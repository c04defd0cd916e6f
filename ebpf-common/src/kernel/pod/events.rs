//! Drop and audit events to the ring buffer, rate-limited per CPU.
//!
//! A token bucket (`event_rate`) caps what one CPU can push, so a flood of
//! denied packets cannot flood user space; every event not sent is counted
//! (`event_rate_limited`, `event_lost`), so the loss is visible.

use crate::{
    datapath::{DropEvent, event_rate},
    kernel::count,
    maps::size,
    reason,
};
use aya_ebpf::{helpers::bpf_jiffies64, macros::map, maps::RingBuf};

use super::{maps::PAL_TC_STATS, policy::Verdict, scratch::Scratch};

#[map(name = "PAL_EVENTS")]
pub static PAL_EVENTS: RingBuf = RingBuf::with_byte_size(size::EVENTS, 0);

/// Credit in nanoseconds, refilled by elapsed time up to the burst.
#[repr(C)]
pub struct TokenBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
    /// `jiffies` when `last_ns` was read.
    pub last_jiffies: u64,
}

/// Takes a token if there is one; the time it was taken at. `now`: the
/// coarse clock, where the caller read it already, or 0.
///
/// The coarse clock moves only with the tick, as `jiffies` does: while
/// `jiffies` stands still it reads what it read last, so an empty bucket
/// cannot have refilled, and the clock is not read at all. `jiffies` is a
/// load (the verifier inlines `bpf_jiffies64` on 64-bit JITs), where the
/// clock is a helper call: a denied flood past its event budget pays
/// only the load.
#[inline(always)]
fn take_token(b: &mut TokenBucket, now: u64) -> Option<u64> {
    // SAFETY: a helper without side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    if jiffies == b.last_jiffies && b.credit_ns < event_rate::COST_NS {
        return None;
    }
    b.last_jiffies = jiffies;
    let now = if now == 0 { super::clock() } else { now };
    let elapsed = now.saturating_sub(b.last_ns);
    b.last_ns = now;
    let cap = event_rate::BURST * event_rate::COST_NS;
    b.credit_ns = if elapsed >= cap {
        cap
    } else {
        (b.credit_ns + elapsed).min(cap)
    };
    if b.credit_ns < event_rate::COST_NS {
        return None;
    }
    b.credit_ns -= event_rate::COST_NS;
    Some(now)
}

/// Sends the event for `v`, stamped with the coarse clock (`now`, where
/// the packet read it), unless the rate limit is spent.
#[inline(always)]
pub fn report(s: &mut Scratch, endpoint: u32, dir: u32, v: &Verdict, parsed_ip: bool, now: u64) {
    let Some(now) = take_token(&mut s.limiter, now) else {
        count(&PAL_TC_STATS, dir, reason::EVENT_RATE_LIMITED, 0);
        return;
    };
    let Some(mut entry) = PAL_EVENTS.reserve::<DropEvent>(0) else {
        count(&PAL_TC_STATS, dir, reason::EVENT_LOST, 0);
        return;
    };
    let mut e = DropEvent {
        timestamp_ns: now,
        endpoint,
        policy: v.policy,
        reason: v.reason as u16,
        direction: dir as u8,
        ..DropEvent::default()
    };
    if parsed_ip {
        e.protocol = s.pkt.protocol;
        e.sport = s.pkt.sport;
        e.dport = s.pkt.dport;
        e.src = s.pkt.src;
        e.dst = s.pkt.dst;
    }
    entry.write(e);
    entry.submit(0);
}
