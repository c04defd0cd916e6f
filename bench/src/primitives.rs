//! What one map operation costs on this machine, to know what a per-packet
//! budget can hold: hand-assembled TC programs that do nothing but one
//! lookup (a hit), each run beside the empty program like the real ones.
//! The datapath's figures are sums of these.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use ebpf_common::maps::{self, MapSpec, kind};

use crate::raw;

// The kernel's own numbers (uapi/linux/bpf.h), which no crate here exports.
const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const NO_PREALLOC: u32 = 1;

const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_KTIME_COARSE: i32 = 160;

fn map_create(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(kind) | (u64::from(key) << 32);
    attr[1] = u64::from(value) | (u64::from(entries) << 32);
    attr[2] = u64::from(flags);
    let fd = raw::bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = map.as_raw_fd() as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_ptr() as u64;
    raw::bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst) << 8)
        | (u64::from(src) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// `lookups` lookups of an all-zero key of `key_len` bytes in `map`.
fn lookup_program(map: BorrowedFd<'_>, key_len: usize, lookups: usize) -> io::Result<OwnedFd> {
    let frame = key_len.next_multiple_of(8) as i16;
    let mut p = Vec::new();
    for word in 0..frame / 4 {
        // *(u32 *)(r10 - frame + 4 * word) = 0
        p.push(insn(0x62, 10, 0, -frame + 4 * word, 0));
    }
    for _ in 0..lookups {
        p.push(insn(0x18, 1, 1, 0, map.as_raw_fd())); // r1 = map (pseudo fd)
        p.push(0);
        p.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
        p.push(insn(0x07, 2, 0, 0, -i32::from(frame))); // r2 -= frame
        p.push(insn(0x85, 0, 0, 0, HELPER_MAP_LOOKUP));
    }
    p.extend([insn(0xb7, 0, 0, 0, -1), insn(0x95, 0, 0, 0, 0)]);
    raw::load_program(raw::SCHED_CLS, &p)
}

fn helper_program(helper: i32) -> io::Result<OwnedFd> {
    let p = [
        insn(0x85, 0, 0, 0, helper),
        insn(0xb7, 0, 0, 0, -1),
        insn(0x95, 0, 0, 0, 0),
    ];
    raw::load_program(raw::SCHED_CLS, &p)
}

/// The maps a packet looks up, measured with the layout and size the
/// datapath declares for them.
const MAPS: &[&str] = &[
    maps::EPOCH,
    maps::TC_STATS,
    maps::ENDPOINTS,
    maps::POLICY_PORT,
    maps::COUNTERS,
    maps::CT4,
    maps::CT6,
    maps::IDENTITY,
];

fn kind_name(kind: u32) -> &'static str {
    match kind {
        kind::ARRAY => "array",
        kind::PERCPU_ARRAY => "per-CPU array",
        kind::HASH => "hash",
        kind::PERCPU_HASH => "per-CPU hash",
        kind::LRU_HASH => "LRU hash",
        kind::LPM_TRIE => "LPM trie",
        _ => "map",
    }
}

/// Prints ns per operation (the program's time less the empty program's).
pub fn report(frame: &[u8], empty: BorrowedFd<'_>) -> anyhow::Result<()> {
    let specs: Vec<&MapSpec> = MAPS
        .iter()
        .filter_map(|name| maps::SPECS.iter().find(|s| s.name == *name))
        .collect();
    println!();
    println!(
        "one map lookup (a hit), ns over the empty program, median of {} rounds:",
        crate::ROUNDS
    );
    for spec in specs {
        let flags = if spec.map_type == kind::LPM_TRIE {
            NO_PREALLOC
        } else {
            0
        };
        let map = map_create(
            spec.map_type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            flags,
        )?;
        let key_len = spec.key_size as usize;
        let mut key = vec![0u8; key_len];
        if spec.map_type == kind::LPM_TRIE {
            // The full prefix: a hit on the one entry.
            key[0] = (8 * (key_len - 4)) as u8;
        }
        let value = vec![0u8; spec.value_size as usize];
        map_update(map.as_fd(), &key, &value)?;
        let one = lookup_program(map.as_fd(), key_len, 1)?;
        let s = crate::paired(one.as_fd(), empty, frame)?;
        let floor = s.ns / s.ratio;
        let name = format!(
            "{}, {}-byte key ({})",
            kind_name(spec.map_type),
            spec.key_size,
            spec.name
        );
        println!("  {name:<44} {:>5.1} ns", s.ns - floor);
    }
    let coarse = helper_program(HELPER_KTIME_COARSE)?;
    let s = crate::paired(coarse.as_fd(), empty, frame)?;
    println!(
        "  {:<44} {:>5.1} ns",
        "bpf_ktime_get_coarse_ns",
        s.ns - s.ns / s.ratio
    );
    Ok(())
}
