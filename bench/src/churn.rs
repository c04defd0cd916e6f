//! Policy churn at cluster scale (`palisade-bench --churn PALISADE_BINARY
//! [--out DIR] [--quick]`, `make bench-churn`): how long a change of the
//! cluster takes to be in force, for Palisade and for what users would
//! pick instead.
//!
//! The lab's node with 100 pods on its bridge, in a cluster of 10,000
//! pods (the rest other nodes': an address, no veth) and 1,000
//! NetworkPolicies over 50 namespaces (`churn/model.rs`). The real daemon
//! reads it from its file source. For each of nine kinds of change, 50
//! changes, each timed from the change written to the daemon's status
//! saying it is in force; the same change applied, as the delta an
//! nftables-based or iptables-based enforcer would apply, to the same
//! cluster's rule set with `nft -f` and with `ipset`/`iptables-restore
//! --noflush`, each in a throwaway network namespace
//! (`churn/firewall.rs`). Also the daemon's start, cold and warm, its
//! peak RSS and its maps' memory, and where a pass's time goes. Written to
//! `churn.md` and `churn.csv` (`churn-tc-links-only.*` for a run with
//! `--tc-links-only`, passed on to the daemon); the last line is the
//! `churn:` line. With `--via kube` the daemon reads the same cluster
//! through its Kubernetes source from the lab's test API server instead
//! (`churn-kube.*`): each change is the API writes of the files changed,
//! timed from the first write.

pub mod attach;
mod firewall;
mod model;
mod process;
mod report;
mod scraper;

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade::{
    compile::incremental::Incremental,
    source::{
        Source as _,
        files::{FileSource, REVISION_FILE},
    },
};
use palisade_lab::{
    enforcer::{DaemonArgs, Enforcer},
    fixtures::BridgeLab,
    kube_feed::KubeFeed,
    netns::Netns,
};

use firewall::{Delta, Fw, IptDelta};
use model::{Cluster, FULL, KINDS, Kind, QUICK, Scale};
use report::{Breakdown, Machine, Run, Sample};

/// The daemon's own default drift-repair period (`palisade daemon`).
const RESYNC_MS: u64 = 2000;
/// Fresh veths whose TC attach is timed on its own (`attach`).
const ATTACH_VETHS: usize = 20;
/// How long one change may take to be in force, and a start.
const CHANGE_LIMIT: Duration = Duration::from_secs(120);
const START_LIMIT: Duration = Duration::from_secs(600);
/// In-process replays of each kind, for where the time goes: one at full
/// scale, where a replay costs seconds of the run's ten minutes.
const REPLAYS: usize = 1;
const QUICK_REPLAYS: usize = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A directory of the run's own, removed when the run ends, also on error.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What the bench reads of the daemon's status file.
struct Status {
    revision: String,
    passes: u64,
    pass_ms: f64,
}

fn status(d: &Enforcer) -> anyhow::Result<Status> {
    let v = d.status()?;
    Ok(Status {
        revision: v["revision"].as_str().unwrap_or_default().to_owned(),
        passes: v["passes"].as_u64().unwrap_or(0),
        pass_ms: v["pass_ms"].as_f64().unwrap_or(f64::NAN),
    })
}

/// The daemon, its source directory, and where changes are staged: the
/// same file system, outside the watched directory, so that a change
/// lands in the source by one rename.
struct Daemon {
    enforcer: Enforcer,
    source: PathBuf,
    staging: PathBuf,
    runtime: tokio::runtime::Runtime,
    /// With `--via kube`: the test API server the daemon reads, fed from
    /// the source directory.
    feed: Option<KubeFeed>,
}

/// The revision a wait is for.
#[derive(Clone, Copy)]
enum Revision<'a> {
    /// This one (the starts, which name theirs in `.revision`).
    Is(&'a str),
    /// Any but this one: the content hash of the files after a change.
    Not(&'a str),
}

impl Daemon {
    /// Waits until the status has `revision` in force with all `local`
    /// pods placed.
    fn wait(
        &mut self,
        revision: Revision<'_>,
        local: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let what = match revision {
            Revision::Is(r) => format!("revision {r}"),
            Revision::Not(r) => format!("a revision after {r}"),
        };
        self.runtime
            .block_on(self.enforcer.wait_until(limit, &what, |s| {
                let rev = s["revision"].as_str().unwrap_or_default();
                let wanted = match (&self.feed, revision) {
                    // The newest resourceVersion: every write sent seen.
                    (Some(feed), _) => feed.seen(s, model::LOCAL_NODE),
                    (None, Revision::Is(r)) => rev == r,
                    (None, Revision::Not(r)) => rev != r,
                };
                wanted
                    && s["ready"] == true
                    && s["endpoints"].as_object().map_or(0, |e| e.len()) == local
            }))?;
        Ok(())
    }

    fn set_revision(&self, revision: &str) -> anyhow::Result<()> {
        fs::write(self.source.join(REVISION_FILE), revision)?;
        Ok(())
    }
}

/// Runs `program args` in `ns` with `stdin` from a file; returns how long
/// it took from start to exit, and its output; fails with its stderr.
fn run(
    ns: &Netns,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> anyhow::Result<(f64, String)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(match stdin {
            Some(path) => Stdio::from(fs::File::open(path)?),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.spawn_inside(&mut cmd)?;
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let out = child.wait_with_output()?;
    let took = ms(start.elapsed());
    if !out.status.success() {
        let input = stdin.map(|p| p.display().to_string()).unwrap_or_default();
        bail!(
            "{program} {} {input}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn timed(ns: &Netns, program: &str, args: &[&str], stdin: Option<&Path>) -> anyhow::Result<f64> {
    Ok(run(ns, program, args, stdin)?.0)
}

/// The nftables and the iptables enforcer: each its own throwaway lab
/// node (a network namespace with a bridge, gone with the bench), where
/// its rule set lives and where local pods added get their network.
struct Firewalls {
    nft: BridgeLab,
    iptables: BridgeLab,
    dir: PathBuf,
}

impl Firewalls {
    fn nft(&self, text: &str) -> anyhow::Result<f64> {
        let path = self.dir.join("delta.nft");
        fs::write(&path, text)?;
        timed(
            &self.nft.node,
            "nft",
            &["-f", &path.display().to_string()],
            None,
        )
    }

    /// The steps of an iptables delta, in order; the time of all.
    fn iptables(&self, delta: &IptDelta) -> anyhow::Result<f64> {
        let steps = [
            (&delta.sets, "ipset", &["restore"][..], "sets.ipset"),
            (
                &delta.rules,
                "iptables-restore",
                &["--noflush"][..],
                "rules.iptables",
            ),
            (&delta.destroy, "ipset", &["restore"][..], "destroy.ipset"),
        ];
        let mut files = Vec::new();
        for (text, program, args, name) in steps {
            if let Some(text) = text {
                let path = self.dir.join(name);
                fs::write(&path, text)?;
                files.push((program, args, path));
            }
        }
        let mut took = 0.0;
        for (program, args, path) in files {
            took += timed(&self.iptables.node, program, args, Some(&path))?;
        }
        Ok(took)
    }
}

impl Firewalls {
    /// After every delta, the kernel holds as many chains, rules and sets
    /// as the model: a delta that left a rule behind, or a flush that did
    /// not flush, shows here.
    fn check(&self, fw: &Fw) -> anyhow::Result<()> {
        let (sets, rules, _) = fw.size();
        let chains = fw.chains.len();
        let (_, json) = run(
            &self.nft.node,
            "nft",
            &["-j", "list", "table", "inet", firewall::NFT_TABLE],
            None,
        )?;
        // The two base chains, with two rules each.
        let held = (
            json.matches("{\"chain\": ").count(),
            json.matches("{\"rule\": ").count(),
        );
        anyhow::ensure!(
            held == (chains + 2, rules + 4),
            "nftables holds {held:?} chains and rules, the model {:?}",
            (chains + 2, rules + 4)
        );
        let (_, save) = run(&self.iptables.node, "iptables-save", &[], None)?;
        let held = (
            save.lines()
                .filter(|l| l.starts_with(':') && l.contains(" - ["))
                .count(),
            save.lines().filter(|l| l.starts_with("-A ")).count(),
        );
        // The two dispatch chains and their hooks, one rule per dispatch.
        let model = (chains + 2, rules + fw.dispatch.len() + 4);
        anyhow::ensure!(
            held == model,
            "iptables holds {held:?} chains and rules, the model {model:?}"
        );
        let (_, list) = run(&self.iptables.node, "ipset", &["list", "-n"], None)?;
        anyhow::ensure!(
            list.lines().count() == sets,
            "ipset holds {} sets, the model {sets}",
            list.lines().count()
        );
        Ok(())
    }
}

/// The daemon's own account of change to in force so far: the sum (s)
/// and count of `palisade_change_to_in_force_seconds`, which it measures
/// from noticing a source change to the pass that put it in force.
fn change_to_in_force(d: &Enforcer, node: &Netns) -> anyhow::Result<(f64, f64)> {
    let text = d.scrape(node)?;
    let series = "palisade_change_to_in_force_seconds";
    let of = |suffix: &str| process::metric(&text, &format!("{series}{suffix}")).unwrap_or(0.0);
    Ok((of("_sum"), of("_count")))
}

/// The address the lab's bridge gives its next pod (`BridgeLab::add_pod`).
fn next_bridge_ip(lab: &BridgeLab) -> anyhow::Result<Ipv4Addr> {
    Ok(Ipv4Addr::new(10, 199, 1, u8::try_from(lab.pods.len() + 1)?))
}

/// Writes `files` into `dir` as they are, for a daemon not yet reading it.
fn write_all(dir: &Path, files: &std::collections::BTreeMap<String, String>) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    for (name, text) in files {
        fs::write(dir.join(name), text)?;
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The same changes replayed in this process with the daemon's file
/// source and incremental compiler: what reading and compiling cost of a
/// pass. Returns the breakdowns and the whole source's read and compile
/// from nothing.
fn replay(
    cluster: &Cluster,
    scale: Scale,
    replays: usize,
    dir: &Path,
) -> anyhow::Result<(Vec<Breakdown>, f64, f64)> {
    let mut files = cluster.files();
    write_all(dir, &files)?;
    let mut source = FileSource::new(dir);
    let start = Instant::now();
    let reading = source.read();
    let full_read = ms(start.elapsed());
    anyhow::ensure!(
        reading.errors.is_empty(),
        "the source has errors: {:?}",
        reading.errors
    );
    let start = Instant::now();
    // As the daemon does: the endpoints of this node's pods only.
    let local = |c: &Cluster| c.local_pods().map(model::Pod::key).collect();
    let mut compiler = Incremental::scoped(reading.snapshot, local(cluster));
    let full_compile = ms(start.elapsed());
    let mut cluster = cluster.clone();
    let mut out = Vec::new();
    for rep in 0..replays {
        for kind in KINDS {
            let i = scale.changes + rep;
            // Each local kind's pods in a range of their own.
            let third = if kind == Kind::LocalPodAfterVeth {
                3
            } else {
                2
            };
            model::apply(
                &mut cluster,
                kind,
                i,
                Ipv4Addr::new(10, 199, third, rep as u8 + 1),
            )?;
            let after = cluster.files();
            let change = model::file_change(&files, &after);
            for (name, text) in &change.write {
                fs::write(dir.join(name), text)?;
            }
            for name in &change.remove {
                fs::remove_file(dir.join(name))?;
            }
            files = after;
            let start = Instant::now();
            let reading = source.read();
            let read_ms = ms(start.elapsed());
            let start = Instant::now();
            let mut change = compiler.update(reading.snapshot);
            let moved = compiler.set_scope(local(&cluster));
            let compile_ms = ms(start.elapsed());
            change.full |= moved.full;
            change.endpoints.extend(moved.endpoints);
            change.endpoints.sort();
            change.endpoints.dedup();
            let endpoints = &compiler.compiled().endpoints;
            out.push(Breakdown {
                kind,
                read_ms,
                compile_ms,
                full: change.full,
                endpoints: change.endpoints.len(),
                entries: change
                    .endpoints
                    .iter()
                    .filter_map(|k| endpoints.get(k))
                    .map(|e| e.entries.len())
                    .sum(),
            });
        }
    }
    Ok((out, full_read, full_compile))
}

/// `--replay-only`: the in-process replay alone (no daemon, no root), for
/// working on the file source and the compiler: where a pass's time goes
/// before the kernel is involved.
fn replay_only(quick: bool) -> anyhow::Result<()> {
    let scale = if quick { QUICK } else { FULL };
    let local: Vec<Ipv4Addr> = (0..scale.local)
        .map(|i| Ipv4Addr::new(10, 199, 1, u8::try_from(i + 2).unwrap_or(u8::MAX)))
        .collect();
    let cluster = Cluster::generate(scale, &local);
    let scratch =
        Scratch(std::env::temp_dir().join(format!("palisade-replay-{}", std::process::id())));
    let _ = fs::remove_dir_all(&scratch.0);
    // `--replays N`: more rounds, for a profiler to see the changes
    // rather than the read from nothing.
    let args: Vec<String> = std::env::args().collect();
    let replays = match args.iter().position(|a| a == "--replays") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--replays wants a number"))?,
        None if quick => QUICK_REPLAYS,
        None => REPLAYS,
    };
    let (breakdown, read, compile) = replay(&cluster, scale, replays, &scratch.0)?;
    println!("from nothing: read {read:.1} ms, compile {compile:.1} ms");
    for b in &breakdown {
        println!(
            "  {:<20} read {:>7.1} ms, compile {:>7.1} ms{}; {} endpoints changed, {} entries now",
            b.kind.name(),
            b.read_ms,
            b.compile_ms,
            if b.full { " (full recompile)" } else { "" },
            b.endpoints,
            b.entries,
        );
    }
    Ok(())
}

pub fn report(bin: &Path, out: &Path, quick: bool) -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--replay-only") {
        return replay_only(quick);
    }
    let via_kube = via_kube()?;
    anyhow::ensure!(
        nix_is_root(),
        "the churn bench needs root (network namespaces, bpffs, nft)"
    );
    let started = Instant::now();
    let scale = if quick { QUICK } else { FULL };
    let machine = Machine::read();
    println!(
        "churn: {} pods ({} local), {} policies, {} namespaces, {} changes of each kind; {}",
        scale.pods,
        scale.local,
        scale.policies,
        scale.namespaces,
        scale.changes,
        machine.summary()
    );
    let scratch =
        Scratch(std::env::temp_dir().join(format!("palisade-churn-{}", std::process::id())));
    let _ = fs::remove_dir_all(&scratch.0);
    fs::create_dir_all(&scratch.0)?;

    // First, on a machine not yet tearing down the run's namespaces.
    let tcx_attach = attach::measure(ATTACH_VETHS);
    let t = Instant::now();
    let mut lab = BridgeLab::new(scale.local)?;
    let local_ips: Vec<Ipv4Addr> = lab.pods.iter().map(|p| p.ip).collect();
    let mut cluster = Cluster::generate(scale, &local_ips);
    let mut files = cluster.files();
    println!(
        "  lab node with {} pods on its bridge in {:.1} s; the source: {} files, {:.1} MiB",
        scale.local,
        t.elapsed().as_secs_f64(),
        files.len(),
        mib(files.values().map(|t| t.len() as u64).sum())
    );

    // Cold start: the whole cluster in the source before the daemon runs,
    // no pins.
    let daemon_dir = scratch.0.join("daemon");
    let source = daemon_dir.join("source");
    write_all(&source, &files)?;
    fs::write(source.join(REVISION_FILE), "cold")?;
    let staging = scratch.0.join("staging");
    fs::create_dir_all(&staging)?;
    let pins =
        Path::new(palisade::paths::BPFFS).join(format!("palisade-churn-{}", std::process::id()));
    let _ = fs::remove_dir_all(&pins);
    // `--tc-links-only` is passed on to the daemon: new veths get TCX
    // links at once, where by default they get clsact filters from its
    // helper and move to links when it is idle.
    let daemon_flags: Vec<String> = std::env::args()
        .filter(|a| a == "--tc-links-only")
        .collect();
    let args = DaemonArgs {
        resync_ms: RESYNC_MS,
        extra: daemon_flags.clone(),
        ..DaemonArgs::default()
    };
    let local = scale.local;
    // The whole cluster in the API server before the daemon starts, as
    // the files are.
    let feed = match via_kube {
        true => {
            let t = Instant::now();
            let mut feed = KubeFeed::start(&lab.node, &daemon_dir)?;
            feed.sync(&source)?;
            println!(
                "  the test API server holds the cluster ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
            Some(feed)
        }
        false => None,
    };
    let t = Instant::now();
    let enforcer = match &feed {
        Some(feed) => Enforcer::start_shared(
            bin,
            &lab.node,
            &daemon_dir,
            &pins,
            args,
            feed.daemon_args_for(model::LOCAL_NODE),
        )?,
        None => Enforcer::start_with(bin, &lab.node, &daemon_dir, &pins, args)?,
    };
    let mut d = Daemon {
        enforcer,
        source,
        staging,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        feed,
    };
    d.wait(Revision::Is("cold"), local, START_LIMIT)?;
    let cold = t.elapsed().as_secs_f64();
    let cold_pass_ms = status(&d.enforcer)?.pass_ms;
    let cold_rss = process::peak_rss(d.enforcer.pid())?;
    println!(
        "  cold start: ready with the whole cluster in {cold:.1} s (last pass {cold_pass_ms:.0} ms), peak RSS {:.1} MiB",
        mib(cold_rss)
    );

    // Warm start: a new daemon on the pins the first one left.
    d.enforcer.stop();
    d.set_revision("warm")?;
    let t = Instant::now();
    d.enforcer.restart(bin, &lab.node)?;
    d.wait(Revision::Is("warm"), local, START_LIMIT)?;
    let warm = t.elapsed().as_secs_f64();
    let warm_pass_ms = status(&d.enforcer)?.pass_ms;
    println!("  warm start: ready in {warm:.1} s (last pass {warm_pass_ms:.0} ms)");

    // From here on the revision is the hash of the files: one rename, one
    // new revision.
    fs::remove_file(d.source.join(REVISION_FILE))?;
    d.wait(Revision::Not("warm"), local, CHANGE_LIMIT)?;
    // One resync pass with nothing changed: the floor of any pass.
    let before = status(&d.enforcer)?.passes;
    d.runtime.block_on(d.enforcer.wait_until(
        Duration::from_millis(RESYNC_MS * 5),
        "a resync pass",
        |s| s["passes"].as_u64().is_some_and(|p| p > before),
    ))?;
    let idle_pass_ms = Some(status(&d.enforcer)?.pass_ms);

    let fw_dir = scratch.0.join("fw");
    fs::create_dir_all(&fw_dir)?;
    let mut fws = Firewalls {
        nft: BridgeLab::new(0)?,
        iptables: BridgeLab::new(0)?,
        dir: fw_dir,
    };
    let mut fw = Fw::compile(&cluster);
    let nft_base_s = fws.nft(&Delta::nft_base(&fw))? / 1e3;
    let iptables_base_s = fws.iptables(&Delta::iptables_base(&fw))? / 1e3;
    let fw_size = fw.size();
    println!(
        "  rule sets of {} sets, {} rules, {} set elements loaded: nft {nft_base_s:.2} s, iptables {iptables_base_s:.2} s",
        fw_size.0, fw_size.1, fw_size.2
    );

    let mut samples = Vec::new();
    let mut daemon_own = std::collections::BTreeMap::new();
    let every = scraper::every()?;
    let second_client = match every {
        Some(every) => Some(scraper::Scraper::start(
            lab.node.try_clone()?,
            d.enforcer.metrics_addr()?,
            every,
        )),
        None => None,
    };
    let mut scrape_ms = Vec::new();
    for kind in KINDS {
        let before_kind = change_to_in_force(&d.enforcer, &lab.node)?;
        for i in 0..scale.changes {
            let next_ip = next_bridge_ip(&lab)?;
            model::apply(&mut cluster, kind, i, next_ip)?;
            let after = cluster.files();
            let change = model::file_change(&files, &after);
            let after_fw = Fw::compile(&cluster);
            let delta = Delta::between(&fw, &after_fw);
            let (nft_text, ipt) = (delta.nft(), delta.iptables());
            for (name, text) in &change.write {
                fs::write(d.staging.join(name), text)?;
            }
            let local = cluster.local_pods().count();
            let before = status(&d.enforcer)?;
            let mut passes_before = before.passes;

            let mut start = Instant::now();
            let (mut pod_net_ms, mut veth_ms) = (0.0, 0.0);
            let mut host_if = String::new();
            if kind.is_local_pod() {
                let pod = lab.add_pod()?;
                (host_if, pod_net_ms) = (pod.host_if.clone(), ms(start.elapsed()));
                anyhow::ensure!(
                    pod.ip == next_ip,
                    "the bridge gave {}, not {next_ip}",
                    pod.ip
                );
            }
            if kind == Kind::LocalPodAfterVeth {
                // As a cluster orders it: the sandbox (namespace, veth)
                // first, the Pod's address in the API once it exists. The
                // clock restarts at the Pod.
                let veth = lab.node.run(|| palisade::netns::ifindex(&host_if))??;
                d.runtime.block_on(d.enforcer.wait_until(
                    CHANGE_LIMIT,
                    "the new veth quarantined",
                    |s| {
                        s["quarantined"]
                            .as_array()
                            .is_some_and(|q| q.iter().any(|i| i.as_u64() == Some(veth.into())))
                    },
                ))?;
                veth_ms = ms(start.elapsed());
                passes_before = status(&d.enforcer)?.passes;
                start = Instant::now();
            }
            let written = Instant::now();
            for (name, _) in &change.write {
                fs::rename(d.staging.join(name), d.source.join(name))?;
            }
            for name in &change.remove {
                fs::remove_file(d.source.join(name))?;
            }
            if let Some(feed) = &mut d.feed {
                // The change is the API server's writes: reading the
                // files into them is left out of the clock.
                let plan = feed.plan(&d.source)?;
                anyhow::ensure!(!plan.is_empty(), "{} #{i} wrote nothing", kind.name());
                start += written.elapsed();
                feed.send(plan)?;
            }
            d.wait(Revision::Not(&before.revision), local, CHANGE_LIMIT)
                .with_context(|| format!("{} #{i}", kind.name()))?;
            let palisade_ms = ms(start.elapsed());
            let after_status = status(&d.enforcer)?;

            // Their pods' networks are timed as Palisade's are: in the
            // figure, or before it after the veth.
            let net_counts = kind != Kind::LocalPodAfterVeth;
            let start = Instant::now();
            if kind.is_local_pod() {
                fws.nft.add_pod()?;
            }
            let nft_net = if net_counts { ms(start.elapsed()) } else { 0.0 };
            let nft_ms = nft_net + fws.nft(&nft_text)?;
            let start = Instant::now();
            if kind.is_local_pod() {
                fws.iptables.add_pod()?;
            }
            let iptables_net = if net_counts { ms(start.elapsed()) } else { 0.0 };
            let iptables_ms = iptables_net + fws.iptables(&ipt)?;

            samples.push(Sample {
                kind,
                index: i,
                palisade_ms,
                passes: after_status.passes.saturating_sub(passes_before),
                pass_ms: after_status.pass_ms,
                nft_ms,
                iptables_ms,
                pod_net_ms,
                nft_net_ms: nft_net,
                iptables_net_ms: iptables_net,
                veth_ms,
            });
            fw = after_fw;
            files = after;
        }
        let scraped = Instant::now();
        let (sum, count) = change_to_in_force(&d.enforcer, &lab.node)?;
        scrape_ms.push(ms(scraped.elapsed()));
        let changes = count - before_kind.1;
        if changes > 0.0 {
            daemon_own.insert(kind, (sum - before_kind.0) * 1e3 / changes);
        }
        if let Some(r) = report::rows(&samples).iter().find(|r| r.kind == kind) {
            if kind == Kind::LocalPodAdded {
                println!(
                    "  (a local pod's namespace and veth: median {:.1} ms, in each figure; less it, p50 / p99 ms: Palisade {}, nft {}, iptables {})",
                    r.pod_net_ms,
                    report::pair(r.after_net[0]),
                    report::pair(r.after_net[1]),
                    report::pair(r.after_net[2])
                );
            }
            if kind == Kind::LocalPodAfterVeth {
                println!(
                    "  (before the clock: its veth quarantined p50 {:.1} p99 {:.1} ms after its namespace and veth began)",
                    r.veth.0, r.veth.1
                );
            }
            println!(
                "  {:<20} Palisade p50 {:>7.1} p99 {:>7.1} ms ({:.0} passes, last {:.0} ms) | nft {:>6.1} / {:>6.1} | iptables {:>6.1} / {:>6.1}",
                kind.name(),
                r.palisade.0,
                r.palisade.1,
                r.passes,
                r.pass_ms,
                r.nft.0,
                r.nft.1,
                r.iptables.0,
                r.iptables.1
            );
        }
    }

    let scrapes = report::Scrapes {
        between_kinds_ms: scrape_ms,
        every_ms: every.map(|e| e.as_millis() as u64),
        during_ms: match second_client {
            Some(s) => s.finish()?,
            None => Vec::new(),
        },
    };
    println!("  {}", scrapes.sentence());
    fws.check(&fw)?;
    let on_filters = d.enforcer.status()?["tc_filters"]
        .as_array()
        .map_or(0, Vec::len);
    println!("  veths still on clsact filters at the end: {on_filters}");
    let end_rss = process::peak_rss(d.enforcer.pid())?;
    // The agent's other process, where it runs: the filter helper.
    let helper_rss = match d.enforcer.status()?["tc_filter_helper"]["pid"].as_u64() {
        Some(pid) => Some(process::peak_rss(u32::try_from(pid)?)?),
        None => None,
    };
    let (maps, maps_bytes) = process::map_memory(d.enforcer.pid())?;
    // The replay has the machine to itself: no daemon, no resync.
    drop(d);
    drop(fws);
    drop(lab);
    let replays = if quick { QUICK_REPLAYS } else { REPLAYS };
    let (breakdown, full_read_ms, full_compile_ms) =
        replay(&cluster, scale, replays, &scratch.0.join("replay"))?;
    let run = Run {
        scale,
        machine: machine.finish(started),
        cold_s: cold,
        warm_s: warm,
        cold_pass_ms,
        warm_pass_ms,
        cold_rss_mib: mib(cold_rss),
        end_rss_mib: mib(end_rss),
        peak_rss_mib: mib(cold_rss.max(end_rss)),
        helper_rss_mib: helper_rss.map(mib),
        replays,
        maps_mib: mib(maps_bytes),
        maps,
        nft_base_s,
        iptables_base_s,
        fw_size,
        idle_pass_ms,
        tcx_attach,
        full_read_ms,
        full_compile_ms,
        daemon_own,
        tools: tools(),
        build: build(bin),
        daemon_flags,
        via_kube,
        on_filters,
        scrapes,
    };
    let rows = report::rows(&samples);
    let markdown = report::markdown(&rows, &breakdown, &run);
    println!();
    if quick {
        // Nothing written: the whole report on the terminal instead.
        print!("{markdown}");
    } else {
        print!("{}", report::table(&rows));
        fs::create_dir_all(out)?;
        // A run with daemon flags is named after them, beside the default.
        let stem = std::iter::once("churn")
            .chain(run.via_kube.then_some("kube"))
            .chain(run.daemon_flags.iter().map(|f| f.trim_start_matches('-')))
            .collect::<Vec<_>>()
            .join("-");
        let (md, csv) = (
            out.join(format!("{stem}.md")),
            out.join(format!("{stem}.csv")),
        );
        fs::write(&csv, report::csv(&samples))?;
        fs::write(&md, &markdown)?;
        println!(
            "written: {}, {} ({:.0} s)",
            md.display(),
            csv.display(),
            run.machine.seconds
        );
    }
    println!("{}", report::last_line(&rows, &run));
    Ok(())
}

/// `--via kube`: the daemon reads the Kubernetes source.
fn via_kube() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--via") else {
        return Ok(false);
    };
    match args.get(i + 1).map(String::as_str) {
        Some("kube") => Ok(true),
        other => {
            anyhow::bail!("--via takes `kube` (the daemon's Kubernetes source), not {other:?}")
        }
    }
}

/// The versions of the tools the deltas ran with.
fn tools() -> String {
    ["nft", "iptables", "ipset"]
        .map(|t| {
            let v = report::command(t, &["--version"]);
            v.lines().next().unwrap_or_default().to_owned()
        })
        .join(", ")
}

/// When `bin` was built, and whether the code it is built of had
/// uncommitted changes then (another engineer's work in progress).
fn build(bin: &Path) -> String {
    let built = report::command(
        "date",
        &[
            "-u",
            "-r",
            &bin.display().to_string(),
            "+%Y-%m-%d %H:%M UTC",
        ],
    );
    let dirty = report::command(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "daemon",
            "ebpf-common",
            "ebpf-tc",
            "ebpf-xdp",
            "ebpf-lsm",
            "cli",
        ],
    );
    let changed = dirty.lines().filter(|l| !l.trim().is_empty()).count();
    let tree = if dirty == "unknown" {
        "whether its code had uncommitted changes is unknown (no git)".to_owned()
    } else if changed == 0 {
        "no uncommitted changes to its code at the time of the run".to_owned()
    } else {
        format!("{changed} files of its code had uncommitted changes at the time of the run")
    };
    format!("{} built {built}; {tree}", bin.display())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At full scale, with every local pod the run adds: the compiled
    /// state the daemon writes for this node, against the default map
    /// sizes (`cargo test --release -p palisade-bench full_cluster --
    /// --ignored --nocapture`; a debug build takes minutes).
    #[test]
    #[ignore = "a full compile at 10,000 pods: run it in release"]
    fn the_full_cluster_fits_the_default_maps() {
        let ips: Vec<Ipv4Addr> = (0..FULL.local)
            .map(|i| Ipv4Addr::new(10, 199, 1, i as u8 + 1))
            .collect();
        let mut cluster = Cluster::generate(FULL, &ips);
        for i in 0..FULL.changes {
            let ip = Ipv4Addr::new(10, 199, 1, (FULL.local + i) as u8 + 1);
            model::apply(&mut cluster, Kind::LocalPodAdded, i, ip).unwrap();
            let ip = Ipv4Addr::new(10, 199, 1, (FULL.local + FULL.changes + i) as u8 + 1);
            model::apply(&mut cluster, Kind::LocalPodAfterVeth, i, ip).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("palisade-churn-test-{}", std::process::id()));
        let _scratch = Scratch(dir.clone());
        write_all(&dir, &cluster.files()).unwrap();
        let reading = FileSource::new(&dir).read();
        assert!(reading.errors.is_empty(), "{:?}", reading.errors);
        let compiler = Incremental::new(reading.snapshot);
        let compiled = compiler.compiled();
        let local: Vec<String> = cluster.local_pods().map(model::Pod::key).collect();
        let entries: Vec<usize> = local
            .iter()
            .map(|k| compiled.endpoints.get(k).map_or(0, |e| e.entries.len()))
            .collect();
        let sum: usize = entries.iter().sum();
        println!(
            "{} local endpoints: {sum} entries (max {} per endpoint); {} identities, {} addresses",
            local.len(),
            entries.iter().max().unwrap_or(&0),
            compiled.identities.len(),
            compiled.addresses.len()
        );
        assert!(
            sum < 131_072 / 2,
            "{sum} entries: two generations overflow PAL_POLICY_PORT"
        );
    }
}
