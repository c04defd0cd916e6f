//! What the pinned maps hold, read for a scrape: the detailed per-CPU
//! counters summed over CPUs, and each map's fill level.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use ebpf_common::{
    datapath::{CounterCell, CounterKey},
    lsm::DecisionKey,
    maps::{COUNTER_CELLS, COUNTERS, LSM_DECIDE, SPECS, kind},
    stats::Counter,
};

use crate::{
    datapath::batch::{self, Batched},
    paths::PinDir,
};

/// One (endpoint, policy, reason, direction) cell, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detail {
    pub endpoint: u32,
    pub policy: u32,
    pub reason: u32,
    pub direction: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// Every (endpoint, policy, reason, direction) counted, from the counter
/// map and the counter cells together.
pub fn details(pins: &PinDir) -> Result<Vec<Detail>, MapError> {
    let mut sums: BTreeMap<(u32, u32, u32, u32), (u64, u64)> = BTreeMap::new();
    let mut add = |endpoint, policy, reason, direction, c: &Counter| {
        let e = sums
            .entry((endpoint, policy, reason, direction))
            .or_default();
        e.0 += c.events;
        e.1 += c.bytes;
    };
    for (key, per_cpu) in counter_entries(pins)? {
        for c in &per_cpu {
            add(
                key.endpoint,
                key.policy,
                u32::from(key.reason),
                u32::from(key.direction),
                c,
            );
        }
    }
    for cell in counter_cells(pins)? {
        let k = cell.key;
        add(
            k.endpoint,
            k.policy,
            u32::from(k.reason),
            u32::from(k.direction),
            &cell.counter,
        );
    }
    Ok(sums
        .into_iter()
        .filter(|(_, (packets, _))| *packets > 0)
        .map(
            |((endpoint, policy, reason, direction), (packets, bytes))| Detail {
                endpoint,
                policy,
                reason,
                direction,
                packets,
                bytes,
            },
        )
        .collect())
}

/// The claimed counter cells of every CPU.
fn counter_cells(pins: &PinDir) -> Result<Vec<CounterCell>, MapError> {
    let data = MapData::from_pin(pins.map(COUNTER_CELLS))?;
    if let Ok(Batched::Read(all)) = batch::read_all_per_cpu::<u32, CounterCell>(&data) {
        return Ok(all
            .into_iter()
            .flat_map(|(_, per_cpu)| per_cpu)
            .filter(|c| c.claimed != 0)
            .collect());
    }
    // No batch lookups here (or the batch failed): a lookup a cell.
    let cells: PerCpuArray<MapData, CounterCell> =
        PerCpuArray::try_from(Map::from_map_data(data)?)?;
    let mut out = Vec::new();
    for index in 0..cells.len() {
        out.extend(cells.get(&index, 0)?.iter().filter(|c| c.claimed != 0));
    }
    Ok(out)
}

/// The counter map's entries with their per-CPU values.
fn counter_entries(pins: &PinDir) -> Result<Vec<(CounterKey, Vec<Counter>)>, MapError> {
    per_cpu_entries(MapData::from_pin(pins.map(COUNTERS))?)
}

/// The LSM decision counters, summed over CPUs.
pub fn lsm_decisions(pins: &PinDir) -> Result<Vec<(DecisionKey, u64)>, MapError> {
    let entries: Vec<(DecisionKey, Vec<u64>)> =
        per_cpu_entries(MapData::from_pin(pins.map(LSM_DECIDE))?)?;
    Ok(entries
        .into_iter()
        .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
        .collect())
}

/// A per-CPU hash map's entries: in batches where the kernel reads them
/// so, else key by key.
fn per_cpu_entries<K: Pod, V: Pod>(data: MapData) -> Result<Vec<(K, Vec<V>)>, MapError> {
    if let Ok(Batched::Read(all)) = batch::read_all_per_cpu::<K, V>(&data) {
        return Ok(all);
    }
    let map: PerCpuHashMap<MapData, K, V> = PerCpuHashMap::try_from(Map::from_map_data(data)?)?;
    let mut out = Vec::new();
    for item in map.iter() {
        // An entry removed between listing and reading is not an error.
        let Ok((key, per_cpu)) = item else { continue };
        out.push((key, per_cpu.iter().copied().collect()));
    }
    Ok(out)
}

/// Entries in use and capacity of a pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `bpf_attr` for BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// The entries `map` holds: in batches where the kernel reads this map
/// type so, else key by key.
fn count(map: &MapData, map_type: u32, info: &aya::maps::MapInfo) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    let key_len = info.key_size() as usize;
    // Only the types whose value layout in a batch is known here: a wrong
    // length would let the kernel write past the buffer.
    let per_cpu = match map_type {
        kind::HASH | kind::LRU_HASH | kind::LPM_TRIE => false,
        kind::PERCPU_HASH => true,
        _ => return count_keys(fd, key_len),
    };
    match batch::count(fd, key_len, info.value_size() as usize, per_cpu) {
        Ok(Batched::Read(n)) => n,
        Ok(Batched::Unsupported) | Err(_) => count_keys(fd, key_len),
    }
}

/// Counts keys with BPF_MAP_GET_NEXT_KEY: the kernel keeps no count of a
/// hash or trie map's entries that user space could read.
fn count_keys(fd: i32, key_size: usize) -> u64 {
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut first = true;
    let mut n = 0u64;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: the attr points at buffers of the map's key size, which
        // outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if r != 0 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// Fill level of every pinned map Palisade owns (arrays are always full;
/// the ring buffer's capacity is in bytes and has no entries to count).
pub fn pressure(pins: &PinDir) -> Vec<Pressure> {
    let mut out = Vec::new();
    for spec in SPECS {
        if spec.map_type == kind::RINGBUF {
            continue;
        }
        let Ok(map) = MapData::from_pin(pins.map(spec.name)) else {
            continue;
        };
        let Ok(info) = map.info() else { continue };
        let capacity = u64::from(info.max_entries());
        // Every index of an array exists: a count would read them all
        // (values included) to find the capacity again.
        let entries = if matches!(spec.map_type, kind::ARRAY | kind::PERCPU_ARRAY) {
            capacity
        } else {
            count(&map, spec.map_type, &info)
        };
        out.push(Pressure {
            name: spec.name,
            entries,
            capacity,
        });
    }
    out
}

/// Summed (packets, bytes) by a key of the caller's choosing.
pub fn sum_by<K: Ord>(
    details: &[Detail],
    key: impl Fn(&Detail) -> Option<K>,
) -> BTreeMap<K, (u64, u64)> {
    let mut out = BTreeMap::new();
    for d in details {
        if let Some(k) = key(d) {
            let e: &mut (u64, u64) = out.entry(k).or_default();
            e.0 += d.packets;
            e.1 += d.bytes;
        }
    }
    out
}
