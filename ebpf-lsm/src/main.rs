//! BPF-LSM programs for process and file rules.
//!
//! `pal_lsm_exec` runs on every exec (`bprm_check_security`). The per-pod
//! rules keyed by cgroup id arrive with the LSM issue; until then it allows
//! and counts, which is what lets a test prove the hook really fires (an LSM
//! program attaches without error even where BPF LSM is not active).
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{lsm, map},
    maps::PerCpuArray,
    programs::LsmContext,
};
use ebpf_common::{
    kernel::count,
    reason,
    stats::{Counter, STATS_ENTRIES, direction},
};

#[map(name = "PAL_LSM_STATS")]
static PAL_LSM_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[lsm(hook = "bprm_check_security")]
pub fn pal_lsm_exec(_ctx: LsmContext) -> i32 {
    count(&PAL_LSM_STATS, direction::LOCAL, reason::PASS_UNENFORCED, 0);
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
