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

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use core::ptr::write_volatile;

use maps::{PAL_CNT_CELLS, PAL_COUNTERS, PAL_ENDPOINTS, PAL_FLOW_CELLS, PAL_TC_STATS};
use policy::Verdict;

use crate::{
    datapath::CounterKey,
    kernel::{
        count, count_detail,
        parse::{Kind, parse},
    },
    reason,
};

/// Judges one frame at the endpoint on `ifindex`, in `dir` (the pod's
/// ingress or egress), counts it, reports drops and audits, and returns
/// whether it may pass. Interfaces that are not endpoints pass.
///
/// A packet of a flow already tracked and judged under the current epoch
/// takes the fast path (`flow::established`): its conntrack entry names the
/// endpoint and policy, so the endpoint map is only read for the rest.
#[inline(always)]
pub fn enforce(data: usize, data_end: usize, ifindex: u32, bytes: u64, dir: u32) -> bool {
    let Some(s) = scratch::get() else {
        // Cannot happen (a one-slot array always has slot 0); fail open
        // with a count rather than drop traffic Palisade cannot judge.
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let parsed = parse(data, data_end, &mut s.pkt);
    let parsed_ip = parsed.kind == Kind::Ip;
    let epoch = maps::epoch();
    // Timeouts are seconds long: the coarse clock (jiffy resolution) is
    // enough and, unlike a clocksource read, cheap in a VM.
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut untracked = false;
    if parsed_ip {
        match flow::established(s, dir, epoch, now) {
            flow::Fast::Pass(flow) => {
                account_tracked(&flow, dir, bytes);
                return true;
            }
            flow::Fast::Untracked => untracked = true,
            flow::Fast::Slow => {}
        }
    }
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { PAL_ENDPOINTS.get(&ifindex) }).copied() else {
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return true;
    };
    let verdict = match parsed.kind {
        Kind::Ip => flow::decide(&ep, dir, s, epoch, now, untracked),
        Kind::Pass => Verdict::pass(parsed.reason, 0),
        Kind::Drop => Verdict::drop(parsed.reason, 0),
    };
    if !verdict.pass || verdict.reason == reason::AUDIT_WOULD_DROP {
        events::report(s, ep.endpoint, dir, &verdict, parsed_ip, now);
    }
    account(ep.endpoint, dir, &verdict, bytes);
    verdict.pass
}

/// Counts a fast-path packet: in its flow's cell if the cell is its own
/// (or free) on this CPU, else like any other verdict.
#[inline(always)]
fn account_tracked(flow: &flow::Tracked, dir: u32, bytes: u64) {
    let why = if flow.is_reply {
        reason::ALLOW_REPLY
    } else {
        reason::ALLOW_ESTABLISHED
    };
    count(&PAL_TC_STATS, dir, why, bytes);
    if let Some(cell) = PAL_FLOW_CELLS.get_ptr_mut(flow.cell) {
        // SAFETY: a per-CPU array value, valid for this run and written
        // only by this CPU.
        let cell = unsafe { &mut *cell };
        if cell.claimed == 0 {
            // Readers skip unclaimed cells, so the key goes in first:
            // volatile writes keep their order (the BPF backend has no
            // fences; x86 keeps stores in order).
            // SAFETY: pointers to fields of the cell above.
            unsafe {
                write_volatile(&mut cell.endpoint, flow.endpoint);
                write_volatile(&mut cell.policy, flow.policy);
                write_volatile(&mut cell.direction, flow.opener_dir as u8);
                write_volatile(&mut cell.claimed, 1);
            }
        }
        if cell.endpoint == flow.endpoint
            && cell.policy == flow.policy
            && u32::from(cell.direction) == flow.opener_dir
        {
            let c = if flow.is_reply {
                &mut cell.reply
            } else {
                &mut cell.established
            };
            c.events += 1;
            c.bytes += bytes;
            return;
        }
    }
    let key = CounterKey {
        endpoint: flow.endpoint,
        policy: flow.policy,
        reason: why as u16,
        direction: dir as u8,
        _pad: 0,
    };
    count_detail(&PAL_CNT_CELLS, &PAL_COUNTERS, &PAL_TC_STATS, &key, bytes);
}

/// Counts a verdict per (direction, reason) and per (endpoint, policy,
/// reason, direction).
#[inline(always)]
fn account(endpoint: u32, dir: u32, verdict: &Verdict, bytes: u64) {
    count(&PAL_TC_STATS, dir, verdict.reason, bytes);
    let key = CounterKey {
        endpoint,
        policy: verdict.policy,
        reason: verdict.reason as u16,
        direction: dir as u8,
        _pad: 0,
    };
    count_detail(&PAL_CNT_CELLS, &PAL_COUNTERS, &PAL_TC_STATS, &key, bytes);
}
