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

use primitives::{Op, Prices};

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

/// ns/packet, and its ratios to the empty program run beside it and to
/// the case's floor (that empty program plus the prices of the operations
/// the case cannot avoid).
#[derive(Clone, Copy, Default)]
struct Sample {
    ns: f64,
    ratio: f64,
    floor: f64,
    /// ns over the empty program.
    over_empty: f64,
}

const ROUNDS: usize = 31;

/// The per-packet goal of the first benchmark: at most this many times
/// the empty program.
const GOAL: f64 = 3.5;
/// The slow path's goal (issue 15): every case at most this many times its
/// floor.
const FLOOR_GOAL: f64 = 1.3;

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of per-round figures: each round's real run set against the
/// empty one beside it, and against its floor: `extra` ns (a floor's
/// operations) over the round's base (the empty run, or a run of the
/// operation priced beside it).
fn summarise(rounds: &[Round], extra: f64) -> Sample {
    let col = |f: &dyn Fn(&Round) -> f64| median_f64(rounds.iter().map(f).collect());
    Sample {
        ns: col(&|r| r.real),
        ratio: col(&|r| r.real / r.empty.max(1.0)),
        floor: col(&|r| r.real / (r.base + extra).max(1.0)),
        over_empty: col(&|r| r.real - r.empty),
    }
}

/// One round: the empty program's ns, the real one's, and the floor's base.
struct Round {
    empty: f64,
    real: f64,
    base: f64,
}

/// The machine's speed drifts over seconds by more than the effects looked
/// for: each round runs the empty program and then the real one back to
/// back, and each ratio is the median of the rounds' ratios.
fn paired(
    fd: std::os::fd::BorrowedFd<'_>,
    empty: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    extra: f64,
) -> anyhow::Result<Sample> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let empty = f64::from(raw::test_run(empty, frame, REPEAT)?);
        let real = f64::from(raw::test_run(fd, frame, REPEAT)?);
        rounds.push(Round {
            empty,
            real,
            base: empty,
        });
    }
    Ok(summarise(&rounds, extra))
}

/// Single runs, each of its own frame and each beside one run of the empty
/// program; `before` runs ahead of each pair, outside the timed runs. With
/// `insert`, each round's floor is based on a run of the conntrack insert
/// instead of the empty program's (`extra` then leaves the insert out).
fn singles(
    fd: std::os::fd::BorrowedFd<'_>,
    empty: std::os::fd::BorrowedFd<'_>,
    frames: impl Iterator<Item = Vec<u8>>,
    extra: f64,
    insert: Option<&primitives::Inserter>,
    mut before: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Sample> {
    let mut rounds = Vec::new();
    for frame in frames {
        before()?;
        let empty = f64::from(raw::test_run(empty, &frame, 1)?);
        let base = match insert {
            Some(insert) => insert.run()?,
            None => empty,
        };
        let real = f64::from(raw::test_run(fd, &frame, 1)?);
        rounds.push(Round { empty, real, base });
    }
    Ok(summarise(&rounds, extra))
}

/// One benchmark case: what it sends, and its floor.
struct Case {
    name: &'static str,
    /// The operations no design can spare this packet, beside the empty
    /// program of its hook: `(count, operation)`.
    floor: &'static [(u32, Op)],
    /// Run in single runs (new flows), so priced cold.
    single: bool,
}

/// A packet of a tracked flow, either way.
const TRACKED: &[(u32, Op)] = &[
    (1, Op::LruHit),
    (1, Op::Array),
    (1, Op::Clock),
    (1, Op::PerCpu),
];

/// The cases, in the order of [`Row::samples`].
///
/// A floor holds one operation per piece of state the verdict depends on
/// that the packet cannot know otherwise, each priced as the cheapest map
/// that can hold that state: an array for what a small number indexes (the
/// epoch; an endpoint by its interface, which the syncer can place in a
/// slot), a hash for what an address or a flow keys (a conntrack entry, the
/// verdict for a peer, fused into one lookup where the syncer precomputes
/// identities into policy keys), a per-CPU array for a per-CPU cache slot
/// indexed by a hash of its key (like the counter cells) and for the one
/// counter every verdict needs. Not in any floor: parsing (the program's
/// own instructions, in the 1.3x), the per-direction totals beside the
/// detailed counter, and the event rate limit's clock (a budget the daemon
/// refills would do without it).
///
/// - conntrack is asked for an IP packet that may be a reply: one that
///   policy would deny may belong to a flow opened from the other side,
///   and that state is shared by every CPU, so no per-CPU cache can answer
///   for it; but where the endpoint never tracked a flow opened the other
///   way, one shared array entry says so, and a repeated denied packet
///   needs that instead (`PAL_EP_OPENED`);
/// - a tracked flow needs the epoch (has policy changed since it was
///   judged?) and the clock (has it idled out?);
/// - a packet whose verdict a per-CPU cache holds needs the epoch to trust
///   it and nothing else: neither the endpoint nor the policy;
/// - a first packet (no cache can hold its verdict yet) needs its
///   endpoint's state (generation, flags) and one lookup of the verdict;
/// - a new allowed flow also writes its entry, stamped with the time and
///   the epoch;
/// - the prefilter must look the source up in the node deny list and the
///   destination in the pod denies' gate: two sparse keys, two lookups (a
///   miss each for a packet that passes), or one hit for a denied source.
const CASES: [Case; 9] = [
    Case {
        name: "established",
        floor: TRACKED,
        single: false,
    },
    Case {
        name: "reply",
        floor: TRACKED,
        single: false,
    },
    Case {
        name: "non-IP",
        floor: &[(1, Op::Array), (1, Op::PerCpu)],
        single: false,
    },
    Case {
        name: "denied",
        floor: &[(2, Op::Array), (2, Op::PerCpu)],
        single: false,
    },
    Case {
        name: "denied, first",
        floor: &[
            (1, Op::LruMiss),
            (1, Op::Array),
            (1, Op::Hash),
            (1, Op::PerCpu),
        ],
        single: true,
    },
    Case {
        name: "new allowed",
        floor: &[
            (1, Op::LruMiss),
            (1, Op::Array),
            (1, Op::Clock),
            (1, Op::LruInsert),
            (2, Op::PerCpu),
        ],
        single: true,
    },
    Case {
        name: "new allowed, first",
        floor: &[
            (1, Op::LruMiss),
            (2, Op::Array),
            (1, Op::Hash),
            (1, Op::Clock),
            (1, Op::LruInsert),
            (1, Op::PerCpu),
        ],
        single: true,
    },
    Case {
        name: "XDP pass",
        floor: &[(2, Op::HashMiss), (1, Op::PerCpu)],
        single: false,
    },
    Case {
        name: "XDP deny",
        floor: &[(1, Op::Hash), (1, Op::PerCpu)],
        single: false,
    },
];

/// What each case is, for the legend.
const WHAT: [&str; 9] = [
    "TC, a packet of a tracked flow, its opener's way",
    "TC, the same flow's reply",
    "TC, an ARP frame",
    "TC, a SYN to a port no entry allows, the same flow again and again",
    "TC, the same SYN, each run after an epoch bump (no verdict of an earlier packet holds)",
    "TC, a SYN of a new flow to the allowed port, the same peer (single runs, each a new source port)",
    "TC, the same, each run after an epoch bump",
    "XDP prefilter, a SYN from a source not on the deny list to a pod without pod denies",
    "XDP prefilter, a SYN from a source on the deny list",
];

fn floor_text(c: &Case) -> String {
    c.floor
        .iter()
        .map(|&(n, op)| format!("{n} {}", op.name()))
        .collect::<Vec<_>>()
        .join(" + ")
}

struct Row {
    n: u32,
    samples: [Sample; 9],
    policy_bytes: f64,
    identity_bytes: f64,
}

/// The empty programs each case is compared with.
struct Floors {
    tc: std::os::fd::OwnedFd,
    xdp: std::os::fd::OwnedFd,
}

/// A bench node at `n` entries: the objects loaded under pins of their
/// own, `n` peers' identities, an ingress policy allowing each of them TCP
/// port 80 at the endpoint (which holds its pod's address and MAC), and
/// each peer on the prefilter's deny list.
struct Node {
    loaded: Loaded,
    dp: DatapathMaps,
    pins: PinDir,
    to_pod: aya::programs::ProgramFd,
    from_pod: aya::programs::ProgramFd,
    /// The last peer's address: the one whose entries are looked up last.
    last: [u8; 4],
    /// Last, so that the pins go once everything else is closed.
    _base: PinBase,
}

impl Node {
    fn new(n: u32, features: &Features) -> anyhow::Result<Self> {
        let base = PinBase::new(format!(
            "/sys/fs/bpf/palisade-bench-{}-{n}",
            std::process::id()
        ));
        let pins = PinDir::new(&base.0);
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
        // With its address and MAC, as the syncer writes a bridged pod's: what
        // leaves it pays the source checks.
        let sources = palisade::compile::Sources {
            v4: Some(Ipv4Addr::from(POD)),
            v6: None,
            prefixes: false,
            // The frames' (zero) MAC, as for a bridged pod.
            mac: Some([0; 6]),
        };
        dp.replace_policy_held(
            LO,
            EP,
            endpoint_flags::ISOLATED_INGRESS,
            &entries,
            &sources,
            None,
        )?;
        for i in 0..n {
            dp.set_cidr_deny(IpAddr::V4(Ipv4Addr::from(peer(i))), 32, 1 + i)?;
        }

        let last = peer(n - 1);
        let to_pod = tc(&mut loaded, objects::TC.programs[1])?
            .fd()?
            .try_clone()?;
        let from_pod = tc(&mut loaded, objects::TC.programs[0])?
            .fd()?
            .try_clone()?;
        Ok(Self {
            loaded,
            dp,
            pins,
            to_pod,
            from_pod,
            last,
            _base: base,
        })
    }
}

/// `--loop CASE SECONDS`: one steady case's program run on its frame again
/// and again, at 1,000 entries, for a profiler to sample
/// (`bench/jit-lines.py` maps the samples to source lines).
fn run_loop(case: &str, seconds: u64, features: &Features) -> anyhow::Result<()> {
    const N: u32 = 1_000;
    let last = peer(N - 1);
    let established = tcp(last, POD, 10_000, 80, 0x10);
    let (reply, packet) = match case {
        "established" => (false, established.clone()),
        "reply" => (true, tcp(POD, last, 80, 10_000, 0x10)),
        "non-ip" => (false, frame(0x0806, &[0; 28])),
        "denied" => (false, tcp(last, POD, 10_000, 81, 0x02)),
        other => anyhow::bail!("no steady case {other:?}: established, reply, non-ip or denied"),
    };
    let mut node = Node::new(N, features)?;
    let program = objects::TC.programs[if reply { 0 } else { 1 }];
    let id = tc(&mut node.loaded, program)?.info()?.id();
    let fd = if reply { &node.from_pod } else { &node.to_pod }.as_fd();
    // The flow is tracked by its first packet, as in the bench's own runs.
    raw::test_run(node.to_pod.as_fd(), &established, 1)?;
    println!("running {program} (id {id}) on the {case} frame for {seconds} s");
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        raw::test_run(fd, &packet, REPEAT)?;
        runs += u64::from(REPEAT);
    }
    println!("{runs} runs");
    Ok(())
}

fn measure(n: u32, features: &Features, floors: &Floors, prices: &Prices) -> anyhow::Result<Row> {
    // Held whole, so that its pins go after everything else (`Node`).
    let mut node = Node::new(n, features)?;
    let (to_pod, from_pod, last) = (node.to_pod.as_fd(), node.from_pod.as_fd(), node.last);
    let (loaded, dp, pins) = (&mut node.loaded, &mut node.dp, &node.pins);
    let empty = floors.tc.as_fd();
    let extra = |i: usize| prices.sum(CASES[i].floor, CASES[i].single);
    let flows =
        |from: u16| (from..from + NEW_FLOWS).map(move |sport| tcp(last, POD, sport, 80, 0x02));
    // The steady cases first: the new flows' entries are created last.
    // The flow is tracked by its first packet (an ACK opens it here).
    let established = paired(to_pod, empty, &tcp(last, POD, 10_000, 80, 0x10), extra(0))?;
    let reply = paired(from_pod, empty, &tcp(POD, last, 80, 10_000, 0x10), extra(1))?;
    let non_ip = paired(to_pod, empty, &frame(0x0806, &[0; 28]), extra(2))?;
    let syn81 = tcp(last, POD, 10_000, 81, 0x02);
    let denied = paired(to_pod, empty, &syn81, extra(3))?;
    let mut bump = || dp.next_epoch().map(|_| ()).map_err(anyhow::Error::from);
    let denied_first = singles(
        to_pod,
        empty,
        (0..NEW_FLOWS).map(|_| syn81.clone()),
        extra(4),
        None,
        &mut bump,
    )?;
    // The insert is priced beside each run: its floor's base.
    let insert = primitives::Inserter::new()?;
    let but_insert = |i: usize| extra(i) - prices.of(Op::LruInsert, true);
    let allowed_new = singles(
        to_pod,
        empty,
        flows(10_001),
        but_insert(5),
        Some(&insert),
        || Ok(()),
    )?;
    let allowed_first = singles(
        to_pod,
        empty,
        flows(20_001),
        but_insert(6),
        Some(&insert),
        &mut bump,
    )?;
    let xdp: &mut Xdp = loaded
        .xdp
        .ebpf
        .program_mut(objects::XDP.programs[0])
        .context("xdp")?
        .try_into()?;
    let xdp_fd = xdp.fd()?.as_fd();
    let xdp_empty = floors.xdp.as_fd();
    let syn = |src| tcp(src, POD, 1, 80, 0x02);
    let xdp_pass = paired(xdp_fd, xdp_empty, &syn([192, 0, 2, 1]), extra(7))?;
    let xdp_deny = paired(xdp_fd, xdp_empty, &syn(last), extra(8))?;
    Ok(Row {
        n,
        samples: [
            established,
            reply,
            non_ip,
            denied,
            denied_first,
            allowed_new,
            allowed_first,
            xdp_pass,
            xdp_deny,
        ],
        policy_bytes: bytes_per_entry(pins, maps::POLICY_PORT)?,
        identity_bytes: bytes_per_entry(pins, maps::IDENTITY_HOST)?,
    })
}

/// A pin directory removed when the benchmark is done with it, also on error.
/// A bench's own pin directory, removed however the bench ends (the pins
/// of its maps and links with it).
pub(crate) struct PinBase(pub(crate) std::path::PathBuf);

impl PinBase {
    pub(crate) fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self(path.into())
    }
}

impl Drop for PinBase {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
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

/// What `palisade-bench` takes; any other argument that looks like a flag
/// is refused, so that a typo or `--help` never starts minutes of
/// measurement as root.
const USAGE: &str = "\
palisade-bench: figures and ratios, no assertions (root, bpffs)

  (no flag)                       load time, ns/packet of the datapath at 10 to 100k
                                  entries, compile time, change to in force
  --datapath-only                 the load time and the per-packet figures alone
  --primitives                    the prices of the floors' map operations alone
  --compile-only                  the policy compiler's figures alone
  --lsm-compile                   the LSM rule compiler's figures alone
  --lsm                           the LSM programs' cost (in the QEMU guest: tests/vm/guest-bench.sh)
  --in-force BIN                  change to in force, through the daemon BIN
  --peers BIN [--out DIR] [--quick [--only PEER,...]]
                                  the whole path against nftables and iptables (make bench-peers)
  --churn BIN [--out DIR] [--quick] [--tc-links-only] [--via kube] [--scrape-every MS]
                                  policy churn at 10,000 pods (make bench-churn)
  --churn BIN --replay-only [--replays N]
                                  the churn's changes through the source and compiler alone
  --attach [VETHS]                a new veth's TC programs, TCX links against clsact filters
  --loop CASE [SECONDS]           one steady case (established, reply, non-ip, denied) run again
                                  and again at 1,000 entries, for a profiler (bench/jit-lines.py)
  --help                          this
";

const FLAGS: &[&str] = &[
    "--datapath-only",
    "--quick",
    "--primitives",
    "--compile-only",
    "--lsm-compile",
    "--lsm",
    "--in-force",
    "--peers",
    "--out",
    "--only",
    "--churn",
    "--tc-links-only",
    "--via",
    "--scrape-every",
    "--replay-only",
    "--replays",
    "--attach",
    "--loop",
];

fn main() -> anyhow::Result<()> {
    let unknown: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.starts_with('-') && !FLAGS.contains(&a.as_str()))
        .collect();
    if unknown.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return Ok(());
    }
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown argument {}\n\n{USAGE}",
        unknown.join(" ")
    );
    // `--lsm-compile`: the LSM compiler's figures alone.
    if std::env::args().any(|a| a == "--lsm-compile") {
        return compile::lsm_report();
    }
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
    // `--peers PALISADE_BINARY [--out DIR] [--quick [--only PEER,...]]`:
    // the whole-path packet rate against nftables and iptables
    // (`make bench-peers`); `--only` keeps a quick run to the named
    // enforcers, for looking into one.
    if let Some(bin) = binary_after(&args, "--peers")? {
        let only = match args.iter().position(|a| a == "--only") {
            Some(i) => Some(peers::parse_only(
                args.get(i + 1).context("--only needs enforcer names")?,
            )?),
            None => None,
        };
        anyhow::ensure!(
            only.is_none() || quick,
            "--only is for quick runs: a published run measures every enforcer"
        );
        return peers::report(bin, out_dir(&args), quick, only.as_deref());
    }
    // `--churn PALISADE_BINARY [--out DIR] [--quick]`: change to in force
    // at 10,000 pods and 1,000 policies (`make bench-churn`).
    if let Some(bin) = binary_after(&args, "--churn")? {
        return churn::report(bin, out_dir(&args), quick);
    }
    // `--attach [VETHS]`: only the churn run's side figure, what attaching
    // a new veth's TC programs costs each way.
    if let Some(i) = args.iter().position(|a| a == "--attach") {
        let veths = args.get(i + 1).map_or(Ok(20), |v| v.parse())?;
        anyhow::ensure!(
            churn::attach::measure(veths).is_some(),
            "attach times not measured"
        );
        return Ok(());
    }
    let features = Features::probe();
    if let Some(i) = args.iter().position(|a| a == "--loop") {
        let case = args.get(i + 1).context("--loop needs a case")?;
        let seconds = (args.get(i + 2).map_or(Ok(30), |s| s.parse()))
            .context("--loop CASE SECONDS: SECONDS is a whole number")?;
        return run_loop(case, seconds, &features);
    }

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
    let empty_tc = raw::empty_program(raw::SCHED_CLS, raw::TC_ACT_UNSPEC)?;
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
    let prices = primitives::price(&frame64, empty_tc.as_fd())?;
    primitives::report_prices(&prices);
    if std::env::args().any(|a| a == "--primitives") {
        return primitives::report(&frame64, empty_tc.as_fd());
    }
    println!();
    println!("the cases, and the floor of each (the empty program of its hook and these):");
    for (c, what) in CASES.iter().zip(WHAT) {
        println!("  {:<19} {what}", c.name);
        let beside = if c.floor.iter().any(|&(_, op)| op == Op::LruInsert) {
            " (the insert run beside each run of the case, this figure only its median)"
        } else {
            ""
        };
        println!(
            "  {:<19}   floor: {} = {:.1} ns{beside}",
            "",
            floor_text(c),
            prices.sum(c.floor, c.single)
        );
    }
    println!();
    println!(
        "ns/packet, BPF_PROG_TEST_RUN, 64-byte frames; medians of {ROUNDS} rounds of {REPEAT} runs (of {NEW_FLOWS} single runs where the legend says so), each beside the empty program: ns, x empty, x floor"
    );
    // The first measurement of a run is slower or faster by more than the
    // noise (caches, frequency); a discarded warm-up keeps the rows comparable.
    let floors = Floors {
        tc: empty_tc,
        xdp: empty_xdp,
    };
    measure(SIZES[0], &features, &floors, &prices)?;
    let mut rows = Vec::new();
    for n in SIZES {
        let r = measure(n, &features, &floors, &prices)?;
        println!(
            "{} entries (policy {:.0} B/entry, identities {:.0} B/entry):",
            r.n, r.policy_bytes, r.identity_bytes
        );
        for (c, s) in CASES.iter().zip(&r.samples) {
            println!(
                "  {:<19} {:>6.0} ns {:>5.1}x empty {:>5.2}x floor",
                c.name, s.ns, s.ratio, s.floor
            );
        }
        rows.push(r);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!();
        let flat: Vec<String> = CASES
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "{} {:.2}",
                    c.name,
                    last.samples[i].ratio / first.samples[i].ratio
                )
            })
            .collect();
        println!(
            "flatness, x empty at {} entries / at {}: {}",
            last.n,
            first.n,
            flat.join(", ")
        );
        let worst = |i: usize, of: fn(&Sample) -> f64| {
            rows.iter().map(|r| of(&r.samples[i])).fold(0.0, f64::max)
        };
        let verdicts = |goal: f64, of: fn(&Sample) -> f64| -> String {
            CASES
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let w = worst(i, of);
                    let met = if w <= goal { "met" } else { "not met" };
                    format!("{} {w:.2}x ({met})", c.name)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "goal {GOAL}x the empty program, the worst ratio over the sizes: {}",
            verdicts(GOAL, |s| s.ratio)
        );
        println!(
            "goal {FLOOR_GOAL}x the floor, the worst ratio over the sizes: {}",
            verdicts(FLOOR_GOAL, |s| s.floor)
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
