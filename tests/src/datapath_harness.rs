//! The datapath under BPF_PROG_TEST_RUN: the TC and XDP objects' maps made
//! in a pin directory of the test's own, policy written through the syncer's
//! map API ([`DatapathMaps`]), frames run through one program at a time, and
//! the reason each verdict was counted under read back from the stats maps.
//! A program is verified when a test first runs it: a test runs some of the
//! four, and under the QEMU guest's emulation the four take about 12 s to
//! verify.
//! Used by the verdict tables (`tests/datapath.rs`) and the random frames
//! (`tests/frames.rs`).
//!
//! A TC program under test runs on the loopback device of the calling
//! thread's namespace unless the run names another interface (the
//! `__sk_buff` context's `ifindex`, the `xdp_md`'s `ingress_ifindex`), which
//! must then exist in that namespace.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::MapData,
    programs::{Program, ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use ebpf_common::{
    maps::{self, programs},
    reason,
    stats::{Counter, direction, stat_index},
};
use palisade::{
    datapath::{
        DatapathMaps,
        batch::{BatchAttr, lookup_batch},
    },
    loader::{
        self, Loaded,
        features::{BpfLsm, Features},
        sizes::MapSizes,
    },
    observe::stats::{CounterRow, read_pinned},
};

use crate::TempPins;

/// TC_ACT_SHOT.
pub const TC_SHOT: u32 = 2;
/// TC_ACT_UNSPEC (-1): no verdict, the next program or the stack decides.
pub const TC_UNSPEC: u32 = u32::MAX;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The loopback device: where a TC run without an interface happens.
pub const LO: u32 = 1;

/// A program a frame is run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `pal_tc_to_pod`: the pod's ingress.
    TcIngress,
    /// `pal_tc_from_pod`: the pod's egress.
    TcEgress,
    /// `pal_xdp_from_pod`: the pod's egress on the optional XDP hook.
    XdpEgress,
    /// `pal_xdp_pre`: the uplinks' prefilter.
    Prefilter,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::TcIngress,
        Hook::TcEgress,
        Hook::XdpEgress,
        Hook::Prefilter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::TcIngress => programs::TC_TO_POD,
            Hook::TcEgress => programs::TC_FROM_POD,
            Hook::XdpEgress => programs::XDP_FROM_POD,
            Hook::Prefilter => programs::XDP_PREFILTER,
        }
    }

    /// The pod direction the hook enforces (the prefilter counts as ingress).
    pub fn direction(self) -> u32 {
        match self {
            Hook::TcIngress | Hook::Prefilter => direction::INGRESS,
            Hook::TcEgress | Hook::XdpEgress => direction::EGRESS,
        }
    }

    /// The stats map the hook counts its verdicts in.
    pub fn stats_map(self) -> &'static str {
        match self {
            Hook::Prefilter => maps::XDP_STATS,
            _ => maps::TC_STATS,
        }
    }

    fn is_xdp(self) -> bool {
        matches!(self, Hook::XdpEgress | Hook::Prefilter)
    }
}

/// What BPF_PROG_TEST_RUN made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// The program ran: whether it let the frame pass.
    Verdict(bool),
    /// The kernel refused to run the program on it (EINVAL), as it does for
    /// frames shorter than an Ethernet header.
    Refused,
}

/// Side counts that accompany a verdict rather than being one.
pub fn is_side_count(reason: u32) -> bool {
    matches!(
        reason,
        reason::COUNTER_MAP_FULL
            | reason::CT_MAP_FULL
            | reason::EVENT_RATE_LIMITED
            | reason::EVENT_LOST
    )
}

/// The one reason whose count moved between two readings of a stats map.
/// Side counts that accompany a verdict rather than being one are left out.
pub fn counted_reason(before: &[CounterRow], after: &[CounterRow]) -> anyhow::Result<&'static str> {
    let changed: Vec<&'static str> = after
        .iter()
        .filter(|a| {
            before
                .iter()
                .find(|b| b.direction == a.direction && b.reason == a.reason)
                .is_none_or(|b| b.events != a.events)
        })
        .map(|a| a.reason)
        .filter(|r| !matches!(*r, "counter_map_full" | "ct_map_full"))
        .collect();
    let [reason] = changed[..] else {
        bail!("expected one counted reason, got {changed:?}");
    };
    Ok(reason)
}

/// Events per reason code, summed over CPUs.
pub type Counts = [u64; reason::COUNT as usize];

/// The datapath's objects in a pin directory of their own, with the map API
/// the syncer writes through.
pub struct Harness {
    pub t: TempPins,
    pub loaded: Loaded,
    pub maps: DatapathMaps,
    tc_stats: MapData,
    xdp_stats: MapData,
    cpus: usize,
}

impl Harness {
    /// Loads the XDP and TC objects with the default map sizes, save `sizes`
    /// (`NAME=ENTRIES`, as `--map-size` takes them); the maps are empty and
    /// no program is verified yet ([`Self::program`]).
    pub fn load(sizes: &[&str]) -> anyhow::Result<Self> {
        let mut map_sizes = MapSizes::default();
        for s in sizes {
            map_sizes.set(s)?;
        }
        let t = TempPins::new()?;
        // The LSM object is not the datapath's, and under the guest's TCG
        // its verification takes about a minute.
        let features = Features {
            bpf_lsm: BpfLsm::Inactive {
                reason: "not loaded by the datapath harness".into(),
            },
            ..Features::probe()
        };
        let loaded = loader::load_some(&t.pins, &features, &map_sizes, loader::Programs::NONE)?;
        let maps = DatapathMaps::open(&t.pins)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("reading {what}: {e}"))?
            .get() as usize;
        Ok(Self {
            tc_stats: MapData::from_pin(t.pins.map(maps::TC_STATS))?,
            xdp_stats: MapData::from_pin(t.pins.map(maps::XDP_STATS))?,
            cpus,
            t,
            loaded,
            maps,
        })
    }

    /// `hook`'s program, verified on first use.
    pub fn program(&mut self, hook: Hook) -> anyhow::Result<&mut Program> {
        let object = if hook.is_xdp() {
            &mut self.loaded.xdp
        } else {
            &mut self.loaded.tc
        };
        let program = object
            .ebpf
            .program_mut(hook.name())
            .with_context(|| format!("no program {}", hook.name()))?;
        if program.fd().is_err() {
            match program {
                Program::Xdp(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                _ => bail!("{} is neither XDP nor TC", hook.name()),
            }
            .with_context(|| format!("verifying {}", hook.name()))?;
        }
        Ok(program)
    }

    /// Runs `frame` once through `hook` on interface `ifindex` (the
    /// loopback device when `None`), counters untouched by the test.
    pub fn test_run(
        &mut self,
        hook: Hook,
        frame: &[u8],
        ifindex: Option<u32>,
    ) -> anyhow::Result<Ran> {
        let program = self.program(hook)?;
        let ctx = ifindex.map(|i| context(hook, i, frame.len()));
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx.as_deref(),
            ..TestRunOptions::new()
        };
        let ran = if hook.is_xdp() {
            let prog: &Xdp = (&*program).try_into()?;
            prog.test_run(opts)
        } else {
            let prog: &SchedClassifier = (&*program).try_into()?;
            prog.test_run(opts)
        };
        let ret = match ran {
            Ok(r) => r.return_value,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                return Ok(Ran::Refused);
            }
            Err(e) => return Err(e).with_context(|| format!("test run of {}", hook.name())),
        };
        Ok(Ran::Verdict(match (hook.is_xdp(), ret) {
            (true, XDP_PASS) | (false, TC_UNSPEC) => true,
            (true, XDP_DROP) | (false, TC_SHOT) => false,
            (_, other) => bail!("{}: unexpected verdict {other}", hook.name()),
        }))
    }

    /// Runs `frame` through `hook` on the loopback device and returns
    /// whether it passed and the one reason counted for it.
    pub fn run_hook(&mut self, hook: Hook, frame: &[u8]) -> anyhow::Result<(bool, &'static str)> {
        let stats = self.t.pins.map(hook.stats_map());
        let before = read_pinned(&stats)?;
        let Ran::Verdict(pass) = self.test_run(hook, frame, None)? else {
            bail!("the kernel refused to run {} on the frame", hook.name());
        };
        let reason = counted_reason(&before, &read_pinned(&stats)?)?;
        Ok((pass, reason))
    }

    /// Runs `frame` through the TC program for `dir` (see [`Self::run_hook`]).
    pub fn run(&mut self, dir: u32, frame: &[u8]) -> anyhow::Result<(bool, &'static str)> {
        let hook = if dir == direction::INGRESS {
            Hook::TcIngress
        } else {
            Hook::TcEgress
        };
        self.run_hook(hook, frame)
    }

    /// Runs `frame` through the XDP prefilter (see [`Self::run_hook`]).
    pub fn prefilter(&mut self, frame: &[u8]) -> anyhow::Result<(bool, &'static str)> {
        self.run_hook(Hook::Prefilter, frame)
    }

    /// Fails, naming `what`, unless `frame` through the TC program for `dir`
    /// passes (or not) as `pass` says, counted under `reason`.
    pub fn expect(
        &mut self,
        dir: u32,
        frame: &[u8],
        pass: bool,
        reason: &str,
        what: &str,
    ) -> anyhow::Result<()> {
        let got = self.run(dir, frame).with_context(|| what.to_owned())?;
        if got != (pass, reason) {
            bail!("{what}: expected ({pass}, {reason}), got {got:?}");
        }
        Ok(())
    }

    /// The events counted so far by `hook`'s programs in its direction,
    /// per reason: one system call (BPF_MAP_LOOKUP_BATCH over the
    /// direction's cells), so that a run of a million frames can read them
    /// often.
    pub fn counts(&self, hook: Hook) -> anyhow::Result<Counts> {
        let map = if hook.stats_map() == maps::XDP_STATS {
            &self.xdp_stats
        } else {
            &self.tc_stats
        };
        let first = stat_index(hook.direction(), 0);
        let per_cpu = lookup_per_cpu::<Counter>(map, first, reason::COUNT, self.cpus)
            .with_context(|| format!("reading {}", hook.stats_map()))?;
        let mut out = [0; reason::COUNT as usize];
        for (slot, cells) in out.iter_mut().zip(per_cpu.chunks(self.cpus)) {
            *slot = cells.iter().map(|c| c.events).sum();
        }
        Ok(out)
    }
}

/// `entries` values of a per-CPU array from index `first` on (of `cpus`
/// possible CPUs), in index order, each CPU's copy in turn. aya has no
/// batch operations.
fn lookup_per_cpu<V: aya::Pod + Default>(
    map: &MapData,
    first: u32,
    entries: u32,
    cpus: usize,
) -> io::Result<Vec<V>> {
    // The kernel copies each CPU's value rounded up to 8 bytes: values of
    // other sizes would need a stride.
    const { assert!(std::mem::size_of::<V>().is_multiple_of(8)) };
    let mut keys = vec![0u32; entries as usize];
    let mut values = vec![V::default(); entries as usize * cpus];
    // The batch starts after the key `in_batch` points to, or at the
    // first key without one.
    let before = first.wrapping_sub(1);
    let mut next = 0u32;
    let mut attr = BatchAttr {
        in_batch: if first == 0 {
            0
        } else {
            std::ptr::from_ref(&before) as u64
        },
        out_batch: std::ptr::from_mut(&mut next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: entries,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the attribute points at buffers of `count` keys and
    // `count * cpus` values of the map's value size, which outlive the call.
    match unsafe { lookup_batch(&mut attr) } {
        // ENOENT: the end of the map was reached, with every entry read.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    if attr.count != entries {
        return Err(io::Error::other(format!(
            "read {} of {entries} entries",
            attr.count
        )));
    }
    Ok(values)
}

/// The context of a run on interface `ifindex`: an `__sk_buff` whose only
/// field set is `ifindex` (offset 40), or an `xdp_md` with the frame's
/// bounds and `ingress_ifindex` (offset 12).
fn context(hook: Hook, ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = Vec::new();
    if hook.is_xdp() {
        ctx.resize(24, 0);
        ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    } else {
        ctx.resize(44, 0);
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    }
    ctx
}
