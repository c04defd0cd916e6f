//! A million random and mutated frames through the TC and XDP programs with
//! BPF_PROG_TEST_RUN (issue 16): every frame is counted under exactly one
//! reason, none passes without a reason that allows it, and the verdict and
//! reason agree with a model of the datapath (`frames/model.rs`: the frame
//! parsed as documented, conntrack and fragments as documented, and the
//! compiler's own model of the policy lookup for the verdict).
//!
//! The policy state is fixed and representative: the standard model's pods
//! with both address families, three of them endpoints on this "node"
//! (the loopback device and two veths of a namespace of the test's own),
//! NetworkPolicy and Palisade's kinds (allows, denies, priorities, tiers,
//! audit, ports, ranges, named ports, CIDR peers with exceptions), the
//! prefilter's pod denies and a node deny list, compiled and written by the
//! syncer's map writes. Now and then a second policy set (rules changed, a
//! pod relabelled) replaces it while flows are tracked, so tracked flows are
//! judged again; otherwise conntrack is emptied every few thousand frames
//! (500 in the guest), so that no flow nears its shortest timeout
//! (10 s), which the model does not follow.
//!
//! The frames come from a seeded generator (`frames/generate.rs`). The seed
//! is printed; `PALISADE_FRAMES_SEED` replays a run, `PALISADE_FRAMES` sets
//! the number of frames (default 1,000,000; 50,000 in the QEMU guest, where
//! a frame takes about 60 times as long), `PALISADE_FRAMES_PHASE` the frames
//! between emptyings of conntrack (a replay needs the same), and
//! `PALISADE_FRAMES_BATCH` how many frames each program direction runs
//! between two readings of its counters (default 4: a reading costs about as
//! much as two test runs; a mismatch names the frames of the batch, and the
//! same seed and phase with a batch of 1 name the frame).

#[path = "frames/generate.rs"]
mod generate;
#[path = "frames/model.rs"]
mod model;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use ebpf_common::{
    datapath::{Ct4Key, Ct6Key, CtValue, FragKey, FragValue},
    maps, reason,
};
use generate::{Case, Generator, Kind, Universe};
use ipnet::IpNet;
use model::{Class, Endpoint, Model, Policy, Verdict};
use palisade::{
    compile::{compile, desired::Desired},
    model::{Snapshot, parse::parse_documents},
    sync::apply_maps,
};
use palisade_lab::{netns::Netns, topology::index_of};
use palisade_tests::{
    datapath_harness::{Counts, Harness, Hook, LO, Ran, is_side_count},
    in_guest, pinned, unique,
};
use rtnetlink::LinkVeth;

/// Frames between two emptyings of conntrack or policy changes (every
/// fourth is a change, which keeps the flows a second phase): flows must
/// stay far younger than conntrack's shortest timeout (10 s, a closing TCP
/// flow), which the model does not follow. Natively a phase takes about
/// 0.1 s; in the guest, where a frame takes about 2 ms, 500 frames.
/// `PALISADE_FRAMES_PHASE` sets it.
fn default_phase() -> usize {
    if in_guest() { 500 } else { 5_000 }
}

/// Frames a program direction runs between two readings of its counters.
const DEFAULT_BATCH: usize = 4;

/// The longest conntrack may hold flows before the run cannot vouch for
/// the model any more.
const YOUNG: Duration = Duration::from_secs(8);

/// The policies of the fixed state; `{v2}` marks what the second set
/// changes.
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}]
    - from: [{namespaceSelector: {matchLabels: {ns: "y"}}}]
      ports: [{port: 8000, endPort: 8099}, {protocol: SCTP, port: 80}]
    - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
      ports: [{protocol: UDP, port: 53}, {port: 1024, endPort: 2047}]
    - from: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}}]
    - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}]
  egress:
    - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
    - to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}]
      ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 443}]
    - to: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{protocol: TCP, port: 1024, endPort: 2047}]
---
apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: x-a-denies, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  priority: 100
  ingress:
    - {action: Deny, from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 22}, {port: 80}]}
    - {action: Deny, from: [{namespaceSelector: {matchLabels: {ns: "y"}}, podSelector: {matchLabels: {pod: b}}}]}
    - {action: Deny, from: [{ipBlock: {cidr: 192.0.2.0/28}}], ports: [{protocol: UDP, port: 53}]}
---
apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: x-a-audit, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  mode: Audit
  priority: 50
  ingress:
    - {action: Deny, from: [{namespaceSelector: {matchLabels: {ns: "y"}}}], ports: [{port: 8080, endPort: 8089}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{namespaceSelector: {}}]
    - ports: [{protocol: TCP, port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-c-egress, namespace: "y"}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
    - ports: [{protocol: UDP, port: 53}]
    - to: [{namespaceSelector: {matchLabels: {ns: x}}}]
      ports: [{port: 80}, {port: 1024, endPort: 2047}]
---
apiVersion: palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: admin}
spec:
  priority: 5
  subject: {namespaceSelector: {}}
  ingress:
    - {action: Deny, from: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{protocol: TCP, port: 1, endPort: 65535}]}
    - {action: Pass, from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 5432}]}
  egress:
    - {action: Deny, to: [{ipBlock: {cidr: 169.254.169.254/32}}]}
---
apiVersion: palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: baseline}
spec:
  tier: Baseline
  subject: {namespaceSelector: {matchLabels: {ns: "y"}}}
  ingress:
    - {action: Deny, from: [{namespaceSelector: {matchLabels: {ns: z}}}]}
"#;

/// The second policy set: x/a no longer admits b on 80 but on 8080, the
/// audit policy enforces, and y/c's egress is no longer restricted.
fn policies_v2() -> String {
    POLICIES
        .replace(
            "ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}]",
            "ports: [{port: 8080}, {port: serve-81-udp, protocol: UDP}]",
        )
        .replace("mode: Audit", "mode: Enforce")
        .replace("policyTypes: [Egress]", "policyTypes: [Ingress]")
}

/// The node deny list of the prefilter.
const NODE_DENIES: [&str; 4] = [
    "203.0.113.0/24",
    "198.51.100.7/32",
    "2001:db8:dead::/48",
    "2001:db8:beef::1/128",
];

/// Pods placed on this node: x/a on the loopback device, x/b and y/c on
/// the two ends of a veth pair.
const PLACED: [&str; 3] = ["x/a", "x/b", "y/c"];

/// The standard model with an IPv6 address beside each pod's IPv4 one but
/// y/c's (single-stack: its IPv6 packets may come from no routable
/// source), a second IPv4 address for x/b (which the endpoint does not
/// hold: it is written to the prefix map), and `policies`; with `relabel`,
/// x/c is labelled `pod: b` (so it becomes a peer the rules for b admit).
fn snapshot(policies: &str, relabel: bool) -> anyhow::Result<Snapshot> {
    let mut s = palisade::model::standard::snapshot();
    for (n, pod) in s.pods.iter_mut().enumerate() {
        let pod = std::sync::Arc::make_mut(pod);
        if pod.key() != "y/c" {
            pod.ips.push(format!("fd00:10:244::{:x}", n + 1).parse()?);
        }
        if pod.key() == "x/b" {
            pod.ips.push("10.244.7.2".parse()?);
        }
        if relabel && pod.key() == "x/c" {
            pod.labels.insert("pod".into(), "b".into());
        }
    }
    for doc in parse_documents(policies, "frames.yaml", "default") {
        s.policies.push(doc?.policy().into());
    }
    Ok(s)
}

/// Compiles `s`, writes it through the syncer's map writes and returns the
/// model's view of what is now in force.
fn apply(
    h: &mut Harness,
    s: &Snapshot,
    placed: &BTreeMap<String, u32>,
    node_denies: &[IpNet],
) -> anyhow::Result<Policy> {
    let compiled = compile(s);
    // Every other pod bridged, its MAC the generator's (zero) one; the
    // rest routed, their MACs unchecked.
    let macs: BTreeMap<String, [u8; 6]> = placed
        .keys()
        .step_by(2)
        .map(|k| (k.clone(), [0; 6]))
        .collect();
    let desired = Desired::on_node(&compiled, placed, &[])
        .with_sources(s.pods.iter().map(|p| &**p), true)
        .with_macs(&macs)
        .with_pod_denies(s)
        .with_node_denies(node_denies);
    let report = apply_maps(&mut h.maps, &desired)?;
    if !report.errors.is_empty() {
        bail!("the syncer failed: {:?}", report.errors);
    }
    let node = [model::NODE_LINK_LOCAL].into();
    if let Some(e) = h.maps.set_node_addresses(&node).into_iter().next() {
        bail!("the node's link-local address: {e}");
    }
    let endpoints = desired
        .endpoints
        .iter()
        .map(|(name, p)| {
            Rc::new(Endpoint {
                ifindex: p.ifindex,
                id: p.endpoint,
                policy: p.policy.clone(),
                addresses: s
                    .pods
                    .iter()
                    .find(|pod| pod.key() == *name)
                    .map(|pod| pod.ips.clone())
                    .unwrap_or_default(),
                mac: p.sources.mac,
            })
        })
        .collect();
    let pod_denies = desired.pod_denies.clone().unwrap_or_default();
    Ok(Policy {
        endpoints,
        pod_denies,
        node_denies: node_denies.to_vec(),
        compiled,
    })
}

fn epoch(h: &Harness) -> anyhow::Result<u32> {
    let array: Array<MapData, u32> = pinned(&h.t.pins, maps::EPOCH)?;
    Ok(array.get(&0, 0)?)
}

/// Empties a pinned hash map; returns how many entries it held.
fn empty<K: aya::Pod, V: aya::Pod>(h: &Harness, name: &str) -> anyhow::Result<usize> {
    let mut map: BpfHashMap<MapData, K, V> = pinned(&h.t.pins, name)?;
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for k in &keys {
        map.remove(k)?;
    }
    Ok(keys.len())
}

/// Empties a conntrack map; returns the ends it tracked, as the model
/// counts flows (one per flow and local end).
fn empty_ct<K: aya::Pod>(h: &Harness, name: &str) -> anyhow::Result<usize> {
    let mut map: BpfHashMap<MapData, K, CtValue> = pinned(&h.t.pins, name)?;
    let entries: Vec<(K, CtValue)> = map.iter().collect::<Result<_, _>>()?;
    for (k, _) in &entries {
        map.remove(k)?;
    }
    Ok(entries
        .iter()
        .flat_map(|(_, v)| v.ends)
        .filter(|e| e.endpoint != 0)
        .count())
}

/// Peers besides the pods: in and out of the CIDR peers and their
/// exceptions, the node deny list, the world, pod addresses no pod has, and
/// IPv4-mapped IPv6 forms of IPv4 peers.
const OTHER_PEERS: &str = "192.0.2.5 192.0.2.77 192.0.2.200 198.51.100.9 198.51.100.7 203.0.113.4 \
    169.254.169.254 8.8.8.8 10.244.0.99 2001:db8::5 2001:db8:1::5 2001:db8:dead::9 2001:db8:beef::1 \
    2606:4700::1111 fd00:10:244::99 ::ffff:10.244.0.2 ::ffff:192.0.2.77 ::ffff:203.0.113.4";

/// The peers frames come from or go to: every pod (the local ones too) and
/// [`OTHER_PEERS`].
fn peers(s: &Snapshot) -> anyhow::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = s.pods.iter().flat_map(|p| p.ips.iter().copied()).collect();
    for a in OTHER_PEERS.split_whitespace() {
        out.push(a.parse()?);
    }
    Ok(out)
}

/// Every entry's first and last port and the ports just outside them.
fn policy_ports(p: &Policy) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    for e in p.endpoints.iter().flat_map(|e| e.policy.entries.iter()) {
        let (first, last) = e.ports;
        ports.extend([first, last, first.saturating_sub(1), last.saturating_add(1)]);
    }
    ports.into_iter().collect()
}

/// What the run saw, for the summary: by program (`Hook::ALL` order),
/// verdict, reason and generator.
#[derive(Default)]
struct Tally {
    frames: usize,
    refused: [usize; 4],
    /// Drops, passes.
    verdicts: [[usize; 2]; 4],
    reasons: [[usize; reason::COUNT as usize]; 4],
    kinds: BTreeMap<Kind, usize>,
    disagreements: usize,
    reports: Vec<String>,
    policy_changes: usize,
    conntrack_emptied: usize,
}

impl Tally {
    fn disagree(&mut self, what: String) {
        self.disagreements += 1;
        if self.reports.len() < 20 {
            self.reports.push(what);
        }
    }
}

fn hook_index(hook: Hook) -> usize {
    Hook::ALL.iter().position(|&h| h == hook).unwrap_or(0)
}

fn hex(f: &[u8]) -> String {
    f.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A frame whose verdict is checked once its batch's counters are read.
struct Pending {
    index: usize,
    case: Case,
    class: Class,
    expected: Verdict,
}

/// The (map, direction) slices of the stats maps the hooks count in: the
/// pods' ingress, the pods' egress (TC and XDP alike), the prefilter.
const SLICES: [Hook; 3] = [Hook::TcIngress, Hook::TcEgress, Hook::Prefilter];

fn slice_of(hook: Hook) -> usize {
    match hook {
        Hook::TcIngress => 0,
        Hook::TcEgress | Hook::XdpEgress => 1,
        Hook::Prefilter => 2,
    }
}

/// The counters of each slice as last read, and the frames run through its
/// programs since.
struct Counters {
    last: [Counts; 3],
    pending: [Vec<Pending>; 3],
    batch: usize,
}

impl Counters {
    fn new(h: &Harness, batch: usize) -> anyhow::Result<Self> {
        let mut last = [[0; reason::COUNT as usize]; 3];
        for (l, hook) in last.iter_mut().zip(SLICES) {
            *l = h.counts(hook)?;
        }
        Ok(Self {
            last,
            pending: Default::default(),
            batch,
        })
    }

    /// A frame run, checked once its slice has a batch of them.
    fn push(&mut self, h: &Harness, p: Pending, tally: &mut Tally) -> anyhow::Result<()> {
        let s = slice_of(p.case.hook);
        self.pending[s].push(p);
        if self.pending[s].len() >= self.batch {
            self.settle(h, s, tally)?;
        }
        Ok(())
    }

    fn settle_all(&mut self, h: &Harness, tally: &mut Tally) -> anyhow::Result<()> {
        for s in 0..SLICES.len() {
            self.settle(h, s, tally)?;
        }
        Ok(())
    }

    /// Checks what slice `s`'s pending frames counted against what the
    /// model expects: one reason per frame, each the expected one (side
    /// counts, which accompany a verdict, aside).
    fn settle(&mut self, h: &Harness, s: usize, tally: &mut Tally) -> anyhow::Result<()> {
        if self.pending[s].is_empty() {
            return Ok(());
        }
        let mut want = [0u64; reason::COUNT as usize];
        for p in &self.pending[s] {
            want[p.expected.reason as usize] += 1;
        }
        let now = h.counts(SLICES[s])?;
        let mut got = [0u64; reason::COUNT as usize];
        for (r, g) in got.iter_mut().enumerate() {
            if !is_side_count(r as u32) {
                *g = now[r] - self.last[s][r];
            }
        }
        self.last[s] = now;
        if got != want {
            self.report(s, &want, &got, tally);
        }
        self.pending[s].clear();
        Ok(())
    }

    fn report(&self, s: usize, want: &Counts, got: &Counts, tally: &mut Tally) {
        let names = |c: &Counts| -> Vec<String> {
            c.iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(r, n)| format!("{}x{n}", reason::name(r as u32)))
                .collect()
        };
        let frames = &self.pending[s];
        if let [p] = &frames[..] {
            tally.disagree(format!(
                "frame {} ({:?}) through {} on ifindex {}: expected {} {}, counted {:?}\n  class {:?}\n  frame {}",
                p.index,
                p.case.kind,
                p.case.hook.name(),
                p.case.ifindex,
                if p.expected.pass { "pass" } else { "drop" },
                reason::name(p.expected.reason),
                names(got),
                p.class,
                hex(&p.case.frame),
            ));
        } else {
            let indexes: Vec<usize> = frames.iter().map(|p| p.index).collect();
            tally.disagree(format!(
                "frames {indexes:?} counted in {} {}: expected {:?}, counted {:?} (PALISADE_FRAMES_BATCH=1 with the same seed and phase names the frame)",
                SLICES[s].stats_map(),
                palisade::observe::stats::direction_name(SLICES[s].direction()),
                names(want),
                names(got)
            ));
        }
    }
}

#[test]
fn random_and_mutated_frames_agree_with_the_model() -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let seed: u64 = match env("PALISADE_FRAMES_SEED") {
        Some(s) => s.parse().context("PALISADE_FRAMES_SEED")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let default_frames = if in_guest() { 50_000 } else { 1_000_000 };
    let total: usize = match env("PALISADE_FRAMES") {
        Some(n) => n.parse().context("PALISADE_FRAMES")?,
        None => default_frames,
    };
    let batch: usize = match env("PALISADE_FRAMES_BATCH") {
        Some(n) => n.parse::<usize>().context("PALISADE_FRAMES_BATCH")?.max(1),
        None => DEFAULT_BATCH,
    };
    let phase: usize = match env("PALISADE_FRAMES_PHASE") {
        Some(n) => n.parse::<usize>().context("PALISADE_FRAMES_PHASE")?.max(1),
        None => default_phase(),
    };
    println!(
        "frames: seed {seed} (PALISADE_FRAMES_SEED={seed} replays it), {total} frames{}, counters read every {batch} frames of a program direction, conntrack emptied or the policy changed every {phase}",
        if in_guest() && env("PALISADE_FRAMES").is_none() {
            " (the QEMU guest's default)"
        } else {
            ""
        }
    );

    // A namespace of the test's own with two veth pairs: three interfaces
    // besides loopback for endpoints, and one that is none.
    let ns = Netns::new(&unique("frames"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ifindexes = runtime.block_on(async {
        let h = ns.netlink()?;
        for (a, b) in [("fr0", "fr1"), ("fr2", "fr3")] {
            h.link()
                .add(LinkVeth::new(a, b).build())
                .execute()
                .await
                .with_context(|| format!("veth {a}"))?;
        }
        let mut out = Vec::new();
        for name in ["fr0", "fr1", "fr2"] {
            out.push(index_of(&h, name).await?);
        }
        anyhow::Ok(out)
    })?;
    let sizes = Sizes {
        total,
        batch,
        phase,
    };
    ns.run(move || run(seed, sizes, &ifindexes))?
}

/// How many frames, how many between counter readings, how many in a phase.
#[derive(Clone, Copy)]
struct Sizes {
    total: usize,
    batch: usize,
    phase: usize,
}

fn run(seed: u64, sizes: Sizes, ifindexes: &[u32]) -> anyhow::Result<()> {
    let Sizes {
        total,
        batch,
        phase,
    } = sizes;
    let started = Instant::now();
    let mut h = Harness::load(&[])?;
    // Every program verified before the first frame: verified on first use,
    // under the guest's TCG each would hold the clock for seconds while
    // conntrack's timeouts run, and flows the model holds could expire.
    for hook in Hook::ALL {
        h.program(hook)?;
    }
    let placed: BTreeMap<String, u32> = PLACED
        .iter()
        .zip([LO, ifindexes[0], ifindexes[1]])
        .map(|(pod, ifindex)| ((*pod).to_owned(), ifindex))
        .collect();
    let node_denies: Vec<IpNet> = NODE_DENIES
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    let v1 = snapshot(POLICIES, false)?;
    let v2 = snapshot(&policies_v2(), true)?;
    let policy = apply(&mut h, &v1, &placed, &node_denies)?;
    let universe = Universe {
        endpoints: policy
            .endpoints
            .iter()
            .map(|e| (e.ifindex, e.addresses.clone()))
            .collect(),
        stranger: ifindexes[2],
        peers: peers(&v1)?,
        ports: policy_ports(&policy),
    };
    let mut model = Model::new(policy, epoch(&h)?);
    let mut generator = Generator::new(seed, universe);
    let mut counters = Counters::new(&h, batch)?;
    let mut tally = Tally::default();
    let mut kinds = [0usize; Kind::ALL.len()];
    let mut on_v2 = false;
    // Since conntrack was last emptied, and the longest that was.
    let mut emptied = Instant::now();
    let mut oldest = Duration::ZERO;

    for index in 0..total {
        if index > 0 && index % phase == 0 {
            counters.settle_all(&h, &mut tally)?;
            oldest = oldest.max(emptied.elapsed());
            if (index / phase) % 4 == 2 {
                // Another policy in force while flows are tracked: each is
                // judged again at its next packet.
                on_v2 = !on_v2;
                let s = if on_v2 { &v2 } else { &v1 };
                let policy = apply(&mut h, s, &placed, &node_denies)?;
                model.replace_policy(policy, epoch(&h)?);
                tally.policy_changes += 1;
            } else {
                let held = empty_ct::<Ct4Key>(&h, maps::CT4)? + empty_ct::<Ct6Key>(&h, maps::CT6)?;
                let frags = empty::<FragKey, FragValue>(&h, maps::FRAGS)?;
                if held != model.flows.len() || frags != model.frags.len() {
                    tally.disagree(format!(
                        "before frame {index}: conntrack held {held} flows and {frags} fragmented datagrams, the model {} and {}",
                        model.flows.len(),
                        model.frags.len()
                    ));
                }
                model.forget_flows();
                tally.conntrack_emptied += 1;
                emptied = Instant::now();
            }
        }
        let case = generator.next(&model);
        let expected = model.run(case.hook, case.ifindex, &case.frame);
        let ran = h.test_run(case.hook, &case.frame, Some(case.ifindex))?;
        tally.frames += 1;
        kinds[case.kind as usize] += 1;
        let at = hook_index(case.hook);
        let (class, expected) = match (expected, ran) {
            (None, Ran::Refused) => {
                tally.refused[at] += 1;
                continue;
            }
            (Some((class, expected)), Ran::Verdict(pass)) => {
                tally.verdicts[at][usize::from(pass)] += 1;
                tally.reasons[at][expected.reason as usize] += 1;
                if pass != expected.pass {
                    tally.disagree(format!(
                        "frame {index} ({:?}) through {} on ifindex {}: expected {} ({}), the program said {}\n  class {class:?}\n  frame {}",
                        case.kind,
                        case.hook.name(),
                        case.ifindex,
                        if expected.pass { "pass" } else { "drop" },
                        reason::name(expected.reason),
                        if pass { "pass" } else { "drop" },
                        hex(&case.frame),
                    ));
                }
                (class, expected)
            }
            (expected, ran) => {
                tally.disagree(format!(
                    "frame {index} through {}: the model expected {}, the kernel {ran:?}\n  frame {}",
                    case.hook.name(),
                    if expected.is_some() { "a run" } else { "a refusal" },
                    hex(&case.frame)
                ));
                continue;
            }
        };
        // The model itself: a pass needs a reason that passes.
        if expected.pass == reason::is_drop(expected.reason) {
            bail!("the model {expected:?} contradicts itself on frame {index}");
        }
        let frame = Pending {
            index,
            case,
            class,
            expected,
        };
        counters.push(&h, frame, &mut tally)?;
    }
    counters.settle_all(&h, &mut tally)?;
    oldest = oldest.max(emptied.elapsed());
    let wall = started.elapsed();
    tally.kinds = Kind::ALL.into_iter().zip(kinds).collect();

    print!("{}", summary(seed, &tally, wall, oldest));
    for r in &tally.reports {
        println!("DISAGREEMENT {r}");
    }
    if tally.disagreements > 0 {
        bail!(
            "{} disagreements between the datapath and the model (seed {seed})",
            tally.disagreements
        );
    }
    if oldest > YOUNG {
        bail!(
            "conntrack held flows for {oldest:?}: its 10 s closing timeout may have expired flows the model still holds (PALISADE_FRAMES_PHASE below {phase} keeps them younger)"
        );
    }
    Ok(())
}

fn summary(seed: u64, t: &Tally, wall: Duration, oldest: Duration) -> String {
    let mut s = String::new();
    let refused: usize = t.refused.iter().sum();
    let _ = writeln!(
        s,
        "frames: {} frames, seed {seed}, {:.1} s wall ({:.1} us/frame); {} policy changes, conntrack emptied {} times, flows held {:.2} s at most",
        t.frames,
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / t.frames.max(1) as f64,
        t.policy_changes,
        t.conntrack_emptied,
        oldest.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  {:<18} {:>9} {:>9} {:>9} {:>9}",
        "program", "frames", "pass", "drop", "refused"
    );
    for (i, hook) in Hook::ALL.into_iter().enumerate() {
        let [drop, pass] = t.verdicts[i];
        let refused = t.refused[i];
        let _ = writeln!(
            s,
            "  {:<18} {:>9} {:>9} {:>9} {:>9}",
            hook.name(),
            pass + drop + refused,
            pass,
            drop,
            refused
        );
    }
    let _ = writeln!(
        s,
        "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "reason", "to_pod", "from_pod", "xdp_pod", "prefilter", "all"
    );
    for r in 0..reason::COUNT as usize {
        let n: Vec<usize> = t.reasons.iter().map(|by| by[r]).collect();
        let all: usize = n.iter().sum();
        if all == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
            reason::name(r as u32),
            n[0],
            n[1],
            n[2],
            n[3],
            all
        );
    }
    let _ = writeln!(
        s,
        "  {:<26} {:>9}",
        "refused by the kernel (too short)", refused
    );
    let kinds: Vec<String> = t.kinds.iter().map(|(k, n)| format!("{k:?} {n}")).collect();
    let _ = writeln!(s, "  generated: {}", kinds.join(", "));
    let _ = writeln!(s, "  disagreements: {}", t.disagreements);
    s
}
