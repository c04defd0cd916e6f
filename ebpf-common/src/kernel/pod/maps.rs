//! The maps of the TC object. Names and sizes come from ebpf-common; the
//! loader pins them (sharing PAL_COUNTERS with the XDP object) and may
//! resize them.

use crate::{
    datapath::{
        ADDR_LEN, COUNTER_CELLS, CounterCell, CounterKey, Ct4Key, Ct6Key, CtValue, ENDPOINT_SLOTS,
        EndpointSlot, EndpointValue, FragKey, FragValue, IdentityValue, OPENED_SLOTS, PolicyKey,
        PolicyValue, SOURCE_PREFIX_FULL, SourcePrefixKey, endpoint_slot, opened_index,
    },
    kernel::parse::{Packet, mapped_words},
    maps::size,
    stats::{Counter, STATS_ENTRIES},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};

#[map(name = "PAL_TC_STATS")]
pub static PAL_TC_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "PAL_COUNTERS")]
pub static PAL_COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::with_max_entries(size::COUNTERS, 0);

#[map(name = "PAL_CNT_CELLS")]
pub static PAL_CNT_CELLS: PerCpuArray<CounterCell> =
    PerCpuArray::with_max_entries(COUNTER_CELLS, 0);

#[map(name = "PAL_ENDPOINTS")]
pub static PAL_ENDPOINTS: HashMap<u32, EndpointValue> =
    HashMap::with_max_entries(size::ENDPOINTS, 0);

#[map(name = "PAL_EP_SLOTS")]
pub static PAL_EP_SLOTS: Array<EndpointSlot> = Array::with_max_entries(ENDPOINT_SLOTS, 0);

#[map(name = "PAL_EP_OPENED")]
pub static PAL_EP_OPENED: Array<u32> = Array::with_max_entries(OPENED_SLOTS * 2, 0);

/// Whether `endpoint` may have tracked a flow opened in `dir`.
#[inline(always)]
pub fn opened(endpoint: u32, dir: u32) -> bool {
    // An entry that cannot be read answers yes: the caller then asks
    // conntrack, as without the shortcut.
    PAL_EP_OPENED
        .get(opened_index(endpoint, dir))
        .is_none_or(|&v| v != 0)
}

/// Records that `endpoint` tracks a flow opened in `dir`. A plain store
/// of one value, not a read-modify-write, so CPUs setting it at once lose
/// nothing; written only when not yet set, so the line is not dirtied on
/// every new flow.
#[inline(always)]
pub fn set_opened(endpoint: u32, dir: u32) {
    if let Some(p) = PAL_EP_OPENED.get_ptr_mut(opened_index(endpoint, dir)) {
        // SAFETY: a pointer into an array value, valid for this run; a
        // racing store writes the same value.
        unsafe {
            if core::ptr::read_volatile(p) == 0 {
                core::ptr::write_volatile(p, 1);
            }
        }
    }
}

/// The endpoint on `ifindex`: from its slot of the index when it holds
/// that interface (an inlined array read), else from `PAL_ENDPOINTS`.
///
/// The slot is read in place, not copied out: the copy's arrays were
/// copied byte by byte, about 150 instructions on every packet leaving a
/// pod. The price: a packet reads the slot's live copy for its whole run,
/// where the copy read it for 40 bytes' worth of loads. The syncer writes
/// the copy that is not live and then flips, so the one a packet found is
/// written again only by the slot's second write after the packet found
/// it (another update of the endpoint, or its removal and another
/// interface's endpoint taking the slot), and a packet could then mix
/// fields of two endpoints only if the syncer wrote its slot twice within
/// that packet's run, a few hundred nanoseconds in softirq.
///
/// A hash value is copied out at once, as before: a preallocated hash map
/// hands an updated key's old element to its next update, of any key, at
/// once. The copy lives in a per-CPU map of its own (`PAL_TC_EP_COPY`),
/// valid for this run: the next run on this CPU writes it again.
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<&'static EndpointValue> {
    if let Some(slot) = PAL_EP_SLOTS.get(endpoint_slot(ifindex)) {
        let live = slot.current();
        if live.ifindex == ifindex {
            return Some(&live.value);
        }
    }
    // SAFETY: the hash value is valid for this run and copied out at once.
    let found = unsafe { PAL_ENDPOINTS.get(&ifindex) }?;
    // Asked only for an endpoint: an interface that is none pays one
    // lookup.
    let copy = super::scratch::PAL_TC_EP_COPY.get_ptr_mut(0)?;
    // SAFETY: `found` is copied before any map is written (the lookup of
    // `copy` between writes nothing); `copy` is
    // this CPU's slot of a map that only this function writes, once per
    // run (`Here` reads the endpoint once), and programs do not nest on a
    // CPU.
    unsafe {
        copy_endpoint(found, copy);
        Some(&*copy)
    }
}

/// Copies an endpoint word by word: copied as a struct, it was a call to
/// `memmove`, a byte loop that the loader refuses (`kernel::put`).
///
/// # Safety
/// Both valid, `to` for writes, neither overlapping the other.
#[inline(always)]
unsafe fn copy_endpoint(from: *const EndpointValue, to: *mut EndpointValue) {
    const WORDS: usize = core::mem::size_of::<EndpointValue>() / 4;
    const _: () = assert!(
        core::mem::size_of::<EndpointValue>().is_multiple_of(4)
            && core::mem::align_of::<EndpointValue>() >= 4
    );
    let (from, to) = (from.cast::<u32>(), to.cast::<u32>());
    let mut i = 0;
    while i < WORDS {
        // SAFETY: word `i` of each, as the caller promises.
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
        i += 1;
    }
}

#[map(name = "PAL_IDENTITY")]
pub static PAL_IDENTITY: LpmTrie<[u8; ADDR_LEN], IdentityValue> =
    LpmTrie::with_max_entries(size::IDENTITY, 0);

#[map(name = "PAL_IDENT_HOST")]
pub static PAL_IDENT_HOST: HashMap<[u8; ADDR_LEN], IdentityValue> =
    HashMap::with_max_entries(size::IDENTITY_HOST, 0);

#[map(name = "PAL_POLICY_PORT")]
pub static PAL_POLICY_PORT: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(size::POLICY_PORT, 0);

#[map(name = "PAL_SRC_PREFIX")]
pub static PAL_SRC_PREFIX: LpmTrie<SourcePrefixKey, u32> =
    LpmTrie::with_max_entries(size::SOURCE_PREFIXES, 0);

#[map(name = "PAL_NODE_LL")]
pub static PAL_NODE_LL: HashMap<[u8; ADDR_LEN], u32> =
    HashMap::with_max_entries(size::NODE_LINK_LOCAL, 0);

/// Whether `a` is one of the node's addresses that no pod may claim: its
/// IPv6 link-local ones, and its bridges' IPv4 ones (IPv4-mapped), each
/// the router of the pods on a bridge.
#[inline(always)]
pub fn node_address(a: &[u8; ADDR_LEN]) -> bool {
    // SAFETY: a hash lookup; the value is not kept.
    unsafe { PAL_NODE_LL.get(a) }.is_some()
}

#[map(name = "PAL_POLICY")]
pub static PAL_POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(size::POLICY, 0);

#[map(name = "PAL_CT4")]
pub static PAL_CT4: LruHashMap<Ct4Key, CtValue> = LruHashMap::with_max_entries(size::CT4, 0);

#[map(name = "PAL_CT6")]
pub static PAL_CT6: LruHashMap<Ct6Key, CtValue> = LruHashMap::with_max_entries(size::CT6, 0);

#[map(name = "PAL_EPOCH")]
pub static PAL_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The current epoch (see `maps::EPOCH`): an inlined array read.
#[inline(always)]
pub fn epoch() -> u32 {
    PAL_EPOCH.get(0).copied().unwrap_or(0)
}

#[map(name = "PAL_FRAGS")]
pub static PAL_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(size::FRAGS, 0);

/// A `PAL_SRC_PREFIX` key as the lookup builds it: the layout of
/// `Key<SourcePrefixKey>` (prefix length, endpoint, family, address), with
/// the address as words (a byte array's copy or zeroing would be a call
/// to `memcpy` or `memset`).
#[repr(C)]
struct SourceLookup {
    prefix_len: u32,
    endpoint: u32,
    family: u32,
    addr: [u32; 4],
}

const _: () =
    assert!(core::mem::size_of::<SourceLookup>() == core::mem::size_of::<Key<SourcePrefixKey>>());

/// Whether `p`'s source lies in a prefix that `endpoint`'s pod may send
/// from besides the address its endpoint holds. Asked only of a packet
/// whose source is not that address, from a pod that has such prefixes
/// (`endpoint_flags::SOURCE_PREFIXES`).
#[inline(always)]
pub fn source_prefix_allows(endpoint: u32, p: &Packet) -> bool {
    if p.v6 {
        source_prefix_holds6(endpoint, &p.src)
    } else {
        !node_address4(p.src4)
            && source_prefix_holds(endpoint, 4, [u32::from_ne_bytes(p.src4), 0, 0, 0])
    }
}

/// [`node_address`] of an IPv4 address, by its IPv4-mapped form.
#[inline(always)]
fn node_address4(a: [u8; 4]) -> bool {
    let words = mapped_words(a);
    // SAFETY: two u64s are 16 bytes, any of which are a valid u8.
    node_address(unsafe { &*words.as_ptr().cast::<[u8; ADDR_LEN]>() })
}

/// Whether the IPv6 address `a` lies in a prefix of `endpoint`'s pod, as
/// [`source_prefix_allows`] asks of a source. No prefix holds one of the
/// node's addresses ([`node_address`]: a pod's router, on a bridge),
/// though a pod's listed prefixes may cover them (`fe80::/10`,
/// `0.0.0.0/0`).
#[inline(always)]
pub fn source_prefix_holds6(endpoint: u32, a: &[u8; ADDR_LEN]) -> bool {
    if a[0] == 0xfe && a[1] & 0xc0 == 0x80 && node_address(a) {
        return false;
    }
    // SAFETY: every address this is given (`Packet::src`, `Packet::target`)
    // lies at an offset of `Packet` (`repr(C, align(8))`) that is a multiple
    // of 8, so 4-byte aligned; any bytes are valid u32s.
    source_prefix_holds(endpoint, 6, unsafe {
        core::ptr::read(a.as_ptr().cast::<[u32; 4]>())
    })
}

#[inline(always)]
fn source_prefix_holds(endpoint: u32, family: u32, addr: [u32; 4]) -> bool {
    let key = SourceLookup {
        prefix_len: SOURCE_PREFIX_FULL,
        endpoint,
        family,
        addr,
    };
    // SAFETY: `SourceLookup` is `Key<SourcePrefixKey>`'s layout (both
    // `repr(C)`, fields of the same sizes in the same order, the same
    // size: asserted above), and the map reads the key only during the
    // call.
    let key = unsafe { &*(&key as *const SourceLookup).cast::<Key<SourcePrefixKey>>() };
    PAL_SRC_PREFIX.get(key).is_some()
}
