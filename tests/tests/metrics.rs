//! Metrics and events against the real daemon on the lab's node: denied
//! probes are counted exactly under their policy and reason, streamed as
//! named events by `palisade events` (filtered by namespace), explained by
//! `palisade explain` asking the daemon, kept across a daemon restart; the
//! output passes `promtool check metrics`, and a real Prometheus server
//! scraping the daemon answers a PromQL query with the same count.
//!
//! One node and daemon serve every check; each check runs even when an
//! earlier one failed, and the test reports every failure at its end.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use palisade::model::Protocol;
use palisade_lab::netns::Netns;
use palisade_lab::{
    enforcer::Enforcer,
    fixtures::node_with_daemon,
    probe::{Observed, probe},
    scenario::ScenarioFile,
    serve::Listeners,
    topology::Topology,
};
use palisade_tests::{palisade_bin, unique};

const POLICY: &str = "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-udp-from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 81, protocol: UDP}]
  - action: Allow
";
/// Drops that namespace y's stream must show: x/a -> y/c UDP 81. They mark
/// how far that stream has come, so that its silence about x's drops before
/// them is a real silence, not a stream that is merely behind.
const MARKER: &str = "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-udp-from-x, namespace: \"y\"}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: 81, protocol: UDP}]
";
const SERIES: &str = "palisade_drops_total{direction=\"ingress\",policy=\"palisade:x/no-udp-from-y-b\",reason=\"drop_policy_deny\"}";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A `palisade events` process and its lines.
struct Events(std::process::Child, std::sync::mpsc::Receiver<String>);

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prometheus in the node namespace, scraping the daemon every second.
struct Prometheus(std::process::Child, std::path::PathBuf);

impl Prometheus {
    fn start(node: &Netns, target: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("palisade-prom-"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: palisade\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?);
        node.spawn_inside(&mut cmd)?;
        Ok(Self(cmd.spawn().context("starting prometheus")?, dir))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// The lab's node with pods x/a, y/b, y/c, the daemon on it with both
/// policies in force, and listeners on UDP 81 in x/a and y/c.
/// Fields drop in order: the daemon first, the source directory last.
struct Fixture {
    enforcer: Enforcer,
    _listeners: Listeners,
    topology: Topology,
    metrics_addr: String,
    _dir: RemoveDir,
}

/// The daemon's source directory, removed on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let snapshot = ScenarioFile::parse(
            "name: metrics\nnamespaces: {x: {labels: {ns: x}}, \"y\": {labels: {ns: \"y\"}}}\npods:\n- {namespace: x, name: a, labels: {pod: a}}\n- {namespace: \"y\", name: b, labels: {pod: b}}\n- {namespace: \"y\", name: c, labels: {pod: c}}\n",
            "metrics.yaml",
        )?
        .snapshot("metrics.yaml")?;
        let tag = unique("lab-metrics");
        let (topology, mut enforcer, dir) = node_with_daemon(
            &palisade_bin()?,
            &tag,
            vec!["10.244.0.0/16".parse()?],
            &snapshot,
            Vec::new(),
            palisade_lab::enforcer::Feed::Files,
        )
        .await?;
        let mut listeners = Listeners::default();
        for pod in ["x/a", "y/c"] {
            let net = &topology.pods[pod];
            listeners.serve(&net.netns, &net.ips, true, 81, Protocol::Udp)?;
        }
        enforcer.write("policy.yaml", POLICY)?;
        enforcer.write("marker.yaml", MARKER)?;
        let r = enforcer.commit()?;
        enforcer.wait(r, Duration::from_secs(30)).await?;
        let metrics_addr = enforcer.metrics_addr()?.to_string();
        Ok(Self {
            enforcer,
            _listeners: listeners,
            topology,
            metrics_addr,
            _dir: RemoveDir(dir),
        })
    }

    /// `palisade events --namespace`, through the real CLI, from the node
    /// namespace.
    fn stream(&self, namespace: &str) -> anyhow::Result<Events> {
        let mut child = Command::new(palisade_bin()?)
            .args([
                "events",
                "--addr",
                &self.metrics_addr,
                "--namespace",
                namespace,
            ])
            .arg("--netns")
            .arg(format!("/proc/{}/ns/net", self.enforcer.pid()))
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().context("events stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Events(child, rx))
    }

    /// One UDP probe to port 81 of `to` (300 ms per attempt), off the
    /// runtime thread, which serves the listeners.
    async fn probe(&self, from: &str, to: &str) -> anyhow::Result<(Observed, u32)> {
        let target = SocketAddr::new(self.topology.pods[to].ips[0], 81);
        let path = self.topology.pods[from].netns.path();
        Ok(tokio::task::spawn_blocking(move || {
            palisade::netns::in_netns(&path, || {
                probe(target, Protocol::Udp, Duration::from_millis(300))
            })
        })
        .await??)
    }

    /// Probes x/a -> y/c, which namespace y's stream shows; returns how
    /// many datagrams were dropped.
    async fn mark(&self) -> anyhow::Result<u32> {
        let (observed, attempts) = self.probe("x/a", "y/c").await?;
        ensure!(
            matches!(observed, Observed::Blocked(_)),
            "marker: {observed:?}"
        );
        Ok(attempts)
    }

    fn scrape(&self) -> anyhow::Result<String> {
        self.enforcer.scrape(&self.topology.node)
    }
}

impl Events {
    /// The next `n` event lines; other lines (losses) are passed over.
    fn events(&self, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut events = Vec::new();
        while events.len() < n {
            let line = self.1.recv_timeout(Duration::from_secs(5))?;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v["type"] == "event" {
                events.push(v);
            }
        }
        Ok(events)
    }
}

/// Every check's failure, reported together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, what: &str, result: anyhow::Result<()>) {
        if let Err(e) = result {
            self.0.push(format!("{what}: {e:#}"));
        }
    }
}

#[test]
fn denied_probes_are_counted_streamed_kept_and_scraped_by_prometheus() -> anyhow::Result<()> {
    if Command::new("promtool").arg("--version").output().is_err() {
        bail!("promtool missing: scripts/setup.sh installs Debian's prometheus package");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let failures = runtime.block_on(async {
        let mut f = Fixture::start().await?;
        let mut failures = Failures::default();
        let x_events = f.stream("x")?;
        let y_events = f.stream("y")?;
        failures.check("subscribed", subscribed(&f, &x_events, &y_events).await);
        // Denied: y/b -> x/a UDP 81, each attempt one datagram, one drop.
        let mut sent = 0;
        for _ in 0..3 {
            let (observed, attempts) = f.probe("y/b", "x/a").await?;
            sent += attempts;
            failures.check(
                "a denied probe is blocked",
                if matches!(observed, Observed::Blocked(_)) {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("{observed:?}"))
                },
            );
        }
        // Allowed: y/c, which must not count as a drop of that policy.
        let (observed, _) = f.probe("y/c", "x/a").await?;
        failures.check(
            "an allowed probe passes",
            if observed == Observed::Reachable {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{observed:?}"))
            },
        );
        failures.check("counted", counted(&f, sent));
        failures.check("streamed", streamed(&f, x_events, y_events, sent).await);
        failures.check("explained", explained(&f));
        failures.check("kept across a restart", kept(&mut f, sent).await);
        failures.check("promtool", promtool(&f));
        failures.check("prometheus", prometheus(&f, sent).await);
        anyhow::Ok(failures)
    })?;
    ensure!(
        failures.0.is_empty(),
        "{} checks failed:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
    Ok(())
}

/// Both streams are live before any probe: x's first line says what the
/// kernel lost, y shows a marker.
async fn subscribed(f: &Fixture, x: &Events, y: &Events) -> anyhow::Result<()> {
    let first = x.1.recv_timeout(Duration::from_secs(5))?;
    ensure!(first.contains("\"type\":\"lost\""), "{first}");
    let marks = f.mark().await?;
    y.events(marks as usize)?;
    Ok(())
}

fn counted(f: &Fixture, sent: u32) -> anyhow::Result<()> {
    let text = f.scrape()?;
    ensure!(value_of(&text, SERIES) == Some(f64::from(sent)), "{text}");
    Ok(())
}

/// One event per drop, named; none for namespace y's pods: its stream's
/// next events, once a later marker has come through, are the marker's.
async fn streamed(f: &Fixture, x: Events, y: Events, sent: u32) -> anyhow::Result<()> {
    let a = f.topology.pods["x/a"].ips[0];
    for e in x.events(sent as usize)? {
        ensure!(e["policy"] == "palisade:x/no-udp-from-y-b", "{e}");
        ensure!(e["reason"] == "drop_policy_deny", "{e}");
        ensure!(e["verdict"] == "dropped", "{e}");
        ensure!(e["pod"] == "x/a", "{e}");
        ensure!(e["protocol"] == "UDP", "{e}");
        ensure!(e["dst"] == format!("{a}:81"), "{e}");
    }
    let marks = f.mark().await?;
    let c = format!("{}:81", f.topology.pods["y/c"].ips[0]);
    for e in y.events(marks as usize)? {
        ensure!(
            e["pod"] == "y/c" && e["dst"] == c.as_str(),
            "namespace y saw an event before its marker: {e}"
        );
    }
    Ok(())
}

/// `palisade explain` without a file asks the running daemon.
fn explained(f: &Fixture) -> anyhow::Result<()> {
    let explain = |from: &str| -> anyhow::Result<String> {
        let out = Command::new(palisade_bin()?)
            .args([
                "explain",
                "--addr",
                &f.metrics_addr,
                "--from",
                from,
                "--to",
                "x/a",
            ])
            .args(["--port", "81", "--protocol", "UDP", "--netns"])
            .arg(format!("/proc/{}/ns/net", f.enforcer.pid()))
            .output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    let denied = explain("y/b")?;
    ensure!(denied.contains("DENIED"), "{denied}");
    ensure!(
        denied.contains("ingress of x/a: denied by palisade:x/no-udp-from-y-b"),
        "{denied}"
    );
    let allowed = explain("y/c")?;
    ensure!(allowed.contains("ALLOWED"), "{allowed}");
    let unknown = explain("q/q")?;
    ensure!(unknown.contains("no pod q/q"), "{unknown}");
    Ok(())
}

/// Counters live in the pinned maps: a restarted daemon keeps them.
async fn kept(f: &mut Fixture, sent: u32) -> anyhow::Result<()> {
    f.enforcer.restart(&palisade_bin()?, &f.topology.node)?;
    let revision = f.enforcer.revision();
    f.enforcer.wait(revision, Duration::from_secs(30)).await?;
    let text = f.scrape()?;
    ensure!(
        value_of(&text, SERIES) == Some(f64::from(sent)),
        "after a restart:\n{text}"
    );
    for name in [
        "palisade_map_entries{map=\"PAL_CT4\"}",
        "palisade_kernel_feature{feature=\"tcx\"}",
        "palisade_reconcile_duration_seconds_count",
        "palisade_endpoints",
    ] {
        ensure!(value_of(&text, name).is_some(), "{name} missing:\n{text}");
    }
    Ok(())
}

fn promtool(f: &Fixture) -> anyhow::Result<()> {
    let text = f.scrape()?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    promtool
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A real Prometheus server scraping the daemon answers a PromQL query
/// with the same count.
async fn prometheus(f: &Fixture, sent: u32) -> anyhow::Result<()> {
    let _prometheus = Prometheus::start(&f.topology.node, &f.enforcer.metrics_addr()?.to_string())?;
    // sum(palisade_drops_total{policy="palisade:x/no-udp-from-y-b",reason="drop_policy_deny"})
    let query = "/api/v1/query?query=sum(palisade_drops_total%7Bpolicy%3D%22palisade%3Ax%2Fno-udp-from-y-b%22%2Creason%3D%22drop_policy_deny%22%7D)";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(body) = f.topology.node.http_get(PROMETHEUS.parse()?, query) {
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if value == Some(f64::from(sent)) {
                return Ok(());
            }
            last = body;
        }
        if Instant::now() > deadline {
            bail!("Prometheus never reported {sent} drops; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
