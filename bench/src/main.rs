//! Benchmarks of the loader and the datapath (and, with `--lsm`, in the
//! QEMU guest, of the LSM programs). Prints figures and ratios; asserts
//! nothing. Needs root and bpffs. `make bench` runs it; `make bench-peers`
//! runs `--peers`, the whole-path packet rate against nftables and iptables;
//! `make bench-churn` runs `--churn`, the time a change of a large cluster
//! takes to be in force, against nftables and iptables.
//!
//! Per-packet cost comes from BPF_PROG_TEST_RUN on 64-byte frames, against
//! an empty program of the same type (the harness floor), at 10, 1k, 10k
//! and 100k identities and policy entries. Map memory is the kernel's own
//! account (`memlock` in the map's fdinfo).

mod churn;
mod compile;
mod heap;
mod in_force;
mod lsm;
mod peers;
mod primitives;
mod raw;
mod veth;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::MapData,
    programs::{SchedClassifier, Xdp},
};
use ebpf_common::{
    datapath::{PolicyValue, action, direction, endpoint_flags, identity},
    maps,
};
use palisade::{
    compile::PolicyEntry,
    datapath::DatapathMaps,
    loader::features::Features,
    loader::{self, Loaded, objects, sizes::MapSizes},
    paths::PinDir,
};

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

const REPEAT: u32 = 50_000;
const NEW_FLOWS: u16 = 2_000;
const SIZES: [u32; 4] = [10, 1_000, 10_000, 100_000];
const LO: u32 = 1;
const EP: u32 = 7;
const POD: [u8; 4] = [10, 0, 0, 1];

fn peer(i: u32) -> [u8; 4] {
    let n = 0x0a80_0000 + i; // 10.128.0.0/9 and up
    n.to_be_bytes()
}

fn frame(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f.resize(64, 0);
    f
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame(0x0800, &p)
}

/// The kernel's account of a map's memory (`memlock` in its fdinfo), per
/// configured entry: hash maps preallocate every entry.
fn bytes_per_entry(pins: &PinDir, name: &str) -> anyhow::Result<f64> {
    let map = MapData::from_pin(pins.map(name))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |key: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no {key} in fdinfo"))
    };
    Ok(field("memlock:")? / field("max_entries:")?)
}

fn tc<'a>(loaded: &'a mut Loaded, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    Ok(loaded
        .tc
        .ebpf
        .program_mut(name)
        .context("tc program")?
        .try_into()?)
}

/// Median of five runs of `repeat` each: the machine's noise is ±15 %.
fn run_fd(fd: std::os::fd::BorrowedFd<'_>, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let mut v = Vec::with_capacity(5);
    for _ in 0..5 {
        v.push(raw::test_run(fd, frame, repeat)?);
    }
    v.sort_unstable();
    Ok(f64::from(v[2]))
}

fn run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    if repeat == 1 {
        return Ok(f64::from(raw::test_run(prog.fd()?.as_fd(), frame, 1)?));
    }
    run_fd(prog.fd()?.as_fd(), frame, repeat)
}

/// ns/packet and the ratio to the empty program measured right beside it.
#[derive(Clone, Copy)]
struct Sample {
    ns: f64,
    ratio: f64,
}

const ROUNDS: usize = 31;
/// One column of the table, by name.
type Case = fn(&Row) -> Sample;

/// The per-packet goal: at most this many times the empty program.
const GOAL: f64 = 3.5;

/// The machine's speed drifts over seconds by more than the effects looked
/// for: each round runs the empty program and then the real one back to
/// back, and the ratio is the median of the rounds' ratios.
fn paired(
    fd: std::os::fd::BorrowedFd<'_>,
    empty: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
) -> anyhow::Result<Sample> {
    let (mut ns, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let floor = f64::from(raw::test_run(empty, frame, REPEAT)?);
        let real = f64::from(raw::test_run(fd, frame, REPEAT)?);
        ns.push(real);
        ratios.push(real / floor);
    }
    ns.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    Ok(Sample {
        ns: ns[ROUNDS / 2],
        ratio: ratios[ROUNDS / 2],
    })
}

struct Row {
    n: u32,
    allowed_new: Sample,
    established: Sample,
    reply: Sample,
    denied: Sample,
    non_ip: Sample,
    xdp_pass: Sample,
    xdp_deny: Sample,
    policy_bytes: f64,
    identity_bytes: f64,
}

/// The empty programs each case is compared with.
struct Floors {
    tc: std::os::fd::OwnedFd,
    xdp: std::os::fd::OwnedFd,
}

fn measure(n: u32, features: &Features, floors: &Floors) -> anyhow::Result<Row> {
    let dir = PinBase::new(format!(
        "/sys/fs/bpf/palisade-bench-{}-{n}",
        std::process::id()
    ));
    let pins = PinDir::new(&dir.0);
    let mut sizes = MapSizes::default();
    for map in [
        "PAL_POLICY_PORT",
        "PAL_IDENT_HOST",
        "PAL_XDP_DENY",
        "PAL_XDP_DENYHST",
    ] {
        sizes.set(&format!("{map}={}", n.max(1024) + 64))?;
    }
    let mut loaded = loader::load_with(&pins, features, &sizes)?;
    let mut dp = DatapathMaps::open(&pins)?;
    let mut entries = Vec::with_capacity(n as usize);
    for i in 0..n {
        dp.set_identity(
            IpAddr::V4(Ipv4Addr::from(peer(i))),
            32,
            identity::FIRST_ALLOCATED + i,
        )?;
        entries.push(PolicyEntry {
            direction: direction::INGRESS,
            peer: identity::FIRST_ALLOCATED + i,
            protocol: Some(6),
            ports: (80, 80),
            value: PolicyValue {
                action: action::ALLOW,
                policy: 1 + i,
                ..PolicyValue::default()
            },
        });
    }
    dp.replace_policy(LO, EP, endpoint_flags::ISOLATED_INGRESS, &entries)?;
    for i in 0..n {
        dp.set_cidr_deny(IpAddr::V4(Ipv4Addr::from(peer(i))), 32, 1 + i)?;
    }

    let last = peer(n - 1);
    let to_pod = objects::TC.programs[1];
    let from_pod = objects::TC.programs[0];
    // New flows: every frame its own source port, one run each, each beside
    // one run of the empty program; medians, as single runs are noisy.
    let empty = floors.tc.as_fd();
    let (mut ns, mut ratios) = (Vec::new(), Vec::new());
    for sport in 0..NEW_FLOWS {
        let floor = f64::from(raw::test_run(empty, &frame(0x0800, &[0; 20]), 1)?);
        let real = run(
            tc(&mut loaded, to_pod)?,
            &tcp(last, POD, 10_000 + sport, 80, 0x02),
            1,
        )?;
        ns.push(real);
        ratios.push(real / floor.max(1.0));
    }
    ns.sort_by(f64::total_cmp);
    ratios.sort_by(f64::total_cmp);
    let allowed_new = Sample {
        ns: ns[ns.len() / 2],
        ratio: ratios[ratios.len() / 2],
    };
    let established = paired(
        tc(&mut loaded, to_pod)?.fd()?.as_fd(),
        empty,
        &tcp(last, POD, 10_000, 80, 0x10),
    )?;
    let reply = paired(
        tc(&mut loaded, from_pod)?.fd()?.as_fd(),
        empty,
        &tcp(POD, last, 80, 10_000, 0x10),
    )?;
    let denied = paired(
        tc(&mut loaded, to_pod)?.fd()?.as_fd(),
        empty,
        &tcp(last, POD, 10_000, 81, 0x02),
    )?;
    let non_ip = paired(
        tc(&mut loaded, to_pod)?.fd()?.as_fd(),
        empty,
        &frame(0x0806, &[0; 28]),
    )?;
    let xdp: &mut Xdp = loaded
        .xdp
        .ebpf
        .program_mut(objects::XDP.programs[0])
        .context("xdp")?
        .try_into()?;
    let xdp_fd = xdp.fd()?.as_fd();
    let xdp_empty = floors.xdp.as_fd();
    let xdp_pass = paired(xdp_fd, xdp_empty, &tcp([192, 0, 2, 1], POD, 1, 80, 0x02))?;
    let xdp_deny = paired(xdp_fd, xdp_empty, &tcp(last, POD, 1, 80, 0x02))?;
    let row = Row {
        n,
        allowed_new,
        established,
        reply,
        denied,
        non_ip,
        xdp_pass,
        xdp_deny,
        policy_bytes: bytes_per_entry(&pins, maps::POLICY_PORT)?,
        identity_bytes: bytes_per_entry(&pins, maps::IDENTITY_HOST)?,
    };
    Ok(row)
}

/// A pin directory removed when the benchmark is done with it, also on error.
struct PinBase(String);

impl PinBase {
    fn new(path: String) -> Self {
        Self(path)
    }
}

impl Drop for PinBase {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `--out DIR`, where a bench writes its results (default bench/results).
fn out_dir(args: &[String]) -> &std::path::Path {
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|o| args.get(o + 1))
        .map_or("bench/results", String::as_str);
    std::path::Path::new(out)
}

/// The palisade binary named after `flag`, when `flag` is given.
fn binary_after<'a>(args: &'a [String], flag: &str) -> anyhow::Result<Option<&'a std::path::Path>> {
    let Some(i) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    let bin = args
        .get(i + 1)
        .with_context(|| format!("{flag} needs the palisade binary"))?;
    Ok(Some(std::path::Path::new(bin)))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--compile-only") {
        compile::report();
        return Ok(());
    }
    if std::env::args().any(|a| a == "--lsm") {
        return lsm::report();
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--in-force PALISADE_BINARY`: only the change-to-in-force figures.
    if let Some(bin) = binary_after(&args, "--in-force")? {
        return in_force::report(bin);
    }
    // `--peers PALISADE_BINARY [--out DIR] [--quick]`: the whole-path
    // packet rate against nftables and iptables (`make bench-peers`).
    if let Some(bin) = binary_after(&args, "--peers")? {
        return peers::report(bin, out_dir(&args), quick);
    }
    // `--churn PALISADE_BINARY [--out DIR] [--quick]`: change to in force
    // at 10,000 pods and 1,000 policies (`make bench-churn`).
    if let Some(bin) = binary_after(&args, "--churn")? {
        return churn::report(bin, out_dir(&args), quick);
    }
    let features = Features::probe();

    let base = PinBase::new(format!("/sys/fs/bpf/palisade-bench-{}", std::process::id()));
    let pins = PinDir::new(&base.0);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let _ = fs::remove_dir_all(&base.0);
        let t = Instant::now();
        drop(loader::load_all(&pins, &features)?);
        cold.push(t.elapsed());
        let t = Instant::now();
        drop(loader::load_all(&pins, &features)?);
        warm.push(t.elapsed());
    }
    drop(base);
    println!(
        "load_all (verifier + pins), median of 5: fresh {:.1} ms, adopting pins {:.1} ms",
        median(cold).as_secs_f64() * 1e3,
        median(warm).as_secs_f64() * 1e3
    );

    let frame64 = frame(0x0800, &[0; 20]);
    let empty_tc = raw::empty_program(raw::SCHED_CLS, -1)?;
    let empty_xdp = raw::empty_program(raw::XDP, 2)?;
    let tc_floor = run_fd(empty_tc.as_fd(), &frame64, REPEAT)?;
    let xdp_floor = run_fd(empty_xdp.as_fd(), &frame64, REPEAT)?;
    let mut single = 0.0;
    for _ in 0..NEW_FLOWS {
        single += f64::from(raw::test_run(empty_tc.as_fd(), &frame64, 1)?);
    }
    let tc_floor_single = single / f64::from(NEW_FLOWS);
    println!(
        "empty program (harness floor): TC {tc_floor:.0} ns, XDP {xdp_floor:.0} ns; TC single run {tc_floor_single:.0} ns"
    );
    if std::env::args().any(|a| a == "--primitives") {
        return primitives::report(&frame64, empty_tc.as_fd());
    }
    println!();
    println!(
        "ns/packet, BPF_PROG_TEST_RUN, 64-byte frames, median of {ROUNDS} rounds (in brackets: the median ratio to the empty program run beside it)"
    );
    println!(
        "{:>7} | {:>14} {:>14} {:>14} {:>14} {:>14} | {:>14} {:>14} | {:>10} {:>10}",
        "entries",
        "TC new allow",
        "TC establ.",
        "TC reply",
        "TC denied",
        "TC non-IP",
        "XDP pass",
        "XDP deny",
        "policy B/e",
        "ident. B/e"
    );
    // The first measurement of a run is slower or faster by more than the
    // noise (caches, frequency); a discarded warm-up keeps the rows comparable.
    let floors = Floors {
        tc: empty_tc,
        xdp: empty_xdp,
    };
    measure(SIZES[0], &features, &floors)?;
    let mut rows = Vec::new();
    for n in SIZES {
        let r = measure(n, &features, &floors)?;
        let cell = |s: Sample| format!("{:>5.0} ({:>4.1}x)", s.ns, s.ratio);
        println!(
            "{:>7} | {:>14} {:>14} {:>14} {:>14} {:>14} | {:>14} {:>14} | {:>10.0} {:>10.0}",
            r.n,
            cell(r.allowed_new),
            cell(r.established),
            cell(r.reply),
            cell(r.denied),
            cell(r.non_ip),
            cell(r.xdp_pass),
            cell(r.xdp_deny),
            r.policy_bytes,
            r.identity_bytes
        );
        rows.push(r);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!();
        println!(
            "flatness, {} entries / {} entries: new allow {:.2}, established {:.2}, reply {:.2}, denied {:.2}, XDP deny {:.2}",
            last.n,
            first.n,
            last.allowed_new.ratio / first.allowed_new.ratio,
            last.established.ratio / first.established.ratio,
            last.reply.ratio / first.reply.ratio,
            last.denied.ratio / first.denied.ratio,
            last.xdp_deny.ratio / first.xdp_deny.ratio
        );
        let cases: [(&str, Case); 7] = [
            ("established", |r| r.established),
            ("reply", |r| r.reply),
            ("non-IP", |r| r.non_ip),
            ("denied", |r| r.denied),
            ("new allow", |r| r.allowed_new),
            ("XDP pass", |r| r.xdp_pass),
            ("XDP deny", |r| r.xdp_deny),
        ];
        let verdicts: Vec<String> = cases
            .iter()
            .map(|(name, of)| {
                let worst = rows.iter().map(|r| of(r).ratio).fold(0.0, f64::max);
                let met = if worst <= GOAL { "met" } else { "not met" };
                format!("{name} {worst:.1}x ({met})")
            })
            .collect();
        println!(
            "goal {GOAL}x, the worst ratio over the sizes: {}",
            verdicts.join(", ")
        );
    }
    // `--datapath-only`: the per-packet figures alone, for quick comparisons.
    if std::env::args().any(|a| a == "--datapath-only") {
        return Ok(());
    }
    veth::report(&features)?;
    compile::report();
    Ok(())
}
