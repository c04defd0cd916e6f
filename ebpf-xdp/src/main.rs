//! XDP prefilter for the node's uplinks.
//!
//! Runs before an skb exists. The CIDR deny lists and stateless pod ingress
//! denies arrive with the datapath; until then every frame passes and is
//! counted as unenforced, so an operator can see the hook is live.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use ebpf_common::{
    kernel::count,
    reason,
    stats::{Counter, STATS_ENTRIES, direction},
};

#[map(name = "PAL_XDP_STATS")]
static PAL_XDP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[xdp]
pub fn pal_xdp_pre(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data()) as u64;
    count(
        &PAL_XDP_STATS,
        direction::INGRESS,
        reason::PASS_UNENFORCED,
        len,
    );
    xdp_action::XDP_PASS
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
