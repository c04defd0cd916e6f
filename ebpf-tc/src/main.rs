//! TC programs on each pod's host-side veth.
//!
//! `pal_tc_from_pod` sits on the veth's receive side and enforces the pod's
//! egress policy; `pal_tc_to_pod` sits on its transmit side and enforces the
//! pod's ingress policy, whichever node or pod the packet came from. The
//! datapath itself is `ebpf_common::kernel::pod`. An allowed packet returns
//! "no verdict" (TC_ACT_UNSPEC, TCX_NEXT) so another TC program (a CNI's)
//! still runs; a denied one is shot.
#![no_std]
#![no_main]
// #[classifier] expands to a `pub extern "C" fn` taking the kernel's raw
// `__sk_buff` pointer; the kernel, not a Rust caller, guarantees it.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use ebpf_common::{
    kernel::pod::{self, Frame},
    stats::direction,
};

/// The most a pull brings into direct reach: every header the parser walks
/// (two VLAN tags, IPv6 with extension headers, the transport's fixed part)
/// in all but pathological frames, without copying a GSO packet's payload.
const PULL_MAX: u32 = 512;

struct Skb<'a>(&'a TcContext);

impl Frame for Skb<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }

    #[inline(always)]
    fn pull(&self) -> bool {
        let (data, data_end) = self.bounds();
        let len = self.0.len();
        let in_reach = u32::try_from(data_end.saturating_sub(data)).unwrap_or(u32::MAX);
        in_reach < len.min(PULL_MAX) && self.0.pull_data(len.min(PULL_MAX)).is_ok()
    }
}

// `#[inline(always)]` goes to the body the macro wraps: left to itself,
// LLVM kept it a function of its own, and every packet paid a BPF-to-BPF
// call and return (dear where returns are mitigated, as on AMD's SRSO).
#[classifier]
#[inline(always)]
pub fn pal_tc_from_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, direction::EGRESS)
}

#[classifier]
#[inline(always)]
pub fn pal_tc_to_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, direction::INGRESS)
}

#[inline(always)]
fn verdict(ctx: &TcContext, dir: u32) -> i32 {
    // SAFETY: the context pointer of a classifier is the kernel's __sk_buff.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    if pod::enforce(&Skb(ctx), ifindex, u64::from(ctx.len()), dir) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
