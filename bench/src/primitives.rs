//! What one map operation costs on this machine, priced in the same run as
//! the datapath's cases so that each case can be set against its floor (the
//! empty program plus the operations it cannot avoid, `main.rs`'s
//! `FLOORS`): hand-assembled TC programs that do nothing but one operation,
//! each run beside the empty program like the real ones. `--primitives`
//! also prints the price of a lookup in each map a packet may touch.

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
const HELPER_MAP_UPDATE: i32 = 2;
const HELPER_KTIME_COARSE: i32 = 160;

/// `struct __sk_buff`'s `data` and `data_end`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

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

/// `r1 = map` (a pseudo map fd: two instruction slots).
fn load_map(map: BorrowedFd<'_>) -> [u64; 2] {
    [insn(0x18, 1, 1, 0, map.as_raw_fd()), 0]
}

/// Zeroes `len` bytes of stack below r10 - `below`, in words.
fn zero_stack(p: &mut Vec<u64>, below: i16, len: i16) {
    for word in 0..len / 4 {
        // *(u32 *)(r10 - below - len + 4 * word) = 0
        p.push(insn(0x62, 10, 0, -below - len + 4 * word, 0));
    }
}

const EXIT: [u64; 2] = [0xb7 | ((-1i32 as u32 as u64) << 32), 0x95];

/// One lookup of `key` in `map`; with `increment`, adds one to the first
/// word of what it finds, as a counter.
fn lookup_program(map: BorrowedFd<'_>, key: &[u8], increment: bool) -> io::Result<OwnedFd> {
    let frame = key.len().next_multiple_of(8) as i16;
    let mut p = Vec::new();
    zero_stack(&mut p, 0, frame);
    for (i, word) in key.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..word.len()].copy_from_slice(word);
        let imm = i32::from_ne_bytes(w);
        if imm != 0 {
            // *(u32 *)(r10 - frame + 4 * i) = imm
            p.push(insn(0x62, 10, 0, -frame + 4 * i as i16, imm));
        }
    }
    p.extend(load_map(map));
    p.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10
    p.push(insn(0x07, 2, 0, 0, -i32::from(frame))); // r2 -= frame
    p.push(insn(0x85, 0, 0, 0, HELPER_MAP_LOOKUP));
    if increment {
        p.push(insn(0x15, 0, 0, 3, 0)); // if r0 == 0 goto +3
        p.push(insn(0x79, 1, 0, 0, 0)); // r1 = *(u64 *)(r0 + 0)
        p.push(insn(0x07, 1, 0, 0, 1)); // r1 += 1
        p.push(insn(0x7b, 0, 1, 0, 0)); // *(u64 *)(r0 + 0) = r1
    }
    p.extend(EXIT);
    raw::load_program(raw::SCHED_CLS, &p)
}

/// Inserts the frame's first `key_len` bytes (a multiple of 8) as a key,
/// with an all-zero value of `value_len` bytes: a new entry per frame.
fn insert_program(map: BorrowedFd<'_>, key_len: i16, value_len: i16) -> io::Result<OwnedFd> {
    let mut p = vec![
        insn(0x61, 2, 1, SKB_DATA, 0),     // r2 = skb->data
        insn(0x61, 3, 1, SKB_DATA_END, 0), // r3 = skb->data_end
        insn(0xbf, 4, 2, 0, 0),            // r4 = r2
        insn(0x07, 4, 0, 0, i32::from(key_len)),
    ];
    let copy = key_len / 8;
    // if r4 > r3 goto exit (past the copy, the value and the update)
    let vframe = (value_len + 7) / 8 * 8;
    let value_words = vframe / 4;
    // the copy, the zeroed value, r1 (two slots), r2 and r3 (two each), r4, the call
    let skip = 2 * copy + value_words + 2 + 2 + 2 + 1 + 1;
    p.push(insn(0x2d, 4, 3, skip, 0));
    for w in 0..copy {
        p.push(insn(0x79, 5, 2, 8 * w, 0)); // r5 = *(u64 *)(r2 + 8w)
        p.push(insn(0x7b, 10, 5, -key_len + 8 * w, 0)); // *(u64 *)(r10 - key + 8w) = r5
    }
    zero_stack(&mut p, key_len, vframe);
    p.extend(load_map(map));
    p.push(insn(0xbf, 2, 10, 0, 0)); // r2 = r10 - key_len
    p.push(insn(0x07, 2, 0, 0, -i32::from(key_len)));
    p.push(insn(0xbf, 3, 10, 0, 0)); // r3 = r10 - key_len - value
    p.push(insn(0x07, 3, 0, 0, -i32::from(key_len + vframe)));
    p.push(insn(0xb7, 4, 0, 0, 0)); // r4 = 0 (BPF_ANY)
    p.push(insn(0x85, 0, 0, 0, HELPER_MAP_UPDATE));
    p.extend(EXIT);
    raw::load_program(raw::SCHED_CLS, &p)
}

fn helper_program(helper: i32) -> io::Result<OwnedFd> {
    let mut p = vec![insn(0x85, 0, 0, 0, helper)];
    p.extend(EXIT);
    raw::load_program(raw::SCHED_CLS, &p)
}

/// A map with the layout and size the datapath declares for `name`.
fn datapath_map(name: &str) -> anyhow::Result<(OwnedFd, &'static MapSpec)> {
    let spec = maps::SPECS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow::anyhow!("no map {name}"))?;
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
    Ok((map, spec))
}

/// A program that looks up (a hit, or with `miss` a miss) one key in a
/// map laid out as `name`, which holds one entry.
fn one_lookup(name: &str, miss: bool, increment: bool) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let (map, spec) = datapath_map(name)?;
    let key_len = spec.key_size as usize;
    let mut key = vec![0u8; key_len];
    if spec.map_type == kind::LPM_TRIE {
        // The full prefix: a lookup of a whole address, a hit on the one entry.
        key[..4].copy_from_slice(&(8 * (key_len as u32 - 4)).to_ne_bytes());
    }
    let value = vec![0u8; spec.value_size as usize];
    // A miss: the one entry is another key (arrays have every index).
    let mut held = key.clone();
    if miss {
        held.iter_mut().skip(4).for_each(|b| *b = 0xff);
    }
    map_update(map.as_fd(), &held, &value)?;
    let prog = lookup_program(map.as_fd(), &key, increment)?;
    Ok((map, prog))
}

/// The operations a packet's floor is made of (see `main.rs`, `FLOORS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// An array lookup (inlined by the verifier): state indexed by a small
    /// number (the epoch, an endpoint by its interface).
    Array,
    /// A per-CPU array lookup and an increment: a counter, or a per-CPU
    /// cache slot indexed by a hash of its key.
    PerCpu,
    /// A hash lookup that hits, 16-byte key (`PAL_POLICY_PORT`'s layout):
    /// state keyed by an address or a verdict's key.
    Hash,
    /// A hash lookup that misses, as a source or a destination absent from
    /// the prefilter's maps (`PAL_XDP_DENYHST`'s layout).
    HashMiss,
    /// Conntrack (`PAL_CT4`'s layout, LRU): a tracked flow.
    LruHit,
    /// Conntrack: an untracked flow.
    LruMiss,
    /// Conntrack: a new entry (single runs, each a new key).
    LruInsert,
    /// `bpf_ktime_get_coarse_ns`.
    Clock,
}

pub const OPS: [Op; 8] = [
    Op::Array,
    Op::PerCpu,
    Op::Hash,
    Op::HashMiss,
    Op::LruHit,
    Op::LruMiss,
    Op::LruInsert,
    Op::Clock,
];

impl Op {
    pub const fn name(self) -> &'static str {
        match self {
            Op::Array => "array",
            Op::PerCpu => "per-CPU array",
            Op::Hash => "hash",
            Op::HashMiss => "hash miss",
            Op::LruHit => "LRU conntrack hit",
            Op::LruMiss => "LRU conntrack miss",
            Op::LruInsert => "LRU conntrack insert",
            Op::Clock => "coarse clock",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// ns over the empty program of each [`Op`], measured in this run: warm
/// (rounds of repeated runs, as the steady cases run) and cold (single
/// runs each beside a single run of the empty program, as the cases of
/// new flows run: each starts with what the system call before it left in
/// the caches).
pub struct Prices {
    warm: [f64; OPS.len()],
    cold: [f64; OPS.len()],
}

impl Prices {
    pub fn of(&self, op: Op, cold: bool) -> f64 {
        if cold {
            self.cold[op.index()]
        } else {
            self.warm[op.index()]
        }
    }

    /// The sum of `ops`' prices, `(count, op)` each.
    pub fn sum(&self, ops: &[(u32, Op)], cold: bool) -> f64 {
        ops.iter()
            .map(|&(n, op)| f64::from(n) * self.of(op, cold))
            .sum()
    }
}

/// A program that inserts a new conntrack entry per run, into a map laid
/// out as `PAL_CT4`: run beside each single run of a new flow, so that the
/// floor of each run holds an insert made in the same moment (single runs
/// start with cold caches, and by how much varies with the machine's load
/// more than any other figure here).
pub struct Inserter {
    _map: OwnedFd,
    prog: OwnedFd,
    next: std::cell::Cell<u32>,
}

impl Inserter {
    pub fn new() -> anyhow::Result<Self> {
        let (map, spec) = datapath_map(maps::CT4)?;
        let prog = insert_program(map.as_fd(), spec.key_size as i16, spec.value_size as i16)?;
        Ok(Self {
            _map: map,
            prog,
            next: std::cell::Cell::new(0),
        })
    }

    /// One run, with a key no run before used: its ns.
    pub fn run(&self) -> anyhow::Result<f64> {
        let i = self.next.get();
        self.next.set(i + 1);
        let mut frame = vec![0u8; 64];
        frame[..4].copy_from_slice(&i.to_be_bytes());
        Ok(f64::from(raw::test_run(self.prog.as_fd(), &frame, 1)?))
    }
}

/// The median, over single runs each beside one run of the empty program,
/// of the difference: one new conntrack entry per run.
fn lru_insert(empty: BorrowedFd<'_>, runs: u16) -> anyhow::Result<f64> {
    let inserter = Inserter::new()?;
    let frame = vec![0u8; 64];
    let mut diffs = Vec::with_capacity(usize::from(runs));
    for _ in 0..runs {
        let floor = f64::from(raw::test_run(empty, &frame, 1)?);
        diffs.push(inserter.run()? - floor);
    }
    Ok(crate::median_f64(diffs))
}

/// The median of (the program's ns - the empty program's) over single
/// runs, each beside one of the empty program.
fn cold(prog: BorrowedFd<'_>, empty: BorrowedFd<'_>, frame: &[u8]) -> anyhow::Result<f64> {
    let mut diffs = Vec::with_capacity(usize::from(crate::NEW_FLOWS));
    for _ in 0..crate::NEW_FLOWS {
        let floor = f64::from(raw::test_run(empty, frame, 1)?);
        diffs.push(f64::from(raw::test_run(prog, frame, 1)?) - floor);
    }
    Ok(crate::median_f64(diffs))
}

/// Prices every [`Op`] beside the empty TC program, warm and cold.
pub fn price(frame: &[u8], empty: BorrowedFd<'_>) -> anyhow::Result<Prices> {
    let mut warm = [0.0; OPS.len()];
    let mut cold_ = [0.0; OPS.len()];
    for op in OPS {
        let (_map, prog) = match op {
            Op::Array => one_lookup(maps::EPOCH, false, false)?,
            Op::PerCpu => one_lookup(maps::TC_STATS, false, true)?,
            Op::Hash => one_lookup(maps::POLICY_PORT, false, false)?,
            Op::HashMiss => one_lookup(maps::XDP_DENY_HOST, true, false)?,
            Op::LruHit => one_lookup(maps::CT4, false, false)?,
            Op::LruMiss => one_lookup(maps::CT4, true, false)?,
            Op::LruInsert => {
                let insert = lru_insert(empty, crate::NEW_FLOWS)?;
                (warm[op.index()], cold_[op.index()]) = (insert, insert);
                continue;
            }
            Op::Clock => (
                helper_program(HELPER_KTIME_COARSE)?,
                helper_program(HELPER_KTIME_COARSE)?,
            ),
        };
        warm[op.index()] = crate::paired(prog.as_fd(), empty, frame, 0.0)?.over_empty;
        cold_[op.index()] = cold(prog.as_fd(), empty, frame)?;
    }
    Ok(Prices { warm, cold: cold_ })
}

/// The maps a packet looks up, measured with the layout and size the
/// datapath declares for them.
const MAPS: &[&str] = &[
    maps::EPOCH,
    maps::TC_STATS,
    maps::ENDPOINTS,
    maps::IDENTITY_HOST,
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

/// Prints the floors' operations, as priced in this run.
pub fn report_prices(prices: &Prices) {
    println!(
        "the floors' operations, ns over the empty TC program, warm (medians of {} rounds) / cold (of {} single runs; the insert is single runs only):",
        crate::ROUNDS,
        crate::NEW_FLOWS
    );
    let ops: Vec<String> = OPS
        .iter()
        .map(|&op| {
            format!(
                "{} {:.1} / {:.1}",
                op.name(),
                prices.of(op, false),
                prices.of(op, true)
            )
        })
        .collect();
    println!("  {}", ops.join(", "));
}

/// Prints one lookup (a hit) in each map a packet may touch: ns over the
/// empty program.
pub fn report(frame: &[u8], empty: BorrowedFd<'_>) -> anyhow::Result<()> {
    println!();
    println!(
        "one map lookup (a hit), ns over the empty program, median of {} rounds:",
        crate::ROUNDS
    );
    for name in MAPS {
        let (_map, prog) = one_lookup(name, false, false)?;
        let spec = datapath_map(name)?.1;
        let s = crate::paired(prog.as_fd(), empty, frame, 0.0)?;
        let name = format!(
            "{}, {}-byte key ({})",
            kind_name(spec.map_type),
            spec.key_size,
            spec.name
        );
        println!("  {name:<44} {:>5.1} ns", s.over_empty);
    }
    Ok(())
}
