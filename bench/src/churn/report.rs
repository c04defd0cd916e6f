//! The churn bench's figures: percentiles by kind and enforcer,
//! `churn.csv`, `churn.md` and the last line.

use std::{collections::BTreeMap, fmt::Write as _};

use super::model::{KINDS, Kind, Scale};

/// The p-th percentile of `values` by nearest rank (the smallest value
/// with at least p % of the values at or below it): always a measured
/// value, and the p99 of 50 samples is their maximum.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// One timed change.
#[derive(Clone, Debug)]
pub struct Sample {
    pub kind: Kind,
    pub index: usize,
    /// From the change written (for a local pod: from its network being
    /// made) to the status reporting it in force.
    pub palisade_ms: f64,
    /// The daemon's passes in that time, and the last one's own duration.
    pub passes: u64,
    pub pass_ms: f64,
    pub nft_ms: f64,
    pub iptables_ms: f64,
    /// For a local pod: making its namespace and veth, part of each figure
    /// but [`Kind::LocalPodAfterVeth`]'s; Palisade's, then nftables' and
    /// iptables' own pod's.
    pub pod_net_ms: f64,
    pub nft_net_ms: f64,
    pub iptables_net_ms: f64,
    /// For [`Kind::LocalPodAfterVeth`]: from the start of making its
    /// network to the status listing its veth quarantined, before the
    /// clock of its figure starts.
    pub veth_ms: f64,
}

impl Sample {
    /// The part of [`Self::palisade_ms`] that went to making the pod's
    /// network: all of it but for a veth first, timed before the clock.
    fn pod_net_in_figure(&self) -> f64 {
        if self.kind == Kind::LocalPodAfterVeth {
            0.0
        } else {
            self.pod_net_ms
        }
    }
}

/// Time from the source change to the compiler's state, measured in the
/// bench's own process with the daemon's code on the same files.
#[derive(Clone, Debug)]
pub struct Breakdown {
    pub kind: Kind,
    pub read_ms: f64,
    pub compile_ms: f64,
    /// The incremental compiler fell back on a full compile.
    pub full: bool,
    /// The endpoints whose policy the change changed, and their entries
    /// now: what the syncer swaps.
    pub endpoints: usize,
    pub entries: usize,
}

pub use crate::peers::report::{Machine, command};

/// Everything the run measured besides the changes.
pub struct Run {
    pub scale: Scale,
    /// `palisade daemon` flags beyond the source, status and resync.
    pub daemon_flags: Vec<String>,
    /// The daemon read the Kubernetes source (`--via kube`), not files.
    pub via_kube: bool,
    /// Veths whose TC programs were clsact filters when the changes ended.
    pub on_filters: usize,
    pub machine: Machine,
    pub cold_s: f64,
    pub warm_s: f64,
    /// The pass that put the whole cluster in force at each start.
    pub cold_pass_ms: f64,
    pub warm_pass_ms: f64,
    /// `VmHWM` of the cold-started daemon once ready, and of the warm one
    /// after every change; the peak is the larger.
    pub cold_rss_mib: f64,
    pub end_rss_mib: f64,
    pub peak_rss_mib: f64,
    /// `VmHWM` of the filter helper at the end, where one ran.
    pub helper_rss_mib: Option<f64>,
    /// In-process replays of each kind.
    pub replays: usize,
    pub maps_mib: f64,
    pub maps: usize,
    /// Loading the whole rule set: nft, iptables (ipset and rules).
    pub nft_base_s: f64,
    pub iptables_base_s: f64,
    /// Sets, rules and set elements of the nftables and iptables rule sets.
    pub fw_size: (usize, usize, usize),
    /// A pass with nothing changed (the resync), the daemon's own figure.
    pub idle_pass_ms: Option<f64>,
    /// Both TC programs attached to fresh veths before the run, no daemon
    /// running (`None` without TCX).
    pub tcx_attach: Option<super::attach::AttachTimes>,
    /// The whole source read and compiled from nothing, in process.
    pub full_read_ms: f64,
    pub full_compile_ms: f64,
    /// By kind: the mean of the daemon's own change-to-in-force figure.
    pub daemon_own: BTreeMap<Kind, f64>,
    /// `nft --version`, `iptables --version`: which back end `iptables` is.
    pub tools: String,
    /// What the daemon binary was built from: uncommitted changes to the
    /// code it is built of, and when it was built.
    pub build: String,
    pub scrapes: Scrapes,
}

/// The daemon's `/metrics` scraped at this scale: once after each kind (the
/// bench's own reading of the daemon's figures), and, with
/// `--scrape-every MS`, by a second client all through the changes.
pub struct Scrapes {
    pub between_kinds_ms: Vec<f64>,
    pub every_ms: Option<u64>,
    pub during_ms: Vec<f64>,
}

impl Scrapes {
    pub fn sentence(&self) -> String {
        let all: Vec<f64> = self
            .between_kinds_ms
            .iter()
            .chain(&self.during_ms)
            .copied()
            .collect();
        let p = |q| percentile(&all, q).unwrap_or(f64::NAN);
        let during = match self.every_ms {
            Some(every) => format!(
                ", {} of them by a second client every {every} ms all through the changes, whose figures above include any wait behind a scrape",
                self.during_ms.len()
            ),
            None => String::new(),
        };
        format!(
            "Scrapes of `/metrics` at this scale (every pinned map counted, the counters summed): {}, p50 {:.1} ms, max {:.1} ms{during}.",
            all.len(),
            p(50.0),
            p(100.0)
        )
    }
}

/// p50 and p99 of one enforcer's figures for one kind.
fn p50_p99(samples: &[&Sample], of: fn(&Sample) -> f64) -> (f64, f64) {
    let v: Vec<f64> = samples.iter().map(|s| of(s)).collect();
    (
        percentile(&v, 50.0).unwrap_or(f64::NAN),
        percentile(&v, 99.0).unwrap_or(f64::NAN),
    )
}

pub struct KindRow {
    pub kind: Kind,
    pub n: usize,
    pub palisade: (f64, f64),
    pub nft: (f64, f64),
    pub iptables: (f64, f64),
    pub pass_ms: f64,
    pub passes: f64,
    pub pod_net_ms: f64,
    pub veth: (f64, f64),
    /// Palisade's, nftables' and iptables' figures less their own pod's
    /// network, change by change: from the network made to in force.
    pub after_net: [(f64, f64); 3],
}

pub fn rows(samples: &[Sample]) -> Vec<KindRow> {
    KINDS
        .iter()
        .filter_map(|&kind| {
            let of: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
            if of.is_empty() {
                return None;
            }
            let median = |f: fn(&Sample) -> f64| p50_p99(&of, f).0;
            Some(KindRow {
                kind,
                n: of.len(),
                palisade: p50_p99(&of, |s| s.palisade_ms),
                nft: p50_p99(&of, |s| s.nft_ms),
                iptables: p50_p99(&of, |s| s.iptables_ms),
                pass_ms: median(|s| s.pass_ms),
                passes: median(|s| s.passes as f64),
                pod_net_ms: median(|s| s.pod_net_ms),
                veth: p50_p99(&of, |s| s.veth_ms),
                after_net: [
                    p50_p99(&of, |s| s.palisade_ms - s.pod_net_in_figure()),
                    p50_p99(&of, |s| s.nft_ms - s.nft_net_ms),
                    p50_p99(&of, |s| s.iptables_ms - s.iptables_net_ms),
                ],
            })
        })
        .collect()
}

/// The goal the issue sets, for every kind: p50 and p99 in ms, peak RSS.
pub const GOAL_P50_MS: f64 = 20.0;
pub const GOAL_P99_MS: f64 = 100.0;
pub const GOAL_RSS_MIB: f64 = 150.0;

fn worst(rows: &[KindRow], of: fn(&KindRow) -> f64) -> f64 {
    rows.iter().map(of).fold(f64::NAN, f64::max)
}

pub fn last_line(rows: &[KindRow], run: &Run) -> String {
    format!(
        "churn: p50 max {:.1} ms, p99 max {:.1} ms (goal {GOAL_P50_MS:.0}/{GOAL_P99_MS:.0}); startup cold {:.1} s warm {:.1} s; peak RSS {:.1} MiB{}; maps {:.1} MiB",
        worst(rows, |r| r.palisade.0),
        worst(rows, |r| r.palisade.1),
        run.cold_s,
        run.warm_s,
        run.peak_rss_mib,
        run.helper_rss_mib
            .map_or_else(String::new, |h| format!(" (filter helper {h:.1})")),
        run.maps_mib
    )
}

pub fn csv(samples: &[Sample]) -> String {
    let mut t = String::from(
        "kind,index,palisade_ms,palisade_passes,palisade_last_pass_ms,nft_ms,iptables_ms,pod_net_ms,nft_pod_net_ms,iptables_pod_net_ms,veth_quarantined_ms\n",
    );
    for s in samples {
        let _ = writeln!(
            t,
            "{},{},{:.3},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            s.kind.id(),
            s.index,
            s.palisade_ms,
            s.passes,
            s.pass_ms,
            s.nft_ms,
            s.iptables_ms,
            s.pod_net_ms,
            s.nft_net_ms,
            s.iptables_net_ms,
            s.veth_ms
        );
    }
    t
}

/// A p50 / p99 pair as the tables show it.
pub fn pair((p50, p99): (f64, f64)) -> String {
    format!("{p50:.1} / {p99:.1}")
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// The table a terminal shows (also the heart of `churn.md`).
pub fn table(rows: &[KindRow]) -> String {
    let mut t = String::from(
        "| change | n | Palisade p50 / p99 ms | nft p50 / p99 ms | iptables p50 / p99 ms | Palisade: passes, last pass ms (medians) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0}, {:.1} |",
            r.kind.name(),
            r.n,
            r.palisade.0,
            r.palisade.1,
            r.nft.0,
            r.nft.1,
            r.iptables.0,
            r.iptables.1,
            r.passes,
            r.pass_ms
        );
    }
    t
}

pub fn markdown(rows: &[KindRow], breakdown: &[Breakdown], run: &Run) -> String {
    let s = run.scale;
    let m = &run.machine;
    let mut t = format!(
        "# Policy churn at cluster scale{}\n\n{}, {}, commit {}, {:.0} s in all.{}\n\nMachine: Linux {} (`uname -r`), {} CPUs (`nproc`), {}; load average {} at the start, {} at the end.\n\nCluster: {} pods ({} on this node, each a network namespace with a veth on the lab node's bridge; the rest other nodes' pods: `spec.nodeName: elsewhere`, an address, no veth), {} NetworkPolicies over {} namespaces, {} changes of each kind. {}\n\n",
        if run.via_kube {
            ", through the Kubernetes source"
        } else {
            ""
        },
        if run.daemon_flags.is_empty() && !run.via_kube {
            "`make bench-churn` (`palisade-bench --churn target/release/palisade`)".to_owned()
        } else {
            format!(
                "`palisade-bench --churn target/release/palisade{}{}`",
                if run.via_kube { " --via kube" } else { "" },
                run.daemon_flags
                    .iter()
                    .map(|f| format!(" {f}"))
                    .collect::<String>()
            )
        },
        m.date,
        m.commit,
        m.seconds,
        if run.daemon_flags.is_empty() {
            format!(
                " {} veths were still on clsact filters when the changes ended.",
                run.on_filters
            )
        } else {
            format!(
                " The daemon ran with `{}`; {} veths were still on clsact filters when the changes ended.",
                run.daemon_flags.join(" "),
                run.on_filters
            )
        },
        m.kernel,
        m.cpus,
        m.cpu,
        m.load_before,
        m.load_after,
        s.pods,
        s.local,
        s.policies,
        s.namespaces,
        s.changes,
        if run.via_kube {
            "The daemon read the cluster through its Kubernetes source (`palisade daemon --kube`, kube-rs watches) from the lab's test API server (`lab/src/apiserver/`), in the daemon's network namespace; the bench wrote each change as the files the file source would read and turned them into the API writes they mean (the lab's `--via kube` feed: objects created, replaced or deleted). Each figure is from the first API write of the change (for a local pod added, from the start of making its namespace and veth; reading the files into writes is left out) to the status file reporting every write seen and in force (see \"How it is measured\"). The replay under \"Where the time goes\" reads the files through the file source, not through the Kubernetes source."
        } else {
            "Each figure is from the change written (one file renamed into, or removed from, the daemon's source directory; for a local pod added, from the start of making its namespace and veth) to the status file reporting that content in force (see \"How it is measured\")."
        }
    );
    t.push_str(&table(rows));
    if let Some(r) = rows.iter().find(|r| r.kind == Kind::LocalPodAdded) {
        let _ = writeln!(
            t,
            "\nOf each figure of a local pod added, making its network (namespace, veth, bridge port) took a median {:.1} ms, in all three columns. Each figure less its own pod's network, change by change (from the network made, with the Pod written at once, to in force), p50 / p99 ms: Palisade {}, nftables {}, iptables {}.",
            r.pod_net_ms,
            pair(r.after_net[0]),
            pair(r.after_net[1]),
            pair(r.after_net[2])
        );
    }
    if let Some(r) = rows.iter().find(|r| r.kind == Kind::LocalPodAfterVeth) {
        let _ = writeln!(
            t,
            "\nA local pod, veth first: its network made, and (Palisade) its veth quarantined, before the clock starts at its Pod; the veth was quarantined p50 {:.1} / p99 {:.1} ms after its network began (making the network took a median {:.1} ms).",
            r.veth.0, r.veth.1, r.pod_net_ms
        );
    }
    let p50 = worst(rows, |r| r.palisade.0);
    let p99 = worst(rows, |r| r.palisade.1);
    let _ = write!(
        t,
        "\nGoal (the issue's): p50 <= {GOAL_P50_MS:.0} ms and p99 <= {GOAL_P99_MS:.0} ms for every kind, peak RSS <= {GOAL_RSS_MIB:.0} MiB. Palisade's worst p50 is {p50:.1} ms ({}), its worst p99 {p99:.1} ms ({}), its peak RSS {:.1} MiB{} ({}).\n\n",
        met(p50 <= GOAL_P50_MS),
        met(p99 <= GOAL_P99_MS),
        run.peak_rss_mib + run.helper_rss_mib.unwrap_or(0.0),
        run.helper_rss_mib.map_or_else(String::new, |h| format!(
            ", the daemon's {:.1} and its filter helper's {h:.1} (the two processes' peaks added, though they share the binary's pages)",
            run.peak_rss_mib
        )),
        met(run.peak_rss_mib + run.helper_rss_mib.unwrap_or(0.0) <= GOAL_RSS_MIB)
    );
    let _ = write!(
        t,
        "## Startup and memory\n\n| | |\n|---|---:|\n| startup, cold (no pins): daemon start to `ready` with the whole cluster in force | {:.1} s (its last pass {:.0} ms) |\n| startup, warm (restart on the previous run's pins) | {:.1} s (its last pass {:.0} ms) |\n| peak RSS (`VmHWM`): the cold-started daemon once ready; the warm-started one after all changes | {:.1} MiB; {:.1} MiB |\n| peak RSS (`VmHWM`) of the filter helper beside the warm-started daemon, at the end | {} |\n| BPF maps (sum of `memlock` in the fdinfo of the daemon's {} map fds) | {:.1} MiB |\n| nftables: loading the whole rule set (`nft -f`) | {:.2} s |\n| iptables: loading the whole rule set (`ipset restore`, `iptables-restore --noflush`) | {:.2} s |\n| nftables and iptables rule sets: sets, rules, set elements | {}, {}, {} |\n\n",
        run.cold_s,
        run.cold_pass_ms,
        run.warm_s,
        run.warm_pass_ms,
        run.cold_rss_mib,
        run.end_rss_mib,
        run.helper_rss_mib
            .map_or_else(|| "none ran".to_owned(), |h| format!("{h:.1} MiB")),
        run.maps,
        run.maps_mib,
        run.nft_base_s,
        run.iptables_base_s,
        run.fw_size.0,
        run.fw_size.1,
        run.fw_size.2
    );
    let _ = writeln!(t, "{}\n", run.scrapes.sentence());
    t.push_str(&where_the_time_goes(rows, breakdown, run));
    t.push_str(METHOD);
    let _ = write!(
        t,
        "\nTools: {}. The daemon binary: {}.\n",
        run.tools, run.build
    );
    t
}

fn where_the_time_goes(rows: &[KindRow], breakdown: &[Breakdown], run: &Run) -> String {
    let mut t = String::from("## Where the time goes\n\n");
    let _ = write!(
        t,
        "The daemon's own figure is its status's `pass_ms`: one reconcile pass, from reading the source to the status written (compile, locating the pods' veths, the syncer's map writes in between). A pass with nothing changed (the resync) took {} here. The passes column counts the passes between the change and the status saying it is in force: a local pod added takes more than one (its veth appears first and is quarantined; then its Pod arrives and its address is resolved, looked for again 1 to 3 ms after the node is made to ask, then in passes 5 to 50 ms apart).\n\nThe same change replayed in the bench's own process with the daemon's code on a copy of the same source ({}; the daemon was stopped meanwhile): the file source reading the directory (only the changed file is parsed again) and the incremental compiler brought to the new snapshot. The rest of a pass (its last pass's median less the two, so only roughly; n/a where the last pass is not the one that compiled) is locating every pod's veth or node, the desired state for this node, the syncer's map writes, and the status. From nothing, reading the whole source took {:.0} ms and compiling it {:.0} ms. The daemon's own figure is the mean of its `palisade_change_to_in_force_seconds` over the kind's changes: from its noticing the change to the pass that put it in force (for a local pod, from its Pod, not its veth), scraped from its metrics; the bench's figure adds the daemon's wake-up (inotify, or the watch's event), the status file and the bench's own wake on it.\n\n| change | source read ms | compile ms | compile | rest of the pass ms | its last pass ms | the daemon's own, mean ms | Palisade p50 ms |\n|---|---:|---:|---|---:|---:|---:|---:|\n",
        run.idle_pass_ms.map_or_else(
            || "no figure (none ran)".to_owned(),
            |ms| format!("{ms:.0} ms")
        ),
        if run.replays == 1 {
            "one replay of each kind".to_owned()
        } else {
            format!("the median of {} replays of each kind", run.replays)
        },
        run.full_read_ms,
        run.full_compile_ms
    );
    let mut by: BTreeMap<Kind, Vec<&Breakdown>> = BTreeMap::new();
    for b in breakdown {
        by.entry(b.kind).or_default().push(b);
    }
    for r in rows {
        let Some(list) = by.get(&r.kind) else {
            continue;
        };
        let med = |f: fn(&Breakdown) -> f64| {
            percentile(&list.iter().map(|b| f(b)).collect::<Vec<_>>(), 50.0).unwrap_or(f64::NAN)
        };
        let full = list.iter().filter(|b| b.full).count();
        let how = match full {
            0 => "incremental".to_owned(),
            n if n == list.len() => "full recompile".to_owned(),
            n => format!("full in {n} of {}", list.len()),
        };
        let rest = if r.passes > 1.0 {
            // Several passes: the last is not the one that compiled.
            "n/a".to_owned()
        } else {
            format!(
                "{:.1}",
                r.pass_ms - med(|b| b.read_ms) - med(|b| b.compile_ms)
            )
        };
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {how} | {rest} | {:.1} | {} | {:.1} |",
            r.kind.name(),
            med(|b| b.read_ms),
            med(|b| b.compile_ms),
            r.pass_ms,
            run.daemon_own
                .get(&r.kind)
                .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.1}")),
            r.palisade.0
        );
    }
    t.push('\n');
    if let Some(a) = &run.tcx_attach {
        let _ = writeln!(
            t,
            "A local pod's veth gets Palisade's two TC programs before anything of its pod is enforced. Timed on their own before the run (no daemon, no lab yet), on {} fresh bridge ports of a throwaway lab node each way, taken in turn: {:.1} ms a TCX link, {:.1} ms a veth's two; {:.2} ms a veth's clsact qdisc and two filters (medians). The kernel creates each TCX link under its routing lock and then waits for an RCU grace period before the new program list is used (`tcx_entry_sync`), so the two links of a veth cannot overlap. By default the veth gets filters, added by the daemon's filter helper, and the wait comes later, when the daemon is idle and moves it to links; with `--tc-links-only` that wait is in every local pod added, in the pass that quarantines its veth or the one that places it.\n",
            a.veths, a.link_ms, a.veth_ms, a.clsact_veth_ms
        );
    }
    t
}

const METHOD: &str = "## How it is measured

**Palisade.** The real daemon (`target/release/palisade daemon`, its own process, the file source, `--resync-ms 2000` as its default) in the lab's node namespace. The cluster is written to the source before the daemon starts. Each change is written to a staging directory first and then renamed into the source directory (removed, for a delete): one atomic step, one inotify event. The clock starts just before that step and stops when the status file says the new content is in force: its `revision` differs from the one before the change and `ready` is true (every local pod placed and enforced, no write failed), with every local pod among `endpoints`. The daemon writes that status after the syncer has written the kernel maps, so the figure covers change -> maps written -> status. The status file is read again each time the daemon replaces it (the bench's inotify watch of its directory, made before the change) and parsed when its text changed. Closing that watch's descriptor waits for the kernel to free the watch (an SRCU grace period, 5-20 ms on this machine): until 2026-12-07 14:10 UTC the bench closed it after the status was read and before the clock stopped, which added that wait to every Palisade figure (most to the p99s: through the Kubernetes source, with the same daemon, a policy edited took 9.9-16.2 / 30.8-33.1 ms in four runs before, 8.6-9.0 / 10.3-11.6 in two after); now it is closed on a thread of its own. Until 2026-12-02 22:40 UTC the file was read every 2 ms of the timer instead, in fact about 3.2 ms apart, which rounded every Palisade figure up to a multiple of that (9.5, 12.6, 15.8, 19.0 ms...). nftables and iptables are timed by their processes' exit, with no polling.

The lab's `Enforcer::commit` is not used for the changes: it writes a `.revision` file after the change, and `write_file` writes a `.NAME.tmp` inside the watched directory before renaming it. Each of those wakes the daemon on its own; a pass woken by the first may run before the rest is written and report the old revision, so the change is counted as two passes, or a trailing pass runs after it and delays the next change. In development runs (`--quick`) most changes written that way cost two passes; written by one rename, each cost one. Without `.revision` the file source names the revision by a hash of every file's name and contents, so any new content is a new revision. The starts do use a `.revision` (`cold`, then `warm`): there the whole source is in place before the daemon starts.

**The changes** (every one touches pods of this node, so that it is work for a node's enforcer, and lands in one source file): a policy edited (a port of a policy that selects a local pod; its namespace's file of policies rewritten); a policy added (selecting a local pod, a file of its own); a policy deleted (one of those added); a remote pod added (a file of its own) and removed (one of those); a local pod added (its namespace and veth on the bridge, then at once its Pod in a file of its own, all under the clock); a local pod, veth first (the same, but its Pod is written only once the status lists its veth quarantined, as a cluster orders it: the sandbox is made and the kubelet then reports the Pod's address through the API; the clock starts at the Pod, and nftables and iptables are timed from their rule change, their pod's network made before it); a local pod relabelled (its `app` label, with `tier` following; the file of local pods rewritten); a namespace relabelled (its `team` label, which namespace selectors of other namespaces' policies name; the file of namespaces rewritten). The cluster's other objects sit in files of at most 1,000 documents (the file source's limit).

**nftables and iptables.** The same cluster as an nftables-based or iptables-based enforcer on this node would hold it: a set per distinct peer selector with the addresses of every pod it names across the cluster (nft `set` of `ipv4_addr`; ipset `hash:ip`), ipBlocks inline in nft rules and as ipset `hash:net` with the excepts as `nomatch`; a chain per policy and direction (all of the cluster's policies), one accept rule per peer and protocol with the ports as a set; a chain per local pod and direction it is isolated in, jumping to each policy that selects it, then drop; dispatch by the pod's address (nft verdict maps from two base chains on the forward hook, egress at priority 0 and ingress at 10; iptables a dispatch chain in `mangle` FORWARD for egress and one in `filter` FORWARD for ingress), established traffic accepted first. Each change's delta is the difference of the two states: set element `add`/`delete` for pods added, removed or relabelled and for a namespace relabelled; `flush chain` and the chain's rules again for an edited policy; a new chain, and the selected pods' chains flushed and refilled, for an added policy; for a deleted policy the pods' chains refilled, its chain flushed and deleted, and sets no rule uses any more deleted; for a local pod, set elements, its chains and its dispatch entries. nftables applies it as one `nft -f` file (one transaction). iptables applies it as `ipset restore` (new sets, element adds and deletes), `iptables-restore --noflush` (a declared chain is flushed and refilled; `-A`/`-D` for dispatch; `-F`, `-X` for chains gone), then `ipset restore` to destroy sets no longer used, each run only when it has work; the figure is the sum. The figures include starting the tools (an enforcer that shells out pays that too). Both rule sets live in throwaway network namespaces of their own (a lab node with a bridge, where each local pod added gets its namespace and veth too, timed as part of the change), never in the machine's own. The delta files are written before the clock starts. The three enforcers take each change in turn (Palisade, nft, iptables), so that drift in the machine's speed touches all three alike.

Percentiles are by nearest rank: always a measured value; with 50 samples, p99 is the largest. `churn.csv` has every sample.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(25.0));
        assert_eq!(percentile(&v, 99.0), Some(50.0));
        assert_eq!(percentile(&v, 100.0), Some(50.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let five = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&five, 50.0), Some(3.0));
        assert_eq!(percentile(&five, 99.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN, 7.0], 50.0), Some(7.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
    }

    fn sample(kind: Kind, ms: f64) -> Sample {
        Sample {
            kind,
            index: 0,
            palisade_ms: ms,
            passes: 1,
            pass_ms: ms - 1.0,
            nft_ms: 2.0,
            iptables_ms: 3.0,
            pod_net_ms: 0.0,
            nft_net_ms: 0.0,
            iptables_net_ms: 0.0,
            veth_ms: 0.0,
        }
    }

    #[test]
    fn the_last_line_takes_the_worst_kind() {
        let mut samples: Vec<Sample> = (1..=10)
            .map(|i| sample(Kind::PolicyEdited, f64::from(i)))
            .collect();
        samples.extend((1..=10).map(|i| sample(Kind::PodRelabelled, f64::from(i) * 100.0)));
        let rows = rows(&samples);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].palisade, (5.0, 10.0));
        assert_eq!(rows[1].palisade, (500.0, 1000.0));
        let run = Run {
            scale: super::super::model::QUICK,
            machine: Machine::read(),
            cold_s: 1.26,
            warm_s: 0.5,
            cold_pass_ms: 0.0,
            warm_pass_ms: 0.0,
            cold_rss_mib: 50.0,
            end_rss_mib: 99.94,
            peak_rss_mib: 99.94,
            helper_rss_mib: Some(6.5),
            replays: 1,
            maps_mib: 12.0,
            maps: 3,
            nft_base_s: 0.0,
            iptables_base_s: 0.0,
            fw_size: (0, 0, 0),
            idle_pass_ms: None,
            tcx_attach: None,
            daemon_flags: Vec::new(),
            via_kube: false,
            on_filters: 0,
            full_read_ms: 0.0,
            full_compile_ms: 0.0,
            daemon_own: BTreeMap::new(),
            tools: String::new(),
            build: String::new(),
            scrapes: Scrapes {
                between_kinds_ms: vec![60.0],
                every_ms: None,
                during_ms: Vec::new(),
            },
        };
        assert_eq!(
            last_line(&rows, &run),
            "churn: p50 max 500.0 ms, p99 max 1000.0 ms (goal 20/100); startup cold 1.3 s warm 0.5 s; peak RSS 99.9 MiB (filter helper 6.5); maps 12.0 MiB"
        );
        assert_eq!(csv(&samples).lines().count(), 21);
        let md = markdown(&rows, &[], &run);
        assert!(md.contains("| policy edited | 10 | 5.0 / 10.0 |"), "{md}");
        assert!(md.contains("(missed)"));
    }

    #[test]
    fn a_local_pod_less_its_network_is_taken_change_by_change() {
        let pod = |kind, palisade_ms, pod_net_ms| Sample {
            palisade_ms,
            nft_ms: 30.0,
            nft_net_ms: 22.0,
            iptables_ms: 25.0,
            iptables_net_ms: 23.0,
            pod_net_ms,
            ..sample(kind, 0.0)
        };
        let samples = [
            pod(Kind::LocalPodAdded, 40.0, 24.0),
            pod(Kind::LocalPodAfterVeth, 12.0, 24.0),
        ];
        let rows = rows(&samples);
        assert_eq!(rows[0].after_net, [(16.0, 16.0), (8.0, 8.0), (2.0, 2.0)]);
        // A veth first's network is timed before its clock starts.
        assert_eq!(rows[1].after_net[0], (12.0, 12.0));
    }
}
