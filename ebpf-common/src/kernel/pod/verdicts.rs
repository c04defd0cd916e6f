//! A per-CPU cache of new flows' verdicts.
//!
//! A new flow's verdict depends on the endpoint (its interface), the
//! direction, the peer's address, the protocol and the destination port,
//! and on the maps, which change only under a new epoch (every policy flip,
//! identity change and endpoint removal bumps it). So a verdict computed
//! for one flow holds for every later flow with the same five under the
//! same epoch: a denied flood from one peer, or a client opening one
//! connection after another, is then judged without the endpoint, identity
//! and policy lookups. Conntrack is asked first (a packet that policy
//! denies may be a reply of a flow opened from the other side), and only a
//! packet it does not know comes here; except in a denied flood, where a
//! cached drop is tried first at an endpoint that never tracked a flow
//! opened the other way (`super::cached_drop`).
//!
//! Direct-mapped, one slot per hash of the key, in the per-CPU scratch
//! (already at hand: no map lookup, no per-CPU pointer to follow), no
//! locks, and a slot another key takes is simply lost. It is separate from
//! conntrack, so no denied flood can evict a tracked flow, and, like the
//! scratch, it is not pinned: a new program starts with an empty one.

use crate::datapath::{ADDR_LEN, direction};

use super::{policy::Verdict, scratch::Scratch};

/// Slots per CPU, a power of two (the scratch is one per-CPU value, and
/// the kernel caps those at 32 KiB).
pub const SLOTS: u32 = 512;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();

/// What a new flow's verdict depends on, as three words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct VerdictKey([u64; 3]);

/// Word by word: the derived comparison of the array is a call to
/// `memcmp` (a BPF-to-BPF call on every packet of a denied flood).
impl PartialEq for VerdictKey {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        let ([a, b, c], [x, y, z]) = (self.0, other.0);
        (a ^ x) | (b ^ y) | (c ^ z) == 0
    }
}

impl Eq for VerdictKey {}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct VerdictSlot {
    key: VerdictKey,
    /// The epoch the verdict was computed under.
    epoch: u32,
    endpoint: u32,
    policy: u32,
    reason: u16,
    pass: u8,
    /// 0 for a slot nothing was ever stored in.
    filled: u8,
}

const _: () = assert!(core::mem::size_of::<VerdictSlot>() == 40);
const _: () = assert!(SLOTS.is_power_of_two());

/// Two words of a 16-byte address.
#[inline(always)]
fn words(a: &[u8; ADDR_LEN]) -> [u64; 2] {
    // SAFETY: every address this is given lies at an 8-byte aligned offset
    // of `Packet` (`repr(C, align(8))`, `src` at 0 and `dst` at 16), and
    // any bytes are valid u64s.
    unsafe { core::ptr::read(a.as_ptr().cast::<[u64; 2]>()) }
}

/// The key of the packet in `s` (its addresses in their 16-byte forms)
/// at `ifindex` in `dir`, and its slot's index on this CPU.
#[inline(always)]
pub fn slot(s: &Scratch, ifindex: u32, dir: u32) -> (VerdictKey, usize) {
    let peer = if dir == direction::EGRESS {
        &s.pkt.dst
    } else {
        &s.pkt.src
    };
    let [a, b] = words(peer);
    let c = u64::from(ifindex)
        | u64::from(s.pkt.dport) << 32
        | u64::from(s.pkt.protocol) << 48
        | u64::from(dir as u8) << 56;
    let h = (a ^ b.rotate_left(23) ^ c.rotate_left(47)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let index = (h >> (64 - SLOT_BITS)) as usize;
    (VerdictKey([a, b, c]), index)
}

/// The verdict the slot holds for `key` under `epoch`, and its endpoint.
#[inline(always)]
pub fn cached(slot: &VerdictSlot, key: &VerdictKey, epoch: u32) -> Option<(Verdict, u32)> {
    if slot.filled == 0 || slot.epoch != epoch || slot.key != *key {
        return None;
    }
    let verdict = Verdict {
        pass: slot.pass != 0,
        reason: u32::from(slot.reason),
        policy: slot.policy,
    };
    Some((verdict, slot.endpoint))
}

/// Keeps `verdict`, computed under `epoch` for `endpoint`, for `key`.
#[inline(always)]
pub fn store(slot: &mut VerdictSlot, key: VerdictKey, epoch: u32, endpoint: u32, v: &Verdict) {
    *slot = VerdictSlot {
        key,
        epoch,
        endpoint,
        policy: v.policy,
        reason: v.reason as u16,
        pass: u8::from(v.pass),
        filled: 1,
    };
}
