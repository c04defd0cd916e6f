//! Runs one planned scenario: builds the node, starts listeners and the
//! daemon, plays the actions (each change waited for until the daemon
//! reports it in force, never a fixed sleep), probes, and tears it all down.

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

use super::{
    cluster::cluster_yaml,
    enforcer::Enforcer,
    plan::{Action, CheckPlan, HoldPlan, PolicyDoc, ProbePlan, Scenario},
    probe::{hold, probe, still_open},
    report::{
        CellReport, CheckObserved, CheckReport, HeldReport, ProbeReport, ScenarioReport, StepReport,
    },
    serve::{Listeners, no_sctp},
    topology::{Plan, PodNet, Topology},
};
use crate::{
    features::Features,
    model::{Protocol, expect::Cell, scenario::HeldExpect},
};

pub struct Options {
    /// The `palisade` binary the daemon runs from.
    pub bin: PathBuf,
    /// Per attempt; a failing cell gets a second attempt.
    pub timeout: Duration,
    /// How long a change may take to be in force.
    pub in_force_limit: Duration,
    /// Print the daemon's drop and audit counters after each scenario.
    pub show_metrics: bool,
}

/// Runs `scenario`, filling `report`; `n` tells apart scenarios of one run.
pub async fn run(
    scenario: &Scenario,
    options: &Options,
    n: usize,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let tag = format!("lab{}-{n}", std::process::id());
    let plan = Plan {
        tag: &tag,
        networks: scenario.networks.clone(),
        pods: scenario
            .cluster
            .pods
            .iter()
            .map(|p| (p.key(), p.ips.clone()))
            .collect(),
        externals: scenario.externals.iter().map(|e| e.ip).collect(),
    };
    let mut topology = Topology::build(&plan).await.context("building the lab")?;
    let mut listeners = Listeners::default();
    for pod in &scenario.cluster.pods {
        let net = &topology.pods[&pod.key()];
        for (port, protocol) in &scenario.serves[&pod.key()] {
            listeners.serve(&net.netns, &pod.ips, true, *port, *protocol)?;
        }
    }
    if let Some(outside) = &topology.outside {
        for e in &scenario.externals {
            for s in &e.serve {
                listeners.serve(outside, &[e.ip], false, s.port, s.protocol)?;
            }
        }
    }

    let dir = std::env::temp_dir().join(format!("palisade-{tag}"));
    let pins = PathBuf::from("/sys/fs/bpf").join(format!("palisade-{tag}"));
    let mut enforcer = Enforcer::start(&options.bin, &topology.node, &dir, &pins)?;
    let mut state = scenario.cluster.clone();
    let mut applied: BTreeMap<String, PolicyDoc> = BTreeMap::new();
    enforcer.write("cluster.yaml", &cluster_yaml(&state))?;
    let revision = enforcer.commit()?;
    enforcer
        .wait(revision, options.in_force_limit)
        .await
        .context("the cluster without policies")?;

    let lsm = Features::probe().bpf_lsm.is_active();
    // Connections opened by `connect` steps, by name.
    let mut held: BTreeMap<String, (HoldPlan, Option<Arc<socket2::Socket>>)> = BTreeMap::new();
    for (i, action) in scenario.actions.iter().enumerate() {
        let step = i + 1;
        let step_start = Instant::now();
        let change = match action {
            Action::Apply(docs) | Action::Update(docs) => {
                for d in docs {
                    enforcer.write(&d.file_name(), &d.yaml)?;
                    applied.insert(d.key.clone(), d.clone());
                }
                true
            }
            Action::Delete(docs) => {
                for d in docs {
                    enforcer.remove(&d.file_name())?;
                    applied.remove(&d.key);
                }
                true
            }
            Action::RelabelPod(key, labels) => {
                let pod = state
                    .pods
                    .iter_mut()
                    .find(|p| p.key() == *key)
                    .ok_or_else(|| anyhow!("no pod {key}"))?;
                pod.labels = labels.clone();
                enforcer.write("cluster.yaml", &cluster_yaml(&state))?;
                true
            }
            Action::RelabelNamespace(name, labels) => {
                let ns = state
                    .namespaces
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("no namespace {name}"))?;
                ns.labels = labels.clone();
                enforcer.write("cluster.yaml", &cluster_yaml(&state))?;
                true
            }
            Action::Probe(plans) => {
                for p in plans {
                    let r = run_probe(p, &topology, options.timeout, step).await?;
                    report.probes.push(r);
                }
                false
            }
            Action::Create(pods) => {
                // As a CNI and an API server would: the veth first, then the
                // pod in the source; until then the daemon quarantines it.
                for (pod, serves) in pods {
                    topology.add_pod(&pod.key(), &pod.ips).await?;
                    let net = &topology.pods[&pod.key()];
                    for (port, protocol) in serves {
                        listeners.serve(&net.netns, &pod.ips, true, *port, *protocol)?;
                    }
                    state.pods.push(pod.clone());
                }
                enforcer.write("cluster.yaml", &cluster_yaml(&state))?;
                true
            }
            Action::Connect(plans) => {
                let mut tasks = Vec::new();
                for p in plans {
                    let path = topology.pods[&p.from].netns.path();
                    let (to, protocol, timeout) = (p.target, p.protocol, options.timeout);
                    tasks.push(tokio::task::spawn_blocking(move || {
                        crate::netns::in_netns(&path, || hold(to, protocol, timeout))
                    }));
                }
                for (p, task) in plans.iter().zip(tasks) {
                    let (observed, detail, socket) = match task.await?? {
                        Ok(s) => ("open", None, Some(Arc::new(s))),
                        Err(e) if p.protocol == Protocol::Sctp && no_sctp(&e) => {
                            ("skipped", Some(format!("kernel has no SCTP ({e})")), None)
                        }
                        Err(e) => ("cut", Some(e.to_string()), None),
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
                    held.insert(p.name.clone(), (p.clone(), socket));
                }
                false
            }
            Action::Held(expects) => {
                let mut tasks = Vec::new();
                for (name, _) in expects {
                    let socket = held.get(name).and_then(|(_, s)| s.clone());
                    let timeout = options.timeout;
                    tasks.push(tokio::task::spawn_blocking(move || {
                        socket.map(|s| still_open(&s, timeout))
                    }));
                }
                for ((name, expected), task) in expects.iter().zip(tasks) {
                    let Some((plan, _)) = held.get(name) else {
                        continue;
                    };
                    let (observed, detail) = match task.await? {
                        Some(Ok(())) => ("open", None),
                        Some(Err(e)) => ("cut", Some(e)),
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
                false
            }
            Action::Check(checks) => {
                let reason = check_skip(lsm, &applied);
                for c in checks {
                    let observed = match &reason {
                        Some(r) => CheckObserved::Skipped(r.clone()),
                        None => run_check(&topology.pods[&c.pod], c),
                    };
                    report.checks.push(CheckReport {
                        step,
                        pod: c.pod.clone(),
                        run: c.run.clone(),
                        expected: c.expect,
                        observed,
                    });
                }
                false
            }
        };
        let mut in_force_ms = None;
        if change {
            let revision = enforcer.commit()?;
            enforcer
                .wait(revision, options.in_force_limit)
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
    // The verdict counters as Prometheus would scrape them, before teardown.
    match enforcer.scrape(&topology.node) {
        Ok(text) => {
            report.metrics = text
                .lines()
                .filter(|l| {
                    l.starts_with("palisade_drops_total")
                        || l.starts_with("palisade_audit_would_drop_total")
                })
                .map(str::to_owned)
                .collect();
        }
        Err(e) => report.metrics = vec![format!("# metrics unavailable: {e:#}")],
    }
    drop(held);
    drop(enforcer);
    drop(listeners);
    drop(topology);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn run_probe(
    plan: &ProbePlan,
    topology: &Topology,
    timeout: Duration,
    step: usize,
) -> anyhow::Result<ProbeReport> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for cell in &plan.cells {
        let task = match (cell.target, cell.expected) {
            (Some(to), Cell::Reachable | Cell::Blocked) => {
                let path = topology.pods[&cell.from].netns.path();
                let protocol = plan.protocol;
                Some(tokio::task::spawn_blocking(move || {
                    crate::netns::in_netns(&path, || probe(to, protocol, timeout))
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
fn check_skip(lsm: bool, applied: &BTreeMap<String, PolicyDoc>) -> Option<String> {
    if !lsm {
        return Some("BPF LSM is not active on this kernel".into());
    }
    applied
        .values()
        .find(|d| d.policy.process.is_some() || d.policy.file.is_some())
        .map(|d| {
            format!(
                "{} has process/file rules, which this build does not enforce yet",
                d.key
            )
        })
}

/// Runs the command in the pod's network namespace and cgroup.
fn run_check(pod: &PodNet, check: &CheckPlan) -> CheckObserved {
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
    let fd = pod.netns.fd();
    let mut cmd = Command::new(&check.run[0]);
    cmd.args(&check.run[1..]);
    // SAFETY: only async-signal-safe calls (setns, open, write, close)
    // between fork and exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let f = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if f < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(f, b"0".as_ptr().cast(), 1) == 1;
            libc::close(f);
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
