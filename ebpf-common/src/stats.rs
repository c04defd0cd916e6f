//! Per-CPU counters shared by every program.

/// Which side of an endpoint a verdict applies to.
pub mod direction {
    /// Traffic entering the node or pod (XDP on an uplink, TC towards a pod).
    pub const INGRESS: u32 = 0;
    /// Traffic leaving a pod (TC on the receive side of its host veth).
    pub const EGRESS: u32 = 1;
    /// Not a packet: a process or file decision (LSM).
    pub const LOCAL: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Index of a (direction, reason) cell in a stats array.
pub const fn stat_index(direction: u32, reason: u32) -> u32 {
    direction * crate::reason::COUNT + reason
}

/// Cells in each program family's stats array. Reasons are append-only, so
/// growing this changes max_entries, which the ABI check catches.
pub const STATS_ENTRIES: u32 = direction::COUNT * crate::reason::COUNT;

/// One counter cell. Packets and bytes for the datapath; the LSM side counts
/// decisions in `events` and leaves `bytes` at zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub events: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
// SAFETY: `Counter` is `#[repr(C)]`, has no padding and only integer fields.
unsafe impl aya::Pod for Counter {}
