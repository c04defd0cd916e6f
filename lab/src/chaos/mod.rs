//! `palisade lab chaos`: the real daemon on the lab's standard model under
//! a continuous probe load and held connections, while faults are injected
//! one after another: the daemon killed, killed in the middle of a large
//! change, upgraded across an ABI change, fed broken source files, its maps
//! filled, its event ring flooded, and (through the Kubernetes source) its
//! API server killed, compacted and slowed. Every probe is judged against
//! the scenario's expected table; a held connection must never break, since
//! no fault changes its policy. docs/CHAOS.md has the faults and the gaps.

mod faults;
mod flood;
mod load;
pub mod soak;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use palisade::model::Snapshot;

use crate::{
    cluster::cluster_yaml,
    daemons::Daemons,
    enforcer::Feed,
    expect::Cell as Expected,
    nodes::Nodes,
    plan::{Action, Scenario},
    serve::Listeners,
};
pub use faults::Fault;
use load::{Cell, Flow, Load};

/// The default load, also a plain scenario file.
pub const STANDARD: &str = include_str!("../../../tests/chaos/standard.yaml");

pub struct Options {
    pub bin: PathBuf,
    pub feed: Feed,
    /// The faults to inject, in order.
    pub faults: Vec<Fault>,
    /// How long the load runs undisturbed before, between and after faults.
    pub calm: Duration,
    /// Between two probes of one cell.
    pub interval: Duration,
    /// Per probe attempt (a silent cell gets a second one).
    pub timeout: Duration,
}

impl Options {
    /// Every fault that applies to `feed`.
    pub fn full(bin: PathBuf, feed: Feed) -> Self {
        Self {
            bin,
            feed,
            faults: Fault::ALL
                .iter()
                .copied()
                .filter(|f| f.applies_to(feed))
                .collect(),
            calm: Duration::from_secs(3),
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(300),
        }
    }

    /// The version `make test` runs: the faults that take seconds.
    pub fn short(bin: PathBuf, feed: Feed) -> Self {
        Self {
            faults: Fault::SHORT
                .iter()
                .copied()
                .filter(|f| f.applies_to(feed))
                .collect(),
            calm: Duration::from_secs(1),
            ..Self::full(bin, feed)
        }
    }
}

/// The counts of the last line.
pub struct Summary {
    pub probes: u64,
    pub wrong: u64,
    pub broken: u64,
    pub faults: usize,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "chaos: {} probes, {} wrong verdicts, {} held flows broken, {} faults injected",
            self.probes, self.wrong, self.broken, self.faults
        )
    }
}

/// What a fault needs of the running lab.
pub struct Lab {
    pub bin: PathBuf,
    pub daemons: Daemons,
    pub nodes: Nodes,
    /// The cluster's pods and namespaces as the source holds them.
    pub state: Snapshot,
    pub node_names: BTreeMap<String, String>,
    pub in_force_limit: Duration,
    /// The applied policies' source files, by name.
    pub policy_files: BTreeMap<String, String>,
    pub tally: std::sync::Arc<load::Tally>,
    /// Where the daemons keep their source, status and log.
    pub dir: PathBuf,
    /// The pods' servers; dropped after the daemons.
    _listeners: Listeners,
}

impl Lab {
    /// Publishes what was written and waits until every daemon has it in
    /// force.
    pub async fn commit(&mut self) -> anyhow::Result<()> {
        self.daemons.commit(self.in_force_limit).await
    }

    /// Waits until every daemon has read the last publication, and says
    /// whether it is in force or what the first daemon refused in it.
    pub async fn commit_or_refused(&mut self, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let feed = self.daemons.feed();
            let mut all_read = true;
            let mut refused = None;
            for d in self.daemons.daemons() {
                let Ok(status) = d.enforcer.status() else {
                    all_read = false;
                    continue;
                };
                let read = match feed {
                    Some(f) => f.seen(&status, &d.name),
                    None => {
                        status["revision"].as_str()
                            == Some(d.enforcer.revision().to_string().as_str())
                    }
                };
                all_read &= read;
                let first_error = status["errors"].as_array().and_then(|e| e.first());
                if read && refused.is_none() && (status["ready"] != true || first_error.is_some()) {
                    refused =
                        Some(first_error.map_or_else(|| status.to_string(), ToString::to_string));
                }
            }
            if all_read {
                return Ok(match refused {
                    Some(e) => format!("refused ({e})"),
                    None => "in force".into(),
                });
            }
            anyhow::ensure!(Instant::now() < deadline, "not read within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The network namespace file of pod `key`.
    pub fn netns_of(&self, key: &str) -> anyhow::Result<PathBuf> {
        Ok(self.nodes.pod(key)?.netns.path())
    }

    pub fn ipv4_of(&self, key: &str) -> anyhow::Result<std::net::Ipv4Addr> {
        self.nodes
            .pod(key)?
            .ips
            .iter()
            .find_map(|ip| match ip {
                std::net::IpAddr::V4(v4) => Some(*v4),
                std::net::IpAddr::V6(_) => None,
            })
            .with_context(|| format!("pod {key} has no IPv4 address"))
    }
}

impl Lab {
    /// The nodes, pods, listeners and daemons of `scenario`, with its
    /// cluster in force and no policy; `what` names the run's directory.
    pub async fn start(
        scenario: &Scenario,
        bin: &Path,
        feed: Feed,
        what: &str,
    ) -> anyhow::Result<Self> {
        let tag = format!("{what}{}", std::process::id());
        let nodes = Nodes::build(&tag, scenario)
            .await
            .context("building the lab")?;
        let dir = std::env::temp_dir().join(format!("palisade-{tag}"));
        let daemons = Daemons::start(bin, &nodes, feed, &dir)?;
        let node_names: BTreeMap<String, String> = scenario
            .node_of
            .iter()
            .map(|(pod, i)| (pod.clone(), scenario.nodes[*i].name.clone()))
            .collect();
        let mut listeners = Listeners::default();
        for pod in &scenario.cluster.pods {
            let net = nodes.pod(&pod.key())?;
            for (port, protocol) in &scenario.serves[&pod.key()] {
                listeners.serve(&net.netns, &pod.ips, true, *port, *protocol)?;
            }
        }
        let mut lab = Lab {
            bin: bin.to_owned(),
            daemons,
            state: nodes.with_cgroups(&scenario.cluster),
            nodes,
            node_names,
            in_force_limit: Duration::from_secs(60),
            policy_files: BTreeMap::new(),
            tally: Default::default(),
            dir,
            _listeners: listeners,
        };
        lab.write_cluster()?;
        lab.commit().await.context("the cluster without policies")?;
        Ok(lab)
    }

    /// Writes the cluster's pods and namespaces as [`Lab::state`] has them.
    pub fn write_cluster(&self) -> anyhow::Result<()> {
        self.daemons
            .write("cluster.yaml", &cluster_yaml(&self.state, &self.node_names))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // PALISADE_KEEP=1 keeps the daemons' logs and status for a look.
        if std::env::var_os("PALISADE_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Plays `text` (a scenario on the standard model: its `apply` steps are
/// the policies, its `probe` tables the cells, its `connect` steps the
/// held flows) with `options.faults` injected, and prints a report ending
/// in the chaos line.
pub async fn run(text: &str, file: &str, options: &Options) -> anyhow::Result<Summary> {
    let scenario = Scenario::load(text, file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let mut lab = Lab::start(&scenario, &options.bin, options.feed, "chaos").await?;
    let (cells, flows) = plan_load(&scenario, &mut lab).await?;
    println!(
        "chaos on {} ({}): {} cells probed every {:?} each, {} held flows, faults: {}",
        scenario.name,
        match options.feed {
            Feed::Files => "file source",
            Feed::Kube => "Kubernetes source",
        },
        cells.len(),
        options.interval,
        flows.len(),
        options
            .faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (timeout, interval) = (options.timeout, options.interval);
    // Opening the flows blocks: the runtime must go on serving the pods.
    let load = tokio::task::spawn_blocking(move || {
        Load::start(cells, flows, timeout, interval, Duration::from_millis(100))
    })
    .await??;
    lab.tally = load.tally.clone();
    let started = Instant::now();
    calm(&lab, options.calm).await;
    let mut injected = 0;
    let mut failures = Vec::new();
    for fault in &options.faults {
        let phase = fault.name();
        lab.tally.set_phase(phase);
        let t = Instant::now();
        match fault.inject(&mut lab).await {
            Ok(note) => {
                injected += 1;
                println!("  {phase}: {note} ({:.1} s)", t.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!("  {phase}: FAILED: {e:#}");
                failures.push(format!("{phase}: {e:#}"));
            }
        }
        lab.tally.spent(phase, t.elapsed().as_secs_f64());
        calm(&lab, options.calm).await;
    }
    // Joining the threads blocks: the runtime must go on serving the pods
    // until the last request is answered.
    let tally = tokio::task::spawn_blocking(move || load.stop()).await?;
    let total = started.elapsed().as_secs_f64();
    print_phases(&tally, total);
    let summary = Summary {
        probes: tally.probes.load(std::sync::atomic::Ordering::Relaxed),
        wrong: tally.wrong_count(),
        broken: tally.broken_count(),
        faults: injected,
    };
    for w in lock(&tally.wrong).iter() {
        println!("  wrong: {w}");
    }
    for b in lock(&tally.broken).iter() {
        println!("  broken: {b}");
    }
    drop(lab);
    anyhow::ensure!(
        failures.is_empty(),
        "{}\n{} faults could not be injected: {}",
        summary.line(),
        failures.len(),
        failures.join("; ")
    );
    Ok(summary)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lets the load run undisturbed for `d`.
async fn calm(lab: &Lab, d: Duration) {
    lab.tally.set_phase("calm");
    tokio::time::sleep(d).await;
    lab.tally.spent("calm", d.as_secs_f64());
}

/// Applies the scenario's policies and returns its cells and held flows.
async fn plan_load(scenario: &Scenario, lab: &mut Lab) -> anyhow::Result<(Vec<Cell>, Vec<Flow>)> {
    let (mut cells, mut flows) = (Vec::new(), Vec::new());
    for action in &scenario.actions {
        match action {
            Action::Apply(docs) => {
                for d in docs {
                    lab.daemons.write(&d.file_name(), &d.yaml)?;
                    lab.policy_files.insert(d.file_name(), d.yaml.clone());
                }
                lab.commit().await.context("applying the policies")?;
            }
            Action::Probe(plans) => {
                for plan in plans {
                    for c in &plan.cells {
                        let (Some(target), Expected::Reachable | Expected::Blocked) =
                            (c.target, c.expected)
                        else {
                            continue;
                        };
                        cells.push(Cell {
                            from: c.from.clone(),
                            to: c.to.clone(),
                            netns: lab.netns_of(&c.from)?,
                            target,
                            protocol: plan.protocol,
                            reachable: c.expected == Expected::Reachable,
                        });
                    }
                }
            }
            Action::Connect(plans) => {
                for p in plans {
                    flows.push(Flow {
                        name: p.name.clone(),
                        netns: lab.netns_of(&p.from)?,
                        target: p.target,
                        protocol: p.protocol,
                    });
                }
            }
            Action::Held(_) => {}
            other => anyhow::bail!(
                "a chaos load takes apply, connect, probe and held steps, not {}",
                other.describe()
            ),
        }
    }
    anyhow::ensure!(!cells.is_empty(), "the scenario probes no cell");
    Ok((cells, flows))
}

fn print_phases(tally: &load::Tally, total: f64) {
    println!(
        "{:<28} {:>8} {:>8} {:>7} {:>9}",
        "phase", "seconds", "probes", "wrong", "broken"
    );
    for (phase, t) in tally.phases() {
        println!(
            "{phase:<28} {:>8.1} {:>8} {:>7} {:>9}",
            t.seconds, t.probes, t.wrong, t.broken
        );
    }
    let probes = tally.probes.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{} probes in {total:.1} s: {:.0} per second",
        probes,
        probes as f64 / total.max(0.001)
    );
}

/// The first node's daemon: the one whose source and pins faults touch.
fn first(lab: &Lab) -> anyhow::Result<&crate::enforcer::Enforcer> {
    Ok(&lab.daemons.daemons().first().context("no daemon")?.enforcer)
}
