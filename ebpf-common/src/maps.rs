//! Map names and the layouts the daemon expects of them.
//!
//! Names fit in 15 bytes (the kernel truncates longer ones). The daemon
//! checks every pinned map against [`SPECS`] before reusing it, because aya
//! reuses a pinned map without looking at its layout.

use crate::stats::{Counter, STATS_ENTRIES};

pub const XDP_STATS: &str = "PAL_XDP_STATS";
pub const TC_STATS: &str = "PAL_TC_STATS";
pub const LSM_STATS: &str = "PAL_LSM_STATS";

/// Kernel map type numbers (`enum bpf_map_type`), the subset we use.
pub mod kind {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
}

/// What a pinned map must look like to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn stats(name: &'static str) -> MapSpec {
    MapSpec {
        name,
        map_type: kind::PERCPU_ARRAY,
        key_size: core::mem::size_of::<u32>() as u32,
        value_size: core::mem::size_of::<Counter>() as u32,
        max_entries: STATS_ENTRIES,
    }
}

/// Every map the daemon pins, with its expected layout.
pub const SPECS: &[MapSpec] = &[stats(XDP_STATS), stats(TC_STATS), stats(LSM_STATS)];

const fn fits_in_kernel_name(name: &str) -> bool {
    name.len() <= 15
}

const _: () = {
    let mut i = 0;
    while i < SPECS.len() {
        assert!(fits_in_kernel_name(SPECS[i].name));
        i += 1;
    }
};

/// Program names, also 15 bytes at most: they name the pinned programs.
pub mod programs {
    pub const XDP_PREFILTER: &str = "pal_xdp_pre";
    pub const TC_FROM_POD: &str = "pal_tc_from_pod";
    pub const TC_TO_POD: &str = "pal_tc_to_pod";
    pub const LSM_EXEC: &str = "pal_lsm_exec";
}
