//! Runs one planned scenario: builds the nodes, starts listeners and a
//! daemon per node, plays the actions (each change waited for until every
//! daemon reports it in force, never a fixed sleep), probes, and tears it
//! all down.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use nix::{
    fcntl::{OFlag, open},
    sys::stat::Mode,
    unistd::write,
};

use palisade::{
    loader::features::Features,
    model::{Protocol, Snapshot},
};

use crate::{
    cluster::cluster_yaml,
    daemons::Daemons,
    drops::{DropWatch, Silent},
    enforcer::Feed,
    expect::Cell,
    fixture_files::FixtureFiles,
    helper::Verdict,
    lsm_events::{EVENT_WINDOW, LsmWatch},
    nodes::Nodes,
    operation::{PodJoin, run_operation},
    plan::{Action, CheckPlan, HoldPlan, NewPod, Operation, PolicyDoc, ProbePlan, Scenario},
    probe::{Observed, held_state, hold, probe, still_open},
    report::{
        CellReport, CheckObserved, CheckReport, EventReport, HeldReport, ProbeReport,
        ScenarioReport, StepReport,
    },
    scenario::HeldExpect,
    serve::{Listeners, no_sctp},
    topology::PodNet,
};

/// How long a blocked cell's drop event may take to arrive after its probe
/// ended; it was sent a whole attempt earlier, so this is slack.
const EVENT_WAIT: Duration = Duration::from_secs(1);

pub struct Options {
    /// The `palisade` binary the daemon runs from.
    pub bin: PathBuf,
    /// Per attempt; a failing cell gets a second attempt.
    pub timeout: Duration,
    /// How long a change may take to be in force.
    pub in_force_limit: Duration,
    /// Print the daemon's drop and audit counters after each scenario.
    pub show_metrics: bool,
    /// Where the daemon reads the cluster from (`--via`).
    pub feed: Feed,
}

/// Runs `scenario`, filling `report`; `n` tells apart scenarios of one run.
pub async fn run(
    scenario: &Scenario,
    options: &Options,
    n: usize,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let mut lab = Lab::start(scenario, options, n).await?;
    for (i, action) in scenario.actions.iter().enumerate() {
        let step = i + 1;
        let step_start = Instant::now();
        let change = lab.act(action, step, report).await?;
        let mut in_force_ms = None;
        if change {
            lab.commit()
                .await
                .with_context(|| format!("step {step}: {}", action.describe()))?;
            // From the step's first write, as a watcher of the files sees it.
            in_force_ms = Some(step_start.elapsed().as_secs_f64() * 1000.0);
        }
        report.steps.push(StepReport {
            step,
            action: action.describe(),
            in_force_ms,
        });
    }
    report.metrics = lab.verdict_counters();
    lab.finish();
    Ok(())
}

/// One scenario's nodes while it runs. Fields drop in order: held
/// connections, the event readers, the daemons, the listeners, the
/// namespaces, then the fixtures.
struct Lab<'a> {
    options: &'a Options,
    /// Connections opened by `connect` steps, by name.
    held: BTreeMap<String, (HoldPlan, Option<Arc<socket2::Socket>>)>,
    /// The daemons' drop events, which confirm blocked cells.
    drops: DropWatch,
    /// The first daemon's process and file decisions, when a check has
    /// `event:` (checks run on one node only).
    decisions: Option<LsmWatch>,
    daemons: Daemons,
    listeners: Listeners,
    nodes: Nodes,
    /// The cluster as the source holds it now.
    state: Snapshot,
    /// Pod key -> the name of the node it runs on (`spec.nodeName`).
    node_names: BTreeMap<String, String>,
    /// The policies applied so far, by key.
    applied: BTreeMap<String, PolicyDoc>,
    lsm: bool,
    dir: PathBuf,
    /// The scenario's `files:`, made before the first step.
    files: FixtureFiles,
}

impl<'a> Lab<'a> {
    /// The nodes, pods and externals with their listeners, and the daemons
    /// with the cluster in force and no policy.
    async fn start(scenario: &Scenario, options: &'a Options, n: usize) -> anyhow::Result<Self> {
        let tag = format!("lab{}-{n}", std::process::id());
        let files = FixtureFiles::make(&scenario.fixtures, &options.bin)
            .context("making the fixtures of `files:`")?;
        let nodes = Nodes::build(&tag, scenario)
            .await
            .context("building the lab")?;
        let dir = std::env::temp_dir().join(format!("palisade-{tag}"));
        let mut daemons = Daemons::start(&options.bin, &nodes, options.feed, &dir)?;
        let node_names: BTreeMap<String, String> = scenario
            .node_of
            .iter()
            .map(|(pod, i)| (pod.clone(), scenario.nodes[*i].name.clone()))
            .collect();
        let state = nodes.with_cgroups(&scenario.cluster);
        daemons.write("cluster.yaml", &cluster_yaml(&state, &node_names))?;
        let mut listeners = Listeners::default();
        for pod in &scenario.cluster.pods {
            let net = nodes.pod(&pod.key())?;
            for (port, protocol) in &scenario.serves[&pod.key()] {
                listeners.serve(&net.netns, &pod.ips, true, *port, *protocol)?;
            }
        }
        if let Some(outside) = nodes.outside() {
            for e in &scenario.externals {
                for s in &e.serve {
                    listeners.serve(outside, &[e.ip], false, s.port, s.protocol)?;
                }
            }
        }

        daemons
            .commit(options.in_force_limit)
            .await
            .context("the cluster without policies")?;
        // Their endpoints are known once they report.
        let drops = daemons
            .watch_drops()
            .context("subscribing to the daemons' drop events")?;
        let wants_events = scenario.actions.iter().any(
            |a| matches!(a, Action::Check(checks) if checks.iter().any(|c| c.event.is_some())),
        );
        let decisions = match daemons.daemons().first() {
            Some(d) if wants_events => Some(
                LsmWatch::start(d.enforcer.metrics_addr()?, &d.netns.path())
                    .context("subscribing to the daemon's process and file events")?,
            ),
            _ => None,
        };
        Ok(Self {
            options,
            held: BTreeMap::new(),
            drops,
            decisions,
            daemons,
            listeners,
            nodes,
            state,
            node_names,
            applied: BTreeMap::new(),
            lsm: Features::probe().bpf_lsm.is_active(),
            dir,
            files,
        })
    }

    fn write_cluster(&self) -> anyhow::Result<()> {
        self.daemons
            .write("cluster.yaml", &cluster_yaml(&self.state, &self.node_names))
    }

    /// Publishes what the step wrote and waits until it is in force.
    async fn commit(&mut self) -> anyhow::Result<()> {
        self.daemons.commit(self.options.in_force_limit).await
    }

    /// Carries out one step; true when it changed the source (the caller
    /// then waits for it to be in force).
    async fn act(
        &mut self,
        action: &Action,
        step: usize,
        report: &mut ScenarioReport,
    ) -> anyhow::Result<bool> {
        match action {
            Action::Apply(docs) | Action::Update(docs) => {
                for d in docs {
                    self.daemons.write(&d.file_name(), &d.yaml)?;
                    self.applied.insert(d.key.clone(), d.clone());
                }
            }
            Action::Delete(docs) => {
                for d in docs {
                    self.daemons.remove(&d.file_name())?;
                    self.applied.remove(&d.key);
                }
            }
            Action::RelabelPod(key, labels) => {
                let pod = self
                    .state
                    .pods
                    .iter_mut()
                    .find(|p| p.key() == *key)
                    .ok_or_else(|| anyhow!("no pod {key}"))?;
                std::sync::Arc::make_mut(pod).labels = labels.clone();
                self.write_cluster()?;
            }
            Action::RelabelNamespace(name, labels) => {
                let ns = self
                    .state
                    .namespaces
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("no namespace {name}"))?;
                ns.labels = labels.clone();
                self.write_cluster()?;
            }
            Action::Create(pods) => self.create(pods).await?,
            Action::Probe(plans) => {
                for p in plans {
                    let r = self.probe(p, step).await?;
                    report.probes.push(r);
                }
                return Ok(false);
            }
            Action::Connect(plans) => {
                self.connect(plans, step, report).await?;
                return Ok(false);
            }
            Action::Held(expects) => {
                self.still_held(expects, step, report).await?;
                return Ok(false);
            }
            Action::Check(checks) => {
                self.check(checks, step, report).await;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// As a CNI and an API server would: the veth first, then the pod in
    /// the source; until then the daemon quarantines it.
    async fn create(&mut self, pods: &[NewPod]) -> anyhow::Result<()> {
        for new in pods {
            let key = new.pod.key();
            self.nodes.add_pod(new.node, &key, &new.pod.ips).await?;
            let net = self.nodes.pod(&key)?;
            for (port, protocol) in &new.serves {
                self.listeners
                    .serve(&net.netns, &new.pod.ips, true, *port, *protocol)?;
            }
            let mut pod = new.pod.clone();
            pod.cgroup = net.cgroup.as_ref().map(|c| c.display().to_string());
            self.state.pods.push(pod.into());
            self.node_names
                .insert(key, self.nodes.nodes[new.node].name.clone());
        }
        self.write_cluster()
    }

    /// Opens the connections of a `connect` step and holds them.
    async fn connect(
        &mut self,
        plans: &[HoldPlan],
        step: usize,
        report: &mut ScenarioReport,
    ) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for p in plans {
            let path = self.nodes.pod(&p.from)?.netns.path();
            let (to, protocol, timeout) = (p.target, p.protocol, self.options.timeout);
            tasks.push(tokio::task::spawn_blocking(move || {
                palisade::netns::in_netns(&path, || hold(to, protocol, timeout))
            }));
        }
        for (p, task) in plans.iter().zip(tasks) {
            let (observed, detail, socket) = match task.await?? {
                Ok(s) => ("open", None, Some(Arc::new(s))),
                Err(e) if p.protocol == Protocol::Sctp && no_sctp(&e) => {
                    ("skipped", Some(format!("kernel has no SCTP ({e})")), None)
                }
                Err(e) => (held_state(&e), Some(e.to_string()), None),
            };
            report.held.push(HeldReport {
                step,
                name: p.name.clone(),
                from: p.from.clone(),
                to: p.to.clone(),
                expected: HeldExpect::Open,
                observed: observed.to_owned(),
                detail,
            });
            self.held.insert(p.name.clone(), (p.clone(), socket));
        }
        Ok(())
    }

    /// Whether the held connections of a `held` step still carry data.
    async fn still_held(
        &self,
        expects: &[(String, HeldExpect)],
        step: usize,
        report: &mut ScenarioReport,
    ) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for (name, _) in expects {
            let socket = self.held.get(name).and_then(|(_, s)| s.clone());
            let timeout = self.options.timeout;
            tasks.push(tokio::task::spawn_blocking(move || {
                socket.map(|s| still_open(&s, timeout))
            }));
        }
        for ((name, expected), task) in expects.iter().zip(tasks) {
            let Some((plan, _)) = self.held.get(name) else {
                continue;
            };
            let (observed, detail) = match task.await? {
                Some(Ok(())) => ("open", None),
                Some(Err(e)) => (held_state(&e), Some(e.to_string())),
                None => ("skipped", Some("it never opened".to_owned())),
            };
            report.held.push(HeldReport {
                step,
                name: name.clone(),
                from: plan.from.clone(),
                to: plan.to.clone(),
                expected: *expected,
                observed: observed.to_owned(),
                detail,
            });
        }
        Ok(())
    }

    async fn check(&mut self, checks: &[CheckPlan], step: usize, report: &mut ScenarioReport) {
        let reason = check_skip(self.lsm);
        for c in checks {
            let (observed, event) = match &reason {
                Some(r) => (CheckObserved::Skipped(r.clone()), None),
                None => self.check_one(c).await,
            };
            let path = c.operation.path().map(|p| p.display().to_string());
            report.checks.push(CheckReport {
                step,
                pod: c.pod.clone(),
                run: match &c.operation {
                    Operation::Run(argv) => argv.clone(),
                    _ => Vec::new(),
                },
                operation: path.is_some().then(|| c.operation.name().to_owned()),
                path,
                from: c.from.as_ref().map(|p| p.display().to_string()),
                user: c.user,
                expected: c.expect,
                observed,
                event,
            });
        }
    }

    /// One check, from fixtures as declared; with `event:`, the event
    /// stream's word on it.
    async fn check_one(&mut self, c: &CheckPlan) -> (CheckObserved, Option<EventReport>) {
        if let Err(e) = self.files.restore() {
            return (
                CheckObserved::Failed(format!("restoring the fixtures: {e:#}")),
                None,
            );
        }
        let pod = match self.nodes.pod(&c.pod) {
            Ok(pod) => pod,
            Err(e) => return (CheckObserved::Failed(format!("{e:#}")), None),
        };
        let Some(path) = c.operation.path() else {
            return (run_check(pod, c), None);
        };
        let Some(cgroup) = &pod.cgroup else {
            return (
                CheckObserved::Skipped("no writable cgroup v2 hierarchy for the pod".into()),
                None,
            );
        };
        // The enforcer names the file it decided on: a link's target
        // when the operation followed it.
        let mut paths = vec![path.display().to_string()];
        if let Ok(real) = std::fs::canonicalize(path) {
            paths.push(real.display().to_string());
        }
        let since = self.decisions.as_ref().map(LsmWatch::mark);
        let start = Instant::now();
        let join = PodJoin {
            cgroup,
            netns: pod.netns.fd(),
            user: c.user,
        };
        let observed = match run_operation(&join, &c.operation, c.from.as_deref()) {
            Verdict::Allowed => CheckObserved::Allowed,
            Verdict::Denied => CheckObserved::Denied,
            Verdict::Failed(why) => CheckObserved::Failed(why),
        };
        let event = match (c.event, &self.decisions, since) {
            (Some(expected), Some(watch), Some(since)) => {
                let found = watch
                    .wait(
                        since,
                        &c.pod,
                        c.operation.name(),
                        &paths,
                        start + EVENT_WINDOW,
                    )
                    .await;
                Some(EventReport {
                    expected,
                    observed: found.as_ref().map(|e| e.action.clone()),
                    policy: found.map(|e| e.policy),
                })
            }
            (Some(expected), ..) => Some(EventReport {
                expected,
                observed: Some("unknown: no event reader".into()),
                policy: None,
            }),
            (None, ..) => None,
        };
        (observed, event)
    }

    /// Probes one table, then gives each blocked cell its drop event, or
    /// why it has none.
    async fn probe(&self, plan: &ProbePlan, step: usize) -> anyhow::Result<ProbeReport> {
        let since = self.drops.mark();
        let before = self.drops.losses(&self.daemons.scrape_all()?);
        let mut report = run_probe(plan, &self.nodes, self.options.timeout, step).await?;
        let mut blocked = Vec::new();
        let mut silent = Vec::new();
        for (i, (cell, planned)) in report.cells.iter().zip(&plan.cells).enumerate() {
            if let (Some(Observed::Blocked(_)), Some(to)) = (&cell.observed, planned.target) {
                blocked.push(i);
                silent.push(Silent {
                    from: &self.nodes.pod(&planned.from)?.ips,
                    to,
                });
            }
        }
        if silent.is_empty() {
            return Ok(report);
        }
        let found = self
            .drops
            .account(since, before, plan.protocol, &silent, EVENT_WAIT, || {
                self.daemons.scrape_all()
            })
            .await?;
        for (i, confirmation) in blocked.into_iter().zip(found) {
            report.cells[i].confirmation = Some(confirmation);
        }
        Ok(report)
    }

    /// The verdict counters as Prometheus would scrape them, before
    /// teardown; with `nodes:`, each series labelled with its node, as a
    /// scrape of several targets would be.
    fn verdict_counters(&self) -> Vec<String> {
        let scraped = match self.daemons.scrape() {
            Ok(s) => s,
            Err(e) => return vec![format!("# metrics unavailable: {e:#}")],
        };
        let by_node = self.nodes.declared();
        scraped
            .iter()
            .flat_map(|(node, text)| {
                text.lines()
                    .filter(|l| {
                        l.starts_with("palisade_drops_total")
                            || l.starts_with("palisade_audit_would_drop_total")
                    })
                    .map(move |l| {
                        if by_node {
                            with_node(l, node)
                        } else {
                            l.to_owned()
                        }
                    })
            })
            .collect()
    }

    /// Tears everything down, then removes the daemons' directory.
    fn finish(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A series line of the Prometheus text with a `node` label first.
fn with_node(line: &str, node: &str) -> String {
    match line.split_once('{') {
        Some((name, rest)) if rest.starts_with('}') => format!("{name}{{node=\"{node}\"{rest}"),
        Some((name, rest)) => format!("{name}{{node=\"{node}\",{rest}"),
        None => match line.split_once(' ') {
            Some((name, value)) => format!("{name}{{node=\"{node}\"}} {value}"),
            None => line.to_owned(),
        },
    }
}

async fn run_probe(
    plan: &ProbePlan,
    nodes: &Nodes,
    timeout: Duration,
    step: usize,
) -> anyhow::Result<ProbeReport> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for cell in &plan.cells {
        let task = match (cell.target, cell.expected) {
            (Some(to), Cell::Reachable | Cell::Blocked | Cell::Refused) => {
                let path = nodes.pod(&cell.from)?.netns.path();
                let protocol = plan.protocol;
                Some(tokio::task::spawn_blocking(move || {
                    palisade::netns::in_netns(&path, || probe(to, protocol, timeout))
                }))
            }
            _ => None,
        };
        tasks.push(task);
    }
    let mut cells = Vec::new();
    for (cell, task) in plan.cells.iter().zip(tasks) {
        let (observed, attempts) = match task {
            Some(t) => {
                let (o, n) = t.await??;
                (Some(o), n)
            }
            None => (None, 0),
        };
        cells.push(CellReport {
            from: cell.from.clone(),
            to: cell.to.clone(),
            expected: cell.expected.symbol(),
            observed,
            attempts,
            confirmation: None,
        });
    }
    Ok(ProbeReport {
        step,
        title: plan.title.clone(),
        rows: plan.rows.clone(),
        columns: plan.columns.clone(),
        cells,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Why checks cannot be judged here, if they cannot: a check passes only
/// where Palisade could have enforced what it expects.
fn check_skip(lsm: bool) -> Option<String> {
    (!lsm).then(|| "BPF LSM is not active on this kernel".into())
}

/// Runs a `run:` command in the pod's network namespace and cgroup, as
/// the check's user.
fn run_check(pod: &PodNet, check: &CheckPlan) -> CheckObserved {
    let Operation::Run(argv) = &check.operation else {
        return CheckObserved::Failed("not a run: check".into());
    };
    let Some(cgroup) = &pod.cgroup else {
        return CheckObserved::Skipped("no writable cgroup v2 hierarchy for the pod".into());
    };
    let Ok(procs) = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    ) else {
        return CheckObserved::Failed("bad cgroup path".into());
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);

    if let Err(e) = pod.netns.spawn_inside(&mut cmd) {
        return CheckObserved::Failed(format!("{}: {e}", pod.netns.name));
    }
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let f = open(procs.as_c_str(), OFlag::O_WRONLY, Mode::empty())?;
            if write(&f, b"0")? != 1 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            Ok(())
        });
        // After joining, which the new uid could not do.
        if let Some(id) = check.user {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match cmd.output() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            CheckObserved::Denied
        }
        Err(e) => CheckObserved::Failed(e.to_string()),
        Ok(out) if out.status.success() => CheckObserved::Allowed,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
                CheckObserved::Denied
            } else {
                CheckObserved::Failed(format!("{}: {}", out.status, stderr.trim()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_node;

    #[test]
    fn a_series_gets_its_node_as_the_first_label() {
        assert_eq!(
            with_node(r#"palisade_drops_total{direction="ingress"} 3"#, "n1"),
            r#"palisade_drops_total{node="n1",direction="ingress"} 3"#
        );
        assert_eq!(with_node("m{} 1", "n2"), r#"m{node="n2"} 1"#);
        assert_eq!(with_node("m 1", "n2"), r#"m{node="n2"} 1"#);
    }
}
