//! Per-CPU working memory. The eBPF stack is 512 bytes; a parsed packet and
//! the keys built from it do not fit beside the call frames, so they live
//! in a one-slot per-CPU array instead. Not pinned: apart from the event
//! rate limiter, the cache of new flows' verdicts and the denied-flood
//! hint, it holds nothing between runs.

use crate::{
    datapath::{ADDR_LEN, Ct4Key, Ct6Key, CtValue, EndpointValue, FragKey, PolicyKey},
    kernel::parse::Packet,
};
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};

#[repr(C)]
pub struct Lookup {
    pub addr: Key<[u8; ADDR_LEN]>,
    /// The key for the exact-match map (aligned: the trie key is packed).
    pub exact: PolicyKey,
    pub policy: Key<PolicyKey>,
}

#[repr(C)]
pub struct Scratch {
    /// The one field that does persist between runs: the event rate limit.
    pub limiter: super::events::TokenBucket,
    pub pkt: Packet,
    pub ct4: Ct4Key,
    pub ct6: Ct6Key,
    /// 1 if the flow of the key built has an entry, whatever its end of
    /// it holds (`conntrack::track`), as the packet's lookup found. Kept
    /// here, not passed along: the verifier does not know a map value's
    /// contents, so it walks what follows once, not once for each answer.
    pub ct_seen: u32,
    /// A new flow's entry, as it is built (`conntrack::track`).
    pub ct_new: CtValue,
    pub frag: FragKey,
    pub lookup: Lookup,
    /// Persists too: the interface and direction (`super::hint`) whose
    /// last packet on this CPU was dropped by a cached verdict; 0 for none.
    pub deny_hint: u64,
    /// Persists too: new flows' verdicts (`super::verdicts`).
    pub verdicts: [super::verdicts::VerdictSlot; super::verdicts::SLOTS as usize],
}

#[map(name = "PAL_TC_SCRATCH")]
pub static PAL_TC_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The packet's endpoint where it came from `PAL_ENDPOINTS` rather than
/// its slot (`super::maps::endpoint`): a map of its own, so that the
/// endpoint a packet holds is never part of the scratch it hands about as
/// `&mut`.
#[map(name = "PAL_TC_EP_COPY")]
pub static PAL_TC_EP_COPY: PerCpuArray<EndpointValue> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    // SAFETY: slot 0 of a per-CPU array, used by one program run at a time
    // on this CPU (programs are not preempted mid-run on the same CPU).
    PAL_TC_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

// The kernel refuses per-CPU values above 32 KiB (PCPU_MIN_UNIT_SIZE).
const _: () = assert!(core::mem::size_of::<Scratch>() <= 32 * 1024);
