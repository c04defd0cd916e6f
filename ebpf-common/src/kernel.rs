//! Helpers for the eBPF programs; compiled only with the `kernel` feature.

use aya_ebpf::maps::PerCpuArray;

use crate::stats::{Counter, stat_index};

/// Adds one event of `bytes` to the (direction, reason) cell. Per-CPU cells
/// need no atomics: only this CPU writes this copy.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, direction: u32, reason: u32, bytes: u64) {
    if let Some(cell) = map.get_ptr_mut(stat_index(direction, reason)) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU
        // array, valid for this program run and written only by this CPU.
        unsafe {
            (*cell).events += 1;
            (*cell).bytes += bytes;
        }
    }
}

/// `no_std` needs a panic handler. A reachable panic would be this endless
/// loop, which the verifier refuses, so no loaded program can get here.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
