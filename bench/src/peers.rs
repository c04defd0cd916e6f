//! Whole-path packet rate against what users would pick instead
//! (`palisade-bench --peers PALISADE_BINARY`, `make bench-peers`).
//!
//! The lab's node with two pods on its bridge, a sender and a receiver.
//! trafgen (netsniff-ng) in the sender's namespace, pinned to CPU 0, sends
//! 64-byte UDP frames to the receiver, the source port counting through
//! 64k. Each enforcer enforces the same rule set (the sender may send to N
//! (peer, port) pairs, the receiver's the last) at N = 10 to 10,000:
//! Palisade (the real daemon, TC on the pods' veths; then with its XDP
//! pod-egress program instead of TC on the sender's), nftables (a chain of
//! rules; a set), iptables-legacy (a chain of rules; an ipset), an empty TC
//! program that drops (the floor of any TC enforcer), two that pass, where
//! Palisade's run (the floor of an enforcer at both ends of a flow on the
//! node), one that hands each packet straight into the receiver's namespace
//! (the floor of an enforcer that takes the flow off the bridge), that one
//! behind Palisade's program on the sender's veth (allow only: what a
//! design running Palisade's sending end and then taking the flow off the
//! bridge could deliver at most), and nothing. Deny: the
//! flood goes to a port no rule allows; the rate is what the enforcer's own
//! drop counter counts per second. Allow: the flood matches the last rule;
//! the rate is what reaches the receiver's own end of its veth. Each measurement counts
//! over a fixed window once the flood runs; the enforcers run interleaved,
//! in an order that rotates, three times; the medians and ranges go to
//! `peers.md` and `peers.svg`. Everything runs in the lab's namespaces and
//! goes with them. The bench and what it starts (the daemon, nft,
//! iptables) keep to CPU 1, so that CPU 0 carries the sender and the whole
//! path of its packets (the kernel processes them in the sender's context).

pub mod report;
mod rules;

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{HashMap as BpfHash, Map, MapData, PerCpuArray},
    programs::XdpMode,
};
use ebpf_common::{
    datapath::{Ct4Key, CtValue},
    maps, reason,
    stats::{Counter, direction, stat_index},
};
use palisade::{
    loader::{self, Loaded, attach, features::Features},
    netns::ifindex,
    paths::PinDir,
};
use palisade_lab::{
    enforcer::{DaemonArgs, Enforcer},
    fixtures::BridgeLab,
    netns::Netns,
};

use crate::raw;

pub const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
pub const REPS: usize = 3;
/// Counting starts once the flood has run this long and, for an enforcer
/// that keeps per-flow state (Palisade's conntrack, emptied before each
/// run), once the sender has gone through every source port: the window
/// then holds the flood's steady state, every flow tracked, and no share
/// of its first pass's inserts that would depend on how fast the machine
/// sends (a new flow's cost is the slow-path bench's). At 200k packets/s
/// a pass takes 0.3 s; the wait gives up after `SWEEP_LIMIT`.
const WARM_UP: Duration = Duration::from_millis(200);
const SWEEP_LIMIT: Duration = Duration::from_secs(5);
/// ...and lasts this long: 17 runs per size and repetition fit 5 minutes
/// (261 s on 2026-12-08).
pub const WINDOW: Duration = Duration::from_millis(1000);
/// trafgen pins its one process to CPU 0; the rest keeps off it.
const SENDER_CPU: usize = 0;
const BENCH_CPU: usize = 1;
/// The daemon's own default drift-repair period.
const RESYNC_MS: u64 = 2000;
/// How long the daemon may take to put a rule set in force: 10,000 rules
/// took 3 s on a quiet machine and over 20 s on a loaded one.
const IN_FORCE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    None,
    EmptyTc,
    EmptyTcPass,
    EmptyTcRedirect,
    Palisade,
    PalisadeRedirect,
    PalisadeXdp,
    NftLinear,
    NftSet,
    IptLinear,
    IptSet,
}

pub const PEERS: [Peer; 11] = [
    Peer::None,
    Peer::EmptyTc,
    Peer::EmptyTcPass,
    Peer::EmptyTcRedirect,
    Peer::Palisade,
    Peer::PalisadeRedirect,
    Peer::PalisadeXdp,
    Peer::NftLinear,
    Peer::NftSet,
    Peer::IptLinear,
    Peer::IptSet,
];

/// Palisade's three set-ups (TC, TC with the redirect after it, XDP), in
/// the order they run: they share one daemon start, which the XDP one
/// takes down.
const PALISADE: &[Peer] = &[Peer::Palisade, Peer::PalisadeRedirect, Peer::PalisadeXdp];

/// What runs together, in this order; the groups' order rotates.
const GROUPS: [&[Peer]; 9] = [
    &[Peer::None],
    &[Peer::EmptyTc],
    &[Peer::EmptyTcPass],
    &[Peer::EmptyTcRedirect],
    PALISADE,
    &[Peer::NftLinear],
    &[Peer::NftSet],
    &[Peer::IptLinear],
    &[Peer::IptSet],
];

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::EmptyTc => "empty-tc",
            Self::EmptyTcPass => "empty-tc-pass",
            Self::EmptyTcRedirect => "empty-tc-redirect",
            Self::Palisade => "palisade",
            Self::PalisadeRedirect => "palisade-redirect",
            Self::PalisadeXdp => "palisade-xdp",
            Self::NftLinear => "nft-linear",
            Self::NftSet => "nft-set",
            Self::IptLinear => "iptables-linear",
            Self::IptSet => "iptables-ipset",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::None => "nothing attached",
            Self::EmptyTc => {
                "empty TC program returning TC_ACT_SHOT (TCX ingress of the sender's veth)"
            }
            Self::EmptyTcPass => {
                "two empty TC programs returning TC_ACT_UNSPEC (no verdict, as Palisade's passing packets), where Palisade's run (TCX ingress of the sender's veth, egress of the receiver's)"
            }
            Self::EmptyTcRedirect => {
                "one TC program that does nothing but hand every packet straight to the receiver's namespace (bpf_redirect_peer, TCX ingress of the sender's veth), past the bridge and the receiver's veth: the floor of an enforcer that takes a same-node flow off the CNI's path, as Cilium's host routing does"
            }
            Self::Palisade => "Palisade, the daemon: TC on both sides of each pod's veth",
            Self::PalisadeRedirect => {
                "Palisade's sending end, then empty-tc-redirect's program after it on the sender's veth: no design, a bound: what a design that ran Palisade's sending-end program on a same-node flow and then took it off the bridge could deliver at most, the receiving end's work left out"
            }
            Self::PalisadeXdp => {
                "Palisade, the daemon's maps, the XDP pod-egress program (native) instead of TC on the sender's veth"
            }
            Self::NftLinear => "nftables, bridge family, forward hook: one rule per pair",
            Self::NftSet => "nftables, bridge family, forward hook: one set of (address . port)",
            Self::IptLinear => {
                "iptables-legacy FORWARD via br_netfilter (physdev): one rule per pair"
            }
            Self::IptSet => {
                "iptables-legacy FORWARD via br_netfilter (physdev): one ipset hash:ip,port"
            }
        }
    }

    /// One of Palisade's set-ups, whose conntrack each run starts empty.
    fn is_palisade(self) -> bool {
        PALISADE.contains(&self)
    }

    /// Nothing drops without an enforcer; the empty programs pass nothing,
    /// or everything.
    pub fn cases(self) -> &'static [Case] {
        match self {
            Self::None | Self::EmptyTcPass | Self::EmptyTcRedirect | Self::PalisadeRedirect => {
                &[Case::Allow]
            }
            Self::EmptyTc => &[Case::Deny],
            _ => &[Case::Deny, Case::Allow],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    Deny,
    Allow,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// Packets per second, by (enforcer, case, N), one per repetition.
pub type Results = HashMap<(Peer, Case, usize), Vec<f64>>;

/// The lab, the daemon and what each enforcer holds while it enforces.
struct Bench {
    lab: BridgeLab,
    bin: PathBuf,
    dir: PathBuf,
    pins: PinDir,
    features: Features,
    daemon: Option<Enforcer>,
    daemon_running: bool,
    /// Palisade's objects loaded by the bench on the daemon's pins, for the
    /// XDP pod-egress attach (the daemon attaches TC only).
    xdp: Option<Loaded>,
    empty_tc: OwnedFd,
    empty_link: Option<OwnedFd>,
    empty_pass: OwnedFd,
    /// The sender's and the receiver's links of `empty_pass`.
    empty_pass_links: Vec<OwnedFd>,
    empty_redirect: OwnedFd,
    empty_redirect_link: Option<OwnedFd>,
    sender_if: String,
    sender_ifindex: u32,
    receiver_ifindex: u32,
    receiver: Ipv4Addr,
    sender: Ipv4Addr,
    /// trafgen configurations by case.
    flood: HashMap<Case, PathBuf>,
}

/// Runs `program args` in `ns` with `stdin`, failing with its stderr.
fn run_in(ns: &Netns, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.spawn_inside(&mut cmd)?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {program} (scripts/setup.sh installs it)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MAC address of `eth0` in `ns`.
fn mac(ns: &Netns) -> anyhow::Result<String> {
    let out = run_in(ns, "ip", &["-o", "link", "show", "eth0"], None)?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in {out}"))
}

/// The rx packets of `iface` in a namespace's /proc/net/dev.
fn link_rx(dev: &str, iface: &str) -> anyhow::Result<u64> {
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{iface}:")))
        .with_context(|| format!("no {iface} in /proc/net/dev"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(f.len() >= 16, "short /proc/net/dev line for {iface}");
    Ok(f[1])
}

/// `iface`'s rx packets in `ns`, and when they were read (the middle of
/// the read: the switch into `ns` takes a thread's start).
fn rx_packets(ns: &Netns, iface: &str) -> anyhow::Result<(u64, Instant)> {
    let before = Instant::now();
    let dev = ns.run(|| fs::read_to_string("/proc/thread-self/net/dev"))??;
    let at = before + (Instant::now() - before) / 2;
    Ok((link_rx(&dev, iface)?, at))
}

/// Keeps this thread, and what it starts later, to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// Stops trafgen and the worker it forks. The worker is what sends; it is
/// in the process group trafgen leads (`process_group(0)` in `flood`), so
/// the signal goes to the group: one sent to trafgen alone left the worker
/// flooding through every later measurement.
fn interrupt(child: &mut Child) {
    let group = -(child.id() as i32);
    // SAFETY: kill(2) on the process group our own child leads; `wait` has
    // not reaped the leader, so the group id is not reused.
    unsafe {
        libc::kill(group, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: as above; the leader, exited or not, is reaped only below.
    unsafe {
        libc::kill(group, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// One measurement: what the counter counted per second, and what the
/// sender put into its veth per second meanwhile.
pub struct Sample {
    pub pps: f64,
    pub sent: f64,
}

impl Bench {
    fn new(bin: &Path) -> anyhow::Result<Self> {
        let features = Features::probe();
        anyhow::ensure!(
            features.tcx,
            "the empty TC program attaches through TCX (Linux 6.6+), which this kernel lacks"
        );
        let lab = BridgeLab::new(2)?;
        let (sender, receiver) = (lab.pods[0].ip, lab.pods[1].ip);
        let (sender_if, receiver_if) = (lab.pods[0].host_if.clone(), lab.pods[1].host_if.clone());
        let dir = std::env::temp_dir().join(format!("palisade-peers-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let pins = PinDir::new(format!(
            "{}/palisade-peers-{}",
            palisade::paths::BPFFS,
            std::process::id()
        ));
        let sender_ifindex = lab.node.run(|| ifindex(&sender_if))??;
        let receiver_ifindex = lab.node.run(|| ifindex(&receiver_if))??;
        // The bridge learns nothing from a flood nobody answers: both pods'
        // ports are fixed, so no frame is ever flooded to the node.
        let (smac, rmac) = (mac(&lab.pods[0].netns)?, mac(&lab.pods[1].netns)?);
        for (m, port) in [(&smac, &sender_if), (&rmac, &receiver_if)] {
            run_in(
                &lab.node,
                "bridge",
                &["fdb", "replace", m, "dev", port, "master", "static"],
                None,
            )?;
        }
        // Kubernetes nodes have bridge-nf-call-iptables on; here it is on
        // only while an iptables enforcer needs it, so that the others'
        // bridged packets skip the IP hooks.
        lab.node.sysctl("bridge/bridge-nf-call-iptables", "0")?;
        let mut flood = HashMap::new();
        for (case, port) in [(Case::Allow, rules::PORT), (Case::Deny, rules::DENIED_PORT)] {
            let path = dir.join(format!("{}.trafgen", case.name()));
            fs::write(&path, rules::trafgen(&smac, &rmac, sender, receiver, port))?;
            flood.insert(case, path);
        }
        Ok(Self {
            empty_tc: raw::empty_program(raw::SCHED_CLS, raw::TC_ACT_SHOT)?,
            empty_pass: raw::empty_program(raw::SCHED_CLS, raw::TC_ACT_UNSPEC)?,
            empty_pass_links: Vec::new(),
            empty_redirect: raw::redirect_peer_program(receiver_ifindex)?,
            empty_redirect_link: None,
            lab,
            bin: bin.to_owned(),
            dir,
            pins,
            features,
            daemon: None,
            daemon_running: false,
            xdp: None,
            empty_link: None,
            sender_if,
            sender_ifindex,
            receiver_ifindex,
            receiver,
            sender,
            flood,
        })
    }

    fn node(&self, program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        run_in(&self.lab.node, program, args, stdin)
    }

    /// The daemon with the rule set for `n` in force, TC on both veths.
    fn palisade_up(&mut self, n: usize) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let policy = rules::network_policy(&rules::peers(n, self.receiver));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match &mut self.daemon {
            Some(d) => {
                // The new revision first: the daemon starts on it.
                d.write("policy.yaml", &policy)?;
                let revision = d.commit()?;
                d.restart(&self.bin, &self.lab.node)?;
                runtime.block_on(d.wait(revision, IN_FORCE_LIMIT))?;
            }
            None => {
                // TCX links at once: the datapath a daemon settles on once
                // idle (by default a new veth is on clsact filters until
                // then), and the same in every run, whatever the timing.
                let args = DaemonArgs {
                    resync_ms: RESYNC_MS,
                    extra: vec!["--tc-links-only".into()],
                    ..DaemonArgs::default()
                };
                let mut d = Enforcer::start_with(
                    &self.bin,
                    &self.lab.node,
                    &self.dir.join("daemon"),
                    self.pins.base(),
                    args,
                )?;
                d.write("cluster.yaml", &rules::cluster(self.sender, self.receiver))?;
                d.write("policy.yaml", &policy)?;
                let revision = d.commit()?;
                runtime.block_on(d.wait(revision, IN_FORCE_LIMIT))?;
                self.daemon = Some(d);
            }
        }
        self.daemon_running = true;
        Ok(start.elapsed())
    }

    /// No Palisade program left attached; maps stay for the next start.
    fn palisade_down(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &mut self.daemon {
            d.stop();
        }
        self.daemon_running = false;
        attach::unpin_links(&self.pins)?;
        // Filters too, should any be there (a kernel without TCX).
        for ifindex in [self.sender_ifindex, self.receiver_ifindex] {
            self.lab.node.run(|| attach::detach_clsact(ifindex))??;
        }
        Ok(())
    }

    /// The XDP pod-egress program on the sender's veth and its TC egress
    /// program gone (`palisade load --xdp-pod` does the same by hand).
    fn xdp_up(&mut self) -> anyhow::Result<()> {
        if self.xdp.is_none() {
            self.xdp = Some(loader::load_all(&self.pins, &self.features)?);
        }
        let (pins, index) = (&self.pins, self.sender_ifindex);
        let loaded = self.xdp.as_mut().context("xdp objects")?;
        self.lab
            .node
            .run(|| attach::attach_xdp_from_pod(&mut loaded.xdp, pins, index, XdpMode::Driver))??;
        fs::remove_file(
            self.pins
                .link(&format!("tc-from-pod-{}", self.sender_ifindex)),
        )
        .context("detaching TC from the sender's veth")?;
        Ok(())
    }

    /// Palisade's conntrack emptied, so that each run starts from the same
    /// state: an allow run would otherwise find the previous one's flows
    /// (the same 64k), and a deny run's lookups, which all miss, would walk
    /// buckets that hold whatever the runs before it left, so its figure
    /// would depend on the order the enforcers rotate through.
    fn palisade_forget_flows(&self) -> anyhow::Result<()> {
        let map = Map::from_map_data(MapData::from_pin(self.pins.map(maps::CT4))?)?;
        let mut ct: BpfHash<MapData, Ct4Key, CtValue> = BpfHash::try_from(map)?;
        let keys: Vec<Ct4Key> = ct.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = ct.remove(&k);
        }
        Ok(())
    }

    fn palisade_drops(&self) -> anyhow::Result<u64> {
        let map = Map::from_map_data(MapData::from_pin(self.pins.map(maps::TC_STATS))?)?;
        let stats: PerCpuArray<MapData, Counter> = PerCpuArray::try_from(map)?;
        let mut sum = 0;
        for d in 0..direction::COUNT {
            for r in (0..reason::COUNT).filter(|&r| reason::is_drop(r)) {
                sum += stats
                    .get(&stat_index(d, r), 0)?
                    .iter()
                    .map(|c| c.events)
                    .sum::<u64>();
            }
        }
        Ok(sum)
    }

    fn nft_drops(&self) -> anyhow::Result<u64> {
        let out = self.node(
            "nft",
            &[
                "list",
                "counter",
                "bridge",
                rules::NFT_TABLE,
                rules::NFT_COUNTER,
            ],
            None,
        )?;
        let packets = out
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .with_context(|| format!("no packets in {out}"))?;
        Ok(packets.parse()?)
    }

    fn iptables_drops(&self) -> anyhow::Result<u64> {
        let out = self.node(
            "iptables-legacy",
            &["-w", "-t", "filter", "-vxnL", rules::IPT_DROP],
            None,
        )?;
        let line = out
            .lines()
            .find(|l| l.contains("DROP") && !l.starts_with("Chain"))
            .with_context(|| format!("no DROP rule in {out}"))?;
        Ok(line.split_whitespace().next().context("packets")?.parse()?)
    }

    fn apply(&mut self, peer: Peer, n: usize) -> anyhow::Result<()> {
        let peers = rules::peers(n, self.receiver);
        match peer {
            Peer::None => {}
            Peer::EmptyTc => {
                let (prog, index) = (self.empty_tc.as_fd(), self.sender_ifindex);
                self.empty_link = Some(self.lab.node.run(|| raw::tcx_attach(prog, index))??);
            }
            Peer::EmptyTcPass => {
                let prog = self.empty_pass.as_fd();
                let (sender, receiver) = (self.sender_ifindex, self.receiver_ifindex);
                self.empty_pass_links = self.lab.node.run(|| {
                    Ok::<_, std::io::Error>(vec![
                        raw::tcx_attach(prog, sender)?,
                        raw::tcx_attach_egress(prog, receiver)?,
                    ])
                })??;
            }
            Peer::EmptyTcRedirect => self.redirect_up()?,
            Peer::Palisade => {
                let took = self.palisade_up(n)?;
                let status = self.daemon.as_ref().context("daemon")?.status()?;
                println!(
                    "    palisade: daemon started, {n} rules in force in {:.1} s; endpoints {}, quarantined {}, not enforced {}",
                    took.as_secs_f64(),
                    status["endpoints"],
                    status["quarantined"],
                    status["not_enforced"]
                );
            }
            Peer::PalisadeRedirect => {
                if !self.daemon_running {
                    self.palisade_up(n)?;
                }
                // TCX runs a hook's programs in the order they were
                // attached: Palisade's first, then this one, which sees
                // only what Palisade passed.
                self.redirect_up()?;
            }
            Peer::PalisadeXdp => {
                if !self.daemon_running {
                    self.palisade_up(n)?;
                }
                self.xdp_up()?;
            }
            Peer::NftLinear | Peer::NftSet => {
                let text = rules::nft(&peers, &self.sender_if, peer == Peer::NftSet);
                self.node("nft", &["-f", "-"], Some(&text))?;
            }
            Peer::IptLinear | Peer::IptSet => {
                self.lab
                    .node
                    .sysctl("bridge/bridge-nf-call-iptables", "1")?;
                if peer == Peer::IptSet {
                    self.node("ipset", &["restore"], Some(&rules::ipset(&peers)))?;
                }
                let text = rules::iptables(&peers, &self.sender_if, peer == Peer::IptSet);
                self.node("iptables-legacy-restore", &["-w"], Some(&text))?;
            }
        }
        Ok(())
    }

    /// The redirect program on the sender's veth, after whatever is there.
    fn redirect_up(&mut self) -> anyhow::Result<()> {
        let (prog, index) = (self.empty_redirect.as_fd(), self.sender_ifindex);
        self.empty_redirect_link = Some(self.lab.node.run(|| raw::tcx_attach(prog, index))??);
        Ok(())
    }

    fn clear(&mut self, peer: Peer) -> anyhow::Result<()> {
        match peer {
            Peer::None | Peer::Palisade => {}
            Peer::EmptyTc => self.empty_link = None,
            Peer::EmptyTcPass => self.empty_pass_links.clear(),
            Peer::EmptyTcRedirect | Peer::PalisadeRedirect => self.empty_redirect_link = None,
            Peer::PalisadeXdp => self.palisade_down()?,
            Peer::NftLinear | Peer::NftSet => {
                self.node(
                    "nft",
                    &["delete", "table", "bridge", rules::NFT_TABLE],
                    None,
                )?;
            }
            Peer::IptLinear | Peer::IptSet => {
                self.node(
                    "iptables-legacy-restore",
                    &["-w"],
                    Some(rules::IPTABLES_EMPTY),
                )?;
                if peer == Peer::IptSet {
                    self.node("ipset", &["destroy", rules::IPSET], None)?;
                }
                self.lab
                    .node
                    .sysctl("bridge/bridge-nf-call-iptables", "0")?;
            }
        }
        Ok(())
    }

    /// What the sender put into its veth (the host end's rx packets) and
    /// what reached the receiver (its own end's rx packets: a packet handed
    /// into its namespace past the bridge, as `empty-tc-redirect` hands
    /// them, never leaves the host end), each with when it was read.
    fn links(&self) -> anyhow::Result<[(u64, Instant); 2]> {
        Ok([
            rx_packets(&self.lab.node, &self.sender_if)?,
            rx_packets(&self.lab.pods[1].netns, "eth0")?,
        ])
    }

    /// The counter a case is judged by and when it was read, then what the
    /// sender had put into its veth and when that was read. A count read by
    /// a command (nft, iptables) is taken when the command ends: starting
    /// it takes most of its time, and on a busy machine a variable time.
    fn sample(&self, peer: Peer, case: Case) -> anyhow::Result<[(u64, Instant); 2]> {
        let before = Instant::now();
        let counted = match (case, peer) {
            (Case::Allow, _)
            | (
                Case::Deny,
                Peer::None | Peer::EmptyTc | Peer::EmptyTcPass | Peer::EmptyTcRedirect,
            ) => None,
            (Case::Deny, Peer::Palisade | Peer::PalisadeRedirect | Peer::PalisadeXdp) => {
                let c = self.palisade_drops()?;
                Some((c, before + (Instant::now() - before) / 2))
            }
            (Case::Deny, Peer::NftLinear | Peer::NftSet) => {
                Some((self.nft_drops()?, Instant::now()))
            }
            (Case::Deny, Peer::IptLinear | Peer::IptSet) => {
                Some((self.iptables_drops()?, Instant::now()))
            }
        };
        let [sent, delivered] = self.links()?;
        let counted = counted.unwrap_or(match case {
            Case::Allow => delivered,
            // The empty program counts nothing: every packet the sender put
            // into its veth reached it and was dropped.
            Case::Deny => sent,
        });
        Ok([counted, sent])
    }

    fn flood(&self, case: Case) -> anyhow::Result<Child> {
        let config = &self.flood[&case];
        let log = fs::File::create(self.dir.join("trafgen.log"))?;
        let mut cmd = Command::new("trafgen");
        // One process (pinned by trafgen to CPU 0), the kernel's socket
        // memory and IRQ affinities left alone, no CPU statistics. `-t 0`:
        // sendto(2), not the TX_RING, whose frames carry everything past
        // the Ethernet header in page fragments (zero copy); a pod's
        // sockets build linear packets, as sendto does.
        cmd.arg("-i")
            .arg(config)
            .args([
                "-o",
                "eth0",
                "-P",
                "1",
                "-t",
                "0",
                "--no-sock-mem",
                "-Q",
                "-C",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        self.lab.pods[0].netns.spawn_inside(&mut cmd)?;
        cmd.spawn()
            .context("starting trafgen (netsniff-ng; scripts/setup.sh installs it)")
    }

    fn measure(&self, peer: Peer, case: Case) -> anyhow::Result<Sample> {
        if peer.is_palisade() {
            self.palisade_forget_flows()?;
        }
        let [(sent_before, _), _] = self.links()?;
        let mut trafgen = self.flood(case)?;
        let result = (|| {
            std::thread::sleep(WARM_UP);
            if peer.is_palisade() {
                let limit = Instant::now() + SWEEP_LIMIT;
                while self.links()?[0].0.saturating_sub(sent_before) < rules::SOURCE_PORTS {
                    if Instant::now() > limit {
                        println!(
                            "    (the sender did not go through every source port within {} s)",
                            SWEEP_LIMIT.as_secs()
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if let Some(status) = trafgen.try_wait()? {
                let log = fs::read_to_string(self.dir.join("trafgen.log")).unwrap_or_default();
                bail!("trafgen exited ({status}): {}", log.trim());
            }
            let first = self.sample(peer, case)?;
            std::thread::sleep(WINDOW);
            let last = self.sample(peer, case)?;
            let rate = |i: usize| {
                let ((c0, t0), (c1, t1)) = (first[i], last[i]);
                c1.saturating_sub(c0) as f64 / (t1 - t0).as_secs_f64()
            };
            Ok(Sample {
                pps: rate(0),
                sent: rate(1),
            })
        })();
        interrupt(&mut trafgen);
        result
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.empty_link = None;
        self.empty_pass_links.clear();
        self.empty_redirect_link = None;
        // The enforcer removes the pins (links and maps) when dropped.
        self.daemon = None;
        self.xdp = None;
        let _ = fs::remove_dir_all(self.pins.base());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn kpps(x: f64) -> String {
    format!("{:.1}k", x / 1e3)
}

/// The enforcers named in `names` (comma-separated, as `Peer::name`).
pub fn parse_only(names: &str) -> anyhow::Result<Vec<Peer>> {
    names
        .split(',')
        .map(|n| {
            PEERS
                .iter()
                .copied()
                .find(|p| p.name() == n.trim())
                .with_context(|| {
                    let known: Vec<_> = PEERS.iter().map(|p| p.name()).collect();
                    format!("no enforcer {n:?}; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// `quick`: one repetition at 10 and 1,000 rules, nothing written: for
/// trying the set-up; `only`, with it, keeps to those enforcers.
pub fn report(bin: &Path, out: &Path, quick: bool, only: Option<&[Peer]>) -> anyhow::Result<()> {
    let started = Instant::now();
    let machine = report::Machine::read();
    anyhow::ensure!(
        machine.cpus > BENCH_CPU,
        "needs two CPUs: the sender's ({SENDER_CPU}) and the bench's ({BENCH_CPU})"
    );
    pin_to(BENCH_CPU)?;
    println!(
        "peers: whole-path packet rate, sender pinned to CPU {SENDER_CPU}, {REPS} repetitions of {:.1} s per enforcer, case and size; {}",
        WINDOW.as_secs_f64(),
        machine.summary()
    );
    let mut bench = Bench::new(bin)?;
    let mut results: Results = HashMap::new();
    let (reps, sizes): (usize, &[usize]) = if quick {
        (1, &[10, 1_000])
    } else {
        (REPS, &SIZES)
    };
    for rep in 0..reps {
        for (size_at, &n) in sizes.iter().enumerate() {
            let first = (rep * 3 + size_at) % GROUPS.len();
            for group in GROUPS.iter().cycle().skip(first).take(GROUPS.len()) {
                for &peer in group.iter() {
                    if only.is_some_and(|o| !o.contains(&peer)) {
                        continue;
                    }
                    bench.apply(peer, n)?;
                    for &case in peer.cases() {
                        let s = bench.measure(peer, case)?;
                        println!(
                            "  rep {}/{REPS} N={n:<5} {:<15} {:<5} {:>8} pps (sender {:>8} pps)",
                            rep + 1,
                            peer.name(),
                            case.name(),
                            kpps(s.pps),
                            kpps(s.sent)
                        );
                        results.entry((peer, case, n)).or_default().push(s.pps);
                    }
                    bench.clear(peer)?;
                    // The daemon goes down after the last of Palisade's
                    // set-ups that runs, unless that one took it down.
                    let last = only.and_then(|o| PALISADE.iter().rev().find(|p| o.contains(p)));
                    if last == Some(&peer) && peer != Peer::PalisadeXdp {
                        bench.palisade_down()?;
                    }
                }
            }
        }
    }
    drop(bench);
    let machine = machine.finish(started);
    let summary = report::Summary::new(&results);
    if quick {
        println!("{}", summary.goals_text());
        return Ok(());
    }
    fs::create_dir_all(out)?;
    let table = report::markdown(&results, &summary, &machine);
    fs::write(out.join("peers.md"), &table)?;
    report::svg(&results, &machine, &out.join("peers.svg"))?;
    println!();
    println!("{}", summary.goals_text());
    println!(
        "written: {}, {} ({:.0} s)",
        out.join("peers.md").display(),
        out.join("peers.svg").display(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary.last_line());
    Ok(())
}
