//! TC programs on each pod's host-side veth.
//!
//! `pal_tc_from_pod` sits on the veth's receive side (the pod's egress),
//! `pal_tc_to_pod` on its transmit side (the pod's ingress). Policy lookup and
//! connection tracking arrive with the datapath; until then they count and
//! return "no verdict", so that another TC program (a CNI's) still runs.
#![no_std]
#![no_main]
// #[classifier] expands to a `pub extern "C" fn` taking the kernel's raw
// `__sk_buff` pointer; the kernel, not a Rust caller, guarantees it.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use ebpf_common::{
    kernel::count,
    reason,
    stats::{Counter, STATS_ENTRIES, direction},
};

#[map(name = "PAL_TC_STATS")]
static PAL_TC_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[classifier]
pub fn pal_tc_from_pod(ctx: TcContext) -> i32 {
    count(
        &PAL_TC_STATS,
        direction::EGRESS,
        reason::PASS_UNENFORCED,
        u64::from(ctx.len()),
    );
    TC_ACT_UNSPEC
}

#[classifier]
pub fn pal_tc_to_pod(ctx: TcContext) -> i32 {
    count(
        &PAL_TC_STATS,
        direction::INGRESS,
        reason::PASS_UNENFORCED,
        u64::from(ctx.len()),
    );
    TC_ACT_UNSPEC
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
