//! The lab: scenario files (docs/SCENARIOS.md) played against the real
//! daemon on a simulated node, for `palisade lab run` and `palisade lab
//! demo`. A crate of its own so that the node agent ships without it.
//!
//! `scenario` and `expect` parse a file, `plan` checks it through (invalid
//! input never touches the kernel), `run` plays it: `nodes` builds each
//! node with `topology` (node, pods and externals through netlink in
//! namespaces of `netns`) and, for a file with `nodes:`, the `underlay`
//! that routes them to each other and holds the externals; `serve` opens
//! the listeners, `daemons` runs a daemon per node through `enforcer`, each
//! as its own process with the file source (`cluster` writes its objects),
//! `probe` makes the connections, `drops` matches blocked ones to the
//! daemons' drop events, `report` prints. For process and file checks, `fixture_files`
//! makes the scenario's `files:`, `operation` runs each check's operation
//! in its pod, `helper` is the check helper the binary becomes when started
//! as one, and `lsm_events` matches operations to the daemon's decisions. `demo` is `palisade lab demo`. `fixtures` lends
//! the topology and the daemon to the integration tests and the bench.
//! `apiserver` is a test double of the Kubernetes API server (list, watch
//! and writes over plain HTTP) for the Kubernetes source; `kube_feed`
//! feeds the daemon through it (`--via kube`).

pub mod apiserver;
pub mod chaos;
pub mod cluster;
pub mod daemons;
pub mod demo;
pub mod dir_watch;
pub mod drops;
pub mod enforcer;
pub mod expect;
pub mod fixture_files;
pub mod fixtures;
pub mod helper;
pub mod kube_feed;
pub mod lsm_events;
pub mod netns;
pub mod nodes;
pub mod operation;
pub mod plan;
pub mod probe;
pub mod report;
pub mod run;
pub mod scenario;
#[cfg(test)]
mod scenario_fuzz;
pub mod serve;
pub mod topology;
pub mod underlay;

use std::{path::Path, time::Instant};

use plan::Scenario;
use report::{Outcome, ScenarioReport};
use tokio::signal::unix::{SignalKind, signal};

pub use run::Options;

/// Removes what a killed runner left (pins and cgroups of dead processes).
fn sweep_stale() {
    let alive = |name: &str| {
        name.strip_prefix("palisade-lab")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let cgroups = topology::cgroup2_root();
    // Older runners made their cgroups right under /sys/fs/cgroup.
    let bases = [
        Some(Path::new("/sys/fs/bpf")),
        Some(Path::new("/sys/fs/cgroup")),
        cgroups
            .as_deref()
            .filter(|c| *c != Path::new("/sys/fs/cgroup")),
    ];
    for base in bases.into_iter().flatten() {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !alive(&name) {
                if base.ends_with("bpf") {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if let Ok(pods) = std::fs::read_dir(e.path()) {
                    for p in pods.filter_map(Result::ok).filter(|p| p.path().is_dir()) {
                        let _ = std::fs::remove_dir(p.path());
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, saying which; dropping the scenario's
/// future then removes everything it made.
async fn stop_signal() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// Runs every file in order; returns the reports and the exit status
/// (the worst outcome: mismatch 1 > invalid 2 > skipped 3 > passed 0).
pub async fn run_files(
    files: &[impl AsRef<Path>],
    options: &Options,
    print: bool,
) -> (Vec<ScenarioReport>, u8) {
    let inputs = files
        .iter()
        .map(|path| {
            let shown = path.as_ref().display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"));
            (shown, text)
        })
        .collect();
    run_texts(inputs, options, print).await
}

/// [`run_files`] on texts: `(name shown, text or the error reading it)`.
pub async fn run_texts(
    inputs: Vec<(String, Result<String, String>)>,
    options: &Options,
    print: bool,
) -> (Vec<ScenarioReport>, u8) {
    let mut reports = Vec::new();
    let mut interrupted = false;
    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        sweep_stale();
    }
    for (n, (shown, text)) in inputs.into_iter().enumerate() {
        let start = Instant::now();
        let scenario =
            text.and_then(|text| Scenario::load(&text, &shown).map_err(|e| e.to_string()));
        let mut report = match &scenario {
            Ok(s) => ScenarioReport::new(&shown, &s.name),
            Err(_) => ScenarioReport::new(&shown, &shown),
        };
        match scenario {
            Err(e) => {
                report.outcome = Outcome::Invalid;
                report.error = Some(e);
            }
            Ok(_) if !is_root => {
                report.outcome = Outcome::Failed;
                report.error = Some("the lab needs root (network namespaces, BPF)".into());
            }
            Ok(scenario) => {
                let result = tokio::select! {
                    r = run::run(&scenario, options, n, &mut report) => r,
                    why = stop_signal() => {
                        interrupted = true;
                        Err(anyhow::anyhow!(why))
                    }
                };
                if let Err(e) = result {
                    report.outcome = Outcome::Failed;
                    report.error = Some(format!("{e:#}"));
                }
                report.settle();
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        if print {
            print!("{}", report.render(options.show_metrics));
        }
        reports.push(report);
        if interrupted {
            break;
        }
    }
    let worst = reports
        .iter()
        .map(|r| r.outcome)
        .max()
        .unwrap_or(Outcome::Passed);
    if print && reports.len() > 1 {
        let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
        println!(
            "{} scenarios: {} passed, {} failed, {} invalid, {} skipped something",
            reports.len(),
            count(Outcome::Passed),
            count(Outcome::Failed),
            count(Outcome::Invalid),
            count(Outcome::Skipped)
        );
    }
    (reports, worst.exit_code())
}
