//! The daemon fed by the Kubernetes source from the lab's test API server,
//! under the faults a real API server has: watches dropped mid-stream, 410
//! Gone after a compaction (a relist), the server restarting, an outage
//! across a daemon restart, and a policy the parser refuses. Probes run
//! all along and every verdict is checked against the policy in force:
//! the test counts wrong verdicts, and there must be none.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_lab::{
    apiserver::ApiServer,
    enforcer::{DaemonArgs, Enforcer, Feed},
};
use palisade_tests::{
    B_FROM_A, BridgeLab, TempPins, answered, commit_and_wait, in_netns, lab_cluster, palisade_bin,
    unique,
};

const WAIT: Duration = Duration::from_millis(500);
const PORT: u16 = 8080;
const NAMES: [&str; 3] = ["a", "b", "c"];

fn start(lab: &BridgeLab, pins: &TempPins, dir: &Path) -> anyhow::Result<Enforcer> {
    let args = DaemonArgs {
        resync_ms: 500,
        feed: Feed::Kube,
        ..DaemonArgs::default()
    };
    Enforcer::start_with(&palisade_bin()?, &lab.node, dir, pins.pins.base(), args)
}

/// The namespace and the three pods, with `c` labelled `c_label`.
fn cluster(lab: &BridgeLab, c_label: &str) -> String {
    lab_cluster(lab, &[("c", c_label)])
}

fn reaches(lab: &BridgeLab, from: usize, to: usize) -> anyhow::Result<bool> {
    palisade_tests::reaches(lab, from, to, PORT, WAIT)
        .with_context(|| format!("{} -> {}", NAMES[from], NAMES[to]))
}

/// Probes and their wrong verdicts.
struct Tally {
    probes: u64,
    wrong: Vec<String>,
    /// The pinned per-reason totals of the TC programs.
    stats: std::path::PathBuf,
    /// Unexpected silences Palisade counted no drop for, probed again.
    unanswered: u64,
}

/// Every packet the TC programs have dropped, whatever the reason.
fn drops(stats: &Path) -> anyhow::Result<u64> {
    Ok(palisade::observe::stats::read_pinned(stats)?
        .iter()
        .filter(|r| r.reason.starts_with("drop_"))
        .map(|r| r.events)
        .sum())
}

impl Tally {
    /// Probes a -> b, c -> b and b -> c for `lasting`, at least once,
    /// against what the policy in force says: c reaches b only when it is
    /// labelled `pod: a`, and nothing isolates c.
    fn probe(
        &mut self,
        lab: &BridgeLab,
        c_is_a: bool,
        during: &str,
        lasting: Duration,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + lasting;
        loop {
            for (from, to, expected) in [(0, 1, true), (2, 1, c_is_a), (1, 2, true)] {
                self.probes += 1;
                // A silence is a block only if Palisade dropped something
                // meanwhile; one it counted no drop for (a connection lost
                // to a loaded machine) is probed again, at most twice.
                let mut got = false;
                for _ in 0..3 {
                    let before = drops(&self.stats)?;
                    got = reaches(lab, from, to)?;
                    if got || expected == got || drops(&self.stats)? > before {
                        break;
                    }
                    self.unanswered += 1;
                }
                if got != expected {
                    self.wrong.push(format!(
                        "{during}: {} -> {}: {} (expected {})",
                        NAMES[from],
                        NAMES[to],
                        if got { "reached" } else { "blocked" },
                        if expected { "reached" } else { "blocked" },
                    ));
                }
            }
            if Instant::now() >= until {
                return Ok(());
            }
        }
    }
}

fn server(daemon: &Enforcer) -> anyhow::Result<&ApiServer> {
    daemon
        .kube()
        .context("started without the kube feed")?
        .server()
}

fn wait_for_status(
    daemon: &Enforcer,
    what: &str,
    limit: Duration,
    test: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = daemon.status()
            && test(&s)
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not seen within {limit:?}: {:?}\n{}",
                daemon.status().ok(),
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn api_faults_cause_no_wrong_verdict_and_changes_still_land() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(3)?;
    let dir = std::env::temp_dir().join(unique("palisade-kube-"));
    let listeners: Vec<TcpListener> = lab
        .pods
        .iter()
        .map(|p| in_netns(&p.netns, || TcpListener::bind((p.ip, PORT))))
        .collect::<Result<Result<_, _>, _>>()??;
    // Accepted and closed at once: hundreds of probes would otherwise fill
    // the backlog, and a full backlog drops SYNs as a block would.
    for listener in listeners {
        std::thread::spawn(move || {
            for connection in listener.incoming() {
                drop(connection);
            }
        });
    }
    let mut daemon = start(&lab, &t, &dir)?;
    let mut tally = Tally {
        probes: 0,
        wrong: Vec::new(),
        stats: t.pins.map(ebpf_common::maps::TC_STATS),
        unanswered: 0,
    };
    let mut faults = 0;

    daemon.write("cluster.yaml", &cluster(&lab, "c"))?;
    daemon.write("policy.yaml", B_FROM_A)?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(s["source"], "in sync", "{s}");
    assert_eq!(s["endpoints"].as_object().map(|o| o.len()), Some(3), "{s}");
    tally.probe(&lab, false, "in force", Duration::ZERO)?;

    // 1. Every watch ends mid-stream: the watches resume where they were.
    server(&daemon)?.drop_watches();
    faults += 1;
    tally.probe(&lab, false, "watches dropped", Duration::from_secs(1))?;
    daemon.write("cluster.yaml", &cluster(&lab, "a"))?;
    commit_and_wait(&mut daemon).context("a relabel after dropped watches")?;
    tally.probe(
        &lab,
        true,
        "relabelled after dropped watches",
        Duration::ZERO,
    )?;

    // 2. The watches are cut off while the cluster changes and the
    // history is compacted: resuming gets 410 Gone, the watches list
    // again, and the stores swap in whole. Until then the last good state
    // (c labelled a) stays in force.
    let lists = {
        let server = server(&daemon)?;
        server.set_unavailable(true);
        server.drop_watches();
        server.list_requests()
    };
    daemon.write("cluster.yaml", &cluster(&lab, "c"))?;
    daemon.commit()?;
    server(&daemon)?.compact();
    faults += 1;
    tally.probe(
        &lab,
        true,
        "watches cut off, history compacted",
        Duration::from_secs(1),
    )?;
    server(&daemon)?.set_unavailable(false);
    commit_and_wait(&mut daemon).context("a relabel seen through a relist")?;
    tally.probe(
        &lab,
        false,
        "relabelled, seen through a relist",
        Duration::ZERO,
    )?;
    let relisted = server(&daemon)?.list_requests();
    assert!(
        relisted > lists,
        "410 made the watches list again ({lists} -> {relisted})"
    );

    // 3. The API server goes away: the daemon reports its source stale and
    // keeps the last good state; it comes back at the same address.
    daemon.kube_mut().context("kube feed")?.stop_server();
    faults += 1;
    let s = wait_for_status(&daemon, "a stale source", Duration::from_secs(20), |s| {
        s["source"].as_str().is_some_and(|v| v.starts_with("stale"))
    })?;
    tally.probe(&lab, false, "API server down", Duration::from_secs(1))?;
    assert_eq!(s["endpoints"].as_object().map(|o| o.len()), Some(3), "{s}");
    daemon
        .kube_mut()
        .context("kube feed")?
        .restart_server(&lab.node)?;
    daemon.write("cluster.yaml", &cluster(&lab, "a"))?;
    commit_and_wait(&mut daemon).context("a relabel after the API server restarted")?;
    // Every watch has started again once none has failed for a while.
    wait_for_status(
        &daemon,
        "the source in sync again",
        Duration::from_secs(15),
        |s| s["source"] == "in sync",
    )?;
    tally.probe(&lab, true, "after the API server restarted", Duration::ZERO)?;

    // 4. An outage across a daemon restart: the new daemon cannot list,
    // applies nothing, and what the old one pinned keeps enforcing.
    server(&daemon)?.set_unavailable(true);
    daemon.restart(&palisade_bin()?, &lab.node)?;
    faults += 1;
    let s = wait_for_status(
        &daemon,
        "a daemon waiting for its source",
        Duration::from_secs(20),
        |s| {
            s["source"]
                .as_str()
                .is_some_and(|v| v.starts_with("waiting"))
        },
    )?;
    assert_eq!(s["ready"], false, "{s}");
    tally.probe(
        &lab,
        true,
        "daemon restarted during an outage",
        Duration::from_secs(2),
    )?;
    server(&daemon)?.set_unavailable(false);
    daemon.write("cluster.yaml", &cluster(&lab, "c"))?;
    commit_and_wait(&mut daemon).context("a relabel after the outage")?;
    tally.probe(&lab, false, "after the outage", Duration::ZERO)?;

    // 5. A version of the policy the parser refuses: reported with its
    // field, as an Event on the object too, and the last good version
    // stays in force.
    daemon.write(
        "policy.yaml",
        &B_FROM_A.replace("port: 8080", "port: 70000"),
    )?;
    let s = commit_and_wait(&mut daemon)?;
    faults += 1;
    let error = s["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("NetworkPolicy x/b-from-a")
            && error.contains("port")
            && error.contains("last good"),
        "{s}"
    );
    tally.probe(&lab, false, "a refused version", Duration::from_millis(500))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = server(&daemon)?.list("v1", "Event");
        let refused = events.iter().find(|e| {
            e["reason"] == "PolicyRefused"
                && e["involvedObject"]["name"] == "b-from-a"
                && e["involvedObject"]["kind"] == "NetworkPolicy"
        });
        if let Some(e) = refused {
            let message = e["message"].as_str().unwrap_or_default();
            assert!(message.contains("port"), "{e}");
            assert_eq!(e["type"], "Warning", "{e}");
            break;
        }
        if Instant::now() > deadline {
            bail!("no Event for the refused policy: {events:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    println!(
        "kube source under faults: {} probes, {} wrong verdicts, {faults} faults injected ({} silences without a drop, probed again)",
        tally.probes,
        tally.wrong.len(),
        tally.unanswered
    );
    assert!(
        tally.wrong.is_empty(),
        "wrong verdicts:\n{}",
        tally.wrong.join("\n")
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

fn settings(deny: &str) -> String {
    let (namespace, name) = palisade_lab::kube_feed::NODE_SETTINGS
        .split_once('/')
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\ndata: {{denyCIDRs: '{deny}'}}\n"
    )
}

/// The node settings' ConfigMap: its deny list reaches the prefilter on
/// the uplink without a restart, a value that does not read keeps the last
/// good list, and deleting the ConfigMap lifts the deny.
#[test]
fn node_settings_from_a_config_map_apply_without_a_restart() -> anyhow::Result<()> {
    use std::net::{IpAddr, Ipv4Addr};
    let (ext1, ext2) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
    let t = TempPins::new()?;
    let lab = BridgeLab::with_externals(1, &[IpAddr::V4(ext1), IpAddr::V4(ext2)])?;
    lab.route_default_via_uplink()?;
    let outside = lab.outside.as_ref().context("no outside namespace")?;
    let pod = &lab.pods[0];
    let listener = in_netns(&pod.netns, || TcpListener::bind((pod.ip, PORT)))??;
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            drop(connection);
        }
    });
    let dir = std::env::temp_dir().join(unique("palisade-kube-settings-"));
    let args = DaemonArgs {
        resync_ms: 500,
        feed: Feed::Kube,
        extra: vec!["--uplink".into(), "auto".into()],
    };
    let mut daemon = Enforcer::start_with(&palisade_bin()?, &lab.node, &dir, t.pins.base(), args)?;
    daemon.write(
        "cluster.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{pod: a}}}}\nstatus: {{podIP: {}}}\n",
            pod.ip
        ),
    )?;
    commit_and_wait(&mut daemon)?;
    let to = SocketAddr::from((pod.ip, PORT));
    let reach = |src: Ipv4Addr| -> anyhow::Result<bool> {
        in_netns(outside, || {
            let attempt = || -> std::io::Result<()> {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.bind(&SocketAddr::from((src, 0)).into())?;
                s.connect_timeout(&to.into(), WAIT)
            };
            answered(attempt(), &format!("{src} -> {to}"))
        })?
    };
    assert!(reach(ext2)?, "no settings: ext2 reaches the pod");

    daemon.write("settings.yaml", &settings("192.0.2.3/32"))?;
    commit_and_wait(&mut daemon).context("the deny list from the ConfigMap")?;
    assert!(!reach(ext2)?, "ext2 is on the ConfigMap's deny list");
    assert!(reach(ext1)?, "ext1 is not");

    daemon.write("settings.yaml", &settings("192.0.2.3/33"))?;
    let s = commit_and_wait(&mut daemon)?;
    let error = s["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains("data.denyCIDRs")
            && error.contains("192.0.2.3/33")
            && error.contains("last good"),
        "{s}"
    );
    assert!(!reach(ext2)?, "the last good deny list stays in force");

    daemon.remove("settings.yaml")?;
    commit_and_wait(&mut daemon).context("the ConfigMap deleted")?;
    assert!(reach(ext2)?, "no ConfigMap, no deny");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
