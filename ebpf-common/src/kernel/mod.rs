//! Helpers for the eBPF programs; compiled only with the `kernel` feature.

pub mod parse;
#[cfg(feature = "pod-datapath")]
pub mod pod;

use aya_ebpf::maps::PerCpuArray;

use core::ptr::write_volatile;

use crate::{
    datapath::{CounterCell, CounterKey, counter_cell},
    stats::{Counter, stat_index},
};

/// Stores `value` as one store that LLVM may not merge with its
/// neighbours: merged zeros become a call to `memset` (the BPF backend
/// does not expand it), a byte loop the verifier walks on every way in.
#[inline(always)]
pub fn put<T>(field: &mut T, value: T) {
    // SAFETY: a valid, aligned place.
    unsafe { core::ptr::write_volatile(field, value) }
}

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

/// [`count`] for programs that may be preempted midway (BPF LSM, where
/// the kernel preempts kernel code): a run preempted between its load and
/// its store would write back over another run's count on the CPU, so the
/// adds are atomic (a locked add; the datapath's softirq runs are never
/// preempted and keep the plain one).
#[inline(always)]
pub fn count_atomic(map: &PerCpuArray<Counter>, direction: u32, reason: u32, bytes: u64) {
    if let Some(cell) = map.get_ptr_mut(stat_index(direction, reason)) {
        // SAFETY: fields of a per-CPU array value, valid for this program
        // run and 8-byte aligned (the map's values are).
        unsafe {
            add(core::ptr::addr_of_mut!((*cell).events), 1);
            if bytes != 0 {
                add(core::ptr::addr_of_mut!((*cell).bytes), bytes);
            }
        }
    }
}

/// Adds `n` to the counter at `at` atomically.
///
/// # Safety
/// `at` is valid for the run and 8-byte aligned.
#[inline(always)]
pub unsafe fn add(at: *mut u64, n: u64) {
    // The BPF target has no compare-and-swap, so `AtomicU64` offers no
    // read-modify-write; the intrinsic is BPF's atomic add. (This module
    // is built only for the BPF target, by the eBPF crates.)
    // SAFETY: as the caller promises.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            at, n,
        );
    }
}

/// `no_std` needs a panic handler. A reachable panic would be this endless
/// loop, which the verifier refuses, so no loaded program can get here.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Adds one event to the detailed (endpoint, policy, reason, direction)
/// counter: in its cell if the cell is its own (or free) on this CPU, else
/// in the counter map. When that is full too, the event is still counted in
/// the per-direction `stats` array, under [`reason::COUNTER_MAP_FULL`] as
/// well, so a full map shows up instead of hiding events.
#[inline(always)]
pub fn count_detail(
    cells: &PerCpuArray<CounterCell>,
    counters: &aya_ebpf::maps::PerCpuHashMap<CounterKey, Counter>,
    stats: &PerCpuArray<Counter>,
    key: &CounterKey,
    bytes: u64,
) {
    count_detail_at(cells, counters, stats, key, counter_cell(key), bytes);
}

/// [`count_detail`] with the key's cell already known.
#[inline(always)]
pub fn count_detail_at(
    cells: &PerCpuArray<CounterCell>,
    counters: &aya_ebpf::maps::PerCpuHashMap<CounterKey, Counter>,
    stats: &PerCpuArray<Counter>,
    key: &CounterKey,
    cell: u32,
    bytes: u64,
) {
    if let Some(cell) = cells.get_ptr_mut(cell) {
        // SAFETY: a per-CPU array value, valid for this run and written
        // only by this CPU.
        let cell = unsafe { &mut *cell };
        if cell.claimed == 0 {
            // Readers skip unclaimed cells, so the key goes in first:
            // volatile writes keep their order.
            // SAFETY: pointers to fields of the cell above.
            unsafe {
                write_volatile(&mut cell.key, *key);
                write_volatile(&mut cell.claimed, 1);
            }
        }
        if cell.key == *key {
            cell.counter.events += 1;
            cell.counter.bytes += bytes;
            return;
        }
    }
    let first = Counter { events: 1, bytes };
    let cell = match counters.get_ptr_mut(key) {
        Some(cell) => cell,
        None => match counters.insert(key, &first, u64::from(aya_ebpf::bindings::BPF_NOEXIST)) {
            Ok(()) => return,
            // Another CPU may have created it in between (EEXIST): use theirs.
            Err(_) => match counters.get_ptr_mut(key) {
                Some(cell) => cell,
                None => {
                    count(
                        stats,
                        u32::from(key.direction),
                        crate::reason::COUNTER_MAP_FULL,
                        bytes,
                    );
                    return;
                }
            },
        },
    };
    // SAFETY: a per-CPU hash value, valid for this run, written only by this CPU.
    unsafe {
        (*cell).events += 1;
        (*cell).bytes += bytes;
    }
}
