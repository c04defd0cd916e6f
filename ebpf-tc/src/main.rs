//! TC programs on each pod's host-side veth.
//!
//! `pal_tc_from_pod` sits on the veth's receive side and enforces the pod's
//! egress policy; `pal_tc_to_pod` sits on its transmit side and enforces the
//! pod's ingress policy, whichever node or pod the packet came from. An
//! allowed packet returns "no verdict" (TC_ACT_UNSPEC, TCX_NEXT) so another
//! TC program (a CNI's) still runs; a denied one is shot.
#![no_std]
#![no_main]
// #[classifier] expands to a `pub extern "C" fn` taking the kernel's raw
// `__sk_buff` pointer; the kernel, not a Rust caller, guarantees it.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod conntrack;
mod events;
mod flow;
mod maps;
mod policy;
mod scratch;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use ebpf_common::{
    datapath::CounterKey,
    kernel::{
        count, count_detail,
        parse::{Parsed, parse},
    },
    reason,
    stats::direction,
};
use maps::{PAL_COUNTERS, PAL_ENDPOINTS, PAL_TC_STATS};
use policy::Verdict;

#[classifier]
pub fn pal_tc_from_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, direction::EGRESS)
}

#[classifier]
pub fn pal_tc_to_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, direction::INGRESS)
}

#[inline(always)]
fn enforce(ctx: &TcContext, dir: u32) -> i32 {
    let bytes = u64::from(ctx.len());
    // SAFETY: the context pointer of a classifier is the kernel's __sk_buff.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { PAL_ENDPOINTS.get(&ifindex) }).copied() else {
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return TC_ACT_UNSPEC;
    };
    let Some(s) = scratch::get() else {
        // Cannot happen (a one-slot array always has slot 0); fail open
        // with a count rather than drop traffic Palisade cannot judge.
        count(&PAL_TC_STATS, dir, reason::PASS_NO_ENDPOINT, bytes);
        return TC_ACT_UNSPEC;
    };
    let parsed = parse(ctx.data(), ctx.data_end(), &mut s.pkt);
    let parsed_ip = matches!(parsed, Parsed::Ip);
    let verdict = match parsed {
        Parsed::Ip => flow::decide(&ep, dir, s),
        Parsed::Pass(why) => Verdict::pass(why, 0),
        Parsed::Drop(why) => Verdict::drop(why, 0),
    };
    if !verdict.pass || verdict.reason == reason::AUDIT_WOULD_DROP {
        events::report(s, ep.endpoint, dir, &verdict, parsed_ip);
    }
    count(&PAL_TC_STATS, dir, verdict.reason, bytes);
    let key = CounterKey {
        endpoint: ep.endpoint,
        policy: verdict.policy,
        reason: verdict.reason as u16,
        direction: dir as u8,
        _pad: 0,
    };
    count_detail(&PAL_COUNTERS, &PAL_TC_STATS, &key, bytes);
    if verdict.pass {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
